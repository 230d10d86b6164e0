"""The primary site: PVOLs, the host write path, the synchronous link to the relay.

Patent Fig. 7/8: a host write is applied to the PVOL, journaled (control data +
journal data) to the relay, and completed only after the relay's ACK.

Order and pipelining: the step "stamp PSEQ, log, apply to the PVOL, queue the
JNLWR" runs without an ``await`` inside, so on the event loop it is atomic:
journal order == PVOL apply order, whatever number of writes are in flight.
The ACKs are then awaited concurrently (one ordered stream, many in flight).

Exactly-once across reconnects and restarts (docs/replication.md): every
journal carries the group's primary sequence number PSEQ in TAG.  Before a
journal is applied it is appended to the write log (host/primary/writelog.py,
segments ``<state_dir>/<grname>.plog.<n>``, cut as ACKs arrive); after a
reconnect the relay's HELLO says the last PSEQ it holds durably, and every
journal after it is sent again, in order.  On restart the log is replayed
onto the PVOL (redo) so a write that was logged but not yet applied is not
lost either.

Trust, both ways: a HELLO whose last PSEQ is below the highest PSEQ the relay
already ACKed means the relay lost journals it had promised to keep; the group
suspends naming the range and marks the copy bitmap for the resync.  A local
failure (write log, PVOL) fails the host request with a :class:`LocalIOError`
that names the device; it never burns a PSEQ nor blames the relay.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import logging
import os
import time
from collections import deque
from functools import partial

from ..wire import protocol
from ..config import GroupAttr, GroupConfig, SiteConfig, swap_problem
from ..rcm.control import ArgumentError, ControlError, ControlServer, Request
from ..wire import tls
from ..rcm.jnlg import COPY_CHUNK, CopyBitmap, JnlgTable
from ..wire.link import Link, LinkError, LinkRefused, connect
from ..wire.protocol import Control, Frame, FrameType, Kind, Role, Status
from ..wire.pseq import TAG_MOD, next_pseq, tag_after
from ..disk.volume import Volume, VolumeError
from ..disk.worker import BlockingWorker
from ..perf import PERF, now
from .activity import ActivityLog
from .stream import RelayLost, SendStream
from .regions import RegionLog, region_for
from .writelog import WriteLog, WriteLogBroken, WriteLogError

__all__ = ["GroupSuspended", "GroupFenced", "LocalIOError", "WriteLog", "MasterGroup", "Primary"]

log = logging.getLogger(__name__)

RECONNECT_DELAY = 0.2
ACKED_SAVE_EVERY = 1.0      # seconds between saves of the ACK high-water mark
BASE_WINDOW = 32            # base journals in flight at once (patent [0056]: several per command)
BITMAP_SAVE_EVERY = 0.5     # seconds between saves of the copy bitmap during a scan
# In the reason of a SUSP that goes on taking host writes (relay_loss = "suspend").
TRACKING = "host writes go on, tracked in the copy bitmap"
AL_COOL_EVERY = 1.0         # seconds between looks at the activity log (AL)
AL_MAX_HOT = 256            # extents kept hot while writes go on (what a crash may resync)
COPY_STALL = 10.0           # seconds a COPY may make no progress, nothing in flight



# What a journal's future is completed with once the relay holds it: one
# object for all (an ACK is cumulative, so there is no ACK of its own to
# pass on, and one Ack built per journal cost a dataclass __init__).
_ACKED = protocol.Ack(tag=0, req_type=FrameType.JNLWR)


class GroupSuspended(ControlError):
    """The group is suspended (GRSTS SUSP): writes are refused; ``reason`` says why.
    A ControlError: a control client's write gets the reason, the log no traceback."""


class GroupFenced(GroupSuspended):
    """The group was taken over by another site at a newer epoch: this site
    must not write (the host sees EPERM) until it rejoins as the restore side."""


class LocalIOError(OSError):
    """A host request failed on this site's own storage (write log or PVOL), not at the relay.

    ``errno`` is the cause's (ENOSPC, EIO, ...), so the NBD server answers the
    host with the matching NBD error; the message names the file.
    """


class MasterGroup:
    """One MASTER journal group: PVOLs, PSEQ, in-flight journals, the relay link.

    ``grsts`` is the group status (patent Fig. 5, GRSTS): PAIR while journals
    flow, SUSP (with ``reason``) when the relay refuses them; ``blocked`` is
    True while the relay answers FULL (inflow control).  ``dirty`` lists the
    extents applied to a PVOL but not journaled because the group suspended:
    the seam for the dirty bitmap and delta resync.
    """

    def __init__(self, cfg: GroupConfig, site: SiteConfig):
        self.cfg = cfg
        self.site = site
        self.volumes = {v.idx: Volume(v.path, v.size, v.block_size, idx=v.idx)
                        for v in site.volumes_of(cfg.grnum)}
        site.state_dir.mkdir(parents=True, exist_ok=True)
        self.log = WriteLog(site.state_dir, cfg.grname)
        # The JNLG table row (patent Fig. 5) holds GRSTS and the reason; the
        # copy bitmap the chunks still to send as base journals (host/rcm/jnlg.py).
        self._table = JnlgTable.for_site(site.state_dir)
        self.jnlg = self._table.attach(cfg, site.volumes_of(cfg.grnum))
        chunk = max([COPY_CHUNK] + [v.block_size for v in self.volumes.values()])
        self.bitmap = CopyBitmap(site.state_dir / f"{cfg.grname}.bitmap",
                                 {i: v.size for i, v in self.volumes.items()}, chunk)
        self.split = self.jnlg.grsts == "SUSP" and self.jnlg.reason.startswith("split")
        # A SUSP that takes host writes without an operator's split: the relay
        # was lost under relay_loss = "suspend" (the reason says so, durably).
        self.tracking = self.jnlg.grsts == "SUSP" and TRACKING in self.jnlg.reason
        self._scan_pos: dict[int, int] = {}     # per IDX: first chunk the scan has not taken
        self._copy_gen = 0                      # bumped on every start of a scan
        self._copy_task: asyncio.Task | None = None
        self.copy_total = self.copy_done = 0    # chunks of the current scan
        self.copy_writes = {"journaled": 0, "ahead": 0}   # host writes during COPY (Fig. 7)
        self.dirty: list[tuple[int, int, int]] = []
        self.link: Link | None = None
        # The journal stream's rules (resume, ACKs, FULL, loss) live in the
        # sans-I/O SendStream; each pending item is (control, data, future).
        # last_pseq: the last PSEQ given to a journal (0: none yet); acked_hwm:
        # the highest PSEQ the relay ACKed (0: unknown), which a relay HELLO
        # must not be below (_relay_lost).
        self.stream: SendStream[tuple[Control, bytes, asyncio.Future]] = SendStream()
        self._probe_timer: asyncio.TimerHandle | None = None
        self._sent_at: deque[tuple[int, float]] = deque()   # (PSEQ, enqueued), for PERF
        self._acked_timer: asyncio.TimerHandle | None = None
        # Which regions each PSEQ wrote, kept past the write log (regions.py):
        # what a relay that lost journals, or the secondary, lacks.
        sizes = {i: v.size for i, v in self.volumes.items()}
        self.regions = RegionLog(site.state_dir / f"{cfg.grname}.regions", sizes,
                                 self.log.last_tag, region_for(sizes, chunk))
        self._regions_saving: asyncio.Task | None = None
        self._redo()
        self._check_regions()     # after the redo: the log's first record is known then
        self.stream.last_pseq = self.log.last_tag
        self.stream.acked_hwm = self.log.acked
        self.regions.rebase(self.last_pseq)
        # The activity log: extents a crash may leave different (activity.py).
        self.al = ActivityLog(site.state_dir / f"{cfg.grname}.al")
        # Host writes wait for the activity log's saves (a cold extent is
        # listed durably first): through a thread of its own, one save at a
        # time, not the default executor (host/disk/worker.py says why).
        self._al_writer = BlockingWorker(f"al-{cfg.grname}")
        self._al_wanted: set = set()                 # cold extents for the next AL save
        self._al_saving: asyncio.Task | None = None  # the AL save in a thread (_al_warm)
        self._ready = asyncio.Event()    # PSEQs may be given out (see _after_unclean_stop)
        self._ready.set()
        self._hello_wait_since: float | None = None
        self.swapping = 0                # a planned swap to this epoch takes the writes away
        self.stream_idle = asyncio.Event()   # set when ACKs leave nothing pending (swap_out)
        self.pvol_syncs = 0              # PVOL fsyncs that let extents leave the AL
        self.reconnects = self.suspensions = self.copied_bytes = 0    # for metrics
        self.volume_bytes = {idx: 0 for idx in self.volumes}   # host bytes written, per IDX
        self.copy_restarts, self.copy_error = 0, ""
        from ..rcm.metrics import HOST_WRITE_SECONDS
        self._write_seconds = HOST_WRITE_SECONDS.labels(cfg.grname)
        self.unclean = sorted(self.al.unclean)
        if self.unclean:
            self._after_unclean_stop()
        if self.jnlg.relay_in_use == "standby" and cfg.standby is None:
            log.error("group %s was moved to its standby relay, but the config names none "
                      "([[group]] standby): it connects to the relay, which refuses it (epoch "
                      "%d); put the standby back in the config, or run `tricopy pair resync "
                      "--group %s --via relay`", cfg.grname, self.epoch, cfg.grname)

    # The stream's state, under the names status, the NBD export and the tests use.
    pending = property(lambda self: self.stream.pending)
    acked = property(lambda self: self.stream.acked)
    resent = property(lambda self: self.stream.resent,
                      doc="journals sent again (reconnect, FULL probe, after a FULL)")
    full_probes = property(lambda self: self.stream.full_probes,
                           doc="of which probes: the oldest journal, resent while FULL")

    @property
    def blocked(self) -> bool:
        """True while the relay answers FULL (the NBD export then says ENOSPC)."""
        return self.stream.blocked

    @blocked.setter
    def blocked(self, value: bool) -> None:
        self.stream.blocked = value

    @property
    def last_pseq(self) -> int:
        return self.stream.last_pseq

    @last_pseq.setter
    def last_pseq(self, value: int) -> None:
        self.stream.last_pseq = value

    @property
    def acked_hwm(self) -> int:
        return self.stream.acked_hwm

    @acked_hwm.setter
    def acked_hwm(self, value: int) -> None:
        self.stream.acked_hwm = value

    def _redo(self) -> None:
        """Replay the write log onto the PVOLs, streaming; re-queue the journals not ACKed yet.

        Only those are held in memory with their data: records at or before
        the saved ACK high-water mark are applied and dropped.
        """
        loop = asyncio.get_running_loop()
        acked = self.log.saved_acked
        n = 0
        for ctl, data in self.log.recover():
            self._apply(ctl, data)
            n += 1
            if ctl.tag:
                self.regions.note(ctl.idx, ctl.address, ctl.length, ctl.tag)
            # tag 0: a local record, applied but never journaled
            if ctl.tag and (not acked or tag_after(ctl.tag, acked)):
                # Nobody awaits a redone journal (its host write was answered
                # before the restart, or never): its outcome is retrieved here,
                # so a suspension or fence does not log "Future exception was
                # never retrieved" with a traceback for each of them.
                fut = loop.create_future()
                fut.add_done_callback(lambda f: f.cancelled() or f.exception())
                self.stream.pending[ctl.tag] = (ctl, data, fut)
        if n:
            # Durable before any ACK releases the records just redone: on the
            # way the PVOLs held older data (the log replays from its oldest
            # record), and a power loss after the release could leave that
            # on them, older than a FLUSH (tests/test_powercut_primary.py).
            for vol in self.volumes.values():
                vol.flush()
            log.info("group %s: redid %d logged records, %d journals to send again",
                     self.cfg.grname, n, len(self.pending))

    def _apply(self, ctl: Control, data: bytes) -> None:
        vol = self.volumes[ctl.idx]
        if ctl.kind in protocol.DATA_KINDS:
            vol.write(ctl.address, data)
        elif ctl.kind == Kind.ZERO:
            vol.write_zeroes(ctl.address, ctl.length)
        elif ctl.kind == Kind.TRIM:
            vol.trim(ctl.address, ctl.length)

    # -- host write path ---------------------------------------------------------

    def volume(self, idx: int) -> Volume:
        vol = self.volumes.get(idx)
        if vol is None:
            raise VolumeError(f"no PVOL with idx {idx} in group {self.cfg.grname}")
        return vol

    async def journal(self, kind: Kind, idx: int, offset: int, length: int,
                      data: bytes = b"", fua: bool = False) -> int | None:
        """Apply one host request and journal it; returns once the relay ACKed
        all of it: the PSEQ of its (last) journal, or None when it was applied
        without one (a split pair)."""
        t0 = time.perf_counter()
        if await self._local_only(kind, idx, offset, length, data):
            self.volume_bytes[idx] += length
            return None
        futures = []
        pseq = None
        # Journals larger than MAX_DATA are split; the pieces are consecutive PSEQs.
        step = protocol.MAX_DATA
        pos = 0
        try:
            while True:
                n = min(step, length - pos)
                piece = data[pos:pos + n] if kind in protocol.DATA_KINDS else b""
                tag = self.stream.next_tag()     # the PSEQ _enqueue gives it (no await between)
                futures.append(self._enqueue(kind, idx, offset + pos, n, piece, fua))
                pseq = tag
                pos += n
                if pos >= length:
                    break
        except Exception:
            for fut in futures:   # the pieces already journaled go on; nobody awaits them
                fut.add_done_callback(lambda f: f.cancelled() or f.exception())
            raise
        await self._drain()
        if len(futures) == 1:     # the usual case: no gather future per host write
            await futures[0]
        else:
            await asyncio.gather(*futures)
        self._write_seconds.observe(time.perf_counter() - t0)
        self.volume_bytes[idx] += length
        return pseq

    async def journal_many(self, idx: int, writes: list) -> list:
        """Apply and journal host writes ``(offset, data, fua)`` of volume ``idx``,
        each of at most MAX_DATA bytes, in order; returns once the relay ACKed
        them, per write None or the exception it failed with.

        The same as ``journal`` for each in turn, but the batch (the writes
        one NBD read brought) shares one write-log ``writev``, one drain and
        one pass through the event loop: per-journal Python is what a write
        costs here (docs/benchmarks.md).  A local failure (activity log, write
        log, PVOL) refuses that write and the ones after it in the batch,
        nothing of them applied; the earlier ones fare as any write in flight
        (a PVOL error suspends the group, which fails them).
        """
        t0 = time.perf_counter()
        results: list = [None] * len(writes)
        todo = []         # (position in writes, offset, length, data, fua) to journal
        for i, (offset, data, fua) in enumerate(writes):
            if len(data) > protocol.MAX_DATA:
                raise ValueError(f"journal_many takes writes of at most {protocol.MAX_DATA} "
                                 f"bytes, not {len(data)}")
            try:
                if not await self._local_only(Kind.UPDATE, idx, offset, len(data), data):
                    todo.append((i, offset, len(data), data, fua))
            except Exception as exc:
                results[i] = exc
        if todo:
            try:
                futures = self._enqueue_many(Kind.UPDATE, idx, [w[1:] for w in todo])
            except Exception as exc:
                futures = [exc] * len(todo)
            await self._drain()
            for (i, *_), fut in zip(todo, futures):
                if isinstance(fut, BaseException):
                    results[i] = fut
                    continue
                try:
                    await fut
                except Exception as exc:
                    results[i] = exc
        seconds = time.perf_counter() - t0
        for (offset, data, _), exc in zip(writes, results):
            if exc is None:
                self._write_seconds.observe(seconds)
                self.volume_bytes[idx] += len(data)
        return results

    async def _local_only(self, kind: Kind, idx: int, offset: int, length: int,
                          data: bytes) -> bool:
        """A host request's checks before it is journaled: raises if it must
        be refused; True if it was applied without a journal (a split pair)."""
        if not self._ready.is_set():
            await self._ready.wait()      # after an unclean stop: until the relay's HELLO
        if self.fenced:     # whatever the pair state: another site is the primary now
            raise GroupFenced(f"group {self.cfg.grname} is fenced: {self.reason}")
        if self.swapping:
            raise GroupFenced(f"group {self.cfg.grname} is being swapped: the secondary site "
                              f"becomes its primary (epoch {self.swapping}); write there once "
                              f"`tricopy takeover` ends")
        vol = self.volume(idx)
        vol.check(offset, length)
        if self._apply_only(kind, idx, offset, length, data):
            return True
        if self.grsts != "SUSP":
            keys = self.al.extents(idx, offset, length)
            ahead = self.al.ahead(idx, offset, length, vol.size)
            self.al.list_ahead(ahead)
            # (``list_ahead``: every save from now on lists them, this one too)
            if not self.al.covers(keys):
                await self._al_warm(keys)
            elif ahead:            # a stream's next extents, listed before it gets there
                # Nobody waits for it: a failure shows when a write needs
                # the extent (``_al_before`` saves in line and reports it).
                self._al_save_soon().add_done_callback(
                    lambda t: t.cancelled() or t.exception())
        return False

    async def _drain(self) -> None:
        if self.link is not None:
            try:
                await self.link.drain()
            except LinkError:
                pass          # the link task reconnects and resends

    def _enqueue(self, kind: Kind, idx: int, offset: int, length: int, data: bytes,
                 fua: bool, apply: bool = True) -> asyncio.Future:
        """Journal one request (``_enqueue_many`` of one); raises what refused it."""
        (fut,) = self._enqueue_many(kind, idx, [(offset, length, data, fua)], apply)
        if isinstance(fut, BaseException):
            raise fut
        return fut

    def _enqueue_many(self, kind: Kind, idx: int, items: list,
                      apply: bool = True) -> list:
        """Journal requests ``(offset, length, data, fua)`` in order: CRC, activity
        log, one write-log append, PVOL, frame.  Returns per request the future
        of its ACK, or the exception that refused it (nothing of it applied,
        no PSEQ burned); a refusal also refuses every request after it."""
        # No await in here: PSEQ order == log order == PVOL apply order == send order.
        t0 = now()
        if self.grsts == "SUSP":
            if self.fenced:
                raise GroupFenced(f"group {self.cfg.grname} is fenced: {self.reason}")
            raise GroupSuspended(f"group {self.cfg.grname} is suspended: {self.reason}")
        out: list = []
        refusal: Exception | None = None
        records, heads = [], []
        tag = self.stream.next_tag()
        for offset, length, data, fua in items:
            ctl, head = Control.sealed(address=offset, length=length, data_len=len(data),
                                       data_crc=protocol.crc32c(data) if data else 0,
                                       epoch=self.epoch, idx=idx, kind=kind,
                                       flags=1 if fua else 0, group=self.cfg.grnum, tag=tag)
            if apply:
                saves = self.al.saves
                try:
                    self._al_before(ctl)
                except LocalIOError as exc:
                    refusal = exc
                    break
                if self.al.saves != saves:
                    PERF["primary.al_save"].add(now() - t0)     # a cold extent: file + fsync
            records.append((ctl, data))
            heads.append(head)
            tag = next_pseq(tag)
        segments = len(self.log.segments)
        try:
            tokens = self._log_append(records, heads) if records else []
        except LocalIOError as exc:
            return [exc] * len(items)
        for ctl, _ in records:
            self.regions.note(idx, ctl.address, ctl.length, ctl.tag)
        if len(self.log.segments) != segments:
            # A segment was closed: save the region table now, so that it
            # covers the closed segment by the time the relay ACKs it (the
            # log may release only what the saved table covers).
            self._save_regions()
        loop = asyncio.get_running_loop()
        link = self.link
        for (ctl, data), head, token in zip(records, heads, tokens):
            if apply:     # a base journal's data was just read from the PVOL: nothing to apply
                try:
                    self._apply(ctl, data)
                except Exception as exc:
                    # Not only OSError: whatever stopped the apply, the record is
                    # logged and its PSEQ not yet counted, so leaving it there
                    # would give that PSEQ to the next write as well.
                    try:
                        self._pvol_failed(ctl, token, exc)   # un-logs it and those after it
                    except LocalIOError as failed:
                        refusal = failed
                    break
            fut = loop.create_future()
            # Only now is the PSEQ used: a journal that failed locally burns none.
            # While the relay answers FULL only the probe goes out (_probe); the
            # rest follow in order once the probe is ACKed.
            if self.stream.add(ctl.tag, (ctl, data, fut)) and link is not None \
                    and not link.closed:
                link.send_journal(head, data)     # the turn's journals go as one JNLWR
            out.append(fut)
            self._sent_at.append((ctl.tag, now()))
        t1 = now()
        PERF["primary.enqueue"].add((t1 - t0) / max(1, len(out)))   # CRC, AL, log, PVOL, frame
        PERF["primary.in_flight"].add(len(self.stream.pending))
        return out + [refusal] * (len(items) - len(out))     # the refused and those after it

    async def _al_warm(self, keys: list) -> None:
        """Get a write's cold extents listed in the activity log before it is
        enqueued, without holding up the event loop: the file write (two
        fsyncs) runs in a thread, and writes into other cold extents that come
        meanwhile share the next one (a group commit of the AL).  Only an
        optimisation: ``_al_before`` (in ``_enqueue``, no await before the PVOL
        write) still checks and saves in line if an extent is not listed."""
        t0 = now()
        for _ in range(3):
            self._al_wanted.update(keys)
            try:
                await asyncio.shield(self._al_save_soon())
            except OSError:
                break            # _al_before tries again in line and reports the error
            if self.al.covers(keys):
                break
        PERF["primary.al_warm"].add(now() - t0)    # waited for a cold extent to be listed

    def _al_save_soon(self) -> asyncio.Task:
        """The activity-log save in a thread now under way, or a new one."""
        if self._al_saving is None:
            self._al_saving = asyncio.get_running_loop().create_task(self._al_warm_save())
        return self._al_saving

    async def _al_warm_save(self) -> None:
        try:
            save = self.al.prepare(self._al_wanted)
            self._al_wanted = set()
            wrote = await self._al_writer.run(self.al.write, save)
            self.al.done(save, wrote)
        finally:
            self._al_saving = None

    def _al_before(self, ctl: Control) -> None:
        """The write's extents into the activity log, durably, before the PVOL changes."""
        try:
            self.al.before_write(ctl.idx, ctl.address, ctl.length, ctl.tag)
        except OSError as exc:
            raise LocalIOError(exc.errno or errno.EIO,
                               f"group {self.cfg.grname}: activity log at the primary "
                               f"({self.al.path}): {exc.strerror or exc}; nothing was "
                               f"applied") from None

    def _after_unclean_stop(self) -> None:
        """The last stop left extents in the activity log: PVOL and SVOL may
        differ there (a power loss drops what was not synced, on either side
        of the relay's ACK).  They go to the copy bitmap; a paired group then
        resyncs them as soon as the relay is back (_resync_unclean).  Until
        that HELLO no PSEQ is given out: the write log may have lost journals
        the relay holds, and a new journal must not reuse their PSEQs."""
        n = len(self.unclean)
        for idx, e in self.unclean:
            if idx in self.volumes:
                off = e * self.al.extent
                self.bitmap.mark(idx, off, min(self.al.extent, self.volumes[idx].size - off))
        self.bitmap.save()
        if self.grsts in ("PAIR", "COPY"):
            log.warning("group %s: the last stop was not clean: %d extent(s) of %d KiB may "
                        "differ between PVOL and SVOL; they are resynced once the relay is "
                        "reachable", self.cfg.grname, n, self.al.extent >> 10)
            self._ready.clear()
        else:
            if self.grsts == "SUSP":
                log.warning("group %s: the last stop was not clean: %d extent(s) set in the "
                            "copy bitmap for the next `pair resync`", self.cfg.grname, n)
            self.al.forget_unclean()
            self.unclean = []

    def _resync_unclean(self) -> None:
        """First HELLO after an unclean stop: resync the extents it left (in band)."""
        if self.grsts == "PAIR":
            self._set_state("COPY", f"resync of {len(self.unclean)} extent(s) an unclean stop "
                                    f"may have left different")
        if self.grsts == "COPY":
            self._start_copy()       # Mark.COPY_BEGIN first: the SVOLs say "no image"
        self.al.forget_unclean()     # in the bitmap (saved) and the state is COPY (saved)
        self.unclean = []
        self._ready.set()

    async def _al_cooler(self) -> None:
        """Let extents whose writes are all ACKed leave the activity log: fsync
        the PVOLs (so those writes survive a power loss), then drop them.

        While writes go on, an extent is kept hot (a write into it costs
        nothing) until more than AL_MAX_HOT are; once writes pause, all go.
        """
        seen = self.last_pseq
        while True:
            await asyncio.sleep(AL_COOL_EVERY)
            busy, seen = self.last_pseq != seen, self.last_pseq
            keep = AL_MAX_HOT * 3 // 4 if busy else 0
            upto = self.acked_hwm
            if (not upto or len(self.al.hot) <= (AL_MAX_HOT if busy else 0)
                    or not any(not tag_after(t, upto) for t in self.al.hot.values())):
                if self.al.stale:
                    await self._al_save()
                continue
            try:
                await asyncio.to_thread(lambda: [v.flush() for v in self.volumes.values()])
            except OSError as exc:
                log.error("group %s: PVOL fsync for the activity log: %s", self.cfg.grname, exc)
                continue
            self.pvol_syncs += 1
            self.al.cool(upto, keep)
            await self._al_save()

    async def _al_save(self) -> None:
        try:
            save = self.al.prepare()      # in a thread: the loop goes on (_al_warm)
            self.al.done(save, await self._al_writer.run(self.al.write, save))
        except OSError as exc:
            log.error("group %s: saving the activity log: %s", self.cfg.grname, exc)

    def _log_append(self, records: list, heads: list[bytes] | None = None) -> list:
        """Append ``(ctl, data)`` records to the write log (``heads``: their
        control data packed); returns their undo tokens.  A failure is the
        primary's own, reported as such."""
        try:
            return self.log.append_many(records, heads)
        except WriteLogBroken as exc:
            # The record may sit half-written in the log: no more appends, and
            # the journals in flight can no longer be redone from it.
            reason = (f"write log failed at the primary ({exc}); fix the state folder's "
                      f"device, then run `tricopy pair resync`")
            self.blocked = False     # not a FULL: the host sees EIO, not ENOSPC
            self._suspend(reason)
            raise LocalIOError(exc.errno or errno.EIO,
                               f"group {self.cfg.grname}: {reason}") from None
        except WriteLogError as exc:
            # Cut off again: log, PSEQ, PVOL all as before; the group goes on.
            log.error("group %s: write refused, nothing applied: %s", self.cfg.grname, exc)
            raise LocalIOError(exc.errno or errno.EIO,
                               f"group {self.cfg.grname}: write log at the primary: "
                               f"{exc.strerror}; nothing was applied") from None

    def _pvol_failed(self, ctl: Control, token: tuple, exc: Exception) -> None:
        """The PVOL refused a logged write: un-log it, mark the extent, suspend; raises."""
        vol = self.volumes[ctl.idx]
        try:
            self.log.undo(token)
        except OSError:
            pass      # broken log: _suspend below resets it
        # The extent now holds unknown bytes at the PVOL: the resync copies it.
        self.bitmap.mark(ctl.idx, ctl.address, ctl.length)
        why = getattr(exc, "strerror", None) or f"{type(exc).__name__}: {exc}"
        what = f"PVOL idx {ctl.idx} ({vol.path}) write at offset {ctl.address} failed: {why}"
        self.blocked = False     # not a FULL: the host sees EIO, not ENOSPC
        self._suspend(f"{what}; fix the device, then run `tricopy pair resync`")
        raise LocalIOError(getattr(exc, "errno", None) or errno.EIO,
                           f"group {self.cfg.grname}: {what}") from None

    async def flush(self) -> None:
        """Host FLUSH: PVOLs and the write log durable (acked writes already are at the relay)."""
        fds = self.log.flush_begin()   # on the loop: rolls and releases go on meanwhile
        upto = self.acked_hwm          # ACKed before the PVOL fsync below: then on both sides

        def sync():
            self.log.sync(fds)     # every segment written since the last flush, and the folder
            for vol in self.volumes.values():
                vol.flush()
        await asyncio.to_thread(sync)
        self.pvol_syncs += 1
        if upto and len(self.al.hot) > AL_MAX_HOT:
            self.al.cool(upto, AL_MAX_HOT * 3 // 4)   # saved lazily (_al_cooler)

    # -- the relay link ------------------------------------------------------------

    def _suspend(self, reason: str, keep_writes: bool = False) -> None:
        """PAIR/COPY -> SUSP with ``reason``.  The journals in flight go to the copy
        bitmap; their host writes fail, or with ``keep_writes`` (relay_loss =
        "suspend") complete once the PVOLs are durable, and later writes go on
        as after a split (``tracking``)."""
        self.suspensions += 1
        self.grsts, self.reason, self.split = "SUSP", reason, False
        self.tracking = keep_writes
        if self.unclean:      # its extents are in the copy bitmap: `pair resync` sends them
            self.unclean = []
            try:
                self.al.forget_unclean()
            except OSError as exc:
                log.error("group %s: activity log: %s", self.cfg.grname, exc)
            self._ready.set()
        self._cancel_probe()      # ``blocked`` stays: the NBD export answers ENOSPC after a FULL
        self._sent_at.clear()
        log.error("group %s suspended: %s", self.cfg.grname, reason)
        kept = []
        for ctl, _, fut in self.stream.drop_all():
            self.dirty.append((ctl.idx, ctl.address, ctl.length))
            self.bitmap.mark(ctl.idx, ctl.address, ctl.length)   # resync sends them again
            if fut.done():
                continue
            if keep_writes:
                kept.append(fut)
            else:
                fut.set_exception(GroupSuspended(f"group {self.cfg.grname} suspended: {reason}"))
        self.bitmap.save()          # before any of those writes may complete
        try:
            self._log_reset()
        except OSError as exc:
            log.error("group %s: write log reset failed: %s", self.cfg.grname, exc)
        if kept:
            asyncio.get_running_loop().create_task(self._complete_locally(kept))

    async def _complete_locally(self, futures: list) -> None:
        """Host writes that were in flight when the relay was lost (relay_loss =
        "suspend"): on the PVOL and in the copy bitmap (saved); once the PVOLs
        are durable they complete, as a write of a split group would."""
        try:
            await asyncio.to_thread(lambda: [v.flush() for v in self.volumes.values()])
        except OSError as exc:
            err = LocalIOError(exc.errno or errno.EIO, f"group {self.cfg.grname}: PVOL fsync "
                                                       f"failed: {exc.strerror or exc}")
            for fut in futures:
                if not fut.done():
                    fut.set_exception(err)
            return
        for fut in futures:
            if not fut.done():
                fut.set_result(_ACKED)

    def _complete(self, acked: list) -> None:
        """These pending journals are durable at the relay: complete their host writes."""
        for tag, (_, _, fut) in acked:
            if not fut.done():
                fut.set_result(_ACKED)
        if not self.pending:
            self.stream_idle.set()
        if acked:
            t, sent, last = now(), self._sent_at, acked[-1][0]
            PERF["primary.acked_per_ack"].add(len(acked))
            rtt = PERF["primary.relay_rtt"]        # logged and sent -> ACKed
            while sent and not tag_after(sent[0][0], last):
                rtt.add(t - sent.popleft()[1])
        if len(self.log.segments) > 1:
            self._release_log()
        if self._acked_timer is None and self.acked_hwm != self.log.saved_acked:
            self._acked_timer = asyncio.get_running_loop().call_later(
                ACKED_SAVE_EVERY, self._save_acked)

    def _release_log(self) -> None:
        """Let the write log drop the segments the relay ACKed.  The region table is
        saved lazily behind it: a crash before the save leaves it a hole, which
        the restart finds (_check_regions) -- a rare full copy, never a short
        delta; the log stays one segment long."""
        if tag_after(self.acked_hwm, self.regions.saved_tag):
            self._save_regions()
        try:
            self.log.release(self.acked_hwm)
        except OSError as exc:
            log.error("group %s: write log segment release failed: %s", self.cfg.grname, exc)

    def _check_regions(self) -> None:
        """At start (after the redo): journals after the saved table that the write log no longer
        holds (released, then a crash before the next save) are unknown to it.
        The table then says so -- it answers only for PSEQs from the log on."""
        saved, first = self.regions.saved_tag, self.log.first_tag
        before = (first - 1 if first > 1 else TAG_MOD - 1) if first else self.log.last_tag
        if before and tag_after(before, saved):
            self.regions.known_from(before)
            log.warning("group %s: the region table was saved up to PSEQ %d and the write log "
                        "starts after PSEQ %d (a stop before the table's next save): where "
                        "journals %d..%d wrote is unknown, so a relay that lost them would mean "
                        "a full copy", self.cfg.grname, saved, before, saved + 1, before)

    def _save_regions(self) -> None:
        """Save the region table in a thread (one save at a time); the next ACK then
        releases what it covers."""
        if self._regions_saving is not None:
            return
        snap = self.regions.snapshot()

        async def save():
            try:
                await asyncio.to_thread(self.regions.write, snap)    # sets saved_tag
            except OSError as exc:      # the write log keeps its segments meanwhile
                log.error("group %s: saving the region table failed: %s", self.cfg.grname, exc)
            finally:
                self._regions_saving = None
        self._regions_saving = asyncio.get_running_loop().create_task(save())

    def _log_reset(self) -> None:
        """Drop every write-log record, the region table saved first (it must cover
        them), both continuing after ``last_pseq``."""
        self.regions.rebase(self.last_pseq)
        self.regions.save()
        self.log.reset(self.last_pseq, self.acked_hwm)

    def _save_acked(self) -> None:
        """Persist the ACK high-water mark (lazily: a stale mark only weakens loss detection)."""
        self._acked_timer = None
        if self.acked_hwm == self.log.saved_acked:
            return
        try:
            self.log.save_state(self.acked_hwm)
        except OSError as exc:
            log.error("group %s: saving the ACK high-water mark failed: %s", self.cfg.grname, exc)

    async def run_link(self) -> None:
        """Connect to the relay forever; resend what it does not hold."""
        asyncio.get_running_loop().create_task(self._al_cooler())
        asyncio.get_running_loop().create_task(self._copy_watchdog())
        if self.grsts == "COPY" and not self.unclean:
            self._start_copy()       # a scan interrupted by a restart goes on from the bitmap
        while True:
            if (self.grsts in ("SUSP", "SMPL") or self.fenced) and not self.pending:
                await asyncio.sleep(0.2 if self.split or self.grsts == "SMPL" else 1.0)
                continue
            hello = protocol.Hello(Role.PRIMARY, self.cfg.grnum, self.epoch,
                                   self.last_pseq, self.cfg.grname, self.site.site)
            which, addr, args = self._relay_address()
            try:
                link, peer = await connect(addr, hello, heartbeat=self.site.heartbeat,
                                           name=f"{self.site.site}->{which}", **args)
            except LinkRefused as exc:
                if exc.status == Status.STALE_EPOCH:
                    self._fence(exc.peer_epoch)
                else:
                    self._suspend(f"relay refused HELLO: {exc.status.name}")
                continue
            except LinkError as exc:
                log.debug("relay not reachable: %s", exc)
                self._relay_unreachable()
                await asyncio.sleep(RECONNECT_DELAY)
                continue
            try:
                await self._session(link, peer)
            except LinkError as exc:
                log.info("relay link: %s", exc)
            finally:
                self.link = None
                self.stream.disconnected()
                self._cancel_probe()
                await link.close()
            await asyncio.sleep(RECONNECT_DELAY)

    def _relay_address(self) -> tuple[str, tuple[str, int], dict]:
        """The relay in use ("relay" or "standby"), its data address, connect() TLS keywords."""
        args = tls.client_args(self.site, self.cfg)
        if self.jnlg.relay_in_use == "standby" and self.cfg.standby is not None:
            return "standby", self.cfg.standby, {**args, "peer_site": self.cfg.standby_site}
        return "relay", self.cfg.peer, args

    async def use_relay(self, which: str, epoch: int) -> None:
        """Send the journals to the other relay (docs/operations.md, "A standby relay").

        The group suspends, tracking host writes (nothing in flight is lost:
        it goes to the copy bitmap), and moves to ``epoch``, a new journal
        stream that the relay left behind cannot join.  What the secondary
        lacks is then copied by ``pair resync`` (``lost_to_secondary``: the
        regions written after its restore point, host/primary/regions.py).
        Idempotent: run again after a crash, it finds it done.
        """
        if which not in ("relay", "standby"):
            raise ControlError(f"relay must be \"relay\" or \"standby\", not {which!r}")
        if which == "standby" and self.cfg.standby is None:
            raise ControlError(f"group {self.cfg.grname} has no standby relay: give its "
                               f"[[group]] standby = \"HOST:PORT\" at the primary")
        if self.jnlg.relay_in_use == which and self.epoch == epoch:
            return
        self._refuse_if_fenced()
        if self.grsts == "SMPL":
            raise ControlError(f"group {self.cfg.grname} is SMPL: nothing to move; `pair create` "
                               f"pairs it through the relay in use")
        if epoch <= self.epoch:
            raise ControlError(f"group {self.cfg.grname}: a move to the {which} needs an epoch "
                               f"above {self.epoch}, not {epoch}")
        if self.grsts != "SUSP":
            self._suspend(f"moving to the {which} relay at epoch {epoch}; {TRACKING}: `tricopy "
                          f"pair resync` sends what the secondary lacks", keep_writes=True)
        self._copy_gen += 1              # a copy through the other relay does not go on
        if self._copy_task is not None:
            self._copy_task.cancel()
        self.jnlg.relay_in_use = which
        self.jnlg.epoch = epoch
        self.jnlg.fence_epoch = max(self.jnlg.fence_epoch, epoch)
        self.jnlg.lost_to_secondary = True
        self._table.save()
        if self.link is not None:
            await self.link.close()      # the link task reconnects, to the other address
        log.warning("group %s: journals go to the %s relay at epoch %d from now on",
                    self.cfg.grname, which, epoch)

    @property
    def epoch(self) -> int:
        return self.jnlg.epoch

    @property
    def fenced(self) -> bool:
        """Another site took the group over at a newer epoch (durable)."""
        return self.jnlg.fence_epoch > self.jnlg.epoch

    def _fence(self, newer: int) -> None:
        """The relay refused our epoch: the group was taken over elsewhere.

        Durably fenced (a restart stays fenced): writes fail with EPERM, and
        what was in flight goes to the copy bitmap -- those writes reached
        this PVOL but were never acknowledged, so the failback must send them.
        """
        newer = max(newer, self.epoch + 1)
        self.jnlg.fence_epoch = max(self.jnlg.fence_epoch, newer)
        reason = (f"fenced: group {self.cfg.grname} was taken over at epoch {newer}; this site "
                  f"is at epoch {self.epoch} and takes no writes until it rejoins as the "
                  f"restore side (docs/operations.md, Takeover)")
        self.blocked = False
        self._suspend(reason)

    def _relay_unreachable(self) -> None:
        """Writes wait for an unreachable relay at most ``link_suspend_after`` seconds.

        Then the group suspends (their extents go to ``dirty``) so host writes
        fail with an explicit error instead of hanging.  An idle group never
        suspends: the clock starts only while a write is waiting.
        """
        now = time.monotonic()
        reason = self.stream.unreachable(now, self.cfg.link_suspend_after)
        if not self._ready.is_set():     # writes wait for the HELLO after an unclean stop
            self._hello_wait_since = self._hello_wait_since or now
            if now - self._hello_wait_since > self.cfg.link_suspend_after:
                reason = (f"relay unreachable for more than {self.cfg.link_suspend_after:g} s "
                          f"after an unclean stop (writes wait for it)")
        if not reason:
            return
        if self.cfg.relay_loss == "fence":
            self._suspend(f"{reason}; host writes are refused (relay_loss = \"fence\"): bring "
                          f"the relay back and run `tricopy pair resync`, or `tricopy takeover`")
        else:
            self._suspend(f"{reason}; {TRACKING} (relay_loss = \"suspend\"): once the "
                          f"relay is back, `tricopy pair resync` sends them", keep_writes=True)

    async def _session(self, link: Link, peer: protocol.Hello) -> None:
        self.reconnects += 1
        mine = self.last_pseq
        resume = self.stream.connected(peer.last_seq)
        if isinstance(resume, RelayLost):
            self._relay_lost(resume)
            return
        if self.last_pseq != mine:
            if tag_after(self.last_pseq, mine):
                log.warning("group %s: the relay holds PSEQ %d..%d that this site's write log "
                            "does not (lost in a crash): continuing after them%s",
                            self.cfg.grname, mine + 1, self.last_pseq,
                            "; the extents the crash left are resynced" if self.unclean else "")
            else:
                log.warning("group %s: PSEQ %d..%d were given out here but lost in a crash "
                            "before the relay had them (never ACKed: no host write completed "
                            "with them): continuing after the relay's %d%s", self.cfg.grname,
                            self.last_pseq + 1, mine, self.last_pseq,
                            "; the extents the crash left are resynced" if self.unclean else "")
            # Every record left is ACKed; a reset keeps the log's PSEQs
            # consecutive, which its recovery checks (a hole ends it).
            try:
                self._log_reset()
            except OSError as exc:
                self._suspend(f"write log reset at the primary failed ({exc}); fix the "
                              f"state folder's device, then run `tricopy pair resync`")
                return
        if self.unclean:
            self._resync_unclean()
        self.link = link
        self._complete(resume.acked)     # the relay holds these durably already
        self._send(link, resume.send)
        await link.drain()
        while True:
            frame = await link.recv()
            if frame.type not in (FrameType.ACK, FrameType.NAK):
                continue
            ack = protocol.Ack.from_frame(frame)
            if ack.status == Status.OK:
                was_blocked = self.stream.blocked
                resume = self.stream.on_ack(ack.tag)
                self._complete(resume.acked)
                if was_blocked:
                    self._cancel_probe()
                    log.info("group %s: relay journal has room again after FULL",
                             self.cfg.grname)
                if resume.send:
                    self._send(link, resume.send)
                    await link.drain()
            elif ack.status == Status.FULL:
                if not self.stream.blocked:
                    log.info("group %s: relay journal FULL at PSEQ %d; writes wait",
                             self.cfg.grname, ack.tag)
                delay = self.stream.on_full(ack.tag, time.monotonic(),
                                            self.cfg.full_suspend_after)
                if isinstance(delay, str):
                    self._suspend(delay)
                    return
                # The connection stays up and writes stall (they are not failed);
                # the oldest pending journal goes again alone after ``delay``.
                self._cancel_probe()
                self._probe_timer = asyncio.get_running_loop().call_later(
                    delay, self._probe, link)
            else:
                reason = self.stream.on_refused(ack.tag, ack.status)
                if reason:
                    self._suspend(reason)
                    return

    def _send(self, link: Link, tags: list[int]) -> None:
        """Send the pending journals ``tags``, in the order given (PSEQ order)."""
        pending = self.stream.pending
        for tag in tags:
            ctl, data, _ = pending[tag]
            link.send_journal(ctl.pack(), data)

    def _probe(self, link: Link) -> None:
        """Send the oldest pending journal alone: does the relay have room again?"""
        self._probe_timer = None
        if link is not self.link or link.closed:
            return
        tag = self.stream.probe()
        if tag is not None:
            self._send(link, [tag])

    def _cancel_probe(self) -> None:
        if self._probe_timer is not None:
            self._probe_timer.cancel()
            self._probe_timer = None

    def _relay_lost(self, lost: RelayLost) -> None:
        """The relay lost journals it had ACKed: suspend and mark them for the resync.

        Its journal volume was damaged or recreated, restored from an old
        copy...: the journals after its LAST_SEQ are gone from the relay
        although their host writes completed.  Resending cannot fix that (the
        secondary may have restored some under other SEQ#s), so the group
        suspends and the copy bitmap gets their extents: from the write log
        when it still holds them, else whole volumes.  ``pair resync`` then
        copies them and continues after the relay's last PSEQ.
        """
        held = self.log.first_tag
        if held and not tag_after(held, lost.first):
            n = 0
            for ctl in self._logged_controls():
                if ctl.tag == 0 or tag_after(ctl.tag, lost.relay_last):
                    self.bitmap.mark(ctl.idx, ctl.address, ctl.length)
                    n += 1
            repair = (f"marked the {n} extents of the lost journals, still in the write log, "
                      f"in the copy bitmap (delta resync)")
        elif not lost.relay_last:
            # The relay holds nothing: what the secondary lacks is what was
            # written after its restore point, which `pair resync` asks it.
            self.jnlg.lost_to_secondary = True
            self._table.save()
            repair = ("the relay holds no journal: `pair resync` copies the regions written "
                      "after the secondary's restore point (delta resync), or everything if it "
                      "cannot say")
        elif (regions := self.regions.after(lost.relay_last)) is not None:
            for idx, offset, length in regions:
                self.bitmap.mark(idx, offset, length)
            repair = (f"the write log no longer holds PSEQ {lost.first}: marked the {len(regions)} "
                      f"regions of {self.regions.region >> 10} KiB written after PSEQ "
                      f"{lost.relay_last} (region table) in the copy bitmap (delta resync)")
        else:
            self.bitmap.set_all()
            repair = (f"neither the write log nor the region table goes back to PSEQ "
                      f"{lost.first}: marked every chunk of every volume in the copy bitmap "
                      f"(full copy)")
        self.bitmap.save()
        reason = f"{lost}; run `tricopy pair resync`"
        log.error("group %s: %s; %s", self.cfg.grname, reason, repair)
        self.blocked = False     # not a FULL: the host sees EIO, not ENOSPC
        self._suspend(reason)

    def _logged_controls(self):
        """The control data of every record in the write log, oldest first (data skipped)."""
        for path in self.log.segment_files():
            with open(path, "rb") as f:
                while len(head := f.read(protocol.CONTROL_SIZE)) == protocol.CONTROL_SIZE:
                    ctl = Control.unpack(head)
                    if not ctl.ccrc_ok():
                        break
                    yield ctl
                    f.seek(ctl.data_len, os.SEEK_CUR)

    # -- pair state (JNLG table, patent Fig. 5) and management (docs/operations.md) --

    @property
    def grsts(self) -> str:
        """GRSTS 440: SMPL, COPY, PAIR or SUSP; persisted in the JNLG table."""
        return self.jnlg.grsts

    @grsts.setter
    def grsts(self, value: str) -> None:
        self._set_state(value, self.jnlg.reason)

    @property
    def reason(self) -> str:
        return self.jnlg.reason

    @reason.setter
    def reason(self, value: str) -> None:
        self._set_state(self.jnlg.grsts, value)

    def _set_state(self, grsts: str, reason: str = "") -> None:
        if (grsts, reason) != (self.jnlg.grsts, self.jnlg.reason):
            self.jnlg.set_state(grsts, reason)
            self._table.save()

    def _dvol(self, idx: int):
        return next(d for d in self.jnlg.dvols if d.idx == idx)

    def _apply_only(self, kind: Kind, idx: int, offset: int, length: int, data: bytes) -> bool:
        """Patent Fig. 7: apply this host write to the PVOL without journaling it?

        Yes in SMPL (no pair); in SUSP after a split (its chunks are set in the
        copy bitmap, persisted before the PVOL changes, for the delta resync);
        in COPY when every chunk it touches is still to be taken by the scan
        (the base journal will carry it: the patent's "address > BJPtr").
        An error SUSP returns False: ``_enqueue`` refuses the write.
        """
        if self.grsts == "SUSP" and (self.split or self.tracking):
            if self.bitmap.mark(idx, offset, length):
                self.bitmap.save()
        elif self.grsts == "COPY":
            if offset // self.bitmap.chunk < self._scan_pos.get(idx, 0) \
                    or not self.bitmap.covered(idx, offset, length):
                self.copy_writes["journaled"] += 1
                return False
            self.copy_writes["ahead"] += 1
        elif self.grsts != "SMPL":
            return False
        ctl = Control(address=offset, length=length, data_len=len(data),
                      data_crc=protocol.crc32c(data) if data else 0, epoch=self.epoch,
                      idx=idx, kind=kind, group=self.cfg.grnum, tag=0).with_ccrc()
        # The write log is redone over the PVOLs at restart: a write that
        # bypassed it could be overwritten by an older logged journal.  So an
        # empty log stays empty, a log of ACKed journals is cut, and behind
        # journals still in flight the write goes in as a local record (TAG 0).
        if not self.log.empty:
            if self.pending:
                self._log_append([(ctl, data)])
            else:
                try:
                    self._log_reset()
                except OSError as exc:
                    raise LocalIOError(exc.errno or errno.EIO,
                                       f"group {self.cfg.grname}: write log reset at the "
                                       f"primary failed: {exc}; nothing was applied") from None
        try:
            self._apply(ctl, data)
        except OSError as exc:
            vol = self.volumes[idx]
            raise LocalIOError(exc.errno or errno.EIO,
                               f"group {self.cfg.grname}: PVOL idx {idx} ({vol.path}) write at "
                               f"offset {offset} failed: {exc.strerror or exc}") from None
        return True

    def _start_copy(self) -> None:
        self._copy_gen += 1
        self._scan_pos = {idx: 0 for idx in self.volumes}
        self.copy_total, self.copy_done = self.bitmap.count(), 0
        if self._copy_task is not None:
            self._copy_task.cancel()
        self._copy_task = asyncio.create_task(self._base_copy(self._copy_gen))
        self._copy_task.add_done_callback(self._copy_ended)

    def _copy_ended(self, task: asyncio.Task) -> None:
        """A copy task that died must say so (asyncio would not: the task is kept)."""
        if not task.cancelled() and task.exception() is not None:
            self.copy_error = f"{type(task.exception()).__name__}: {task.exception()}"
            log.error("group %s: the copy stopped: %s", self.cfg.grname, self.copy_error)

    async def _copy_watchdog(self) -> None:
        """A group in COPY whose scan ended without PAIR, or that made no progress
        with nothing in flight for COPY_STALL seconds, starts the scan again
        (from the copy bitmap: nothing is skipped, at worst a chunk goes twice).
        Found by the chaos runner: a primary stayed in COPY for good after the
        resync of an unclean stop, every base journal ACKed, no COPY_END."""
        seen, since = None, time.monotonic()
        while True:
            await asyncio.sleep(COPY_STALL / 4)
            if self.grsts != "COPY" or self.unclean or self._copy_task is None:
                seen, since = None, time.monotonic()
                continue
            mark = (self._copy_gen, self.copy_done, len(self.pending), self.bitmap.count())
            if mark != seen:
                seen, since = mark, time.monotonic()
            stalled = not self.pending and time.monotonic() - since > COPY_STALL
            if self._copy_task.done() or stalled:
                log.warning("group %s: the copy %s (%d/%d chunks, %d still set); scanning the "
                            "copy bitmap again", self.cfg.grname,
                            "ended without PAIR" if self._copy_task.done() else "made no progress",
                            self.copy_done, self.copy_total, self.bitmap.count())
                self.copy_restarts += 1
                self._start_copy()
                seen, since = None, time.monotonic()

    async def _base_copy(self, gen: int) -> None:
        """Patent Fig. 6: a base journal for every chunk set in the copy bitmap, in order.

        BASE_WINDOW journals are in flight at once; an all-zero chunk goes as a
        ZERO journal (no data).  A chunk's bit is cleared when the relay ACKed
        its journal, so a restart or a failure sends it again, never skips it.
        """
        chunk = self.bitmap.chunk
        inflight: set[asyncio.Future] = set()
        saved = time.monotonic()
        # In band, ahead of the first base journal: the SVOLs are no image from
        # here until MARK_COPY_END (the secondary fences them in SEQ# order).
        try:
            self._enqueue(Kind.MARK, 0, protocol.Mark.COPY_BEGIN, 0, b"", False, apply=False) \
                .add_done_callback(lambda f: f.cancelled() or f.exception())
        except (GroupSuspended, LocalIOError):
            return
        for idx, vol in sorted(self.volumes.items()):
            dvol = self._dvol(idx)
            for c in self.bitmap.pending(idx):
                if gen != self._copy_gen or self.grsts != "COPY":
                    return
                off = c * chunk
                n = min(chunk, vol.size - off)
                data = vol.read(off, n)
                # No await from the read to the enqueue: the journal holds the
                # PVOL exactly as of its PSEQ, and later writes here are journaled.
                self._scan_pos[idx] = c + 1
                dvol.bjptr = (off + n) // vol.block_size
                if data.count(0) == n:
                    fut = self._enqueue(Kind.ZERO, idx, off, n, b"", False, apply=False)
                else:
                    fut = self._enqueue(Kind.BASE, idx, off, n, data, False, apply=False)
                fut.add_done_callback(partial(self._base_acked, gen, idx, c))
                inflight.add(fut)
                if len(inflight) >= BASE_WINDOW:
                    if self.link is not None:
                        try:
                            await self.link.drain()
                        except LinkError:
                            pass
                    _, inflight = await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                if time.monotonic() - saved > BITMAP_SAVE_EVERY:
                    self.bitmap.save()
                    self._table.save()
                    saved = time.monotonic()
            self._scan_pos[idx] = self.bitmap.nchunks(idx)
            dvol.bjptr = vol.size // vol.block_size
        if inflight:
            await asyncio.wait(inflight)
        # A journal ACKed after the last FIRST_COMPLETED wait woke us, but before we
        # ran, is "done" without its _base_acked having run: let those callbacks
        # (already scheduled) clear their bits first (found by `tricopy chaos`).
        await asyncio.sleep(0)
        if gen != self._copy_gen or self.grsts != "COPY" or self.bitmap.count():
            return      # superseded, split, or a journal failed (the group suspended)
        try:
            await self._enqueue(Kind.MARK, 0, protocol.Mark.COPY_END, 0, b"", False, apply=False)
        except (GroupSuspended, LocalIOError):
            return
        if gen != self._copy_gen or self.grsts != "COPY" or self.bitmap.count():
            return
        self.bitmap.save()
        self._set_state("PAIR")
        log.info("group %s: base copy done, %d chunks: PAIR", self.cfg.grname, self.copy_done)

    def _base_acked(self, gen: int, idx: int, c: int, fut: asyncio.Future) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return      # the extent is in the bitmap still (and in ``dirty``)
        # Only for the scan that sent it: a split may have dirtied the chunk again.
        if gen == self._copy_gen and self.grsts == "COPY":
            self.bitmap.clear(idx, c)
            self.copy_done += 1
            self.copied_bytes += self.bitmap.chunk

    def _refuse_if_fenced(self) -> None:
        if self.fenced:
            raise ControlError(f"group {self.cfg.grname} is fenced: it was taken over at epoch "
                               f"{self.jnlg.fence_epoch} and this site is at epoch {self.epoch}; "
                               f"it can only rejoin as the restore side (docs/operations.md)")

    # -- planned swap (host/rcm/takeover.py): this site becomes the restore side --------

    async def swap_out(self, epoch: int, timeout: float = 60.0) -> dict:
        """Swap, step 1: take no more host writes, wait until the relay ACKed every
        journal, make the PVOLs durable.  Not durable itself: until the relay is
        fenced (step 2) the RCM may cancel, and a restart cancels too."""
        self._refuse_if_fenced()
        if self.jnlg.relay_in_use == "standby":
            raise ControlError(f"group {self.cfg.grname} runs through its standby relay: a "
                               f"planned swap turns the configured relay around; move back "
                               f"first (`tricopy pair resync --group {self.cfg.grname} --via "
                               f"relay`)")
        if self.grsts != "PAIR" or self.link is None:
            raise ControlError(f"group {self.cfg.grname} is {self.grsts}"
                               f"{'' if self.link else ', not connected to the relay'}: a "
                               f"planned swap needs PAIR with the relay connected (the relay "
                               f"must hold every write before the roles change)")
        self.swapping = epoch
        deadline = time.monotonic() + timeout
        while self.pending:
            if time.monotonic() > deadline or self.grsts != "PAIR":
                self.swapping = 0
                raise ControlError(f"group {self.cfg.grname}: {len(self.pending)} journal(s) "
                                   f"still not ACKed by the relay after {timeout:g} s "
                                   f"({self.grsts}); the swap is cancelled, writes go on")
            self.stream_idle.clear()
            try:
                await asyncio.wait_for(self.stream_idle.wait(), 0.5)
            except asyncio.TimeoutError:
                pass
        await asyncio.to_thread(lambda: [v.flush() for v in self.volumes.values()])
        log.warning("group %s: planned swap to epoch %d: writes stopped at PSEQ %d, all ACKed",
                    self.cfg.grname, epoch, self.last_pseq)
        return {"last_pseq": self.last_pseq}

    def swap_cancel(self) -> None:
        self.swapping = 0

    def become_restore(self, epoch: int, restored: int) -> None:
        """Swap, last step here: the restore side at ``epoch``, the PVOLs holding
        every journal up to the relay's SEQ# ``restored`` (they hold all this
        site wrote, all ACKed and made durable by ``swap_out``).  Durable in
        the JNLG table (GRATTR RESTORE); the site process restarts into it."""
        from ..secondary.site import RestoreState
        if self.jnlg.grattr == "RESTORE":
            return
        if epoch <= self.epoch or (self.fenced and self.jnlg.fence_epoch != epoch):
            raise ControlError(f"group {self.cfg.grname}: no swap to epoch {epoch} from epoch "
                               f"{self.epoch} (fenced at {self.jnlg.fence_epoch})")
        state = RestoreState(self.site.state_dir / f"{self.cfg.grname}.restored")
        state.save(restored, restored, tag=self.last_pseq)
        (self.site.state_dir / f"{self.cfg.grname}.written").unlink(missing_ok=True)
        self.jnlg.grattr = "RESTORE"
        self.jnlg.epoch = self.jnlg.fence_epoch = epoch
        self.jnlg.consistent_seq = restored
        self.jnlg.takeover = {}
        self.jnlg.set_state("PAIR")
        self._table.save()
        log.warning("group %s: swapped: the restore side from now on (epoch %d, SEQ# %d)",
                    self.cfg.grname, epoch, restored)

    # -- failback (host/rcm/failback.py): this site is the old primary ----------------

    def fence_for(self, epoch: int) -> dict:
        """The RCM tells this site what the relay would: the group was taken over
        at ``epoch``.  A SUSP group never connects and would not learn it."""
        if not self.fenced or self.jnlg.fence_epoch < epoch:
            self._fence(epoch)
        return self.divergent()

    def divergent(self) -> dict:
        """The chunks where this PVOL may hold what the site that took over does
        not: writes never ACKed by the relay, and what an unclean stop left
        (both are in the copy bitmap, see _suspend and _after_unclean_stop)."""
        return {"chunk": self.bitmap.chunk, "fence_epoch": self.jnlg.fence_epoch,
                "epoch": self.epoch,
                "chunks": {str(i): self.bitmap.chunks(i) for i in self.volumes}}

    def write_fenced(self, idx: int, offset: int, data: bytes) -> None:
        """A failback's delta, straight to the PVOL: only while fenced (no host
        write, no journal; the copy bitmap keeps every divergent chunk until
        ``rejoin``, so a failback run again after a crash sends them again)."""
        if not self.fenced:
            raise ControlError(f"group {self.cfg.grname} is not fenced: a failback writes "
                               f"only to a fenced old primary")
        self.volume(idx).write(offset, data)

    def rejoin(self, epoch: int, relay_last_tag: int) -> None:
        """Failback, last step: the primary again, at ``epoch``, PVOL == SVOL.

        The relay released what it held and moved to ``epoch``; journals
        continue after its last PSEQ.  The delta is on the PVOLs (flushed by
        the RCM before), so the copy bitmap and the activity log start empty.
        """
        if not self.fenced and self.epoch == epoch:
            return                        # done before (a failback run again)
        if not self.fenced or epoch <= self.jnlg.fence_epoch:
            raise ControlError(f"group {self.cfg.grname}: no failback to epoch {epoch} from "
                               f"epoch {self.epoch} (fenced at {self.jnlg.fence_epoch})")
        self._copy_gen += 1               # a copy the fence interrupted does not resume
        if self._copy_task is not None:
            self._copy_task.cancel()
        for _, _, fut in self.stream.drop_all():      # none: _fence suspended the group
            if not fut.done():
                fut.set_exception(GroupFenced(f"group {self.cfg.grname} is fenced"))
        self.stream.rebase(relay_last_tag)
        self._log_reset()
        self.stream.clear_faults()
        self.bitmap.clear_all()
        self.bitmap.save()
        self.jnlg.lost_to_secondary = False
        self.al.hot.clear()
        self.unclean = []
        self.al.forget_unclean()          # saves the (empty) activity log
        self._ready.set()
        self.dirty.clear()
        self.split = self.tracking = False
        self.jnlg.epoch = epoch
        self.jnlg.fence_epoch = epoch
        self.jnlg.set_state("PAIR")
        self._table.save()
        log.warning("group %s: failed back: the primary again at epoch %d, journals from PSEQ %d",
                    self.cfg.grname, epoch, relay_last_tag + 1)

    def pair_create(self) -> None:
        """PAIR_CREATE (patent [0053]): SMPL -> COPY, full base copy of every PVOL."""
        self._refuse_if_fenced()
        if self.grsts != "SMPL":
            raise ControlError(f"group {self.cfg.grname} is {self.grsts}: pair create needs "
                               f"SMPL (pair delete first)")
        self.bitmap.set_all()
        self.bitmap.save()
        for d in self.jnlg.dvols:
            d.bjptr = 0
        self.jnlg.lost_to_secondary = False      # whatever the relay lost is moot now
        self.split = self.tracking = False
        # A full copy follows: whatever the relay lost before is moot.
        self.acked_hwm = 0
        self.log.save_state(0)
        self._set_state("COPY")
        self._start_copy()

    def pair_split(self) -> None:
        """PAIR/COPY -> SUSP: journals in flight complete, later writes go to the bitmap."""
        if self.grsts not in ("PAIR", "COPY"):
            raise ControlError(f"group {self.cfg.grname} is {self.grsts}: only a PAIR or "
                               f"COPY group can be split")
        self.split = True
        self._set_state("SUSP", "split by the operator")

    def pair_resync(self, relay_last_tag: int | None = None,
                    restored_tag: int | None = None, full: bool = False) -> None:
        """SUSP -> COPY of the chunks in the copy bitmap only (delta resync), then PAIR.

        ``restored_tag``: the secondary's restore point as a PSEQ, for a relay
        that came back empty (``lost_to_secondary``): the regions written after
        it are what the secondary lacks.  ``full``: every chunk (the relay's
        copy lacks journals already released, host/relay/local_copy.py).
        """
        self._refuse_if_fenced()
        if self.grsts != "SUSP":
            raise ControlError(f"group {self.cfg.grname} is {self.grsts}: only a SUSP group "
                               f"can be resynced")
        if self.jnlg.lost_to_secondary:
            self._mark_lost_to_secondary(restored_tag)
        if full:
            self.bitmap.set_all()
            self.bitmap.save()
            log.warning("group %s: resync of every chunk (the relay's copy lacks journals "
                        "already released)", self.cfg.grname)
        if not self.split and not self.pending and relay_last_tag is not None:
            # An error suspension dropped journals the relay never took: the
            # next PSEQ must follow the relay's last one or it sees a gap.
            self.stream.rebase(relay_last_tag)
            self._log_reset()     # and so must it after a restart
        self.split = self.tracking = False
        self.stream.clear_faults()
        self.dirty.clear()
        self._set_state("COPY")
        self._start_copy()

    def _mark_lost_to_secondary(self, restored_tag: int | None) -> None:
        """The relay lost every journal: mark what the secondary lacks, computed
        before the stream is rebased (the secondary's PSEQ is of this stream)."""
        usable = restored_tag is not None and not tag_after(restored_tag, self.last_pseq)
        regions = self.regions.after(restored_tag) if usable else None
        if regions is None:
            self.bitmap.set_all()
            how = (f"the region table does not go back to the secondary's restore point "
                   f"(PSEQ {restored_tag}): every chunk is copied (full copy)"
                   if restored_tag is not None else
                   "the secondary's restore point is unknown: every chunk is copied (full copy)")
        else:
            for idx, offset, length in regions:
                self.bitmap.mark(idx, offset, length)
            how = (f"{len(regions)} regions of {self.regions.region >> 10} KiB written after the "
                   f"secondary's restore point (PSEQ {restored_tag}) are copied (delta resync)")
        self.bitmap.save()
        self.jnlg.lost_to_secondary = False
        self._table.save()
        log.warning("group %s: resync after the relay lost its journals: %s", self.cfg.grname, how)

    def pair_delete(self) -> None:
        """Any state -> SMPL: the pair is gone, writes stay local, the bitmap is cleared."""
        self._copy_gen += 1
        if self._copy_task is not None:
            self._copy_task.cancel()
        self.bitmap.clear_all()
        self.bitmap.save()
        for d in self.jnlg.dvols:
            d.bjptr = 0
        self.jnlg.lost_to_secondary = False      # whatever the relay lost is moot now
        self.split = self.tracking = False
        self.dirty.clear()
        self._set_state("SMPL")

    def status(self) -> dict:
        return {"grnum": self.cfg.grnum, "grname": self.cfg.grname, "attr": "MASTER",
                "grsts": self.grsts, "reason": self.reason, "blocked": self.blocked,
                "epoch": self.epoch, "fenced": self.fenced, "fence_epoch": self.jnlg.fence_epoch,
                "relay_in_use": self.jnlg.relay_in_use,
                "standby_configured": self.cfg.standby is not None,
                "activity_extents": self.al.listed, "activity_saves": self.al.saves,
                "pvol_syncs": self.pvol_syncs, "unclean_extents": len(self.unclean),
                "reconnects": self.reconnects, "suspensions": self.suspensions,
                "volume_bytes": {str(i): n for i, n in self.volume_bytes.items()},
                "copied_bytes": self.copied_bytes, "copy_restarts": self.copy_restarts,
                "copy_error": self.copy_error,
                "pending": len(self.pending), "acked": self.acked, "resent": self.resent,
                "full_probes": self.full_probes, "last_pseq": self.last_pseq,
                "acked_pseq": self.acked_hwm, "acked_saved": self.log.saved_acked,
                "swap_blocker": swap_problem(self.site, self.cfg), "swapping": self.swapping,
                "write_log_bytes": self.log.size,
                "write_log_segments": len(self.log.segments),
                "write_log_first": self.log.first_tag,     # its oldest PSEQ (0: none)
                "dirty_extents": len(self.dirty),
                "split": self.split, "tracking": self.tracking, "copy_chunk": self.bitmap.chunk,
                "copy_full_chunks": sum(self.bitmap.nchunks(i) for i in self.volumes),
                "copy_total": self.copy_total, "copy_done": self.copy_done,
                "copy_writes": self.copy_writes,
                "copy_pending_bytes": self.bitmap.count() * self.bitmap.chunk,
                "dvols": [{"idx": d.idx, "volname": d.volname, "volsts": d.volsts,
                           "bjptr": d.bjptr, "blocks": d.size // d.block_size, "size": d.size}
                          for d in self.jnlg.dvols],
                "connected": self.link is not None and not self.link.closed}


class Primary:
    """The primary site process: MASTER groups and the control socket (host writes)."""

    def __init__(self, cfg: SiteConfig):
        self.cfg = cfg
        self.groups: dict[int, MasterGroup] = {}
        self.control = ControlServer({
            "status": self._status, "write": self._write, "write_zeroes": self._zeroes,
            "trim": self._trim, "flush": self._flush, "read": self._read,
        })
        self.control.handlers.update({       # pair management (host/rcm/pairs.py)
            "jnlg": self._jnlg, "pair_create": self._pair, "pair_split": self._pair,
            "pair_resync": self._pair, "pair_delete": self._pair,
            "digest": self._digest, "mark_out_of_sync": self._mark_out_of_sync,
            "fence": self._fence_cmd, "write_fenced": self._write_fenced,
            "rejoin": self._rejoin, "use_relay": self._use_relay, "swap_out": self._swap_out,
            "swap_cancel": self._swap_cancel, "become_restore": self._become_restore,
        })
        # Set once a swap made this site the restore side: the process
        # restarts into that role (host/sites_cli.py).
        self.restart = asyncio.Event()

    def _group_of(self, idx: int) -> MasterGroup:
        for g in self.groups.values():
            if idx in g.volumes:
                return g
        raise VolumeError(f"no PVOL with idx {idx}")

    async def write(self, idx: int, offset: int, data: bytes) -> int | None:
        return await self._group_of(idx).journal(Kind.UPDATE, idx, offset, len(data), data)

    async def write_zeroes(self, idx: int, offset: int, length: int) -> int | None:
        return await self._group_of(idx).journal(Kind.ZERO, idx, offset, length)

    async def trim(self, idx: int, offset: int, length: int) -> int | None:
        return await self._group_of(idx).journal(Kind.TRIM, idx, offset, length)

    async def flush(self) -> None:
        for g in self.groups.values():
            await g.flush()

    async def aclose(self) -> None:
        """Clean stop (SIGTERM): write logs and PVOLs made durable, then closed."""
        for g in self.groups.values():
            if g.link is not None:
                await g.link.close()
            try:
                await g.flush()
                g._al_writer.close()   # a save still in its thread ends before this one
                if not g.pending:      # everything ACKed and on the PVOLs: nothing may differ
                    g.al.hot.clear()
                    g.al.save()
            except OSError as exc:
                log.warning("group %s: flush at stop: %s", g.cfg.grname, exc)
            g.log.close()
            for vol in g.volumes.values():
                vol.close()

    async def _write(self, req: Request) -> dict:
        data = req.data()              # (not base64 was answered as type "Error": fuzzing)
        return {"pseq": await self.write(req.integer("idx"), req.integer("offset"), data)}

    async def _zeroes(self, req: Request) -> dict:
        return {"pseq": await self.write_zeroes(req.integer("idx"), req.integer("offset"), req.integer("length"))}

    async def _trim(self, req: Request) -> dict:
        return {"pseq": await self.trim(req.integer("idx"), req.integer("offset"), req.integer("length"))}

    async def _flush(self, req: Request) -> dict:
        await self.flush()
        return {}

    async def _read(self, req: Request) -> dict:
        idx = req.integer("idx")
        data = self._group_of(idx).volume(idx).read(req.integer("offset"), req.integer("length"))
        return {"data": base64.b64encode(data).decode()}

    async def _jnlg(self, req: Request) -> dict:
        return JnlgTable.for_site(self.cfg.state_dir).to_json(self.cfg.site)

    async def _digest(self, req: Request) -> dict:
        """``tricopy verify``: chunk digests and the PSEQ they stand at (no await in between)."""
        from ..rcm.verify import chunk_digests
        g = self._named(req.text("group"))
        count = min(req.integer("count"), 256)
        digests = chunk_digests(g.volume(req.integer("idx")), req.integer("first"), count)
        return {"pseq": g.last_pseq, "digests": digests}

    async def _mark_out_of_sync(self, req: Request) -> dict:
        """``tricopy verify --mark``: chunks found different go to the copy bitmap,
        so the next ``pair split`` + ``pair resync`` sends them."""
        g = self._named(req.text("group"))
        idx = req.integer("idx")
        size, chunks = g.volume(idx).size, req.integers("chunks")
        if any(c * g.bitmap.chunk >= size for c in chunks):
            raise ArgumentError(f"mark_out_of_sync: a chunk in 'chunks' is past the end of "
                                f"volume {idx} ({-(-size // g.bitmap.chunk)} chunks); send "
                                f"chunk numbers that `tricopy verify` reported")
        for c in chunks:
            g.bitmap.mark(idx, c * g.bitmap.chunk, 1)
        g.bitmap.save()
        return {"copy_pending_bytes": g.bitmap.count() * g.bitmap.chunk}

    async def _fence_cmd(self, req: Request) -> dict:
        return self._named(req.text("group")).fence_for(req.integer("epoch"))

    async def _write_fenced(self, req: Request) -> dict:
        g = self._named(req.text("group"))
        if "data" in req:
            g.write_fenced(req.integer("idx"), req.integer("offset"), req.data())
        if req.flag("flush"):
            await asyncio.to_thread(lambda: [v.flush() for v in g.volumes.values()])
        return {}

    async def _swap_out(self, req: Request) -> dict:
        return await self._named(req.text("group")).swap_out(req.integer("epoch"))

    async def _swap_cancel(self, req: Request) -> dict:
        self._named(req.text("group")).swap_cancel()
        return {}

    async def _become_restore(self, req: Request) -> dict:
        g = self._named(req.text("group"))
        g.become_restore(req.integer("epoch"), req.integer("restored"))
        return {"role": "secondary", "_after": self.restart.set}

    async def _use_relay(self, req: Request) -> dict:
        g = self._named(req.text("group"))
        await g.use_relay(req.text("relay"), req.integer("epoch"))
        return {"relay_in_use": g.jnlg.relay_in_use, "epoch": g.epoch, "last_pseq": g.last_pseq}

    async def _rejoin(self, req: Request) -> dict:
        g = self._named(req.text("group"))
        g.rejoin(req.integer("epoch"), req.integer("relay_last_tag"))
        return {"grsts": g.grsts, "epoch": g.epoch}

    def _named(self, grname: str) -> MasterGroup:
        for g in self.groups.values():
            if g.cfg.grname == grname:
                return g
        raise ControlError(f"no MASTER group named {grname!r} at the primary")

    async def _pair(self, req: Request) -> dict:
        g = self._named(req.text("group"))
        op = req["cmd"]
        if op == "pair_resync":
            g.pair_resync(req.integer("relay_last_tag", None), req.integer("restored_tag", None),
                          req.flag("full"))
        else:
            getattr(g, op)()
        return {"grsts": g.grsts}

    async def _status(self, req: Request) -> dict:
        return {"site": self.cfg.site, "role": "primary",
                "groups": [g.status() for g in self.groups.values()], "perf": PERF.to_json()}

    async def run(self) -> None:
        for g in self.cfg.groups:
            if g.attr is GroupAttr.MASTER:
                self.groups[g.grnum] = MasterGroup(g, self.cfg)
        if not self.groups:
            raise ValueError("primary config has no MASTER group")
        if self.cfg.control:
            await self.control.start(self.cfg.control, self.cfg)
        if self.cfg.metrics:
            from ..rcm.metrics import SiteCollector, serve_metrics
            self.metrics = await serve_metrics(self.cfg.metrics, SiteCollector(
                "primary", self.cfg.site, lambda: [g.status() for g in self.groups.values()]))
        if self.cfg.nbd is not None:     # hosts reach the PVOLs over NBD (docs/nbd.md)
            from ..nbd.primary_export import primary_exports, serve_site_volumes
            self.nbd = await serve_site_volumes(self.cfg.nbd, primary_exports(self.groups.values()))
        log.info("primary %s up, %d group(s)", self.cfg.site, len(self.groups))
        await asyncio.gather(*(g.run_link() for g in self.groups.values()))
