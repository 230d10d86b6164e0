"""Group commit: many concurrent appends share one fsync.

A thin asyncio adapter over the synchronous :class:`~.store.JournalStore`.
``append_durable`` writes the journal at once (in the event loop thread, so
appends stay in the order they were called) and then waits until a
fdatasync that started *after* the write has finished.  Up to
``SYNCS_IN_FLIGHT`` fdatasyncs run at a time, in worker threads; appends
that arrive while they run wait for the next one, which then covers all of
them.  Under load the number of
fsyncs per second stays at what the disk does, and the journals per fsync
grow with the number of concurrent callers.  When no sync is in flight and
the disk has been fast, the sync runs in the event loop instead
(``INLINE_SYNC_BELOW``): at low depth the thread hand-off cost more than
the fdatasync.
"""

from __future__ import annotations

import asyncio
import enum

from ..disk.inline import INLINE_HISTORY, INLINE_SYNC_BELOW, InlineWindow
from ..disk.worker import BlockingWorker
from ..wire.protocol import Control
from ..perf import PERF, now
from .store import JournalStore

__all__ = ["Durability", "GroupCommitter", "SYNCS_IN_FLIGHT"]


class Durability(enum.Enum):
    """When ``append_durable`` returns (docs/architecture.md, invariant 1)."""
    #: after the journal is fdatasynced: the default, and the only safe policy.
    FSYNC = "fsync"
    #: UNSAFE, for benchmarks only: as soon as the journal is in the page
    #: cache.  A power cut or kernel crash loses journals that were acked.
    NONE = "none"


#: fdatasyncs in flight at once.  One was the ceiling under load: a journal
#: appended while a sync ran waited for it to end and then for the next
#: (docs/benchmarks.md, "Journal batches and cumulative ACKs"); with two, the
#: next sync starts at once and the disk overlaps their flushes.
SYNCS_IN_FLIGHT = 2

# A sync runs in the event loop itself when none is in flight and the disk
# has been fast (``InlineWindow``, host/disk/inline.py says why; the
# committer's ``inline_below`` 0 turns it off).


class GroupCommitter:
    """Shares fdatasyncs among concurrent ``append_durable`` callers.

    Up to ``syncs`` fdatasyncs run at once, each in its own worker thread on
    its own open file description of the journal (``JournalStore.open_sync_fd``:
    each sees every writeback error).  A sync covers the journals appended
    before it started, and only those: its target is ``next_seq - 1`` read in
    the event loop when it is started, where every append happens.  A waiter
    waits for a running sync whose target covers its journal, or starts one
    if a slot is free, or else waits for the oldest to end and looks again.

    Errors of the append (``StoreFull``, ``PlacementError``, ...) are raised
    to its caller only; a failed fsync (``StoreBroken``) is raised to every
    caller waiting on it, and the store refuses further work.
    """

    def __init__(self, store: JournalStore, policy: Durability = Durability.FSYNC,
                 syncs: int = SYNCS_IN_FLIGHT, inline_below: float = INLINE_SYNC_BELOW):
        if not isinstance(policy, Durability):
            raise TypeError(f"policy must be a Durability, not {policy!r}")
        if syncs < 1:
            raise ValueError(f"syncs must be at least 1, not {syncs!r}")
        self.store = store
        self.policy = policy
        # The store's own descriptor, then one more per extra sync, opened
        # now: before the journals they will cover are written.
        self._fds: list[int | None] = [None] + [store.open_sync_fd() for _ in range(syncs - 1)]
        self._flushes: list[tuple[int, int | None, asyncio.Task]] = []   # (target, fd, task)
        # A thread per descriptor: each has at most one fdatasync in flight.
        self._workers = {fd: BlockingWorker(f"store-fsync-{i}") for i, fd in enumerate(self._fds)}
        self.fsyncs = 0      # fdatasyncs issued
        self.on_fsync = None     # called with each fdatasync's seconds (metrics), if set
        self.appends = 0     # journals appended through this committer
        self.inline_below = inline_below
        self._window = InlineWindow(inline_below, INLINE_HISTORY)
        self.inline_syncs = 0    # of ``fsyncs``, those run in the event loop

    async def append_durable(self, control: Control, data: bytes = b"") -> None:
        """Append one stamped journal and return once it is durable (per policy)."""
        seq = self.store.append(control, data)
        self.appends += 1
        if self.policy is Durability.FSYNC:
            await self.wait_durable(seq)

    async def wait_durable(self, seq: int) -> int:
        """Wait until journal ``seq`` (already appended) is on disk; returns durable_seq."""
        if seq >= self.store.next_seq:
            raise ValueError(f"seq {seq} was not appended (next is {self.store.next_seq})")
        while self.store.durable_seq < seq:
            if not self._flushes and self._window.ok():
                self._sync_inline()
                continue
            task = next((t for target, _, t in self._flushes if target >= seq), None)
            if task is None:
                busy = {fd for _, fd, _ in self._flushes}
                free = [fd for fd in self._fds if fd not in busy]
                if free:
                    task = self._start(free[0])
                else:
                    task = self._flushes[0][2]     # the oldest ends first; then look again
            # shield: a cancelled waiter must not cancel the fsync the others wait on.
            await asyncio.shield(task)
        return self.store.durable_seq

    def _sync_inline(self) -> None:
        """One fdatasync here, in the event loop: nothing else runs meanwhile,
        so every journal appended so far is covered (a StoreBroken is raised
        to this caller; the store then refuses every other)."""
        target = self.store.next_seq - 1
        self.fsyncs += 1
        self.inline_syncs += 1
        t0, first = now(), self.store.durable_seq
        try:
            self.store.sync(target)
        finally:
            self._took(now() - t0, target - first)

    def _took(self, seconds: float, journals: int) -> None:
        self._window.took(seconds)
        PERF["relay.fsync"].add(seconds)
        PERF["relay.fsync_journals"].add(max(0, journals))
        if self.on_fsync is not None:
            self.on_fsync(seconds)

    def _start(self, fd: int | None) -> asyncio.Task:
        # Read here, in the event loop: every journal up to it is written.
        target = self.store.next_seq - 1
        task = asyncio.get_running_loop().create_task(self._run_flush(target, fd))
        self._flushes.append((target, fd, task))
        return task

    async def _run_flush(self, target: int, fd: int | None) -> None:
        try:
            self.fsyncs += 1
            t0, first = now(), self.store.durable_seq
            try:
                began, ended = await self._workers[fd].run(self._timed_sync, target, fd)
                # Where a threaded sync's time goes (``relay.fsync`` is all
                # of it): waiting for the worker thread to run, the syscall,
                # and waiting for the event loop to resume the waiters.
                PERF["relay.fsync_to_thread"].add(began - t0)
                PERF["relay.fsync_syscall"].add(ended - began)
                PERF["relay.fsync_to_loop"].add(now() - ended)
            finally:
                self._took(now() - t0, target - first)
        finally:
            # Removed before the waiters resume, so the first of them whose
            # journal came too late for this fsync starts the next one.
            self._flushes = [f for f in self._flushes if f[2] is not asyncio.current_task()]

    def _timed_sync(self, target: int, fd: int | None) -> tuple[float, float]:
        """``store.sync`` in a worker thread; returns when it began and ended
        (recorded by the event loop: the counters are not shared with threads)."""
        began = now()
        self.store.sync(target, fd)
        return began, now()

    async def aclose(self) -> None:
        """Wait for the running fsyncs, then stop the worker threads (the store stays open)."""
        for _, _, task in list(self._flushes):
            try:
                await asyncio.shield(task)
            except Exception:
                pass
        for worker in self._workers.values():
            worker.close()
