"""Timestamp unit: exact nanoseconds, monotonic, load, freeze, 64-bit carry."""

import gc
import re
import warnings

import pytest
from amaranth.hdl import UnusedElaboratable
from amaranth.sim import Simulator

from tricopy.hdl.timestamp import NS_PER_S, Timestamp


def run(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


async def load(ctx, dut, value, freeze=0):
    ctx.set(dut.load, 1)
    ctx.set(dut.load_value, value)
    ctx.set(dut.freeze, freeze)
    await ctx.tick()
    ctx.set(dut.load, 0)
    ctx.set(dut.freeze, 0)


@pytest.mark.parametrize("clk_hz", [12_000_000, 25_000_000, 7_372_800, 48_000_000, 100_000_000, 3])
def test_exact_ns_no_drift(clk_hz):
    """After N cycles the clock reads exactly floor(N * 1e9 / clk_hz): the
    error against ideal time is always below 1 ns and never accumulates."""
    dut = Timestamp(clk_hz)
    start = 1_000_000_007
    cycles = 1500

    async def bench(ctx):
        await load(ctx, dut, start)
        for n in range(cycles + 1):
            now = ctx.get(dut.now)
            assert now == start + n * NS_PER_S // clk_hz, (clk_hz, n, now)
            ideal = start + n * NS_PER_S / clk_hz
            assert 0 <= ideal - now < 1
            await ctx.tick()

    run(dut, bench)


def test_twelve_mhz_fraction():
    """83.333.. ns per cycle: every third cycle is 84 ns."""
    dut = Timestamp(12_000_000)

    async def bench(ctx):
        await load(ctx, dut, 0)
        seen = []
        for _ in range(7):
            await ctx.tick()
            seen.append(ctx.get(dut.now))
        assert seen == [83, 166, 250, 333, 416, 500, 583]

    run(dut, bench)


@pytest.mark.parametrize("high", [0, 0x1234_5678, 0xFFFF_FFFE])
@pytest.mark.parametrize("clk_hz", [12_000_000, 100_000_000, 3])
def test_carry_out_of_low_word(clk_hz, high):
    """Loaded just below a 2**32 boundary, the low word wraps and the high
    word takes the carry in the same cycle: the 64-bit value stays exact and
    strictly increasing across the boundary."""
    dut = Timestamp(clk_hz)
    step = NS_PER_S // clk_hz + 1
    start = (high << 32) | (0xFFFF_FFFF - 3 * step)

    async def bench(ctx):
        await load(ctx, dut, start)
        prev = ctx.get(dut.now)
        crossed = False
        for n in range(1, 8):
            await ctx.tick()
            now = ctx.get(dut.now)
            assert now == start + n * NS_PER_S // clk_hz
            assert now > prev
            crossed |= (now >> 32) == high + 1
            prev = now
        assert crossed

    run(dut, bench)


@pytest.mark.parametrize("frozen", [0, 1])
@pytest.mark.parametrize("clk_hz", [12_000_000, 100_000_000, 3])
def test_carry_right_after_a_load(clk_hz, frozen):
    """The carry into the high word is a register set a cycle ahead
    (hdl/timestamp.py): loaded at distances from a 2**32 boundary that the
    first or the second step crosses (and just not), frozen there first or
    not, the clock still
    reads exactly the loaded value plus the elapsed nanoseconds, the first
    step's carry (set by the load) and the second's (set by the first step)
    included."""
    dut = Timestamp(clk_hz)
    step = NS_PER_S // clk_hz + 1
    high = 0x0000_00A5

    async def bench(ctx):
        # each side of where the first step (back <= step) and the second
        # (back <= 2 * step) cross, and the nanoseconds right below 2**32
        backs = {1, 2, 3, step - 1, step, step + 1, 2 * step - 2, 2 * step - 1, 2 * step,
                 2 * step + 1}
        for back in sorted(backs):
            start = ((high + 1) << 32) - back
            if frozen:
                await load(ctx, dut, start, freeze=1)
                await ctx.tick().repeat(2)
                assert ctx.get(dut.now) == start
            await load(ctx, dut, start)
            for n in range(4):
                assert ctx.get(dut.now) == start + n * NS_PER_S // clk_hz, (back, n)
                await ctx.tick()

    run(dut, bench)


def test_low_word_upper_bits_all_ones_without_carry():
    """lo[k:] all ones but lo[:k] + inc < 2**k: no carry may leak upwards."""
    dut = Timestamp(100_000_000)  # 10 ns per cycle, k = 4
    start = (5 << 32) | 0xFFFF_FFF0

    async def bench(ctx):
        await load(ctx, dut, start)
        await ctx.tick()
        assert ctx.get(dut.now) == (5 << 32) | 0xFFFF_FFFA
        await ctx.tick()
        assert ctx.get(dut.now) == (6 << 32) | 0x0000_0004

    run(dut, bench)


def test_monotonic_and_reset():
    dut = Timestamp(25_000_000)

    async def bench(ctx):
        assert ctx.get(dut.now) == 0
        prev = -1
        for _ in range(200):
            now = ctx.get(dut.now)
            assert now > prev
            prev = now
            await ctx.tick()
        assert prev == 199 * 40

    run(dut, bench)


def test_load_backwards_and_freeze():
    dut = Timestamp(12_000_000)

    async def bench(ctx):
        await ctx.tick().repeat(10)
        # A load sets the clock, even backwards, and clears the fraction.
        await load(ctx, dut, 5)
        assert ctx.get(dut.now) == 5
        await ctx.tick().repeat(3)
        assert ctx.get(dut.now) == 5 + 250
        # Frozen: holds at the loaded value for as long as nothing reloads it.
        await load(ctx, dut, 0xDEAD_BEEF_0000_0001, freeze=1)
        for _ in range(20):
            assert ctx.get(dut.now) == 0xDEAD_BEEF_0000_0001
            await ctx.tick()
        # A frozen clock can be loaded again, and frozen again.
        await load(ctx, dut, 77, freeze=1)
        await ctx.tick().repeat(5)
        assert ctx.get(dut.now) == 77
        # A load without freeze lets it run on from the new value.
        await load(ctx, dut, 1000)
        await ctx.tick().repeat(6)
        assert ctx.get(dut.now) == 1000 + 500

    run(dut, bench)


def test_freeze_without_load_is_ignored():
    """FREEZE is sampled with load only (LOAD flag semantics)."""
    dut = Timestamp(100_000_000)

    async def bench(ctx):
        ctx.set(dut.freeze, 1)
        await ctx.tick().repeat(4)
        assert ctx.get(dut.now) == 40

    run(dut, bench)


@pytest.mark.parametrize("bad", [0, -12, 12.5, "12", True])
def test_bad_clk_hz(bad):
    # The half-built Elaboratable is collected here so that its "never used"
    # warning does not leak into other tests.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        with pytest.raises((TypeError, ValueError), match=re.escape(repr(bad))):
            Timestamp(bad)
        gc.collect()
