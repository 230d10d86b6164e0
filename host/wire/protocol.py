"""The tricopy wire format: one definition for every link.

Primary <-> relay, relay <-> secondary and host <-> journal engine (UART, pty,
socket) all speak these frames.  The byte layout is specified in
``docs/protocol.md``; this module is its executable form and the gateware's
``hdl/layouts.py`` takes its offsets from here.

A frame is::

    header  16 bytes   MAGIC u32 | VERSION u8 | TYPE u8 | FLAGS u16 |
                       LENGTH u32 | HCRC u32 (CRC32C of bytes 0..11)
    body    LENGTH bytes
    trailer 4 bytes    BCRC u32 = CRC32C(body), present iff LENGTH > 0

All integers are little-endian.  The module is sans-I/O: :class:`FrameParser`
takes bytes in any chunking and yields :class:`Frame` objects or raises a
:class:`ProtocolError` subclass; nothing here touches a socket.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

import crc32c as _crc32c

__all__ = [
    "MAGIC", "VERSION", "HEADER_SIZE", "TRAILER_SIZE", "CONTROL_SIZE", "ALIGN",
    "MAX_DATA", "MAX_BODY", "MAX_LENGTH", "MAX_RING", "MIN_RING", "FrameType", "FrameFlag", "Kind",
    "Status", "Role",
    "LoadFlag", "ProtocolError", "BadMagic", "BadVersion", "BadHeaderCRC",
    "BadBodyCRC", "FrameTooBig", "BadFrameType", "BadFlags", "BadBody",
    "Frame", "Control", "Ack", "Hello", "serialize_parts", "JnlRd", "Release", "Load",
    "EngineStatus", "FrameParser", "crc32c", "parse_frame", "serialize_frame",
    "record_size", "journal_body", "split_journal", "split_journals", "BATCH_JOURNALS",
    "BATCH_BYTES", "DATA_KINDS", "WIRE_KINDS",
    "ring_size_ok", "descriptor_frame", "descriptor_batch_frame", "ENGINE_BAUD", "DESC_BATCH",
]


def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC32C (Castagnoli), continuing from ``crc``.

    The ``crc32c`` package uses the SSE4.2/ARMv8 instructions and takes any
    buffer, so bodies are checked without a copy.
    """
    return _crc32c.crc32c(data, value=crc)


MAGIC = 0x50435254            # bytes "TRCP" on the wire
VERSION = 1
HEADER_SIZE = 16
TRAILER_SIZE = 4
CONTROL_SIZE = 64             # patent [0062]: fixed 64-byte control data
ALIGN = 64                    # journal records in a ring start on 64-byte boundaries
MAX_DATA = 4 << 20            # largest journal data in one JNLWR; larger writes are split
MAX_BODY = CONTROL_SIZE + MAX_DATA
MIN_RING = 2 * ALIGN          # smallest ring: the smallest record and room to move
MAX_RING = 1 << 40            # largest ring a LOAD RING sets (positions are u64 on the wire)
#: Baud rate of a board engine's UART, 8N1 (docs/boards.md, "Baud rate"): the
#: board tops' default and the host's (PortEngine). 3 Mbaud is the ULX3S's
#: FT231X at its fastest and the iCEBreaker's 12 MHz at the receiver's
#: fewest clocks a bit (4); both FTDI bridges make it exactly.
ENGINE_BAUD = 3_000_000
# A site-link JNLWR may carry several journals (docs/protocol.md, "Journal
# batches"); a sender closes a batch at whichever of these comes first.  They
# bound what one frame makes the receiver hold and how long the first
# journal of a batch waits for the last; a receiver takes any batch up to
# MAX_BODY.
BATCH_JOURNALS = 64
BATCH_BYTES = 1 << 20
#: Most descriptors in one JNLDESC (docs/protocol.md, "JNLDESC batches"):
#: 4 KiB of control data, one round trip and one cumulative answer.
DESC_BATCH = 64

_HEADER = struct.Struct("<IBBHI")      # without HCRC
_U32 = struct.Struct("<I")


class FrameType(enum.IntEnum):
    """Frame types (docs/protocol.md, "Frame types")."""
    HELLO = 0x01
    HEARTBEAT = 0x02
    JNLWR = 0x10       # patent Fig. 8: journal write (control data + journal data)
    ACK = 0x11
    NAK = 0x12
    JNLRD = 0x13       # read journals from JOPTR onward
    RELEASE = 0x14     # patent Fig. 9 step 940: advance JOPTR up to a sequence number
    STATUS = 0x15      # request status
    STATUS_RESP = 0x16
    LOAD = 0x17        # load sequence base, time base, epoch, ring size
    # A journal by its control data only: the engine allocates and stamps, the
    # host stores DATA_LEN bytes of data at the JOFS answered.  A type of its
    # own, not a JNLWR flag: the body means something else (DATA_LEN is not
    # the body's rest), it never travels between sites, and header FLAGS are
    # link-level bits that every receiver checks before the body.
    JNLDESC = 0x18


class FrameFlag(enum.IntFlag):
    """Header FLAGS bits; every other bit must be zero."""
    MORE = 0x0001      # more frames of the same batch follow (a hint for group commit)


class Kind(enum.IntEnum):
    """Journal kind (control data KIND)."""
    UPDATE = 1   # host write: data follows
    BASE = 2     # base journal (initial copy, patent Fig. 6): data follows
    ZERO = 3     # range reads back as zeros: no data
    TRIM = 4     # range discarded: no data
    MARK = 5     # consistency marker: no data, no volume effect
    WRAP = 0xFF  # ring-internal end-of-ring marker; never valid on a link


class Mark(enum.IntEnum):
    """ADDRESS of a MARK journal (docs/protocol.md, "MARK journals")."""
    COPY_BEGIN = 1   # a copy starts: the SVOLs are no image from here ...
    COPY_END = 2     # ... to here, where they are a consistent image again


DATA_KINDS = frozenset({Kind.UPDATE, Kind.BASE})
WIRE_KINDS = frozenset({Kind.UPDATE, Kind.BASE, Kind.ZERO, Kind.TRIM, Kind.MARK})


class Status(enum.IntEnum):
    """ACK/NAK status codes (docs/protocol.md, "Status codes")."""
    OK = 0
    FULL = 1          # no room in the ring now; retry after a RELEASE
    OVERSIZE = 2      # the journal can never fit
    BAD_FRAME = 3     # header unusable (magic, version, HCRC, flags, length)
    BAD_BCRC = 4      # body CRC mismatch
    BAD_DCRC = 5      # journal data CRC does not match control DATA_CRC
    BAD_LENGTH = 6    # LENGTH/DATA_LEN inconsistent with the body or the kind
    BAD_KIND = 7
    BAD_TYPE = 8      # frame type not accepted by this receiver
    NOT_FOUND = 9     # sequence number outside what the ring holds
    STALE_EPOCH = 10  # the journal's EPOCH is not the current one (fencing)
    NOT_EMPTY = 11    # sequence base can only be loaded into an empty ring
    BAD_REQUEST = 12  # body of a request malformed
    SUSPENDED = 13    # group is suspended (host links only)
    WRONG_GROUP = 14  # group name/number does not match (host links only)
    SEQ_REGRESSION = 15  # the peer's journal stream is behind ours (host links only)
    WRONG_MODE = 16   # the ring's mode does not take this request (data vs descriptor ring)


class Role(enum.IntEnum):
    """Who sent a HELLO."""
    PRIMARY = 1
    RELAY = 2
    SECONDARY = 3
    ENGINE = 4
    CONTROL = 5


class LoadFlag(enum.IntFlag):
    """Which fields of a LOAD request take effect."""
    SEQ = 0x01      # set NEXT_SEQ (ring must be empty)
    TIME = 0x02     # set the clock
    EPOCH = 0x04    # set the current epoch
    CLEAR = 0x08    # drop every journal and rewind JIPTR = JOPTR = 0 (applied first)
    FREEZE = 0x10   # with TIME: the clock stops at the loaded value (deterministic tests)
    PTR = 0x20      # set JIPTR = JOPTR = PTR in an empty ring (relay restart: align with the store)
    # 0x40 stays undefined: the vectors and the RTL scoreboard use it as "an undefined flag".
    RING = 0x80     # new ring of SIZE bytes (the 40-byte LOAD), empty, at 0 (ring must be empty)
    DESC = 0x100    # with RING: a descriptor ring (no data kept by the engine); without: a data ring


def ring_size_ok(size: int) -> bool:
    """A ring SIZE a LOAD RING may set: a multiple of ALIGN in MIN_RING..MAX_RING."""
    return MIN_RING <= size <= MAX_RING and size % ALIGN == 0


# -- errors ------------------------------------------------------------------

class ProtocolError(Exception):
    """Malformed bytes on a link.  ``status`` is the NAK code a receiver answers."""
    status = Status.BAD_FRAME


class BadMagic(ProtocolError):
    pass


class BadVersion(ProtocolError):
    pass


class BadHeaderCRC(ProtocolError):
    pass


class BadFlags(ProtocolError):
    pass


class FrameTooBig(ProtocolError):
    pass


class BadBodyCRC(ProtocolError):
    status = Status.BAD_BCRC


class BadFrameType(ProtocolError):
    status = Status.BAD_TYPE


class BadBody(ProtocolError):
    """A body whose size or fields do not fit its frame type."""
    status = Status.BAD_REQUEST

    def __init__(self, message: str, status: Status = Status.BAD_REQUEST):
        super().__init__(message)
        self.status = status


# -- frames ------------------------------------------------------------------

@dataclass(frozen=True)
class Frame:
    """One frame: type, flags and raw body.  Use the body classes to decode."""
    type: FrameType
    body: bytes = b""
    flags: int = 0

    def serialize(self) -> bytes:
        return serialize_frame(self.type, self.body, self.flags)


def serialize_frame(type: int, body: bytes = b"", flags: int = 0) -> bytes:
    """Header + body + trailer for one frame."""
    if len(body) > MAX_BODY:
        raise FrameTooBig(f"body of {len(body)} bytes exceeds MAX_BODY={MAX_BODY}")
    head = _HEADER.pack(MAGIC, VERSION, int(type), flags, len(body))
    out = head + _U32.pack(crc32c(head))
    if body:
        out += body + _U32.pack(crc32c(body))
    return out


def serialize_parts(type: int, parts: list, flags: int = 0) -> list:
    """One frame as buffers for ``writelines``: header, the body's ``parts``
    as given (never joined: a batch of journals is not copied to be sent),
    trailer.  The same bytes as :func:`serialize_frame` of their concatenation."""
    length = 0
    bcrc = 0
    for part in parts:
        length += len(part)
        bcrc = crc32c(part, bcrc)
    if length > MAX_BODY:
        raise FrameTooBig(f"body of {length} bytes exceeds MAX_BODY={MAX_BODY}")
    head = _HEADER.pack(MAGIC, VERSION, int(type), flags, length)
    out = [head + _U32.pack(crc32c(head))]
    if length:
        out.extend(parts)
        out.append(_U32.pack(bcrc))
    return out


def _check_header(head: bytes) -> tuple[FrameType, int, int]:
    magic, version, ftype, flags, length = _HEADER.unpack_from(head)
    if magic != MAGIC:
        raise BadMagic(f"bad magic {magic:#010x}, expected {MAGIC:#010x}")
    (hcrc,) = _U32.unpack_from(head, 12)
    if hcrc != crc32c(head[:12]):
        raise BadHeaderCRC(f"header CRC {hcrc:#010x} != computed {crc32c(head[:12]):#010x}")
    if version != VERSION:
        raise BadVersion(f"protocol version {version} not supported (this side speaks {VERSION})")
    if flags & ~int(FrameFlag.MORE):
        raise BadFlags(f"undefined header flags {flags:#06x}")
    try:
        ftype = FrameType(ftype)
    except ValueError:
        raise BadFrameType(f"unknown frame type {ftype:#04x}") from None
    if length > MAX_LENGTH[ftype]:
        raise FrameTooBig(f"{ftype.name} body of {length} bytes exceeds the "
                          f"{MAX_LENGTH[ftype]} bytes a {ftype.name} can carry")
    return ftype, flags, length


def parse_frame(data: bytes) -> Frame:
    """Parse exactly one complete frame; trailing bytes are an error."""
    parser = FrameParser()
    frames = parser.feed(data)
    if len(frames) != 1 or parser.buffered:
        raise BadBody(f"expected one frame in {len(data)} bytes, got {len(frames)} "
                      f"with {parser.buffered} bytes left over")
    return frames[0]


class FrameParser:
    """Sans-I/O frame parser.

    ``feed(bytes)`` returns the complete frames found so far and keeps any
    partial frame.  Errors are raised as :class:`ProtocolError` subclasses;
    after one, the parser is poisoned (the link must be reset), because a
    byte stream cannot be trusted to resynchronize by itself.  The header is
    checked before the body is awaited, so a LENGTH more than the frame's
    TYPE can carry (:data:`MAX_LENGTH`) is refused before anything is
    buffered or awaited for it.

    Each body byte is copied once here: small frames are cut out of the
    buffer through a view; a body of :data:`GATHER_AT` bytes or more is
    gathered as the chunks it came in and joined once when it is whole
    (appending a MiB to one growing buffer, then slicing it out, copied it
    three times; docs/benchmarks.md, "Fewer copies of large journals").
    """

    #: bodies at least this long are gathered chunk by chunk, not buffered
    GATHER_AT = 64 << 10

    def __init__(self) -> None:
        self._buf = bytearray()
        self._head: tuple[FrameType, int, int] | None = None
        self._error: ProtocolError | None = None
        # A large body being gathered: its chunks, their length, their CRC.
        self._parts: list[bytes] | None = None
        self._have = 0
        self._crc = 0

    @property
    def buffered(self) -> int:
        """Bytes taken and not yet handed up as frames."""
        gathering = HEADER_SIZE + self._have if self._parts is not None else 0
        return len(self._buf) + gathering

    def take_buffered(self) -> bytes:
        """Every byte taken and not yet handed up, as it came, and the parser
        empty: the rest of the stream goes on elsewhere (host/native/restore.py)."""
        if self._error is not None:
            raise self._error
        out = bytes(self._buf)
        if self._parts is not None:
            ftype, flags, length = self._head
            head = _HEADER.pack(MAGIC, VERSION, int(ftype), flags, length)
            out = head + _U32.pack(crc32c(head)) + b"".join(self._parts) + out
        self._buf.clear()
        self._head, self._parts, self._have, self._crc = None, None, 0, 0
        return out

    def feed(self, data: bytes) -> list[Frame]:
        if self._error is not None:
            raise self._error
        frames: list[Frame] = []
        try:
            if self._parts is not None:
                data = self._gather(data, frames)
            self._buf += data
            while self._parts is None:
                if self._head is None:
                    if len(self._buf) < HEADER_SIZE:
                        break
                    self._head = _check_header(bytes(self._buf[:HEADER_SIZE]))
                ftype, flags, length = self._head
                if length >= self.GATHER_AT:
                    with memoryview(self._buf) as view:   # what came of the body so far
                        rest = bytes(view[HEADER_SIZE:])
                    self._buf.clear()
                    self._parts, self._have, self._crc = [], 0, 0
                    self._buf += self._gather(rest, frames)
                    continue
                need = HEADER_SIZE + (length + TRAILER_SIZE if length else 0)
                if len(self._buf) < need:
                    break
                with memoryview(self._buf) as view:     # one copy, not slice-then-bytes
                    body = bytes(view[HEADER_SIZE:HEADER_SIZE + length])
                if length:
                    (bcrc,) = _U32.unpack_from(self._buf, HEADER_SIZE + length)
                    _check_body_crc(ftype, bcrc, crc32c(body))
                del self._buf[:need]
                self._head = None
                frames.append(Frame(ftype, body, flags))
        except ProtocolError as exc:
            self._error = exc
            raise
        return frames

    def _gather(self, data: bytes, frames: list[Frame]) -> bytes:
        """Take ``data`` into the large body being gathered; once it and its
        trailer are whole, append the frame.  Returns the bytes after them."""
        if not isinstance(data, bytes):
            data = bytes(data)         # kept: the caller may reuse its buffer
        ftype, flags, length = self._head
        parts = self._parts
        want = length - self._have
        if want > 0:
            piece = data if len(data) <= want else data[:want]
            parts.append(piece)
            self._have += len(piece)
            self._crc = crc32c(piece, self._crc)
            data = data[len(piece):]
        if self._have < length or len(data) + len(self._buf) < TRAILER_SIZE:
            self._buf += data          # (only ever the trailer's first bytes)
            return b""
        tail = bytes(self._buf) + data
        self._buf.clear()
        (bcrc,) = _U32.unpack_from(tail)
        _check_body_crc(ftype, bcrc, self._crc)
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        self._parts, self._have, self._crc, self._head = None, 0, 0, None
        frames.append(Frame(ftype, body, flags))
        return tail[TRAILER_SIZE:]


def _check_body_crc(ftype: FrameType, bcrc: int, computed: int) -> None:
    if bcrc != computed:
        raise BadBodyCRC(f"{ftype.name} body CRC {bcrc:#010x} != computed {computed:#010x}")


# -- bodies ------------------------------------------------------------------

def _pad_name(name: str, size: int) -> bytes:
    raw = name.encode("ascii")
    if len(raw) > size or b"\0" in raw:
        raise ValueError(f"name {name!r} must be ASCII, at most {size} bytes, no NUL")
    return raw.ljust(size, b"\0")


def _unpad_name(raw: bytes, what: str) -> str:
    name = raw.rstrip(b"\0")
    if b"\0" in name:
        raise BadBody(f"{what} has a NUL inside the name")
    try:
        return name.decode("ascii")
    except UnicodeDecodeError:
        raise BadBody(f"{what} is not ASCII") from None


def _expect_size(body: bytes, size: int, what: str) -> None:
    if len(body) != size:
        raise BadBody(f"{what} body must be {size} bytes, got {len(body)}")


@dataclass(frozen=True)
class Control:
    """The 64-byte control data of one journal (patent Fig. 2, 211-217).

    Offsets (docs/protocol.md, "Control data") are fixed and naturally
    aligned so that the gateware reads each field from one place.
    """
    seq: int = 0          # SEQ#    stamped by the relay's engine
    time: int = 0         # TIME    ns, stamped by the relay's engine
    address: int = 0      # ADDRESS byte offset in the volume
    jofs: int = 0         # JOFS    byte offset of the record in the journal ring
    length: int = 0       # LENGTH  bytes of volume affected
    data_len: int = 0     # bytes of journal data that follow the control data
    data_crc: int = 0     # CRC32C of the journal data
    epoch: int = 0        # group generation (fencing)
    idx: int = 0          # IDX     volume index in the group
    kind: int = Kind.UPDATE
    flags: int = 0        # bit 0: FUA requested by the host
    group: int = 0        # GRNUM
    jvol_id: int = 0      # JVOL_ID
    tag: int = 0          # sender's request number, echoed in the ACK
    ccrc: int = 0         # CRC32C of bytes 0..59 (see docs: set by the engine's read-out)

    STRUCT = struct.Struct("<QQQQIIIIHBBHHII")
    OFFSETS = {
        "seq": 0, "time": 8, "address": 16, "jofs": 24, "length": 32,
        "data_len": 36, "data_crc": 40, "epoch": 44, "idx": 48, "kind": 50,
        "flags": 51, "group": 52, "jvol_id": 54, "tag": 56, "ccrc": 60,
    }

    def pack(self) -> bytes:
        return self.STRUCT.pack(
            self.seq, self.time, self.address, self.jofs, self.length,
            self.data_len, self.data_crc, self.epoch, self.idx, self.kind,
            self.flags, self.group, self.jvol_id, self.tag, self.ccrc)

    @classmethod
    def unpack(cls, raw: bytes) -> "Control":
        if len(raw) < CONTROL_SIZE:
            raise BadBody(f"control data needs {CONTROL_SIZE} bytes, got {len(raw)}",
                          Status.BAD_LENGTH)
        return cls(*cls.STRUCT.unpack_from(raw))

    @classmethod
    def sealed(cls, *, address: int, length: int, data_len: int, data_crc: int, epoch: int,
               idx: int, kind: int, flags: int, group: int, tag: int) -> tuple["Control", bytes]:
        """A sender's new control data (no SEQ#, TIME or JOFS yet) with its CCRC,
        and its 64 packed bytes: one packing and one object per journal, where
        ``Control(...).with_ccrc()`` and a ``pack()`` for each use cost three
        of each (the primary's write path)."""
        raw = cls.STRUCT.pack(0, 0, address, 0, length, data_len, data_crc, epoch, idx, kind,
                              flags, group, 0, tag, 0)[:60]
        packed = raw + _U32.pack(crc32c(raw))
        return cls(*cls.STRUCT.unpack(packed)), packed

    def with_ccrc(self) -> "Control":
        """This control data with CCRC computed over bytes 0..59."""
        # Unpacking the packed bytes is several times cheaper than
        # dataclasses.replace, and this runs once per journal per hop.
        raw = self.pack()[:60]
        return Control(*self.STRUCT.unpack(raw + _U32.pack(crc32c(raw))))

    def ccrc_ok(self) -> bool:
        return self.ccrc == crc32c(self.pack()[:60])


def journal_body(control: Control, data: bytes = b"") -> bytes:
    """Body of a JNLWR frame."""
    return control.pack() + data


def descriptor_frame(control: Control, flags: int = 0) -> Frame:
    """A JNLDESC frame: the control data alone (docs/protocol.md, "JNLDESC")."""
    return Frame(FrameType.JNLDESC, control.pack(), flags)


def descriptor_batch_frame(controls: list[Control], flags: int = 0) -> Frame:
    """A JNLDESC of 1..DESC_BATCH descriptors (docs/protocol.md, "JNLDESC batches")."""
    if not 1 <= len(controls) <= DESC_BATCH:
        raise ValueError(f"a JNLDESC batch holds 1 to {DESC_BATCH} descriptors, "
                         f"not {len(controls)}")
    return Frame(FrameType.JNLDESC, b"".join(c.pack() for c in controls), flags)


def split_journal(body: bytes) -> tuple[Control, bytes]:
    """Control data and journal data of a JNLWR body; checks only the sizes."""
    ctl = Control.unpack(body)
    return ctl, body[CONTROL_SIZE:]


def split_journals(body: bytes | memoryview) -> list[tuple[Control, memoryview]]:
    """The journals of a site-link JNLWR body, in order (docs/protocol.md,
    "Journal batches"): control data, then DATA_LEN bytes of data, back to
    back, one or more times.  The data are views into ``body`` (no copy).

    A body that is not an exact sequence of whole journals raises
    :class:`BadBody` (BAD_LENGTH) and yields nothing: a receiver takes all
    of a frame or none of it.  Only sizes are checked here.
    """
    view = memoryview(body)
    end = len(view)
    if end < CONTROL_SIZE:
        raise BadBody(f"JNLWR body of {end} bytes holds no control data", Status.BAD_LENGTH)
    out = []
    pos = 0
    unpack = Control.STRUCT.unpack_from
    while pos < end:
        if end - pos < CONTROL_SIZE:
            raise BadBody(f"JNLWR body ends {end - pos} bytes into the control data of its "
                          f"journal {len(out) + 1}", Status.BAD_LENGTH)
        ctl = Control(*unpack(view, pos))
        stop = pos + CONTROL_SIZE + ctl.data_len
        if stop > end:
            raise BadBody(f"journal {len(out) + 1} of a JNLWR batch has DATA_LEN {ctl.data_len} "
                          f"but {end - pos - CONTROL_SIZE} bytes follow", Status.BAD_LENGTH)
        out.append((ctl, view[pos + CONTROL_SIZE:stop]))
        pos = stop
    return out


def record_size(data_len: int) -> int:
    """Bytes a journal takes in a ring: control data + data padded to ALIGN."""
    return CONTROL_SIZE + -(-data_len // ALIGN) * ALIGN


@dataclass(frozen=True)
class Ack:
    """ACK/NAK body (32 bytes): the answer to one request."""
    seq: int = 0
    time: int = 0
    jofs: int = 0
    tag: int = 0
    status: int = Status.OK
    req_type: int = 0

    STRUCT = struct.Struct("<QQQIBBH")
    SIZE = 32

    def pack(self) -> bytes:
        return self.STRUCT.pack(self.seq, self.time, self.jofs, self.tag,
                                self.status, self.req_type, 0)

    @classmethod
    def unpack(cls, body: bytes) -> "Ack":
        _expect_size(body, cls.SIZE, "ACK/NAK")
        seq, time, jofs, tag, status, req_type, rsv = cls.STRUCT.unpack(body)
        if rsv:
            raise BadBody(f"ACK/NAK reserved field is {rsv:#06x}, must be 0")
        try:
            status = Status(status)
        except ValueError:
            raise BadBody(f"unknown status code {status}") from None
        return cls(seq, time, jofs, tag, status, req_type)

    def frame(self) -> Frame:
        return Frame(FrameType.ACK if self.status == Status.OK else FrameType.NAK, self.pack())

    @classmethod
    def from_frame(cls, frame: Frame) -> "Ack":
        if frame.type not in (FrameType.ACK, FrameType.NAK):
            raise BadFrameType(f"expected ACK or NAK, got {frame.type.name}")
        ack = cls.unpack(frame.body)
        if (frame.type == FrameType.ACK) != (ack.status == Status.OK):
            raise BadBody(f"{frame.type.name} frame carries status {ack.status.name}")
        return ack


@dataclass(frozen=True)
class Hello:
    """HELLO body (80 bytes): who is talking, for which group and epoch."""
    role: int
    group: int = 0
    epoch: int = 0
    last_seq: int = 0     # the sender's resume point (last seq it holds/restored)
    grname: str = ""
    site: str = ""

    STRUCT = struct.Struct("<BBHIQ32s32s")
    SIZE = 80

    def pack(self) -> bytes:
        return self.STRUCT.pack(self.role, 0, self.group, self.epoch, self.last_seq,
                                _pad_name(self.grname, 32), _pad_name(self.site, 32))

    @classmethod
    def unpack(cls, body: bytes) -> "Hello":
        _expect_size(body, cls.SIZE, "HELLO")
        role, rsv, group, epoch, last_seq, grname, site = cls.STRUCT.unpack(body)
        try:
            role = Role(role)
        except ValueError:
            raise BadBody(f"unknown role {role} in HELLO") from None
        if rsv:
            raise BadBody(f"HELLO reserved byte is {rsv}, must be 0")
        return cls(role, group, epoch, last_seq,
                   _unpad_name(grname, "HELLO group name"), _unpad_name(site, "HELLO site name"))

    def frame(self) -> Frame:
        return Frame(FrameType.HELLO, self.pack())


@dataclass(frozen=True)
class JnlRd:
    """JNLRD body (16 bytes): read up to ``count`` journals starting at ``from_seq``."""
    from_seq: int
    count: int

    STRUCT = struct.Struct("<QII")
    SIZE = 16

    def pack(self) -> bytes:
        return self.STRUCT.pack(self.from_seq, self.count, 0)

    @classmethod
    def unpack(cls, body: bytes) -> "JnlRd":
        _expect_size(body, cls.SIZE, "JNLRD")
        from_seq, count, rsv = cls.STRUCT.unpack(body)
        if rsv:
            raise BadBody(f"JNLRD reserved field is {rsv:#x}, must be 0")
        return cls(from_seq, count)

    def frame(self) -> Frame:
        return Frame(FrameType.JNLRD, self.pack())


@dataclass(frozen=True)
class Release:
    """RELEASE body: free every journal with SEQ <= ``upto``.

    8 bytes (UPTO) on a data ring, whose engine walks its records to find
    the new JOPTR; 16 bytes (UPTO, JOPTR) on a descriptor ring, whose engine
    holds no record and takes the JOPTR after the release from the host
    (the JOFS of journal UPTO + 1 in its journal volume, or JIPTR).
    ``joptr`` is None for the 8-byte form.
    """
    upto: int
    joptr: int | None = None

    STRUCT = struct.Struct("<Q")
    AT_STRUCT = struct.Struct("<QQ")
    SIZE = 8
    AT_SIZE = 16

    def pack(self) -> bytes:
        if self.joptr is None:
            return self.STRUCT.pack(self.upto)
        return self.AT_STRUCT.pack(self.upto, self.joptr)

    @classmethod
    def unpack(cls, body: bytes) -> "Release":
        if len(body) == cls.AT_SIZE:
            return cls(*cls.AT_STRUCT.unpack(body))
        _expect_size(body, cls.SIZE, "RELEASE")
        return cls(*cls.STRUCT.unpack(body))

    def frame(self) -> Frame:
        return Frame(FrameType.RELEASE, self.pack())


@dataclass(frozen=True)
class Load:
    """LOAD body: sequence base, time base, ring position, epoch, ring size;
    ``flags`` says which take effect.

    32 bytes, or 40 when ``flags`` has RING: the ring SIZE is appended, so
    every LOAD without RING is byte for byte what it was before rings were
    loadable.  The body is 40 bytes if and only if RING is set.
    """
    flags: int
    seq: int = 0
    time: int = 0
    epoch: int = 0
    ptr: int = 0
    size: int = 0         # ring bytes, with RING only

    STRUCT = struct.Struct("<QQQII")
    RING_STRUCT = struct.Struct("<QQQIIQ")
    SIZE = 32
    RING_SIZE = 40
    FLAGS = (LoadFlag.SEQ | LoadFlag.TIME | LoadFlag.EPOCH | LoadFlag.CLEAR | LoadFlag.FREEZE
             | LoadFlag.PTR | LoadFlag.RING | LoadFlag.DESC)

    def pack(self) -> bytes:
        if self.flags & LoadFlag.RING:
            return self.RING_STRUCT.pack(self.seq, self.time, self.ptr, self.epoch, self.flags,
                                         self.size)
        if self.size:
            raise ValueError("a LOAD carries SIZE only with the RING flag")
        return self.STRUCT.pack(self.seq, self.time, self.ptr, self.epoch, self.flags)

    @classmethod
    def unpack(cls, body: bytes) -> "Load":
        if len(body) not in (cls.SIZE, cls.RING_SIZE):
            raise BadBody(f"LOAD body must be {cls.SIZE} or {cls.RING_SIZE} bytes, got {len(body)}")
        seq, time, ptr, epoch, flags = cls.STRUCT.unpack_from(body)
        if flags & ~int(cls.FLAGS):
            raise BadBody(f"LOAD has undefined flags {flags:#x}")
        ring = bool(flags & LoadFlag.RING)
        if ring != (len(body) == cls.RING_SIZE):
            raise BadBody(f"LOAD of {len(body)} bytes with RING {'set' if ring else 'clear'}: "
                          f"the body is {cls.RING_SIZE} bytes if and only if RING is set")
        size = cls.RING_STRUCT.unpack(body)[5] if ring else 0
        return cls(flags, seq, time, epoch, ptr, size)

    def frame(self) -> Frame:
        return Frame(FrameType.LOAD, self.pack())


@dataclass(frozen=True)
class EngineStatus:
    """STATUS_RESP body (80 bytes): the engine's pointers and counters."""
    jiptr: int
    joptr: int
    ring_size: int
    free: int
    next_seq: int
    tail_seq: int        # SEQ of the journal at JOPTR (== next_seq when empty)
    now: int             # the engine clock, ns
    acks: int            # JNLWR answered with ACK (mod 2**32)
    naks: int            # requests answered with NAK (mod 2**32)
    epoch: int
    held: int            # journals in the ring
    wrap_at: int         # offset of the end-of-ring marker, or ring_size if none

    STRUCT = struct.Struct("<QQQQQQQIIIIQ")
    SIZE = 80

    def pack(self) -> bytes:
        return self.STRUCT.pack(self.jiptr, self.joptr, self.ring_size, self.free,
                                self.next_seq, self.tail_seq, self.now, self.acks,
                                self.naks, self.epoch, self.held, self.wrap_at)

    @classmethod
    def unpack(cls, body: bytes) -> "EngineStatus":
        _expect_size(body, cls.SIZE, "STATUS_RESP")
        return cls(*cls.STRUCT.unpack(body))

    def frame(self) -> Frame:
        return Frame(FrameType.STATUS_RESP, self.pack())


#: The largest body each frame type can carry (docs/protocol.md, "Frame
#: types"), checked at the header by every receiver: the host parser, the
#: engine model's byte front end and the gateware (hdl/engine.py, HCHECK).
#: Without it a header with a good HCRC and a huge LENGTH makes the receiver
#: wait for megabytes of body before it can answer or resynchronize; with it
#: only a JNLWR, the one type that carries journal data, may be long.
MAX_LENGTH: dict[FrameType, int] = {
    FrameType.HELLO: Hello.SIZE,
    FrameType.HEARTBEAT: 8,                 # empty, or an 8-byte echo token
    FrameType.JNLWR: MAX_BODY,
    FrameType.ACK: Ack.SIZE,
    FrameType.NAK: Ack.SIZE,
    FrameType.JNLRD: JnlRd.SIZE,
    FrameType.RELEASE: Release.AT_SIZE,     # 8, or 16 on a descriptor ring
    FrameType.STATUS: 0,
    FrameType.STATUS_RESP: EngineStatus.SIZE,
    FrameType.LOAD: Load.RING_SIZE,         # 32, or 40 with RING
    FrameType.JNLDESC: DESC_BATCH * CONTROL_SIZE,   # a batch (the gateware: one, BAD_LENGTH past it)
}
