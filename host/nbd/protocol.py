"""Sans-I/O NBD server protocol: bytes in, events and bytes out.

Implements the server side of the NBD protocol's fixed newstyle handshake and
transmission phase (the spec: NetworkBlockDevice/nbd, ``doc/proto.md``; the
constant names below are the spec's).  :class:`ServerConnection` owns no socket
and no storage: the asyncio adapter (``server.py``) feeds it received bytes,
acts on the events it returns (:class:`StartTls`, :class:`Ready`,
:class:`Request`, :class:`Close`), hands back request results with
:meth:`ServerConnection.reply`, and sends whatever
:meth:`ServerConnection.data_to_send` returns.

Every request the core lets through as a :class:`Request` is already checked
(flags, read-only, length limit, alignment, range); bad ones are answered here
with the NBD error the spec asks for.  Lengths are checked against the limits
*before* any payload is buffered, so an absurd length costs nothing.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Mapping, Protocol

__all__ = [
    "NbdProtocolError", "ServerConnection", "StartTls", "Ready", "Request", "Close",
    "Cmd", "ExportLike", "transmission_flags", "block_sizes",
]

# --- Magic numbers (proto.md "Newstyle negotiation", "Transmission") ---------
NBDMAGIC = 0x4E42444D41474943          # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054          # "IHAVEOPT"
NBD_REP_MAGIC = 0x0003E889045565A9     # option reply magic
NBD_REQUEST_MAGIC = 0x25609513
NBD_SIMPLE_REPLY_MAGIC = 0x67446698
NBD_STRUCTURED_REPLY_MAGIC = 0x668E33EF

# Handshake flags (server) and client flags.
NBD_FLAG_FIXED_NEWSTYLE = 1 << 0
NBD_FLAG_NO_ZEROES = 1 << 1
NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0
NBD_FLAG_C_NO_ZEROES = 1 << 1

# Options.
NBD_OPT_EXPORT_NAME = 1
NBD_OPT_ABORT = 2
NBD_OPT_LIST = 3
NBD_OPT_STARTTLS = 5
NBD_OPT_INFO = 6
NBD_OPT_GO = 7
NBD_OPT_STRUCTURED_REPLY = 8

# Option reply types; errors have bit 31 set.
NBD_REP_ACK = 1
NBD_REP_SERVER = 2
NBD_REP_INFO = 3
_ERR = 1 << 31
NBD_REP_ERR_UNSUP = _ERR | 1
NBD_REP_ERR_POLICY = _ERR | 2
NBD_REP_ERR_INVALID = _ERR | 3
NBD_REP_ERR_TLS_REQD = _ERR | 5
NBD_REP_ERR_UNKNOWN = _ERR | 6
NBD_REP_ERR_BLOCK_SIZE_REQD = _ERR | 8
NBD_REP_ERR_TOO_BIG = _ERR | 9

# Information types inside NBD_REP_INFO.
NBD_INFO_EXPORT = 0
NBD_INFO_NAME = 1
NBD_INFO_DESCRIPTION = 2
NBD_INFO_BLOCK_SIZE = 3

# Transmission flags.
NBD_FLAG_HAS_FLAGS = 1 << 0
NBD_FLAG_READ_ONLY = 1 << 1
NBD_FLAG_SEND_FLUSH = 1 << 2
NBD_FLAG_SEND_FUA = 1 << 3
NBD_FLAG_SEND_TRIM = 1 << 5
NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6
NBD_FLAG_CAN_MULTI_CONN = 1 << 8

# Command flags.
NBD_CMD_FLAG_FUA = 1 << 0
NBD_CMD_FLAG_NO_HOLE = 1 << 1

# Structured reply chunk types and flags.
NBD_REPLY_FLAG_DONE = 1 << 0
NBD_REPLY_TYPE_NONE = 0
NBD_REPLY_TYPE_OFFSET_DATA = 1
NBD_REPLY_TYPE_ERROR = (1 << 15) | 1

# Error values on the wire (proto.md "Error values"; equal to Linux errno).
NBD_EPERM = 1
NBD_EIO = 5
NBD_ENOMEM = 12
NBD_EINVAL = 22
NBD_ENOSPC = 28
NBD_EOVERFLOW = 75
NBD_ENOTSUP = 95
NBD_ESHUTDOWN = 108

# Option payloads are small (a name of at most 4096 bytes plus a few info
# requests); anything longer is skipped unread and answered NBD_REP_ERR_TOO_BIG.
MAX_OPTION_LENGTH = 8192
MAX_STRING = 4096

_OPTION_HEADER = struct.Struct(">QII")        # IHAVEOPT, option, length
_OPTION_REPLY = struct.Struct(">QIII")        # magic, option, type, length
_REQUEST = struct.Struct(">IHHQQI")           # magic, flags, type, handle, offset, length
_SIMPLE_REPLY = struct.Struct(">IIQ")         # magic, error, handle
_CHUNK = struct.Struct(">IHHQI")              # magic, flags, type, handle, length


class Cmd(enum.IntEnum):
    """Transmission-phase request types (proto.md "Request types")."""

    READ = 0
    WRITE = 1
    DISC = 2
    FLUSH = 3
    TRIM = 4
    WRITE_ZEROES = 6


class NbdProtocolError(Exception):
    """The peer broke the framing; the connection cannot continue."""


class ExportLike(Protocol):
    """The attributes of an export the protocol core reads (see ``export.Export``)."""

    size: int
    block_size: int
    read_only: bool
    description: str
    multi_conn: bool
    max_payload: int


# --- Events ------------------------------------------------------------------
@dataclass(frozen=True)
class StartTls:
    """STARTTLS was acknowledged: flush output, upgrade the socket, call ``tls_started``."""


@dataclass(frozen=True)
class Ready:
    """Negotiation finished; transmission on ``export`` begins."""

    name: str
    export: ExportLike


@dataclass(frozen=True)
class Request:
    """A validated transmission request for the backend; answer it with ``reply``."""

    handle: int
    cmd: Cmd
    flags: int
    offset: int
    length: int
    data: bytes = b""

    @property
    def fua(self) -> bool:
        return bool(self.flags & NBD_CMD_FLAG_FUA)


@dataclass(frozen=True)
class Close:
    """Close the connection.  ``graceful``: finish in-flight requests first."""

    reason: str
    graceful: bool


def transmission_flags(export: ExportLike) -> int:
    """The 16-bit transmission flags advertised for ``export``."""
    flags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA
    if export.read_only:
        flags |= NBD_FLAG_READ_ONLY
    else:
        flags |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES
    if export.multi_conn:
        flags |= NBD_FLAG_CAN_MULTI_CONN
    return flags


def block_sizes(export: ExportLike) -> tuple[int, int, int]:
    """(minimum, preferred, maximum) block sizes advertised by NBD_INFO_BLOCK_SIZE."""
    bs = export.block_size
    maximum = export.max_payload - export.max_payload % bs
    return bs, max(bs, 4096), maximum


def check_export(name: str, export: ExportLike) -> None:
    """Raise ValueError if ``export`` cannot be advertised as NBD demands."""
    bs = export.block_size
    if len(name.encode()) > MAX_STRING:
        raise ValueError(f"export name longer than {MAX_STRING} bytes: {name[:40]!r}...")
    if not (1 <= bs <= 65536) or bs & (bs - 1):
        raise ValueError(f"export {name!r}: block_size must be a power of two in 1..65536, "
                         f"not {bs!r}")
    if export.size <= 0 or export.size % bs:
        raise ValueError(f"export {name!r}: size {export.size!r} is not a positive multiple "
                         f"of block_size {bs}")
    if export.max_payload < max(bs, 4096):
        raise ValueError(f"export {name!r}: max_payload {export.max_payload!r} is below the "
                         f"preferred block size")


class _State(enum.Enum):
    CLIENT_FLAGS = enum.auto()
    OPTIONS = enum.auto()
    TLS_PENDING = enum.auto()
    TRANSMISSION = enum.auto()
    DRAINING = enum.auto()      # after DISC: no more input, in-flight replies still go out
    CLOSED = enum.auto()


class ServerConnection:
    """One NBD connection, server side, without I/O.

    ``exports`` maps export names to exports ("" is the default export if
    present).  With ``tls=True`` the server runs in TLS-mandatory mode: only
    STARTTLS and ABORT are honoured until TLS is up.
    """

    def __init__(self, exports: Mapping[str, ExportLike], *, tls: bool = False):
        for name, export in exports.items():
            check_export(name, export)
        self._exports = dict(exports)
        self._tls_offered = tls
        self._tls_active = False
        self._state = _State.CLIENT_FLAGS
        self._no_zeroes = False
        self._structured = False
        self._export: ExportLike | None = None
        self._buf = bytearray()
        self._skip = 0                  # bytes still to discard unread
        self._after_skip = None         # callable run once the skip is done
        # Output is a list of chunks so a READ payload is copied once, at join.
        self._out: list[bytes] = [struct.pack(">QQH", NBDMAGIC, IHAVEOPT,
                                              NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES)]

    # --- public API -----------------------------------------------------------
    @property
    def export(self) -> ExportLike | None:
        """The export chosen by the client, once in transmission."""
        return self._export

    @property
    def structured_replies(self) -> bool:
        return self._structured

    def data_to_send(self) -> bytes:
        """Bytes to write to the peer now (drains the output buffer)."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes) -> list:
        """Consume ``data`` from the peer; return the events it completes."""
        events: list = []
        if self._state in (_State.DRAINING, _State.CLOSED):
            return events
        self._buf += data
        try:
            while self._state not in (_State.DRAINING, _State.CLOSED):
                if self._skip:
                    n = min(self._skip, len(self._buf))
                    del self._buf[:n]
                    self._skip -= n
                    if self._skip:
                        break
                    after, self._after_skip = self._after_skip, None
                    after(events)
                    continue
                if not self._step(events):
                    break
        except NbdProtocolError as exc:
            self._state = _State.CLOSED
            self._buf.clear()
            # A STARTTLS followed by plaintext in the same read must not
            # start a handshake the client will never complete.
            events = [e for e in events if not isinstance(e, StartTls)]
            events.append(Close(str(exc), graceful=False))
        return events

    def tls_started(self) -> None:
        """The adapter finished the TLS handshake; negotiation resumes encrypted."""
        if self._state is not _State.TLS_PENDING:
            raise RuntimeError("tls_started() without a pending STARTTLS")
        self._tls_active = True
        # Nothing negotiated in clear text survives the upgrade (proto.md STARTTLS).
        self._structured = False
        self._state = _State.OPTIONS

    def reply(self, request: Request, error: int = 0, data: bytes = b"",
              message: str = "") -> None:
        """Queue the reply to ``request``: ``data`` for a successful READ, else ``error``."""
        if self._state is _State.CLOSED:
            return
        if error:
            self._reply_error(request.handle, request.cmd, error, message)
        elif request.cmd is Cmd.READ:
            if len(data) != request.length:
                raise ValueError(f"READ of {request.length} bytes answered with {len(data)}")
            if self._structured:
                self._read_chunk(request.handle, request.offset, data)
            else:
                self._out.append(_SIMPLE_REPLY.pack(NBD_SIMPLE_REPLY_MAGIC, 0, request.handle))
                self._out.append(data)
        else:
            self._out.append(_SIMPLE_REPLY.pack(NBD_SIMPLE_REPLY_MAGIC, 0, request.handle))

    # --- parsing --------------------------------------------------------------
    def _step(self, events: list) -> bool:
        """Parse one unit from the buffer; False when more bytes are needed."""
        if self._state is _State.CLIENT_FLAGS:
            return self._client_flags()
        if self._state is _State.OPTIONS:
            return self._option(events)
        if self._state is _State.TRANSMISSION:
            return self._request(events)
        if self._state is _State.TLS_PENDING and self._buf:
            # Bytes after STARTTLS but before the TLS handshake would be
            # injected plaintext: refuse them.
            raise NbdProtocolError("data received after STARTTLS before the TLS handshake")
        return False

    def _take(self, n: int) -> bytes:
        with memoryview(self._buf) as view:  # one copy, not slice-then-bytes
            chunk = bytes(view[:n])
        del self._buf[:n]
        return chunk

    def _skip_then(self, n: int, after) -> None:
        self._skip, self._after_skip = n, after

    def _client_flags(self) -> bool:
        if len(self._buf) < 4:
            return False
        (flags,) = struct.unpack(">I", self._take(4))
        if flags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES):
            raise NbdProtocolError(f"unknown client flags {flags:#x}")
        if not flags & NBD_FLAG_C_FIXED_NEWSTYLE:
            # Without fixed newstyle we could not answer unknown options at all.
            raise NbdProtocolError("client does not support fixed newstyle negotiation")
        self._no_zeroes = bool(flags & NBD_FLAG_C_NO_ZEROES)
        self._state = _State.OPTIONS
        return True

    def _option(self, events: list) -> bool:
        if len(self._buf) < _OPTION_HEADER.size:
            return False
        magic, option, length = _OPTION_HEADER.unpack_from(self._buf)
        if magic != IHAVEOPT:
            raise NbdProtocolError(f"bad option magic {magic:#018x}")
        if length > MAX_OPTION_LENGTH:
            if option == NBD_OPT_EXPORT_NAME:
                raise NbdProtocolError(f"NBD_OPT_EXPORT_NAME of {length} bytes")
            del self._buf[:_OPTION_HEADER.size]
            self._skip_then(length, lambda ev: self._opt_error(
                option, NBD_REP_ERR_TOO_BIG, f"option of {length} bytes is too long"))
            return True
        if len(self._buf) < _OPTION_HEADER.size + length:
            return False
        del self._buf[:_OPTION_HEADER.size]
        self._handle_option(option, self._take(length), events)
        return True

    def _handle_option(self, option: int, data: bytes, events: list) -> None:
        tls_missing = self._tls_offered and not self._tls_active
        if option == NBD_OPT_ABORT:
            self._opt_reply(option, NBD_REP_ACK)
            self._state = _State.CLOSED
            events.append(Close("client sent NBD_OPT_ABORT", graceful=True))
        elif option == NBD_OPT_EXPORT_NAME:
            self._export_name(data, tls_missing, events)
        elif option == NBD_OPT_STARTTLS:
            self._starttls(data, events)
        elif tls_missing:
            self._opt_error(option, NBD_REP_ERR_TLS_REQD, "this server requires TLS (STARTTLS)")
        elif option == NBD_OPT_LIST:
            self._list(data)
        elif option in (NBD_OPT_INFO, NBD_OPT_GO):
            self._info_or_go(option, data, events)
        elif option == NBD_OPT_STRUCTURED_REPLY:
            if data:
                self._opt_error(option, NBD_REP_ERR_INVALID, "STRUCTURED_REPLY takes no data")
            elif self._structured:
                self._opt_error(option, NBD_REP_ERR_INVALID, "structured replies already on")
            else:
                self._structured = True
                self._opt_reply(option, NBD_REP_ACK)
        else:
            self._opt_error(option, NBD_REP_ERR_UNSUP, f"option {option} is not supported")

    def _export_name(self, data: bytes, tls_missing: bool, events: list) -> None:
        # NBD_OPT_EXPORT_NAME has no error reply: the only refusal is closing.
        if tls_missing:
            raise NbdProtocolError("NBD_OPT_EXPORT_NAME before STARTTLS")
        name = self._decode(data)
        export = self._exports.get(name) if name is not None else None
        if export is None:
            raise NbdProtocolError(f"NBD_OPT_EXPORT_NAME for unknown export {name!r}")
        self._out.append(struct.pack(">QH", export.size, transmission_flags(export)))
        if not self._no_zeroes:
            self._out.append(bytes(124))
        self._enter_transmission(name, export, events)

    def _starttls(self, data: bytes, events: list) -> None:
        if data:
            self._opt_error(NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID, "STARTTLS takes no data")
        elif not self._tls_offered:
            self._opt_error(NBD_OPT_STARTTLS, NBD_REP_ERR_UNSUP, "TLS is not configured")
        elif self._tls_active:
            self._opt_error(NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID, "TLS is already active")
        else:
            self._opt_reply(NBD_OPT_STARTTLS, NBD_REP_ACK)
            self._state = _State.TLS_PENDING
            events.append(StartTls())

    def _list(self, data: bytes) -> None:
        if data:
            self._opt_error(NBD_OPT_LIST, NBD_REP_ERR_INVALID, "NBD_OPT_LIST takes no data")
            return
        for name, export in self._exports.items():
            raw = name.encode()
            self._opt_reply(NBD_OPT_LIST, NBD_REP_SERVER,
                            struct.pack(">I", len(raw)) + raw + export.description.encode())
        self._opt_reply(NBD_OPT_LIST, NBD_REP_ACK)

    def _info_or_go(self, option: int, data: bytes, events: list) -> None:
        # Payload: u32 name length, name, u16 count, count x u16 info type.
        if len(data) < 6:
            self._opt_error(option, NBD_REP_ERR_INVALID, f"{len(data)}-byte INFO/GO payload")
            return
        (name_len,) = struct.unpack_from(">I", data)
        if name_len > len(data) - 6:
            self._opt_error(option, NBD_REP_ERR_INVALID, f"name length {name_len} overruns option")
            return
        (count,) = struct.unpack_from(">H", data, 4 + name_len)
        if len(data) != 6 + name_len + 2 * count:
            self._opt_error(option, NBD_REP_ERR_INVALID,
                            f"{count} info requests do not fit a {len(data)}-byte option")
            return
        name = self._decode(data[4:4 + name_len])
        if name is None:
            self._opt_error(option, NBD_REP_ERR_INVALID, "export name is not UTF-8")
            return
        export = self._exports.get(name)
        if export is None:
            self._opt_error(option, NBD_REP_ERR_UNKNOWN, f"no export named {name!r}")
            return
        wanted = set(struct.unpack_from(f">{count}H", data, 6 + name_len))
        self._info(option, NBD_INFO_EXPORT,
                   struct.pack(">QH", export.size, transmission_flags(export)))
        if NBD_INFO_NAME in wanted:
            self._info(option, NBD_INFO_NAME, name.encode())
        if NBD_INFO_DESCRIPTION in wanted and export.description:
            self._info(option, NBD_INFO_DESCRIPTION, export.description.encode())
        # Sent even when not asked for: the spec allows it and it tells the
        # client why a BLOCK_SIZE_REQD refusal follows.
        self._info(option, NBD_INFO_BLOCK_SIZE, struct.pack(">III", *block_sizes(export)))
        if export.block_size > 1 and NBD_INFO_BLOCK_SIZE not in wanted:
            self._opt_error(option, NBD_REP_ERR_BLOCK_SIZE_REQD,
                            f"requests must be aligned to {export.block_size} bytes")
            return
        self._opt_reply(option, NBD_REP_ACK)
        if option == NBD_OPT_GO:
            self._enter_transmission(name, export, events)

    def _enter_transmission(self, name: str, export: ExportLike, events: list) -> None:
        self._export = export
        self._state = _State.TRANSMISSION
        events.append(Ready(name, export))

    @staticmethod
    def _decode(raw: bytes) -> str | None:
        if len(raw) > MAX_STRING:
            return None
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return None

    def _opt_reply(self, option: int, rtype: int, data: bytes = b"") -> None:
        self._out.append(_OPTION_REPLY.pack(NBD_REP_MAGIC, option, rtype, len(data)) + data)

    def _opt_error(self, option: int, rtype: int, message: str) -> None:
        self._opt_reply(option, rtype, message.encode())

    def _info(self, option: int, info: int, data: bytes) -> None:
        self._opt_reply(option, NBD_REP_INFO, struct.pack(">H", info) + data)

    # --- transmission -----------------------------------------------------------
    def _request(self, events: list) -> bool:
        if len(self._buf) < _REQUEST.size:
            return False
        magic, flags, rtype, handle, offset, length = _REQUEST.unpack_from(self._buf)
        if magic != NBD_REQUEST_MAGIC:
            raise NbdProtocolError(f"bad request magic {magic:#010x}")
        export = self._export
        limit = block_sizes(export)[2]
        if rtype == Cmd.WRITE:
            if length > limit:
                # Refused before buffering: discard the payload as it streams by.
                del self._buf[:_REQUEST.size]
                self._skip_then(length, lambda ev: self._reply_error(
                    handle, Cmd.WRITE, NBD_EINVAL,
                    f"write of {length} bytes exceeds the {limit}-byte maximum"))
                return True
            if len(self._buf) < _REQUEST.size + length:
                return False
        del self._buf[:_REQUEST.size]
        data = self._take(length) if rtype == Cmd.WRITE else b""
        try:
            cmd = Cmd(rtype)
        except ValueError:
            self._reply_error(handle, None, NBD_EINVAL, f"unknown command {rtype}")
            return True
        error = self._check(cmd, flags, offset, length, limit)
        if error:
            self._reply_error(handle, cmd, *error)
        elif cmd is Cmd.DISC:
            self._state = _State.DRAINING
            events.append(Close("client sent NBD_CMD_DISC", graceful=True))
        else:
            events.append(Request(handle, cmd, flags, offset, length, data))
        return True

    def _check(self, cmd: Cmd, flags: int, offset: int, length: int,
               limit: int) -> tuple[int, str] | None:
        """The (NBD error, message) a request earns, or None if it may proceed."""
        export = self._export
        allowed = NBD_CMD_FLAG_FUA  # FUA is valid on every command once advertised
        if cmd is Cmd.WRITE_ZEROES:
            allowed |= NBD_CMD_FLAG_NO_HOLE
        if flags & ~allowed:
            return NBD_EINVAL, f"flags {flags:#x} not valid for {cmd.name}"
        if cmd is Cmd.DISC:
            return None
        if cmd is Cmd.FLUSH:
            if offset or length:
                return NBD_EINVAL, "FLUSH must have offset and length 0"
            return None
        if export.read_only and cmd is not Cmd.READ:
            return NBD_EPERM, f"{cmd.name} on a read-only export"
        if cmd is Cmd.READ and length > limit:
            return NBD_EINVAL, f"read of {length} bytes exceeds the {limit}-byte maximum"
        bs = export.block_size
        if offset % bs or length % bs:
            return NBD_EINVAL, (f"offset {offset} length {length} not aligned to "
                                f"{bs}-byte blocks")
        if offset + length > export.size:
            # proto.md: writes past the end are ENOSPC, other commands EINVAL.
            err = NBD_ENOSPC if cmd in (Cmd.WRITE, Cmd.WRITE_ZEROES) else NBD_EINVAL
            return err, f"offset {offset} length {length} beyond export size {export.size}"
        return None

    def _reply_error(self, handle: int, cmd: Cmd | None, error: int, message: str = "") -> None:
        if self._structured and cmd is Cmd.READ:
            # With structured replies a READ must be answered by chunks; the
            # error chunk carries the message to the client.
            raw = message.encode()[:MAX_STRING]
            payload = struct.pack(">IH", error, len(raw)) + raw
            self._out.append(_CHUNK.pack(NBD_STRUCTURED_REPLY_MAGIC, NBD_REPLY_FLAG_DONE,
                                     NBD_REPLY_TYPE_ERROR, handle, len(payload)) + payload)
        else:
            self._out.append(_SIMPLE_REPLY.pack(NBD_SIMPLE_REPLY_MAGIC, error, handle))

    def _read_chunk(self, handle: int, offset: int, data: bytes) -> None:
        if not data:  # OFFSET_DATA must not be empty; NONE ends the reply instead
            self._out.append(_CHUNK.pack(NBD_STRUCTURED_REPLY_MAGIC, NBD_REPLY_FLAG_DONE,
                                     NBD_REPLY_TYPE_NONE, handle, 0))
            return
        self._out.append(_CHUNK.pack(NBD_STRUCTURED_REPLY_MAGIC, NBD_REPLY_FLAG_DONE,
                                 NBD_REPLY_TYPE_OFFSET_DATA, handle, 8 + len(data)))
        self._out.append(struct.pack(">Q", offset))
        self._out.append(data)
