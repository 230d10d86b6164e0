"""A small asyncio NBD client: fixed newstyle, ``NBD_OPT_GO``, simple replies.

Enough for the test tools to write to a site's export the way a host does
(the chaos runner writes to the site that took over, host/tools/chaos.py):
one request in flight per connection, WRITE (optionally FUA), FLUSH, READ.
The byte layout comes from :mod:`.protocol`, the server's own definitions.
"""

from __future__ import annotations

import asyncio
import struct

from . import protocol as p

__all__ = ["NbdClient", "NbdError", "NbdRefused"]

_REQUEST = struct.Struct(">IHHQQI")       # magic, flags, type, handle, offset, length
_SIMPLE = struct.Struct(">IIQ")           # magic, error, handle
_OPT_REPLY = struct.Struct(">QIII")       # magic, option, type, length


class NbdError(Exception):
    """The server broke the protocol (or closed the connection mid-reply)."""


class NbdRefused(Exception):
    """The server answered a request or an option with an error (``errno``)."""

    def __init__(self, message: str, errno: int = 0):
        super().__init__(message)
        self.errno = errno


class NbdClient:
    """One connection to one export, in transmission; use :meth:`open`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 size: int, flags: int):
        self._r, self._w = reader, writer
        self.size = size
        self.flags = flags
        self._handle = 0

    @classmethod
    async def open(cls, host: str, port: int, name: str) -> "NbdClient":
        reader, writer = await asyncio.open_connection(host, port)
        try:
            return await cls._handshake(reader, writer, name)
        except BaseException:
            writer.close()
            raise

    @classmethod
    async def _handshake(cls, reader, writer, name: str) -> "NbdClient":
        try:
            magic, opt, _ = struct.unpack(">QQH", await reader.readexactly(18))
        except asyncio.IncompleteReadError:
            raise NbdError("the server closed the connection before its greeting") from None
        if (magic, opt) != (p.NBDMAGIC, p.IHAVEOPT):
            raise NbdError("not a fixed-newstyle NBD server")
        raw = name.encode()
        writer.write(struct.pack(">I", p.NBD_FLAG_C_FIXED_NEWSTYLE | p.NBD_FLAG_C_NO_ZEROES)
                     + struct.pack(">QII", p.IHAVEOPT, p.NBD_OPT_GO, 4 + len(raw) + 4)
                     + struct.pack(">I", len(raw)) + raw
                     + struct.pack(">HH", 1, p.NBD_INFO_BLOCK_SIZE))
        await writer.drain()
        size = flags = None
        while True:
            magic, _, rtype, length = _OPT_REPLY.unpack(await reader.readexactly(_OPT_REPLY.size))
            data = await reader.readexactly(length)
            if magic != p.NBD_REP_MAGIC:
                raise NbdError(f"option reply magic {magic:#x}")
            if rtype == p.NBD_REP_ACK:
                break
            if rtype & (1 << 31):
                raise NbdRefused(f"export {name!r}: option refused ({rtype & 0x7FFFFFFF}): "
                                 f"{data.decode(errors='replace')}")
            if rtype == p.NBD_REP_INFO and len(data) >= 12 and \
                    struct.unpack_from(">H", data)[0] == p.NBD_INFO_EXPORT:
                size, flags = struct.unpack_from(">QH", data, 2)
        if size is None:
            raise NbdError(f"export {name!r}: no NBD_INFO_EXPORT before the ACK")
        return cls(reader, writer, size, flags)

    async def _request(self, cmd: int, offset: int = 0, length: int = 0, data: bytes = b"",
                       flags: int = 0) -> bytes:
        self._handle += 1
        self._w.write(_REQUEST.pack(p.NBD_REQUEST_MAGIC, flags, cmd, self._handle, offset,
                                    length) + data)
        await self._w.drain()
        try:
            magic, error, handle = _SIMPLE.unpack(await self._r.readexactly(_SIMPLE.size))
            if magic != p.NBD_SIMPLE_REPLY_MAGIC or handle != self._handle:
                raise NbdError(f"reply magic {magic:#x}, handle {handle} (sent {self._handle})")
            if error:
                raise NbdRefused(f"{p.Cmd(cmd).name} at {offset}: error {error}", error)
            return await self._r.readexactly(length) if cmd == p.Cmd.READ else b""
        except asyncio.IncompleteReadError:
            raise NbdError("the server closed the connection mid-reply") from None

    async def write(self, offset: int, data: bytes, *, fua: bool = False) -> None:
        await self._request(p.Cmd.WRITE, offset, len(data), data,
                            p.NBD_CMD_FLAG_FUA if fua else 0)

    async def read(self, offset: int, length: int) -> bytes:
        return await self._request(p.Cmd.READ, offset, length)

    async def flush(self) -> None:
        await self._request(p.Cmd.FLUSH)

    async def close(self) -> None:
        try:
            self._handle += 1
            self._w.write(_REQUEST.pack(p.NBD_REQUEST_MAGIC, 0, p.Cmd.DISC, self._handle, 0, 0))
            await self._w.drain()
        except (OSError, ConnectionError):
            pass
        self._w.close()
