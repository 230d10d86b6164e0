"""Relay FULL without resend storms: the primary keeps its connection and probes
with the oldest pending journal alone, backing off, until the relay has room."""

import asyncio
import time

from .cluster import Cluster, Workload
from .test_links import wait_for
from .test_replication import check_volumes

PERIOD = 4.0


def test_full_probes_one_journal_with_backoff(tmp_path):
    # The old primary dropped the link on FULL and, every 0.2 s, reconnected and
    # resent every pending journal: 32 writers, 4 s -> ~600 resends.
    cluster = Cluster(tmp_path, journal_size=256 << 10)
    try:
        cluster.start("relay")
        cluster.start("primary")
        work = Workload(cluster.control_addr("primary"), cluster.volumes, workers=32, seed=41)

        async def scenario():
            load = asyncio.create_task(work.run(count=8))
            await asyncio.to_thread(wait_for, lambda: cluster.status("primary")["blocked"],
                                    "the primary to report FULL")
            await asyncio.sleep(0.3)      # the 32 writers are all waiting now
            p0, r0 = cluster.status("primary"), cluster.status("relay")
            stalled = work.acked
            await asyncio.sleep(PERIOD)
            p1, r1 = cluster.status("primary"), cluster.status("relay")
            assert work.acked == stalled, "writes completed while the relay was FULL"
            resent = p1["resent"] - p0["resent"]
            probes = p1.get("full_probes", 0) - p0.get("full_probes", 0)
            print(f"\nFULL for {PERIOD:g} s with {p1['pending']} journals pending: "
                  f"{resent} resent ({probes} probes), relay answered FULL "
                  f"{r1['fulls'] - r0['fulls']} times")
            assert resent < 50, f"{resent} journals resent in {PERIOD:g} s of FULL"
            assert p1["blocked"] and p1["grsts"] == "PAIR" and p1["pending"] >= 16, p1
            assert p1["connected"], "the primary dropped the link on FULL"
            # backoff: 0.05 s doubling to 1 s gives a handful of probes, not 20 a second
            assert probes <= PERIOD + 6
            t0 = time.monotonic()
            await asyncio.to_thread(cluster.start, "secondary")
            await load
            return time.monotonic() - t0

        secs = asyncio.run(scenario())
        assert work.acked == 32 * 8
        cluster.wait_drained()
        check_volumes(cluster, work)
        p = cluster.status("primary")
        assert p["blocked"] is False and p["grsts"] == "PAIR"
        print(f"drained {32 * 8} writes through a 256 KiB journal in {secs:.1f} s after the "
              f"secondary returned; {p['resent']} resent in all")
    finally:
        cluster.stop_all()
