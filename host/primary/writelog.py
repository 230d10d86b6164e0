"""The primary's write log: every journal from before its PVOL apply until the relay ACKed it.

A record is the journal's control data (with CCRC) followed by its data.  The
log is a series of segment files in the state folder::

    <grname>.plog.000000000007   older, deleted once every journal in it is ACKed
    <grname>.plog.000000000008   the active segment: appends go here

A segment is rolled (a new file started) before an append once it holds
``segment_size`` bytes, and a whole segment other than the active one is
unlinked as soon as the relay has ACKed every journal in it.  So the log holds
at most about one segment plus the journals still in flight, whatever the
queue depth (docs/replication.md, "The write log").

``<grname>.pseq`` (written atomically) keeps what must outlive the records:

* ``last_tag``: the last PSEQ given to a journal, for when no retained record
  carries one (after a reset, or once every tagged record's segment is gone);
* ``acked``: a PSEQ the relay is known to have ACKed (the high-water mark,
  saved lazily; 0 = unknown).  At restart records at or before it are redone
  onto the PVOLs but not queued again, and the relay's HELLO is checked
  against it (host/primary/site.py, loss detection).

Recovery (:meth:`WriteLog.recover`) streams the records one at a time: nothing
reads a whole segment into memory.  A torn record (a crash in the middle of
an append), or a hole (a record whose PSEQ does not follow the one before,
an empty segment before the newest: unflushed records lost in a power cut
while later ones landed) ends the log: it is cut off, with any later
segment.  Segment numbers only grow; a reset leaves a gap in the numbering, and recovery uses
only the run of consecutive numbers that ends at the newest segment, so a
segment whose unlink was lost in a crash can never be redone after newer
writes that were not logged behind it.

Every write, truncate, sync and directory change goes through
:mod:`..disk.fileio`, so the power-cut tests (tests/test_powercut_primary.py)
see exactly what a power loss would leave of the log.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..wire import protocol
from ..disk import fileio
from ..disk.durable import atomic_write_json
from ..wire.protocol import Control
from ..wire.pseq import next_pseq, tag_after

__all__ = ["SEGMENT_SIZE", "WriteLogError", "WriteLogBroken", "Segment", "WriteLog"]

log = logging.getLogger(__name__)

SEGMENT_SIZE = 8 << 20      # roll to a new segment file past this many bytes
_DIGITS = 12                # segment number width in the file name
_READ_BUFFER = 1 << 20
_RELEASED_HELD = 2          # released, unsynced segments kept open for the next flush


class WriteLogError(OSError):
    """An append failed and was undone: the log is exactly as before (``errno`` of the cause)."""


class WriteLogBroken(WriteLogError):
    """An append failed and could not be undone: no more appends until :meth:`WriteLog.reset`."""


@dataclass
class Segment:
    """One segment file: its number, size, and the PSEQs it covers."""
    number: int
    path: Path
    size: int = 0
    first_tag: int = 0      # the first tagged record (0: none)
    last_tag: int = 0       # the PSEQ in force at its last record (tagged or local)
    fd: int = -1            # rolled but not fsynced yet: kept open for the next flush


def _write_all(fd: int, bufs: list) -> None:
    """``writev`` until every byte is written; a call that writes nothing is an EIO."""
    total = sum(len(b) for b in bufs)
    done = fileio.writev(fd, bufs)
    while done < total:
        if done <= 0:
            raise OSError(errno.EIO, "writev wrote nothing")
        rest, skip = [], done
        for b in bufs:
            if skip >= len(b):
                skip -= len(b)
                continue
            rest.append(memoryview(b)[skip:])
            skip = 0
        bufs, total = rest, total - done
        done = fileio.writev(fd, bufs)


class WriteLog:
    """The segmented write log of one MASTER group (see the module docstring).

    Open with the constructor, then consume :meth:`recover` once (it yields
    every retained record, in log order) before the first :meth:`append`.
    """

    def __init__(self, folder: Path, grname: str, segment_size: int | None = None):
        self.folder = Path(folder)
        self.grname = grname
        self.segment_size = segment_size or SEGMENT_SIZE
        self._pseq_path = self.folder / f"{grname}.pseq"
        self.saved_tag = self.saved_acked = 0
        if self._pseq_path.exists():
            try:
                doc = json.loads(self._pseq_path.read_text())
                self.saved_tag = int(doc["last_tag"])
                # Files from before the acked mark: 0 = unknown, never a false "loss".
                self.saved_acked = int(doc.get("acked", 0))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"PSEQ file {self._pseq_path} is corrupt: {exc}") from None
        self.last_tag = self.saved_tag      # the last PSEQ given to a journal
        self.segments: list[Segment] = []   # retained, oldest first; the last one is active
        self.broken: str | None = None
        self._fd = -1
        self._dir_dirty = False             # recover() started segment 1: name not synced
        self._released_fds: list[int] = []  # released segments not fsynced yet
        self._recovered = False

    # -- names -----------------------------------------------------------------------

    def _path(self, number: int) -> Path:
        return self.folder / f"{self.grname}.plog.{number:0{_DIGITS}d}"

    def _on_disk(self) -> list[int]:
        prefix = f"{self.grname}.plog."
        numbers = []
        for p in self.folder.iterdir():
            tail = p.name[len(prefix):]
            if p.name.startswith(prefix) and len(tail) == _DIGITS and tail.isdigit():
                numbers.append(int(tail))
        return sorted(numbers)

    # -- recovery --------------------------------------------------------------------

    def recover(self) -> Iterator[tuple[Control, bytes]]:
        """Yield every retained record in log order, streaming; cut a torn tail.

        Must be consumed to the end before the log takes appends.
        """
        legacy = self.folder / f"{self.grname}.plog"     # the one-file log of earlier versions
        if legacy.exists() and not self._on_disk():
            fileio.replace(legacy, self._path(1))
            fileio.fsync_dir(self.folder)
        numbers = self._on_disk()
        # Only the consecutive run ending at the newest segment: older ones are
        # deletions a crash undid (see the module docstring).
        start = max(len(numbers) - 1, 0)
        while start > 0 and numbers[start - 1] == numbers[start] - 1:
            start -= 1
        for n in numbers[:start]:
            log.info("write log: %s precedes a gap (an earlier reset); removed", self._path(n))
            fileio.unlink(self._path(n))
        numbers = numbers[start:]
        torn_at: int | None = None
        prev = 0        # the PSEQ of the last tagged record read (0: none yet)
        for i, n in enumerate(numbers):
            seg = Segment(n, self._path(n), last_tag=self.last_tag)
            self.segments.append(seg)
            with open(seg.path, "rb", buffering=_READ_BUFFER) as f:
                pos = 0
                while True:
                    head = f.read(protocol.CONTROL_SIZE)
                    if not head:
                        # An empty segment that is not the newest lost its
                        # records (a rolled one is never empty): a hole.
                        if pos == 0 and i < len(numbers) - 1:
                            torn_at = 0
                        break
                    ctl = Control.unpack(head) if len(head) == protocol.CONTROL_SIZE else None
                    if ctl is None or not ctl.ccrc_ok():
                        torn_at = pos
                        break
                    data = f.read(ctl.data_len)
                    if len(data) != ctl.data_len or (
                            ctl.data_len and protocol.crc32c(data) != ctl.data_crc):
                        torn_at = pos
                        break
                    if ctl.tag and prev and ctl.tag != next_pseq(prev):
                        # A hole: an older segment's tail, never flushed, was
                        # lost while a newer one's records landed.  What
                        # follows was not flushed either; redone and sent
                        # again it would be a PSEQ gap the relay refuses.
                        # (PSEQs jump nowhere else: MasterGroup resets the
                        # log when it takes the relay's later PSEQ.)
                        torn_at = pos
                        break
                    prev = ctl.tag or prev
                    pos += protocol.CONTROL_SIZE + ctl.data_len
                    seg.size = pos
                    if ctl.tag:
                        self.last_tag = ctl.tag
                        seg.first_tag = seg.first_tag or ctl.tag
                    seg.last_tag = self.last_tag
                    yield ctl, data
            if torn_at is not None:
                actual = seg.path.stat().st_size
                log.warning("write log %s: cut a torn tail of %d bytes at %d", seg.path,
                            actual - torn_at, torn_at)
                # Newest first, each made durable before the next: were an
                # older one's unlink kept and a newer one's lost, the newer
                # would be the newest after a crash and the run ending there
                # would leave out every segment before it.
                for later in reversed(numbers[i + 1:]):
                    log.warning("write log: %s follows a torn record; removed", self._path(later))
                    fileio.unlink(self._path(later))
                    fileio.fsync_dir(self.folder)
                break
        if not self.segments:
            self.segments.append(Segment(1, self._path(1)))
            self._dir_dirty = True
        active = self.segments[-1]
        self._fd = fileio.open(active.path, os.O_RDWR | os.O_CREAT, 0o644)
        if torn_at is not None:
            # The cut is made durable before the first append lands where the
            # torn record was: else a power loss could keep the new records
            # but lose the cut, and a whole stale record of the old tail would
            # be redone after them, with an older PSEQ over newer data.
            fileio.ftruncate(self._fd, torn_at)
            fileio.fsync(self._fd)
        os.lseek(self._fd, active.size, os.SEEK_SET)
        self._recovered = True

    @property
    def acked(self) -> int:
        """The recovered ACK high-water mark: the saved one, or what the deleted segments prove.

        Segments are unlinked only once ACKed, so the PSEQ before the first
        record of the oldest retained segment was ACKed too, unless the mark
        is unknown (0, e.g. after ``pair create``): then it stays unknown.
        Only the oldest segment's: one whose unsynced tail a power loss took
        may lie in between, and the PSEQs it held were not ACKed
        (tests/test_powercut_primary.py found the false "relay lost journals").
        """
        first = self.segments[0].first_tag if self.segments else 0
        if self.saved_acked and first > 1 and tag_after(first - 1, self.saved_acked):
            return first - 1
        return self.saved_acked

    @property
    def first_tag(self) -> int:
        """The first tagged record still in the log (0: none)."""
        return next((s.first_tag for s in self.segments if s.first_tag), 0)

    @property
    def size(self) -> int:
        return sum(s.size for s in self.segments)

    @property
    def empty(self) -> bool:
        return all(s.size == 0 for s in self.segments)

    # -- appends ---------------------------------------------------------------------

    def append(self, ctl: Control, data: bytes) -> tuple:
        """Append one record; returns an undo token (see :meth:`append_many`)."""
        return self.append_many([(ctl, data)])[0]

    def append_many(self, records: list, heads: list[bytes] | None = None) -> list[tuple]:
        """Append ``(ctl, data)`` records in order with one ``writev`` (completed
        if short); returns an undo token per record.  ``heads``: each record's
        control data already packed, if the caller has it.

        They reach the page cache before the PVOL apply, so a killed process
        never has applied-but-unlogged writes.  A batch goes whole into the
        active segment (a segment may pass ``segment_size`` by one batch), so
        every token can cut off its record and those after it.  On an error
        the batch is cut off again and :class:`WriteLogError` raised; if even
        that fails the log is *broken* (:class:`WriteLogBroken`) until
        :meth:`reset`.
        """
        if not self._recovered:
            raise RuntimeError("WriteLog.recover() must run before the first append")
        if self.broken:
            raise WriteLogBroken(errno.EIO, f"write log is broken: {self.broken}")
        seg = self.segments[-1]
        if seg.size >= self.segment_size:
            try:
                self._roll()
            except OSError as exc:
                raise WriteLogError(exc.errno, f"write log {self._path(seg.number + 1)}: "
                                               f"cannot start a segment: {exc.strerror}") from None
            seg = self.segments[-1]
        first = (seg, seg.size, seg.first_tag, seg.last_tag, self.last_tag)
        bufs = []
        for i, (ctl, data) in enumerate(records):
            bufs.append(heads[i] if heads is not None else ctl.pack())
            bufs.append(data)
        try:
            for at in range(0, len(bufs), fileio.IOV_MAX):
                _write_all(self._fd, bufs[at:at + fileio.IOV_MAX])
        except OSError as exc:
            self._cut(first, exc)
            raise WriteLogError(exc.errno, f"write log {seg.path}: append failed "
                                           f"({exc.strerror}); the record was cut off") from None
        tokens = []
        for ctl, data in records:
            tokens.append((seg, seg.size, seg.first_tag, seg.last_tag, self.last_tag))
            seg.size += protocol.CONTROL_SIZE + len(data)
            if ctl.tag:
                self.last_tag = ctl.tag
                seg.first_tag = seg.first_tag or ctl.tag
            seg.last_tag = self.last_tag
        return tokens

    def undo(self, token: tuple) -> None:
        """Cut off the record :meth:`append` returned ``token`` for, and every
        record appended after it (they must all be in the active segment)."""
        self._cut(token, None)

    def _cut(self, token: tuple, cause: OSError | None) -> None:
        seg, size, first, last, log_last = token
        if seg is not self.segments[-1]:
            raise RuntimeError("only the last record can be cut off")
        try:
            fileio.ftruncate(self._fd, size)
            os.lseek(self._fd, size, os.SEEK_SET)
        except OSError as exc:
            self.broken = (f"{seg.path}: a failed append ({cause.strerror if cause else 'undo'}) "
                           f"could not be cut off: {exc.strerror}")
            raise WriteLogBroken(exc.errno, self.broken) from None
        seg.size, seg.first_tag, seg.last_tag, self.last_tag = size, first, last, log_last

    def _roll(self) -> None:
        old = self.segments[-1]
        new = Segment(old.number + 1, self._path(old.number + 1), last_tag=self.last_tag)
        fd = fileio.open(new.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        # The new name is made durable before anything goes into the file:
        # else a power loss could lose it yet keep a later segment's, and
        # recovery (the consecutive run ending at the newest) would drop the
        # older, flushed segments before the hole (found by
        # tests/test_powercut_primary.py).  One folder fsync per segment.
        try:
            fileio.fsync_dir(self.folder)
        except BaseException:
            fileio.close(fd)
            raise
        old.fd, self._fd = self._fd, fd
        self.segments.append(new)

    # -- truncation ------------------------------------------------------------------

    def release(self, acked: int) -> int:
        """The relay ACKed every journal up to PSEQ ``acked``: unlink the segments that
        hold nothing after it (never the active one).  Returns how many went."""
        dead = 0
        for seg in self.segments[:-1]:
            if seg.last_tag and tag_after(seg.last_tag, acked):
                break
            dead += 1
        if not dead:
            return 0
        # Saved first: the records left no longer say that the relay ACKed the
        # ones released, and a restart with an older mark would take the
        # relay's word for where the stream is -- a relay put back to an old
        # copy would then lose the released journals without a trace (found
        # by tests/e2e/test_relay_loss.py, primary restarted after a release).
        # It also keeps the last PSEQ when no tagged record is left.
        if tag_after(acked, self.saved_acked) or not self.saved_acked:
            self.save_state(acked)
        # No folder fsync: an unlink lost in a crash is harmless, the segment
        # comes back older than the active one, whose name is durable since
        # its roll, and is redone before the newer ones (or dropped before a
        # gap).  But it must come back whole: a torn record in it would end
        # the log there, newer flushed segments would be dropped and older
        # records redone over newer PVOL data (found by
        # tests/test_powercut_primary.py).  So a segment not fsynced yet keeps
        # its descriptor for the next flush; but an open unlinked file keeps
        # its disk space, so past a few (a host that does not FLUSH) the
        # oldest is fsynced here and let go.
        for seg in self.segments[:dead]:
            if seg.fd >= 0:
                self._released_fds.append(seg.fd)
                seg.fd = -1
            fileio.unlink(seg.path)
        del self.segments[:dead]
        while len(self._released_fds) > _RELEASED_HELD:
            fd = self._released_fds.pop(0)
            try:
                fileio.fsync(fd)
            finally:
                fileio.close(fd)
        return dead

    def save_state(self, acked: int) -> None:
        """Persist ``last_tag`` and the ACK high-water mark (atomic, folder fsynced)."""
        atomic_write_json(self._pseq_path, {"last_tag": self.last_tag, "acked": acked})
        self.saved_tag, self.saved_acked = self.last_tag, acked

    def _close_all(self) -> None:
        for fd in [s.fd for s in self.segments] + [self._fd] + self._released_fds:
            if fd >= 0:
                fileio.close(fd)
        for s in self.segments:
            s.fd = -1
        self._fd, self._released_fds = -1, []

    def reset(self, last_tag: int, acked: int) -> None:
        """Drop every record (after a suspension, or before a write that bypasses the log).

        The PSEQ state is saved first; the new segment's number leaves a gap
        so that a segment whose unlink a crash undid is never redone.  The new
        segment is made, and its name synced, before the old ones go: a crash
        that lost it but kept some unlinks could leave an old segment as the
        newest, redone over newer PVOL data (see :meth:`release`).
        """
        self.last_tag = last_tag
        self.save_state(acked)
        number = self.segments[-1].number + 2 if self.segments else 1
        self._close_all()
        new = Segment(number, self._path(number), last_tag=last_tag)
        self._fd = fileio.open(new.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        fileio.fsync_dir(self.folder)
        self._dir_dirty = False
        for seg in self.segments:
            try:
                fileio.unlink(seg.path)
            except FileNotFoundError:
                pass
        self.segments = [new]
        self.broken = None

    # -- durability ------------------------------------------------------------------

    def flush(self) -> None:
        """fsync every segment written (or released unsynced) since the last flush, and the
        folder if recover() started a new log."""
        self.sync(self.flush_begin())

    def flush_begin(self) -> list[int]:
        """What :meth:`flush` must fsync, as descriptors the caller owns.

        Taken on the event loop; :meth:`sync` may then run in a worker thread
        while appends, rolls and releases go on (they close their own
        descriptors, never these).  The active segment is opened a second
        time (not ``dup``ed: the file layer has no ``dup``) under the same
        name it has now, so it is the same file; an fsync covers every write
        to the file, whichever descriptor made it.
        """
        fds, self._released_fds = self._released_fds, []
        for seg in self.segments[:-1]:
            if seg.fd >= 0:
                fds.append(seg.fd)     # handed over: sync() closes it
                seg.fd = -1
        fds.append(fileio.open(self.segments[-1].path, os.O_RDONLY | os.O_CLOEXEC))
        if self._dir_dirty:
            fds.append(fileio.open(self.folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
            self._dir_dirty = False
        return fds

    @staticmethod
    def sync(fds: list[int]) -> None:
        """fsync and close the descriptors :meth:`flush_begin` returned."""
        try:
            for fd in fds:
                fileio.fsync(fd)
        finally:
            for fd in fds:
                fileio.close(fd)

    def segment_files(self) -> list[Path]:
        return [s.path for s in self.segments]

    def close(self) -> None:
        self._close_all()
