"""Board top: UART rx -> FIFO -> journal engine -> UART tx, plus status LEDs.

``EngineTop`` is platform independent (pins are plain ports, so it
simulates); ``BoardTop`` binds it to an amaranth-boards platform's ``uart``
and ``led`` resources. The host talks to it with the frames of
docs/protocol.md over the serial port (the `board` engine backend).
"""

import enum

from amaranth.build import ResourceError
from amaranth.hdl import Cat, Elaboratable, Module, Signal
from amaranth.lib import fifo, io, wiring
from amaranth.lib.wiring import In, Out

from ..host.wire.protocol import ENGINE_BAUD
from .uart import UARTRx, UARTTx, divisor_for

__all__ = ["EngineTop", "BoardTop", "Led", "DEFAULT_BAUD"]

#: One definition with the host's (host/wire/protocol.py): 3 Mbaud, 4 clocks
#: a bit on the iCEBreaker, 25/3 (a fractional divisor) on the ULX3S.
DEFAULT_BAUD = ENGINE_BAUD

#: How long an activity or NAK pulse keeps its LED lit: visible to a person.
LED_STRETCH_S = 0.05
#: LED timing counts ticks of 2**PRESCALE_BITS clocks (5.5 ms at 12 MHz).
PRESCALE_BITS = 16


class Led(enum.IntEnum):
    """Meaning of each bit of ``EngineTop.leds`` (docs/boards.md, LEDs)."""
    #: sticky: a UART framing error or an rx overrun happened since reset
    LINK_ERROR = 0
    #: a byte went in or out in the last ~50 ms
    ACTIVITY = 1
    #: the engine reports its ring full (core port ``full``)
    FULL = 2
    #: the engine sent a NAK in the last ~50 ms (core port ``nak``)
    NAK = 3


def _default_core(data_width, ring_size, clk_hz):
    # Imported here so that the periphery (UART, LEDs, build flow) can be
    # elaborated around any core passed in, without the engine module.
    from .engine import JournalEngine
    return JournalEngine(data_width, ring_size, clk_hz, site="board")


class _Stretch(wiring.Component):
    """Holds ``o`` high for ``strobes`` pulses of ``tick`` after a pulse on ``i``.

    Counting prescaler ticks instead of clocks keeps the counter a few bits
    wide: a 20-bit down counter with a load was the iCE40 critical path.
    """

    i: In(1)
    tick: In(1)
    o: Out(1)

    def __init__(self, strobes):
        self.strobes = max(1, strobes)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        count = Signal(range(self.strobes + 1))
        with m.If(self.i):
            m.d.sync += count.eq(self.strobes)
        with m.Elif(self.tick & (count != 0)):
            m.d.sync += count.eq(count - 1)
        m.d.comb += self.o.eq(count != 0)
        return m


class _Prescaler(wiring.Component):
    """``tick`` pulses once every 2**bits clocks (registered carry out)."""

    tick: Out(1)

    def __init__(self, bits):
        self.bits = bits
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        count = Signal(self.bits)
        m.d.sync += Cat(count, self.tick).eq(count + 1)
        return m


class EngineTop(wiring.Component):
    """The journal engine behind an 8N1 UART.

    Parameters
    ----------
    clk_hz : int
        Frequency of the ``sync`` domain.
    ring_size : int
        Ring size in bytes, passed to the engine.
    baud : int
        UART baud rate (``divisor_for`` checks that ``clk_hz`` can make it,
        with a fractional divisor if it must).
    fifo_depth : int
        Bytes buffered between the UART receiver and the engine, so that the
        engine can stall (e.g. while it streams a JNLRD read-out at UART
        speed) without the receiver overrunning.
    core : wiring.Component, optional
        The engine. Defaults to ``JournalEngine(8, ring_size, clk_hz)`` from
        ``hdl/engine.py``. It must have byte streams ``rx`` (In) and ``tx``
        (Out); optional 1-bit outputs ``full`` and ``nak`` drive the LEDs.

    Ports
    -----
    uart_rx : In(1), uart_tx : Out(1)
        The serial lines, idle high.
    leds : Out(len(Led))
        Active-high status, bit n as ``Led(n)``.
    """

    uart_rx: In(1, init=1)
    uart_tx: Out(1, init=1)
    leds: Out(len(Led))

    def __init__(self, clk_hz, *, ring_size=4096, baud=DEFAULT_BAUD, fifo_depth=32, core=None):
        if not isinstance(clk_hz, int) or clk_hz <= 0:
            raise ValueError(f"clk_hz must be a positive integer, not {clk_hz!r}")
        if not isinstance(fifo_depth, int) or fifo_depth < 1:
            raise ValueError(f"fifo_depth must be a positive integer, not {fifo_depth!r}")
        self.clk_hz = clk_hz
        self.divisor = divisor_for(clk_hz, baud)
        self.fifo_depth = fifo_depth
        self.core = core if core is not None else _default_core(8, ring_size, clk_hz)
        members = self.core.signature.members
        for name in ("rx", "tx"):
            if name not in members or not members[name].is_signature \
                    or members[name].signature.members["payload"].shape != 8:
                raise ValueError(f"core must have an 8-bit stream port {name!r}, "
                                 f"not {members.get(name, None)!r}")
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.rx = rx = UARTRx(self.divisor)
        m.submodules.tx = tx = UARTTx(self.divisor)
        m.submodules.fifo = rx_fifo = fifo.SyncFIFOBuffered(width=8, depth=self.fifo_depth)
        m.submodules.core = core = self.core

        m.d.comb += [rx.rx.eq(self.uart_rx), self.uart_tx.eq(tx.tx)]
        wiring.connect(m, rx.o, rx_fifo.w_stream)
        wiring.connect(m, rx_fifo.r_stream, core.rx)
        wiring.connect(m, core.tx, tx.i)

        link_error = Signal()
        with m.If(rx.framing_error | rx.overrun):
            m.d.sync += link_error.eq(1)
        m.d.comb += self.leds[Led.LINK_ERROR].eq(link_error)

        m.submodules.prescaler = prescaler = _Prescaler(PRESCALE_BITS)
        strobes = round(self.clk_hz * LED_STRETCH_S / 2**PRESCALE_BITS)
        m.submodules.activity = activity = _Stretch(strobes)
        m.d.comb += [
            activity.tick.eq(prescaler.tick),
            activity.i.eq((rx.o.valid & rx.o.ready) | (tx.i.valid & tx.i.ready)),
            self.leds[Led.ACTIVITY].eq(activity.o),
        ]
        members = core.signature.members
        if "full" in members:
            m.d.comb += self.leds[Led.FULL].eq(core.full)
        if "nak" in members:
            m.submodules.nak = nak = _Stretch(strobes)
            m.d.comb += [
                nak.tick.eq(prescaler.tick),
                nak.i.eq(core.nak),
                self.leds[Led.NAK].eq(nak.o),
            ]
        return m


class BoardTop(Elaboratable):
    """``EngineTop`` on a board: UART 0 and as many ``led`` resources as the
    board has (up to ``len(Led)``), clocked by the platform's default clock.

    ``make_core(clk_hz)`` builds the engine core (None: the default
    ``JournalEngine``); it is called at elaboration, when the board's clock
    frequency is known.
    """

    def __init__(self, *, ring_size=4096, baud=DEFAULT_BAUD, make_core=None):
        self.ring_size = ring_size
        self.baud = baud
        self.make_core = make_core

    def elaborate(self, platform):
        m = Module()
        clk_hz = int(platform.default_clk_frequency)
        core = self.make_core(clk_hz) if self.make_core is not None else None
        m.submodules.top = top = EngineTop(clk_hz, ring_size=self.ring_size, baud=self.baud,
                                           core=core)
        uart = platform.request("uart", 0, dir="-")
        m.submodules.uart_rx = rx_buf = io.Buffer("i", uart.rx)
        m.submodules.uart_tx = tx_buf = io.Buffer("o", uart.tx)
        m.d.comb += [top.uart_rx.eq(rx_buf.i), tx_buf.o.eq(top.uart_tx)]
        for n in range(len(Led)):
            try:
                led = platform.request("led", n, dir="-")
            except ResourceError:  # the board has fewer LEDs
                break
            # the buffer applies the board's polarity (iCEBreaker: active low)
            m.submodules[f"led{n}"] = led_buf = io.Buffer("o", led)
            m.d.comb += led_buf.o.eq(top.leds[n])
        return m
