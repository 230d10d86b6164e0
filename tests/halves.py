"""`make test`: the suite as two pytest runs side by side, then the timing tests alone.

Run as one pytest, the suite kept one core of a 2-core machine busy and
left the other mostly idle (a Verilator build, a cocotb testbench, Yosys,
nextpnr and SymbiYosys are each one thread).  The halves are chosen by
measured time (docs/benchmarks.md "The suite side by side"): the cocotb
testbenches (~27-29 minutes, most of it Python run per simulated cycle)
against everything else (the host's unit, crash and end-to-end tests, the
formal proofs, the board builds and the Verilator sim tests: ~21-25
minutes).  The two share no build folder (each cocotb test builds into
its own) and no port (every test takes free ports).

A few tests measure elapsed time to a tight bound (marked ``alone``: the
link emulator's 1 ms delay within 10 % measured 1.136 with a cocotb
testbench on the other core).  They are left out of the halves and run
last, with nothing beside them.

Each line is printed as it comes, prefixed with its part; the exit status
is the first non-zero.  ``TEST_JOBS=1`` runs the halves one after the
other (about 45 minutes instead of about 25 on a quiet machine).  Arguments are passed to
every run of pytest.

    python tests/halves.py [pytest args...]
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: The cocotb half; the other is everything else under tests/.
COCOTB = ["tests/hdl/test_engine_cocotb.py"]

HALVES = {
    "cocotb": COCOTB,
    "rest": ["tests", "-m", "not alone"] + [f"--ignore={p}" for p in COCOTB],
}
#: Run after both halves, with nothing beside them.
ALONE = ["tests", "-m", "alone"] + [f"--ignore={p}" for p in COCOTB]


def _pump(name: str, proc: subprocess.Popen, lock: threading.Lock) -> None:
    for line in proc.stdout:
        with lock:
            sys.stdout.write(f"[{name}] {line}")
            sys.stdout.flush()


def main(argv: list[str]) -> int:
    serial = os.environ.get("TEST_JOBS", "2") == "1"
    lock = threading.Lock()
    status: dict[str, int] = {}
    started = time.monotonic()

    def run(name: str) -> None:
        args = ALONE if name == "alone" else HALVES[name]
        cmd = [sys.executable, "-m", "pytest", *args, *argv]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)
        _pump(name, proc, lock)
        status[name] = proc.wait()
        if status[name] == 5 and argv:
            status[name] = 0     # "no tests collected": the arguments (a -k) chose none here
        with lock:
            print(f"[{name}] exit {status[name]} after "
                  f"{(time.monotonic() - started) / 60:.1f} min", flush=True)

    if serial:
        for name in HALVES:
            run(name)
    else:
        threads = [threading.Thread(target=run, args=(name,)) for name in HALVES]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    run("alone")
    parts = [*HALVES, "alone"]
    failed = [name for name in parts if status.get(name, 1) != 0]
    print(f"suite: {'FAILED: ' + ', '.join(failed) if failed else 'every part passed'} "
          f"in {(time.monotonic() - started) / 60:.1f} min", flush=True)
    return next((status[n] for n in failed), 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
