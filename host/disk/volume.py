"""Data volumes (PVOL at the primary, SVOL at the secondary): a file with a block size.

I/O is positional and synchronous: a write is one ``pwrite`` into the page
cache, durable only after :meth:`Volume.flush` (fsync), exactly like a disk
with a volatile write cache.  Offsets and lengths must be whole blocks.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import fileio

__all__ = ["VolumeError", "Volume"]

# Zeroing is done in bounded chunks so a huge WRITE_ZEROES does not allocate its size.
_ZERO_CHUNK = 1 << 20


class VolumeError(ValueError):
    """An I/O request that does not fit the volume (range, alignment), or a
    volume file that does not match its config (missing, wrong size)."""


class Volume:
    """One PVOL or SVOL of a fixed size.  A missing file is an error unless
    ``create``: then it is made sparse (all zeros) at ``size``."""

    def __init__(self, path: str | Path, size: int, block_size: int = 4096, *, idx: int = 0,
                 create: bool = False):
        if size <= 0 or block_size <= 0 or size % block_size:
            raise VolumeError(f"volume size {size} must be a positive multiple of "
                              f"block_size {block_size}")
        self.path = Path(path)
        # A typo in a path must not silently become a new, empty volume.
        if not self.path.exists():
            if not self.path.parent.is_dir():
                raise VolumeError(f"volume {idx}: folder {self.path.parent} does not exist "
                                  f"— create it or fix the volume's path")
            if not create:
                raise VolumeError(f"volume {idx}: {self.path} does not exist — fix the "
                                  f"volume's path, or set create = true to make a new, "
                                  f"empty one")
        self.size = size
        self.block_size = block_size
        self.idx = idx
        self._fd = fileio.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        actual = fileio.fstat(self._fd).st_size
        if actual == 0:
            fileio.ftruncate(self._fd, size)
            # A new volume must survive a power cut before anything is written
            # to it: a restore point covering its data could otherwise outlive
            # the file itself (found by tests/test_powercut.py).
            fileio.fsync(self._fd)
            fileio.fsync_dir(self.path.parent)
        elif actual != size:
            fileio.close(self._fd)
            raise VolumeError(f"volume {idx}: {self.path} is {actual} bytes, the config says "
                              f"{size} — fix the volume's size, or its path if this is "
                              f"another file")

    def check(self, offset: int, length: int) -> None:
        """Raise VolumeError unless [offset, offset+length) is whole blocks inside the volume."""
        bs = self.block_size
        if offset < 0 or length < 0 or offset + length > self.size:
            raise VolumeError(f"range offset={offset} length={length} is outside volume "
                              f"{self.idx} of {self.size} bytes")
        if offset % bs or length % bs:
            raise VolumeError(f"range offset={offset} length={length} is not aligned to "
                              f"block_size {bs}")

    def write(self, offset: int, data: bytes) -> None:
        self.check(offset, len(data))
        view = memoryview(data)
        while view:
            n = fileio.pwrite(self._fd, view, offset)
            view, offset = view[n:], offset + n

    def writev(self, offset: int, buffers: list) -> None:
        """Write ``buffers`` back to back from ``offset`` with one ``pwritev``
        (adjacent journals restored at once); the same bytes as :meth:`write`
        of their concatenation."""
        total = sum(len(b) for b in buffers)
        self.check(offset, total)
        n = fileio.pwritev(self._fd, buffers, offset)
        if n < total:               # short (rare): the rest one buffer at a time
            self.write(offset + n, memoryview(b"".join(buffers))[n:])

    def write_zeroes(self, offset: int, length: int) -> None:
        self.check(offset, length)
        zero = bytes(min(length, _ZERO_CHUNK))
        end = offset + length
        while offset < end:
            n = min(len(zero), end - offset)
            self.write(offset, zero[:n])
            offset += n

    def trim(self, offset: int, length: int) -> None:
        # A trimmed range reads back as zeros here (like NBD's TRIM on a thin disk
        # with read-zeroes-after-trim), so PVOL and SVOL stay byte-comparable.
        self.write_zeroes(offset, length)

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise VolumeError(f"read offset={offset} length={length} outside volume {self.idx}")
        return fileio.pread(self._fd, length, offset)

    def flush(self) -> None:
        fileio.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            fileio.close(self._fd)
            self._fd = -1
