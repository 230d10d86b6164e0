"""Planned swap and swap back (failback) with real processes and NBD clients.

With all three sites up, ``tricopy takeover`` swaps the roles: the primary
stops taking writes once the relay holds all of them, the secondary restores
them, and the two data sites restart into each other's role; replication
then runs the other way through the relay.  Nothing is copied either way and
the volumes are equal at each step.  ``tricopy failback`` swaps back.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time

from tricopy.host.rcm import control

from .cluster import Cluster, Workload
from .test_failback import qemu_write, refused
from .test_takeover import rcm


def drained(cluster: Cluster, writer: str, restorer: str, timeout: float = 60.0) -> None:
    """Until the writer has nothing in flight, the relay holds nothing and the
    restore side restored the relay's last journal."""
    deadline = time.monotonic() + timeout
    while True:
        w, r, s = (cluster.status(x) for x in (writer, "relay", restorer))
        if w["pending"] == 0 and r["held"] == 0 and s["last_restored"] == r["next_seq"] - 1:
            return
        assert time.monotonic() < deadline, f"not drained: {w} {r} {s}"
        time.sleep(0.05)


def site_role(cluster: Cluster, site: str) -> str:
    return control.call(cluster.control_addr(site), "status")["role"]


def test_planned_swap_and_back_copy_nothing_and_keep_replicating(tmp_path):
    cluster = Cluster(tmp_path, nbd=True, volumes=1)
    try:
        cluster.start_all()
        pid = {s: cluster.procs[s].pid for s in ("primary", "secondary")}
        asyncio.run(Workload(cluster.control_addr("primary"), 1, seed=3).run(count=30))

        out = rcm(cluster, "takeover", "--group", "g1")
        assert out.returncode == 0, out.stderr + out.stdout
        assert "planned swap done" in out.stdout, out.stdout
        rto = float(re.search(r"read-write after ([\d.]+) s", out.stdout)[1])
        print(f"swap: writable after {rto} s")

        # The data sites traded roles, in the same processes (exec, same PID).
        assert site_role(cluster, "secondary") == "primary"
        assert site_role(cluster, "primary") == "secondary"
        assert {s: cluster.procs[s].pid for s in pid} == pid
        b, a, r = (cluster.status(x) for x in ("secondary", "primary", "relay"))
        assert b["grsts"] == "PAIR" and b["epoch"] == 1 and b["copy_total"] == 0
        assert a["consistent"] and a["epoch"] == 1 and r["reversed"] and r["epoch"] == 1
        assert cluster.volume_bytes("primary", 0) == cluster.volume_bytes("secondary", 0)

        # Writes at the new primary (its own export name, now read-write) replicate back.
        asyncio.run(Workload(cluster.control_addr("secondary"), 1, seed=4).run(count=30))
        done = qemu_write(cluster, "secondary", 0xab, 0)
        assert done.returncode == 0 and "wrote" in done.stdout, done
        no = qemu_write(cluster, "primary", 0xcd, 0)          # the old primary: read-only
        assert refused(no), no
        drained(cluster, "secondary", "primary")
        pvol = cluster.volume_bytes("primary", 0)
        assert pvol[:4096] == b"\xab" * 4096
        assert pvol == cluster.volume_bytes("secondary", 0), "not replicated after the swap"
        status = rcm(cluster, "status")
        assert status.returncode == 0, status.stdout + status.stderr

        # A restart keeps the swapped roles (they are state, not config).
        cluster.kill("primary")
        cluster.start("primary")
        assert site_role(cluster, "primary") == "secondary"

        back = rcm(cluster, "failback", "--group", "g1")
        assert back.returncode == 0, back.stderr + back.stdout
        assert "swapped back" in back.stdout and "no data copied" in back.stdout, back.stdout
        assert site_role(cluster, "primary") == "primary"
        assert site_role(cluster, "secondary") == "secondary"
        p, r = cluster.status("primary"), cluster.status("relay")
        assert p["epoch"] == 2 and p["copy_total"] == 0 and not r["reversed"]

        asyncio.run(Workload(cluster.control_addr("primary"), 1, seed=5).run(count=30))
        cluster.wait_drained()
        assert cluster.volume_bytes("primary", 0) == cluster.volume_bytes("secondary", 0)
        again = rcm(cluster, "pair", "split", "--group", "g1")     # pair commands follow roles
        assert again.returncode == 0, again.stderr
    finally:
        cluster.stop_all()


def test_swap_refuses_without_the_addresses_and_changes_nothing(tmp_path):
    """A relay config with no reverse_peer cannot forward the other way: the swap
    is refused before anything moves, and the primary keeps taking writes."""
    cluster = Cluster(tmp_path, volumes=1)
    text = (cluster.root / "relay" / "site.toml").read_text()
    (cluster.root / "relay" / "site.toml").write_text(
        re.sub(r'reverse_peer = "[^"]*"\n', "", text))
    try:
        cluster.start_all()
        out = rcm(cluster, "takeover", "--group", "g1")
        assert out.returncode == 1 and "reverse_peer" in out.stderr, out.stderr
        assert "nothing was changed" in out.stderr and "Traceback" not in out.stderr
        assert cluster.status("relay")["fence_epoch"] == 0
        asyncio.run(Workload(cluster.control_addr("primary"), 1, seed=6).run(count=5))
        cluster.wait_drained()
    finally:
        cluster.stop_all()
