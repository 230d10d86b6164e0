"""The site links against a hand-driven peer: dedup by PSEQ, refusal of bad input.

A real relay or secondary process on one end, the test speaking frames on
the other (tricopy.host.wire.link), so every answer asserted here crossed TCP
(TLS with the certificate of the site the test poses as).
"""

import asyncio
import socket
import time

import pytest

from tricopy.host.wire import protocol
from tricopy.host.wire.link import Link, LinkClosed, LinkError, LinkRefused, connect
from tricopy.host.wire.protocol import Control, Frame, FrameType, Hello, Kind, Role, Status

from .cluster import BLOCK, client_tls, server_tls

# The hand-driven peers hold the certificate of the site they pose as (the
# sites check the name: docs/security.md); test_security.py tries the others.
AS_PRIMARY = client_tls("primary")
AS_RELAY = client_tls("relay")


def journal(tag: int, data: bytes, *, address: int = 0, seq: int = 0) -> Control:
    return Control(seq=seq, address=address, length=len(data), data_len=len(data),
                   data_crc=protocol.crc32c(data), group=1, idx=0, kind=Kind.UPDATE,
                   tag=tag).with_ccrc()


def send_journal(link, ctl: Control, data: bytes) -> None:
    link.send(Frame(FrameType.JNLWR, protocol.journal_body(ctl, data)))


async def answer(link) -> protocol.Ack:
    return protocol.Ack.from_frame(await asyncio.wait_for(link.recv(), 10))


async def acks_upto(link, tag: int) -> list[protocol.Ack]:
    """The relay's answers until the ACK of PSEQ ``tag``: ACKs are cumulative,
    so one may stand for several journals (docs/replication.md)."""
    acks = [await answer(link)]
    while acks[-1].status != Status.OK or acks[-1].tag < tag:
        acks.append(await answer(link))
    return acks


def wait_for(pred, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (value := pred()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


def test_relay_drops_resent_journals_and_refuses_gaps(cluster):
    cluster.start("relay")
    addr = ("127.0.0.1", cluster.ports["relay"][0])
    hello = Hello(Role.PRIMARY, 1, 0, 0, "g1", "fake-primary")
    blocks = {i: bytes([i]) * BLOCK for i in range(1, 6)}
    at = {i: i * BLOCK for i in blocks}

    async def session(expect_last: int):
        link, peer = await connect(addr, hello, heartbeat=0.5, tls=AS_PRIMARY)
        assert peer.role == Role.RELAY and peer.last_seq == expect_last
        return link

    async def scenario():
        link = await session(0)
        for tag in (1, 2):       # one JNLWR carrying both (a batch)
            link.send_journal(journal(tag, blocks[tag], address=at[tag]).pack(), blocks[tag])
        acks = await acks_upto(link, 2)
        # cumulative ACKs: one for both, or one each; in order, the last names PSEQ 2 = SEQ# 2
        assert all(a.status == Status.OK for a in acks), acks
        assert [a.tag for a in acks] == sorted({a.tag for a in acks}) and len(acks) <= 2
        assert (acks[-1].tag, acks[-1].seq) == (2, 2)
        await link.close()
        # reconnect: the relay says it holds PSEQ 2; in one batch, a resend of 2 is
        # ACKed, not journaled, and 4 is refused (3 is missing): the answers in order
        link = await session(2)
        link.send_journal(journal(2, blocks[2], address=at[2]).pack(), blocks[2])
        link.send_journal(journal(4, blocks[4], address=at[4]).pack(), blocks[4])
        dup, gap = await answer(link), await answer(link)
        assert (dup.tag, dup.status) == (2, Status.OK)
        assert (gap.tag, gap.status) == (4, Status.BAD_REQUEST)
        # a batch that does not split into whole journals is refused whole: the
        # valid journal 3 before the stray bytes is not taken either
        body = protocol.journal_body(journal(3, blocks[3], address=at[3]), blocks[3]) + b"xx"
        link.send(Frame(FrameType.JNLWR, body))
        bad = await answer(link)
        assert bad.status == Status.BAD_LENGTH
        await link.close()

    asyncio.run(scenario())
    st = cluster.status("relay")
    assert (st["next_seq"], st["dups"], st["last_tag"]) == (3, 1, 2)
    # the PSEQ survives kill -9: it is read back from the journal volume
    cluster.kill("relay")
    cluster.start("relay")
    asyncio.run(_close(session(2)))
    # ... and from the relay's state file once the secondary took everything
    cluster.start("secondary")
    wait_for(lambda: cluster.status("relay")["held"] == 0, "the relay to drain")
    cluster.kill("relay")
    cluster.start("relay")
    asyncio.run(_close(session(2)))
    # exactly the two journals reached the SVOL, once each
    assert cluster.volume_bytes("secondary", 0)[:4 * BLOCK] == bytes(BLOCK) + blocks[1] + blocks[2] + bytes(BLOCK)
    assert cluster.status("secondary")["last_restored"] == 2


async def _close(link_coro):
    link = await link_coro
    await link.close()


def test_relay_refuses_wrong_group(cluster):
    cluster.start("relay")
    addr = ("127.0.0.1", cluster.ports["relay"][0])

    async def scenario():
        with pytest.raises(LinkRefused) as info:
            await connect(addr, Hello(Role.PRIMARY, 1, 0, 0, "other", "x"), heartbeat=0.5, tls=AS_PRIMARY)
        assert info.value.status == Status.WRONG_GROUP
        with pytest.raises(LinkRefused) as info:
            await connect(addr, Hello(Role.PRIMARY, 1, 7, 0, "g1", "x"), heartbeat=0.5, tls=AS_PRIMARY)
        assert info.value.status == Status.STALE_EPOCH

    asyncio.run(scenario())


def test_secondary_verifies_orders_and_replays(cluster):
    cluster.start("secondary")
    addr = ("127.0.0.1", cluster.ports["secondary"][0])
    hello = Hello(Role.RELAY, 1, 0, 3, "g1", "fake-relay")    # it holds journals 1..3
    data = {s: bytes([s]) * BLOCK for s in range(1, 4)}

    def stamped(seq):
        return journal(seq, data[seq], address=seq * BLOCK, seq=seq)

    async def scenario():
        link, peer = await connect(addr, hello, heartbeat=0.5, tls=AS_RELAY)
        assert peer.role == Role.SECONDARY and peer.last_seq == 0
        send_journal(link, stamped(1), data[1])
        assert (await answer(link)).seq == 1                    # restored, cumulative ACK
        bad = bytearray(data[2])
        bad[100] ^= 1                                           # data no longer matches DATA_CRC
        send_journal(link, stamped(2), bytes(bad))
        assert (await answer(link)).status == Status.BAD_DCRC
        with pytest.raises(LinkClosed):
            await asyncio.wait_for(link.recv(), 5)
        # reconnect: resume point is 1; seq 3 alone is a gap and is not restored
        link, peer = await connect(addr, hello, heartbeat=0.5, tls=AS_RELAY)
        assert peer.last_seq == 1
        send_journal(link, stamped(3), data[3])
        await asyncio.sleep(0.3)
        st = cluster.status("secondary")
        assert (st["last_restored"], st["gap"], st["staged"]) == (1, 2, 1)
        send_journal(link, stamped(1), data[1])                 # a replay: skipped, re-ACKed
        assert (await answer(link)).seq == 1
        send_journal(link, stamped(2), data[2])                 # fills the gap: 2 and 3 restored
        assert (await answer(link)).seq == 3
        await link.close()

    asyncio.run(scenario())
    svol = cluster.volume_bytes("secondary", 0)
    assert svol[BLOCK:4 * BLOCK] == data[1] + data[2] + data[3]
    # garbage on the link: the connection is dropped, nothing applied
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(b"\x00" * 64)
        assert s.recv(100) == b""
    assert cluster.status("secondary")["last_restored"] == 3


def test_secondary_refuses_a_relay_whose_stream_went_backwards(cluster):
    """Stream identity (epoch, SEQ#): a relay whose newest SEQ# is below the
    secondary's restore point, or at another epoch, is refused and the group
    suspends with a reason naming the numbers."""
    cluster.start("secondary")
    addr = ("127.0.0.1", cluster.ports["secondary"][0])
    data = {s: bytes([s]) * BLOCK for s in range(1, 4)}

    async def scenario():
        link, _ = await connect(addr, Hello(Role.RELAY, 1, 0, 3, "g1", "fake-relay"),
                                heartbeat=0.5, tls=AS_RELAY)
        for seq in (1, 2, 3):
            send_journal(link, journal(seq, data[seq], address=seq * BLOCK, seq=seq), data[seq])
        while (await answer(link)).seq != 3:
            pass
        await link.close()
        with pytest.raises(LinkRefused) as refused:
            await connect(addr, Hello(Role.RELAY, 1, 0, 1, "g1", "new-relay"), heartbeat=0.5, tls=AS_RELAY)
        assert refused.value.status == Status.SEQ_REGRESSION
        with pytest.raises(LinkRefused) as refused:
            await connect(addr, Hello(Role.RELAY, 1, 7, 3, "g1", "old-relay"), heartbeat=0.5, tls=AS_RELAY)
        assert refused.value.status == Status.STALE_EPOCH

    asyncio.run(scenario())
    st = cluster.status("secondary")
    assert st["grsts"] == "SUSP" and st["last_restored"] == 3
    assert "epoch 7" in st["reason"] or "SEQ# 1 " in st["reason"], st["reason"]
    assert "went backwards" in cluster.log("secondary")
    # The SVOL still is what it was: a prefix 1..3, honestly consistent.
    assert cluster.volume_bytes("secondary", 0)[BLOCK:4 * BLOCK] == data[1] + data[2] + data[3]


def test_relay_never_releases_past_what_it_forwarded(cluster):
    """A (fake) secondary that ACKs journals the relay never sent, or claims a
    restore point beyond the relay's stream, releases nothing."""
    cluster.start("relay")
    primary = ("127.0.0.1", cluster.ports["relay"][0])
    port = cluster.ports["secondary"][0]
    data = bytes([9]) * BLOCK
    seen = []

    async def scenario():
        claims = asyncio.Queue()
        for c in (0, 50):        # first a plain secondary, then one claiming SEQ# 50
            claims.put_nowait(c)

        async def fake_secondary(reader, writer):
            link = Link(reader, writer, initiator=False, heartbeat=0.5, name="fake-secondary")
            hello = await link.expect_hello()
            seen.append(hello.last_seq)
            claim = await claims.get() if not claims.empty() else 0
            link.send(Hello(Role.SECONDARY, 1, 0, claim, "g1", "fake-secondary").frame())
            try:
                while True:
                    frame = await link.recv()
                    if frame.type == FrameType.JNLWR:
                        link.send(protocol.Ack(seq=1000, req_type=FrameType.JNLWR).frame())
            except LinkError:
                pass

        server = await asyncio.start_server(fake_secondary, "127.0.0.1", port,
                                            ssl=server_tls("secondary"))
        link, _ = await connect(primary, Hello(Role.PRIMARY, 1, 0, 0, "g1", "p"), heartbeat=0.5, tls=AS_PRIMARY)
        for tag in (1, 2):
            send_journal(link, journal(tag, data), data)
            assert (await answer(link)).status == Status.OK
        await asyncio.sleep(3)
        await link.close()
        server.close()

    asyncio.run(scenario())
    st = cluster.status("relay")
    assert st["held"] == 2 and st["tail_seq"] == 1, st     # nothing released
    log = cluster.log("relay")
    assert "ACKed SEQ# 1000 but only" in log
    assert "has restored up to SEQ# 50 but this relay has issued only up to 2" in log
