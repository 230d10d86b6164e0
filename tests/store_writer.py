"""Helper process for test_store_crash.py: appends journals until killed.

    python store_writer.py PATH RING_SIZE SEED [lazy]

Opens the store at PATH (creating it if missing) and appends journals whose
content is a pure function of their SEQ# (:func:`journal`), from several
concurrent tasks through a GroupCommitter, releasing old ones as the ring
fills.  Every line on stdout is flushed when written:

    O <next_seq> <tail_seq>   store opened
    A <seq> <jofs>            journal appended (not yet durable)
    D <seq>                   journal reported durable (an ack)
    r <upto>                  about to release up to <upto>
    R <upto>                  release done (with ``lazy``: in memory only)
    P <upto>                  (``lazy``) releases up to <upto> persisted

With ``lazy`` every release is ``release(persist=False)`` and a task persists
them every few milliseconds, as the relay does (docs/store.md, "Lazy release").
"""

from __future__ import annotations

import asyncio
import os
import random
import sys

from tricopy.host.wire import protocol as p
from tricopy.host.journal.store import JournalStore, StoreFull
from tricopy.host.journal.commit import GroupCommitter

_SIZES = (0, 1, 100, 4000, 513, 64, 2500, 7)


def journal(seq: int, jofs: int) -> tuple[p.Control, bytes]:
    """The journal with this SEQ#, stamped for JOFS: the same on every run."""
    if seq % 17 == 0:                      # a ZERO journal: a range, no data
        data, kind, length = b"", p.Kind.ZERO, 8192
    else:
        n = _SIZES[seq % len(_SIZES)] + (seq * 13) % 200 * (seq % 3 == 0)
        data, kind, length = random.Random(seq).randbytes(n), p.Kind.UPDATE, n
    ctl = p.Control(seq=seq, time=seq * 1000, address=seq * 4096, jofs=jofs, length=length,
                    data_len=len(data), data_crc=p.crc32c(data), idx=seq % 4, kind=kind,
                    group=1, tag=seq & 0xFFFFFFFF)
    return ctl.with_ccrc(), data


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def run(store: JournalStore, rng: random.Random, lazy: bool = False) -> None:
    gc = GroupCommitter(store)

    def release(upto: int) -> None:
        say(f"r {upto}")
        store.release(upto, persist=not lazy)
        say(f"R {upto}")

    async def persister() -> None:
        while True:
            await asyncio.sleep(rng.uniform(0.001, 0.02))
            upto = store.tail_seq - 1
            if store.persist():
                say(f"P {upto}")

    async def make_room() -> None:
        if store.durable_seq >= store.tail_seq:
            release(store.durable_seq)
        else:
            await asyncio.sleep(0.001)      # wait for the fsync in flight

    async def writer() -> None:
        while True:
            try:
                seq = store.next_seq
                ctl, data = journal(seq, store.placement(journal(seq, 0)[0].data_len))
            except StoreFull:
                await make_room()
                continue
            # No await between stamping and appending: tasks cannot interleave here.
            # (append + wait_durable is append_durable with a line in between.)
            store.append(ctl, data)
            say(f"A {seq} {ctl.jofs}")
            await gc.wait_durable(seq)
            say(f"D {seq}")
            if store.free < store.size // 3 and rng.random() < 0.3:
                upto = store.durable_seq - rng.randint(0, 20)
                if upto >= store.tail_seq:
                    release(upto)

    await asyncio.gather(*(writer() for _ in range(8)), *([persister()] if lazy else []))


def main() -> None:
    path, size, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    store = JournalStore.open(path) if os.path.exists(path) else JournalStore.create(path, size)
    say(f"O {store.next_seq} {store.tail_seq}")
    lazy = sys.argv[4:] == ["lazy"]
    asyncio.run(run(store, random.Random(seed), lazy))


if __name__ == "__main__":
    main()
