"""Fuzzing the frame parser and the body decoders (host/wire/protocol.py) and
the link's HELLO exchange (host/wire/link.py).

Contract (docs/protocol.md): any byte stream, in any chunking, gives frames
or a :class:`ProtocolError` (after which the parser stays refused); every
frame handed up re-serializes to exactly the bytes it came from; a body
decodes to a value that packs back to the same bytes, or raises a
:class:`ProtocolError` whose ``status`` is the NAK to answer.  A link fed
any bytes as its peer's HELLO answers a HELLO or a :class:`LinkError`.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, strategies as st

from tricopy.host.wire import link, protocol
from tricopy.host.wire.protocol import FrameType, ProtocolError

from .fuzzing import (chunkings, corpus, corpus_ids, frame_stream, fuzz_settings, seed_frames,
                      structured_frames)

SEEDS = [data for _, data in corpus("wire")]


def _decode(frame: protocol.Frame):
    """The body decoder a receiver applies to ``frame``, and a packer to undo it."""
    t, body = frame.type, frame.body
    if t in (FrameType.ACK, FrameType.NAK):
        return protocol.Ack.from_frame(frame), protocol.Ack.pack
    if t == FrameType.HELLO:
        return protocol.Hello.unpack(body), protocol.Hello.pack
    if t == FrameType.JNLRD:
        return protocol.JnlRd.unpack(body), protocol.JnlRd.pack
    if t == FrameType.RELEASE:
        return protocol.Release.unpack(body), protocol.Release.pack
    if t == FrameType.LOAD:
        return protocol.Load.unpack(body), protocol.Load.pack
    if t == FrameType.STATUS_RESP:
        return protocol.EngineStatus.unpack(body), protocol.EngineStatus.pack
    if t in (FrameType.JNLWR, FrameType.JNLDESC):
        ctl, data = protocol.split_journal(body)
        return (ctl, data), lambda v: protocol.journal_body(*v)
    return body, bytes


def check_stream(raw: bytes, chunks: list[bytes]) -> None:
    parser = protocol.FrameParser()
    frames, error = [], None
    try:
        for chunk in chunks:
            frames += parser.feed(chunk)
    except ProtocolError as exc:          # anything else fails the test
        error = exc
        assert isinstance(exc.status, protocol.Status)
    if error is not None:
        with pytest.raises(type(error)):
            parser.feed(b"")              # poisoned: the link must be reset
    consumed = b"".join(f.serialize() for f in frames)
    assert raw.startswith(consumed), "a frame does not serialize back to its bytes"
    if error is None:
        assert parser.buffered == len(raw) - len(consumed)
    for frame in frames:
        assert frame.flags & ~protocol.FrameFlag.MORE == 0
        try:
            value, pack = _decode(frame)
        except ProtocolError as exc:
            assert isinstance(exc.status, protocol.Status)
            continue
        assert pack(value) == frame.body, f"{frame.type.name} body does not pack back"


@pytest.mark.parametrize("raw", corpus_ids("wire"))
def test_wire_corpus(raw):
    check_stream(raw, [raw])
    assert protocol.FrameParser().feed(raw), "a seed holds no frame"


@fuzz_settings(800)
@given(st.data())
def test_frame_parser_any_bytes_any_chunking(data):
    raw = data.draw(structured_frames(SEEDS) | frame_stream(SEEDS) | st.binary(max_size=200))
    check_stream(raw, data.draw(chunkings(raw)))


@fuzz_settings(500)
@given(st.data())
def test_frame_parser_gathering_any_bytes_any_chunking(data):
    """The same contract on the path for large bodies (gathered chunk by
    chunk, CRC'd as they come): with GATHER_AT lowered to a few bytes the
    seeds' bodies take it, so every corruption and chunking the fuzzer finds
    reaches it."""
    raw = data.draw(structured_frames(SEEDS) | frame_stream(SEEDS) | st.binary(max_size=200))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(protocol.FrameParser, "GATHER_AT", 1)
        check_stream(raw, data.draw(chunkings(raw)))


# The sizes the bodies have (HELLO 80, ACK 32, LOAD 32/40, ...) and their neighbours.
_SIZES = st.sampled_from((0, 7, 8, 9, 16, 31, 32, 33, 40, 63, 64, 65, 79, 80, 81, 128))




@st.composite
def _bodies(draw) -> bytes:
    """A seed frame's body with a few bytes overwritten (its size kept, so
    the decoder reads the fields), or any bytes of a body's size."""
    if draw(st.booleans()):
        return draw(_SIZES.flatmap(lambda n: st.binary(min_size=n, max_size=n)))
    body = bytearray(draw(st.sampled_from([f.body for f in seed_frames(SEEDS) if f.body])))
    for _ in range(draw(st.integers(1, 4))):
        body[draw(st.integers(0, len(body) - 1))] = draw(st.integers(0, 255))
    return bytes(body)


@fuzz_settings(500)
@given(_bodies())
def test_every_body_decoder_on_any_body(body):
    for ftype in FrameType:
        frame = protocol.Frame(ftype, body)
        try:
            value, pack = _decode(frame)
        except ProtocolError:
            continue
        assert pack(value) == body


# -- the link: the first frames a site reads from a stranger ------------------------------

class _Writer:
    """The few StreamWriter calls a Link makes, with nowhere to send to."""

    def __init__(self):
        self.sent: list[bytes] = []
        self._closing = False

    def get_extra_info(self, name, default=None):
        return default

    def getpeercert(self):          # tls.peer_names: a plaintext peer has no certificate
        return None

    def is_closing(self) -> bool:
        return self._closing

    def writelines(self, data) -> None:
        self.sent.extend(data)

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        self._closing = True

    async def wait_closed(self) -> None:
        pass


async def _hello_from(raw: bytes):
    reader = asyncio.StreamReader()
    reader.feed_data(raw)
    reader.feed_eof()
    lk = link.Link(reader, _Writer(), initiator=False, heartbeat=5.0, name="fuzz")
    try:
        return await lk.expect_hello()
    except link.LinkError as exc:
        assert lk.closed, "a refused link was left open"
        return exc


def check_hello(raw: bytes) -> None:
    got = asyncio.run(_hello_from(raw))
    assert isinstance(got, (protocol.Hello, link.LinkError)), got


@pytest.mark.parametrize("raw", corpus_ids("wire"))
def test_link_hello_corpus(raw):
    check_hello(raw)


@fuzz_settings(400)
@given(structured_frames(SEEDS, max_frames=2) | frame_stream(SEEDS))
def test_link_hello_any_bytes(raw):
    check_hello(raw)
