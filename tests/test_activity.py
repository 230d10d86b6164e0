"""The primary's activity log (host/primary/activity.py): what it lists, when it writes."""

import pytest

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
