"""Simulated power loss (docs/reliability.md).

SIGKILL keeps the page cache, so tests/test_store_crash.py cannot tell an
fdatasync from a no-op.  Here the journal store, the state files and the
secondary's SVOLs run on a PowerCutDisk (host/disk/powercut.py): every write not
yet synced may be dropped, torn at 512-byte sectors or reordered at a cut,
and folder changes not yet synced may be lost.  Each test checks an
invariant over every cut image, and the mutant tests show the checks fail
when a sync is removed or the secondary saves its restore point too early.

Sizes: ``TRICOPY_POWERCUTS=N`` sets the cuts of each main run (default a
few hundred, the whole file well under a minute); ``TRICOPY_POWERCUT_SEED=S``
makes every run use seed S (a failure message names its seed).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import time

import pytest

from tricopy.host.disk import fileio
from tricopy.host.disk.powercut import PowerCutDisk, PowerLost, UntrackedWrite
from tricopy.host.journal.commit import GroupCommitter
from tricopy.host.secondary import site as secondary

from powercut_harness import (CleanRestartRun, GroupCommitRun, PrefixImages, Result, SecondaryRun,
                              StateFileRun, StoreRun, check_secondary, check_state,
                              check_store, journal, open_group, close_group, restore_step,
                              sec_journal,
                              state_version)

CUTS = int(os.environ.get("TRICOPY_POWERCUTS", "0"))
SEED = os.environ.get("TRICOPY_POWERCUT_SEED")


def seeds(base: int, n: int) -> list[int]:
    return [int(SEED)] if SEED else [base + i for i in range(n)]


def run_all(cls, base: int, tmp_path, cuts: int, nseeds: int = 4, scaled: bool = True,
            **kw) -> Result:
    """Split ``cuts`` over a few seeds.  TRICOPY_POWERCUTS replaces ``cuts``
    (not for mutants: they stop mattering once caught), with a seed per 2,500."""
    total = Result()
    if CUTS and scaled:
        cuts, nseeds = CUTS, max(nseeds, CUTS // 2500)
    ss = seeds(base, nseeds)
    per = max(1, cuts // len(ss))
    for seed in ss:
        total.add(cls(seed, tmp_path, cuts=per, **kw).go())
    return total


def report(label: str, r: Result) -> None:
    looks = (f", {r.consistent_looks} instants consistent, {r.fenced} rightly not"
             if r.consistent_looks else "")
    instant = f", {len(r.instant)} consistent but not a prefix" if r.instant else ""
    print(f"\n{label}: {r.cuts} cuts in {r.lives} lives, {r.checked} checked{looks}, "
          f"{len(r.violations)} violations{instant}, {r.seconds:.1f} s")


def assert_clean(r: Result) -> None:
    assert not r.violations, (f"{len(r.violations)} violations in {r.cuts} cuts; replay one "
                              f"with TRICOPY_POWERCUT_SEED=<seed>:\n"
                              + "\n".join(r.violations[:10]))


# -- the disk itself ----------------------------------------------------------------

def _write(disk_root, name, data, off=0, sync=False):
    fd = fileio.open(os.path.join(disk_root, name), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fileio.pwrite(fd, data, off)
        if sync:
            fileio.fsync(fd)
    finally:
        fileio.close(fd)


def test_synced_data_survives_and_unsynced_is_kept_dropped_or_torn_by_sector(tmp_path):
    disk = PowerCutDisk(tmp_path)
    old, new = bytes([1]) * 4096, bytes([2]) * 4096
    with fileio.use(disk):
        _write(tmp_path, "f", old, sync=True)
        fileio.fsync_dir(tmp_path)
        _write(tmp_path, "f", new)
    outcomes = set()
    for i in range(300):
        img = disk.cut(random.Random(i))
        data = img.files["f"]
        assert len(data) == 4096
        sectors = [data[k:k + 512] for k in range(0, 4096, 512)]
        assert all(s in (old[:512], new[:512]) for s in sectors), "a sector is torn inside"
        outcomes.add("kept" if data == new else "dropped" if data == old else "torn")
    assert outcomes == {"kept", "dropped", "torn"}
    assert disk.cut(random.Random(5)) == disk.cut(random.Random(5)), "not deterministic"
    with fileio.use(disk):
        fd = fileio.open(tmp_path / "f", os.O_RDWR)
        fileio.fdatasync(fd)
        fileio.close(fd)
    assert all(disk.cut(random.Random(i)).files["f"] == new for i in range(50))


def test_a_sector_holds_a_version_the_page_cache_held(tmp_path):
    # Two 64-byte writes in one sector: the second may land without the
    # first only as part of the whole sector, which then holds both.
    disk = PowerCutDisk(tmp_path)
    with fileio.use(disk):
        _write(tmp_path, "f", bytes(512), sync=True)
        fileio.fsync_dir(tmp_path)
        _write(tmp_path, "f", b"A" * 64, 0)
        _write(tmp_path, "f", b"B" * 64, 64)
    seen = {disk.cut(random.Random(i)).files["f"][:128] for i in range(200)}
    assert seen == {bytes(128), b"A" * 64 + bytes(64), b"A" * 64 + b"B" * 64}


def test_unsynced_names_may_be_lost_and_synced_ones_stay(tmp_path):
    disk = PowerCutDisk(tmp_path)
    with fileio.use(disk):
        _write(tmp_path, "a", b"old", sync=True)
        fileio.fsync_dir(tmp_path)
        _write(tmp_path, "new", b"x" * 10, sync=True)     # data synced, name not
        _write(tmp_path, "b", b"new", sync=True)
        fileio.replace(tmp_path / "b", tmp_path / "a")      # rename not synced
    names = [tuple(sorted(disk.cut(random.Random(i)).files.items())) for i in range(100)]
    assert any(dict(n).get("a") == b"old" for n in names), "a lost rename never seen"
    assert any(dict(n).get("a") == b"new" and "b" not in dict(n) for n in names)
    assert any("new" not in dict(n) for n in names), "a lost create never seen"
    with fileio.use(disk):
        fileio.fsync_dir(tmp_path)
    for i in range(20):
        files = disk.cut(random.Random(i)).files
        assert files == {"a": b"new", "new": b"x" * 10}


def test_sync_covers_only_what_was_written_before_it_began(tmp_path):
    disk = PowerCutDisk(tmp_path)
    racing = []

    def on_sync(n, phase):
        if phase == "before" and not racing:       # another thread writes meanwhile
            racing.append(1)
            fileio.pwrite(fd, b"late", 512)
    with fileio.use(disk):
        fd = fileio.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o644)
        fileio.fsync_dir(tmp_path)
        fileio.pwrite(fd, b"early", 0)
        disk.on_sync = on_sync
        fileio.fdatasync(fd)
        disk.on_sync = None
        fileio.close(fd)
    imgs = [disk.cut(random.Random(i)).files["f"] for i in range(100)]
    assert all(img[:5] == b"early" for img in imgs)
    assert any(len(img) < 516 or img[512:516] != b"late" for img in imgs)


def test_appends_at_the_file_position_are_tracked_too(tmp_path):
    # fileio.write (the store's quarantine file, O_APPEND): lost or kept like pwrite.
    disk = PowerCutDisk(tmp_path)
    with fileio.use(disk):
        fd = fileio.open(tmp_path / "q", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        fileio.write(fd, b"a" * 600)
        fileio.fsync(fd)
        fileio.fsync_dir(tmp_path)
        fileio.write(fd, b"b" * 600)
        fileio.close(fd)
    seen = {disk.cut(random.Random(i)).files["q"] for i in range(100)}
    assert all(img[:600] == b"a" * 600 for img in seen)
    assert b"a" * 600 + b"b" * 600 in seen and b"a" * 600 in seen


def test_power_off_fails_every_call_and_writes_behind_the_layer_are_caught(tmp_path):
    disk = PowerCutDisk(tmp_path)
    with fileio.use(disk):
        fd = fileio.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o644)
        disk.power_off()
        with pytest.raises(PowerLost):
            fileio.pwrite(fd, b"x", 0)
        with pytest.raises(PowerLost):
            fileio.fdatasync(fd)
        fileio.close(fd)                 # close always works
    assert fileio.backend() is fileio.OS and fileio.pwrite is os.pwrite
    disk = PowerCutDisk(tmp_path)
    (tmp_path / "f").write_bytes(b"behind its back")
    with pytest.raises(UntrackedWrite):
        disk.cut(random.Random(0))
    with pytest.raises(ValueError):
        PowerCutDisk(tmp_path, mutations={"fsinc"})


def test_every_sync_point_of_a_run_gets_a_cut(tmp_path):
    r = StateFileRun(7, tmp_path, cuts=60, p=0.0, every_sync=True, life_events=60).go()
    assert_clean(r)
    # atomic_write: two syncs (file, folder), a cut before and after each.
    assert r.cuts >= 60


def test_no_cut_once_the_power_is_off(tmp_path):
    # Two threads may reach the hooks at once (the workload, and a worker
    # thread's sync): the second to come, after a final cut, takes no image
    # of its own, and the next life starts from the final one.
    run = StateFileRun(1, tmp_path, cuts=1)
    disk = PowerCutDisk(tmp_path)
    try:
        final = run.cut(disk, final=True)
        for again in (True, False):
            with pytest.raises(PowerLost):
                run.cut(disk, final=again)
    finally:
        shutil.rmtree(run._scratch, ignore_errors=True)     # go() would
    assert run.result.cuts == 1 and run.final_image is final


# -- state files ----------------------------------------------------------------------

def test_state_file_is_whole_old_or_new_after_any_cut(tmp_path):
    r = run_all(StateFileRun, 100, tmp_path, 300, nseeds=3, p=0.2, life_events=60)
    report("state files", r)
    assert_clean(r)
    assert r.cuts >= 300


@pytest.mark.parametrize("mutation", ["fsync", "dirsync"])
def test_state_file_check_catches_a_missing_sync(tmp_path, mutation):
    # fsync: the rename can land before the data (an empty or torn file);
    # dirsync: atomic_write returns before its rename is durable.
    r = run_all(StateFileRun, 200, tmp_path, 200, nseeds=2, p=0.2, life_events=60,
                mutations={mutation}, scaled=False)
    report(f"state files, no {mutation}", r)
    assert r.violations, f"no {mutation}, yet {r.cuts} cuts found nothing"


# -- the relay's journal store ----------------------------------------------------------

@pytest.mark.parametrize("lazy", [False, True], ids=["eager-release", "lazy-release"])
def test_store_keeps_every_acked_journal_through_power_cuts(tmp_path, lazy):
    t0 = time.monotonic()
    r = run_all(StoreRun, 1000 if lazy else 2000, tmp_path, 1500, lazy=lazy)
    report(f"journal store ({'lazy' if lazy else 'eager'} release)", r)
    assert_clean(r)
    assert r.cuts >= 1500
    assert r.checked > 5000, "too few acked journals were there to check"
    assert CUTS or time.monotonic() - t0 < 120, "too slow for the suite"


def test_store_at_every_sync_point(tmp_path):
    r = run_all(StoreRun, 3000, tmp_path, 200, nseeds=2, p=0.0, every_sync=True,
                life_events=150)
    report("journal store, every sync point", r)
    assert_clean(r)


@pytest.mark.parametrize("lazy,inline", [(False, True), (True, True), (False, False),
                                         (True, False)],
                         ids=["eager-release", "lazy-release", "eager-release-threads",
                              "lazy-release-threads"])
def test_group_commit_store_through_power_cuts(tmp_path, lazy, inline):
    # Cuts land in both threads, with an fdatasync in flight (threads: every
    # sync in a worker thread; else most run in the event loop, as they do at
    # the relay on a fast disk); lazy: as the relay runs it, releases in
    # memory and a task persisting them.
    r = run_all(GroupCommitRun, 4000, tmp_path, 150, nseeds=2, p=0.02, lazy=lazy, inline=inline)
    report(f"journal store, group commit ({'lazy' if lazy else 'eager'} release"
           f"{'' if inline else ', threads'})", r)
    assert_clean(r)
    assert r.checked > 100


@pytest.mark.parametrize("lazy", [False, True], ids=["eager-release", "lazy-release"])
def test_batched_appends_through_power_cuts(tmp_path, lazy):
    # The relay's ingest of JNLWR batches: up to 6 journals per append_batch
    # (one pwritev per run, torn or dropped whole at a cut like any write),
    # all acked after one wait for the group commit's fdatasync.
    r = run_all(GroupCommitRun, 4500, tmp_path, 150, nseeds=2, p=0.02, lazy=lazy, batch=6)
    report(f"journal store, batches, group commit ({'lazy' if lazy else 'eager'} release)", r)
    assert_clean(r)
    assert r.checked > 100


def test_batch_check_catches_a_batch_acked_before_its_fdatasync(tmp_path, monkeypatch):
    """The mutant: the group commit starts the fdatasync that covers the
    batch but returns before it ends, so the batch is acked while its
    journals may still be only in the page cache."""
    async def not_waiting(self, seq):
        if not self._flushes:
            self._start(self._fds[0])
        await asyncio.sleep(0)
        return self.store.durable_seq
    monkeypatch.setattr(GroupCommitter, "wait_durable", not_waiting)
    r = run_all(GroupCommitRun, 4600, tmp_path, 100, nseeds=2, p=0.02, batch=6, scaled=False)
    report("journal store, batches acked before the fdatasync", r)
    assert any("acked" in v for v in r.violations), \
        f"batches acked before their fdatasync, yet {r.cuts} cuts lost no acked journal"


@pytest.mark.parametrize("lazy,mutations", [
    (False, {"fdatasync", "fsync"}), (True, {"fdatasync", "fsync"}), (False, {"dirsync"})],
    ids=["no-fdatasync-eager", "no-fdatasync-lazy", "no-dirsync"])
def test_store_check_catches_a_missing_sync(tmp_path, lazy, mutations):
    # no fdatasync: acked journals are lost; no folder fsync: the file made
    # by create() (linked into place) can vanish with its acked journals.
    r = run_all(StoreRun, 5000, tmp_path, 200, nseeds=2, lazy=lazy, mutations=mutations,
                scaled=False)
    report(f"journal store, no {'/'.join(sorted(mutations))}", r)
    assert any("acked" in v for v in r.violations), \
        f"no {mutations}, yet {r.cuts} cuts lost no acked journal"


@pytest.mark.parametrize("mutant", ["no-scrub", "no-overlap-check"])
def test_store_check_catches_store_logic_mutants(tmp_path, monkeypatch, mutant):
    """Not only syncs: the recovery scrub (docs/store.md, Recovery 3) and the
    lazy release's "persist before reusing the space" (Lazy release 1)."""
    from tricopy.host.journal.store import JournalStore
    if mutant == "no-scrub":
        monkeypatch.setattr(JournalStore, "_scrub", lambda self, *a, **kw: 0)
        r = StoreRun(1, tmp_path, cuts=1000).go()
        assert any("resurrected" in v for v in r.violations), r.cuts
    else:
        monkeypatch.setattr(JournalStore, "_overlaps_unpersisted", lambda self, a, b: False)
        r = StoreRun(1, tmp_path, cuts=300, lazy=True).go()
        assert any("acked journals" in v for v in r.violations), r.cuts
    report(f"journal store, {mutant}", r)


def test_group_commit_check_catches_a_superblock_counted_before_its_sync(tmp_path, monkeypatch):
    """persist_soon() writes the release's superblock and leaves its
    fdatasync to the group commit.  A store that counts that superblock at
    once (reuses the space it frees, reports the release durable) before an
    fdatasync covered it must be caught: by a lost acked journal or a
    release reported durable that a cut took back."""
    from tricopy.host.journal.store import JournalStore
    soon = JournalStore.persist_soon

    def counted_at_once(self):
        wrote = soon(self)
        if wrote:
            self._sb, self._sb_pending = self._sb_pending, None
        return wrote

    monkeypatch.setattr(JournalStore, "persist_soon", counted_at_once)
    total = Result()
    for i in range(6):     # thread timing: not replayable; each seed catches it ~3 times in 4
        total.add(GroupCommitRun(4600 + i, tmp_path / str(i), cuts=100, p=0.02, lazy=True,
                                 inline=i % 2 == 0).go())
    assert any("acked journals" in v or "reported durable" in v for v in total.violations)
    report("journal store, superblock counted before its sync", total)


# -- the clean-shutdown mark (docs/store.md, "Clean shutdown") ----------------------

@pytest.mark.parametrize("lazy", [False, True], ids=["eager-release", "lazy-release"])
def test_clean_restarts_through_power_cuts(tmp_path, lazy):
    """Close (the mark), reopen (trusted, cleared), append, sync, close ...:
    a cut on both sides of every sync (those of close and of the clearing
    open among them) and at a fifth of the writes, lives chained through the
    cut images.  No acked journal may be lost, and every image whose open
    trusts a mark must open to what a recovery scan of it finds
    (check_store), so a stale mark or one ahead of its journals is caught."""
    r = run_all(CleanRestartRun, 7000 if lazy else 7100, tmp_path, 1500, nseeds=3, p=0.2,
                every_sync=True, life_events=150, lazy=lazy)
    report(f"journal store, clean restarts ({'lazy' if lazy else 'eager'} release)", r)
    assert_clean(r)
    assert r.clean_opens >= 20, "too few clean starts in the workload"
    assert r.clean_checks >= 50, "too few cut images with a mark to compare"
    assert r.checked > 5000


def _mark_before_the_data_sync(self):
    # close() without its first fdatasync: the mark is written together
    # with the journals it counts (docs/store.md, "Clean shutdown", rule 1).
    self._write_superblock(clean=True, jiptr=self._jiptr, next_seq=self._next_seq)


@pytest.mark.parametrize("mutant", ["mark-not-cleared", "mark-before-data-sync"])
def test_clean_restart_check_catches_mark_mutants(tmp_path, monkeypatch, mutant):
    from tricopy.host.journal.store import JournalStore
    if mutant == "mark-not-cleared":
        monkeypatch.setattr(JournalStore, "_clear_mark", lambda self: None)
    else:
        monkeypatch.setattr(JournalStore, "_write_mark", _mark_before_the_data_sync)
    # Cuts at sync points only: more clean restarts per cut.
    r = run_all(CleanRestartRun, 7200, tmp_path, 1200, nseeds=2, p=0.0, every_sync=True,
                life_events=150, scaled=False)
    report(f"journal store, clean restarts, {mutant}", r)
    assert any("trusted a clean-shutdown mark" in v for v in r.violations), r.cuts
    if mutant == "mark-not-cleared":
        assert any("acked journals" in v for v in r.violations), r.violations[:5]


def test_store_checker_on_known_bad_histories(tmp_path):
    """The checker must flag a lost ack, an invented journal, a changed byte,
    a release gone backwards and a stale clean-shutdown mark trusted
    (Jepsen-style: test the checker too)."""
    from tricopy.host.journal.store import HEADER_SIZE, SB_SLOT, JournalStore, _Superblock
    path = tmp_path / "jnl"
    expected = {}

    def append(s, seqs):
        for seq in seqs:
            jofs = s.placement(journal(seq, 0)[0].data_len)
            expected[seq] = jofs
            s.append(*journal(seq, jofs))
        s.sync()

    s = JournalStore.create(path, 64 << 10)
    append(s, range(1, 11))
    s.release(3)
    os.close(s._fd)                 # a crash: no clean-shutdown mark in ``good``
    good = path.read_bytes()
    assert check_store(path, 10, 3, 3, expected)[0] == []
    # A history that says 12 was acked (it never reached the disk).
    assert any("acked journals 11..12 lost" in v for v in check_store(path, 12, 3, 3, expected)[0])
    # A history without seq 9 (the disk "invents" it).
    del expected[9]
    assert any("seq 9" in v for v in check_store(path, 8, 3, 3, expected)[0])
    expected[9] = 999 * 64
    assert any("seq 9" in v and "never appended" in v
               for v in check_store(path, 8, 3, 3, expected)[0])
    del expected[9]
    # The history says the release to 5 was durable; the disk says 3.
    assert any("TAIL_SEQ 4" in v for v in check_store(path, 10, 5, 5, expected)[0])
    # The history never asked for a release: the disk released anyway.
    assert any("no release went past" in v for v in check_store(path, 10, 0, 0, expected)[0])
    # A byte of acked seq 6 changed: recovery ends there, acked 6..10 lost.
    raw = bytearray(good)
    raw[HEADER_SIZE + expected[6] + 70] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert any("acked journals 6..10 lost" in v for v in check_store(path, 10, 3, 3, expected)[0])
    # A stale mark: closed cleanly at 10, reopened, 11..12 acked, then the
    # superblock that cleared the mark is lost (both slots hold the mark).
    path.write_bytes(good)
    JournalStore.open(path).close()
    marked = path.read_bytes()
    s = JournalStore.open(path)
    append(s, range(11, 13))
    os.close(s._fd)
    slots = [marked[0:SB_SLOT], marked[SB_SLOT:2 * SB_SLOT]]
    mark = max(slots, key=lambda b: getattr(_Superblock.unpack(b), "gen", -1))
    assert _Superblock.unpack(mark).clean
    path.write_bytes(mark + mark + path.read_bytes()[2 * SB_SLOT:])
    found = check_store(path, 12, 3, 3, expected)[0]
    assert any("acked journals 11..12 lost" in v for v in found), found
    assert any("trusted a clean-shutdown mark" in v for v in found), found
    path.unlink()
    assert check_store(path, 4, 3, 3, expected)[0] and not check_store(path, 0, 0, 0, {})[0]


def test_state_checker_on_known_bad_histories():
    assert check_state(state_version(3), 3, 4) == [] and check_state(state_version(4), 3, 4) == []
    assert check_state(state_version(2), 3, 4)                 # went back
    assert check_state(state_version(4)[:100], 3, 4)           # torn
    assert check_state(None, 0, 1) and check_state(None, -1, 0) == []


# -- the secondary -------------------------------------------------------------------

@pytest.mark.parametrize("native", [False, True], ids=["python", "native"])
def test_secondary_restore_point_and_replay_through_power_cuts(tmp_path, native):
    # native: the journals come through the native loop (host/native/restore.py),
    # which stages and writes those it takes; the rest go the Python way
    r = run_all(SecondaryRun, 6000, tmp_path, 300, nseeds=3, p=0.03, native=native)
    report(f"secondary restore{', native loop' if native else ''}", r)
    assert_clean(r)
    assert r.checked >= 300
    if native:      # the loop took many journals (the rest: MARK, ZERO, TRIM and after)
        assert r.native_staged > 1000 and r.native_staged > r.received / 3, \
            (r.native_staged, r.received)


def test_secondary_at_every_sync_point(tmp_path):
    # SVOL fsyncs, the restore point's file and folder syncs: a cut on each side.
    r = run_all(SecondaryRun, 6100, tmp_path, 150, nseeds=2, p=0.0, every_sync=True,
                life_events=80)
    report("secondary restore, every sync point", r)
    assert_clean(r)


@pytest.mark.parametrize("native", [False, True], ids=["python", "native"])
def test_secondary_is_a_prefix_whenever_it_says_consistent(tmp_path, native):
    """The SVOL is a prefix whenever it is called consistent, across power
    cuts: after a restart, and at every step of the replay, the group says
    ``consistent`` only when its SVOLs are the prefix image of what it
    applied (the apply mark, ``catching_up``)."""
    r = run_all(SecondaryRun, 6200, tmp_path, 300, nseeds=3, p=0.03, native=native)
    report("secondary, prefix whenever consistent", r)
    assert_clean(r)
    assert not r.instant, "\n".join(r.instant[:5])
    # Both sides were seen: consistent (and a prefix), and fenced while not a prefix.
    assert r.consistent_looks > 100 and r.fenced > 100, (r.consistent_looks, r.fenced)


def test_secondary_svols_it_creates_itself_survive_power_cuts(tmp_path):
    r = run_all(SecondaryRun, 6500, tmp_path, 150, nseeds=3, p=0.03, provisioned=False,
                scaled=False)
    assert_clean(r)


def test_secondary_instant_check_catches_a_group_that_never_fences(tmp_path, monkeypatch):
    # The apply mark ignored: "consistent" right after a restart, as before it existed.
    monkeypatch.setattr(secondary.RestoreGroup, "catching_up", property(lambda self: False))
    r = run_all(SecondaryRun, 6200, tmp_path, 150, nseeds=3, p=0.03, scaled=False)
    report("secondary, catching_up always False", r)
    assert r.instant, f"{r.cuts} cuts and a consistent non-prefix SVOL went unnoticed"


_CHECKPOINT = secondary.RestoreGroup.checkpoint


def _checkpoint_point_first(self):
    """RestoreGroup.checkpoint with one change: the SVOL flushes it asks for
    happen only after it returns, i.e. after the restore point is saved."""
    asked = []
    for vol in self.volumes.values():
        vol.flush = lambda v=vol: asked.append(v)      # shadows Volume.flush
    try:
        saved = _CHECKPOINT(self)
    finally:
        for vol in self.volumes.values():
            del vol.flush
    for vol in asked:
        vol.flush()
    return saved


def test_secondary_check_catches_the_restore_point_saved_before_the_data(tmp_path, monkeypatch):
    monkeypatch.setattr(secondary.RestoreGroup, "checkpoint", _checkpoint_point_first)
    r = run_all(SecondaryRun, 7000, tmp_path, 150, nseeds=2, p=0.0, every_sync=True,
                life_events=80, scaled=False)
    report("secondary, point saved before the data", r)
    assert any("not that prefix image" in v for v in r.violations), \
        f"{r.cuts} cuts and the early restore point went unnoticed"


def test_secondary_check_catches_an_svol_fsync_made_a_noop(tmp_path):
    r = run_all(SecondaryRun, 7100, tmp_path, 300, nseeds=3, p=0.03, mutations={"fsync"},
                scaled=False)
    report("secondary, fsync a no-op", r)
    assert r.violations, f"{r.cuts} cuts and the lost SVOL data went unnoticed"


def test_secondary_checker_on_known_bad_histories(tmp_path):
    """A restore point behind a saved one, ahead of anything applied, and
    SVOLs that lost restored data: each must be flagged (each check replays,
    so each gets its own copy of the restored site)."""
    import shutil
    prefix = PrefixImages()
    site = tmp_path / "site"
    site.mkdir()
    g = open_group(site)

    async def feed(n):
        for seq in range(1, n + 1):
            await g.stage(*sec_journal(seq))
        restore_step(g, n)
        g.checkpoint()
    asyncio.run(feed(20))
    close_group(g)

    def check(saved, mark, damage=False):
        folder = tmp_path / f"copy{len(list(tmp_path.iterdir()))}"
        shutil.copytree(site, folder)
        if damage:
            img = folder / "svol1.img"
            img.write_bytes(bytes([0x5A]) * len(img.read_bytes()))
        return check_secondary(folder, saved, mark, prefix, random.Random(1))[0]
    assert check(20, 20) == [] and check(20, 23) == []
    assert any("restore point 20, but 25 was saved" in v for v in check(25, 30))
    assert any("only 15 were ever applied" in v for v in check(0, 15))
    assert any("not that prefix image" in v for v in check(20, 20, damage=True))
