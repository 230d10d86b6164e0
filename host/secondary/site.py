"""The secondary site: receive journals from the relay, restore them to SVOLs.

Patent Fig. 10: journals are restored strictly in sequence order (IDX picks
the SVOL, ADDRESS/LENGTH the place), never past a gap.  What this adds:

* every journal is verified on arrival (CCRC of the control data, DATA_CRC of
  the data, kind rules, group and epoch); a bad one closes the link and
  nothing from it is staged — the relay resends from our resume point;
* the restore point (last restored SEQ#) is persisted atomically, *after* the
  SVOL data it covers is fsynced, so a restart neither loses nor re-orders;
* the cumulative ACK to the relay carries that persisted point: the relay
  frees a journal only once it is on the SVOL for good;
* replay is idempotent: a journal with SEQ# <= the restore point is skipped
  (and ACKed), so a relay that resends after a crash is harmless.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import shutil
import time
from pathlib import Path

from ..wire import protocol
from ..config import GroupAttr, GroupConfig, SiteConfig, swap_problem
from ..rcm.control import ControlError, ControlServer, Request
from ..wire import tls
from ..rcm.jnlg import COPY_CHUNK, GRSTS, NEVER, CopyBitmap, JnlgTable
from ..wire.link import Link, LinkError, nak
from ..wire.protocol import FrameType, Kind, Role, Status
from ..disk.inline import InlineWindow
from ..disk.worker import BlockingWorker
from ..waits import wait_at_most
from ..disk.slotfile import SlotFile
from ..disk.volume import Volume, VolumeError
from ..wire.pseq import tag_after
from ..perf import PERF, now
from .stream import RestoreStream
from ..native import NativeUnavailable

__all__ = ["RestoreState", "RestoreGroup", "Secondary"]

log = logging.getLogger(__name__)

# Bytes staged in memory before the secondary stops reading (TCP backpressure).
STAGE_LIMIT = 64 << 20
# The restore point is saved (SVOL fsync + state file) at most this often while
# journals keep coming, or after this many journals (the relay sends at most
# 1024 unACKed), instead of after every restore batch: the profile showed
# those fsyncs as half the secondary's time.  An idle group saves at once.
RESTORE_POINT_PERIOD = 0.05
RESTORE_POINT_JOURNALS = 256
_RUN_BYTES = 256 << 10          # a run's bytes per pwritev (a larger one measured slower)
_RUN_MAX = 512                 # buffers per restore pwritev (the kernel takes up to IOV_MAX, 1024)
RESTORE_STEP = 64              # journals applied between two looks at the event loop
# An apply mark is saved at most this often while the staged run past it is
# shorter than MARK_RUN: at low depth each journal came alone and needed a
# mark of its own (a state file write, two fsyncs and a rename per journal,
# competing for the disk with the relay's fdatasync that the host waits on).
# Applying waits up to this long instead, which only delays the restore.
MARK_PERIOD = 0.02
MARK_RUN = 64


class _RunFailed(Exception):
    """A run of adjacent journals could not be restored; ``seq``: its first."""

    def __init__(self, seq: int, exc: VolumeError):
        super().__init__(seq, exc)
        self.seq, self.exc = seq, exc


class RestoreState:
    """The persisted restore point of one group.

    ``{"last_seq": R, "epoch": E, "mark": M, "time": T}``: the SVOLs hold
    every journal up to R durably (T is journal R's TIME, for takeover
    reports), and nothing past M was ever applied to them.  M (the
    *apply mark*) is saved before any journal past the previous mark is
    applied, so after a crash at any moment the SVOLs hold R, plus some of
    R+1..M, possibly torn.  Replaying R+1..M in order rewrites all of them;
    until the replay passes M the SVOLs are not a prefix of anything and the
    group says so (``RestoreGroup.catching_up``).
    """

    def __init__(self, path: Path):
        self.path = path
        self.last_seq = 0
        self.mark = 0
        self.epoch = 0
        self.time = 0
        self.tag = 0
        # Saved in place (two slots, one write and one fdatasync): it is saved
        # at every apply mark and checkpoint, many times a second under load.
        self._file = SlotFile(path)
        raw = self._file.load()      # (SlotFileCorrupt is a ValueError naming the file)
        if raw is not None:
            try:
                doc = json.loads(raw)
                self.last_seq = int(doc["last_seq"])
                self.epoch = int(doc.get("epoch", 0))
                self.time = int(doc.get("time", 0))
                self.tag = int(doc.get("tag", 0))
                self.mark = max(self.last_seq, int(doc.get("mark", self.last_seq)))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"restore state {path} is corrupt: {exc}") from None

    def save(self, last_seq: int, mark: int | None = None, time: int | None = None,
             tag: int | None = None) -> None:
        # The file is either the old state or the new one (SlotFile).
        mark = max(last_seq, self.mark if mark is None else mark)
        time = self.time if time is None else time
        tag = self.tag if tag is None else tag
        self._file.save(json.dumps({"last_seq": last_seq, "epoch": self.epoch, "mark": mark,
                                    "time": time, "tag": tag}).encode())
        self.last_seq, self.mark, self.time, self.tag = last_seq, mark, time, tag

    def doc(self) -> dict:
        """The state as saved (what ``tricopy`` tools and tests read)."""
        return {"last_seq": self.last_seq, "epoch": self.epoch, "mark": self.mark,
                "time": self.time, "tag": self.tag}


class RestoreGroup:
    """A RESTORE journal group: its SVOLs, staged journals and restore point.

    ``grsts`` is the group status (patent Fig. 5, GRSTS): PAIR while
    restoring, SUSP with ``reason`` when a journal cannot be applied.
    """

    def __init__(self, cfg: GroupConfig, site: SiteConfig):
        self.cfg = cfg
        self.site = site
        self.volumes = {v.idx: Volume(v.path, v.size, v.block_size, idx=v.idx)
                        for v in site.volumes_of(cfg.grnum)}
        site.state_dir.mkdir(parents=True, exist_ok=True)
        self.state = RestoreState(site.state_dir / f"{cfg.grname}.restored")
        # The JNLG row holds the pair state the RCM set, ``consistent_seq``
        # (the SVOLs are a consistent image once restored up to it), the
        # group's epoch and, after a takeover, what this site took over.
        self._table = JnlgTable.for_site(site.state_dir)
        self.jnlg = self._table.attach(cfg, site.volumes_of(cfg.grnum))
        # The rules (sans I/O): staging, apply order, apply mark, stream checks.
        self.stream = RestoreStream(cfg.grnum, self.jnlg.epoch, restored=self.state.last_seq,
                                    mark=self.state.mark)
        # A crash may have left R+1..mark partly applied: replay them before
        # calling the SVOLs consistent again (RestoreState).
        if self.replay_to:
            log.warning("group %s: restarted with SEQ# %d..%d possibly half applied; the SVOLs "
                        "are not consistent until the relay's journals replay past %d",
                        cfg.grname, self.state.last_seq + 1, self.replay_to, self.replay_to)
        self._touched: set[Volume] = set()
        self._checkpoint_at = 0.0      # monotonic time of the last saved restore point
        self._mark_at = 0.0            # ... and of the last saved apply mark
        self._last_time = self.state.time     # TIME of the journal at ``applied``
        self.applied_tag = self.state.tag     # its PSEQ (TAG): where verify compares
        self._applied_more = asyncio.Event()
        self.grsts = "PAIR"     # the restorer's own verdict: SUSP when a journal cannot apply
        self.reason = ""
        # After a takeover: the chunks written here, for the failback's delta
        # (saved before a write may reach them, see write_local).
        chunk = max([COPY_CHUNK] + [v.block_size for v in self.volumes.values()])
        sizes = {i: v.size for i, v in self.volumes.items()}
        self.written = CopyBitmap(site.state_dir / f"{cfg.grname}.written", sizes, chunk)
        self._written_durable = CopyBitmap(None, sizes, chunk)    # what is known saved
        self._written_durable.bits = {i: bytearray(b) for i, b in self.written.bits.items()}
        self._written_lock = asyncio.Lock()
        self._restore_lock = asyncio.Lock()    # snapshots sit between restore steps
        self.link: Link | None = None
        self.accepts = 0                 # relay connections taken, for metrics
        self.hellos_refused = 0          # unauthenticated HELLOs refused (plaintext links)
        self.last_refused = ""
        self._wake = asyncio.Event()
        # The apply mark and checkpoint saves (an fdatasync or two each) run
        # in the event loop while the disk is fast, else in a thread
        # (host/disk/inline.py): a thread hand-off cost more CPU than the save.
        self._saves = InlineWindow()
        self._saver = BlockingWorker(f"saves-{cfg.grname}")
        self._room = asyncio.Event()
        self._room.set()
        self._asleep = False            # the restorer waits for a due time or a wake
        self._sleep_until: float | None = None
        # The native loop on the current relay link, when the site runs it
        # (host/native/restore.py): it stages journals outside ``stream``.
        self.native = None
        self.stage_limit = STAGE_LIMIT
        self._native_off = ""           # why the loop cannot run (said once)

    @property
    def last_restored(self) -> int:
        return self.state.last_seq

    # The stream's numbers, for status, snapshots and tests.
    applied = property(lambda self: self.stream.applied, doc="applied to the SVOLs so far")
    replay_to = property(lambda self: self.stream.replay_to)
    staged = property(lambda self: self.stream.staged)
    catching_up = property(lambda self: self.stream.catching_up)

    def verify(self, body: bytes) -> tuple[protocol.Control, bytes]:
        return self.stream.verify(body)

    def gap(self) -> int | None:
        return self.stream.gap()

    def mark_due(self) -> int | None:
        return self.stream.mark_due()

    @property
    def epoch(self) -> int:
        return self.jnlg.epoch

    def refuse_relay(self, hello: protocol.Hello) -> str | None:
        if self.taken_over:
            t = self.taken_over
            return (f"group {self.cfg.grname} was taken over here at epoch {t['epoch']} "
                    f"(SEQ# {t['seq']}): this site is its primary now and takes no relay stream "
                    f"(the relay at epoch {hello.epoch})")
        return self.stream.refuse(hello)

    async def stage(self, ctl: protocol.Control, data: bytes) -> None:
        # Bounded memory: past STAGE_LIMIT the link stops reading (TCP backpressure).
        # (the native loop's staged journals count too: they come first)
        while (self.stream.staged_bytes + (self.native.rx.staged_bytes if self.native else 0)
               > STAGE_LIMIT and ctl.seq > self.stream.applied):
            self._room.clear()
            await self._room.wait()
        if self.stream.receive(ctl, data):
            self._wake.set()

    def staged_more(self) -> None:
        """The native loop staged journals: the restorer looks, unless it sleeps
        until a due time anyway and nothing of them can go before it (the
        mark, paced by MARK_PERIOD, is what they wait for).  A turn of the
        restorer per frame cost more than the loop saved at depth 1."""
        st = self.stream
        if (not self._asleep or self._sleep_until is None or st.applied < st.mark
                or st.ext_end - st.applied >= MARK_RUN):
            self._wake.set()

    def attach_native(self, link: Link):
        """Put the native loop under ``link`` if this site runs it (``native``)
        and it can run here; None: the Python path serves the link."""
        if not self.site.native or self._native_off:
            return None
        from ..native.restore import NativeRestore
        if self.native is not None:
            self.native.close()         # the old link's: its journals go first
        try:
            self.native = NativeRestore.from_link(self, link)
        except (NativeUnavailable, RuntimeError, TypeError, AttributeError, OSError) as exc:
            self._native_off = str(exc)
            log.warning("group %s: the native restore loop is off (%s); the Python path "
                        "serves the relay link", self.cfg.grname, exc)
            return None
        return self.native

    def detach_native(self, native) -> None:
        native.close()
        if self.native is native:
            self.native = None

    def _restore_native(self, limit: int | None) -> int:
        """Apply journals the native loop staged (those come first); how many."""
        first = self.stream.applied
        upto = self.stream.take_external(limit)
        if not upto:
            return 0
        t0 = now()
        applied, t, tag, touched, err = self.native.apply(upto)
        for idx in touched:
            self._touched.add(self.volumes[idx])
        if applied:
            self._last_time = t
            if tag:
                self.applied_tag = tag
        if err is not None:
            seq, code = err
            # As a failed run of the Python path: neither it nor any after it
            # counts as applied, and its extent may hold part of the write.
            self.stream.not_applied(seq)
            self.grsts = "SUSP"
            self.reason = (f"writing journal seq {seq} to its SVOL failed: {os.strerror(code)}; "
                           f"fix the SVOL's device, then run `tricopy pair resync`")
            log.error("group %s suspended: %s", self.cfg.grname, self.reason)
            # The loop stays on the link, as the Python path's staging does:
            # it stages until full and then stops reading; a resync's rebase
            # drops what it holds (reset).
        self._room.set()
        self._applied_more.set()
        PERF["secondary.apply_step"].add(now() - t0)
        PERF["secondary.apply_step_journals"].add(upto - first)
        return upto - first

    def _volume(self, ctl: protocol.Control) -> Volume:
        vol = self.volumes.get(ctl.idx)
        if vol is None:
            raise VolumeError(f"journal seq {ctl.seq} names IDX {ctl.idx}, not an SVOL here")
        return vol

    def _write_run(self, run: list) -> None:
        """Restore a run of adjacent data journals: one write for them all."""
        first = run[0][0]
        try:
            vol = self._volume(first)
            if len(run) == 1:
                vol.write(first.address, run[0][1])
            else:
                vol.writev(first.address, [data for _, data in run])
        except VolumeError as exc:
            raise _RunFailed(first.seq, exc) from None
        self._touched.add(vol)
        self._applied_one(run[-1][0])

    def _applied_one(self, ctl: protocol.Control) -> None:
        self._last_time = ctl.time
        if ctl.tag:
            self.applied_tag = ctl.tag

    def _apply(self, ctl: protocol.Control, data: bytes) -> Volume:
        vol = self._volume(ctl)
        if ctl.kind in protocol.DATA_KINDS:
            vol.write(ctl.address, data)
        elif ctl.kind == Kind.ZERO:
            vol.write_zeroes(ctl.address, ctl.length)
        elif ctl.kind == Kind.TRIM:
            vol.trim(ctl.address, ctl.length)
        elif ctl.kind == Kind.MARK:
            self._copy_marker(ctl)
        return vol    # MARK: no volume effect

    def _copy_marker(self, ctl: protocol.Control) -> None:
        """A copy at the primary begins or ends, in SEQ# order with its journals.

        From COPY_BEGIN the base journals overwrite chunks out of write order,
        so the SVOLs are no image until COPY_END: consistent from that SEQ#.
        Saved at once, before any later journal is applied.  The primary
        starts such a copy on its own after an unclean stop (its activity
        log); ``pair create``/``resync`` set the same through the RCM.
        """
        # ``consistent_seq`` at or past a mark's SEQ# (not NEVER) was set by the
        # RCM's `pair sync` after this copy was ACKed (it waits for PAIR at the
        # primary, then takes the relay's last SEQ#): applying can come later
        # (it waits for an apply mark), and then the copy's marks change nothing.
        if (ctl.address == protocol.Mark.COPY_BEGIN and self.jnlg.consistent_seq != NEVER
                and self.jnlg.consistent_seq < ctl.seq):
            log.warning("group %s: a copy begins at SEQ# %d: the SVOLs are no consistent image "
                        "until it ends", self.cfg.grname, ctl.seq)
            self.jnlg.set_state("COPY")
            self.jnlg.consistent_seq = NEVER
            self._table.save()
        elif ctl.address == protocol.Mark.COPY_END and self.jnlg.grsts in ("COPY", "PAIR"):
            log.info("group %s: the copy ended at SEQ# %d: consistent from there",
                     self.cfg.grname, ctl.seq)
            self.jnlg.set_state("PAIR")
            # Keep the RCM's if it came first (above): the group then says
            # what `pair sync` returned, whichever came first.
            if self.jnlg.consistent_seq == NEVER or self.jnlg.consistent_seq < ctl.seq:
                self.jnlg.consistent_seq = ctl.seq
            self._table.save()

    def save_mark(self, mark: int) -> None:
        """Persist the apply mark: nothing past it is applied before this returns."""
        self.state.save(self.state.last_seq, mark)
        self.stream.mark_saved(mark)
        self._mark_at = time.monotonic()

    def mark_wait(self, now: float) -> float | None:
        """Seconds until the due apply mark may be saved (0: now), None if none is
        due (MARK_PERIOD, MARK_RUN)."""
        mark = self.mark_due()
        if mark is None:
            return None
        if mark - self.applied >= MARK_RUN:
            return 0.0
        return max(0.0, self._mark_at + MARK_PERIOD - now)

    def restore(self, limit: int | None = None) -> int:
        """Apply what the stream hands out (at most ``limit`` journals, never past
        a gap or the apply mark); return how many were applied.

        The restore point is not moved: :meth:`checkpoint` does that.
        """
        if self.grsts == "SUSP" or self.taken_over:
            return 0
        if self.native is not None and (n := self._restore_native(limit)):
            return n
        batch = self.stream.take(limit)
        t0 = now()
        # A run of data journals each starting where the one before ends on
        # the same SVOL goes out as one pwritev.  Order is kept: a run is
        # written before any journal after it is applied, and within a run
        # the ranges follow each other without overlap.  A journal counts as
        # applied (TIME, TAG) only once its bytes are written.
        run: list = []                 # (control data, data) of the run
        run_end = 0
        ctl = None
        try:
            for ctl, data in batch:
                if ctl.kind in protocol.DATA_KINDS:
                    if run and (ctl.address != run_end or ctl.idx != run[0][0].idx
                                or run_end - run[0][0].address >= _RUN_BYTES
                                or len(run) == _RUN_MAX):
                        self._write_run(run)
                        run = []
                    run.append((ctl, data))
                    run_end = ctl.address + len(data)
                    continue
                if run:
                    self._write_run(run)
                    run = []
                self._touched.add(self._apply(ctl, data))
                self._applied_one(ctl)
            if run:
                self._write_run(run)
        except _RunFailed as failed:
            # The run's first journal and those after it may not be on the
            # SVOLs: the restore point must never cover them.
            self.stream.not_applied(failed.seq)
            self.grsts, self.reason = "SUSP", str(failed.exc)
            log.error("group %s suspended: %s", self.cfg.grname, failed.exc)
        except VolumeError as exc:
            # The journal that failed and those after it are not on the SVOLs:
            # the restore point must never cover them.
            self.stream.not_applied(ctl.seq)
            self.grsts, self.reason = "SUSP", str(exc)
            log.error("group %s suspended: %s", self.cfg.grname, exc)
        self._room.set()
        if self.native is not None and not self.stream.staged:
            self.native.after_python()      # the loop may stage the next ones again
        if batch:
            self._applied_more.set()
            PERF["secondary.apply_step"].add(now() - t0)
            PERF["secondary.apply_step_journals"].add(len(batch))
        return len(batch)

    def checkpoint_due(self, now: float) -> float | None:
        """Seconds until the restore point should be saved (0: now), None if up to date."""
        if self.applied == self.last_restored:
            return None
        if self.applied - self.last_restored >= RESTORE_POINT_JOURNALS:
            return 0.0
        return max(0.0, self._checkpoint_at + RESTORE_POINT_PERIOD - now)

    def checkpoint(self) -> bool:
        """Save the restore point at ``applied``; False if it was up to date.

        SVOL data first, then the point that covers it: a crash in between
        leaves the old point, and the relay re-sends journals that are then
        applied again, in order, over SVOLs that already hold some of them,
        which ends in the same image.  On the way there the image is torn;
        the apply mark (saved before those journals were first applied)
        makes the group say so until the replay passes it.
        """
        if self.applied == self.last_restored:
            return False
        seq, touched, self._touched = self.applied, self._touched, set()
        t0 = now()
        PERF["secondary.checkpoint_journals"].add(seq - self.last_restored)
        for vol in touched:
            vol.flush()           # SVOL data durable before the point that covers it
        self.state.save(seq, time=self._last_time, tag=self.applied_tag)
        self.stream.restored_saved(seq)
        self._checkpoint_at = time.monotonic()
        PERF["secondary.checkpoint"].add(now() - t0)    # SVOL fsyncs + restore point (thread)
        return True

    async def restorer(self, interval: float) -> None:
        """Restore continuously (interval 0) or every ``interval`` seconds.

        Continuously, the restore point is saved when :meth:`checkpoint_due`
        says so; with an interval, after every restore step.
        """
        while True:
            if interval:
                await asyncio.sleep(interval)
            else:
                t = time.monotonic()
                dues = [d for d in (self.checkpoint_due(t), self.mark_wait(t)) if d is not None]
                due = min(dues) if dues else None
                self._asleep = due is None or due > 0
                self._sleep_until = None if due is None else t + due
                if due is None:
                    await self._wake.wait()
                elif due > 0:
                    await wait_at_most(self._wake, due)   # (ends on most received batches)
                self._asleep = False
                self._wake.clear()
            async with self._restore_lock:
                # Applying is pwrite to the page cache: done here in steps, as a
                # thread hop per batch cost more than the writes.  The fsyncs of
                # the apply mark and the checkpoint run here while the disk is
                # fast, else in a thread so the link keeps receiving (and the
                # next mark covers what came meanwhile): _save.
                while True:
                    if (wait := self.mark_wait(time.monotonic())) is not None:
                        if wait > 0 and not interval:
                            break            # (nothing applies past the mark meanwhile)
                        await self._save(self.save_mark, self.mark_due())
                    if not self.restore(RESTORE_STEP):
                        break
                    await asyncio.sleep(0)
                saved = False
                if interval or self.checkpoint_due(time.monotonic()) == 0:
                    saved = await self._save(self.checkpoint)
            if saved and self.link is not None and not self.link.closed:
                self.link.send(protocol.Ack(seq=self.last_restored,
                                            req_type=FrameType.JNLWR).frame())

    async def _save(self, fn, *args):
        """``fn(*args)``, a save that fsyncs: here if the disk has been fast, else
        in a thread (the link keeps receiving meanwhile)."""
        t0 = now()
        try:
            if self._saves.ok():
                return fn(*args)
            return await self._saver.run(fn, *args)
        finally:
            self._saves.took(now() - t0)

    def pair_set(self, grsts: str, consistent_seq: int | None = None,
                 relay_seq: int | None = None, relay_tag: int | None = None,
                 epoch: int | None = None, full: bool = False) -> bool:
        """The RCM moved the pair (docs/operations.md); persisted in the JNLG table.

        ``relay_seq`` comes with COPY (pair create and resync): the last SEQ#
        the relay has issued.  It is the ordered resync of a journal stream
        that went backwards (the relay's journal was lost or recreated): the
        copy that follows rewrites what the SVOLs hold past it, so the restore
        point moves back to it and this group's SUSP verdict is lifted.
        ``relay_tag`` (resync) is the relay's last PSEQ, where the primary's
        stream goes on: the restore point's PSEQ moves back to it too, so that
        it never names a journal of the stream that ended (host/primary/
        regions.py: the next relay loss copies what was written after it).
        ``epoch`` (a move to the standby relay or back): the stream goes on at
        it; returns True if the group moved (the caller drops the old link).
        ``full`` (pair create: a base copy of every chunk follows): the restore
        point moves to ``relay_seq`` forward too, so that a secondary left
        behind the relay's journal tail (put back to an older copy) is taken
        again; the base copy rewrites everything it skips.
        """
        if grsts not in GRSTS:
            raise ControlError(f"grsts must be one of {', '.join(GRSTS)}, not {grsts!r}")
        moved = grsts == "COPY" and epoch is not None and epoch != self.epoch
        if moved:
            if epoch < self.epoch or self.taken_over:
                raise ControlError(f"group {self.cfg.grname}: no move to epoch {epoch} from "
                                   f"{self.epoch}{' (taken over here)' if self.taken_over else ''}")
            self.jnlg.epoch = epoch
            self.stream.epoch = epoch
            log.warning("group %s: the journal stream goes on at epoch %d (another relay)",
                        self.cfg.grname, epoch)
        if grsts == "COPY" and relay_seq is not None:
            self._rebase(relay_seq, new_stream=moved or full)
        if grsts == "COPY" and relay_tag is not None and self.state.tag != relay_tag \
                and (not relay_tag or tag_after(self.state.tag, relay_tag)):
            self.applied_tag = relay_tag
            self.state.save(self.state.last_seq, tag=relay_tag)
        self.jnlg.set_state(grsts)
        if consistent_seq is not None:
            self.jnlg.consistent_seq = consistent_seq
        self._table.save()
        return moved

    def _rebase(self, relay_seq: int, new_stream: bool = False) -> None:
        if self.grsts == "SUSP":
            log.info("group %s: resync ordered, SUSP lifted (was: %s)", self.cfg.grname, self.reason)
            self.grsts, self.reason = "PAIR", ""
        high = self.stream.high
        if not self.stream.rebase(relay_seq, new_stream):
            return
        if self.native is not None:
            self.native.reset()     # what it staged is of the old stream
        log.warning("group %s: resync ordered: the restore point moves from %d to the "
                    "relay's SEQ# %d; the SVOLs are not consistent until the copy ends",
                    self.cfg.grname, high, relay_seq)
        self._room.set()
        for vol in self.volumes.values():
            vol.flush()
        self.state.save(relay_seq, relay_seq)

    # -- takeover (docs/operations.md, "Takeover") --------------------------------

    @property
    def taken_over(self) -> dict:
        """What this site holds since it took the group over ({} if it has not)."""
        return self.jnlg.takeover

    async def take_over(self, epoch: int, forced: bool, relay_seq: int | None = None) -> dict:
        """Become the group's primary at ``epoch``: the SVOLs turn into writable PVOLs.

        Every journal already staged in order is applied first (the RCM has
        waited until the relay's last one arrived), then the restore point is
        saved at what the SVOLs hold, and only then does the new epoch become
        durable.  A crash before that leaves an ordinary secondary, after it a
        primary: never a writable image that is not a prefix.  ``relay_seq`` is
        the last SEQ# the fenced relay issued: unless ``forced``, every journal
        up to it must be here, or acked writes would be lost.
        """
        if self.taken_over:
            return self.taken_over
        if epoch <= self.epoch:
            raise ControlError(f"takeover to epoch {epoch}: group {self.cfg.grname} is at "
                               f"epoch {self.epoch} already")
        if self.jnlg.grsts == "SMPL":
            raise ControlError(f"no takeover: group {self.cfg.grname} is SMPL here (never "
                               f"paired, or deleted): its volumes hold no copy to take over")
        async with self._restore_lock:
            while True:
                if (mark := self.mark_due()) is not None:
                    await asyncio.to_thread(self.save_mark, mark)
                if not self.restore():
                    break
            if not self.consistent():
                raise ControlError(f"no takeover: {self.readable() or 'the SVOLs are no image'}"
                                   f"; they would be served as they are, torn")
            if relay_seq is not None and self.applied < relay_seq and not forced:
                raise ControlError(f"no takeover: the relay issued journals up to SEQ# "
                                   f"{relay_seq} but only {self.applied} are restored here; "
                                   f"takeover waits for them (or --force loses them)")
            await asyncio.to_thread(self.checkpoint)
            seq = self.last_restored
            # Nothing past ``seq`` was applied (the loop above applied every
            # journal the mark allowed): the mark comes back to it, so a
            # restart does not fence the new PVOLs as a replay.
            await asyncio.to_thread(self.state.save, seq, seq)
            self.stream.mark = seq
            record = {"epoch": epoch, "seq": seq, "time": self.state.time, "forced": forced,
                      "from_epoch": self.epoch, "at": time.time()}
            self.jnlg.epoch = epoch
            self.jnlg.takeover = record
            self.jnlg.set_state("SUSP", f"taken over here at SEQ# {seq} (epoch {epoch}): "
                                        f"the volumes are writable; replication is off until "
                                        f"the old primary site rejoins (docs/operations.md)")
            self._table.save()
            self.stream.epoch = epoch
            self.grsts, self.reason = "PAIR", ""
        if self.link is not None:
            await self.link.close()
        log.warning("group %s taken over at SEQ# %d, epoch %d%s: the volumes are writable here",
                    self.cfg.grname, seq, epoch, " (forced)" if forced else "")
        return record

    @property
    def writable(self) -> bool:
        """The volumes take host writes: taken over, and no failback under way."""
        return bool(self.taken_over) and "failback" not in self.taken_over

    def _refuse_write(self) -> None:
        if not self.taken_over:
            raise VolumeError(f"the volumes of group {self.cfg.grname} are SVOLs: read-only "
                              f"until a takeover")
        if "failback" in self.taken_over:
            raise VolumeError(f"group {self.cfg.grname} is failing back to its old primary "
                              f"site (epoch {self.taken_over['failback']}): this site takes no "
                              f"more writes; write at the old primary once `tricopy failback` "
                              f"ends")

    async def write_local(self, kind: Kind, idx: int, offset: int, length: int,
                          data: bytes = b"", fua: bool = False) -> None:
        """A host write at the site that took over: applied to the volume, its
        chunk recorded first (durably) in ``written`` for the failback's delta."""
        self._refuse_write()
        vol = self.volumes[idx]
        vol.check(offset, length)
        if not self._written_durable.covered(idx, offset, length):
            async with self._written_lock:     # one save covers every writer waiting here
                if not self._written_durable.covered(idx, offset, length):
                    self.written.mark(idx, offset, length)
                    bits = {i: bytearray(b) for i, b in self.written.bits.items()}
                    await asyncio.to_thread(self.written.save)
                    self._written_durable.bits = bits
        # Checked again after the last await: from here to the volume write
        # nothing else runs, so once ``quiesce`` has returned no write lands
        # that its list of written chunks does not hold.
        self._refuse_write()
        if kind in protocol.DATA_KINDS:
            vol.write(offset, data)
        elif kind == Kind.ZERO:
            vol.write_zeroes(offset, length)
        elif kind == Kind.TRIM:
            vol.trim(offset, length)
        if fua:
            await asyncio.to_thread(vol.flush)

    # -- planned swap (host/rcm/takeover.py): this site becomes the writer ------------

    async def become_master(self, epoch: int, restored: int, relay_last_tag: int) -> None:
        """Swap, last step here: the primary at ``epoch``.  Every journal up to the
        relay's SEQ# ``restored`` is applied (the RCM drained it), the restore
        point is saved, and the primary's state files start empty: the write
        log continues after the relay's last PSEQ, no chunk to copy, a cold
        activity log.  Durable in the JNLG table (GRATTR MASTER); the site
        process restarts into that role."""
        from ..primary.activity import ActivityLog
        from ..primary.writelog import WriteLog
        if self.jnlg.grattr == "MASTER":
            return
        if self.taken_over:
            raise ControlError(f"group {self.cfg.grname} was taken over here: `tricopy "
                               f"failback` gives it back, a swap does not apply")
        if epoch <= self.epoch:
            raise ControlError(f"swap to epoch {epoch}: group {self.cfg.grname} is at epoch "
                               f"{self.epoch} here")
        async with self._restore_lock:
            while self.restore():
                pass
            if self.applied < restored or not self.consistent():
                raise ControlError(f"no swap: the relay issued journals up to SEQ# {restored} "
                                   f"but only {self.applied} are restored here"
                                   f"{'' if self.consistent() else ' (not consistent)'}")
            await asyncio.to_thread(self.checkpoint)
            await asyncio.to_thread(self.state.save, restored, restored)
            d = self.site.state_dir
            wlog = WriteLog(d, self.cfg.grname)
            wlog.reset(relay_last_tag, relay_last_tag)
            wlog.close()
            chunk = max([COPY_CHUNK] + [v.block_size for v in self.volumes.values()])
            bitmap = CopyBitmap(d / f"{self.cfg.grname}.bitmap",
                                {i: v.size for i, v in self.volumes.items()}, chunk)
            bitmap.clear_all()
            bitmap.save()
            al = ActivityLog(d / f"{self.cfg.grname}.al")
            al.hot.clear()
            al.forget_unclean()
            self.jnlg.grattr = "MASTER"
            self.jnlg.epoch = self.jnlg.fence_epoch = epoch
            self.jnlg.set_state("PAIR")
            self._table.save()
        if self.link is not None:
            await self.link.close()
        log.warning("group %s: swapped: the primary from now on (epoch %d, journals from PSEQ "
                    "%d)", self.cfg.grname, epoch, relay_last_tag + 1)

    async def move_epoch(self, epoch: int, restored: int) -> dict:
        """A takeover to the relay site: the journal stream goes on from the relay
        at ``epoch`` after SEQ# ``restored``, all of which is restored here."""
        if self.epoch == epoch:
            return {"epoch": epoch}
        if epoch < self.epoch or self.taken_over:
            raise ControlError(f"group {self.cfg.grname}: no move to epoch {epoch} from "
                               f"{self.epoch}{' (taken over here)' if self.taken_over else ''}")
        async with self._restore_lock:
            while self.restore():
                pass
            if self.applied < restored:
                raise ControlError(f"group {self.cfg.grname}: restored up to SEQ# "
                                   f"{self.applied} of {restored}; wait for the rest")
            await asyncio.to_thread(self.checkpoint)
            self.jnlg.epoch = epoch
            self._table.save()
            self.stream.epoch = epoch
        if self.link is not None:
            await self.link.close()
        log.warning("group %s: the journal stream goes on at epoch %d after SEQ# %d (a "
                    "takeover to the relay site)", self.cfg.grname, epoch, restored)
        return {"epoch": epoch}

    # -- failback (host/rcm/failback.py) ------------------------------------------

    async def quiesce(self, epoch: int) -> dict:
        """Failback to the old primary at ``epoch``, step 1: take no more writes
        (durably: a restart does not take them either), make what was written
        durable, and answer which chunks were written since the takeover."""
        if not self.taken_over:
            raise ControlError(f"group {self.cfg.grname} was not taken over here: there is "
                               f"nothing to fail back")
        if epoch <= self.epoch:
            raise ControlError(f"failback to epoch {epoch}: group {self.cfg.grname} is at "
                               f"epoch {self.epoch} here")
        if self.taken_over.get("failback") not in (None, epoch):
            raise ControlError(f"a failback to epoch {self.taken_over['failback']} is under "
                               f"way; run `tricopy failback` again to finish it")
        if "failback" not in self.taken_over:
            self.jnlg.takeover = {**self.taken_over, "failback": epoch}
            self._table.save()
            log.warning("group %s: failback to epoch %d: no more writes here", self.cfg.grname,
                        epoch)
        async with self._written_lock:       # a save of ``written`` in flight lands first
            await self.flush_local()
        return {"chunk": self.written.chunk, "seq": self.taken_over["seq"],
                "forced": bool(self.taken_over.get("forced")),
                "written": {str(i): self.written.chunks(i) for i in self.volumes}}

    def read_quiesced(self, idx: int, offset: int, length: int) -> bytes:
        """A failback reads the delta here: only once no write can change it."""
        if "failback" not in self.taken_over:
            raise ControlError(f"group {self.cfg.grname}: reads for a failback need "
                               f"`tricopy failback` to have stopped writes here first")
        return self.volume(idx).read(offset, length)

    def volume(self, idx: int) -> Volume:
        vol = self.volumes.get(idx)
        if vol is None:
            raise ControlError(f"no SVOL with idx {idx} in group {self.cfg.grname}; the group "
                               f"has {sorted(self.volumes)}")
        return vol

    async def rejoin(self, epoch: int, restored: int) -> dict:
        """Failback, last step here: the restore side again, at ``epoch``, with
        the relay's stream continuing after SEQ# ``restored`` (what the volumes
        hold: every journal up to it was restored before the takeover)."""
        if not self.taken_over and self.epoch == epoch:
            return {"epoch": epoch, "last_restored": self.last_restored}     # done before
        if self.taken_over.get("failback") != epoch:
            raise ControlError(f"group {self.cfg.grname}: no failback to epoch {epoch} under "
                               f"way here (run `tricopy failback`)")
        async with self._restore_lock:
            await asyncio.to_thread(self.state.save, restored, restored)
            self.written.clear_all()
            await asyncio.to_thread(self.written.save)
            self._written_durable.clear_all()
            record = self.taken_over
            self.jnlg.epoch = epoch
            self.jnlg.takeover = {}
            self.jnlg.consistent_seq = restored
            self.jnlg.set_state("PAIR")
            self._table.save()
            self.stream = RestoreStream(self.cfg.grnum, epoch, restored=restored, mark=restored)
            self.grsts, self.reason = "PAIR", ""
        log.warning("group %s: failed back (taken over at SEQ# %d, epoch %d): the restore side "
                    "again at epoch %d from SEQ# %d; the volumes are read-only",
                    self.cfg.grname, record["seq"], record["epoch"], epoch, restored)
        return {"epoch": epoch, "last_restored": restored}

    async def flush_local(self) -> None:
        await asyncio.to_thread(lambda: [v.flush() for v in self.volumes.values()])

    def refused_hello(self, peer, why: str) -> None:
        """A HELLO refused from a peer that proved nothing (plaintext link):
        log it and count it, and leave GRSTS, the restore and the current
        relay link as they were (docs/security.md, "HELLO from a stranger")."""
        self.hellos_refused += 1
        self.last_refused = f"HELLO from {peer} (plaintext, unauthenticated): {why}"
        log.warning("group %s: refused an unauthenticated HELLO from %s: %s; the group is left "
                    "as it was (a plaintext peer cannot suspend it)", self.cfg.grname, peer, why)

    def suspend(self, reason: str) -> None:
        if (self.grsts, self.reason) != ("SUSP", reason):
            self.grsts, self.reason = "SUSP", reason
            log.error("group %s suspended: %s", self.cfg.grname, reason)

    def consistent(self) -> bool:
        """The SVOLs hold a prefix of the primary's write history: not mid base
        copy, and not in the replay after a crash (``catching_up``)."""
        return (self.jnlg.grsts in ("PAIR", "SUSP") and not self.catching_up
                and self.last_restored >= self.jnlg.consistent_seq)

    def readable(self) -> str | None:
        """Why the SVOLs must not be read now (their NBD export is fenced), or None."""
        if self.taken_over:
            return None        # the primary's volumes now: what was written is what is read
        if self.catching_up:
            return (f"the SVOLs of group {self.cfg.grname} must apply SEQ# {self.applied + 1}.."
                    f"{self.replay_to} again (after a crash or a failed SVOL write) and are "
                    f"not a consistent image yet")
        if self.jnlg.grsts == "SMPL" or self.consistent():
            return None
        return (f"the SVOLs of group {self.cfg.grname} are not consistent ({self.jnlg.grsts}, "
                f"restored up to SEQ# {self.last_restored}, consistent from "
                f"{self.jnlg.consistent_seq})")

    async def snapshot(self, folder: Path) -> tuple[int, bool]:
        """Copy every SVOL into ``folder`` between two restore steps; return
        the SEQ# applied and whether the group called the copy consistent."""
        folder.mkdir(parents=True, exist_ok=True)
        async with self._restore_lock:
            def copy():
                for idx, vol in self.volumes.items():
                    shutil.copyfile(vol.path, folder / f"svol{idx}.img")
            await asyncio.to_thread(copy)
            # Consistent: the SVOLs hold exactly the prefix 1..applied.
            return self.applied, self.consistent()

    def status(self) -> dict:
        return {"grnum": self.cfg.grnum, "grname": self.cfg.grname, "attr": "RESTORE",
                "role": "primary" if self.taken_over else "secondary", "epoch": self.epoch,
                "writable": self.writable,
                "swap_blocker": swap_problem(self.site, self.cfg),
                "takeover": self.taken_over or None,
                "written_bytes": self.written.count() * self.written.chunk,
                "last_time": self.state.time,
                # TIME is the relay's wall clock (docs/replication.md, "Journal
                # TIME"): how old the restored image is, in seconds
                "restored_age_s": (round((time.time_ns() - self.state.time) / 1e9, 3)
                                   if self.state.time else None),
                "grsts": self.grsts if self.grsts == "SUSP" else self.jnlg.grsts,
                "consistent": self.consistent(), "consistent_seq": self.jnlg.consistent_seq,
                "reason": self.reason or (self.readable() or "" if self.catching_up
                                          else self.jnlg.reason if self.taken_over else ""),
                "catching_up_to": self.replay_to if self.catching_up else None,
                "apply_mark": self.state.mark,
                "restored_tag": self.state.tag,    # the restore point's PSEQ (durable)
                "last_restored": self.last_restored, "applied": self.applied,
                "staged": len(self.staged) + (self.native.rx.staged if self.native else 0),
                # the native loop (site key native): on this link, and the
                # journals it staged itself since the link came up
                "native": self.native is not None,
                "native_staged": self.native.rx.received if self.native else None,
                "gap": self.gap(), "received": self.stream.received, "accepts": self.accepts,
                "hellos_refused": self.hellos_refused, "last_refused": self.last_refused or None,
                "connected": self.link is not None and not self.link.closed}


class Secondary:
    """The secondary site process: a listener for the relay plus the restorers."""

    def __init__(self, cfg: SiteConfig):
        self.cfg = cfg
        self.groups = {g.grnum: RestoreGroup(g, cfg) for g in cfg.groups
                       if g.attr is GroupAttr.RESTORE}
        if not self.groups:
            raise ValueError("secondary config has no RESTORE group")
        self.control = ControlServer({"status": self._status, "jnlg": self._jnlg,
                                      "pair_set": self._pair_set, "snapshot": self._snapshot,
                                      "takeover": self._takeover, "digest": self._digest,
                                      "quiesce": self._quiesce, "read": self._read,
                                      "rejoin": self._rejoin,
                                      "become_master": self._become_master,
                                      "move_epoch": self._move_epoch})
        # Set once a swap made this site the primary: the process restarts
        # into that role (host/sites_cli.py).
        self.restart = asyncio.Event()

    def _named(self, grname: str) -> RestoreGroup:
        for g in self.groups.values():
            if g.cfg.grname == grname:
                return g
        raise ControlError(f"no RESTORE group named {grname!r} at the secondary")

    async def _jnlg(self, req: Request) -> dict:
        return JnlgTable.for_site(self.cfg.state_dir).to_json(self.cfg.site)

    async def _pair_set(self, req: Request) -> dict:
        g = self._named(req.text("group"))
        grsts, seq = req.text("grsts"), req.integer("consistent_seq", None)
        relay_seq, tag = req.integer("relay_seq", None), req.integer("relay_tag", None)
        epoch, full = req.integer("epoch", None), req.flag("full")
        async with g._restore_lock:     # a rebase must not cut through a restore step
            moved = g.pair_set(grsts, seq, relay_seq, tag, epoch, full)
        if moved and g.link is not None:
            await g.link.close()        # the old relay's stream ends here
        return {"grsts": g.jnlg.grsts}

    async def _digest(self, req: Request) -> dict:
        """``tricopy verify``: chunk digests once the SVOLs hold the primary's PSEQ
        (or later); answers the PSEQ they stand at."""
        from ..rcm.verify import chunk_digests
        g = self._named(req.text("group"))
        pseq = req.integer("pseq")
        deadline = time.monotonic() + req.number("timeout", 30.0)
        vol, first, count = g.volume(req.integer("idx")), req.integer("first"), req.integer("count")
        while pseq and (not g.applied_tag or tag_after(pseq, g.applied_tag)):
            if (why := g.readable()) is not None:
                raise ControlError(f"no digest: {why}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise ControlError(f"the SVOLs reached PSEQ {g.applied_tag} of the primary's "
                                   f"{pseq} within the timeout: are journals flowing (relay "
                                   f"up, group not suspended)?")
            g._applied_more.clear()
            try:
                await asyncio.wait_for(g._applied_more.wait(), min(left, 1.0))
            except asyncio.TimeoutError:
                pass
        async with g._restore_lock:      # between two restore steps: one point of the history
            digests = chunk_digests(vol, first, min(count, 256))
            return {"pseq": g.applied_tag, "digests": digests}

    async def _takeover(self, req: Request) -> dict:
        g = self._named(req.text("group"))
        return await g.take_over(req.integer("epoch"), req.flag("force"),
                                 req.integer("relay_seq", None))

    async def _move_epoch(self, req: Request) -> dict:
        return await self._named(req.text("group")).move_epoch(req.integer("epoch"),
                                                              req.integer("restored"))

    async def _become_master(self, req: Request) -> dict:
        g = self._named(req.text("group"))
        await g.become_master(req.integer("epoch"), req.integer("restored"),
                              req.integer("relay_last_tag"))
        return {"role": "primary", "_after": self.restart.set}

    async def _quiesce(self, req: Request) -> dict:
        return await self._named(req.text("group")).quiesce(req.integer("epoch"))

    async def _read(self, req: Request) -> dict:
        g = self._named(req.text("group"))
        data = g.read_quiesced(req.integer("idx"), req.integer("offset"), req.integer("length"))
        return {"data": base64.b64encode(data).decode()}

    async def _rejoin(self, req: Request) -> dict:
        return await self._named(req.text("group")).rejoin(req.integer("epoch"),
                                                          req.integer("restored"))

    async def _snapshot(self, req: Request) -> dict:
        """Tests/forensics: copy the SVOLs (between restore steps) into
        ``<state_dir>/snapshots/<name>``; only a plain name, never a path."""
        g = self._named(req.text("group"))
        name = req.text("name")
        if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
            raise ControlError(f"snapshot name must be letters, digits, '-', '_', '.', "
                               f"not {name!r}")
        folder = self.cfg.state_dir / "snapshots" / name
        applied, consistent = await g.snapshot(folder)
        return {"last_restored": applied, "consistent": consistent, "folder": str(folder)}

    async def _status(self, req: Request) -> dict:
        return {"site": self.cfg.site, "role": "secondary",
                "groups": [g.status() for g in self.groups.values()], "perf": PERF.to_json()}

    async def aclose(self) -> None:
        """Clean stop (SIGTERM): the restore point saved at what was applied, so
        the next start has no replay to do, then the SVOLs closed."""
        for g in self.groups.values():
            if g.link is not None:
                await g.link.close()
            async with g._restore_lock:
                try:
                    await asyncio.to_thread(g.checkpoint)
                except OSError as exc:
                    log.warning("group %s: restore point at stop: %s", g.cfg.grname, exc)
            for vol in g.volumes.values():
                vol.close()
            g._saver.close()

    async def run(self) -> None:
        server = await tls.start_link_server(self._accept, self.cfg)   # mutual TLS, limits
        if self.cfg.control:
            await self.control.start(self.cfg.control, self.cfg)
        if self.cfg.metrics:
            from ..rcm.metrics import SiteCollector, serve_metrics
            self.metrics = await serve_metrics(self.cfg.metrics, SiteCollector(
                "secondary", self.cfg.site, lambda: [g.status() for g in self.groups.values()]))
        if self.cfg.nbd is not None:     # SVOLs over NBD, read-only (docs/nbd.md)
            from ..nbd.primary_export import secondary_exports, serve_site_volumes
            self.nbd = await serve_site_volumes(self.cfg.nbd,
                                                secondary_exports(self.groups.values()))
        tasks = [asyncio.create_task(g.restorer(g.cfg.restore_interval))
                 for g in self.groups.values()]
        log.info("secondary %s listening on %s:%d", self.cfg.site, *self.cfg.listen)
        async with server:
            await asyncio.gather(server.serve_forever(), *tasks)

    async def _frame(self, link: Link, group: RestoreGroup, frame: protocol.Frame) -> None:
        """One frame from the relay after the HELLOs, the Python way (the native
        loop hands up every frame it does not stage itself)."""
        if frame.type == FrameType.HEARTBEAT:
            link.send(frame)            # (Link.recv echoes them on the Python path)
            return
        if frame.type != FrameType.JNLWR:
            link.send(nak(Status.BAD_TYPE, frame.type))
            return
        try:
            journals = group.stream.verify_batch(frame.body)
        except protocol.ProtocolError as exc:
            # Nothing from a bad frame is staged; the relay resends after reconnect.
            log.warning("%s: refusing journal: %s", link.name, exc)
            link.send(nak(exc.status, FrameType.JNLWR))
            await link.drain()
            await link.close()
            return
        for ctl, data in journals:
            await group.stage(ctl, data)
        if ctl.seq <= group.last_restored and not frame.flags & protocol.FrameFlag.MORE:
            # a replay: tell the relay again where we are so it releases
            link.send(protocol.Ack(seq=group.last_restored, req_type=FrameType.JNLWR).frame())

    async def _accept(self, reader, writer) -> None:
        link = Link(reader, writer, initiator=False, heartbeat=self.cfg.heartbeat,
                    name=f"{self.cfg.site}<-relay")
        try:
            hello = await link.expect_hello()
            group = self.groups.get(hello.group)
            if hello.role != Role.RELAY or group is None or hello.grname != group.cfg.grname:
                log.warning("%s: refused HELLO from %s: role %s, group %d %r is not a RESTORE "
                            "group here", link.name, link.peername, Role(hello.role).name,
                            hello.group, hello.grname)
                link.send(nak(Status.WRONG_GROUP, FrameType.HELLO))
                await link.drain()
                await link.close()
                return
            if (why := tls.refuse_upstream(link, group.cfg)) is not None:
                log.warning("%s: refused %s: %s", link.name, link.peername, why)
                await link.close()
                return
            if (why := group.refuse_relay(hello)) is not None:
                stale = hello.epoch != group.epoch
                # A relay at an older epoch is one the stream left (a takeover,
                # a move to the standby relay): refused, and nothing to suspend for.
                if group.taken_over or hello.epoch < group.epoch:
                    log.warning("%s: refused relay %r: %s", link.name, hello.site, why)
                elif not tls.proven_upstream(link, group.cfg):
                    # Anyone can send this HELLO on a plaintext link: a
                    # stranger's stale epoch must not stop the restore.  The
                    # HELLO is refused and nothing of the group changes;
                    # status shows the refusal for the operator.
                    group.refused_hello(link.peername, why)
                else:
                    group.suspend(why)
                status = Status.STALE_EPOCH if stale else Status.SEQ_REGRESSION
                # TAG of a HELLO NAK for STALE_EPOCH: our epoch, so the peer can say both.
                link.send(nak(status, FrameType.HELLO, tag=group.epoch if stale else 0))
                await link.drain()
                await link.close()
                return
            if group.link is not None:
                await group.link.close()    # the newest connection wins
            group.link = link
            group.accepts += 1
            link.send(protocol.Hello(Role.SECONDARY, group.cfg.grnum, group.epoch,
                                     group.last_restored, group.cfg.grname,
                                     self.cfg.site).frame())
            native = group.attach_native(link)
            if native is not None:
                try:
                    await native.run(lambda frame: self._frame(link, group, frame))
                finally:
                    group.detach_native(native)
                return
            while not link.closed:
                await self._frame(link, group, await link.recv())
        except LinkError as exc:
            log.info("relay link closed: %s", exc)
        finally:
            await link.close()
