// tricopy sim harness: the Verilated JournalEngine as a live engine on TCP.
//
// One client at a time on 127.0.0.1:PORT. Bytes from the socket drive the
// engine's rx stream (valid/ready), the tx stream's bytes go back to the
// socket; the engine state survives reconnects (unless --reset-on-connect).
// docs/sim.md describes the timing model; in short: simulated time
// (cycles / CLK_HZ) follows wall time, may run ahead of it by at most
// --max-lead-ms while there is work, and never lags it by more than one
// idle batch, so the engine CLOCK advances in real time. `--replay IN OUT`
// serves no socket: a file's bytes through the RTL flat out, for measuring.
//
// Built by sim/build.py: verilator --cc --exe --build engine.v harness_top.v
// harness.cpp with -DCLK_HZ=<the clk_hz the Verilog was generated with>.
// harness_top.v puts a two-entry FIFO before the engine's rx stream, so that
// nothing depends combinationally on this program's inputs (see there why).

#include "Vharness_top.h"
#include "verilated.h"

// The harness steps the model by the one function Verilator's evaluation
// runs at a clock edge, its clocked logic (the nba phase's), not by eval():
// Vharness_top::eval() wraps each call in bookkeeping this single-threaded
// model without dynamic objects does not need (a garbage list for class
// objects and the message queue of other threads, a mutex each: ~15 % of
// the harness's time at two evals a cycle), and the model's own _eval in
// trigger loops and phases (~43 instructions a cycle) that, for this
// model, only find that clk changed and call that function once.
// sim/build.py (_EVAL_SHAPE) reads the generated C++ and fails the build
// unless the evaluation is exactly that, so calling the function skips
// nothing else. Declared here because Verilator's headers keep it
// internal; the one ordinary eval() at start runs the initial blocks.
#include "Vharness_top___024root.h"
void Vharness_top___024root___nba_sequent__TOP__0(Vharness_top___024root* vlSelf);

#include <arpa/inet.h>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <memory>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <string>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <vector>

#ifndef CLK_HZ
#error "build with -DCLK_HZ=<engine clk_hz>"
#endif

namespace {

constexpr size_t HEADER_SIZE = 16;   // docs/protocol.md "Frame"
constexpr size_t LENGTH_AT = 8;      // header LENGTH, u32 little-endian
constexpr size_t TRAILER_SIZE = 4;   // BCRC
constexpr size_t RX_BUFFER_MAX = 1 << 20;
constexpr size_t RX_CHUNK = 65536;         // bytes asked of one recv()
constexpr size_t RX_REFILL = 4096;         // recv() at every pump only below this many buffered bytes
constexpr uint64_t RECV_EVERY = 16;        // ... else at every 16th (4096 busy cycles)
constexpr uint64_t BUSY_BATCH = 256;       // cycles between socket polls while rx has bytes
constexpr uint64_t WAIT_BATCH = 32;        // ... while a request waits for its next bytes
constexpr uint64_t IDLE_AFTER = 4096;      // cycles without a handshake: a request is dropped
constexpr uint64_t CATCH_UP_BATCH = 256;   // idle cycles between socket polls (~45 us: latency)
// Answers of a pipelining client (more requests already buffered) wait for
// one send() until this many bytes are ready or the oldest has waited this
// long; each send() over loopback also runs the client's receive path and
// wakes it: ~7-12 % of the harness's CPU time at a send every 256-cycle batch.
constexpr size_t TX_GATHER = 16384;
constexpr uint64_t TX_HOLD_NS = 200000;

struct Options {
    int port = 0;
    bool reset_on_connect = false;
    bool watch_stdin = false;
    double max_lead_ms = 10.0;
    std::string replay_in;    // --replay IN OUT: no socket (Harness::replay)
    std::string replay_out;
};

[[noreturn]] void usage(const char* msg) {
    std::fprintf(stderr,
                 "tricopy-sim: %s\n"
                 "usage: tricopy-sim [--port N] [--reset-on-connect] [--watch-stdin] "
                 "[--max-lead-ms MS] | --replay IN OUT\n",
                 msg);
    std::exit(2);
}

Options parse(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) usage((a + " needs a value").c_str());
            return argv[++i];
        };
        if (a == "--port") {
            char* end;
            std::string v = value();
            long p = std::strtol(v.c_str(), &end, 10);
            if (*end || p < 0 || p > 65535) usage(("bad --port " + v).c_str());
            o.port = int(p);
        } else if (a == "--max-lead-ms") {
            char* end;
            std::string v = value();
            o.max_lead_ms = std::strtod(v.c_str(), &end);
            if (*end || o.max_lead_ms < 0) usage(("bad --max-lead-ms " + v).c_str());
        } else if (a == "--replay") {
            o.replay_in = value();
            o.replay_out = value();
        } else if (a == "--reset-on-connect") {
            o.reset_on_connect = true;
        } else if (a == "--watch-stdin") {
            o.watch_stdin = true;
        } else if (a.rfind("+verilator", 0) == 0) {
            // Verilator runtime options pass through
        } else {
            usage(("unknown argument " + a).c_str());
        }
    }
    return o;
}

uint64_t now_ns() {
    return uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(
                        std::chrono::steady_clock::now().time_since_epoch())
                        .count());
}

void set_nonblocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

// A byte FIFO in one contiguous buffer: recv() writes at its end, send()
// reads from its start, and the stepping loop reads bytes in place, without
// std::deque's per-byte bookkeeping. The buffer only grows (zero-filled once):
// the bytes still queued move to its start when the space consumed before
// them is at least as large as they are, so each byte moves at most once on
// average.
struct ByteQueue {
    std::vector<uint8_t> buf;
    size_t head = 0;   // first queued byte
    size_t tail = 0;   // one past the last

    size_t size() const { return tail - head; }
    bool empty() const { return head == tail; }
    const uint8_t* data() const { return buf.data() + head; }
    void consume(size_t n) {
        head += n;
        if (head == tail) head = tail = 0;
    }
    void clear() { head = tail = 0; }
    // Space for at least n bytes after the last; commit() what was written.
    uint8_t* room(size_t n) {
        if (buf.size() - tail < n) {
            if (head >= size()) {
                std::memmove(buf.data(), buf.data() + head, size());
                tail -= head;
                head = 0;
            }
            if (buf.size() - tail < n) buf.resize(std::max(2 * buf.size(), tail + n));
        }
        return buf.data() + tail;
    }
    void commit(size_t n) { tail += n; }
    void push(uint8_t b) {
        *room(1) = b;
        tail++;
    }
};

// Tracks frame boundaries in the engine's output, so that a client which
// connects while an answer is half sent gets whole frames only.
struct TxFramer {
    uint8_t header[HEADER_SIZE];
    size_t pos = 0;          // bytes of the current frame seen
    size_t total = HEADER_SIZE;
    bool deliver = false;    // this frame goes to the client

    // Returns whether this byte goes to the client.
    bool byte(uint8_t b, bool client) {
        if (pos == 0) deliver = client;
        if (pos < HEADER_SIZE) header[pos] = b;
        pos++;
        if (pos == HEADER_SIZE) {
            uint32_t length = uint32_t(header[LENGTH_AT]) | uint32_t(header[LENGTH_AT + 1]) << 8 |
                              uint32_t(header[LENGTH_AT + 2]) << 16 |
                              uint32_t(header[LENGTH_AT + 3]) << 24;
            total = HEADER_SIZE + size_t(length) + TRAILER_SIZE;
        }
        bool out = deliver && client;
        if (pos == total) {
            pos = 0;
            total = HEADER_SIZE;
        }
        return out;
    }
};

class Harness {
  public:
    explicit Harness(const Options& o) : opt_(o) {
        ctx_ = std::make_unique<VerilatedContext>();
        top_ = std::make_unique<Vharness_top>(ctx_.get());
        top_->clk = 0;
        top_->in_valid = 0;
        top_->rst = 0;
        top_->eval();   // the first eval() runs the initial blocks; edge() skips that check
        reset();
    }

    void listen_on(int port) {
        lfd_ = socket(AF_INET, SOCK_STREAM, 0);
        if (lfd_ < 0) die("socket");
        int one = 1;
        setsockopt(lfd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons(uint16_t(port));
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (bind(lfd_, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0) die("bind");
        if (listen(lfd_, 4) < 0) die("listen");
        set_nonblocking(lfd_);
        socklen_t len = sizeof a;
        getsockname(lfd_, reinterpret_cast<sockaddr*>(&a), &len);
        // The bridge reads this line to learn the port (sim/bridge.py).
        std::printf("PORT %d\n", ntohs(a.sin_port));
        std::fflush(stdout);
    }

    int run() {
        const uint64_t start = now_ns();
        const uint64_t max_lead = uint64_t(opt_.max_lead_ms * 1e-3 * CLK_HZ);
        uint64_t last_report = start;
        const bool stats = std::getenv("TRICOPY_SIM_STATS") != nullptr;
        for (;;) {
            // Wall time in cycles: 128-bit product, no overflow for centuries.
            uint64_t wall = uint64_t((unsigned __int128)(now_ns() - start) * CLK_HZ / 1000000000u);
            // Work: bytes to take, an answer to finish, or a request taken
            // whose answer has not started yet (given up after IDLE_AFTER
            // quiet cycles: a refused or truncated frame has no answer).
            // Only work may run ahead of wall time: idle cycles that ran
            // ahead would make the next request wait for wall time.
            bool waiting = pending_ && cycles_ - last_handshake_ < IDLE_AFTER;
            bool work = !rx_.empty() || framer_.pos != 0 || waiting;
            if (work && cycles_ < wall + max_lead) {
                step(rx_.empty() ? WAIT_BATCH : BUSY_BATCH);
            } else if (cycles_ < wall) {
                step(std::min(wall - cycles_, CATCH_UP_BATCH));
            } else {
                // Ahead of wall time (or level with it): sleep until a socket
                // wakes us or wall time has moved on by about a millisecond.
                uint64_t ahead_ms = (cycles_ - wall) * 1000 / CLK_HZ;
                flush();   // no answer is held while the harness sleeps
                if (!wait_io(int(std::max<uint64_t>(1, ahead_ms)))) return 0;
            }
            if (!pump()) return 0;
            // A harness that is never idle must still notice its parent leaving.
            if (opt_.watch_stdin && ++pumps_ % 256 == 0 && !wait_io(0, true)) return 0;
            uint64_t t = now_ns();
            if (stats && t - last_report > 1000000000u) {
                last_report = t;
                // busy rate: cycles per second of stepping, the harness's speed
                std::fprintf(stderr, "tricopy-sim: cycles %llu wall %.3f s busy %.0f cycles/s\n",
                             (unsigned long long)cycles_, (t - start) * 1e-9,
                             step_ns_ ? step_cycles_ * 1e9 / double(step_ns_) : 0.0);
            }
        }
    }

    // The byte stream of IN through the RTL from reset, one byte a cycle as
    // the FIFO takes them, flat out: no socket, no wall time. Every output
    // byte goes to OUT. Ends when IN is consumed and no byte has come out for
    // IDLE_AFTER cycles (a request's answer has not started by then). Prints
    // the cycles and the CPU time of the stepping alone, the model's speed
    // without the socket work (docs/sim.md, "Harness speed").
    int replay(const std::string& in_path, const std::string& out_path) {
        std::FILE* in = std::fopen(in_path.c_str(), "rb");
        if (!in) die(in_path.c_str());
        std::vector<uint8_t> input;
        uint8_t buf[65536];
        for (size_t n; (n = std::fread(buf, 1, sizeof buf, in)) > 0;) input.insert(input.end(), buf, buf + n);
        std::fclose(in);
        std::vector<uint8_t> output;
        size_t pos = 0;
        uint64_t quiet = 0;
        timespec t0, t1;
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t0);
        const uint64_t start = cycles_;
        while (pos < input.size() || quiet < IDLE_AFTER) {
            bool rx_take = pos < input.size() && top_->in_ready;
            top_->in_valid = rx_take;
            if (rx_take) top_->in_data = input[pos];
            bool tx_take = top_->out_valid;
            uint8_t out = top_->out_data;
            edge();
            pos += rx_take;
            quiet = tx_take ? 0 : quiet + 1;
            if (tx_take) output.push_back(out);
        }
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t1);
        std::FILE* out = std::fopen(out_path.c_str(), "wb");
        if (!out || std::fwrite(output.data(), 1, output.size(), out) != output.size() ||
            std::fclose(out) != 0)
            die(out_path.c_str());
        uint64_t ns = uint64_t(t1.tv_sec - t0.tv_sec) * 1000000000u + t1.tv_nsec - t0.tv_nsec;
        std::printf("REPLAY cycles %llu cpu_ns %llu\n", (unsigned long long)(cycles_ - start),
                    (unsigned long long)ns);
        return 0;
    }

  private:
    [[noreturn]] static void die(const char* what) {
        std::perror(what);
        std::exit(1);
    }

    void reset() {
        top_->rst = 1;
        top_->in_valid = 0;
        for (int i = 0; i < 5; i++) tick();   // the engine's rst is registered: 4 cycles of it
        top_->rst = 0;
        framer_ = TxFramer{};
        pending_ = false;
    }

    // One cycle: one edge of clk, one eval. The sim build clocks every
    // register on either edge (`always @(edge clk)`, sim/build.py), so a
    // cycle is a toggle, not a rising and a falling edge (two evals).
    // The evaluation is called without its phases (above): the clock edge
    // is this call. The trigger's remembered clk is kept in step, so that
    // an eval() would see no edge that edge() has not already run.
    void edge() {
        top_->clk = !top_->clk;
        top_->rootp->__Vtrigprevexpr___TOP__clk__0 = top_->clk;
        Vharness_top___024root___nba_sequent__TOP__0(top_->rootp);
        cycles_++;
    }

    void tick() { edge(); }

    // Run n cycles. IN_READY, OUT_VALID and OUT_DATA are register outputs
    // (harness_top.v), settled since the last edge whatever the inputs, so
    // both handshakes are decided before the edge without another eval.
    void step(uint64_t n) {
        const uint64_t t0 = now_ns();
        const bool client = cfd_ >= 0;
        const uint8_t* in = rx_.data();
        const size_t avail = rx_.size();
        size_t taken = 0;
        for (uint64_t i = 0; i < n; i++) {
            bool rx_take = taken < avail && top_->in_ready;
            top_->in_valid = rx_take;
            if (rx_take) top_->in_data = in[taken];
            bool tx_take = top_->out_valid;   // the engine's tx.ready is tied to 1
            uint8_t out = top_->out_data;
            edge();
            if (rx_take) {
                taken++;
                last_handshake_ = last_take_ = cycles_;
                pending_ = true;
            }
            if (tx_take) {
                if (framer_.pos == 0) answer_start_ = cycles_;
                if (framer_.byte(out, client)) tx_.push(out);
                last_handshake_ = cycles_;
                // An answer is complete: send it now rather than later if no
                // more requests are here (the client waits for it); for a
                // pipelining client answers gather (pump(), TX_GATHER). Its
                // request is done; bytes taken while it went out belong to
                // the next one (a request is whole before its answer).
                if (framer_.pos == 0) {
                    pending_ = last_take_ >= answer_start_;
                    if (!tx_.empty() && taken == avail) {
                        n = i + 1;
                        break;
                    }
                }
            }
        }
        rx_.consume(taken);
        top_->in_valid = 0;
        step_cycles_ += n;
        step_ns_ += now_ns() - t0;
    }

    void drop_client() {
        close(cfd_);
        cfd_ = -1;
        rx_.clear();
        tx_.clear();
        tx_since_ = 0;
    }

    // Move bytes between the socket and the buffers, accept a client.
    // Returns false when the harness should exit.
    bool pump() {
        // accept() only when a connection waits: on a non-blocking listening
        // socket with none, Linux still allocates a socket, a file and an
        // inode and frees them again, which at a pump every 256 cycles was
        // three quarters of an idle harness's CPU time with no client
        // (~41 % of a core, against ~12 % with one). A zero-timeout poll()
        // asks without allocating.
        pollfd lp{lfd_, POLLIN, 0};
        if (cfd_ < 0 && poll(&lp, 1, 0) > 0) {
            int fd = accept(lfd_, nullptr, nullptr);
            if (fd >= 0) {
                set_nonblocking(fd);
                int one = 1;
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                cfd_ = fd;
                if (opt_.reset_on_connect) reset();
            }
        }
        if (cfd_ < 0) return true;
        // More than a batch's worth of bytes already here: no recv() this
        // time (it would mostly fail with EAGAIN, a syscall per batch), but
        // still one every RECV_EVERY pumps, so that a client that left is
        // noticed (and its buffered bytes dropped) as soon as before, within
        // a few thousand cycles, not after the whole buffer went into the RTL.
        // Each recv() takes all the socket holds, up to the buffer's bound,
        // straight into the queue.
        bool refill = rx_.size() < RX_REFILL || ++recv_skipped_ % RECV_EVERY == 0;
        while (refill && rx_.size() < RX_BUFFER_MAX) {
            size_t want = std::min(RX_CHUNK, RX_BUFFER_MAX - rx_.size());
            ssize_t n = recv(cfd_, rx_.room(want), want, 0);
            if (n > 0) rx_.commit(size_t(n));
            if (n > 0) continue;
            if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
                drop_client();
                return true;
            }
            break;
        }
        if (tx_.empty()) return true;
        // Answers of a pipelining client gather (TX_GATHER); the client
        // waits for nothing while more of its requests are still to go in.
        uint64_t t = now_ns();
        if (tx_since_ == 0) tx_since_ = t;
        if (!rx_.empty() && tx_.size() < TX_GATHER && t - tx_since_ < TX_HOLD_NS) return true;
        flush();
        return true;
    }

    // Send every answer byte the socket takes now (a client it fails for is
    // dropped, as in pump()).
    void flush() {
        while (cfd_ >= 0 && !tx_.empty()) {
            ssize_t n = send(cfd_, tx_.data(), tx_.size(), MSG_NOSIGNAL);
            if (n > 0) {
                tx_.consume(size_t(n));
                continue;
            }
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) break;
            drop_client();
            break;
        }
        if (tx_.empty()) tx_since_ = 0;
    }

    // Sleep until a socket or stdin is ready, or timeout_ms; false: stdin closed.
    bool wait_io(int timeout_ms, bool stdin_only = false) {
        pollfd fds[3];
        int n = 0;
        if (!stdin_only) fds[n++] = {cfd_ >= 0 ? cfd_ : lfd_, POLLIN, 0};
        int stdin_at = -1;
        if (opt_.watch_stdin) {
            stdin_at = n;
            fds[n++] = {0, POLLIN, 0};
        }
        if (poll(fds, n, timeout_ms) > 0 && stdin_at >= 0 && fds[stdin_at].revents) {
            // The parent closed our stdin (or died): stop the engine with it.
            char c;
            if (read(0, &c, 1) <= 0) return false;
        }
        return true;
    }

    Options opt_;
    std::unique_ptr<VerilatedContext> ctx_;
    std::unique_ptr<Vharness_top> top_;
    int lfd_ = -1;
    int cfd_ = -1;
    ByteQueue rx_;
    ByteQueue tx_;
    uint64_t tx_since_ = 0;      // when a pump() first held the answers in tx_ (0: none held)
    TxFramer framer_;
    uint64_t cycles_ = 0;
    uint64_t last_handshake_ = 0;
    bool pending_ = false;       // a request was taken and its answer is not out yet
    uint64_t last_take_ = 0;     // cycle of the last rx byte taken
    uint64_t answer_start_ = 0;  // cycle of the first byte of the answer going out
    uint64_t pumps_ = 0;
    uint64_t recv_skipped_ = 0;  // pumps with a full buffer, for RECV_EVERY
    uint64_t step_cycles_ = 0;   // for the stats line
    uint64_t step_ns_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
    Verilated::commandArgs(argc, argv);
    Options o = parse(argc, argv);
    Harness h(o);
    if (!o.replay_in.empty()) return h.replay(o.replay_in, o.replay_out);
    h.listen_on(o.port);
    return h.run();
}
