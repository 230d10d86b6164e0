"""Answer side of the journal engine: serializes one frame at a time.

The engine core hands the responder a frame description (TYPE, FLAGS,
LENGTH and where the body comes from) with a one-cycle ``start``; the
responder emits header, body and trailer on a byte stream and computes HCRC
and BCRC on the fly (one CRC unit), so no answer is ever buffered. Nothing
is latched either (but the next body beat of a view, read one beat ahead,
the header beat shown, read from the description a beat ahead, and a
read-out's ring word address, loaded from ``base`` at the start):
the engine holds the description, its ``Ack`` (which also carries a
HEARTBEAT token) and the status views still until ``busy`` falls. Three
SEQ fields are sums the responder adds a byte at a time as it sends them
(TAIL_SEQ, HELLO LAST_SEQ, a JNLRD's ACK SEQ), so the engine needs no
64-bit adder or register for them. For journal read-out
(``Source.RING``) the body is read from ring memory two beats ahead of
the stream through a register (the read port is enabled only when a beat
is taken, so backpressure holds the data) and the control data's CCRC is
recomputed on the way out (docs/protocol.md, "CCRC").
"""

from amaranth.lib import enum

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..host.wire import protocol
from . import layouts
from .compare import lt_const
from .crc import CRC_INIT, crc32c_const_state, crc32c_step
from .lanes import crc32c_lanes, lane_mask, word_address
from .switch import Switch

__all__ = ["Source", "Responder", "LENGTH_BITS", "words_at_take"]

_WORDS_AT_TAKE = Switch("tricopy_words_at_take")


def words_at_take():
    """Within this block the responder's word multiplexer is written into
    ``word_q`` at a take, as a case on the source and then one on the word
    index that lists every index: the same word at every take. Verilator
    then evaluates it only in the cycles a beat is taken, where the flat
    case on (source, index) was a chain of comparisons evaluated every
    cycle, and reads the Ack's words in place, where it assembled the
    256-bit Ack view (``ans`` with STATUS and REQ_TYPE patched in) every
    cycle for it (the sim build, ``sim/build.py``; docs/sim.md,
    "2026-12-07 (5)"). The boards keep the flat case: it is what their LUT
    counts were made with."""
    return _WORDS_AT_TAKE.on()

#: Bits of a frame LENGTH the engine handles: MAX_BODY = 64 + 4 MiB < 2**23.
LENGTH_BITS = protocol.MAX_BODY.bit_length()


class Source(enum.Enum, shape=3):
    """Where the body of an answer frame comes from."""
    ACK = 0       # the engine's staged Ack (held still while it is sent)
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
    """Frame serializer for the engine's answers, a beat of ``data_width``
    bits per cycle.

    At a width above 8 every frame starts on a beat boundary and the lanes
    of its last beat after its end are zero (docs/protocol.md, "Wide
    links"); a read-out body that ends inside a beat has the first BCRC
    bytes in that beat's upper lanes.

    Parameters
    ----------
    ring_bits : int
        log2 of the ring size in bytes; width of ``base``.
    data_width : int
        8 or 32; ``rd_addr`` is a ring word address (``ring_bits`` minus
        log2 of the bytes per beat).
    """

    def __init__(self, ring_bits: int, data_width: int = 8, *, held_bits: int = 32,
                 ring: bool = True):
        if not isinstance(ring_bits, int) or ring_bits < 7:
            raise ValueError(f"ring_bits must be an integer >= 7, not {ring_bits!r}")
        if data_width not in (8, 32):
            raise ValueError(f"data_width must be 8 or 32, not {data_width!r}")
        self.ring_bits = ring_bits
        self.data_width = data_width
        self.held_bits = held_bits
        self.has_ring = ring
        self.W = W = data_width // 8
        self.LW = LW = W.bit_length() - 1
        super().__init__({
            "tx": Out(stream.Signature(data_width)),
            "start": In(1),
            "ftype": In(8),
            "flags": In(16),
            "length": In(LENGTH_BITS),
            "source": In(Source),
            "base": In(ring_bits),
            "ack": In(layouts.Ack),   # read while busy: the engine holds it
            "status": In(layouts.EngineStatus),
            # for a STATUS or HELLO answer the engine stages NEXT_SEQ, NOW,
            # JIPTR and ACKS as the Ack's SEQ, TIME, JOFS and TAG, and those
            # words are sent from ``ack``; HELLO EPOCH from ``status`` (STATUS TAIL_SEQ = NEXT_SEQ - HELD, HELLO
            # LAST_SEQ = NEXT_SEQ - 1, added as they are sent)
            "hello": In(layouts.Hello),
            "held": In(held_bits),    # HELD, for TAIL_SEQ = NEXT_SEQ - HELD
            "echo": In(64),           # unused: a HEARTBEAT token is sent from ``ack``
            # added to the Ack's SEQ as it is sent (JNLRD: n - 1), held while busy
            "ack_add": In(signed(ring_bits + 1)),
            "busy": Out(1),
            # ring read port, owned by the responder while busy
            "rd_addr": Out(ring_bits - LW),
            "rd_en": Out(1),
            "rd_data": In(data_width),
        })

    def elaborate(self, platform):
        m = Module()
        W, LW = self.W, self.LW

        phase = Signal(_Phase)
        # Without ring read-out every answer body comes from registers and is
        # at most 80 bytes (STATUS, HELLO), so the byte index and LENGTH are
        # 7 bits there, not the 23 of a read-out (a counter, an adder and a
        # comparator 16 bits narrower on the UP5K).
        LB = LENGTH_BITS if self.has_ring else 7
        idx = Signal(LB)                       # byte index in the part being sent
        # The frame description is read while busy, not latched: the engine
        # holds it still until ``busy`` falls (one copy of it, not two).
        head = Cat(Const(protocol.MAGIC, 32), Const(protocol.VERSION, 8),
                   self.ftype, self.flags, self.length, Const(0, 32 - LENGTH_BITS))
        length, source, base = self.length[:LB], self.source, self.base
        # One CRC unit: HCRC over the header, then BCRC over the body. The
        # CCRC of a read-out is the CRC of body bytes 0..59, i.e. the BCRC
        # after byte 59: a latch, not a second unit.
        crc = Signal(32, init=CRC_INIT)
        ccrc = Signal(32)

        # ``busy`` stays a decode of the phase: as a flip-flop of its own it
        # bought nothing at width 32 (within nextpnr's seed noise) and cost
        # the width-8 engine about 6 MHz (docs/hardware.md, "Timing
        # closure, sixth step")
        busy = phase != _Phase.IDLE
        m.d.comb += self.busy.eq(busy)

        # What the phase logic asks of ``idx`` is answered a beat ahead, in
        # registers loaded at each take from the index being left (an
        # equality or a bound on ``idx`` against a constant moved down by
        # W): the CRC's update, the phase change and the word multiplexer's
        # index read flip-flops, not compare chains on ``idx``. (On the UP5K
        # ``idx`` -> its comparisons -> the header byte -> the CRC -> ``crc``
        # was the critical path, about 13 LUT levels.)
        #   ``hd_crc``:  a header beat under the HCRC is shown (HEAD, idx < 12)
        #   ``hd_last``: the header's last beat is shown (HEAD, idx = 16 - W)
        #   ``tr_last``: the trailer's last beat is shown (TRAILER, idx = 3;
        #                at width 32 the trailer is one beat, so always)
        #   ``hbeat``:   the header beat at ``idx`` (while ``hd_crc``), so the
        #                CRC reads a register, not a 16-way byte multiplexer
        hd_crc = Signal()
        hd_last = Signal()
        in_head = phase == _Phase.HEAD
        hd_last_d = in_head & (idx == 16 - 2 * W)     # ``hd_last`` at the next take
        tr_last = Signal(name="tr_last") if W == 1 else Const(1)
        hbeat = Signal(8 * W)

        with m.If(self.start & ~busy):
            m.d.sync += [
                phase.eq(_Phase.HEAD),
                idx.eq(0),
                crc.eq(CRC_INIT),
                # beat 0 is MAGIC's first (a constant): the description
                # need not be valid yet in this cycle
                hd_crc.eq(1), hd_last.eq(0), hbeat.eq(head.word_select(0, 8 * W)),
            ]

        take = self.tx.valid & self.tx.ready
        # The beat at the current position; at width 8, a byte.
        beat = Signal(8 * W)
        # ``body`` is the body bytes of the beat; ``beat`` adds, in a
        # read-out's last beat, the BCRC bytes after them (wide links).
        body = Signal(8 * W)
        idx_next = Signal(LB)
        m.d.comb += idx_next.eq(idx + W)
        # ``body_last``: the body beat shown is the last. A register set a
        # beat ahead (at the header's last take for body beat 0), so the
        # choice of CRC matrices below does not wait for a 23-bit adder and
        # comparator on ``idx``.
        body_last = Signal()
        idx_next2 = idx + 2 * W
        if W == 1:
            # one CRC network for header and body, fed from registers
            # (``hbeat``, and ``word_byte`` or the ring's ``ring_beat``; a
            # read-out's CCRC bytes are chosen by ``ccrc_pos``, a register)
            crc_next = crc32c_step(crc, Mux(phase == _Phase.BODY, body, hbeat), 1)
            head_crc = body_crc = crc_next
            first_last, next_last = length == 1, idx_next2 == length
        else:
            # the body's last beat holds KL (1..W) bytes
            lend = Signal(LB)
            kl = Signal(LW + 1)
            m.d.comb += [lend.eq(length + (W - 1)), kl.eq((length[:LW] - 1)[:LW] + 1)]
            first_last, next_last = lend[LW:] == 1, idx_next2[LW:] == lend[LW:]
            # from the header word, not from ``beat``: at W > 1 a read-out's
            # last body beat carries BCRC bytes, so the CRC of ``beat`` would
            # put two CRC networks in a row (the phases exclude it, but
            # synthesis times the path through the shared multiplexer)
            head_crc = crc32c_step(crc, hbeat, W)
            body_crc = Signal(32)
            if self.has_ring:
                # (width 32 with read-out) the CRC reads the body beat as
                # ``b_ring`` chooses, a register (below), not the body
                # multiplexer decoded from the phase and the source
                body_c = Signal(8 * W, name="body_c")
                m.d.comb += body_crc.eq(crc32c_lanes(crc, body_c, Mux(body_last, kl, W), W))
            else:
                m.d.comb += body_crc.eq(crc32c_lanes(crc, body, Mux(body_last, kl, W), W))
        # ``ccrc_pos``: the body beat shown holds CCRC bytes (a read-out's
        # body bytes 60..63); ``ccrc_at``: the BCRC after the beat shown is
        # the CCRC (idx = 60 - W). Registers loaded at each take from the
        # index being left, as ``hd_crc``: the comparisons on the 23-bit
        # index were the head of the width-32 critical path (idx -> the
        # CCRC choice of the body bytes -> the BCRC -> ``crc``).
        if self.has_ring:
            ccrc_pos = Signal()
            ccrc_at = Signal()
            in_body = phase == _Phase.BODY
            with m.If(take):
                m.d.sync += [
                    ccrc_pos.eq(in_body & (source == Source.RING)
                                & ~lt_const(idx, 60 - W) & lt_const(idx, 64 - W)),
                    ccrc_at.eq(in_body & (idx == 60 - 2 * W)),
                ]
        else:                                  # an engine without data memory: no read-out
            ccrc_pos = Const(0)
            ccrc_at = Const(0)
        # Answers from registers (ACK, STATUS, HELLO, ECHO) are read as one
        # 32-bit word mux on (source, idx[2:7]) and then (width 8) one 4-way
        # byte mux:
        # most words are narrow or constant, so this is far smaller than a
        # byte mux over each 80-byte view (Yosys does not find it itself).
        # The muxes read one beat ahead (the body beat after the one shown,
        # or body beat 0 during the header) into ``word_byte``, a register:
        # the views hold still while busy, so the beat is the same then as
        # now, and the mux (with the SEQ sums, below) is no longer in front
        # of the BCRC (the width-32 critical path ran through all three).
        # The word is chosen a beat earlier still, into ``word_q`` (a
        # register; its flip-flops pack with the multiplexer's last LUTs):
        # at each take it is loaded with the word of the beat two ahead
        # (body beat 0 during the header, beat 1 at the header's last take),
        # so that at the next take it holds the word of the beat one ahead,
        # which the byte multiplexer and the SEQ sums read. (The word
        # multiplexer after ``idx + W`` and before the sums' carry was the
        # UP5K's critical path once the engine's decisions were registers.)
        # The mux's words are 32 bits (halves of the views' 64-bit fields),
        # so that halves can be shared (HELLO EPOCH is STATUS EPOCH) and
        # ``word_q`` is 32 flip-flops, not 64; at width 32 a word is a beat.
        word = Signal(32)
        word_q = Signal(32)
        ring_beat = Signal(8 * W)               # the read-out's body beat shown (below)
        # ``pidx``: the body index of the beat after the one shown (0 in the
        # header); ``pidx2``: of the beat after that (0 in the header but W
        # at its last beat). Only their low 7 bits are read (the views are
        # at most 80 bytes, the word index is bits 3..6).
        if W > 1 or self.has_ring:
            # Registers a beat ahead, not ``idx + W`` and ``idx + 2W`` (two
            # adders on the 23-bit index in front of the word multiplexer
            # and the sums' lane, and through them of ``word_q`` and
            # ``word_byte``): at each take ``pidx`` moves up to ``pidx2``
            # and ``pidx2`` steps by W (in the body and from the header's
            # last beat) or is W at the take into the header's last beat.
            # Their values in the trailer are not read: the header's takes
            # load ``word_q`` and ``word_byte`` again before the body.
            pidx = Signal(7)
            pidx2 = Signal(7)
            with m.If(self.start & ~busy):
                m.d.sync += [pidx.eq(0), pidx2.eq(0)]
            with m.If(take):
                m.d.sync += [
                    pidx.eq(pidx2),
                    pidx2.eq(Mux((phase == _Phase.BODY) | hd_last, pidx2 + W,
                                 Mux(hd_last_d, W, 0))),
                ]
        else:
            # At width 8 without read-out (the UP5K top) ``pidx`` stays a sum
            # on ``idx``: as registers both cost that top about 30 LUTs
            # ("UP5K timing, fifth step"). The width-8 engine with data
            # memory has them: as sums they were its critical path (``idx``
            # -> ``idx + W`` -> the SEQ sum -> ``word_byte``, docs/hardware.md
            # "Timing closure, seventh step"). Of ``pidx2`` the multiplexer
            # reads only the word index, bits 2..6: that is a register here,
            # ``widx`` (5 flip-flops), loaded at each take with the word of
            # ``idx + 3`` in the body (the next ``idx + 2W``), else 0 (the
            # header's ``pidx2`` is 0 or W: word 0). ``idx + 2W`` and its
            # decode in front of the multiplexer and ``word_q`` was the
            # UP5K's critical path (docs/hardware.md "UP5K timing, eighth step").
            pidx = Mux(phase == _Phase.BODY, idx_next, 0)[:7]
            widx = Signal(5)
            with m.If(self.start & ~busy):
                m.d.sync += widx.eq(0)
            with m.If(take):
                m.d.sync += widx.eq(Mux(phase == _Phase.BODY, (idx + 3)[2:7], 0))
            pidx2 = Cat(Const(0, 2), widx)
        # (ECHO: the engine stages the HEARTBEAT token as the Ack's SEQ)
        views = {(Source.ACK, Source.ECHO): self.ack.as_value(),
                 (Source.STATUS,): self.status.as_value(), (Source.HELLO,): self.hello.as_value()}
        # Words of STATUS and HELLO the engine stages in the Ack for their
        # answers too (its SEQ, TIME, JOFS, TAG: NEXT_SEQ, NOW, JIPTR, ACKS)
        # are read from the Ack's words: one input of the mux for each, not
        # two or four (a mux costs about a LUT per input bit on the iCE40).
        # STATUS TAIL_SEQ (bytes 40..47) and HELLO LAST_SEQ (bytes 8..15)
        # carry NEXT_SEQ (the sums are made below). The status and hello ports'
        # fields in these words are not read; nor is HELLO's EPOCH, read
        # from STATUS's (the engine's one EPOCH register drives both).
        # In 64-bit fields, (view, field) -> (view, field) it is read from:
        alias64 = {(Source.STATUS, 0): (Source.ACK, 2),     # JIPTR: JOFS
                   (Source.STATUS, 4): (Source.ACK, 0),     # NEXT_SEQ: SEQ
                   (Source.STATUS, 5): (Source.ACK, 0),     # TAIL_SEQ: NEXT_SEQ - HELD
                   (Source.STATUS, 6): (Source.ACK, 1),     # NOW: TIME
                   (Source.HELLO, 1): (Source.ACK, 0)}      # LAST_SEQ: NEXT_SEQ - 1
        alias = {(s, 2 * w + k): (s2, 2 * w2 + k)
                 for (s, w), (s2, w2) in alias64.items() for k in (0, 1)}
        alias[(Source.HELLO, 1)] = (Source.STATUS, 16)      # EPOCH (bytes 4..7; 64..67)
        alias[(Source.STATUS, 14)] = (Source.ACK, 6)        # ACKS: TAG (staged, as above)
        cases = {}                                 # (source, word) read -> its case values
        for srcs, view in views.items():
            for w in range((len(view) + 31) // 32):
                key = alias.get((srcs[0], w), (srcs[0], w))
                cases.setdefault(key, []).extend(w | (src.value << 5) for src in srcs)
        def view_word(src, w):
            view = views[next(k for k in views if src in k)]
            return view[32 * w:32 * (w + 1)]

        if _WORDS_AT_TAKE:
            # (source, index) -> the word it reads, 0 where the flat case
            # below has no arm
            read = {(value >> 5, value & 31): key for key, values in cases.items()
                    for value in values}
            with m.If(take):
                with m.Switch(source):
                    for src in Source:
                        with m.Case(src):
                            with m.Switch(pidx2[2:7]):
                                for w in range(32):
                                    with m.Case(w):
                                        key = read.get((src.value, w))
                                        m.d.sync += word_q.eq(view_word(*key) if key else 0)
                    with m.Default():
                        m.d.sync += word_q.eq(0)
        else:
            src_w = source
            if W == 1 and not self.has_ring:
                # At width 8 without read-out (the UP5K top) the source as
                # the multiplexer reads it is a copy a cycle behind, inside
                # the responder: the engine's ``ans_src`` -> the case on
                # (source, index) -> ``word_q`` was the UP5K's critical path
                # ("UP5K timing, tenth step"), its first LUT shared with the
                # engine's HCHECK. The engine holds the source still while
                # busy; a header take in the cycle after ``start`` may load
                # ``word_q`` from the source before, but every header take
                # loads it again, and the body's first word is loaded at the
                # header's last take.
                src_q = Signal(Source, name="src_q")
                m.d.sync += src_q.eq(source)
                src_w = src_q
            with m.Switch(Cat(pidx2[2:7], src_w)):
                for (src, w), values in cases.items():
                    with m.Case(*values):
                        m.d.comb += word.eq(view_word(src, w))
        # Three SEQ words are sums, added here a beat at a time with a carry
        # flip-flop (no 64-bit adders or registers for them): HELLO LAST_SEQ
        # (bytes 8..15) = NEXT_SEQ - 1, STATUS TAIL_SEQ (bytes 40..47) =
        # NEXT_SEQ - HELD (x + ~HELD + 1), the Ack's SEQ (bytes 0..7) = its
        # SEQ + ``ack_add``. The engine passes NEXT_SEQ / the base SEQ. The
        # sum is made with the word mux, a beat ahead, so ``word_byte``
        # holds the beat as sent: the adder's carry chain is not in front
        # of the BCRC (it was the width-32 critical path once the ring
        # read-out was registered). HELD and ``ack_add`` hold still from
        # the answer's start, so reading them a beat early is the same.
        n_lane = pidx[LW:3]                     # the next beat within its 64-bit word
        n_hello = (source == Source.HELLO) & (pidx[3:7] == 1)
        n_tail = (source == Source.STATUS) & (pidx[3:7] == 5)
        # (``ack_add`` is a JNLRD's: without read-out the Ack's SEQ is sent as is)
        n_ack = ((source == Source.ACK) & (pidx[3:7] == 0)) if self.has_ring else Const(0)
        n_sum = n_hello | n_tail | n_ack
        add_byte = Signal(8 * W)
        with m.If(n_hello):
            m.d.comb += add_byte.eq((1 << 8 * W) - 1)
        with m.Elif(n_tail):
            m.d.comb += add_byte.eq(~Cat(self.held, Const(0, 64 - self.held_bits)).word_select(n_lane, 8 * W))
        if self.has_ring:
            with m.Elif(n_ack):
                sext = Cat(self.ack_add, self.ack_add[-1].replicate(64 - len(self.ack_add)))
                m.d.comb += add_byte.eq(sext.word_select(n_lane, 8 * W))
        cur_sum = Signal()                      # the beat shown is part of a sum
        carry = Signal()                        # its carry out
        # the carry into the next beat: the shown beat's, within a sum (the
        # three are never adjacent); else 1 for TAIL_SEQ (x + ~HELD + 1)
        cin = Mux(cur_sum & (phase == _Phase.BODY), carry, source == Source.STATUS)
        if not _WORDS_AT_TAKE:
            with m.If(take):
                m.d.sync += word_q.eq(word)
        word_next = word_q.word_select(pidx[:2], 8) if W == 1 else word_q
        total = Signal(8 * W + 1)
        m.d.comb += total.eq(word_next + add_byte + cin)
        word_byte = Signal(8 * W)
        with m.If(take):
            m.d.sync += [word_byte.eq(Mux(n_sum, total[:8 * W], word_next)),
                         cur_sum.eq(n_sum), carry.eq(total[8 * W])]
        # (width 32 with read-out) The body's CRC reads the beat shown from
        # two registers, the ring's ``ring_beat`` and ``word_byte``, chosen
        # by ``b_ring`` (the source is RING), a flip-flop loaded every
        # cycle: the engine holds the source still while busy, and the
        # body comes after the header's four beats. The choice folds into
        # the network's first LUTs; the decode of the phase and the source
        # in front of the network (the source -> the body multiplexer ->
        # ``crc`` was the width-32 critical path after the thirteenth step,
        # docs/hardware.md "Timing closure, fourteenth step") is gone. The
        # CCRC beat of a read-out (``ccrc_pos``) is not read: it is the
        # register itself, final-xored, and over four bytes the state's and
        # the data's matrices of the step are the same, so the CRC after it
        # is the constant ``M·CRC_INIT`` (``ccrc_res``), whatever came before.
        wide_body = W > 1 and self.has_ring
        if wide_body:
            b_ring = Signal(name="b_ring")
            m.d.sync += b_ring.eq(source == Source.RING)
            m.d.comb += body_c.eq(Mux(b_ring, ring_beat, word_byte))
            ccrc_res = Const(crc32c_const_state(CRC_INIT, W), 32)

        def crc_out(reg):
            """The finished CRC in ``reg``, as sent: whole at width 32, a byte
            (idx[:2]) at width 8."""
            return (reg ^ CRC_INIT) if W == 4 else (reg ^ CRC_INIT).word_select(idx[:2], 8)

        with m.Switch(phase):
            with m.Case(_Phase.HEAD):
                m.d.comb += beat.eq(Mux(hd_crc, hbeat, crc_out(crc)))
            with m.Case(_Phase.BODY):
                with m.If(Const(int(self.has_ring)) & (source == Source.RING)):
                    m.d.comb += body.eq(Mux(ccrc_pos, crc_out(ccrc), ring_beat))
                with m.Else():
                    m.d.comb += body.eq(word_byte)
                if W == 1:
                    m.d.comb += beat.eq(body)
                else:
                    # a last beat of KL < W body bytes carries the first
                    # BCRC bytes above them (and the trailer beat the rest)
                    bcrc_up = ((body_crc ^ CRC_INIT) << Cat(Const(0, 3), kl))[:8 * W]
                    m.d.comb += beat.eq(Mux(body_last, (body & lane_mask(kl, W)) | bcrc_up,
                                            body))
            with m.Case(_Phase.TRAILER):
                if W == 1:
                    m.d.comb += beat.eq(crc_out(crc))
                else:
                    # the BCRC bytes not sent in the body's last beat, then zeros
                    m.d.comb += beat.eq((crc ^ CRC_INIT) >> Cat(Const(0, 3), W - kl))

        m.d.comb += [
            self.tx.valid.eq(busy),
            self.tx.payload.eq(beat),
        ]

        # Ring prefetch, two beats deep: ``ring_beat`` (a register) holds the
        # body beat shown and the memory's read data the one after it. The
        # CRC then starts from a flip-flop, not from the block RAM's output
        # (its clock-to-output was a quarter of the width-32 critical path:
        # RAM -> body mux -> BCRC of the beat -> CRC register). Both stages
        # move only when a beat is taken, so backpressure holds them; the
        # header (at least two beats) fills them: its takes read word 0,
        # its last take moves word 0 into ``ring_beat`` and reads word 1.
        # No cycle is added to an answer.
        #
        # The word read at a take is ``base`` plus 0 in the header, W at its
        # last beat and ``idx + 2W`` in the body: ``raddr`` holds that word
        # address as a register, loaded with ``base``'s at the start (the
        # engine stages a read-out's ``base`` the cycle before it starts
        # the answer) and stepped by one word at each take that moves the
        # read ahead (into the header's last beat, and from there on), so
        # the ring's read address is a flip-flop, not ``idx + 2W`` and
        # ``base + ahead`` (two carry chains; the width-32 critical path
        # once the decision had its own cycle). Past the body's end it
        # reads on, unused, as the trailer's takes did before.
        if self.has_ring:
            raddr = Signal(self.ring_bits - LW)
            with m.If(self.start & ~busy):
                m.d.sync += raddr.eq(word_address(base, W))
            with m.If(take):
                m.d.sync += ring_beat.eq(self.rd_data)
                with m.If((phase == _Phase.BODY) | hd_last | hd_last_d):
                    m.d.sync += raddr.eq(raddr + 1)
            m.d.comb += [
                self.rd_addr.eq(raddr),
                self.rd_en.eq(take),
            ]

        with m.If(take):
            m.d.sync += idx.eq(idx_next)
            # the flags of the beat after this one (see above): 0 but in
            # HEAD and TRAILER; the header's next word is read here, a beat
            # before it is shown and CRC'd
            m.d.sync += [
                hd_crc.eq(in_head & lt_const(idx, 12 - W)),
                hd_last.eq(hd_last_d),
                hbeat.eq(head.word_select(idx_next[LW:4], 8 * W)),
            ]
            if W == 1:
                m.d.sync += tr_last.eq((phase == _Phase.TRAILER) & (idx == 2))
            with m.Switch(phase):
                with m.Case(_Phase.HEAD):
                    with m.If(hd_crc):
                        m.d.sync += crc.eq(head_crc)
                    with m.If(hd_last):
                        m.d.sync += [idx.eq(0), crc.eq(CRC_INIT), body_last.eq(first_last)]
                        m.d.sync += phase.eq(Mux(length == 0, _Phase.IDLE, _Phase.BODY))
                with m.Case(_Phase.BODY):
                    m.d.sync += [crc.eq(Mux(ccrc_pos, ccrc_res, body_crc) if wide_body
                                        else body_crc),
                                 body_last.eq(next_last)]
                    with m.If(ccrc_at):
                        m.d.sync += ccrc.eq(body_crc)
                    with m.If(body_last):
                        m.d.sync += [idx.eq(0), phase.eq(_Phase.TRAILER)]
                with m.Case(_Phase.TRAILER):
                    with m.If(tr_last):
                        m.d.sync += phase.eq(_Phase.IDLE)
        return m
