"""The reference journal engine: ring allocator, sequencer and timestamp unit.

:class:`EngineModel` is the executable form of docs/protocol.md, "The journal
engine".  It is sans-I/O (frames in, frames out) and is the scoreboard that
the gateware is held to byte for byte, so it favours being obviously right
over being fast: every rule of the document appears here once, in the
document's order, under the document's names (JIPTR, JOPTR, WRAP_AT, ...).

:class:`EngineStream` puts the byte-level rules of docs/protocol.md, "Engine:
bad frames" in front of the model: this is what the Verilator harness and the
boards expose on their UART / socket.
"""

from __future__ import annotations

import dataclasses
import struct
import time
from collections import deque
from typing import Callable

from tricopy.host.wire import protocol
from tricopy.host.wire.protocol import (
    ALIGN,
    CONTROL_SIZE, MAX_DATA, Ack, Control, Frame, FrameFlag, FrameType,
    Kind, LoadFlag, Status,
)

__all__ = ["EngineModel", "EngineStream", "WRAP_MARKER", "unpad", "with_site"]

_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1

#: The end-of-ring marker written at JIPTR when the tail is skipped
#: (docs/protocol.md, "Allocation" 3): KIND 0xFF, every other field 0, CCRC 0.
WRAP_MARKER = Control(kind=Kind.WRAP).pack()


def _kind_rules_ok(ctl: Control) -> bool:
    """LENGTH / DATA_LEN against the kind (docs/protocol.md, "Kind rules")."""
    if ctl.kind in protocol.DATA_KINDS:
        return ctl.data_len == ctl.length
    if ctl.kind in (Kind.ZERO, Kind.TRIM):
        return ctl.data_len == 0
    return ctl.length == 0 and ctl.data_len == 0          # MARK


class EngineModel:
    """Sans-I/O reference journal engine (docs/protocol.md, "The journal engine").

    ``size`` is the ring size in bytes at reset (a multiple of 64, 128 up to
    2**40); LOAD RING sets another at run time.  ``memory`` is the data
    memory in bytes (default ``size``): the reset ring is then a data ring.
    With ``memory=0`` the engine has none, its reset ring is a descriptor
    ring (docs/protocol.md, "Two kinds of ring") and it keeps no copy of any
    journal: its footprint does not depend on ``size``.
    ``desc_batch`` is the most descriptors a JNLDESC may carry (1: an engine
    without batches, as the gateware is today).
    ``clock`` is a free-running nanosecond source (default
    :func:`time.monotonic_ns`); the engine CLOCK is the last loaded base plus
    the time elapsed on ``clock`` since that LOAD, or exactly the base while a
    LOAD FREEZE holds.  ``name`` is the SITE the engine reports in HELLO.
    """

    def __init__(self, size: int, *, clock: Callable[[], int] | None = None,
                 name: str = "model", memory: int | None = None,
                 desc_batch: int = protocol.DESC_BATCH):
        if not isinstance(size, int) or isinstance(size, bool) or not protocol.ring_size_ok(size):
            raise ValueError(f"ring size must be a multiple of 64 from 128 to 2**40, not {size!r}")
        if memory is None:
            memory = size
        if not isinstance(memory, int) or (memory and (memory < size or memory % 64)):
            raise ValueError(f"memory must be 0 (none) or a multiple of 64 of at least the "
                             f"ring size {size}, not {memory!r}")
        if not isinstance(desc_batch, int) or not 1 <= desc_batch <= protocol.DESC_BATCH:
            raise ValueError(f"desc_batch must be 1..{protocol.DESC_BATCH}, not {desc_batch!r}")
        # Most descriptors per JNLDESC this engine takes: DESC_BATCH, or 1 to
        # model an engine without batches (the gateware today), which refuses
        # a longer body with check 3 (docs/protocol.md, "JNLDESC batches").
        self.desc_batch = desc_batch
        name.encode("ascii")                   # HELLO SITE is ASCII; fail here, not mid-run
        if len(name) > 32 or "\0" in name:
            raise ValueError(f"engine name must be ASCII, at most 32 characters, not {name!r}")
        self.name = name
        self._size = size
        self._clock = clock if clock is not None else time.monotonic_ns
        self._memory = memory
        # The data memory: the data ring's image, as the gateware's ring RAM.
        # None without one; never touched by a descriptor ring.
        self._ring = bytearray(memory) if memory else None
        self._descriptor = memory == 0          # MODE
        # (JOFS, R) of the journals held, TAIL_SEQ first: the gateware finds the
        # same facts in the control data at JOPTR; the model keeps them at hand.
        self._records: deque[tuple[int, int]] = deque()
        self._jiptr = 0
        self._joptr = 0
        self._used = 0
        self._wrap_at = size
        self._next_seq = 1
        self._tail_seq = 1
        self._epoch = 0
        self._last_time = 0
        self._acks = 0
        self._naks = 0
        self._time_base = 0
        self._clock_at_load = self._clock()
        self._frozen = False
        self._handlers = {
            FrameType.HELLO: self._hello,
            FrameType.HEARTBEAT: self._heartbeat,
            FrameType.JNLWR: self._jnlwr,
            FrameType.JNLRD: self._jnlrd,
            FrameType.RELEASE: self._release,
            FrameType.STATUS: self._status,
            FrameType.LOAD: self._load,
            FrameType.JNLDESC: self._jnldesc,
        }

    # -- read-only state ----------------------------------------------------

    size = property(lambda self: self._size, doc="SIZE, ring bytes")
    memory = property(lambda self: self._memory, doc="MEMORY, data memory bytes (0: none)")
    descriptor = property(lambda self: self._descriptor,
                          doc="MODE: True for a descriptor ring, False for a data ring")
    jiptr = property(lambda self: self._jiptr, doc="JIPTR, where the next record goes")
    joptr = property(lambda self: self._joptr, doc="JOPTR, the oldest record held")
    used = property(lambda self: self._used, doc="USED, bytes held incl. a skipped tail")
    free = property(lambda self: self._size - self._used, doc="FREE = SIZE - USED")
    wrap_at = property(lambda self: self._wrap_at, doc="WRAP_AT, the end-of-ring marker or SIZE")
    next_seq = property(lambda self: self._next_seq, doc="NEXT_SEQ, SEQ# of the next journal")
    tail_seq = property(lambda self: self._tail_seq, doc="TAIL_SEQ, SEQ# at JOPTR")
    epoch = property(lambda self: self._epoch, doc="EPOCH, the current group generation")
    last_time = property(lambda self: self._last_time, doc="LAST_TIME, the last TIME stamped")
    acks = property(lambda self: self._acks, doc="ACKS, JNLWRs accepted (mod 2**32)")
    naks = property(lambda self: self._naks, doc="NAKS, NAKs sent (mod 2**32)")
    held = property(lambda self: self._next_seq - self._tail_seq, doc="journals held")

    @property
    def now(self) -> int:
        """CLOCK, the engine's 64-bit nanosecond clock."""
        if self._frozen:
            return self._time_base
        return (self._time_base + self._clock() - self._clock_at_load) & _U64

    def ring(self) -> bytes:
        """The ring memory as the gateware holds it.

        Records and WRAP markers where they were written, zeros where nothing
        ever was.  Releasing or clearing does not erase bytes (the gateware
        only moves pointers), so stale records stay visible until overwritten.
        A descriptor ring has no image (its records are the host's).
        """
        if self._descriptor:
            raise ValueError("a descriptor ring has no ring image: the host holds its records")
        return bytes(self._ring[:self._size])

    # -- requests -----------------------------------------------------------

    def handle(self, frame: Frame) -> list[Frame]:
        """Answer one request frame: a list of frames (JNLRD: n JNLWR + ACK)."""
        handler = self._handlers.get(frame.type)
        if handler is None:                     # ACK, NAK, STATUS_RESP
            return [self.nak(Status.BAD_TYPE, frame.type)]
        return handler(frame.body)

    def nak(self, status: Status, req_type: int, *, seq: int = 0, tag: int = 0) -> Frame:
        """A NAK frame, counted in NAKS.  Also used by :class:`EngineStream`
        for the link-level errors (BAD_FRAME, BAD_BCRC) the model never sees."""
        self._naks = (self._naks + 1) & _U32
        return Ack(seq=seq, tag=tag, status=status, req_type=req_type).frame()

    def _ack(self, req_type: int, seq: int, time: int = 0, jofs: int = 0,
             tag: int = 0) -> Frame:
        return Ack(seq, time, jofs, tag, Status.OK, req_type).frame()

    # JNLWR -------------------------------------------------------------------

    def _jnlwr(self, body: bytes) -> list[Frame]:
        req = FrameType.JNLWR
        if self._descriptor:                    # no data kept here: JNLDESC
            return [self.nak(Status.WRONG_MODE, req, tag=_tag(body))]
        if len(body) < CONTROL_SIZE:
            return [self.nak(Status.BAD_LENGTH, req)]
        ctl, data = protocol.split_journal(body)

        def refuse(status: Status) -> list[Frame]:
            return [self.nak(status, req, tag=ctl.tag)]

        # The checks of docs/protocol.md "JNLWR", in order (BCRC was the stream's).
        if ctl.kind not in protocol.WIRE_KINDS:
            return refuse(Status.BAD_KIND)
        if ctl.data_len != len(data) or not _kind_rules_ok(ctl):
            return refuse(Status.BAD_LENGTH)
        if ctl.epoch != self._epoch:
            return refuse(Status.STALE_EPOCH)
        if protocol.crc32c(data) != ctl.data_crc:
            return refuse(Status.BAD_DCRC)
        return self._place(ctl, req, data)

    def _place(self, ctl: Control, req: FrameType, data: bytes | None) -> list[Frame]:
        """Checks 8 and 9 (OVERSIZE, FULL), allocation and the stamps: shared
        by JNLWR and JNLDESC, which differ only in whether ``data`` is stored."""
        return [self._place_ack(ctl, req, data).frame()]

    def _refuse(self, status: Status, req: int, tag: int) -> Ack:
        """A NAK as an :class:`Ack`, counted in NAKS (``nak`` makes its frame)."""
        self._naks = (self._naks + 1) & _U32
        return Ack(tag=tag, status=status, req_type=req)

    def _place_ack(self, ctl: Control, req: FrameType, data: bytes | None,
                   stamp: int | None = None) -> Ack:
        r = protocol.record_size(ctl.data_len)
        if ctl.data_len > MAX_DATA or r > self._size:
            return self._refuse(Status.OVERSIZE, req, ctl.tag)
        if self._next_seq == _U64:              # SEQ# space exhausted: NEXT_SEQ must stay u64
            return self._refuse(Status.FULL, req, ctl.tag)
        jofs = self._allocate(r)
        if jofs is None:
            return self._refuse(Status.FULL, req, ctl.tag)

        seq = self._next_seq
        self._next_seq += 1
        if stamp is None:
            stamp = max(self.now, self._last_time)  # TIME never goes backwards
        self._last_time = stamp
        if data is not None:                    # a data ring keeps the record
            stamped = dataclasses.replace(ctl, seq=seq, time=stamp, jofs=jofs).with_ccrc()
            record = stamped.pack() + data
            self._ring[jofs:jofs + r] = record + bytes(r - len(record))
            self._records.append((jofs, r))
        self._acks = (self._acks + 1) & _U32
        return Ack(seq, stamp, jofs, ctl.tag, Status.OK, req)

    def _jnldesc(self, body: bytes) -> list[Frame]:
        """docs/protocol.md "JNLDESC" and "JNLDESC batches": allocate and
        stamp 1..DESC_BATCH descriptors, keep nothing."""
        req = FrameType.JNLDESC
        if not self._descriptor:                # a data ring keeps every journal's data
            return [self.nak(Status.WRONG_MODE, req, tag=_tag(body))]
        n, rest = divmod(len(body), CONTROL_SIZE)
        if rest or not 1 <= n <= self.desc_batch:
            return [self.nak(Status.BAD_LENGTH, req, tag=_tag(body))]
        controls = [Control.unpack(body[i * CONTROL_SIZE:(i + 1) * CONTROL_SIZE])
                    for i in range(n)]
        return [self.jnldesc_batch(controls).frame()]

    def jnldesc_batch(self, controls: list[Control]) -> Ack:
        """A batch of parsed descriptors, the one cumulative answer as an
        :class:`Ack` (docs/protocol.md, "JNLDESC batches"): in order, one
        TIME for all, stop at the first refused."""
        if not controls:
            raise ValueError("a JNLDESC batch holds at least one descriptor")
        stamp = max(self.now, self._last_time)  # the batch's TIME, taken once
        last = None
        for ctl in controls:
            ack = self.jnldesc(ctl, stamp=stamp)
            if ack.status != Status.OK:
                if last is None:
                    return ack                  # the single JNLDESC's NAK
                return Ack(last.seq, last.time, last.jofs, ack.tag, ack.status, ack.req_type)
            last = ack
        return last

    def jnldesc(self, ctl: Control, *, stamp: int | None = None) -> Ack:
        """JNLDESC of parsed control data, the answer as an :class:`Ack`: the
        same checks and effects as the frame (``_jnldesc``), for an in-process
        caller that has no use for the frame round trip (``ModelEngine``).
        ``stamp``: the TIME of the batch it belongs to."""
        req = FrameType.JNLDESC
        if not self._descriptor:
            return self._refuse(Status.WRONG_MODE, req, ctl.tag)
        if ctl.kind not in protocol.WIRE_KINDS:
            return self._refuse(Status.BAD_KIND, req, ctl.tag)
        if not _kind_rules_ok(ctl):
            return self._refuse(Status.BAD_LENGTH, req, ctl.tag)
        if ctl.epoch != self._epoch:
            return self._refuse(Status.STALE_EPOCH, req, ctl.tag)
        if ctl.data_len == 0 and ctl.data_crc != 0:   # the CRC32C of no data is 0
            return self._refuse(Status.BAD_DCRC, req, ctl.tag)
        return self._place_ack(ctl, req, None, stamp)

    def _allocate(self, r: int) -> int | None:
        """Place a record of R bytes (docs/protocol.md, "Allocation"); its JOFS or None if FULL."""
        if self._used == 0 and r > self._size - self._jiptr:
            # Empty and the tail is too short: rewind, so any R <= SIZE fits.
            # An empty ring otherwise keeps its place (LOAD PTR relies on it).
            self._jiptr = self._joptr = 0
            self._wrap_at = self._size
        if r > self.free:
            return None
        if self._jiptr >= self._joptr:          # free space: the tail, then the head
            if r <= self._size - self._jiptr:
                jofs = self._jiptr              # includes the exact fit at the end
            elif r <= self._joptr:
                # Skip the tail: a record never wraps (one I/O, one burst).
                # On a descriptor ring the host writes the marker.
                if not self._descriptor:
                    self._ring[self._jiptr:self._jiptr + CONTROL_SIZE] = WRAP_MARKER
                self._wrap_at = self._jiptr
                self._used += self._size - self._jiptr
                jofs = 0
            else:
                return None                     # wrap with partial space
        elif r <= self._joptr - self._jiptr:
            jofs = self._jiptr
        else:
            return None
        self._jiptr = (jofs + r) % self._size
        self._used += r
        return jofs

    # JNLRD -------------------------------------------------------------------

    def _jnlrd(self, body: bytes) -> list[Frame]:
        req = FrameType.JNLRD
        if self._descriptor:                    # nothing to read: the host has the records
            return [self.nak(Status.WRONG_MODE, req)]
        try:
            rd = protocol.JnlRd.unpack(body)
        except protocol.BadBody:
            return [self.nak(Status.BAD_REQUEST, req)]
        if rd.from_seq < self._tail_seq or rd.from_seq > self._next_seq:
            return [self.nak(Status.NOT_FOUND, req, seq=rd.from_seq)]
        n = min(rd.count, self._next_seq - rd.from_seq)
        out = []
        first = rd.from_seq - self._tail_seq
        for i in range(n):
            jofs, _ = self._records[first + i]
            raw = bytes(self._ring[jofs:jofs + CONTROL_SIZE])
            (data_len,) = struct.unpack_from("<I", raw, Control.OFFSETS["data_len"])
            data = bytes(self._ring[jofs + CONTROL_SIZE:jofs + CONTROL_SIZE + data_len])
            flags = FrameFlag.MORE if i < n - 1 else 0
            out.append(Frame(FrameType.JNLWR, raw + data, flags))
        out.append(self._ack(req, rd.from_seq + n - 1, 0, self._joptr, n))
        return out

    # RELEASE -----------------------------------------------------------------

    def _release(self, body: bytes) -> list[Frame]:
        req = FrameType.RELEASE
        if self._descriptor:
            return self._release_at(body)
        if len(body) != protocol.Release.SIZE:
            return [self.nak(Status.BAD_REQUEST, req)]
        upto = protocol.Release.unpack(body).upto
        if upto >= self._next_seq:              # never issued: release nothing at all
            return [self.nak(Status.NOT_FOUND, req, seq=upto)]
        while self._tail_seq <= upto:           # below TAIL_SEQ: idempotent no-op
            _, r = self._records.popleft()
            self._joptr += r
            self._used -= r
            if self._joptr == self._wrap_at:    # the skipped tail goes with it
                self._used -= self._size - self._wrap_at
                self._joptr = 0
                self._wrap_at = self._size
            if self._joptr == self._size:
                self._joptr = 0
            self._tail_seq += 1
        return [self._ack(req, upto, 0, self._joptr)]

    def _release_at(self, body: bytes) -> list[Frame]:
        """RELEASE on a descriptor ring: the host says where JOPTR goes
        (docs/protocol.md, "RELEASE"); the engine checks it against its pointers."""
        req = FrameType.RELEASE
        if len(body) != protocol.Release.AT_SIZE:
            return [self.nak(Status.BAD_REQUEST, req)]
        rel = protocol.Release.unpack(body)
        upto, p = rel.upto, rel.joptr
        if upto >= self._next_seq:
            return [self.nak(Status.NOT_FOUND, req, seq=upto)]
        if upto < self._tail_seq:               # idempotent; JOPTR is not read
            return [self._ack(req, upto, 0, self._joptr)]
        size = self._size
        d = (p - self._joptr) % size or size    # bytes released, a skipped tail included
        if (p % ALIGN or p >= size or self._wrap_at <= p < size or d > self._used
                or (d == self._used) != (upto == self._next_seq - 1)):
            return [self.nak(Status.BAD_REQUEST, req)]
        if p <= self._joptr:                    # went past the end: the marker with it
            self._wrap_at = size
        self._used -= d
        self._joptr = p
        self._tail_seq = upto + 1
        return [self._ack(req, upto, 0, self._joptr)]

    # STATUS, LOAD, HELLO, HEARTBEAT -----------------------------------------

    def status(self) -> protocol.EngineStatus:
        """The STATUS_RESP body for the current state."""
        return protocol.EngineStatus(
            jiptr=self._jiptr, joptr=self._joptr, ring_size=self._size, free=self.free,
            next_seq=self._next_seq, tail_seq=self._tail_seq, now=self.now,
            acks=self._acks, naks=self._naks, epoch=self._epoch,
            held=self.held & _U32, wrap_at=self._wrap_at)

    def _status(self, body: bytes) -> list[Frame]:
        if body:
            return [self.nak(Status.BAD_REQUEST, FrameType.STATUS)]
        return [self.status().frame()]

    def _load(self, body: bytes) -> list[Frame]:
        req = FrameType.LOAD
        try:
            load = protocol.Load.unpack(body)   # refuses undefined flags
        except protocol.BadBody:
            return [self.nak(Status.BAD_REQUEST, req)]
        flags = LoadFlag(load.flags)
        ring = LoadFlag.RING in flags
        # All checks before any effect, in the document's order: a refused
        # LOAD changes nothing.
        if LoadFlag.SEQ in flags and load.seq == 0:
            return [self.nak(Status.BAD_REQUEST, req)]
        if (ring and not protocol.ring_size_ok(load.size)) or (LoadFlag.DESC in flags and not ring):
            return [self.nak(Status.BAD_REQUEST, req)]
        size = load.size if ring else self._size
        if LoadFlag.PTR in flags and (load.ptr % ALIGN or load.ptr >= size):
            return [self.nak(Status.BAD_REQUEST, req)]
        if ring and LoadFlag.DESC not in flags and load.size > self._memory:
            return [self.nak(Status.WRONG_MODE, req)]   # the data memory cannot hold it
        if flags & (LoadFlag.SEQ | LoadFlag.PTR | LoadFlag.RING):
            if self.held and LoadFlag.CLEAR not in flags:
                return [self.nak(Status.NOT_EMPTY, req)]
        if LoadFlag.CLEAR in flags:
            self._records.clear()
            self._jiptr = self._joptr = self._used = 0
            self._wrap_at = self._size
            self._tail_seq = self._next_seq
        if ring:                                # empty here (checked above)
            self._size = size
            self._descriptor = LoadFlag.DESC in flags
            self._jiptr = self._joptr = 0
            self._wrap_at = size
        if LoadFlag.SEQ in flags:
            self._next_seq = self._tail_seq = load.seq
        if LoadFlag.PTR in flags:
            self._jiptr = self._joptr = load.ptr
            self._wrap_at = self._size
        if LoadFlag.TIME in flags:
            self._time_base = load.time
            self._clock_at_load = self._clock()
            self._frozen = LoadFlag.FREEZE in flags
        if LoadFlag.EPOCH in flags:
            self._epoch = load.epoch
        return [self._ack(req, self._next_seq, self.now, self._jiptr)]

    def _hello(self, body: bytes) -> list[Frame]:
        try:
            protocol.Hello.unpack(body)
        except protocol.BadBody:
            return [self.nak(Status.BAD_REQUEST, FrameType.HELLO)]
        return [protocol.Hello(protocol.Role.ENGINE, 0, self._epoch, self._next_seq - 1,
                               "", self.name).frame()]

    def _heartbeat(self, body: bytes) -> list[Frame]:
        if len(body) not in (0, 8):
            return [self.nak(Status.BAD_REQUEST, FrameType.HEARTBEAT)]
        return [Frame(FrameType.HEARTBEAT, body)]


def _tag(body: bytes) -> int:
    """TAG of a journal or descriptor body, 0 when it is shorter than control data."""
    return Control.unpack(body).tag if len(body) >= CONTROL_SIZE else 0


_MAGIC_BYTES = struct.pack("<I", protocol.MAGIC)          # b"TRCP"
_HEAD = struct.Struct("<IBBHII")                          # ... | LENGTH | HCRC
_KNOWN_TYPES = frozenset(int(t) for t in FrameType)
_TAG_AT = Control.OFFSETS["tag"]


class EngineStream:
    """Byte front end of the model: the rules of docs/protocol.md "Engine: bad frames".

    ``feed(bytes)`` takes the link's bytes in any chunking and returns the
    engine's answer bytes.  Unlike :class:`protocol.FrameParser` it never
    gives up: a bad header is answered with one NAK BAD_FRAME and followed by
    a hunt for the next valid header, because an engine cannot close its link.

    ``beat`` is the link's width in bytes (docs/protocol.md, "Wide links"):
    with ``beat`` > 1 every frame starts on a beat boundary, so after a
    frame the rest of its last beat is dropped, the hunt moves a whole beat
    at a time, and every answer frame is padded with zeros to a whole beat.
    This is the reference for the gateware at data widths above 8.
    """

    def __init__(self, model: EngineModel, *, beat: int = 1):
        if beat not in (1, 2, 4):
            raise ValueError(f"beat must be 1, 2 or 4 bytes, not {beat!r}")
        self.model = model
        self.beat = beat
        self._buf = bytearray()
        self._skip = 0          # bytes of a refused frame (or a beat's rest) still to drop
        self._hunting = False

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        out = bytearray()
        while self._step(out):
            pass
        return bytes(out)

    def _step(self, out: bytearray) -> bool:
        """Consume one unit (a skip, a hunt, a frame); False when more bytes are needed."""
        buf = self._buf
        if self._skip:
            n = min(self._skip, len(buf))
            del buf[:n]
            self._skip -= n
            return not self._skip
        if self._hunting:
            return self._hunt()
        if len(buf) < protocol.HEADER_SIZE:
            return False
        magic, version, ftype, flags, length, hcrc = _HEAD.unpack_from(buf)
        if magic != protocol.MAGIC or hcrc != protocol.crc32c(buf[:12]):
            out += self._pad(self.model.nak(Status.BAD_FRAME, 0).serialize())
            self._start_hunt()
            return True
        if ftype not in _KNOWN_TYPES or length > protocol.MAX_LENGTH[ftype]:
            # More than the TYPE can carry (an unknown TYPE carries nothing
            # known): the boundary cannot be trusted, and waiting for the body
            # would hold the link for up to MAX_BODY bytes. Hunt at once.
            out += self._pad(self.model.nak(Status.BAD_FRAME, ftype).serialize())
            self._start_hunt()
            return True
        size = protocol.HEADER_SIZE + (length + protocol.TRAILER_SIZE if length else 0)
        if version != protocol.VERSION or flags & ~int(FrameFlag.MORE):
            out += self._pad(self.model.nak(Status.BAD_FRAME, ftype).serialize())
            del buf[:protocol.HEADER_SIZE]
            self._skip = size - protocol.HEADER_SIZE + -size % self.beat
            return True
        if len(buf) < size:
            return False
        body = bytes(buf[protocol.HEADER_SIZE:protocol.HEADER_SIZE + length])
        bcrc = int.from_bytes(buf[size - 4:size], "little") if length else 0
        del buf[:size]
        self._skip = -size % self.beat          # the rest of the frame's last beat
        if length and bcrc != protocol.crc32c(body):
            tag = 0
            if ftype in (FrameType.JNLWR, FrameType.JNLDESC) and length >= CONTROL_SIZE:
                tag = int.from_bytes(body[_TAG_AT:_TAG_AT + 4], "little")
            out += self._pad(self.model.nak(Status.BAD_BCRC, ftype, tag=tag).serialize())
            return True
        for answer in self.model.handle(Frame(FrameType(ftype), body, flags)):
            out += self._pad(answer.serialize())
        return True

    def _pad(self, frame: bytes) -> bytes:
        return frame + bytes(-len(frame) % self.beat)

    def _start_hunt(self) -> None:
        # Drop only the first byte (beat): a real header may start inside the bad one.
        del self._buf[:self.beat]
        self._hunting = True

    def _hunt(self) -> bool:
        """Drop bytes up to the next MAGIC whose 16 bytes have a valid HCRC
        (on a wide link: the next MAGIC that starts a beat)."""
        buf, w = self._buf, self.beat
        while True:
            at = buf.find(_MAGIC_BYTES)
            while at > 0 and at % w:
                at = buf.find(_MAGIC_BYTES, at + 1)
            if at < 0:
                # keep a possible partial MAGIC (from a beat boundary)
                n = max(0, len(buf) - 3)
                del buf[:n - n % w]
                return False
            del buf[:at]
            if len(buf) < protocol.HEADER_SIZE:
                return False
            if int.from_bytes(buf[12:16], "little") == protocol.crc32c(buf[:12]):
                self._hunting = False
                return True
            del buf[:w]


def unpad(stream: bytes, beat: int) -> bytes:
    """The frames of a wide link's ``stream`` without the zero padding that
    ends each one on a beat boundary (``EngineStream(beat=...)`` answers)."""
    out, at = bytearray(), 0
    while at + protocol.HEADER_SIZE <= len(stream):
        length = int.from_bytes(stream[at + 8:at + 12], "little")
        size = protocol.HEADER_SIZE + (length + protocol.TRAILER_SIZE if length else 0)
        out += stream[at:at + size]
        at += size + -size % beat
    return bytes(out)


def with_site(answers: bytes, site: str) -> bytes:
    """``answers`` with every HELLO's SITE set to ``site``: the one field that
    differs between backends (docs/protocol.md, "HELLO, HEARTBEAT"), so the
    model's bytes can be compared with the sim's or a board's."""
    out = bytearray()
    for frame in protocol.FrameParser().feed(answers):
        if frame.type == FrameType.HELLO:
            h = protocol.Hello.unpack(frame.body)
            frame = protocol.Hello(h.role, h.group, h.epoch, h.last_seq, h.grname, site).frame()
        out += frame.serialize()
    return bytes(out)
