"""RTO of the failover commands (docs/operations.md, "RTO").

    python -m tests.e2e.measure_rto --runs 5

Each run: three sites as processes (tests/e2e/cluster.py), a write load, a
planned swap and the swap back, a write load, the primary SIGKILLed, a
takeover, the old primary restarted (fenced) and a failback with a delta.
Prints the seconds each command reports from its start to the new writer's
exports being read-write (for the failback: the whole run).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import tempfile
import time
from pathlib import Path

from .cluster import Cluster, Workload


def one_run(root: Path, seed: int) -> dict[str, float]:
    c = Cluster(root, nbd=True, volumes=1)
    got = {}
    try:
        c.start_all()
        asyncio.run(Workload(c.control_addr("primary"), 1, seed=seed).run(count=50))
        got["planned swap"] = float(re.search(r"after ([\d.]+) s",
                                              c.cli("takeover", "--group", "g1").stdout)[1])
        got["swap back"] = float(re.search(r"after ([\d.]+) s",
                                           c.cli("failback", "--group", "g1").stdout)[1])
        asyncio.run(Workload(c.control_addr("primary"), 1, seed=seed).run(count=50))
        c.kill("primary")
        got["takeover, primary lost"] = float(re.search(
            r"now \(([\d.]+) s after", c.cli("takeover", "--group", "g1").stdout)[1])
        c.start("primary")
        deadline = time.monotonic() + 30
        while not c.status("primary")["fenced"]:
            if time.monotonic() > deadline:
                raise RuntimeError("the old primary did not fence itself")
            time.sleep(0.05)
        got["failback with a delta"] = float(re.search(
            r"in ([\d.]+) s", c.cli("failback", "--group", "g1").stdout)[1])
    finally:
        c.stop_all()
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    runs = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as d:
            runs.append(one_run(Path(d) / "c", i))
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(f"{args.runs} runs, load {load}")
    for case in runs[0]:
        v = [r[case] for r in runs]
        print(f"{case}: median {statistics.median(v):.3f} s, max {max(v):.3f} s")


if __name__ == "__main__":
    main()
