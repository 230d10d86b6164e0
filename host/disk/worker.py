"""One thread that runs blocking disk calls (fdatasync, state saves) for the event loop.

``loop.run_in_executor`` and ``asyncio.to_thread`` cost about twice the CPU
of a hand-off through a plain queue on this project's 2-vCPU VMs (58-84 µs
against 30-34 µs a round trip, docs/benchmarks.md "A worker thread of our
own"): they wrap a ``concurrent.futures.Future`` (with its own lock and
condition) in an asyncio future, copy the context, and take the
executor's locks.  The relay pays that hand-off on every threaded
group-commit fdatasync, the secondary on every threaded checkpoint, the
primary on every activity-log save, so the write path uses this instead:
a ``queue.SimpleQueue`` into one thread, and the result back with
``call_soon_threadsafe`` straight onto an asyncio future.

Calls run one at a time, in the order they were submitted (a group commit
slot has one fdatasync in flight at a time anyway).  Cancelling the
awaiting task does not stop a call that has started, as with an executor.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any, Callable

__all__ = ["BlockingWorker"]


def _settle(fut: asyncio.Future, ok: bool, value: Any) -> None:
    if fut.cancelled():
        return                      # its waiter went away; the call still ran
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


class BlockingWorker:
    """A daemon thread started on first use; ``run`` returns an awaitable future."""

    def __init__(self, name: str):
        self.name = name
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def run(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        """Queue ``fn(*args)`` for the thread; the future gets its result or exception."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
            self._thread.start()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._calls.put((loop, fut, fn, args))
        return fut

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            loop, fut, fn, args = call
            try:
                value, ok = fn(*args), True
            except BaseException as exc:      # handed to the waiter, never lost here
                value, ok = exc, False
            try:
                loop.call_soon_threadsafe(_settle, fut, ok, value)
            except RuntimeError:
                pass                # the loop is closed: nobody is left to tell

    def close(self) -> None:
        """Let the calls queued so far finish, then stop the thread (blocks
        until then).  A later ``run`` starts a new thread: a stop may still
        have a save to make after it."""
        if self._thread is not None:
            self._calls.put(None)
            self._thread.join()
            self._thread = None
