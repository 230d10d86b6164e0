"""Three real site processes on loopback: writes at the primary end up on the secondary."""

import asyncio

import pytest

from tricopy.host.rcm import control

from .cluster import Cluster, Workload


def check_volumes(cluster, work):
    for idx in range(cluster.volumes):
        pvol = cluster.volume_bytes("primary", idx)
        svol = cluster.volume_bytes("secondary", idx)
        model = bytes(work.model[idx])       # the workload's range; the rest stays zeros
        assert pvol[:len(model)] == model, f"PVOL {idx} lacks an acked write"
        assert not any(pvol[len(model):]), f"PVOL {idx} has a write outside the workload"
        assert svol == pvol, f"SVOL {idx} differs from PVOL {idx}"


@pytest.fixture(params=[None, "data", "native"], ids=["descriptor-default", "data",
                                                     "native-secondary"])
def cluster(request, tmp_path):
    """The relay's model engine with a descriptor ring (the default: the relay
    writes the data at the JOFS the engine allocated) and with a data ring
    (--engine-mode data: the engine keeps every journal too); and the default
    with the secondary's native loop (host/native/restore.py)."""
    native = request.param == "native"
    c = Cluster(tmp_path, engine_mode=None if native else request.param,
                site_extra={"secondary": "native = true\n"} if native else None)
    yield c
    c.stop_all()


def test_random_workload_drains_to_identical_svols(cluster):
    cluster.start_all()
    mode = control.call(cluster.control_addr("relay"), "status")["engine_mode"]
    assert mode == (cluster.engine_mode or "descriptor")
    work = Workload(cluster.control_addr("primary"), cluster.volumes, workers=8, seed=11)
    asyncio.run(work.run(count=60))
    state = cluster.wait_drained()
    assert work.acked == 8 * 60
    # every host request became exactly one journal (none is larger than MAX_DATA)
    assert state["relay"]["next_seq"] - 1 == work.acked
    assert state["secondary"]["gap"] is None
    # engine and journal volume still agree (a RELEASE the engine refused
    # suspends the group, though the store has released: drained anyway)
    assert (state["relay"]["grsts"], state["relay"]["reason"]) == ("PAIR", "")
    check_volumes(cluster, work)
    assert any(work.model[i] != bytearray(len(work.model[i])) for i in range(cluster.volumes))
    if "native = true" in cluster.site_extra.get("secondary", ""):
        s = cluster.status("secondary")
        assert s["native"] and s["native_staged"] > work.acked / 2, s


def test_control_writes_answer_their_pseq(tmp_path):
    """A write through the primary's control socket answers the PSEQ it was
    journaled with (it answered 0 for every write before): consecutive for
    consecutive writes, and the PSEQ the secondary's restore point names once
    it holds that write (what `verify` and a user waiting for a write use)."""
    import base64
    c = Cluster(tmp_path, engine_mode=None)
    try:
        c.start_all()
        addr = c.control_addr("primary")
        answers = [control.call(addr, "write", idx=0, offset=i * 4096,
                                data=base64.b64encode(bytes([i + 1]) * 4096).decode())
                   for i in range(3)]
        answers.append(control.call(addr, "write_zeroes", idx=1, offset=0, length=8192))
        pseqs = [a["pseq"] for a in answers]
        assert all(isinstance(p, int) and p > 0 for p in pseqs), answers
        assert pseqs == list(range(pseqs[0], pseqs[0] + 4)), pseqs
        c.wait_drained()
        assert c.status("secondary")["restored_tag"] == pseqs[-1]
    finally:
        c.stop_all()
