"""8N1 UART as byte streams: the engine's link on a board.

``UARTTx`` drains a ``stream.Signature(8)``; ``UARTRx`` fills one. A UART
cannot push back on its sender, so the receiver never waits: a byte that
completes while the previous one is still unaccepted is dropped and reported
on ``overrun`` (the board top puts a FIFO in front of the engine so that this
only happens when the host ignores flow control altogether).
"""

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["UARTRx", "UARTTx", "divisor_for", "MIN_DIVISOR"]

#: The receiver samples at half a bit after the start edge: it needs a few
#: clocks per bit for that point to be meaningful.
MIN_DIVISOR = 4

#: Largest baud rate error accepted by ``divisor_for``. 8N1 tolerates about
#: 5 % between both ends together; keep each end well inside half of that.
MAX_BAUD_ERROR = 0.02


def _check_divisor(divisor):
    if not isinstance(divisor, int) or isinstance(divisor, bool):
        raise TypeError(f"divisor must be an integer, not {divisor!r}")
    if divisor < MIN_DIVISOR:
        raise ValueError(f"divisor must be at least {MIN_DIVISOR} clocks per bit, not {divisor!r}")


def divisor_for(clk_hz, baud):
    """Clocks per bit for ``baud`` at ``clk_hz``; ValueError if the nearest
    integer divisor misses ``baud`` by more than 2 % or is below MIN_DIVISOR."""
    if clk_hz <= 0 or baud <= 0:
        raise ValueError(f"clk_hz and baud must be positive, not {clk_hz!r} and {baud!r}")
    divisor = round(clk_hz / baud)
    if divisor < MIN_DIVISOR:
        raise ValueError(f"baud {baud!r} is too fast for a {clk_hz!r} Hz clock "
                         f"(needs at least {MIN_DIVISOR} clocks per bit)")
    error = abs(clk_hz / divisor - baud) / baud
    if error > MAX_BAUD_ERROR:
        raise ValueError(f"baud {baud!r} at {clk_hz!r} Hz is off by {error:.1%} "
                         f"with divisor {divisor}")
    return divisor


class UARTTx(wiring.Component):
    """8N1 transmitter: one start bit (0), 8 data bits LSB first, one stop bit (1).

    Parameters
    ----------
    divisor : int
        Clocks per bit, at least ``MIN_DIVISOR``.

    Ports
    -----
    i : In(stream.Signature(8))
        Bytes to send; accepted (``ready``) only while the line is idle.
    tx : Out(1)
        The serial line, idle high.
    """

    i: In(stream.Signature(8))
    tx: Out(1, init=1)

    def __init__(self, divisor):
        _check_divisor(divisor)
        self.divisor = divisor
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        # start bit, 8 data bits, stop bit; shifted out LSB first
        shreg = Signal(10, init=0x3FF)
        bits_left = Signal(range(11))
        timer = Signal(range(self.divisor))

        m.d.comb += [
            self.tx.eq(shreg[0]),
            self.i.ready.eq(bits_left == 0),
        ]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [
                shreg.eq(Cat(Const(0, 1), self.i.payload, Const(1, 1))),
                bits_left.eq(10),
                timer.eq(self.divisor - 1),
            ]
        with m.Elif(bits_left != 0):
            with m.If(timer == 0):
                m.d.sync += [
                    shreg.eq(Cat(shreg[1:], Const(1, 1))),
                    bits_left.eq(bits_left - 1),
                    timer.eq(self.divisor - 1),
                ]
            with m.Else():
                m.d.sync += timer.eq(timer - 1)
        return m


class UARTRx(wiring.Component):
    """8N1 receiver.

    Parameters
    ----------
    divisor : int
        Clocks per bit, at least ``MIN_DIVISOR``.

    Ports
    -----
    rx : In(1)
        The serial line (asynchronous; synchronized here).
    o : Out(stream.Signature(8))
        Received bytes. ``valid`` stays up until ``ready``.
    framing_error : Out(1)
        One-cycle pulse: the stop bit was 0. The byte is dropped and the
        receiver waits for the line to go idle (a break holds it low).
    overrun : Out(1)
        One-cycle pulse: a byte arrived while ``o`` still held the previous
        one; the new byte is dropped.
    """

    rx: In(1, init=1)
    o: Out(stream.Signature(8))
    framing_error: Out(1)
    overrun: Out(1)

    def __init__(self, divisor):
        _check_divisor(divisor)
        self.divisor = divisor
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        rx = Signal(init=1)
        m.submodules.sync_rx = FFSynchronizer(self.rx, rx, init=1)

        timer = Signal(range(self.divisor))
        bit = Signal(range(8))
        shreg = Signal(8)

        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        m.d.sync += [self.framing_error.eq(0), self.overrun.eq(0)]

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~rx):
                    # Sample the middle of the start bit, then whole bits on.
                    m.d.sync += timer.eq(self.divisor // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(rx):
                    m.next = "IDLE"  # a glitch, not a start bit
                with m.Else():
                    m.d.sync += [timer.eq(self.divisor - 1), bit.eq(0)]
                    m.next = "DATA"
            with m.State("DATA"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    m.d.sync += [
                        shreg.eq(Cat(shreg[1:], rx)),
                        bit.eq(bit + 1),
                        timer.eq(self.divisor - 1),
                    ]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(~rx):
                    m.d.sync += self.framing_error.eq(1)
                    m.next = "BREAK"
                with m.Else():
                    with m.If(self.o.valid & ~self.o.ready):
                        m.d.sync += self.overrun.eq(1)
                    with m.Else():
                        m.d.sync += [self.o.payload.eq(shreg), self.o.valid.eq(1)]
                    m.next = "IDLE"
            with m.State("BREAK"):
                with m.If(rx):
                    m.next = "IDLE"
        return m
