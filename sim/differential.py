"""Differential run at scale: the RTL in the Verilator harness against the model.

``python -m tricopy.sim.differential --count 1000000 --seed 1`` sends
``count`` random requests, most of them JNLDESC descriptors, to the sim
engine built without data memory (the relay's build, docs/sim.md) and
requires its answer bytes to equal those of the reference,
``EngineStream(EngineModel(memory=0))``, fed the very same bytes.

The model is both the scoreboard and the oracle that steers the stimulus:
each request is generated from the model's state after the previous one
(exact fits of the tail and of the free space, one granule too many for
FULL, RELEASEs to the JOFS of a held journal, LOADs of other rings, SEQ#
near 2**64), so the interesting edges come up often, not once in a million.
Bad frames (a flipped bit in a header, body or trailer, a frame cut short,
garbage between frames, headers with a valid HCRC and a bad version, flag,
type or length) go through the byte front end of both.

The stimulus does not depend on the RTL's answers, so requests are streamed
without waiting for answers (the harness runs flat out, ``max_lead_ms``
unbounded) and answers are compared as they arrive. On a difference the
run stops and names the first differing answer and the request it answers;
the seed replays the run. TIME is frozen (every LOAD TIME carries FREEZE),
so the answers do not depend on when they were made.
"""

from __future__ import annotations

import argparse
import collections
import copy
import queue
import random
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from tricopy.host.engine.model import EngineModel, EngineStream
from tricopy.host.wire import protocol as P
from tricopy.host.wire.protocol import FrameType as T, LoadFlag as LF

__all__ = ["Stimulus", "DifferentialResult", "run_differential", "main"]

T0 = 1_700_000_000_000_000_000       # the frozen engine clock at the start
_U64 = (1 << 64) - 1
_HEAD = struct.Struct("<IBBHI")      # header without HCRC (docs/protocol.md, "Frame")
#: Ring sizes a LOAD RING|DESC picks: the smallest ones (every record fits
#: only a few times, so wraps, exact fits and FULL are frequent), odd
#: multiples of 64, large ones and the largest the engine takes.
_RING_SIZES = (128, 192, 256, 320, 448, 1024, 4096, 65536, 1 << 20, (1 << 40) - 64, 1 << 40)


def _header(ftype: int, length: int, flags: int = 0, version: int = P.VERSION) -> bytes:
    head = _HEAD.pack(P.MAGIC, version, ftype, flags, length)
    return head + struct.pack("<I", P.crc32c(head))


class Stimulus:
    """Random requests steered by the model's state; ``next()`` returns
    (description, request bytes) and the caller feeds the bytes to the model
    before asking for the next one."""

    def __init__(self, rng: random.Random, model: EngineModel):
        self.rng = rng
        self.model = model
        self.tag = 0
        # (SEQ#, JOFS) of the journals the model holds, oldest first: a
        # RELEASE's JOPTR is the JOFS of the journal after UPTO.
        self.placed: collections.deque[tuple[int, int]] = collections.deque()
        self.counts: collections.Counter[str] = collections.Counter()
        self.events: collections.Counter[str] = collections.Counter()
        # the model before the batch just made, and that batch's body
        self._before_batch: EngineModel | None = None
        self._last_batch_body = b""
        self._last_batch_clean = False

    def observe(self, before_next_seq: int, r: int) -> None:
        """After a request was fed: note a journal the model placed (JOFS
        from JIPTR, which is JOFS + R mod SIZE) and drop released ones."""
        m = self.model
        pre, self._before_batch = self._before_batch, None
        if pre is not None:
            # a batch: its descriptors replayed one by one on the model as
            # it was, as far as the real one took them
            taken = m.next_seq - before_next_seq
            body = self._last_batch_body
            self.events[("clean " if self._last_batch_clean else "")
                        + ("batch taken whole" if taken == len(body) // 64
                           else "batch stopped" if taken else "batch refused whole")] += 1
            if taken:
                for i in range(taken):
                    ack = pre.jnldesc(P.Control.unpack(body[64 * i:64 * i + 64]))
                    self._placed(pre, ack.seq, ack.jofs)
                if (pre.next_seq, pre.jiptr, pre.used) != (m.next_seq, m.jiptr, m.used):
                    raise AssertionError("the batch's replay disagrees with the model")
        elif m.next_seq == before_next_seq + 1 and r:
            self._placed(m, before_next_seq, (m.jiptr - r) % m.size)
        if m.held == 0:
            self.placed.clear()
        while self.placed and self.placed[0][0] < m.tail_seq:
            self.placed.popleft()

    def _placed(self, m: EngineModel, seq: int, jofs: int) -> None:
        """A journal ``m`` has just placed: held for RELEASE, and the
        allocation edges this run went through (docs/protocol.md, "Allocation")."""
        self.placed.append((seq, jofs))
        if m.jiptr == 0:
            self.events["exact fit at the end"] += 1
        if m.wrap_at != m.size and jofs == 0:
            self.events["tail skip (wrap)"] += 1
        if m.free == 0:
            self.events["ring filled exactly"] += 1

    def next(self) -> tuple[str, bytes, int]:
        """(description, bytes, R of the journal if it is a JNLDESC else 0)."""
        if not self.counts:         # first: freeze the clock, so TIME is the same in both
            self.counts["LOAD"] += 1
            return "LOAD TIME|FREEZE", P.Load(LF.TIME | LF.FREEZE, time=T0).frame().serialize(), 0
        x = self.rng.random()
        m = self.model
        if m.held and m.free * 4 < m.size and self.rng.random() < 0.5:
            x = 0.7                 # a ring nearly full: release more often than usual
        if m.next_seq > _U64 - 8 and self.rng.random() < 0.05:
            # SEQ# space exhausted (every journal FULL): start a new one, now and then
            self.counts["LOAD"] += 1
            return ("LOAD SEQ|CLEAR after exhaustion",
                    P.Load(LF.SEQ | LF.CLEAR, seq=self.rng.getrandbits(62) + 1).frame().serialize(), 0)
        if x < 0.62:
            what, raw, r = self._jnldesc()
        elif x < 0.80:
            (what, raw), r = self._release(), 0
        elif x < 0.86:
            what, raw, r = "STATUS", P.Frame(T.STATUS).serialize(), 0
        elif x < 0.90:
            what, raw = self._load()
            r = 0
        elif x < 0.95:
            what, raw = self._other()
            r = 0
        else:
            what, raw, r = self._bad()
        self.counts[what.split()[0]] += 1
        return what, raw, r

    # -- requests ------------------------------------------------------------

    def _control(self, data_len: int, kind: int = P.Kind.UPDATE) -> P.Control:
        rng = self.rng
        self.tag = (self.tag + 1) & 0xFFFFFFFF
        length = data_len if kind in P.DATA_KINDS else (0 if kind == P.Kind.MARK else
                                                        rng.getrandbits(32))
        return P.Control(seq=rng.getrandbits(64) if rng.random() < 0.1 else 0,
                         address=rng.getrandbits(64), length=length, data_len=data_len,
                         data_crc=rng.getrandbits(32) if data_len else 0,
                         epoch=self.model.epoch, idx=rng.getrandbits(16), kind=kind,
                         flags=rng.getrandbits(8), group=rng.getrandbits(16),
                         jvol_id=rng.getrandbits(16), tag=self.tag)

    def _data_len(self) -> tuple[str, int]:
        """A DATA_LEN chosen against the ring's state: the edges of docs/protocol.md,
        "Allocation" (exact fit of the tail, of the free space, one granule over)."""
        m, rng = self.model, self.rng
        tail = m.size - m.jiptr
        free = m.free
        y = rng.random()
        if y < 0.2 and m.jiptr >= m.joptr and m.free and m.joptr - 64 >= max(0, tail - 63):
            # longer than the tail, fits at the head: the tail is skipped (WRAP_AT)
            return "skip-tail", rng.randint(max(0, tail - 63), m.joptr - 64)
        if y < 0.40:
            return "small", rng.choice([0, 1, 63, 64, 65, 127, 128, rng.randrange(1, 512)])
        if y < 0.55 and tail >= 64:
            return "exact-tail", tail - 64 - rng.randrange(64) * (tail > 64)
        if y < 0.67 and free >= 64:
            return "exact-free", free - 64
        if y < 0.74:
            return "tail+1", max(0, tail - 64 + 1)
        if y < 0.79:
            return "free+64", free
        if y < 0.84:
            return "size", max(0, m.size - 64 - rng.choice([0, 0, 1, 64]))
        if y < 0.88:
            return "oversize", rng.choice([m.size, P.MAX_DATA, P.MAX_DATA + 1,
                                           rng.getrandbits(32)])
        return "random", rng.randrange(0, min(m.size, 1 << 16))

    def _jnldesc(self) -> tuple[str, bytes, int]:
        rng = self.rng
        if rng.random() < 0.1:
            return self._batch()
        why, ctl, raw = self._desc_control()
        if raw is not None:
            return why, raw, 0
        r = P.record_size(ctl.data_len) if ctl.data_len <= P.MAX_DATA else 0
        flags = P.FrameFlag.MORE if rng.random() < 0.2 else 0
        return (f"JNLDESC {why} data_len={ctl.data_len} kind={ctl.kind} tag={ctl.tag}",
                P.descriptor_frame(ctl, flags).serialize(), r)

    def _batch(self) -> tuple[str, bytes, int]:
        """A JNLDESC batch (docs/protocol.md, "JNLDESC batches"): each
        descriptor chosen against the ring as the ones before it in the batch
        leave it (a copy of the model steps through them), so exact fits,
        tail skips, FULL and the other refusals come up inside batches too;
        some with a bad BCRC or a LENGTH that is not 64·N.

        Half the batches are *clean*: a descriptor the model would refuse is
        drawn again (up to 8 times), so most of them are taken whole, up to
        64 journals under one TIME (with a refusal at each of ~12 % of the
        draws, a batch of 8 was taken whole 7 % of the time)."""
        rng = self.rng
        n = (rng.choice([2, 2, 3, 4, 8, 16]) if rng.random() < 0.9
             else rng.randrange(2, P.DESC_BATCH + 1))
        clean = rng.random() < 0.5
        real = self.model
        self._before_batch = copy.deepcopy(real)     # observe() replays the batch on it
        self.model = copy.deepcopy(real)
        ctls, whys = [], []
        try:
            tries = 0
            while len(ctls) < n:
                why, ctl, raw = self._desc_control()
                if raw is None:
                    # A refusal changes nothing in the ring: a redraw is free.
                    ok = self.model.jnldesc(ctl).status == P.Status.OK
                    if not ok and clean and tries < 8:
                        tries += 1
                        continue
                    tries = 0
                    ctls.append(ctl)
                    whys.append(why.split()[0])
        finally:
            self.model = real
        raw = P.descriptor_batch_frame(ctls, P.FrameFlag.MORE if rng.random() < 0.2 else 0
                                       ).serialize()
        y = rng.random()
        what = f"JNLDESC batch of {n} ({','.join(whys)})"
        if y < 0.04:
            raw = bytearray(raw)
            at = rng.randrange(16, len(raw))
            raw[at] ^= 1 << rng.randrange(8)
            raw, what = bytes(raw), f"{what} bad BCRC at {at}"
        elif y < 0.06:
            body = b"".join(c.pack() for c in ctls)
            body = body + bytes(1) if rng.random() < 0.5 else body[:-1]
            raw, what = P.Frame(T.JNLDESC, body).serialize(), f"{what} LENGTH {len(body)}"
        self._last_batch_body = b"".join(c.pack() for c in ctls)
        self._last_batch_clean = clean
        self.counts["JNLDESC"] += n - 1      # next() counts one
        self.counts["descriptors in batches"] += n
        return what, raw, 0

    def _desc_control(self) -> tuple[str, P.Control, bytes | None]:
        """(why, control data, None), or (why, None, a whole frame) for a
        JNLDESC whose body is not a control data."""
        rng = self.rng
        why, n = self._data_len()
        n = min(n, 0xFFFFFFFF)
        ctl = self._control(n)
        y = rng.random()
        if y < 0.06:
            kind = rng.choice([P.Kind.ZERO, P.Kind.TRIM, P.Kind.MARK, P.Kind.BASE])
            ctl = self._control(0 if kind not in P.DATA_KINDS else n, kind)
            why = f"kind {kind.name}"
        elif y < 0.075:
            ctl = P.Control(**{**ctl.__dict__, "kind": rng.choice([0, 6, 0x7F, 0xFF])})
            why = "bad kind"
        elif y < 0.09:
            ctl = P.Control(**{**ctl.__dict__, "length": ctl.length ^ (1 << rng.randrange(32))})
            why = "length != data_len"
        elif y < 0.105:
            ctl = P.Control(**{**ctl.__dict__, "epoch": (ctl.epoch + rng.randrange(1, 3))
                               & 0xFFFFFFFF})
            why = "stale epoch"
        elif y < 0.115:
            ctl = self._control(0, rng.choice([P.Kind.UPDATE, P.Kind.ZERO]))
            ctl = P.Control(**{**ctl.__dict__, "data_crc": rng.getrandbits(32) | 1})
            why = "data_crc for no data"
        elif y < 0.12:
            body = ctl.pack() + bytes(rng.choice([1, 63]))
            return "JNLDESC body != 64", None, P.Frame(T.JNLDESC, body).serialize()
        return why, ctl, None

    def _release(self) -> tuple[str, bytes]:
        m, rng = self.model, self.rng
        y = rng.random()
        if m.held and y < 0.75:
            i = rng.randrange(len(self.placed)) if self.placed else 0
            if len(self.placed) > 1 and rng.random() < 0.3:
                i = len(self.placed) - 2   # all but the newest: JOPTR near JIPTR, the tail short
            if self.placed and rng.random() < 0.8:
                upto = self.placed[i][0]
                nxt = self.placed[i + 1][1] if i + 1 < len(self.placed) else m.jiptr
                if rng.random() < 0.1:       # a wrong JOPTR: off by a granule or off the grid
                    nxt = (nxt + rng.choice([64, -64, 1, m.size])) % (1 << 64)
                    return f"RELEASE bad joptr upto={upto}", P.Release(upto, nxt).frame().serialize()
                return f"RELEASE upto={upto}", P.Release(upto, nxt).frame().serialize()
        if y < 0.85:
            upto = rng.choice([m.next_seq, m.next_seq + 1, max(0, m.tail_seq - 1),
                               m.tail_seq, _U64]) & _U64
            return f"RELEASE edge upto={upto}", P.Release(upto, m.joptr).frame().serialize()
        if y < 0.93:
            return "RELEASE 8 bytes", P.Release(m.tail_seq).frame().serialize()
        body = rng.randbytes(rng.choice([0, 4, 24]))
        return "RELEASE bad size", P.Frame(T.RELEASE, body).serialize()

    def _load(self) -> tuple[str, bytes]:
        rng = self.rng
        y = rng.random()
        if y < 0.45:
            size = rng.choice(_RING_SIZES)
            flags = LF.RING | LF.DESC | (LF.CLEAR if rng.random() < 0.85 else 0)
            ptr = 0
            if rng.random() < 0.5:
                flags |= LF.PTR
                ptr = rng.choice([size - 64, size - 128 if size > 128 else 0,
                                  64 * rng.randrange(size // 64), size, 32])
            load = P.Load(flags, ptr=ptr, size=size)
        elif y < 0.6:
            seq = rng.choice([1, rng.getrandbits(63), rng.getrandbits(63), 0,
                              _U64 - rng.randrange(1, 4)])
            load = P.Load(LF.SEQ | (LF.CLEAR if rng.random() < 0.8 else 0), seq=seq)
        elif y < 0.72:
            load = P.Load(LF.EPOCH, epoch=rng.getrandbits(32) if rng.random() < 0.2
                          else self.model.epoch + 1)
        elif y < 0.82:
            load = P.Load(LF.TIME | LF.FREEZE, time=rng.choice([T0, rng.getrandbits(64), 0]))
        elif y < 0.9:
            load = P.Load(LF.CLEAR | LF.PTR, ptr=64 * rng.randrange(self.model.size // 64))
        else:
            # refused: RING without DESC (no data memory), DESC alone, an undefined flag
            flags = rng.choice([LF.RING | LF.CLEAR, LF.DESC, 0x40, LF.RING | LF.DESC])
            body = P.Load(LF.TIME).pack()[:28] + struct.pack("<I", flags)
            if flags & LF.RING:
                body += struct.pack("<Q", rng.choice([256, 100, 1 << 41]))
            return f"LOAD refused flags={flags:#x}", P.Frame(T.LOAD, body).serialize()
        return f"LOAD flags={int(load.flags):#x}", load.frame().serialize()

    def _other(self) -> tuple[str, bytes]:
        rng = self.rng
        y = rng.random()
        if y < 0.25:
            return "HEARTBEAT", P.Frame(T.HEARTBEAT, rng.choice(
                [b"", rng.randbytes(8), rng.randbytes(3)])).serialize()
        if y < 0.4:
            return "HELLO", P.Hello(P.Role.RELAY, 1, 2, 3, "g", "relay").frame().serialize()
        if y < 0.5:
            return "HELLO bad", P.Frame(T.HELLO, rng.randbytes(rng.choice([0, 80]))).serialize()
        if y < 0.65:
            n = rng.randrange(0, 130)
            data = rng.randbytes(n)
            ctl = self._control(n)
            ctl = P.Control(**{**ctl.__dict__, "data_crc": P.crc32c(data)})
            return "JNLWR (descriptor ring)", P.Frame(T.JNLWR, ctl.pack() + data).serialize()
        if y < 0.75:
            return "JNLRD", P.JnlRd(self.model.tail_seq, 1).frame().serialize()
        if y < 0.85:
            return "STATUS with body", P.Frame(T.STATUS, rng.randbytes(4)).serialize()
        return "answer type as request", P.Frame(rng.choice([T.ACK, T.NAK, T.STATUS_RESP]),
                                                 rng.randbytes(rng.choice([0, 8]))).serialize()

    def _bad(self) -> tuple[str, bytes, int]:
        """A bad frame (docs/protocol.md, "Engine: bad frames")."""
        rng = self.rng
        good = P.descriptor_frame(self._control(rng.randrange(256))).serialize()
        y = rng.random()
        if y < 0.3:
            raw = bytearray(good)
            at = rng.randrange(len(raw))
            raw[at] ^= 1 << rng.randrange(8)
            where = "header" if at < 16 else "trailer" if at >= len(raw) - 4 else "body"
            return f"BAD bit flip in {where} at {at}", bytes(raw), 0
        if y < 0.5:
            cut = rng.randrange(1, len(good))
            return f"BAD truncated to {cut}", good[:cut], 0
        if y < 0.65:
            return "BAD garbage", rng.randbytes(rng.randrange(1, 24)), 0
        if y < 0.8:
            ftype, flags, version = T.JNLDESC, 0, P.VERSION
            z = rng.random()
            if z < 0.33:
                version = rng.choice([0, 2, 0xFF])
            elif z < 0.66:
                flags = rng.choice([2, 0x8000, 0xFFFF])
            else:
                ftype = rng.choice([0, 0x03, 0x20, 0xFF])
            body = good[16:-4]
            raw = _header(ftype, len(body), flags, version) + body + good[-4:]
            return f"BAD header type={ftype:#x} flags={flags:#x} version={version}", raw, 0
        if y < 0.9:
            length = rng.choice([P.MAX_BODY + 1, 0xFFFFFFFF])
            return f"BAD length {length}", _header(T.JNLDESC, length), 0
        # a JNLDESC header whose LENGTH is not 64 but whose frame is intact
        body = rng.randbytes(rng.choice([0, 16, 63, 65]))
        return "JNLDESC bad length", P.Frame(T.JNLDESC, body).serialize(), 0


# -- the run ----------------------------------------------------------------------

@dataclass
class DifferentialResult:
    count: int                       # JNLDESC descriptors sent
    seed: int
    seconds: float
    request_bytes: int
    answer_bytes: int
    mismatch: str | None = None      # the first differing answer, or None
    requests: int = 0                # every request, the descriptors included
    cycles: int | None = None        # simulated cycles (harness stats)
    busy_cycles_per_s: float | None = None
    counts: dict = field(default_factory=dict)
    events: dict = field(default_factory=dict)
    statuses: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.mismatch is None

    def summary(self) -> str:
        rate = self.requests / self.seconds if self.seconds else 0.0
        cyc = (f" cycles={self.cycles:,} harness={self.busy_cycles_per_s / 1e6:.2f}M cycles/s"
               if self.cycles else "")
        return (f"descriptors={self.count:,} requests={self.requests:,} seed={self.seed} "
                f"seconds={self.seconds:.1f} "
                f"requests/s={rate:,.0f} bytes in={self.request_bytes:,} "
                f"out={self.answer_bytes:,}{cyc} "
                f"mismatches={0 if self.ok else 1}")


def _describe_answers(raw: bytes, limit: int = 1) -> str:
    """The first ``limit`` frames of ``raw``, decoded where they parse."""
    out = []
    at = 0
    while at + 16 <= len(raw) and len(out) < limit:
        length = int.from_bytes(raw[at + 8:at + 12], "little")
        size = 16 + (length + 4 if length else 0)
        chunk = bytes(raw[at:at + size])
        try:
            frames = P.FrameParser().feed(chunk)
            f = frames[0]
            if f.type in (T.ACK, T.NAK):
                a = P.Ack.from_frame(f)
                out.append(f"{f.type.name} {P.Status(a.status).name} req={a.req_type:#04x} "
                           f"seq={a.seq} time={a.time} jofs={a.jofs} tag={a.tag}")
            elif f.type == T.STATUS_RESP:
                out.append(f"STATUS_RESP {P.EngineStatus.unpack(f.body)}")
            else:
                out.append(f"{f.type.name} {f.body.hex()}")
        except (P.ProtocolError, IndexError, ValueError):
            out.append(f"unparsed {chunk[:64].hex()}")
        at += size
    if at < len(raw) and len(out) < limit:
        out.append(f"partial {bytes(raw[at:at + 32]).hex()}")
    return "; ".join(out) or "(nothing)"


class _Receiver(threading.Thread):
    """Reads the harness's answers into a buffer (socket reads release the GIL)."""

    def __init__(self, sock: socket.socket):
        super().__init__(daemon=True, name="differential-rx")
        self.sock = sock
        self.buf = bytearray()
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)
        self.closed = False

    def run(self) -> None:
        try:
            while True:
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    break
                with self.lock:
                    self.buf += chunk
                    self.arrived.notify_all()
        except OSError:
            pass
        with self.lock:
            self.closed = True
            self.arrived.notify_all()

    def take(self, n: int, timeout: float) -> bytes:
        """Up to ``n`` bytes, waiting at most ``timeout`` s for them all."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while len(self.buf) < n and not self.closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.arrived.wait(min(left, 0.5))
            got = bytes(self.buf[:n])
            del self.buf[:n]
            return got


class _Sender(threading.Thread):
    """Sends request chunks from a bounded queue: generation goes on while
    the harness works through the previous chunk."""

    def __init__(self, sock: socket.socket):
        super().__init__(daemon=True, name="differential-tx")
        self.sock = sock
        self.q: queue.Queue[bytes | None] = queue.Queue(maxsize=4)
        self.error: BaseException | None = None

    def run(self) -> None:
        while (chunk := self.q.get()) is not None:
            try:
                self.sock.sendall(chunk)
            except OSError as exc:
                self.error = exc
                return


def run_differential(count: int, seed: int, *, chunk: int = 5000, answer_timeout: float = 30.0,
                     model_factory: Callable[[], EngineModel] | None = None,
                     progress: Callable[[str], None] | None = None) -> DifferentialResult:
    """Random requests through the sim harness (the relay's build, without
    data memory) and the model, until ``count`` JNLDESC descriptors were sent
    (about half the requests); stops at the first differing answer.

    ``model_factory`` builds the reference (a deliberately wrong one shows
    that the run catches a difference); the default is the model as the
    gateware is: without data memory, with JNLDESC batches of up to DESC_BATCH."""
    from tricopy.sim.bridge import SimHarness
    from tricopy.sim.build import DESC_RESET_SIZE

    if not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive integer, not {count!r}")
    model = (model_factory or (lambda: EngineModel(DESC_RESET_SIZE, memory=0, name="sim",
                                                   clock=lambda: 0)))()
    stream = EngineStream(model)
    stim = Stimulus(random.Random(seed), model)
    statuses: collections.Counter[str] = collections.Counter()
    res = DifferentialResult(count, seed, 0.0, 0, 0)
    # The answers of the requests not yet compared: their descriptions, the
    # offset of their answers in the expected stream, their bytes.
    window: collections.deque[tuple[int, str, int, bytes]] = collections.deque()
    expected = bytearray()
    exp_base = 0                      # stream offset of expected[0]
    exp_total = 0
    # Unbounded lead: with work the harness runs flat out, never waiting for
    # wall time (the clock is frozen, so nothing depends on it).
    with SimHarness(DESC_RESET_SIZE, memory=0, max_lead_ms=1e9, stats=True) as sim:
        t0 = time.perf_counter()         # the build (if any) and the start are not timed
        with socket.create_connection(("127.0.0.1", sim.port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            rx, tx = _Receiver(sock), _Sender(sock)
            rx.start()
            tx.start()

            def compare(upto: int, timeout: float) -> str | None:
                """Compare the expected stream up to offset ``upto`` with what arrived."""
                nonlocal exp_base
                n = upto - exp_base
                got = rx.take(n, timeout)
                want = bytes(expected[:n])
                if got != want:
                    at = next((i for i in range(len(got)) if got[i] != want[i]), len(got))
                    return _report(at + exp_base, got[at:], want, exp_base)
                del expected[:n]
                exp_base = upto
                while window and window[0][2] < upto:
                    window.popleft()
                return None

            def _report(offset: int, got_rest: bytes, want: bytes, base: int) -> str:
                # The request whose answers hold the first differing byte (the
                # last one whose answers start at or before it), and the one
                # before (a frame cut short is answered while the next is fed).
                prev = None
                idx, what, start, raw = window[0]
                for w in window:
                    if w[2] > offset:
                        break
                    if w[0] != idx:
                        prev = (idx, what)
                    idx, what, start, raw = w
                # Frame boundary at or before the offset within this request's answers.
                fstart = start
                while True:
                    length = int.from_bytes(want[fstart - base + 8:fstart - base + 12], "little")
                    size = 16 + (length + 4 if length else 0)
                    if fstart + size > offset:
                        break
                    fstart += size
                got_frame = bytes(want[fstart - base:offset - base]) + got_rest
                after = f" after #{prev[0]} ({prev[1]})" if prev else ""
                return (f"first differing answer at stream byte {offset:,}: request #{idx} "
                        f"({what}; bytes {raw.hex()}){after}: model {_describe_answers(want[fstart - base:])}"
                        f" | sim {_describe_answers(got_frame) if got_rest else '(nothing: answers end here)'}")

            try:
                i = 0
                done = False
                while not done:
                    first = i
                    out = bytearray()
                    while i - first < chunk:
                        what, raw, r = stim.next()
                        before = model.next_seq
                        ans = stream.feed(raw)
                        stim.observe(before, r)
                        window.append((i, what, exp_total, raw))
                        i += 1
                        if ans:
                            statuses[_status_name(ans)] += 1
                        exp_total += len(ans)
                        expected += ans
                        out += raw
                        if stim.counts["JNLDESC"] >= count:
                            done = True
                            break
                    if done:
                        # A STATUS ends the run: every answer before it is complete.
                        raw = P.Frame(T.STATUS).serialize()
                        ans = stream.feed(raw)
                        window.append((i, "final STATUS", exp_total, raw))
                        exp_total += len(ans)
                        expected += ans
                        out += raw
                    res.request_bytes += len(out)
                    tx.q.put(bytes(out))
                    if tx.error:
                        raise OSError(f"sending to the harness failed: {tx.error}")
                    # Compare up to the end of the chunk before this one: the
                    # harness works on this one while the next is generated.
                    if done:
                        res.mismatch = compare(exp_total, answer_timeout)
                    elif len(window) > 2 * chunk:
                        res.mismatch = compare(window[-(i - first)][2], answer_timeout)
                    if res.mismatch:
                        break
                    if progress and (i // chunk) % 40 == 0:
                        progress(f"{stim.counts['JNLDESC']:,} descriptors, {i:,} requests, "
                                 f"{time.perf_counter() - t0:.0f} s")
                if res.mismatch is None:
                    extra = rx.take(1, 0.2)
                    if extra:
                        res.mismatch = f"sim sent bytes after the last answer: {extra.hex()}"
            finally:
                tx.q.put(None)
                sock.shutdown(socket.SHUT_RDWR)
        res.seconds = time.perf_counter() - t0
        cycles, busy = sim.last_stats()
    res.answer_bytes = exp_total
    res.count = stim.counts["JNLDESC"]
    res.requests = i + 1
    res.cycles, res.busy_cycles_per_s = cycles, busy
    res.counts = dict(stim.counts)
    res.events = dict(stim.events)
    res.statuses = dict(statuses)
    return res


def _status_name(ans: bytes) -> str:
    """Name of the first answer: ACK/NAK with its status, else the frame type."""
    ftype = ans[5]
    if ftype in (T.ACK, T.NAK) and len(ans) >= 52:
        return P.Status(ans[16 + 28]).name          # the ACK body's STATUS byte
    try:
        return T(ftype).name
    except ValueError:
        return f"type {ftype:#x}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tricopy.sim.differential",
                                description="random requests through the sim harness and the "
                                            "model; exit 1 on the first differing answer")
    p.add_argument("--count", type=int, default=1_000_000,
                   help="JNLDESC descriptors to send, with about as many other requests "
                        "between them (default 10**6)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    if args.count < 1:
        p.error(f"--count must be at least 1, not {args.count}")
    from tricopy.host.engine.base import EngineError
    try:
        res = run_differential(args.count, args.seed,
                               progress=lambda m: print(m, file=sys.stderr, flush=True))
    except (EngineError, OSError) as exc:      # no build, no harness, a dead link
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(res.summary())
    print("requests: " + ", ".join(f"{k} {v:,}" for k, v in sorted(res.counts.items())))
    print("allocation: " + ", ".join(f"{k} {v:,}" for k, v in sorted(res.events.items())))
    print("answers: " + ", ".join(f"{k} {v:,}" for k, v in sorted(res.statuses.items())))
    if res.mismatch:
        print(f"MISMATCH: {res.mismatch}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
