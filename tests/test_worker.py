"""host/disk/worker.py: the thread the write path hands blocking disk calls to."""

import asyncio
import threading

import pytest

from tricopy.host.disk.worker import BlockingWorker


def test_results_errors_and_order():
    """Each call's own result or exception comes back to its own waiter, in
    the order submitted, on a thread that is not the loop's."""
    async def main():
        w = BlockingWorker("t")
        seen = []

        def call(i):
            seen.append((i, threading.current_thread().name))
            if i == 3:
                raise OSError(5, "EIO on call 3")
            return i * 10

        futs = [w.run(call, i) for i in range(6)]
        got = await asyncio.gather(*futs, return_exceptions=True)
        w.close()
        return seen, got

    seen, got = asyncio.run(main())
    assert [i for i, _ in seen] == list(range(6))
    assert {name for _, name in seen} == {"t"}
    assert got[:3] == [0, 10, 20] and got[4:] == [40, 50]
    assert isinstance(got[3], OSError) and got[3].errno == 5


def test_cancelled_waiter_does_not_break_the_thread():
    """A waiter that goes away (timeout, cancelled task) leaves the call to
    finish; the thread keeps serving the next calls."""
    async def main():
        w = BlockingWorker("t")
        gate = threading.Event()
        slow = w.run(gate.wait, 5)
        slow.cancel()
        gate.set()
        assert await w.run(lambda: "next") == "next"
        w.close()
        return slow.cancelled()

    assert asyncio.run(main())


def test_close_waits_for_queued_calls_and_run_after_close_restarts():
    async def main():
        w = BlockingWorker("t")
        done = []
        w.run(done.append, 1)
        w.run(done.append, 2)
        w.close()                   # blocks until both ran
        assert done == [1, 2]
        assert await w.run(lambda: 3) == 3
        w.close()

    asyncio.run(main())


def test_an_exception_is_raised_in_the_awaiting_task():
    async def main():
        w = BlockingWorker("t")
        try:
            with pytest.raises(ZeroDivisionError):
                await w.run(lambda: 1 / 0)
        finally:
            w.close()

    asyncio.run(main())
