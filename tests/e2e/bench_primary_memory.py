"""The primary's memory and write log under a steady write load (docs/replication.md).

    python -m tests.e2e.bench_primary_memory --mib 256 --size 65536 --depth 4

Starts a relay and a secondary as processes (tests/e2e/cluster.py), runs the
primary's MasterGroup in this process and writes ``--mib`` MiB of ``--size``
byte writes at queue depth ``--depth``.  Reports this process's RSS (VmRSS
before, VmHWM peak, from /proc/self/status), the write log's peak on disk,
and a restart: the relay stopped, the group reopened from its write log
(streaming redo), and the RSS and bytes held for resending after it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from tricopy.host.wire.protocol import Kind

from .cluster import VOL_SIZE, Cluster
from .primary_inproc import master_group


def _proc_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _log_bytes(state: Path) -> int:
    return sum(e.stat().st_size for e in os.scandir(state) if e.name.startswith("g1.plog"))


async def _load(cluster: Cluster, total: int, size: int, depth: int) -> dict:
    state = cluster.root / "primary" / "state"
    async with master_group(cluster) as g:
        rss0 = _proc_kib("VmRSS")
        peak_log = 0
        writes = iter(range(total // size))
        payload = [os.urandom(size) for _ in range(depth)]

        async def worker(w: int) -> None:
            nonlocal peak_log
            for i in writes:
                off = (i % (VOL_SIZE // size)) * size
                await g.journal(Kind.UPDATE, i % cluster.volumes, off, size, payload[w])
                peak_log = max(peak_log, _log_bytes(state))

        t0 = time.monotonic()
        await asyncio.gather(*(worker(w) for w in range(depth)))
        secs = time.monotonic() - t0
        return {"rss_before_kib": rss0, "rss_peak_kib": _proc_kib("VmHWM"),
                "log_peak_bytes": peak_log, "seconds": secs, "acked": g.acked}


async def _reopen(cluster: Cluster) -> dict:
    rss0 = _proc_kib("VmRSS")
    async with master_group(cluster, connect=False) as g:
        held = sum(len(d) + 64 for _, d, _ in g.pending.values())
        return {"rss_after_redo_kib": _proc_kib("VmRSS"), "rss_before_redo_kib": rss0,
                "redo_held_bytes": held, "redo_pending": len(g.pending)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=256, help="MiB to write")
    ap.add_argument("--size", type=int, default=64 << 10, help="bytes per write")
    ap.add_argument("--depth", type=int, default=4, help="writes in flight")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tricopy-mem-") as tmp:
        cluster = Cluster(Path(tmp), journal_size=64 << 20)
        try:
            cluster.start("secondary")
            cluster.start("relay")
            r = asyncio.run(_load(cluster, args.mib << 20, args.size, args.depth))
            cluster.kill("relay")
            r.update(asyncio.run(_reopen(cluster)))
        finally:
            cluster.stop_all()
    mib = lambda n: f"{n / (1 << 20):.1f} MiB"
    print(f"{args.mib} MiB in {args.size >> 10} KiB writes at QD{args.depth}: "
          f"{r['acked']} writes in {r['seconds']:.1f} s ({args.mib / r['seconds']:.0f} MiB/s)")
    print(f"  RSS before {mib(r['rss_before_kib'] << 10)}, peak (VmHWM) "
          f"{mib(r['rss_peak_kib'] << 10)}; write log peak on disk {mib(r['log_peak_bytes'])}")
    print(f"  restart: redo held {r['redo_pending']} journals / {mib(r['redo_held_bytes'])} "
          f"to resend; RSS {mib(r['rss_before_redo_kib'] << 10)} -> "
          f"{mib(r['rss_after_redo_kib'] << 10)}")


if __name__ == "__main__":
    main()
