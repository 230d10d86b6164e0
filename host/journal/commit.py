"""Group commit: many concurrent appends share one fsync.

A thin asyncio adapter over the synchronous :class:`~.store.JournalStore`.
``append_durable`` writes the journal at once (in the event loop thread, so
appends stay in the order they were called) and then waits until a
fdatasync that started *after* the write has finished.  One fdatasync runs
at a time, in a worker thread; appends that arrive while it runs wait for
the next one, which then covers all of them.  Under load the number of
fsyncs per second stays at what the disk does, and the journals per fsync
grow with the number of concurrent callers.
"""

from __future__ import annotations

import asyncio
import enum
from concurrent.futures import ThreadPoolExecutor

from ..wire.protocol import Control
from ..perf import PERF, now
from .store import JournalStore

__all__ = ["Durability", "GroupCommitter"]


class Durability(enum.Enum):
    """When ``append_durable`` returns (docs/architecture.md, invariant 1)."""
    #: after the journal is fdatasynced: the default, and the only safe policy.
    FSYNC = "fsync"
    #: UNSAFE, for benchmarks only: as soon as the journal is in the page
    #: cache.  A power cut or kernel crash loses journals that were acked.
    NONE = "none"


class GroupCommitter:
    """Shares one fdatasync among concurrent ``append_durable`` callers.

    Errors of the append (``StoreFull``, ``PlacementError``, ...) are raised
    to its caller only; a failed fsync (``StoreBroken``) is raised to every
    caller waiting on it, and the store refuses further work.
    """

    def __init__(self, store: JournalStore, policy: Durability = Durability.FSYNC):
        if not isinstance(policy, Durability):
            raise TypeError(f"policy must be a Durability, not {policy!r}")
        self.store = store
        self.policy = policy
        self._flush: asyncio.Task | None = None
        # One thread: there is never more than one fdatasync in flight.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-fsync")
        self.fsyncs = 0      # fdatasyncs issued
        self.on_fsync = None     # called with each fdatasync's seconds (metrics), if set
        self.appends = 0     # journals appended through this committer

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
            if self._flush is None:
                self._flush = asyncio.get_running_loop().create_task(self._run_flush())
            # shield: a cancelled waiter must not cancel the fsync the others wait on.
            await asyncio.shield(self._flush)
        return self.store.durable_seq

    async def _run_flush(self) -> None:
        try:
            self.fsyncs += 1
            t0, first = now(), self.store.durable_seq
            upto = await asyncio.get_running_loop().run_in_executor(self._executor,
                                                                    self.store.sync)
            PERF["relay.fsync"].add(now() - t0)
            PERF["relay.fsync_journals"].add(upto - first)
            if self.on_fsync is not None:
                self.on_fsync(now() - t0)
        finally:
            # Cleared before the waiters resume, so the first of them whose
            # journal came too late for this fsync starts the next one.
            self._flush = None

    async def aclose(self) -> None:
        """Wait for a running fsync, then stop the worker thread (the store stays open)."""
        if self._flush is not None:
            try:
                await asyncio.shield(self._flush)
            except Exception:
                pass
        self._executor.shutdown(wait=True)
