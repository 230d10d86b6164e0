"""``tricopy linkemu``: a TCP link emulator between two sites (no netem needed).

An asyncio proxy: a site connects to ``listen``, the emulator connects on to
``target`` and moves the bytes both ways, opaquely (TLS stays end to end: the
emulator holds no key and never parses a frame).  On the way it adds

* **delay**, one way, per direction, with **jitter**: each chunk read gets a
  release time ``arrival (+ serialization at the rate) + delay (+ jitter)``,
  never earlier than the chunk before it in the same direction (no reordering
  inside a direction); one pump per direction sleeps until the head's release
  time (``loop.call_at``, never ``sleep(delay)`` per chunk) and writes every
  chunk that is due in one call;
* a **bandwidth** limit (bytes/s per direction): a chunk's transmission
  starts when the previous one's ended;

and, switchable while it runs, **faults**:

| fault | what the sites see |
|---|---|
| ``stall`` | the link freezes: bytes are held (both ways, new connections too) and delivered when the stall ends; a stall longer than the sites' liveness timeout (3 x heartbeat) makes them drop the link |
| ``blackhole`` | a partition: bytes are dropped silently both ways, new connections are accepted but lead nowhere; after it the old connections have lost bytes (TLS or the heartbeat timeout ends them) and new ones work |
| ``reset`` | every open connection is aborted with a TCP RST on both sides (one-shot) |
| ``slow_close`` | every open connection stops delivering, and after ``seconds`` gets a FIN on both sides (a graceful close that takes its time) |
| ``corrupt`` | the next ``count`` chunks in the given direction each get one byte flipped (TLS's record MAC must catch it) |

A fault with ``seconds`` ends by itself (stall, blackhole); ``clear`` ends all.

Python API: :class:`LinkEmulator` (``await emu.start()``, ``emu.set(delay=...)``,
``emu.fault("stall", seconds=2)``, ``emu.stats()``, ``await emu.close()``).
Command line: ``tricopy linkemu --listen 127.0.0.1:7100 --target 127.0.0.1:7002
--delay 10 --control unix:/tmp/emu.sock``; the control socket takes the same
JSON lines as a site's (host/rcm/control.py): ``set``, ``fault``, ``clear``,
``status``.  Delays on the command line and the control socket are in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import random
import selectors
import signal
import socket
import struct
from pathlib import Path

__all__ = ["LinkEmulator", "precise_loop", "register", "FAULTS", "DIRECTIONS"]

log = logging.getLogger(__name__)

FAULTS = ("stall", "blackhole", "reset", "slow_close", "corrupt")
DIRECTIONS = ("up", "down")          # up: client -> target, down: target -> client
_HIGH_WATER = 4 << 20                # queued bytes per direction before reading pauses
_EPSILON = 50e-6                     # a chunk due within 50 us is sent with this pump run
_MAX_LATENESS = 0.001                # timer lateness compensated at most
_LATENESS_STEP = 5e-6                # the median tracker's step


class _Shape:
    """Delay, jitter and rate of one direction (seconds, seconds, bytes/s or 0)."""

    __slots__ = ("delay", "jitter", "rate")

    def __init__(self) -> None:
        self.delay = 0.0
        self.jitter = 0.0
        self.rate = 0.0


class _Side(asyncio.Protocol):
    """One socket of a proxied connection: bytes in go to the other side's direction."""

    def __init__(self, conn: "_Conn", direction: str):
        self.conn = conn
        self.direction = direction          # where bytes read here go
        self.transport: asyncio.Transport | None = None
        self.write_paused = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.conn.arrive(self.direction, data)

    def eof_received(self):
        self.conn.eof(self.direction)
        return True                         # keep the other half open (FIN is passed on in order)

    def connection_lost(self, exc) -> None:
        self.conn.lost(self)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.conn.pipes[self.conn.dir_into(self)].kick()


class _Pipe:
    """One direction of one connection: the queue of (release time, chunk) and its pump."""

    def __init__(self, conn: "_Conn", direction: str):
        self.conn = conn
        self.emu = conn.emu
        self.direction = direction
        self.queue: collections.deque = collections.deque()   # [release, bytes | None(=EOF)]
        self.queued = 0
        self.last_release = 0.0
        self.tx_free = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.armed_at = 0.0
        self.armed_wait = 0.0
        self.src_paused = False

    def push(self, data: bytes | None) -> None:
        emu = self.emu
        loop = emu.loop
        now = loop.time()
        shape = emu.shape[self.direction]
        base = now
        if data is not None and shape.rate > 0:
            start = max(now, self.tx_free)
            self.tx_free = start + len(data) / shape.rate
            base = self.tx_free
        t = base + shape.delay
        if shape.jitter > 0:
            t += emu.rng.uniform(-shape.jitter, shape.jitter)
        t = max(t, now, self.last_release)  # never reorder inside a direction
        self.last_release = t
        if data is not None and emu.corrupt_left[self.direction] > 0:
            emu.corrupt_left[self.direction] -= 1
            pos = emu.rng.randrange(len(data))
            flip = emu.rng.randrange(1, 256)
            data = data[:pos] + bytes([data[pos] ^ flip]) + data[pos + 1:]
            emu.counters["corrupted"] += 1
        self.queue.append((t, data))
        if data is not None:
            self.queued += len(data)
            if self.queued > _HIGH_WATER and not self.src_paused:
                src = self.conn.source_of(self.direction)
                if src.transport is not None:
                    src.transport.pause_reading()
                    self.src_paused = True
        self.kick()

    def kick(self) -> None:
        """(Re)arm the pump for the head of the queue."""
        if self.timer is not None or not self.queue or self.emu.holding:
            return
        dst = self.conn.dest_of(self.direction)
        if dst.transport is None or dst.write_paused:
            return                          # resume_writing kicks again
        emu = self.emu
        # Armed early by how late this machine's timers fire (a running median),
        # so that chunks leave at their release time, not ~0.1-0.3 ms after.
        self.armed_at = self.queue[0][0] - emu.lateness
        self.armed_wait = self.armed_at - emu.loop.time()
        self.timer = emu.loop.call_at(self.armed_at, self.pump)

    def pump(self) -> None:
        """Send every chunk that is due, in one write."""
        self.timer = None
        emu = self.emu
        now = emu.loop.time()
        if self.armed_wait > 0.0005:         # a real sleep: learn how late it woke
            # The median, not the mean: a few very late wakes on a busy machine
            # must not make every chunk leave early.
            late = now - self.armed_at
            step = _LATENESS_STEP if late > emu.lateness else -_LATENESS_STEP
            emu.lateness = min(max(emu.lateness + step, 0.0), _MAX_LATENESS)
        if emu.holding:
            return
        dst = self.conn.dest_of(self.direction)
        if dst.transport is None or dst.transport.is_closing():
            return
        due = now + max(_EPSILON, emu.lateness)
        out: list[bytes] = []
        eof = False
        while self.queue and self.queue[0][0] <= due:
            _, data = self.queue.popleft()
            if data is None:
                eof = True
                break
            out.append(data)
            self.queued -= len(data)
        if out:
            n = sum(map(len, out))
            self.emu.counters[f"bytes_{self.direction}"] += n
            dst.transport.write(b"".join(out))
        if eof:
            with contextlib.suppress(OSError, RuntimeError):
                if self.conn.source_of(self.direction).transport is None:
                    dst.transport.close()          # the source is gone: so is this side
                elif dst.transport.can_write_eof():
                    dst.transport.write_eof()      # a FIN, in order behind the data
        if self.src_paused and self.queued < _HIGH_WATER // 2:
            src = self.conn.source_of(self.direction)
            if src.transport is not None and not src.transport.is_closing():
                src.transport.resume_reading()
            self.src_paused = False
        self.kick()

    def drop(self) -> int:
        n = self.queued
        self.queue.clear()
        self.queued = 0
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        return n


class _Conn:
    """One proxied connection: the accepted client side and the upstream side."""

    def __init__(self, emu: "LinkEmulator"):
        self.emu = emu
        self.client = _Side(self, "up")
        self.upstream = _Side(self, "down")
        self.pipes = {d: _Pipe(self, d) for d in DIRECTIONS}
        self.dead = False               # blackholed: bytes go nowhere from now on
        self.closing = False

    def source_of(self, direction: str) -> _Side:
        return self.client if direction == "up" else self.upstream

    def dest_of(self, direction: str) -> _Side:
        return self.upstream if direction == "up" else self.client

    def dir_into(self, side: _Side) -> str:
        return "up" if side is self.upstream else "down"

    def arrive(self, direction: str, data: bytes) -> None:
        if self.dead or self.closing or self.emu.blackholed:
            self.emu.counters["dropped"] += len(data)
            return
        self.pipes[direction].push(data)

    def eof(self, direction: str) -> None:
        if not (self.dead or self.closing or self.emu.blackholed):
            self.pipes[direction].push(None)

    def lost(self, side: _Side) -> None:
        # One socket ended: the other one ends too once what is queued for it is sent
        # (an abort of ours already took both).
        other = self.upstream if side is self.client else self.client
        side.transport = None
        if other.transport is not None and not other.transport.is_closing():
            pipe = self.pipes[self.dir_into(other)]
            if not pipe.queue or self.dead or self.closing:
                other.transport.close()
            else:
                pipe.push(None)
        if self.client.transport is None and self.upstream.transport is None:
            self.emu.conns.discard(self)

    def abort(self) -> None:
        """RST on both sockets."""
        for side in (self.client, self.upstream):
            t = side.transport
            if t is None:
                continue
            sock = t.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            t.abort()
        for pipe in self.pipes.values():
            pipe.drop()

    def fin(self) -> None:
        for pipe in self.pipes.values():
            pipe.drop()
        for side in (self.client, self.upstream):
            t = side.transport
            if t is not None and not t.is_closing():
                t.close()                   # FIN after anything the transport still buffers


class LinkEmulator:
    """The proxy: ``listen`` -> ``target``, with delay, jitter, rate and faults."""

    def __init__(self, target: tuple[str, int], listen: tuple[str, int] = ("127.0.0.1", 0), *,
                 delay: float = 0.0, jitter: float = 0.0, rate: float = 0.0, seed: int = 0,
                 name: str = "link"):
        self.target = target
        self.listen_addr = listen
        self.name = name
        self.rng = random.Random(seed)
        self.shape = {d: _Shape() for d in DIRECTIONS}
        self.set(delay=delay, jitter=jitter, rate=rate)
        self.conns: set[_Conn] = set()
        self.stalled = False
        self.blackholed = False
        self.corrupt_left = {d: 0 for d in DIRECTIONS}
        self.counters = collections.Counter()
        self.lateness = 0.0                 # how early the pumps are armed (learned)
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._server: asyncio.base_events.Server | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port = 0

    # -- life --------------------------------------------------------------------

    async def start(self) -> "LinkEmulator":
        self.loop = asyncio.get_running_loop()
        self._server = await self.loop.create_server(self._accept_protocol, *self.listen_addr)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def address(self) -> tuple[str, int]:
        return (self.listen_addr[0], self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in self._timers.values():
            t.cancel()
        for conn in list(self.conns):
            conn.abort()
        self.conns.clear()

    def _accept_protocol(self) -> _Side:
        conn = _Conn(self)
        self.conns.add(conn)
        self.counters["connections"] += 1
        self.loop.create_task(self._connect_upstream(conn))
        return conn.client

    async def _connect_upstream(self, conn: _Conn) -> None:
        # During a blackhole the connection goes nowhere (a SYN that is never answered
        # would make the client wait too; this one waits for its handshake instead).
        if self.blackholed:
            conn.dead = True
            return
        try:
            await self.loop.create_connection(lambda: conn.upstream, *self.target)
        except OSError as exc:
            log.debug("%s: cannot reach %s:%s: %s", self.name, *self.target, exc)
            self.counters["upstream_refused"] += 1
            if conn.client.transport is not None:
                conn.client.transport.close()
            return
        with contextlib.suppress(OSError):
            conn.upstream.transport.get_extra_info("socket").setsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.client.transport.get_extra_info("socket").setsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if conn.client.transport is None:           # the client left meanwhile
            conn.upstream.transport.close()
            return
        conn.pipes["up"].kick()

    # -- shaping -----------------------------------------------------------------

    def set(self, *, delay: float | None = None, jitter: float | None = None,
            rate: float | None = None, direction: str | None = None) -> None:
        """Seconds of one-way delay and of jitter (+-), bytes/s (0: unlimited);
        ``direction`` "up" or "down", both if None.  Applies to bytes read from now on."""
        for d in ((direction,) if direction else DIRECTIONS):
            s = self.shape[d]
            if delay is not None:
                s.delay = max(0.0, float(delay))
            if jitter is not None:
                s.jitter = max(0.0, float(jitter))
            if rate is not None:
                s.rate = max(0.0, float(rate))

    # -- faults ------------------------------------------------------------------

    @property
    def holding(self) -> bool:
        return self.stalled

    def fault(self, kind: str, *, seconds: float | None = None, direction: str | None = None,
              count: int = 1) -> None:
        """Start a fault (see the module doc); ``seconds`` ends stall/blackhole by itself,
        and is the wait before the FIN of ``slow_close``."""
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; known: {', '.join(FAULTS)}")
        self.counters[f"fault_{kind}"] += 1
        if kind == "stall":
            self.stalled = True
            self._until("stall", seconds)
        elif kind == "blackhole":
            self.blackholed = True
            for conn in self.conns:
                conn.dead = True
                for pipe in conn.pipes.values():
                    self.counters["dropped"] += pipe.drop()
            self._until("blackhole", seconds)
        elif kind == "reset":
            for conn in list(self.conns):
                conn.abort()
        elif kind == "slow_close":
            wait = 1.0 if seconds is None else seconds
            conns = list(self.conns)
            for conn in conns:
                conn.closing = True
                for pipe in conn.pipes.values():
                    pipe.drop()
            self.loop.call_later(wait, lambda: [c.fin() for c in conns])
        elif kind == "corrupt":
            for d in ((direction,) if direction else DIRECTIONS):
                self.corrupt_left[d] += count

    def _until(self, kind: str, seconds: float | None) -> None:
        old = self._timers.pop(kind, None)
        if old is not None:
            old.cancel()
        if seconds is not None:
            self._timers[kind] = self.loop.call_later(seconds, self.end, kind)

    def end(self, kind: str) -> None:
        """End a stall or a blackhole."""
        self._timers.pop(kind, None)
        if kind == "stall" and self.stalled:
            self.stalled = False
            for conn in self.conns:
                for pipe in conn.pipes.values():
                    pipe.kick()
        elif kind == "blackhole":
            self.blackholed = False

    def clear(self) -> None:
        """End every fault and shaping: a plain proxy again."""
        self.end("stall")
        self.end("blackhole")
        self.corrupt_left = {d: 0 for d in DIRECTIONS}
        self.set(delay=0, jitter=0, rate=0)

    def stats(self) -> dict:
        return {"listen": f"{self.address[0]}:{self.address[1]}",
                "target": f"{self.target[0]}:{self.target[1]}",
                "open": len(self.conns), "stalled": self.stalled, "blackholed": self.blackholed,
                "shape": {d: {"delay_ms": s.delay * 1e3, "jitter_ms": s.jitter * 1e3,
                              "rate_bps": s.rate} for d, s in self.shape.items()},
                "counters": dict(self.counters)}

    # -- control socket ------------------------------------------------------------

    def handlers(self) -> dict:
        """Commands for a :class:`~tricopy.host.rcm.control.ControlServer` (ms units)."""

        async def h_set(req):
            ms = lambda k: None if (v := req.number(k, None)) is None else v / 1e3  # noqa: E731
            self.set(delay=ms("delay_ms"), jitter=ms("jitter_ms"),
                     rate=req.number("rate_bps", None), direction=req.text("direction", None))
            return self.stats()

        async def h_fault(req):
            self.fault(req.text("kind"), seconds=req.number("seconds", None),
                       direction=req.text("direction", None), count=req.integer("count", 1))
            return self.stats()

        async def h_end(req):
            self.end(req.text("kind"))
            return self.stats()

        async def h_clear(req):
            self.clear()
            return self.stats()

        async def h_status(req):
            return self.stats()

        return {"set": h_set, "fault": h_fault, "end": h_end, "clear": h_clear,
                "status": h_status}


# -- command line -----------------------------------------------------------------

def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return (host or "127.0.0.1", int(port))


async def _serve(args) -> int:
    from ..rcm.control import ControlServer
    emu = LinkEmulator(_addr(args.target), _addr(args.listen), delay=args.delay / 1e3,
                       jitter=args.jitter / 1e3, rate=args.rate * 125_000, seed=args.seed,
                       name=args.name)
    await emu.start()
    server = None
    if args.control:
        if not args.control.startswith("unix:"):
            raise SystemExit("tricopy linkemu: --control must be unix:PATH")
        server = ControlServer(emu.handlers())
        await server.start(Path(args.control[5:]))
    print(f"linkemu {args.name}: {emu.address[0]}:{emu.address[1]} -> {args.target}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if server is not None:
        await server.close()
    await emu.close()
    return 0


def precise_loop() -> asyncio.AbstractEventLoop:
    """An event loop whose timers fire within tens of microseconds.

    The default loop waits in ``epoll_wait``, whose timeout is in whole
    milliseconds (asyncio rounds up): a release time lands up to 1 ms late,
    0.2 to 0.6 ms on average here (20 % of a 1 ms delay).  ``select()`` takes
    microseconds, and the emulator watches only a few sockets.  (uvloop's
    timers are whole milliseconds too.)
    """
    return asyncio.SelectorEventLoop(selectors.SelectSelector())


def _run(args) -> int:
    with asyncio.Runner(loop_factory=precise_loop) as runner:
        return runner.run(_serve(args))


def register(subparsers) -> None:
    p = subparsers.add_parser("linkemu", help="TCP link emulator: delay, jitter, rate, faults",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", required=True, help="host:port to accept on (port 0: any)")
    p.add_argument("--target", required=True, help="host:port to connect on to")
    p.add_argument("--delay", type=float, default=0.0, help="one-way delay, ms")
    p.add_argument("--jitter", type=float, default=0.0, help="jitter (+-), ms")
    p.add_argument("--rate", type=float, default=0.0, help="bandwidth per direction, Mbit/s")
    p.add_argument("--seed", type=int, default=0, help="jitter and corruption choices")
    p.add_argument("--name", default="link")
    p.add_argument("--control", help="unix:PATH: JSON-lines control socket (set, fault, ...)")
    p.set_defaults(func=_run)
