"""The primary's segmented write log (host/primary/writelog.py), in process: rolls, releases,
torn tails, short and failing writes, streaming recovery."""

import errno
from pathlib import Path

import pytest

from tricopy.host.disk import fileio
from tricopy.host.wire import protocol
from tricopy.host.primary import writelog
from tricopy.host.wire.protocol import Control, Kind
from tricopy.host.primary.writelog import WriteLog, WriteLogBroken, WriteLogError

REC = 4096


def rec(tag: int, fill: int | None = None, size: int = REC) -> tuple[Control, bytes]:
    data = bytes([(fill if fill is not None else tag) & 0xFF]) * size
    ctl = Control(address=tag * REC, length=size, data_len=size, data_crc=protocol.crc32c(data),
                  idx=0, kind=Kind.UPDATE, group=1, tag=tag).with_ccrc()
    return ctl, data


def opened(folder: Path, segment_size: int = 4 * (REC + 64)) -> tuple[WriteLog, list]:
    wl = WriteLog(folder, "g1", segment_size=segment_size)
    return wl, [(c.tag, d) for c, d in wl.recover()]


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("g1.plog"))


def test_roll_release_and_recover(tmp_path):
    wl, got = opened(tmp_path)
    assert got == [] and wl.last_tag == 0
    for t in range(1, 11):
        wl.append(*rec(t))
    # 4 records per segment: 1-4, 5-8, 9-10
    assert len(wl.segments) == 3 and wl.size == 10 * (REC + 64)
    assert wl.release(3) == 0, "segment 1-4 still holds PSEQ 4"
    assert wl.release(4) == 1
    assert files(tmp_path) == ["g1.plog.000000000002", "g1.plog.000000000003"]
    assert wl.release(10) == 1, "the active segment is never released"
    wl.flush()
    wl2, got = opened(tmp_path)
    assert [t for t, _ in got] == [9, 10] and got[0][1] == rec(9)[1]
    assert wl2.last_tag == 10 and wl2.first_tag == 9


def test_last_pseq_survives_when_no_tagged_record_is_left(tmp_path):
    wl, _ = opened(tmp_path)
    for t in range(1, 5):
        wl.append(*rec(t))
    wl.append(*rec(0, fill=7))            # rolls: the new segment holds one local record
    assert wl.release(4) == 1             # only the local record is left: .pseq saved first
    wl2, got = opened(tmp_path)
    assert [t for t, _ in got] == [0]
    assert wl2.last_tag == 4 and wl2.acked == 4


def test_reset_leaves_a_gap_so_a_resurrected_segment_is_ignored(tmp_path):
    wl, _ = opened(tmp_path)
    for t in range(1, 4):
        wl.append(*rec(t))
    old = wl.segments[0].path
    saved = old.read_bytes()
    wl.reset(3, 3)
    wl.append(*rec(4))
    # a crash undid the unlink of the old segment
    old.write_bytes(saved)
    wl2, got = opened(tmp_path)
    assert [t for t, _ in got] == [4]
    assert not old.exists()


def test_torn_tail_is_cut(tmp_path):
    wl, _ = opened(tmp_path)
    for t in range(1, 4):
        wl.append(*rec(t))
    path = wl.segments[-1].path
    ctl, data = rec(4)
    with open(path, "ab") as f:          # a crash in the middle of an append
        f.write(ctl.pack() + data[:100])
    wl2, got = opened(tmp_path)
    assert [t for t, _ in got] == [1, 2, 3]
    assert path.stat().st_size == 3 * (REC + 64)
    wl2.append(*rec(4))
    assert [t for t, _ in opened(tmp_path)[1]] == [1, 2, 3, 4]


def test_recovery_streams(tmp_path, monkeypatch):
    wl, _ = opened(tmp_path, segment_size=64 << 20)
    for t in range(1, 200):
        wl.append(*rec(t))
    # no whole-file read: Path.read_bytes is what the one-file log used
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("whole-file read"))
    wl2 = WriteLog(tmp_path, "g1")
    n = 0
    for ctl, data in wl2.recover():
        n += 1
        assert len(data) == REC
    assert n == 199


def test_short_writev_is_completed(tmp_path, monkeypatch):
    wl, _ = opened(tmp_path)
    real = fileio.writev
    calls = []

    def short(fd, bufs):        # at most 1000 bytes per call
        calls.append(1)
        flat = b"".join(bytes(b) for b in bufs)[:1000]
        return real(fd, [flat])

    monkeypatch.setattr(fileio, "writev", short)
    wl.append(*rec(1))
    monkeypatch.setattr(fileio, "writev", real)
    assert len(calls) == -(-(REC + 64) // 1000)
    wl.append(*rec(2))
    assert [(t, d) for t, d in opened(tmp_path)[1]] == [(1, rec(1)[1]), (2, rec(2)[1])]


def test_writev_that_writes_nothing_is_an_error(tmp_path, monkeypatch):
    wl, _ = opened(tmp_path)
    monkeypatch.setattr(fileio, "writev", lambda fd, bufs: 0)
    with pytest.raises(WriteLogError) as e:
        wl.append(*rec(1))
    assert e.value.errno == errno.EIO


def test_failed_append_is_cut_off(tmp_path, monkeypatch):
    wl, _ = opened(tmp_path)
    wl.append(*rec(1))
    real = fileio.writev

    def half_then_enospc(fd, bufs):
        real(fd, [bytes(bufs[0])])       # the control data got out, then the disk filled
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio, "writev", half_then_enospc)
    with pytest.raises(WriteLogError) as e:
        wl.append(*rec(2))
    assert e.value.errno == errno.ENOSPC and not isinstance(e.value, WriteLogBroken)
    assert wl.last_tag == 1 and wl.size == REC + 64
    assert wl.segments[-1].path.stat().st_size == REC + 64
    monkeypatch.setattr(fileio, "writev", real)
    wl.append(*rec(2))
    assert [t for t, _ in opened(tmp_path)[1]] == [1, 2]


def test_append_that_cannot_be_cut_breaks_the_log(tmp_path, monkeypatch):
    wl, _ = opened(tmp_path)
    def eio(*args):
        raise OSError(errno.EIO, "EIO")

    monkeypatch.setattr(fileio, "writev", eio)
    monkeypatch.setattr(fileio, "ftruncate", eio)
    with pytest.raises(WriteLogBroken):
        wl.append(*rec(1))
    monkeypatch.undo()
    with pytest.raises(WriteLogBroken):
        wl.append(*rec(1))
    wl.reset(0, 0)
    wl.append(*rec(1))


def test_legacy_one_file_log_is_adopted(tmp_path):
    ctl, data = rec(1)
    (tmp_path / "g1.plog").write_bytes(ctl.pack() + data)
    wl, got = opened(tmp_path)
    assert [t for t, _ in got] == [1] and not (tmp_path / "g1.plog").exists()


def test_default_segment_size():
    assert writelog.SEGMENT_SIZE == 8 << 20


def test_flush_syncs_rolled_segments_even_if_they_are_released_meanwhile(tmp_path, monkeypatch):
    wl, _ = opened(tmp_path)
    for t in range(1, 10):
        wl.append(*rec(t))
    assert [s.fd >= 0 for s in wl.segments] == [True, True, False]   # rolled, not synced yet
    synced = []
    real = fileio.fsync
    fds = wl.flush_begin()          # on the event loop ...
    assert wl.release(9) == 2       # ... the ACKs release both rolled segments meanwhile
    # (counted from here: the release's own fsyncs, of the saved ACK mark, do not count)
    monkeypatch.setattr(fileio, "fsync", lambda fd: (synced.append(fd), real(fd)))
    WriteLog.sync(fds)              # ... and the worker thread still syncs what it was handed
    assert len(synced) == 4         # two rolled segments, the active one, the folder
    assert all(s.fd < 0 for s in wl.segments)
    wl.flush()
