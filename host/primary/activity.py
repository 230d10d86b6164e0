"""The primary's activity log: the extents a crash may have left different at PVOL and SVOL.

A journaled host write reaches the PVOL (page cache), the write log (page
cache) and, once sent, the relay (durable there).  A power loss of the
primary can then drop the PVOL's copy of a write the relay and the SVOL
hold, or keep a PVOL write whose journal never left.  Either way the two
copies differ, and only in extents written shortly before the loss.

So before a journaled write may touch the PVOL, its extents (``AL_EXTENT``
bytes each) are in ``<state_dir>/<grname>.al``, durably (DRBD's activity
log does the same).  An extent leaves the log once every write into it is
both ACKed by the relay and on the PVOL durably (after a PVOL fsync) --
then the two copies agree there whatever is lost next.  A clean stop empties
the log.  At a start, whatever the file still lists is what the last stop
may have left different: the group resyncs those extents (``MasterGroup``).

Costs: one small in-place file write and its fdatasync
(``host/disk/slotfile.py``) when a write touches an extent that is not hot
yet; nothing for writes into hot extents.  The primary does that write in a
thread (``prepare`` / ``write`` / ``done``), shared by
the writes that wait for it, so it does not stall its event loop.  So extents
stay hot while writes go on, up to ``MasterGroup``'s ``AL_MAX_HOT`` (the
least recently written leave first), and all leave once writes pause
(DRBD's al-extents works alike).  Removals are saved lazily: a stale extent
in the file only means a little more work for the resync after a crash.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from ..disk.slotfile import SlotFile
from ..wire.pseq import tag_after, tag_distance

__all__ = ["AL_AHEAD", "AL_EXTENT", "ActivityLog"]

AL_EXTENT = 1 << 20      # bytes per activity-log extent (a multiple of the copy chunk)
#: Extents listed in one save when a sequential stream enters a cold one:
#: the stream's next AL_AHEAD - 1 extents come with it.  A 1 MiB sequential
#: write entered a new extent every time, and each cost a save (then two fsyncs
#: and a rename, waited for before the write): about a fifth of the
#: primary's time (docs/benchmarks.md, "Large writes: activity log ahead").
AL_AHEAD = 8
#: Extents listed ahead and not written yet, at most (the oldest go first):
#: random writes that look like a stream's now and then must not grow it.
AHEAD_MAX = 4 * AL_AHEAD


class ActivityLog:
    """Hot extents of one group's PVOLs: (idx, extent number) -> last PSEQ written there."""

    def __init__(self, path: Path, extent: int = AL_EXTENT):
        self.path = path
        self.extent = extent
        self.hot: dict[tuple[int, int], int] = {}
        # Listed for sure: in the file now *and* in every save prepared and not
        # yet written (a save may run in a thread: ``prepare``/``write``).
        self._saved: set[tuple[int, int]] = set()
        self.saves = 0
        self._gen = 0              # saves prepared
        self._written_gen = 0      # the newest save on disk
        self._lock = threading.Lock()    # one file write at a time, newest wins
        # What the last stop left listed: the extents that may differ now.
        self.unclean: set[tuple[int, int]] = set()
        # Saved in place (two slots: one write, one fdatasync): a save comes
        # each time a write enters a cold extent.
        self._file = SlotFile(path)
        raw = self._file.load()      # (SlotFileCorrupt is a ValueError naming the file)
        if raw is not None:
            try:
                doc = json.loads(raw)
                if doc["extent"] != extent:
                    raise ValueError(f"extent {doc['extent']}, expected {extent}")
                self.unclean = {(int(i), int(e)) for i, e in doc["hot"]}
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"activity log {path} is corrupt: {exc}") from None
        self._saved = set(self.unclean)
        # What the file on disk lists (the newest save written): ``_saved``
        # shrinks as soon as a save that drops an extent is prepared, the file
        # only once it is written -- a crash in between resyncs the extent.
        self._disk: set[tuple[int, int]] = set(self.unclean)
        # Listed ahead of a sequential stream and not written yet (``ahead``):
        # every save keeps them until they are written, writes pause (``cool``
        # with nothing kept) or newer ones push them out (AHEAD_MAX).
        self._ahead: dict[tuple[int, int], None] = {}

    def covers(self, keys) -> bool:
        """Are all these extents in the file (and in every save under way)?"""
        return self._saved.issuperset(keys)

    def extents(self, idx: int, offset: int, length: int) -> list[tuple[int, int]]:
        first, last = offset // self.extent, (offset + max(length, 1) - 1) // self.extent
        if first == last:             # the usual write: no range per journal
            return [(idx, first)]
        return [(idx, e) for e in range(first, last + 1)]

    def ahead(self, idx: int, offset: int, length: int, size: int) -> list[tuple[int, int]]:
        """Extents a sequential stream is about to enter, to list now, on a
        volume of ``size`` bytes; [] for any other write.

        A write is part of a stream when it covers the first byte of one of
        its extents, coming from the extent before it (hot, or its own).
        Then the next AL_AHEAD - 1 extents after the write should be listed:
        all of them if the write's own extents are not listed yet (they go
        in the one save the write waits for), else once fewer than half of
        them are (a save the write does not wait for: the stream finds its
        extents listed when it gets there).  A random write enters an
        extent at its start rarely (one 4 KiB write in 256) and then lists
        a few extents it does not need: more to resync after a crash, never
        less.  Listed but never written, they leave the file at the next
        save."""
        ext = self.extent
        if offset % ext and offset // ext == (offset + max(length, 1) - 1) // ext:
            return []                      # inside one extent (most random writes)
        keys = self.extents(idx, offset, length)
        entered = [e for _, e in keys if e * ext >= offset]
        if not entered:
            return []                      # inside one extent: nothing entered
        c = entered[0]
        if (idx, c - 1) not in self.hot and (idx, c - 1) not in keys:
            return []                      # nothing written just before it
        last = keys[-1][1]
        window = [(idx, e) for e in range(last + 1, min(last + AL_AHEAD, -(-size // ext)))]
        missing = [k for k in window if k not in self._saved]
        if not missing:
            return []
        if all(k in self._saved for k in keys):       # listed already: only when running low
            listed = next((n for n, k in enumerate(window) if k not in self._saved), len(window))
            if listed >= AL_AHEAD // 2:
                return []
        return missing

    def list_ahead(self, keys) -> None:
        """Keep ``keys`` (from :meth:`ahead`) in every save until they are written."""
        for k in keys:
            self._ahead.pop(k, None)
            self._ahead[k] = None
        while len(self._ahead) > AHEAD_MAX:
            del self._ahead[next(iter(self._ahead))]

    def before_write(self, idx: int, offset: int, length: int, tag: int) -> bool:
        """Journal ``tag`` is about to touch this range: its extents hot, durably.
        True if the file was written (some extent was not listed yet)."""
        new = False
        for key in self.extents(idx, offset, length):
            self.hot[key] = tag
            self._ahead.pop(key, None)
            new |= key not in self._saved
        if new:
            self._save()
        return new

    def cool(self, upto: int, keep: int = 0) -> int:
        """Every journal up to PSEQ ``upto`` is ACKed and on the PVOL durably:
        extents written only by those may leave the log (in memory), the
        least recently written first, until ``keep`` are left; how many left."""
        done = sorted(((tag, k) for k, tag in self.hot.items() if not tag_after(tag, upto)),
                      key=lambda tk: tag_distance(upto, tk[0]), reverse=True)   # oldest first
        n = max(0, min(len(done), len(self.hot) - keep))
        for _, k in done[:n]:
            del self.hot[k]
        if not keep:
            self._ahead.clear()       # writes paused: no stream is coming
        return n

    @property
    def listed(self) -> int:
        """Extents the file lists now: what a crash at this instant would resync."""
        return len(self._disk)

    @property
    def stale(self) -> bool:
        """The file lists extents that are no longer hot (a save would shrink it)."""
        return bool(self._disk - set(self.hot))

    def forget_unclean(self) -> None:
        """The extents the last stop left are in the copy bitmap now (durably):
        the file need not list them any more."""
        self.unclean = set()
        self._save()

    def save(self) -> None:
        self._save()

    def _save(self) -> None:
        save = self.prepare()
        self.done(save, self.write(save))

    # A save in three steps, so that the file write (and its fdatasync) can run in a
    # thread while the event loop goes on: ``prepare`` and ``done`` in the
    # owner's thread, ``write`` in any.  Saves may overlap: the newest
    # prepared one wins on disk, and ``_saved`` never claims an extent that
    # the file, or a save still to land, does not hold.

    def prepare(self, extra=()) -> tuple[int, set, bytes]:
        """Snapshot what the file must list: hot + unclean (+ ``extra``, extents
        about to be written)."""
        keys = set(self.hot) | self.unclean | set(self._ahead) | set(extra)
        self._gen += 1
        self._saved &= keys      # an extent this save drops is not listed from now on
        data = json.dumps({"extent": self.extent, "hot": sorted([i, e] for i, e in keys)})
        return self._gen, keys, data.encode()

    def write(self, save: tuple[int, set, bytes]) -> bool:
        """Write a prepared save durably (any thread); False if a newer one is on disk."""
        gen, _, data = save
        with self._lock:
            if gen < self._written_gen:
                return False
            self._file.save(data)
            self._written_gen = gen
            return True

    def done(self, save: tuple[int, set, bytes], wrote: bool) -> None:
        """Back in the owner's thread after ``write``."""
        gen, keys, _ = save
        if wrote:
            self.saves += 1
            if gen == self._written_gen:
                self._disk = set(keys)      # a copy: ``_saved &=`` shrinks in place
            if gen == self._gen:      # no newer save prepared since: the file is ``keys``
                self._saved = keys
