"""Data volumes at the relay (the remote-copy patent, Fig. 12).

A relay whose config gives ``[[volume]]`` entries for its group keeps its own
copy of the data, closer to the users than the far secondary: the journals
it holds are restored to those volumes in SEQ# order, with the secondary's
guarantees (host/secondary/site.py): an apply mark saved before any journal
past it is applied, a restore point saved after the volumes are fsynced,
``catching_up`` after a crash until the replay passes the mark, and a copy
(COPY_BEGIN .. COPY_END) shown as "no image".  The relay still forwards
every journal to the far secondary.

The journals come from the relay's own journal volume, not from a link:
:func:`feed` reads them in order and stages them, exactly as the secondary's
link handler does with what arrives.  A journal leaves the journal volume
only when both the far secondary and this copy hold it durably
(``RelayGroup._release``), so a relay restart replays what the copy lacks.

A copy whose restore point was put back or lost finds journals it needs
already released: it can never catch up by itself.  It is suspended, says
it is no consistent image (``needs_resync``), and no longer holds up the
releases (else the relay's journal would fill and stop the host):
``tricopy pair resync`` then copies the whole PVOL through the relay
(:meth:`RelayCopy.resync` moves its restore point to the relay's newest
SEQ#, the copy's journals follow), and it is consistent again at the
copy's end, as after ``pair create``.  Which chunks are still owed is
kept (``<group>.owed``, every chunk at first, saved before the restore
point moves and at each checkpoint): a chunk is whole again once a journal
past that SEQ# wrote all of it (a base journal of the copy, or a host
write), and the copy says it is no image while any is owed.  A relay
restart, an interrupted copy (the primary sends the rest), or an RCM lost
between the relay's step and the primary's does not forget them (``pair
resync`` then asks for the copy again).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from ..config import GroupConfig, SiteConfig
from ..journal.store import JournalStore
from ..disk.durable import atomic_write_json
from ..disk.volume import VolumeError
from ..rcm.jnlg import CopyBitmap
from ..wire.protocol import Kind
from ..secondary.site import RestoreGroup

__all__ = ["RelayCopy", "FEED_BATCH"]

log = logging.getLogger(__name__)

FEED_BATCH = 256      # journals read from the journal volume per step


class RelayCopy(RestoreGroup):
    """The relay's data volumes of one group: a RESTORE group fed from the store."""

    def __init__(self, cfg: GroupConfig, site: SiteConfig):
        super().__init__(cfg, site)
        # One JNLG row for the group: the relay's journal volume and these
        # data volumes both (the restore group attached the volumes only).
        self.jnlg = self._table.attach(cfg, site.volumes_of(cfg.grnum), journal=cfg.journal)
        # After `tricopy takeover --to relay` the relay journals host writes
        # to these volumes itself (RelayGroup.local_write, set by the relay).
        self.writer = None
        # Why it cannot catch up (journals it needs were released), until
        # `pair resync` copies the PVOL to it; "" when it can.
        self.needs_resync = ""
        # After a resync: the SEQ# after which the copy of every chunk comes,
        # and the chunks not yet written whole since (None: nothing owed).
        self._resync_path = site.state_dir / f"{cfg.grname}.resync"
        self.resync_after: int | None = None
        self.owed = CopyBitmap(site.state_dir / f"{cfg.grname}.owed",
                               {i: v.size for i, v in self.volumes.items()}, self.written.chunk)
        self._owed_left = 0
        if self._resync_path.exists():
            try:
                self.resync_after = int(json.loads(self._resync_path.read_text())["after"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{self._resync_path} is corrupt: {exc}") from None
            if not self.owed.path.exists():
                self.owed.set_all()        # (saved first; gone by hand: all owed)
            self._owed_left = self.owed.count()

    # The journals keep coming from the relay's journal volume after a takeover
    # to the relay (its own writes are journals too): restoring never stops, and
    # the row's takeover record is the relay's, not a reason to stop applying.
    taken_over = property(lambda self: {})

    @property
    def writable(self) -> bool:
        return bool(self.jnlg.takeover) and "failback" not in self.jnlg.takeover

    async def write_local(self, kind, idx: int, offset: int, length: int,
                          data: bytes = b"", fua: bool = False) -> None:
        """A host write at the relay after a takeover to it: journaled (SEQ#, TIME,
        durable in the journal volume), then on these volumes in SEQ# order."""
        if not self.writable or self.writer is None:
            raise VolumeError(f"the relay's copy of group {self.cfg.grname} is read-only "
                              f"(a copy, until `tricopy takeover --to relay`)")
        self.volumes[idx].check(offset, length)
        await self.writer(kind, idx, offset, length, data)

    def consistent(self) -> bool:
        # Journals it needs are gone: its volumes may hold writes past its
        # restore point, or miss some before it; no image it can name.
        return not self.needs_resync and self.resync_after is None and super().consistent()

    # -- the chunks owed after a resync -----------------------------------------

    def _written_whole(self, ctl) -> None:
        """Journal ``ctl`` (past the resync's SEQ#, applied) wrote its range:
        the chunks it covers whole are owed no more."""
        if self.resync_after is None or ctl.kind not in (Kind.UPDATE, Kind.BASE, Kind.ZERO) \
                or ctl.idx not in self.owed.sizes:
            return
        chunk, end = self.owed.chunk, ctl.address + ctl.length
        first = -(-ctl.address // chunk)
        stop = self.owed.nchunks(ctl.idx) if end >= self.owed.sizes[ctl.idx] else end // chunk
        for c in range(first, stop):
            if self.owed.test(ctl.idx, c):
                self.owed.clear(ctl.idx, c)
                self._owed_left -= 1
        if self._owed_left <= 0:
            log.info("group %s: the relay's copy is whole again (every chunk written since "
                     "SEQ# %d, at %d)", self.cfg.grname, self.resync_after, ctl.seq)
            self.resync_after = None     # files gone at the next checkpoint

    def _write_run(self, run: list) -> None:
        super()._write_run(run)
        for ctl, _ in run:
            self._written_whole(ctl)

    def _apply(self, ctl, data: bytes):
        vol = super()._apply(ctl, data)
        self._written_whole(ctl)
        return vol

    def checkpoint(self) -> bool:
        # What is owed, before the restore point passes the journals that
        # cleared it (owed chunks lost in a crash are only copied once more).
        if self.resync_after is not None:
            self.owed.save()
        elif self._resync_path.exists():
            super_saved = super().checkpoint()       # the volumes hold it all: then forget
            self._resync_path.unlink(missing_ok=True)
            self.owed.path.unlink(missing_ok=True)
            return super_saved
        return super().checkpoint()

    async def resync(self, relay_seq: int) -> dict:
        """``pair resync`` for a copy that lacks released journals: the copy of
        the whole PVOL follows the relay's SEQ# ``relay_seq`` (the RCM set the
        group COPY first), so the restore point moves there (durably) and the
        journals after it are applied again; consistent once that copy ends.
        Returns where it was."""
        async with self._restore_lock:
            was = {"last_restored": self.last_restored, "reason": self.needs_resync}
            s = self.stream       # (as RestoreStream.rebase, also if already there)
            s.staged.clear()
            s.staged_bytes = 0
            s.restored = s.mark = s.applied = relay_seq
            s.replay_to = 0
            self._room.set()
            for vol in self.volumes.values():
                vol.flush()
            self.owed.set_all()
            self.owed.save()
            self._owed_left = self.owed.count()
            atomic_write_json(self._resync_path, {"after": relay_seq})   # before the point moves
            self.resync_after = relay_seq
            self.applied_tag = 0          # PSEQ unknown until the copy ends
            self.state.save(relay_seq, relay_seq, tag=0)
            self.grsts, self.reason, self.needs_resync = "PAIR", "", ""
        log.warning("group %s: the relay's copy is resynced: its restore point moves from %d "
                    "to the relay's SEQ# %d; a copy of the PVOL follows, consistent when it "
                    "ends", self.cfg.grname, was["last_restored"], relay_seq)
        return was

    async def wait_applied(self, seq: int) -> None:
        while self.applied < seq:
            if self.grsts == "SUSP":
                raise VolumeError(f"the relay's copy of group {self.cfg.grname} is suspended: "
                                  f"{self.reason}")
            self._applied_more.clear()
            with contextlib.suppress(TimeoutError):     # (no task per wait: not wait_for)
                async with asyncio.timeout(0.5):
                    await self._applied_more.wait()

    @staticmethod
    async def _next(new: asyncio.Event) -> None:
        """Wait for ``new`` (at most 0.5 s, so that a stop is seen)."""
        new.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                await new.wait()

    async def feed(self, store: JournalStore, last, new: asyncio.Event, stopped) -> None:
        """Stage every journal the relay holds, in SEQ# order, from the restore
        point on (a crash replay included).  ``last()`` is the newest SEQ# that
        may be applied (durable at the relay); ``new`` is set when it grows.
        A journal it needs that was released suspends it (``needs_resync``)
        until :meth:`resync`; then it goes on after the new restore point."""
        nxt = self.last_restored + 1
        while not stopped():
            if nxt > last():
                await self._next(new)
                continue
            if nxt < store.tail_seq:
                why = (f"the relay's data volumes lack SEQ# {nxt}..{store.tail_seq - 1}, "
                       f"released from the journal volume before they were applied (their "
                       f"restore point was put back or lost): no consistent image, and the "
                       f"relay releases journals without them; run `tricopy pair resync` "
                       f"(a copy of the whole PVOL to them)")
                self.needs_resync = why
                self.suspend(why)
                while self.needs_resync and not stopped():
                    await self._next(new)        # the relay sets it after resync()
                nxt = self.last_restored + 1
                continue
            for ctl, data in store.read(nxt, min(FEED_BATCH, last() - nxt + 1)):
                await self.stage(ctl, data)      # waits while too much is staged
                nxt = ctl.seq + 1

    def summary(self) -> dict:
        """What the relay's status shows of its data volumes."""
        st = self.status()
        if self.resync_after is not None and not self.needs_resync:
            st["reason"] = (f"the relay's data volumes wait for a copy of {self._owed_left} "
                            f"chunks not written since SEQ# {self.resync_after} (`tricopy pair "
                            f"resync` starts it if the primary is SUSP): no consistent image "
                            f"until it ends")
        keep = ("consistent", "consistent_seq", "catching_up_to", "last_restored", "applied",
                "staged", "reason", "restored_tag")
        return {**{k: st[k] for k in keep}, "grsts": st["grsts"],
                "needs_resync": bool(self.needs_resync), "resync_after": self.resync_after,
                "owed_chunks": self._owed_left if self.resync_after is not None else 0,
                "volumes": [{"idx": i, "path": str(v.path), "size": v.size}
                            for i, v in sorted(self.volumes.items())]}
