"""The sequence counter and the timestamp unit in the iCE40 UP5K's DSPs.

The UP5K has eight SB_MAC16 blocks, which the journal engine's top left
unused; each holds a 32-bit accumulator (two 16-bit halves, the low
half's carry cascaded into the high one) with a clock enable and a load
from its C:D inputs. NEXT_SEQ (hdl/sequencer.py) and the 64-bit clock
(hdl/timestamp.py) are each two 32-bit words stepped by an adder: in
the fabric a LUT, a carry cell and a flip-flop a bit, and a multiplexer
for the load. ``DSPSequencer`` and ``DSPTimestamp`` keep those words in
four SB_MAC16 accumulators instead, with the same ports and the same
values at every edge; what the engine reads of them (``value``,
``carry``, ``now``) is what the fabric units give. The carry from the
low word into the high word stays a flip-flop set a step ahead, as in
the fabric units, so the two accumulators step on the same edge.

Off the iCE40 UltraPlus (``platform`` None, i.e. the simulator, or
another family) an accumulator elaborates as a behavioural model of the
same subset of SB_MAC16 (``MAC16Accumulator``), so a test compares the
units with the fabric ones cycle by cycle; ``primitive`` forces either.
"""

from amaranth.hdl import Cat, ClockSignal, Const, Instance, Module, Mux, ResetSignal, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.vendor import SiliconBluePlatform

from tricopy.hdl.sequencer import SEQ_RESET, Sequencer
from tricopy.hdl.timestamp import Timestamp

__all__ = ["MAC16Accumulator", "DSPSequencer", "DSPTimestamp"]


def _is_up5k(platform):
    return isinstance(platform, SiliconBluePlatform) and platform.device.startswith("iCE40UP")


class MAC16Accumulator(wiring.Component):
    """A 32-bit accumulator in one SB_MAC16: at each edge with ``ce``,
    ``o`` becomes ``load_value`` if ``load``, else ``o + addend + cin``
    (mod 2**32); 0 after reset.

    ``cin`` is a constant (the SB_MAC16's BOTADDSUB_CARRYSELECT: 0 or 1).
    ``model``: True elaborates the behavioural model, False the primitive,
    None the primitive on the iCE40 UltraPlus only.
    """

    ce: In(1)
    load: In(1)
    load_value: In(32)
    addend: In(16)
    o: Out(32)

    def __init__(self, *, cin, model=None):
        if cin not in (0, 1):
            raise ValueError(f"cin must be 0 or 1, not {cin!r}")
        self.cin = cin
        self.model = model
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        model = self.model if self.model is not None else not _is_up5k(platform)
        if model:
            acc = Signal(32)
            with m.If(self.ce):
                m.d.sync += acc.eq(Mux(self.load, self.load_value,
                                       acc + self.addend + self.cin))
            m.d.comb += self.o.eq(acc)
            return m
        # O = {Q, S}: S (low half) = S + B + cin, Q (high half) = Q + A +
        # the low half's carry, both registered; OLOAD takes C:D instead.
        # The output registers are reset with the domain (ORST, as the
        # fabric's flip-flops are).
        rst = ResetSignal("sync")
        m.submodules.mac = Instance(
            "SB_MAC16",
            p_NEG_TRIGGER=Const(0, 1), p_C_REG=Const(0, 1), p_A_REG=Const(0, 1),
            p_B_REG=Const(0, 1), p_D_REG=Const(0, 1),
            p_TOP_8x8_MULT_REG=Const(0, 1), p_BOT_8x8_MULT_REG=Const(0, 1),
            p_PIPELINE_16x16_MULT_REG1=Const(0, 1), p_PIPELINE_16x16_MULT_REG2=Const(0, 1),
            p_TOPOUTPUT_SELECT=Const(1, 2), p_TOPADDSUB_LOWERINPUT=Const(0, 2),
            p_TOPADDSUB_UPPERINPUT=Const(0, 1), p_TOPADDSUB_CARRYSELECT=Const(2, 2),
            p_BOTOUTPUT_SELECT=Const(1, 2), p_BOTADDSUB_LOWERINPUT=Const(0, 2),
            p_BOTADDSUB_UPPERINPUT=Const(0, 1), p_BOTADDSUB_CARRYSELECT=Const(self.cin, 2),
            p_MODE_8x8=Const(0, 1), p_A_SIGNED=Const(0, 1), p_B_SIGNED=Const(0, 1),
            i_CLK=ClockSignal("sync"), i_CE=self.ce,
            i_C=self.load_value[16:], i_A=Const(0, 16),
            i_B=self.addend, i_D=self.load_value[:16],
            i_AHOLD=0, i_BHOLD=0, i_CHOLD=0, i_DHOLD=0,
            i_IRSTTOP=0, i_IRSTBOT=0, i_ORSTTOP=rst, i_ORSTBOT=rst,
            i_OLOADTOP=self.load, i_OLOADBOT=self.load,
            i_ADDSUBTOP=0, i_ADDSUBBOT=0, i_OHOLDTOP=0, i_OHOLDBOT=0,
            i_CI=0, i_ACCUMCI=0, i_SIGNEXTIN=0,
            o_O=self.o)
        return m


class DSPSequencer(Sequencer):
    """``hdl.sequencer.Sequencer`` with the count in two SB_MAC16s.

    ``value`` bit 0 is a flip-flop (NEXT_SEQ starts at 1; the DSPs reset
    to 0), bits 1..31 the first accumulator, stepped when bit 0 carries,
    bits 32..63 the second, stepped when ``carry`` says the low word
    wraps. ``carry`` is the same register as the fabric unit's.
    """

    def __init__(self, *, model=None):
        self.model = model
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.lo = lo_acc = MAC16Accumulator(cin=1, model=self.model)
        m.submodules.hi = hi_acc = MAC16Accumulator(cin=1, model=self.model)
        v0 = Signal(init=SEQ_RESET & 1)
        lo = Cat(v0, lo_acc.o[:31])
        carry = self.carry
        m.d.comb += [
            self.value.eq(Cat(lo, hi_acc.o)),
            lo_acc.load.eq(self.load), hi_acc.load.eq(self.load),
            lo_acc.load_value.eq(self.load_value[1:32]),
            hi_acc.load_value.eq(self.load_value[32:]),
            lo_acc.ce.eq(self.load | (self.step & v0)),
            hi_acc.ce.eq(self.load | (self.step & carry)),
        ]
        with m.If(self.load):
            m.d.sync += [v0.eq(self.load_value[0]), carry.eq(self.load_value[:32].all())]
        with m.Elif(self.step):
            m.d.sync += [v0.eq(~v0), carry.eq(lo[1:].all() & ~lo[0])]
        return m


class DSPTimestamp(Timestamp):
    """``hdl.timestamp.Timestamp`` with the 64-bit clock in two SB_MAC16s:
    the low word adds ``inc`` (NS_INT, or NS_INT + 1 when the fraction
    wraps) at every running cycle, the high word 1 when ``carry`` (the
    same register, set a cycle ahead, as the fabric unit's) says the low
    word wraps."""

    def __init__(self, clk_hz, *, model=None):
        self.model = model
        super().__init__(clk_hz)
        if self.ns_int + 1 >= 1 << 16:
            raise ValueError(f"clk_hz {clk_hz!r}: NS_INT + 1 must fit the DSP's 16-bit addend")

    def elaborate(self, platform):
        m = Module()
        m.submodules.lo = lo_acc = MAC16Accumulator(cin=0, model=self.model)
        m.submodules.hi = hi_acc = MAC16Accumulator(cin=1, model=self.model)
        lo = lo_acc.o
        m.d.comb += self.now.eq(Cat(lo, hi_acc.o))
        # the fraction, the increment and the carry as the fabric unit has them
        frozen, frac, frac_sum, extra, inc, carry, wraps_next, load_carry = self.stepping(m, lo)

        m.d.comb += [
            lo_acc.load.eq(self.load), hi_acc.load.eq(self.load),
            lo_acc.load_value.eq(self.load_value[:32]),
            hi_acc.load_value.eq(self.load_value[32:]),
            lo_acc.addend.eq(inc),
            lo_acc.ce.eq(self.load | ~frozen),
            hi_acc.ce.eq(self.load | (~frozen & carry)),
        ]
        with m.If(self.load):
            m.d.sync += [frac.eq(0), frozen.eq(self.freeze), carry.eq(load_carry)]
        with m.Elif(~frozen):
            m.d.sync += [
                frac.eq(Mux(extra, frac_sum - self.frac_den, frac_sum)),
                carry.eq(wraps_next),
            ]
        return m
