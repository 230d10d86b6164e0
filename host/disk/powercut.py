"""A disk that loses power: what a cut leaves of writes and renames never synced.

:class:`PowerCutDisk` is a :mod:`fileio` backend for tests, in the spirit of
SQLite's crash-test VFS and TigerBeetle's storage fault injection.  Every
call on a file under its ``root`` goes to the real file (which plays the
page cache: what every reader sees) *and* into a model of the platter:

* per file, the **durable image** (what survives) and the **pending
  operations** since that file's last fsync/fdatasync (writes, truncates);
* per folder, the **durable entries** (name -> file) and the pending entry
  changes (create, link, rename/replace, unlink) since that folder's last
  fsync.  A file's fsync does not make its name durable; the folder's does.

:meth:`PowerCutDisk.cut` returns what a power cut at that instant leaves
(a :class:`CrashImage`), chosen with the ``random.Random`` it is given:

* every pending write is independently **kept**, **dropped** or **torn**:
  torn means some of its 512-byte sectors are new and others old;
* a sector ends up holding the page-cache contents at some moment of its
  history (the durable bytes overlaid by every write to it up to the last
  one that reached the platter), never a mix no cache ever held, which is
  what a disk under a page cache can show; since each sector chooses its
  own moment, writes also land **out of order** (a later write kept, an
  earlier one lost);
* a file's size is its size at some moment of its history, chosen apart
  from its data (size grown without data, data without size);
* every pending folder change is independently kept or **lost** (a rename
  that never happened, a created file that is not there), kept ones in
  their order.

Nothing synced is ever lost: an fsync makes durable exactly the operations
issued before it began (a write racing with it in another thread stays
pending).  ``mutations`` turns syncs into no-ops, to show that a test
notices (docs/reliability.md).

Folders themselves (``mkdir``) count as durable; files found under
``root`` when the disk is made, or opened without having been created
through it, count as synced.  :meth:`cut` checks by default that every
file under ``root`` holds what the model says, so a write that bypasses
``fileio`` is reported instead of silently counting as durable.
"""

from __future__ import annotations

import contextlib
import os
import random
import stat
import threading
from dataclasses import dataclass, field
from typing import Callable

from . import fileio

__all__ = ["SECTOR", "MUTATIONS", "PowerLost", "UntrackedWrite", "CrashImage", "PowerCutDisk"]

SECTOR = 512          # the unit a disk writes atomically: a torn write is torn here
#: What ``mutations`` may turn into no-ops.
MUTATIONS = frozenset({"fsync", "fdatasync", "dirsync"})

# How one cut treats the pending operations: each op decides on its own
# ("random"), or all are kept (a cut just before the next sync would have
# completed) or all dropped (nothing written back since the last sync).
_POLICIES = (("random", 0.8), ("keep-all", 0.1), ("drop-all", 0.1))


class PowerLost(Exception):
    """The power of this disk is off: every call on its files fails (close works)."""


class UntrackedWrite(RuntimeError):
    """A file under the disk's root changed without going through fileio."""


@dataclass(eq=False)
class _Inode:
    ino: int
    durable: bytearray
    current: bytearray
    # Pending since the last sync: ("w", offset, bytes) or ("t", length).
    ops: list = field(default_factory=list)


@dataclass(frozen=True)
class _Dir:
    rel: str


@dataclass(frozen=True)
class CrashImage:
    """What a power cut left: file contents by path relative to the root,
    and the folders (relative too)."""
    files: dict[str, bytes]
    dirs: tuple[str, ...]
    note: str = ""        # how the cut was taken, for failure messages

    def materialize(self, dest: str | os.PathLike) -> str:
        """Write the image under ``dest`` (created; must not hold these files)."""
        dest = os.fspath(dest)
        os.makedirs(dest, exist_ok=True)
        for d in self.dirs:
            os.makedirs(os.path.join(dest, d), exist_ok=True)
        for rel, data in self.files.items():
            full = os.path.join(dest, rel)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "wb") as f:
                f.write(data)
        return dest


def _apply(buf: bytearray, op) -> None:
    if op[0] == "w":
        _, off, data = op
        if off > len(buf):
            buf.extend(bytes(off - len(buf)))
        buf[off:off + len(data)] = data
    else:
        n = op[1]
        if n < len(buf):
            del buf[n:]
        else:
            buf.extend(bytes(n - len(buf)))


class PowerCutDisk:
    """A :mod:`fileio` backend whose files under ``root`` can lose power.

    Use it with ``with fileio.use(disk): ...``.  Paths outside ``root`` pass
    straight to ``os``.  Syncs of tracked files do not reach the real disk
    (the model is the platter), so tests run at page-cache speed.

    Hooks, called outside the model's lock in the thread doing the call:
    ``on_op(kind)`` before every mutating call on a tracked file
    (``"create"``, ``"pwrite"``, ``"pwritev"``, ``"write"``, ``"writev"``, ``"ftruncate"``,
    ``"replace"``, ``"link"``, ``"unlink"``), and ``on_sync(n, phase)`` before (``"before"``) and after
    (``"after"``) the ``n``-th sync (file or folder, counted from 1).  A hook
    may call :meth:`cut`, and :meth:`power_off` to end the run there: the
    call in progress and every later one then raise :class:`PowerLost`.
    """

    def __init__(self, root: str | os.PathLike, *, mutations=(), sector: int = SECTOR,
                 outside: tuple[str, ...] = ()):
        bad = set(mutations) - MUTATIONS
        if bad:
            raise ValueError(f"mutations must be among {sorted(MUTATIONS)}, not {sorted(bad)}")
        if sector <= 0:
            raise ValueError(f"sector must be positive, not {sector!r}")
        self.root = os.path.realpath(os.fspath(root))
        if not os.path.isdir(self.root):
            raise ValueError(f"root {self.root} is not a folder")
        self.mutations = frozenset(mutations)
        self.sector = sector
        # Folders under root that are not on this disk (``outside``, relative
        # to root): a site process's scratch copies (the secondary's
        # snapshots), written with plain os calls and never durable state.
        self.outside = tuple(os.path.normpath(o) for o in outside)
        self._lock = threading.RLock()
        self._next_ino = 1
        self._fds: dict[int, _Inode | _Dir] = {}
        self._ns: dict[str, _Inode] = {}          # names now (the page cache's view)
        self._durable_ns: dict[str, _Inode] = {}  # names on the platter
        self._dir_ops: dict[str, list[tuple[tuple[str, _Inode | None], ...]]] = {}
        self.dead = False
        self.syncs = 0          # syncs started (file and folder)
        self.ops = 0            # mutating calls on tracked files
        self.on_op: Callable[[str], None] | None = None
        self.on_sync: Callable[[int, str], None] | None = None
        for dirpath, _, files in self._walk():
            for name in files:
                full = os.path.join(dirpath, name)
                if os.path.isfile(full) and not os.path.islink(full):
                    ino = self._adopt(full)
                    self._ns[self._rel(full)] = ino
                    self._durable_ns[self._rel(full)] = ino

    # -- bookkeeping -----------------------------------------------------------

    def _rel(self, path) -> str | None:
        """``path`` relative to root, or None when it is outside."""
        p = os.path.abspath(os.fspath(path))
        full = os.path.join(os.path.realpath(os.path.dirname(p)), os.path.basename(p))
        if full == self.root:
            return ""
        if full.startswith(self.root + os.sep):
            rel = full[len(self.root) + 1:]
            return None if self._excluded(rel) else rel
        return None

    def _excluded(self, rel: str) -> bool:
        return any(rel == o or rel.startswith(o + os.sep) for o in self.outside)

    def _walk(self):
        """``os.walk`` of root without the ``outside`` folders."""
        for dirpath, dirs, files in os.walk(self.root):
            rel = os.path.relpath(dirpath, self.root)
            dirs[:] = [d for d in dirs
                       if not self._excluded(os.path.normpath(os.path.join(rel, d)))]
            yield dirpath, dirs, files

    def _adopt(self, full: str) -> _Inode:
        with open(full, "rb") as f:
            data = f.read()
        ino = _Inode(self._next_ino, bytearray(data), bytearray(data))
        self._next_ino += 1
        return ino

    def _lookup(self, rel: str) -> _Inode:
        ino = self._ns.get(rel)
        if ino is None:       # made outside fileio: take it as synced
            ino = self._adopt(os.path.join(self.root, rel))
            self._ns[rel] = self._durable_ns[rel] = ino
        return ino

    def _dir_op(self, rel: str, *changes: tuple[str, _Inode | None]) -> None:
        self._dir_ops.setdefault(os.path.dirname(rel), []).append(changes)

    def _alive(self) -> None:
        if self.dead:
            raise PowerLost(f"the power of {self.root} is off")

    def _before(self, kind: str) -> None:
        self._alive()
        self.ops += 1
        if self.on_op is not None:
            self.on_op(kind)
        self._alive()

    def _tracked(self, fd: int):
        ent = self._fds.get(fd)
        if ent is not None:
            self._alive()
        return ent

    def power_off(self) -> None:
        """Cut the power: every later call on a tracked file raises PowerLost."""
        self.dead = True

    # -- the fileio calls ------------------------------------------------------

    def open(self, path, flags, mode=0o777, *, dir_fd=None):
        if dir_fd is not None:
            raise NotImplementedError("PowerCutDisk.open: dir_fd")
        rel = self._rel(path)
        if rel is None:
            return os.open(path, flags, mode)
        if flags & (os.O_CREAT | os.O_TRUNC):
            self._before("create")
        else:
            self._alive()
        with self._lock:
            full = os.path.join(self.root, rel)
            existed = os.path.lexists(full)
            fd = os.open(full, flags, mode)
            try:
                if stat.S_ISDIR(os.fstat(fd).st_mode):
                    self._fds[fd] = _Dir(rel)
                    return fd
                if existed:
                    ino = self._lookup(rel)
                else:
                    ino = _Inode(self._next_ino, bytearray(), bytearray())
                    self._next_ino += 1
                    self._ns[rel] = ino
                    self._dir_op(rel, (rel, ino))
                if flags & os.O_TRUNC and (ino.current or ino.ops or ino.durable):
                    ino.ops.append(("t", 0))
                    _apply(ino.current, ("t", 0))
            except BaseException:
                os.close(fd)
                raise
            self._fds[fd] = ino
            return fd

    def close(self, fd):
        with self._lock:
            self._fds.pop(fd, None)
        os.close(fd)

    def pread(self, fd, n, offset):
        self._tracked(fd)
        return os.pread(fd, n, offset)

    def fstat(self, fd):
        self._tracked(fd)
        return os.fstat(fd)

    def pwrite(self, fd, data, offset):
        ino = self._tracked(fd)
        if ino is None:
            return os.pwrite(fd, data, offset)
        self._before("pwrite")
        with self._lock:
            n = os.pwrite(fd, data, offset)
            op = ("w", offset, bytes(memoryview(data)[:n]))
            ino.ops.append(op)
            _apply(ino.current, op)
            return n

    def pwritev(self, fd, buffers, offset):
        """``os.pwritev``: on the platter one write of the concatenation of what
        the call wrote (possibly short), so it can tear at sectors like any write."""
        ino = self._tracked(fd)
        if ino is None:
            return os.pwritev(fd, buffers, offset)
        self._before("pwritev")
        with self._lock:
            n = os.pwritev(fd, buffers, offset)
            op = ("w", offset, b"".join(bytes(b) for b in buffers)[:n])
            ino.ops.append(op)
            _apply(ino.current, op)
            return n

    def write(self, fd, data):
        """At the file position (the end with O_APPEND): ``os.write``."""
        ino = self._tracked(fd)
        if ino is None:
            return os.write(fd, data)
        self._before("write")
        with self._lock:
            n = os.write(fd, data)
            op = ("w", os.lseek(fd, 0, os.SEEK_CUR) - n, bytes(memoryview(data)[:n]))
            ino.ops.append(op)
            _apply(ino.current, op)
            return n

    def writev(self, fd, buffers):
        """At the file position: ``os.writev``.  On the platter it is one write of
        the concatenation of what the call wrote (possibly short), so it can
        tear at sectors like any write."""
        ino = self._tracked(fd)
        if ino is None:
            return os.writev(fd, buffers)
        self._before("writev")
        with self._lock:
            n = os.writev(fd, buffers)
            data = b"".join(bytes(b) for b in buffers)[:n]
            op = ("w", os.lseek(fd, 0, os.SEEK_CUR) - n, data)
            ino.ops.append(op)
            _apply(ino.current, op)
            return n

    def ftruncate(self, fd, length):
        ino = self._tracked(fd)
        if ino is None:
            return os.ftruncate(fd, length)
        self._before("ftruncate")
        with self._lock:
            os.ftruncate(fd, length)
            op = ("t", length)
            ino.ops.append(op)
            _apply(ino.current, op)

    def fsync(self, fd):
        ent = self._tracked(fd)
        if ent is None:
            return os.fsync(fd)
        self._sync(ent, "dirsync" if isinstance(ent, _Dir) else "fsync")

    def fdatasync(self, fd):
        ent = self._tracked(fd)
        if ent is None:
            return os.fdatasync(fd)
        self._sync(ent, "dirsync" if isinstance(ent, _Dir) else "fdatasync")

    def fsync_dir(self, path):
        rel = self._rel(path)
        if rel is None:
            return fileio.OS.fsync_dir(path)
        self._alive()
        self._sync(_Dir(rel), "dirsync")

    def _sync(self, ent, kind: str) -> None:
        # What was issued before the sync began is what it makes durable; the
        # "before" hook runs once it has begun (a cut there finds all of it
        # still pending, and a write from the hook races with the sync).
        with self._lock:
            self.syncs += 1
            n = self.syncs
            k = len(ent.ops) if isinstance(ent, _Inode) else len(self._dir_ops.get(ent.rel, ()))
        if self.on_sync is not None:
            self.on_sync(n, "before")
        self._alive()
        if kind not in self.mutations:
            with self._lock:
                if isinstance(ent, _Inode):
                    for op in ent.ops[:k]:
                        _apply(ent.durable, op)
                    del ent.ops[:k]
                else:
                    ops = self._dir_ops.get(ent.rel, [])
                    for changes in ops[:k]:
                        self._rename(self._durable_ns, changes)
                    del ops[:k]
        if self.on_sync is not None:
            self.on_sync(n, "after")
        self._alive()

    @staticmethod
    def _rename(ns: dict, changes) -> None:
        for name, ino in changes:
            if ino is None:
                ns.pop(name, None)
            else:
                ns[name] = ino

    def _two(self, src, dst, call, kind: str):
        rs, rd = self._rel(src), self._rel(dst)
        if rs is None and rd is None:
            return call(src, dst)
        if rs is None or rd is None:
            raise NotImplementedError(f"PowerCutDisk.{kind} across its root: {src} -> {dst}")
        self._before(kind)
        with self._lock:
            call(os.path.join(self.root, rs), os.path.join(self.root, rd))
            ino = self._lookup(rs)
            self._ns[rd] = ino
            if kind == "replace":
                del self._ns[rs]
                # One atomic change of the destination's folder (a cross-folder
                # rename is modelled as a change of the destination folder).
                self._dir_op(rd, (rd, ino), (rs, None))
            else:
                self._dir_op(rd, (rd, ino))

    def replace(self, src, dst):
        return self._two(src, dst, os.replace, "replace")

    def link(self, src, dst):
        return self._two(src, dst, os.link, "link")

    def unlink(self, path):
        rel = self._rel(path)
        if rel is None:
            return os.unlink(path)
        self._before("unlink")
        with self._lock:
            os.unlink(os.path.join(self.root, rel))
            if self._ns.pop(rel, None) is not None:
                self._dir_op(rel, (rel, None))

    # -- the power cut ---------------------------------------------------------

    def pending(self) -> int:
        """Operations (file and folder) not yet durable."""
        with self._lock:
            inodes = {id(i): i for i in list(self._ns.values()) + list(self._durable_ns.values())}
            return (sum(len(i.ops) for i in inodes.values())
                    + sum(len(o) for o in self._dir_ops.values()))

    def verify(self) -> None:
        """Raise :class:`UntrackedWrite` unless every file under root holds
        what went through fileio (and no file appeared behind its back)."""
        with self._lock:
            seen = set()
            for dirpath, _, files in self._walk():
                for name in files:
                    full = os.path.join(dirpath, name)
                    rel = full[len(self.root) + 1:]
                    seen.add(rel)
                    ino = self._ns.get(rel)
                    if ino is None:
                        raise UntrackedWrite(f"{full} was created without fileio")
                    with open(full, "rb") as f:
                        if f.read() != ino.current:
                            raise UntrackedWrite(f"{full} was written without fileio")
            gone = set(self._ns) - seen
            if gone:
                raise UntrackedWrite(f"{sorted(gone)} removed without fileio")

    @contextlib.contextmanager
    def frozen(self):
        """Hold every call on a tracked file (in any thread) for the block.

        A harness reads what the code under test promised, then cuts: with
        the flush thread or a worker still writing between the two reads,
        the image would hold writes newer than the promises it is checked
        against (a false "never written" or "ACKed more than the relay
        holds")."""
        with self._lock:
            yield

    def cut(self, rng: random.Random, *, policy: str | None = None,
            verify: bool = True) -> CrashImage:
        """What a power cut now leaves (see the module docstring); the disk
        itself runs on.  ``policy``: ``"random"``, ``"keep-all"``,
        ``"drop-all"``, or None to draw one (mostly random)."""
        if policy is None:
            x, policy = rng.random(), "random"
            for name, p in _POLICIES:
                if x < p:
                    policy = name
                    break
                x -= p
        if policy not in dict(_POLICIES):
            raise ValueError(f"policy must be one of {[p for p, _ in _POLICIES]}, not {policy!r}")
        with self._lock:
            if verify:
                self.verify()
            ns = dict(self._durable_ns)
            for d in sorted(self._dir_ops):
                for changes in self._dir_ops[d]:
                    if self._keep(rng, policy):
                        self._rename(ns, changes)
            images: dict[int, bytes] = {}
            files = {}
            for rel in sorted(ns):
                ino = ns[rel]
                if ino.ino not in images:
                    images[ino.ino] = self._cut_file(ino, rng, policy)
                files[rel] = images[ino.ino]
            dirs = tuple(sorted(os.path.relpath(d, self.root) for d, _, _ in self._walk()
                                if d != self.root))
        return CrashImage(files, dirs, f"policy {policy}, {self.syncs} syncs, {self.ops} ops")

    def power_cut(self, rng: random.Random, **kw) -> CrashImage:
        """:meth:`cut` and :meth:`power_off` as one step: no sync can complete
        between the two (a sync that completes after the image was taken and
        is then answered -- a relay's ACK -- would be a promise the image
        does not keep).  For a site process cut from outside
        (:mod:`.powerswitch`)."""
        with self._lock:
            image = self.cut(rng, **kw)
            self.dead = True
        return image

    @staticmethod
    def _keep(rng: random.Random, policy: str) -> bool:
        if policy == "keep-all":
            return True
        if policy == "drop-all":
            return False
        return rng.random() < 0.5

    def _cut_file(self, ino: _Inode, rng: random.Random, policy: str) -> bytes:
        ops, S = ino.ops, self.sector
        if not ops:
            return bytes(ino.durable)
        # Sizes through the history, and which ops reached the platter where.
        sizes = [len(ino.durable)]
        meta = 0                                  # the size is sizes[meta]
        touch: dict[int, list[tuple[int, bool]]] = {}   # sector -> [(op index, landed)]
        for i, op in enumerate(ops):
            before = sizes[-1]
            if op[0] == "w":
                _, off, data = op
                after = max(before, off + len(data)) if data else before
                how = self._how(rng, policy)
                if data:
                    for s in range(off // S, (off + len(data) - 1) // S + 1):
                        landed = how == "keep" or (how == "tear" and rng.random() < 0.5)
                        touch.setdefault(s, []).append((i, landed))
                size_landed = after != before and self._keep(rng, policy)
            else:
                after = op[1]
                landed = self._keep(rng, policy)
                # A shrink zeroes the sectors past the new end in later versions.
                for s in range(after // S, -(-before // S)):
                    touch.setdefault(s, []).append((i, landed))
                size_landed = after != before and landed
            sizes.append(after)
            if size_landed:
                meta = i + 1
        size = sizes[meta]
        out = bytearray(ino.durable[:size])
        out.extend(bytes(size - len(out)))
        for s, hist in touch.items():
            lo = s * S
            if lo >= size:
                continue
            last = max((i for i, landed in hist if landed), default=-1)
            if last < 0:
                continue          # every version of this sector since the sync was lost
            sec = bytearray(ino.durable[lo:lo + S])
            sec.extend(bytes(S - len(sec)))
            for i, _ in hist:
                if i > last:
                    break
                op = ops[i]
                if op[0] == "w":
                    _, off, data = op
                    a, b = max(off, lo), min(off + len(data), lo + S)
                    sec[a - lo:b - lo] = data[a - off:b - off]
                else:
                    cut_at = max(op[1], lo)
                    if cut_at < lo + S:
                        sec[cut_at - lo:] = bytes(lo + S - cut_at)
            hi = min(size, lo + S)
            out[lo:hi] = sec[:hi - lo]
        return bytes(out)

    @staticmethod
    def _how(rng: random.Random, policy: str) -> str:
        if policy == "keep-all":
            return "keep"
        if policy == "drop-all":
            return "drop"
        x = rng.random()
        return "keep" if x < 0.4 else "drop" if x < 0.7 else "tear"
