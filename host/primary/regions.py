"""Where each region of the PVOLs was last written, in PSEQ terms.

A delta resync has to know which parts of the PVOLs a peer lacks, given the
last journal the peer still holds: the relay's LAST_SEQ after it lost
journals it had ACKed, or the secondary's restore point when the relay site
is gone.  The write log can answer only while it still holds those journals,
and it lets them go as soon as the relay ACKs them -- so a relay that comes
back with an old journal meant a full copy.  This table answers for any PSEQ
since it began, at a coarse grain: per region of ``REGION`` bytes, the PSEQ of
the newest journal that wrote into it.

PSEQs are 32-bit and wrap (host/wire/pseq.py), so the table keeps them
*unwrapped* as 64-bit counts: ``last_tag`` / ``last64`` pin the newest PSEQ to
its count and every other PSEQ is placed relative to it.  A region's value
only ever grows (``max``): after a rebase the stream reuses PSEQs of journals
the relay lost, and the regions of those keep their higher count -- they are
then reported a little longer than needed, never dropped.

Durability: the table is saved (atomic file, fsynced, in a worker thread)
when the write log closes a segment and whenever it releases past the last
save.  After a crash the saved table plus a replay of the write log covers
every journal -- unless the log had released journals the last save did
not cover; the restart then finds that hole and the table answers only for
PSEQs after it (``known_from``).  A missing or damaged file starts a new
table that knows nothing before its start.  Either way ``after`` answers
``None`` for what it cannot know, and the caller copies everything: a rare
full copy, never a delta that is too small.

Grain: the smallest power-of-two multiple of the copy chunk that keeps the
table at about 2^20 regions per group (:func:`region_for`): the copy chunk
(64 KiB) up to 64 GiB of PVOLs, 1 MiB at 1 TiB.  So at most about 8 MiB of
memory and file, and a delta only as coarse as the volumes force it to be.
"""

from __future__ import annotations

import json
import logging
import threading
import zlib
from pathlib import Path

import numpy as np

from ..disk.durable import atomic_write
from ..wire.pseq import tag_after, tag_distance

log = logging.getLogger(__name__)

REGION = 1 << 20
MAX_REGIONS = 1 << 20


def region_for(sizes: dict[int, int], chunk: int) -> int:
    """The region size for volumes of ``sizes``: ``chunk`` doubled until the
    table has at most about :data:`MAX_REGIONS` entries."""
    region, total = chunk, sum(sizes.values())
    while total // region > MAX_REGIONS:
        region *= 2
    return region
MAGIC = b"TRICOPY-REGIONS-1\n"
BASE = 1 << 40          # the count of the first PSEQ a new table sees (never near 0)


class RegionLog:
    """The last-written PSEQ of every ``region``-sized piece of each volume."""

    def __init__(self, path: Path | None, sizes: dict[int, int], last_tag: int,
                 region: int = REGION):
        self.path = path
        self.region = region
        self.sizes = dict(sizes)
        self.regions = {i: np.zeros(-(-s // region), dtype=np.uint64) for i, s in sizes.items()}
        self.last_tag, self.last64 = last_tag, BASE
        self.start64 = BASE        # complete for every journal after this count
        self.saved_tag = last_tag  # durable up to here (a restart checks the log reaches back to it)
        # One file write at a time, the newest snapshot wins: a save in a
        # thread (_save_regions) and one in line (before a write-log reset)
        # shared the temporary file, so one rename could carry the other's
        # half-written bytes, or find no file at all (ENOENT, seen in a test).
        self._lock = threading.Lock()
        self._gen = self._written_gen = 0
        if path is not None and path.exists():
            try:
                self._load()
            except (ValueError, KeyError, TypeError) as exc:
                # A cache for smaller deltas, not a source of truth: start again
                # knowing nothing before now (the next loss means a full copy).
                log.error("region table %s is unreadable (%s): starting a new one; a relay "
                          "loss before PSEQ %d will mean a full copy", path, exc, last_tag)
                self.__init__(None, sizes, last_tag, region)
                self.path = path

    # -- PSEQ <-> count ---------------------------------------------------------------

    def unwrap(self, tag: int) -> int:
        """The 64-bit count of PSEQ ``tag``, placed within 2^31 of the newest one."""
        if tag_after(tag, self.last_tag):
            return self.last64 + tag_distance(tag, self.last_tag)
        return self.last64 - tag_distance(self.last_tag, tag)

    # -- updates ------------------------------------------------------------------------

    def note(self, idx: int, offset: int, length: int, tag: int) -> None:
        """Journal ``tag`` wrote ``[offset, offset+length)`` of volume ``idx``."""
        v = self.unwrap(tag)
        if v > self.last64:
            self.last_tag, self.last64 = tag, v
        arr = self.regions[idx]
        first = offset // self.region
        last = (offset + max(length, 1) - 1) // self.region
        if first == last:            # the usual case: no numpy slice per journal
            if arr[first] < v:
                arr[first] = v
        else:
            np.maximum(arr[first:last + 1], np.uint64(v), out=arr[first:last + 1])

    def known_from(self, tag: int) -> None:
        """Journals up to PSEQ ``tag`` may be missing from the table (a crash lost
        them before a save): it answers only for PSEQs from ``tag`` on."""
        self.start64 = max(self.start64, self.unwrap(tag))

    def rebase(self, tag: int) -> None:
        """The stream continues after PSEQ ``tag`` (it may reuse PSEQs the relay lost)."""
        if tag != self.last_tag:
            self.last64 = self.unwrap(tag)
            self.last_tag = tag

    # -- queries ------------------------------------------------------------------------

    def after(self, tag: int) -> list[tuple[int, int, int]] | None:
        """The regions written by a journal after PSEQ ``tag``, as (idx, offset, length);
        ``None`` when the table began after ``tag`` and cannot say.  ``tag`` 0 is
        "before PSEQ 1": everything, if the table began with the group."""
        if self.unwrap(tag) < self.start64:
            return None
        mark = np.uint64(self.unwrap(tag))
        out = []
        for idx, arr in self.regions.items():
            for r in np.flatnonzero(arr > mark):
                offset = int(r) * self.region
                out.append((idx, offset, min(self.region, self.sizes[idx] - offset)))
        return out

    # -- persistence --------------------------------------------------------------------

    def snapshot(self) -> tuple[int, bytes, int]:
        """What the file must hold as of now: ``(generation, bytes, the PSEQ they
        cover)``, taken on the event loop, written by :meth:`write` in any thread."""
        self._gen += 1
        body = b"".join(self.regions[i].astype("<u8").tobytes() for i in sorted(self.regions))
        head = {"region": self.region, "sizes": {str(i): s for i, s in self.sizes.items()},
                "last_tag": self.last_tag, "last64": self.last64, "start64": self.start64,
                "crc": zlib.crc32(body)}
        return self._gen, MAGIC + json.dumps(head).encode() + b"\n" + body, self.last_tag

    def write(self, snap: tuple[int, bytes, int]) -> bool:
        """Write a snapshot durably; False, writing nothing, if a newer one is
        on disk already (``saved_tag`` never goes back)."""
        gen, data, tag = snap
        with self._lock:
            if gen < self._written_gen:
                return False
            if self.path is not None:
                atomic_write(self.path, data)
            self._written_gen, self.saved_tag = gen, tag
            return True

    def save(self) -> None:
        """Save now (synchronously): before the write log drops records."""
        self.write(self.snapshot())

    def _load(self) -> None:
        raw = self.path.read_bytes()
        if not raw.startswith(MAGIC):
            raise ValueError("not a region table")
        head_end = raw.index(b"\n", len(MAGIC))
        head = json.loads(raw[len(MAGIC):head_end])
        body = raw[head_end + 1:]
        if head["region"] != self.region:
            raise ValueError(f"region {head['region']}, expected {self.region}")
        if {int(k): v for k, v in head["sizes"].items()} != self.sizes:
            raise ValueError("the volumes changed size")
        if zlib.crc32(body) != head["crc"]:
            raise ValueError("CRC mismatch")
        pos = 0
        for i in sorted(self.regions):
            n = len(self.regions[i]) * 8
            if pos + n > len(body):
                raise ValueError("short file")
            self.regions[i][:] = np.frombuffer(body[pos:pos + n], dtype="<u8")
            pos += n
        self.last_tag, self.last64 = int(head["last_tag"]), int(head["last64"])
        self.start64, self.saved_tag = int(head["start64"]), self.last_tag
