"""The relay site (the patent's intermediary): journal engine + journal volume.

Data flow for one INTERMEDIARY group::

    primary --JNLWR--> dedup by TAG --> engine.submit (SEQ#, TIME, JOFS)
            --> store.append at JOFS --> [fsync, shared] --> ACK to the primary
    store --read, in SEQ# order, batches--> secondary
    secondary's cumulative ACK(upto) --> engine.release + store.release (JOPTR moves)

Exactly-once from the primary (docs/replication.md, "Resend and duplicates"):
the primary numbers its journals 1, 2, 3, ... in TAG (its per-group request
number, PSEQ).  The relay accepts only PSEQ == last + 1; a PSEQ at or below the
last accepted one is a resend of a journal it already holds and is ACKed
again without a second journal; anything else is a gap and is NAKed.  The
last accepted PSEQ survives a restart: it is the TAG of the newest journal in
the store, or, when the store is empty, the value saved in
``<state_dir>/<grname>.relay`` before the release that emptied it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import errno
import json
import logging
import struct
import time
from collections import deque

from ..wire import protocol
from ..config import Durability, GroupAttr, GroupConfig, SiteConfig, swap_problem, swapped
from ..rcm.control import ControlError, ControlServer, Request
from ..wire import tls
from ..disk.durable import atomic_write_json
from ..rcm.jnlg import GRSTS, JnlgTable
from ..engine.base import Engine, EngineError, open_engine
from ..wire.link import Link, LinkError, LinkRefused, connect, nak
from ..wire.protocol import Control, Frame, FrameType, Kind, LoadFlag, Role, Status
from ..disk.volume import VolumeError
from ..journal.store import CorruptStore, JournalStore, StoreError
from ..journal.commit import GroupCommitter
from ..perf import PERF, now
from ..waits import wait_at_most
from ..wire.pseq import next_pseq
from .local_copy import RelayCopy
from .streams import (Admission, AnswerGate, ForwardStream, ForwardViolation, PseqGate,
                      answer_ack)

__all__ = ["RelayError", "GroupFault", "RelayGroup", "Relay", "ENGINE_MODES"]

#: ``--engine-mode``: the engine's ring, descriptor (control data only, the
#: relay stores the data) or data (the engine keeps every journal too)
ENGINE_MODES = ("descriptor", "data")

log = logging.getLogger(__name__)

FORWARD_BATCH = 64         # journals per read/send batch to the secondary ...
FORWARD_BYTES = 4 << 20    # ... and at most this many bytes of them (one MAX_DATA journal)
#: Data bytes of the journals taken and not yet forwarded kept in memory, so
#: that the forwarder sends them without reading them back from the journal
#: volume (``store.read``: a pread, an unpack, a copy and two CRCs per
#: journal, 9-13 % of the relay's busy time at 4 KiB QD16).  Past it, and
#: for every resend after a reconnect, the forwarder reads the volume.
RECENT_BYTES = 8 << 20
RECONNECT_DELAY = 0.2
FAULT_RETRY_DELAY = 1.0    # seconds between tries of a link that was refused for a reason
RELEASE_PERSIST_PERIOD = 0.1   # seconds between superblock writes for the secondary's releases


LOCAL_RELEASE_EVERY = 0.1   # seconds between releases of what the relay's data volumes hold


class RelayError(Exception):
    """The relay cannot go on with a group (engine and store disagree, ...)."""


class GroupFault(RelayError):
    """One group's engine or journal volume failed: that group is suspended
    (``RelayGroup.fault`` says why); the other groups and the process go on."""


_STAMP = struct.Struct("<QQQQ")      # SEQ#, TIME, ADDRESS, JOFS: control data bytes 0..31


def _stamp(ctl: Control, ack: protocol.Ack) -> Control:
    """``ctl`` with the engine's SEQ#, TIME and JOFS and its CCRC recomputed.

    The same as ``dataclasses.replace(...).with_ccrc()``, which the profile
    showed as a tenth of the relay's time per journal (two generic replaces).
    """
    raw = bytearray(ctl.pack())
    _STAMP.pack_into(raw, 0, ack.seq, ack.time, ctl.address, ack.jofs)
    raw[60:64] = protocol.crc32c(raw[:60]).to_bytes(4, "little")
    return Control.unpack(raw)


class RelayGroup:
    """One INTERMEDIARY journal group: engine, store, dedup state, forwarder.

    ``grsts`` is the group status (patent Fig. 5, GRSTS) as the relay sees it.
    ``descriptor``: the engine runs a descriptor ring of the journal volume's
    size (docs/protocol.md, "Two kinds of ring"): it gets each journal's
    control data only and the relay writes the data at the JOFS it answers;
    otherwise a data ring, which must be the journal volume's size.
    """

    def __init__(self, cfg: GroupConfig, site: SiteConfig, engine: Engine, *,
                 descriptor: bool = False):
        self.cfg = cfg
        self.site = site
        self.engine = engine
        self.descriptor = descriptor
        jcfg = cfg.journal
        self.recovery_warning = ""
        if jcfg.path.exists():
            self.store = JournalStore.open(jcfg.path)
        else:
            jcfg.path.parent.mkdir(parents=True, exist_ok=True)
            self.store = JournalStore.create(jcfg.path, jcfg.size, epoch=cfg.epoch,
                                             preallocate=jcfg.preallocate)
        if self.store.size != jcfg.size:
            raise RelayError(f"journal {jcfg.path} is {self.store.size} bytes, config says {jcfg.size}")
        self._report_recovery()
        site.state_dir.mkdir(parents=True, exist_ok=True)
        self._state_path = site.state_dir / f"{cfg.grname}.relay"
        self.gate = PseqGate(self._recover_last_tag())     # exactly-once from the primary
        # The JNLG row holds the pair state the RCM set; ``grsts`` below is the
        # relay's own verdict (SUSP when journals are missing), which wins.
        self._table = JnlgTable.for_site(site.state_dir)
        self.jnlg = self._table.attach(cfg, journal=cfg.journal)
        # The epoch is state: a failback moves it on (``rejoin``), the journal
        # volume's superblock first, then the table.  A table ahead of the
        # journal is a config that names an epoch this journal never had.
        if self.store.epoch < self.jnlg.epoch:
            raise RelayError(f"journal {jcfg.path} is at epoch {self.store.epoch}, the config "
                             f"and JNLG table say {self.jnlg.epoch}")
        if self.store.epoch > self.jnlg.epoch:     # a crash inside ``rejoin``: finish it
            self.jnlg.epoch = self.store.epoch
            self._table.save()
        if self.jnlg.reversed:        # a planned swap: from the secondary, to the primary
            self.cfg = cfg = swapped(cfg)
            log.info("group %s: roles swapped: journals from %s, forwarded to %s:%d",
                     cfg.grname, cfg.upstream_site or "the secondary site", *cfg.peer)
        # To the secondary: stream checks, window, release only what was sent.
        # Every journal held at start is durable and may have been sent before
        # the restart (the secondary may still hold it staged): count it sent.
        self.forward = ForwardStream(self.epoch, self.store.next_seq - 1)
        self._arrivals: deque[tuple[int, float]] = deque()   # (seq, monotonic) for the lag
        self._oldest: tuple[int, int] | None = None   # (tail SEQ#, its TIME), for oldest_age
        self.grsts = "PAIR"
        self.reason = ""
        self.forward_fault = ""     # why journals cannot go to the secondary now
        self.fault = ""             # why this group's engine/store cannot be used (GroupFault)
        self.primary_link: Link | None = None
        self.secondary_link: Link | None = None
        self.fulls = 0
        self.dups = 0
        self.primary_accepts = self.secondary_connects = 0     # links made, for metrics
        self._ingest = asyncio.Lock()
        # Descriptor ring: a JNLDESC and the store's append of its record are
        # one step for a RELEASE, which reads the next JOFS from the store.
        # Without it, on an engine slower than the in-process model (sim,
        # board), a release computed before a journal's append reached the
        # engine after it: a JOPTR at the old JIPTR, in the tail that
        # journal's wrap had just skipped (BAD_REQUEST, group suspended).
        self._placing = asyncio.Lock()
        # Journals taken and not yet forwarded, oldest first: (control, data)
        # as stored, data bytes ``_recent_bytes`` (RECENT_BYTES).
        self._recent: deque[tuple[Control, memoryview]] = deque()
        self._recent_bytes = 0
        # Most descriptors per JNLDESC: DESC_BATCH until the engine refuses a
        # batch (an engine without batches), then 1.
        self.desc_batch = protocol.DESC_BATCH
        self._commit = GroupCommitter(self.store)    # one fsync shared by many journals
        # Releases are persisted lazily (release_persister); when the store is
        # about to persist an empty ring, the TAG of the last journal released
        # is saved first, for dedup after a restart.
        self.store.on_persist_empty = lambda ctl: self._save_last_tag(ctl.tag)
        self._new = asyncio.Event()       # a journal became forwardable
        self._acked = asyncio.Event()     # the secondary ACKed something
        # Data volumes at the relay (patent Fig. 12; local_copy.py), if configured.
        self.local = RelayCopy(self.cfg, site) if site.volumes_of(cfg.grnum) else None
        if self.local is not None and self.jnlg.takeover:     # taken over here, restarted
            self.local.writer = self.local_write
        self._local_new = asyncio.Event()   # a journal became applicable to them

    # -- recovery -------------------------------------------------------------

    def _report_recovery(self) -> None:
        """Say what opening the journal volume found; loudly if journals were cut off."""
        rep = self.store.recovery
        if rep is None or rep.end_reason == "new store":
            return
        if rep.clean:
            log.info("group %s: journal volume %s: clean start, no recovery scan (journals "
                     "%d..%d, JOPTR %d JIPTR %d)", self.cfg.grname, self.store.path,
                     rep.tail_seq, rep.end_seq - 1, self.store.joptr, self.store.jiptr)
            return
        if rep.mark_rejected:
            log.warning("group %s: journal volume %s: clean-shutdown mark not trusted (%s)",
                        self.cfg.grname, self.store.path, rep.mark_rejected)
        log.info("group %s: journal volume %s recovered journals %d..%d (scan ended at JOFS %d: "
                 "%s)", self.cfg.grname, self.store.path, rep.tail_seq, rep.end_seq - 1,
                 rep.end_pos, rep.end_reason)
        if rep.quarantined:
            first, last = rep.quarantined
            self.recovery_warning = (
                f"journal volume damaged or cut at SEQ# {rep.end_seq} ({rep.end_reason}); "
                f"whole records of SEQ# {first}..{last} after it were moved to "
                f"{rep.quarantine_path}. If the primary had them ACKed it suspends the group "
                f"and asks for `tricopy pair resync`")
            log.error("group %s: %s", self.cfg.grname, self.recovery_warning)

    last_tag = property(lambda self: self.gate.last, doc="the last PSEQ taken from the primary")
    forwarded = property(lambda self: self.forward.forwarded, doc="the last SEQ# sent downstream")
    secondary_acked = property(lambda self: self.forward.acked)

    def _recover_last_tag(self) -> int:
        if self.store.held:
            ctl, _ = self.store.read(self.store.next_seq - 1, 1)[0]
            return ctl.tag
        if self._state_path.exists():
            try:
                return int(json.loads(self._state_path.read_text())["last_tag"])
            except (ValueError, KeyError, TypeError) as exc:
                raise RelayError(f"relay state {self._state_path} is corrupt: {exc}") from None
        return 0   # never accepted anything: the first journal sets the PSEQ base

    def _save_last_tag(self, tag: int) -> None:
        atomic_write_json(self._state_path, {"last_tag": tag})

    async def recover_engine(self) -> None:
        """Bring the engine to the store's state: same SEQ#s, same JIPTR/JOPTR.

        The store is the durable truth.  A fresh (or restarted) engine is
        empty; LOAD CLEAR|SEQ|PTR puts its empty ring at the store's JOPTR with
        NEXT_SEQ = TAIL_SEQ, and every held journal is resubmitted (zeros of the
        same DATA_LEN: only sizes matter to allocation).  The allocation rules
        are deterministic, so each replayed journal must land on the JOFS the
        store holds; anything else is a RelayError.
        """
        s, e, epoch = self.store, self.engine, self.epoch
        # An empty store sits at JIPTR; a non-empty one's first journal at JOPTR.
        ptr = s.joptr if s.held else s.jiptr
        # TIME from the wall clock, in the same LOAD (docs/replication.md,
        # "Journal TIME"), so that stamps mean something to an operator.
        now = self.time_base()
        flags = LoadFlag.CLEAR | LoadFlag.SEQ | LoadFlag.PTR | LoadFlag.EPOCH | LoadFlag.TIME
        if self.descriptor:
            # The ring is the journal volume's, whatever the engine's memory:
            # one LOAD sets its size and mode and lines it up with the store.
            # Always, even on an engine that kept its state: it may be a data
            # ring of the same pointers, and replaying descriptors is cheap.
            await self._expect(e.load(flags | LoadFlag.RING | LoadFlag.DESC, seq=s.tail_seq,
                                      time=now, epoch=epoch, ptr=ptr, size=s.size), "LOAD RING")
        else:
            st = await e.status()
            if (st.next_seq, st.tail_seq, st.jiptr, st.joptr, st.epoch, st.wrap_at) == (
                    s.next_seq, s.tail_seq, s.jiptr, s.joptr, epoch, s.wrap_at):
                # e.g. a board that kept its state across a relay restart: its
                # clock still gets the wall clock (LOAD TIME alone needs no
                # empty ring; its LAST_TIME keeps stamps from going back)
                await self._expect(e.load(LoadFlag.TIME, time=now), "LOAD TIME")
                return
            if st.ring_size != s.size:
                raise RelayError(f"engine ring is {st.ring_size} bytes, journal volume {s.size}")
            await self._expect(e.load(flags, seq=s.tail_seq, time=now, epoch=epoch, ptr=ptr),
                               "LOAD")
        seq = s.tail_seq
        while seq < s.next_seq:
            for ctl, _ in s.read(seq, FORWARD_BATCH):
                # Only sizes matter to allocation: an UPDATE of the same
                # DATA_LEN (zeros to a data ring; the stored DATA_CRC to a
                # descriptor ring, which never sees the data).
                zeros = bytes(ctl.data_len) if not self.descriptor else b""
                crc = (protocol.crc32c(zeros) if zeros else 0) if not self.descriptor \
                    else (ctl.data_crc if ctl.data_len else 0)
                probe = dataclasses.replace(ctl, kind=Kind.UPDATE, length=ctl.data_len,
                                            data_crc=crc)
                await self._replay(probe, ctl)
                seq += 1
        st = await e.status()
        if (st.jiptr, st.joptr, st.next_seq, st.tail_seq, st.wrap_at) != (
                s.jiptr, s.joptr, s.next_seq, s.tail_seq, s.wrap_at):
            raise RelayError(f"engine rebuilt to JIPTR {st.jiptr} JOPTR {st.joptr} NEXT {st.next_seq} "
                             f"WRAP_AT {st.wrap_at}, store has {s.jiptr} {s.joptr} {s.next_seq} "
                             f"{s.wrap_at}")
        log.info("group %s: engine rebuilt from the store, journals %d..%d, JOPTR %d JIPTR %d "
                 "WRAP_AT %d", self.cfg.grname, s.tail_seq, s.next_seq - 1, s.joptr, s.jiptr,
                 s.wrap_at)

    #: The wall clock the engine's TIME is loaded from, in ns since the epoch
    #: (a test replaces it to set the clock back).
    wall_ns = staticmethod(time.time_ns)

    def time_base(self) -> int:
        """The TIME to LOAD into the engine: the wall clock, but never at or
        below the TIME of the newest journal the journal volume holds, so that
        TIME never goes backwards across a relay restart even when the wall
        clock was set back (the engine itself forgets LAST_TIME on reset, and
        a new engine may be a new board)."""
        now = self.wall_ns()
        s = self.store
        if s.held:
            newest, _ = s.read(s.next_seq - 1, 1)[0]
            if now <= newest.time:
                log.warning("group %s: the wall clock (%d ns) is not past the newest journal's "
                            "TIME (%d ns, SEQ# %d); the engine's TIME starts after it",
                            self.cfg.grname, now, newest.time, newest.seq)
                now = newest.time + 1
        return now

    async def _replay(self, probe: Control, stored: Control | None) -> None:
        if self.descriptor:
            ack = await self.engine.place(probe)
        else:
            ack = await self.engine.submit(probe, bytes(probe.data_len))
        if ack.status != Status.OK:
            raise RelayError(f"engine refused a replayed journal: {Status(ack.status).name}")
        if stored is not None and (ack.seq, ack.jofs) != (stored.seq, stored.jofs):
            raise RelayError(f"replayed seq {stored.seq} landed at seq {ack.seq} JOFS {ack.jofs}, "
                             f"store has JOFS {stored.jofs}")

    @staticmethod
    async def _expect(answer, what: str) -> None:
        ack = await answer
        if ack.status != Status.OK:
            raise RelayError(f"engine refused {what}: {Status(ack.status).name}")

    def _fault(self, message: str) -> GroupFault:
        """Engine and store can no longer be trusted to agree for this group:
        suspend it (nothing more is ACKed or forwarded) and return the error
        to raise.  Restarting the relay recovers both from the journal volume
        (docs/replication.md, "Relay restart"); other groups are untouched."""
        if not self.fault:
            self.fault = message
            self.grsts, self.reason = "SUSP", (f"{message}; restart the relay to recover the "
                                               f"group from its journal volume")
            log.critical("group %s suspended: %s", self.cfg.grname, self.reason)
            for link in (self.primary_link, self.secondary_link):
                if link is not None:
                    asyncio.get_running_loop().create_task(link.close())
        return GroupFault(self.reason)

    # -- from the primary -------------------------------------------------------

    async def serve_primary(self, link: Link, hello: protocol.Hello) -> None:
        """One primary connection; a newer one replaces it."""
        if self.primary_link is not None:
            await self.primary_link.close()
        async with self._ingest:    # the old connection's journals are all settled first
            self.primary_link = link
            self.primary_accepts += 1
            link.send(protocol.Hello(Role.RELAY, self.cfg.grnum, self.epoch, self.last_tag,
                                     self.cfg.grname, self.site.site).frame())
            answers: asyncio.Queue = asyncio.Queue()
            sender = asyncio.create_task(self._send_answers(link, answers))
            try:
                while True:
                    t0 = now()
                    frame = await link.recv()
                    if frame.type != FrameType.JNLWR:
                        answers.put_nowait(([(None, nak(Status.BAD_TYPE, frame.type))], 0.0))
                        continue
                    t1 = now()
                    batch = await self._ingest_frame(frame.body)
                    t2 = now()
                    PERF["relay.recv_wait"].add(t1 - t0)     # waiting for the next frame
                    PERF["relay.ingest"].add(t2 - t1)        # check, engine, store.append
                    PERF["relay.ingest_journals"].add(len(batch))   # journals per JNLWR
                    PERF["relay.answer_queue"].add(answers.qsize())
                    answers.put_nowait((batch, t2))     # one item per frame, not per journal
            except LinkError as exc:
                log.info("primary link: %s", exc)
            except GroupFault:
                pass         # logged by _fault; the journal that hit it is not answered
            finally:
                answers.put_nowait(None)
                await sender   # every accepted journal durable before the next connection
                await link.close()

    async def _ingest_one(self, body: bytes) -> tuple[int | None, Frame | protocol.Ack]:
        """A one-journal JNLWR body: (seq to wait durable for, answer), as below."""
        (answer,) = await self._ingest_frame(body)
        return answer

    async def _ingest_frame(self, body: bytes) -> list[tuple[int | None, Frame | protocol.Ack]]:
        """Take the journals of one JNLWR body (one or a batch, docs/protocol.md,
        "Journal batches"); returns, per journal and in order, (seq to wait
        durable for, answer: a frame, or an OK ``Ack`` framed only if it is sent,
        ``AnswerGate.add``).  The journals taken are written to the
        journal volume together (one ``pwritev`` per run of adjacent records)
        before this returns, so they share the next fdatasync.

        In descriptor mode the journals that pass the relay's own checks go to
        the engine as JNLDESC batches ("JNLDESC batches"): one engine round
        trip for a run of journals instead of one each (on ``sim`` or a board
        that round trip is most of the ingest time)."""
        try:
            journals = protocol.split_journals(body)
        except protocol.ProtocolError as exc:
            return [(None, nak(exc.status, FrameType.JNLWR))]     # nothing of it is taken
        answers: list[tuple[int | None, Frame]] = []
        taken: list[tuple[Control, memoryview]] = []
        async with (self._placing if self.descriptor else contextlib.nullcontext()):
            if self.descriptor:
                await self._take_descriptors(journals, taken, answers)
            else:
                for ctl, data in journals:
                    answers.append(await self._take(ctl, data, taken))
            if taken:
                try:
                    # In descriptor mode the relay checked every journal's
                    # DATA_CRC on these bytes before the engine allocated it
                    # (``_refusal``): the store does not check it a second time.
                    self.store.append_batch(taken, data_checked=self.descriptor)
                except StoreError as exc:
                    raise self._fault(f"journal volume refused seq {taken[0][0].seq}.."
                                      f"{taken[-1][0].seq}: {exc}") from None
                self._keep_recent(taken)
        if taken and self.cfg.durability is Durability.MEMORY:
            self._new.set()
            self._local_new.set()
        return answers

    def _refusal(self, ctl: Control, data: memoryview, last: int,
                 pending: int) -> tuple[int | None, Frame] | None:
        """The relay's own checks of one journal before the engine sees it:
        None to take it, else its answer (an ACK again for a resend, or a
        NAK).  ``last``: the PSEQ taken just before it (journals of this
        frame included); ``pending``: journals taken and not yet in the store."""
        admission = self.gate.admit(ctl.tag, last)
        if admission is Admission.RESEND:
            # A resend of a journal we hold: ACK it again once everything
            # before it is durable (it sits behind them in the answer queue).
            self.dups += 1
            return (self.store.next_seq - 1 + pending,
                    protocol.Ack(tag=ctl.tag, req_type=FrameType.JNLWR).frame())
        if admission is Admission.GAP:
            return None, nak(Status.BAD_REQUEST, FrameType.JNLWR, tag=ctl.tag)
        if self.grsts == "SUSP":
            return None, nak(Status.SUSPENDED, FrameType.JNLWR, tag=ctl.tag)
        if ctl.group != self.cfg.grnum:
            return None, nak(Status.WRONG_GROUP, FrameType.JNLWR, tag=ctl.tag)
        if self.descriptor:
            # The engine never sees the data: check here what it would (a
            # journal the store would refuse must not be allocated).  The
            # only DATA_CRC check of a journal's data at the relay's ingest:
            # the store trusts it (append_batch(data_checked=)).
            if ctl.data_len != len(data):
                return None, nak(Status.BAD_LENGTH, FrameType.JNLWR, tag=ctl.tag)
            if protocol.crc32c(data) != ctl.data_crc:
                return None, nak(Status.BAD_DCRC, FrameType.JNLWR, tag=ctl.tag)
        return None

    async def _take(self, ctl: Control, data: memoryview,
                    taken: list) -> tuple[int | None, Frame]:
        """One journal of a JNLWR: admit, allocate and stamp it (appended to
        ``taken`` for the store) or refuse it; its answer as for ``_ingest_frame``."""
        refused = self._refusal(ctl, data, self.gate.last, len(taken))
        if refused is not None:
            return refused
        return await self._place_one(ctl, data, taken)

    async def _place_one(self, ctl: Control, data: memoryview,
                         taken: list) -> tuple[int | None, Frame]:
        """A journal the relay's checks passed, to the engine alone (a JNLWR,
        or a JNLDESC of one); its answer as for ``_ingest_frame``."""
        try:
            if self.descriptor:
                # the primary sent a JNLWR: it gets the answer to one
                a = await self.engine.place(ctl)
                ack = protocol.Ack(a.seq, a.time, a.jofs, a.tag, a.status, FrameType.JNLWR)
            else:
                ack = await self.engine.submit(ctl, data)
        except EngineError as exc:
            raise self._fault(f"engine failed: {exc}") from None
        if ack.status != Status.OK:
            if ack.status == Status.FULL:
                self.fulls += 1
            return None, ack.frame()
        self._taken(ctl, data, ack, taken)
        return (None if self.cfg.durability is Durability.MEMORY else ack.seq), ack.frame()

    def _taken(self, ctl: Control, data: memoryview, ack: protocol.Ack, taken: list) -> None:
        taken.append((_stamp(ctl, ack), data))
        self.gate.taken(ctl.tag)
        self._arrivals.append((ack.seq, time.monotonic()))

    async def _take_descriptors(self, journals, taken: list, answers: list) -> None:
        """Descriptor mode: the journals of one frame, in order, each run of
        those the relay's checks pass placed by one JNLDESC batch; a journal
        the relay refuses ends a run and gets its answer in its place."""
        run: list[tuple[Control, memoryview]] = []
        last = self.gate.last
        for ctl, data in journals:
            refused = self._refusal(ctl, data, last, len(taken) + len(run))
            if refused is None and len(run) < self.desc_batch:
                run.append((ctl, data))
                last = ctl.tag
                continue
            if run:
                if not await self._place_run(run, taken, answers):
                    # cut short by a refusal: judge this journal again
                    # against what was really taken (a PSEQ gap now)
                    refused = self._refusal(ctl, data, self.gate.last, len(taken))
                run = []
            if refused is None:
                run.append((ctl, data))
                last = ctl.tag
            else:
                answers.append(refused)
                last = self.gate.last
        if run:
            await self._place_run(run, taken, answers)

    async def _place_run(self, run: list, taken: list, answers: list) -> bool:
        """Place ``run`` (journals the relay's checks passed, PSEQs in a row)
        with one JNLDESC batch; True if the engine took all of it.  The
        journals it took are stamped; the one it refused gets its NAK, and
        each after it the answer it got when journals went one by one: its
        PSEQ now follows a gap (BAD_REQUEST)."""
        if len(run) == 1 or self.desc_batch == 1:
            # one at a time: a JNLDESC of one (cheaper on the model)
            for i, (ctl, data) in enumerate(run):
                answer = await self._place_one(ctl, data, taken)
                answers.append(answer)
                if answer[1].type != FrameType.ACK:
                    self._after_refused(run[i + 1:], taken, answers)
                    return False
            return True
        ctls = [ctl for ctl, _ in run]
        try:
            ack = await self.engine.place_batch(ctls)
        except EngineError as exc:
            raise self._fault(f"engine failed: {exc}") from None
        if ack.status == Status.BAD_LENGTH and ack.seq == 0 and ack.tag == ctls[0].tag:
            # An engine without batches (the gateware before them; it takes
            # nothing of the frame): one descriptor per JNLDESC from now on.
            log.info("%s: the journal engine takes one descriptor per JNLDESC; "
                     "placing journals one by one", self.cfg.grname)
            self.desc_batch = 1
            return await self._place_run(run, taken, answers)
        # taken: all, or those before the refused one (its TAG is answered)
        n = len(run) if ack.status == Status.OK else [c.tag for c in ctls].index(ack.tag)
        if n:
            self._stamp_run(run[:n], ack, taken, answers)
        if ack.status == Status.OK:
            return True
        if ack.status == Status.FULL:
            self.fulls += 1
        answers.append((None, protocol.Ack(tag=ack.tag, status=ack.status,
                                           req_type=FrameType.JNLWR).frame()))
        self._after_refused(run[n + 1:], taken, answers)
        return False

    def _after_refused(self, rest: list, taken: list, answers: list) -> None:
        """The journals of a run after one the engine refused are not taken:
        their PSEQs now follow a gap, which the gate answers as it always does."""
        for ctl, data in rest:
            answers.append(self._refusal(ctl, data, self.gate.last, len(taken))
                           or (None, nak(Status.BAD_REQUEST, FrameType.JNLWR, tag=ctl.tag)))

    def _stamp_run(self, run: list, ack: protocol.Ack, taken: list, answers: list) -> None:
        """The first ``len(run)`` descriptors of a batch were taken: their
        SEQ#s run up to the answer's, all have its TIME, and each JOFS is
        where the allocation rules put it (the store's ``placements``, which
        must end at the answer's JOFS)."""
        n = len(run)
        lens = [c.data_len for c, _ in taken] + [c.data_len for c, _ in run]
        try:
            jofs = self.store.placements(lens)[len(taken):]
        except StoreError as exc:
            raise self._fault(f"engine placed seq {ack.seq - n + 1}..{ack.seq} where the "
                              f"journal volume has no room: {exc}") from None
        if jofs[-1] != ack.jofs:
            raise self._fault(f"engine placed seq {ack.seq} at JOFS {ack.jofs}, the journal "
                              f"volume at {jofs[-1]}; engine and volume out of step")
        memory = self.cfg.durability is Durability.MEMORY
        for i, (ctl, data) in enumerate(run):
            a = protocol.Ack(ack.seq - (n - 1 - i), ack.time, jofs[i], ctl.tag,
                             Status.OK, FrameType.JNLWR)
            self._taken(ctl, data, a, taken)
            answers.append((None if memory else a.seq, a))    # its frame only if it goes

    async def durable(self, seq: int) -> None:
        """Wait until journal ``seq`` is fsynced (group commit)."""
        if self.fault:
            raise GroupFault(self.reason)
        try:
            await self._commit.wait_durable(seq)
        except StoreError as exc:
            raise self._fault(f"journal volume fsync failed: {exc}") from None

    async def _send_answers(self, link: Link, answers: asyncio.Queue) -> None:
        """Send the answers in order (queued per frame: its list of (seq, answer)
        and when it was queued), each ACK once its journal is durable, the
        ACKs that are ready together merged into one cumulative ACK
        (``AnswerGate``).  Ends at the ``None`` that closes the queue."""
        gate = AnswerGate()
        closing = broken = False
        while not (closing and not gate):
            if not gate:
                item = await answers.get()
            else:
                try:
                    item = answers.get_nowait()
                except asyncio.QueueEmpty:
                    item = False
            while item is not False:           # everything queued so far joins the gate
                if item is None:
                    closing = True
                else:
                    batch, t = item
                    for seq, answer in batch:
                        gate.add(seq, answer, t)
                try:
                    item = answers.get_nowait()
                except asyncio.QueueEmpty:
                    item = False
            if not gate:
                continue
            if broken:
                gate.clear()                   # no ACK for what may not be on disk
                continue
            if (seq := gate.need()) is not None:
                try:
                    await self.durable(seq)
                except GroupFault:
                    broken = True
                    await link.close()
                    continue
                self._new.set()
                self._local_new.set()
            frames, times = gate.ready(self.store.durable_seq)
            t = now()
            for t_queued in times:
                PERF["relay.durable_wait"].add(t - t_queued)   # appended -> ACK queued
            if link.closed:
                continue
            for frame in frames:
                link.send(frame)
            if answers.empty():
                try:
                    await link.drain()
                except LinkError:
                    pass

    async def background_sync(self, period: float = 1.0) -> None:
        """Durability "memory": nothing waits for fsync, so write back once a second."""
        while not self.fault:
            await asyncio.sleep(period)
            if self.store.durable_seq < self.store.next_seq - 1:
                try:
                    await self.durable(self.store.next_seq - 1)
                except GroupFault:
                    return

    async def release_persister(self, period: float = RELEASE_PERSIST_PERIOD) -> None:
        """Persist the secondary's releases (JOPTR) every ``period`` seconds.

        Once per ACK cost a superblock write and fdatasync hundreds of times a
        second; once per period in the event loop still stopped it for an
        fdatasync ten times a second (``JournalStore.persist_soon``).  Losing
        a release that was not persisted only means the journals come back
        after a crash: the relay re-sends them and the secondary skips them
        (idempotent replay).
        """
        while not self.fault:
            await asyncio.sleep(period)
            try:
                if self.store.superblock_pending:
                    # Written a period ago and no fdatasync since (no journal
                    # came in): make it durable here, the loop has time.
                    self.store.persist()
                else:
                    # Written now, made durable by the group commit's next
                    # fdatasync: no fdatasync in the event loop under load.
                    self.store.persist_soon()
            except StoreError as exc:
                self._fault(f"journal volume superblock write failed: {exc}")

    # -- to the secondary --------------------------------------------------------

    def forwardable(self) -> int:
        """Highest SEQ# that may leave the relay: durable ones, unless policy says memory."""
        if self.cfg.durability is Durability.MEMORY:
            return self.store.next_seq - 1
        return min(self.store.durable_seq, self.store.next_seq - 1)

    def _forward_fault(self, reason: str) -> None:
        """Forwarding cannot go on (the journal stream downstream does not match,
        or a held journal is damaged): shown as SUSP with ``reason``, logged
        once.  Host writes are still taken until the journal fills."""
        if reason != self.forward_fault:
            self.forward_fault = reason
            log.error("group %s: forwarding stopped: %s", self.cfg.grname, reason)

    async def forwarder(self) -> None:
        """Patent Fig. 9: send journals to the secondary in SEQ# order, until a group fault."""
        while not self.fault:
            if self.store.next_seq == 1:
                # A relay that never took a journal has nothing to say to the
                # secondary -- and an idle standby relay (or one rebuilt empty)
                # must not look like the stream going backwards to it: it
                # connects with its first journal (then the SEQ# checks apply).
                await asyncio.sleep(RECONNECT_DELAY)
                continue
            hello = protocol.Hello(Role.RELAY, self.cfg.grnum, self.epoch,
                                   self.store.next_seq - 1, self.cfg.grname, self.site.site)
            try:
                link, peer = await connect(self.cfg.peer, hello, heartbeat=self.site.heartbeat,
                                           name=f"{self.site.site}->secondary",
                                           **tls.client_args(self.site, self.cfg))
            except LinkRefused as exc:
                self._forward_fault(f"the secondary refused this relay's HELLO: "
                                    f"{exc.status.name} (its status says why)")
                await asyncio.sleep(FAULT_RETRY_DELAY)
                continue
            except LinkError as exc:
                log.debug("secondary not reachable: %s", exc)
                await asyncio.sleep(RECONNECT_DELAY)
                continue
            why = self.forward.refuse(peer, self.store.next_seq - 1, self.store.tail_seq)
            if why is not None:
                self._forward_fault(why)
                await link.close()
                await asyncio.sleep(FAULT_RETRY_DELAY)
                continue
            if self.forward_fault:
                log.info("group %s: forwarding resumed (was: %s)", self.cfg.grname,
                         self.forward_fault)
                self.forward_fault = ""
            self.secondary_link = link
            self.secondary_connects += 1
            # What the secondary has restored was forwarded by this relay, maybe
            # before a restart: it may be released, and nothing past it.
            nxt = self.forward.start(peer.last_seq, self.store.tail_seq)
            self._acked.set()
            rx = asyncio.create_task(self._secondary_acks(link))
            try:
                await self._release(peer.last_seq)
                await self._send_loop(link, nxt)
            except LinkError as exc:
                log.info("secondary link: %s", exc)
            except CorruptStore as exc:
                # The primary is still in PAIR (it knows nothing of this), so it
                # would refuse a resync: a restart's recovery scan ends the journal
                # at the damaged record, the primary then finds its ACKed journals
                # missing and suspends, and the resync repairs the SVOLs.
                self._forward_fault(
                    f"a held journal is damaged: {exc}; journals {self.forwarded + 1}.."
                    f"{self.store.next_seq - 1} cannot reach the secondary: restart the relay "
                    f"(the records after the damaged one go to quarantine), then run "
                    f"`tricopy pair resync` once the primary suspends")
                await asyncio.sleep(FAULT_RETRY_DELAY)
            except StoreError as exc:
                self._fault(f"journal volume read failed: {exc}")
            except GroupFault:
                pass          # logged by _fault
            finally:
                rx.cancel()
                await link.close()
                self.secondary_link = None
            await asyncio.sleep(RECONNECT_DELAY)

    async def _send_loop(self, link: Link, nxt: int) -> None:
        while not link.closed:
            if not (room := self.forward.room(nxt)):
                self._acked.clear()
                await self._wait(self._acked)
                continue
            last = self.forwardable()
            if nxt > last:
                self._new.clear()
                await self._wait(self._new)
                continue
            nxt = max(nxt, self.store.tail_seq)
            n = min(FORWARD_BATCH, room, last - nxt + 1)
            batch = self._from_recent(nxt, n) or self.store.read(nxt, n, FORWARD_BYTES)
            PERF["relay.forward_batch"].add(len(batch))
            for ctl, data in batch:
                link.send_journal(ctl.pack(), data)     # batches of JNLWR (docs/protocol.md)
            await link.drain()
            nxt += len(batch)
            self.forward.sent(nxt - 1)

    def _keep_recent(self, taken: list) -> None:
        """Keep the journals just stored for the forwarder (RECENT_BYTES)."""
        recent = self._recent
        for ctl, data in taken:
            recent.append((ctl, data))
            self._recent_bytes += len(data)
        while self._recent_bytes > RECENT_BYTES and recent:
            self._recent_bytes -= len(recent.popleft()[1])

    def _from_recent(self, nxt: int, n: int) -> list[tuple[Control, memoryview]]:
        """Journals ``nxt``.. (at most ``n``) from memory, dropping the ones
        before ``nxt`` (sent, or released); empty when ``nxt`` is not there
        (the forwarder then reads the journal volume)."""
        recent = self._recent
        while recent and recent[0][0].seq < nxt:
            self._recent_bytes -= len(recent.popleft()[1])
        out = []
        size = 0
        for ctl, data in recent:
            # the same stream, SEQ# by SEQ#, or nothing (epoch turn, gap)
            if len(out) == n or ctl.seq != nxt + len(out) or ctl.epoch != self.store.epoch:
                break
            size += len(data)
            if out and size > FORWARD_BYTES:
                break
            out.append((ctl, data))
        return out

    async def _wait(self, event: asyncio.Event) -> None:
        await wait_at_most(event, 0.5)      # bounded: also notices a closed link

    async def _secondary_acks(self, link: Link) -> None:
        try:
            while True:
                frame = await link.recv()
                if frame.type == FrameType.ACK:
                    try:
                        upto = self.forward.ack(protocol.Ack.from_frame(frame).seq)
                    except ForwardViolation as exc:
                        # Never release what was not sent: a secondary ACKing more
                        # is not restoring this stream.
                        log.error("group %s: %s; dropping the link", self.cfg.grname, exc)
                        await link.close()
                        return
                    await self._release(upto)
                else:
                    log.warning("secondary answered %s; reconnecting", frame.type.name)
                    await link.close()
                    return
        except (LinkError, protocol.ProtocolError) as exc:
            log.info("secondary link: %s", exc)
            await link.close()
        except GroupFault:
            await link.close()      # logged by _fault

    # -- takeover to the relay (patent [0073]; host/rcm/takeover.py) --------------------

    async def promote(self, epoch: int, restored: int) -> dict:
        """The relay site becomes the group's writer at ``epoch``: host writes to
        its data volumes are journaled here and forwarded to the far secondary,
        which restored everything up to ``restored`` (all the journals held:
        the RCM fenced the old primary and waited).  Idempotent."""
        if self.local is None:
            raise ControlError(f"group {self.cfg.grname} has no data volumes at the relay: "
                               f"there is nothing to write to here")
        if self.jnlg.takeover.get("epoch") == epoch:
            return dict(self.jnlg.takeover)
        if epoch < self.jnlg.fence_epoch or epoch <= self.epoch:
            raise ControlError(f"takeover to epoch {epoch}: group {self.cfg.grname} is at epoch "
                               f"{self.epoch}, fenced at {self.jnlg.fence_epoch}")
        if self.local.needs_resync:
            raise ControlError(f"group {self.cfg.grname}: the relay's copy is no consistent "
                               f"image ({self.local.needs_resync}); take over at the secondary "
                               f"(`tricopy takeover --to secondary`)")
        async with self._ingest:
            s = self.store
            if restored < s.next_seq - 1 or self.local.last_restored < s.next_seq - 1:
                raise ControlError(f"the relay issued journals up to SEQ# {s.next_seq - 1}; the "
                                   f"secondary restored {restored} and the relay's copy "
                                   f"{self.local.last_restored}: wait for both")
            record = {"epoch": epoch, "seq": s.next_seq - 1, "at": time.time(), "site": "relay"}
            await self._new_stream(epoch, lambda: setattr(self.jnlg, "takeover", record))
            self.local.writer = self.local_write
        log.warning("group %s taken over at the relay at SEQ# %d, epoch %d: its data volumes "
                    "are writable; journals go on to the secondary", self.cfg.grname,
                    record["seq"], epoch)
        return record

    # -- failback from the relay site (host/rcm/failback.py) ------------------------

    def _taken_here(self) -> dict:
        t = self.jnlg.takeover
        if not t or t.get("site") != "relay" or self.local is None:
            raise ControlError(f"group {self.cfg.grname} was not taken over at the relay site")
        return t

    async def quiesce_local(self, epoch: int) -> dict:
        """Failback to the primary at ``epoch``, step 1: take no more host writes
        here (durably: a restart does not take them either); those in flight
        finish as journals and reach the secondary."""
        t = self._taken_here()
        if t.get("failback") not in (None, epoch):
            raise ControlError(f"group {self.cfg.grname}: a failback to epoch {t['failback']} "
                               f"is under way, not to {epoch}: run it again")
        if "failback" not in t:
            t["failback"] = epoch
            self._table.save()
            log.warning("group %s: quiesced for a failback to epoch %d: the relay's data "
                        "volumes take no more writes", self.cfg.grname, epoch)
        async with self._ingest:      # a write being stamped now is in the journal after this
            return {"last_seq": self.store.next_seq - 1, "last_tag": self.last_tag,
                    "secondary_acked": self.secondary_acked,
                    "local_restored": self.local.last_restored}

    async def local_digest(self, idx: int, first: int, count: int) -> list[str]:
        from ..rcm.verify import chunk_digests
        self._taken_here()
        async with self.local._restore_lock:     # between two restore steps
            return chunk_digests(self.local.volumes[idx], first, min(count, 256))

    async def local_read(self, idx: int, offset: int, length: int) -> bytes:
        if "failback" not in self._taken_here():
            raise ControlError(f"group {self.cfg.grname}: the relay's data volumes are read "
                               f"for a failback only once quiesced")
        vol = self.local.volumes.get(idx)
        if vol is None:
            raise ControlError(f"no data volume idx {idx} at the relay")
        vol.check(offset, length)
        async with self.local._restore_lock:
            return vol.read(offset, length)

    async def demote(self, epoch: int) -> dict:
        """Failback from the relay site, the relay's step: it is no longer the
        writer; a new stream at ``epoch`` carries the primary's journals again.
        Every journal it stamped must be at the secondary (and on its own
        copy) first.  Idempotent."""
        s = self.store
        if self.epoch == epoch and not self.jnlg.takeover:
            return {"last_seq": s.next_seq - 1, "last_tag": self.last_tag, "epoch": epoch}
        t = self._taken_here()
        if t.get("failback") != epoch:
            raise ControlError(f"group {self.cfg.grname}: quiesce the relay for a failback to "
                               f"epoch {epoch} first")
        if self.secondary_acked < s.next_seq - 1 or self.local.last_restored < s.next_seq - 1:
            raise ControlError(f"the relay issued journals up to SEQ# {s.next_seq - 1}; the "
                               f"secondary restored {self.secondary_acked} and the relay's copy "
                               f"{self.local.last_restored}: wait for both")
        self.local.writer = None
        async with self._ingest:
            await self._new_stream(epoch, lambda: setattr(self.jnlg, "takeover", {}))
        log.warning("group %s: the relay site gives the group back: journals from the primary "
                    "at epoch %d, after PSEQ %d", self.cfg.grname, epoch, self.last_tag)
        return {"last_seq": s.next_seq - 1, "last_tag": self.last_tag, "epoch": epoch}

    async def local_write(self, kind: Kind, idx: int, offset: int, length: int,
                          data: bytes) -> None:
        """One host write at the relay after a takeover to it: a journal from this
        site (its own PSEQ), durable in the journal volume, then applied to the
        relay's copy in SEQ# order before the host is answered."""
        async with self._ingest:
            if "failback" in self.jnlg.takeover:     # quiesced while this write waited
                raise VolumeError(f"group {self.cfg.grname}: the relay is quiesced for a "
                                  f"failback to the primary: write there once it ends")
            ctl = Control(address=offset, length=length, data_len=len(data),
                          data_crc=protocol.crc32c(data) if data else 0, epoch=self.epoch,
                          idx=idx, kind=kind, group=self.cfg.grnum,
                          tag=next_pseq(self.gate.last)).with_ccrc()
            seq, answer = await self._ingest_one(protocol.journal_body(ctl, data))
        if seq is None:
            nak = answer_ack(answer)
            if nak.status == Status.FULL:
                raise OSError(errno.ENOSPC, f"the relay's journal of group {self.cfg.grname} "
                                            f"is full: the secondary is behind")
            raise VolumeError(f"group {self.cfg.grname}: the relay refused the write: "
                              f"{Status(nak.status).name}")
        await self.durable(seq)
        self._new.set()
        self._local_new.set()
        await self.local.wait_applied(seq)

    async def local_tasks(self) -> None:
        """The relay's data volumes: fed from the journal volume, restored like an
        SVOL, and what they hold durably (with the secondary) released."""
        lc = self.local
        tasks = [asyncio.create_task(lc.feed(self.store, self.forwardable, self._local_new,
                                             lambda: bool(self.fault))),
                 asyncio.create_task(lc.restorer(self.cfg.restore_interval))]
        try:
            done = self.store.tail_seq - 1
            while not self.fault:
                await asyncio.sleep(LOCAL_RELEASE_EVERY)
                upto = min(self.secondary_acked, lc.last_restored)
                if upto > done and upto >= self.store.tail_seq:
                    await self._release(upto)
                    done = upto
        finally:
            for t in tasks:
                t.cancel()

    async def _release(self, upto: int) -> None:
        """The secondary holds everything up to ``upto`` for good: move JOPTR
        (not past what the relay's own data volumes hold durably, if any --
        unless they lack journals already released: they wait for `pair
        resync`, not for journals, and holding these would fill the journal)."""
        if self.local is not None and not self.local.needs_resync:
            upto = min(upto, self.local.last_restored)
        self._acked.set()
        while self._arrivals and self._arrivals[0][0] <= upto:
            self._arrivals.popleft()
        s = self.store
        upto = min(upto, s.next_seq - 1)
        if upto < s.tail_seq:
            return
        if self.descriptor:
            # The store holds the records: it releases first and tells the
            # engine where JOPTR goes (the engine has no records to walk);
            # no journal is placed in between (``_placing``).
            async with self._placing:
                try:
                    joptr = s.release(upto, persist=False)
                except StoreError as exc:
                    raise self._fault(f"journal volume refused RELEASE {upto}: {exc}") from None
                ack = await self.engine.release(upto, joptr)
            if ack.status != Status.OK:
                raise self._fault(f"engine refused RELEASE {upto} JOPTR {joptr}: "
                                  f"{Status(ack.status).name}")
            return
        ack = await self.engine.release(upto)
        if ack.status != Status.OK:
            raise self._fault(f"engine refused RELEASE {upto}: {Status(ack.status).name}")
        try:
            # In memory only: release_persister writes JOPTR a little later, and
            # the store persists it first if the space is reused before that
            # (docs/store.md, "Lazy release").  An emptying release makes the
            # store save the newest TAG first (on_persist_empty).
            s.release(upto, persist=False)
        except StoreError as exc:
            raise self._fault(f"journal volume refused RELEASE {upto}: {exc}") from None

    async def adopt(self, epoch: int, last_tag: int | None = None) -> dict:
        """Carry the group's journals in a new stream at ``epoch``: the primary moved
        to this relay from the other one (the standby, or back; docs/operations.md,
        "A standby relay").  What this relay still holds is of an older stream --
        its writes reach the secondary by the resync's copy instead -- and is
        dropped.  ``last_tag``: the primary's last PSEQ, after which its
        journals come (so PSEQs are never reused, and the primary's region
        table stays exact).  Idempotent."""
        if epoch != self.epoch:
            if epoch < self.epoch or epoch < self.jnlg.fence_epoch:
                raise ControlError(f"group {self.cfg.grname}: no new stream at epoch {epoch}: "
                                   f"this relay is at epoch {self.epoch}, fenced at "
                                   f"{self.jnlg.fence_epoch}")
            dropped = self.store.held
            if self.primary_link is not None:
                await self.primary_link.close()
            async with self._ingest:      # nothing half taken from the old stream
                await self._new_stream(epoch, lambda: None)
                if last_tag is not None:
                    self._save_last_tag(last_tag)     # durable before the gate moves
                    self.gate.last = last_tag
            log.warning("group %s: a new journal stream at epoch %d starts here after SEQ# %d "
                        "(PSEQ %d); %d journals of the old stream dropped (the resync copies "
                        "their writes)", self.cfg.grname, epoch, self.store.next_seq - 1,
                        self.last_tag, dropped)
        return {"last_seq": self.store.next_seq - 1, "last_tag": self.last_tag,
                "epoch": self.epoch}

    def pair_set(self, grsts: str, consistent_seq: int | None = None) -> None:
        """The RCM moved the pair (docs/operations.md); persisted in the JNLG table.
        ``consistent_seq``: where the relay's data volumes (if any) are an image."""
        if grsts not in GRSTS:
            raise ControlError(f"grsts must be one of {', '.join(GRSTS)}, not {grsts!r}")
        self.jnlg.set_state(grsts)
        if consistent_seq is not None:
            self.jnlg.consistent_seq = consistent_seq
        self._table.save()

    async def resync_local(self) -> dict | None:
        """``pair resync`` (after ``pair_set`` COPY): a relay copy that lacks
        released journals takes the copy of the PVOL that follows, from the
        relay's newest SEQ# on (RelayCopy.resync); None if it needs none."""
        if self.local is None or not self.local.needs_resync:
            return None
        # (Not under _ingest, which the primary's connection holds: a journal
        # taken meanwhile comes before the copy, which rewrites every chunk.)
        relay_seq = self.store.next_seq - 1
        was = await self.local.resync(relay_seq)
        self._local_new.set()
        return {**was, "relay_seq": relay_seq}

    def lag(self) -> float:
        """Seconds the oldest journal not yet restored has waited here (0 when none)."""
        if not self.store.held:
            return 0.0
        # A journal held across a restart has no arrival time: count from now.
        first = self._arrivals[0][1] if self._arrivals else time.monotonic()
        return max(0.0, time.monotonic() - first)

    async def fence(self, epoch: int) -> int:
        """A takeover to ``epoch`` is under way: take nothing more from a primary
        below it (durably), settle what was taken; returns the last SEQ# issued.

        The journals held stay at their epoch and keep going to the secondary:
        the takeover waits until it has restored them all.
        """
        if epoch > self.jnlg.fence_epoch:
            self.jnlg.fence_epoch = epoch
            self._table.save()
            log.warning("group %s fenced for a takeover to epoch %d: no journal from a primary "
                        "at epoch %d is taken any more", self.cfg.grname, epoch, self.epoch)
        if self.primary_link is not None:
            await self.primary_link.close()
        async with self._ingest:     # the old connection's journals all settled (durable)
            return self.store.next_seq - 1

    @property
    def epoch(self) -> int:
        """The epoch of the journal stream this relay takes and forwards (durable)."""
        return self.store.epoch

    async def _new_stream(self, epoch: int, change) -> None:
        """A new journal stream at ``epoch`` (failback, swap, takeover to the relay),
        every held journal being on the next writer's volumes: release them, move
        the journal volume's epoch (durable), then the table (``change`` edits
        the row before it is saved; see __init__ for a crash in between), then
        the engine, the forwarder and the relay's own copy."""
        s = self.store
        if self.secondary_link is not None:
            await self.secondary_link.close()
        if s.held:
            await self._release(s.next_seq - 1)
        s.set_epoch(epoch)
        self._recent.clear()
        self._recent_bytes = 0
        self.jnlg.epoch = epoch
        self.jnlg.fence_epoch = max(self.jnlg.fence_epoch, epoch)
        change()
        self._table.save()
        await self.recover_engine()        # the engine stamps the new epoch from now on
        self.forward = ForwardStream(epoch, s.next_seq - 1)
        if self.local is not None:
            self.local.stream.epoch = epoch

    async def rejoin(self, epoch: int, restored: int, reverse: bool = False) -> dict:
        """Failback (host/rcm/failback.py): a new journal stream at ``epoch``.

        The site that took over restored every journal up to ``restored``;
        the ones held here are released (they are on its volumes), and the
        old primary, back at ``epoch``, continues after this relay's last
        PSEQ.  A journal held past ``restored`` is a write only this relay
        has (a forced takeover): refused, the failback must compare digests
        and then ``pair resync`` must clear the relay first.
        Idempotent: a failback run again after a crash finds it done.

        With ``reverse`` (a planned swap) the journals come from the other data
        site from now on and go to the first one (``config.swapped``).
        """
        if epoch == self.epoch:
            return {"last_seq": self.store.next_seq - 1, "last_tag": self.last_tag,
                    "epoch": self.epoch}
        if epoch <= self.epoch or epoch < self.jnlg.fence_epoch:
            raise ControlError(f"failback to epoch {epoch}: group {self.cfg.grname} is at epoch "
                               f"{self.epoch}, fenced at {self.jnlg.fence_epoch}")
        if self.primary_link is not None:
            await self.primary_link.close()
        async with self._ingest:       # no journal comes in meanwhile (none is taken: fenced)
            s = self.store
            if s.next_seq - 1 > restored:
                raise ControlError(f"the relay holds journals up to SEQ# {s.next_seq - 1} but the "
                                   f"site that took over restored only up to {restored}: the "
                                   f"writes in between are only here; run `tricopy failback "
                                   f"--digest` after `tricopy pair delete` at the relay")
            # (a copy that lacks released journals waits for `pair resync`, not
            # for them: it holds up no failback)
            if self.local is not None and not self.local.needs_resync \
                    and self.local.last_restored < s.next_seq - 1:
                raise ControlError(f"the relay's data volumes restored up to SEQ# "
                                   f"{self.local.last_restored} of {s.next_seq - 1}: run the "
                                   f"command again once they caught up")

            def turn_around() -> None:
                if reverse:
                    self.jnlg.reversed = not self.jnlg.reversed
                    self.cfg = swapped(self.cfg)
            await self._new_stream(epoch, turn_around)
            self.forward_fault = self.reason = ""
            self.grsts = "PAIR"
        log.warning("group %s: failback: journal stream at epoch %d from SEQ# %d",
                    self.cfg.grname, epoch, self.store.next_seq)
        return {"last_seq": self.store.next_seq - 1, "last_tag": self.last_tag, "epoch": epoch}

    def refuse_primary(self, hello: protocol.Hello) -> str | None:
        """Why a primary's HELLO is refused for its epoch, naming both; or None."""
        if self.jnlg.fence_epoch and hello.epoch < self.jnlg.fence_epoch:
            return (f"primary {hello.site!r} is at epoch {hello.epoch} but group "
                    f"{self.cfg.grname} was taken over at epoch {self.jnlg.fence_epoch}: "
                    f"it must rejoin as the restore side")
        if hello.epoch != self.epoch:
            return f"primary {hello.site!r} is at epoch {hello.epoch}, this group at {self.epoch}"
        return None

    def oldest_age(self) -> float | None:
        """Seconds since the oldest journal held was stamped (its TIME, the
        wall clock loaded into the engine); None when nothing is held."""
        s = self.store
        if not s.held:
            return None
        if self._oldest is None or self._oldest[0] != s.tail_seq:
            try:
                self._oldest = (s.tail_seq, s.read(s.tail_seq, 1)[0][0].time)   # once per tail
            except (StoreError, OSError):
                return None        # a failed volume: status says why elsewhere (reason)
        return round((self.wall_ns() - self._oldest[1]) / 1e9, 3)

    def status(self) -> dict:
        s = self.store
        state = "SUSP" if self.grsts == "SUSP" or self.forward_fault else self.jnlg.grsts
        return {"grnum": self.cfg.grnum, "grname": self.cfg.grname, "attr": "INTERMEDIARY",
                "grsts": state, "reason": self.reason or self.forward_fault,
                "durability": self.cfg.durability.value,
                "forwarded": self.forwarded, "lag": round(self.lag(), 3),
                "used_pct": round(100.0 * s.used / s.size, 2),
                "oldest_age_s": self.oldest_age(),
                "jiptr": s.jiptr, "joptr": s.joptr, "size": s.size, "used": s.used,
                "next_seq": s.next_seq, "tail_seq": s.tail_seq, "held": s.held,
                "durable_seq": s.durable_seq, "last_tag": self.last_tag,
                "secondary_acked": self.secondary_acked, "fulls": self.fulls, "dups": self.dups,
                "primary_accepts": self.primary_accepts,
                "secondary_connects": self.secondary_connects,
                "recovery_warning": self.recovery_warning,
                "fence_epoch": self.jnlg.fence_epoch, "epoch": self.epoch,
                "reversed": self.jnlg.reversed, "takeover": self.jnlg.takeover or None,
                "swap_blocker": swap_problem(self.site, self.cfg),
                "clean_start": bool(s.recovery and s.recovery.clean),
                "primary_connected": self.primary_link is not None and not self.primary_link.closed,
                "secondary_connected": self.secondary_link is not None,
                "local": self.local.summary() if self.local is not None else None}


class Relay:
    """The relay site process."""

    def __init__(self, cfg: SiteConfig, engine_kind: str = "model", engine_url: str | None = None,
                 engine_mode: str | None = None):
        self.cfg = cfg
        self.engine_kind = engine_kind
        self.engine_url = engine_url
        # Descriptor rings by default on every backend: the model and the
        # sim without data memory, the gateware has them too (the iCEBreaker
        # bitstream has nothing else: docs/hardware.md, "Descriptor rings").
        if engine_mode is None:
            engine_mode = "descriptor"
        if engine_mode not in ENGINE_MODES:
            raise ValueError(f"engine mode must be one of {', '.join(ENGINE_MODES)}, "
                             f"not {engine_mode!r}")
        self.engine_mode = engine_mode
        # A board (or any engine behind one URL) holds one ring, one SEQ# and
        # one epoch: two groups on it would share them.  Refused at start.
        groups = [g.grname for g in cfg.groups if g.attr is GroupAttr.INTERMEDIARY]
        if engine_kind in ("board", "port") and len(groups) > 1:
            raise RelayError(f"--engine {engine_kind} drives one engine "
                             f"({engine_url or 'the default URL'}) and an engine holds one "
                             f"journal group, but this config has {len(groups)} groups "
                             f"({', '.join(groups)}): run one relay process per group, each "
                             f"with its own --engine-url (its own board), or --engine model")
        self.groups: dict[int, RelayGroup] = {}
        self.control = ControlServer({"status": self._status, "jnlg": self._jnlg,
                                      "pair_set": self._pair_set, "fence": self._fence,
                                      "rejoin": self._rejoin, "snapshot": self._snapshot,
                                      "promote": self._promote, "adopt": self._adopt,
                                      "quiesce": self._quiesce, "digest": self._digest,
                                      "read": self._read, "demote": self._demote})

    async def _jnlg(self, req: Request) -> dict:
        return JnlgTable.for_site(self.cfg.state_dir).to_json(self.cfg.site)

    def _named(self, req: Request) -> "RelayGroup":
        grname = req.text("group")
        for g in self.groups.values():
            if g.cfg.grname == grname:
                return g
        raise ControlError(f"no INTERMEDIARY group named {grname!r} at the relay")

    async def _quiesce(self, req: Request) -> dict:
        return await self._named(req).quiesce_local(req.integer("epoch"))

    async def _digest(self, req: Request) -> dict:
        g = self._named(req)
        return {"digests": await g.local_digest(req.integer("idx"), req.integer("first"),
                                                req.integer("count"))}

    async def _read(self, req: Request) -> dict:
        g = self._named(req)
        data = await g.local_read(req.integer("idx"), req.integer("offset"),
                                  req.integer("length"))
        return {"data": base64.b64encode(data).decode()}

    async def _demote(self, req: Request) -> dict:
        return await self._named(req).demote(req.integer("epoch"))

    async def _adopt(self, req: Request) -> dict:
        return await self._named(req).adopt(req.integer("epoch"),
                                           req.integer("last_tag", None))

    async def _pair_set(self, req: Request) -> dict:
        g = self._named(req)
        g.pair_set(req.text("grsts"), req.integer("consistent_seq", None))
        local = await g.resync_local() if req.flag("local_resync") else None
        return {"grsts": g.jnlg.grsts, "local_resync": local}

    async def _fence(self, req: Request) -> dict:
        g = self._named(req)
        last = await g.fence(req.integer("epoch"))
        return {"last_seq": last, "fence_epoch": g.jnlg.fence_epoch}

    async def _snapshot(self, req: Request) -> dict:
        """Tests/forensics: copy the relay's data volumes (between restore steps)
        into ``<state_dir>/snapshots/<name>``; only a plain name."""
        g = self._named(req)
        if g.local is None:
            raise ControlError(f"group {g.cfg.grname} has no data volumes at the relay")
        name = req.text("name")
        if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
            raise ControlError(f"snapshot name must be letters, digits, '-', '_', '.', "
                               f"not {name!r}")
        folder = self.cfg.state_dir / "snapshots" / name
        applied, consistent = await g.local.snapshot(folder)
        return {"last_restored": applied, "consistent": consistent, "folder": str(folder)}

    async def _promote(self, req: Request) -> dict:
        g = self._named(req)
        return await g.promote(req.integer("epoch"), req.integer("restored"))

    async def _rejoin(self, req: Request) -> dict:
        g = self._named(req)
        return await g.rejoin(req.integer("epoch"), req.integer("restored"), req.flag("reverse"))

    async def _status(self, req: Request) -> dict:
        return {"site": self.cfg.site, "role": "relay", "engine": self.engine_kind,
                "engine_mode": self.engine_mode,
                "groups": [g.status() for g in self.groups.values()], "perf": PERF.to_json()}

    async def run(self) -> None:
        for g in self.cfg.groups:
            if g.attr is not GroupAttr.INTERMEDIARY:
                continue
            descriptor = self.engine_mode == "descriptor"
            # A model for descriptor rings needs no data memory: no second
            # copy of the journal volume in this process.
            engine = open_engine(self.engine_kind, size=g.journal.size, url=self.engine_url,
                                 memory=0 if descriptor else None)
            group = RelayGroup(g, self.cfg, engine, descriptor=descriptor)
            try:
                await group.recover_engine()
            except CorruptStore as exc:
                if not group.store.recovery.clean:
                    raise
                # The clean-shutdown mark says where the log ends, not that no
                # record rotted since the stop (the clean open reads no journal
                # data).  The mark is gone and close() leaves none after a damaged
                # read, so opening again runs the full recovery (quarantine).
                log.error("group %s: %s after a clean start; recovering the journal volume "
                          "with a full scan", g.grname, exc)
                await group._commit.aclose()
                group.store.close()
                group = RelayGroup(g, self.cfg, engine, descriptor=descriptor)
                await group.recover_engine()
            self.groups[g.grnum] = group
        if not self.groups:
            raise RelayError("relay config has no INTERMEDIARY group")
        server = await tls.start_link_server(self._accept, self.cfg)   # mutual TLS, limits
        if self.cfg.control:
            await self.control.start(self.cfg.control, self.cfg)
        if self.cfg.metrics:
            from ..rcm.metrics import RELAY_FSYNC_SECONDS, SiteCollector, serve_metrics
            for g in self.groups.values():
                g._commit.on_fsync = RELAY_FSYNC_SECONDS.labels(g.cfg.grname).observe
            self.metrics = await serve_metrics(self.cfg.metrics, SiteCollector(
                "relay", self.cfg.site, lambda: [g.status() for g in self.groups.values()]))
        log.info("relay %s listening on %s:%d", self.cfg.site, *self.cfg.listen)
        copies = [g.local for g in self.groups.values() if g.local is not None]
        if self.cfg.nbd is not None and copies:    # the relay's data volumes, read-only
            from ..nbd.primary_export import secondary_exports, serve_site_volumes
            self.nbd = await serve_site_volumes(self.cfg.nbd, secondary_exports(copies))
        forwarders = [asyncio.create_task(g.forwarder()) for g in self.groups.values()]
        forwarders += [asyncio.create_task(g.local_tasks()) for g in self.groups.values()
                       if g.local is not None]
        forwarders += [asyncio.create_task(g.release_persister()) for g in self.groups.values()]
        forwarders += [asyncio.create_task(g.background_sync()) for g in self.groups.values()
                       if g.cfg.durability is Durability.MEMORY]
        async with server:
            await asyncio.gather(server.serve_forever(), *forwarders)

    async def aclose(self) -> None:
        """Clean stop (SIGTERM): links closed, then each journal volume gets its
        pending release persisted, an fdatasync and is closed; the engines
        are closed last.  A group that faulted is closed without writes."""
        for g in self.groups.values():
            for link in (g.primary_link, g.secondary_link):
                if link is not None:
                    await link.close()
            await g._commit.aclose()      # a running fsync ends first
            try:
                g.store.close()
            except (StoreError, OSError) as exc:
                log.warning("group %s: closing journal volume %s: %s", g.cfg.grname,
                            g.store.path, exc)
            await g.engine.close()

    async def _accept(self, reader, writer) -> None:
        link = Link(reader, writer, initiator=False, heartbeat=self.cfg.heartbeat,
                    name=f"{self.cfg.site}<-primary")
        try:
            hello = await link.expect_hello()
        except LinkError as exc:
            log.info("primary link: %s", exc)
            return
        group = self.groups.get(hello.group)
        tag = 0
        if hello.role != Role.PRIMARY or group is None or hello.grname != group.cfg.grname:
            log.warning("%s: refused HELLO from %s: wrong group (role %s, group %d %r is not "
                        "an INTERMEDIARY group here)", link.name, link.peername,
                        Role(hello.role).name, hello.group, hello.grname)
            status = Status.WRONG_GROUP
        elif (why := tls.refuse_upstream(link, group.cfg)) is not None:
            log.warning("%s: refused %s: %s", link.name, link.peername, why)
            status = Status.WRONG_GROUP
        elif (why := group.refuse_primary(hello)) is not None:
            log.warning("%s: refused HELLO: %s", link.name, why)
            status = Status.STALE_EPOCH
            tag = max(group.jnlg.fence_epoch, group.epoch)   # ours, so the peer names both
        elif group.fault:
            status = Status.SUSPENDED
        else:
            await group.serve_primary(link, hello)
            return
        link.send(nak(status, FrameType.HELLO, tag=tag))
        try:
            await link.drain()
        except LinkError:
            pass
        await link.close()
