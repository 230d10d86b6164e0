"""Sequence counter of the journal engine (patent 215: SEQ#).

The engine stamps each accepted journal with ``value`` and then pulses
``step``; the host may set the counter with a LOAD (``load``/``load_value``,
docs/protocol.md "LOAD"). Sequence numbers start at 1 (protocol.md "State":
``NEXT_SEQ`` starts at 1).

The 64-bit +1 is two 32-bit halves, as the timestamp unit's clock is: a
64-bit carry chain was the UP5K's critical path (docs/hardware.md, "UP5K
timing, seventh step"). The carry from the low word into the high word is
a register, ``carry``, set a step ahead: it holds whether the low word is
all ones now, i.e. whether *this* step wraps it. Both halves move on the
same edge, so ``value`` is never seen half stepped.
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Sequencer"]

#: ``NEXT_SEQ`` after reset (docs/protocol.md, "State").
SEQ_RESET = 1


class Sequencer(wiring.Component):
    """64-bit NEXT_SEQ register.

    Ports
    -----
    load, load_value : In
        When ``load`` is high, ``value`` becomes ``load_value`` on the next
        clock edge. A load wins over a simultaneous ``step``: a LOAD
        replaces the counter, it is never added to.
    step : In
        Increments ``value`` by one (wrapping at 2**64).
    value : Out
        The sequence number the next accepted journal receives.
    carry : Out
        The low word of ``value`` is all ones (so a step carries into the
        high word): a register, which the engine also reads for its "SEQ#
        space spent" check (``value`` all ones) instead of a 64-bit AND.
    """

    load: In(1)
    load_value: In(64)
    step: In(1)
    value: Out(64, init=SEQ_RESET)
    carry: Out(1)

    def elaborate(self, platform):
        m = Module()
        lo, hi = self.value[:32], self.value[32:]
        # ``carry``: lo is all ones, so this step carries into hi (reset: lo
        # is 1). After a step lo + 1 is all ones exactly when lo is all ones
        # but bit 0, which is a wide AND of lo, not a second carry chain.
        carry = self.carry
        with m.If(self.load):
            m.d.sync += [self.value.eq(self.load_value),
                         carry.eq(self.load_value[:32].all())]
        with m.Elif(self.step):
            m.d.sync += [lo.eq(lo + 1), hi.eq(hi + carry),
                         carry.eq(lo[1:].all() & ~lo[0])]
        return m
