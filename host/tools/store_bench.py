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
                 fsync: bool, batch: int = 1, preallocate: bool = False) -> dict:
    """Append ``count`` journals of ``data_len`` bytes to a new store at ``path``.

    With ``fsync`` the store is fdatasynced after every ``batch`` journals
    (``batch=1``: one fsync per journal, no group commit); without, never
    (page cache speed: UNSAFE, a bound only).  When the ring fills, everything
    is released, as a secondary that keeps up would.  The file is removed
    afterwards.  ``preallocate``: the store is created with its ring written
    with zeros (as the relay creates it), outside the timed part.  Returns
    records/s, MB/s (10**6 bytes of journal data) and the fdatasync latency
    (p50/p99 µs of the group-commit syncs).
    """
    if count < 1 or batch < 1:
        raise ValueError(f"count and batch must be >= 1, not {count}, {batch}")
    data = bytes((i * 131 + 7) & 0xFF for i in range(data_len))
    store = JournalStore.create(path, size, preallocate=preallocate)
    fsyncs = 0
    sync_s: list[float] = []

    def sync() -> None:
        t = time.perf_counter()
        store.sync()
        sync_s.append(time.perf_counter() - t)
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
                sync()
                fsyncs += 1
        if fsync:
            sync()
            fsyncs += 1
        elapsed = time.perf_counter() - start
    finally:
        store.close()
        os.unlink(path)
    sync_s.sort()
    return {
        "records": count, "data_len": data_len, "fsync": fsync, "batch": batch,
        "preallocate": preallocate, "fsyncs": fsyncs, "seconds": elapsed,
        "sync_p50_us": round(sync_s[len(sync_s) // 2] * 1e6) if sync_s else None,
        "sync_p99_us": round(sync_s[int(len(sync_s) * 0.99)] * 1e6) if sync_s else None,
        "records_per_s": count / elapsed, "mb_per_s": count * data_len / elapsed / 1e6,
    }
