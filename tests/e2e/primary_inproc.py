"""A MasterGroup in the test's own event loop against real relay/secondary processes.

The relay and secondary run as processes (tests/e2e/cluster.py); the primary's
group is built from the primary's generated config in this process, so a test
can inject faults into it (monkeypatched ``fileio.writev``, ``fileio.pwrite``...) and
read its state directly.
"""

from __future__ import annotations

import asyncio
import contextlib

from tricopy.host.config import load_config
from tricopy.host.rcm.jnlg import JnlgTable
from tricopy.host.primary.site import MasterGroup
from tricopy.host.disk.volume import Volume

from .cluster import Cluster


@contextlib.asynccontextmanager
async def master_group(cluster: Cluster, *, connect: bool = True):
    """The primary's group of ``cluster``, its link task running while the block runs."""
    JnlgTable._open.clear()          # a previous group of this process must not be reused
    site = load_config(cluster.root / "primary" / "site.toml")
    for v in site.volumes:        # what `tricopy primary` does before it builds the groups
        Volume(v.path, v.size, v.block_size, idx=v.idx, create=v.create).close()
    group = MasterGroup(site.groups[0], site)
    task = asyncio.create_task(group.run_link())
    try:
        if connect:
            await until(lambda: group.link is not None and not group.link.closed,
                        "the group to connect to the relay")
        yield group
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if group.link is not None:
            await group.link.close()
        for vol in group.volumes.values():
            vol.close()
        if hasattr(group.log, "close"):
            group.log.close()
        JnlgTable._open.clear()


async def until(pred, what: str, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
