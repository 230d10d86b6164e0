"""fdatasync from the event loop without a worker thread: Linux AIO's FDSYNC.

The group committer (``host/journal/commit.py``) keeps up to two
fdatasyncs in flight while the event loop goes on taking journals.  Handed
to a worker thread, each sync cost about 100 µs more CPU than the
fdatasync itself on this project's 2-vCPU VMs: the worker's wake-up, the
GIL passed to it and back, and the loop's own wake-up through its self-pipe
(docs/benchmarks.md, "Syncs without a thread").  Linux's native AIO takes an
``IOCB_CMD_FDSYNC``: the kernel runs the sync on its own workqueue and,
when it is done, bumps an eventfd that the event loop polls with its
sockets.  No Python thread wakes.

Why the ``libaio`` package (ctypes over the system's libaio.so.1) and not
io_uring: the standard library has neither; io_uring is often disabled
(the ``kernel.io_uring_disabled`` sysctl, container seccomp profiles) and has
no well-kept pure-Python binding, while AIO fsync has worked since Linux
4.18 and needs nothing but libaio1.

:func:`syncer` picks the :class:`AioSyncer` when the file layer is the real
one (``fileio.OS``) and AIO works here, else the :class:`ThreadSyncer`
(which calls ``fileio.fdatasync`` in a worker: a test's power-cut disk sees
every sync).  Both have one coroutine, ``fdatasync(fd)``, that raises
``OSError`` as ``os.fdatasync`` would.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from concurrent.futures import ThreadPoolExecutor

from . import fileio

__all__ = ["AioSyncer", "ThreadSyncer", "syncer", "aio_unavailable"]

log = logging.getLogger(__name__)

#: AIO requests one context holds at once: more than the committer's
#: syncs in flight, so a submit never waits for room.
AIO_DEPTH = 16


class ThreadSyncer:
    """``fileio.fdatasync`` in worker threads (the fallback, and the power-cut tests' path)."""

    kind = "thread"

    def __init__(self, workers: int):
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fdatasync")

    async def fdatasync(self, fd: int) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, fileio.fdatasync, fd)

    def close(self) -> None:
        self._executor.shutdown(wait=True)


class AioSyncer:
    """fdatasyncs submitted to the kernel as AIO FDSYNC requests, completed
    through an eventfd the running event loop watches."""

    kind = "aio"

    def __init__(self, loop: asyncio.AbstractEventLoop):
        import libaio    # imported here: a host without libaio1 still runs (ThreadSyncer)
        self._libaio = libaio
        self._loop = loop
        self._ctx = libaio.AIOContext(AIO_DEPTH)
        self._efd = libaio.EventFD(0, libaio.EFD_NONBLOCK | libaio.EFD_CLOEXEC)
        # Each request's future, by the request: a completion is matched to
        # its own request, never to "the oldest", so two syncs in flight on
        # two descriptors finish each on its own.
        self._pending: dict[int, tuple[object, asyncio.Future]] = {}
        loop.add_reader(self._efd.fileno(), self._reap)
        self._closed = False

    async def fdatasync(self, fd: int) -> None:
        if self._closed:
            raise OSError(errno.EBADF, "the AIO syncer is closed")
        fut = self._loop.create_future()
        block = self._libaio.AIOBlock(self._libaio.AIOBLOCK_MODE_FDSYNC, fd,
                                      eventfd=self._efd, onCompletion=self._done)
        self._pending[id(block)] = (block, fut)
        try:
            self._ctx.submit([block])
        except OSError:
            del self._pending[id(block)]
            raise
        # Not shielded on purpose: the caller (the group committer) shields
        # the task that awaits this.  A cancelled await leaves the request
        # with the kernel; its completion then finds a done future and is
        # dropped.
        await fut

    def _done(self, block, res: int, res2: int) -> None:
        _, fut = self._pending.pop(id(block))
        if fut.done():
            return
        if res < 0:
            # The kernel's result is -errno, as fdatasync(2) would have returned.
            fut.set_exception(OSError(-res, os.strerror(-res)))
        else:
            fut.set_result(None)

    def _reap(self) -> None:
        try:
            self._efd.read()
        except BlockingIOError:
            return
        # Non-blocking: take every completion that is there (each calls _done).
        self._ctx.getEvents(min_nr=0, timeout=0)

    def close(self) -> None:
        """Wait for the requests still with the kernel, then free the context."""
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._efd.fileno())
        if self._pending:
            self._ctx.getEvents(min_nr=len(self._pending))
        self._ctx.close()
        self._efd.close()


_unavailable: str | None = None
_probed = False


def aio_unavailable() -> str | None:
    """Why AIO fdatasync cannot be used here (None if it can): probed once
    per process, with a real FDSYNC on a temporary file."""
    global _unavailable, _probed
    if _probed:
        return _unavailable
    _probed = True
    try:
        import tempfile
        import libaio
        ctx = libaio.AIOContext(1)
        try:
            with tempfile.TemporaryFile() as f:
                f.write(b"probe")
                f.flush()
                done = []
                ctx.submit([libaio.AIOBlock(libaio.AIOBLOCK_MODE_FDSYNC, f.fileno(),
                                            onCompletion=lambda b, r, r2: done.append(r))])
                ctx.getEvents(min_nr=1, timeout=5)
                if not done or done[0] < 0:
                    raise OSError(-done[0] if done else errno.ETIMEDOUT, "AIO FDSYNC probe failed")
        finally:
            ctx.close()
    except Exception as exc:     # ImportError, OSError (ENOSYS, EAGAIN: aio-max-nr), ...
        _unavailable = f"{type(exc).__name__}: {exc}"
    return _unavailable


def syncer(workers: int, loop: asyncio.AbstractEventLoop | None = None):
    """The syncer for this process: AIO on the real file layer when it works,
    else worker threads (a test's file layer, or no AIO; logged once)."""
    if os.environ.get("TRICOPY_SYNC_THREADS") == "1":
        return ThreadSyncer(workers)
    if fileio.backend() is not fileio.OS:
        return ThreadSyncer(workers)
    why = aio_unavailable()
    if why is not None:
        if not getattr(syncer, "_logged", False):
            syncer._logged = True
            log.warning("fdatasync runs in worker threads (about 100 µs more CPU per sync): "
                        "Linux AIO is not usable here (%s); install libaio1 to use it", why)
        return ThreadSyncer(workers)
    return AioSyncer(loop or asyncio.get_running_loop())
