"""Small state files that must survive a crash whole: old or new, never torn."""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import fileio

__all__ = ["atomic_write", "atomic_write_json"]


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: after a crash it holds the old or the new bytes.

    write + fsync the temporary file, rename over ``path``, fsync the folder
    so that the rename itself is durable.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fd = fileio.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view, done = memoryview(data), 0
        while done < len(view):
            done += fileio.pwrite(fd, view[done:], done)
        fileio.fsync(fd)
    finally:
        fileio.close(fd)
    fileio.replace(tmp, path)
    dfd = fileio.open(path.parent, os.O_RDONLY)
    try:
        fileio.fsync(dfd)
    finally:
        fileio.close(dfd)


def atomic_write_json(path: Path, obj) -> None:
    """:func:`atomic_write` of ``obj`` as JSON."""
    atomic_write(path, json.dumps(obj).encode())
