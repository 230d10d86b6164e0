"""The relay places a JNLWR batch's journals with JNLDESC batches.

In-process: RelayGroups with the real model engine and store.  The same
frames go through a group whose engine takes batches (one JNLDESC per run
of journals) and through one whose engine takes one descriptor per JNLDESC
(the relay falls back to placing one by one, as it did before batches): the
answers (TAG, status, SEQ#, JOFS) and the journal volumes must be the same,
over a wrap in the middle of a batch, a FULL in the middle of one, a
journal with a bad DATA_CRC, a resend, a PSEQ gap and a frame of more
journals than one batch holds.  Only TIME may
differ: a batch's journals all carry the batch's TIME.
"""

import asyncio

from tricopy.host.config import parse_config
from tricopy.host.engine.base import ModelEngine
from tricopy.host.engine.model import EngineModel
from tricopy.host.relay import site as relay
from tricopy.host.relay.streams import answer_ack
from tricopy.host.wire import protocol
from tricopy.host.wire.protocol import Control, Status

SIZE = 64 * 1024           # a 4 KiB journal is a 4,160-byte record: 15 fit


class Counting(ModelEngine):
    """The model engine, counting the JNLDESC requests the relay makes."""

    def __init__(self, model):
        super().__init__(model)
        self.requests = 0

    async def place(self, control):
        self.requests += 1
        return await super().place(control)

    async def place_batch(self, controls):
        self.requests += 1
        return await super().place_batch(controls)


def _journal(tag: int, *, bad_crc: bool = False, size: int = 4096) -> bytes:
    data = bytes([tag & 0xFF]) * size
    crc = protocol.crc32c(data) ^ (1 if bad_crc else 0)
    return protocol.journal_body(Control(address=tag * 4096, length=size, data_len=size,
                                         data_crc=crc, group=1, tag=tag), data)


def _frame(*parts) -> bytes:
    return b"".join(parts)


async def _run(tmp_path, desc_batch: int):
    site = parse_config({
        "site": "r", "listen": "127.0.0.1:1", "state_dir": "state",
        "group": [{"grnum": 1, "grname": "g", "attr": "INTERMEDIARY", "peer": "127.0.0.1:2",
                   "journal": {"path": "jnl.vol", "size": SIZE}}]}, tmp_path)
    engine = Counting(EngineModel(SIZE, memory=0, clock=lambda: 7, desc_batch=desc_batch))
    group = relay.RelayGroup(site.groups[0], site, engine, descriptor=True)
    await group.recover_engine()
    steps = []

    async def send(body):
        before = engine.requests
        answers = await group._ingest_frame(body)
        out = []
        for seq, frame in answers:
            a = answer_ack(frame)
            out.append((a.tag, Status(a.status).name, a.seq, a.jofs, seq))
        steps.append((out, engine.requests - before))

    await send(_frame(*(_journal(t) for t in range(1, 11))))          # 10 of 15 records
    await group._release(8)                                           # JOPTR to record 9
    # 10 more: 5 in the tail, then a WRAP marker and 5 at the head
    await send(_frame(*(_journal(t) for t in range(11, 21))))
    # a resend of 20, then 21..30: the ring holds 12, so 21..23 fit, 24 is
    # FULL and 25.. follow a gap
    await send(_frame(_journal(20), *(_journal(t) for t in range(21, 31))))
    await group._release(23)
    # 24, 25, a bad DATA_CRC on 26, then 27 (a gap now)
    await send(_frame(_journal(24), _journal(25), _journal(26, bad_crc=True), _journal(27)))
    await group._release(25)
    # 100 small journals: more than one batch holds (DESC_BATCH), so two runs
    await send(_frame(*(_journal(t, size=64) for t in range(26, 126))))
    journals = [(c.seq, c.tag, c.jofs, bytes(d)) for c, d in
                group.store.read(group.store.tail_seq, group.store.next_seq - group.store.tail_seq)]
    group.store.close()
    return steps, journals, engine


def test_batches_answer_and_store_as_one_by_one(tmp_path):
    batched, stored_b, engine_b = asyncio.run(_run(tmp_path / "b", protocol.DESC_BATCH))
    single, stored_s, engine_s = asyncio.run(_run(tmp_path / "s", 1))
    answers_b = [a for a, _ in batched]
    answers_s = [a for a, _ in single]
    assert answers_b == answers_s
    assert stored_b == stored_s and stored_b, "the journal volumes differ"
    # what the scenario is about really happened
    flat = [a for step in answers_b for a in step]
    assert ("FULL" in {s for _, s, *_ in flat}) and ("BAD_DCRC" in {s for _, s, *_ in flat})
    assert [a[:3] for a in answers_b[2][:5]] == [(20, "OK", 0), (21, "OK", 21), (22, "OK", 22),
                                                 (23, "OK", 23), (24, "FULL", 0)]
    assert all(s == "BAD_REQUEST" for _, s, *_ in answers_b[2][5:])
    wrapped = [j for (t, s, seq, j, _) in answers_b[1] if s == "OK"]
    assert wrapped != sorted(wrapped), "the second frame did not wrap"
    # one JNLDESC per run of journals with batches; one per journal without
    assert len(answers_b[4]) == 100 and all(s == "OK" for _, s, *_ in answers_b[4])
    assert [n for _, n in batched] == [1, 1, 1, 1, 2]
    assert [n for _, n in single][0] == 1 + 10     # the refused batch, then one by one


def test_the_forwarder_takes_fresh_journals_from_memory_as_the_volume_holds_them(
        tmp_path, monkeypatch):
    """Journals just taken are forwarded from memory (``_from_recent``), not
    read back from the journal volume; what memory gives must be what
    ``store.read`` gives, SEQ# for SEQ#, and past RECENT_BYTES (or for a
    SEQ# no longer there) it gives nothing so the forwarder reads the volume."""
    monkeypatch.setattr(relay, "RECENT_BYTES", 10 * 4096)

    async def scenario():
        site = parse_config({
            "site": "r", "listen": "127.0.0.1:1", "state_dir": "state",
            "group": [{"grnum": 1, "grname": "g", "attr": "INTERMEDIARY",
                       "peer": "127.0.0.1:2", "journal": {"path": "jnl.vol", "size": SIZE}}]},
            tmp_path)
        group = relay.RelayGroup(site.groups[0], site,
                                 ModelEngine(EngineModel(SIZE, memory=0, clock=lambda: 7)),
                                 descriptor=True)
        await group.recover_engine()
        await group._ingest_frame(_frame(*(_journal(t) for t in range(1, 13))))
        mem = group._from_recent(3, 8)
        disk = group.store.read(3, 8)
        assert [c.seq for c, _ in mem] == list(range(3, 11))
        assert [(c.pack(), bytes(d)) for c, d in mem] == [(c.pack(), d) for c, d in disk]
        assert group._from_recent(1, 4) == [], "journals 1, 2 were past the bound"
        assert [c.seq for c, _ in group._from_recent(11, 64)] == [11, 12]
        assert group._from_recent(5, 4) == [], "dropped once the forwarder went past them"
        group.store.close()

    asyncio.run(scenario())
