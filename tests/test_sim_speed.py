"""``python -m tricopy.sim.speed``: the harness-speed measurement of docs/sim.md.

Runs on the relay's build (the one without data memory, shared with
tests/test_sim_engine.py, so no build of its own once that one is cached):
a short pipelined stream of JNLDESC, every one answered ACK OK, and at least
the cycles the RTL needs per descriptor; the same through ``--replay`` (no
socket). About 3 s with the build cached.
"""

from __future__ import annotations

import pytest

from tricopy.sim import speed
from tricopy.sim.build import DEFAULT_CLK_HZ, DESC_RESET_SIZE, harness_path

#: The engine takes a JNLDESC frame (80 bytes) one byte per cycle and sends its
#: ACK while the next comes in; fewer cycles than bytes in would be a miscount.
MIN_CYCLES_PER_DESCRIPTOR = 80


def test_speed_counts_cycles_of_answered_descriptors():
    exe = harness_path(DESC_RESET_SIZE, memory=0)
    r = speed.measure(exe, 3000, clk_hz=DEFAULT_CLK_HZ)
    assert r["descriptors"] == 3000
    # at the real-time clock the harness also runs idle cycles while the
    # client is slow, so only a lower bound holds here
    assert r["cycles_per_descriptor"] >= MIN_CYCLES_PER_DESCRIPTOR
    assert r["cpu_s"] > 0 and r["M_cycles_per_cpu_s"] > 0


def test_replay_answers_every_descriptor_from_a_file():
    """``--replay``: the stream from a file, flat out. Every descriptor is
    answered ACK OK (the answers come back through the output file), in
    the engine's own cycles: at least a byte per cycle, and no idle cycles
    between requests but the quiet ones that end the run (4096)."""
    exe = harness_path(DESC_RESET_SIZE, memory=0)
    r = speed.measure_replay(exe, 3000)
    assert r["descriptors"] == 3000
    assert MIN_CYCLES_PER_DESCRIPTOR <= r["cycles_per_descriptor"] < 120
    assert r["cpu_s"] > 0 and r["M_cycles_per_cpu_s"] > 0


@pytest.mark.parametrize("script, expected", [
    # a harness without --replay (an older build): its own words, one line
    ("echo 'unknown argument --replay' >&2\nexit 2\n",
     "(exit 2): unknown argument --replay"),
    # a harness that writes something other than answer frames
    ("head -c 64 /dev/zero > \"$3\"\necho REPLAY cycles 9 cpu_ns 9\n",
     "error: the replay's answers are not frames: "),
])
def test_replay_names_what_went_wrong_in_one_line(tmp_path, capsys, script, expected):
    fake = tmp_path / "tricopy-sim"
    fake.write_text("#!/bin/sh\n" + script)
    fake.chmod(0o755)
    assert speed.main(["--exe", str(fake), "--count", "10", "--replay"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err
    assert err.count("\n") == 1


def test_speed_refuses_a_bad_count(capsys):
    with pytest.raises(SystemExit) as exc:
        speed.main(["--count", "0"])
    assert exc.value.code == 2
    assert "--count must be at least 1" in capsys.readouterr().err


def test_speed_names_a_harness_that_does_not_start(tmp_path, capsys):
    fake = tmp_path / "tricopy-sim"
    fake.write_text("#!/bin/sh\necho hello\n")
    fake.chmod(0o755)
    assert speed.main(["--exe", str(fake), "--count", "10"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not PORT <n>" in err and err.count("\n") == 1
