"""The power switch of a site process (host/disk/powerswitch.py) and the two
things it needs from the power-cut disk: folders left outside the model, and
a cut that turns the disk off in the same step."""

from __future__ import annotations

import os
import random

import pytest

from tricopy.host.disk import fileio, powerswitch
from tricopy.host.disk.powercut import PowerCutDisk, PowerLost


def test_outside_folders_are_not_on_the_disk(tmp_path):
    (tmp_path / "state" / "snapshots").mkdir(parents=True)
    disk = PowerCutDisk(tmp_path, outside=("state/snapshots",))
    with fileio.use(disk):
        fd = fileio.open(tmp_path / "state" / "kept", os.O_WRONLY | os.O_CREAT, 0o644)
        fileio.pwrite(fd, b"synced", 0)
        fileio.fsync(fd)
        fileio.close(fd)
        fileio.fsync_dir(tmp_path / "state")
        # A scratch copy made with plain calls: neither an untracked write
        # nor part of what survives.
        (tmp_path / "state" / "snapshots" / "copy").write_bytes(b"scratch")
        image = disk.cut(random.Random(1))          # verifies: no UntrackedWrite
    assert image.files == {"state/kept": b"synced"}
    assert "state/snapshots" not in image.dirs


def test_power_cut_keeps_the_synced_and_turns_the_disk_off(tmp_path):
    disk = PowerCutDisk(tmp_path)
    with fileio.use(disk):
        fd = fileio.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
        fileio.pwrite(fd, b"a" * 512, 0)
        fileio.fdatasync(fd)
        fileio.fsync_dir(tmp_path)
        fileio.pwrite(fd, b"b" * 512, 512)          # never synced
        image = disk.power_cut(random.Random(2), policy="drop-all")
        with pytest.raises(PowerLost):
            fileio.fdatasync(fd)                     # no sync completes after the cut
        fileio.close(fd)
    assert image.files["f"] == b"a" * 512


def test_from_env_is_off_unless_asked_and_refuses_bad_settings(tmp_path):
    assert powerswitch.from_env({}) is None
    with pytest.raises(ValueError, match="not a folder"):
        powerswitch.from_env({powerswitch.ENV_ROOT: str(tmp_path / "missing")})
    with pytest.raises(ValueError, match="unset it"):
        powerswitch.from_env({powerswitch.ENV_ROOT: str(tmp_path),
                              powerswitch.ENV_MUTATIONS: "fdatasync,nosuch"})
    sw = powerswitch.from_env({powerswitch.ENV_ROOT: str(tmp_path),
                               powerswitch.ENV_MUTATIONS: "fdatasync",
                               powerswitch.ENV_OUTSIDE: "a:b/c"})
    assert sw.disk.mutations == {"fdatasync"} and sw.disk.outside == ("a", "b/c")
    assert powerswitch.cut_folder(str(tmp_path) + "/") == str(tmp_path) + ".cut"
