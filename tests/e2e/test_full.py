"""Secondary away, relay journal fills: explicit FULL, inflow control, then SUSP."""

import asyncio
import base64

import pytest

from tricopy.host.rcm import control

from .cluster import BLOCK, Cluster, Workload
from .test_links import wait_for
from .test_replication import check_volumes


def test_full_journal_blocks_writes_until_the_secondary_returns(tmp_path):
    cluster = Cluster(tmp_path, journal_size=256 << 10)
    try:
        cluster.start("relay")
        cluster.start("primary")
        work = Workload(cluster.control_addr("primary"), cluster.volumes, workers=4, seed=31)

        async def scenario():
            load = asyncio.create_task(work.run(count=40))
            await asyncio.to_thread(wait_for, lambda: cluster.status("primary")["blocked"],
                                    "the primary to report FULL")
            stalled = work.acked
            await asyncio.sleep(1.0)
            assert work.acked == stalled, "writes completed while the relay was FULL"
            assert cluster.status("relay")["fulls"] > 0
            assert cluster.status("primary")["grsts"] == "PAIR"
            await asyncio.to_thread(cluster.start, "secondary")
            await load

        asyncio.run(scenario())
        assert work.acked == 4 * 40
        cluster.wait_drained()
        check_volumes(cluster, work)
        assert cluster.status("primary")["blocked"] is False
    finally:
        cluster.stop_all()


def test_full_for_too_long_suspends_the_group(tmp_path):
    cluster = Cluster(tmp_path, journal_size=64 << 10, full_suspend_after=1.0)
    try:
        cluster.start("relay")
        cluster.start("primary")
        addr = cluster.control_addr("primary")
        block = base64.b64encode(b"\x5a" * 8 * BLOCK).decode()

        async def fill():
            client = await control.ControlClient.open(addr)
            results = await asyncio.gather(
                *(client.call("write", idx=0, offset=i * 8 * BLOCK, data=block) for i in range(12)),
                return_exceptions=True)
            await client.close()
            return results

        results = asyncio.run(fill())
        refused = [r for r in results if isinstance(r, control.ControlError)]
        assert refused and all(r.type == "GroupSuspended" for r in refused)
        st = cluster.status("primary")
        assert st["grsts"] == "SUSP" and "FULL" in st["reason"]
        assert st["dirty_extents"] == len(refused)
        # a suspended group refuses new writes before touching the PVOL
        before = cluster.volume_bytes("primary", 1)
        with pytest.raises(control.ControlError, match="suspended"):
            control.call(addr, "write", idx=1, offset=0, data=block)
        assert cluster.volume_bytes("primary", 1) == before
    finally:
        cluster.stop_all()
