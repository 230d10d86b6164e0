"""Append throughput of the journal store, for ``tricopy bench``."""

from __future__ import annotations

import os
import time

from ..wire.protocol import Control, Kind, crc32c
from ..journal.store import JournalStore, StoreFull

__all__ = ["bench_append", "stamped"]


def stamped(store: JournalStore, data: bytes, *, address: int = 0, time_ns: int = 0,
            tag: int = 0, kind: int = Kind.UPDATE) -> Control:
    """Control data for ``data`` stamped as the engine would for this store's
    next journal (SEQ#, TIME, JOFS, CCRC): what a relay test or a benchmark
    feeds to :meth:`JournalStore.append` without an engine."""
    length = len(data) if kind in (Kind.UPDATE, Kind.BASE) else 0
    return Control(seq=store.next_seq, time=time_ns, address=address,
                   jofs=store.placement(len(data)), length=length, data_len=len(data),
                   data_crc=crc32c(data), epoch=store.epoch, kind=kind, tag=tag).with_ccrc()


def bench_append(path: str | os.PathLike, size: int, data_len: int, count: int,
                 fsync: bool, batch: int = 1) -> dict:
    """Append ``count`` journals of ``data_len`` bytes to a new store at ``path``.

    With ``fsync`` the store is fdatasynced after every ``batch`` journals
    (``batch=1``: one fsync per journal, no group commit); without, never
    (page cache speed: UNSAFE, a bound only).  When the ring fills, everything
    is released, as a secondary that keeps up would.  The file is removed
    afterwards.  Returns records/s and MB/s (10**6 bytes of journal data).
    """
    if count < 1 or batch < 1:
        raise ValueError(f"count and batch must be >= 1, not {count}, {batch}")
    data = bytes((i * 131 + 7) & 0xFF for i in range(data_len))
    store = JournalStore.create(path, size)
    fsyncs = 0
    try:
        start = time.perf_counter()
        for i in range(count):
            ctl = None
            while ctl is None:
                try:
                    ctl = stamped(store, data, address=i * data_len, time_ns=i)
                except StoreFull:
                    store.release(store.next_seq - 1)
                    fsyncs += 1
            store.append(ctl, data)
            if fsync and (i + 1) % batch == 0:
                store.sync()
                fsyncs += 1
        if fsync:
            store.sync()
            fsyncs += 1
        elapsed = time.perf_counter() - start
    finally:
        store.close()
        os.unlink(path)
    return {
        "records": count, "data_len": data_len, "fsync": fsync, "batch": batch,
        "fsyncs": fsyncs, "seconds": elapsed,
        "records_per_s": count / elapsed, "mb_per_s": count * data_len / elapsed / 1e6,
    }
