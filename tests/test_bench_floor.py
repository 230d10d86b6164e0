"""``tricopy bench floor``'s skeleton (host/tools/bench_floor.py) does the write
path's I/O for real, so its CPU per write is a floor and not a figure of
work skipped: fio's writes through its NBD end land, byte for byte, on the
primary's volume and the secondary's, through the relay's journal file, over
TLS with the cluster's certificates; the Python skeleton and the C one alike.
One second of fio at depth 4 each, about 15 s with the start-ups.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from tricopy.host.tools import bench_floor
from tricopy.host.tools.bench_replicate import _free_port, fio
from tricopy.host.tools.certs import make_certs

SIZE = 8 << 20


@pytest.fixture(params=["python", "C"])
def skeleton(request, tmp_path):
    """The Python skeleton and the C one (built here with cc and libssl-dev)."""
    make_certs(tmp_path / "certs", list(bench_floor.ROLES))
    ports = {r: _free_port() for r in (*bench_floor.ROLES, "nbd")}
    native = bench_floor.build_native(tmp_path) if request.param == "C" else None
    procs = bench_floor.spawn(tmp_path, ports, SIZE, native=native)
    yield tmp_path, f"nbd://127.0.0.1:{ports['nbd']}/x", procs
    for p in procs.values():
        p.terminate()
        p.wait(10)


def _same_within(a, b, seconds: float) -> bool:
    """The secondary applies after the relay's ACK: wait (bounded) until it has."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if a.read_bytes() == b.read_bytes():
            return True
        time.sleep(0.05)
    return False


def test_skeleton_writes_reach_every_file(skeleton):
    work, uri, procs = skeleton
    res = fio(uri, "randwrite", 4096, 4, 1, SIZE)
    assert res["iops"] > 0
    pvol, svol, jnl = work / "pvol.img", work / "svol.img", work / "jnl.vol"
    written = pvol.read_bytes()
    assert written.count(0) < len(written) // 2     # fio wrote most of the volume's blocks
    assert _same_within(pvol, svol, 10), "the secondary's volume differs from the primary's"
    assert jnl.read_bytes().count(0) < SIZE          # the relay journalled them
    assert all(p.poll() is None for p in procs.values())   # no process died on the way


def test_qemu_io_write_reads_back_on_the_secondary(skeleton):
    """A second client (qemu-io) through the skeleton's NBD handshake: one
    pattern write, found at its offset on the far volume."""
    work, uri, _ = skeleton
    subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0xa5 64k 8k", uri],
                   check=True, capture_output=True, timeout=30)
    svol = work / "svol.img"
    deadline = time.monotonic() + 10
    while svol.read_bytes()[64 << 10:72 << 10] != b"\xa5" * (8 << 10):
        assert time.monotonic() < deadline, "the write did not reach the secondary"
        time.sleep(0.05)
