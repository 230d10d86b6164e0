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
word into the high word is computed without waiting for the low word's
full sum: the low word can only overflow when its upper bits are all ones
(see ``_carry``), so the carry is a short add plus a wide AND.
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

    def elaborate(self, platform):
        m = Module()

        lo = Signal(32)
        hi = Signal(32)
        frozen = Signal()
        frac = Signal(range(self.frac_den))
        m.d.comb += self.now.eq(Cat(lo, hi))

        # One extra ns whenever the fraction wraps (Bresenham-style).
        frac_sum = Signal(range(2 * self.frac_den))
        extra = Signal()
        m.d.comb += [
            frac_sum.eq(frac + self.frac_num),
            extra.eq(frac_sum >= self.frac_den),
        ]
        inc = Signal(range(self.ns_int + 2))
        m.d.comb += inc.eq(self.ns_int + extra)

        # Carry out of lo + inc. With inc <= 2**k, lo + inc can reach 2**32
        # only if lo[k:] is all ones; then it does iff lo[:k] + inc >= 2**k.
        k = (self.ns_int + 1).bit_length()
        low_part = Signal(k + 1)
        carry = Signal()
        m.d.comb += [
            low_part.eq(lo[:k] + inc),
            carry.eq(lo[k:].all() & low_part[k]),
        ]

        with m.If(self.load):
            m.d.sync += [
                Cat(lo, hi).eq(self.load_value),
                frac.eq(0),
                frozen.eq(self.freeze),
            ]
        with m.Elif(~frozen):
            m.d.sync += [
                lo.eq(lo + inc),
                hi.eq(hi + carry),
                frac.eq(Mux(extra, frac_sum - self.frac_den, frac_sum)),
            ]
        return m
