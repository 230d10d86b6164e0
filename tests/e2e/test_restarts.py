"""kill -9 one site under load, restart it: no acked write is lost, SVOL == PVOL."""

import asyncio

from .cluster import Cluster, Workload
from .test_replication import check_volumes


def kill_under_load(cluster: Cluster, role: str, seed: int, *, down: float = 0.5) -> Workload:
    cluster.start_all()
    work = Workload(cluster.control_addr("primary"), cluster.volumes, workers=8, seed=seed)

    async def scenario():
        load = asyncio.create_task(work.run(duration=3.0))
        await asyncio.sleep(1.0)
        before = work.acked
        await asyncio.to_thread(cluster.kill, role)
        await asyncio.sleep(down)
        await asyncio.to_thread(cluster.start, role)
        await load
        return before

    before = asyncio.run(scenario())
    assert 0 < before < work.acked, "the kill did not happen under load"
    cluster.wait_drained()
    check_volumes(cluster, work)
    return work


def test_relay_kill_restart(tmp_path):
    # A small ring that fills, and a secondary that restores only every 4 s
    # (the first time ~2 s after the kill), so the relay is killed while it
    # holds journals: the restarted relay must rebuild its engine from the store.
    cluster = Cluster(tmp_path, journal_size=2 << 20, restore_interval=4.0)
    try:
        work = kill_under_load(cluster, "relay", seed=21)
        assert "engine rebuilt from the store" in cluster.log("relay")
        p = cluster.status("primary")
        assert p["grsts"] == "PAIR" and p["acked"] >= work.acked
    finally:
        cluster.stop_all()


def test_relay_kill_restart_native_secondary(tmp_path):
    """The same with the secondary's native loop: the restarted relay resends
    from the restore point, the replays go the Python way, the loop takes
    the stream again after them."""
    cluster = Cluster(tmp_path, journal_size=2 << 20, restore_interval=4.0,
                      site_extra={"secondary": "native = true\n"})
    try:
        work = kill_under_load(cluster, "relay", seed=22)
        s = cluster.status("secondary")
        assert s["native"] and s["native_staged"] > 0, s
        assert s["grsts"] == "PAIR" and s["consistent"], s
        assert cluster.status("primary")["acked"] >= work.acked
    finally:
        cluster.stop_all()


def test_secondary_kill_restart(tmp_path):
    cluster = Cluster(tmp_path)
    try:
        kill_under_load(cluster, "secondary", seed=22)
        assert cluster.status("secondary")["gap"] is None
    finally:
        cluster.stop_all()


def test_primary_kill_restart(tmp_path):
    cluster = Cluster(tmp_path)
    try:
        work = kill_under_load(cluster, "primary", seed=23)
        assert work.retries > 0, "no host request was cut by the kill"
    finally:
        cluster.stop_all()
