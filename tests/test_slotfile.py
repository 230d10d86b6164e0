"""State files saved in place (host/disk/slotfile.py), through power cuts.

A SlotFile promises: once ``save(p)`` returns, a power cut leaves ``p`` or
a later save's payload; a cut during ``save(p)`` leaves ``p`` or the one
before.  The runs below save payloads of changing sizes (some outgrow the
slots, so the file is rewritten whole), cut the power at a random call of
a random save on a PowerCutDisk (writes kept, dropped or torn by sector),
read the image back and check that promise.  The mutants show that the
check notices each part of the scheme missing.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tricopy.host.disk import fileio, slotfile
from tricopy.host.disk.powercut import PowerCutDisk, PowerLost
from tricopy.host.disk.slotfile import SlotFile, SlotFileCorrupt
from tricopy.host.secondary.site import RestoreState


def _payload(rng: random.Random, i: int) -> bytes:
    # Mostly small; now and then past a 4 KiB slot (a rewrite with larger slots).
    n = rng.choice([20, 300, 1500, 3000, 5000, 9000]) if rng.random() < 0.2 else rng.randint(1, 400)
    return f"{i}:".encode() + bytes(rng.getrandbits(8) for _ in range(n))


def _one_life(tmp_path, seed: int, mutations=(), outcomes=None) -> str | None:
    """Saves until a cut at a random call; None, or what went wrong.
    ``outcomes`` counts what the cuts left (the run must see them all)."""
    rng = random.Random(seed)
    root = tmp_path / f"disk{seed}"
    root.mkdir()
    disk = PowerCutDisk(root, mutations=mutations)
    cut_at = rng.randint(1, 60)
    image = None

    def maybe_cut(*_):
        nonlocal image
        if image is None and disk.ops + disk.syncs >= cut_at:
            image = disk.power_cut(rng)
            raise PowerLost("cut here")
    disk.on_op = maybe_cut
    disk.on_sync = maybe_cut
    durable, in_flight = None, None
    with fileio.use(disk):
        f = SlotFile(root / "state")
        try:
            for i in range(40):
                in_flight = _payload(rng, i)
                f.save(in_flight)
                durable, in_flight = in_flight, None
        except PowerLost:
            pass
    if image is None:
        image = disk.cut(rng)
    dest = Path(image.materialize(tmp_path / f"image{seed}"))
    try:
        got = SlotFile(dest / "state").load()
    except SlotFileCorrupt as exc:
        return f"seed {seed} ({image.note}): {exc}"
    if outcomes is not None:
        outcomes.add("between saves" if in_flight is None else
                     "the save in flight" if got == in_flight else "the save before")
    if got != durable and got != in_flight:
        def name(p):
            return None if p is None else p.split(b":")[0].decode()
        torn = " (torn)" if name(got) in (name(durable), name(in_flight)) else ""
        return (f"seed {seed} ({image.note}): read save {name(got)}{torn}, the last durable was "
                f"{name(durable)} (in flight: {name(in_flight)})")
    return None


def _run(tmp_path, seeds, mutations=(), outcomes=None) -> list[str]:
    return [v for s in seeds if (v := _one_life(tmp_path, s, mutations, outcomes)) is not None]


def test_a_saved_state_survives_every_power_cut(tmp_path):
    outcomes = set()
    violations = _run(tmp_path, range(300), outcomes=outcomes)
    assert not violations, "\n".join(violations[:5])
    # Cuts inside saves left the new state, and (dropped or torn) the one before.
    assert {"the save in flight", "the save before"} <= outcomes


def test_mutant_fdatasync_noop_is_caught(tmp_path):
    violations = _run(tmp_path, range(300), mutations=("fdatasync",))
    assert violations, "saves never synced, yet no cut lost one"


def test_mutant_writing_over_the_newest_slot_is_caught(tmp_path, monkeypatch):
    # Always slot 0: a torn save then destroys the only whole state.
    real = SlotFile.save

    def same_slot(self, payload):
        self._newest = 1
        return real(self, payload)
    monkeypatch.setattr(SlotFile, "save", same_slot)
    violations = _run(tmp_path, range(300))
    assert violations, "saves over the newest slot, yet no cut lost a state"


def test_mutant_without_the_crc_check_is_caught(tmp_path, monkeypatch):
    real = SlotFile._parse

    def trusting(buf, slot):
        got = real(buf, slot)
        if got is None and buf[:4] == slotfile.MAGIC:
            gen, n = slotfile._HEAD.unpack_from(buf)[3:5]
            return gen, bytes(buf[slotfile.HEAD_SIZE:slotfile.HEAD_SIZE + n])
        return got
    monkeypatch.setattr(SlotFile, "_parse", staticmethod(trusting))
    violations = _run(tmp_path, range(300))
    assert violations, "torn slots trusted, yet no cut showed one"


def test_a_damaged_file_is_refused_with_what_to_do(tmp_path):
    path = tmp_path / "s"
    f = SlotFile(path)
    f.save(b"one")
    f.save(b"two")
    raw = bytearray(path.read_bytes())
    for off in (slotfile.HEAD_SIZE, slotfile.MIN_SLOT + slotfile.HEAD_SIZE):
        raw[off] ^= 0xFF            # both slots' payloads
    path.write_bytes(bytes(raw))
    with pytest.raises(SlotFileCorrupt, match="neither slot is whole.*restore it or remove it"):
        SlotFile(path).load()
    path.write_bytes(slotfile.MAGIC + bytes(10))
    with pytest.raises(SlotFileCorrupt, match="damaged"):
        SlotFile(path).load()


def test_a_state_file_of_an_earlier_version_is_read_and_converted(tmp_path):
    # The restore point as atomic_write left it (plain JSON).
    path = tmp_path / "g.restored"
    path.write_text(json.dumps({"last_seq": 7, "epoch": 2, "mark": 9, "time": 5, "tag": 3}))
    st = RestoreState(path)
    assert (st.last_seq, st.mark, st.epoch, st.tag) == (7, 9, 2, 3)
    st.save(9)
    assert path.read_bytes().startswith(slotfile.MAGIC)
    assert RestoreState(path).doc() == {"last_seq": 9, "epoch": 2, "mark": 9, "time": 5, "tag": 3}


def test_a_save_in_place_is_one_write_and_one_fdatasync(tmp_path):
    calls = []
    disk = PowerCutDisk(tmp_path)
    disk.on_op = lambda kind: calls.append(kind)
    disk.on_sync = lambda n, phase: calls.append("sync") if phase == "before" else None
    with fileio.use(disk):
        f = SlotFile(tmp_path / "s")
        f.save(b"first")               # a new file: atomic_write (file and folder synced)
        first = list(calls)
        calls.clear()
        for i in range(5):
            f.save(b"next %d" % i)
    assert "replace" in first
    assert calls == ["pwrite", "sync"] * 5
