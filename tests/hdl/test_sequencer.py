"""Sequence counter: starts at 1, steps, loads; load beats step."""

from amaranth.sim import Simulator

from tricopy.hdl.sequencer import Sequencer


def run(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def test_reset_step_hold():
    dut = Sequencer()

    async def bench(ctx):
        assert ctx.get(dut.value) == 1
        await ctx.tick().repeat(3)
        assert ctx.get(dut.value) == 1  # no step, no change
        ctx.set(dut.step, 1)
        await ctx.tick().repeat(5)
        assert ctx.get(dut.value) == 6
        ctx.set(dut.step, 0)
        await ctx.tick()
        assert ctx.get(dut.value) == 6

    run(dut, bench)


def test_load_and_priority():
    dut = Sequencer()

    async def bench(ctx):
        ctx.set(dut.load, 1)
        ctx.set(dut.load_value, 0x1_0000_0000)
        ctx.set(dut.step, 1)  # load wins: a LOAD replaces, never adds
        await ctx.tick()
        assert ctx.get(dut.value) == 0x1_0000_0000
        ctx.set(dut.load, 0)
        await ctx.tick()
        assert ctx.get(dut.value) == 0x1_0000_0001

    run(dut, bench)


def test_carry_across_all_words():
    dut = Sequencer()

    async def bench(ctx):
        ctx.set(dut.load, 1)
        ctx.set(dut.load_value, 0x0000_0000_FFFF_FFFF)
        await ctx.tick()
        ctx.set(dut.load, 0)
        ctx.set(dut.step, 1)
        await ctx.tick()
        assert ctx.get(dut.value) == 0x0000_0001_0000_0000
        ctx.set(dut.load, 1)
        ctx.set(dut.load_value, 2**64 - 1)
        ctx.set(dut.step, 0)
        await ctx.tick()
        ctx.set(dut.load, 0)
        ctx.set(dut.step, 1)
        await ctx.tick()
        assert ctx.get(dut.value) == 0  # 64-bit wrap, 584 years at 1 GHz

    run(dut, bench)


def test_carry_into_the_high_word_around_a_load():
    """The carry into the high word is a register set a step ahead
    (hdl/sequencer.py): loaded within a few steps of the low word's wrap,
    with steps back to back and with gaps, the value is always the loaded
    one plus the steps taken."""
    dut = Sequencer()

    async def bench(ctx):
        for hi in (0, 0x1234_5678, 0xFFFF_FFFF):
            for below in range(4):
                for gap in (0, 1):
                    start = (hi << 32) | (0xFFFF_FFFF - below)
                    ctx.set(dut.load, 1)
                    ctx.set(dut.load_value, start)
                    await ctx.tick()
                    ctx.set(dut.load, 0)
                    for k in range(1, 7):
                        ctx.set(dut.step, 1)
                        await ctx.tick()
                        ctx.set(dut.step, 0)
                        assert ctx.get(dut.value) == (start + k) % 2**64, (hex(start), k)
                        if gap:
                            await ctx.tick().repeat(gap)

    run(dut, bench)
