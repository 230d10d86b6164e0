"""The Prometheus endpoint of each site, scraped over HTTP, against ``tricopy status --json``."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from .cluster import Cluster, Workload, free_port


def scrape(port: int) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_match_status(tmp_path):
    ports = {r: free_port() for r in ("primary", "relay", "secondary")}
    cluster = Cluster(tmp_path, volumes=1,
                      site_extra={r: f'metrics = "127.0.0.1:{p}"\n' for r, p in ports.items()})
    try:
        cluster.start_all()
        asyncio.run(Workload(cluster.control_addr("primary"), 1, workers=2, seed=3).run(count=20))
        cluster.wait_drained()
        sites = [a for r in ("primary", "relay", "secondary")
                 for a in (f"--{r}", cluster.control_arg(r))]
        st = json.loads(subprocess.run([sys.executable, "-m", "tricopy.host.cli", "status",
                                        "--json", *sites], capture_output=True, text=True,
                                       timeout=60).stdout)["groups"][0]
        p, r, s = scrape(ports["primary"]), scrape(ports["relay"]), scrape(ports["secondary"])
        g = (("group", "g1"),)
        assert r[("tricopy_relay_seq_issued", g)] == st["seq_issued"] > 0
        assert s[("tricopy_secondary_seq_restored", g)] == st["seq_restored"] == st["seq_issued"]
        assert r[("tricopy_lag_journals", g)] == st["rpo"]["journals"] == 0
        assert p[("tricopy_primary_acked_journals_total", g)] == st["primary"]["acked"]
        assert p[("tricopy_group_state", g + (("role", "primary"), ("state", "PAIR")))] == 1
        assert p[("tricopy_link_up", (("group", "g1"), ("hop", "primary->relay")))] == 1
        assert p[("tricopy_host_write_seconds_count", g)] == 40      # 2 workers x 20 writes
        assert r[("tricopy_relay_fsync_seconds_count", g)] >= 1
        assert 0 <= r[("tricopy_relay_journal_used_ratio", g)] <= 1
        assert s[("tricopy_secondary_consistent", g)] == 1
        # Per volume: the host bytes the workload wrote (it records each write's length).
        vol = p[("tricopy_host_written_bytes_total", g + (("volume", "0"),))]
        assert vol == st["primary"]["volume_bytes"]["0"] > 0
        # Links made at each hop; a relay restart adds one at both of its ends.
        assert r[("tricopy_link_accepts_total", g)] == 1
        assert r[("tricopy_link_connects_total", g)] == 1
        cluster.kill("relay")
        cluster.start("relay")
        asyncio.run(Workload(cluster.control_addr("primary"), 1, workers=1, seed=4).run(count=2))
        cluster.wait_drained()
        p, s = scrape(ports["primary"]), scrape(ports["secondary"])
        assert p[("tricopy_link_connects_total", g)] == 2
        assert s[("tricopy_link_accepts_total", g)] == 2
        bad = urllib.request.Request(f"http://127.0.0.1:{ports['relay']}/nothing")
        try:
            urllib.request.urlopen(bad, timeout=10)
        except urllib.error.HTTPError as exc:
            assert exc.code == 404
        else:
            raise AssertionError("an unknown path was served")
    finally:
        cluster.stop_all()
