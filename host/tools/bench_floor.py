"""``tricopy bench floor``: what three Python processes cost per write when
they do nothing but the write path's I/O, beside the real sites in one run.

The question it answers: can a site written in Python on asyncio meet the
write path's CPU aims at all, or is the floor of the design (the processes,
the loopback hops, TLS, the fdatasync, the event loop) already above them?
The *skeleton* is three processes wired as the sites are, on uvloop, with
``asyncio.Protocol`` callbacks (the cheapest asyncio offers) and no logic
of ours beyond the bytes:

* **primary**: an NBD server (just enough handshake for fio's libnbd);
  each batch of WRITEs the socket delivers is written to the local volume
  (one ``pwrite`` each), its DATA_CRCs computed, and sent to the relay as
  one message over TLS 1.3 with mutual certificates, like a JNLWR batch;
  the NBD replies go when the relay's cumulative ACK comes back;
* **relay**: appends each message to a journal file (one ``pwritev``),
  one ``fdatasync`` per read from the socket (a group commit, in the event
  loop, the cheapest way), ACKs the primary, forwards the message to the
  secondary over TLS;
* **secondary**: checks each write's DATA_CRC, ``pwrite``s it to its
  volume, ACKs.

No SEQ#, no stamps, no engine, no state files, no restore point, no
ordering or recovery logic: none of the safety the sites give. So the
skeleton is a lower bound for any design that keeps these processes,
hops and syscalls in Python, and the gap between it and the sites is what
the sites' own Python costs. The same skeleton in C (``floor_native.c``,
one ``poll()`` loop per process, OpenSSL) says what native code would
reach. Skeletons and sites each run twice, their links
on TLS (as the sites run by default) and in plain TCP (what the encryption
costs).
CPU per write is user + system time from ``/proc`` over the fio job,
divided by the writes, for each process.
"""

from __future__ import annotations

import asyncio
import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from ..nbd import protocol as nbd
from ..wire import tls
from ..wire.protocol import crc32c

__all__ = ["Skeleton", "spawn", "bench_floor", "register_bench"]

ROLES = ("secondary", "relay", "primary")

# NBD, the fixed-newstyle handshake and simple replies, with the codec's
# constants (host/nbd/protocol.py is the full server; this one answers only
# what fio's libnbd asks, without its per-request events).
_REQ = struct.Struct(">IHHQQI")          # magic, flags, type, handle, offset, length
_SIMPLE = struct.Struct(">IIQ")          # magic, error, handle
# One skeleton message: its body's length and write count, then per write
# (offset, length, DATA_CRC) and the data.
_MSG = struct.Struct("<II")
_ENTRY = struct.Struct("<QII")


def _messages(buf: bytearray):
    """Take the complete messages off the front of ``buf``: their bodies."""
    out, pos = [], 0
    while len(buf) - pos >= _MSG.size:
        size, _count = _MSG.unpack_from(buf, pos)
        if len(buf) - pos - _MSG.size < size:
            break
        out.append(bytes(buf[pos:pos + _MSG.size + size]))
        pos += _MSG.size + size
    del buf[:pos]
    return out


class _Acks(asyncio.Protocol):
    """The far end of a link that only ACKs: counts the cumulative ACKs."""

    def __init__(self, on_ack):
        self.on_ack, self.buf = on_ack, bytearray()

    def data_received(self, data):
        self.buf += data
        n = len(self.buf) // 4
        if n:
            upto = struct.unpack_from("<I", self.buf, 4 * (n - 1))[0]
            del self.buf[:4 * n]
            self.on_ack(upto)


class _SecondaryIn(asyncio.Protocol):
    def __init__(self, fd):
        self.fd, self.buf, self.done = fd, bytearray(), 0

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buf += data
        msgs = _messages(self.buf)
        for msg in msgs:
            _size, count = _MSG.unpack_from(msg)
            pos = _MSG.size + count * _ENTRY.size
            for i in range(count):
                offset, length, crc = _ENTRY.unpack_from(msg, _MSG.size + i * _ENTRY.size)
                data = memoryview(msg)[pos:pos + length]
                if crc32c(data) != crc:
                    raise RuntimeError("DATA_CRC mismatch")  # a bench: stop loudly
                os.pwrite(self.fd, data, offset)
                pos += length
            self.done += count
        if msgs:
            self.transport.write(struct.pack("<I", self.done))


class _RelayIn(asyncio.Protocol):
    def __init__(self, fd, size, forward):
        self.fd, self.size, self.forward = fd, size, forward
        self.pos, self.buf, self.done = 0, bytearray(), 0

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buf += data
        msgs = _messages(self.buf)
        if not msgs:
            return
        total = sum(len(m) for m in msgs)
        if self.pos + total > self.size:
            self.pos = 0                      # a ring, as the journal volume is
        os.pwritev(self.fd, msgs, self.pos)
        self.pos += total
        os.fdatasync(self.fd)                 # the group commit: one per read
        self.done += sum(_MSG.unpack_from(m)[1] for m in msgs)
        self.transport.write(struct.pack("<I", self.done))
        self.forward.writelines(msgs)


class _PrimaryNbd(asyncio.Protocol):
    def __init__(self, fd, size, relay_ready):
        self.fd, self.size, self.relay_ready = fd, size, relay_ready
        self.buf, self.handshaking, self.opts = bytearray(), True, False
        self.pending: list[int] = []          # handles waiting for the relay's ACK
        self.sent = self.acked = 0

    def connection_made(self, transport):
        self.transport = transport
        self.relay = None
        transport.write(struct.pack(">QQH", nbd.NBDMAGIC, nbd.IHAVEOPT,
                                    nbd.NBD_FLAG_FIXED_NEWSTYLE | nbd.NBD_FLAG_NO_ZEROES))

    def on_ack(self, upto):
        n, self.acked = upto - self.acked, upto
        done, self.pending = self.pending[:n], self.pending[n:]
        self.transport.writelines([_SIMPLE.pack(nbd.NBD_SIMPLE_REPLY_MAGIC, 0, h) for h in done])

    def _option(self) -> bool:
        if not self.opts:
            if len(self.buf) < 4:
                return False
            del self.buf[:4]                  # the client's flags
            self.opts = True
        if len(self.buf) < 16:
            return False
        _magic, opt, length = struct.unpack_from(">QII", self.buf)
        if len(self.buf) < 16 + length:
            return False
        del self.buf[:16 + length]
        reply = lambda kind, data=b"": self.transport.write(
            struct.pack(">QIII", nbd.NBD_REP_MAGIC, opt, kind, len(data)) + data)
        if opt in (nbd.NBD_OPT_GO, nbd.NBD_OPT_INFO):
            reply(nbd.NBD_REP_INFO, struct.pack(">HQH", nbd.NBD_INFO_EXPORT, self.size,
                                                nbd.NBD_FLAG_HAS_FLAGS | nbd.NBD_FLAG_SEND_FLUSH))
            reply(nbd.NBD_REP_ACK)
            self.handshaking = opt != nbd.NBD_OPT_GO
        elif opt == nbd.NBD_OPT_ABORT:
            reply(nbd.NBD_REP_ACK)
            self.transport.close()
        else:
            reply(nbd.NBD_REP_ERR_UNSUP)
        return True

    def data_received(self, data):
        self.buf += data
        while self.handshaking and self._option():
            pass
        if self.handshaking:
            return
        entries, chunks, pos, buf = [], [], 0, self.buf
        while len(buf) - pos >= _REQ.size:
            _m, _f, cmd, handle, offset, length = _REQ.unpack_from(buf, pos)
            if cmd == nbd.Cmd.WRITE:
                if len(buf) - pos - _REQ.size < length:
                    break
                body = bytes(buf[pos + _REQ.size:pos + _REQ.size + length])
                os.pwrite(self.fd, body, offset)
                entries.append(_ENTRY.pack(offset, length, crc32c(body)))
                chunks.append(body)
                self.pending.append(handle)
                pos += _REQ.size + length
            else:
                pos += _REQ.size
                if cmd == nbd.Cmd.DISC:
                    self.transport.close()
                    break
                # FLUSH and the rest: answered at once (a floor, not a server)
                self.transport.write(_SIMPLE.pack(nbd.NBD_SIMPLE_REPLY_MAGIC, 0, handle))
        del buf[:pos]
        if entries:
            body = entries + chunks
            size = sum(len(x) for x in body)
            self.relay_ready.writelines([_MSG.pack(size, len(entries)), *body])


class Skeleton:
    """One skeleton process's event loop (run by ``main``)."""

    def __init__(self, role, workdir: Path, ports: dict, size: int, tls: bool = True):
        self.role, self.dir, self.ports, self.size, self.tls = role, workdir, ports, size, tls

    def _ctx(self, make):
        """The sites' own TLS context (host/wire/tls.py) for this role's certificate."""
        if not self.tls:
            return None
        certs = self.dir / "certs"
        return make(SimpleNamespace(ca=certs / "ca.pem", cert=certs / f"{self.role}.pem",
                                    key=certs / f"{self.role}.key"))

    def _file(self, name):
        fd = os.open(self.dir / name, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(fd, self.size)
        return fd

    async def run(self):
        loop = asyncio.get_running_loop()
        host = "127.0.0.1"
        server_ctx, client_ctx = self._ctx(tls.server_context), self._ctx(tls.client_context)
        if self.role == "secondary":
            fd = self._file("svol.img")
            server = await loop.create_server(lambda: _SecondaryIn(fd), host,
                                              self.ports["secondary"], ssl=server_ctx)
        elif self.role == "relay":
            fd = self._file("jnl.vol")
            fwd, _ = await loop.create_connection(lambda: _Acks(lambda upto: None), host,
                                                  self.ports["secondary"], ssl=client_ctx)
            server = await loop.create_server(lambda: _RelayIn(fd, self.size, fwd), host,
                                              self.ports["relay"], ssl=server_ctx)
        else:
            fd = self._file("pvol.img")
            box = {}
            link, _ = await loop.create_connection(
                lambda: _Acks(lambda upto: box["nbd"].on_ack(upto)), host,
                self.ports["relay"], ssl=client_ctx)

            def nbd():
                box["nbd"] = _PrimaryNbd(fd, self.size, link)
                return box["nbd"]
            server = await loop.create_server(nbd, host, self.ports["nbd"])
        (self.dir / f"{self.role}.ready").touch()
        async with server:
            await server.serve_forever()


def build_native(out: Path) -> Path:
    """Compile the C skeleton (``floor_native.c``) into ``out``; a
    RuntimeError with the compiler's last line if it cannot be built (no C
    compiler, no ``libssl-dev``)."""
    src = Path(__file__).with_name("floor_native.c")
    exe = out / "floor_native"
    proc = subprocess.run(["cc", "-O2", "-msse4.2", "-o", str(exe), str(src), "-lssl", "-lcrypto"],
                          capture_output=True, text=True)
    if proc.returncode:
        lines = proc.stderr.strip().splitlines() or ["no output"]
        raise RuntimeError(f"the C skeleton did not build (needs cc and libssl-dev): {lines[-1]}")
    return exe


def spawn(workdir: Path, ports: dict, size: int, tls: bool = True,
          native: Path | None = None) -> dict[str, subprocess.Popen]:
    """Start the three skeleton processes, the far end first; return them
    once each has written its ready file.  ``workdir/certs`` holds the
    certificates (``tricopy certs``) unless ``tls`` is off; ``native``: the
    C skeleton's executable (``build_native``) instead of Python."""
    import json
    procs = {}
    mode = "tls" if tls else "plain"
    for role in ROLES:
        if native is not None:
            cmd = [str(native), role, str(workdir), *(str(ports[r]) for r in (*ROLES[:2], "nbd")),
                   str(size), mode]
        else:
            cmd = [sys.executable, "-m", "tricopy.host.tools.bench_floor", role, str(workdir),
                   json.dumps(ports), str(size), mode]
        with open(workdir / f"{role}.log", "wb") as log:
            procs[role] = subprocess.Popen(cmd, stderr=log)
        deadline = time.monotonic() + 20
        while not (workdir / f"{role}.ready").exists():
            if procs[role].poll() is not None or time.monotonic() > deadline:
                for p in procs.values():
                    p.kill()
                raise RuntimeError(f"skeleton {role} did not start: "
                                   f"{(workdir / f'{role}.log').read_text()[-1500:]}")
            time.sleep(0.02)      # a start-up poll, not a synchronization of the run
    return procs


def _job(procs: dict, uri: str, depth: int, seconds: float, size: int) -> dict:
    from .bench_replicate import fio, loadavg, proc_user_sys
    before = {r: proc_user_sys(p.pid) for r, p in procs.items()}
    t0 = time.monotonic()
    res = fio(uri, "randwrite", 4096, depth, seconds, size)
    wall = time.monotonic() - t0
    writes = max(1, res["iops"] * wall)       # ramp included: as `bench replicate` counts
    after = {r: proc_user_sys(p.pid) for r, p in procs.items()}
    res["cpu_us"] = {r: round(1e6 * (sum(after[r]) - sum(before[r])) / writes) for r in procs}
    # the kernel's share (system time): what no rewrite of our code removes
    res["sys_us"] = round(1e6 * sum(after[r][1] - before[r][1] for r in procs) / writes)
    res["load"] = round(loadavg(), 1)
    return res


def bench_floor(seconds: float = 5.0, depths=(1, 16), rounds: int = 1) -> list[dict]:
    """The skeleton and the sites, alternated per round, 4 KiB randwrite at each depth."""
    from .bench_replicate import Sites, _free_port, _workdir
    from .certs import make_certs
    size = 256 << 20
    results = []
    with _workdir() as tmp:
        root = Path(tmp)
        make_certs(root / "certs", list(ROLES))
        whats = ["skeleton", "skeleton plain", "sites", "sites plain"]
        native = None
        try:
            native = build_native(root)
            whats[2:2] = ["skeleton C", "skeleton C plain"]
        except RuntimeError as exc:
            print(f"bench floor: {exc}; its rows are left out", file=sys.stderr)
        for rnd in range(rounds):
            for what in whats:
                work = root / f"{what.replace(' ', '-')}-{rnd}"
                work.mkdir()
                if what.startswith("skeleton"):
                    (work / "certs").symlink_to(root / "certs")
                    ports = {r: _free_port() for r in (*ROLES, "nbd")}
                    procs = spawn(work, ports, size, tls=not what.endswith("plain"),
                                  native=native if " C" in what else None)
                    stop = None
                    uri = f"nbd://127.0.0.1:{ports['nbd']}/x"
                else:
                    sites = Sites(work, vol_size=size, journal_size=2 * size,
                                  durability="fsync", tls=what == "sites")
                    sites.start()
                    procs, stop, uri = sites.procs, sites, sites.uri()
                try:
                    for depth in depths:
                        res = _job(procs, uri, depth, seconds, size)
                        res.update(what=what, round=rnd)
                        results.append(res)
                finally:
                    if stop is not None:
                        stop.stop()
                    else:
                        for p in procs.values():
                            p.terminate()
                            p.wait(10)
    return results


def _print(results: list[dict]) -> None:
    print(f"{'round':>5} {'what':16} {'QD':>3} {'IOPS':>7} {'p50 µs':>7} "
          f"{'CPU µs/write S / R / P = sum':>30} {'of it system':>12} {'load':>5}")
    for r in results:
        c = r["cpu_us"]
        cpu = f"{c['secondary']} / {c['relay']} / {c['primary']} = {sum(c.values())}"
        print(f"{r['round']:>5} {r['what']:16} {r['iodepth']:>3} {r['iops']:>7} "
              f"{r['p50_us']:>7} {cpu:>30} {r['sys_us']:>12} {r['load']:>5}")


def _run(args) -> int:
    from .bench import machine
    results = bench_floor(args.seconds, args.depths, args.rounds)
    if args.json:
        import json
        print(json.dumps({"machine": machine(), "results": results}, indent=2))
        return 0
    print(f"machine: {machine()}")
    _print(results)
    return 0


def register_bench(which) -> None:
    """Add ``floor`` to the ``tricopy bench`` subcommands."""
    from .bench_replicate import _depths
    text = ("the write path's floor: three skeleton processes doing only its I/O (NBD, "
            "TLS hops, pwrite, fdatasync), in Python and in C, beside the three sites")
    p = which.add_parser("floor", help=text, description=text)
    p.add_argument("--seconds", type=float, default=5.0, help="fio runtime per figure")
    p.add_argument("--rounds", type=int, default=1, help="repeat skeleton + sites (noise)")
    p.add_argument("--depths", type=_depths, default=(1, 16), metavar="D,D,...",
                   help="4 KiB randwrite queue depths (default 1,16)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_run)


def main(argv=None) -> None:
    """A skeleton process: ``python -m tricopy.host.tools.bench_floor ROLE DIR PORTS
    SIZE tls|plain``."""
    import json
    role, workdir, ports, size, tls = argv or sys.argv[1:]
    skeleton = Skeleton(role, Path(workdir), json.loads(ports), int(size), tls == "tls")
    try:
        import uvloop
        uvloop.run(skeleton.run())
    except ImportError:
        asyncio.run(skeleton.run())


if __name__ == "__main__":
    main()
