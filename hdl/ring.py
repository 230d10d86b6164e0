"""The journal engine's ring memory interface and its default implementation.

The engine uses its ring through two ports that are never active in the
same cycle (ingress is stalled while the ring is read out or walked): a
write port and a read port with one cycle of latency. Any component with
these ports can be passed to ``JournalEngine(ring=...)``; on the iCE40 UP5K
``boards/spram.py: SPRAMRing`` puts the ring in the SPRAMs.
"""

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["RingMemory", "ring_signature"]


def ring_signature(addr_bits: int, data_width: int = 8) -> wiring.Signature:
    """The ports of a ring memory component, as seen by the memory.

    ``data_width`` is the engine's stream width: a word of the ring is one
    beat, so a beat goes into the ring in one cycle.
    """
    return wiring.Signature({
        "w_addr": In(addr_bits), "w_data": In(data_width), "w_en": In(1),
        "r_addr": In(addr_bits), "r_data": Out(data_width), "r_en": In(1),
    })


class RingMemory(wiring.Component):
    """``depth`` bytes in one ``lib.memory.Memory`` (block RAM), in words of
    ``data_width`` bits (``depth * 8 / data_width`` of them).

    A cycle writes (``w_en``) or reads (``r_en``); a write wins and the read
    is not performed, so ``r_data`` keeps its value, as it does whenever
    ``r_en`` is low. That is the behaviour of a single-port RAM, so a
    single-port implementation (SPRAM) can replace this one.
    """

    def __init__(self, depth: int, data_width: int = 8):
        if data_width not in (8, 16, 32):
            raise ValueError(f"data_width must be 8, 16 or 32, not {data_width!r}")
        if (not isinstance(depth, int) or depth < 2 * data_width // 8
                or depth & (depth - 1)):
            raise ValueError(f"depth must be a power of two >= {2 * data_width // 8}, "
                             f"not {depth!r}")
        self.depth = depth
        self.data_width = data_width
        self.words = depth * 8 // data_width
        super().__init__(ring_signature(self.words.bit_length() - 1, data_width))

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = Memory(shape=self.data_width, depth=self.words, init=[])
        wr = mem.write_port()
        rd = mem.read_port(transparent_for=())
        m.d.comb += [
            wr.addr.eq(self.w_addr), wr.data.eq(self.w_data), wr.en.eq(self.w_en),
            rd.addr.eq(self.r_addr), rd.en.eq(self.r_en & ~self.w_en),
            self.r_data.eq(rd.data),
        ]
        return m
