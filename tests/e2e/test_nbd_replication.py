"""Debian's NBD clients against the primary's PVOL exports, the three sites as processes.

Every write a client sees answered went PVOL → relay (ACKed durably) → and,
once drained, to the SVOL; the secondary's read-only exports show the copy.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import time

import pytest

from tricopy.host.nbd import protocol as p

from .cluster import VOL_SIZE, Cluster

KiB = 1024


def run(*cmd: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def qemu_io(uri: str, *commands: str, cache: str | None = "writeback", extra=()) -> str:
    args = ["qemu-io", "-f", "raw", *extra] + (["-t", cache] if cache else [])
    for c in commands:
        args += ["-c", c]
    out = run(*args, uri).stdout
    # qemu-io reports a failed command on stdout and may still exit 0.
    assert "error" not in out.lower() and "Pattern verification failed" not in out, out
    return out


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("nbdrep"), nbd=True)
    c.start_all()
    yield c
    c.stop_all()


def acked(c: Cluster) -> int:
    return c.status("primary")["acked"]


def test_nbdinfo_shows_flags(sites):
    (pvol,) = json.loads(run("nbdinfo", "--json", sites.nbd_uri("primary", 0)).stdout)["exports"]
    assert pvol["export-name"] == "pvol0" and pvol["export-size"] == VOL_SIZE
    assert not pvol["is_read_only"]
    assert all(pvol[k] for k in ("can_flush", "can_fua", "can_trim", "can_zero", "can_multi_conn"))
    assert pvol["block_size_minimum"] == 4096
    (svol,) = json.loads(run("nbdinfo", "--json", sites.nbd_uri("secondary", 1)).stdout)["exports"]
    assert svol["export-name"] == "svol1" and svol["is_read_only"]
    assert not svol["can_trim"] and not svol["can_zero"]


def test_qemu_io_writes_are_journaled_and_replicated(sites):
    uri = sites.nbd_uri("primary", 0)
    before = acked(sites)
    qemu_io(uri, "write -P 0x11 0 64k",            # plain write
            "write -f -P 0x22 64k 64k",            # FUA
            "write -z 128k 64k",                   # WRITE_ZEROES over old data below
            "write -P 0x33 192k 64k", "discard 192k 32k",   # TRIM (needs -d unmap)
            "flush", extra=["-d", "unmap"])
    qemu_io(uri, "write -P 0x44 256k 16k", cache=None)  # default cache mode: FUA on every write
    # one journal per request, ACKed before the client saw the reply
    assert acked(sites) - before == 6
    qemu_io(uri, "read -P 0x11 0 64k", "read -P 0x22 64k 64k", "read -P 0 128k 64k",
            "read -P 0 192k 32k", "read -P 0x33 224k 32k", "read -P 0x44 256k 16k")
    sites.wait_drained()
    qemu_io(sites.nbd_uri("secondary", 0), "read -P 0x11 0 64k", "read -P 0x22 64k 64k",
            "read -P 0 128k 96k", "read -P 0x33 224k 32k", "read -P 0x44 256k 16k",
            cache=None, extra=["-r"])
    assert sites.volume_bytes("secondary", 0) == sites.volume_bytes("primary", 0)


def test_qemu_img_convert_then_compare_pvol_with_svol(sites, tmp_path):
    src = tmp_path / "src.img"
    src.write_bytes(os.urandom(VOL_SIZE // 2) + bytes(VOL_SIZE // 4) + os.urandom(VOL_SIZE // 4))
    run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src), sites.nbd_uri("primary", 1))
    sites.wait_drained()
    run("qemu-img", "compare", "-f", "raw", "-F", "raw", str(src), sites.nbd_uri("secondary", 1))
    run("qemu-img", "compare", "-f", "raw", "-F", "raw", sites.nbd_uri("primary", 1),
        sites.nbd_uri("secondary", 1))
    assert sites.volume_bytes("primary", 1) == sites.volume_bytes("secondary", 1) == src.read_bytes()


def test_nbdcopy_in_and_out(sites, tmp_path):
    src, out = tmp_path / "in.img", tmp_path / "out.img"
    src.write_bytes(os.urandom(VOL_SIZE))
    run("nbdcopy", str(src), sites.nbd_uri("primary", 0))
    sites.wait_drained()
    run("nbdcopy", sites.nbd_uri("secondary", 0), str(out))
    assert out.read_bytes() == src.read_bytes()
    run("nbdcopy", sites.nbd_uri("primary", 0), str(out))
    assert out.read_bytes() == src.read_bytes()


def test_fio_verify_through_replication(sites, tmp_path):
    run("fio", "--name=v", "--ioengine=nbd", f"--uri={sites.nbd_uri('primary', 1)}",
        "--rw=randwrite", "--bs=4k", f"--size={VOL_SIZE}", "--iodepth=8",
        "--verify=crc32c", "--do_verify=1", "--verify_state_save=0", f"--filename={tmp_path}/unused", timeout=120)
    sites.wait_drained()
    assert sites.volume_bytes("secondary", 1) == sites.volume_bytes("primary", 1)


def _raw_write(port: int, name: str, data: bytes) -> int:
    """Handshake (NBD_OPT_GO) and one WRITE at offset 0; returns the NBD error of the reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rb")
        f.read(18)                                    # NBDMAGIC, IHAVEOPT, server flags
        s.sendall(struct.pack(">I", p.NBD_FLAG_C_FIXED_NEWSTYLE | p.NBD_FLAG_C_NO_ZEROES))
        raw = name.encode()
        body = struct.pack(">I", len(raw)) + raw + struct.pack(">HH", 1, p.NBD_INFO_BLOCK_SIZE)
        s.sendall(struct.pack(">QII", p.IHAVEOPT, p.NBD_OPT_GO, len(body)) + body)
        while True:
            _, _, rtype, length = struct.unpack(">QIII", f.read(20))
            f.read(length)
            if rtype != p.NBD_REP_INFO:
                assert rtype == p.NBD_REP_ACK, rtype
                break
        s.sendall(struct.pack(">IHHQQI", p.NBD_REQUEST_MAGIC, 0, p.Cmd.WRITE, 9, 0, len(data))
                  + data)
        magic, error, handle = struct.unpack(">IIQ", f.read(16))
        assert (magic, handle) == (p.NBD_SIMPLE_REPLY_MAGIC, 9)
        return error


def test_svol_export_refuses_writes(sites):
    before = sites.volume_bytes("secondary", 0)
    assert _raw_write(sites.nbd_ports["secondary"], "svol0", b"\xee" * 4096) == p.NBD_EPERM
    assert sites.volume_bytes("secondary", 0) == before


def test_relay_killed_client_gets_error_not_hang(tmp_path):
    """relay_loss = "fence": after the stall, writes fail with EIO, at once from then on."""
    c = Cluster(tmp_path, nbd=True, link_suspend_after=1.5, relay_loss="fence")
    c.start_all()
    try:
        uri = c.nbd_uri("primary", 0)
        qemu_io(uri, "write -P 0x55 0 4k")
        c.kill("relay")
        t0 = time.monotonic()
        proc = run("qemu-io", "-f", "raw", "-t", "writeback", "-c", "write -P 0x66 4k 4k", uri,
                   timeout=30, check=False)
        waited = time.monotonic() - t0
        assert "Input/output error" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
        assert 1.5 <= waited < 10, waited      # held for the timeout, then failed
        st = c.status("primary")
        assert st["grsts"] == "SUSP" and "unreachable" in st["reason"]
        assert "refused" in st["reason"] and "pair resync" in st["reason"], st["reason"]
        assert st["dirty_extents"] == 1         # the failed write is tracked, not dropped
        # Suspended: the next write is refused at once, before it reaches the PVOL.
        pvol = c.volume_bytes("primary", 0)
        t0 = time.monotonic()
        assert _raw_write(c.nbd_ports["primary"], "pvol0", b"\x77" * 4096) == p.NBD_EIO
        assert time.monotonic() - t0 < 2
        assert c.volume_bytes("primary", 0) == pvol
        qemu_io(uri, "read -P 0x55 0 4k")       # reads still work
    finally:
        c.stop_all()


def test_relay_killed_default_policy_host_sees_no_error(tmp_path):
    """relay_loss = "suspend" (the default): the write in flight waits for the stall,
    then completes; the pair is SUSP and later writes complete at once, tracked
    in the copy bitmap; with the relay back, `pair resync` sends only those."""
    c = Cluster(tmp_path, nbd=True, link_suspend_after=1.5, vol_size=4 << 20)
    c.start_all()
    try:
        uri = c.nbd_uri("primary", 0)
        qemu_io(uri, "write -P 0x55 0 1M")
        c.wait_drained()
        c.kill("relay")
        t0 = time.monotonic()
        proc = run("qemu-io", "-f", "raw", "-t", "writeback", "-c", "write -P 0x66 4k 4k", uri,
                   timeout=30, check=False)
        waited = time.monotonic() - t0
        assert proc.returncode == 0 and "wrote 4096/4096" in proc.stdout, proc.stdout + proc.stderr
        assert 1.5 <= waited < 10, waited      # held for the stall, then completed
        st = c.status("primary")
        assert st["grsts"] == "SUSP" and st["tracking"], st
        assert "unreachable" in st["reason"] and "pair resync" in st["reason"], st["reason"]
        t0 = time.monotonic()
        qemu_io(uri, "write -P 0x77 3M 4k")     # at once now
        assert time.monotonic() - t0 < 5
        qemu_io(uri, "read -P 0x66 4k 4k")
        qemu_io(uri, "read -P 0x77 3M 4k")
        assert c.status("primary")["copy_pending_bytes"] == 2 * (64 << 10)
        # A restart of the primary keeps taking writes (the policy is in the state).
        c.terminate("primary")
        c.start("primary")
        qemu_io(uri, "write -P 0x78 2M 4k")
        c.start("relay")
        out = c.cli("pair", "resync", "--group", "g1")
        assert out.returncode == 0, out.stderr
        c.cli("pair", "sync", "--group", "g1")
        p = c.wait_drained()["primary"]
        assert p["grsts"] == "PAIR" and p["copy_total"] == 3, p      # the 3 chunks, not 64
        assert c.volume_bytes("primary", 0) == c.volume_bytes("secondary", 0)
    finally:
        c.stop_all()
