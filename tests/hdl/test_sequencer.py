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
