"""The file calls that durability rests on, in one place, so a test can swap the disk.

The journal store (``store.py``), the state-file writer (``durable.py``),
the data volumes (``volume.py``), the primary's write log and the NBD file
export call ``fileio.pwrite``, ``fileio.fdatasync``,
... instead of ``os.pwrite``, ``os.fdatasync``.  By default every name here
*is* the ``os`` function (no wrapper, no cost); :func:`use` swaps in a
backend for the duration of a ``with`` block, in this process, for every
thread.  The backend the tests use is :class:`~.powercut.PowerCutDisk`, a
disk that loses unsynced writes and directory entries at a simulated power
cut (docs/reliability.md).

Why not a mock per test: SIGKILL keeps the page cache, so a crash test that
kills a process cannot tell an ``fdatasync`` from a no-op.  Only a layer that
knows which writes were synced can show what a power cut leaves.

The primary's write log (``host/primary/writelog.py``) and the NBD file
export (``host/nbd/export.py``) call them too.

Rules for callers: every write, truncate, sync and directory change of a
file whose durability matters goes through here; reads may, and must when
they need to see the data written through here (the default backend writes
through to the real file, so plain ``os``/``pathlib`` reads see it too).
"""

from __future__ import annotations

import contextlib
import os

__all__ = ["IOV_MAX", "NAMES", "use", "backend", "fsync_dir",
           "open", "close", "pread", "pwrite", "pwritev", "write", "writev", "fsync", "fdatasync",
           "ftruncate", "fstat", "replace", "link", "unlink"]

#: Buffers one ``writev``/``pwritev`` takes (Linux's IOV_MAX); more fail with
#: EINVAL, so callers with many buffers cut them into calls of at most this.
IOV_MAX = 1024


def _os_fsync_dir(path) -> None:
    """fsync a folder, so that a create, link, rename or unlink in it is durable."""
    dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class _OS:
    """The default backend: the real calls."""
    open = staticmethod(os.open)
    close = staticmethod(os.close)
    pread = staticmethod(os.pread)
    pwrite = staticmethod(os.pwrite)
    pwritev = staticmethod(os.pwritev)
    write = staticmethod(os.write)
    writev = staticmethod(os.writev)
    fsync = staticmethod(os.fsync)
    fdatasync = staticmethod(os.fdatasync)
    ftruncate = staticmethod(os.ftruncate)
    fstat = staticmethod(os.fstat)
    replace = staticmethod(os.replace)
    link = staticmethod(os.link)
    unlink = staticmethod(os.unlink)
    fsync_dir = staticmethod(_os_fsync_dir)


#: The calls a backend provides, each with the signature of its ``os``
#: namesake (``fsync_dir(path)`` has none: open the folder, fsync, close).
NAMES = ("open", "close", "pread", "pwrite", "pwritev", "write", "writev", "fsync", "fdatasync",
         "ftruncate", "fstat", "replace", "link", "unlink", "fsync_dir")

OS = _OS()
_backend = OS


def _install(b) -> None:
    global _backend
    missing = [n for n in NAMES if not callable(getattr(b, n, None))]
    if missing:
        raise TypeError(f"file backend {b!r} lacks {', '.join(missing)}")
    _backend = b
    g = globals()
    for n in NAMES:
        g[n] = getattr(b, n)


def backend():
    """The backend in use (``fileio.OS`` unless inside :func:`use`)."""
    return _backend


@contextlib.contextmanager
def use(b):
    """Route every call of this module to backend ``b`` inside the block.

    Process-wide (all threads): meant for tests, one backend at a time.
    """
    old = _backend
    _install(b)
    try:
        yield b
    finally:
        _install(old)


# Bound at import; rebound by use().  Call them as ``fileio.pwrite(...)``
# (an attribute lookup at call time), never ``from fileio import pwrite``.
open = OS.open
close = OS.close
pread = OS.pread
pwrite = OS.pwrite
pwritev = OS.pwritev
write = OS.write
writev = OS.writev
fsync = OS.fsync
fdatasync = OS.fdatasync
ftruncate = OS.ftruncate
fstat = OS.fstat
replace = OS.replace
link = OS.link
unlink = OS.unlink
fsync_dir = OS.fsync_dir
