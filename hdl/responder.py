"""Answer side of the journal engine: serializes one frame at a time.

The engine core hands the responder a frame description (TYPE, FLAGS,
LENGTH and where the body comes from) with a one-cycle ``start``; the
responder emits header, body and trailer on a byte stream and computes HCRC
and BCRC on the fly, so no answer is ever buffered. For journal read-out
(``Source.RING``) the body is read from ring memory one byte ahead of the
stream (the read port is enabled only when a byte is taken, so backpressure
holds the data) and the control data's CCRC is recomputed on the way out
(docs/protocol.md, "CCRC").
"""

from amaranth.lib import enum

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..host import protocol
from . import layouts
from .crc import CRC_INIT, crc32c_step

__all__ = ["Source", "Responder", "LENGTH_BITS"]

#: Bits of a frame LENGTH the engine handles: MAX_BODY = 64 + 4 MiB < 2**23.
LENGTH_BITS = protocol.MAX_BODY.bit_length()


class Source(enum.Enum, shape=3):
    """Where the body of an answer frame comes from."""
    ACK = 0       # the Ack latched at start
    STATUS = 1    # the engine's status view (the engine holds still meanwhile)
    HELLO = 2     # the engine's HELLO view
    ECHO = 3      # the 8-byte HEARTBEAT token
    RING = 4      # ring memory from ``base``, CCRC replaced at body bytes 60..63


class _Phase(enum.Enum, shape=2):
    IDLE = 0
    HEAD = 1
    BODY = 2
    TRAILER = 3


class Responder(wiring.Component):
    """Byte-wide frame serializer for the engine's answers.

    Parameters
    ----------
    ring_bits : int
        log2 of the ring size; width of ``base`` and ``rd_addr``.
    """

    def __init__(self, ring_bits: int):
        if not isinstance(ring_bits, int) or ring_bits < 7:
            raise ValueError(f"ring_bits must be an integer >= 7, not {ring_bits!r}")
        self.ring_bits = ring_bits
        super().__init__({
            "tx": Out(stream.Signature(8)),
            "start": In(1),
            "ftype": In(8),
            "flags": In(16),
            "length": In(LENGTH_BITS),
            "source": In(Source),
            "base": In(ring_bits),
            "ack": In(layouts.Ack),
            "status": In(layouts.EngineStatus),
            "hello": In(layouts.Hello),
            "echo": In(64),           # latched at start, like ack
            "busy": Out(1),
            # ring read port, owned by the responder while busy
            "rd_addr": Out(ring_bits),
            "rd_en": Out(1),
            "rd_data": In(8),
        })

    def elaborate(self, platform):
        m = Module()

        phase = Signal(_Phase)
        idx = Signal(LENGTH_BITS)
        head = Signal(96)              # MAGIC..LENGTH, latched at start
        length = Signal(LENGTH_BITS)
        source = Signal(Source)
        base = Signal(self.ring_bits)
        ack = Signal(layouts.Ack)
        echo = Signal(64)
        crc_h = Signal(32, init=CRC_INIT)   # HCRC, then CCRC of a read-out
        crc_b = Signal(32, init=CRC_INIT)   # BCRC

        m.d.comb += self.busy.eq(phase != _Phase.IDLE)

        with m.If(self.start & (phase == _Phase.IDLE)):
            m.d.sync += [
                phase.eq(_Phase.HEAD),
                idx.eq(0),
                head.eq(Cat(Const(protocol.MAGIC, 32), Const(protocol.VERSION, 8),
                            self.ftype, self.flags, self.length, Const(0, 32 - LENGTH_BITS))),
                length.eq(self.length),
                source.eq(self.source),
                base.eq(self.base),
                ack.eq(self.ack),
                echo.eq(self.echo),
                crc_h.eq(CRC_INIT),
                crc_b.eq(CRC_INIT),
            ]

        # The byte at the current position.
        byte = Signal(8)
        ccrc_pos = (source == Source.RING) & (idx >= 60) & (idx < 64)
        with m.Switch(phase):
            with m.Case(_Phase.HEAD):
                m.d.comb += byte.eq(Mux(idx < 12, head.word_select(idx[:4], 8),
                                        (crc_h ^ CRC_INIT).word_select(idx[:2], 8)))
            with m.Case(_Phase.BODY):
                with m.Switch(source):
                    with m.Case(Source.ACK):
                        m.d.comb += byte.eq(ack.as_value().word_select(idx[:5], 8))
                    with m.Case(Source.STATUS):
                        m.d.comb += byte.eq(self.status.as_value().word_select(idx[:7], 8))
                    with m.Case(Source.HELLO):
                        m.d.comb += byte.eq(self.hello.as_value().word_select(idx[:7], 8))
                    with m.Case(Source.ECHO):
                        m.d.comb += byte.eq(echo.word_select(idx[:3], 8))
                    with m.Case(Source.RING):
                        m.d.comb += byte.eq(Mux(ccrc_pos,
                                                (crc_h ^ CRC_INIT).word_select(idx[:2], 8),
                                                self.rd_data))
            with m.Case(_Phase.TRAILER):
                m.d.comb += byte.eq((crc_b ^ CRC_INIT).word_select(idx[:2], 8))

        m.d.comb += [
            self.tx.valid.eq(phase != _Phase.IDLE),
            self.tx.payload.eq(byte),
        ]
        take = self.tx.valid & self.tx.ready

        # Ring prefetch: when a byte is taken, read the body byte shown next.
        next_body = Mux(phase == _Phase.BODY, idx + 1, 0)
        m.d.comb += [
            self.rd_addr.eq(base + next_body),
            self.rd_en.eq(take),
        ]

        with m.If(take):
            m.d.sync += idx.eq(idx + 1)
            with m.Switch(phase):
                with m.Case(_Phase.HEAD):
                    with m.If(idx < 12):
                        m.d.sync += crc_h.eq(crc32c_step(crc_h, byte, 1))
                    with m.If(idx == 15):
                        m.d.sync += [idx.eq(0), crc_h.eq(CRC_INIT)]
                        m.d.sync += phase.eq(Mux(length == 0, _Phase.IDLE, _Phase.BODY))
                with m.Case(_Phase.BODY):
                    m.d.sync += crc_b.eq(crc32c_step(crc_b, byte, 1))
                    with m.If(idx < 60):
                        m.d.sync += crc_h.eq(crc32c_step(crc_h, byte, 1))
                    with m.If(idx == length - 1):
                        m.d.sync += [idx.eq(0), phase.eq(_Phase.TRAILER)]
                with m.Case(_Phase.TRAILER):
                    with m.If(idx == 3):
                        m.d.sync += phase.eq(_Phase.IDLE)
        return m
