"""Fuzzing the secondary's native loop (host/native/restore.c) as a frame parser.

Contract: for any byte stream in any chunking the loop hands up exactly the
frames ``FrameParser`` finds, in order and byte for byte, and stops at
``BAD`` exactly where the parser raises (the bytes from there are what the
parser refuses); bytes short of a whole frame wait.  With staging on, a
frame it stages is one the parser finds too, and nothing else goes missing.
C code parsing what a peer sends must never read or write outside a buffer:
the fuzzer's lengths and cuts are what would find it (a crash ends the run).
"""

from __future__ import annotations

import socket

from hypothesis import given, strategies as st

from tricopy.host.native import restore as native
from tricopy.host.wire import protocol
from tricopy.host.wire.protocol import FrameType, ProtocolError

from .fuzzing import chunkings, corpus, frame_stream, fuzz_settings, structured_frames

SEEDS = [data for _, data in corpus("wire")]
m = native._restore()


def feed(raw_chunks: list[bytes], fast: bool):
    """(frames handed up, frames staged, stopped BAD, bytes left) from the loop."""
    a, b = socket.socketpair()
    b.setblocking(False)
    rx = m.Receiver(b.fileno(), None, 0, 0, 0, 1, [], 1 << 20)
    rx.fast = fast
    up, bad = [], False
    try:
        for chunk in raw_chunks:
            a.sendall(chunk)
            while True:
                why = rx.pump()
                if why == m.FRAME:
                    t, flags, body = rx.take_frame()
                    up.append(protocol.Frame(FrameType(t), body, flags))
                    continue
                if why == m.BAD:
                    bad = True
                break
            if bad:
                break
        rest = rx.take_rest()
        return up, rx.received, bad, rest
    finally:
        a.close()
        b.close()


def parse(raw: bytes):
    parser = protocol.FrameParser()
    try:
        return parser.feed(raw), None
    except ProtocolError as exc:
        return None, exc


@fuzz_settings(600)
@given(st.data())
def test_the_loop_hands_up_what_the_parser_finds(data):
    raw = data.draw(structured_frames(SEEDS) | frame_stream(SEEDS) | st.binary(max_size=200))
    chunks = data.draw(chunkings(raw))
    up, staged, bad, rest = feed(chunks, fast=False)
    assert staged == 0
    consumed = b"".join(f.serialize() for f in up)
    assert raw.startswith(consumed)
    frames, error = parse(raw)
    assert bad == (error is not None), error
    if bad:
        # the parser refuses the stream exactly from where the loop stopped
        assert raw.startswith(consumed + rest)
        _, again = parse(rest)
        assert type(again) is type(error), (again, error)
    else:
        assert up == frames and rest == raw[len(consumed):]


@fuzz_settings(300)
@given(st.data())
def test_with_staging_on_nothing_goes_missing(data):
    raw = data.draw(structured_frames(SEEDS) | frame_stream(SEEDS))
    up, staged, bad, rest = feed(data.draw(chunkings(raw)), fast=True)
    frames, error = parse(raw)
    if error is None and not bad:
        # every frame went up but the JNLWRs the loop staged (none here: the
        # seeds are no journals of this stream, so nothing may be staged)
        assert staged == 0 and up == frames
