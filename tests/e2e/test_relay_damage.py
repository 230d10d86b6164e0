"""Corruption is loud and never spreads: the relay's journal volume is damaged
or replaced while journals are held, and every site says so until a resync
repairs it.

* 64 bytes flipped in a record in the middle of the held journals of a
  stopped relay: the records after it are quarantined (not zeroed) and
  reported, the primary finds the relay below what it had ACKed and
  suspends, `pair resync` brings PVOL == SVOL.
* the same after a clean stop (SIGTERM): the clean-shutdown mark says where
  the log ends, not that no record rotted since, so the relay falls back
  to the full recovery when it reads the damage at its start.
* the relay recreated empty while the secondary has restored journals: it
  does not offer the secondary a stream that went backwards (it has no
  journal to offer), the primary suspends, and the ordered resync moves the
  secondary's restore point back and copies what it lacks.  (A relay that
  does offer such a stream is refused, SEQ_REGRESSION: tests/e2e/test_links.py.)
"""

import asyncio
import re
import shutil
import signal

from tricopy.host.rcm import pairs as rcm
from tricopy.host.journal.store import HEADER_SIZE, JournalStore

from .cluster import Cluster, Workload
from .test_links import wait_for
from .test_replication import check_volumes

LOST = re.compile(r"journals (\d+)\.\.(\d+) lost at the relay")


def held_records(cluster: Cluster, tmp) -> list[tuple[int, int]]:
    """(JOFS, record size) of the journals the stopped relay holds, read from a copy
    (opening the real file would run recovery on it)."""
    copy = tmp / "jnl-copy.vol"
    shutil.copy2(cluster.root / "relay" / "jnl1.vol", copy)
    with JournalStore.open(copy) as s:
        return list(s._index[s._head:])


def _damage(cluster: Cluster, jofs: int) -> None:
    with open(cluster.root / "relay" / "jnl1.vol", "r+b") as f:
        f.seek(HEADER_SIZE + jofs + 64 + 100)       # inside its journal data
        raw = f.read(64)
        f.seek(HEADER_SIZE + jofs + 64 + 100)
        f.write(bytes(b ^ 0xFF for b in raw))


def recreate_relay(cluster: Cluster) -> None:
    """Start the stopped relay with its journal volume and state gone (a relay
    rebuilt empty): the primary finds its acked journals lost and suspends."""
    shutil.rmtree(cluster.root / "relay" / "state")
    (cluster.root / "relay" / "jnl1.vol").unlink()
    cluster.start("relay")
    p = wait_for(lambda: (x := cluster.status("primary"))["grsts"] == "SUSP" and x,
                 "the primary to suspend", timeout=20)
    assert "lost at the relay" in p["reason"], p["reason"]


def resync_and_check(cluster: Cluster, work: Workload) -> None:
    """The repair every test here ends with: the ordered resync to PAIR, a
    few more writes, and PVOL == SVOL holding every acknowledged write."""
    sites = cluster.sites()
    rcm.pair_resync(sites, "g1")
    rcm.pair_sync(sites, "g1", timeout=120)
    assert cluster.status("secondary")["grsts"] == "PAIR"
    asyncio.run(work.run(count=3))
    cluster.wait_drained()
    check_volumes(cluster, work)


def test_damage_after_a_clean_stop_still_gets_the_full_recovery(tmp_path):
    cluster = Cluster(tmp_path / "c")
    try:
        cluster.start_all()
        work = Workload(cluster.control_addr("primary"), cluster.volumes, workers=4, seed=62)
        asyncio.run(work.run(count=5))
        cluster.wait_drained()
        cluster.kill("secondary")
        asyncio.run(work.run(count=30))
        assert cluster.terminate("relay", signal.SIGTERM) == 0
        held = held_records(cluster, tmp_path)
        _damage(cluster, held[len(held) // 2][0])
        cluster.start("relay")
        r = cluster.status("relay")
        assert "after a clean start" in cluster.log("relay")
        assert r["clean_start"] is False and r["held"] == len(held) // 2
        assert "were moved to" in r["recovery_warning"], r["recovery_warning"]
    finally:
        cluster.stop_all()


def test_damaged_record_mid_ring_is_quarantined_reported_and_repaired(tmp_path):
    cluster = Cluster(tmp_path / "c")
    try:
        cluster.start_all()
        work = Workload(cluster.control_addr("primary"), cluster.volumes, workers=4, seed=61)
        asyncio.run(work.run(count=5))
        cluster.wait_drained()
        cluster.kill("secondary")
        asyncio.run(work.run(count=30))       # 120 journals held at the relay
        cluster.kill("relay")
        held = held_records(cluster, tmp_path)
        assert len(held) >= 100
        _damage(cluster, held[len(held) // 2][0])
        cluster.start("relay")
        r = cluster.status("relay")
        assert r["clean_start"] is False                # killed: no mark, a scan
        assert r["held"] == len(held) // 2
        first, last = r["next_seq"] + 1, r["next_seq"] + len(held) - len(held) // 2 - 1
        assert f"SEQ# {first}..{last}" in r["recovery_warning"], r["recovery_warning"]
        assert "ERROR" in next(l for l in cluster.log("relay").splitlines() if "quarantine" in l)
        assert (cluster.root / "relay" / "jnl1.vol.quarantine").stat().st_size > 0

        p = wait_for(lambda: (s := cluster.status("primary"))["grsts"] == "SUSP" and s,
                     "the primary to suspend", timeout=20)
        m = LOST.search(p["reason"])
        assert m, p["reason"]
        cluster.start("secondary")
        s = cluster.status("secondary")
        # The SVOL holds the first 20 journals: an honest, older prefix.
        assert s["consistent"] and s["last_restored"] < r["next_seq"]

        resync_and_check(cluster, work)
    finally:
        cluster.stop_all()


def test_recreated_relay_waits_for_an_ordered_resync(tmp_path):
    cluster = Cluster(tmp_path / "c")
    try:
        cluster.start_all()
        work = Workload(cluster.control_addr("primary"), cluster.volumes, workers=4, seed=62)
        asyncio.run(work.run(count=10))
        drained = cluster.wait_drained()
        restored = drained["secondary"]["last_restored"]
        assert restored >= 40
        cluster.kill("relay")
        recreate_relay(cluster)
        # The new relay has no journal to offer: the secondary's image stays as
        # it was, consistent, and nobody connected to it.
        s = cluster.status("secondary")
        assert s["grsts"] == "PAIR" and s["consistent"] and s["last_restored"] == restored
        assert not s["connected"] and cluster.status("relay")["secondary_connects"] == 0

        resync_and_check(cluster, work)
    finally:
        cluster.stop_all()


def test_a_secondary_put_back_behind_the_relay_is_refused_and_a_recreated_relay_resyncs_it(tmp_path):
    """The secondary's state and SVOLs replaced by an older copy: the relay has
    released journals it lacks.  The relay refuses it (SUSP, naming the missing
    SEQ# range) and never sends across the hole; the secondary keeps calling
    its old image consistent, which it is (a prefix).  The repair that copies
    only what changed (docs/operations.md, "Known gaps"): recreate the relay's
    journal, then the ordered resync brings PVOL == SVOL.  (The other, a full
    copy by `pair delete` + `pair create`, is tests/e2e/test_pairs.py's.)"""
    cluster = Cluster(tmp_path / "c")
    try:
        cluster.start_all()
        work = Workload(cluster.control_addr("primary"), cluster.volumes, workers=4, seed=63)
        asyncio.run(work.run(count=10))
        old = cluster.wait_drained()["secondary"]["last_restored"]
        assert cluster.terminate("secondary") == 0
        shutil.copytree(cluster.root / "secondary", tmp_path / "secondary-old")
        cluster.start("secondary")
        asyncio.run(work.run(count=10))
        newest = cluster.wait_drained()["secondary"]["last_restored"]
        assert cluster.terminate("secondary") == 0
        shutil.rmtree(cluster.root / "secondary")
        shutil.copytree(tmp_path / "secondary-old", cluster.root / "secondary")
        cluster.start("secondary")
        r = wait_for(lambda: "missing there" in (x := cluster.status("relay"))["reason"] and x,
                     "the relay to refuse the secondary", timeout=20)
        assert r["grsts"] == "SUSP"
        assert f"journals {old + 1}..{newest} are missing there" in r["reason"], r["reason"]
        s = cluster.status("secondary")
        assert s["last_restored"] == old and s["consistent"]      # its old image, a prefix

        cluster.terminate("relay")
        recreate_relay(cluster)
        resync_and_check(cluster, work)
    finally:
        cluster.stop_all()


def test_a_record_that_rots_while_the_relay_runs_stops_forwarding_until_a_restart(tmp_path):
    """A held record damaged while the relay runs (after its recovery scan) is
    found when the forwarder reads it from the journal volume (past the
    journals kept in memory, RECENT_BYTES): forwarding stops, the relay shows
    SUSP naming the damaged SEQ# and the range that cannot be sent, and the
    secondary keeps its older, honest prefix.  The primary is still in PAIR,
    so the advice is a relay restart: the scan quarantines from the damaged
    record on, the primary suspends, and the resync brings PVOL == SVOL."""
    cluster = Cluster(tmp_path / "c", journal_size=32 << 20)
    try:
        cluster.start_all()
        work = Workload(cluster.control_addr("primary"), cluster.volumes, workers=4, seed=64)
        asyncio.run(work.run(count=5))
        before = cluster.wait_drained()["secondary"]["last_restored"]
        cluster.kill("secondary")
        asyncio.run(work.run(count=120))      # ~480 journals, more than RECENT_BYTES
        copy = tmp_path / "jnl-copy.vol"
        shutil.copy2(cluster.root / "relay" / "jnl1.vol", copy)
        with JournalStore.open(copy) as s:     # the tail on disk (a lazy release may lag)
            held = s._index[s._head:]
            # the 11th held journal or the first after it with data (a ZERO or TRIM
            # record is too short: _damage would hit the next one)
            i = next(i for i in range(10, len(held)) if held[i][1] >= 4096)
            damaged, newest = s.tail_seq + i, s.next_seq - 1
            _damage(cluster, held[i][0])
        cluster.start("secondary")
        r = wait_for(lambda: "damaged" in (x := cluster.status("relay"))["reason"] and x,
                     "the relay to stop forwarding", timeout=30)
        assert r["grsts"] == "SUSP"
        assert f"seq {damaged} " in r["reason"], r["reason"]
        assert f"journals {before + 1}..{newest} cannot reach" in r["reason"], r["reason"]
        assert "restart the relay" in r["reason"], r["reason"]
        s = cluster.status("secondary")
        assert s["consistent"] and s["last_restored"] < damaged    # an older prefix
        assert cluster.status("primary")["grsts"] == "PAIR"

        assert cluster.terminate("relay") == 0
        cluster.start("relay")
        assert f"SEQ# {damaged + 1}..{newest}" in cluster.status("relay")["recovery_warning"]
        p = wait_for(lambda: (x := cluster.status("primary"))["grsts"] == "SUSP" and x,
                     "the primary to suspend", timeout=20)
        assert f"journals {damaged}..{newest} lost at the relay" in p["reason"], p["reason"]
        resync_and_check(cluster, work)
    finally:
        cluster.stop_all()
