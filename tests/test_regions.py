"""The region table (host/primary/regions.py): which regions a PSEQ range wrote."""

import threading

import pytest

from tricopy.host.primary.regions import RegionLog
from tricopy.host.wire.pseq import TAG_MOD, next_pseq

MiB = 1 << 20


def table(tmp_path, last_tag=0, sizes=None):
    return RegionLog(tmp_path / "g.regions", sizes or {0: 8 * MiB, 1: 2 * MiB + 4096}, last_tag)


def test_regions_written_after_a_pseq(tmp_path):
    t = table(tmp_path)
    t.note(0, 0, 4096, 1)
    t.note(0, 3 * MiB - 4096, 8192, 2)          # straddles regions 2 and 3
    t.note(1, 2 * MiB, 4096, 3)                 # the short last region
    assert t.after(1) == [(0, 2 * MiB, MiB), (0, 3 * MiB, MiB), (1, 2 * MiB, 4096)]
    assert t.after(3) == []
    # PSEQ 0 is "before the first journal": this table began with the group
    assert t.after(0) == [(0, 0, MiB)] + t.after(1)


def test_a_table_knows_nothing_before_it_began(tmp_path):
    t = table(tmp_path, last_tag=100)           # an existing group gets its first table
    t.note(0, 0, 4096, 101)
    assert t.after(99) is None                  # journals before 100 went unrecorded
    assert t.after(0) is None
    assert t.after(100) == [(0, 0, MiB)]


def test_pseqs_wrap(tmp_path):
    t = table(tmp_path, last_tag=TAG_MOD - 3)
    tag = TAG_MOD - 3
    for region in range(6):
        tag = next_pseq(tag)
        t.note(0, region * MiB, 4096, tag)
    # PSEQs TAG_MOD-2, TAG_MOD-1, 1, 2, 3, 4 (0 is never a PSEQ) wrote regions 0..5
    assert [o // MiB for _, o, _ in t.after(1)] == [3, 4, 5]
    assert [o // MiB for _, o, _ in t.after(TAG_MOD - 2)] == [1, 2, 3, 4, 5]


def test_a_rebase_never_drops_a_region(tmp_path):
    """After a relay lost journals the stream reuses their PSEQs: the regions those
    journals wrote keep showing up (too long, never too short)."""
    t = table(tmp_path)
    for tag in range(1, 11):
        t.note(0, (tag % 4) * MiB, 4096, tag)   # 1..10 over regions 0..3
    t.rebase(5)                                 # 6..10 lost; the stream goes on after 5
    t.note(0, 7 * MiB, 4096, 6)
    t.note(0, 2 * MiB, 4096, 7)                 # the new PSEQ 7 into a region lost PSEQ 10 wrote
    regions = {o // MiB for _, o, _ in t.after(5)}
    assert {7} | {tag % 4 for tag in range(6, 11)} <= regions
    assert 2 in {o // MiB for _, o, _ in t.after(7)}    # still newer than the new PSEQ 7


def test_saved_and_loaded(tmp_path):
    t = table(tmp_path)
    for tag in range(1, 5):
        t.note(1, tag * 4096, 4096, tag)
    t.note(0, 5 * MiB, 4096, 5)
    t.save()
    assert t.saved_tag == 5
    u = table(tmp_path, last_tag=5)
    assert u.after(2) == t.after(2) == [(0, 5 * MiB, MiB), (1, 0, MiB)]
    u.note(0, 6 * MiB, 4096, 6)
    assert u.after(5) == [(0, 6 * MiB, MiB)]


@pytest.mark.parametrize("damage", ["flip", "truncate", "resized", "garbage"])
def test_a_damaged_table_starts_again_knowing_nothing(tmp_path, damage, caplog):
    t = table(tmp_path)
    for tag in range(1, 5):
        t.note(0, tag * MiB, 4096, tag)
    t.save()
    raw = bytearray(t.path.read_bytes())
    sizes = None
    if damage == "flip":
        raw[-3] ^= 0x40
    elif damage == "truncate":
        del raw[-8:]
    elif damage == "garbage":
        raw[:4] = b"\x00\xff\x00\xff"
    else:
        sizes = {0: 16 * MiB, 1: 2 * MiB + 4096}
    t.path.write_bytes(bytes(raw))
    u = table(tmp_path, last_tag=4, sizes=sizes)
    assert u.after(1) is None                   # cannot say: the caller copies everything
    assert "unreadable" in caplog.text and "full copy" in caplog.text
    u.note(0, 0, 4096, 5)
    assert u.after(4) == [(0, 0, MiB)]


def test_saves_one_at_a_time_and_the_newest_wins(tmp_path):
    # A save in a thread (the site's _save_regions) and one in line (before a
    # write-log reset) at once shared the temporary file: a rename found no
    # file (ENOENT, "write log reset at the primary failed" in an e2e test).
    t = table(tmp_path)
    t.note(0, 0, 4096, 1)
    old = t.snapshot()
    t.note(0, MiB, 4096, 2)
    new = t.snapshot()
    assert t.write(new) and t.saved_tag == 2
    assert not t.write(old), "an older snapshot written over a newer one"
    assert t.saved_tag == 2 and table(tmp_path, last_tag=2).after(1) == [(0, MiB, MiB)]
    snaps = []
    for tag in range(3, 203):
        t.note(1, 0, 4096, tag)
        snaps.append(t.snapshot())
    errors = []

    def writer(mine):
        for snap in mine:
            try:
                t.write(snap)
            except OSError as exc:
                errors.append(exc)
    threads = [threading.Thread(target=writer, args=(snaps[i::4],)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors[:3]
    assert t.saved_tag == 202 and (tmp_path / "g.regions").read_bytes() == snaps[-1][1]
