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


def ring_signature(addr_bits: int) -> wiring.Signature:
    """The ports of a ring memory component, as seen by the memory."""
    return wiring.Signature({
        "w_addr": In(addr_bits), "w_data": In(8), "w_en": In(1),
        "r_addr": In(addr_bits), "r_data": Out(8), "r_en": In(1),
    })


class RingMemory(wiring.Component):
    """``depth`` bytes in one ``lib.memory.Memory`` (block RAM).

    A cycle writes (``w_en``) or reads (``r_en``); a write wins and the read
    is not performed, so ``r_data`` keeps its value, as it does whenever
    ``r_en`` is low. That is the behaviour of a single-port RAM, so a
    single-port implementation (SPRAM) can replace this one.
    """

    def __init__(self, depth: int):
        if not isinstance(depth, int) or depth < 2 or depth & (depth - 1):
            raise ValueError(f"depth must be a power of two >= 2, not {depth!r}")
        self.depth = depth
        super().__init__(ring_signature(depth.bit_length() - 1))

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = Memory(shape=8, depth=self.depth, init=[])
        wr = mem.write_port()
        rd = mem.read_port(transparent_for=())
        m.d.comb += [
            wr.addr.eq(self.w_addr), wr.data.eq(self.w_data), wr.en.eq(self.w_en),
            rd.addr.eq(self.r_addr), rd.en.eq(self.r_en & ~self.w_en),
            self.r_data.eq(rd.data),
        ]
        return m
