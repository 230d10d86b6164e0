"""lt_const/ge_const agree with Python's comparison on every input."""

import pytest
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from tricopy.hdl.compare import ge_const, lt_const


@pytest.mark.parametrize("k", [0, 1, 2, 12, 16, 60, 63, 64, 65, 100, 127, 128, 129])
def test_const_compare(k):
    x = Signal(7)
    lt, ge = Signal(), Signal()
    m = Module()
    m.d.comb += [lt.eq(lt_const(x, k)), ge.eq(ge_const(x, k))]

    async def bench(ctx):
        for v in range(128):
            ctx.set(x, v)
            assert (ctx.get(lt), ctx.get(ge)) == (v < k, v >= k), v

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()


def test_const_compare_rejects_signals():
    with pytest.raises(TypeError, match="constant"):
        lt_const(Signal(4), Signal(4))
