"""Bounded waits on an ``asyncio.Event`` that cost a timer, not a Timeout.

The relay's forwarder and the secondary's restorer wait for "something may
have changed" on every batch, bounded so that they also look again now and
then.  ``asyncio.wait_for`` made a task per wait and ``asyncio.timeout`` a
``Timeout`` object (and a cancellation when it fired): ~5 % of the
secondary's CPU at depth 16 (docs/benchmarks.md, "A worker thread of our
own").  Here the bound is a plain timer that sets the event itself.
"""

from __future__ import annotations

import asyncio

__all__ = ["wait_at_most"]


async def wait_at_most(event: asyncio.Event, seconds: float) -> None:
    """Until ``event`` is set or ``seconds`` pass; when they pass the event is
    set, so a caller must treat the event as "look again", never as a fact."""
    timer = asyncio.get_running_loop().call_later(seconds, event.set)
    try:
        await event.wait()
    finally:
        timer.cancel()
