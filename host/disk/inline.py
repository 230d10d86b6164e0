"""When a sync may run in the event loop itself instead of a worker thread.

On this project's 2-vCPU VMs handing an fdatasync to a worker thread costs
about 100-130 µs of CPU more than calling it where the event loop runs (two
thread wake-ups and the GIL passed twice; docs/benchmarks.md, "Syncs in the
event loop"), more than a 4 KiB fdatasync itself takes on a fast disk.  But
a sync in the loop stops everything else the loop does (links, the control
socket) for as long as it takes, so it is done there only while the disk
has been fast: every one of the last ``history`` syncs under ``below``
seconds.  One slow sync sends the next ones back to threads until it leaves
the window.  The relay's group commit (``host/journal/commit.py``) and the
secondary's state saves (``host/secondary/site.py``) use it.
"""

from __future__ import annotations

import collections

__all__ = ["InlineWindow", "INLINE_SYNC_BELOW", "INLINE_HISTORY"]

INLINE_SYNC_BELOW = 0.001
INLINE_HISTORY = 8


class InlineWindow:
    """The recent sync times, and whether the next sync may run inline."""

    def __init__(self, below: float = INLINE_SYNC_BELOW, history: int = INLINE_HISTORY):
        self.below = below
        self._recent: collections.deque[float] = collections.deque(maxlen=history)

    def ok(self) -> bool:
        """True once the last ``history`` syncs each took under ``below`` (0: never)."""
        return (len(self._recent) == self._recent.maxlen
                and max(self._recent) < self.below)

    def took(self, seconds: float) -> None:
        self._recent.append(seconds)
