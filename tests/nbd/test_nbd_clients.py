"""Debian's real NBD clients against FileExport over TCP on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess

from nbdraw import run

MiB = 1 << 20


def qemu_io(uri: str, *commands: str, cache: str | None = None, extra=()) -> str:
    args = ["qemu-io", "-f", "raw", *extra]
    if cache:
        args += ["-t", cache]
    for c in commands:
        args += ["-c", c]
    proc = run(*args, uri)
    # qemu-io reports a failed command on stdout but still exits 0 in some versions.
    assert "error" not in proc.stdout.lower() and "Pattern verification failed" not in proc.stdout, \
        proc.stdout
    return proc.stdout


def test_nbdinfo_json_shows_flags_size_and_block_sizes(served):
    info = json.loads(run("nbdinfo", "--json", served.uri()).stdout)
    assert info["protocol"] == "newstyle-fixed" and info["structured"] is True
    (disk,) = info["exports"]
    assert disk["export-size"] == 64 * MiB
    assert (disk["block_size_minimum"], disk["block_size_preferred"],
            disk["block_size_maximum"]) == (4096, 4096, 32 * MiB)
    assert disk["can_flush"] and disk["can_fua"] and disk["can_trim"] and disk["can_zero"]
    assert disk["can_multi_conn"] and not disk["is_read_only"]
    assert not disk["can_df"] and not disk["can_cache"] and not disk["can_fast_zero"]
    ro = json.loads(run("nbdinfo", "--json", served.uri("ro")).stdout)["exports"][0]
    assert ro["is_read_only"] and not ro["can_trim"] and not ro["can_zero"]
    assert ro["export-size"] == 8 * MiB


def test_nbdinfo_list_shows_both_exports(served):
    out = run("nbdinfo", "--list", "--json", f"nbd://127.0.0.1:{served.port}").stdout
    names = {e["export-name"]: e for e in json.loads(out)["exports"]}
    assert set(names) == {"disk", "ro"}
    assert names["disk"].get("description") == "scratch disk"


def test_qemu_io_patterns_fua_zeroes_discard_flush(served):
    uri = served.uri()
    qemu_io(uri, "write -P 0xab 0 64k", "read -P 0xab 0 64k", cache="writeback")
    # writeback: a plain write without FUA (qemu flushes once at close)
    assert [c for c in served.export.calls if c[0] != "flush"] == [("write", 0, 65536, False)]
    served.export.calls.clear()
    qemu_io(uri, "write -f -P 0xcd 64k 64k", "write -z 128k 64k", "read -P 0 128k 64k",
            "write -P 0x11 1M 8k", "discard 1M 4k", "flush", cache="writeback",
            extra=("-d", "unmap"))
    calls = served.export.calls
    assert ("write", 65536, 65536, True) in calls          # -f → NBD_CMD_FLAG_FUA
    assert ("zeroes", 131072, 65536, False) in calls       # -z → WRITE_ZEROES
    assert ("trim", MiB, 4096, False) in calls             # discard → TRIM
    assert ("flush", 0, 0, False) in calls
    data = served.disk.read_bytes()
    assert data[:64 << 10] == b"\xab" * (64 << 10)
    assert data[64 << 10:128 << 10] == b"\xcd" * (64 << 10)
    assert data[128 << 10:192 << 10] == bytes(64 << 10)
    assert data[MiB:MiB + 4096] == bytes(4096)              # trimmed reads back as zeros
    assert data[MiB + 4096:MiB + 8192] == b"\x11" * 4096


def test_qemu_io_default_cache_sets_fua_on_every_write(served):
    qemu_io(served.uri(), "write -P 0x5a 0 16k", "write -P 0x5b 16k 16k")
    writes = [c for c in served.export.calls if c[0] == "write"]
    assert len(writes) == 2 and all(c[3] for c in writes)


def test_qemu_io_unaligned_write_is_read_modify_write(served):
    # The 4 KiB minimum block size makes qemu do the read-modify-write itself.
    qemu_io(served.uri(), "write -P 0x77 100 200", "read -P 0x77 100 200", "read -P 0 0 100",
            cache="writeback")
    assert all(c[1] % 4096 == 0 and c[2] % 4096 == 0 for c in served.export.calls)


def test_qemu_img_convert_and_compare(served, tmp_path):
    src = tmp_path / "src.img"
    src.write_bytes(os.urandom(16 * MiB) + bytes(48 * MiB))
    run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src), served.uri())
    run("qemu-img", "compare", "-f", "raw", "-F", "raw", str(src), served.uri())
    assert served.disk.read_bytes() == src.read_bytes()
    # compare must also notice a difference through our READ path
    # (Flip the byte: writing a fixed value left the image unchanged one
    # run in 256, where the random byte already had it.)
    with open(src, "r+b") as f:
        f.seek(5 * MiB)
        old = f.read(1)[0]
        f.seek(5 * MiB)
        f.write(bytes([old ^ 0xFF]))
    proc = run("qemu-img", "compare", "-f", "raw", "-F", "raw", str(src), served.uri(),
               check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr


def test_nbdcopy_in_and_out(served, tmp_path):
    src = tmp_path / "in.img"
    src.write_bytes(os.urandom(64 * MiB))
    run("nbdcopy", str(src), served.uri())
    assert served.disk.read_bytes() == src.read_bytes()
    out = tmp_path / "out.img"
    run("nbdcopy", served.uri("ro"), str(out))
    assert out.read_bytes() == served.ro_content


def test_fio_verify_crc32c(served):
    proc = run("fio", "--name=verify", "--ioengine=nbd", f"--uri={served.uri()}",
               "--rw=randwrite", "--bs=4k", "--size=16M", "--iodepth=16",
               "--verify=crc32c", "--do_verify=1", "--verify_state_save=0", "--output-format=json", timeout=120)
    job = json.loads(proc.stdout[proc.stdout.index("{"):])["jobs"][0]
    assert job["error"] == 0
    assert job["write"]["io_bytes"] == 16 * MiB and job["read"]["io_bytes"] == 16 * MiB


def test_concurrent_clients_write_disjoint_regions(served):
    procs = [subprocess.Popen(["qemu-io", "-f", "raw", "-t", "writeback",
                               "-c", f"write -P {0x20 + i} {i * 8}M 8M",
                               "-c", f"read -P {0x20 + i} {i * 8}M 8M", served.uri()],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(4)]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert not any("fail" in o.lower() for o in outs), outs
    data = served.disk.read_bytes()
    for i in range(4):
        assert data[i * 8 * MiB:(i + 1) * 8 * MiB] == bytes([0x20 + i]) * (8 * MiB)


def test_qemu_refuses_read_write_open_of_read_only_export(served):
    proc = run("qemu-io", "-f", "raw", "-c", "write 0 4k", served.uri("ro"), check=False)
    assert proc.returncode != 0
    assert "Permission denied" in proc.stderr or "read-only" in proc.stderr, proc.stderr
    assert served.ro.read_bytes() == served.ro_content
