"""The relay-loss runbook's figures (docs/operations.md, "Losing the relay").

    python -m tests.e2e.measure_relay_loss --gib 1 --dirty-pct 1

Three sites as processes (tests/e2e/cluster.py) with one volume of ``--gib``
GiB, paired.  The relay is SIGKILLed and kept down; the primary goes on
taking writes (relay_loss = "suspend") over ``--dirty-pct`` % of the volume
in 64 KiB writes spread over it; the relay comes back and `pair resync`
copies the delta.  Prints the bytes the resync moved against a full copy,
its seconds, the host's write errors (none expected) and SVOL == PVOL.

    python -m tests.e2e.measure_relay_loss --gib 1 --dirty-pct 1 --standby

The relay site is lost for good: the secondary is down while the relay ACKs
a first batch of writes (so the relay takes them with it), then the relay is
SIGKILLed, more writes are tracked, and `pair resync --via standby` moves the
group to a standby relay; later the relay comes back and `--via relay`
moves it back.  Prints both moves' bytes and seconds.
"""

from __future__ import annotations

import argparse
import base64
import random
import tempfile
import time
from pathlib import Path

from tricopy.host.rcm import control

from .cluster import Cluster

WRITE = 64 << 10


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--dirty-pct", type=float, default=1.0)
    ap.add_argument("--standby", action="store_true",
                    help="the relay stays lost: move to a standby relay and back")
    args = ap.parse_args()
    if args.standby:
        return standby(args)
    size = int(args.gib * (1 << 30)) // WRITE * WRITE
    with tempfile.TemporaryDirectory() as d:
        c = Cluster(Path(d) / "c", volumes=1, vol_size=size, link_suspend_after=2,
                    journal_size=64 << 20)
        try:
            c.start_all()
            c.kill("relay")
            rng = random.Random(1)
            chunks = rng.sample(range(size // WRITE), int(size // WRITE * args.dirty_pct / 100))
            errors = 0
            t0 = time.monotonic()
            for n in chunks:
                try:
                    control.call(c.control_addr("primary"), "write", idx=0, offset=n * WRITE,
                                 data=base64.b64encode(rng.randbytes(WRITE)).decode())
                except control.ControlError:
                    errors += 1
            wrote = time.monotonic() - t0
            p = c.status("primary")
            c.start("relay")
            t0 = time.monotonic()
            out = c.cli("pair", "resync", "--group", "g1", timeout=3600)
            assert out.returncode == 0, out.stderr
            c.wait_drained(timeout=3600)
            took = time.monotonic() - t0
            moved = c.status("primary")["copy_total"] * p["copy_chunk"]
            same = c.volume_bytes("primary", 0) == c.volume_bytes("secondary", 0)
            with open("/proc/loadavg") as f:
                load = f.read().split()[0]
            print(f"volume {size / (1 << 30):g} GiB, {len(chunks)} writes of 64 KiB while the "
                  f"relay was down ({wrote:.1f} s, {errors} host write errors), state "
                  f"{p['grsts']} tracking={p['tracking']}")
            print(f"pair resync: {moved} bytes moved = {100 * moved / size:.2f}% of a full copy "
                  f"({size} bytes), {took:.1f} s to PAIR and drained; SVOL == PVOL: {same}; "
                  f"load {load}")
        finally:
            c.stop_all()


def _writes(c: Cluster, rng: random.Random, chunks: list[int]) -> int:
    errors = 0
    for n in chunks:
        try:
            control.call(c.control_addr("primary"), "write", idx=0, offset=n * WRITE,
                         data=base64.b64encode(rng.randbytes(WRITE)).decode())
        except control.ControlError:
            errors += 1
    return errors


def _move(c: Cluster, via: str, size: int) -> str:
    t0 = time.monotonic()
    out = c.cli("pair", "resync", "--group", "g1", "--via", via, timeout=3600)
    assert out.returncode == 0, out.stderr
    c.wait_drained(timeout=3600, relay=via)
    took = time.monotonic() - t0
    p = c.status("primary")
    moved = p["copy_total"] * p["copy_chunk"]
    same = c.volume_bytes("primary", 0) == c.volume_bytes("secondary", 0)
    return (f"--via {via}: {moved} bytes moved = {100 * moved / size:.2f}% of a full copy, "
            f"{took:.1f} s to PAIR and drained; SVOL == PVOL: {same}")


def standby(args) -> None:
    size = int(args.gib * (1 << 30)) // WRITE * WRITE
    with tempfile.TemporaryDirectory() as d:
        c = Cluster(Path(d) / "c", volumes=1, vol_size=size, link_suspend_after=2,
                    journal_size=256 << 20, standby=True)
        try:
            for role in ("relay", "primary", "secondary", "standby"):
                c.start(role)
            rng = random.Random(1)
            n = int(size // WRITE * args.dirty_pct / 100)
            chunks = rng.sample(range(size // WRITE), n)
            c.kill("secondary")          # half of the writes: ACKed by the relay only
            errors = _writes(c, rng, chunks[:n // 2])
            c.kill("relay")              # ... which is lost with them
            c.start("secondary")
            errors += _writes(c, rng, chunks[n // 2:])    # tracked at the primary
            there = _move(c, "standby", size)
            _writes(c, rng, rng.sample(range(size // WRITE), 8))    # through the standby
            c.start("relay")
            back = _move(c, "relay", size)
            with open("/proc/loadavg") as f:
                load = f.read().split()[0]
            print(f"volume {size / (1 << 30):g} GiB, {n} writes of 64 KiB ({n // 2} taken by "
                  f"the lost relay, {n - n // 2} tracked), {errors} host write errors")
            print(there)
            print(back)
            print(f"load {load}")
        finally:
            c.stop_all()


if __name__ == "__main__":
    main()
