"""`tricopy bench`: throughput figures that docs/benchmarks.md reports.

Benchmarks measure; they never pass or fail.  Every figure is printed with
the machine it ran on so that a number in the docs can be traced to a run.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time

from ..wire import protocol
from ..wire.protocol import Control, FrameParser, FrameType, Kind


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def _timed(fn, min_seconds: float) -> tuple[int, float]:
    """Run ``fn`` repeatedly for at least ``min_seconds``; (calls, seconds)."""
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= min_seconds:
            return n, dt


def bench_codec(data_len: int, seconds: float = 1.0) -> dict:
    """Serialize + parse + CRC of one JNLWR frame with ``data_len`` bytes of data.

    Each round builds the control data (with DATA_CRC and CCRC), serializes the
    frame (HCRC, BCRC), parses it back and checks the data CRC: the work each
    hop does per journal.
    """
    data = os.urandom(data_len)
    parser = FrameParser()

    def one() -> None:
        ctl = Control(address=4096, length=data_len, data_len=data_len,
                      data_crc=protocol.crc32c(data), kind=Kind.UPDATE, tag=1).with_ccrc()
        wire = protocol.serialize_frame(FrameType.JNLWR, ctl.pack() + data)
        (frame,) = parser.feed(wire)
        got, payload = protocol.split_journal(frame.body)
        if protocol.crc32c(payload) != got.data_crc:
            raise RuntimeError("data CRC mismatch in benchmark round trip")

    n, dt = _timed(one, seconds)
    return {"what": "codec", "data_len": data_len, "frames_per_s": round(n / dt),
            "MB_per_s": round(n * data_len / dt / 1e6, 1)}


def bench_store(data_len: int, fsync: bool, batch: int = 1, preallocate: bool = False) -> dict:
    """Journal store append rate; ``batch`` journals share one fsync (group
    commit); ``preallocate``: the ring written with zeros first, as the relay
    creates it (a sparse ring's first lap allocates blocks on every sync)."""
    from .store_bench import bench_append
    with tempfile.TemporaryDirectory(dir=os.environ.get("TRICOPY_BENCH_DIR")) as tmp:
        count = 4000 if fsync else max(2000, int(4e8 // (data_len + 64)))
        res = bench_append(os.path.join(tmp, "jnl"), 64 << 20, data_len, count, fsync, batch,
                           preallocate)
    return {"what": "store", "data_len": data_len, "fsync": fsync, "batch": batch,
            "preallocate": preallocate,
            "records_per_s": round(res["records_per_s"]), "MB_per_s": round(res["mb_per_s"], 1),
            "sync_p50_us": res["sync_p50_us"], "sync_p99_us": res["sync_p99_us"]}


def _cpu() -> float:
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def bench_state_save(how: str, count: int = 100) -> dict:
    """A small state file (the secondary's restore point) saved ``count`` times:
    ``atomic_write`` (temporary file, fsync, rename, folder fsync) against
    :class:`~..disk.slotfile.SlotFile` (one write in place, one fdatasync)."""
    import json as _json
    from pathlib import Path
    from ..disk.durable import atomic_write
    from ..disk.slotfile import SlotFile
    doc = _json.dumps({"last_seq": 123456, "epoch": 3, "mark": 123520,
                       "time": 1765000000123456789, "tag": 99}).encode()
    with tempfile.TemporaryDirectory(dir=os.environ.get("TRICOPY_BENCH_DIR")) as tmp:
        path = Path(tmp) / "g.restored"
        f = SlotFile(path)
        save = (lambda: atomic_write(path, doc)) if how == "atomic_write" else (lambda: f.save(doc))
        save()
        t0, c0 = time.perf_counter(), _cpu()
        for _ in range(count):
            save()
        t1, c1 = time.perf_counter(), _cpu()
    return {"what": "state save", "how": how, "saves": count,
            "wall_us_per_save": round(1e6 * (t1 - t0) / count),
            "cpu_us_per_save": round(1e6 * (c1 - c0) / count)}


def bench_link_round_trip(count: int = 2000) -> dict:
    """One small frame each way between two :class:`~..wire.link.Link` s over
    loopback TCP (plain), both ends in this process: CPU per round trip."""
    import asyncio
    from ..wire.link import Link

    async def main() -> tuple[float, float]:
        accepted = asyncio.get_running_loop().create_future()

        async def on_conn(reader, writer):
            accepted.set_result(Link(reader, writer, initiator=False, heartbeat=5.0, name="srv"))
        server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
        r, w = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        cli = Link(r, w, initiator=True, heartbeat=5.0, name="cli")
        srv = await accepted
        frame = protocol.Frame(FrameType.ACK, bytes(32))
        t0, c0 = time.perf_counter(), _cpu()
        for _ in range(count):
            cli.send(frame)
            await srv.recv()
            srv.send(frame)
            await cli.recv()
        t1, c1 = time.perf_counter(), _cpu()
        await cli.close()
        await srv.close()
        server.close()
        return t1 - t0, c1 - c0
    import uvloop
    wall, cpu = uvloop.run(main())
    return {"what": "link round trip", "round_trips": count,
            "wall_us": round(1e6 * wall / count, 1), "cpu_us": round(1e6 * cpu / count, 1)}


def run_protocol(args) -> int:
    results = []
    for size in (4096, 65536):
        results.append(bench_codec(size, args.seconds))
    for _ in range(2):       # alternated: the disk's noise shows in the pairs
        for how in ("atomic_write", "slotfile"):
            results.append(bench_state_save(how))
    results.append(bench_link_round_trip())
    from .bench_tls import bench_seal_open, bench_tls_hop
    # a QD16 batch of 4 KiB journals (9 on average) and a 1 MiB write
    for message, count in ((9 * (4096 + 64), 2000), ((1 << 20) + 64, 150)):
        results.append(bench_seal_open(message, count))
        results += bench_tls_hop(message, count)
    for size in (4096, 65536):
        results.append(bench_store(size, False))
        for batch in (1, 32):
            for preallocate in (False, True):       # sparse vs preallocated, same run
                results.append(bench_store(size, True, batch, preallocate))
    report = {"machine": machine(), "results": results}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"machine: {report['machine']}")
        for r in results:
            if r["what"] == "codec":
                print(f"codec  {r['data_len'] // 1024:>3} KiB  {r['frames_per_s']:>9,} frames/s"
                      f"  {r['MB_per_s']:>9,.1f} MB/s")
            elif r["what"] == "state save":
                print(f"state save  {r['how']:<12}  {r['wall_us_per_save']:>7,} µs/save  "
                      f"{r['cpu_us_per_save']:>5,} µs CPU/save")
            elif r["what"] in ("link hop", "seal+open"):
                how = (f"{r['how']:<27} {r['receiver']} receives" if r["what"] == "link hop"
                       else f"seal+open only ({r['cipher']})")
                print(f"link hop  {r['message']:>8,} B  {how:<57} "
                      f"{r['cpu_us_per_message']:>8,.1f} µs CPU (both ends)")
            elif r["what"] == "link round trip":
                print(f"link round trip (loopback, plain)  {r['wall_us']:>7,.1f} µs  "
                      f"{r['cpu_us']:>5,.1f} µs CPU (both ends)")
            else:
                sync = f"fsync/{r['batch']:<3}" if r["fsync"] else "no fsync "
                ring = "preallocated" if r["preallocate"] else "sparse"
                lat = (f"  fdatasync p50 {r['sync_p50_us']:,} µs p99 {r['sync_p99_us']:,} µs"
                       if r["fsync"] else "")
                print(f"store  {r['data_len'] // 1024:>3} KiB  {sync} {ring:<12} "
                      f"{r['records_per_s']:>9,} records/s  {r['MB_per_s']:>9,.1f} MB/s{lat}")
    return 0


def register(sub) -> None:
    bench = sub.add_parser("bench", help="measure throughput (no WHAT: every suite, and the "
                                         "docs' generated tables)")
    which = bench.add_subparsers(dest="bench", metavar="WHAT", required=False)
    from .bench_all import register_all          # no WHAT: every suite in turn
    register_all(bench)
    p = which.add_parser("protocol", help="codec (serialize+parse+CRC), journal store append "
                                          "rates, state-file saves, link round trips, "
                                          "a link hop's CPU plain and TLS")
    p.add_argument("--seconds", type=float, default=1.0, help="time per codec figure")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run_protocol)
    from .bench_replicate import register_bench     # replicate, nbd (fio through NBD)
    register_bench(which)
    from .bench_distance import register_bench as register_distance_bench   # distance
    register_distance_bench(which)
    from .bench_floor import register_bench as register_floor_bench     # floor: skeleton vs sites
    register_floor_bench(which)
    from tricopy.sim.bench import register_bench as register_engine_bench   # engine: model vs sim
    register_engine_bench(which)
