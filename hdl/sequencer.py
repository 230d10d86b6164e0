"""Sequence counter of the journal engine (patent 215: SEQ#).

The engine stamps each accepted journal with ``value`` and then pulses
``step``; the host may set the counter with a LOAD (``load``/``load_value``,
docs/protocol.md "LOAD"). Sequence numbers start at 1 (protocol.md "State":
``NEXT_SEQ`` starts at 1).
"""

from amaranth.hdl import Module
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
    """

    load: In(1)
    load_value: In(64)
    step: In(1)
    value: Out(64, init=SEQ_RESET)

    def elaborate(self, platform):
        m = Module()
        with m.If(self.load):
            m.d.sync += self.value.eq(self.load_value)
        with m.Elif(self.step):
            m.d.sync += self.value.eq(self.value + 1)
        return m
