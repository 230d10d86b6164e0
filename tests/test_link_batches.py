"""Link.send_journal: the journals queued in one event-loop turn leave as JNLWR batches.

A Link over a writer that records what the transport was handed; the bytes
are parsed back with the wire codec (docs/protocol.md, "Journal batches").
"""

import asyncio

from tricopy.host.wire import protocol as p
from tricopy.host.wire.link import Link


class Writer(asyncio.StreamWriter):
    """What Link needs of an asyncio StreamWriter; keeps every byte written."""

    def __init__(self):       # no transport: every method Link calls is below
        self.wire = bytearray()
        self.writes = 0

    def writelines(self, bufs):
        self.writes += 1
        for b in bufs:
            self.wire += b

    def is_closing(self):
        return False

    def get_extra_info(self, name, default=None):
        return default

    async def drain(self):
        pass

    def close(self):
        pass

    async def wait_closed(self):
        pass

    def __del__(self):        # StreamWriter's would look for the transport
        pass


def journal(tag: int, n: int) -> tuple[p.Control, bytes]:
    data = bytes([tag & 0xFF]) * n
    return p.Control(length=n, data_len=n, data_crc=p.crc32c(data), tag=tag).with_ccrc(), data


def frames_sent(journals_then, *, flush_between=False):
    """Run a turn that queues ``journals_then`` (journals, or frames in between)."""
    async def run():
        w = Writer()
        link = Link(asyncio.StreamReader(), w, initiator=False)
        for item in journals_then:
            if isinstance(item, p.Frame):
                link.send(item)
            else:
                link.send_journal(item[0].pack(), item[1])
        await asyncio.sleep(0)        # the turn ends: one flush
        await link.close()
        return w
    w = asyncio.run(run())
    return p.FrameParser().feed(bytes(w.wire)), w.writes


def test_one_turn_of_journals_is_one_frame_in_one_write():
    js = [journal(t, 100 * t) for t in range(1, 6)]
    frames, writes = frames_sent(js)
    assert writes == 1 and [f.type for f in frames] == [p.FrameType.JNLWR]
    got = [(c, bytes(d)) for c, d in p.split_journals(frames[0].body)]
    assert got == js


def test_a_frame_sent_between_journals_closes_the_batch_keeping_the_order():
    hb = p.Frame(p.FrameType.HEARTBEAT, b"12345678")
    js = [journal(t, 10) for t in range(1, 5)]
    frames, _ = frames_sent([js[0], js[1], hb, js[2], js[3]])
    assert [f.type for f in frames] == [p.FrameType.JNLWR, p.FrameType.HEARTBEAT,
                                        p.FrameType.JNLWR]
    assert [c.tag for c, _ in p.split_journals(frames[0].body)] == [1, 2]
    assert [c.tag for c, _ in p.split_journals(frames[2].body)] == [3, 4]


def test_a_batch_closes_at_its_journal_and_byte_limits():
    many = [journal(t, 0) for t in range(1, p.BATCH_JOURNALS * 2 + 2)]
    frames, _ = frames_sent(many)
    assert [len(p.split_journals(f.body)) for f in frames] == [p.BATCH_JOURNALS,
                                                               p.BATCH_JOURNALS, 1]
    big = [journal(t, 300 << 10) for t in range(1, 6)]      # three fit in BATCH_BYTES
    frames, _ = frames_sent(big)
    sizes = [len(f.body) for f in frames]
    assert all(s <= p.BATCH_BYTES for s in sizes) and sum(sizes) == 5 * (64 + (300 << 10))
    assert [len(p.split_journals(f.body)) for f in frames] == [3, 2]
