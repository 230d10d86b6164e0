"""fdatasync through Linux AIO (host/disk/aiosync.py): it must really flush,
report errors as os.fdatasync does, and match each completion to its own
request.  The group committer uses it (tests/test_store.py covers the
committer's logic on both syncers)."""

import asyncio
import errno
import os
from pathlib import Path

import pytest

from tricopy.host.disk import aiosync, fileio, powercut
from tricopy.host.journal.commit import GroupCommitter
from tricopy.host.journal.store import JournalStore, StoreBroken


def _device_flushes(path: Path) -> tuple[Path, int]:
    """Flush requests the block device holding ``path`` has completed
    (field 16 of /sys/block/*/stat, Linux 5.5+)."""
    st = os.stat(path)
    stat = Path(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/stat")
    return stat, int(stat.read_text().split()[15])


def _disk_path(tmp_path: Path) -> Path:
    # tmp_path may be on tmpfs (no block device, no flushes): then the
    # repository's own disk.
    for base in (tmp_path, Path(__file__).resolve().parent):
        st = os.stat(base)
        if Path(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/stat").exists():
            return base / f"aiosync-{os.getpid()}.dat"
    raise AssertionError("no folder of this test is on a block device: cannot count flushes")


def test_aio_is_usable_here():
    # The product relies on it for its CPU per write (docs/benchmarks.md);
    # a machine without it logs one line and uses threads, but the suite
    # must test the AIO path, so it must be there.
    assert aiosync.aio_unavailable() is None


def test_each_aio_fdatasync_flushes_the_device(tmp_path):
    """Dirty data, an AIO FDSYNC, and the device's flush count moves: at
    least one flush per sync (other processes can only add flushes)."""
    path = _disk_path(tmp_path)
    n = 30
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        async def main():
            s = aiosync.syncer(2)
            assert isinstance(s, aiosync.AioSyncer)
            stat, before = _device_flushes(path)
            for i in range(n):
                os.pwrite(fd, os.urandom(4096), i * 4096)
                await s.fdatasync(fd)
            _, after = _device_flushes(path)
            s.close()
            return after - before
        flushes = asyncio.run(main())
        assert flushes >= n, f"{n} AIO fdatasyncs, only {flushes} device flushes"
    finally:
        os.close(fd)
        path.unlink()


def test_an_aio_fdatasync_error_is_the_errno_fdatasync_gives():
    r, w = os.pipe()
    try:
        with pytest.raises(OSError) as direct:
            os.fdatasync(r)

        async def main():
            s = aiosync.syncer(1)
            try:
                with pytest.raises(OSError) as via_aio:
                    await s.fdatasync(r)
                return via_aio.value.errno
            finally:
                s.close()
        assert asyncio.run(main()) == direct.value.errno == errno.EINVAL
    finally:
        os.close(r)
        os.close(w)


def test_many_aio_syncs_in_flight_each_complete_their_own(tmp_path):
    """Ten syncs on two descriptors at once, one on a pipe that fails:
    each await gets its own outcome."""
    path = tmp_path / "two.dat"
    fds = [os.open(path, os.O_RDWR | os.O_CREAT, 0o644) for _ in range(2)]
    r, w = os.pipe()
    try:
        async def main():
            s = aiosync.syncer(2)
            for fd in fds:
                os.pwrite(fd, b"x" * 4096, 0)
            targets = [fds[i % 2] for i in range(10)]
            targets[7] = r
            got = await asyncio.gather(*(s.fdatasync(fd) for fd in targets),
                                       return_exceptions=True)
            s.close()
            return got
        got = asyncio.run(main())
        assert [type(g).__name__ for g in got] == ["NoneType"] * 7 + ["OSError"] + ["NoneType"] * 2
        assert got[7].errno == errno.EINVAL
    finally:
        for fd in fds + [r, w]:
            os.close(fd)


def test_the_committer_syncs_through_aio_on_the_real_disk_and_threads_on_a_test_disk(tmp_path):
    async def kind(path):
        with JournalStore.create(path, 1 << 16) as s:
            gc = GroupCommitter(s, inline_below=0)
            seq = s.append(*_journal(s))
            await gc.wait_durable(seq)
            assert s.durable_seq == seq
            k = gc.sync_kind
            await gc.aclose()
            return k
    assert asyncio.run(kind(tmp_path / "real.jnl")) == "aio"
    with fileio.use(powercut.PowerCutDisk(tmp_path)):
        assert asyncio.run(kind(tmp_path / "test-disk.jnl")) == "thread"


def test_a_failed_aio_sync_breaks_the_store(tmp_path, monkeypatch):
    """An fdatasync error reported through AIO makes the store refuse work,
    as a failed os.fdatasync does (every waiter gets StoreBroken)."""
    async def main():
        with JournalStore.create(tmp_path / "eio.jnl", 1 << 16) as s:
            gc = GroupCommitter(s, inline_below=0)
            seq = s.append(*_journal(s))
            real = aiosync.AioSyncer.fdatasync

            async def eio(self, fd):
                await real(self, fd)
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            monkeypatch.setattr(aiosync.AioSyncer, "fdatasync", eio)
            with pytest.raises(StoreBroken):
                await gc.wait_durable(seq)
            assert s.durable_seq < seq
            with pytest.raises(StoreBroken):
                s.append(*_journal(s))
            await gc.aclose()
    asyncio.run(main())


def _journal(s):
    from test_store import payload, stamped
    data = payload(s.next_seq, 100)
    return stamped(s, data), data


def test_completions_in_any_order_reach_their_own_request(tmp_path, monkeypatch):
    """The kernel may finish a later sync first (a clean file's before a
    dirty one's), and an I/O error comes back as a negative result: the
    completions are played here in reverse order, the later one failing."""
    async def main():
        s = aiosync.syncer(2)
        held = []
        monkeypatch.setattr(s._ctx, "submit", lambda blocks: held.extend(blocks))
        first = asyncio.ensure_future(s.fdatasync(3))
        second = asyncio.ensure_future(s.fdatasync(4))
        await asyncio.sleep(0)          # both submitted (held here, not with the kernel)
        assert [b.target_file for b in held] == [3, 4]
        s._done(held[1], -errno.EIO, 0)
        await asyncio.sleep(0)
        assert second.done() and not first.done()
        assert isinstance(second.exception(), OSError) and second.exception().errno == errno.EIO
        s._done(held[0], 0, 0)
        assert await first is None
        s._ctx.close()
        s._pending.clear()
        s.close()
    asyncio.run(main())
