"""Generate the shared test vectors: ``frames.json`` and ``engine.json``.

    python host/wire/vectors/generate.py            # rewrite the files next to this script
    python host/wire/vectors/generate.py --check    # exit 1 if they are not up to date

``frames.json``: one valid frame per frame type (with the decoded body) and
malformed frames with the typed error the codec must raise.

``engine.json``: named scenarios, each ``{"size", "doc", "steps": [{"in",
"out"}]}`` with hex byte streams: feed ``in`` to an engine with a fresh ring of
``size`` bytes (``"memory"``: its data memory when not ``size``; ``"needs"``:
what beyond a data ring of that size it exercises, e.g. LOAD RING), expect
exactly ``out`` back.  Every scenario starts with LOAD
TIME|FREEZE, so the bytes are a pure function of the stream and the RTL
testbench can replay them as they are.  A step marked ``"site": true``
answers a HELLO, whose SITE field names the backend (docs/protocol.md,
"HELLO"): compare it with SITE masked.

The outputs come from the reference model, but each step also states what it
expects (status, state), and generation fails if the model disagrees: a
scenario cannot silently stop testing the corner case it is named after.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import struct
import sys
from pathlib import Path

from tricopy.host.wire import protocol as P
from tricopy.host.engine.model import EngineModel, EngineStream
from tricopy.host.wire.protocol import Frame, FrameType as T, Kind, LoadFlag as LF, Status as S

HERE = Path(__file__).resolve().parent
T0 = 1_700_000_000_000_000_000        # the frozen clock of every scenario, ns


class GenerationError(Exception):
    """A scenario step did not answer what it was written to test."""


def _data(n: int, seed: int = 0) -> bytes:
    """Deterministic, non-trivial journal data."""
    return bytes((i * 7 + seed * 13 + 1) & 0xFF for i in range(n))


def control(data: bytes = b"", *, kind: int = Kind.UPDATE, tag: int = 0, epoch: int = 0,
            **fields) -> P.Control:
    """Control data for ``data`` that passes the kind rules (unless ``fields`` say otherwise)."""
    base = dict(length=len(data), data_len=len(data), data_crc=P.crc32c(data), address=4096,
                idx=1, group=3, jvol_id=2, kind=kind, tag=tag, epoch=epoch)
    base.update(fields)
    return P.Control(**base)


def jnlwr(data: bytes = b"", **fields) -> bytes:
    return Frame(T.JNLWR, P.journal_body(control(data, **fields), data)).serialize()


def header(ftype: int, length: int, *, magic: int = P.MAGIC, version: int = P.VERSION,
           flags: int = 0, hcrc: int | None = None) -> bytes:
    """A raw header, possibly broken on purpose."""
    head = struct.pack("<IBBHI", magic, version, ftype, flags, length)
    return head + struct.pack("<I", P.crc32c(head) if hcrc is None else hcrc)


class Scenario:
    """One engine scenario: a byte stream and the model's answers to it."""

    def __init__(self, name: str, size: int, doc: str, memory: int | None = None):
        self.name, self.size, self.doc, self.memory = name, size, doc, memory
        self.model = EngineModel(size, clock=lambda: 0, memory=memory)
        self.stream = EngineStream(self.model)
        self.steps: list[dict] = []
        # features beyond a data ring of the reset size, found from what the
        # scenario sends (docs/protocol.md, "Engine test vectors")
        self.needs: set[str] = {"no_memory"} if memory == 0 else set()
        self.load(LF.TIME | LF.FREEZE, time=T0)

    def _fail(self, what: str) -> None:
        raise GenerationError(f"scenario {self.name!r}, step {len(self.steps)}: {what}")

    def send(self, data: bytes, statuses: list[S] | None = None, *, site: bool = False) -> list[Frame]:
        """Feed bytes; ``statuses``: the ACK/NAK statuses expected in the answer, in order."""
        out = self.stream.feed(data)
        step = {"in": data.hex(), "out": out.hex()}
        if site:
            step["site"] = True
        self.steps.append(step)
        frames = P.FrameParser().feed(out)
        acks = [P.Ack.from_frame(f) for f in frames if f.type in (T.ACK, T.NAK)]
        if statuses is not None and [a.status for a in acks] != statuses:
            self._fail(f"answered {[S(a.status).name for a in acks]}, "
                       f"expected {[s.name for s in statuses]}")
        return frames

    def ack(self, data: bytes, status: S = S.OK, **expect) -> P.Ack:
        """Send one request that is answered by one ACK/NAK; check its fields."""
        (frame,) = self.send(data, [status])
        ack = P.Ack.from_frame(frame)
        for field, value in expect.items():
            if getattr(ack, field) != value:
                self._fail(f"ACK {field} = {getattr(ack, field)}, expected {value}")
        return ack

    def write(self, data: bytes = b"", status: S = S.OK, **fields) -> P.Ack:
        return self.ack(jnlwr(data, **fields), status)

    def load(self, flags: int, seq: int = 0, time: int = 0, epoch: int = 0,
             status: S = S.OK, ptr: int = 0, size: int = 0, **expect) -> P.Ack:
        if flags & LF.RING:
            self.needs.add("ring_load")
        return self.ack(P.Load(flags, seq, time, epoch, ptr, size).frame().serialize(), status,
                        **expect)

    def release(self, upto: int, status: S = S.OK, joptr: int | None = None, **expect) -> P.Ack:
        return self.ack(P.Release(upto, joptr).frame().serialize(), status, **expect)

    def desc(self, n: int = 0, status: S = S.OK, *, kind: int = Kind.UPDATE,
             **fields) -> P.Ack:
        """A JNLDESC for ``n`` bytes of data that the host keeps (DATA_CRC made
        up: the engine never sees the data); ``fields`` override the control
        data, except SEQ, JOFS, TIME and REQ_TYPE, which are checked on the answer."""
        expect = {k: fields.pop(k) for k in ("seq", "jofs", "time", "req_type") if k in fields}
        ctl = control(kind=kind, **{"length": 0 if kind == Kind.MARK else n, "data_len": n,
                                    "data_crc": 0x5A5A0000 | n if n else 0, **fields})
        return self.ack(P.descriptor_frame(ctl).serialize(), status, **expect)

    def batch(self, controls: list[P.Control], status: S = S.OK, **expect) -> P.Ack:
        """A JNLDESC batch (docs/protocol.md, "JNLDESC batches"): one cumulative answer."""
        self.needs.add("desc_batch")
        return self.ack(P.descriptor_batch_frame(controls).serialize(), status, **expect)

    def read(self, from_seq: int, count: int, n: int | None = None,
             status: S = S.OK) -> list[Frame]:
        frames = self.send(P.JnlRd(from_seq, count).frame().serialize(), [status])
        if n is not None and len(frames) - 1 != n:
            self._fail(f"JNLRD returned {len(frames) - 1} journals, expected {n}")
        return frames

    def status(self, **expect) -> P.EngineStatus:
        (frame,) = self.send(Frame(T.STATUS).serialize(), [])
        st = P.EngineStatus.unpack(frame.body)
        for field, value in expect.items():
            if getattr(st, field) != value:
                self._fail(f"STATUS {field} = {getattr(st, field)}, expected {value}")
        return st

    def json(self) -> dict:
        out = {"size": self.size, "doc": self.doc}
        if self.memory is not None:
            out["memory"] = self.memory
        if self.needs:
            out["needs"] = sorted(self.needs)
        return {**out, "steps": self.steps}


# -- the scenarios ---------------------------------------------------------------
# Each function builds one scenario; its docstring is the scenario's "doc".

SCENARIOS = []


def scenario(size: int, memory: int | None = None):
    def register(fn):
        SCENARIOS.append((fn.__name__, size, memory, fn))
        return fn
    return register


@scenario(256)
def reset_state(s: Scenario):
    """STATUS right after reset + LOAD: pointers 0, NEXT_SEQ = TAIL_SEQ = 1, WRAP_AT = SIZE."""
    s.status(jiptr=0, joptr=0, ring_size=256, free=256, next_seq=1, tail_seq=1, now=T0,
             acks=0, naks=0, epoch=0, held=0, wrap_at=256)


@scenario(256)
def hello(s: Scenario):
    """HELLO answered with ROLE engine, LAST_SEQ = NEXT_SEQ - 1; malformed HELLOs NAK BAD_REQUEST."""
    s.send(P.Hello(P.Role.RELAY, 3, 0, 0, "grp", "relay-a").frame().serialize(), [], site=True)
    s.write(_data(10))
    s.send(P.Hello(P.Role.PRIMARY).frame().serialize(), [], site=True)
    bad_role = bytearray(P.Hello(P.Role.PRIMARY).pack())
    bad_role[0] = 9
    s.send(Frame(T.HELLO, bytes(bad_role)).serialize(), [S.BAD_REQUEST])
    s.send(Frame(T.HELLO, bytes(79)).serialize(), [S.BAD_REQUEST])


@scenario(256)
def heartbeat(s: Scenario):
    """HEARTBEAT echoes an empty or 8-byte body; any other size is BAD_REQUEST."""
    s.send(Frame(T.HEARTBEAT).serialize(), [])
    s.send(Frame(T.HEARTBEAT, b"token-01").serialize(), [])
    s.send(Frame(T.HEARTBEAT, b"tok").serialize(), [S.BAD_REQUEST])
    s.status(naks=1)


@scenario(512)
def write_and_read(s: Scenario):
    """One UPDATE journal: ACK stamps SEQ 1, the frozen TIME, JOFS 0; read-out has the CCRC."""
    s.ack(jnlwr(_data(100), tag=0xABCD), S.OK, seq=1, time=T0, jofs=0, tag=0xABCD)
    s.status(jiptr=192, free=320, held=1)
    (journal, _) = s.read(1, 1, n=1)
    ctl = P.Control.unpack(journal.body)
    if not ctl.ccrc_ok() or journal.body[64:] != _data(100):
        s._fail("read-out does not carry the stamped control data and the data")


@scenario(1024)
def all_kinds(s: Scenario):
    """UPDATE, BASE, ZERO, TRIM and MARK are accepted; the no-data kinds take one 64-byte record."""
    s.write(_data(64), kind=Kind.UPDATE)
    s.write(_data(65), kind=Kind.BASE)
    s.write(kind=Kind.ZERO, length=1 << 20)
    s.write(kind=Kind.TRIM, length=4096)
    s.write(kind=Kind.MARK, length=0, address=0)
    s.status(jiptr=128 + 192 + 64 * 3, held=5)
    s.read(1, 5, n=5)


@scenario(256)
def zero_length_update(s: Scenario):
    """A zero-length UPDATE is legal (a write barrier) and occupies one 64-byte record."""
    s.write(b"", kind=Kind.UPDATE)
    s.status(jiptr=64, held=1)
    s.read(1, 1, n=1)


@scenario(256)
def short_body(s: Scenario):
    """A JNLWR body shorter than 64 bytes is BAD_LENGTH with TAG 0."""
    s.send(Frame(T.JNLWR, b"\x01" * 63).serialize(), [S.BAD_LENGTH])
    s.send(Frame(T.JNLWR).serialize(), [S.BAD_LENGTH])
    s.status(held=0, naks=2, acks=0)


@scenario(256)
def bad_kind(s: Scenario):
    """KIND 0, 6 and WRAP (0xFF) are BAD_KIND; the NAK echoes TAG."""
    s.write(status=S.BAD_KIND, kind=0, tag=1)
    s.write(status=S.BAD_KIND, kind=6, tag=2)
    s.write(status=S.BAD_KIND, kind=Kind.WRAP, tag=3)
    s.status(held=0, naks=3)


@scenario(256)
def kind_rules(s: Scenario):
    """DATA_LEN against the body and LENGTH against the kind: each violation is BAD_LENGTH."""
    s.write(_data(10), S.BAD_LENGTH, data_len=11)                 # DATA_LEN != body - 64
    s.write(_data(10), S.BAD_LENGTH, length=20)                   # UPDATE: DATA_LEN != LENGTH
    s.write(_data(10), S.BAD_LENGTH, kind=Kind.BASE, length=9)
    s.write(_data(8), S.BAD_LENGTH, kind=Kind.ZERO, length=4096)  # ZERO carries no data
    s.write(_data(8), S.BAD_LENGTH, kind=Kind.TRIM, length=8)
    s.write(b"", S.BAD_LENGTH, kind=Kind.MARK, length=1)          # MARK: LENGTH == 0
    s.status(held=0, naks=6)


@scenario(256)
def epoch_fencing(s: Scenario):
    """EPOCH other than the engine's is STALE_EPOCH; LOAD EPOCH moves the fence."""
    s.write(_data(4), S.STALE_EPOCH, epoch=1, tag=9)
    s.load(LF.EPOCH, epoch=5)
    s.write(_data(4), S.STALE_EPOCH, epoch=0)
    s.write(_data(4), S.OK, epoch=5)
    s.status(epoch=5, held=1)


@scenario(256)
def data_crc(s: Scenario):
    """Journal data that does not match DATA_CRC is BAD_DCRC; no-data kinds need DATA_CRC 0."""
    s.write(_data(32), S.BAD_DCRC, data_crc=0x12345678)
    s.write(b"", S.BAD_DCRC, kind=Kind.ZERO, length=512, data_crc=1)
    s.status(held=0)


@scenario(128)
def check_order(s: Scenario):
    """The first failing check answers: KIND before LENGTH, LENGTH before EPOCH, EPOCH before
    DCRC, DCRC before OVERSIZE."""
    s.write(_data(5), S.BAD_KIND, kind=9, data_len=6)
    s.write(_data(5), S.BAD_LENGTH, data_len=6, epoch=3)
    s.write(_data(5), S.STALE_EPOCH, epoch=3, data_crc=0)
    s.write(_data(200), S.BAD_DCRC, data_crc=0)


@scenario(128)
def oversize(s: Scenario):
    """A record larger than the ring is OVERSIZE; one exactly the ring's size fits an empty ring."""
    s.write(_data(65), S.OVERSIZE)
    s.write(_data(64))
    s.status(jiptr=0, joptr=0, free=0, held=1)
    s.write(b"", S.FULL)


@scenario(256)
def full_and_retry(s: Scenario):
    """FULL while the ring has no room; after a RELEASE the same journal is accepted."""
    s.write(_data(100))            # 192 bytes at 0
    s.write(_data(64), S.FULL)     # 128 > FREE 64
    s.write(b"")                   # exactly the 64 left: JIPTR back to 0, ring full
    s.status(jiptr=0, joptr=0, free=0, held=2, wrap_at=256)
    s.write(b"", S.FULL)
    s.release(1)
    s.ack(jnlwr(_data(64)), S.OK, seq=3, jofs=0)


@scenario(512)
def exact_fit_at_end(s: Scenario):
    """A record ending exactly at SIZE: JIPTR becomes 0 and no WRAP marker is written."""
    s.write(_data(100))            # [0, 192)
    s.write(_data(250))            # [192, 512): exact fit
    s.status(jiptr=0, wrap_at=512, free=0)
    s.release(1)
    s.ack(jnlwr(_data(128)), S.OK, jofs=0, seq=3)
    s.status(jiptr=192, joptr=192, wrap_at=512, free=0)


@scenario(512)
def wrap_marker(s: Scenario):
    """The tail is skipped with a WRAP marker, the record goes to 0; releasing past the marker
    returns the skipped tail and clears WRAP_AT."""
    s.write(_data(150))            # [0, 256)
    s.write(_data(100))            # [256, 448)
    s.release(1)                   # JOPTR 256
    s.ack(jnlwr(_data(120)), S.OK, jofs=0, seq=3)     # 192 > 64 left at the tail -> wraps
    s.status(jiptr=192, joptr=256, wrap_at=448, free=64, held=2)
    s.release(2, jofs=0)           # JOPTR reaches WRAP_AT: back to 0, tail freed
    s.status(joptr=0, wrap_at=512, free=320, held=1)
    s.read(3, 1, n=1)


@scenario(512)
def wrap_partial_space(s: Scenario):
    """Neither the tail nor the head alone holds R (their sum would): FULL, no marker written."""
    s.write(_data(150))            # [0, 256)
    s.write(_data(64))             # [256, 384)
    s.release(1)                   # JOPTR 256; tail free 128, head free 256
    s.write(_data(300), S.FULL)    # R = 384 > 256 (head) and > 128 (tail), <= 384 (FREE)
    s.status(jiptr=384, joptr=256, wrap_at=512, free=384)


@scenario(256)
def full_ring_after_wrap(s: Scenario):
    """A wrap that fills the head exactly leaves JIPTR == JOPTR with USED == SIZE: a full ring."""
    s.write(_data(60))             # [0, 128)
    s.write(_data(0), kind=Kind.MARK, length=0)       # [128, 192)
    s.release(1)                   # JOPTR 128
    s.write(_data(100), S.FULL)    # 192 > 64 tail; 192 > 128 head
    s.write(_data(60), S.OK)       # 128 <= JOPTR 128: marker at 192, record at 0
    s.status(jiptr=128, joptr=128, free=0, wrap_at=192, held=2)
    s.write(b"", S.FULL)
    s.release(3)
    s.status(jiptr=128, joptr=128, free=256, held=0)


@scenario(512)
def empty_ring_rewinds(s: Scenario):
    """An empty ring rewinds to 0 on the next write, so it takes any R <= SIZE."""
    s.write(_data(150))            # [0, 256)
    s.write(_data(10))             # [256, 384)
    s.release(2)
    s.status(jiptr=384, joptr=384, free=512, held=0)
    s.ack(jnlwr(_data(384)), S.OK, jofs=0)            # R 448 > tail 128 and > head 384
    s.status(jiptr=448, joptr=0, free=64, wrap_at=512)


@scenario(1024)
def read_out(s: Scenario):
    """JNLRD: MORE on all read-out frames but the last, ACK TAG = n, SEQ = last, JOFS = JOPTR;
    COUNT is clamped; COUNT 0 and FROM_SEQ = NEXT_SEQ return nothing."""
    for i in range(4):
        s.write(_data(40 * i, seed=i), tag=100 + i)
    s.release(1)
    frames = s.read(2, 10, n=3)
    if [f.flags for f in frames[:-1]] != [P.FrameFlag.MORE, P.FrameFlag.MORE, 0]:
        s._fail("MORE flags of the read-out")
    s.read(2, 2, n=2)
    s.read(3, 0, n=0)
    s.read(5, 1, n=0)
    s.read(4, 1, n=1)


@scenario(256)
def read_not_found(s: Scenario):
    """JNLRD below TAIL_SEQ or above NEXT_SEQ is NOT_FOUND with SEQ = FROM_SEQ."""
    s.write(_data(3))
    s.write(_data(3))
    s.release(1)
    s.read(1, 1, status=S.NOT_FOUND)
    s.read(0, 1, status=S.NOT_FOUND)
    s.read(4, 1, status=S.NOT_FOUND)
    s.read(2, 1, n=1)


@scenario(256)
def read_bad_request(s: Scenario):
    """A JNLRD body of the wrong size or with reserved bits set is BAD_REQUEST."""
    s.send(Frame(T.JNLRD, bytes(15)).serialize(), [S.BAD_REQUEST])
    s.send(Frame(T.JNLRD, struct.pack("<QII", 1, 1, 1)).serialize(), [S.BAD_REQUEST])
    s.send(Frame(T.JNLRD).serialize(), [S.BAD_REQUEST])


@scenario(256)
def release_unknown(s: Scenario):
    """RELEASE of a never-issued SEQ# is NOT_FOUND and releases nothing, not even lower ones."""
    s.write(_data(3))
    s.write(_data(3))
    s.release(3, S.NOT_FOUND, seq=3)
    s.release(1 << 63, S.NOT_FOUND)
    s.status(tail_seq=1, held=2)


@scenario(256)
def release_idempotent(s: Scenario):
    """RELEASE below TAIL_SEQ (done already, or 0) is an ACK that changes nothing."""
    s.write(_data(3))
    s.write(_data(3))
    s.release(1, seq=1, jofs=128)
    s.release(1, seq=1, jofs=128)
    s.release(0, seq=0, jofs=128)
    s.status(tail_seq=2, held=1, joptr=128)
    s.send(Frame(T.RELEASE, bytes(7)).serialize(), [S.BAD_REQUEST])


@scenario(1024)
def release_in_steps(s: Scenario):
    """RELEASE frees TAIL_SEQ..UPTO in order and reports the new JOPTR."""
    for i in range(6):
        s.write(_data(64 * (i % 3), seed=i))
    s.release(2, jofs=64 + 128)
    s.release(5, jofs=64 + 128 + 192 + 64 + 128)
    s.status(tail_seq=6, held=1)
    s.release(6, jofs=768)
    s.status(held=0, free=1024)


@scenario(256)
def load_seq(s: Scenario):
    """LOAD SEQ sets the sequence base of an empty ring; NOT_EMPTY otherwise; SEQ 0 is refused."""
    s.load(LF.SEQ, seq=1000)
    s.ack(jnlwr(_data(1)), S.OK, seq=1000)
    s.load(LF.SEQ, seq=5, status=S.NOT_EMPTY)
    s.load(LF.SEQ | LF.EPOCH, seq=0, epoch=4, status=S.BAD_REQUEST)
    s.status(next_seq=1001, tail_seq=1000, epoch=0)     # a refused LOAD changes nothing
    s.load(LF.SEQ | LF.CLEAR, seq=7)
    s.ack(jnlwr(_data(1)), S.OK, seq=7, jofs=0)


@scenario(512)
def load_clear(s: Scenario):
    """LOAD CLEAR drops every journal: pointers 0, TAIL_SEQ = NEXT_SEQ, sequence runs on."""
    s.write(_data(100))
    s.write(_data(10))
    s.release(1)
    s.load(LF.CLEAR)
    s.status(jiptr=0, joptr=0, free=512, next_seq=3, tail_seq=3, held=0, wrap_at=512)
    s.read(2, 1, status=S.NOT_FOUND)
    s.ack(jnlwr(_data(1)), S.OK, seq=3, jofs=0)


@scenario(256)
def load_bad_request(s: Scenario):
    """LOAD of the wrong size or with undefined flags is BAD_REQUEST and changes nothing."""
    s.send(Frame(T.LOAD, bytes(31)).serialize(), [S.BAD_REQUEST])
    s.load(0x40 | LF.EPOCH, epoch=9, status=S.BAD_REQUEST)
    s.status(epoch=0, naks=2)


@scenario(512)
def load_ptr(s: Scenario):
    """LOAD PTR places an empty ring; the next journal goes there if the tail holds it."""
    s.write(_data(10))
    s.load(LF.PTR, ptr=256, status=S.NOT_EMPTY)
    s.load(LF.PTR, ptr=100, status=S.BAD_REQUEST)           # not a multiple of 64
    s.load(LF.PTR | LF.CLEAR, ptr=512, status=S.BAD_REQUEST)  # not below SIZE
    s.status(jiptr=128, held=1)
    s.load(LF.CLEAR | LF.SEQ | LF.PTR, seq=50, ptr=320)
    s.status(jiptr=320, joptr=320, next_seq=50, tail_seq=50, held=0, free=512)
    s.ack(jnlwr(_data(60)), S.OK, seq=50, jofs=320)
    s.ack(jnlwr(_data(64)), S.OK, seq=51, jofs=448 - 448)     # tail of 64 < 128: WRAP marker
    s.status(wrap_at=448, held=2)


@scenario(512)
def empty_ring_keeps_place(s: Scenario):
    """An empty ring keeps its position when the tail holds the next record."""
    s.write(_data(100))                                       # 192 bytes at 0
    s.release(1)
    s.status(jiptr=192, joptr=192, held=0)
    s.ack(jnlwr(_data(64)), S.OK, seq=2, jofs=192)
    s.release(2)
    s.ack(jnlwr(_data(200)), S.OK, seq=3, jofs=0)             # 320 > 512 - 320: rewind


@scenario(512)
def clock_backwards(s: Scenario):
    """A clock loaded backwards: TIME stalls at LAST_TIME until the clock passes it."""
    s.ack(jnlwr(_data(1)), S.OK, time=T0)
    s.load(LF.TIME | LF.FREEZE, time=T0 - 5000)
    s.status(now=T0 - 5000)
    s.ack(jnlwr(_data(1)), S.OK, time=T0)
    s.load(LF.TIME | LF.FREEZE, time=T0 + 1)
    s.ack(jnlwr(_data(1)), S.OK, time=T0 + 1)


@scenario(256)
def status_bad_body(s: Scenario):
    """STATUS carries no body: a STATUS header with LENGTH 4 is refused at the header
    (BAD_FRAME, hunt), and the STATUS right behind it is answered."""
    s.send(Frame(T.STATUS, bytes(4)).serialize(), [S.BAD_FRAME])
    s.status(naks=1)


@scenario(256)
def answers_refused(s: Scenario):
    """ACK, NAK and STATUS_RESP sent to the engine are BAD_TYPE, REQ_TYPE = their type."""
    s.ack(P.Ack().frame().serialize(), S.BAD_TYPE, req_type=T.ACK)
    s.ack(P.Ack(status=S.FULL).frame().serialize(), S.BAD_TYPE, req_type=T.NAK)
    s.ack(Frame(T.STATUS_RESP, bytes(80)).serialize(), S.BAD_TYPE, req_type=T.STATUS_RESP)
    s.status(naks=3)


@scenario(256)
def bad_magic_hunt(s: Scenario):
    """Garbage before a frame: one NAK BAD_FRAME (REQ_TYPE 0), hunt, then the frame is answered."""
    s.send(b"\x00garbage TRC" + jnlwr(_data(5), tag=1), [S.BAD_FRAME, S.OK])
    s.send(b"\xff" * 40, [S.BAD_FRAME])
    s.send(b"TRCP" + bytes(30), [])                       # still hunting: no more NAKs
    s.send(P.Release(1).frame().serialize(), [S.OK])


@scenario(256)
def bad_hcrc_hunt(s: Scenario):
    """A header with a bad HCRC: one NAK, and a hunt that also skips a MAGIC with a bad HCRC."""
    broken = header(T.STATUS, 0, hcrc=0xDEADBEEF)
    s.send(broken + broken + b"xy" + Frame(T.STATUS).serialize(), [S.BAD_FRAME])
    s.status(naks=1)


@scenario(256)
def bad_version_skips(s: Scenario):
    """Bad VERSION with a good HCRC: NAK BAD_FRAME (REQ_TYPE = TYPE), body skipped, no hunt
    (a frame hidden inside the skipped body is not answered)."""
    hidden = Frame(T.HEARTBEAT, b"hidden!!").serialize()
    s.send(header(T.JNLWR, len(hidden), version=2) + hidden + b"\0\0\0\0", [S.BAD_FRAME])
    s.send(Frame(T.HEARTBEAT, b"visible!").serialize(), [])


@scenario(256)
def bad_flags_skips(s: Scenario):
    """Undefined header FLAGS: NAK BAD_FRAME, body skipped; an empty body has no trailer."""
    s.send(header(T.STATUS, 0, flags=0x8000), [S.BAD_FRAME])
    s.send(header(T.JNLWR, 64, flags=2) + bytes(68), [S.BAD_FRAME])
    s.status(naks=2)


@scenario(256)
def unknown_type_hunts(s: Scenario):
    """An unknown TYPE is BAD_FRAME (not BAD_TYPE) with REQ_TYPE = TYPE; it carries nothing
    known, so the engine hunts (here through a body of zeros) and answers the next frame."""
    s.ack(header(0x33, 8) + bytes(12), S.BAD_FRAME, req_type=0x33)
    s.ack(header(0x00, 0), S.BAD_FRAME, req_type=0)


@scenario(256)
def length_too_big_hunts(s: Scenario):
    """LENGTH > MAX_BODY with a good HCRC: NAK BAD_FRAME, then a hunt (the boundary is unknown)."""
    frames = s.send(header(T.JNLWR, P.MAX_BODY + 1) + bytes(10) + Frame(T.STATUS).serialize(),
                    [S.BAD_FRAME])
    if P.Ack.from_frame(frames[0]).req_type != T.JNLWR or frames[1].type != T.STATUS_RESP:
        s._fail("expected NAK BAD_FRAME (REQ_TYPE JNLWR), then the STATUS found by the hunt")
    s.status(naks=1)


@scenario(256)
def length_over_type_hunts(s: Scenario):
    """LENGTH more than the TYPE can carry (MAX_LENGTH: HELLO 80, RELEASE 16, JNLDESC a
    batch of DESC_BATCH descriptors, ...)
    with a good HCRC: NAK BAD_FRAME at the header and a hunt at once, so the frame right
    behind is answered without waiting for the announced body."""
    frames = s.send(header(T.HELLO, P.MAX_BODY) + Frame(T.STATUS).serialize(), [S.BAD_FRAME])
    if P.Ack.from_frame(frames[0]).req_type != T.HELLO or frames[1].type != T.STATUS_RESP:
        s._fail("expected NAK BAD_FRAME (REQ_TYPE HELLO), then the STATUS found by the hunt")
    s.send(header(T.RELEASE, 17) + P.Release(1).frame().serialize(), [S.BAD_FRAME, S.NOT_FOUND])
    s.send(header(T.JNLDESC, P.MAX_LENGTH[T.JNLDESC] + 1) + Frame(T.HEARTBEAT, b"after-it").serialize(),
           [S.BAD_FRAME])
    s.status(naks=4)


@scenario(256)
def bad_body_crc(s: Scenario):
    """Bad BCRC: NAK BAD_BCRC (JNLWR: TAG from the body), nothing applied, no hunt."""
    frame = bytearray(jnlwr(_data(20), tag=77))
    frame[-1] ^= 1
    s.ack(bytes(frame), S.BAD_BCRC, tag=77, req_type=T.JNLWR)
    frame = bytearray(P.Release(1).frame().serialize())
    frame[-1] ^= 1
    s.ack(bytes(frame), S.BAD_BCRC, tag=0, req_type=T.RELEASE)
    s.status(held=0, naks=2)


@scenario(256)
def descriptor_on_data_ring(s: Scenario):
    """A JNLDESC on a data ring is WRONG_MODE (TAG echoed, REQ_TYPE JNLDESC), after the
    BCRC check; nothing changes but NAKS."""
    ctl = control(tag=41, length=100, data_len=100, data_crc=7)
    s.ack(P.descriptor_frame(ctl).serialize(), S.WRONG_MODE, tag=41, req_type=T.JNLDESC,
          seq=0, jofs=0)
    frame = bytearray(P.descriptor_frame(ctl).serialize())
    frame[-1] ^= 1
    s.ack(bytes(frame), S.BAD_BCRC, tag=41, req_type=T.JNLDESC)
    s.ack(Frame(T.JNLDESC, bytes(20)).serialize(), S.WRONG_MODE, tag=0)
    s.write(_data(10), tag=1)
    s.status(jiptr=128, held=1, naks=3, acks=1)


# -- descriptor rings (docs/protocol.md, "Two kinds of ring") --------------------
# The same allocation as a data ring, nothing stored; RELEASE says where JOPTR goes.

DESC_RING = LF.RING | LF.DESC


@scenario(256)
def desc_ring_load(s: Scenario):
    """LOAD RING|DESC at run time: a descriptor ring of any size up to 2**40 (not the reset
    size), the LOAD checks in order; exact fit at 2**40; JNLWR, JNLRD and the 8-byte RELEASE
    are then refused."""
    s.write(_data(10))
    s.load(DESC_RING, size=4096, status=S.NOT_EMPTY)
    s.load(DESC_RING, size=1000, status=S.BAD_REQUEST)            # not a multiple of 64
    s.load(DESC_RING, size=64, status=S.BAD_REQUEST)              # below 128
    s.load(DESC_RING, size=(1 << 40) + 64, status=S.BAD_REQUEST)  # above 2**40
    s.load(LF.DESC, status=S.BAD_REQUEST)                         # DESC only with a new ring
    s.load(LF.RING, size=512, status=S.WRONG_MODE)                # a data ring > memory (256)
    s.load(DESC_RING | LF.PTR, size=4096, ptr=4096, status=S.BAD_REQUEST)  # PTR >= new SIZE
    s.send(Frame(T.LOAD, P.Load(DESC_RING, size=4096).pack()[:32]).serialize(), [S.BAD_REQUEST])
    s.status(ring_size=256, held=1, jiptr=128, naks=8)
    top = (1 << 40) - 128
    s.ack(P.Load(LF.CLEAR | DESC_RING | LF.SEQ | LF.PTR | LF.EPOCH, seq=100, epoch=4, ptr=top,
                 size=1 << 40).frame().serialize(), S.OK, seq=100, jofs=top)
    s.status(ring_size=1 << 40, free=1 << 40, jiptr=top, joptr=top, wrap_at=1 << 40,
             next_seq=100, tail_seq=100, held=0, epoch=4)
    s.desc(64, epoch=4, tag=1, seq=100, jofs=top)                 # exact fit at 2**40
    s.status(jiptr=0, joptr=top, held=1, wrap_at=1 << 40, free=(1 << 40) - 128)
    s.ack(jnlwr(_data(5), epoch=4, tag=2), S.WRONG_MODE, tag=2, req_type=T.JNLWR)
    s.read(100, 1, status=S.WRONG_MODE)
    s.release(100, status=S.BAD_REQUEST)                          # the 8-byte form
    s.release(100, joptr=0, seq=100, jofs=0)
    s.status(held=0, free=1 << 40, joptr=0, jiptr=0, wrap_at=1 << 40)


@scenario(256)
def desc_allocation(s: Scenario):
    """A descriptor ring allocates as a data ring: R = 64 + roundup(DATA_LEN, 64), exact fit
    at the end, FULL, a tail skip (WRAP_AT set; the engine writes no marker), FULL after the
    wrap, OVERSIZE; a release past WRAP_AT drops the marker."""
    s.load(DESC_RING, size=1024)
    s.desc(100, seq=1, jofs=0, tag=1)                     # R = 192
    s.desc(0, kind=Kind.MARK, seq=2, jofs=192)            # R = 64
    s.desc(704, seq=3, jofs=256)                          # R = 768: exact fit at the end
    s.status(jiptr=0, joptr=0, free=0, held=3, wrap_at=1024)
    s.desc(0, S.FULL, kind=Kind.ZERO, length=4096)        # full ring
    s.release(1, joptr=192, seq=1, jofs=192)
    s.desc(150, S.FULL)                                   # R = 256 > 192 free
    s.desc(100, seq=4, jofs=0)                            # R = 192 fills the head
    s.status(jiptr=192, joptr=192, free=0)
    s.release(3, joptr=0, seq=3, jofs=0)                  # records reach SIZE: JOPTR 0
    s.status(joptr=0, jiptr=192, free=832, wrap_at=1024, held=1)
    s.desc(700, seq=5, jofs=192)                          # R = 768 -> JIPTR 960
    s.release(4, joptr=192)
    s.desc(100, seq=6, jofs=0)                            # tail 64 < 192: skip, WRAP_AT 960
    s.status(wrap_at=960, jiptr=192, joptr=192, free=0, held=2)
    s.desc(0, S.FULL)                                     # full after the wrap
    s.desc(P.MAX_DATA + 1, S.OVERSIZE)
    s.desc(961, S.OVERSIZE)                               # R = 1088 > SIZE
    s.release(5, joptr=0, seq=5, jofs=0)                  # reaches WRAP_AT: marker dropped
    s.status(wrap_at=1024, joptr=0, jiptr=192, free=832, held=1)


@scenario(256)
def desc_wrap_partial_space(s: Scenario):
    """Wrap with partial space on a descriptor ring: neither the tail nor the head holds R,
    FULL, and nothing moves (no WRAP_AT)."""
    s.load(DESC_RING, size=512)
    s.desc(100, seq=1, jofs=0)                            # 0..192
    s.desc(100, seq=2, jofs=192)                          # 192..384
    s.release(1, joptr=192)
    s.desc(150, S.FULL)                                   # R = 256: tail 128, head 192
    s.status(wrap_at=512, jiptr=384, joptr=192, free=320)
    s.desc(0, seq=3, jofs=384)


@scenario(256)
def desc_full_ring_release_all(s: Scenario):
    """A descriptor ring filled exactly (JIPTR == JOPTR, FREE 0) is released whole with
    JOPTR = JIPTR: D is SIZE, not 0; when the ring was full after a tail skip, that release
    also drops the WRAP marker (P == JOPTR counts as going past the end)."""
    s.load(DESC_RING, size=256)
    s.desc(128, seq=1, jofs=0)                            # R = 192
    s.desc(0, seq=2, jofs=192)                            # R = 64: exact fit
    s.status(jiptr=0, joptr=0, free=0, held=2)
    s.release(1, joptr=0, status=S.BAD_REQUEST)           # D = SIZE but journal 2 stays
    s.release(2, joptr=0, seq=2, jofs=0)
    s.status(jiptr=0, joptr=0, free=256, held=0, wrap_at=256)
    for seq in (3, 4, 5):
        s.desc(0, seq=seq, jofs=64 * (seq - 3))           # 0..192
    s.release(4, joptr=128)
    s.desc(64, seq=6, jofs=0)                             # tail 64 < 128: skip, WRAP_AT 192
    s.status(wrap_at=192, jiptr=128, joptr=128, free=0, held=2)
    s.release(6, joptr=128, seq=6, jofs=128)
    s.status(wrap_at=256, jiptr=128, joptr=128, free=256, held=0)


@scenario(256)
def desc_checks(s: Scenario):
    """JNLDESC checks in order: BAD_BCRC (the CRC of the control data in transit), BAD_LENGTH
    (a body that is no whole number of 64-byte descriptors), BAD_KIND, kind rules, STALE_EPOCH, BAD_DCRC (the DATA_CRC
    of no data must be 0), OVERSIZE; every NAK echoes TAG and changes nothing but NAKS."""
    s.load(DESC_RING, size=256)
    frame = bytearray(P.descriptor_frame(control(tag=5, length=10, data_len=10)).serialize())
    frame[20] ^= 4                                        # control byte 4 flipped in transit
    s.ack(bytes(frame), S.BAD_BCRC, tag=5, req_type=T.JNLDESC)
    # a body that is no whole number of descriptors: BAD_LENGTH (TAG of the first); one
    # over a batch's bytes is refused at the header (length_over_type_hunts)
    s.ack(Frame(T.JNLDESC, control(tag=6).pack() + b"x").serialize(), S.BAD_LENGTH, tag=6)
    s.ack(Frame(T.JNLDESC, bytes(63)).serialize(), S.BAD_LENGTH, tag=0)
    s.desc(10, S.BAD_KIND, kind=6, tag=7)
    s.desc(10, S.BAD_LENGTH, length=11, tag=8)            # UPDATE: LENGTH == DATA_LEN
    s.desc(0, S.BAD_LENGTH, kind=Kind.ZERO, data_len=4, length=4096, tag=9)
    s.desc(10, S.STALE_EPOCH, epoch=1, tag=10)
    s.desc(0, S.BAD_DCRC, kind=Kind.TRIM, length=4096, data_crc=1, tag=11)
    s.desc(0, S.STALE_EPOCH, kind=Kind.TRIM, length=4096, data_crc=1, epoch=3)  # EPOCH first
    s.desc(300, S.OVERSIZE, kind=Kind.BASE, tag=12)
    s.status(held=0, naks=10, acks=0, jiptr=0)
    s.desc(10, seq=1, jofs=0, tag=13)


@scenario(256)
def desc_release_checks(s: Scenario):
    """RELEASE on a descriptor ring carries JOPTR (16 bytes): NOT_FOUND and the idempotent ACK
    as on a data ring; a JOPTR off the 64-byte grid, at or past SIZE, in the skipped tail,
    beyond the held bytes, emptying the ring while journals remain or not emptying it when
    the last goes, is BAD_REQUEST and changes nothing."""
    s.load(DESC_RING, size=1024)
    s.desc(100, seq=1, jofs=0)                            # 0..192
    s.desc(100, seq=2, jofs=192)                          # 192..384
    s.release(3, joptr=384, status=S.NOT_FOUND, seq=3)
    s.release(0, joptr=999, seq=0, jofs=0)                # below TAIL_SEQ: JOPTR not read
    for bad in (100, 1024, 448, 0, 384):                  # grid, SIZE, past JIPTR, free, empty
        s.release(1, joptr=bad, status=S.BAD_REQUEST)
    s.release(2, joptr=192, status=S.BAD_REQUEST)         # the last goes: must be JIPTR
    s.send(Frame(T.RELEASE, bytes(12)).serialize(), [S.BAD_REQUEST])
    s.release(1, status=S.BAD_REQUEST)                    # the 8-byte form
    s.status(joptr=0, jiptr=384, held=2, free=640, naks=9)
    s.release(1, joptr=192, seq=1, jofs=192)
    s.desc(576, seq=3, jofs=384)                          # 384..1024: exact fit
    s.desc(100, seq=4, jofs=0)                            # 0..192
    s.status(wrap_at=1024, jiptr=192, joptr=192, free=0)
    s.release(3, joptr=1024, status=S.BAD_REQUEST)        # the host sends 0 there
    s.release(3, joptr=0, seq=3, jofs=0)
    s.status(joptr=0, jiptr=192, free=832, held=1)
    s.desc(700, seq=5, jofs=192)                          # 192..960
    s.release(4, joptr=192)
    s.desc(100, seq=6, jofs=0)                            # tail skip: WRAP_AT 960
    s.status(wrap_at=960, jiptr=192, joptr=192, free=0)
    s.release(5, joptr=960, status=S.BAD_REQUEST)         # WRAP_AT is never a JOPTR
    s.release(5, joptr=0, seq=5, jofs=0)
    s.status(wrap_at=1024, joptr=0, jiptr=192, free=832, held=1)


@scenario(512, memory=0)
def desc_no_memory(s: Scenario):
    """An engine without data memory: its reset ring is a descriptor ring of the reset size;
    JNLWR and a LOAD of a data ring are WRONG_MODE; a JNLDESC with a bad BCRC takes nothing;
    a descriptor ring of 2**40 takes the largest journal."""
    s.status(ring_size=512, free=512, wrap_at=512)
    s.ack(jnlwr(_data(5), tag=3), S.WRONG_MODE, tag=3, req_type=T.JNLWR)
    s.desc(100, seq=1, jofs=0)
    # A width-8 engine checks the BCRC a byte at a time: its last byte wholly
    # wrong, then one bit of its first.
    for at, flip in ((-1, 0xFF), (-4, 0x01)):
        bad = bytearray(P.descriptor_frame(_dctl(10, 4)).serialize())
        bad[at] ^= flip
        s.ack(bytes(bad), S.BAD_BCRC, tag=4, req_type=T.JNLDESC)
    s.status(held=1, jiptr=192, naks=3)
    s.load(LF.CLEAR | LF.RING, size=128, status=S.WRONG_MODE)
    s.status(held=1, ring_size=512)
    s.load(LF.CLEAR | DESC_RING, size=1 << 40)
    s.desc(P.MAX_DATA, seq=2, jofs=0)
    s.status(ring_size=1 << 40, jiptr=64 + P.MAX_DATA, free=(1 << 40) - 64 - P.MAX_DATA)


def _dctl(n: int, tag: int, kind: int = Kind.UPDATE, **fields) -> P.Control:
    """A descriptor for ``n`` bytes of data the host keeps (DATA_CRC made up)."""
    return control(kind=kind, **{"length": n if kind in P.DATA_KINDS else
                                 (0 if kind == Kind.MARK else 4096),
                                 "data_len": n, "data_crc": 0x5A5A0000 | n if n else 0,
                                 "tag": tag, **fields})


@scenario(512, memory=0)
def desc_batch(s: Scenario):
    """JNLDESC batches: N descriptors in one frame, one cumulative ACK (SEQ#, JOFS, TAG of
    the last; one TIME for all); a refused descriptor stops the batch (NAK naming it, with
    the SEQ#/JOFS of the one before it, or zeros); a bad BCRC or LENGTH takes nothing; an
    exact fit and a tail skip inside a batch; a batch of one is the single JNLDESC."""
    s.batch([_dctl(100, 1), _dctl(0, 2, Kind.ZERO), _dctl(64, 3)], seq=3, jofs=256, tag=3,
            time=T0, req_type=T.JNLDESC)                  # R = 192, 64, 128
    s.status(jiptr=384, free=128, next_seq=4, held=3, acks=3)
    # the first fits exactly at the end, the second is FULL, the third is not handled
    s.batch([_dctl(64, 4), _dctl(64, 5), _dctl(0, 6, Kind.TRIM)], S.FULL, seq=4, jofs=384,
            tag=5, time=T0)
    s.status(jiptr=0, free=0, next_seq=5, held=4, naks=1)
    # refused first: the single JNLDESC's NAK, zeros
    s.release(2, joptr=256, seq=2)
    s.batch([_dctl(0, 7, Kind.MARK, epoch=1), _dctl(10, 8)], S.STALE_EPOCH, seq=0, jofs=0,
            time=0, tag=7)
    bad = bytearray(P.descriptor_batch_frame([_dctl(1, 9), _dctl(2, 10)]).serialize())
    bad[-1] ^= 0x10
    s.ack(bytes(bad), S.BAD_BCRC, tag=9, req_type=T.JNLDESC)
    s.ack(Frame(T.JNLDESC, _dctl(1, 11).pack() * 2 + b"x").serialize(), S.BAD_LENGTH, tag=11)
    # one descriptor more than a batch holds: over MAX_LENGTH, refused at the header
    s.ack(Frame(T.JNLDESC, _dctl(1, 12).pack() * (P.DESC_BATCH + 1)).serialize(),
          S.BAD_FRAME, tag=0)
    s.status(jiptr=0, free=256, next_seq=5, held=2)       # nothing of those was taken
    # JIPTR 0, JOPTR 256: two of R = 128 fill the head exactly
    s.batch([_dctl(1, 13), _dctl(64, 14)], seq=6, jofs=128, tag=14)
    s.status(jiptr=256, joptr=256, free=0, held=4)
    s.release(6, joptr=256, seq=6)                        # empty, JIPTR = JOPTR = 256
    # a tail skip inside a batch: R = 192 at 256, then R = 192 is longer than the
    # tail (64): WRAP_AT = 448 and it goes to 0
    s.batch([_dctl(128, 15), _dctl(100, 16)], seq=8, jofs=0, tag=16)
    s.status(jiptr=192, joptr=256, wrap_at=448, free=64, held=2)
    s.batch([_dctl(200, 17)], S.FULL, tag=17, seq=0)      # a batch of one: the plain NAK
    s.desc(0, seq=9, jofs=192, kind=Kind.MARK)            # and the plain JNLDESC still


@scenario(512)
def data_ring_load(s: Scenario):
    """LOAD RING without DESC: a data ring of a run-time size up to the data memory (not
    above); it stores and reads back as the reset ring does, and refuses JNLDESC."""
    s.load(LF.RING, size=1024, status=S.WRONG_MODE)       # memory is 512
    s.load(LF.RING, size=192)
    s.status(ring_size=192, free=192, wrap_at=192)
    s.ack(jnlwr(_data(100), tag=1), S.OK, seq=1, jofs=0)   # R = 192: exact fit
    s.status(jiptr=0, free=0)
    s.write(_data(1), S.FULL)
    s.read(1, 1, n=1)
    s.desc(10, S.WRONG_MODE, req_type=T.JNLDESC)
    s.release(1)
    s.ack(jnlwr(_data(129)), S.OVERSIZE)                  # R = 256 > 192


@scenario(512)
def pipelined_batch(s: Scenario):
    """Requests sent back to back (MORE set, one write) are answered in order."""
    batch = b"".join(Frame(T.JNLWR, P.journal_body(control(_data(i * 30), tag=i), _data(i * 30)),
                           P.FrameFlag.MORE if i < 3 else 0).serialize() for i in range(4))
    s.send(batch + P.Release(2).frame().serialize(), [S.OK] * 5)
    s.status(held=2, tail_seq=3)


@scenario(256)
def seq_space_end(s: Scenario):
    """The last SEQ# issued is 2**64 - 2: NEXT_SEQ must stay a u64, then JNLWR is FULL."""
    s.load(LF.SEQ, seq=(1 << 64) - 2)
    s.ack(jnlwr(_data(1)), S.OK, seq=(1 << 64) - 2)
    s.write(_data(1), S.FULL)
    s.status(next_seq=(1 << 64) - 1)


@scenario(1024)
def ring_cycles(s: Scenario):
    """Many writes, reads and releases of mixed sizes going round the ring several times."""
    lcg = 12345
    seq_next, tail = 1, 1
    wraps = fulls = 0
    for i in range(40):
        lcg = (lcg * 1103515245 + 12345) & 0x7FFFFFFF
        size = lcg % 300
        frames = s.send(jnlwr(_data(size, seed=i), tag=i), None)
        wraps += s.model.wrap_at != s.size
        if P.Ack.from_frame(frames[0]).status == S.OK:
            seq_next += 1
        else:
            fulls += 1
            s.read(tail, 2)
            upto = min(seq_next - 1, tail + 1)
            s.release(upto)
            tail = upto + 1
    s.status(next_seq=seq_next, tail_seq=tail)
    if wraps < 3 or fulls < 3 or seq_next * 200 < 3 * s.size:
        s._fail(f"ring_cycles no longer goes round the ring ({wraps} wraps, {fulls} FULL)")


# -- frames.json -----------------------------------------------------------------

def _fields(obj) -> dict:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def frame_vectors() -> dict:
    data = _data(37)
    ctl = control(data, tag=5, epoch=2).with_ccrc()
    valid = [
        ("hello", P.Hello(P.Role.PRIMARY, 7, 3, 41, "group-7", "tokyo").frame(), "Hello"),
        ("heartbeat_empty", Frame(T.HEARTBEAT), None),
        ("heartbeat_token", Frame(T.HEARTBEAT, b"\x01\x02\x03\x04\x05\x06\x07\x08"), None),
        ("jnlwr", Frame(T.JNLWR, P.journal_body(ctl, data)), "Control"),
        ("jnlwr_more", Frame(T.JNLWR, P.journal_body(control(kind=Kind.MARK, length=0)),
                             P.FrameFlag.MORE), "Control"),
        ("ack", P.Ack(9, T0, 4096, 5, S.OK, T.JNLWR).frame(), "Ack"),
        ("nak", P.Ack(0, 0, 0, 5, S.FULL, T.JNLWR).frame(), "Ack"),
        ("jnlrd", P.JnlRd(12, 100).frame(), "JnlRd"),
        ("release", P.Release(11).frame(), "Release"),
        ("status", Frame(T.STATUS), None),
        ("status_resp", P.EngineStatus(128, 64, 1024, 960, 3, 2, T0, 2, 1, 0, 1, 1024).frame(),
         "EngineStatus"),
        ("load", P.Load(LF.TIME | LF.FREEZE | LF.SEQ, 1000, T0, 0).frame(), "Load"),
        ("jnldesc", P.descriptor_frame(control(tag=6, epoch=2, length=4096, data_len=4096,
                                               data_crc=0x1234ABCD)), "Control"),
        ("release_at", P.Release(11, joptr=(1 << 40) - 4096).frame(), "Release"),
        ("load_ring", P.Load(LF.CLEAR | LF.RING | LF.DESC | LF.SEQ | LF.PTR | LF.EPOCH, 77,
                             0, 3, 1 << 39, size=1 << 40).frame(), "Load"),
    ]
    out_valid = []
    for name, frame, cls in valid:
        entry = {"name": name, "type": frame.type.name, "flags": int(frame.flags),
                 "body": frame.body.hex(), "hex": frame.serialize().hex()}
        if cls == "Control":
            c, d = P.split_journal(frame.body)
            entry.update(body_class=cls, fields=_fields(c), data=d.hex())
        elif cls:
            decoded = getattr(P, cls).unpack(frame.body)
            fields = {k: int(v) if isinstance(v, int) else v
                      for k, v in _fields(decoded).items()
                      # the descriptor-ring fields only where they are on the
                      # wire: the older entries stay as they were
                      if (cls, k, v) not in (("Release", "joptr", None), ("Load", "size", 0))}
            entry.update(body_class=cls, fields=fields)
        out_valid.append(entry)

    good = P.Release(11).frame().serialize()
    bad_bcrc = bytearray(good)
    bad_bcrc[-1] ^= 0x80
    malformed_frames = [
        ("bad_magic", b"TRCX" + good[4:], "BadMagic"),
        ("bad_header_crc", good[:12] + b"\0\0\0\0" + good[16:], "BadHeaderCRC"),
        ("bad_version", header(T.STATUS, 0, version=2), "BadVersion"),
        ("bad_flags", header(T.STATUS, 0, flags=0x0002), "BadFlags"),
        ("too_big", header(T.JNLWR, P.MAX_BODY + 1), "FrameTooBig"),
        ("unknown_type", header(0x7F, 0), "BadFrameType"),
        ("bad_body_crc", bytes(bad_bcrc), "BadBodyCRC"),
        ("trailing_bytes", good + b"\0", "BadBody"),
    ]
    ack = bytearray(P.Ack().pack())
    ack[30] = 1
    bad_status = bytearray(P.Ack().pack())
    bad_status[28] = 99
    bad_role = bytearray(P.Hello(P.Role.PRIMARY).pack())
    bad_role[0] = 0
    bad_name = bytearray(P.Hello(P.Role.PRIMARY, site="x").pack())
    bad_name[48] = 0xC3
    malformed_bodies = [
        ("ack_reserved", "Ack", bytes(ack)),
        ("ack_unknown_status", "Ack", bytes(bad_status)),
        ("ack_short", "Ack", bytes(31)),
        ("hello_bad_role", "Hello", bytes(bad_role)),
        ("hello_not_ascii", "Hello", bytes(bad_name)),
        ("jnlrd_reserved", "JnlRd", struct.pack("<QII", 1, 1, 2)),
        ("release_long", "Release", bytes(9)),
        ("load_undefined_flag", "Load", struct.pack("<QQII", 0, 0, 0, 0x40)),
        ("load_ring_short", "Load", struct.pack("<QQQII", 0, 0, 0, 0, LF.RING)),
        ("load_size_without_ring", "Load", struct.pack("<QQQIIQ", 0, 0, 0, 0, LF.SEQ, 4096)),
        ("release_12", "Release", bytes(12)),
        ("control_short", "Control", bytes(63)),
        ("status_resp_short", "EngineStatus", bytes(72)),
    ]
    return {
        "version": P.VERSION,
        "crc32c_check": {"input": b"123456789".hex(), "crc": P.crc32c(b"123456789")},
        "valid": out_valid,
        "malformed_frames": [{"name": n, "hex": h.hex(), "error": e} for n, h, e in malformed_frames],
        "malformed_bodies": [{"name": n, "body_class": c, "body": b.hex(), "error": "BadBody"}
                             for n, c, b in malformed_bodies],
    }


def engine_vectors() -> dict:
    scenarios = {}
    for name, size, memory, build in SCENARIOS:
        s = Scenario(name, size, " ".join(build.__doc__.split()), memory)
        build(s)
        scenarios[name] = s.json()
    return {"version": P.VERSION, "frozen_time": T0, "scenarios": scenarios}


def render(vectors: dict) -> str:
    return json.dumps(vectors, indent=1, sort_keys=False) + "\n"


def outputs() -> dict[str, str]:
    return {"frames.json": render(frame_vectors()), "engine.json": render(engine_vectors())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write (default: here)")
    parser.add_argument("--check", action="store_true", help="only check the files are current")
    args = parser.parse_args(argv)
    stale = []
    for name, text in outputs().items():
        path = args.out / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)}; run {Path(__file__).name}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
