"""Pair management over real processes: create over existing data (base copy),
writes during COPY, split, delta resync, delete; and refused pairings."""

import asyncio
import shutil
import time
import random

import pytest

from tricopy.host.rcm import pairs as rcm
from tricopy.host.rcm.jnlg import PairingError

from .cluster import BLOCK, Cluster, Workload
from .test_links import wait_for

VOL = 4 << 20      # 64 copy chunks per volume: the scan takes long enough to write into


def preload(cluster: Cluster, seed: int = 5) -> None:
    """PVOLs that already hold data (with all-zero stretches, sent as ZERO journals)."""
    rng = random.Random(seed)
    for i in range(cluster.volumes):
        img = bytearray(rng.randbytes(VOL))
        img[VOL // 2:VOL // 2 + (512 << 10)] = bytes(512 << 10)
        (cluster.root / "primary" / f"pvol{i}.img").write_bytes(img)


def assert_mirrored(cluster: Cluster) -> None:
    cluster.wait_drained()
    for i in range(cluster.volumes):
        assert cluster.volume_bytes("secondary", i) == cluster.volume_bytes("primary", i), \
            f"SVOL {i} differs from PVOL {i}"


def states(cluster: Cluster) -> tuple:
    return tuple(cluster.status(r)["grsts"] for r in ("primary", "relay", "secondary"))


def test_pair_lifecycle(tmp_path):
    cluster = Cluster(tmp_path, initial_state="SMPL", vol_size=VOL)
    preload(cluster)
    try:
        cluster.start_all()
        sites = cluster.sites()
        assert states(cluster) == ("SMPL",) * 3
        # SMPL: writes stay local, nothing is journaled
        asyncio.run(Workload(cluster.control_addr("primary"), 2, workers=4, seed=1).run(count=5))
        assert cluster.status("relay")["next_seq"] == 1

        # create over existing data, with host writes running all through COPY
        work = Workload(cluster.control_addr("primary"), 2, workers=4, seed=2)

        async def create_during_writes():
            load = asyncio.create_task(work.run())
            await asyncio.sleep(0.3)
            await asyncio.to_thread(rcm.pair_create, sites, "g1")
            assert cluster.status("primary")["grsts"] == "COPY"
            point = await asyncio.to_thread(rcm.pair_sync, sites, "g1", timeout=60)
            await asyncio.sleep(0.3)
            work.stop = True
            await load
            return point

        point = asyncio.run(create_during_writes())
        p = cluster.status("primary")
        assert p["grsts"] == "PAIR" and p["copy_done"] == p["copy_total"] == 2 * VOL // (64 << 10)
        # Fig. 7: writes behind the scan were journaled, writes ahead of it only applied
        assert p["copy_writes"]["journaled"] > 0 and p["copy_writes"]["ahead"] > 0, p["copy_writes"]
        assert all(d["bjptr"] == VOL // BLOCK for d in p["dvols"])
        s = cluster.status("secondary")
        assert s["consistent"] and s["consistent_seq"] == point
        assert states(cluster) == ("PAIR",) * 3
        assert_mirrored(cluster)

        # split: writes continue on the PVOL, none is journaled, the bitmap remembers them
        rcm.pair_split(sites, "g1")
        assert states(cluster) == ("SUSP",) * 3
        seq = cluster.status("relay")["next_seq"]
        work = Workload(cluster.control_addr("primary"), 2, workers=4, seed=3)
        asyncio.run(work.run(count=10))
        assert work.acked == 40
        assert cluster.status("relay")["next_seq"] == seq
        p = cluster.status("primary")
        assert 0 < p["copy_pending_bytes"] <= 40 * 16 * BLOCK + 40 * (64 << 10)
        assert any(cluster.volume_bytes("secondary", i) != cluster.volume_bytes("primary", i)
                   for i in range(2))

        # the bitmap survives a primary restart (kill -9); first the activity log
        # lets the journaled extents go (ACKed, PVOL synced), or the unclean
        # stop would add them to the bitmap (test_unclean_stop.py)
        deadline = time.monotonic() + 10
        while cluster.status("primary")["activity_extents"]:
            assert time.monotonic() < deadline, "the activity log never cooled"
            time.sleep(0.1)
        cluster.kill("primary")
        cluster.start("primary")
        assert cluster.status("primary")["copy_pending_bytes"] == p["copy_pending_bytes"]
        assert cluster.status("primary")["grsts"] == "SUSP"

        # resync: a delta copy of the dirty chunks only, then PAIR
        rcm.pair_resync(sites, "g1")
        rcm.pair_sync(sites, "g1", timeout=60)
        p = cluster.status("primary")
        assert p["copy_total"] == p["copy_pending_bytes"] // (64 << 10) + p["copy_done"]
        assert 0 < p["copy_total"] < 2 * VOL // (64 << 10) // 2, "resync was not a delta copy"
        assert states(cluster) == ("PAIR",) * 3
        assert_mirrored(cluster)

        # delete: SMPL everywhere, writes local only; a new create copies everything again
        rcm.pair_delete(sites, "g1")
        assert states(cluster) == ("SMPL",) * 3
        seq = cluster.status("relay")["next_seq"]
        asyncio.run(Workload(cluster.control_addr("primary"), 2, workers=4, seed=4).run(count=5))
        assert cluster.status("relay")["next_seq"] == seq
        rcm.pair_create(sites, "g1")
        rcm.pair_sync(sites, "g1", timeout=60)
        assert_mirrored(cluster)
    finally:
        cluster.stop_all()


def test_resync_after_full_suspension(tmp_path):
    """SUSP on a full journal (writes refused) leaves with the same resync command."""
    cluster = Cluster(tmp_path, journal_size=256 << 10, full_suspend_after=0.5)
    try:
        cluster.start("relay")
        cluster.start("primary")
        work = Workload(cluster.control_addr("primary"), 2, workers=2, seed=9)

        async def until_suspended():
            task = asyncio.create_task(work.run(count=30))
            while cluster.status("primary")["grsts"] != "SUSP":
                await asyncio.sleep(0.1)
            work.stop = True
            task.cancel()

        asyncio.run(until_suspended())
        assert "FULL" in cluster.status("primary")["reason"]
        cluster.start("secondary")
        rcm.pair_resync(cluster.sites(), "g1")
        rcm.pair_sync(cluster.sites(), "g1", timeout=60)
        asyncio.run(Workload(cluster.control_addr("primary"), 2, workers=2, seed=10).run(count=5))
        assert_mirrored(cluster)
    finally:
        cluster.stop_all()


def test_refused_pairings(tmp_path):
    cluster = Cluster(tmp_path, initial_state="SMPL")
    # the secondary's second volume is twice the size of the PVOL
    toml = cluster.root / "secondary" / "site.toml"
    text = toml.read_text()
    last = text.rindex("size = 1048576")
    toml.write_text(text[:last] + "size = 2097152" + text[last + len("size = 1048576"):])
    try:
        cluster.start_all()
        sites = cluster.sites()
        with pytest.raises(PairingError, match="no journal group named 'nope'") as e:
            rcm.pair_create(sites, "nope")
        assert e.value.rule == "same GRNAME"
        swapped = rcm.Sites(sites.relay, sites.primary, sites.secondary)
        with pytest.raises(PairingError, match="on the primary is INTERMEDIARY, it must be MASTER"):
            rcm.pair_create(swapped, "g1")
        with pytest.raises(PairingError, match="IDX 1: PVOL is 1048576 bytes .* SVOL 2097152") as e:
            rcm.pair_create(sites, "g1")
        assert e.value.rule == "same volume size"
        assert states(cluster) == ("SMPL",) * 3       # nothing moved
        # the command line says which rule failed and exits non-zero
        from tricopy.host import cli
        args = ["pair", "create", "--group", "g1"] + [
            x for r in ("primary", "relay", "secondary")
            for x in (f"--{r}", cluster.control_arg(r))]
        assert cli.main(args) == 1
    finally:
        cluster.stop_all()


def test_create_needs_smpl(tmp_path):
    cluster = Cluster(tmp_path)        # initial_state PAIR: new, identical volumes
    try:
        cluster.start_all()
        with pytest.raises(PairingError, match="is PAIR on the primary"):
            rcm.pair_create(cluster.sites(), "g1")
        with pytest.raises(rcm.RcmError, match="only a SUSP group can be resynced"):
            rcm.pair_resync(cluster.sites(), "g1")
        # refused before any site was told: the SVOLs still a consistent image
        assert states(cluster) == ("PAIR", "PAIR", "PAIR")
        assert cluster.status("secondary")["consistent"]
    finally:
        cluster.stop_all()


def test_demo_runs_and_verifies(tmp_path):
    """`tricopy demo` end to end, as the user runs it (shortened)."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "tricopy.host.cli", "demo", "--duration", "3",
                          "--size", "4", "--dir", str(tmp_path / "demo")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "verified: PVOL == SVOL for all 2 volumes (SHA-256 equal)" in out.stdout
    assert out.stdout.count("equal") >= 2 and "DIFFERENT" not in out.stdout
    assert "PAIR [##############################] 100.0%" in out.stdout
    assert "lag" in out.stdout and "tricopy status --cluster" in out.stdout


def test_primary_killed_during_copy_resumes_from_the_bitmap(tmp_path):
    cluster = Cluster(tmp_path, initial_state="SMPL", vol_size=VOL)
    preload(cluster, seed=8)
    try:
        cluster.start_all()
        rcm.pair_create(cluster.sites(), "g1")
        cluster.kill("primary")             # kill -9 in the middle of the base copy
        cluster.start("primary")
        p = cluster.status("primary")
        assert p["grsts"] == "COPY" and p["copy_total"] > 0
        rcm.pair_sync(cluster.sites(), "g1", timeout=60)
        assert_mirrored(cluster)
    finally:
        cluster.stop_all()


def test_split_and_delete_work_with_the_relay_down_and_create_finishes_the_delete(tmp_path):
    """The primary's state is the pair's: split and delete go through with the relay
    unreachable (saying which site was not told), and `pair create` with the
    relay back finishes the delete it missed before checking the rules."""
    cluster = Cluster(tmp_path, volumes=1, link_suspend_after=1)
    try:
        cluster.start_all()
        asyncio.run(Workload(cluster.control_addr("primary"), 1, seed=8).run(count=10))
        cluster.kill("relay")
        for op, state in (("split", "SUSP"), ("delete", "SMPL")):
            out = cluster.cli("pair", op, "--group", "g1")
            assert out.returncode == 0, out.stderr
            assert "relay" in out.stderr and "not reachable" in out.stderr, out.stderr
            assert "Traceback" not in out.stderr
            assert cluster.status("primary")["grsts"] == state
        cluster.start("relay")
        assert cluster.status("relay")["grsts"] == "PAIR"   # it missed the split and the delete
        out = cluster.cli("pair", "create", "--group", "g1", timeout=120)
        assert out.returncode == 0, out.stderr
        assert "missed" in out.stderr, out.stderr
        asyncio.run(Workload(cluster.control_addr("primary"), 1, seed=9).run(count=10))
        assert cluster.wait_drained()["primary"]["grsts"] == "PAIR"
        assert_mirrored(cluster)
    finally:
        cluster.stop_all()


def test_a_secondary_put_back_below_the_relays_journal_needs_create(tmp_path):
    """The secondary's folder put back to an older copy, whose restore point the
    relay's journal no longer reaches (it released those journals long ago):
    the relay refuses it with what to do -- a delta cannot bridge the journals
    released, so `pair resync` is refused with nothing changed (the primary is
    PAIR), and `pair delete` + `pair create` (a full copy) take it back."""
    cluster = Cluster(tmp_path / "c", vol_size=VOL)
    old = tmp_path / "secondary-copy"
    try:
        cluster.start_all()
        work = Workload(cluster.control_addr("primary"), cluster.volumes, workers=4, seed=5)
        asyncio.run(work.run(count=10))
        cluster.wait_drained()
        cluster.terminate("secondary")
        shutil.copytree(cluster.root / "secondary", old)
        cluster.start("secondary")
        asyncio.run(work.run(count=20))
        tail = cluster.wait_drained()["relay"]["tail_seq"]
        cluster.terminate("secondary")
        shutil.rmtree(cluster.root / "secondary")
        shutil.copytree(old, cluster.root / "secondary")
        cluster.start("secondary")
        r = wait_for(lambda: (x := cluster.status("relay"))["grsts"] == "SUSP" and x,
                     "the relay to refuse the secondary")
        assert f"the journal starts at {tail}: journals " in r["reason"], r["reason"]
        assert "are missing there" in r["reason"], r["reason"]
        assert "`tricopy pair delete`, then `tricopy pair create`" in r["reason"], r["reason"]

        out = cluster.cli("pair", "resync", "--group", "g1")
        assert out.returncode == 1 and "nothing was changed" in out.stderr, out.stderr
        assert states(cluster) == ("PAIR", "SUSP", "PAIR")
        assert cluster.status("secondary")["consistent"]        # its older image, untouched
        for op in ("delete", "create"):
            out = cluster.cli("pair", op, "--group", "g1", timeout=120)
            assert out.returncode == 0, out.stdout + out.stderr
        asyncio.run(work.run(count=5))
        assert states(cluster) == ("PAIR", "PAIR", "PAIR")
        assert_mirrored(cluster)
    finally:
        cluster.stop_all()
