"""Takeover at the secondary (patent Fig. 11) with real processes and NBD clients.

The primary is SIGKILLed under a stamped write load; ``tricopy takeover``
then runs against the secondary.  The new PVOL, read through its NBD export
with ``nbdcopy``, must hold every write the primary acknowledged and be a
prefix of the write history (nothing torn, nothing invented).  Then it takes
writes over NBD, and the old primary, restarted, finds itself fenced.

``TRICOPY_TAKEOVER_ROUNDS=N`` runs N seeded rounds instead of the suite's
three (docs/operations.md has the figures of a longer run).
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import subprocess
import time

import pytest

from tricopy.host.rcm import control
from tricopy.host.rcm.takeover import takeover
from tricopy.host.tools.chaos import History, stamped

from .cluster import BLOCK, VOL_SIZE, Cluster
from .test_consistency import WORKERS, check_prefix

ROUNDS = int(os.environ.get("TRICOPY_TAKEOVER_ROUNDS", "3"))


class Writers:
    """One write in flight per worker, each in its own block range of volume 0;
    ``history`` (the chaos runner's) records a write when sent and when ACKed."""

    def __init__(self, addr, seed: int):
        self.addr = addr
        self.rng = random.Random(seed)
        span = (VOL_SIZE // BLOCK) // WORKERS
        self.history = History([(0, w * span, span) for w in range(WORKERS)])

    async def worker(self, w: int) -> None:
        _, first, span = self.history.regions[w]
        try:
            client = await control.ControlClient.open(self.addr)
            while True:
                n = self.rng.randint(1, 8)
                off = (first + self.rng.randint(0, span - n)) * BLOCK
                rec = self.history.send(w, 0, off, stamped(w, len(self.history.sent[w]) + 1, n))
                await client.call("write", idx=0, offset=off,
                                  data=base64.b64encode(rec[2]).decode())
                self.history.ack(w, rec)
        except (OSError, ConnectionError, EOFError, control.ControlError):
            return           # the primary is gone: this worker's last write may not be ACKed

    def acked(self, w: int) -> int:
        return self.history.acked(w)


def rcm(cluster: Cluster, *args: str) -> subprocess.CompletedProcess:
    return cluster.cli(*args, timeout=120)


def nbd_read(cluster: Cluster, role: str, path) -> bytes:
    subprocess.run(["nbdcopy", cluster.nbd_uri(role, 0), str(path)], check=True,
                   capture_output=True, timeout=60)
    return path.read_bytes()


@pytest.mark.parametrize("seed", range(1, ROUNDS + 1))
def test_primary_lost_takeover_keeps_every_acked_write(tmp_path, seed):
    cluster = Cluster(tmp_path, nbd=True, volumes=1)
    rng = random.Random(seed)
    try:
        cluster.start_all()
        writers = Writers(cluster.control_addr("primary"), seed)

        # Odd rounds: the secondary was down too, so the relay holds a backlog
        # that it must restore (after a crash replay) before it may take over.
        lagging = seed % 2 == 1

        def acked() -> int:
            return sum(writers.acked(w) for w in range(WORKERS))

        async def after(n: int) -> None:
            """Until ``n`` more writes are ACKed, then a random moment within 0.3 s."""
            goal, deadline = acked() + n, time.monotonic() + 60
            while acked() < goal:
                assert time.monotonic() < deadline, f"{acked()} of {goal} writes ACKed in 60 s"
                await asyncio.sleep(0.01)
            await asyncio.sleep(rng.uniform(0.0, 0.3))

        async def load():
            tasks = [asyncio.create_task(writers.worker(w)) for w in range(WORKERS)]
            await after(40)
            if lagging:
                cluster.kill("secondary")
                await after(40)
            cluster.kill("primary")            # mid-write: some writes are in flight
            await asyncio.gather(*tasks)

        asyncio.run(load())
        assert acked() >= 40, "the load did not run"
        if lagging:
            # Restarted, replaying after its crash, the relay's backlog not sent
            # yet: the takeover must wait for all of it (in process, at once).
            cluster.start("secondary")
            assert cluster.status("relay")["held"] > 0, "no backlog at the relay"
            rec = takeover(cluster.sites(), "g1")
            assert rec["seq"] == rec["relay_last_seq"]
        else:
            out = rcm(cluster, "takeover", "--group", "g1")
            assert out.returncode == 0, out.stderr
            assert "taken over at the secondary" in out.stdout and "read-write" in out.stdout
        s = cluster.status("secondary")
        assert s["role"] == "primary" and s["epoch"] == 1 and s["consistent"]
        assert s["takeover"]["seq"] == s["last_restored"] == cluster.status("relay")["next_seq"] - 1

        # Every ACKed write is there, and the image is a prefix of the history.
        ks = check_prefix(writers.history, [nbd_read(cluster, "secondary", tmp_path / "new.img")],
                          all_acked=True)
        assert sum(ks) >= sum(writers.acked(w) for w in range(WORKERS))

        # The new PVOL takes writes over NBD, under the export name it had.
        subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0xab 0 4096",
                        cluster.nbd_uri("secondary", 0)], check=True, capture_output=True,
                       timeout=60)
        assert nbd_read(cluster, "secondary", tmp_path / "after.img")[:BLOCK] == b"\xab" * BLOCK
        assert cluster.status("secondary")["written_bytes"] > 0
        shown = rcm(cluster, "status")
        assert "the secondary site is the primary at epoch 1" in shown.stdout, shown

        # A crash of the new primary keeps it the primary, with what it wrote.
        cluster.kill("secondary")
        cluster.start("secondary")
        assert cluster.status("secondary")["role"] == "primary"
        assert nbd_read(cluster, "secondary", tmp_path / "again.img")[:BLOCK] == b"\xab" * BLOCK

        # The old primary comes back: the relay refuses its epoch, it fences itself.
        cluster.start("primary")
        deadline = time.monotonic() + 20
        while not cluster.status("primary").get("fenced"):
            assert time.monotonic() < deadline, cluster.log("primary")[-2000:]
            time.sleep(0.1)
        p = cluster.status("primary")
        assert "taken over at epoch 1" in p["reason"] and "at epoch 0" in p["reason"]
        assert "primary 'primary' is at epoch 0 but group g1 was taken over at epoch 1" \
            in cluster.log("relay")
        bad = subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0xcd 0 4096",
                              cluster.nbd_uri("primary", 0)], capture_output=True, text=True,
                             timeout=60)
        assert "Operation not permitted" in bad.stdout + bad.stderr, bad
        again = rcm(cluster, "pair", "resync", "--group", "g1")
        assert again.returncode == 1 and "fenced" in again.stderr
    finally:
        cluster.stop_all()


def test_takeover_without_the_relay_needs_force_and_says_what_it_holds(tmp_path):
    cluster = Cluster(tmp_path, nbd=True, volumes=1)
    try:
        cluster.start_all()
        writers = Writers(cluster.control_addr("primary"), 7)

        async def load():
            tasks = [asyncio.create_task(writers.worker(w)) for w in range(WORKERS)]
            await asyncio.sleep(0.8)
            cluster.kill("relay")
            cluster.kill("primary")
            await asyncio.gather(*tasks)

        asyncio.run(load())
        refused = rcm(cluster, "takeover", "--group", "g1")
        assert refused.returncode == 1
        assert "relay" in refused.stderr and "not reachable" in refused.stderr
        assert "--force" in refused.stderr and "Traceback" not in refused.stderr
        assert cluster.status("secondary")["role"] == "secondary"

        held = cluster.status("secondary")["last_restored"]
        forced = rcm(cluster, "takeover", "--group", "g1", "--force")
        assert forced.returncode == 0, forced.stderr
        assert f"up to SEQ# {held}" in forced.stdout and "are lost" in forced.stdout
        s = cluster.status("secondary")
        assert s["takeover"]["forced"] and s["takeover"]["seq"] == held
        # What the relay alone held is gone, but what is there is a prefix.
        check_prefix(writers.history, [nbd_read(cluster, "secondary", tmp_path / "forced.img")])
    finally:
        cluster.stop_all()


def test_takeover_refuses_a_copy_that_is_no_image(tmp_path):
    """A group never paired (SMPL) has nothing to take over; the answer says so."""
    cluster = Cluster(tmp_path, volumes=1, initial_state="SMPL")
    try:
        cluster.start_all()
        out = rcm(cluster, "takeover", "--group", "g1")
        assert out.returncode == 1 and "SMPL" in out.stderr and "Traceback" not in out.stderr
        assert "nothing was changed" in out.stderr
        assert cluster.status("secondary")["role"] == "secondary"
        assert cluster.status("relay")["fence_epoch"] == 0, "a refused takeover fenced the relay"
    finally:
        cluster.stop_all()
