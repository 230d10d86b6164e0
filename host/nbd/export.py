"""What an NBD export needs from storage: the async :class:`Export` interface.

The NBD server only ever talks to an :class:`Export`.  Two implementations are
planned:

* :class:`FileExport` (here): a plain file, used by the tests and as the
  secondary's read-only SVOL export.
* ``PrimaryExport`` (to be wired by the lead, not here): one PVOL of a
  :class:`tricopy.host.primary.site.Primary`.  It maps ``write`` to
  ``Primary.write(idx, offset, data)``, ``write_zeroes`` to
  ``Primary.write_zeroes``, ``trim`` to ``Primary.trim`` and ``flush`` to
  ``Primary.flush``; ``read`` reads the PVOL.  Because the primary completes a
  write only after the relay's ACK, every write is already durable at the relay
  when the NBD reply goes out, so ``fua`` needs no extra work there.  A full
  journal or a suspended group should raise :class:`ExportError` with
  ``NBD_ENOSPC`` or ``NBD_EIO`` so the host sees an explicit error, never a
  silent success (a write is acknowledged only once it is safe).  ``max_payload`` may stay at 32 MiB:
  the primary splits journals larger than ``protocol.MAX_DATA`` itself.
"""

from __future__ import annotations

import abc
import asyncio
import os
from pathlib import Path

from ..disk import fileio
from .protocol import NBD_EIO

__all__ = ["ExportError", "Export", "FileExport", "MAX_PAYLOAD"]

# The NBD spec recommends that servers accept payloads of at least 32 MiB and
# clients not send more unless told; we refuse anything larger.
MAX_PAYLOAD = 32 << 20

# Zeroing goes through a bounded buffer so a 4 GiB WRITE_ZEROES allocates 1 MiB.
_ZERO_CHUNK = 1 << 20


class ExportError(Exception):
    """A backend failure with the NBD error number the client should see.

    ``errno`` is an NBD error value (``protocol.NBD_EIO``, ``NBD_ENOSPC``, ...),
    which for the defined codes equals the Linux errno of the same name.
    """

    def __init__(self, errno: int, message: str):
        super().__init__(message)
        self.errno = errno


class Export(abc.ABC):
    """One NBD export: a byte range with a fixed block size.

    Subclasses set ``size`` (bytes, a multiple of ``block_size``),
    ``block_size`` (a power of two, 1..65536: the NBD minimum block size, so
    every request the server passes on is aligned to it) and ``read_only``.
    The server validates range, alignment and read-only before calling any
    method, so implementations see only well-formed requests.  Errors are
    raised as :class:`ExportError` or :class:`OSError`.
    """

    size: int
    block_size: int
    read_only: bool = False
    #: Free text shown by ``NBD_OPT_LIST`` and ``NBD_INFO_DESCRIPTION``.
    description: str = ""
    #: True only if a flush on one connection makes the completed writes of
    #: every connection durable (``NBD_FLAG_CAN_MULTI_CONN``).
    multi_conn: bool = False
    #: Largest READ/WRITE payload accepted (the NBD maximum block size).
    max_payload: int = MAX_PAYLOAD
    #: WRITEs of at most this many bytes that arrive together may be handed
    #: over as one batch (:meth:`write_many`); 0: each on its own.
    batch_max: int = 0

    async def write_many(self, writes: list) -> list:
        """The WRITEs ``(offset, data, fua)`` one read of a connection brought,
        in order (only with ``batch_max`` set, none larger than it); returns
        per write None or the exception it failed with."""
        raise NotImplementedError(f"{type(self).__name__} does not batch writes")

    @abc.abstractmethod
    async def read(self, offset: int, length: int) -> bytes:
        """Return exactly ``length`` bytes from ``offset``."""

    @abc.abstractmethod
    async def write(self, offset: int, data: bytes, fua: bool) -> None:
        """Write ``data``; with ``fua`` it is durable before this returns."""

    @abc.abstractmethod
    async def flush(self) -> None:
        """Make every completed write durable."""

    @abc.abstractmethod
    async def trim(self, offset: int, length: int) -> None:
        """Discard a range (contents afterwards are unspecified by NBD)."""

    @abc.abstractmethod
    async def write_zeroes(self, offset: int, length: int, fua: bool) -> None:
        """Make a range read back as zeros."""


class FileExport(Export):
    """A regular file as an export; its current length is the export size.

    I/O runs in worker threads (``pread``/``pwrite`` on one descriptor) so
    requests of several clients proceed concurrently.  One descriptor for all
    connections means ``fdatasync`` covers every connection's writes, which is
    what makes ``multi_conn`` safe.  Trimmed ranges read back as zeros, so a
    PVOL and its SVOL stay byte-comparable.  File calls go through
    :mod:`..disk.fileio`, so a power-cut test sees what a FLUSH or FUA made
    durable.
    """

    multi_conn = True

    def __init__(self, path: str | Path, block_size: int = 4096, read_only: bool = False,
                 *, description: str = ""):
        if block_size < 1 or block_size > 65536 or block_size & (block_size - 1):
            raise ValueError(f"block_size must be a power of two in 1..65536, not {block_size!r}")
        self.path = Path(path)
        self.block_size = block_size
        self.read_only = read_only
        self.description = description
        self._fd = fileio.open(self.path, os.O_RDONLY if read_only else os.O_RDWR)
        size = fileio.fstat(self._fd).st_size
        if size == 0 or size % block_size:
            fileio.close(self._fd)
            raise ValueError(f"{self.path} is {size} bytes: not a positive multiple of "
                             f"block_size {block_size}")
        self.size = size

    def close(self) -> None:
        """Release the file descriptor."""
        if self._fd >= 0:
            fileio.close(self._fd)
            self._fd = -1

    async def read(self, offset: int, length: int) -> bytes:
        return await asyncio.to_thread(self._read, offset, length)

    async def write(self, offset: int, data: bytes, fua: bool) -> None:
        await asyncio.to_thread(self._write, offset, data, fua)

    async def flush(self) -> None:
        await asyncio.to_thread(self._fdatasync)

    def _fdatasync(self) -> None:
        fileio.fdatasync(self._fd)     # looked up at call time: the backend in use

    async def trim(self, offset: int, length: int) -> None:
        await asyncio.to_thread(self._zero, offset, length, False)

    async def write_zeroes(self, offset: int, length: int, fua: bool) -> None:
        await asyncio.to_thread(self._zero, offset, length, fua)

    def _read(self, offset: int, length: int) -> bytes:
        parts = []
        while length:
            chunk = fileio.pread(self._fd, length, offset)
            if not chunk:  # the file shrank under us: refuse rather than pad
                raise ExportError(NBD_EIO, f"{self.path}: short read at offset {offset}")
            parts.append(chunk)
            offset, length = offset + len(chunk), length - len(chunk)
        return b"".join(parts)

    def _write(self, offset: int, data: bytes, fua: bool) -> None:
        view = memoryview(data)
        while view:
            n = fileio.pwrite(self._fd, view, offset)
            view, offset = view[n:], offset + n
        if fua:
            fileio.fdatasync(self._fd)

    def _zero(self, offset: int, length: int, fua: bool) -> None:
        zero = bytes(min(length, _ZERO_CHUNK))
        end = offset + length
        while offset < end:
            n = min(len(zero), end - offset)
            self._write(offset, zero[:n], False)
            offset += n
        if fua:
            fileio.fdatasync(self._fd)
