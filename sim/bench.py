"""``tricopy bench engine``: journal rates through PortEngine, model vs RTL.

Each backend runs in its own process and is reached the same way, a
:class:`PortEngine` over ``socket://``:

- ``model/tcp``: ``tricopy engine serve`` (EngineModel behind EngineStream);
- ``sim``: the Verilator harness at its real-time clock (:data:`DEFAULT_CLK_HZ`);
- ``sim/free``: the same RTL built with a nominal clock far above what the
  harness can simulate, so it never waits for wall time: the RTL's
  throughput at the harness's full speed.

The loop is the relay's engine traffic: submit a journal, and every
``batch`` journals read them back (JNLRD) and release them. A journal counts
once it has been read back. Simulated cycles/s come from the engine's own
clock: NOW advances 1e9/clk_hz ns per cycle.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time

from tricopy.host.wire import protocol
from tricopy.host.engine.port import PortEngine
from tricopy.host.wire.protocol import Control, Kind, LoadFlag, Status

__all__ = ["bench_engine", "register_bench"]

FREE_CLK_HZ = 500_000_000     # no harness reaches this: it runs flat out
_SERVE_LINE = re.compile(r"listening on (socket://\S+)")


async def _drive(engine: PortEngine, data_len: int, seconds: float, batch: int) -> dict:
    data = os.urandom(data_len)
    crc = protocol.crc32c(data)
    await engine.load(LoadFlag.TIME, time=0)
    st0 = await engine.status()
    journals, t0 = 0, time.perf_counter()
    tag = 0
    while time.perf_counter() - t0 < seconds:
        first = None
        for _ in range(batch):
            tag += 1
            ack = await engine.submit(Control(address=tag * data_len, length=data_len,
                                              data_len=data_len, data_crc=crc,
                                              kind=Kind.UPDATE, tag=tag), data)
            if ack.status == Status.FULL:
                break
            if ack.status != Status.OK:
                raise RuntimeError(f"engine refused a benchmark journal: {Status(ack.status).name}")
            first = ack.seq if first is None else first
        if first is None:
            raise RuntimeError("engine ring full with nothing to read: ring too small for batch")
        st = await engine.status()
        got = await engine.read(first, st.next_seq - first)
        await engine.release(got[-1][0].seq)
        journals += len(got)
    dt = time.perf_counter() - t0
    st1 = await engine.status()
    return {"journals_per_s": round(journals / dt), "MB_per_s": round(journals * data_len / dt / 1e6, 2),
            "engine_ns": st1.now - st0.now, "seconds": dt}


def _serve_model(size: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "tricopy.host.engine.serve", "--size", str(size),
                             "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    m = _SERVE_LINE.search(line)
    if not m:
        proc.kill()
        raise RuntimeError(f"engine serve said {line!r}")
    return proc, m.group(1)


def bench_engine(backend: str, *, size: int = 256 << 10, data_len: int = 4096,
                 seconds: float = 3.0, batch: int = 16) -> dict:
    """One backend's figures: journals/s, MB/s and, for sim, simulated cycles/s."""
    from tricopy.sim.bridge import SimHarness
    from tricopy.sim.build import DEFAULT_CLK_HZ
    harness = proc = None
    clk_hz = None
    if backend == "model/tcp":
        proc, url = _serve_model(size)
    elif backend in ("sim", "sim/free"):
        clk_hz = DEFAULT_CLK_HZ if backend == "sim" else FREE_CLK_HZ
        harness = SimHarness(size, clk_hz=clk_hz)
        url = harness.url
    else:
        raise ValueError(f"backend must be model/tcp, sim or sim/free, not {backend!r}")
    try:
        async def run():
            engine = PortEngine(url, name=backend, timeout=10.0)
            try:
                return await _drive(engine, data_len, seconds, batch)
            finally:
                await engine.close()
        res = asyncio.run(run())
    finally:
        if harness:
            harness.stop()
        if proc:
            proc.terminate()
            proc.wait()
    out = {"what": "engine", "backend": backend, "data_len": data_len, "ring": size,
           "journals_per_s": res["journals_per_s"], "MB_per_s": res["MB_per_s"]}
    if clk_hz:
        out["clk_hz"] = clk_hz
        out["cycles_per_s"] = round(res["engine_ns"] * clk_hz / 1e9 / res["seconds"])
    return out


def run(args) -> int:
    from tricopy.host.tools.bench import machine
    results = [bench_engine(b, size=args.size, data_len=args.data_len, seconds=args.seconds)
               for b in args.backends]
    if args.json:
        print(json.dumps({"machine": machine(), "results": results}, indent=2))
        return 0
    print(f"machine: {machine()}")
    for r in results:
        cycles = (f"  {r['cycles_per_s'] / 1e6:6.2f} M cycles/s (clk_hz {r['clk_hz']:,})"
                  if "cycles_per_s" in r else "")
        print(f"engine {r['backend']:<10} {r['data_len'] // 1024} KiB  {r['journals_per_s']:>7,} "
              f"journals/s  {r['MB_per_s']:>7.2f} MB/s{cycles}")
    return 0


def register_bench(which) -> None:
    """Add ``bench engine`` to ``tricopy bench``'s subcommands."""
    p = which.add_parser("engine", help="journal engine backends through PortEngine: "
                                        "model over TCP vs the RTL in the sim harness")
    p.add_argument("--seconds", type=float, default=3.0, help="time per backend")
    p.add_argument("--size", type=int, default=256 << 10, help="ring bytes (power of two)")
    p.add_argument("--data-len", type=int, default=4096, help="journal data bytes")
    p.add_argument("--backends", nargs="+", default=["model/tcp", "sim", "sim/free"],
                   choices=["model/tcp", "sim", "sim/free"])
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)
