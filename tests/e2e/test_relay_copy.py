"""Data volumes at the relay (the remote-copy patent, Fig. 12), real processes.

The relay restores the journals it holds to its own volumes in SEQ# order
while it forwards them to the far secondary.  Snapshots of the relay's copy
taken between restore steps (control command ``snapshot``) that the relay
calls consistent must be prefixes of the acknowledged write history, also
across a SIGKILL of the relay; after the drain, relay copy == PVOL == SVOL,
and again after fio's random writes through the primary's NBD export.
"""

from __future__ import annotations

import asyncio
import re
import random
import subprocess
import time
from pathlib import Path

import pytest
from tricopy.host.rcm import control
from tricopy.host.rcm.jnlg import NEVER

from .cluster import Cluster, Workload
from .test_consistency import WORKERS, StampedWriters, check_prefix


def test_relay_copy_is_a_prefix_and_ends_equal(tmp_path):
    cluster = Cluster(tmp_path, relay_volumes=True, nbd=True)
    # The relay's copy restores in steps every 0.5 s: the far secondary ACKs
    # journals well before the copy holds them, so a relay that released on
    # the secondary's ACK alone would lose them for its copy at the crash.
    conf = cluster.root / "relay" / "site.toml"
    conf.write_text(conf.read_text().replace('attr = "INTERMEDIARY"\n',
                                             'attr = "INTERMEDIARY"\nrestore_interval = 0.5\n'))
    try:
        cluster.start_all()
        local = cluster.status("relay")["local"]
        assert local is not None and len(local["volumes"]) == cluster.volumes
        writers = StampedWriters(cluster.control_addr("primary"), cluster.volumes, seed=21)
        snaps: list[tuple[int, list[bytes]]] = []
        rng = random.Random(22)

        async def snapshots():
            for n in range(20):
                await asyncio.sleep(rng.uniform(0.1, 0.3))
                if n == 10:             # a crash of the relay: its copy replays after it
                    cluster.kill("relay")
                    cluster.start("relay")
                try:
                    ans = control.call(cluster.control_addr("relay"), "snapshot", group="g1",
                                       name=f"snap{n}")
                except OSError:
                    continue
                if ans["consistent"]:
                    folder = Path(ans["folder"])
                    snaps.append((ans["last_restored"],
                                  [(folder / f"svol{i}.img").read_bytes()
                                   for i in range(cluster.volumes)]))
            writers.stop = True

        async def run():
            await asyncio.gather(snapshots(), *(writers.worker(w) for w in range(WORKERS)))

        asyncio.run(run())
        assert len(snaps) >= 10, f"only {len(snaps)} consistent snapshots"
        total = [len(h) for h in writers.history.sent]
        mid_run = sum(any(0 < k < t for k, t in zip(check_prefix(writers.history, svols), total))
                      for _, svols in snaps)
        assert mid_run >= len(snaps) // 2, "the snapshots did not catch the run in the middle"

        cluster.wait_drained()
        deadline = time.monotonic() + 30
        while (r := cluster.status("relay"))["local"]["last_restored"] < r["next_seq"] - 1:
            assert time.monotonic() < deadline, r["local"]
            time.sleep(0.05)
        for i in range(cluster.volumes):
            pvol = cluster.volume_bytes("primary", i)
            assert cluster.volume_bytes("relay", i) == pvol, f"relay copy {i} != PVOL"
            assert cluster.volume_bytes("secondary", i) == pvol
        assert check_prefix(writers.history, [cluster.volume_bytes("relay", i)
                                              for i in range(cluster.volumes)],
                            all_acked=True) == total
        assert r["local"]["consistent"] and r["held"] == 0
        # Its copy is served read-only over NBD, under its own export names.
        got = tmp_path / "rvol0.read"
        subprocess.run(["nbdcopy", cluster.nbd_uri("relay", 0), str(got)], check=True,
                       capture_output=True, timeout=60)
        assert got.read_bytes() == cluster.volume_bytes("primary", 0)
        no = subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0xee 0 4096",
                             cluster.nbd_uri("relay", 0)], capture_output=True, text=True,
                            timeout=60)
        assert "Permission denied" in no.stdout + no.stderr or \
            "Operation not permitted" in no.stdout + no.stderr, no
        shown = cluster.cli("status").stdout
        assert f"relay copy consistent (restored {r['next_seq'] - 1}" in shown, shown

        # A random NBD workload too (issue 11, acceptance 1): fio's random writes
        # of 4 to 64 KiB to a PVOL export, drained: relay copy == PVOL == SVOL.
        before = cluster.volume_bytes("primary", 1)
        subprocess.run(["fio", "--name=r", "--ioengine=nbd", f"--uri={cluster.nbd_uri('primary', 1)}",
                        "--rw=randwrite", "--bsrange=4k-64k", "--iodepth=8", "--io_size=4m",
                        f"--size={cluster.vol_size}", "--randseed=23",
                        f"--filename={tmp_path}/unused"], check=True, capture_output=True,
                       timeout=120)
        cluster.wait_drained()
        deadline = time.monotonic() + 30
        while (r := cluster.status("relay"))["local"]["last_restored"] < r["next_seq"] - 1:
            assert time.monotonic() < deadline, r["local"]
            time.sleep(0.05)
        pvol = cluster.volume_bytes("primary", 1)
        assert pvol != before, "fio wrote nothing"
        assert cluster.volume_bytes("relay", 1) == pvol == cluster.volume_bytes("secondary", 1)
        assert r["local"]["consistent"]
    finally:
        cluster.stop_all()


def test_takeover_to_the_relay_site_writes_there_and_reaches_the_secondary(tmp_path):
    """Patent [0073]: the primary is lost; the relay site, closer to the users than
    the far secondary, takes over with its data volumes; host writes there are
    journaled and reach the far secondary; the old primary comes back fenced, and
    `tricopy failback` gives the group back to it with only the differing chunks."""
    cluster = Cluster(tmp_path, relay_volumes=True, nbd=True, volumes=1)
    try:
        cluster.start_all()
        asyncio.run(Workload(cluster.control_addr("primary"), 1, seed=31).run(count=40))
        cluster.kill("primary")
        out = cluster.cli("takeover", "--group", "g1", "--to", "relay")
        assert out.returncode == 0, out.stderr + out.stdout
        assert "taken over at the relay site" in out.stdout, out.stdout
        r = cluster.status("relay")
        assert r["takeover"]["epoch"] == 1 and r["epoch"] == 1

        def qemu(role, cmd):
            return subprocess.run(["qemu-io", "-f", "raw", "-c", cmd, cluster.nbd_uri(role, 0)],
                                  capture_output=True, text=True, timeout=60)

        done = qemu("relay", "write -P 0xab 8192 8192")
        assert done.returncode == 0 and "wrote 8192" in done.stdout, done
        assert "read 4096" in qemu("relay", "read -P 0xab 12288 4096").stdout
        # ... and reach the far secondary, in order, with everything before them.
        deadline = time.monotonic() + 30
        while cluster.volume_bytes("secondary", 0) != cluster.volume_bytes("relay", 0):
            assert time.monotonic() < deadline, "the relay's writes did not reach the secondary"
            time.sleep(0.05)
        assert cluster.volume_bytes("secondary", 0)[8192:16384] == b"\xab" * 8192
        shown = cluster.cli("status")
        assert shown.returncode == 1 and "TAKEN OVER at the relay" in shown.stdout, shown.stdout
        # A restart of the relay keeps it the writer.
        cluster.kill("relay")
        cluster.start("relay")
        done = qemu("relay", "write -P 0xac 0 4096")
        assert done.returncode == 0 and "wrote 4096" in done.stdout, done
        # The old primary comes back: fenced.
        cluster.start("primary")
        deadline = time.monotonic() + 20
        while not cluster.status("primary").get("fenced"):
            assert time.monotonic() < deadline, cluster.log("primary")[-2000:]
            time.sleep(0.1)

        # Failback: the relay's writes (three chunks of 64 KiB at most) go back.
        out = cluster.cli("failback", "--group", "g1")
        assert out.returncode == 0, out.stderr + out.stdout
        m = re.search(r"(\d+) bytes copied \((\d+) chunks", out.stdout)
        assert m and 0 < int(m.group(2)) <= 2, out.stdout    # 8 KiB at 8192, 4 KiB at 0: chunk 0
        for role in ("relay", "secondary"):
            assert cluster.volume_bytes(role, 0) == cluster.volume_bytes("primary", 0), role
        p, r = cluster.status("primary"), cluster.status("relay")
        assert not p["fenced"] and p["grsts"] == "PAIR" and not r["takeover"]
        assert qemu("relay", "write -P 0x11 0 4096").returncode != 0     # read-only again
        work = Workload(cluster.control_addr("primary"), 1, seed=32)
        asyncio.run(work.run(count=10))                  # the primary writes and replicates
        cluster.wait_drained()
        deadline = time.monotonic() + 30
        while cluster.volume_bytes("relay", 0) != cluster.volume_bytes("primary", 0):
            assert time.monotonic() < deadline, "the relay's copy did not follow"
            time.sleep(0.05)
        assert cluster.volume_bytes("secondary", 0) == cluster.volume_bytes("primary", 0)
        assert cluster.cli("status").returncode == 0
    finally:
        cluster.stop_all()


def _wait_copy_caught_up(cluster: Cluster, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while (r := cluster.status("relay"))["local"]["last_restored"] < r["next_seq"] - 1:
        assert time.monotonic() < deadline, r["local"]
        time.sleep(0.05)
    return r


@pytest.mark.parametrize("how", ["resync", "delete-create", "rcm-lost"])
def test_a_relay_copy_without_its_released_journals_is_resynced(tmp_path, how):
    """The relay's copy loses its restore point (the file is gone) while the
    journals it would replay were released: it can never catch up by itself.
    It says so (no consistent image; the command to run), it no longer holds
    up the relay's releases (the far secondary goes on, the journal does not
    fill), and `tricopy pair resync` brings it back with a copy of every
    chunk (so does `pair delete` + `pair create`): relay copy == PVOL ==
    SVOL, consistent again.  "rcm-lost": the RCM is lost after the relay's
    step of the resync (the copy's restore point moved) and the relay is
    SIGKILLed: the copy still says it is no image and what it waits for,
    and `pair resync` run again copies every chunk."""
    cluster = Cluster(tmp_path, relay_volumes=True, volumes=1)
    try:
        cluster.start_all()
        addr = cluster.control_addr("primary")
        asyncio.run(Workload(addr, 1, seed=41).run(count=40))
        cluster.wait_drained()
        _wait_copy_caught_up(cluster)
        assert cluster.terminate("relay") == 0
        (tmp_path / "relay" / "state" / "g1.restored").unlink()
        cluster.start("relay")

        deadline = time.monotonic() + 20
        while (r := cluster.status("relay"))["local"]["grsts"] != "SUSP":
            assert time.monotonic() < deadline, r["local"]
            time.sleep(0.1)
        lc = r["local"]
        assert not lc["consistent"], f"a copy that cannot catch up called consistent: {lc}"
        assert lc["needs_resync"], lc
        assert "`tricopy pair resync`" in lc["reason"], lc
        shown = cluster.cli("status").stdout
        assert "relay copy SUSP: " in shown and "`tricopy pair resync`" in shown, shown

        # Meanwhile the far secondary's journals are released without it.
        asyncio.run(Workload(addr, 1, seed=42).run(count=40))
        drained = cluster.wait_drained(timeout=30)
        assert drained["relay"]["tail_seq"] == drained["relay"]["next_seq"]
        lc = cluster.status("relay")["local"]
        assert lc["needs_resync"] and not lc["consistent"], lc

        if how == "rcm-lost":
            out = cluster.cli("pair", "split", "--group", "g1")
            assert out.returncode == 0, out.stdout + out.stderr
            moved = control.call(cluster.control_addr("relay"), "pair_set", group="g1",
                                 grsts="COPY", consistent_seq=NEVER, local_resync=True)
            assert moved["local_resync"]["last_restored"] == 0, moved
            cluster.kill("relay")
            cluster.start("relay")
            deadline = time.monotonic() + 20
            while True:
                try:
                    lc = cluster.status("relay")["local"]
                    break
                except OSError:
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
            assert not lc["needs_resync"] and lc["resync_after"] is not None, lc
            assert lc["owed_chunks"] == 16, lc          # 1 MiB in 64 KiB chunks
            assert not lc["consistent"], lc
            shown = cluster.cli("status").stdout
            assert "relay copy NOT consistent: " in shown and "wait for a copy of 16 chunks" in shown, shown
        if how in ("resync", "rcm-lost"):
            out = cluster.cli("pair", "resync", "--group", "g1")
            assert out.returncode == 0, out.stdout + out.stderr
            assert "the relay's copy" in out.stdout + out.stderr, out.stdout + out.stderr
        else:
            for op in ("delete", "create"):
                out = cluster.cli("pair", op, "--group", "g1")
                assert out.returncode == 0, out.stdout + out.stderr
        p = cluster.status("primary")
        assert p["grsts"] == "PAIR" and p["copy_total"] == p["copy_full_chunks"], p

        asyncio.run(Workload(addr, 1, seed=43).run(count=20))
        cluster.wait_drained()
        r = _wait_copy_caught_up(cluster)
        assert not r["local"]["needs_resync"] and r["local"]["grsts"] == "PAIR", r["local"]
        assert r["local"]["resync_after"] is None, r["local"]
        owed = tmp_path / "relay" / "state" / "g1.resync"
        deadline = time.monotonic() + 10
        while owed.exists():              # forgotten at the checkpoint after the last chunk
            assert time.monotonic() < deadline, "the relay's copy still owes chunks"
            time.sleep(0.05)
        assert r["local"]["consistent"], r["local"]
        pvol = cluster.volume_bytes("primary", 0)
        assert cluster.volume_bytes("relay", 0) == pvol, "relay copy != PVOL"
        assert cluster.volume_bytes("secondary", 0) == pvol, "SVOL != PVOL"
        assert "relay copy consistent" in cluster.cli("status").stdout
    finally:
        cluster.stop_all()
