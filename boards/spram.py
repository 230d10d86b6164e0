"""Byte-addressed ring memory in the iCE40 UP5K's SPRAMs.

Amaranth's ``Memory`` is inferred as EBR (30 x 4 kbit on the UP5K) but never
as SPRAM (4 x 256 kbit): an SB_SPRAM256KA has a single address port and
16-bit words. ``SPRAMRing`` offers the two ports the journal engine uses on
its ring (one write, one read, never in the same cycle) on top of it, so the
ring can grow to 128 KiB. Off the iCE40 (``platform`` None, i.e. the
simulator, or another family) it elaborates a plain ``Memory`` with the same
timing, so one testbench covers both.
"""

from amaranth.hdl import Cat, ClockSignal, Instance, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.vendor import SiliconBluePlatform

from tricopy.hdl.ring import RingMemory, ring_signature

__all__ = ["SPRAMRing", "SPRAM_BYTES"]

#: One SB_SPRAM256KA: 16 K words of 16 bits.
SPRAM_BYTES = 32768
SPRAM_COUNT = 4


def _instance(*, DATAOUT, **inputs):
    """The SB_SPRAM256KA primitive, always powered and awake."""
    return Instance("SB_SPRAM256KA", i_CLOCK=ClockSignal("sync"),
                    i_STANDBY=0, i_SLEEP=0, i_POWEROFF=1, o_DATAOUT=DATAOUT,
                    **{f"i_{name}": value for name, value in inputs.items()})


class SPRAMRing(wiring.Component):
    """``depth`` bytes with a write port and a read port (one-cycle latency).

    A cycle may write (``w_en``) or read (``r_en``), not both: SPRAM has one
    address port, so a write takes it and the read is not performed
    (``r_data`` keeps its previous value, as it does whenever ``r_en`` is low).

    Parameters
    ----------
    depth : int
        Bytes, a power of two from 2 to 131072 (all four SPRAMs).
    primitive : callable, optional
        ``primitive(**ports)`` returns the Elaboratable for one SPRAM, ports
        named as SB_SPRAM256KA's. Given, the SPRAM path is used on any
        platform: tests pass a behavioural model of the primitive.
    """

    def __init__(self, depth, *, primitive=None):
        if not isinstance(depth, int) or depth < 2 or depth & (depth - 1) \
                or depth > SPRAM_COUNT * SPRAM_BYTES:
            raise ValueError(f"depth must be a power of two from 2 to "
                             f"{SPRAM_COUNT * SPRAM_BYTES}, not {depth!r}")
        self.depth = depth
        self.primitive = primitive
        self.addr_bits = depth.bit_length() - 1
        super().__init__(ring_signature(self.addr_bits))

    def elaborate(self, platform):
        # Only the UP5K family member has SPRAM; others get the model (EBR).
        if self.primitive is not None or (isinstance(platform, SiliconBluePlatform)
                                          and platform.device.startswith("iCE40UP")):
            return self._spram()
        return self._model()

    def _model(self):
        # Same contract as the engine's default ring: reuse it (block RAM).
        m = Module()
        m.submodules.ring = ring = RingMemory(self.depth)
        wiring.connect(m, wiring.flipped(self), ring)
        return m

    def _spram(self):
        m = Module()
        addr = Signal(self.addr_bits)
        m.d.comb += addr.eq(self.r_addr)
        with m.If(self.w_en):
            m.d.comb += addr.eq(self.w_addr)
        lane = addr[0]
        word = Signal(14)   # SB_SPRAM256KA ADDRESS: 16-bit word in one SPRAM
        m.d.comb += word.eq(addr[1:15])
        block = addr[15:]
        blocks = max(1, self.depth // SPRAM_BYTES)
        # The byte lane and block of the last read pick the output byte; they
        # change only on a read, so r_data holds like a Memory port with en=0.
        r_lane = Signal()
        r_block = Signal(range(blocks))
        with m.If(self.r_en & ~self.w_en):
            m.d.sync += [r_lane.eq(lane), r_block.eq(block)]
        outs = []
        for n in range(blocks):
            dout = Signal(16)
            cs = Signal()
            m.d.comb += cs.eq((block == n) & (self.w_en | self.r_en))
            m.submodules[f"spram{n}"] = (self.primitive or _instance)(
                ADDRESS=word,
                DATAIN=Cat(self.w_data, self.w_data),
                # MASKWREN is per nibble, 1 = write: the byte lane picks two.
                MASKWREN=Cat(~lane, ~lane, lane, lane),
                WREN=self.w_en,
                CHIPSELECT=cs,
                DATAOUT=dout,
            )
            outs.append(dout)
        out = Signal(16)
        m.d.comb += out.eq(outs[0])
        for n in range(1, blocks):
            with m.If(r_block == n):
                m.d.comb += out.eq(outs[n])
        # SB_SPRAM256KA's DATAOUT is undefined after a write cycle (Yosys'
        # cells_sim.v: DATAOUT <= 'x), so the byte of the last read is kept
        # here and shown whenever the cycle before was not a read.
        fresh = Signal()
        held = Signal(8)
        m.d.sync += [fresh.eq(self.r_en & ~self.w_en), held.eq(self.r_data)]
        m.d.comb += self.r_data.eq(Mux(fresh, out.word_select(r_lane, 8), held))
        return m
