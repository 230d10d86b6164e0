"""JNLDESC/s through the sim engine, one descriptor a frame or in batches.

``python -m tricopy.sim.desc_rate --batch 1 --batch 16 --seconds 10`` starts
the sim harness (the relay's build, without data memory, at its real-time
clock) and, for each ``--batch`` N, sends descriptors of 4 KiB journals in a
loop as a relay does: N descriptors in one JNLDESC (``place_batch``; N = 1
is the single JNLDESC, ``place``), waiting for each answer, and a RELEASE of
everything held every 64 journals (the JOPTR from the last answer, so the
ring never fills). One request in flight at a time: the figure is bound by
the round trip (socket, harness, the engine's cycles), which a batch
shares among N journals. docs/sim.md, "Descriptor rate", has the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from tricopy.host.wire import protocol
from tricopy.host.wire.protocol import Control, Kind, LoadFlag, Status

__all__ = ["desc_rate", "main"]

#: the ring the loop LOADs: many times what 64 journals of 4 KiB take
RING = 1 << 30
DATA_LEN = 4096


async def desc_rate(engine, batch: int, seconds: float) -> dict:
    """Descriptors/s and round trips/s over ``seconds`` with batches of ``batch``."""
    if not 1 <= batch <= protocol.DESC_BATCH:
        raise ValueError(f"batch must be 1..{protocol.DESC_BATCH}, not {batch!r}")
    await engine.load(LoadFlag.CLEAR | LoadFlag.RING | LoadFlag.DESC | LoadFlag.TIME,
                      size=RING, time=time.time_ns())
    r = protocol.record_size(DATA_LEN)
    taken = trips = since_release = 0
    tag = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        controls = []
        for _ in range(batch):
            tag += 1
            controls.append(Control(address=tag * DATA_LEN, length=DATA_LEN, data_len=DATA_LEN,
                                    data_crc=1, kind=Kind.UPDATE, tag=tag))
        ack = await (engine.place(controls[0]) if batch == 1 else engine.place_batch(controls))
        trips += 1
        if ack.status != Status.OK:
            raise RuntimeError(f"the engine refused a descriptor: {Status(ack.status).name}")
        taken += batch
        since_release += batch
        if since_release >= 64:
            # everything held: JOPTR goes to where the next journal will be
            nxt = (ack.jofs + r) % RING
            rel = await engine.release(ack.seq, joptr=nxt)
            trips += 1
            if rel.status != Status.OK:
                raise RuntimeError(f"RELEASE refused: {Status(rel.status).name}")
            since_release = 0
    wall = time.perf_counter() - t0
    return {"batch": batch, "descriptors": taken, "seconds": round(wall, 2),
            "descriptors_per_s": round(taken / wall), "round_trips_per_s": round(trips / wall)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tricopy.sim.desc_rate",
                                description="JNLDESC/s through the sim engine, single and batched")
    p.add_argument("--batch", type=int, action="append",
                   help=f"descriptors per JNLDESC, 1..{protocol.DESC_BATCH} (repeatable; "
                        "default 1 and 16)")
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args(argv)
    batches = args.batch or [1, 16]
    for b in batches:
        if not 1 <= b <= protocol.DESC_BATCH:
            p.error(f"--batch must be 1..{protocol.DESC_BATCH}, not {b}")
    from tricopy.host.engine.base import EngineError
    from tricopy.sim.bridge import open_sim_engine

    async def run():
        engine = open_sim_engine(protocol.MIN_RING, memory=0)
        try:
            for b in batches:
                print(await desc_rate(engine, b, args.seconds), flush=True)
        finally:
            await engine.close()
    try:
        asyncio.run(run())
    except (EngineError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
