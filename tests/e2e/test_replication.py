"""Three real site processes on loopback: writes at the primary end up on the secondary."""

import asyncio

from .cluster import Workload


def check_volumes(cluster, work):
    for idx in range(cluster.volumes):
        pvol = cluster.volume_bytes("primary", idx)
        svol = cluster.volume_bytes("secondary", idx)
        assert pvol == bytes(work.model[idx]), f"PVOL {idx} lacks an acked write"
        assert svol == pvol, f"SVOL {idx} differs from PVOL {idx}"


def test_random_workload_drains_to_identical_svols(cluster):
    cluster.start_all()
    work = Workload(cluster.control_addr("primary"), cluster.volumes, workers=8, seed=11)
    asyncio.run(work.run(count=60))
    state = cluster.wait_drained()
    assert work.acked == 8 * 60
    # every host request became exactly one journal (none is larger than MAX_DATA)
    assert state["relay"]["next_seq"] - 1 == work.acked
    assert state["secondary"]["gap"] is None
    check_volumes(cluster, work)
    assert any(work.model[i] != bytearray(len(work.model[i])) for i in range(cluster.volumes))
