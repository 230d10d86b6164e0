"""The journal group (JNLG) table of a site, the copy bitmap, and the pairing rules.

Patent Fig. 5 (JNLG table 400): per group GRNUM 410, GRNAME 420, GRATTR 430,
GRSTS 440, DVOL_INFO 450 (VOLID 451, VOLNAME 452, VOLSTS 453, BJPtr 454) and
JVOL_INFO 460 (VOLID 461).  Every site keeps one table for all its groups in
``<state_dir>/jnlg.json``, rewritten atomically (temp file, fsync, rename,
fsync of the folder) on every state change and loaded at start.

The copy bitmap (``<state_dir>/<grname>.bitmap``) has one bit per copy chunk
of every data volume: set = "the SVOL may differ here, the chunk must be sent
as a base journal".  A full initial copy sets every bit; a split sets the bit
of every chunk a host write touches (the dirty bitmap); the base-journal scan
clears a bit once the chunk's journal is ACKed by the relay.  A delta resync
is therefore just a scan of the bits that are set.

The pairing rules of patent [0053] (plus what the wire needs: same GRNUM and
epoch) are checked by :func:`check_pairing` before PAIR_CREATE.
"""

from __future__ import annotations

import base64
import json
import os
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..disk.durable import atomic_write

__all__ = ["COPY_CHUNK", "NEVER", "GRSTS", "PairingError", "DvolInfo", "JvolInfo", "JnlgEntry", "JnlgTable",
           "CopyBitmap", "check_pairing", "volid_of"]

# The copy unit: one base journal (the patent's "n blocks") and one bit of a
# copy bitmap, at the primary and at a site that took a group over alike.
COPY_CHUNK = 64 << 10

# consistent_seq while a copy runs: the SVOLs are not consistent at any SEQ#.
NEVER = (1 << 63) - 1

# GRSTS 440 / VOLSTS 453 values (patent [0050]).
GRSTS = ("SMPL", "COPY", "PAIR", "SUSP")


class PairingError(ValueError):
    """A pairing request that breaks a rule; ``rule`` names the rule that failed."""

    def __init__(self, rule: str, message: str):
        super().__init__(f"pairing rule '{rule}' failed: {message}")
        self.rule = rule


def volid_of(path: Path) -> int:
    """VOLID 451: unique per volume within a site — the file's device and inode.

    Two configured paths that name the same file (a link, ``..``) get the same
    VOLID, which is what the "one volume, one group" rule (patent [0045]) needs.
    """
    st = os.stat(path)
    return (st.st_dev << 32) ^ st.st_ino


@dataclass
class DvolInfo:
    """One DVOL_INFO 450 entry: a PVOL or SVOL of the group, indexed by IDX."""
    idx: int
    volid: int
    volname: str
    size: int
    block_size: int
    volsts: str = "SMPL"
    bjptr: int = 0           # BJPtr 454: the next block the base-journal scan takes


@dataclass
class JvolInfo:
    """One JVOL_INFO 460 entry: a journal volume of the group (the relay's ring)."""
    volid: int
    volname: str
    size: int


@dataclass
class JnlgEntry:
    """One row of the JNLG table (patent Fig. 5)."""
    grnum: int
    grname: str
    grattr: str
    grsts: str = "SMPL"
    epoch: int = 0
    reason: str = ""
    # SEQ# at the relay from which the SVOLs are a consistent image (set at COPY -> PAIR).
    consistent_seq: int = 0
    # A takeover (docs/operations.md): at the site that took over, what it
    # holds ({"epoch", "seq", "time", "forced", "at"}); elsewhere the epoch
    # it moved to, below which this site must take no journals or writes.
    takeover: dict = field(default_factory=dict)
    fence_epoch: int = 0
    # At the relay, after a planned swap: journals come from the configured
    # secondary and go to the configured primary (config.swapped).
    reversed: bool = False
    # At the primary: the relay came back with no journal at all after it had
    # ACKed some, and the write log no longer held them: `pair resync` copies
    # what the secondary lacks (host/primary/regions.py), or everything.
    lost_to_secondary: bool = False
    # At the primary: which relay the group sends its journals to, "relay" (the
    # configured one) or "standby" (docs/operations.md, "A standby relay").
    relay_in_use: str = "relay"
    dvols: list[DvolInfo] = field(default_factory=list)
    jvols: list[JvolInfo] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict) -> "JnlgEntry":
        doc = dict(doc)
        dvols = [DvolInfo(**d) for d in doc.pop("dvols", [])]
        jvols = [JvolInfo(**j) for j in doc.pop("jvols", [])]
        entry = cls(**doc, dvols=dvols, jvols=jvols)
        if entry.grsts not in GRSTS:
            raise ValueError(f"GRSTS {entry.grsts!r} of group {entry.grname} is not one of {GRSTS}")
        return entry

    def set_state(self, grsts: str, reason: str = "") -> None:
        """GRSTS and every VOLSTS move together: a group is one consistency unit."""
        if grsts not in GRSTS:
            raise ValueError(f"GRSTS must be one of {', '.join(GRSTS)}, not {grsts!r}")
        self.grsts, self.reason = grsts, reason
        for d in self.dvols:
            d.volsts = grsts


class JnlgTable:
    """All groups of one site, persisted in ``<state_dir>/jnlg.json``."""

    def __init__(self, path: Path, entries: dict[int, JnlgEntry]):
        self.path = path
        self.entries = entries

    _open: dict[Path, "JnlgTable"] = {}

    @classmethod
    def for_site(cls, state_dir: Path) -> "JnlgTable":
        """The one table of a site: every group object of the process shares it."""
        path = (state_dir / "jnlg.json").resolve()
        if path not in cls._open:
            state_dir.mkdir(parents=True, exist_ok=True)
            cls._open[path] = cls.load(path)
        return cls._open[path]

    def to_json(self, site: str) -> dict:
        """The ``jnlg`` control command's answer: this site's table."""
        return {"site": site, "groups": [e.to_json() for e in self.entries.values()]}

    @classmethod
    def load(cls, path: Path) -> "JnlgTable":
        entries: dict[int, JnlgEntry] = {}
        if path.exists():
            try:
                for doc in json.loads(path.read_text())["groups"]:
                    e = JnlgEntry.from_json(doc)
                    entries[e.grnum] = e
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"JNLG table {path} is corrupt: {exc}") from None
        return cls(path, entries)

    def save(self) -> None:
        doc = {"groups": [e.to_json() for e in self.entries.values()]}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps(doc, indent=1).encode())

    def ensure(self, grnum: int, grname: str, grattr: str, epoch: int,
               initial: str = "PAIR") -> JnlgEntry:
        """The row of a configured group; created in state ``initial`` if new.

        The epoch is state: a takeover moves it on in the table, and a config
        still naming the old one never moves it back (the config's epoch is
        only where a new group starts).
        """
        e = self.entries.get(grnum)
        if e is None or e.grname != grname or e.grattr != grattr:
            e = JnlgEntry(grnum, grname, grattr, epoch=epoch)
            self.entries[grnum] = e
            e.set_state(initial)
        e.epoch = max(e.epoch, epoch)
        return e

    def attach(self, cfg, volumes=(), journal=None) -> JnlgEntry:
        """The row of configured group ``cfg`` (config.GroupConfig) with DVOL_INFO/JVOL_INFO
        rebuilt from the configured volumes (VOLSTS and BJPtr kept), saved."""
        e = self.ensure(cfg.grnum, cfg.grname, cfg.attr.value, cfg.epoch, cfg.initial_state)
        old = {d.idx: d for d in e.dvols}
        e.dvols = []
        for v in volumes:
            prev = old.get(v.idx)
            e.dvols.append(DvolInfo(v.idx, volid_of(v.path), str(v.path), v.size, v.block_size,
                                    prev.volsts if prev else e.grsts, prev.bjptr if prev else 0))
        e.jvols = [JvolInfo(volid_of(journal.path), str(journal.path), journal.size)] \
            if journal is not None else []
        self.save()
        return e


class CopyBitmap:
    """Per-volume bitmaps of the chunks still to be copied (see the module docstring).

    ``chunk`` bytes per bit (a multiple of every volume's block size).  Saved
    atomically as JSON with each bitmap base64-encoded and CRC-checked.
    """

    def __init__(self, path: Path, sizes: dict[int, int], chunk: int):
        self.path = path
        self.chunk = chunk
        self.sizes = dict(sizes)
        self.bits = {idx: bytearray((self.nchunks(idx) + 7) // 8) for idx in sizes}
        if path is not None and path.exists():     # None: in memory only
            self._load()

    def nchunks(self, idx: int) -> int:
        return -(-self.sizes[idx] // self.chunk)

    def _load(self) -> None:
        try:
            doc = json.loads(self.path.read_text())
            if doc["chunk"] != self.chunk:
                raise ValueError(f"chunk {doc['chunk']}, expected {self.chunk}")
            if zlib.crc32(json.dumps(doc["bits"], sort_keys=True).encode()) != doc["crc"]:
                raise ValueError("CRC mismatch")
            for key, b64 in doc["bits"].items():
                raw = base64.b64decode(b64)
                idx = int(key)
                if idx in self.bits and len(raw) == len(self.bits[idx]):
                    self.bits[idx][:] = raw
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"copy bitmap {self.path} is corrupt: {exc}") from None

    def save(self) -> None:
        bits = {str(i): base64.b64encode(bytes(b)).decode() for i, b in self.bits.items()}
        doc = {"chunk": self.chunk, "bits": bits,
               "crc": zlib.crc32(json.dumps(bits, sort_keys=True).encode())}
        atomic_write(self.path, json.dumps(doc).encode())

    def test(self, idx: int, chunk: int) -> bool:
        return bool(self.bits[idx][chunk >> 3] & (1 << (chunk & 7)))

    def set(self, idx: int, chunk: int) -> bool:
        """Set one bit; True if it was clear (so the caller knows to persist)."""
        if self.test(idx, chunk):
            return False
        self.bits[idx][chunk >> 3] |= 1 << (chunk & 7)
        return True

    def clear(self, idx: int, chunk: int) -> None:
        self.bits[idx][chunk >> 3] &= ~(1 << (chunk & 7)) & 0xFF

    def mark(self, idx: int, offset: int, length: int) -> bool:
        """Set the bits of every chunk [offset, offset+length) touches; True if any was new."""
        # A range outside the volume is a caller's error, never a bit to set:
        # a negative chunk would index from the end and mark another chunk
        # (found by fuzzing ``mark_out_of_sync``, which takes chunk numbers
        # from the control socket).
        if idx not in self.sizes or offset < 0 or length < 0 \
                or offset + length > self.sizes[idx]:
            raise ValueError(f"range offset={offset} length={length} is outside volume {idx} "
                             f"of the copy bitmap")
        first, last = offset // self.chunk, (offset + max(length, 1) - 1) // self.chunk
        new = False
        for c in range(first, last + 1):
            new |= self.set(idx, c)
        return new

    def covered(self, idx: int, offset: int, length: int) -> bool:
        """True if every chunk the range touches is set."""
        first, last = offset // self.chunk, (offset + max(length, 1) - 1) // self.chunk
        return all(self.test(idx, c) for c in range(first, last + 1))

    def set_all(self) -> None:
        for idx in self.bits:
            for c in range(self.nchunks(idx)):
                self.set(idx, c)

    def clear_all(self) -> None:
        for b in self.bits.values():
            b[:] = bytes(len(b))

    def count(self, idx: int | None = None) -> int:
        """Set bits (of one volume, or all)."""
        vols = [idx] if idx is not None else list(self.bits)
        return sum(bin(byte).count("1") for i in vols for byte in self.bits[i])

    def chunks(self, idx: int) -> list[int]:
        """Every set chunk of volume ``idx``, in order."""
        return [c for c in range(self.nchunks(idx)) if self.test(idx, c)]

    def pending(self, idx: int, start_chunk: int = 0):
        """The set chunks of volume ``idx`` from ``start_chunk`` on, in order."""
        for c in range(start_chunk, self.nchunks(idx)):
            if self.test(idx, c):
                yield c


def _group(table: dict, grname: str, site: str) -> dict:
    for g in table["groups"]:
        if g["grname"] == grname:
            return g
    names = ", ".join(g["grname"] for g in table["groups"]) or "none"
    raise PairingError("same GRNAME", f"the {site} has no journal group named {grname!r} "
                       f"(it has: {names})")


def check_pairing(grname: str, primary: dict, relay: dict, secondary: dict) -> None:
    """Check patent [0053]'s pairing rules on the three sites' JNLG tables.

    Each argument is a site's answer to the ``jnlg`` control command
    (``{"groups": [JnlgEntry.to_json(), ...]}``).  Raises :class:`PairingError`
    naming the rule that failed.
    """
    m = _group(primary, grname, "primary")
    i = _group(relay, grname, "relay")
    r = _group(secondary, grname, "secondary")
    for g, want, site in ((m, "MASTER", "primary"), (i, "INTERMEDIARY", "relay"),
                          (r, "RESTORE", "secondary")):
        if g["grattr"] != want:
            raise PairingError("attributes MASTER/INTERMEDIARY/RESTORE",
                               f"group {grname!r} on the {site} is {g['grattr']}, "
                               f"it must be {want}")
    if not m["grnum"] == i["grnum"] == r["grnum"]:
        raise PairingError("same GRNUM", f"group {grname!r} is GRNUM {m['grnum']} on the "
                           f"primary, {i['grnum']} on the relay, {r['grnum']} on the secondary")
    if not m["epoch"] == i["epoch"] == r["epoch"]:
        raise PairingError("same epoch", f"group {grname!r} has epoch {m['epoch']} / "
                           f"{i['epoch']} / {r['epoch']} on primary / relay / secondary")
    for g, site in ((m, "primary"), (i, "relay"), (r, "secondary")):
        if g["grsts"] != "SMPL":
            raise PairingError("all groups SMPL", f"group {grname!r} is {g['grsts']} on the "
                               f"{site}; delete the pair first")
    if not i["jvols"]:
        raise PairingError("relay has a journal volume",
                           f"group {grname!r} on the relay has no JVOL")
    pvols = {d["idx"]: d for d in m["dvols"]}
    svols = {d["idx"]: d for d in r["dvols"]}
    if set(pvols) != set(svols):
        raise PairingError("same volume index", f"PVOL indexes {sorted(pvols)} do not match "
                           f"SVOL indexes {sorted(svols)}")
    for idx, p in sorted(pvols.items()):
        s = svols[idx]
        if (p["size"], p["block_size"]) != (s["size"], s["block_size"]):
            raise PairingError("same volume size", f"IDX {idx}: PVOL is {p['size']} bytes in "
                               f"{p['block_size']}-byte blocks, SVOL {s['size']} in "
                               f"{s['block_size']}-byte blocks")
    for table, g, site in ((primary, m, "primary"), (secondary, r, "secondary")):
        mine = {d["volid"]: d for d in g["dvols"]}
        for other in table["groups"]:
            if other["grnum"] == g["grnum"]:
                continue
            for d in other["dvols"]:
                if d["volid"] in mine:
                    raise PairingError("one volume, one group",
                                       f"on the {site}, {mine[d['volid']]['volname']} (IDX "
                                       f"{mine[d['volid']]['idx']}) is already in group "
                                       f"{other['grname']!r} as {d['volname']}")
