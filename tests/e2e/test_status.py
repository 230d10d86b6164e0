"""``tricopy status`` against real processes: headline, exit code, watch output, pipes."""

from __future__ import annotations

import json
import subprocess
import sys

from tricopy.host.rcm import pairs as rcm

from .cluster import Cluster, Workload


def status(cluster: Cluster, *args: str) -> subprocess.CompletedProcess:
    return cluster.cli("status", *args, timeout=60)


def test_headline_and_exit_code_follow_the_worst_site(tmp_path):
    import asyncio
    cluster = Cluster(tmp_path, volumes=1)
    try:
        cluster.start_all()
        asyncio.run(Workload(cluster.control_addr("primary"), 1, workers=2, seed=1).run(count=5))
        cluster.wait_drained()
        ok = status(cluster)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert ok.stdout.startswith("group g1: PAIR -- healthy")
        assert "links    primary->relay up, relay->secondary up" in ok.stdout
        assert "RPO      0 journals" in ok.stdout

        cluster.kill("secondary")
        down2 = status(cluster)
        assert down2.returncode == 1, down2.stdout
        assert "group g1: SECONDARY LOST at the secondary -- degraded" in down2.stdout
        cluster.start("secondary")

        cluster.kill("relay")
        lost = status(cluster)
        assert lost.returncode == 2, lost.stdout
        assert "group g1: RELAY LOST at the relay -- down" in lost.stdout
        assert "RPO      unknown: the relay is unreachable" in lost.stdout
        assert "a forced takeover keeps SEQ#" in lost.stdout
        cluster.start("relay")
        cluster.wait_drained()

        rcm.pair_split(cluster.sites(), "g1")
        split = status(cluster, "--json")
        doc = json.loads(split.stdout)
        assert split.returncode == 1 and doc["level"] == 1
        assert doc["groups"][0]["state"] == "SUSP" and doc["groups"][0]["site"] == "primary"
    finally:
        cluster.stop_all()


def test_watch_json_is_json_lines_and_a_closed_pipe_is_quiet(tmp_path):
    cluster = Cluster(tmp_path, volumes=1)
    try:
        cluster.start_all()
        sites = [a for r in ("primary", "relay", "secondary")
                 for a in (f"--{r}", cluster.control_arg(r))]
        watch = subprocess.Popen([sys.executable, "-m", "tricopy.host.cli", "status", "--json",
                                  "--watch", "0.1", *sites], stdout=subprocess.PIPE, text=True)
        lines = [watch.stdout.readline() for _ in range(3)]
        watch.terminate()
        watch.wait(10)
        samples = [json.loads(line) for line in lines]
        assert all("time" in s and s["groups"][0]["group"] == "g1" for s in samples)
        # `status --json | head -1`: the reader goes away; no traceback.
        cmd = " ".join([sys.executable, "-m", "tricopy.host.cli", "status", "--json",
                        "--watch", "0.05", *sites]) + " | head -1"
        piped = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=60)
        assert piped.stdout.startswith("{") and "Traceback" not in piped.stderr, piped.stderr
    finally:
        cluster.stop_all()


def test_a_cut_far_link_shows_in_the_headline_with_a_growing_rpo(tmp_path):
    """The relay->secondary link through the link emulator, blackholed (a partition:
    no RST, the heartbeat finds it): status says LINK DOWN at the relay, degraded,
    with the RPO in journals and seconds; the link back, it drains to healthy."""
    import asyncio
    import threading
    import time

    from tricopy.host.tools.linkemu import LinkEmulator

    cluster = Cluster(tmp_path, volumes=1)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    emu = asyncio.run_coroutine_threadsafe(
        LinkEmulator(("127.0.0.1", cluster.ports["secondary"][0]), name="far").start(),
        loop).result(10)
    conf = cluster.root / "relay" / "site.toml"
    conf.write_text(conf.read_text().replace(f'peer = "127.0.0.1:{cluster.ports["secondary"][0]}"',
                                             f'peer = "127.0.0.1:{emu.port}"'))

    def until(pred, what, timeout=30.0):
        deadline = time.monotonic() + timeout
        while not (out := pred()):
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.1)
        return out

    try:
        cluster.start_all()
        work = Workload(cluster.control_addr("primary"), 1, workers=2, seed=2)
        asyncio.run(work.run(count=5))
        cluster.wait_drained()
        assert status(cluster).returncode == 0
        loop.call_soon_threadsafe(emu.fault, "blackhole")
        asyncio.run(work.run(count=5))       # taken by the relay, stuck before the secondary
        cut = until(lambda: (o := status(cluster, "--json")).returncode == 1 and
                    json.loads(o.stdout)["groups"][0]["state"] == "LINK DOWN" and o,
                    "the headline to show the cut link")
        row = json.loads(cut.stdout)["groups"][0]
        assert row["site"] == "relay" and row["links"]["relay->secondary"] is False, row
        assert row["rpo"]["journals"] == 10 and row["rpo"]["seconds"] > 0, row["rpo"]
        text = status(cluster).stdout
        assert text.startswith("group g1: LINK DOWN at the relay -- degraded"), text
        assert "relay->secondary DOWN" in text and "RPO      10 journals" in text, text
        loop.call_soon_threadsafe(emu.end, "blackhole")
        cluster.wait_drained()
        until(lambda: status(cluster).returncode == 0, "healthy again")
    finally:
        cluster.stop_all()
        asyncio.run_coroutine_threadsafe(emu.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
