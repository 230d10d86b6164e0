"""UART 8N1: transmitter and receiver against a Python line model, and a
loopback under idle and backpressure patterns."""

import gc
import itertools
import random
import warnings
from fractions import Fraction

import pytest
from amaranth.hdl import Module, UnusedElaboratable
from amaranth.sim import Simulator

from tricopy.hdl.uart import UARTRx, UARTTx, divisor_for

PATTERNS = {
    "full": [1],
    "idle": [1, 1, 1, 0],
    "sparse": [0, 1, 0, 0, 1, 0, 0, 0],
}


def line_levels(data, bit_cycles, idle=7, stop=1, phase=0.0):
    """The rx line, one level per clock, for ``data`` sent 8N1 with bits of
    ``bit_cycles`` clocks (a float: models a baud mismatch or a clock that
    is no multiple of the baud rate). The line is sampled at the clock
    edges: ``phase`` (0..1) is how far past a clock edge the start edge
    falls, so that it is seen up to a clock late, as on a board."""
    bits = []
    for byte in data:
        bits += [0] + [(byte >> n) & 1 for n in range(8)] + [stop]
    levels = [1] * idle
    for n in range(round(len(bits) * bit_cycles)):
        levels.append(bits[min(len(bits) - 1, int((n + 1 - phase) / bit_cycles))]
                      if n + 1 - phase >= 0 else 1)
    return levels + [1] * idle


async def source(ctx, port, data, pattern):
    for byte in data:
        while not next(pattern):
            await ctx.tick()
        ctx.set(port.valid, 1)
        ctx.set(port.payload, byte)
        while True:
            _, _, ready = await ctx.tick().sample(port.ready)
            if ready:
                break
        ctx.set(port.valid, 0)


async def sink(ctx, port, out, count, pattern, budget):
    for _ in range(budget):
        ready = next(pattern)
        ctx.set(port.ready, ready)
        _, _, valid, payload = await ctx.tick().sample(port.valid, port.payload)
        if valid and ready:
            out.append(payload)
            if len(out) == count:
                break
    ctx.set(port.ready, 0)


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("divisor", [4, 7, 16])
def test_tx_waveform(divisor, pattern):
    """Decode the tx pin in Python: start bit low, LSB first, stop bit high."""
    dut = UARTTx(divisor)
    data = [0x00, 0xFF, 0x55, 0xA5, 0x01, 0x80]
    got = []

    async def feed(ctx):
        await source(ctx, dut.i, data, itertools.cycle(PATTERNS[pattern]))

    async def decode(ctx):
        while len(got) < len(data):
            while ctx.get(dut.tx):
                await ctx.tick()
            await ctx.tick().repeat(divisor // 2)  # middle of the start bit
            assert ctx.get(dut.tx) == 0
            byte = 0
            for n in range(8):
                await ctx.tick().repeat(divisor)
                byte |= ctx.get(dut.tx) << n
            await ctx.tick().repeat(divisor)
            assert ctx.get(dut.tx) == 1, "stop bit"
            got.append(byte)
        # the line ends idle and the transmitter ready again
        await ctx.tick().repeat(divisor)
        assert ctx.get(dut.tx) == 1
        assert ctx.get(dut.i.ready) == 1

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(feed, background=True)
    sim.add_testbench(decode)
    sim.run()
    assert got == data


@pytest.mark.parametrize("mismatch", [-0.02, 0.0, 0.02])
@pytest.mark.parametrize("divisor", [8, 16])
def test_rx_from_line_model(divisor, mismatch):
    """Receive from a Python-generated line whose baud is off by +-2 %."""
    dut = UARTRx(divisor)
    rng = random.Random(divisor)
    data = [rng.randrange(256) for _ in range(12)] + [0x00, 0xFF]
    levels = line_levels(data, divisor * (1 + mismatch))
    got = []
    errors = []

    async def drive(ctx):
        for level in levels:
            ctx.set(dut.rx, level)
            await ctx.tick()

    async def watch(ctx):
        async for _, _, fe, ov in ctx.tick().sample(dut.framing_error, dut.overrun):
            if fe or ov:
                errors.append((fe, ov))

    async def collect(ctx):
        await sink(ctx, dut.o, got, len(data), itertools.cycle([1, 0, 1]), len(levels) + 10)
        await ctx.tick().repeat(4)
        assert ctx.get(dut.o.valid) == 0, "sink is empty"

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(drive, background=True)
    sim.add_testbench(watch, background=True)
    sim.add_testbench(collect)
    sim.run()
    assert got == data
    assert errors == []


def run_rx(dut, levels, ready, cycles_after=20):
    """Drive ``levels`` into rx with o.ready held at ``ready``; return the
    bytes taken, and the framing-error and overrun pulse counts."""
    got, pulses = [], {"fe": 0, "ov": 0}

    async def bench(ctx):
        ctx.set(dut.o.ready, ready)
        for level in levels + [1] * cycles_after:
            ctx.set(dut.rx, level)
            _, _, valid, payload, fe, ov = await ctx.tick().sample(
                dut.o.valid, dut.o.payload, dut.framing_error, dut.overrun)
            if valid and ready:
                got.append(payload)
            pulses["fe"] += fe
            pulses["ov"] += ov

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return got, pulses


def test_rx_framing_error_and_break_then_recovers():
    dut = UARTRx(8)
    bad = line_levels([0x3C], 8, idle=3, stop=0)[:-3]
    brk = [0] * 40  # the line held low: one error, not a stream of them
    good = line_levels([0xC3], 8)
    got, pulses = run_rx(dut, bad + brk + good, ready=1)
    assert got == [0xC3]
    assert pulses == {"fe": 1, "ov": 0}


def test_rx_glitch_is_not_a_start_bit():
    dut = UARTRx(16)
    levels = [1] * 5 + [0] * 3 + [1] * 40 + line_levels([0x42], 16)
    got, pulses = run_rx(dut, levels, ready=1)
    assert got == [0x42]
    assert pulses == {"fe": 0, "ov": 0}


def test_rx_overrun_keeps_first_byte():
    """With nobody reading, the first byte stays (stream rule: payload is
    stable while valid) and the second is dropped and reported."""
    dut = UARTRx(8)
    got, pulses = run_rx(dut, line_levels([0x11, 0x22], 8), ready=0)
    assert pulses == {"fe": 0, "ov": 1}

    async def bench(ctx):
        for level in line_levels([0x11, 0x22], 8) + [1] * 10:
            ctx.set(dut.rx, level)
            await ctx.tick()
        assert ctx.get(dut.o.valid) == 1
        assert ctx.get(dut.o.payload) == 0x11
        ctx.set(dut.o.ready, 1)
        await ctx.tick()
        ctx.set(dut.o.ready, 0)
        await ctx.tick().repeat(3)
        assert ctx.get(dut.o.valid) == 0, "sink is empty"

    dut = UARTRx(8)
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("src", PATTERNS)
@pytest.mark.parametrize("dst", ["full", "idle"])
def test_loopback(src, dst):
    """tx pin wired to rx pin: every byte comes back, in order, intact."""
    divisor = 6
    m = Module()
    m.submodules.tx = tx = UARTTx(divisor)
    m.submodules.rx = rx = UARTRx(divisor)
    m.d.comb += rx.rx.eq(tx.tx)
    data = list(range(0, 256, 7)) + [0xFF, 0x00]
    got = []

    async def send(ctx):
        await source(ctx, tx.i, data, itertools.cycle(PATTERNS[src]))

    async def receive(ctx):
        budget = len(data) * 10 * divisor * 3 + 200
        await sink(ctx, rx.o, got, len(data), itertools.cycle(PATTERNS[dst]), budget)
        await ctx.tick().repeat(12 * divisor)
        assert ctx.get(rx.o.valid) == 0, "sink is empty"
        assert ctx.get(tx.tx) == 1

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(send, background=True)
    sim.add_testbench(receive)
    sim.run()
    assert got == data


def test_divisor_for():
    assert divisor_for(12_000_000, 115_200) == 104
    assert divisor_for(25_000_000, 115_200) == 217
    assert divisor_for(12_000_000, 3_000_000) == 4          # the iCEBreaker at 3 Mbaud
    # the ULX3S at 3 Mbaud: 8 would be 4.2 % fast, so exactly 25/3 clocks per bit
    assert divisor_for(25_000_000, 3_000_000) == Fraction(25, 3)
    assert divisor_for(12_000_000, 1_400_000) == Fraction(60, 7)   # 8.57: 9 is 4.8 % off
    with pytest.raises(ValueError, match="too fast"):
        divisor_for(12_000_000, 4_000_000)
    with pytest.raises(ValueError, match="too few"):
        divisor_for(12_000_000, 2_600_000)  # 4.6 -> 5: 7.7 % off, too few clocks for a fraction


def raises_on_construction(cls, arg, error, match):
    """Construct with a bad parameter; the half-built Elaboratable is
    collected here so that its "never used" warning does not leak."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        with pytest.raises(error, match=match):
            cls(arg)
        gc.collect()


@pytest.mark.parametrize("cls", [UARTRx, UARTTx])
def test_bad_divisor(cls):
    raises_on_construction(cls, 3, ValueError, "not 3")
    raises_on_construction(cls, 8.0, TypeError, "not 8.0")
    raises_on_construction(cls, Fraction(15, 2), ValueError, "at least 8")
    raises_on_construction(cls, Fraction(2049, 257), ValueError, "denominator")


# -- 3 Mbaud: few clocks per bit, and a clock that is no multiple of the baud rate

#: The boards at 3 Mbaud (docs/boards.md, "Baud rate"): iCEBreaker 12 MHz / 4,
#: ULX3S 25 MHz / (25/3).
FAST = {"icebreaker": 4, "ulx3s": Fraction(25, 3)}


@pytest.mark.parametrize("mismatch", [-0.02, 0.0, 0.02])
@pytest.mark.parametrize("board", FAST)
def test_rx_at_3_mbaud(board, mismatch):
    """An ideal line at 3 Mbaud (+-2 %), its edges anywhere between two
    clocks: every byte arrives, no error. At 4 clocks per bit the sample
    lands 2..3 clocks after the edge; at 25/3 bits of 8 or 9 clocks."""
    divisor = FAST[board]
    rng = random.Random(str(divisor) + str(mismatch))
    for phase in (0.0, 0.3, 0.7, 0.99):
        dut = UARTRx(divisor)
        data = [rng.randrange(256) for _ in range(16)] + [0x00, 0xFF, 0x55, 0xAA]
        levels = line_levels(data, float(divisor) * (1 + mismatch), phase=phase)
        got, pulses = run_rx(dut, levels, ready=1)
        assert got == data, (phase, got, data)
        assert pulses == {"fe": 0, "ov": 0}, phase


def test_rx_at_4_clocks_fails_beyond_its_margin():
    """The other side of the margin: at 4 clocks per bit a line 6 % fast
    loses bytes (the sample point walks out of the bit), so the test above
    could fail."""
    dut = UARTRx(4)
    data = [0x0F, 0xF0, 0x33, 0xCC] * 4
    got, pulses = run_rx(dut, line_levels(data, 4 * 0.94, phase=0.99), ready=1)
    assert got != data or pulses["fe"]


@pytest.mark.parametrize("board", FAST)
def test_tx_at_3_mbaud_edges_and_rate(board):
    """Back-to-back bytes: every bit edge within one clock of the ideal
    3 Mbaud line's (never early by a clock, never late by one), 10 bits a
    byte with no idle clock between bytes, decoded by an ideal receiver."""
    divisor = FAST[board]
    dut = UARTTx(divisor)
    data = [0x00, 0xFF, 0x55, 0xA5, 0x01, 0x80, 0x3C, 0xC3, 0x0F]
    levels = []

    async def feed(ctx):
        await source(ctx, dut.i, data, itertools.cycle([1]))

    async def record(ctx):
        while len(levels) < (len(data) * 10 + 3) * float(divisor) + 8:
            levels.append(ctx.get(dut.tx))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(feed, background=True)
    sim.add_testbench(record)
    sim.run()
    start = levels.index(0)
    line = levels[start:]
    # expected bits; each edge of the line must be where the ideal one is, within a clock
    bits = [b for byte in data for b in [0] + [(byte >> n) & 1 for n in range(8)] + [1]]
    for j in range(1, len(bits)):
        if bits[j] != bits[j - 1]:
            edge = next(i for i in range(len(line)) if i > 0 and line[i] == bits[j]
                        and line[i - 1] == bits[j - 1] and i > j * float(divisor) - 1.5)
            assert abs(edge - j * divisor) < 1, (j, edge, float(j * divisor))
    # an ideal receiver sampling each bit's middle reads the bytes back
    got = []
    for k in range(len(data)):
        base = 10 * k * divisor
        sample = [line[int(base + (n + Fraction(1, 2)) * divisor)] for n in range(10)]
        assert sample[0] == 0 and sample[9] == 1, k
        got.append(sum(b << n for n, b in enumerate(sample[1:9])))
    assert got == data
    # the line goes idle after the last stop bit, exactly 10 bits a byte after the start
    end = len(data) * 10 * divisor
    assert all(line[int(end) + 1:]) and line[int(end) - 2] == 1


@pytest.mark.parametrize("board", FAST)
def test_loopback_at_3_mbaud(board):
    divisor = FAST[board]
    m = Module()
    m.submodules.tx = tx = UARTTx(divisor)
    m.submodules.rx = rx = UARTRx(divisor)
    m.d.comb += rx.rx.eq(tx.tx)
    data = list(range(0, 256, 5)) + [0xFF, 0x00]
    got = []

    async def send(ctx):
        await source(ctx, tx.i, data, itertools.cycle([1]))

    async def receive(ctx):
        budget = int(len(data) * 10 * divisor) + 200
        await sink(ctx, rx.o, got, len(data), itertools.cycle([1]), budget)
        assert ctx.get(rx.o.valid) == 0, "sink is empty"

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(send, background=True)
    sim.add_testbench(receive)
    sim.run()
    assert got == data
