"""The relay's journal volume (JNL volume) on disk: a ring file, patent Fig. 2.

Control data and journal data are stacked in one ring, one journal = one
contiguous record (``docs/protocol.md``, "Records"), and the space is
allocated by exactly the rules of the journal engine ("Allocation",
"RELEASE", the WRAP marker, rewind-when-empty), so that the relay writes each
journal at the JOFS the engine returned.  ``docs/store.md`` is the design
note: file layout, superblocks, recovery and the scrub.

File layout::

    0      HEADER_SIZE (4 KiB)  two superblock slots, at 0 and SB_SLOT
    4096   SIZE bytes           the ring; JOFS is an offset in here

The core is synchronous and uses ``pwrite``/``pread`` on one file
descriptor, through ``disk.fileio`` so that tests can cut its power
(docs/reliability.md).  :meth:`JournalStore.sync` may run in another thread
while the owning thread appends (that is how ``store_commit.GroupCommitter`` shares one
fsync among many appends); every other method belongs to one thread.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import struct
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..disk import fileio
from ..wire.protocol import (ALIGN, CONTROL_SIZE, MAX_DATA, WIRE_KINDS, Control, Kind,
                       crc32c, record_size)

__all__ = [
    "JournalStore", "RecoveryReport", "HEADER_SIZE", "SB_SLOT", "MARKER",
    "StoreError", "StoreFull", "StoreOversize", "PlacementError", "BadJournal",
    "StaleEpoch", "NotFound", "NotEmpty", "CorruptStore", "StoreLocked",
    "StoreBroken", "StoreClosed",
]

HEADER_SIZE = 4096            # superblock region in front of the ring
SB_SLOT = 2048                # second superblock slot: a different sector than the first
SB_MAGIC = b"TCPYJNL\0"
# 2 adds the clean-shutdown mark after SCRC; 1 (no mark) is still read and
# opens with a recovery scan.  Code that reads only 1 refuses a 2 (its SCRC
# passes, its VERSION does not), rather than falling back to an older slot.
SB_VERSION = 2
SB_VERSIONS = (1, 2)
# MAGIC 8s | VERSION u32 | RING_OFFSET u32 | GEN u64 | SIZE u64 | JOPTR u64 |
# TAIL_SEQ u64 | WRAP_AT u64 | EPOCH u32 | SCRC u32 (CRC32C of bytes 0..59)
_SB = struct.Struct("<8sIIQQQQQI")
assert _SB.size == 60
# Version 2, at 64: the clean-shutdown mark (docs/store.md, "Clean shutdown")
# CLEAN u32 | reserved u32 | JIPTR u64 | NEXT_SEQ u64 | MCRC u32 (CRC32C of bytes 0..87)
_MARK = struct.Struct("<IIQQ")
_MARK_AT = _SB.size + 4
_MCRC_AT = _MARK_AT + _MARK.size
assert _MCRC_AT == 88
_U32 = struct.Struct("<I")

# The WRAP marker (docs/protocol.md, "Allocation"): KIND 0xFF, every other field 0.
MARKER = Control(kind=Kind.WRAP).pack()
_ZEROS = bytes(ALIGN)          # the padding after a record's data is shorter than this

_SCRUB_CHUNK = 4 << 20        # bytes of ring read at a time by the scrub
_U64_MAX = (1 << 64) - 1


# -- errors ------------------------------------------------------------------

class StoreError(Exception):
    """Base of every journal store error."""


class StoreFull(StoreError):
    """No room in the ring now (engine status FULL); retry after a release."""


class StoreOversize(StoreError):
    """The journal can never fit (engine status OVERSIZE)."""


class PlacementError(StoreError):
    """The control data's SEQ# or JOFS differs from what this ring allocates:
    the engine and the store disagree, and the journal is not written."""


class BadJournal(StoreError):
    """Control data or journal data is not a valid stamped journal."""


class StaleEpoch(BadJournal):
    """The journal's EPOCH is not the store's epoch (fenced)."""


class NotFound(StoreError):
    """A sequence number outside the journals held."""


class NotEmpty(StoreError):
    """A sequence base can only be set on an empty store."""


class CorruptStore(StoreError):
    """The file is not a usable journal store, or a held record fails its CRCs."""


class StoreLocked(StoreError):
    """Another process has the store open (one writer)."""


class StoreBroken(StoreError):
    """A write or fsync failed; the store refuses further work until reopened,
    because after a failed fsync the page cache no longer says what is on disk."""


class StoreClosed(StoreError):
    """The store was closed."""


# -- superblock --------------------------------------------------------------

@dataclass(frozen=True)
class _Superblock:
    gen: int
    size: int
    joptr: int
    tail_seq: int
    wrap_at: int
    epoch: int
    # The clean-shutdown mark: written only by close(), after everything it
    # counts is durable; JIPTR and NEXT_SEQ are what the recovery scan finds.
    clean: bool = False
    jiptr: int = 0
    next_seq: int = 0

    def pack(self) -> bytes:
        raw = _SB.pack(SB_MAGIC, SB_VERSION, HEADER_SIZE, self.gen, self.size,
                       self.joptr, self.tail_seq, self.wrap_at, self.epoch)
        raw += _U32.pack(crc32c(raw))
        raw += _MARK.pack(int(self.clean), 0, self.jiptr, self.next_seq)
        return raw + _U32.pack(crc32c(raw))

    @classmethod
    def unpack(cls, raw: bytes) -> "_Superblock | None":
        """The superblock in ``raw``, or None when the slot is torn or empty."""
        if len(raw) < _SB.size + 4 or _U32.unpack_from(raw, _SB.size)[0] != crc32c(raw[:_SB.size]):
            return None
        magic, version, ring_offset, gen, size, joptr, tail, wrap_at, epoch = _SB.unpack_from(raw)
        if magic != SB_MAGIC:
            return None
        if version not in SB_VERSIONS or ring_offset != HEADER_SIZE:
            raise CorruptStore(f"superblock version {version}, ring offset {ring_offset}: "
                               f"this code reads versions {SB_VERSIONS} at {HEADER_SIZE}")
        sb = cls(gen, size, joptr, tail, wrap_at, epoch)
        sb.check()
        # A mark that fails its own CRC is no mark: the open scans (any doubt -> scan).
        if (version >= 2 and len(raw) >= _MCRC_AT + 4
                and _U32.unpack_from(raw, _MCRC_AT)[0] == crc32c(raw[:_MCRC_AT])):
            clean, _, jiptr, next_seq = _MARK.unpack_from(raw, _MARK_AT)
            if clean == 1:
                sb = dataclasses.replace(sb, clean=True, jiptr=jiptr, next_seq=next_seq)
        return sb

    def check(self) -> None:
        s = self.size
        if s < 2 * ALIGN or s % ALIGN:
            raise CorruptStore(f"ring SIZE {s} is not a multiple of {ALIGN} of at least {2 * ALIGN}")
        if self.joptr >= s or self.joptr % ALIGN:
            raise CorruptStore(f"JOPTR {self.joptr} is not an aligned offset in a ring of {s}")
        if self.wrap_at > s or self.wrap_at % ALIGN or (self.wrap_at < s and self.wrap_at <= self.joptr):
            raise CorruptStore(f"WRAP_AT {self.wrap_at} is impossible with JOPTR {self.joptr}, SIZE {s}")
        if self.tail_seq < 1:
            raise CorruptStore("TAIL_SEQ is 0; sequence numbers start at 1")


# -- recovery report ---------------------------------------------------------

@dataclass(frozen=True)
class RecoveryReport:
    """What :meth:`JournalStore.open` found.

    ``end_reason`` says why the forward scan stopped at ``end_seq`` (the
    first sequence number *not* recovered) and ``end_pos``: an unwritten or
    torn record is the normal end after a crash; a CRC failure there after a
    clean run means a record that was durable is damaged.  ``scrubbed``
    counts stale record headers zeroed in the free space.

    ``clean``: the store was closed cleanly and its clean-shutdown mark was
    trusted: no scan, no scrub (``scrubbed`` 0, ``scanned`` 0).
    ``mark_rejected`` says why a mark that was there was not trusted (the
    open then scanned as after a crash).

    ``quarantined`` is the (first, last) SEQ# of the whole records found
    *after* the end (SEQ# >= ``end_seq``), copied to ``quarantine_path``
    before the scrub zeroed them: either a window written but never made
    durable (a crash; never ACKed), or journals behind a record the disk
    damaged (ACKed and now lost: the primary's HELLO check tells which).
    """
    superblock_gen: int
    tail_seq: int
    end_seq: int
    end_pos: int
    end_reason: str
    scrubbed: int
    quarantined: tuple[int, int] | None = None
    quarantine_path: str | None = None
    clean: bool = False
    mark_rejected: str | None = None
    scanned: int = 0          # records whose data the scan read and checked

    @property
    def recovered(self) -> int:
        return self.end_seq - self.tail_seq


@dataclass(frozen=True)
class _Plan:
    """The outcome of one allocation, not yet applied."""
    jofs: int
    marker: int | None      # offset of the WRAP marker to write, if any
    jiptr: int
    joptr: int
    used: int
    wrap_at: int


# -- the store ---------------------------------------------------------------

class JournalStore:
    """A journal volume: a ring of stamped journals on one file (patent Fig. 2).

    Create one with :meth:`create`, reopen with :meth:`open`.  Journals come
    in stamped by the engine (SEQ#, TIME, JOFS, CCRC) and are verified
    against this ring's own allocation before anything is written.
    """

    def __init__(self, fd: int, path: str, sb: _Superblock):
        # Use create() or open(); this only sets the fields from a superblock.
        self._fd = fd
        self._path = path
        self._sb = sb               # the newest superblock known to be durable
        # Written by persist_soon() and not yet covered by an fdatasync: it
        # counts (becomes _sb) only once one has run (``sync``).
        self._sb_pending: _Superblock | None = None
        self._size = sb.size
        self._epoch = sb.epoch
        self._joptr = sb.joptr
        self._jiptr = sb.joptr
        self._used = 0
        self._wrap_at = self._size
        self._tail_seq = sb.tail_seq
        self._next_seq = sb.tail_seq
        # Held records as (offset, record bytes); seq = tail_seq + i - _head.
        self._index: list[tuple[int, int]] = []
        self._head = 0
        self._durable = sb.tail_seq - 1
        self._durable_lock = threading.Lock()
        self._sync_fds: list[int] = []      # open_sync_fd(): closed with the store
        self._broken: BaseException | None = None
        self._damaged = False       # read() met a damaged record: close() leaves no mark
        self._closed = False
        self.recovery: RecoveryReport | None = None
        #: Called with the control data of the newest journal released, just
        #: before a superblock that holds no journal replaces one that held
        #: some (the relay saves that journal's TAG: docs/replication.md).
        self.on_persist_empty: Callable[[Control], None] | None = None
        self._last_released: Control | None = None

    # -- opening -------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike, size: int, *, epoch: int = 0,
               preallocate: bool = False) -> "JournalStore":
        """Create a new, empty store of a ``size``-byte ring; the file must not exist.

        ``preallocate`` writes the whole ring with zeros once (then syncs),
        so that no append of the first lap allocates blocks: an fdatasync
        after a write into a hole must also commit the filesystem's
        metadata, which on ext4 made it ≈ 1.5x slower (docs/store.md,
        "Preallocation").  ``fallocate`` alone is not enough: it leaves
        unwritten extents that the first write must convert, which costs
        the same metadata commit.  Zeros read as torn records, exactly as
        holes do, so recovery is unchanged.
        """
        if not isinstance(size, int) or size < 2 * ALIGN or size % ALIGN:
            raise ValueError(f"ring size must be a multiple of {ALIGN}, at least {2 * ALIGN}, "
                             f"not {size!r}")
        _check_epoch(epoch)
        path = os.fspath(path)
        # Built under a temporary name and linked into place complete, so a
        # crash during create never leaves a file without a superblock.
        tmp = f"{path}.{os.getpid()}.new"
        fd = fileio.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _lock(fd, path)
            # The ring's contents before the first lap do not matter (zeros or
            # holes: no valid CCRC), only whether writing them allocates.
            fileio.ftruncate(fd, HEADER_SIZE + size)
            if preallocate:
                _write_zeros(fd, HEADER_SIZE, size)
            sb = _Superblock(gen=1, size=size, joptr=0, tail_seq=1, wrap_at=size, epoch=epoch)
            fileio.pwrite(fd, sb.pack(), SB_SLOT)
            fileio.fsync(fd)
            fileio.link(tmp, path)          # FileExistsError if path exists: never overwrite
            _fsync_dir(path)
        except BaseException:
            fileio.close(fd)
            raise
        finally:
            fileio.unlink(tmp)
        store = cls(fd, path, sb)
        store.recovery = RecoveryReport(1, 1, 1, 0, "new store", 0)
        return store

    @classmethod
    def open(cls, path: str | os.PathLike, *, force_scan: bool = False) -> "JournalStore":
        """Open an existing store and recover its journals (see docs/store.md).

        After a clean :meth:`close` the clean-shutdown mark gives the state
        and no recovery scan runs; ``force_scan`` ignores the mark (tests,
        checks).  Either way a mark is cleared durably before this returns.
        """
        path = os.fspath(path)
        fd = fileio.open(path, os.O_RDWR)
        try:
            _lock(fd, path)
            header = fileio.pread(fd, HEADER_SIZE, 0)
            slots = [_Superblock.unpack(header[0:SB_SLOT]), _Superblock.unpack(header[SB_SLOT:])]
            valid = [sb for sb in slots if sb is not None]
            if not valid:
                raise CorruptStore(f"{path}: no valid superblock")
            sb = max(valid, key=lambda s: s.gen)
            if fileio.fstat(fd).st_size < HEADER_SIZE + sb.size:
                raise CorruptStore(f"{path}: file is {fileio.fstat(fd).st_size} bytes, "
                                   f"shorter than the {HEADER_SIZE + sb.size} its superblock says")
            store = cls(fd, path, sb)
            rejected = "ignored: force_scan" if sb.clean and force_scan else None
            if sb.clean and not force_scan:
                rejected = store._open_clean()
            if not sb.clean or rejected is not None:
                store._recover(mark_rejected=rejected)
            if sb.clean:
                store._clear_mark()
        except BaseException:
            fileio.close(fd)
            raise
        return store

    def _open_clean(self) -> str | None:
        """Take the state from the clean-shutdown mark instead of scanning;
        None when done, else why the mark is not trusted (nothing changed).

        The held records are indexed from their control data alone (CCRC,
        SEQ#, JOFS, size: one 64-byte read each, no journal data, no scrub).
        Their data was fsynced before the mark was written, and ``read``
        checks DATA_CRC as always.  The walk must end exactly where the mark
        says, so a mark that does not match the ring is never trusted.
        Skipping the scrub is safe: the last open scrubbed the free space,
        and since then only journals below NEXT_SEQ were written there.
        """
        sb, size = self._sb, self._size
        if sb.jiptr >= size or sb.jiptr % ALIGN or sb.next_seq < sb.tail_seq:
            return (f"clean mark JIPTR {sb.jiptr} NEXT_SEQ {sb.next_seq} does not fit "
                    f"JOPTR {sb.joptr} TAIL_SEQ {sb.tail_seq} SIZE {size}")
        index: list[tuple[int, int]] = []
        pos, used, wrapped = sb.joptr, 0, False
        for seq in range(sb.tail_seq, sb.next_seq):
            if pos == size:                 # exact fit at the end
                pos, wrapped = 0, True
            elif pos == sb.wrap_at and not wrapped:
                if fileio.pread(self._fd, CONTROL_SIZE, HEADER_SIZE + pos) != MARKER:
                    return f"clean mark: no WRAP marker at WRAP_AT {pos}"
                used += size - pos
                pos, wrapped = 0, True
            r = self._check_record(pos, seq, sb.joptr if wrapped else size, verify_data=False)
            if isinstance(r, str):
                return f"clean mark: {r}"
            index.append((pos, r))
            pos += r
            used += r
        if pos % size != sb.jiptr or used > size or (sb.wrap_at < size and not wrapped):
            return (f"clean mark: the records end at {pos % size} (WRAP_AT {sb.wrap_at}), "
                    f"the mark says JIPTR {sb.jiptr}")
        self._index, self._head = index, 0
        self._jiptr, self._used, self._next_seq = sb.jiptr, used, sb.next_seq
        self._wrap_at = sb.wrap_at
        self._durable = sb.next_seq - 1
        self.recovery = RecoveryReport(sb.gen, sb.tail_seq, sb.next_seq, sb.jiptr,
                                       "clean shutdown mark: no recovery scan", 0, clean=True)
        return None

    def _write_mark(self) -> None:
        """The clean-shutdown mark, for close().  The journals first, then
        the mark that counts them: written together, the mark could reach
        the disk without some of them, and be trusted over torn records."""
        try:
            fileio.fdatasync(self._fd)
        except OSError as exc:
            raise self._fail(exc) from exc
        self._write_superblock(clean=True, jiptr=self._jiptr, next_seq=self._next_seq)

    def _clear_mark(self) -> None:
        """Replace the mark by a plain superblock (GEN+1, fdatasync), at open.

        The mark describes the ring as close() left it; the first new append
        makes it stale, and a crash after that must scan.  So it goes before
        any append can be made, let alone acked.  Also when it was not
        trusted: journals appended later could make it look right.
        """
        self._write_superblock()

    def _recover(self, mark_rejected: str | None = None) -> None:
        """Scan forward from JOPTR; the first invalid record is the end.

        JIPTR is never persisted: it is wherever the chain of valid records
        (CCRC, DATA_CRC, SEQ# = TAIL_SEQ, TAIL_SEQ+1, ..., JOFS = position,
        allocation rules) stops.  Then everything in the free space that
        looks like a record is zeroed (see :meth:`_scrub`), and the file is
        fsynced so that every recovered journal is durable.
        """
        size, joptr = self._size, self._joptr
        pos, seq, used, wrap_at, wrapped = joptr, self._tail_seq, 0, size, False
        reason = "ring full"
        while used < size:
            if pos == size:             # an exact fit at the end: the next record is at 0
                pos, wrapped = 0, True
            limit = joptr if wrapped else size
            raw = fileio.pread(self._fd, CONTROL_SIZE, HEADER_SIZE + pos)
            if not wrapped and raw == MARKER:
                r_or_reason = self._check_record(0, seq, joptr)
                if isinstance(r_or_reason, str):
                    reason = f"WRAP marker at {pos} but no seq {seq} at 0: {r_or_reason}"
                    break
                if r_or_reason <= size - pos:   # the engine wraps only what does not fit
                    reason = f"WRAP marker at {pos} although seq {seq} fits before the end"
                    break
                used += size - pos
                wrap_at, pos, wrapped = pos, 0, True
                r = r_or_reason
            else:
                r_or_reason = self._check_record(pos, seq, limit, raw)
                if isinstance(r_or_reason, str):
                    reason = r_or_reason
                    break
                r = r_or_reason
            self._index.append((pos, r))
            pos += r
            used += r
            seq += 1
        self._jiptr = pos % size
        self._used = used
        self._wrap_at = wrap_at
        self._next_seq = seq
        found: list[tuple[Control, bytes]] = []
        scrubbed = self._scrub(keep_from=seq, kept=found)
        quarantined = qpath = None
        if found:
            qpath = self._quarantine(found)
            quarantined = (min(c.seq for c, _ in found), max(c.seq for c, _ in found))
        fileio.fdatasync(self._fd)
        self._durable = seq - 1
        self.recovery = RecoveryReport(self._sb.gen, self._tail_seq, seq, pos % size,
                                       reason, scrubbed, quarantined, qpath,
                                       mark_rejected=mark_rejected, scanned=seq - self._tail_seq)

    def _check_record(self, pos: int, seq: int, limit: int, raw: bytes | None = None, *,
                      verify_data: bool = True) -> int | str:
        """Record size of a valid record with ``seq`` at ``pos`` ending by
        ``limit``, or why it is not one (its data unchecked without ``verify_data``)."""
        if raw is None:
            raw = fileio.pread(self._fd, CONTROL_SIZE, HEADER_SIZE + pos)
        if len(raw) < CONTROL_SIZE:
            return f"short read at {pos}"
        if raw == bytes(CONTROL_SIZE):
            return f"nothing written at {pos}"
        ctl = Control.unpack(raw)
        if not ctl.ccrc_ok():
            return f"CCRC mismatch at {pos} (torn, stale or unwritten record)"
        if ctl.seq != seq:
            return f"seq {ctl.seq} at {pos}, expected {seq}"
        if ctl.jofs != pos:
            return f"seq {seq} at {pos} says JOFS {ctl.jofs}"
        if ctl.kind not in WIRE_KINDS or ctl.data_len > MAX_DATA:
            return f"seq {seq} at {pos}: kind {ctl.kind}, DATA_LEN {ctl.data_len}"
        r = record_size(ctl.data_len)
        if pos + r > limit:
            return f"seq {seq} at {pos}: record of {r} bytes overruns {limit}"
        if not verify_data:
            return r
        data = fileio.pread(self._fd, ctl.data_len, HEADER_SIZE + pos + CONTROL_SIZE)
        if len(data) != ctl.data_len or crc32c(data) != ctl.data_crc:
            return f"DATA_CRC mismatch in seq {seq} at {pos} (torn record)"
        return r

    def _quarantine(self, records: list[tuple[Control, bytes]]) -> str:
        """Append whole records to ``<path>.quarantine`` (control data then
        data, as in the ring) and make them durable; returns the path."""
        qpath = f"{self._path}.quarantine"
        fd = fileio.open(qpath, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            for ctl, data in sorted(records, key=lambda r: r[0].seq):
                buf = ctl.pack() + data
                if fileio.write(fd, buf) != len(buf):
                    raise OSError(f"short write to {qpath}")
            fileio.fsync(fd)
        finally:
            fileio.close(fd)
        _fsync_dir(qpath)
        return qpath

    def _scrub(self, keep_from: int | None = None,
               kept: list[tuple[Control, bytes]] | None = None) -> int:
        """Zero every record-looking control data outside the held records.

        Why: after a crash the tail past the recovered end may hold valid
        records of the lost window (written, never fsynced, with a hole
        before them).  Once the relay reuses their sequence numbers, a new
        journal of the same size would chain straight into them at the next
        recovery and resurrect them.  A record is only accepted where its
        JOFS equals its position, so zeroing every 64-byte unit whose JOFS
        equals its own offset and whose KIND is a journal kind removes every
        candidate; the ring is free space there, so zeroing is harmless.
        """
        size = self._size
        held = np.zeros(size // ALIGN, dtype=bool)
        for pos, r in self._index[self._head:]:
            held[pos // ALIGN:(pos + r) // ALIGN] = True
        if self._wrap_at < size:
            held[self._wrap_at // ALIGN] = True
        zero = bytes(CONTROL_SIZE)
        count = 0
        for start in range(0, size, _SCRUB_CHUNK):
            chunk = fileio.pread(self._fd, min(_SCRUB_CHUNK, size - start), HEADER_SIZE + start)
            words = np.frombuffer(chunk, dtype="<u8").reshape(-1, CONTROL_SIZE // 8)
            offsets = np.arange(start, start + len(chunk), CONTROL_SIZE, dtype=np.uint64)
            kind = (words[:, 6] >> np.uint64(16)) & np.uint64(0xFF)   # KIND at byte 50
            looks = (words[:, 3] == offsets) & (kind >= 1) & (kind <= 5)
            looks &= ~held[start // ALIGN:start // ALIGN + len(words)]
            for unit in np.flatnonzero(looks):
                at = start + int(unit) * CONTROL_SIZE
                if kept is not None:
                    u = int(unit) * CONTROL_SIZE
                    record = self._whole_record(at, chunk[u:u + CONTROL_SIZE])
                    if record is not None and record[0].seq >= keep_from:
                        kept.append(record)
                fileio.pwrite(self._fd, zero, HEADER_SIZE + at)
                count += 1
        return count

    def _whole_record(self, pos: int, raw: bytes) -> tuple[Control, bytes] | None:
        """The record at ``pos`` if its control data and data are intact, else None."""
        ctl = Control.unpack(raw)
        if not ctl.ccrc_ok() or ctl.data_len > MAX_DATA or pos + record_size(ctl.data_len) > self._size:
            return None
        data = fileio.pread(self._fd, ctl.data_len, HEADER_SIZE + pos + CONTROL_SIZE)
        if len(data) != ctl.data_len or (crc32c(data) if data else 0) != ctl.data_crc:
            return None
        return ctl, data

    # -- state ---------------------------------------------------------------

    path = property(lambda self: self._path)
    size = property(lambda self: self._size, doc="ring size in bytes (SIZE)")
    jiptr = property(lambda self: self._jiptr, doc="where the next journal goes (JIPTR)")
    joptr = property(lambda self: self._joptr, doc="the oldest journal held (JOPTR)")
    used = property(lambda self: self._used, doc="bytes held, counting a skipped tail")
    free = property(lambda self: self._size - self._used)
    wrap_at = property(lambda self: self._wrap_at, doc="WRAP marker offset, or SIZE")
    next_seq = property(lambda self: self._next_seq, doc="SEQ# the next journal must carry")
    tail_seq = property(lambda self: self._tail_seq, doc="SEQ# at JOPTR (next_seq when empty)")
    durable_seq = property(lambda self: self._durable, doc="highest SEQ# known to be on disk")
    epoch = property(lambda self: self._epoch)
    held = property(lambda self: self._next_seq - self._tail_seq, doc="journals held")
    closed = property(lambda self: self._closed)

    def _usable(self) -> None:
        if self._closed:
            raise StoreClosed(f"{self._path} is closed")
        if self._broken is not None:
            raise StoreBroken(f"{self._path}: an earlier write or fsync failed "
                              f"({self._broken}); reopen to recover") from self._broken

    def _fail(self, exc: OSError) -> StoreBroken:
        self._broken = exc
        return StoreBroken(f"{self._path}: {exc}")

    # -- allocation (docs/protocol.md, "Allocation") -------------------------

    def _plan(self, r: int, state: tuple[int, int, int, int] | None = None) -> _Plan:
        """Allocate ``r`` bytes from the ring's state (or from ``state``:
        JIPTR, JOPTR, USED, WRAP_AT after journals planned and not written)."""
        size = self._size
        jiptr, joptr, used, wrap_at = state or (self._jiptr, self._joptr, self._used,
                                                self._wrap_at)
        if r > size:
            raise StoreOversize(f"a record of {r} bytes never fits a ring of {size}")
        if used == 0 and r > size - jiptr:
            # Empty and the tail is too short: rewind (the engine's rule).
            jiptr = joptr = 0
            wrap_at = size
        if r > size - used:
            raise StoreFull(f"record of {r} bytes, {size - used} free")
        marker = None
        if jiptr >= joptr:
            if r <= size - jiptr:
                jofs = jiptr
            elif r <= joptr:
                marker, wrap_at, jofs = jiptr, jiptr, 0
                used += size - jiptr
            else:
                raise StoreFull(f"record of {r} bytes fits neither the {size - jiptr} bytes "
                                f"before the end nor the {joptr} at the start")
        elif r <= joptr - jiptr:
            jofs = jiptr
        else:
            raise StoreFull(f"record of {r} bytes, {joptr - jiptr} free before JOPTR")
        return _Plan(jofs, marker, (jofs + r) % size, joptr, used + r, wrap_at)

    def placement(self, data_len: int) -> int:
        """The JOFS the engine assigns to the next journal of ``data_len``
        bytes; raises :class:`StoreFull` or :class:`StoreOversize` like it."""
        if data_len > MAX_DATA:
            raise StoreOversize(f"DATA_LEN {data_len} exceeds {MAX_DATA}")
        return self._plan(record_size(data_len)).jofs

    def placements(self, data_lens) -> list[int]:
        """The JOFS the engine assigns to the next journals, one after the
        other, of these DATA_LENs (a batch for :meth:`append_batch`)."""
        out = []
        state = None
        for data_len in data_lens:
            if data_len > MAX_DATA:
                raise StoreOversize(f"DATA_LEN {data_len} exceeds {MAX_DATA}")
            plan = self._plan(record_size(data_len), state)
            out.append(plan.jofs)
            state = (plan.jiptr, plan.joptr, plan.used, plan.wrap_at)
        return out

    # -- journals ------------------------------------------------------------

    def append(self, control: Control, data: bytes = b"") -> int:
        """Write one stamped journal at its JOFS; returns its SEQ#.

        Not durable until :meth:`sync`.  Nothing is written when a check
        fails: :class:`BadJournal`/:class:`StaleEpoch` for a journal that
        is not valid stamped control data + data, :class:`PlacementError`
        when SEQ# or JOFS is not what this ring allocates, then
        :class:`StoreOversize`/:class:`StoreFull`.
        """
        return self.append_batch(((control, data),))

    def append_batch(self, journals, *, data_checked: bool = False) -> int:
        """Write stamped journals, in order, each at its JOFS; returns the last SEQ#.

        The same checks and the same bytes as :meth:`append` of each in turn,
        but each run of adjacent records goes to the file in one ``pwritev``
        (a batch from the relay's ingest is one run unless it wraps).  A check
        failing on a journal raises as :meth:`append` does, after the journals
        before it have been written: nothing of it or after it is.

        ``data_checked``: the caller has compared each journal's data with
        its DATA_CRC already, on these very bytes (the relay's ingest must,
        to refuse a bad journal with BAD_DCRC before the engine allocates it),
        so the store skips that one pass over the data; every other check
        stays.  A second CRC over the same unchanged (immutable) buffer can
        find nothing the first did not.
        """
        self._usable()
        run: list = []             # buffers of the records planned and not yet written
        run_pos = run_end = 0
        run_seqs = 0
        last = self._next_seq - 1
        try:
            for control, data in journals:
                seq = self._next_seq + run_seqs
                raw = control.pack()          # once: checked here, written below
                self._check(control, raw, data, seq, data_checked)
                r = record_size(len(data))
                plan = self._plan(r)
                if control.jofs != plan.jofs:
                    raise PlacementError(f"seq {control.seq}: JOFS {control.jofs} but the ring "
                                         f"allocates {plan.jofs}")
                rewind = plan.joptr != self._joptr
                persist = not rewind and self.release_pending and (
                    self._overlaps_unpersisted(plan.jofs, r)
                    or (plan.marker is not None
                        and self._overlaps_unpersisted(plan.marker, CONTROL_SIZE)))
                if run and (rewind or persist or plan.marker is not None or plan.jofs != run_end
                            or len(run) + 3 > _IOV_MAX):
                    # A superblock write counts every journal before it durable
                    # once synced, so the run goes out first; a WRAP marker or a
                    # jump starts a new run anyway.
                    self._write_run(run, run_pos, run_seqs)
                    run, run_seqs = [], 0
                if rewind:
                    # An empty ring rewinds.  Recovery scans from the persisted
                    # JOPTR, so it must say 0 before a record lives there; rare,
                    # so the extra fdatasync does not matter.
                    self._write_superblock(joptr=plan.joptr, wrap_at=plan.wrap_at)
                elif persist:
                    # A lazy release (release(persist=False)) freed this space,
                    # but the superblock on disk still holds the journals there:
                    # recovery would scan from the old JOPTR into this record and
                    # lose every journal.  Persist the release first (docs/store.md,
                    # "Lazy release").
                    self._write_superblock()
                if plan.marker is not None:
                    try:
                        fileio.pwrite(self._fd, MARKER, HEADER_SIZE + plan.marker)
                    except OSError as exc:
                        raise self._fail(exc) from exc
                if not run:
                    run_pos = plan.jofs
                run.append(raw)
                if data:
                    run.append(data)
                pad = r - CONTROL_SIZE - len(data)
                if pad:
                    run.append(_ZEROS[:pad])
                run_end = plan.jofs + r
                run_seqs += 1
                last = seq
                self._jiptr, self._joptr, self._used, self._wrap_at = (plan.jiptr, plan.joptr,
                                                                       plan.used, plan.wrap_at)
                self._index.append((plan.jofs, r))
        finally:
            if run and self._broken is None:
                self._write_run(run, run_pos, run_seqs)
        return last

    def _check(self, control: Control, raw: bytes, data, seq: int,
               data_checked: bool = False) -> None:
        """The checks of :meth:`append` on one journal (``raw``: its control
        data packed), which is to be SEQ# ``seq``; the DATA_CRC one unless
        ``data_checked`` (see :meth:`append_batch`)."""
        if control.data_len != len(data):
            raise BadJournal(f"DATA_LEN {control.data_len} but {len(data)} bytes of data")
        if control.kind not in WIRE_KINDS:
            raise BadJournal(f"KIND {control.kind} is not a journal kind")
        if control.ccrc != crc32c(raw[:60]):
            raise BadJournal(f"seq {control.seq}: CCRC {control.ccrc:#010x} does not match "
                             f"the control data (not stamped by the engine?)")
        if not data_checked and crc32c(data) != control.data_crc:
            raise BadJournal(f"seq {control.seq}: DATA_CRC {control.data_crc:#010x} does not "
                             f"match the data ({crc32c(data):#010x})")
        if control.epoch != self._epoch:
            raise StaleEpoch(f"seq {control.seq}: EPOCH {control.epoch}, store epoch {self._epoch}")
        if len(data) > MAX_DATA:
            raise StoreOversize(f"DATA_LEN {len(data)} exceeds {MAX_DATA}")
        if control.seq != seq:
            raise PlacementError(f"seq {control.seq} but the store expects {seq}")

    def _write_run(self, run: list, pos: int, count: int) -> None:
        """Write adjacent planned records with one pwritev; then they count as appended."""
        size = sum(len(b) for b in run)
        try:
            if fileio.pwritev(self._fd, run, HEADER_SIZE + pos) != size:
                raise OSError(f"short write of seq {self._next_seq}..{self._next_seq + count - 1}")
        except OSError as exc:
            raise self._fail(exc) from exc
        # Last: a concurrent sync() takes next_seq as its target, and these
        # records' bytes are in the page cache by now.
        self._next_seq += count

    def sync(self, target: int | None = None, fd: int | None = None) -> int:
        """fdatasync the file; returns the highest durable SEQ#.

        Safe to call from another thread while the owner appends: the target
        (``next_seq - 1`` unless given, and then read by the caller before
        this call) is fixed before the fsync, and every journal up to it was
        written before.  ``fd``: a descriptor from :meth:`open_sync_fd`, for
        a sync that runs at the same time as another.
        """
        self._usable()
        if target is None:
            target = self._next_seq - 1
        # A superblock persist_soon() wrote before this point is covered by
        # the fdatasync below (the owner sets _sb_pending after its pwrite).
        sb = self._sb_pending
        try:
            fileio.fdatasync(self._fd if fd is None else fd)
        except OSError as exc:
            raise self._fail(exc) from exc
        if sb is not None:
            with self._durable_lock:
                # Not if a synchronous superblock write replaced it meanwhile
                # (same slot, newer state, already durable: _sb is that one).
                if self._sb_pending is sb and sb.gen > self._sb.gen:
                    self._sb, self._sb_pending = sb, None
        return self._mark_durable(target)

    def open_sync_fd(self) -> int:
        """Another descriptor of the journal file (a new open file description),
        closed with the store, for a second sync in flight.

        Why not the same descriptor: the kernel reports a writeback error once
        per open file description (its error cursor), so two fdatasyncs at once
        on one description can split an error between them and one may return
        success for pages that were lost.  Each description sees every error
        that happens after it was opened: open it before the journals it is
        to cover are written (the group committer does so at its start).
        """
        self._usable()
        fd = fileio.open(self._path, os.O_RDWR)
        self._sync_fds.append(fd)
        return fd

    def _mark_durable(self, seq: int) -> int:
        with self._durable_lock:
            if seq > self._durable:
                self._durable = seq
            return self._durable

    def read(self, from_seq: int, count: int,
             max_bytes: int | None = None) -> list[tuple[Control, bytes]]:
        """Up to ``count`` journals from ``from_seq`` on, as JNLRD reads them:
        control data with its CCRC, and DATA_LEN bytes of data.  With
        ``max_bytes``, no more records than fit in that many bytes (but at
        least one): what one read may hold in memory.

        ``from_seq`` outside ``tail_seq..next_seq`` raises :class:`NotFound`;
        a record failing its CRCs raises :class:`CorruptStore`.
        """
        self._usable()
        if count < 0:
            raise ValueError(f"count must be >= 0, not {count}")
        if not self._tail_seq <= from_seq <= self._next_seq:
            raise NotFound(f"seq {from_seq} is outside {self._tail_seq}..{self._next_seq - 1}")
        n = min(count, self._next_seq - from_seq)
        first = self._head + from_seq - self._tail_seq
        if max_bytes is not None:
            total = 0
            for i, (_, r) in enumerate(self._index[first:first + n]):
                total += r
                if total > max_bytes and i:
                    n = i
                    break
        out = []
        seq = from_seq
        for run_pos, records in _contiguous_runs(self._index[first:first + n]):
            # One pread per run of adjacent records, not one per record: the
            # forwarder reads 64 journals at a time, mostly back to back.
            raw = fileio.pread(self._fd, sum(r for _, r in records), HEADER_SIZE + run_pos)
            view = memoryview(raw)
            for pos, r in records:
                rec = view[pos - run_pos:pos - run_pos + r]
                ctl = Control.unpack(rec) if len(rec) == r else None
                if ctl is None or not ctl.ccrc_ok() or ctl.seq != seq or ctl.jofs != pos:
                    self._damaged = True
                    raise CorruptStore(f"control data of seq {seq} at {pos} is damaged")
                data = bytes(rec[CONTROL_SIZE:CONTROL_SIZE + ctl.data_len])
                if record_size(ctl.data_len) != r or crc32c(data) != ctl.data_crc:
                    self._damaged = True
                    raise CorruptStore(f"journal data of seq {seq} at {pos} is damaged")
                out.append((ctl, data))
                seq += 1
        return out

    def release(self, upto: int, *, persist: bool = True) -> int:
        """Free the journals up to ``upto`` (RELEASE); returns JOPTR after.

        ``upto`` below TAIL_SEQ changes nothing (a replayed ACK is
        harmless); ``upto >= next_seq`` raises :class:`NotFound` and frees
        nothing.  With ``persist`` (the default) the new JOPTR/TAIL_SEQ are
        durable in the superblock before the space counts as free, so a crash
        can never leave the superblock pointing into space already
        overwritten.  With ``persist=False`` the release is only in memory
        until :meth:`persist` (or any other superblock write): a crash then
        brings the released journals back (they are re-sent and skipped by
        the secondary), and :meth:`append` persists the release first when a
        new record would overwrite space the superblock on disk still holds.
        """
        self._usable()
        if upto >= self._next_seq:
            raise NotFound(f"release up to {upto}: the last journal is {self._next_seq - 1}")
        if upto < self._tail_seq:
            return self._joptr
        size, joptr, used, wrap_at = self._size, self._joptr, self._used, self._wrap_at
        n = upto + 1 - self._tail_seq
        for pos, r in self._index[self._head:self._head + n]:
            joptr += r
            used -= r
            if joptr == wrap_at:
                used -= size - wrap_at
                joptr, wrap_at = 0, size
            elif joptr == size:
                joptr = 0
        # An empty ring keeps its place, as the engine's does: a restarted
        # relay loads this JOPTR into the engine (LOAD PTR).
        if used == 0:
            # Becoming empty: keep the newest journal's control data for the
            # on_persist_empty hook (its record may be overwritten later).
            last_pos = self._index[self._head + n - 1][0]
            self._last_released = Control.unpack(fileio.pread(self._fd, CONTROL_SIZE,
                                                          HEADER_SIZE + last_pos))
        if persist:
            wrap = size if used == 0 else wrap_at
            self._write_superblock(joptr=joptr, tail_seq=upto + 1, wrap_at=wrap)
        self._joptr, self._used, self._wrap_at = joptr, used, wrap_at
        self._tail_seq = upto + 1
        self._head += n
        if self._head > 1024 and self._head * 2 > len(self._index):
            del self._index[:self._head]
            self._head = 0
        return joptr

    @property
    def release_pending(self) -> bool:
        """A release is in memory only: the superblock on disk holds older journals."""
        return self._sb.tail_seq != self._tail_seq

    def persist(self) -> bool:
        """Make a lazy release durable (superblock + fdatasync); False if none was pending."""
        self._usable()
        if not self.release_pending:
            return False
        self._write_superblock()
        return True

    def persist_soon(self) -> bool:
        """Write a lazy release's superblock without waiting for the disk:
        the next :meth:`sync` (the group commit's fdatasync, which runs all
        the time under load) makes it durable, and only then does it count.

        Until then :meth:`append` still treats the released space as held
        (``_overlaps_unpersisted`` looks at the durable superblock), and a
        superblock written synchronously meanwhile takes its slot over (same
        generation, newer state).  One at a time: False, and nothing
        written, while one is pending or no release is.  Why: :meth:`persist`
        stopped the relay's event loop for an fdatasync ten times a second
        (7 % of its busy time at 4 KiB QD16, docs/benchmarks.md).
        """
        self._usable()
        if not self.release_pending or self._sb_pending is not None:
            return False
        sb = self._next_superblock()
        try:
            self._persist_empty_hook(sb)
            fileio.pwrite(self._fd, sb.pack(), (sb.gen % 2) * SB_SLOT)
        except OSError as exc:
            raise self._fail(exc) from exc
        self._sb_pending = sb          # after the pwrite: see sync()
        return True

    @property
    def superblock_pending(self) -> bool:
        """persist_soon() wrote a superblock that no fdatasync has covered yet."""
        return self._sb_pending is not None

    @property
    def persisted_tail_seq(self) -> int:
        """TAIL_SEQ of the newest durable superblock: the journals below it
        are released for good (a crash does not bring them back)."""
        return self._sb.tail_seq

    def _overlaps_unpersisted(self, start: int, length: int) -> bool:
        """Does ``[start, start+length)`` touch the ring space from the persisted
        JOPTR up to the current one (freed in memory, still held on disk)?"""
        p, j = self._sb.joptr, self._joptr
        end = start + length
        if p < j:
            return start < j and end > p
        if p > j:
            return end > p or start < j
        return True         # a whole lap was released: everything is still held on disk

    def set_epoch(self, epoch: int) -> None:
        """Make ``epoch`` the store's epoch (durably); later journals must carry it."""
        self._usable()
        _check_epoch(epoch)
        self._write_superblock(epoch=epoch)
        self._epoch = epoch

    def set_base(self, seq: int) -> None:
        """Set the sequence base of an empty store (after a failover): the
        next journal must carry SEQ# ``seq``.  Raises :class:`NotEmpty`."""
        self._usable()
        if not isinstance(seq, int) or not 1 <= seq <= _U64_MAX:
            raise ValueError(f"sequence base must be 1..2**64-1, not {seq!r}")
        if self._used:
            raise NotEmpty(f"store holds journals {self._tail_seq}..{self._next_seq - 1}")
        self._write_superblock(joptr=0, tail_seq=seq, wrap_at=self._size)
        self._jiptr = self._joptr = 0
        self._wrap_at = self._size
        self._tail_seq = self._next_seq = seq
        self._index, self._head = [], 0
        # Old records may carry the sequence numbers about to be reused.
        try:
            self._scrub()
            fileio.fdatasync(self._fd)
        except OSError as exc:
            raise self._fail(exc) from exc
        with self._durable_lock:
            self._durable = seq - 1

    def _next_superblock(self, **changes: int) -> _Superblock:
        """The next generation of the current state (with ``changes``),
        including a lazy release not yet persisted."""
        state = {"joptr": self._joptr, "tail_seq": self._tail_seq, "epoch": self._epoch,
                 "wrap_at": self._size if self._used == 0 else self._wrap_at,
                 "clean": False, "jiptr": 0, "next_seq": 0}     # only close() marks
        state.update(changes)
        return dataclasses.replace(self._sb, gen=self._sb.gen + 1, **state)

    def _persist_empty_hook(self, sb: _Superblock) -> None:
        if (self.on_persist_empty is not None and self._last_released is not None
                and sb.tail_seq == self._next_seq and self._sb.tail_seq < sb.tail_seq):
            self.on_persist_empty(self._last_released)

    def _write_superblock(self, **changes: int) -> None:
        """Write the next generation of the current state (with ``changes``)
        into the other slot and fdatasync.

        The current state includes a lazy release not yet persisted.  The
        fdatasync also makes every journal written so far durable.  A
        superblock of persist_soon() still pending is in the same slot (same
        generation) and is replaced by this one.
        """
        target = self._next_seq - 1
        sb = self._next_superblock(**changes)
        try:
            self._persist_empty_hook(sb)
            fileio.pwrite(self._fd, sb.pack(), (sb.gen % 2) * SB_SLOT)
            fileio.fdatasync(self._fd)
        except OSError as exc:
            raise self._fail(exc) from exc
        with self._durable_lock:
            self._sb, self._sb_pending = sb, None
        self._mark_durable(target)

    def close(self) -> None:
        """Make everything durable, leave the clean-shutdown mark, close; idempotent.

        The mark (the superblock with CLEAN, JIPTR, NEXT_SEQ) lets the next
        open skip the recovery scan; see :meth:`_write_mark` for its order.
        The same superblock persists a lazy release (a clean stop re-sends
        nothing).
        No mark after a failed write (nothing is written) or after ``read``
        met a damaged record (the next open must scan and quarantine).
        """
        if self._closed:
            return
        try:
            if self._broken is None and not self._damaged:
                self._write_mark()
            elif self._broken is None:
                if self.release_pending:
                    self._write_superblock()
                fileio.fdatasync(self._fd)
        finally:
            self._closed = True
            for fd in self._sync_fds:
                fileio.close(fd)
            fileio.close(self._fd)

    def __enter__(self) -> "JournalStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"JournalStore({self._path!r}, size={self._size}, jiptr={self._jiptr}, "
                f"joptr={self._joptr}, seq={self._tail_seq}..{self._next_seq - 1})")


_READ_RUN = 4 << 20          # at most this many bytes per pread in read()


def _contiguous_runs(index: list[tuple[int, int]]):
    """Group (offset, size) records into runs that lie back to back in the ring."""
    run: list[tuple[int, int]] = []
    run_bytes = 0
    for pos, r in index:
        if run and (pos != run[-1][0] + run[-1][1] or run_bytes + r > _READ_RUN):
            yield run[0][0], run
            run, run_bytes = [], 0
        run.append((pos, r))
        run_bytes += r
    if run:
        yield run[0][0], run


_ZERO_CHUNK = bytes(1 << 20)
# A batch of many journals without data (64-byte records, one buffer each)
# could pass fileio.IOV_MAX buffers, which would break the store: a run is
# cut before.
_IOV_MAX = fileio.IOV_MAX


def _write_zeros(fd: int, pos: int, length: int) -> None:
    """Write ``length`` zero bytes at ``pos``, 16 MiB per ``pwritev`` (the
    same 1 MiB buffer repeated: no 16 MiB allocation)."""
    end = pos + length
    while pos < end:
        n = min(end - pos, 16 * len(_ZERO_CHUNK))
        bufs = [_ZERO_CHUNK] * (n // len(_ZERO_CHUNK))
        if n % len(_ZERO_CHUNK):
            bufs.append(memoryview(_ZERO_CHUNK)[:n % len(_ZERO_CHUNK)])
        done = fileio.pwritev(fd, bufs, pos)
        if done <= 0:
            raise OSError(f"short write preallocating the ring at {pos}")
        pos += done


def _check_epoch(epoch: int) -> None:
    if not isinstance(epoch, int) or not 0 <= epoch < 1 << 32:
        raise ValueError(f"epoch must be a 32-bit unsigned integer, not {epoch!r}")


def _lock(fd: int, path: str) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise StoreLocked(f"{path} is open in another process") from None


def _fsync_dir(path: str) -> None:
    """Make a new file's directory entry durable too."""
    dfd = fileio.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        fileio.fsync(dfd)
    finally:
        fileio.close(dfd)
