"""Failback after an unplanned takeover, with real processes and NBD clients.

The primary is SIGKILLed under a stamped write load (writes in flight that the
relay never ACKed, an activity log left hot), the secondary takes over and
takes writes over NBD, the old primary comes back fenced, and
``tricopy failback`` moves only the delta: afterwards the old primary's PVOL
equals the taken-over volume byte for byte, it is the writer again and its
new writes replicate to the secondary, which is read-only again.
"""

from __future__ import annotations

import asyncio
import base64
import re
import signal
import subprocess
import time

from tricopy.host.rcm import control
from tricopy.host.rcm.failback import failback

from .cluster import BLOCK, Cluster
from .test_consistency import WORKERS
from .test_takeover import Writers, rcm

LATE = b"\x5a"     # the fill of the writes only the old primary's PVOL gets
VOL = 8 << 20      # the writers use the first 1 MiB: a delta is a fraction of a full copy


def qemu_write(cluster: Cluster, role: str, pattern: int, offset: int) -> subprocess.CompletedProcess:
    return subprocess.run(["qemu-io", "-f", "raw", "-c", f"write -P {pattern:#x} {offset} 4096",
                           cluster.nbd_uri(role, 0)], capture_output=True, text=True, timeout=60)


def refused(done: subprocess.CompletedProcess) -> bool:
    """qemu-io could not write: a read-only export (refused at open) or EPERM."""
    text = done.stdout + done.stderr
    return "Operation not permitted" in text or "Permission denied" in text


def wait(pred, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (value := pred()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def takeover_after_a_crash(cluster: Cluster, seed: int) -> Writers:
    """Primary SIGKILLed mid-load with writes on its PVOL that the relay never
    took, takeover at the secondary, writes there, old primary restarted
    (fenced): the two sites differ both ways."""
    cluster.start_all()
    writers = Writers(cluster.control_addr("primary"), seed)

    async def load():
        tasks = [asyncio.create_task(writers.worker(w)) for w in range(WORKERS)]
        while sum(writers.acked(w) for w in range(WORKERS)) < 80:
            await asyncio.sleep(0.01)
        # The load stops (a later write of a worker could land on a late
        # block) and the relay ACKs what it has ...
        for t in tasks:
            t.cancel()
        while cluster.status("primary")["pending"]:
            await asyncio.sleep(0.01)
        # ... then takes nothing more.  Writes sent from now on reach the PVOL
        # (applied before they are sent) and wait for an ACK ...
        cluster.procs["relay"].send_signal(signal.SIGSTOP)
        client = await control.ControlClient.open(cluster.control_addr("primary"))
        late = [asyncio.create_task(client.call("write", idx=0, offset=(16 * i + 3) * BLOCK,
                                                data=base64.b64encode(LATE * BLOCK).decode()))
                for i in range(4)]
        while not has_late(cluster.volume_bytes("primary", 0)):     # on the PVOL (page cache)
            await asyncio.sleep(0.01)
        cluster.kill("primary")
        # ... and never gets one: the relay dies before it reads them (its
        # socket buffers go with it); what it ACKed is durable in its journal.
        cluster.kill("relay")
        await asyncio.gather(*tasks, *late, return_exceptions=True)

    asyncio.run(load())
    cluster.start("relay")
    out = rcm(cluster, "takeover", "--group", "g1")
    assert out.returncode == 0, out.stderr
    for pattern, offset in ((0xab, 0), (0xac, 5 << 20)):   # one in the writers' MiB, one not
        done = qemu_write(cluster, "secondary", pattern, offset)
        assert done.returncode == 0, done.stderr
    cluster.start("primary")
    wait(lambda: cluster.status("primary")["fenced"], "the old primary to fence itself")
    assert has_late(cluster.volume_bytes("primary", 0)), "the old primary lost its late writes"
    return writers


def has_late(image: bytes) -> bool:
    return all(image[(16 * i + 3) * BLOCK:(16 * i + 4) * BLOCK] == LATE * BLOCK for i in range(4))


def test_failback_moves_only_the_delta_and_replication_runs_again(tmp_path):
    cluster = Cluster(tmp_path, nbd=True, volumes=1, vol_size=VOL)
    try:
        takeover_after_a_crash(cluster, seed=11)
        assert cluster.volume_bytes("primary", 0) != cluster.volume_bytes("secondary", 0)

        out = rcm(cluster, "failback", "--group", "g1")
        assert out.returncode == 0, out.stderr + out.stdout
        m = re.search(r"(\d+) bytes copied \((\d+) chunks, ([\d.]+)% of a full copy of (\d+) "
                      r"bytes\)", out.stdout)
        assert m, out.stdout
        moved, full = int(m[1]), int(m[4])
        assert full == VOL and 0 < moved <= full // 4, out.stdout      # a delta, not a copy
        print(f"failback delta: {moved} of {full} bytes")

        # The old primary holds exactly what the taken-over site held.
        pvol = cluster.volume_bytes("primary", 0)
        assert pvol == cluster.volume_bytes("secondary", 0), "PVOL != SVOL after failback"
        assert pvol[:BLOCK] == b"\xab" * BLOCK and pvol[5 << 20:(5 << 20) + BLOCK] == b"\xac" * BLOCK

        p, r, s = (cluster.status(x) for x in ("primary", "relay", "secondary"))
        assert not p["fenced"] and p["grsts"] == "PAIR" and p["epoch"] == 2
        assert r["epoch"] == 2 and r["held"] == 0
        assert s["role"] == "secondary" and s["epoch"] == 2 and not s["writable"]

        # Writes at the primary again, replicated to the secondary.
        done = qemu_write(cluster, "primary", 0xcd, 1 << 20)
        assert done.returncode == 0, done.stderr
        cluster.wait_drained()
        pvol = cluster.volume_bytes("primary", 0)
        assert pvol[1 << 20:(1 << 20) + BLOCK] == b"\xcd" * BLOCK
        assert pvol == cluster.volume_bytes("secondary", 0), "not replicated after failback"
        no = qemu_write(cluster, "secondary", 0xee, 0)
        assert refused(no), no

        again = rcm(cluster, "failback", "--group", "g1")
        assert again.returncode == 0 and "nothing to fail back" in again.stdout, again
    finally:
        cluster.stop_all()


def test_failback_interrupted_after_the_copy_is_finished_by_a_second_run(tmp_path):
    """The RCM dies after the relay moved on: the secondary still holds the
    takeover (quiesced) and the old primary is fenced; a second run finishes."""
    cluster = Cluster(tmp_path, nbd=True, volumes=1, vol_size=VOL)
    try:
        takeover_after_a_crash(cluster, seed=12)
        sites = cluster.sites()
        took = cluster.status("secondary")["takeover"]
        epoch = took["epoch"] + 1
        # Steps 1-4 by hand, as the command would, then "the RCM dies".
        sites.call("primary", "fence", group="g1", epoch=took["epoch"])
        q = sites.call("secondary", "quiesce", group="g1", epoch=epoch)
        no = qemu_write(cluster, "secondary", 0xee, 0)       # quiesced: no more writes
        assert refused(no), no
        cluster.kill("secondary")          # and the quiesce survives a crash
        cluster.start("secondary")
        no = qemu_write(cluster, "secondary", 0xee, 0)
        assert refused(no), no
        rec = failback(sites, "g1", digest=True)          # the copy, by digests this time
        assert rec["chunks"] > 0 and rec["epoch"] == epoch
        assert q["written"]["0"], "the secondary recorded no written chunk"
        assert cluster.volume_bytes("primary", 0) == cluster.volume_bytes("secondary", 0)
        rec = failback(sites, "g1")
        assert rec.get("already"), rec
        done = qemu_write(cluster, "primary", 0xcd, 0)
        assert done.returncode == 0, done.stderr
        cluster.wait_drained()
        assert cluster.volume_bytes("primary", 0) == cluster.volume_bytes("secondary", 0)
    finally:
        cluster.stop_all()


def test_failback_rejoin_keeps_the_new_writer_and_replicates_to_the_old_primary(tmp_path):
    """``--rejoin``: the old primary gets the delta and comes back as the restore
    side; the site that took over keeps writing, now replicated."""
    cluster = Cluster(tmp_path, nbd=True, volumes=1, vol_size=VOL)
    try:
        takeover_after_a_crash(cluster, seed=13)
        out = rcm(cluster, "failback", "--group", "g1", "--rejoin")
        assert out.returncode == 0, out.stderr + out.stdout
        assert "--rejoin: swapped" in out.stdout, out.stdout
        assert control.call(cluster.control_addr("secondary"), "status")["role"] == "primary"
        assert control.call(cluster.control_addr("primary"), "status")["role"] == "secondary"
        done = qemu_write(cluster, "secondary", 0xcd, 2 << 20)
        assert done.returncode == 0 and "wrote" in done.stdout, done
        deadline = time.monotonic() + 30
        while cluster.volume_bytes("primary", 0) != cluster.volume_bytes("secondary", 0):
            assert time.monotonic() < deadline, "the old primary did not receive the new writes"
            time.sleep(0.05)
        assert cluster.volume_bytes("primary", 0)[2 << 20:(2 << 20) + BLOCK] == b"\xcd" * BLOCK
        back = rcm(cluster, "failback", "--group", "g1")
        assert back.returncode == 0 and "swapped back" in back.stdout, back
    finally:
        cluster.stop_all()
