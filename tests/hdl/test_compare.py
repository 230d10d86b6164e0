"""lt_const/ge_const/le_wide agree with Python's comparison on every input,
in both spellings of lt_const/ge_const (spelt out for the boards, native for
the Verilator harness: ``native_compares``)."""

import contextlib

import pytest
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from tricopy.hdl.compare import ge_const, le_wide, lt_const, native_compares


@pytest.mark.parametrize("native", [False, True], ids=["spelt", "native"])
@pytest.mark.parametrize("k", [0, 1, 2, 12, 16, 60, 63, 64, 65, 100, 127, 128, 129])
def test_const_compare(k, native):
    x = Signal(7)
    lt, ge = Signal(), Signal()
    m = Module()
    with native_compares() if native else contextlib.nullcontext():
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


def test_native_compares_is_the_plain_comparison_and_only_inside():
    """Inside the block the comparison is Amaranth's own ``<`` (one operator
    for the simulator); outside it, and after it, the spelt-out form."""
    x = Signal(7)
    with native_compares():
        assert repr(lt_const(x, 60)) == repr(x < 60)
    assert repr(lt_const(x, 60)) != repr(x < 60)


@pytest.mark.parametrize("na,nb", [(3, 7), (4, 4), (5, 3)])
def test_le_wide(na, nb):
    """a <= b for every pair of a 3..5-bit a and a 3..7-bit b (the narrow
    chain plus the OR of b's upper bits, and the plain compare otherwise)."""
    a, b, le = Signal(na), Signal(nb), Signal()
    m = Module()
    m.d.comb += le.eq(le_wide(a, b))

    async def bench(ctx):
        for va in range(1 << na):
            for vb in range(1 << nb):
                ctx.set(a, va)
                ctx.set(b, vb)
                assert ctx.get(le) == (va <= vb), (va, vb)

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
