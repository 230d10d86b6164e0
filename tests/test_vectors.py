"""The shared vectors (host/wire/vectors/*.json) against the codec and the reference engine,
plus property tests of the codec (round trips, any-bytes parsing)."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import tricopy.host
from tricopy.host.wire import protocol as P
from tricopy.host.engine.model import EngineModel, EngineStream

VECTORS = Path(tricopy.host.__file__).resolve().parent / "wire" / "vectors"
FRAMES = json.loads((VECTORS / "frames.json").read_text())
ENGINE = json.loads((VECTORS / "engine.json").read_text())
SCENARIOS = ENGINE["scenarios"]


def _load_generator():
    spec = importlib.util.spec_from_file_location("tricopy_vectors_generate",
                                                  VECTORS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- frames.json -------------------------------------------------------------------

def test_crc32c_check_value():
    # The published CRC-32C check value, independent of the vectors.
    assert P.crc32c(b"123456789") == 0xE3069283
    assert FRAMES["crc32c_check"] == {"input": b"123456789".hex(), "crc": 0xE3069283}


@pytest.mark.parametrize("vec", FRAMES["valid"], ids=lambda v: v["name"])
def test_valid_frame(vec):
    raw = bytes.fromhex(vec["hex"])
    frame = P.parse_frame(raw)
    assert raw[:4] == b"TRCP"
    assert frame == P.Frame(P.FrameType[vec["type"]], bytes.fromhex(vec["body"]), vec["flags"])
    assert frame.serialize() == raw
    cls = vec.get("body_class")
    if cls == "Control":
        ctl, data = P.split_journal(frame.body)
        assert ctl == P.Control(**vec["fields"])
        assert data.hex() == vec["data"]
    elif cls:
        body = getattr(P, cls).unpack(frame.body)
        assert body == getattr(P, cls)(**vec["fields"])
        assert body.pack() == frame.body


def test_every_frame_type_has_a_vector():
    assert {v["type"] for v in FRAMES["valid"]} == {t.name for t in P.FrameType}


@pytest.mark.parametrize("vec", FRAMES["malformed_frames"], ids=lambda v: v["name"])
def test_malformed_frame(vec):
    with pytest.raises(P.ProtocolError) as info:
        P.parse_frame(bytes.fromhex(vec["hex"]))
    assert type(info.value).__name__ == vec["error"]


@pytest.mark.parametrize("vec", FRAMES["malformed_bodies"], ids=lambda v: v["name"])
def test_malformed_body(vec):
    with pytest.raises(P.ProtocolError) as info:
        getattr(P, vec["body_class"]).unpack(bytes.fromhex(vec["body"]))
    assert type(info.value).__name__ == vec["error"]


# -- engine.json -------------------------------------------------------------------

def test_enough_scenarios_each_starting_frozen():
    assert len(SCENARIOS) >= 25
    for name, sc in SCENARIOS.items():
        first = P.parse_frame(bytes.fromhex(sc["steps"][0]["in"]))
        load = P.Load.unpack(first.body)
        assert first.type == P.FrameType.LOAD, name
        assert load.flags == P.LoadFlag.TIME | P.LoadFlag.FREEZE, name


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_step_by_step(name):
    sc = SCENARIOS[name]
    stream = EngineStream(EngineModel(sc["size"], clock=lambda: 0, memory=sc.get("memory")))
    for i, step in enumerate(sc["steps"]):
        assert stream.feed(bytes.fromhex(step["in"])).hex() == step["out"], f"step {i}"


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_any_chunking(name):
    """The engine's answers depend on the bytes only, not on how they arrive."""
    sc = SCENARIOS[name]
    data = b"".join(bytes.fromhex(s["in"]) for s in sc["steps"])
    want = b"".join(bytes.fromhex(s["out"]) for s in sc["steps"])
    rng = random.Random(name)
    stream = EngineStream(EngineModel(sc["size"], clock=lambda: 0, memory=sc.get("memory")))
    got, at = bytearray(), 0
    while at < len(data):
        n = rng.choice((1, 1, 2, 3, 15, 16, 17, 64, 500))
        got += stream.feed(data[at:at + n])
        at += n
    assert bytes(got) == want


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_answers_are_well_formed(name):
    """Every answer parses, and every read-out record carries a valid CCRC."""
    for step in SCENARIOS[name]["steps"]:
        for frame in P.FrameParser().feed(bytes.fromhex(step["out"])):
            if frame.type == P.FrameType.JNLWR:
                ctl, data = P.split_journal(frame.body)
                assert ctl.ccrc_ok() and P.crc32c(data) == ctl.data_crc
            elif frame.type in (P.FrameType.ACK, P.FrameType.NAK):
                P.Ack.from_frame(frame)


def test_regenerating_gives_identical_files():
    for name, text in _load_generator().outputs().items():
        assert (VECTORS / name).read_text() == text, f"{name} is stale: run host/wire/vectors/generate.py"


def test_generator_check_mode(tmp_path):
    gen = _load_generator()
    assert gen.main(["--out", str(tmp_path), "--check"]) == 1
    assert gen.main(["--out", str(tmp_path)]) == 0
    assert gen.main(["--out", str(tmp_path), "--check"]) == 0


# -- codec properties --------------------------------------------------------------

u8, u16, u32, u64 = (st.integers(0, (1 << b) - 1) for b in (8, 16, 32, 64))
names = st.text(st.characters(min_codepoint=1, max_codepoint=127), max_size=32)

BODIES = {
    P.Control: st.builds(P.Control, u64, u64, u64, u64, u32, u32, u32, u32, u16, u8, u8,
                         u16, u16, u32, u32),
    P.Ack: st.builds(P.Ack, u64, u64, u64, u32, st.sampled_from(list(P.Status)), u8),
    P.Hello: st.builds(P.Hello, st.sampled_from(list(P.Role)), u16, u32, u64, names, names),
    P.JnlRd: st.builds(P.JnlRd, u64, u32),
    P.Release: st.builds(P.Release, u64),
    P.Load: st.builds(P.Load, st.integers(0, 0x1F), u64, u64, u32),
    P.EngineStatus: st.builds(P.EngineStatus, u64, u64, u64, u64, u64, u64, u64, u32, u32,
                              u32, u32, u64),
}
FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("cls", list(BODIES), ids=lambda c: c.__name__)
@FAST
@given(data=st.data())
def test_body_round_trip(cls, data):
    body = data.draw(BODIES[cls])
    raw = body.pack()
    assert cls.unpack(raw) == body
    ftype = {P.Control: P.FrameType.JNLWR, P.Ack: P.FrameType.ACK, P.Hello: P.FrameType.HELLO,
             P.JnlRd: P.FrameType.JNLRD, P.Release: P.FrameType.RELEASE,
             P.Load: P.FrameType.LOAD, P.EngineStatus: P.FrameType.STATUS_RESP}[cls]
    flags = data.draw(st.sampled_from([0, int(P.FrameFlag.MORE)]))
    frame = P.Frame(ftype, raw, flags)
    assert P.parse_frame(frame.serialize()) == frame


@FAST
@given(ftype=st.sampled_from(list(P.FrameType)), body=st.binary(max_size=300),
       flags=st.sampled_from([0, 1]))
def test_any_frame_round_trip(ftype, body, flags):
    """A body up to what its type can carry round-trips; a longer one is
    refused at the header (MAX_LENGTH), before any body byte is waited for."""
    frame = P.Frame(ftype, body, flags)
    wire = frame.serialize()
    if len(body) <= P.MAX_LENGTH[ftype]:
        assert P.parse_frame(wire) == frame
    else:
        with pytest.raises(P.FrameTooBig):
            P.FrameParser().feed(wire[:P.HEADER_SIZE])


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


@FAST
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 1 << 16), max_size=8))
def test_parser_on_any_bytes(data, cuts):
    """Any bytes in any chunking: frames, or a ProtocolError subclass, never anything else."""
    parser = P.FrameParser()
    try:
        for chunk in _chunks(data, cuts):
            for frame in parser.feed(chunk):
                assert isinstance(frame, P.Frame)
    except P.ProtocolError:
        with pytest.raises(P.ProtocolError):        # and it stays poisoned
            parser.feed(b"")


# valid frames: a body no longer than its type can carry (MAX_LENGTH)
frames_st = st.lists(st.sampled_from(list(P.FrameType)).flatmap(
    lambda t: st.builds(P.Frame, st.just(t), st.binary(max_size=min(100, P.MAX_LENGTH[t])),
                        st.sampled_from([0, 1]))),
    min_size=1, max_size=5)


@FAST
@given(frames=frames_st, cuts=st.lists(st.integers(0, 1 << 16), max_size=10),
       flip=st.none() | st.integers(0, 1 << 16))
def test_parser_frames_in_any_chunking(frames, cuts, flip):
    """Valid frames come out whole in any chunking; one flipped bit is refused, not parsed."""
    data = bytearray(b"".join(f.serialize() for f in frames))
    if flip is not None:
        data[flip % len(data)] ^= 1 << (flip % 8)
    parser, got = P.FrameParser(), []
    try:
        for chunk in _chunks(bytes(data), cuts):
            got += parser.feed(chunk)
    except P.ProtocolError:
        assert flip is not None
        return
    if flip is None:
        assert got == frames and parser.buffered == 0
    else:
        # CRC32C catches every single-bit error: a flipped stream never parses whole.
        assert got != frames or parser.buffered
