"""Power-cut runs: workloads on a PowerCutDisk, the cuts, and the checkers.

A *run* is one seed.  It is a chain of *lives*: a workload runs on a disk
until a scheduled power cut ends it; the image that cut leaves is the disk
of the next life, which reopens it exactly as a restarted site would.  On
the way, other cuts are taken without stopping the workload ("what if the
power had failed here?") and each image is checked in a scratch folder.
Every cut has its own ``random.Random(f"{seed}:{n}")``, and the workloads
draw from ``random.Random(seed)`` only, so a seed replays the same run
(single-threaded workloads; the group-commit one and the primary's have
real threads: where their cuts fall depends on the threads' timing).

A final cut turns the power off: no cut comes after it, and the workload
must not change its oracle after it either, although code of that life
may still run (its teardown runs the event loop, and a task goes on until
its next call on the disk fails).

Checkers return a list of violations instead of asserting, so that a test
can also require them to find something (mutants, known-bad histories).
The oracle is what the workload was *told* (acks, returned calls), read
before the cut for promises (a later ack may not be in the image yet) and
after it for permissions (a journal may be in the image before its append
returned).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tricopy.host.config import parse_config
from tricopy.host.disk import fileio
from tricopy.host.disk.durable import atomic_write
from tricopy.host.disk.powercut import CrashImage, PowerCutDisk, PowerLost
from tricopy.host.disk.volume import Volume
from tricopy.host.journal.commit import GroupCommitter
from tricopy.host.journal.store import JournalStore, StoreError, StoreFull
from tricopy.host.rcm.jnlg import JnlgTable
from tricopy.host.secondary.site import RestoreGroup
from tricopy.host.wire import protocol as p

from store_writer import journal

RING = 64 << 10
LAZY_RING = 32 << 10      # smaller: lazy releases must come round to unpersisted space


def scratch_root() -> str:
    """Where cut images are checked: tmpfs when there is one (the checks fsync for real)."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


@dataclass
class Result:
    """What a run found: ``violations`` are (seed, cut, message) strings."""
    cuts: int = 0
    lives: int = 0
    checked: int = 0          # acked journals / files / restores verified
    violations: list[str] = field(default_factory=list)
    # secondary: the SVOLs are not a prefix while the group says "consistent"
    instant: list[str] = field(default_factory=list)
    consistent_looks: int = 0   # secondary: instants it said consistent, and was checked
    fenced: int = 0             # secondary: instants it rightly said not consistent
    clean_opens: int = 0        # store: opens that trusted a clean-shutdown mark (workload)
    clean_checks: int = 0       # store: cut images opened that way, compared with a scan
    native_staged: int = 0      # secondary: journals the native loop staged ...
    received: int = 0           # ... of those received
    seconds: float = 0.0

    def add(self, other: "Result") -> None:
        self.cuts += other.cuts
        self.lives += other.lives
        self.checked += other.checked
        self.violations += other.violations
        self.instant += other.instant
        self.consistent_looks += other.consistent_looks
        self.fenced += other.fenced
        self.clean_opens += other.clean_opens
        self.clean_checks += other.clean_checks
        self.native_staged += other.native_staged
        self.received += other.received
        self.seconds += other.seconds


class Cutter:
    """The disk hooks of one life: a check-only cut with probability ``p``
    at each event (mutating call, or either side of a sync), all of them at
    sync points when ``every_sync``, and the final cut at event ``final``."""

    def __init__(self, disk: PowerCutDisk, run: "Run", *, p: float, final: int,
                 every_sync: bool = False):
        self.disk, self.run, self.p, self.final = disk, run, p, final
        self.every_sync = every_sync
        self.events = 0
        disk.on_op = self.on_op
        disk.on_sync = self.on_sync

    def on_op(self, kind: str) -> None:
        self._event(self.run.rng_hook.random() < self.p)

    def on_sync(self, n: int, phase: str) -> None:
        self._event(self.every_sync or self.run.rng_hook.random() < self.p)

    def _event(self, check: bool) -> None:
        if self.disk.dead:
            return          # the call that reached the hook fails (PowerLost)
        self.events += 1
        if self.events >= self.final:
            self.run.cut(self.disk, final=True)    # powers off
        elif check:
            self.run.cut(self.disk, final=False)


class Run:
    """One seed of one workload.  Subclasses give ``life(disk, rng)`` (runs
    until PowerLost), ``promises()``/``permissions()`` (the oracle, read
    before and after the image) and ``check(folder, before, after)``."""

    name = "run"

    def __init__(self, seed: int, tmp: Path, *, cuts: int, p: float = 0.05,
                 every_sync: bool = False, mutations=(), life_events: int = 400):
        self.seed = seed
        self.tmp = Path(tmp)
        self.cuts_wanted = cuts
        self.p = p
        self.every_sync = every_sync
        self.mutations = tuple(mutations)
        self.life_events = life_events
        self.rng = random.Random(seed)               # the workload's choices
        self.rng_hook = random.Random(f"{seed}:hook")  # where the cuts fall
        self.result = Result()
        self._scratch = Path(tempfile.mkdtemp(prefix="powercut-", dir=scratch_root()))
        self._cutting = threading.Lock()
        self.final_image: CrashImage | None = None    # this life's, the next one's disk

    def provision(self, root: Path) -> None:
        """Files that exist, synced, before the first life (none by default)."""

    def cut(self, disk: PowerCutDisk, *, final: bool) -> CrashImage:
        # One cut at a time: with group commit both threads reach the hooks,
        # and the cuts share the scratch folder and the counters.
        with self._cutting:
            if disk.dead:
                # Another thread's final cut came first (both reached a hook
                # at once): one image per power-off, and this hook's call
                # fails as every call on the disk now does.
                raise PowerLost(f"the power of {disk.root} is off")
            try:
                return self._cut(disk, final)
            except OSError as exc:
                # Raised inside a fileio call, an OSError would pass for a
                # failed write of the code under test.
                raise RuntimeError(f"the power-cut harness failed: {exc}") from exc

    def _cut(self, disk: PowerCutDisk, final: bool) -> CrashImage:
        n = self.result.cuts
        # The oracle and the image from one instant: no other thread writes
        # in between, and after a final image none writes again (the check
        # below is slow, and a workload running on meanwhile would move the
        # oracle past the image the next life starts from).
        with disk.frozen():
            before = self.promises()
            image = disk.cut(random.Random(f"{self.seed}:{n}"))
            after = self.permissions()
            if final:
                disk.power_off()
                self.final_image = image
        self.result.cuts += 1
        folder = self._scratch / "check"
        shutil.rmtree(folder, ignore_errors=True)
        image.materialize(folder)
        try:
            for v in self.check(folder, before, after):
                self.result.violations.append(
                    f"{self.name} seed {self.seed} cut {n}{' (final)' if final else ''} "
                    f"[{image.note}]: {v}")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return image

    def go(self) -> Result:
        t0 = time.monotonic()
        life = 0
        image = None
        try:
            while self.result.cuts < self.cuts_wanted:
                root = self.tmp / f"s{self.seed}-life{life}"
                shutil.rmtree(root, ignore_errors=True)
                if image is None:
                    root.mkdir(parents=True)
                    self.provision(root)
                else:
                    image.materialize(root)
                disk = PowerCutDisk(root, mutations=self.mutations)
                final = self.rng_hook.randint(1, self.life_events)
                Cutter(disk, self, p=self.p, final=final, every_sync=self.every_sync)
                self.final_image = None
                with fileio.use(disk):
                    try:
                        self.life(disk, self.rng)
                    except PowerLost:
                        pass
                if self.final_image is None:        # the workload ended first
                    self.cut(disk, final=True)
                image = self.final_image
                shutil.rmtree(root, ignore_errors=True)
                life += 1
                self.result.lives += 1
        finally:
            shutil.rmtree(self._scratch, ignore_errors=True)
        self.result.seconds = time.monotonic() - t0
        return self.result


# -- the relay's journal store ---------------------------------------------------

def check_store(path: Path, acked: int, persisted: int, tried: int,
                expected: dict[int, int], stats: Result | None = None) -> tuple[list[str], int]:
    """Violations of the store's promises in the store file at ``path``, and
    how many acked journals were verified.

    ``acked``: highest SEQ# reported durable; ``persisted``: highest release
    reported durable; ``tried``: highest release ever started;
    ``expected``: SEQ# -> JOFS of every journal that may be in the store
    (its content is ``store_writer.journal(seq, jofs)``).

    When the open trusts a clean-shutdown mark, a copy of the same image is
    opened with a full recovery scan, and both must agree on the state and
    the journals: a stale mark, or one that reached the disk before the
    journals it counts, is a violation even when nothing acked is missing.
    """
    if not path.exists():
        return ([f"the store is gone, journals up to {acked} were acked"] if acked else []), 0
    scan_copy = path.with_name(path.name + ".scan")
    shutil.copyfile(path, scan_copy)          # before the open clears the mark
    try:
        s = JournalStore.open(path)
    except StoreError as exc:
        return [f"reopen failed: {exc}"], 0
    out, checked = [], 0
    with s:
        if s.recovery.clean:
            out += _compare_with_scan(s, scan_copy)
            if stats is not None:
                stats.clean_checks += 1
        if s.next_seq - 1 < acked and s.tail_seq <= acked:
            out.append(f"acked journals {max(s.next_seq, s.tail_seq)}..{acked} lost "
                       f"(recovery stopped: {s.recovery.end_reason})")
        if s.tail_seq < persisted + 1:
            out.append(f"TAIL_SEQ {s.tail_seq}: the release up to {persisted} was reported durable")
        if s.tail_seq > max(tried, persisted) + 1:
            out.append(f"TAIL_SEQ {s.tail_seq}: no release went past {max(tried, persisted)}")
        try:
            held = s.read(s.tail_seq, 1 << 30)
        except StoreError as exc:
            return out + [f"read failed: {exc}"], checked
        for ctl, data in held:
            jofs = expected.get(ctl.seq)
            if jofs != ctl.jofs:
                out.append(f"seq {ctl.seq} at JOFS {ctl.jofs} was never appended there "
                           f"(invented or resurrected; expected JOFS {jofs})")
                continue
            want_ctl, want_data = journal(ctl.seq, jofs)
            if ctl.pack() != want_ctl.pack() or data != want_data:
                out.append(f"seq {ctl.seq} differs from what was appended")
            elif ctl.seq <= acked:
                checked += 1
    return out, checked


def _store_view(s: JournalStore):
    try:
        held = [(c.pack(), d) for c, d in s.read(s.tail_seq, 1 << 30)]
    except StoreError as exc:
        held = f"read failed: {exc}"
    return (s.jiptr, s.joptr, s.used, s.wrap_at, s.tail_seq, s.next_seq), held


def _compare_with_scan(s: JournalStore, copy: Path) -> list[str]:
    """Violations if the clean open ``s`` differs from a scanning open of ``copy``."""
    with JournalStore.open(copy, force_scan=True) as scanned:
        (mine, held), (theirs, held_scan) = _store_view(s), _store_view(scanned)
        why = scanned.recovery.end_reason
    if mine != theirs:
        return [f"trusted a clean-shutdown mark: JIPTR JOPTR USED WRAP_AT TAIL NEXT {mine}, "
                f"a recovery scan finds {theirs} ({why})"]
    if held != held_scan:
        return [f"trusted a clean-shutdown mark whose journals differ from the scan's "
                f"({held if isinstance(held, str) else why})"]
    return []


class StoreRun(Run):
    """A relay writing journals: append, sync (acks), release (eager or lazy),
    persist, clean restarts; deterministic from the seed."""

    name = "store"
    restart_p = 0.005         # a clean restart (close, reopen) per step

    def __init__(self, *a, lazy: bool = False, **kw):
        super().__init__(*a, **kw)
        self.lazy = lazy
        self.ring = LAZY_RING if lazy else RING
        self.expected: dict[int, int] = {}
        self.acked = self.persisted = self.tried = 0
        self.name = "store-lazy" if lazy else "store"

    def promises(self):
        return self.acked, self.persisted

    def permissions(self):
        return self.tried, dict(self.expected)

    def check(self, folder, before, after):
        (acked, persisted), (tried, expected) = before, after
        out, checked = check_store(folder / "jnl", acked, persisted, tried, expected,
                                   stats=self.result)
        self.result.checked += checked
        return out

    def _open(self, path: Path) -> JournalStore:
        try:
            s = JournalStore.open(path) if path.exists() else JournalStore.create(path, self.ring)
        except StoreError:                # (only a mutant gets here: already reported)
            fileio.unlink(path)
            self.expected.clear()
            self.acked = self.persisted = self.tried = 0
            s = JournalStore.create(path, self.ring)
        # Seqs from next_seq on are reused by this life; the rest stay as they
        # were, but those at or below a durable release never come back.
        for seq in [q for q in self.expected if q >= s.next_seq or q < s.tail_seq]:
            del self.expected[seq]
        # What reopen found is on the platter: released, and durable after its fdatasync.
        self.persisted = max(self.persisted, s.tail_seq - 1)
        self.tried = max(self.tried, s.tail_seq - 1)
        self.acked = max(self.acked, s.durable_seq)
        self.result.clean_opens += s.recovery.clean
        return s

    def life(self, disk: PowerCutDisk, rng: random.Random) -> None:
        path = Path(disk.root) / "jnl"
        s = None
        try:
            s = self._open(path)
            while True:
                x = rng.random()
                if x < 0.55:
                    self._append(s, rng)
                elif x < 0.75:
                    self.acked = max(self.acked, s.sync())
                    # a superblock of persist_soon() counts once a sync ran
                    self.persisted = max(self.persisted, s.persisted_tail_seq - 1)
                elif x < 0.87:
                    self._release(s, rng)
                elif x < 0.875 and self.lazy:
                    # Rarely, so that appends come round to space released in
                    # memory only (docs/store.md, "Lazy release").  Half the
                    # time as the relay does under load: written now, durable
                    # at the next sync (persist_soon).
                    upto = s.tail_seq - 1
                    if rng.random() < 0.5:
                        s.persist_soon()
                    elif s.persist():
                        self.persisted = max(self.persisted, upto)
                elif x > 1 - self.restart_p:
                    self._before_close(s, rng)
                    s.close()                     # a clean restart
                    s = None
                    s = self._open(path)
        finally:
            if s is not None:
                try:
                    s.close()
                except PowerLost:
                    pass

    def _before_close(self, s: JournalStore, rng: random.Random) -> None:
        """What happens just before a clean restart (nothing here)."""

    def _append(self, s: JournalStore, rng: random.Random) -> None:
        seq = s.next_seq
        try:
            jofs = s.placement(journal(seq, 0)[0].data_len)
        except StoreFull:
            if s.durable_seq >= s.tail_seq:
                self._release(s, rng, upto=s.durable_seq)
            else:
                self.acked = max(self.acked, s.sync())
            return
        self.expected[seq] = jofs        # before the write: it may reach the disk at once
        s.append(*journal(seq, jofs))

    def _release(self, s: JournalStore, rng: random.Random, upto: int | None = None) -> None:
        # Like the relay: only what the secondary has (here: what is durable).
        if upto is None:
            if s.durable_seq < s.tail_seq:
                return
            upto = rng.randint(s.tail_seq, s.durable_seq)
        self.tried = max(self.tried, upto)
        s.release(upto, persist=not self.lazy)
        if not self.lazy:
            self.persisted = max(self.persisted, upto)


class CleanRestartRun(StoreRun):
    """StoreRun with a clean restart every eight steps or so: close (the
    clean-shutdown mark), reopen (trusted, then cleared), append, ...; the
    lives chain crashes after clean starts and clean starts after crashes."""

    restart_p = 0.12

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.name = "clean-restart-lazy" if self.lazy else "clean-restart"

    def _before_close(self, s: JournalStore, rng: random.Random) -> None:
        # Journals still in the page cache at the stop, as at a SIGTERM with
        # appends in flight: close() must make them durable before its mark.
        for _ in range(rng.randint(0, 6)):
            self._append(s, rng)


class GroupCommitRun(StoreRun):
    """The relay's real arrangement: eight tasks append through a
    GroupCommitter whose fdatasync runs in a worker thread, so cuts fall
    while a sync is in flight.  Thread timing makes it not replayable."""

    def __init__(self, *a, batch: int = 1, inline: bool = True, **kw):
        super().__init__(*a, **kw)
        # inline: the committer may sync in the event loop (its default, and
        # on this disk model every sync is fast, so most are); False keeps
        # every sync in a worker thread, cuts falling while one is in flight.
        self.inline = inline
        # batch > 1: each writer appends 1..batch journals with one
        # append_batch (one pwritev per run) and acks them all after one wait,
        # as the relay's ingest does with a JNLWR batch.
        self.batch = batch
        self.name = "group-commit-lazy" if self.lazy else "group-commit"
        if batch > 1:
            self.name += "-batch"
        if not inline:
            self.name += "-threads"

    def life(self, disk: PowerCutDisk, rng: random.Random) -> None:
        path = Path(disk.root) / "jnl"
        s = self._open(path)
        gc = GroupCommitter(s) if self.inline else GroupCommitter(s, inline_below=0)

        async def writer() -> None:
            while True:
                seq = s.next_seq
                n = rng.randint(1, self.batch)
                try:
                    jofs = s.placements([journal(seq + i, 0)[0].data_len for i in range(n)])
                except StoreFull:
                    if s.durable_seq >= s.tail_seq:
                        self._release(s, rng, upto=s.durable_seq)
                    else:
                        # Wait for the held journals' fsync, as the relay does:
                        # a sleep alone could wait forever if no writer asks for
                        # one (the mutant that returns before its fsync ends).
                        await gc.wait_durable(s.next_seq - 1)
                    # Then a turn of the loop, either way: a lazy release
                    # touches no disk, and the wait returns without one when
                    # every journal is durable already (or syncs in line),
                    # while a ring full of lazily released space is freed
                    # only by the persister. Without it a writer could spin
                    # here, never reaching a cut, the persister, nor the
                    # cancellation that ends the life once another writer met
                    # a cut (suite runs hung in both branches, 6 and 7 December).
                    await asyncio.sleep(0)
                    continue
                for i, at in enumerate(jofs):
                    self.expected[seq + i] = at
                last = s.append_batch([journal(seq + i, at) for i, at in enumerate(jofs)])
                await gc.wait_durable(last)
                self.acked = max(self.acked, last)
                self.persisted = max(self.persisted, s.persisted_tail_seq - 1)
                if rng.random() < 0.1:
                    self._release(s, rng)

        async def persister() -> None:          # the relay's, every 0.1 s (faster here)
            while True:
                await asyncio.sleep(rng.uniform(0.0005, 0.005))
                upto = s.tail_seq - 1
                if s.superblock_pending:          # as the relay's release_persister
                    if s.persist():
                        self.persisted = max(self.persisted, upto)
                else:
                    s.persist_soon()              # durable at the writers' next sync

        async def main() -> None:
            try:
                await asyncio.gather(*(writer() for _ in range(8)),
                                     *([persister()] if self.lazy else []))
            finally:
                await gc.aclose()

        try:
            asyncio.run(main())
        finally:
            try:
                s.close()
            except PowerLost:
                pass


# -- state files (durable.atomic_write) ---------------------------------------------

def state_version(i: int) -> bytes:
    """Version ``i`` of the state file: sizes from a few bytes to several sectors."""
    return json.dumps({"v": i, "pad": "x" * ((i * 389) % 3000)}).encode()


def check_state(content: bytes | None, done: int, doing: int) -> list[str]:
    """The file must hold the last version whose write returned, or the one
    being written; nothing at all only if no write ever returned."""
    allowed = {state_version(i) for i in (done, doing) if i >= 0}
    if content is None:
        return [] if done < 0 else [f"the file is gone; version {done} had been written"]
    if content in allowed:
        return []
    return [f"holds {content[:40]!r}... ({len(content)} bytes), not version {done} or {doing}"]


class StateFileRun(Run):
    """atomic_write of ever newer versions of one small state file."""

    name = "state-file"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.done = -1       # last version whose atomic_write returned
        self.doing = -1      # version being written

    def promises(self):
        return self.done

    def permissions(self):
        return self.doing

    def check(self, folder, done, doing):
        f = folder / "state.json"
        self.result.checked += 1
        return check_state(f.read_bytes() if f.exists() else None, done, doing)

    def life(self, disk: PowerCutDisk, rng: random.Random) -> None:
        path = Path(disk.root) / "state.json"
        if path.exists():                  # a restart reads back where it was
            try:
                self.done = self.doing = json.loads(path.read_bytes())["v"]
            except ValueError:             # (only a mutant gets here: already reported)
                self.done = self.doing = -1
        while True:
            self.doing = self.done + 1
            atomic_write(path, state_version(self.doing))
            self.done = self.doing


# -- the secondary: restore to SVOLs, restore point -----------------------------------

SVOL_SIZE = 64 << 10
BLOCK = 4096


def sec_config(base: Path):
    return parse_config({
        "site": "sec", "state_dir": "state", "listen": "127.0.0.1:1",
        "group": [{"grnum": 1, "grname": "g", "attr": "RESTORE", "initial_state": "PAIR"}],
        "volume": [{"idx": i, "group": 1, "path": f"svol{i}.img", "size": SVOL_SIZE,
                    "block_size": BLOCK, "create": True} for i in (0, 1)],
    }, base)


def sec_journal(seq: int) -> tuple[p.Control, bytes]:
    """Journal ``seq`` of the primary's history: the same on every run."""
    r = random.Random(seq * 7919)
    idx = r.randrange(2)
    n = r.randint(1, 3)
    address = r.randrange(SVOL_SIZE // BLOCK - n + 1) * BLOCK
    x = r.random()
    if x < 0.85:
        data, kind, length = r.randbytes(n * BLOCK), p.Kind.UPDATE, n * BLOCK
    elif x < 0.93:
        data, kind, length = b"", p.Kind.ZERO, n * BLOCK
    elif x < 0.97:
        data, kind, length = b"", p.Kind.TRIM, n * BLOCK
    else:
        data, kind, length, address = b"", p.Kind.MARK, 0, 0
    ctl = p.Control(seq=seq, address=address, length=length, data_len=len(data),
                    data_crc=p.crc32c(data) if data else 0, idx=idx, kind=kind, group=1)
    return ctl.with_ccrc(), data


class PrefixImages:
    """The SVOL images after journals 1..n (the prefix image at n), cached every 64."""

    STEP = 64

    def __init__(self):
        self._cache = {0: (bytes(SVOL_SIZE), bytes(SVOL_SIZE))}

    def at(self, n: int) -> tuple[bytes, bytes]:
        base = max(k for k in self._cache if k <= n)
        vols = [bytearray(v) for v in self._cache[base]]
        for seq in range(base + 1, n + 1):
            ctl, data = sec_journal(seq)
            if ctl.kind == p.Kind.UPDATE:
                vols[ctl.idx][ctl.address:ctl.address + len(data)] = data
            elif ctl.kind in (p.Kind.ZERO, p.Kind.TRIM):
                vols[ctl.idx][ctl.address:ctl.address + ctl.length] = bytes(ctl.length)
            if seq % self.STEP == 0 and seq not in self._cache:
                self._cache[seq] = tuple(bytes(v) for v in vols)
        return tuple(bytes(v) for v in vols)


def open_group(base: Path) -> RestoreGroup:
    """Start the secondary's group as a site does: missing SVOLs are made
    first (sites_cli.prepare, ``create = true``), then the group opens them."""
    cfg = sec_config(base)
    for v in cfg.volumes:
        Volume(v.path, v.size, v.block_size, idx=v.idx, create=v.create).close()
    return RestoreGroup(cfg.groups[0], cfg)


def restore_step(g: RestoreGroup, limit: int) -> int:
    """One restorer step (RestoreGroup.restorer): the apply mark covers the
    staged run first, then journals are applied."""
    if (mark := g.mark_due()) is not None:
        g.save_mark(mark)
    return g.restore(limit)


def close_group(g: RestoreGroup) -> None:
    for v in g.volumes.values():
        v.close()
    JnlgTable._open.pop((g.state.path.parent / "jnlg.json").resolve(), None)


def svol_images(g: RestoreGroup) -> tuple[bytes, bytes]:
    return tuple(g.volumes[i].read(0, SVOL_SIZE) for i in (0, 1))


def now(coro):
    """Run a coroutine that never waits (staging below STAGE_LIMIT) to its end,
    also from inside a running event loop (a cut taken in the middle of one)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("the coroutine waited")


def check_secondary(folder: Path, saved: int, mark: int, prefix: PrefixImages,
                    rng: random.Random) -> tuple[list[str], list[str], tuple[int, int]]:
    """Restart the secondary on a cut image and replay from its restore point.

    Returns (violations, instant violations, (instants at which the group
    said ``consistent`` and was checked, instants at which it rightly did
    not: the SVOLs were not a prefix)).  Violations:
    the restore point went back past one that was saved, or ran ahead of
    what was ever applied, or once replay has passed the pre-crash ``mark``
    the SVOLs are not the prefix image.  Instant violations: the group says
    ``consistent`` while its SVOLs are not the prefix image of ``applied``.
    """
    out, instant, looks, fenced = [], [], 0, 0
    try:
        g = open_group(folder)
    except ValueError as exc:
        return [f"restart failed: {exc}"], instant, (0, 0)
    try:
        r = g.last_restored
        if r < saved:
            out.append(f"restore point {r}, but {saved} was saved")
        if r > mark:
            out.append(f"restore point {r}, but only {mark} were ever applied")

        def look(when: str) -> None:
            # What a reader of the SVOLs or a takeover may see right now.
            nonlocal looks, fenced
            prefix_now = svol_images(g) == prefix.at(g.applied)
            if g.consistent():
                looks += 1
                if not prefix_now:
                    instant.append(f"{when}: consistent at {g.applied} but the SVOLs "
                                   f"are not that prefix image")
            elif not prefix_now:
                fenced += 1        # rightly not consistent: the fence at work

        look("after restart")
        if g.applied >= mark and svol_images(g) != prefix.at(g.applied):
            out.append(f"restarted at {r}, at or past the pre-crash mark {mark}: "
                       f"the SVOLs are not that prefix image")
            return out, instant, (looks, fenced)
        end = mark + rng.randint(0, 3)

        def replay() -> None:
            seq = g.applied
            while g.applied < end:
                for _ in range(rng.randint(1, 6)):
                    if seq < end:
                        seq += 1
                        now(g.stage(*sec_journal(seq)))
                restore_step(g, rng.randint(1, 8))
                if rng.random() < 0.3:
                    g.checkpoint()
                look(f"replay at {g.applied}")
                if g.applied >= mark and svol_images(g) != prefix.at(g.applied):
                    out.append(f"replayed from {r} past the pre-crash mark {mark} to "
                               f"{g.applied}: the SVOLs are not that prefix image")
                    return
        replay()
    finally:
        close_group(g)
    return out, instant, (looks, fenced)


class NativeFeeder:
    """Journals reach the group through its native loop (host/native/restore.py)
    over a socket pair, one JNLWR per batch, as a relay link brings them: the
    loop stages and applies what it takes, every other frame takes the Python
    way (``Secondary._frame``): the SVOL writes of both go through ``fileio``."""

    def __init__(self, g: RestoreGroup):
        from tricopy.host.native.restore import NativeRestore
        self.g = g
        self.a, b = socket.socketpair()
        b.setblocking(False)
        g.native = NativeRestore(g, b.detach())

    async def send(self, journals) -> None:
        self.a.sendall(p.serialize_frame(p.FrameType.JNLWR,
                                         b"".join(c.pack() + d for c, d in journals)))
        n = self.g.native
        n._readable()
        while not n._events.empty():
            frame = n._events.get_nowait()
            if isinstance(frame, BaseException):
                raise frame
            for ctl, data in self.g.stream.verify_batch(frame.body):
                await self.g.stage(ctl, data)
            n.after_python()
            n._readable()

    def close(self) -> None:
        if self.g.native is not None:
            self.g.native.close()
            self.g.native = None
        self.a.close()


class SecondaryRun(Run):
    """The secondary restoring journals and saving its restore point."""

    name = "secondary"

    def __init__(self, *a, provisioned: bool = True, native: bool = False, **kw):
        super().__init__(*a, **kw)
        self.provisioned = provisioned
        self.native = native          # journals through the native loop (NativeFeeder)
        self.saved = 0        # highest restore point whose checkpoint() returned
        self.mark = 0         # highest SEQ# ever applied to the SVOLs (pre-crash mark)
        self.prefix = PrefixImages()

    def provision(self, root: Path) -> None:
        # SVOLs made by the operator before the group starts (as block devices
        # or files would be).  Without this the secondary creates them itself,
        # and Volume never fsyncs their folder: see test_powercut.py.
        if self.provisioned:
            for i in (0, 1):
                (root / f"svol{i}.img").write_bytes(bytes(SVOL_SIZE))

    def promises(self):
        return self.saved

    def permissions(self):
        return self.mark

    def check(self, folder, saved, mark):
        rng = random.Random(f"{self.seed}:replay:{self.result.cuts}")
        out, instant, (looks, fenced) = check_secondary(folder, saved, mark, self.prefix, rng)
        self.result.checked += 1
        self.result.consistent_looks += looks
        self.result.fenced += fenced
        self.result.instant += [f"secondary seed {self.seed} cut {self.result.cuts - 1}: {v}"
                                for v in instant]
        return out

    def life(self, disk: PowerCutDisk, rng: random.Random) -> None:
        try:
            g = open_group(Path(disk.root))
        except ValueError:            # (only a mutant gets here: already reported)
            for name in ("g.restored", "jnlg.json"):
                f = Path(disk.root) / "state" / name
                if f.exists():
                    fileio.unlink(f)
            JnlgTable._open.pop((Path(disk.root) / "state" / "jnlg.json").resolve(), None)
            self.saved = 0
            g = open_group(Path(disk.root))
        self.saved = max(self.saved, g.last_restored)

        feeder = NativeFeeder(g) if self.native else None

        async def run() -> None:
            seq = g.applied
            while True:
                x = rng.random()
                if x < 0.5:
                    batch = []
                    for _ in range(rng.randint(1, 8)):
                        seq += 1
                        batch.append(sec_journal(seq))
                    if feeder is not None:
                        await feeder.send(batch)
                    else:
                        for ctl, data in batch:
                            await g.stage(ctl, data)
                elif x < 0.85:
                    # (with the native loop, longer steps, as the site's restorer
                    # drains what is staged: the loop stages again once Python's
                    # staging is empty)
                    limit = rng.randint(1, 40 if feeder is not None else 10)
                    if (m := g.mark_due()) is not None:
                        g.save_mark(m)
                    # Before applying: a cut inside restore() may leave part of it on disk.
                    self.mark = max(self.mark, min(seq, g.applied + limit, g.state.mark))
                    g.restore(limit)
                elif g.checkpoint():
                    self.saved = max(self.saved, g.last_restored)
        try:
            asyncio.run(run())
        finally:
            if feeder is not None:
                self.result.native_staged += g.native.rx.received if g.native else 0
                self.result.received += g.stream.received
                feeder.close()
            close_group(g)
