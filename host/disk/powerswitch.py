"""A site process on the power-cut disk, and its power switch (test tools only).

``tricopy chaos`` cuts the power of a whole site process: the files it wrote
but never synced must be lost, which a SIGKILL cannot show (the page cache
survives it).  So the chaos runner starts a site with these environment
variables, and the site runs its whole life on a
:class:`~.powercut.PowerCutDisk` (sites_cli reads them; nothing else does,
and an operator never sets them):

``TRICOPY_POWERCUT_ROOT``
    The folder the disk models (the site's volumes, journal and state
    folder; not its log or config, which are written with plain calls).
    Files found there at the start count as synced.
``TRICOPY_POWERCUT_OUTSIDE``
    Sub-folders of the root that are not on the disk, ``:``-separated
    (the secondary's ``state/snapshots``: scratch copies, plain calls).
``TRICOPY_POWERCUT_MUTATIONS``
    Syncs the disk turns into no-ops (``fdatasync,fsync,dirsync``), only to
    show that the chaos checks notice a missing sync.
``TRICOPY_POWERCUT_SEED``
    Seeds the cut (which unsynced writes survive, torn or not).

``SIGUSR1`` is the switch: the site takes the image a power cut at that
instant leaves and turns the disk off in one step
(:meth:`PowerCutDisk.power_cut`), writes the image to ``<root>.cut`` and
exits at once with :data:`EXIT_POWER_CUT` -- no clean-up, no reply, no
flush of anything.  The runner then puts ``<root>.cut`` in place of
``<root>`` and starts the site again on the surviving bytes.

The signal is handled on the event loop (``loop.add_signal_handler``), so
the cut never lands inside a file call of the loop's own thread; calls in
worker threads (the relay's group-commit fdatasync) race with it exactly as
with a real power loss, under the disk's lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import signal

from . import fileio
from .powercut import MUTATIONS, PowerCutDisk

__all__ = ["ENV_ROOT", "ENV_OUTSIDE", "ENV_MUTATIONS", "ENV_SEED", "SWITCH", "EXIT_POWER_CUT",
           "PowerSwitch", "from_env", "cut_folder"]

ENV_ROOT = "TRICOPY_POWERCUT_ROOT"
ENV_OUTSIDE = "TRICOPY_POWERCUT_OUTSIDE"
ENV_MUTATIONS = "TRICOPY_POWERCUT_MUTATIONS"
ENV_SEED = "TRICOPY_POWERCUT_SEED"
SWITCH = signal.SIGUSR1
EXIT_POWER_CUT = 86       # not 0/1/2: the runner tells a power cut from a crash

log = logging.getLogger("tricopy.host.disk.powerswitch")


def cut_folder(root: str | os.PathLike) -> str:
    """Where a cut site leaves the image of ``root``."""
    return os.fspath(root).rstrip(os.sep) + ".cut"


class PowerSwitch:
    """One site process's power-cut disk and what SIGUSR1 does to it."""

    def __init__(self, root: str, *, outside: tuple[str, ...] = (), mutations=(),
                 seed: int = 0):
        self.disk = PowerCutDisk(root, mutations=mutations, outside=outside)
        self.rng = random.Random(seed)
        self._use = None

    def __enter__(self) -> "PowerSwitch":
        self._use = fileio.use(self.disk)
        self._use.__enter__()
        log.warning("running on a simulated power-cut disk at %s (a test tool's setting, "
                    "%s): SIGUSR1 cuts the power", self.disk.root, ENV_ROOT)
        return self

    def __exit__(self, *exc) -> None:
        self._use.__exit__(*exc)

    def arm(self, loop) -> None:
        loop.add_signal_handler(SWITCH, self.cut)

    def cut(self) -> None:
        image = self.disk.power_cut(self.rng)
        dest = cut_folder(self.disk.root)
        shutil.rmtree(dest, ignore_errors=True)
        image.materialize(dest)
        # One line, then gone: a powered-off host says nothing more.
        log.warning("power cut: %s (%d files); the image is in %s", image.note,
                    len(image.files), dest)
        for h in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                h.flush()
        os._exit(EXIT_POWER_CUT)


def from_env(environ=os.environ) -> PowerSwitch | None:
    """The switch the environment asks for, or None (the normal case)."""
    root = environ.get(ENV_ROOT)
    if not root:
        return None
    mutations = tuple(m for m in environ.get(ENV_MUTATIONS, "").split(",") if m)
    bad = set(mutations) - MUTATIONS
    if bad:
        raise ValueError(f"{ENV_MUTATIONS}: {sorted(bad)} not among {sorted(MUTATIONS)} — "
                         f"unset it (it is for the chaos runner's checks only)")
    if not os.path.isdir(root):
        raise ValueError(f"{ENV_ROOT}: {root} is not a folder — create it, or unset "
                         f"{ENV_ROOT} (it is for the chaos runner only)")
    outside = tuple(o for o in environ.get(ENV_OUTSIDE, "").split(":") if o)
    return PowerSwitch(root, outside=outside, mutations=mutations,
                       seed=int(environ.get(ENV_SEED, "0")))
