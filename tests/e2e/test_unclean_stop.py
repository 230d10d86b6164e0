"""After an unclean stop of the primary, PVOL and SVOL may differ; the activity log finds where.

A power loss at the primary drops PVOL writes and write-log records that
were not synced, while the relay holds their journals durably (or the other
way round: a PVOL write whose journal never left).  SIGKILL cannot show that
(the page cache survives), so the test makes the loss by hand, as a power cut
could leave it: the primary is frozen (SIGSTOP) and its PVOL and write-log
segments copied, the load goes on, the primary is SIGKILLed and those files
are put back -- every PVOL write and log record after the copy is lost, while
what was fsynced since (the activity log, the ACK mark, the JNLG table) is
kept.  A round is redone if the primary fsynced its PVOLs in between (a cut
cannot lose what was synced; the copy would claim it did).

Then one block of a hot extent is changed on the PVOL alone (a write that
landed while its journal was lost).  The restarted primary must find both
kinds of difference from its activity log and resync them, in band: the
secondary says "no consistent image" from the copy's first journal to its
last, and PVOL == SVOL after the drain.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import time

from .cluster import BLOCK, Cluster, Workload


def _freeze_copy(cluster: Cluster, dest) -> int:
    """SIGSTOP the primary, copy its PVOLs and write-log segments, SIGCONT;
    returns its PVOL fsync count at that instant."""
    syncs = cluster.status("primary")["pvol_syncs"]
    proc = cluster.procs["primary"]
    proc.send_signal(signal.SIGSTOP)
    try:
        src = cluster.root / "primary"
        dest.mkdir()
        for f in list(src.glob("pvol*.img")) + list((src / "state").glob("*.plog.*")):
            shutil.copy(f, dest / f.name)
    finally:
        proc.send_signal(signal.SIGCONT)
    return syncs


def _power_cut(cluster: Cluster, copy) -> None:
    """(After the SIGKILL) every unsynced PVOL write and log record since ``copy`` is gone."""
    src = cluster.root / "primary"
    for f in (src / "state").glob("*.plog.*"):
        f.unlink()
    for f in copy.iterdir():
        shutil.copy(f, (src / "state" / f.name) if ".plog." in f.name else src / f.name)


def test_unclean_stop_resyncs_what_a_power_loss_left_different(tmp_path):
    for attempt in range(5):
        root = tmp_path / f"try{attempt}"
        root.mkdir()
        cluster = Cluster(root, volumes=1)
        try:
            cluster.start_all()
            work = Workload(cluster.control_addr("primary"), 1, workers=4, seed=attempt)

            async def acked(n: int) -> None:
                goal, deadline = work.acked + n, time.monotonic() + 60
                while work.acked < goal:
                    assert time.monotonic() < deadline, (
                        f"{work.acked} of {goal} writes ACKed after 60 s: "
                        f"{cluster.status('primary')}")
                    await asyncio.sleep(0.01)

            async def run():
                task = asyncio.create_task(work.run())
                await acked(40)
                syncs = _freeze_copy(cluster, root / "copy")
                await acked(40)                    # writes the cut will lose at the PVOL
                st = cluster.status("primary")
                # Killed while writes still run: the activity log never saw a
                # pause, so nothing was fsynced and cooled since ``st``.
                cluster.kill("primary")
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                assert st["activity_extents"] > 0
                return syncs, st["pvol_syncs"]

            syncs, later = asyncio.run(run())
            if later != syncs:
                cluster.stop_all()
                continue      # the PVOLs were fsynced after the copy: not a possible cut
            relay_before = cluster.status("relay")["next_seq"]
            _power_cut(cluster, root / "copy")
            pvol = root / "primary" / "pvol0.img"
            # The relay's journals all restored: the SVOL holds writes the PVOL lost.
            deadline = time.monotonic() + 30
            while True:
                r, s = cluster.status("relay"), cluster.status("secondary")
                if r["held"] == 0 and s["last_restored"] == r["next_seq"] - 1:
                    break
                assert time.monotonic() < deadline, (r, s)
                time.sleep(0.1)
            assert pvol.read_bytes() != cluster.volume_bytes("secondary", 0), \
                "the simulated cut lost nothing: the test would prove nothing"
            # A write that reached the PVOL while its journal was lost.
            with open(pvol, "r+b") as f:
                f.seek(3 * BLOCK)
                f.write(b"\x5a" * BLOCK)

            cluster.start("primary")
            deadline = time.monotonic() + 60
            while True:
                p = cluster.status("primary")
                if p["grsts"] == "PAIR" and p["pending"] == 0 and p["unclean_extents"] == 0:
                    break
                assert time.monotonic() < deadline, p
                time.sleep(0.1)
            cluster.wait_drained()
            assert cluster.volume_bytes("secondary", 0) == pvol.read_bytes(), \
                "PVOL and SVOL differ after the restart from an unclean stop"
            assert "the last stop was not clean" in cluster.log("primary")
            assert "a copy begins at SEQ#" in cluster.log("secondary")
            assert "the copy ended at SEQ#" in cluster.log("secondary")
            assert cluster.status("relay")["next_seq"] > relay_before
            s = cluster.status("secondary")
            assert s["consistent"] and s["grsts"] == "PAIR"
            return
        finally:
            cluster.stop_all()
    raise AssertionError("every attempt saw a PVOL fsync between the copy and the kill")


def test_a_copy_that_ends_without_pair_is_scanned_again(tmp_path, monkeypatch):
    """The chaos runner once left a primary in COPY for good after a resync: the
    scan task ended, every base journal ACKed, no COPY_END.  Whatever the cause,
    the watchdog must notice a scan that ended (or stalled) and scan again."""
    from tricopy.host.primary import site as primary

    from .primary_inproc import master_group, until

    monkeypatch.setattr(primary, "COPY_STALL", 0.4)
    real = primary.MasterGroup._base_copy
    calls = []

    async def dies_once(self, gen):
        calls.append(gen)
        if len(calls) == 1:
            raise RuntimeError("the first scan dies")
        await real(self, gen)

    monkeypatch.setattr(primary.MasterGroup, "_base_copy", dies_once)
    cluster = Cluster(tmp_path, volumes=1, initial_state="SMPL")
    try:
        cluster.start("secondary")
        cluster.start("relay")

        async def run():
            async with master_group(cluster, connect=False) as g:
                g.pair_create()
                await until(lambda: g.grsts == "PAIR", "the copy to reach PAIR")
                return g.copy_restarts, g.copy_error

        restarts, error = asyncio.run(run())
        assert restarts == 1 and "the first scan dies" in error and len(calls) == 2
    finally:
        cluster.stop_all()
