"""Small state files that must survive a crash whole: old or new, never torn."""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_json"]


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: after a crash it holds the old or the new bytes.

    write + fsync the temporary file, rename over ``path``, fsync the folder
    so that the rename itself is durable.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def atomic_write_json(path: Path, obj) -> None:
    """:func:`atomic_write` of ``obj`` as JSON."""
    atomic_write(path, json.dumps(obj).encode())
