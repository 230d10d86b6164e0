"""Timestamp unit of the journal engine (patent 214: TIME).

A 64-bit nanosecond clock driven by the engine clock. One clock period is
rarely a whole number of nanoseconds (12 MHz: 83.333... ns), so the unit
adds the integer part ``NS_INT`` every cycle and carries the fraction in an
exact rational accumulator: ``FRAC`` grows by ``1e9 mod clk_hz`` per cycle
and, whenever it reaches ``clk_hz``, one extra nanosecond is added. After N
cycles from a load of V, ``now == V + floor(N * 1e9 / clk_hz)`` exactly:
the clock never drifts, whatever ``clk_hz`` is.

The 64-bit counter is two 32-bit words so that no carry chain is longer
than 32 bits (iCE40 carry chains dominate fmax). The carry from the low
word into the high word is a register, ``carry``, computed a cycle ahead:
it holds whether *this* cycle's step overflows the low word, so the high
word's adder starts from a flip-flop and both words move in the same edge
(``now`` is never seen with the low word wrapped and the high word not yet
carried: no correction on read, no cycle of latency). Working it out a
cycle ahead needs no 32-bit sum either: the low word can only overflow
when its upper bits are all ones, so "the next step overflows" is a short
add of the two steps' increments to the low bits plus a wide AND.
"""

from math import gcd

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Timestamp", "NS_PER_S"]

NS_PER_S = 1_000_000_000


class Timestamp(wiring.Component):
    """64-bit nanosecond clock, loadable, monotonic while running.

    Parameters
    ----------
    clk_hz : int
        Frequency of the ``sync`` clock in Hz, a positive integer.

    Ports
    -----
    load, load_value : In
        On ``load`` the clock is set to ``load_value`` (and the fractional
        nanosecond is cleared), effective on the next edge.
    freeze : In
        Sampled together with ``load``: when high the clock stays at
        ``load_value`` until the next load with ``freeze`` low
        (docs/protocol.md, LOAD flag FREEZE).
    now : Out
        The current time in ns. It only moves forwards while running; a load
        may set it backwards (the engine's LAST_TIME keeps stamps monotonic).
    """

    load: In(1)
    load_value: In(64)
    freeze: In(1)
    now: Out(64)

    def __init__(self, clk_hz):
        if not isinstance(clk_hz, int) or isinstance(clk_hz, bool):
            raise TypeError(f"clk_hz must be an integer, not {clk_hz!r}")
        if clk_hz <= 0:
            raise ValueError(f"clk_hz must be positive, not {clk_hz!r}")
        self.clk_hz = clk_hz
        #: whole nanoseconds added every cycle
        self.ns_int = NS_PER_S // clk_hz
        #: fractional nanoseconds per cycle, in units of 1/clk_hz ns
        self.ns_rem = NS_PER_S % clk_hz
        # The fraction in lowest terms, ns_rem/clk_hz = frac_num/frac_den:
        # the accumulator only ever holds multiples of gcd(ns_rem, clk_hz),
        # so dividing through gives the same carries from a far narrower
        # register (1/3 ns at 12 MHz: 2 bits instead of 24).
        g = gcd(self.ns_rem, clk_hz)
        self.frac_num, self.frac_den = self.ns_rem // g, clk_hz // g
        super().__init__()

    def stepping(self, m: Module, lo):
        """The step the fabric unit here and the DSP one (boards/mac16.py,
        ``DSPTimestamp``) both take from ``lo``, the clock's low word: the
        fraction, this step's increment and the carry into the high word
        looked up a step ahead.  Returns (frozen, frac, frac_sum, extra,
        inc, carry, wraps_next, load_carry); the caller's registers take them."""
        frozen = Signal()
        frac = Signal(range(self.frac_den))

        # One extra ns whenever the fraction wraps (Bresenham-style).
        frac_sum = Signal(range(2 * self.frac_den))
        extra = Signal()
        m.d.comb += [
            frac_sum.eq(frac + self.frac_num),
            extra.eq(frac_sum >= self.frac_den),
        ]
        inc = Signal(range(self.ns_int + 2))
        m.d.comb += inc.eq(self.ns_int + extra)
        # The extras of this cycle's step and the next one's together: the
        # times frac + 2 * frac_num passes a multiple of frac_den (0, 1 or 2;
        # frac_num < frac_den, so at most one a step).
        two = Signal(range(3))
        twice = frac + 2 * self.frac_num
        m.d.comb += two.eq((twice >= self.frac_den) + (twice >= 2 * self.frac_den))

        # ``carry``: this cycle's lo + inc reaches 2**32. A register, set
        # with each step for the step after: lo + inc + inc' reaches 2**32
        # (inc' the next step's increment) and this step does not already
        # wrap (after a wrap lo is below inc, far from 2**32 again). With
        # s = inc + inc' <= 2**k, lo + s can reach 2**32 only if lo[k:] is
        # all ones; then it does iff lo[:k] + s >= 2**k. On a load, the first
        # step from the loaded value: inc is NS_INT then (the fraction is
        # cleared, and frac_num < frac_den).
        k = (2 * self.ns_int + 2).bit_length()
        carry = Signal()
        s2 = Signal(range(2 * self.ns_int + 3))
        m.d.comb += s2.eq(2 * self.ns_int + two)
        wraps_next = Signal()
        m.d.comb += wraps_next.eq(lo[k:].all() & (lo[:k] + s2)[k] & ~carry)
        k0 = (self.ns_int + 1).bit_length()
        load_lo = self.load_value[:32]
        load_carry = load_lo[k0:].all() & (load_lo[:k0] + self.ns_int)[k0]

        return frozen, frac, frac_sum, extra, inc, carry, wraps_next, load_carry

    def elaborate(self, platform):
        m = Module()

        lo = Signal(32)
        hi = Signal(32)
        m.d.comb += self.now.eq(Cat(lo, hi))
        frozen, frac, frac_sum, extra, inc, carry, wraps_next, load_carry = self.stepping(m, lo)

        with m.If(self.load):
            m.d.sync += [
                Cat(lo, hi).eq(self.load_value),
                frac.eq(0),
                frozen.eq(self.freeze),
                carry.eq(load_carry),
            ]
        with m.Elif(~frozen):
            m.d.sync += [
                lo.eq(lo + inc),
                hi.eq(hi + carry),
                frac.eq(Mux(extra, frac_sum - self.frac_den, frac_sum)),
                carry.eq(wraps_next),
            ]
        return m
