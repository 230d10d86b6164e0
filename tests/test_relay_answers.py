"""The relay's answers to a JNLWR batch wait for the fdatasync that covers it.

In-process: a RelayGroup with the real model engine and store; the store's
fdatasync is held on an event, so the test decides when it ends.  A batch of
three journals goes through the ingest and the answer sender onto a link
that records what it is given: nothing may be sent while the sync is held,
then one cumulative ACK for all three (docs/replication.md, "Cumulative
ACKs").
"""

import asyncio
import threading

from tricopy.host.config import parse_config
from tricopy.host.disk import fileio
from tricopy.host.engine.base import open_engine
from tricopy.host.relay import site as relay
from tricopy.host.wire import protocol
from tricopy.host.wire.protocol import Control, FrameType


class Recorder:
    """The parts of a Link the answer sender uses."""

    def __init__(self):
        self.closed = False
        self.sent: list[protocol.Frame] = []

    def send(self, frame):
        self.sent.append(frame)

    async def drain(self):
        pass

    async def close(self):
        self.closed = True


def test_a_batch_is_acked_once_after_the_fdatasync_that_covers_it(tmp_path, monkeypatch):
    size = 1 << 20
    site = parse_config({
        "site": "r", "listen": "127.0.0.1:1", "state_dir": "state",
        "group": [{"grnum": 1, "grname": "g", "attr": "INTERMEDIARY", "peer": "127.0.0.1:2",
                   "journal": {"path": "jnl.vol", "size": size}}]}, tmp_path)
    began, go = threading.Event(), threading.Event()
    real = fileio.fdatasync

    def held(fd):
        began.set()
        assert go.wait(10)
        real(fd)

    async def scenario():
        group = relay.RelayGroup(site.groups[0], site, open_engine("model", size=size),
                                 descriptor=True)
        await group.recover_engine()
        monkeypatch.setattr(fileio, "fdatasync", held)
        parts = []
        for tag in (1, 2, 3):
            data = bytes([tag]) * 4096
            parts.append(protocol.journal_body(Control(
                address=tag * 4096, length=4096, data_len=4096, data_crc=protocol.crc32c(data),
                group=1, tag=tag), data))
        answers = await group._ingest_frame(b"".join(parts))
        assert [seq for seq, _ in answers] == [1, 2, 3]
        link, queue = Recorder(), asyncio.Queue()
        sender = asyncio.create_task(group._send_answers(link, queue))
        queue.put_nowait((answers, 0.0))       # one item per frame, as serve_primary does
        assert await asyncio.to_thread(began.wait, 10)
        for _ in range(20):            # the sender runs as far as it can meanwhile
            await asyncio.sleep(0)
        assert link.sent == [], "an ACK left before the fdatasync covering it ended"
        go.set()
        queue.put_nowait(None)
        await asyncio.wait_for(sender, 10)
        acks = [protocol.Ack.from_frame(f) for f in link.sent]
        assert [(a.tag, a.seq, a.status) for a in acks] == [(3, 3, 0)]
        assert group.store.durable_seq == 3
        monkeypatch.setattr(fileio, "fdatasync", real)
        await group._commit.aclose()
        group.store.close()

    asyncio.run(scenario())


def test_a_journal_whose_data_fails_its_crc_is_refused_and_never_stored(tmp_path):
    """The relay checks a journal's DATA_CRC once, at ingest (the store is
    told it was checked): that one check must refuse a corrupted journal
    with BAD_DCRC before the engine allocates it, keep the journals before
    it, and leave nothing of it in the journal volume."""
    size = 1 << 20
    site = parse_config({
        "site": "r", "listen": "127.0.0.1:1", "state_dir": "state",
        "group": [{"grnum": 1, "grname": "g", "attr": "INTERMEDIARY", "peer": "127.0.0.1:2",
                   "journal": {"path": "jnl.vol", "size": size}}]}, tmp_path)

    async def scenario():
        group = relay.RelayGroup(site.groups[0], site, open_engine("model", size=size),
                                 descriptor=True)
        await group.recover_engine()
        parts, datas = [], {}
        for tag in (1, 2):
            data = bytes([tag]) * 4096
            ctl = Control(address=tag * 4096, length=4096, data_len=4096,
                          data_crc=protocol.crc32c(data), group=1, tag=tag)
            if tag == 2:
                data = data[:100] + b"\xff" + data[101:]      # corrupted after its CRC
            parts.append(protocol.journal_body(ctl, data))
            datas[tag] = data
        answers = await group._ingest_frame(b"".join(parts))
        assert not group.fault, group.reason
        assert answers[0][0] == 1
        refused = protocol.Ack.from_frame(answers[1][1])
        assert answers[1][0] is None and refused.status == protocol.Status.BAD_DCRC
        assert group.store.next_seq == 2            # only journal 1 went to the store
        ((ctl, data),) = group.store.read(1, 5)
        assert (ctl.tag, bytes(data)) == (1, datas[1])
        # and the engine allocated nothing for it: the next good journal is seq 2
        good = bytes([3]) * 4096
        (answer,) = await group._ingest_frame(protocol.journal_body(Control(
            address=0, length=4096, data_len=4096, data_crc=protocol.crc32c(good),
            group=1, tag=2), good))
        assert answer[0] == 2 and group.store.next_seq == 3
        await group._commit.aclose()
        group.store.close()

    asyncio.run(scenario())
