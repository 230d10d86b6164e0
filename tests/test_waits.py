"""host/waits.py: a bounded wait on an event by a timer."""

import asyncio

from tricopy.host.waits import wait_at_most


def test_returns_when_set_and_the_timer_is_gone():
    async def main():
        ev = asyncio.Event()
        asyncio.get_running_loop().call_soon(ev.set)
        await wait_at_most(ev, 0.02)
        ev.clear()
        await asyncio.sleep(0.05)           # a timer left armed would set it again
        return ev.is_set()
    assert asyncio.run(main()) is False


def test_bounded_the_event_is_set_when_the_time_passes():
    async def main():
        ev = asyncio.Event()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await wait_at_most(ev, 0.05)
        return loop.time() - t0, ev.is_set()
    took, is_set = asyncio.run(main())
    assert is_set and took >= 0.05
