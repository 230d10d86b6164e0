"""Correctness of the data-path speed-ups (docs/benchmarks.md, "What changed").

* the journal store's lazy release (``release(persist=False)``): a crash may
  bring released journals back, never lose a held one (docs/store.md,
  "Lazy release"), also under SIGKILL at random moments;
* frames queued on a :class:`Link` in one event-loop turn leave in one
  transport write, in order, and a frame queued just before ``close`` still
  reaches the peer;
* the secondary's restore point is saved per time slice: ``applied`` runs
  ahead, ``last_restored`` follows at the checkpoint, replays below
  ``applied`` are not staged again.

These are not timed tests: the figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from tricopy.host.wire import protocol as p
from tricopy.host.secondary import site as secondary
from tricopy.host.config import parse_config
from tricopy.host.disk import inline
from tricopy.host.wire.link import Link, LinkClosed, LinkError, LinkTimeout
from tricopy.host.journal.store import JournalStore
from tricopy.host.disk.volume import Volume

from store_writer import journal
from test_store_crash import wait_started

WRITER = os.path.join(os.path.dirname(__file__), "store_writer.py")


# -- the journal store: lazy release ------------------------------------------

def _append(store: JournalStore, n: int, data_len: int = 100) -> list[int]:
    seqs = []
    for _ in range(n):
        seq = store.next_seq
        data = random.Random(seq).randbytes(data_len)
        ctl = p.Control(seq=seq, jofs=store.placement(data_len), length=data_len,
                        data_len=data_len, data_crc=p.crc32c(data), kind=p.Kind.UPDATE,
                        group=1, tag=1000 + seq).with_ccrc()
        seqs.append(store.append(ctl, data))
    return seqs


def _crash(store: JournalStore) -> None:
    """What a kill -9 leaves: the page cache as it is, no superblock write, no fsync."""
    os.close(store._fd)      # also drops the flock, as the dying process would
    store._closed = True


def _check_content(store: JournalStore) -> None:
    for ctl, data in store.read(store.tail_seq, 1 << 20):
        assert data == random.Random(ctl.seq).randbytes(len(data)), f"seq {ctl.seq}"


def test_lazy_release_is_only_in_memory_until_persisted(tmp_path):
    path = tmp_path / "jnl"
    s = JournalStore.create(path, 4096)
    _append(s, 10)
    s.release(6, persist=False)
    assert (s.tail_seq, s.held, s.release_pending) == (7, 4, True)
    _append(s, 2)                        # lands after JIPTR: no reason to persist
    assert s.release_pending
    _crash(s)
    with JournalStore.open(path) as s:
        # The released journals are back (the relay re-sends them, the
        # secondary skips them); nothing appended is missing.
        assert (s.tail_seq, s.next_seq) == (1, 13)
        _check_content(s)
        s.release(6, persist=False)
        assert s.persist() is True and s.persist() is False
        _crash(s)
    with JournalStore.open(path) as s:
        assert (s.tail_seq, s.next_seq) == (7, 13)


def test_reusing_space_of_an_unpersisted_release_persists_it_first(tmp_path):
    # 1024-byte ring, records of 192 bytes: five fill 960 bytes.
    path = tmp_path / "jnl"
    s = JournalStore.create(path, 1024)
    _append(s, 5)
    s.release(3, persist=False)          # JOPTR 576 in memory, 0 on disk
    assert s.release_pending
    _append(s, 1)                        # wraps: WRAP marker at 960, record at 0
    assert s.jiptr == 192 and s.wrap_at == 960
    # Without the guard the superblock would still say JOPTR 0 / TAIL_SEQ 1
    # while seq 6 now lives at 0: recovery would stop at once and lose 4..6.
    assert not s.release_pending
    _crash(s)
    with JournalStore.open(path) as s:
        assert (s.tail_seq, s.next_seq, s.joptr) == (4, 7, 576), s.recovery
        _check_content(s)


def test_overlap_check_covers_the_wrapped_interval(tmp_path):
    s = JournalStore.create(tmp_path / "jnl", 1024)
    _append(s, 5)                        # 0..960
    s.release(3)                         # persisted JOPTR 576
    _append(s, 2)                        # seq 6 at 0, seq 7 at 192: JIPTR 384
    s.release(5, persist=False)          # in memory: JOPTR 0 after the wrap
    assert (s.joptr, s.release_pending) == (0, True)
    # Freed but still held on disk: 576..1024 (the tail behind the marker too).
    assert s._overlaps_unpersisted(960, 64) and s._overlaps_unpersisted(500, 100)
    assert not s._overlaps_unpersisted(384, 192)
    s.release(6, persist=False)          # JOPTR 192: held on disk 576..1024 and 0..192
    assert s._overlaps_unpersisted(100, 10) and not s._overlaps_unpersisted(192, 384)
    s.close()


def test_rewind_of_an_empty_ring_with_a_pending_release(tmp_path):
    path = tmp_path / "jnl"
    s = JournalStore.create(path, 1024)
    saved = []
    s.on_persist_empty = saved.append
    _append(s, 4)                        # 0..768
    s.release(4, persist=False)          # empty at 768 in memory
    assert s.release_pending and not saved
    _append(s, 1, data_len=256)          # 320 bytes do not fit the tail: rewind to 0
    assert (s.joptr, s.jiptr) == (0, 320)
    assert [c.seq for c in saved] == [4] and saved[0].tag == 1004
    _crash(s)
    with JournalStore.open(path) as s:
        assert (s.tail_seq, s.next_seq, s.joptr) == (5, 6, 0)
        _check_content(s)


def test_on_persist_empty_only_when_the_disk_ring_becomes_empty(tmp_path):
    s = JournalStore.create(tmp_path / "jnl", 4096)
    saved = []
    s.on_persist_empty = saved.append
    _append(s, 6)
    s.release(3, persist=False)
    s.persist()
    assert saved == []                   # journals 4..6 still held
    s.release(6, persist=False)
    assert saved == []                   # nothing written yet
    s.persist()
    assert [(c.seq, c.tag) for c in saved] == [(6, 1006)]
    s.release(6, persist=False)          # a replayed ACK: nothing to do
    assert s.persist() is False and len(saved) == 1
    s.close()


def test_close_persists_a_pending_release(tmp_path):
    path = tmp_path / "jnl"
    with JournalStore.create(path, 4096) as s:
        _append(s, 5)
        s.release(2, persist=False)
    with JournalStore.open(path) as s:
        assert (s.tail_seq, s.next_seq) == (3, 6)


def test_lazy_release_under_sigkill_loses_no_acked_journal(tmp_path):
    """store_writer.py in ``lazy`` mode, killed at random moments, 25 times."""
    rng = random.Random(4242)
    path = tmp_path / "jnl"
    max_durable = persisted = release_tried = 0
    checked = 0
    for rnd in range(25):
        out = tmp_path / f"out{rnd}"
        with open(out, "w") as f:
            proc = subprocess.Popen([sys.executable, WRITER, str(path), str(256 << 10), str(rnd),
                                     "lazy"], stdout=f, stderr=subprocess.PIPE)
            wait_started(out, proc)
            time.sleep(rng.uniform(0.15, 0.5))
            proc.send_signal(signal.SIGKILL)
            _, err = proc.communicate()
        assert proc.returncode == -signal.SIGKILL, err.decode()
        for line in out.read_text().splitlines():
            tok = line.split()
            if len(tok) == 2 and tok[0] == "D":
                max_durable = max(max_durable, int(tok[1]))
            elif len(tok) == 2 and tok[0] == "P":
                persisted = max(persisted, int(tok[1]))
            elif len(tok) == 2 and tok[0] == "r":
                release_tried = max(release_tried, int(tok[1]))
        if not path.exists():
            continue
        with JournalStore.open(path) as s:
            assert s.next_seq > max_durable, f"round {rnd}: acked journal lost ({s.recovery})"
            # A persisted release stays; an unpersisted one may come back.
            assert persisted + 1 <= s.tail_seq <= release_tried + 1, (rnd, s.recovery)
            for ctl, data in s.read(s.tail_seq, 1 << 30):
                want_ctl, want_data = journal(ctl.seq, ctl.jofs)
                assert data == want_data and ctl.pack() == want_ctl.pack(), f"seq {ctl.seq}"
                checked += 1
    assert max_durable > 500 and persisted > 0 and checked > 500, (max_durable, persisted, checked)


# -- links: one write per event-loop turn -------------------------------------

async def _pair() -> tuple[Link, Link, asyncio.AbstractServer]:
    accepted: asyncio.Future = asyncio.get_running_loop().create_future()

    async def on_conn(reader, writer):
        accepted.set_result(Link(reader, writer, initiator=False, heartbeat=5.0, name="srv"))

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client = Link(reader, writer, initiator=True, heartbeat=5.0, name="cli")
    return client, await accepted, server


def test_frames_of_one_turn_leave_in_one_write_in_order():
    async def main():
        client, srv, server = await _pair()
        transport = client._writer.transport
        writes = []
        real_write = transport.write
        transport.write = lambda data: (writes.append(len(data)), real_write(data))[1]
        frames = [p.Frame(p.FrameType.JNLWR, os.urandom(64 + i)) for i in range(50)]
        for f in frames:
            client.send(f)
        assert writes == []              # queued: nothing written inside the turn
        await client.drain()
        await asyncio.sleep(0)           # the turn ends: one write with all 50
        assert writes == [sum(len(f.serialize()) for f in frames)]
        got = [await srv.recv() for _ in frames]
        assert got == frames
        await client.close()
        await srv.close()
        server.close()
    asyncio.run(main())


def test_a_frame_queued_right_before_close_reaches_the_peer():
    async def main():
        client, srv, server = await _pair()
        nak = p.Ack(tag=7, status=p.Status.BAD_REQUEST, req_type=p.FrameType.JNLWR).frame()
        srv.send(nak)
        await srv.close()
        assert await client.recv() == nak
        with pytest.raises(LinkClosed):
            await client.recv()
        with pytest.raises(LinkClosed):
            srv.send(nak)
        await client.close()
        server.close()
    asyncio.run(main())


def test_drain_hands_over_a_large_backlog_at_once():
    async def main():
        client, srv, server = await _pair()
        big = p.Frame(p.FrameType.JNLWR, bytes(300 << 10))
        client.send(big)
        await client.drain()             # above the threshold: written now, not at turn end
        assert client._out == []
        assert await srv.recv() == big
        await client.close()
        await srv.close()
        server.close()
    asyncio.run(main())


async def _raw_peer():
    """A Link accepting (heartbeat 0.1 s) and a raw socket writer at the other end."""
    accepted: asyncio.Future = asyncio.get_running_loop().create_future()

    async def on_conn(reader, writer):
        accepted.set_result(Link(reader, writer, initiator=False, heartbeat=0.1, name="srv"))

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    _, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    return await accepted, writer, server


def test_a_silent_peer_still_times_out():
    async def main():
        srv, writer, server = await _raw_peer()
        t0 = time.monotonic()
        with pytest.raises(LinkTimeout):
            async with asyncio.timeout(5):   # (no watchdog: TimeoutError, not LinkTimeout)
                await srv.recv()             # the raw client never sends a byte
        assert 0.25 < time.monotonic() - t0 < 2.0 and srv.closed
        writer.close()
        server.close()
    asyncio.run(main())


def test_a_drain_after_the_silence_limit_is_a_link_error():
    """The watchdog's exception stays on the reader, and asyncio's drain
    raises it too: a sender draining after the limit must get a LinkError
    like any lost link, never the watchdog's private exception (a relay
    forwarder's drain let it escape, and the relay stopped)."""
    async def main():
        srv, writer, server = await _raw_peer()
        with pytest.raises(LinkTimeout):
            async with asyncio.timeout(5):
                await srv.recv()
        with pytest.raises(LinkError):     # (as a forwarder's drain, after the read's end)
            await srv.drain()
        writer.close()
        server.close()
    asyncio.run(main())


def test_a_link_left_unread_is_not_declared_dead():
    """The silence limit counts while a read waits, not while the owner is
    busy elsewhere: a frame that arrived during 5 heartbeats of not reading
    is read, and the link lives on."""
    async def main():
        srv, writer, server = await _raw_peer()
        frame = p.Frame(p.FrameType.JNLWR, b"x" * 100)
        writer.write(frame.serialize())
        await asyncio.sleep(0.5)             # the owner busy elsewhere for 5 heartbeats
        assert await srv.recv() == frame and not srv.closed
        await srv.close()
        writer.close()
        server.close()
    asyncio.run(main())


# -- the secondary: restore point per time slice ------------------------------

def _restore_group(tmp_path) -> secondary.RestoreGroup:
    cfg = parse_config({
        "site": "sec", "state_dir": "state", "listen": "127.0.0.1:1",
        "group": [{"grnum": 1, "grname": "g", "attr": "RESTORE"}],
        "volume": [{"idx": 0, "group": 1, "path": "svol0.img", "size": 1 << 20,
                    "block_size": 4096, "create": True}],
    }, tmp_path)
    v = cfg.volumes[0]           # made at startup by sites_cli.prepare in a real site
    Volume(v.path, v.size, v.block_size, create=True).close()
    return secondary.RestoreGroup(cfg.groups[0], cfg)


def _jnl(seq: int) -> tuple[p.Control, bytes]:
    data = bytes([seq % 251]) * 4096
    ctl = p.Control(seq=seq, address=(seq % 200) * 4096, length=4096, data_len=4096,
                    data_crc=p.crc32c(data), kind=p.Kind.UPDATE, group=1).with_ccrc()
    return ctl, data


def _restore(g, limit=None) -> int:
    """One restorer step: the apply mark covers the staged run first, then apply."""
    if (mark := g.mark_due()) is not None:
        g.save_mark(mark)
    return g.restore(limit)


def test_restore_point_follows_applied_at_the_checkpoint(tmp_path):
    async def main():
        g = _restore_group(tmp_path)
        for seq in range(1, 11):
            await g.stage(*_jnl(seq))
        assert _restore(g, limit=4) == 4 and g.applied == 4
        assert _restore(g) == 6 and (g.applied, g.last_restored) == (10, 0)
        assert g.checkpoint_due(time.monotonic()) == 0      # never saved: at once
        assert g.checkpoint() is True and g.last_restored == 10
        assert g.checkpoint() is False
        # Within the time slice the next journals wait for the next checkpoint...
        await g.stage(*_jnl(11))
        _restore(g)
        soon = g._checkpoint_at + secondary.RESTORE_POINT_PERIOD / 5
        assert g.checkpoint_due(soon) == pytest.approx(secondary.RESTORE_POINT_PERIOD * 4 / 5)
        assert g.checkpoint_due(g._checkpoint_at + secondary.RESTORE_POINT_PERIOD) == 0
        # ... a replay of an applied journal is not staged again (no re-order) ...
        await g.stage(*_jnl(11))
        await g.stage(*_jnl(5))
        assert g.staged == {} and g.gap() is None
        # ... and enough journals make it due at once.
        for seq in range(12, 12 + secondary.RESTORE_POINT_JOURNALS):
            await g.stage(*_jnl(seq))
        _restore(g)
        assert g.checkpoint_due(soon) == 0
        g.checkpoint()
        assert g.last_restored == 11 + secondary.RESTORE_POINT_JOURNALS
        return g.applied
    applied = asyncio.run(main())
    # A restart resumes from the saved point, and the SVOL holds what it covers.
    g2 = _restore_group(tmp_path)
    assert g2.last_restored == g2.applied == applied
    ctl, data = _jnl(applied)
    assert g2.volumes[0].read(ctl.address, 4096) == data


# -- the relay: stamping without dataclasses.replace ---------------------------

def test_stamp_equals_replace_then_with_ccrc():
    import dataclasses
    from tricopy.host.relay.site import _stamp
    rng = random.Random(7)
    for _ in range(300):
        ctl = p.Control(seq=rng.getrandbits(64), time=rng.getrandbits(64),
                        address=rng.getrandbits(64), jofs=rng.getrandbits(64),
                        length=rng.getrandbits(32), data_len=rng.getrandbits(32),
                        data_crc=rng.getrandbits(32), epoch=rng.getrandbits(32),
                        idx=rng.getrandbits(16), kind=rng.choice(list(p.Kind)),
                        flags=rng.getrandbits(8), group=rng.getrandbits(16),
                        jvol_id=rng.getrandbits(16), tag=rng.getrandbits(32),
                        ccrc=rng.getrandbits(32))
        ack = p.Ack(seq=rng.getrandbits(64), time=rng.getrandbits(64), jofs=rng.getrandbits(64),
                    tag=ctl.tag)
        want = dataclasses.replace(ctl, seq=ack.seq, time=ack.time, jofs=ack.jofs).with_ccrc()
        assert _stamp(ctl, ack) == want and want.ccrc_ok()


def test_the_secondary_saves_in_the_loop_while_the_disk_is_fast(tmp_path):
    """Apply marks and checkpoints (RestoreGroup._save): in a thread until
    the last INLINE_HISTORY took under INLINE_SYNC_BELOW each, then in the
    event loop; one slow save sends the next ones back to threads."""
    g = _restore_group(tmp_path)
    g._saves = inline.InlineWindow(below=0.2)    # far from both, on a loaded machine
    h = inline.INLINE_HISTORY

    async def main():
        here = threading.get_ident()
        seen = []

        def save(slow=False):
            seen.append(threading.get_ident() == here)
            if slow:
                time.sleep(0.3)           # a disk turning busy
        for _ in range(h + 2):
            await g._save(save)
        await g._save(save, True)
        for _ in range(h + 1):
            await g._save(save)
        return seen
    seen = asyncio.run(main())
    assert seen == [False] * h + [True] * 3 + [False] * h + [True]
