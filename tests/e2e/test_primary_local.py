"""The primary's own storage: a bounded write log under load, and local faults
(ENOSPC/EIO on the write log, short writes, EIO on the PVOL) that must neither
burn a PSEQ nor be blamed on the relay.  Real relay (and secondary) processes;
the MasterGroup runs in this process so that faults can be injected."""

import asyncio
import errno
import os
import time

import pytest

from tricopy.host.disk import fileio
from tricopy.host.primary import writelog
from tricopy.host.nbd.protocol import NBD_EIO, NBD_ENOSPC
from tricopy.host.nbd.server import nbd_error
from tricopy.host.primary.site import GroupSuspended, LocalIOError
from tricopy.host.wire.protocol import Kind
from tricopy.host.primary.writelog import WriteLog

from .cluster import BLOCK, VOL_SIZE, Cluster
from .primary_inproc import master_group, until


def log_bytes(state) -> int:
    return sum(e.stat().st_size for e in os.scandir(state) if e.name.startswith("g1.plog"))


def test_write_log_stays_bounded_at_depth_4(tmp_path, monkeypatch):
    """64 KiB writes at QD 4: the one-file log only shrank when nothing was in
    flight (never, at QD >= 2) and grew with every byte written."""
    seg, size, depth, total = 1 << 20, 64 << 10, 4, 48 << 20
    monkeypatch.setattr(writelog, "SEGMENT_SIZE", seg)
    cluster = Cluster(tmp_path, journal_size=32 << 20)
    state = tmp_path / "primary" / "state"
    try:
        cluster.start("secondary")
        cluster.start("relay")

        async def run():
            async with master_group(cluster) as g:
                peak = 0
                writes = iter(range(total // size))

                async def worker():
                    nonlocal peak
                    for i in writes:
                        off = (i % (VOL_SIZE // size)) * size
                        await g.journal(Kind.UPDATE, i % 2, off, size, bytes([i & 0xFF]) * size)
                        peak = max(peak, log_bytes(state))

                t0 = time.monotonic()
                await asyncio.gather(*(worker() for _ in range(depth)))
                return peak, g.acked, g.last_pseq, time.monotonic() - t0

        peak, acked, last, secs = asyncio.run(run())
        assert acked == total // size
        # one segment (it may overshoot by one record) + the journals in flight
        bound = seg + (depth + 1) * (size + 64)
        print(f"\n{total >> 20} MiB at QD{depth} in {secs:.1f} s; write log peak "
              f"{peak / (1 << 20):.2f} MiB (bound {bound / (1 << 20):.2f} MiB)")
        assert peak <= bound, f"write log grew to {peak} bytes, bound {bound}"
        assert cluster.status("relay")["last_tag"] == last

        # A restart (the relay down) redoes the log and holds only what it must resend.
        cluster.kill("relay")

        async def reopen():
            async with master_group(cluster, connect=False) as g:
                held = sum(len(d) + 64 for _, d, _ in g.pending.values())
                return held, g.last_pseq
        held, last2 = asyncio.run(reopen())
        assert last2 == last
        assert held <= bound
    finally:
        cluster.stop_all()


def test_write_log_enospc_and_short_writes(tmp_path, monkeypatch):
    cluster = Cluster(tmp_path)
    try:
        cluster.start("relay")

        async def run():
            async with master_group(cluster) as g:
                await g.journal(Kind.UPDATE, 0, 0, BLOCK, b"\x01" * BLOCK)
                last, before = g.last_pseq, g.volumes[0].read(BLOCK, BLOCK)
                real = fileio.writev

                def full(fd, bufs):
                    if fd == g.log._fd:
                        raise OSError(errno.ENOSPC, "No space left on device")
                    return real(fd, bufs)

                monkeypatch.setattr(fileio, "writev", full)
                with pytest.raises(LocalIOError) as e:
                    await g.journal(Kind.UPDATE, 0, BLOCK, BLOCK, b"\x02" * BLOCK)
                monkeypatch.setattr(fileio, "writev", real)
                assert g.last_pseq == last, "a journal that was never logged burnt a PSEQ"
                assert g.grsts == "PAIR" and g.volumes[0].read(BLOCK, BLOCK) == before
                assert e.value.errno == errno.ENOSPC and "write log" in str(e.value)
                assert nbd_error(e.value) == NBD_ENOSPC          # what an NBD host sees

                def short(fd, bufs):      # at most 1000 bytes per call
                    if fd == g.log._fd:
                        return real(fd, [b"".join(bytes(b) for b in bufs)[:1000]])
                    return real(fd, bufs)

                monkeypatch.setattr(fileio, "writev", short)
                await g.journal(Kind.UPDATE, 0, BLOCK, BLOCK, b"\x03" * BLOCK)
                monkeypatch.setattr(fileio, "writev", real)
                # the relay took last + 1: no gap, no BAD_REQUEST
                await g.journal(Kind.UPDATE, 0, 2 * BLOCK, BLOCK, b"\x04" * BLOCK)
                assert g.grsts == "PAIR" and g.last_pseq == last + 2
                return g.last_pseq

        last = asyncio.run(run())
        assert cluster.status("relay")["last_tag"] == last
        wl = WriteLog(tmp_path / "primary" / "state", "g1")
        recs = [(c.tag, d[:1]) for c, d in wl.recover()]
        wl.close()
        assert recs == [(1, b"\x01"), (2, b"\x03"), (3, b"\x04")], "a short write tore a record"
    finally:
        cluster.stop_all()


def _pvol_eio(monkeypatch, vol, at: int | None = None):
    """From now on the PVOL ``vol`` fails every write (or the one at offset
    ``at``) with EIO; returns the real ``pwrite`` to put back."""
    real = fileio.pwrite

    def eio(fd, data, offset):
        if fd == vol._fd and at in (None, offset):
            raise OSError(errno.EIO, "Input/output error")
        return real(fd, data, offset)

    monkeypatch.setattr(fileio, "pwrite", eio)
    return real


def _after_one_write(tmp_path, body) -> None:
    """Await ``body(cluster, g)`` on the primary's group, connected to a real
    relay, once one write (PSEQ 1) went through; the relay stays up meanwhile."""
    cluster = Cluster(tmp_path)
    try:
        cluster.start("relay")

        async def run():
            async with master_group(cluster) as g:
                await g.journal(Kind.UPDATE, 0, 0, BLOCK, b"\x01" * BLOCK)
                await body(cluster, g)

        asyncio.run(run())
    finally:
        cluster.stop_all()


def test_pvol_eio_suspends_naming_the_pvol(tmp_path, monkeypatch):
    async def body(cluster, g):
        last, vol = g.last_pseq, g.volumes[0]
        real = _pvol_eio(monkeypatch, vol)
        with pytest.raises(LocalIOError) as e:
            await g.journal(Kind.UPDATE, 0, 2 * BLOCK, BLOCK, b"\x02" * BLOCK)
        monkeypatch.setattr(fileio, "pwrite", real)
        assert g.last_pseq == last, "a journal that was never logged burnt a PSEQ"
        assert g.grsts == "SUSP", "the PVOL extent is unknown: the pair must not go on"
        assert g.reason.startswith(f"PVOL idx 0 ({vol.path}) write at offset {2 * BLOCK}")
        assert "relay" not in g.reason.replace(str(tmp_path), "")
        assert e.value.errno == errno.EIO and str(vol.path) in str(e.value)
        assert nbd_error(e.value) == NBD_EIO
        assert g.bitmap.test(0, 2 * BLOCK // g.bitmap.chunk), "extent not in the bitmap"
        with pytest.raises(GroupSuspended):
            await g.journal(Kind.UPDATE, 0, 0, BLOCK, b"\x03" * BLOCK)
        # the device is back: resync continues right after the relay's last PSEQ
        g.pair_resync(relay_last_tag=cluster.status("relay")["last_tag"])
        await until(lambda: g.grsts == "PAIR", "the resync to finish")
        await g.journal(Kind.UPDATE, 0, 0, BLOCK, b"\x04" * BLOCK)
        assert g.last_pseq > last + 1
        assert cluster.status("relay")["last_tag"] == g.last_pseq

    _after_one_write(tmp_path, body)


def test_a_pvol_apply_that_raises_anything_is_unlogged_and_burns_no_pseq(tmp_path, monkeypatch):
    """Not only an OSError: whatever stops the PVOL apply after the write-log
    append (here a bug's ValueError), the record is cut off the log and the
    group suspends, so its PSEQ is never given to a second journal."""
    async def body(cluster, g):
        last, vol = g.last_pseq, g.volumes[0]
        real = vol.write

        def bug(address, data):
            raise ValueError("a bug in the apply")
        monkeypatch.setattr(vol, "write", bug)
        with pytest.raises(LocalIOError) as e:
            await g.journal(Kind.UPDATE, 0, 2 * BLOCK, BLOCK, b"\x02" * BLOCK)
        monkeypatch.setattr(vol, "write", real)
        assert "ValueError: a bug in the apply" in str(e.value)
        assert g.last_pseq == last and g.log.last_tag == last, \
            "the failed record stayed in the write log: its PSEQ would be given again"
        assert g.grsts == "SUSP" and g.bitmap.test(0, 2 * BLOCK // g.bitmap.chunk)

    _after_one_write(tmp_path, body)


def test_a_pvol_error_inside_a_batch_fails_it_and_the_rest_only(tmp_path, monkeypatch):
    """``journal_many`` (the WRITEs of one NBD read): the PVOL refuses the
    second of three writes.  It and the third fail with the PVOL's error,
    the third is never applied, neither burns a PSEQ; the first, in flight
    when the group suspends, fails as every in-flight write does then, its
    extent in the copy bitmap with the refused one's."""
    async def body(cluster, g):
        last, vol = g.last_pseq, g.volumes[0]
        real = _pvol_eio(monkeypatch, vol, at=3 * BLOCK)
        results = await g.journal_many(0, [(2 * BLOCK, b"\x02" * BLOCK, False),
                                           (3 * BLOCK, b"\x03" * BLOCK, False),
                                           (4 * BLOCK, b"\x04" * BLOCK, False)])
        monkeypatch.setattr(fileio, "pwrite", real)
        assert [type(r) for r in results] == [GroupSuspended, LocalIOError, LocalIOError]
        assert results[1].errno == errno.EIO and str(vol.path) in str(results[1])
        assert results[2] is results[1]
        assert g.last_pseq == last + 1, "the refused writes burnt PSEQs"
        assert g.grsts == "SUSP" and g.reason.startswith(
            f"PVOL idx 0 ({vol.path}) write at offset {3 * BLOCK}")
        assert vol.read(2 * BLOCK, BLOCK) == b"\x02" * BLOCK
        assert vol.read(4 * BLOCK, BLOCK) == bytes(BLOCK), "a write after it applied"
        chunk = g.bitmap.chunk
        assert g.bitmap.test(0, 2 * BLOCK // chunk) and g.bitmap.test(0, 3 * BLOCK // chunk)

    _after_one_write(tmp_path, body)
