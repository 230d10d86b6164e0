"""Unit tests of the journal volume store: ring rules, recovery, group commit."""

import asyncio
import dataclasses
import os
import random
import threading
import time

import pytest

from tricopy.host.wire import protocol as p
from tricopy.host.journal import store as st
from tricopy.host.journal.store import HEADER_SIZE, JournalStore
from tricopy.host.tools.store_bench import bench_append, stamped
from tricopy.host.journal import commit
from tricopy.host.journal.commit import Durability, GroupCommitter
from tricopy.host.perf import PERF


def payload(seq: int, n: int) -> bytes:
    return bytes((seq * 7 + i) & 0xFF for i in range(n))


def put(store: JournalStore, n: int, **kw) -> p.Control:
    """Append the next journal with n bytes of data, stamped for this store."""
    data = payload(store.next_seq, n)
    ctl = stamped(store, data, time_ns=store.next_seq * 10, **kw)
    assert store.append(ctl, data) == ctl.seq
    return ctl


def poke(path, ring_pos: int, raw: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(HEADER_SIZE + ring_pos)
        f.write(raw)


def peek(path, ring_pos: int, n: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(HEADER_SIZE + ring_pos)
        return f.read(n)


def state(s: JournalStore) -> tuple:
    return (s.jiptr, s.joptr, s.used, s.wrap_at, s.tail_seq, s.next_seq)


def crash(s: JournalStore) -> None:
    """Drop ``s`` as a killed process would: no close(), so no clean-shutdown
    mark, and the next open runs the recovery scan."""
    os.close(s._fd)
    s._closed = True


@pytest.fixture
def path(tmp_path):
    return tmp_path / "jnl"


# -- create, append, read ----------------------------------------------------

def test_create_empty_and_reopen(path):
    with JournalStore.create(path, 1024, epoch=3) as s:
        assert state(s) == (0, 0, 0, 1024, 1, 1)
        assert (s.size, s.free, s.epoch, s.durable_seq) == (1024, 1024, 3, 0)
    assert os.path.getsize(path) == HEADER_SIZE + 1024
    with JournalStore.open(path) as s:
        assert state(s) == (0, 0, 0, 1024, 1, 1) and s.epoch == 3
        assert s.recovery.recovered == 0


@pytest.mark.parametrize("size", [0, 64, 100, 1000, -128])
def test_create_rejects_bad_size(path, size):
    with pytest.raises(ValueError, match="multiple of 64"):
        JournalStore.create(path, size)


def test_append_read_roundtrip_is_the_engine_readout(path):
    with JournalStore.create(path, 4096) as s:
        c1, c2, c3 = put(s, 100), put(s, 0), put(s, 64)
        assert (c1.jofs, c2.jofs, c3.jofs) == (0, 192, 256)
        assert (s.jiptr, s.used, s.next_seq) == (384, 384, 4)
        got = s.read(1, 10)
        assert [c for c, _ in got] == [c1, c2, c3]
        assert [d for _, d in got] == [payload(1, 100), b"", payload(3, 64)]
        assert s.read(2, 1) == [(c2, b"")]
        assert s.read(4, 5) == []
        # On disk: stamped control data, data, zero padding to 64.
        assert peek(path, 0, 192) == c1.pack() + payload(1, 100) + bytes(28)


def test_read_outside_held_is_not_found(path):
    with JournalStore.create(path, 4096) as s:
        put(s, 10), put(s, 10)
        s.release(1)
        with pytest.raises(st.NotFound, match="outside 2..2"):
            s.read(1, 1)
        with pytest.raises(st.NotFound):
            s.read(4, 1)


def test_read_verifies_crc_at_rest(path):
    with JournalStore.create(path, 4096) as s:
        put(s, 100)
        poke(path, 64 + 5, b"\xAA")
        with pytest.raises(st.CorruptStore, match="journal data of seq 1"):
            s.read(1, 1)
        poke(path, 8, b"\x01")
        with pytest.raises(st.CorruptStore, match="control data of seq 1"):
            s.read(1, 1)


# -- what append refuses -----------------------------------------------------

def test_jofs_must_equal_the_ring_allocation(path):
    with JournalStore.create(path, 4096) as s:
        put(s, 10)
        data = payload(2, 10)
        ctl = stamped(s, data)
        wrong = p.Control(**{**ctl.__dict__, "jofs": 0}).with_ccrc()
        before = state(s)
        with pytest.raises(st.PlacementError, match="JOFS 0 but the ring allocates 128"):
            s.append(wrong, data)
        assert state(s) == before and peek(path, 128, 64) == bytes(64)


def test_seq_must_be_next(path):
    with JournalStore.create(path, 4096) as s:
        ctl = p.Control(**{**stamped(s, b"").__dict__, "seq": 5}).with_ccrc()
        with pytest.raises(st.PlacementError, match="seq 5 but the store expects 1"):
            s.append(ctl, b"")


def test_bad_journals_are_refused(path):
    with JournalStore.create(path, 4096, epoch=2) as s:
        data = b"abc"
        good = stamped(s, data)
        with pytest.raises(st.BadJournal, match="CCRC"):
            s.append(p.Control(**{**good.__dict__, "ccrc": good.ccrc ^ 1}), data)
        with pytest.raises(st.BadJournal, match="DATA_CRC"):
            s.append(good, b"abd")
        with pytest.raises(st.BadJournal, match="DATA_LEN 3 but 4"):
            s.append(good, b"abcd")
        with pytest.raises(st.BadJournal, match="KIND 255"):
            s.append(p.Control(**{**good.__dict__, "kind": p.Kind.WRAP}).with_ccrc(), data)
        with pytest.raises(st.StaleEpoch, match="EPOCH 1, store epoch 2"):
            s.append(p.Control(**{**good.__dict__, "epoch": 1}).with_ccrc(), data)
        assert s.next_seq == 1 and s.used == 0
        s.append(good, data)


def test_oversize(path):
    with JournalStore.create(path, 1024) as s:
        with pytest.raises(st.StoreOversize):
            s.placement(1024 - 63)
        assert s.placement(1024 - 64) == 0      # R == SIZE fits an empty ring


# -- ring rules (docs/protocol.md, "Allocation", "RELEASE") -------------------

def test_exact_fit_at_end_wraps_without_marker(path):
    with JournalStore.create(path, 1024) as s:
        put(s, 400)                 # R = 512 at 0
        put(s, 256)                 # R = 320 at 512, JIPTR 832
        s.release(1)                # JOPTR 512
        c = put(s, 128)             # R = 192 at 832: exact fit, JIPTR 0
        assert c.jofs == 832 and s.jiptr == 0 and s.wrap_at == 1024
        assert (s.used, s.free) == (512, 512)
        c = put(s, 448)             # R = 512 at 0: JIPTR meets JOPTR, ring full
        assert c.jofs == 0 and s.jiptr == s.joptr == 512 and s.free == 0
        with pytest.raises(st.StoreFull):
            s.placement(0)
        before = state(s)
    with JournalStore.open(path, force_scan=True) as s:
        assert state(s) == before and s.recovery.end_reason == "ring full"
        assert [c.seq for c, _ in s.read(2, 9)] == [2, 3, 4]
    with JournalStore.open(path) as s:             # the clean-shutdown mark, full ring
        assert state(s) == before and s.recovery.clean
        assert [c.seq for c, _ in s.read(2, 9)] == [2, 3, 4]


def test_wrap_writes_marker_and_survives_reopen(path):
    with JournalStore.create(path, 1024) as s:
        put(s, 300)                 # R 384 at 0
        put(s, 300)                 # R 384 at 384, JIPTR 768
        s.release(1)                # JOPTR 384
        c = put(s, 250)             # R 320: 256 left at the end, 384 at the start
        assert (c.jofs, s.wrap_at, s.jiptr) == (0, 768, 320)
        assert s.used == 384 + 256 + 320
        assert peek(path, 768, 64) == st.MARKER
        before = state(s)
    with JournalStore.open(path) as s:
        assert state(s) == before
        assert [(c.seq, c.jofs) for c, _ in s.read(2, 5)] == [(2, 384), (3, 0)]
        # Releasing past the marker drops the skipped tail with it.
        assert s.release(2) == 0
        assert (s.joptr, s.wrap_at, s.used) == (0, 1024, 320)


def test_wrap_with_partial_space_is_full_and_writes_nothing(path):
    with JournalStore.create(path, 1024) as s:
        put(s, 190)                 # R 256 at 0
        put(s, 400)                 # R 512 at 256, JIPTR 768
        s.release(1)                # JOPTR 256: 256 free at the end + 256 at the start
        assert s.free == 512
        with pytest.raises(st.StoreFull, match="fits neither"):
            s.placement(300)        # R 384 fits neither part
        data = payload(3, 300)
        ctl = p.Control(seq=3, jofs=0, length=300, data_len=300, data_crc=p.crc32c(data),
                        kind=p.Kind.UPDATE).with_ccrc()
        with pytest.raises(st.StoreFull):
            s.append(ctl, data)
        assert peek(path, 768, 64) == bytes(64) and s.wrap_at == 1024


def test_rewind_when_empty(path):
    with JournalStore.create(path, 1024) as s:
        put(s, 100), put(s, 100)
        s.release(2)
        assert (s.joptr, s.jiptr, s.used) == (384, 384, 0)
        assert put(s, 800).jofs == 0        # R 896 > what is left after 384
        assert (s.joptr, s.jiptr) == (0, 896)


def test_release_semantics(path):
    with JournalStore.create(path, 4096) as s:
        for _ in range(4):
            put(s, 10)
        with pytest.raises(st.NotFound, match="the last journal is 4"):
            s.release(5)
        assert s.tail_seq == 1          # nothing released, not even 1..4
        assert s.release(2) == 256
        assert s.release(2) == 256 and s.release(0) == 256     # idempotent
        assert (s.tail_seq, s.used, s.held) == (3, 256, 2)
        assert s.durable_seq == 4       # the superblock fsync covers the journals
    with JournalStore.open(path) as s:
        assert (s.tail_seq, s.joptr, s.next_seq) == (3, 256, 5)


def test_full_ring(path):
    with JournalStore.create(path, 512) as s:
        for _ in range(8):
            put(s, 0)
        assert (s.free, s.jiptr, s.joptr) == (0, 0, 0)
        with pytest.raises(st.StoreFull, match="0 free"):
            s.placement(0)
        s.release(1)
        assert put(s, 0).jofs == 0


def test_random_workload_reopens_to_the_same_state(path):
    rng = random.Random(7)
    s = JournalStore.create(path, 8192)
    contents = {}
    for step in range(600):
        if rng.random() < 0.6:
            n = rng.choice([0, 1, 63, 64, 65, 500, 1000, 2000])
            try:
                s.placement(n)
            except st.StoreFull:
                s.release(rng.randint(s.tail_seq, s.next_seq - 1))
                continue
            c = put(s, n)
            contents[c.seq] = (c, payload(c.seq, n))
        elif s.held:
            s.release(rng.randint(s.tail_seq - 1, s.next_seq - 1))
        if step % 50 == 49:
            before = state(s)
            s.close()
            s = JournalStore.open(path)
            # An empty ring is persisted rewound (docs/store.md); all else is equal.
            assert state(s)[2:] == before[2:]
            if s.held:
                assert state(s)[:2] == before[:2]
            assert s.read(s.tail_seq, 1000) == [contents[q] for q in range(s.tail_seq, s.next_seq)]
    s.close()


# -- batches (append_batch: one pwritev per run of adjacent records) ---------

def _batch_for(s: JournalStore, lens: list[int], first_seq: int | None = None):
    """Journals with these data lengths stamped for the next places of ``s``."""
    seq = s.next_seq if first_seq is None else first_seq
    out = []
    for i, jofs in enumerate(s.placements(lens)):
        data = payload(seq + i, lens[i])
        ctl = p.Control(seq=seq + i, time=(seq + i) * 10, jofs=jofs, length=len(data),
                        data_len=len(data), data_crc=p.crc32c(data), epoch=s.epoch,
                        kind=p.Kind.UPDATE, tag=seq + i).with_ccrc()
        out.append((ctl, data))
    return out


def test_a_batch_writes_the_bytes_and_state_of_appends_one_by_one(tmp_path, monkeypatch):
    """Random batches through wraps, markers and releases: the ring image and
    every pointer equal those of the same journals appended one at a time,
    and each run of adjacent records is one pwritev."""
    rng = random.Random(11)
    one, many = (JournalStore.create(tmp_path / name, 8192) for name in ("one", "many"))
    calls = []
    real = st.fileio.pwritev
    monkeypatch.setattr(st.fileio, "pwritev", lambda fd, bufs, off: calls.append(off) or
                        real(fd, bufs, off))
    for _ in range(300):
        lens = [rng.choice([0, 1, 63, 64, 65, 500, 1000]) for _ in range(rng.randint(1, 6))]
        try:
            batch = _batch_for(many, lens)
        except st.StoreFull:
            upto = rng.randint(many.tail_seq, many.next_seq - 1)
            one.release(upto)
            many.release(upto)
            continue
        calls.clear()
        for ctl, data in batch:
            one.append(ctl, data)
        wraps = sum(1 for (a, _), (b, _) in zip(batch, batch[1:]) if b.jofs != a.jofs +
                    p.record_size(a.data_len))
        calls.clear()
        assert many.append_batch(batch) == batch[-1][0].seq
        assert len(calls) == 1 + wraps
        assert state(many) == state(one)
    assert peek(tmp_path / "many", 0, 8192) == peek(tmp_path / "one", 0, 8192)
    assert many.read(many.tail_seq, 1000) == one.read(one.tail_seq, 1000)
    one.close()
    many.close()


def test_a_batch_of_more_records_than_one_pwritev_takes(path):
    """1,100 journals without data are 1,100 buffers: more than one pwritev
    takes (IOV_MAX 1024, EINVAL).  The store cuts the run instead of
    breaking, and every journal is there after a crash."""
    s = JournalStore.create(path, 1 << 20)
    batch = []
    for i, jofs in enumerate(s.placements([0] * 1100)):
        batch.append((p.Control(seq=s.next_seq + i, address=i * 4096, jofs=jofs, length=4096,
                                data_len=0, data_crc=0, epoch=s.epoch, kind=p.Kind.ZERO,
                                tag=i + 1).with_ccrc(), b""))
    assert s.append_batch(batch) == 1100
    crash(s)
    with JournalStore.open(path) as s:
        assert s.next_seq == 1101
        assert [c.tag for c, _ in s.read(1, 1100)] == list(range(1, 1101))


def test_a_bad_journal_in_a_batch_stops_it_there(path):
    s = JournalStore.create(path, 1 << 16)
    batch = _batch_for(s, [100, 200, 300])
    ctl, data = batch[1]
    batch[1] = (ctl, data[:-1] + b"?")          # DATA_CRC no longer matches
    with pytest.raises(st.BadJournal):
        s.append_batch(batch)
    # the journal before it is written and counted; nothing of it or after it
    assert (s.next_seq, s.held) == (2, 1)
    assert s.read(1, 10) == [(batch[0][0], batch[0][1])]
    assert s.append_batch(_batch_for(s, [200, 300])) == 3
    s.close()
    s = JournalStore.open(path)
    assert [c.seq for c, _ in s.read(1, 10)] == [1, 2, 3]
    s.close()


# -- recovery ----------------------------------------------------------------

def test_torn_record_at_the_end_is_not_returned(path):
    s = JournalStore.create(path, 4096)
    for _ in range(5):
        put(s, 100)
    last = put(s, 1000)         # seq 6 at 5 * 192 = 960
    s.sync()
    crash(s)
    poke(path, last.jofs + 64 + 900, bytes(100))      # its data tail never hit the disk
    with JournalStore.open(path) as s:
        assert (s.next_seq, s.jiptr, s.durable_seq) == (6, 960, 5)
        assert "DATA_CRC mismatch in seq 6" in s.recovery.end_reason
        assert [c.seq for c, _ in s.read(1, 10)] == [1, 2, 3, 4, 5]
        assert put(s, 10).jofs == 960       # the torn space is reused


def test_torn_control_data_ends_the_log(path):
    with JournalStore.create(path, 4096) as s:
        for _ in range(3):
            put(s, 0)
    poke(path, 128 + 30, b"\x00\xff")
    with JournalStore.open(path) as s:
        assert s.next_seq == 3 and "CCRC mismatch at 128" in s.recovery.end_reason


def test_corrupted_record_in_the_middle_stops_recovery_there(path):
    s = JournalStore.create(path, 4096)
    ctls = [put(s, 100) for _ in range(8)]
    s.sync()
    crash(s)
    poke(path, ctls[2].jofs + 64, b"\x55")            # seq 3's data
    with JournalStore.open(path) as s:
        rep = s.recovery
        assert (rep.tail_seq, rep.end_seq, rep.end_pos, rep.recovered) == (1, 3, ctls[2].jofs, 2)
        assert "seq 3" in rep.end_reason
        assert rep.scrubbed == 6                 # the damaged 3 and 4..8 cannot come back
        assert s.next_seq == 3 and len(s.read(1, 10)) == 2
        for c in ctls[2:]:
            assert peek(path, c.jofs, 64) == bytes(64)
        # ... but the whole records after the damage are kept, not destroyed:
        # they may be ACKed journals (the relay reports them; docs/store.md).
        assert rep.quarantined == (4, 8)
        assert rep.quarantine_path == f"{path}.quarantine"
    raw = open(f"{path}.quarantine", "rb").read()
    pos = 0
    for c in ctls[3:]:
        ctl = p.Control.unpack(raw[pos:pos + 64])
        assert ctl == c and raw[pos + 64:pos + 64 + 100] == payload(c.seq, 100)
        pos += 64 + ctl.data_len
    assert pos == len(raw)


def test_a_clean_end_quarantines_nothing(path):
    with JournalStore.create(path, 4096) as s:
        for _ in range(5):
            put(s, 100)
    with JournalStore.open(path) as s:
        assert s.next_seq == 6 and s.recovery.quarantined is None
    assert not os.path.exists(f"{path}.quarantine")


def test_lost_window_records_never_come_back(path):
    # 1..4 durable; 5..7 written but, as after a power cut, 5 is lost and
    # 6, 7 survived.  The relay reuses seq 5 with a journal of the same size:
    # at the next recovery the old 6 and 7 sit exactly where 6 and 7 would
    # be expected.  They were never acked and must not reappear.
    with JournalStore.create(path, 8192) as s:
        for _ in range(4):
            put(s, 100)
        s.sync()
        lost = put(s, 100)
        put(s, 100), put(s, 100)
    poke(path, lost.jofs, bytes(64))
    with JournalStore.open(path) as s:
        assert s.next_seq == 5
        scrubbed = s.recovery.scrubbed
        put(s, 100, address=999)            # the new seq 5, same size, same JOFS
    with JournalStore.open(path) as s:
        assert s.next_seq == 6
        assert s.read(5, 1)[0][0].address == 999
    assert scrubbed == 2                    # the old 6 and 7


def test_newest_superblock_torn_falls_back_to_the_other(path):
    s = JournalStore.create(path, 4096)             # superblock gen 1 in slot 1
    for _ in range(6):
        put(s, 10)
    s.release(2)                                    # gen 2 in slot 0
    s.release(4)                                    # gen 3 in slot 1
    crash(s)
    with open(path, "r+b") as f:
        f.seek(st.SB_SLOT + 20)
        f.write(b"\xff")
    with JournalStore.open(path) as s:
        # Gen 2: the space of 3 and 4 was not reused, so they are still there.
        assert s.recovery.superblock_gen == 2
        assert (s.tail_seq, s.next_seq) == (3, 7)


def test_no_valid_superblock_is_corrupt(path):
    with JournalStore.create(path, 1024) as s:
        s.release(0)
    with open(path, "r+b") as f:
        f.write(bytes(HEADER_SIZE))
    with pytest.raises(st.CorruptStore, match="no valid superblock"):
        JournalStore.open(path)


def test_truncated_file_is_corrupt(path):
    JournalStore.create(path, 4096).close()
    os.truncate(path, HEADER_SIZE + 1024)
    with pytest.raises(st.CorruptStore, match="shorter"):
        JournalStore.open(path)


def test_one_writer(path):
    with JournalStore.create(path, 1024):
        with pytest.raises(st.StoreLocked):
            JournalStore.open(path)


def test_closed_store_refuses_work(path):
    s = JournalStore.create(path, 1024)
    s.close()
    s.close()
    with pytest.raises(st.StoreClosed):
        s.sync()


# -- epoch and sequence base -------------------------------------------------

def test_set_epoch_is_persisted_and_fences(path):
    with JournalStore.create(path, 4096) as s:
        old = stamped(s, b"x")
        s.set_epoch(7)
        with pytest.raises(st.StaleEpoch):
            s.append(old, b"x")
        with pytest.raises(ValueError):
            s.set_epoch(1 << 32)
    with JournalStore.open(path) as s:
        assert s.epoch == 7
        assert put(s, 1).epoch == 7


def test_set_base_only_when_empty_and_old_seqs_never_return(path):
    with JournalStore.create(path, 4096) as s:
        for _ in range(5):
            put(s, 20)
        with pytest.raises(st.NotEmpty):
            s.set_base(100)
        s.release(5)
        # Back to 1 after a failover: the old 1..5 still lie at 0, 128, ...
        # with exactly the SEQ# and JOFS a recovery would look for.
        s.set_base(1)
        assert (s.next_seq, s.tail_seq, s.jiptr, s.durable_seq) == (1, 1, 0, 0)
    with JournalStore.open(path) as s:
        assert (s.next_seq, s.held) == (1, 0)
        s.set_base(1000)
        assert put(s, 3).seq == 1000
    with JournalStore.open(path) as s:
        assert (s.tail_seq, s.next_seq) == (1000, 1001)


# -- clean shutdown (docs/store.md, "Clean shutdown") -----------------------

def view(s: JournalStore) -> tuple:
    """Everything an open recovers: the ring state, durability and the journals."""
    return state(s), s.durable_seq, s.read(s.tail_seq, 1 << 20)


def workload(s: JournalStore, rng: random.Random, steps: int) -> None:
    """Appends and releases enough to wrap an 8 KiB ring with markers and exact fits."""
    for _ in range(steps):
        n = rng.choice([0, 1, 63, 64, 65, 500, 1000, 2000])
        try:
            s.placement(n)
        except st.StoreFull:
            s.release(rng.randint(s.tail_seq, s.next_seq - 1), persist=rng.random() < 0.5)
            continue
        put(s, n)
        if rng.random() < 0.2:
            s.release(rng.randint(s.tail_seq - 1, s.next_seq - 1), persist=False)


def superblocks(path) -> list:
    with open(path, "rb") as f:
        raw = f.read(HEADER_SIZE)
    return [st._Superblock.unpack(raw[0:st.SB_SLOT]), st._Superblock.unpack(raw[st.SB_SLOT:])]


def newest_slot(path) -> int:
    """File offset of the superblock slot an open would use."""
    sbs = superblocks(path)
    return max((sb.gen, i * st.SB_SLOT) for i, sb in enumerate(sbs) if sb is not None)[1]


@pytest.mark.parametrize("seed", range(6))
def test_clean_close_reopens_without_a_scan_to_what_a_scan_finds(path, seed):
    rng = random.Random(seed)
    s = JournalStore.create(path, 8192)
    workload(s, rng, 300)
    before = view(s)
    s.close()
    copy = f"{path}.copy"
    with open(path, "rb") as f, open(copy, "wb") as g:
        g.write(f.read())
    with JournalStore.open(path) as clean, JournalStore.open(copy, force_scan=True) as scanned:
        assert clean.recovery.clean and not scanned.recovery.clean
        assert (clean.recovery.scanned, clean.recovery.scrubbed) == (0, 0)
        assert scanned.recovery.scanned == scanned.held
        assert scanned.recovery.mark_rejected == "ignored: force_scan"
        assert view(clean) == view(scanned)
        assert view(clean)[::2] == before[::2] and clean.durable_seq == clean.next_seq - 1
        assert clean.recovery.end_seq == scanned.recovery.end_seq
        # Both go on alike: the same allocation from the same state.
        workload(clean, random.Random(seed + 100), 50)
        workload(scanned, random.Random(seed + 100), 50)
        assert view(clean) == view(scanned)


def test_a_crash_scans(path):
    s = JournalStore.create(path, 4096)
    for _ in range(5):
        put(s, 100)
    s.sync()
    crash(s)
    with JournalStore.open(path) as s:
        assert not s.recovery.clean and s.recovery.mark_rejected is None
        assert s.recovery.scanned == 5 and s.next_seq == 6


def test_the_mark_is_cleared_before_open_returns(path):
    with JournalStore.create(path, 4096) as s:
        put(s, 100)
    assert superblocks(path)[newest_slot(path) // st.SB_SLOT].clean
    s = JournalStore.open(path)
    assert s.recovery.clean
    assert not any(sb.clean for sb in superblocks(path) if sb.gen == max(
        b.gen for b in superblocks(path) if b is not None))
    crash(s)
    with JournalStore.open(path) as s:          # nothing happened in between, but: no mark
        assert not s.recovery.clean and s.next_seq == 2


def test_appends_after_a_clean_start_then_a_crash_scan_and_keep_every_acked_journal(path):
    with JournalStore.create(path, 4096) as s:
        ctls = [put(s, 100) for _ in range(5)]
    s = JournalStore.open(path)
    assert s.recovery.clean
    ctls += [put(s, 100) for _ in range(5)]
    assert s.sync() == 10                       # acked: 6..10 are after the old mark
    crash(s)
    with JournalStore.open(path) as s:
        assert not s.recovery.clean and s.recovery.scanned == 10
        assert [c for c, _ in s.read(1, 20)] == ctls


def test_a_damaged_journal_after_a_clean_stop_gets_the_full_recovery(path):
    """The mark says where the log ends, not that every record is intact:
    the clean open does not read journal data.  A read that finds the damage
    leaves no mark at close, so the next open scans and quarantines."""
    with JournalStore.create(path, 4096) as s:
        ctls = [put(s, 100) for _ in range(8)]
    poke(path, ctls[2].jofs + 64, b"\x55")            # seq 3's data
    with JournalStore.open(path) as s:
        assert s.recovery.clean and s.next_seq == 9
        with pytest.raises(st.CorruptStore, match="seq 3"):
            s.read(1, 10)
    with JournalStore.open(path) as s:
        rep = s.recovery
        assert not rep.clean and (rep.end_seq, rep.quarantined) == (3, (4, 8))


def _rewrite_newest(path, **changes) -> None:
    at = newest_slot(path)
    sb = dataclasses.replace(superblocks(path)[at // st.SB_SLOT], **changes)
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(sb.pack())


def _flip_mark_byte(path) -> None:
    with open(path, "r+b") as f:
        f.seek(newest_slot(path) + 72)            # NEXT_SEQ, under MCRC only
        f.write(b"\x07")


def _version_1(path) -> None:
    """The newest superblock as code before the mark wrote it (64 bytes, VERSION 1)."""
    at = newest_slot(path)
    sb = superblocks(path)[at // st.SB_SLOT]
    raw = st._SB.pack(st.SB_MAGIC, 1, HEADER_SIZE, sb.gen, sb.size, sb.joptr, sb.tail_seq,
                      sb.wrap_at, sb.epoch)
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(raw + st._U32.pack(p.crc32c(raw)) + bytes(64))


@pytest.mark.parametrize("doubt,why", [
    (_flip_mark_byte, None),                                          # MCRC fails: no mark
    (_version_1, None),                                               # an old volume
    (lambda path: _rewrite_newest(path, jiptr=8192), "does not fit"),  # geometry
    (lambda path: _rewrite_newest(path, next_seq=4), "records end at"),
    (lambda path: _rewrite_newest(path, next_seq=7), "nothing written"),
    (lambda path: _rewrite_newest(path, jiptr=128), "records end at"),
], ids=["mark-crc", "version-1", "jiptr-outside", "next-seq-short", "next-seq-long",
        "jiptr-wrong"])
def test_any_doubt_about_the_mark_means_a_full_scan(path, doubt, why):
    with JournalStore.create(path, 8192) as s:
        ctls = [put(s, 100) for _ in range(5)]
    doubt(path)
    with JournalStore.open(path) as s:
        rep = s.recovery
        assert not rep.clean and rep.scanned == 5 and s.next_seq == 6
        assert rep.mark_rejected is None if why is None else why in rep.mark_rejected
        assert [c for c, _ in s.read(1, 10)] == ctls
    with JournalStore.open(path) as s:          # and a clean close marks it again (version 2)
        assert s.recovery.clean and s.next_seq == 6


def test_code_that_reads_only_version_1_refuses_a_version_2_superblock(path):
    """Its SCRC check passes and its VERSION check fails (a loud refusal),
    rather than the slot looking torn and an older one being used."""
    with JournalStore.create(path, 4096):
        pass
    with open(path, "rb") as f:
        raw = f.read(64)
    assert p.crc32c(raw[:60]) == st._U32.unpack_from(raw, 60)[0]
    assert st._SB.unpack_from(raw)[1] == 2


# -- group commit ------------------------------------------------------------

def test_group_commit_shares_fsyncs(path):
    async def main(s):
        gc = GroupCommitter(s)
        done = []

        async def writer(i):
            await asyncio.sleep(0)
            data = payload(s.next_seq, 50)
            ctl = stamped(s, data)
            await gc.append_durable(ctl, data)
            assert s.durable_seq >= ctl.seq
            done.append(ctl.seq)

        await asyncio.gather(*(writer(i) for i in range(64)))
        await gc.aclose()
        return gc, done

    with JournalStore.create(path, 1 << 16) as s:
        gc, done = asyncio.run(main(s))
        assert sorted(done) == list(range(1, 65))
        assert gc.appends == 64 and 1 <= gc.fsyncs < 64
        assert s.durable_seq == 64


def test_group_commit_errors_go_to_their_caller(path):
    async def main(s):
        gc = GroupCommitter(s)
        await gc.append_durable(*_next(s, 500))
        with pytest.raises(st.StoreFull):
            await gc.append_durable(*_next(s, 500))
        await gc.aclose()

    def _next(s, n):
        data = payload(s.next_seq, n)
        return p.Control(seq=s.next_seq, jofs=s.jiptr, length=n, data_len=n,
                         data_crc=p.crc32c(data), kind=p.Kind.UPDATE).with_ccrc(), data

    with JournalStore.create(path, 1024) as s:
        asyncio.run(main(s))
        assert s.next_seq == 2


def _sync_threads(s, slow: set[int] = frozenset()):
    """Wrap ``s.sync``: record the thread of each call; calls numbered in
    ``slow`` (from 0) take 0.3 s more, a disk turning busy."""
    threads = []
    real = s.sync

    def sync(*a, **kw):
        threads.append(threading.get_ident())
        if len(threads) - 1 in slow:
            time.sleep(0.3)
        return real(*a, **kw)
    s.sync = sync
    return threads


def _sequential(s, gc, n):
    async def main():
        for _ in range(n):
            data = payload(s.next_seq, 100)
            ctl = stamped(s, data)
            await gc.append_durable(ctl, data)
            assert s.durable_seq == ctl.seq      # durable when it returns, either way
        await gc.aclose()
    asyncio.run(main())


def test_group_commit_syncs_in_the_event_loop_once_the_disk_is_fast(path):
    with JournalStore.create(path, 1 << 16) as s:
        threads = _sync_threads(s)
        gc = GroupCommitter(s, inline_below=1.0)
        _sequential(s, gc, 20)
        main = threading.get_ident()
        # the first INLINE_HISTORY in worker threads (no history yet), then here
        assert [t == main for t in threads] == [False] * commit.INLINE_HISTORY + [True] * 12
        assert (gc.fsyncs, gc.inline_syncs) == (20, 12)


def test_a_slow_sync_puts_the_syncs_back_in_threads(path):
    with JournalStore.create(path, 1 << 16) as s:
        h = commit.INLINE_HISTORY
        threads = _sync_threads(s, slow={h + 2})
        gc = GroupCommitter(s, inline_below=0.15)    # far from both, on a loaded machine
        _sequential(s, gc, 2 * h + 6)
        main = threading.get_ident()
        here = [t == main for t in threads]
        # inline from sync h on; the slow one (h + 2, inline) sends the next
        # h to threads, until it leaves the window; then inline again
        assert here == [False] * h + [True] * 3 + [False] * h + [True] * 3


def test_inline_syncs_off(path):
    with JournalStore.create(path, 1 << 16) as s:
        threads = _sync_threads(s)
        before = {k: (PERF[k].n, PERF[k].total) for k in _SPLIT + ("relay.fsync",)}
        gc = GroupCommitter(s, inline_below=0)
        _sequential(s, gc, 12)
        assert threading.get_ident() not in threads and gc.inline_syncs == 0
        # each threaded sync's time is split into its three waits, which add up
        n = {k: PERF[k].n - before[k][0] for k in before}
        assert set(n.values()) == {12}
        parts = sum(PERF[k].total - before[k][1] for k in _SPLIT)
        assert 0 < parts <= PERF["relay.fsync"].total - before["relay.fsync"][1]


_SPLIT = ("relay.fsync_to_thread", "relay.fsync_syscall", "relay.fsync_to_loop")


def test_durability_none_does_not_fsync(path):
    async def main(s):
        gc = GroupCommitter(s, Durability.NONE)
        for _ in range(10):
            data = payload(s.next_seq, 10)
            await gc.append_durable(stamped(s, data), data)
        await gc.aclose()
        return gc

    with JournalStore.create(path, 4096) as s:
        gc = asyncio.run(main(s))
        assert (gc.fsyncs, s.durable_seq, s.next_seq) == (0, 0, 11)


def test_bench_append(tmp_path):
    out = bench_append(tmp_path / "b", 1 << 16, 1000, 200, fsync=True, batch=10)
    assert out["records"] == 200 and out["fsyncs"] >= 20
    assert out["records_per_s"] > 0 and out["mb_per_s"] > 0
    assert not (tmp_path / "b").exists()


def test_a_preallocated_ring_is_written_zeros_and_recovers_like_a_sparse_one(tmp_path):
    """``preallocate`` (what the relay uses): every block of the ring is on
    disk before the first append, holding zeros, and the journals, a crash
    and the recovery scan come out exactly as on a sparse ring."""
    size = (3 << 20) + 4096          # not a multiple of the 1 MiB chunk
    stores = {}
    for name, pre in (("sparse", False), ("pre", True)):
        path = tmp_path / name
        s = JournalStore.create(path, size, preallocate=pre)
        st_ = os.stat(path)
        assert st_.st_size == HEADER_SIZE + size
        if pre:
            assert st_.st_blocks * 512 >= HEADER_SIZE + size       # allocated, no hole
            assert peek(path, 0, size) == bytes(size)
        for n in (0, 1, 4096, 70000, 5):
            put(s, n)
        crash(s)
        stores[name] = JournalStore.open(path)
    sparse, pre = stores["sparse"], stores["pre"]
    assert state(pre) == state(sparse) and pre.next_seq == 6
    assert pre.read(1, 5) == sparse.read(1, 5)
    sparse.close()
    pre.close()


def test_create_never_overwrites(path):
    with JournalStore.create(path, 1024) as s:
        put(s, 10)
    with pytest.raises(FileExistsError):
        JournalStore.create(path, 4096)
    assert os.listdir(path.parent) == ["jnl"]       # no temporary left behind
    with JournalStore.open(path) as s:
        assert (s.size, s.next_seq) == (1024, 2)


def test_store_mirrors_the_engine_model_byte_for_byte(path):
    # The relay's flow: JNLWR to the engine, stamp from its ACK, store at JOFS.
    # Pointers must agree after every step and the ring file must hold the
    # very bytes of the engine's ring (records, markers, padding).
    from tricopy.host.engine.model import EngineModel

    rng = random.Random(11)
    size = 4096
    eng = EngineModel(size, clock=lambda: 5000)
    s = JournalStore.create(path, size)
    full = wrapped = 0
    for step in range(1500):
        if rng.random() < 0.65:
            n = rng.choice([0, 1, 64, 100, 300, 700, 1500])
            data = payload(step, n)
            ctl = p.Control(address=step, length=n, data_len=n, data_crc=p.crc32c(data),
                            kind=p.Kind.UPDATE, tag=step)
            (answer,) = eng.handle(p.Frame(p.FrameType.JNLWR, p.journal_body(ctl, data)))
            ack = p.Ack.from_frame(answer)
            if ack.status == p.Status.FULL:
                full += 1
                with pytest.raises(st.StoreFull):
                    s.placement(n)
                continue
            assert s.placement(n) == ack.jofs
            s.append(dataclasses.replace(ctl, seq=ack.seq, time=ack.time, jofs=ack.jofs).with_ccrc(),
                     data)
        elif s.held:
            upto = rng.randint(s.tail_seq - 1, s.next_seq - 1)
            (answer,) = eng.handle(p.Release(upto).frame())
            assert s.release(upto) == p.Ack.from_frame(answer).jofs
        assert state(s) == (eng.jiptr, eng.joptr, eng.used, eng.wrap_at, eng.tail_seq,
                            eng.next_seq)
        wrapped += s.wrap_at < size
    assert peek(path, 0, size) == eng.ring()
    assert full > 20 and wrapped > 20 and s.next_seq > 300
    s.close()


def test_two_syncs_in_flight_each_covering_only_what_came_before_it(path, monkeypatch):
    """Journal 1 appended, its sync starts; journal 2 appended, a second sync
    starts at once on another open file description.  When the first ends,
    only journal 1 is durable (journal 2 came after it began); the second
    makes journal 2 durable."""
    s = JournalStore.create(path, 1 << 16)
    began = [threading.Event(), threading.Event()]
    go = [threading.Event(), threading.Event()]
    fds = []
    real = st.fileio.fdatasync

    def held(fd):
        n = len(fds)
        if n >= 2:
            return real(fd)       # close()'s own
        fds.append(fd)
        began[n].set()
        assert go[n].wait(10)
        real(fd)
    monkeypatch.setattr(st.fileio, "fdatasync", held)

    async def main():
        gc = GroupCommitter(s)
        put(s, 100)
        first = asyncio.create_task(gc.wait_durable(1))
        assert await asyncio.to_thread(began[0].wait, 10)
        put(s, 100)
        second = asyncio.create_task(gc.wait_durable(2))
        assert await asyncio.to_thread(began[1].wait, 10)
        assert fds[0] != fds[1] and s.durable_seq == 0
        go[0].set()
        assert await first == 1 and s.durable_seq == 1
        go[1].set()
        assert await second == 2
        await gc.aclose()
    asyncio.run(main())
    s.close()


def test_read_stops_at_max_bytes_but_gives_at_least_one_journal(path):
    """The forwarder's read holds at most FORWARD_BYTES of journals in memory."""
    s = JournalStore.create(path, 1 << 20)
    for _ in range(8):
        put(s, 4000)
    r = st.record_size(4000)
    assert len(s.read(1, 8)) == 8
    assert [c.seq for c, _ in s.read(2, 8, max_bytes=3 * r)] == [2, 3, 4]
    assert [c.seq for c, _ in s.read(2, 8, max_bytes=3 * r - 1)] == [2, 3]
    assert [c.seq for c, _ in s.read(2, 8, max_bytes=100)] == [2]
    s.close()
