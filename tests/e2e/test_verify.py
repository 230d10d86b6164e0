"""``tricopy verify``: PVOL against SVOL by chunk digests, online, with real processes."""

from __future__ import annotations

import asyncio
import subprocess
import threading

from tricopy.host.rcm import pairs as rcm

from .cluster import Cluster, Workload

CHUNK = 64 << 10


def run_cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess:
    return cluster.cli(*args)


def test_verify_online_then_find_mark_and_repair_a_damaged_chunk(tmp_path):
    cluster = Cluster(tmp_path, volumes=2)
    try:
        cluster.start_all()
        # Verify while writes run: chunks written meanwhile are checked again,
        # never reported out of sync.
        work = Workload(cluster.control_addr("primary"), 2, workers=4, seed=5)
        writer = threading.Thread(target=lambda: asyncio.run(work.run(duration=4.0)))
        writer.start()
        busy = run_cli(cluster, "verify", "--group", "g1")
        writer.join()
        assert work.acked > 50
        assert busy.returncode == 0, busy.stdout + busy.stderr
        assert "PVOL == SVOL: no chunk out of sync" in busy.stdout
        assert "compared 32 chunks" in busy.stdout        # 2 volumes of 1 MiB

        # One chunk of the SVOL damaged behind the secondary's back.
        cluster.wait_drained()
        with open(tmp_path / "secondary" / "svol1.img", "r+b") as f:
            f.seek(5 * CHUNK + 100)
            f.write(b"bit rot")
        found = run_cli(cluster, "verify", "--group", "g1", "--mark")
        assert found.returncode == 1, found.stdout + found.stderr
        assert "IDX 1: 1 chunk(s) of 64 KiB out of sync: 5" in found.stdout
        assert "IDX 0" not in found.stdout
        assert cluster.status("primary")["copy_pending_bytes"] == CHUNK

        sites = cluster.sites()
        rcm.pair_split(sites, "g1")
        rcm.pair_resync(sites, "g1")
        rcm.pair_sync(sites, "g1", timeout=60)
        again = run_cli(cluster, "verify", "--group", "g1", "--rate", "64")
        assert again.returncode == 0, again.stdout + again.stderr
        cluster.wait_drained()
        assert cluster.volume_bytes("secondary", 1) == cluster.volume_bytes("primary", 1)
    finally:
        cluster.stop_all()


def test_verify_refuses_what_is_no_image(tmp_path):
    cluster = Cluster(tmp_path, volumes=1, initial_state="SMPL")
    try:
        cluster.start_all()
        out = run_cli(cluster, "verify", "--group", "g1")
        assert out.returncode == 2 and "PAIR" in out.stderr and "Traceback" not in out.stderr
    finally:
        cluster.stop_all()
