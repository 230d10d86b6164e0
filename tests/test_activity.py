"""The primary's activity log (host/primary/activity.py): what it lists, when it writes."""

import pytest

from tricopy.host.primary import activity
from tricopy.host.primary.activity import ActivityLog


def test_listed_before_the_write_and_saved_only_for_new_extents(tmp_path):
    al = ActivityLog(tmp_path / "g.al", extent=1 << 20)
    assert al.before_write(0, 0, 4096, tag=1)                 # a cold extent: saved
    assert not al.before_write(0, 8192, 4096, tag=2)          # hot already: no write
    assert al.before_write(0, (1 << 20) - 4096, 8192, tag=3)  # spans into extent 1
    assert al.saves == 2
    assert ActivityLog(tmp_path / "g.al", extent=1 << 20).unclean == {(0, 0), (0, 1)}


def test_extents_leave_once_their_last_write_is_covered(tmp_path):
    al = ActivityLog(tmp_path / "g.al", extent=1 << 20)
    al.before_write(0, 0, 4096, tag=1)
    al.before_write(1, 0, 4096, tag=5)
    assert al.cool(4) == 1 and set(al.hot) == {(1, 0)}
    assert al.stale and al.listed == 2         # the file still lists both until saved
    al.save()
    assert ActivityLog(tmp_path / "g.al", extent=1 << 20).unclean == {(1, 0)}


def test_unclean_extents_stay_listed_until_forgotten(tmp_path):
    path = tmp_path / "g.al"
    ActivityLog(path, extent=1 << 20).before_write(0, 0, 1, tag=1)
    al = ActivityLog(path, extent=1 << 20)
    al.save()                                   # a save keeps what the last stop left
    assert ActivityLog(path, extent=1 << 20).unclean == {(0, 0)}
    al.forget_unclean()
    assert ActivityLog(path, extent=1 << 20).unclean == set()


def test_a_corrupt_or_foreign_log_is_refused(tmp_path):
    path = tmp_path / "g.al"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        ActivityLog(path)
    ActivityLog(tmp_path / "h.al", extent=1 << 20).before_write(0, 0, 1, tag=1)
    with pytest.raises(ValueError, match="extent"):
        ActivityLog(tmp_path / "h.al", extent=4 << 20)


def test_cooling_keeps_the_most_recently_written(tmp_path):
    al = ActivityLog(tmp_path / "g.al", extent=1 << 20)
    for tag, e in enumerate([3, 1, 4, 5, 9], start=1):
        al.before_write(0, e << 20, 1, tag=tag)
    assert al.cool(4, keep=3) == 2                   # 3 and 1 were written longest ago
    assert set(al.hot) == {(0, 4), (0, 5), (0, 9)}   # 9 (tag 5) is not ACKed yet: stays


def _on_disk(path):
    return ActivityLog(path, extent=1 << 20).unclean


def test_saves_prepared_ahead_never_claim_an_extent_the_file_lacks(tmp_path):
    """The primary writes the AL in a thread (prepare / write / done) while the
    event loop goes on: overlapping saves land newest-first or are skipped, and
    an extent counts as listed only while the file and every save still to
    land hold it."""
    path = tmp_path / "g.al"
    al = ActivityLog(path, extent=1 << 20)
    al.before_write(0, 0, 1, tag=1)                  # (0, 0) listed, in line
    warm = al.prepare({(0, 7)})                      # a cold extent, its save in a thread ...
    assert al.covers([(0, 0)]) and not al.covers([(0, 7)])
    al.cool(1)                                       # ... meanwhile (0, 0) cools
    drop = al.prepare()                              # a newer save without (0, 0)
    assert not al.covers([(0, 0)])                   # not listed from now on
    al.done(drop, al.write(drop))
    al.done(warm, al.write(warm))                    # older: skipped, not written
    assert _on_disk(path) == set()
    assert not al.covers([(0, 7)]) and not al.covers([(0, 0)])
    # in order, the warm save lists its extent
    warm = al.prepare({(0, 7)})
    al.done(warm, al.write(warm))
    assert al.covers([(0, 7)]) and _on_disk(path) == {(0, 7)}
    assert not al.before_write(0, 7 << 20, 1, tag=2)   # listed: no write in line


def test_listed_is_what_the_file_holds_until_the_save_lands(tmp_path):
    """``listed`` (status: what a crash now would resync) counts an extent a save
    in flight drops until that save is on disk (a test waited on it, then killed)."""
    al = ActivityLog(tmp_path / "g.al", extent=1 << 20)
    al.before_write(0, 0, 1, tag=1)
    al.cool(1)
    save = al.prepare()                  # drops the extent; not written yet
    assert al.listed == 1 and ActivityLog(tmp_path / "g.al", extent=1 << 20).unclean
    al.done(save, al.write(save))
    assert al.listed == 0 and not ActivityLog(tmp_path / "g.al", extent=1 << 20).unclean


def _stream(al, writes, size=64 << 20):
    """Each write as MasterGroup.journal does it: its cold extents, and those
    ``ahead`` of a sequential stream, in one save it waits for; or, if it is
    listed already, the extents ahead in a save it does not wait for (done
    at once here).  Returns how many writes waited."""
    waited = 0
    for tag, (idx, offset, length) in enumerate(writes, start=1):
        keys = al.extents(idx, offset, length)
        ahead = al.ahead(idx, offset, length, size)
        al.list_ahead(ahead)
        if not al.covers(keys) or ahead:
            waited += not al.covers(keys)
            save = al.prepare(keys + ahead)
            al.done(save, al.write(save))
        assert not al.before_write(idx, offset, length, tag)     # listed before it came
        assert set(keys) <= _on_disk(al.path)
    return waited


def test_a_sequential_stream_lists_extents_ahead(tmp_path):
    MiB = 1 << 20
    A = activity.AL_AHEAD
    al = ActivityLog(tmp_path / "g.al", extent=MiB)
    # 1 MiB writes from 0: the first waits for its save (nothing was written
    # before extent 0: it lists extent 0 only), the second for one that lists
    # the window ahead; after that the stream never waits, and a save lists
    # the window again each time half of it is used
    assert _stream(al, [(0, i * MiB, MiB) for i in range(32)]) == 2
    assert 2 < al.saves <= 2 + -(-(32 - 2) // (A // 2))      # not 32: a save per write
    al2 = ActivityLog(tmp_path / "h.al", extent=MiB)
    assert _stream(al2, [(0, i * 4096, 4096) for i in range(16 * 256)]) == 2   # 16 MiB of 4 KiB
    assert 2 < al2.saves <= 2 + -(-(16 - 2) // (A // 2))
def test_ahead_only_for_a_write_that_enters_an_extent_at_its_start_from_the_one_before(tmp_path):
    MiB = 1 << 20
    al = ActivityLog(tmp_path / "g.al", extent=MiB)
    al.before_write(0, 0, 4096, tag=1)                    # extent 0 hot
    assert al.ahead(0, MiB + 4096, 4096, 64 * MiB) == []   # middle of extent 1: random
    assert al.ahead(0, 5 * MiB, 4096, 64 * MiB) == []      # start of 5, but 4 is cold
    assert al.ahead(0, MiB, 4096, 64 * MiB) == [(0, e) for e in range(2, 1 + activity.AL_AHEAD)]
    # a write from extent 0 into 1 (unaligned sequential): the same
    assert al.ahead(0, MiB - 4096, 8192, 64 * MiB) == [(0, e) for e in range(2, 1 + activity.AL_AHEAD)]
    assert al.ahead(1, MiB, 4096, 64 * MiB) == []          # another volume's extent 0 is cold
    assert al.ahead(0, 62 * MiB, MiB, 64 * MiB) == []      # 61 is cold: nothing
    al.before_write(0, 61 * MiB, 4096, tag=2)
    assert al.ahead(0, 62 * MiB, MiB, 64 * MiB) == [(0, 63)]   # never past the volume's end
    assert al.ahead(0, 0, 4096, 64 * MiB) == []            # listed already: nothing to add


def test_extents_listed_ahead_stay_listed_until_written_or_writes_pause(tmp_path):
    MiB = 1 << 20
    al = ActivityLog(tmp_path / "g.al", extent=MiB)
    al.before_write(0, 0, 4096, tag=1)
    ahead = al.ahead(0, MiB, 4096, 64 * MiB)
    al.list_ahead(ahead)
    al.save()
    al.before_write(0, MiB, 4096, tag=2)
    al.before_write(0, 40 * MiB, 4096, tag=3)      # another extent: a save without ``extra``
    assert set(ahead) <= _on_disk(al.path)       # the stream's extents are still listed
    al.cool(upto=3, keep=0)                      # writes paused: all leave
    al.save()
    assert _on_disk(al.path) == set()
    for i in range(activity.AHEAD_MAX + 5):      # bounded however many "streams" start
        al.list_ahead([(1, i)])
    assert len(al._ahead) == activity.AHEAD_MAX and (1, 0) not in al._ahead
