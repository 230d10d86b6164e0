"""``tricopy bench`` with no suite (host/tools/bench_all.py): its tables and blocks.

The run of every suite takes ~20 min and is a command, not a test; here the
parts it is built from: a suite's ``--json`` rows become a table whose every
row names the command and the machine, a suite's block is rewritten between
its markers (a new suite gets one), and an unknown ``--skip`` is a one-line
error.  Under a second.
"""

from __future__ import annotations

import pytest

from tricopy.host.tools import bench_all


def test_rows_name_command_and_machine_and_nesting_is_flattened():
    rows = [{"rw": "randwrite", "iops": 1234, "cpu_us_per_write": {"relay": 90},
             "hops": {"relay.fsync": {"mean": 1.0}}},
            {"rw": "write", "iops": 5, "extra": 0.25}]
    text = bench_all.table(rows, "tricopy bench nbd", "a machine").splitlines()
    assert text[0] == "| rw | iops | cpu_us_per_write.relay | extra | command, machine |"
    assert text[2] == "| randwrite | 1,234 | 90 |  | `tricopy bench nbd`, a machine |"
    assert text[3] == "| write | 5 |  | 0.25 | `tricopy bench nbd`, a machine |"


def test_blocks_are_rewritten_between_markers_and_new_ones_added():
    page = f"intro\n{bench_all.ALL_END}\nafter\n"
    page = bench_all.put_block(page, "nbd", "table one")
    begin, end = bench_all.markers("nbd")
    assert page == f"intro\n{begin}\ntable one\n{end}\n\n{bench_all.ALL_END}\nafter\n"
    page = bench_all.put_block(page, "protocol", "p")
    page = bench_all.put_block(page, "nbd", "table two")
    assert "table one" not in page and page.index("table two") < page.index("\np\n")
    with pytest.raises(bench_all.bench_distance.BenchError, match="put it back"):
        bench_all.put_block("no markers", "nbd", "x")


def test_unknown_skip_is_one_line():
    from tricopy.host.cli import main
    with pytest.raises(SystemExit, match="--skip names no suite: nope"):
        main(["bench", "--skip", "nope"])


def test_peak_rss_is_read_from_proc_and_counts_memory_touched():
    import subprocess
    import sys
    from tricopy.host.tools.bench_replicate import proc_rss_peak

    def peak(mib: int) -> float:
        # a child that fills ``mib`` MiB, says so, and waits to be read
        child = subprocess.Popen([sys.executable, "-c", f"b = bytearray({mib} << 20); "
                                  "print('ready', flush=True); input()"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline() == "ready\n"
            return proc_rss_peak(child.pid)
        finally:
            child.communicate("")

    small, big = peak(0), peak(64)
    assert small > 0 and big >= small + 60


def test_hops_rounds_alternate_the_tree_order():
    """A before/after must not always run the same tree second (it did
    better for that alone): odd rounds take the trees in reverse."""
    from tricopy.host.tools.bench_replicate import round_order
    trees = ["/before", "/after"]
    assert round_order(trees, 0) == [(0, "/before"), (1, "/after")]
    assert round_order(trees, 1) == [(1, "/after"), (0, "/before")]
    assert round_order([None], 1) == [(0, None)]
