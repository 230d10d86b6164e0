"""A relay that lost journals it had ACKed (its journal volume and state put back
to an older copy, or recreated) is caught at the primary's next connection:
SUSP naming the PSEQ range, the copy bitmap marked, and `pair resync` repairs it."""

import asyncio
import base64
import re
import shutil

import pytest

from tricopy.host.rcm import pairs as rcm
from tricopy.host.primary import writelog
from tricopy.host.wire.protocol import Kind

from .cluster import BLOCK, Cluster, Workload
from .primary_inproc import master_group, until
from .test_links import wait_for
from .test_replication import check_volumes

LOST = re.compile(r"relay holds PSEQ up to (\d+) but acked up to (\d+): journals (\d+)\.\.(\d+) "
                  r"lost at the relay; run `tricopy pair resync`")


def snapshot(cluster: Cluster, to) -> None:
    """The relay's journal volume and state folder, copied while it is down."""
    src = cluster.root / "relay"
    shutil.copytree(src / "state", to / "state")
    shutil.copy2(src / "jnl1.vol", to / "jnl1.vol")


def restore(cluster: Cluster, frm) -> None:
    dst = cluster.root / "relay"
    shutil.rmtree(dst / "state")
    shutil.copytree(frm / "state", dst / "state")
    shutil.copy2(frm / "jnl1.vol", dst / "jnl1.vol")


def recreate(cluster: Cluster) -> None:
    """A new relay in place of the old one: empty journal volume, no state."""
    dst = cluster.root / "relay"
    shutil.rmtree(dst / "state")
    (dst / "jnl1.vol").unlink()


@pytest.mark.parametrize("restart_primary,fresh", [(False, False), (True, False), (False, True)],
                         ids=["older-copy", "older-copy-primary-restart", "recreated"])
def test_relay_lost_acked_journals(tmp_path, restart_primary, fresh):
    # 4 MiB volumes, the workload in the first MiB of each: a full copy would
    # be 128 chunks of 64 KiB, the lost journals touch at most 32.
    cluster = Cluster(tmp_path / "c", vol_size=4 << 20)
    old = tmp_path / "relay-copy"
    try:
        cluster.start("relay")
        cluster.start("primary")
        work = Workload(cluster.control_addr("primary"), cluster.volumes, workers=4, seed=51)
        asyncio.run(work.run(count=10))
        cluster.kill("relay")
        snapshot(cluster, old)            # the relay as it was after 40 journals
        cluster.start("relay")
        kept = cluster.status("relay")["last_tag"]
        asyncio.run(work.run(count=10))   # 40 more, ACKed by the relay ...
        acked = cluster.status("primary")["last_pseq"]
        assert acked > kept
        if restart_primary:
            # ... the primary restarts too: the ACK high-water mark must survive it
            # (saved within ACKED_SAVE_EVERY = 1 s).  Killed once the mark is on
            # disk and the activity log is cold (writes paused): otherwise the
            # unclean stop resyncs its hot 1 MiB extents, the whole volume here,
            # and the copy below would not show the lost journals' delta alone.
            wait_for(lambda: (s := cluster.status("primary"))["pending"] == 0
                     and s["acked_saved"] == acked and s["activity_extents"] == 0,
                     "the ACK mark saved and the activity log cold")
            cluster.kill("primary")
        cluster.kill("relay")             # ... and lost with its journal volume
        if fresh:
            recreate(cluster)
            kept = 0
        else:
            restore(cluster, old)
        if restart_primary:
            cluster.start("primary")
            assert cluster.status("primary")["acked_pseq"] == acked
        cluster.start("relay")
        assert cluster.status("relay")["last_tag"] == kept

        p = wait_for(lambda: (s := cluster.status("primary"))["grsts"] == "SUSP" and s,
                     "the primary to suspend")
        m = LOST.fullmatch(p["reason"])
        assert m, p["reason"]
        assert [int(x) for x in m.groups()] == [kept, acked, kept + 1, acked]
        line = next(l for l in cluster.log("primary").splitlines() if "lost at the relay" in l)
        assert "ERROR" in line and "delta resync" in line, line
        assert p["copy_pending_bytes"] > 0

        # the repair: a delta resync that continues after the relay's last PSEQ
        cluster.start("secondary")
        sites = cluster.sites()
        rcm.pair_resync(sites, "g1")
        rcm.pair_sync(sites, "g1", timeout=60)
        p = cluster.status("primary")
        assert p["grsts"] == "PAIR"
        assert 0 < p["copy_total"] <= 2 * (1 << 20) // (64 << 10), "not a delta copy"
        asyncio.run(work.run(count=5))    # and the pair goes on
        cluster.wait_drained()
        check_volumes(cluster, work)
    finally:
        cluster.stop_all()


@pytest.mark.parametrize("table", ["kept", "lost"])
def test_relay_loss_beyond_the_write_log(tmp_path, monkeypatch, caplog, table):
    """When the write log no longer holds the lost journals, the region table
    (host/primary/regions.py) still says where they wrote: a delta of the
    regions written after the relay's last PSEQ.  Without the table (lost before
    a restart of the primary) it cannot say, and every chunk is marked."""
    monkeypatch.setattr(writelog, "SEGMENT_SIZE", 32 << 10)
    # 4 MiB volumes: a full copy is 128 chunks of 64 KiB; the lost journals
    # (PSEQ 9..48) wrote the first 160 KiB of volume 1: 3 regions (= chunks, 64 KiB
    # at these volume sizes).
    cluster = Cluster(tmp_path / "c", vol_size=4 << 20)
    old = tmp_path / "relay-copy"
    try:
        cluster.start("relay")

        async def run():
            async with master_group(cluster) as g:
                for i in range(8):
                    await g.journal(Kind.UPDATE, 0, i * BLOCK, BLOCK, bytes([i + 1]) * BLOCK)
                await asyncio.to_thread(cluster.kill, "relay")
                await asyncio.to_thread(snapshot, cluster, old)
                await asyncio.to_thread(cluster.start, "relay")
                await until(lambda: g.link is not None and not g.link.closed, "reconnect")
                for i in range(40):     # 40 x 4 KiB through 32 KiB segments: PSEQ 9.. are gone
                    await g.journal(Kind.UPDATE, 1, i * BLOCK, BLOCK, bytes([i + 1]) * BLOCK)
                await until(lambda: g.log.first_tag > 10, "the write log to let PSEQ 9 go")
                acked = g.last_pseq
                await asyncio.to_thread(cluster.kill, "relay")
                if table == "kept":
                    await lost_and_resynced(g, acked)
            if table == "lost":       # the primary restarts without its region table
                (cluster.root / "primary" / "state" / "g1.regions").unlink()
                async with master_group(cluster, connect=False) as g:
                    await lost_and_resynced(g, acked)

        async def lost_and_resynced(g, acked):
                await asyncio.to_thread(restore, cluster, old)
                await asyncio.to_thread(cluster.start, "relay")
                await until(lambda: g.grsts == "SUSP", "the group to suspend")
                relay_last, hwm, first, last = LOST.fullmatch(g.reason).groups()
                assert (relay_last, first, last) == ("8", "9", hwm)
                # After a restart the ACK mark may be a little stale (saved at
                # each write-log release): the journals after it are resent.
                assert int(hwm) == acked if table == "kept" else 9 < int(hwm) <= acked
                if table == "kept":
                    assert g.bitmap.count() == 3
                else:
                    assert g.bitmap.count() == sum(g.bitmap.nchunks(i) for i in g.volumes)
                await asyncio.to_thread(cluster.start, "secondary")
                g.pair_resync(relay_last_tag=8)
                await until(lambda: g.grsts == "PAIR", "the copy")
                r = await asyncio.to_thread(cluster.status, "relay")
                await until(lambda: cluster.status("secondary")["last_restored"] == r["next_seq"] - 1,
                            "the secondary to restore everything")

        asyncio.run(run())
        said = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        want = "(region table) in the copy bitmap (delta resync)" if table == "kept" \
            else "(full copy)"
        assert any(want in m for m in said), said
        for i in range(cluster.volumes):
            assert cluster.volume_bytes("secondary", i) == cluster.volume_bytes("primary", i)
    finally:
        cluster.stop_all()


def test_a_crash_before_the_region_tables_save_is_a_known_hole(tmp_path, monkeypatch, caplog):
    """The write log does not wait for the region table: a crash after it let
    journals go that the last save did not cover leaves the table a hole, and
    the restart finds it -- the table then cannot answer for PSEQs before the
    log's first record (a full copy), instead of answering too little."""
    monkeypatch.setattr(writelog, "SEGMENT_SIZE", 32 << 10)
    cluster = Cluster(tmp_path / "c", vol_size=4 << 20)
    try:
        cluster.start("relay")

        async def run():
            async with master_group(cluster) as g:
                for i in range(8):
                    await g.journal(Kind.UPDATE, 0, i * BLOCK, BLOCK, bytes([i + 1]) * BLOCK)
                g.regions.save()                     # saved up to PSEQ 8 ...
                assert g.regions.saved_tag == 8
                # ... and never again: the crash comes before the next save.
                monkeypatch.setattr(type(g), "_save_regions", lambda self: None)
                for i in range(40):
                    await g.journal(Kind.UPDATE, 1, i * BLOCK, BLOCK, bytes([i + 1]) * BLOCK)
                await until(lambda: g.log.first_tag > 10, "the write log to let PSEQ 9 go")
            # a crash: the group is dropped without any save
            async with master_group(cluster, connect=False) as g:
                first = g.log.first_tag
                assert g.regions.after(8) is None              # the hole: cannot say
                assert g.regions.after(first - 1) is not None  # from the log on: it can
                assert {o for _, o, _ in g.regions.after(first - 1)} <= {0, 64 << 10, 128 << 10}

        asyncio.run(run())
        assert "the region table was saved up to PSEQ 8" in caplog.text
    finally:
        cluster.stop_all()


def test_an_empty_relay_means_a_delta_from_the_secondarys_restore_point(tmp_path):
    """The relay site is lost and rebuilt with an empty journal after the write log
    let the lost journals go: `pair resync` asks the secondary where it is and
    copies only the regions written after that (the region table), not the volumes."""
    cluster = Cluster(tmp_path / "c", vol_size=16 << 20, journal_size=64 << 20)
    try:
        for role in ("relay", "primary", "secondary"):
            cluster.start(role)
        sites = cluster.sites()

        def write(idx, offset, data):
            sites.call("primary", "write", idx=idx, offset=offset,
                       data=base64.b64encode(data).decode())

        for i in range(8):                          # PSEQ 1..8 into region 0 of volume 0
            write(0, i * BLOCK, bytes([i + 1]) * BLOCK)
        wait_for(lambda: cluster.status("secondary")["restored_tag"] == 8,
                 "the secondary's restore point at PSEQ 8")
        cluster.kill("secondary")
        # 9 MiB into the first MiB of volume 1: the write log (8 MiB segments) rolls
        # and lets PSEQ 9.. go once the relay ACKs them.
        n = 0
        while cluster.status("primary")["write_log_first"] <= 9:
            write(1, (n % 4) * (256 << 10), bytes([n % 251 + 1]) * (256 << 10))
            n += 1
            assert n < 200, "the write log never let go of PSEQ 9"
        cluster.kill("relay")
        recreate(cluster)                           # the relay site rebuilt, empty
        cluster.start("relay")
        p = wait_for(lambda: (s := cluster.status("primary"))["grsts"] == "SUSP" and s,
                     "the primary to suspend")
        assert "lost at the relay" in p["reason"], p["reason"]
        line = next(l for l in cluster.log("primary").splitlines() if "lost at the relay" in l)
        assert "the relay holds no journal" in line, line

        cluster.start("secondary")
        rcm.pair_resync(sites, "g1")
        rcm.pair_sync(sites, "g1", timeout=120)
        p = cluster.status("primary")
        assert p["grsts"] == "PAIR"
        # region 0 of volume 1 only: 16 chunks of 64 KiB (a full copy: 512)
        assert p["copy_total"] == (1 << 20) // (64 << 10), p["copy_total"]
        assert "written after the secondary's restore point (PSEQ 8)" in cluster.log("primary")
        write(0, 0, b"after" * 800 + bytes(96))     # and the pair goes on
        cluster.wait_drained()
        for i in range(cluster.volumes):
            assert cluster.volume_bytes("secondary", i) == cluster.volume_bytes("primary", i)
    finally:
        cluster.stop_all()
