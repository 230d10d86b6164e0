/* The skeleton of `tricopy bench floor` (host/tools/bench_floor.py) in C:
 * the same three processes, the same messages and the same system calls
 * per batch, with no interpreter and no event-loop framework, so that the
 * bench can say what the write path's floor is for native code on this
 * machine.  One process per role, one poll() loop, blocking sockets read
 * when poll() says so; TLS 1.3 with the cluster's certificates through
 * OpenSSL, or plain TCP.  No safety either (see bench_floor.py).
 *
 *   floor_native ROLE DIR SECONDARY_PORT RELAY_PORT NBD_PORT SIZE tls|plain
 *
 * Built by bench_floor.py with the system's C compiler (libssl-dev).  A
 * bench, not a server: requests larger than its 8 MiB buffers, or more
 * than 64 NBD clients at once, are not handled. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nmmintrin.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAXC 64
#define BUF (8u << 20)

static void die(const char *what) {
    fprintf(stderr, "floor_native: %s: %s\n", what, strerror(errno));
    ERR_print_errors_fp(stderr);
    exit(1);
}

typedef struct {
    int fd;
    SSL *ssl;
    unsigned char *in;
    size_t len;
} conn;

static SSL_CTX *ctx_for(const char *dir, const char *role, int server) {
    char path[512];
    SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    snprintf(path, sizeof path, "%s/certs/%s.pem", dir, role);
    if (SSL_CTX_use_certificate_file(ctx, path, SSL_FILETYPE_PEM) != 1) die(path);
    snprintf(path, sizeof path, "%s/certs/%s.key", dir, role);
    if (SSL_CTX_use_PrivateKey_file(ctx, path, SSL_FILETYPE_PEM) != 1) die(path);
    snprintf(path, sizeof path, "%s/certs/ca.pem", dir);
    if (SSL_CTX_load_verify_locations(ctx, path, NULL) != 1) die(path);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    /* No TLS 1.3 session tickets: a ticket is a record with no application
     * data, and SSL_read on a blocking socket would wait past it for data
     * that is not coming (the sites resume no sessions either). */
    SSL_CTX_set_num_tickets(ctx, 0);
    /* Read what the socket holds, not one record a call: conn_read then
     * decrypts every record that arrived (as asyncio's TLS layer does), so
     * the relay's fdatasync covers all of them -- the group commit. */
    SSL_CTX_set_read_ahead(ctx, 1);
    return ctx;
}

static void conn_init(conn *c, int fd, SSL_CTX *ctx, int server) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    c->in = malloc(BUF);
    c->len = 0;
    c->ssl = NULL;
    if (ctx) {
        c->ssl = SSL_new(ctx);
        SSL_set_fd(c->ssl, fd);
        if ((server ? SSL_accept(c->ssl) : SSL_connect(c->ssl)) != 1) die("TLS handshake");
    }
}

/* One read of the socket (and every TLS record it brought); 0 when the peer
 * closed. */
static int conn_read(conn *c) {
    ssize_t n;
    do {
        n = c->ssl ? SSL_read(c->ssl, c->in + c->len, BUF - c->len)
                   : read(c->fd, c->in + c->len, BUF - c->len);
        if (n <= 0) return 0;
        c->len += n;
    } while (c->ssl && SSL_has_pending(c->ssl));
    return 1;
}

static void conn_writev(conn *c, struct iovec *iov, int n) {
    if (!c->ssl) {
        size_t total = 0;
        for (int i = 0; i < n; i++) total += iov[i].iov_len;
        while (total) {          /* blocking socket: short writes are rare, handled */
            ssize_t w = writev(c->fd, iov, n);
            if (w < 0) die("writev");
            total -= w;
            while (w > 0 && (size_t)w >= iov->iov_len) { w -= iov->iov_len; iov++; n--; }
            if (w > 0) { iov->iov_base = (char *)iov->iov_base + w; iov->iov_len -= w; }
        }
        return;
    }
    /* TLS: gather into one record's worth of plaintext, as the sites do */
    static unsigned char *out;
    if (!out) out = malloc(BUF);
    size_t len = 0;
    for (int i = 0; i < n; i++) { memcpy(out + len, iov[i].iov_base, iov[i].iov_len); len += iov[i].iov_len; }
    if (SSL_write(c->ssl, out, len) <= 0) die("SSL_write");
}

static void consume(conn *c, size_t n) {
    memmove(c->in, c->in + n, c->len - n);
    c->len -= n;
}

static int listen_on(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (void *)&a, sizeof a) || listen(fd, 16)) die("listen");
    return fd;
}

static int connect_to(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (void *)&a, sizeof a)) die("connect");
    return fd;
}

static uint32_t crc32c(const unsigned char *p, size_t n) {
    uint64_t crc = 0xFFFFFFFF;
    for (; n >= 8; n -= 8, p += 8) { uint64_t v; memcpy(&v, p, 8); crc = _mm_crc32_u64(crc, v); }
    for (; n; n--, p++) crc = _mm_crc32_u8((uint32_t)crc, *p);
    return (uint32_t)crc ^ 0xFFFFFFFF;
}

/* message: u32 size, u32 count | count x (u64 offset, u32 length, u32 crc) | data */
static size_t message_len(conn *c, size_t pos) {
    uint32_t size;
    if (c->len - pos < 8) return 0;
    memcpy(&size, c->in + pos, 4);
    return c->len - pos - 8 >= size ? 8 + size : 0;
}

static void ack(conn *c, uint32_t upto) {
    struct iovec v = {&upto, 4};
    conn_writev(c, &v, 1);
}

static uint32_t acked_upto(conn *c) {
    size_t n = c->len / 4;
    uint32_t upto = 0;
    if (n) memcpy(&upto, c->in + 4 * (n - 1), 4);
    consume(c, 4 * n);
    return upto;
}

static int open_file(const char *dir, const char *name, long size) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_RDWR | O_CREAT, 0600);
    if (fd < 0 || ftruncate(fd, size)) die(path);
    return fd;
}

static void ready(const char *dir, const char *role) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s.ready", dir, role);
    close(open(path, O_WRONLY | O_CREAT, 0644));
}

static conn *accept_one(int lfd, SSL_CTX *ctx) {
    conn *c = malloc(sizeof *c);
    int fd = accept(lfd, NULL, NULL);
    if (fd < 0) die("accept");
    conn_init(c, fd, ctx, 1);
    return c;
}

static void secondary(const char *dir, int port, long size, SSL_CTX *sctx) {
    int vol = open_file(dir, "svol.img", size), lfd = listen_on(port);
    ready(dir, "secondary");
    conn *c = accept_one(lfd, sctx);
    uint32_t done = 0;
    while (conn_read(c)) {
        size_t pos = 0, m;
        int any = 0;
        while ((m = message_len(c, pos))) {
            uint32_t count;
            memcpy(&count, c->in + pos + 4, 4);
            unsigned char *data = c->in + pos + 8 + 16 * count;
            for (uint32_t i = 0; i < count; i++) {
                uint64_t off; uint32_t len, crc;
                memcpy(&off, c->in + pos + 8 + 16 * i, 8);
                memcpy(&len, c->in + pos + 16 + 16 * i, 4);
                memcpy(&crc, c->in + pos + 20 + 16 * i, 4);
                if (crc32c(data, len) != crc) { fprintf(stderr, "DATA_CRC mismatch\n"); exit(1); }
                if (pwrite(vol, data, len, off) != len) die("pwrite");
                data += len;
            }
            done += count;
            pos += m;
            any = 1;
        }
        consume(c, pos);
        if (any) ack(c, done);
    }
}

static void relay(const char *dir, int sport, int rport, long size, SSL_CTX *sctx, SSL_CTX *cctx) {
    int jnl = open_file(dir, "jnl.vol", size);
    conn fwd;
    conn_init(&fwd, connect_to(sport), cctx, 0);
    int lfd = listen_on(rport);
    ready(dir, "relay");
    conn *c = accept_one(lfd, sctx);
    uint32_t done = 0;
    long jpos = 0;
    struct pollfd p[2] = {{c->fd, POLLIN, 0}, {fwd.fd, POLLIN, 0}};
    for (;;) {
        if (poll(p, 2, -1) < 0) die("poll");
        if (p[1].revents & POLLIN) {
            if (!conn_read(&fwd)) return;
            acked_upto(&fwd);
        }
        if (p[0].revents & POLLIN) {
            if (!conn_read(c)) return;
            size_t pos = 0, m;
            uint32_t count = 0;
            while ((m = message_len(c, pos))) {
                uint32_t n;
                memcpy(&n, c->in + pos + 4, 4);
                count += n;
                pos += m;
            }
            if (!pos) continue;
            if (jpos + (long)pos > size) jpos = 0;      /* a ring, as the journal volume */
            if (pwrite(jnl, c->in, pos, jpos) != (ssize_t)pos) die("pwrite journal");
            jpos += pos;
            if (fdatasync(jnl)) die("fdatasync");       /* the group commit: one per read */
            done += count;
            ack(c, done);
            struct iovec v = {c->in, pos};
            conn_writev(&fwd, &v, 1);
            consume(c, pos);
        }
    }
}

typedef struct { conn *c; uint64_t handle; } waiting;

static void primary(const char *dir, int rport, int nport, long size, SSL_CTX *cctx) {
    int vol = open_file(dir, "pvol.img", size);
    conn link;
    conn_init(&link, connect_to(rport), cctx, 0);
    int lfd = listen_on(nport);
    ready(dir, "primary");
    conn *clients[MAXC] = {0};
    int handshaking[MAXC] = {0}, nclients = 0;
    waiting *fifo = malloc(sizeof(waiting) * 65536);
    size_t head = 0, tail = 0;
    uint32_t acked = 0;
    unsigned char *msg = malloc(BUF);
    for (;;) {
        struct pollfd p[MAXC + 2] = {{lfd, POLLIN, 0}, {link.fd, POLLIN, 0}};
        for (int i = 0; i < nclients; i++) p[2 + i] = (struct pollfd){clients[i] ? clients[i]->fd : -1, POLLIN, 0};
        if (poll(p, 2 + nclients, -1) < 0) die("poll");
        int slot = 0;
        while (slot < nclients && clients[slot]) slot++;
        if ((p[0].revents & POLLIN) && slot < MAXC) {
            conn *c = malloc(sizeof *c);
            conn_init(c, accept(lfd, NULL, NULL), NULL, 1);
            unsigned char hello[18];
            uint64_t magic = htobe64(0x4E42444D41474943ull), opt = htobe64(0x49484156454F5054ull);
            uint16_t flags = htons(3);
            memcpy(hello, &magic, 8); memcpy(hello + 8, &opt, 8); memcpy(hello + 16, &flags, 2);
            struct iovec v = {hello, 18};
            conn_writev(c, &v, 1);
            handshaking[slot] = 2;              /* 2: client flags due; 1: options */
            clients[slot] = c;
            if (slot == nclients) nclients++;
        }
        if (p[1].revents & POLLIN) {
            if (!conn_read(&link)) return;
            uint32_t upto = acked_upto(&link);
            /* replies per client, one writev each */
            struct iovec v[MAXC][64];
            unsigned char rep[MAXC][64][16];
            int nv[MAXC] = {0};
            while (acked < upto) {
                waiting w = fifo[head++ % 65536];
                int k = 0;
                while (k < nclients && clients[k] != w.c) k++;
                acked++;
                if (k == nclients) continue;     /* that client has gone */
                uint32_t m = htonl(0x67446698), e = 0;
                uint64_t h = w.handle;            /* echoed as it came: big-endian bytes */
                memcpy(rep[k][nv[k]], &m, 4); memcpy(rep[k][nv[k]] + 4, &e, 4); memcpy(rep[k][nv[k]] + 8, &h, 8);
                v[k][nv[k]] = (struct iovec){rep[k][nv[k]], 16};
                if (++nv[k] == 64) { conn_writev(w.c, v[k], 64); nv[k] = 0; }
            }
            for (int k = 0; k < nclients; k++) if (nv[k]) conn_writev(clients[k], v[k], nv[k]);
        }
        for (int i = 0; i < nclients; i++) {
            conn *c = clients[i];
            if (!c || !(p[2 + i].revents & (POLLIN | POLLHUP))) continue;
            if (!conn_read(c)) { close(c->fd); clients[i] = NULL; continue; }
            size_t pos = 0;
            while (handshaking[i]) {
                if (handshaking[i] == 2) {
                    if (c->len - pos < 4) break;
                    pos += 4; handshaking[i] = 1; continue;
                }
                if (c->len - pos < 16) break;
                uint32_t opt, len;
                memcpy(&opt, c->in + pos + 8, 4); memcpy(&len, c->in + pos + 12, 4);
                opt = ntohl(opt); len = ntohl(len);
                if (c->len - pos < 16 + len) break;
                pos += 16 + len;
                unsigned char r[20 + 12];
                uint64_t rm = htobe64(0x3E889045565A9ull);
                uint32_t o = htonl(opt), t, l;
                memcpy(r, &rm, 8); memcpy(r + 8, &o, 4);
                if (opt == 7 || opt == 6) {        /* GO / INFO: the export's size and flags */
                    t = htonl(3); l = htonl(12);
                    memcpy(r + 12, &t, 4); memcpy(r + 16, &l, 4);
                    uint16_t it = 0, tf = htons(1 | 4);
                    uint64_t sz = htobe64(size);
                    memcpy(r + 20, &it, 2); memcpy(r + 22, &sz, 8); memcpy(r + 30, &tf, 2);
                    struct iovec v = {r, 32};
                    conn_writev(c, &v, 1);
                    t = htonl(1); l = 0;
                    memcpy(r + 12, &t, 4); memcpy(r + 16, &l, 4);
                    v.iov_len = 20;
                    conn_writev(c, &v, 1);
                    if (opt == 7) handshaking[i] = 0;
                } else {
                    t = htonl(opt == 2 ? 1 : 0x80000001u); l = 0;
                    memcpy(r + 12, &t, 4); memcpy(r + 16, &l, 4);
                    struct iovec v = {r, 20};
                    conn_writev(c, &v, 1);
                }
            }
            /* requests: magic u32, flags u16, type u16, handle u64, offset u64, length u32 */
            size_t mlen = 8, count = 0;
            unsigned char *entries = msg + 8;
            struct iovec data[1024];
            while (!handshaking[i] && c->len - pos >= 28 && count < 1024) {
                uint16_t type; uint64_t handle, off; uint32_t len;
                memcpy(&type, c->in + pos + 6, 2); memcpy(&handle, c->in + pos + 8, 8);
                memcpy(&off, c->in + pos + 16, 8); memcpy(&len, c->in + pos + 24, 4);
                type = ntohs(type); off = be64toh(off); len = ntohl(len);
                if (type == 1) {
                    if (c->len - pos - 28 < len) break;
                    unsigned char *d = c->in + pos + 28;
                    if (pwrite(vol, d, len, off) != len) die("pwrite");
                    uint32_t crc = crc32c(d, len);
                    memcpy(entries + 16 * count, &off, 8); memcpy(entries + 16 * count + 8, &len, 4);
                    memcpy(entries + 16 * count + 12, &crc, 4);
                    data[count] = (struct iovec){d, len};
                    mlen += 16 + len;
                    fifo[tail++ % 65536] = (waiting){c, handle};
                    count++;
                    pos += 28 + len;
                } else {
                    pos += 28;
                    if (type == 2) { close(c->fd); clients[i] = NULL; break; }
                    unsigned char r[16];
                    uint32_t m = htonl(0x67446698), e = 0;
                    memcpy(r, &m, 4); memcpy(r + 4, &e, 4); memcpy(r + 8, &handle, 8);
                    struct iovec v = {r, 16};
                    conn_writev(c, &v, 1);
                }
            }
            if (count) {
                uint32_t sz = mlen - 8, n = count;
                memcpy(msg, &sz, 4); memcpy(msg + 4, &n, 4);
                struct iovec v[1025];
                v[0] = (struct iovec){msg, 8 + 16 * count};
                for (size_t k = 0; k < count; k++) v[1 + k] = data[k];
                conn_writev(&link, v, 1 + count);
            }
            if (clients[i]) consume(c, pos);
        }
    }
}

int main(int argc, char **argv) {
    if (argc != 8) { fprintf(stderr, "usage: floor_native ROLE DIR SPORT RPORT NPORT SIZE tls|plain\n"); return 2; }
    const char *role = argv[1], *dir = argv[2];
    int sport = atoi(argv[3]), rport = atoi(argv[4]), nport = atoi(argv[5]);
    long size = atol(argv[6]);
    int tls = !strcmp(argv[7], "tls");
    SSL_CTX *sctx = tls ? ctx_for(dir, role, 1) : NULL, *cctx = tls ? ctx_for(dir, role, 0) : NULL;
    if (!strcmp(role, "secondary")) secondary(dir, sport, size, sctx);
    else if (!strcmp(role, "relay")) relay(dir, sport, rport, size, sctx, cctx);
    else primary(dir, rport, nport, size, cctx);
    return 0;
}
