"""The relay rebuilds a fresh engine from its journal volume (relay restart).

In-process, with the real model engine and the real store: journals of random
sizes go in through the relay's ingest path, random releases make the ring
wrap, and at random points the engine is replaced by a fresh one that
``recover_engine`` must bring to exactly the store's state, after which
journals keep flowing with engine and store agreeing on every JOFS.
"""

import asyncio
import errno
import os
import random

import pytest

from tricopy.host.wire import protocol
from tricopy.host.relay import site as relay
from tricopy.host.journal import store
from tricopy.host.disk import fileio
from tricopy.host.config import parse_config
from tricopy.host.engine.base import EngineTimeout, open_engine
from tricopy.host.wire.protocol import Control, FrameType


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_engine_rebuilt_from_store(tmp_path, monkeypatch, seed):
    size = 16 << 10
    site = parse_config({
        "site": "r", "listen": "127.0.0.1:1", "state_dir": "state",
        "group": [{"grnum": 1, "grname": "g", "attr": "INTERMEDIARY", "peer": "127.0.0.1:2",
                   "journal": {"path": "jnl.vol", "size": size}}]}, tmp_path)
    rng = random.Random(seed)

    async def scenario():
        group = relay.RelayGroup(site.groups[0], site, open_engine("model", size=size))
        await group.recover_engine()
        tag, rebuilt, wrapped, moved = 0, 0, 0, 0
        for step in range(600):
            action = rng.random()
            if action < 0.6:
                data = rng.randbytes(rng.choice([0, 1, 64, 100, 1000, 3000, 5000]))
                ctl = Control(length=len(data), data_len=len(data),
                              data_crc=protocol.crc32c(data) if data else 0, group=1,
                              tag=tag + 1)
                seq, frame = await group._ingest_one(protocol.journal_body(ctl, data))
                if frame.type == FrameType.ACK:
                    tag += 1
                    await group.durable(seq)
                else:
                    assert protocol.Ack.from_frame(frame).status == protocol.Status.FULL
            elif action < 0.85 and group.store.held:
                s = group.store
                await group._release(rng.randint(s.tail_seq, s.next_seq - 1))
            else:
                s = group.store
                wrapped += s.wrap_at != s.size
                moved += bool(s.held and s.joptr)
                group.engine = open_engine("model", size=size)
                await group.recover_engine()
                st = await group.engine.status()
                assert (st.jiptr, st.joptr, st.next_seq, st.tail_seq, st.wrap_at, st.free) == (
                    s.jiptr, s.joptr, s.next_seq, s.tail_seq, s.wrap_at, s.free)
                rebuilt += 1
        assert tag > 100 and rebuilt > 10
        # the interesting cases happened: a rebuild behind a WRAP marker, and with JOPTR > 0
        assert wrapped and moved

    asyncio.run(scenario())


def test_a_store_failure_suspends_only_its_group(tmp_path, monkeypatch):
    """An fsync error in one group's journal volume suspends that group with a
    reason (its journal is never ACKed); the other group and the relay process
    go on.  Before, any store error ended the whole relay with os._exit."""
    size = 16 << 10
    site = parse_config({
        "site": "r", "listen": "127.0.0.1:1", "state_dir": "state",
        "group": [{"grnum": n, "grname": f"g{n}", "attr": "INTERMEDIARY", "peer": "127.0.0.1:2",
                   "journal": {"path": f"jnl{n}.vol", "size": size}} for n in (1, 2)]}, tmp_path)

    async def scenario():
        groups = [relay.RelayGroup(g, site, open_engine("model", size=size)) for g in site.groups]
        for g in groups:
            await g.recover_engine()
        bad, good = groups
        real = fileio.fdatasync

        def fdatasync(fd):       # the disk under group 1's journal volume fails
            if fd == bad.store._fd:
                raise OSError(errno.EIO, "Input/output error")
            real(fd)

        monkeypatch.setattr(fileio, "fdatasync", fdatasync)
        for g in groups:
            data = b"x" * 100
            ctl = Control(length=100, data_len=100, data_crc=protocol.crc32c(data),
                          group=g.cfg.grnum, tag=1)
            seq, frame = await g._ingest_one(protocol.journal_body(ctl, data))
            assert frame.type == FrameType.ACK
            if g is bad:
                with pytest.raises(relay.GroupFault):
                    await g.durable(seq)
            else:
                await g.durable(seq)
        st = bad.status()
        assert st["grsts"] == "SUSP" and "fsync failed" in st["reason"]
        assert "restart the relay" in st["reason"]
        # A suspended group refuses new journals; the good one takes them.
        data = b"y" * 100
        for g, expect in ((bad, protocol.Status.SUSPENDED), (good, protocol.Status.OK)):
            ctl = Control(length=100, data_len=100, data_crc=protocol.crc32c(data),
                          group=g.cfg.grnum, tag=2)
            _, frame = await g._ingest_one(protocol.journal_body(ctl, data))
            assert protocol.Ack.from_frame(frame).status == expect
        assert good.status()["grsts"] != "SUSP" and good.store.held == 2

    asyncio.run(scenario())


def test_an_engine_timeout_suspends_only_its_group(tmp_path):
    """A board (or the sim) that stops answering raises EngineTimeout in the
    group that asked: that group suspends with the engine's reason (its
    journal is never ACKed: the engine may or may not have stamped it), and
    the other group, with its own engine, goes on.  Without the relay's
    ``except EngineError`` the timeout would escape the link handler."""
    size = 16 << 10
    site = parse_config({
        "site": "r", "listen": "127.0.0.1:1", "state_dir": "state",
        "group": [{"grnum": n, "grname": f"g{n}", "attr": "INTERMEDIARY", "peer": "127.0.0.1:2",
                   "journal": {"path": f"jnl{n}.vol", "size": size}} for n in (1, 2)]}, tmp_path)

    def body(grnum: int, tag: int) -> bytes:
        data = b"z" * 100
        return protocol.journal_body(Control(length=100, data_len=100, group=grnum, tag=tag,
                                             data_crc=protocol.crc32c(data)), data)

    async def scenario():
        groups = [relay.RelayGroup(g, site, open_engine("model", size=size)) for g in site.groups]
        for g in groups:
            await g.recover_engine()
        bad, good = groups

        async def silent(*args, **kwargs):      # what PortEngine raises after its timeout
            raise EngineTimeout("engine at 'socket://127.0.0.1:9' silent for 5.0 s")

        bad.engine.submit = silent
        with pytest.raises(relay.GroupFault):
            await bad._ingest_one(body(1, 1))
        st = bad.status()
        assert st["grsts"] == "SUSP", st
        assert "engine failed" in st["reason"] and "silent for 5.0 s" in st["reason"], st
        assert "restart the relay" in st["reason"], st
        assert bad.store.held == 0          # nothing stored, nothing ACKed
        # The suspended group NAKs what comes next; the other group takes it.
        _, frame = await bad._ingest_one(body(1, 1))
        assert protocol.Ack.from_frame(frame).status == protocol.Status.SUSPENDED
        seq, frame = await good._ingest_one(body(2, 1))
        assert frame.type == FrameType.ACK
        await good.durable(seq)
        assert good.status()["grsts"] != "SUSP" and good.store.held == 1

    asyncio.run(scenario())


def test_engine_time_is_the_wall_clock_and_never_goes_back(tmp_path):
    """The relay LOADs the engine's TIME from the wall clock at every engine
    (re)start, but never at or below the TIME of the newest journal its journal
    volume holds: a wall clock set back an hour does not make TIME go back."""
    size = 64 << 10
    site = parse_config({
        "site": "r", "listen": "127.0.0.1:1", "state_dir": "state",
        "group": [{"grnum": 1, "grname": "g", "attr": "INTERMEDIARY", "peer": "127.0.0.1:2",
                   "journal": {"path": "jnl.vol", "size": size}}]}, tmp_path)
    wall = 1_800_000_000 * 10**9          # a wall clock in 2027
    hour = 3600 * 10**9

    async def ingest(group, tag):
        data = bytes([tag]) * 100
        ctl = Control(length=100, data_len=100, data_crc=protocol.crc32c(data), group=1, tag=tag)
        seq, frame = await group._ingest_one(protocol.journal_body(ctl, data))
        assert frame.type == FrameType.ACK
        await group.durable(seq)
        return group.store.read(seq, 1)[0][0].time

    async def scenario():
        group = relay.RelayGroup(site.groups[0], site, open_engine("model", size=size, memory=0),
                                 descriptor=True)
        group.wall_ns = lambda: wall
        await group.recover_engine()
        first = [await ingest(group, tag) for tag in (1, 2, 3)]
        # stamps are the wall clock the relay loaded, running on (monotonic)
        assert wall <= first[0] <= first[1] <= first[2] < wall + 60 * 10**9
        # status: the oldest journal held, in seconds of that clock
        group.wall_ns = lambda: first[0] + 5 * 10**9
        assert group.status()["oldest_age_s"] == 5.0
        # the relay restarts with the wall clock an hour back: a fresh engine
        group.engine = open_engine("model", size=size, memory=0)
        group.wall_ns = lambda: wall - hour
        await group.recover_engine()
        assert (await group.engine.status()).now > first[2]
        after = await ingest(group, 4)
        assert after > first[2]
        # and with the wall clock ahead again, TIME follows it
        group.engine = open_engine("model", size=size, memory=0)
        group.wall_ns = lambda: wall + hour
        await group.recover_engine()
        assert wall + hour <= await ingest(group, 5) < wall + hour + 60 * 10**9

    asyncio.run(scenario())
