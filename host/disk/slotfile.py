"""Small state files saved often, in place: two slots, the newest whole one wins.

:func:`~.durable.atomic_write` replaces a file whole (write a temporary file,
fsync it, rename it over, fsync the folder): four system calls that wait for
the disk and two that create and drop a name.  That is fine for files saved
now and then (the JNLG table, the copy bitmap), not for the ones saved many
times a second on the write path: the secondary's restore point and apply
mark (every 20 ms or 64 journals), the primary's activity log (each time a
write enters a cold extent) and its write log's ACK mark.

A :class:`SlotFile` holds two slots of a fixed size.  A save writes the
slot that does *not* hold the newest durable state and fdatasyncs: one
write and one sync, the file's size and name unchanged.  Each slot carries
a generation number and a CRC32C over its header and payload, so after a
power cut the newest slot whose CRC holds is the state: a save that was
torn or lost leaves the slot before it whole, because that one was never
written over.  This is the scheme of a database's double-written control
file; the power-cut tests (tests/test_slotfile.py) show what breaks without
each part.

A file that is not in this format yet (one written by ``atomic_write`` by an
earlier version, JSON) is read as it is and replaced by a slot file at the
next save, by ``atomic_write``: old or new after a crash, never neither.
A payload that outgrows the slots is saved the same way, into a file with
larger slots.
"""

from __future__ import annotations

import os
import struct
import threading
from pathlib import Path

from ..wire.protocol import crc32c
from . import fileio
from .durable import atomic_write

__all__ = ["SlotFile", "SlotFileCorrupt", "MAGIC"]

MAGIC = b"TCSF"
# magic, version, slot size, generation, payload length, CRC32C of all of
# this header before the CRC and of the payload.
_HEAD = struct.Struct("<4sHIQI")
_CRC = struct.Struct("<I")
HEAD_SIZE = _HEAD.size + _CRC.size
VERSION = 1
MIN_SLOT = 4096          # a page: one slot never shares a page with the other


class SlotFileCorrupt(ValueError):
    """Neither slot holds a whole state (or the file is not a slot file at all)."""


def _slot_size_for(n: int) -> int:
    size = MIN_SLOT
    while size < HEAD_SIZE + n:
        size *= 2
    return size


class SlotFile:
    """One state file saved in place (see the module docstring).

    ``load()`` once, then ``save(payload)`` as often as needed (saves from
    several threads take turns).  Each save opens and closes the file: two
    cheap calls, and no descriptor for an owner to forget.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._slot_size = 0       # 0: not a slot file yet (the next save makes one)
        self._gen = 0             # the newest durable slot's generation
        self._newest = 1          # which slot holds it (so the next save writes the other)
        self._lock = threading.Lock()
        self.saves = 0

    def load(self) -> bytes | None:
        """The newest whole state, or None if the file does not exist."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        if not raw.startswith(MAGIC):
            return raw            # an earlier version's whole-file state
        best = None
        slot = _HEAD.unpack_from(raw)[2] if len(raw) >= _HEAD.size else 0
        if slot < MIN_SLOT or len(raw) != 2 * slot:
            raise SlotFileCorrupt(f"{self.path}: a slot file of {len(raw)} bytes with "
                                  f"slots of {slot}: damaged; restore it or remove it")
        for i in (0, 1):
            got = self._parse(raw[i * slot:(i + 1) * slot], slot)
            if got is not None and (best is None or got[0] > best[0]):
                best = (got[0], i, got[1])
        if best is None:
            raise SlotFileCorrupt(f"{self.path}: neither slot is whole (CRC): the state is "
                                  f"lost; restore it or remove it")
        self._slot_size, (self._gen, self._newest, payload) = slot, best
        return payload

    @staticmethod
    def _parse(buf: bytes, slot: int) -> tuple[int, bytes] | None:
        magic, version, size, gen, n = _HEAD.unpack_from(buf)
        if magic != MAGIC or version != VERSION or size != slot or HEAD_SIZE + n > slot:
            return None
        (crc,) = _CRC.unpack_from(buf, _HEAD.size)
        body = buf[HEAD_SIZE:HEAD_SIZE + n]
        if crc32c(body, crc32c(buf[:_HEAD.size])) != crc:
            return None
        return gen, bytes(body)

    def _slot(self, gen: int, payload: bytes, size: int) -> bytes:
        head = _HEAD.pack(MAGIC, VERSION, size, gen, len(payload))
        crc = crc32c(payload, crc32c(head))
        return head + _CRC.pack(crc) + payload + bytes(size - HEAD_SIZE - len(payload))

    def save(self, payload: bytes) -> None:
        """Make ``payload`` the state, durably, before returning."""
        with self._lock:
            gen = self._gen + 1
            if not self._slot_size or HEAD_SIZE + len(payload) > self._slot_size:
                # A new file (or one with larger slots), whole: slot 0 holds
                # the state, slot 1 nothing whole yet.
                size = max(self._slot_size, _slot_size_for(len(payload)))
                atomic_write(self.path, self._slot(gen, payload, size) + bytes(size))
                self._slot_size, self._gen, self._newest = size, gen, 0
                self.saves += 1
                return
            i = 1 - self._newest
            data = memoryview(self._slot(gen, payload, self._slot_size))
            fd = fileio.open(self.path, os.O_RDWR)
            try:
                done = 0
                while done < len(data):
                    done += fileio.pwrite(fd, data[done:], i * self._slot_size + done)
                # The size never changes in place: fdatasync is enough.
                fileio.fdatasync(fd)
            finally:
                fileio.close(fd)
            self._gen, self._newest = gen, i
            self.saves += 1
