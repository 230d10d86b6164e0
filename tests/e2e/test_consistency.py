"""The SVOLs only ever hold a prefix of the primary's write history (write-order consistency).

Every block written carries a stamp (worker, write number).  While writers
run, the secondary is asked for snapshots of its SVOLs between two restore
steps (control command ``snapshot``).  Each snapshot must equal the volumes
after some prefix of the history:

* per worker (one write in flight, own block range): the range equals the
  replay of that worker's writes 1..k, k being the newest stamp in it;
* across workers and volumes: a write is visible only if every write that was
  ACKed before it was sent is visible too (what any prefix of the apply
  order — which respects real time — guarantees).
"""

import asyncio
import base64
import random
import signal
import subprocess
import time
from pathlib import Path

from tricopy.host.rcm import control
from tricopy.host.secondary.site import RestoreState
# The stamped blocks and the prefix checker are the chaos runner's: one
# definition for the chaos rounds and these tests.
from tricopy.host.tools.chaos import History, stamped

from .cluster import BLOCK, VOL_SIZE, Cluster

WORKERS = 8


class StampedWriters:
    """Workers with a block range each, one write in flight, every block stamped;
    ``history`` (the chaos runner's) records each write when sent and when ACKed."""

    def __init__(self, addr, volumes: int, seed: int):
        self.addr = addr
        self.rng = random.Random(seed)
        blocks = VOL_SIZE // BLOCK
        per_vol = WORKERS // volumes
        span = blocks // per_vol
        self.history = History([(w % volumes, (w // volumes) * span, span)
                                for w in range(WORKERS)])
        self.stop = False

    async def worker(self, w: int) -> None:
        idx, first, span = self.history.regions[w]
        client = await control.ControlClient.open(self.addr)
        while not self.stop:
            n = self.rng.randint(1, 8)
            off = (first + self.rng.randint(0, span - n)) * BLOCK
            rec = self.history.send(w, idx, off, stamped(w, len(self.history.sent[w]) + 1, n))
            await client.call("write", idx=idx, offset=off, data=base64.b64encode(rec[2]).decode())
            self.history.ack(w, rec)
        await client.close()


def check_prefix(history: History, svols: list[bytes], *, all_acked: bool = False) -> list[int]:
    """Assert the images are a prefix of the history (with ``all_acked``: holding
    every ACKed write too); return k per worker."""
    bad, ks = history.check(svols, all_acked=all_acked)
    assert not bad, "\n".join(bad)
    return ks


def test_svol_snapshots_are_prefixes_of_the_write_history(tmp_path):
    cluster = Cluster(tmp_path)
    try:
        cluster.start_all()
        writers = StampedWriters(cluster.control_addr("primary"), cluster.volumes, seed=11)
        snaps: list[tuple[int, list[bytes]]] = []
        rng = random.Random(12)

        async def snapshots():
            client = await control.ControlClient.open(cluster.control_addr("secondary"))
            for n in range(12):
                await asyncio.sleep(rng.uniform(0.1, 0.4))
                ans = await client.call("snapshot", group="g1", name=f"snap{n}")
                folder = Path(ans["folder"])
                snaps.append((ans["last_restored"],
                              [(folder / f"svol{i}.img").read_bytes()
                               for i in range(cluster.volumes)]))
            await client.close()
            writers.stop = True

        async def run():
            await asyncio.gather(snapshots(), *(writers.worker(w) for w in range(WORKERS)))

        asyncio.run(run())
        total = [len(h) for h in writers.history.sent]
        mid_run = 0
        last_point = 0
        for point, svols in snaps:
            assert point >= last_point, "the restore point went backwards"
            last_point = point
            ks = check_prefix(writers.history, svols)
            mid_run += any(0 < k < t for k, t in zip(ks, total))
        assert mid_run >= len(snaps) // 2, "the snapshots did not catch the run in the middle"
        cluster.wait_drained()
        final = [cluster.volume_bytes("secondary", i) for i in range(cluster.volumes)]
        assert check_prefix(writers.history, final, all_acked=True) == total
        assert final == [cluster.volume_bytes("primary", i) for i in range(cluster.volumes)]
    finally:
        cluster.stop_all()


def test_check_prefix_catches_a_reordered_svol():
    """The checker itself: a snapshot missing an earlier-ACKed write is refused."""
    h = StampedWriters(("127.0.0.1", 1), 2, seed=1).history
    idx0, first0, _ = h.regions[0]
    idx1, first1, _ = h.regions[1]
    a = stamped(0, 1, 1)
    b = stamped(1, 1, 1)
    h.sent[0].append([idx0, first0 * BLOCK, a, 0.0, 1.0])
    h.acks[0].append(1.0)
    h.sent[1].append([idx1, first1 * BLOCK, b, 2.0, 3.0])     # sent after a was ACKed
    h.acks[1].append(3.0)
    vols = [bytearray(VOL_SIZE) for _ in range(2)]
    vols[idx1][first1 * BLOCK:first1 * BLOCK + BLOCK] = b         # b without a
    try:
        check_prefix(h, [bytes(v) for v in vols])
    except AssertionError as exc:
        assert "acknowledged before it was sent" in str(exc)
    else:
        raise AssertionError("a non-prefix snapshot was accepted")
    vols[idx0][first0 * BLOCK:first0 * BLOCK + BLOCK] = a
    assert check_prefix(h, [bytes(v) for v in vols], all_acked=True) == [1, 1, 0, 0, 0, 0, 0, 0]


def _restore_state(cluster: Cluster) -> dict:
    return RestoreState(cluster.root / "secondary" / "state" / "g1.restored").doc()


def test_svol_stays_a_prefix_across_secondary_crashes_during_catch_up(tmp_path):
    """The secondary is killed while it restores, restarted with the relay
    stopped (the window in which a second crash, then the loss of primary and
    relay, would leave it alone), then caught up while snapshots are taken.

    Every snapshot the secondary calls consistent must be a prefix of the
    history; while a crash's replay is pending the group must say "not
    consistent" and its NBD export must refuse reads.
    """
    cluster = Cluster(tmp_path, nbd=True)
    rng = random.Random(23)
    snaps: list[tuple[bool, list[bytes]]] = []
    caught = 0
    try:
        cluster.start_all()
        writers = StampedWriters(cluster.control_addr("primary"), cluster.volumes, seed=24)

        async def crashes():
            nonlocal caught
            for rnd in range(6):
                await asyncio.sleep(rng.uniform(0.3, 0.8))
                cluster.kill("secondary")
                cluster.procs["relay"].send_signal(signal.SIGSTOP)
                try:
                    state = _restore_state(cluster)
                    await asyncio.to_thread(cluster.start, "secondary")
                    st = cluster.status("secondary")
                    if state.get("mark", 0) > state["last_seq"]:
                        # A replay is pending: nothing may call the SVOLs consistent.
                        caught += 1
                        assert not st["consistent"] and st["catching_up_to"] == state["mark"]
                        ans = control.call(cluster.control_addr("secondary"), "snapshot",
                                           group="g1", name=f"crash{rnd}")
                        assert not ans["consistent"]
                        read = subprocess.run(["qemu-io", "-f", "raw", "-r", "-c", "read 0 4096",
                                               cluster.nbd_uri("secondary", 0)],
                                              capture_output=True, text=True, timeout=30)
                        assert "read failed" in read.stdout + read.stderr, read
                finally:
                    cluster.procs["relay"].send_signal(signal.SIGCONT)
                for n in range(4):
                    ans = await asyncio.to_thread(control.call, cluster.control_addr("secondary"),
                                                  "snapshot", group="g1", name=f"r{rnd}s{n}")
                    folder = Path(ans["folder"])
                    snaps.append((ans["consistent"], [(folder / f"svol{i}.img").read_bytes()
                                                      for i in range(cluster.volumes)]))
            writers.stop = True

        async def run():
            await asyncio.gather(crashes(), *(writers.worker(w) for w in range(WORKERS)))

        asyncio.run(run())
        assert caught >= 2, "no kill landed between an apply mark and its restore point"
        for consistent, svols in snaps:
            if consistent:
                check_prefix(writers.history, svols)
        cluster.wait_drained()
        st = cluster.status("secondary")
        assert st["consistent"] and st["catching_up_to"] is None
        final = [cluster.volume_bytes("secondary", i) for i in range(cluster.volumes)]
        assert final == [cluster.volume_bytes("primary", i) for i in range(cluster.volumes)]
    finally:
        for proc in cluster.procs.values():
            proc.send_signal(signal.SIGCONT)
        cluster.stop_all()
