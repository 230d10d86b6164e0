"""Fuzzing the engine byte stream: :class:`EngineStream` in front of
:class:`EngineModel` (host/engine/model.py), the bytes the RTL decodes too.

Contract (docs/protocol.md, "Engine: bad frames"): the engine never gives
up and never raises; every input, in any chunking, is answered with whole,
valid frames (NAK BAD_FRAME / BAD_BCRC for what it cannot read, the
request's answer otherwise), the same bytes whatever the chunking (the RTL
sees one byte at a time), and the ring's pointers stay within their rules.
"""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from tricopy.host.engine.model import EngineModel, EngineStream, unpad
from tricopy.host.wire import protocol
from tricopy.host.wire.protocol import FrameType

from .fuzzing import (chunkings, corpus, corpus_ids, frame_stream, fuzz_settings,
                      structured_frames)

SEEDS = [data for _, data in corpus("engine")]
ANSWERS = {FrameType.ACK, FrameType.NAK, FrameType.JNLWR, FrameType.STATUS_RESP,
           FrameType.HELLO, FrameType.HEARTBEAT}


def _engine(size: int, descriptor: bool) -> EngineModel:
    # A stopped clock: the answers are a function of the input bytes alone.
    return EngineModel(size, clock=lambda: 0, memory=0 if descriptor else None)


def check_invariants(m: EngineModel) -> None:
    assert 0 <= m.used <= m.size and m.free == m.size - m.used
    assert 0 <= m.jiptr < m.size and 0 <= m.joptr < m.size
    assert m.jiptr % protocol.ALIGN == 0 and m.joptr % protocol.ALIGN == 0
    assert 0 <= m.wrap_at <= m.size
    assert 1 <= m.tail_seq <= m.next_seq < 1 << 64
    if m.held == 0:
        assert m.used == 0
    if not m.descriptor:
        assert len(m._records) == m.held


def check_answers(out: bytes, beat: int) -> list[protocol.Frame]:
    stream = unpad(out, beat) if beat > 1 else out
    parser = protocol.FrameParser()
    frames = parser.feed(stream)          # a ProtocolError here fails the test
    assert parser.buffered == 0, "the engine sent a partial frame"
    for f in frames:
        assert f.type in ANSWERS, f"the engine sent a {f.type.name}"
        if f.type in (FrameType.ACK, FrameType.NAK):
            protocol.Ack.from_frame(f)
        elif f.type == FrameType.HELLO:
            protocol.Hello.unpack(f.body)
        elif f.type == FrameType.STATUS_RESP:
            protocol.EngineStatus.unpack(f.body)
        elif f.type == FrameType.JNLWR:
            ctl, data = protocol.split_journal(f.body)
            assert ctl.ccrc_ok() and protocol.crc32c(data) == ctl.data_crc
    return frames


def run(raw: bytes, chunks: list[bytes], *, size: int = 1024, descriptor: bool = False,
        beat: int = 1) -> None:
    whole = _engine(size, descriptor)
    expected = EngineStream(whole, beat=beat).feed(raw)
    check_invariants(whole)
    check_answers(expected, beat)
    m = _engine(size, descriptor)
    es = EngineStream(m, beat=beat)
    got = b""
    for chunk in chunks:
        got += es.feed(chunk)
        check_invariants(m)
    assert got == expected, "the answer depends on how the bytes were cut"


@pytest.mark.parametrize("raw", corpus_ids("engine"))
@pytest.mark.parametrize("descriptor", [False, True])
def test_engine_corpus(raw, descriptor):
    run(raw, [raw[i:i + 1] for i in range(len(raw))], descriptor=descriptor)
    run(raw, [raw], descriptor=descriptor, beat=4)


def _inputs():
    return structured_frames(SEEDS, max_frames=6) | frame_stream(SEEDS) | st.binary(max_size=120)


@fuzz_settings(800)
@given(st.data(), st.sampled_from((128, 256, 1024, 4096)), st.booleans())
def test_engine_stream_any_bytes(data, size, descriptor):
    raw = data.draw(_inputs())
    run(raw, data.draw(chunkings(raw)), size=size, descriptor=descriptor)


@fuzz_settings(200)
@given(st.data(), st.sampled_from((2, 4)))
def test_engine_stream_wide_link(data, beat):
    raw = data.draw(_inputs())
    run(raw, data.draw(chunkings(raw)), beat=beat)


# -- ``engine serve``: the same stream behind a TCP port ----------------------------------

@pytest.fixture(scope="module")
def engine_server():
    from tricopy.host.engine.serve import EngineServer
    with EngineServer(EngineModel(4096)) as server:
        yield server


def check_served(server, raw: bytes) -> None:
    from .test_fuzz_sites import exchange
    addr = server.server_address[:2]
    check_answers(exchange(addr, raw), 1)
    # A new connection (a link reset) is served from a fresh parser.
    status = exchange(addr, protocol.Frame(FrameType.STATUS).serialize())
    frames = protocol.FrameParser().feed(status)
    assert [f.type for f in frames] == [FrameType.STATUS_RESP], frames


@pytest.mark.parametrize("raw", corpus_ids("engine"))
def test_engine_server_corpus(engine_server, raw):
    check_served(engine_server, raw)


@fuzz_settings(100)
@given(raw=_inputs())
def test_engine_server_any_bytes(engine_server, raw):
    check_served(engine_server, raw)
