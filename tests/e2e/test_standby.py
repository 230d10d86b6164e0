"""A standby relay (docs/operations.md, "A standby relay"): the relay site is lost,
the group moves to the standby with only what the secondary lacks, replication
goes on through it, and the group moves back once the relay returns."""

import base64

from tricopy.host.rcm import pairs as rcm

from .cluster import BLOCK, Cluster
from .test_links import wait_for

MiB = 1 << 20
CHUNK = 64 << 10


def test_relay_lost_then_standby_then_back(tmp_path):
    cluster = Cluster(tmp_path / "c", vol_size=16 * MiB, journal_size=64 * MiB,
                      link_suspend_after=1.0, standby=True)
    try:
        for role in ("relay", "primary", "secondary", "standby"):
            cluster.start(role)
        sites = cluster.sites()

        def write(idx, offset, fill, length=BLOCK):
            sites.call("primary", "write", idx=idx, offset=offset,
                       data=base64.b64encode(bytes([fill]) * length).decode())

        for i in range(8):                          # PSEQ 1..8: region 0 of volume 0
            write(0, i * BLOCK, i + 1)
        wait_for(lambda: cluster.status("secondary")["restored_tag"] == 8,
                 "the secondary's restore point at PSEQ 8")
        cluster.kill("secondary")
        for i in range(20):                         # ACKed by the relay, never restored
            write(1, i * BLOCK, 0x40 + i)
        cluster.kill("relay")                       # the relay site is lost
        cluster.start("secondary")
        write(0, 2 * MiB, 0x77)                     # stalls 1 s, then tracked (SUSP)
        p = cluster.status("primary")
        assert p["grsts"] == "SUSP" and "tracked" in p["reason"], p["reason"]

        # -- to the standby: only what the secondary lacks is copied ------------------
        out = cluster.cli("pair", "resync", "--group", "g1", "--via", "standby")
        assert out.returncode == 0, out.stderr
        assert "PAIR" in out.stdout, out.stdout
        assert "copied 196608 bytes (3 chunks of 64 KiB), 0.59% of a full copy" in out.stdout
        p = cluster.status("primary")
        assert p["relay_in_use"] == "standby" and p["grsts"] == "PAIR"
        # the first 80 KiB of volume 1 (the journals the relay took with it: 2
        # regions of 64 KiB) and the write in flight when the relay was lost (1)
        assert p["copy_total"] == 3, p["copy_total"]
        for i in range(8):                          # replication goes on through it
            write(1, 4 * MiB + i * BLOCK, 0x90 + i)
        cluster.wait_drained(relay="standby")
        for i in range(cluster.volumes):
            assert cluster.volume_bytes("secondary", i) == cluster.volume_bytes("primary", i)
        st = cluster.cli("status", "--group", "g1")
        assert st.returncode == 0, st.stdout + st.stderr

        # -- the relay comes back with its old journals: refused, harmless -----------
        cluster.start("relay")
        wait_for(lambda: "STALE_EPOCH" in cluster.status("relay")["reason"],
                 "the secondary to refuse the old relay's stream (epoch 0, the group at 1)")
        s = cluster.status("secondary")
        assert s["grsts"] == "PAIR" and s["consistent"], s

        # -- and back to it: the delta is what the secondary lacks (nothing) ----------
        out = cluster.cli("pair", "resync", "--group", "g1", "--via", "relay")
        assert out.returncode == 0, out.stderr
        p = cluster.status("primary")
        assert p["relay_in_use"] == "relay" and p["grsts"] == "PAIR"
        assert p["copy_total"] == 0, p["copy_total"]
        for i in range(8):
            write(0, 5 * MiB + i * BLOCK, 0xA0 + i)
        cluster.wait_drained()
        for i in range(cluster.volumes):
            assert cluster.volume_bytes("secondary", i) == cluster.volume_bytes("primary", i)
        st = cluster.cli("status", "--group", "g1")
        assert st.returncode == 0, st.stdout + st.stderr
    finally:
        cluster.stop_all()
