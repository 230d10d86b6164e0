"""A restarted relay lines a fresh engine up with its journal store.

The store holds journals across a crash; the engine (model, RTL or board)
does not.  The relay's recovery is LOAD CLEAR|SEQ|PTR with the store's
TAIL_SEQ and JOPTR, then the held journals resubmitted in order: every
resubmission must get the JOFS the store already holds it at, and the
workload must then go on with engine and store agreeing.
"""

import random

import pytest

from tricopy.host.wire import protocol as p
from tricopy.host.engine.model import EngineModel
from tricopy.host.wire.protocol import Control, FrameType, Kind, LoadFlag
from tricopy.host.journal.store import JournalStore, StoreFull


def _submit(engine: EngineModel, data: bytes, tag: int) -> p.Ack:
    ctl = Control(length=len(data), data_len=len(data), data_crc=p.crc32c(data),
                  kind=Kind.UPDATE, tag=tag)
    (answer,) = engine.handle(p.Frame(FrameType.JNLWR, ctl.pack() + data))
    return p.Ack.from_frame(answer)


def _stamped(engine: EngineModel, seq: int) -> tuple[Control, bytes]:
    frames = engine.handle(p.JnlRd(seq, 1).frame())
    ctl, data = p.split_journal(frames[0].body)
    return ctl, data


def _restart(store: JournalStore) -> EngineModel:
    engine = EngineModel(store.size, clock=lambda: 0)
    (ans,) = engine.handle(p.Load(LoadFlag.CLEAR | LoadFlag.SEQ | LoadFlag.PTR,
                                  seq=store.tail_seq, ptr=store.joptr).frame())
    assert p.Ack.from_frame(ans).status == p.Status.OK
    for ctl, data in store.read(store.tail_seq, store.next_seq - store.tail_seq):
        ack = _submit(engine, data, ctl.tag)
        assert (ack.status, ack.seq, ack.jofs) == (p.Status.OK, ctl.seq, ctl.jofs)
    assert (engine.jiptr, engine.joptr, engine.used, engine.wrap_at) == \
        (store.jiptr, store.joptr, store.used, store.wrap_at)
    return engine


@pytest.mark.parametrize("seed", range(6))
def test_restart_at_random_moments_keeps_engine_and_store_aligned(tmp_path, seed):
    rng = random.Random(seed)
    path = tmp_path / "jnl"
    store = JournalStore.create(path, 4096)
    engine = EngineModel(4096, clock=lambda: 0)
    restarts = wraps = 0
    for step in range(1500):
        if rng.random() < 0.02:
            store.sync()
            store.close()
            store = JournalStore.open(path)
            engine = _restart(store)
            restarts += 1
        if rng.random() < 0.3 and store.next_seq > store.tail_seq:
            upto = rng.randrange(store.tail_seq, store.next_seq)
            engine.handle(p.Release(upto).frame())
            store.release(upto)
            continue
        data = rng.randbytes(rng.choice([0, 1, 63, 64, 200, 700, 1500]))
        ack = _submit(engine, data, step)
        if ack.status == p.Status.FULL:
            with pytest.raises(StoreFull):
                store.placement(len(data))
            continue
        assert ack.status == p.Status.OK
        before = store.wrap_at
        store.append(*_stamped(engine, ack.seq))
        wraps += store.wrap_at != before and store.wrap_at < store.size
    store.close()
    assert restarts >= 10 and wraps >= 5


def test_rewound_empty_ring_survives_reopen(tmp_path):
    """An empty ring at X that rewinds for a large record must recover it at 0.

    Recovery scans from the persisted JOPTR: had it stayed X, the acked
    record at 0 would be lost on reopen.
    """
    from tricopy.host.tools.store_bench import stamped
    path = tmp_path / "jnl"
    with JournalStore.create(path, 1024) as s:
        s.append(stamped(s, bytes(600)), bytes(600))        # [0, 704)
        s.release(1)                                          # empty at 704
        data = bytes(range(256)) * 2
        ctl = stamped(s, data)
        assert ctl.jofs == 0                                  # 576 > 320: rewind
        s.append(ctl, data)
        s.sync()
    with JournalStore.open(path) as s:
        assert s.read(2, 1) == [(ctl, data)]
