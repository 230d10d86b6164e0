"""8N1 UART as byte streams: the engine's link on a board.

``UARTTx`` drains a ``stream.Signature(8)``; ``UARTRx`` fills one. A UART
cannot push back on its sender, so the receiver never waits: a byte that
completes while the previous one is still unaccepted is dropped and reported
on ``overrun`` (the board top puts a FIFO in front of the engine so that this
only happens when the host ignores flow control altogether).

The divisor (clocks per bit) is an integer or, where the clock is not a
multiple of the baud rate (the ULX3S's 25 MHz at 3 Mbaud: 8 1/3), a
``Fraction``: each bit then lasts the integer part or one clock more, as a
phase accumulator decides, so the bit edges are within one clock of where
an ideal line has them and the average rate is exact (docs/boards.md, "Baud
rate").
"""

from fractions import Fraction

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["UARTRx", "UARTTx", "divisor_for", "MIN_DIVISOR", "MIN_FRACTIONAL_DIVISOR"]

#: The receiver samples at half a bit after the start edge: it needs a few
#: clocks per bit for that point to be meaningful. At 4 the sample lands
#: 2..3 clocks after the true edge (the start edge is seen up to a clock
#: late), 50..75 % into each bit.
MIN_DIVISOR = 4

#: A fractional divisor adds up to a clock of jitter to every sample point
#: (bits of 8 or 9 clocks at 8 1/3), on top of the clock of the start edge;
#: from 8 clocks per bit both together stay within a quarter bit of the middle.
MIN_FRACTIONAL_DIVISOR = 8

#: Largest baud rate error accepted by ``divisor_for`` for an integer divisor. 8N1 tolerates about
#: 5 % between both ends together; keep each end well inside half of that.
MAX_BAUD_ERROR = 0.02

#: Largest denominator of a fractional divisor (the accumulator's modulus).
MAX_DENOMINATOR = 256


def _split(divisor):
    """(whole clocks, numerator, denominator) of a divisor."""
    if isinstance(divisor, Fraction):
        return divisor.numerator // divisor.denominator, \
            divisor.numerator % divisor.denominator, divisor.denominator
    return divisor, 0, 1


def _check_divisor(divisor):
    if isinstance(divisor, Fraction):
        if divisor.denominator > MAX_DENOMINATOR:
            raise ValueError(f"a fractional divisor's denominator must be at most "
                             f"{MAX_DENOMINATOR}, not {divisor!r}")
        if divisor.denominator > 1 and divisor < MIN_FRACTIONAL_DIVISOR:
            raise ValueError(f"a fractional divisor must be at least {MIN_FRACTIONAL_DIVISOR} "
                             f"clocks per bit, not {divisor!r}")
        if divisor.denominator == 1:
            divisor = int(divisor)
        else:
            return divisor
    if not isinstance(divisor, int) or isinstance(divisor, bool):
        raise TypeError(f"divisor must be an integer or a Fraction, not {divisor!r}")
    if divisor < MIN_DIVISOR:
        raise ValueError(f"divisor must be at least {MIN_DIVISOR} clocks per bit, not {divisor!r}")
    return divisor


def divisor_for(clk_hz, baud):
    """Clocks per bit for ``baud`` at ``clk_hz``: the nearest integer when it
    is within 2 % of ``baud``, else the exact ``Fraction`` if it is at least
    MIN_FRACTIONAL_DIVISOR (with a denominator up to MAX_DENOMINATOR);
    ValueError otherwise, or below MIN_DIVISOR."""
    if clk_hz <= 0 or baud <= 0:
        raise ValueError(f"clk_hz and baud must be positive, not {clk_hz!r} and {baud!r}")
    divisor = round(clk_hz / baud)
    if divisor < MIN_DIVISOR:
        raise ValueError(f"baud {baud!r} is too fast for a {clk_hz!r} Hz clock "
                         f"(needs at least {MIN_DIVISOR} clocks per bit)")
    error = abs(clk_hz / divisor - baud) / baud
    if error <= MAX_BAUD_ERROR:
        return divisor
    exact = Fraction(clk_hz, baud)
    if exact >= MIN_FRACTIONAL_DIVISOR and exact.denominator <= MAX_DENOMINATOR:
        return exact
    raise ValueError(f"baud {baud!r} at {clk_hz!r} Hz is off by {error:.1%} "
                     f"with divisor {divisor}, and {float(exact):.3f} clocks per bit is "
                     f"{'too few' if exact < MIN_FRACTIONAL_DIVISOR else 'too fine'} "
                     f"for a fractional divisor")


def _bit_timer(divisor, timer, acc):
    """The reload of ``timer`` for the next bit: whole - 1, or whole when the
    phase accumulator ``acc`` (in 1/den clocks) carries. Statements to add
    where a bit starts; the accumulator never resets, so back-to-back bits
    average ``divisor`` exactly (an integer divisor needs no accumulator)."""
    whole, num, den = _split(divisor)
    if not num:
        return [timer.eq(whole - 1)]
    carry = acc >= den - num
    return [timer.eq(Mux(carry, whole, whole - 1)),
            acc.eq(Mux(carry, acc + num - den, acc + num))]


class UARTTx(wiring.Component):
    """8N1 transmitter: one start bit (0), 8 data bits LSB first, one stop bit (1).

    Parameters
    ----------
    divisor : int or Fraction
        Clocks per bit, at least ``MIN_DIVISOR`` (a Fraction: at least
        ``MIN_FRACTIONAL_DIVISOR``).

    Ports
    -----
    i : In(stream.Signature(8))
        Bytes to send; accepted (``ready``) while the line is idle or in the
        last clock of a stop bit, so back-to-back bytes leave no idle clock
        between them (10 bits a byte exactly: at 4 clocks per bit one more
        clock would cost 2.5 % of the line).
    tx : Out(1)
        The serial line, idle high.
    """

    i: In(stream.Signature(8))
    tx: Out(1, init=1)

    def __init__(self, divisor):
        self.divisor = _check_divisor(divisor)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        whole, _, den = _split(self.divisor)
        # start bit, 8 data bits, stop bit; shifted out LSB first
        shreg = Signal(10, init=0x3FF)
        bits_left = Signal(range(11))
        timer = Signal(range(whole + 1))
        acc = Signal(range(den))          # phase of a fractional divisor (1/den clocks)
        stop_ends = (bits_left == 1) & (timer == 0)

        m.d.comb += [
            self.tx.eq(shreg[0]),
            self.i.ready.eq((bits_left == 0) | stop_ends),
        ]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [
                shreg.eq(Cat(Const(0, 1), self.i.payload, Const(1, 1))),
                bits_left.eq(10),
                *_bit_timer(self.divisor, timer, acc),
            ]
        with m.Elif(bits_left != 0):
            with m.If(timer == 0):
                m.d.sync += [
                    shreg.eq(Cat(shreg[1:], Const(1, 1))),
                    bits_left.eq(bits_left - 1),
                    *_bit_timer(self.divisor, timer, acc),
                ]
            with m.Else():
                m.d.sync += timer.eq(timer - 1)
        return m


class UARTRx(wiring.Component):
    """8N1 receiver.

    Parameters
    ----------
    divisor : int or Fraction
        Clocks per bit, at least ``MIN_DIVISOR`` (a Fraction: at least
        ``MIN_FRACTIONAL_DIVISOR``).

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
        self.divisor = _check_divisor(divisor)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        rx = Signal(init=1)
        m.submodules.sync_rx = FFSynchronizer(self.rx, rx, init=1)

        whole, _, den = _split(self.divisor)
        timer = Signal(range(whole + 1))
        # Phase of a fractional divisor, started at half a clock so that the
        # sample points stay within half a clock of the ideal ones.
        acc = Signal(range(den))
        bit = Signal(range(8))
        shreg = Signal(8)

        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        m.d.sync += [self.framing_error.eq(0), self.overrun.eq(0)]

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~rx):
                    # Sample the middle of the start bit, then whole bits on.
                    m.d.sync += [timer.eq(whole // 2 - 1), acc.eq(den // 2)]
                    m.next = "START"
            with m.State("START"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(rx):
                    m.next = "IDLE"  # a glitch, not a start bit
                with m.Else():
                    m.d.sync += [*_bit_timer(self.divisor, timer, acc), bit.eq(0)]
                    m.next = "DATA"
            with m.State("DATA"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    m.d.sync += [
                        shreg.eq(Cat(shreg[1:], rx)),
                        bit.eq(bit + 1),
                        *_bit_timer(self.divisor, timer, acc),
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
