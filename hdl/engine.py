"""The relay's journal engine in gateware (docs/protocol.md, "The journal engine").

Block diagram (docs/hardware.md has the long form)::

    rx bytes ─▶ header window/HCRC ─▶ body: BCRC, DCRC, control capture ─▶ VERDICT, EXEC
                    │  hunt on bad                 │ speculative write        │
                    ▼                              ▼                          ▼
                 (NAK)                      ring memory ◀──── read-out walk ─┤
                                                   │                          │
    tx bytes ◀──────────────────────── Responder ◀─┴──── answers (ACK/NAK/...)┘

Ingress is one beat per clock: a byte at ``data_width`` 8 (UART, the sim
harness), four bytes at 32 (a wide link, docs/protocol.md "Wide links":
every frame from a beat boundary, the ring in 32-bit words). A JNLWR's ring
placement is decided from the header LENGTH before the first body byte, so
control data (already stamped
with SEQ#, TIME, JOFS and its CCRC) and journal data go straight into the
ring as they arrive; JIPTR moves only when every check has passed, so a NAK
leaves nothing behind but bytes in free space. The ring memory is a
component passed as ``ring`` (``hdl/ring.py``): one write and one read port
that are never needed in the same cycle (ingress stalls during read-out),
so it can be single-port RAM: block RAM by default, SPRAM on the iCE40
UP5K (``boards/spram.py``). A JNLDESC batch (``desc_batch``) is buffered
in a small block RAM of its own as it arrives and its descriptors are taken
one by one after its BCRC (docs/hardware.md, "JNLDESC batches in the
gateware").
"""

from amaranth.lib import enum

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..host.wire import protocol
from . import layouts
from .compare import ge_const, le_wide, lt_const
from .crc import CRC_INIT, crc32c_data_term, crc32c_state_term, crc32c_step
from .lanes import crc32c_pad_lanes, lane_mask, word_address
from .responder import LENGTH_BITS, Responder, Source
from .ring import RingMemory, ring_signature
from .switch import Switch

__all__ = ["JournalEngine", "status_on_demand", "lazy_checks", "window_in_states"]

_STATUS_ON_DEMAND = Switch("tricopy_status_on_demand")
_LAZY_CHECKS = Switch("tricopy_lazy_checks")
_WINDOW_IN_STATES = Switch("tricopy_window_in_states")


def lazy_checks():
    """Within this block the engine's registered checks (``checks`` in
    ``elaborate``) load only outside HEADER and BODY (none is read there or
    in the cycle after): Verilator then skips their logic in most cycles
    (the sim build, ``sim/build.py``). The boards keep them loading every cycle:
    on the iCEBreaker the enable cost 34 LCs (4 971 of 5 280) and a
    329-fanout clock enable on a global buffer (29.4 MHz against 31.2 at
    one seed), for no gain there
    (docs/sim.md, "2026-12-07 (3)"). ``tests/hdl/test_formal.py`` proves
    the engine's contract with it on as well."""
    return _LAZY_CHECKS.on()


def window_in_states():
    """Within this block the window ``small`` and a LOAD's SIZE word in
    ``stamp_time`` shift in the FSM's states, each on its state's own
    condition (a beat taken in HEADER and HUNT; in BODY a body byte below
    64, to ``stamp_time`` if it is a LOAD's SIZE word; ALIGN while BCNT <
    32), and HCHECK's ``h_len`` and ``h_pass`` compare LENGTH with each
    bound where the checks load, as before the UP5K's registers set a beat
    ahead (``to_small``, ``to_stamp``, ``aligning``, ``len_le``). The sim
    build (``sim/build.py``) then reads none of those, and Verilator drops
    them and their loads in a dozen FSM arms (1,134 to 1,067 instructions
    a cycle, docs/sim.md "2026-12-07 (6)"). The two forms load the same
    values in the same cycles: the formal spec states the registers equal
    to these conditions in every state that takes a beat ("INV: the
    ingress shift enables", "INV: ingress ready"), and with this switch
    that the window moves as they say ("INV: the sim build's window shifts
    as the enables"). The boards keep the registers: as functions of the
    state and the window these were the UP5K's critical paths
    (docs/hardware.md "UP5K timing, eighth step")."""
    return _WINDOW_IN_STATES.on()


def status_on_demand():
    """Within this block the engine assembles its 640-bit STATUS view only
    while a STATUS answer is staged (``ans_src``), else it is 0 but for
    NEXT_SEQ (a HELLO's LAST_SEQ is read from it). The responder reads the
    rest only while it sends a STATUS answer (its word multiplexer selects
    on the source, which is ``ans_src``), so nothing it sends changes;
    Verilator then skips the assembly on other cycles (the sim build,
    ``sim/build.py``). The boards and the proofs keep the plain wires: the
    gate would put an AND in front of every bit of the word multiplexer."""
    return _STATUS_ON_DEMAND.on()

FT = protocol.FrameType
ST = protocol.Status
_KNOWN_TYPES = [int(t) for t in FT]
_LOAD_FLAGS = int(protocol.Load.FLAGS)
_CTL = layouts.byte_offsets(layouts.Control)
#: log2 of MAX_RING (2**40): ring offsets are 40 bits, SIZE/USED/WRAP_AT 41.
#: The engine keeps them in granules of 64 bytes (every offset, SIZE and R is
#: a multiple of 64): 34-bit offsets, 35-bit sizes.
MAX_RING_BITS = 40
G = 6                                          # log2 of the 64-byte granule
#: Cycles the record walk waits after reading a DATA_LEN, for the registers
#: that decide the next record's offset to follow it (see ``walk_r``)
_WALK_SETTLE = 2


class _After(enum.Enum, shape=2):
    """Where ingress goes once an answer has been handed to the responder."""
    HEADER = 0
    HUNT = 1
    SKIP = 2


class _Port:
    """addr/data/en of one ring port, named as a ``Memory`` port's."""

    def __init__(self, addr, data, en):
        self.addr, self.data, self.en = addr, data, en


class _AckFrom(enum.Enum, shape=3):
    """Where the SEQ/TIME/JOFS of a staged ACK/NAK come from. The Ack is
    built from it once, in ANSWER, when the request has taken effect: one
    multiplexer per field instead of one per place that answers."""
    ZERO = 0      # NAK: SEQ = TIME = JOFS = 0
    NAK_X = 1     # NAK NOT_FOUND: SEQ = the request's FROM_SEQ/UPTO
    RELEASE = 2   # SEQ = UPTO, JOFS = JOPTR (after the release)
    WRITE = 3     # JNLWR: SEQ = NEXT_SEQ (stepped after), TIME = the stamp, JOFS = the record
    READ = 4      # JNLRD: SEQ = last sent, JOFS = JOPTR, TAG = records sent
    LOAD = 5      # SEQ = NEXT_SEQ, TIME = CLOCK, JOFS = JIPTR (after the load)
    # A STATUS_RESP or HELLO: not sent as an Ack, but the responder sends
    # their NEXT_SEQ (and HELLO LAST_SEQ, STATUS TAIL_SEQ), STATUS NOW,
    # STATUS JIPTR and STATUS ACKS from the Ack's SEQ, TIME, JOFS (the
    # LOAD's sources) and TAG: one input of its word multiplexer for each,
    # not two (area, UP5K)
    VIEW = 6


class _V:
    """Bits of the one-hot VERDICT register: what EXEC does, decided in
    VERDICT the cycle before (no bit set: only the staged answer), and
    cleared in EXEC (every bit is 0 in every other state)."""
    TAKE_WR = 0     # a data ring's JNLWR is taken: its record is committed
    TAKE_DESC = 1   # a JNLDESC (a batch's descriptor) is taken
    FULL = 2        # a journal NAKed FULL: the FULL output is raised
    READ = 3        # a JNLRD starts its walk (READ_SEEK)
    RELEASE_D = 4   # a descriptor ring's RELEASE goes on to RELEASE_D
    WALK = 5        # a data ring's RELEASE walks its records
    LOAD = 6        # a LOAD goes on to LOAD_SET
    BITS = 7


class JournalEngine(wiring.Component):
    """Journal engine: frames in on ``rx``, answers out on ``tx`` (bytes).

    Parameters
    ----------
    data_width : int
        Stream width in bits: 8 (a byte link) or 32 (a wide link, frames
        from beat boundaries; the ring is then built with
        ``ring(ring_size, 32)`` and has words of 4 bytes).
    ring_size : int
        Ring bytes, a power of two >= 128 (docs/protocol.md "State").
    clk_hz : int
        Clock frequency, for the nanosecond timestamp unit.
    site : str
        SITE answered in HELLO: "sim" or "board".
    timestamp, sequencer : optional factories
        Replace the Timestamp/Sequencer blocks (tests only).
    ring : optional factory
        ``ring(ring_size)`` returns the ring memory, a component with the
        ports of ``hdl/ring.py: ring_signature`` (default ``RingMemory``,
        block RAM; ``boards/spram.py: SPRAMRing`` on the iCE40 UP5K).
    memory : optional int
        MEMORY, the data memory in bytes (docs/protocol.md "State"): None
        (default) for ``ring_size``, 0 for none. Without data memory the
        engine has descriptor rings only (no ring memory, no read-out, no
        record walk) and its reset ring is a descriptor ring of
        ``ring_size`` bytes; with it, the reset ring is a data ring and
        LOAD RING sets either kind (a data ring up to ``ring_size``, a
        descriptor ring up to 2**40).
    max_ring_bits : optional int
        log2 of the largest SIZE a LOAD RING may set (default 40: MAX_RING),
        which sets the width of the pointers and sizes. Smaller values are
        for the formal proofs (``hdl/formal.py``): the same logic at a width
        a solver can close.
    desc_batch : optional int
        The most descriptors a JNLDESC may carry (docs/protocol.md, "JNLDESC
        batches"), 1..DESC_BATCH (default DESC_BATCH). 1 is an engine
        without batches: a longer JNLDESC is refused with BAD_LENGTH,
        nothing taken. Above 1 the batch's descriptors (bytes 32..63 of
        each, what the checks read) go to a block RAM of 32 bytes a
        descriptor as they arrive and are taken one by one from it once
        the BCRC is good: a bad BCRC finds nothing applied, with no copy of
        the ring pointers to restore.

    Ports
    -----
    rx : In(stream.Signature(data_width)), tx : Out(stream.Signature(data_width))
        Request and answer beats (the first byte in bits 0..7).
    full : Out(1)
        High from a JNLWR NAKed FULL until the ring next changes (a journal
        accepted, a RELEASE, a LOAD): for a status LED.
    nak : Out(1)
        One-cycle pulse when a NAK frame is started.
    """

    def __init__(self, data_width: int = 8, ring_size: int = 4096, clk_hz: int = 12_000_000,
                 *, site: str = "sim", timestamp=None, sequencer=None, ring=None,
                 memory: int | None = None, max_ring_bits: int = MAX_RING_BITS,
                 desc_batch: int = protocol.DESC_BATCH, peek: bool = False):
        if (not isinstance(desc_batch, int) or isinstance(desc_batch, bool)
                or not 1 <= desc_batch <= protocol.DESC_BATCH):
            raise ValueError(f"desc_batch must be an integer from 1 to {protocol.DESC_BATCH}, "
                             f"not {desc_batch!r}")
        self.desc_batch = desc_batch
        # A third, combinational read port on the batch RAM at ``peek_addr``
        # (one word, ``peek_data``), for the formal spec alone: its proof that
        # a descriptor is read back as it was sent needs to state what the
        # RAM holds. No build for a board or the harness has it.
        self.peek = peek and desc_batch > 1
        if self.peek:
            words = (32 << (desc_batch - 1).bit_length()) // (data_width // 8)
            self.peek_addr = Signal((words - 1).bit_length())
            self.peek_data = Signal(data_width)
            self.peek_rd = Signal(data_width)    # the read-out port's word (BLOAD)
        if (not isinstance(max_ring_bits, int) or isinstance(max_ring_bits, bool)
                or not 8 <= max_ring_bits <= MAX_RING_BITS):
            raise ValueError(f"max_ring_bits must be an integer from 8 to {MAX_RING_BITS}, "
                             f"not {max_ring_bits!r}")
        self.max_ring_bits = max_ring_bits
        if isinstance(ring_size, int) and ring_size > 1 << max_ring_bits:
            raise ValueError(f"ring_size must be at most 2**max_ring_bits "
                             f"({1 << max_ring_bits}), not {ring_size!r}")
        if data_width not in (8, 32):
            raise ValueError(f"data_width must be 8 or 32, not {data_width!r}")
        if memory == 0:
            # no data memory: the reset ring is a descriptor ring, any SIZE
            if not isinstance(ring_size, int) or not protocol.ring_size_ok(ring_size):
                raise ValueError(f"ring_size must be a multiple of 64 from 128 to 2**40 "
                                 f"without data memory, not {ring_size!r}")
        elif (not isinstance(ring_size, int) or ring_size < 128
                or ring_size & (ring_size - 1)):
            raise ValueError(f"ring_size must be a power of two >= 128, not {ring_size!r}")
        if site not in ("sim", "board"):
            raise ValueError(f"site must be 'sim' or 'board', not {site!r}")
        if memory is None:
            memory = ring_size
        if memory not in (0, ring_size):
            raise ValueError(f"memory must be None, 0 or ring_size ({ring_size}), not {memory!r}")
        self.memory = memory
        self.data_width = data_width
        #: bytes per beat, and its log2: ring words and frame beats are W bytes
        self.W = data_width // 8
        self.LW = self.W.bit_length() - 1
        self.ring_size = ring_size
        # bits of a data memory byte address (no memory: a token width)
        self.ring_bits = ring_size.bit_length() - 1 if memory else 7
        self.clk_hz = clk_hz
        self.site = site
        if timestamp is None:
            from .timestamp import Timestamp as timestamp
        if sequencer is None:
            from .sequencer import Sequencer as sequencer
        if ring is None:
            ring = RingMemory
        self._timestamp = timestamp
        self._sequencer = sequencer
        # built here so that a ring without the engine's ports is refused now
        self._ring = None
        if memory:
            self._ring = ring(ring_size) if data_width == 8 else ring(ring_size, data_width)
            expected = ring_signature(self.ring_bits - self.LW, data_width)
            if getattr(self._ring, "signature", None) is None \
                    or self._ring.signature.members != expected.members:
                raise ValueError(f"ring({ring_size}) must have the ports {expected!r}, "
                                 f"not {getattr(self._ring, 'signature', self._ring)!r}")
        super().__init__({
            "rx": In(stream.Signature(data_width)),
            "tx": Out(stream.Signature(data_width)),
            "full": Out(1),
            "nak": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        SIZE = self.ring_size
        RB = self.ring_bits

        m.submodules.ts = ts = self._timestamp(self.clk_hz)
        m.submodules.seq = seq = self._sequencer()
        W, LW = self.W, self.LW
        mem = bool(self.memory)
        # offsets in granules (PG bits), sizes in granules (SG bits)
        PG = self.max_ring_bits - G
        SG = PG + 1
        m.submodules.resp = resp = Responder(RB, self.data_width, held_bits=SG, ring=mem)
        if mem:
            m.submodules.ring = ring = self._ring
            wr = _Port(ring.w_addr, ring.w_data, ring.w_en)
            rd = _Port(ring.r_addr, ring.r_data, ring.r_en)
        else:
            # no data memory: nothing is written or read (ports left unconnected)
            wr = _Port(Signal(RB - LW), Signal(8 * W), Signal())
            rd = _Port(Signal(RB - LW), Const(0, 8 * W), Signal())
        wiring.connect(m, tx=wiring.flipped(self.tx), resp=resp.tx)
        # Width 32 with data memory: the ring's write port follows three
        # registers set on the transitions into and out of the states that
        # write (as ``rdy`` is), not a decode of the ingress state: the state
        # -> BODY/PAD/MARK -> the write enable -> the read enable (a write
        # wins, hdl/ring.py) -> the clock enables of the 36 block RAMs was the
        # width-32 critical path (11.7 ns, 9.6 of it routing). ``wr_body``:
        # BODY of a JNLWR (a beat taken is written if ALLOC placed it);
        # ``wr_fill``: PAD or MARK (a word written every cycle); ``wr_mark``:
        # MARK. Width 8 keeps the writes in the states (the UP5K top has no
        # data memory; the ULX3S top's netlist stays as it is).
        wide_wr = W > 1 and mem
        if wide_wr:
            wr_body, wr_fill, wr_mark = Signal(), Signal(), Signal()

        # -- engine state (docs/protocol.md "State") ------------------------
        # SIZE and every offset in granules of 64 bytes (all are multiples
        # of 64): SIZE up to 2**40 is 2**34 granules (35 bits), an offset
        # below it 34 bits. A data ring is at most MEMORY = ring_size bytes.
        size = Signal(SG, init=SIZE >> G)
        # MODE: 1 for a descriptor ring (always, without data memory)
        desc = Signal(init=not mem) if mem else Const(1, 1)
        jiptr = Signal(PG)
        joptr = Signal(PG)
        used = Signal(SG)
        wrap_at = Signal(SG, init=SIZE >> G)
        last_time = Signal(64)
        epoch = Signal(32)
        acks = Signal(32)
        naks = Signal(32)
        next_seq = seq.value
        empty = used == 0
        # FREE = SIZE - USED as a register, one cycle behind: USED and SIZE
        # change only in EXEC, RELEASE_STEP, RELEASE_AT and LOAD, none of
        # them followed at once by ALLOC (HCHECK or TRAILER comes first), by
        # EXEC or by a STATUS body (the responder starts after ANSWER), so every
        # reader sees it settled. Its 35-bit subtraction was the head of
        # the width-32 critical path (USED -> STATUS FREE -> word mux -> SEQ
        # sum -> BCRC) and of ALLOC's R > FREE.
        free = Signal(SG, init=SIZE >> G)
        # The registered checks and figures "one cycle behind" their inputs
        # (FREE here, the header's, ALLOC's, EXEC's, a LOAD's and a
        # RELEASE's below) go to ``checks``: ``m.d.sync`` (loaded every
        # cycle), or in the sim build a list loaded only outside HEADER and
        # BODY (``lazy_checks``, after the FSM): every reader comes at
        # least a cycle after the last beat of a header or body.
        checks = [] if _LAZY_CHECKS else m.d.sync
        checks += [free.eq(size - used)]

        def bytes_(g):
            """A granule count or offset as bytes."""
            return Cat(Const(0, G), g)

        def dbytes_w(g):
            """A data ring's size or WRAP_AT (at most 2**RB) as bytes."""
            return Cat(Const(0, G), g)[:RB + 1]

        def dbytes(g):
            """A data ring offset as a ring byte address (a data ring is at
            most MEMORY = 2**RB bytes)."""
            return Cat(Const(0, G), g)[:RB]
        # Records held: at most SIZE/64 (each takes >= 64 bytes): 2**34 on a
        # descriptor ring of 2**40 bytes, so HELD has SG bits; on a data
        # ring at most MEMORY/64, which narrows the counts of records below
        # (JNLRD, RELEASE walk) to RB bits. TAIL_SEQ is not a register: it
        # is NEXT_SEQ - HELD (no 64-bit register, incrementer or comparator).
        held = Signal(SG)
        # a descriptor ring's RELEASE, decided over two cycles (RELEASE_D
        # computes these from the request, RELEASE_AT commits with them)
        rel_d = Signal(SG)                     # D: the granules released
        rel_held = Signal(SG)                  # HELD after: NEXT_SEQ - UPTO - 1
        rel_last = Signal()                    # UPTO is the last journal
        rel_past_end = Signal()                # P <= JOPTR: the release wraps
        rel_bad = Signal()                     # P off the grid, >= 2**40 or >= WRAP_AT
        # USED - D with its borrow, a register one cycle behind (RELEASE_W):
        # the chain was the UP5K's critical path in front of the commit
        rel_left = Signal(SG + 1)
        # and D == USED (USED - D is 0), a flag beside it: RELEASE_AT then
        # decides on four flip-flops (the 36-bit zero test of ``rel_left``
        # in front of its enables was the UP5K's path after the fifth step)
        rel_zero = Signal()
        checks += [rel_left.eq(used - rel_d), rel_zero.eq(used == rel_d)]

        # -- answer staging ---------------------------------------------------
        ans = Signal(layouts.Ack)              # built in ANSWER from the fields below
        ans_from = Signal(_AckFrom)
        ans_status = Signal(8)
        ans_req = Signal(8)
        ans_tag_ctl = Signal()                 # TAG is the journal's control TAG
        ans_type = Signal(8)
        # (without data memory every answer is at most 80 bytes: 7 bits)
        ans_len = Signal(LENGTH_BITS if mem else 7)
        ans_src = Signal(Source)
        # what ANSWER does with the staged answer, decided where it is
        # staged (not compared from ``ans_type``/``ans_from`` in ANSWER,
        # in front of NAKS, NEXT_SEQ and HELD): a NAK is counted; a
        # journal's SEQ# is taken (an ACK from WRITE, or with batches also a
        # NAK from WRITE: the last descriptor taken)
        ans_nak = Signal()
        ans_step = Signal()
        ans_base = Signal(RB)
        ans_flags = Signal(16)
        after = Signal(_After)

        # TIME of the JNLWR being received (max(CLOCK, LAST_TIME), from
        # ALLOC), or NOW of a STATUS answer (from EXEC)
        stamp_time = Signal(64)
        status = Signal(layouts.EngineStatus)
        hello = Signal(layouts.Hello)
        # JIPTR, NEXT_SEQ, TAIL_SEQ, NOW and ACKS of STATUS (and HELLO
        # LAST_SEQ) are sent from the staged Ack (``_AckFrom.VIEW``)
        status_epoch = status.epoch.eq(epoch)
        status_view = [
            status.joptr.eq(bytes_(joptr)),
            status.ring_size.eq(bytes_(size)),
            status.free.eq(bytes_(free)),
            status.naks.eq(naks), status_epoch,
            status.held.eq(held[:32]), status.wrap_at.eq(bytes_(wrap_at)),
        ]
        if _STATUS_ON_DEMAND:
            # (EPOCH always: the responder sends HELLO's EPOCH from it)
            m.d.comb += status_epoch
            with m.If(ans_src == Source.STATUS):
                m.d.comb += [a for a in status_view if a is not status_epoch]
            status_view = []
        m.d.comb += [
            *status_view,
            resp.held.eq(held),
            # (HELLO EPOCH is sent from STATUS EPOCH, see Responder)
            hello.role.eq(protocol.Role.ENGINE),
            hello.site.eq(int.from_bytes(self.site.encode().ljust(32, b"\0"), "little")),
            resp.ftype.eq(ans_type), resp.flags.eq(ans_flags), resp.length.eq(ans_len),
            resp.source.eq(ans_src), resp.base.eq(ans_base), resp.ack.eq(ans),
            # STATUS and REQ_TYPE straight from the staging registers: they
            # are staged only while the responder is idle (EXEC and what
            # follows it; HCHECK's NAKs, staged in HNAK, wait for it), so
            # no copy in ``ans``
            resp.ack.status.eq(ans_status), resp.ack.req_type.eq(ans_req),
            resp.status.eq(status), resp.hello.eq(hello),
        ]

        def nak(code, req_type, *, tag=False, seq_x=False, after_=_After.HEADER, from_=None):
            """Stage a NAK; NAKS counts it when it is handed to the responder.
            ``tag``: TAG is the journal's (a bool or a 1-bit value);
            ``seq_x``: SEQ is the request's FROM_SEQ/UPTO; ``from_``: the
            SEQ/TIME/JOFS are another's (a batch's last descriptor taken)."""
            if from_ is None:
                from_ = _AckFrom.NAK_X if seq_x else _AckFrom.ZERO
            step = (from_ == _AckFrom.WRITE) if self.desc_batch > 1 else Const(0)
            return [
                ans_status.eq(code), ans_req.eq(req_type), ans_tag_ctl.eq(tag),
                ans_from.eq(from_), ans_nak.eq(1), ans_step.eq(step),
                ans_type.eq(FT.NAK), ans_len.eq(protocol.Ack.SIZE), ans_src.eq(Source.ACK),
                ans_flags.eq(0), after.eq(after_),
            ]

        def ack(req_type, from_, *, tag=False):
            return [
                ans_status.eq(ST.OK), ans_req.eq(req_type), ans_tag_ctl.eq(tag),
                ans_from.eq(from_), ans_nak.eq(0), ans_step.eq(from_ == _AckFrom.WRITE),
                ans_type.eq(FT.ACK), ans_len.eq(protocol.Ack.SIZE), ans_src.eq(Source.ACK),
                ans_flags.eq(0), after.eq(_After.HEADER),
            ]

        # -- ingress registers -----------------------------------------------
        # One 32-byte shift register, bytes entering at the top: the header
        # window is its upper 16 bytes (the last 16 header bytes, oldest in
        # bits 128..135), then body bytes 0..63 shift through it, so that it
        # holds body bytes 32..63 of a JNLWR (its checked control fields)
        # or, after ALIGN, bytes 0..31 of a shorter request (requests that
        # read ``small`` are at most 32 bytes long, checked in EXEC). One
        # register instead of a window and a capture buffer: flip-flops
        # with no logic in front cost a logic cell each.
        small = Signal(32 * 8)
        win = small[128:]
        hdr = layouts.Header(win)
        hcnt = Signal(range(17))
        hcrc = Signal(32, init=CRC_INIT)
        hunting = Signal()
        # small loop counter (HCRC recheck, trailer, SKIP; a data ring's marker)
        # (and a batch's descriptor load, BLOAD: 32 // W + 1 steps)
        B = self.desc_batch
        kcnt = Signal(range(64 if mem or B > 1 else 16))
        ftype = Signal(8)
        blen = Signal(LENGTH_BITS)
        bcnt = Signal(LENGTH_BITS)
        # What the FSM asks of LENGTH, registers loaded with BLEN in HCHECK
        # from the header field (``bl`` below): the next states and enables
        # that EXEC, TRAILER, SKIP and BODY decide read a flip-flop, not a
        # 23-bit comparison on BLEN (BLEN through those comparisons to the
        # enables of the ring registers, of ``small`` and of USED was the
        # critical path of every build). Each is a function of BLEN alone
        # and holds its value at BLEN's reset value 0.
        BN = max(1, (B - 1).bit_length())      # a descriptor index's bits
        blen_fns = {
            "zero": (lambda l: l == 0, 1),
            "ge64": (lambda l: ge_const(l, 64), 0),
            "ge65": (lambda l: ge_const(l, 65), 0),
            "lt32": (lambda l: lt_const(l, 32), 1),
            "hello": (lambda l: l == protocol.Hello.SIZE, 0),
            "token": (lambda l: (l == 0) | (l == 8), 1),        # a HEARTBEAT's
            "jnlrd": (lambda l: l == protocol.JnlRd.SIZE, 0),
            "rel": (lambda l: l == protocol.Release.SIZE, 0),
            "rel_at": (lambda l: l == protocol.Release.AT_SIZE, 0),
            "load": (lambda l: l == protocol.Load.SIZE, 0),
            "load_ring": (lambda l: l == protocol.Load.RING_SIZE, 0),
            # a JNLDESC's LENGTH: 64·N, 1 <= N <= DESC_BATCH (check 3)
            "desc": ((lambda l: l == 64) if B == 1 else
                     (lambda l: (l[:G] == 0) & (l[G:] != 0) & lt_const(l, 64 * B + 1)), 0),
            # N - 1, the index of a batch's last descriptor (read only when
            # "desc" holds, so N - 1 fits BN bits)
            "nlast": (lambda l: (l[G:] - 1)[:BN], (1 << BN) - 1),
            # LENGTH - 1: BODY's last byte at width 8 (BCNT == LENGTH - 1
            # instead of BCNT + 1 == LENGTH, no adder in front)
            "m1": (lambda l: (l - 1)[:LENGTH_BITS], (1 << LENGTH_BITS) - 1),
        }
        bl = {}
        for n, (fn, init) in blen_fns.items():
            shape = len(Value.cast(fn(blen)))
            bl[n] = Signal(shape, init=init, name=f"blen_{n}")
        # ``hcrc`` is the header's HCRC, then (reset at HCHECK) the body's
        # BCRC; it is reset for the next header in ANSWER. ``ccrc`` is the
        # CCRC over control bytes 0..59, then the DCRC over bytes 64.. (the
        # two never run at once: one CRC unit each instead of two).
        ccrc = Signal(32, init=CRC_INIT)
        # Whether the received BCRC differs from the computed one, a flag
        # set in TRAILER for VERDICT to read: at width 8 a byte at a time as
        # it arrives (``bcrc`` holds still in TRAILER), at width 32 from the
        # trailer beat in one go. (The received BCRC as a register compared
        # in the decision's cycle was the head of the width-32 critical path:
        # rx_bcrc -> 32-bit comparison -> the decision -> the enables.)
        # A data ring's JNLWR likewise has its DATA_CRC compared in TRAILER.
        bcrc_bad = Signal()
        dcrc_bad = Signal()
        ctl = layouts.Control(Cat(Const(0, 256), small))
        hello_bad = Signal()
        nul_seen = Signal()
        # allocation result, fixed before the first body byte (JNLWR) or
        # after the last (JNLDESC: DATA_LEN is in body bytes 36..39)
        # R in bytes (a multiple of 64); without data memory ``r_q`` (below)
        rlen = Signal(LENGTH_BITS) if mem else None
        place = Signal(PG)                     # JOFS, granules
        wrap = Signal()
        rewind = Signal()
        # (no copies of JIPTR or of SIZE - JIPTR: both hold until EXEC)
        # SIZE - JIPTR (the tail's granules) and JOPTR - JIPTR (the gap
        # before JOPTR when JIPTR is below it) as registers one cycle behind,
        # as FREE is (above): ALLOC then compares R with registers, not with
        # the ends of 35-bit subtractions (the width-32 critical path ran
        # through them, on to the enables of USED)
        tail = Signal(SG, init=SIZE >> G)
        gap = Signal(PG)
        checks += [tail.eq(size - jiptr), gap.eq(joptr - jiptr)]
        alloc_ok = Signal()
        alloc_full = Signal()
        # VERDICT's decision for EXEC, one bit an outcome (``_V``), set in
        # VERDICT and cleared in EXEC: a bit set is "in EXEC, and this
        # outcome", so that WRAP_AT's writes (``_wrap_at``) need not decode
        # the state
        verdict = Signal(_V.BITS)
        # likewise "in RELEASE_AT" (set in RELEASE_W, cleared in RELEASE_AT)
        # and "in LOAD_SET" (VERDICT's LOAD bit a cycle later)
        rel_go = Signal()
        ld_go = Signal()
        m.d.sync += ld_go.eq(verdict[_V.LOAD])
        settle = Signal()                      # ALLOC_W's second cycle

        # -- JNLDESC batches (docs/protocol.md, "JNLDESC batches") ----------
        # Bytes 32..63 of every descriptor (what EXEC's checks read from
        # ``small``) go to a block RAM as they arrive, 32 bytes each; after
        # the BCRC, descriptor 0 is taken from ``small`` as a single JNLDESC
        # is, and each one after it is loaded back into ``small`` (BLOAD)
        # and goes through ALLOC and EXEC in turn. Nothing is decided before
        # the BCRC, so a bad one has nothing to undo: no shadow of JIPTR,
        # USED, WRAP_AT, NEXT_SEQ, HELD, ACKS or LAST_TIME (~300 flip-flops)
        # but a RAM the UP5K has spare (4 of its 30 EBRs).
        # BIDX is the descriptor being taken. The SEQ# step of a taken
        # descriptor is left pending until the next one is taken (EXEC) or
        # the answer is built (ANSWER, as for a single JNLDESC): the answer
        # then reads the last taken one's SEQ# as NEXT_SEQ, with no 64-bit
        # decrementer; its JOFS is ``place``, written in ALLOC only for a
        # descriptor that will be taken.
        if B > 1:
            BB = (B - 1).bit_length()          # bits of a descriptor index
            bidx = Signal(BB)
            bram_words = (32 << BB) // W
            AB = (bram_words - 1).bit_length()
            bram_w = _Port(Signal(AB), Signal(8 * W), Signal())
            bram_r = _Port(Signal(AB), Signal(8 * W), Signal())
            # Bit slices of at most 4 Kbit each: an iCE40 EBR is 4 Kbit in
            # any of 256x16 .. 2048x2, so 2 KiB of bytes are four 2048x2
            # blocks side by side rather than four 512x8 ones behind a
            # 4-way read multiplexer (the UP5K has LUTs to spare for none).
            # Never read and written in the same cycle (BODY writes, BLOAD
            # reads): no transparency logic.
            slices = max(1, min(8 * W, (8 * W * bram_words) // 4096))
            sw = 8 * W // slices
            for i in range(slices):
                mem_i = Memory(shape=sw, depth=bram_words, init=[])
                m.submodules[f"batch_ram{i}"] = mem_i
                w_i, r_i = mem_i.write_port(), mem_i.read_port(transparent_for=())
                m.d.comb += [w_i.addr.eq(bram_w.addr), w_i.data.eq(bram_w.data[sw * i:sw * (i + 1)]),
                             w_i.en.eq(bram_w.en), r_i.addr.eq(bram_r.addr), r_i.en.eq(bram_r.en),
                             bram_r.data[sw * i:sw * (i + 1)].eq(r_i.data)]
                if self.peek:
                    p_i = mem_i.read_port(domain="comb")
                    m.d.comb += [p_i.addr.eq(self.peek_addr),
                                 self.peek_data[sw * i:sw * (i + 1)].eq(p_i.data)]
            if self.peek:
                m.d.comb += self.peek_rd.eq(bram_r.data)
        else:
            bidx = Const(0, 1)

        beat = self.rx.payload                 # W bytes, the first in bits 0..7
        # Width 8: one CRC network on HCRC for HEADER, HUNT_CRC and BODY
        # (where the BCRC is HCRC): its data is the beat taken, or in
        # HUNT_CRC the window's oldest beat (``crc_hunt``, set there). A
        # second network for HUNT_CRC cost about 100 LUTs on the UP5K.
        # Width 32 keeps the two: the state's select in front of a 4-byte
        # network was the engine's critical path (74.7 against 82.8 MHz,
        # docs/hardware.md "The seventh steps merged").
        crc_hunt = Signal()
        hcrc_next = Signal(32)
        hunt_crc_next = Signal(32)
        if W == 1:
            m.d.comb += [hcrc_next.eq(crc32c_step(hcrc, Mux(crc_hunt, win[:8 * W], beat), W)),
                         hunt_crc_next.eq(hcrc_next)]
        # (width 32: over two cycles, ``hd_full`` below)
        bcnt_next = Signal(LENGTH_BITS)
        m.d.comb += bcnt_next.eq(bcnt + W)

        def next_lt(k):
            """BCNT + W < k (k > W; BCNT + W wraps at 2**LENGTH_BITS) without
            the adder: BCNT < k - W, or BCNT so high that the sum wraps (the
            carry chain in front of the comparison was the UP5K's critical
            path once ``to_small`` was a register, 32.4 ns)"""
            return lt_const(bcnt, k - W) | ge_const(bcnt, (1 << LENGTH_BITS) - W)
        # positions in the body, as logic rather than carry chains
        b_lt16, b_lt60, b_lt64 = lt_const(bcnt, 16), lt_const(bcnt, 60), lt_const(bcnt, 64)
        # ``rx.ready`` is a register, set on each transition for the state
        # entered (and in HUNT for the next window): which states take a
        # beat is decided a cycle ahead. As a function of the state and of
        # HUNT's MAGIC test it was the UP5K's ingress path: the FSM's state
        # -> ready -> the FIFO's read enable -> ``take`` -> the clock enable
        # of the 256 flip-flops of ``small``. It is 1 exactly in HEADER,
        # BODY and TRAILER, in HUNT until a full window starts with MAGIC,
        # and in SKIP when there is a body to drop (the formal spec restates
        # it: "INV: ingress ready").
        rdy = Signal(init=1)
        m.d.comb += self.rx.ready.eq(rdy)
        take = self.rx.valid & rdy
        # Whether a beat taken shifts into ``small`` (``to_small``) or, a
        # LOAD RING's SIZE word (body bytes 32..39), into ``stamp_time``
        # (``to_stamp``), and whether ALIGN shifts ``small`` down this cycle
        # (``aligning``): registers set a beat ahead, as ``rdy`` is, so that
        # the enable of the 256 flip-flops of ``small`` is one LUT (``take``,
        # ``to_small``, ``aligning``). As a function of the state, BCNT and
        # TYPE = LOAD it was the UP5K's critical path (``ftype`` -> the TYPE
        # decode -> the state's choice -> a global buffer -> the enable of
        # ``small``, 33.6 ns, 10 LUT levels). ``to_small`` is 1 in HEADER
        # and HUNT, in BODY while the body byte taken is below 64 and not a
        # LOAD's SIZE word, 0 in TRAILER and SKIP (the other states take no
        # beat); ``to_stamp`` is 1 only in BODY at a LOAD's bytes 32..63;
        # ``aligning`` exactly in ALIGN while BCNT < 32 (the formal spec
        # restates all three: "INV: the ingress shift enables").
        to_small = Signal(init=1)
        to_stamp = Signal()
        aligning = Signal()
        in_states = bool(_WINDOW_IN_STATES)     # (the sim build: ``window_in_states``)
        # Width 32: when ``stamp_time`` loads, likewise from registers set a
        # cycle ahead, not from a decode of the state and VERDICT's decision
        # (the state -> the decode -> its enable, 64 flip-flops spread over
        # the die, was the width-32 path once the ring's port was registered,
        # 11.6 ns): ``stamp_alloc``, ALLOC of a batch's first descriptor
        # (TIME = max(CLOCK, LAST_TIME)); ``stamp_status``, VERDICT of a
        # STATUS to be answered (NOW, once the responder is idle);
        # ``stamp_load``, LOAD_TIME (the clock after a load); and BODY's
        # SIZE word on ``to_stamp``, 0 outside BODY. The formal spec
        # restates them ("INV: the stamp's enables").
        wide_stamp = W > 1 and not in_states
        if wide_stamp:
            stamp_alloc, stamp_status, stamp_load = (
                Signal(name=n) for n in ("stamp_alloc", "stamp_status", "stamp_load"))
        if W > 1:
            # A wide link carries frames from beat boundaries (docs/protocol.md,
            # "Wide links"): the body's last beat holds KLAST body bytes, the
            # BCRC starts right after them (in that beat or the next), and the
            # lanes after the frame's end are ignored. BEND is LENGTH rounded
            # up to a whole beat (its bits from LW up), set in HCHECK.
            bend = Signal(LENGTH_BITS)
            klast = Signal(LW + 1)
            m.d.comb += klast.eq((blen[:LW] - 1)[:LW] + 1)
            # END_HIT: the body beat being taken is the last. A register set
            # a beat ahead (in HCHECK for beat 0, then as each beat is taken),
            # so that the choice of CRC matrices and the lane mask of the
            # BCRC/CCRC do not wait for BCNT + W and a 21-bit comparison (the
            # width-32 critical path once the read-out was registered).
            end_hit = Signal()
            end_next = (bcnt + 2 * W)[LW:LENGTH_BITS] == bend[LW:]   # (BCNT_NEXT + W)
            tailbeat = Signal(8 * W)           # the body's last beat, for the BCRC
            # the beat with its lanes after the body zero (in the last beat:
            # lane i is a body byte when KLAST > i)
            # (Signals, not expressions: the CRC networks read each bit many
            # times, and an expression would be written out at every read)
            body_beat = Signal(8 * W)
            m.d.comb += body_beat.eq(
                beat & Cat(*((~end_hit | (klast > i)).replicate(8) for i in range(W))))
            # The region of the body the beat being taken is in, registers
            # set a beat ahead as END_HIT is (HCHECK for beat 0, then from
            # BCNT_NEXT as each beat is taken): the stamped-data multiplexer
            # and the CCRC's start then do not wait for comparisons on the
            # 23-bit BCNT (they were in front of the CRC of the beat).
            at_seq, at_time, at_place, at_ccrc, at_data0 = (Signal() for _ in range(5))

            def regions(b):
                """The region registers for the beat at body byte ``b``."""
                return [at_seq.eq(lt_const(b, 8)), at_time.eq(ge_const(b, 8) & lt_const(b, 16)),
                        at_place.eq(ge_const(b, 24) & lt_const(b, 32)),
                        at_ccrc.eq(ge_const(b, 60) & lt_const(b, 64)), at_data0.eq(b == 64)]

            # The CRC networks over two cycles (docs/hardware.md, "Timing
            # closure, thirteenth step"). The CRC is linear: the step is
            # M·crc ^ M·data, so the data's share is computed into a
            # register the cycle a beat is taken, and the cycle after, the
            # register's loop is only M·crc ^ that register, its enable a
            # flip-flop. HCRC: ``hd_full`` the beat (HEADER, BODY), or the
            # window's bottom in HUNT_CRC (where ``rdy`` is 0, the only
            # one of the three), ``hd_last`` the beat with its lanes after
            # the body zero (KLAST, a register from HCHECK on); ``hv``
            # (HCRC takes a data term) and ``h_last`` (it is the body's last
            # beat's) are set below the FSM. Loaded every cycle: read only
            # after ``hv``. HCRC is so a cycle late: HCHECK waits a cycle
            # for its checks anyway (the header's CRC is over 12 of its 16
            # bytes), and the BCRC is compared after TRAILER (``eb``).
            hd_full, hd_last = Signal(32, name="hd_full"), Signal(32, name="hd_last")
            hv, h_last = Signal(name="hv"), Signal(name="h_last")
            m.d.sync += [hd_full.eq(crc32c_data_term(Mux(rdy, beat, win[:8 * W]), W)),
                         hd_last.eq(crc32c_data_term(beat & lane_mask(klast, W), W))]
            # TRAILER's checks: BODY took the last beat whole with zeros
            # after its KLAST body bytes, and rather than take those zero
            # bytes back out of HCRC and CCRC, the received BCRC and
            # DATA_CRC are padded with them (``eb``, ``ed``: what the
            # registers hold if they match; latched at TRAILER's take,
            # with ``dz``, DATA_CRC != 0). From the cycle after, when HCRC
            # and CCRC are final, BCRC_BAD and DCRC_BAD are two registers
            # compared (no longer flip-flops of their own: VERDICT, which
            # reads them, may come right after TRAILER).
            eb, ed = Signal(32, name="eb"), Signal(32, name="ed")
            dz = Signal(name="dz")
        hdr_crc_ok = hdr.hcrc == (hcrc ^ CRC_INIT)
        bcrc = hcrc
        dcrc = Mux(bl["ge65"], ccrc, CRC_INIT)      # CRC32C of no data is 0
        # MAGIC at the start of the window: a register, compared as a beat
        # shifts in (HEADER, HUNT), so that HUNT's ready does not wait for
        # a 32-bit comparison on the window (the width-32 critical path
        # once the record walk was registered ran from the window through
        # it to ``take`` and the enables of ``small``). HUNT_CRC's rotation
        # puts the window back as it was, and nothing else moves it before
        # HCHECK or HUNT read this.
        magic_ok = Signal()
        win_magic = magic_ok                    # (HCHECK rebinds ``magic_ok``)
        shift_in = Cat(small[8 * W:], beat)    # ``small`` after a beat shifts in
        magic_next = shift_in[128:160] == protocol.MAGIC
        # HCHECK's checks of the window, registers one cycle behind it
        # (HCHECK waits a cycle for them: ``h_settled``). LENGTH against what
        # its TYPE can carry (protocol.MAX_LENGTH, the host's table): a
        # longer header is refused in HCHECK and the hunt starts at once,
        # not after up to MAX_BODY bytes of body. An unknown TYPE carries
        # nothing: it hunts too. (From the window through these checks to
        # the enables of every register HCHECK loads was the UP5K's
        # critical path.)
        # ``h_zero``: LENGTH = 0 (the header has no body), likewise: HCHECK's
        # choice of the next state, and so of ``rdy``, reads no comparison on
        # the window (window -> LENGTH = 0 -> the enables of ``rdy`` and of
        # the state was the UP5K's path once ``rx.ready`` was a register)
        h_magic, h_crc, h_form, h_len, h_type, h_zero, h_settled = (
            Signal(name=n) for n in ("h_magic", "h_crc", "h_form", "h_len", "h_type", "h_zero",
                                     "h_settled"))
        # ``h_pass``: the header passes every check and the answer staged is
        # not a STATUS (HCHECK need not wait for the responder); ``h_wr``:
        # its TYPE is JNLWR. Registers beside the checks, so that HCHECK
        # decides on four flip-flops (``h_settled``, the responder's phase,
        # ``h_pass``): the AND of five checks and ``ans_src``'s compare in
        # front of the enables of every register HCHECK loads was the
        # width-32 critical path once the responder's index was registered.
        # (``ans_src`` holds still in HCHECK until it decides.)
        h_pass, h_wr = Signal(name="h_pass"), Signal(name="h_wr")
        # ``len_le[c]``: the window's LENGTH <= c, for each MAX_LENGTH of a
        # known TYPE. Registers that follow the window: loaded whenever
        # ``small`` moves (``small_en``, below the FSM) with the bound of the
        # LENGTH it moves to, which every move of ``small`` takes from the
        # window's bytes one beat up (LENGTH is never in the top beat), so
        # that ``h_len`` and ``h_pass`` read a flip-flop a TYPE, not a
        # 32-bit comparison (the window -> LENGTH's bounds -> the TYPE's
        # choice -> ``h_len`` was the UP5K's critical path once ``small``'s
        # enable was a register, 33.7 ns). Reset: LENGTH 0, under every bound.
        # In the sim build (``window_in_states``) LENGTH is compared with
        # each bound where HCHECK's checks load instead: ``len_le`` loads at
        # every move of the window, in most cycles of a frame, and the
        # checks (``lazy_checks``) only outside HEADER and BODY.
        max_lens = sorted({protocol.MAX_LENGTH[t] for t in _KNOWN_TYPES})
        if in_states:
            len_le = {c: lt_const(hdr.length, c + 1) for c in max_lens}
        else:
            len_le = {c: Signal(init=1, name=f"len_le{c}") for c in max_lens}
        length_now = Const(0)
        type_now = Const(0)
        for t in _KNOWN_TYPES:
            type_now = type_now | (hdr.type == t)
            length_now = length_now | ((hdr.type == t) & len_le[protocol.MAX_LENGTH[t]])
        checks += [h_magic.eq(magic_ok), h_crc.eq(hdr_crc_ok),
                     h_form.eq((hdr.version == protocol.VERSION)
                               & ~(hdr.flags & ~int(protocol.FrameFlag.MORE)).any()),
                     h_len.eq(length_now), h_type.eq(type_now), h_zero.eq(hdr.length == 0)]
        # (``h_pass`` is read only in HCHECK once ``h_settled``, as the
        # checks are, so the sim build loads it with them: a cycle after the
        # window and ``ans_src`` came to rest, as when it loads every cycle)
        h_pass_now = h_pass.eq(magic_ok & hdr_crc_ok & (hdr.version == protocol.VERSION)
                               & ~(hdr.flags & ~int(protocol.FrameFlag.MORE)).any()
                               & length_now & type_now & (ans_src != Source.STATUS))
        if in_states:
            checks += [h_pass_now]
        else:
            m.d.sync += h_pass_now
        m.d.sync += h_wr.eq(hdr.type == FT.JNLWR)

        # ring read port: the responder while it emits, else the walker
        walk_addr = Signal(RB - LW)            # a ring word address
        m.d.comb += [
            rd.addr.eq(Mux(resp.busy, resp.rd_addr, walk_addr)),
            rd.en.eq(Mux(resp.busy, resp.rd_en, 1)),
            resp.rd_data.eq(rd.data),
        ]

        # walker: read DATA_LEN of the record at walk_off (4 bytes + latency),
        # then WALK_SETTLE cycles for the registers below to follow it
        walk_off = Signal(RB)
        dl = Signal(32)
        dl_step = Signal(range(4 // self.W + _WALK_SETTLE + 1))
        # The next record's offset is decided from registers, each one cycle
        # behind the one before, not in one chain (DATA_LEN -> R -> WALK_OFF
        # + R -> its comparisons with WRAP_AT and SIZE -> the step's
        # decision was the width-32 critical path): R one cycle behind
        # DATA_LEN; then WALK_OFF + R and the two comparisons side by side,
        # each from R and a register. (a + b) mod 2**n == c exactly when b
        # mod 2**n == (c - a) mod 2**n, so WALK_OFF + R == WRAP_AT is R
        # against WRAP_AT - WALK_OFF, taken while DATA_LEN is read (WALK_OFF,
        # SIZE and WRAP_AT hold from the step before until the step).
        walk_r = Signal(LENGTH_BITS)
        m.d.sync += walk_r.eq(Cat(Const(0, 6), (dl[:LENGTH_BITS] + 63)[6:]) + 64)
        # next record: the skipped tail ends at WRAP_AT, the ring at SIZE
        # (a data ring's, at most 2**RB: RB + 1 bits of bytes)
        d_size, d_wrap = dbytes_w(size), dbytes_w(wrap_at)
        to_wrap, to_size = Signal(RB + 1), Signal(RB + 1)
        m.d.sync += [to_wrap.eq(d_wrap - walk_off), to_size.eq(d_size - walk_off)]
        at_wrap_now = walk_r[:RB + 1] == to_wrap
        walk_sum = Signal(RB + 1)
        walk_at_wrap = Signal()
        walk_at_end = Signal()                 # at WRAP_AT or at SIZE: the next is at 0
        m.d.sync += [
            walk_sum.eq(walk_off + walk_r),
            walk_at_wrap.eq(at_wrap_now),
            walk_at_end.eq(at_wrap_now | (walk_r[:RB + 1] == to_size)),
        ]
        walk_next = Mux(walk_at_end, 0, walk_sum[:RB])
        if mem and W > 1:
            # (width 32) USED after a RELEASE's step, both ways, as registers
            # loaded every cycle beside ``walk_at_wrap``: USED - R
            # (``walk_used``) and USED - R - (SIZE - WRAP_AT), the skipped
            # tail taken off too (``walk_used_w``). USED, SIZE and WRAP_AT
            # hold through the walk but in RELEASE_STEP itself, and R is
            # the cycle before's (``walk_at_wrap`` reads it a cycle behind),
            # so RELEASE_STEP chooses between two flip-flops, not through
            # two carry chains from SIZE and WRAP_AT (SIZE -> USED was a
            # width-32 critical path, docs/hardware.md "Timing closure,
            # fourteenth step")
            DBw = RB - G + 1
            walk_used = Signal(SG, name="walk_used")
            walk_used_w = Signal(SG, name="walk_used_w")
            m.d.sync += [walk_used.eq(used - walk_r[G:]),
                         walk_used_w.eq(used - walk_r[G:] - (size[:DBw] - wrap_at[:DBw]))]
        if W > 1:
            # (width 32) a record starts on a 64-byte granule (``walk_off``'s
            # six low bits are 0: JOPTR, 0 or WALK_OFF + R), so WALK_OFF + 36
            # is wiring, and + DL_STEP (< 4) stays in the granule's words:
            # no adder chain from WALK_OFF to the ring's read address (the
            # width-32 critical path once VERDICT's staging and KCNT were off it)
            lo = _CTL["data_len"][0] >> LW
            assert lo + 4 // W + _WALK_SETTLE < 1 << (G - LW)
            m.d.comb += walk_addr.eq(Cat((Const(lo, G - LW) + dl_step)[:G - LW], walk_off[G:]))
        else:
            m.d.comb += walk_addr.eq(word_address(walk_off + _CTL["data_len"][0], W) + dl_step)
        rd_left = Signal(RB)                   # records still to send (<= SIZE/64)
        rd_n = Signal(RB)
        rd_cnt = Signal(RB)                    # records to skip (JNLRD) or free (RELEASE)
        rd_n_m1 = Signal(signed(RB + 1))       # records sent by a JNLRD, minus one
        m.d.comb += rd_n_m1.eq(rd_n - 1)
        # FROM_SEQ / UPTO of a request, compared once for both
        x_seq = small[:64]
        # d = NEXT_SEQ - x with its borrow: x > NEXT_SEQ iff it borrows, and
        # x < TAIL_SEQ = NEXT_SEQ - HELD iff d > HELD. One subtractor for
        # all three comparisons; its low bits are also the record counts
        # (x - TAIL_SEQ = HELD - d, NEXT_SEQ - x = d).
        # A register loaded every cycle (the sim build: but in HEADER and
        # BODY, ``checks``), so one cycle behind NEXT_SEQ and ``small`` (the
        # 65-bit chain was
        # the start of the UP5K's critical path: small -> NEXT_SEQ - x ->
        # > HELD -> the decision). Both
        # hold from the body's end to EXEC, ALIGN included: it spends one
        # cycle without shifting before EXEC. On the iCE40 the flip-flops
        # pack with the adder's logic cells.
        # Two carry chains side by side at width 8, not one of 65 bits (small
        # -> the chain -> its top bit was the UP5K's critical path once
        # WRAP_AT's enable was off it, 30.4 ns): ``x_lo``, d's low XK bits
        # and their borrow, and ``x_hi``, NEXT_SEQ's high bits less x's with
        # a borrow of its own (e: none in from the low bits). d's high part
        # is then e - the low borrow, of which the readers need three facts:
        # d < 0 (e < 0, or e = 0 and the low part borrows), d below 2**XK (e
        # is the low borrow: 0 or 1) and d's low bits (``x_d``, exact when d
        # is below 2**XK: every reader's case).
        XK = max(SG, RB)                       # d's low bits the readers take
        if W == 1:
            x_lo = Signal(XK + 1)
            x_hi = Signal(64 - XK + 1)
            checks += [x_lo.eq(next_seq[:XK] - x_seq[:XK]),
                       x_hi.eq(next_seq[XK:] - x_seq[XK:])]
            x_d = x_lo[:XK]
            x_hi_le1 = ~x_hi[64 - XK] & (x_hi[1:64 - XK] == 0)      # e is 0 or 1
            x_gt_now = x_hi[64 - XK] | (x_lo[XK] & x_hi_le1 & ~x_hi[0])
            x_small = x_hi_le1 & (x_hi[0] == x_lo[XK])              # 0 <= d < 2**XK
        else:
            # At width 32 one chain: the ECP5's carry chain is fast and off
            # the critical path, and the split cost ~390 LUTs there.
            x_whole = Signal(65, name="x_d")
            checks += [x_whole.eq(next_seq - x_seq)]
            x_d = x_whole[:XK]
            x_gt_now = x_whole[64]
            x_small = x_whole[XK:64] == 0
        # d's bits 1..63 all zero: d is 0 (x = NEXT_SEQ) or 1 (x is the
        # last journal, RELEASE_D): one test for both
        x_d_le1 = Signal()
        m.d.comb += x_d_le1.eq(x_small & (x_d[1:] == 0))
        # x > NEXT_SEQ, x >= NEXT_SEQ and x < TAIL_SEQ: registers one cycle
        # behind x_lo and x_hi (so two behind ``small``), so that the
        # decision (VERDICT) does not wait for the 35-bit comparison with
        # HELD (ALIGN waits for them)
        x_gt_next = Signal()
        x_ge_next = Signal()
        x_lt_tail = Signal()
        checks += [x_gt_next.eq(x_gt_now),
                   x_ge_next.eq(x_gt_now | (x_d_le1 & ~x_d[0])),
                   x_lt_tail.eq(~x_gt_now & (~x_small | x_d[SG:].any() | (x_d[:SG] > held)))]
        # A descriptor ring's RELEASE (RELEASE_D): P - JOPTR a register one
        # cycle behind ``small``, P <= JOPTR and P's range checks one more,
        # so that RELEASE_D has one carry chain (D = P - JOPTR, + SIZE when
        # it wraps), not three in a row. Both settled by RELEASE_D: ALIGN
        # waits two cycles after the last shift, then EXEC.
        rel_p = layouts.ReleaseAt(small[:128]).joptr
        rel_pg = rel_p[G:G + SG]
        rel_diff = Signal(SG + 1)
        rel_past = Signal()                    # P <= JOPTR: the release wraps
        rel_p_bad = Signal()                   # off the grid, >= 2**40 or >= WRAP_AT
        checks += [
            rel_diff.eq(rel_pg - joptr),
            rel_past.eq(rel_diff[SG] | (rel_diff[:SG] == 0)),
            # in the skipped tail, or >= SIZE (WRAP_AT <= SIZE)
            rel_p_bad.eq((rel_p[:G] != 0) | rel_p[G + SG - 1:].any() | (rel_pg >= wrap_at)),
        ]
        x_from_tail = Signal(RB)               # (used on a data ring only)
        m.d.comb += x_from_tail.eq(held[:RB] - x_d[:RB])
        if mem and W > 1:
            # (width 32) a JNLRD's record count, min(COUNT, NEXT_SEQ -
            # FROM), as a register loaded every cycle: ``small`` and ``x_d``
            # hold from VERDICT through EXEC, so in EXEC it is the count of
            # EXEC's inputs, and EXEC loads RD_LEFT and RD_N from flip-flops,
            # not through the comparison's carry chain and its multiplexer
            # (the ingress state -> the count -> ``rd_left`` was a width-32
            # critical path after the thirteenth step)
            rd_n_q = Signal(RB, name="rd_n_q")
            # and RD_LEFT's two tests (READ_SEEK: none left; READ_STEP: MORE
            # after this one) as flip-flops written with RD_LEFT, in EXEC
            # from ``rd_n_q`` and in READ_STEP from RD_LEFT before its step:
            # not a 16-bit test of RD_LEFT in front of the FSM's choice and
            # the staging (RD_LEFT -> the staged TYPE was a width-32
            # critical path after the window's flags)
            rd_left_z = Signal(name="rd_left_z")
            rd_left_ge2 = Signal(name="rd_left_ge2")
            count = layouts.JnlRd(small[:128]).count
            count_lt = count[:RB] < x_d[:RB]
            if RB < len(count):
                count_lt &= count[RB:] == 0
            m.d.sync += rd_n_q.eq(Mux(count_lt, count[:RB], x_d[:RB]))
        walk_for_release = Signal()

        m.d.sync += self.nak.eq(0)    # a pulse; set in ANSWER below

        # The Ack's fields, read in ANSWER: the request has taken effect then
        # (NEXT_SEQ stepped or loaded, JOPTR/JIPTR moved, the clock loaded)
        # and the sources below hold until the next frame's body.
        ack_seq, ack_time, ack_jofs, ack_tag = (Signal(64), Signal(64), Signal(PG + G),
                                                Signal(32))
        ans_read = Signal()                    # the Ack's SEQ is sent plus n - 1
        with m.Switch(ans_from):
            with m.Case(_AckFrom.NAK_X, _AckFrom.RELEASE, _AckFrom.READ):
                # READ: the last record sent, FROM_SEQ (still in ``small``)
                # + n - 1, added by the responder as it sends the SEQ
                m.d.comb += ack_seq.eq(x_seq)
            with m.Case(_AckFrom.WRITE, _AckFrom.LOAD, _AckFrom.VIEW):
                # NEXT_SEQ steps in ANSWER, after this is read.
                # stamp_time: the journal's TIME; the clock after a load,
                # sampled in LOAD_TIME; a STATUS's NOW, sampled in VERDICT.
                # ``place``: the journal's JOFS; JIPTR for a LOAD or a view,
                # copied into it in LOAD_TIME or EXEC (``place`` is free
                # then: only a journal's ALLOC-to-ANSWER reads it), so that
                # JOFS chooses between two registers, not three (a LUT a bit
                # fewer, area on the UP5K)
                m.d.comb += [ack_seq.eq(next_seq), ack_time.eq(stamp_time),
                             ack_jofs.eq(bytes_(place))]
        with m.Switch(ans_from):
            with m.Case(_AckFrom.RELEASE, _AckFrom.READ):
                m.d.comb += ack_jofs.eq(bytes_(joptr))
        # (a STATUS's ACKS: the responder sends STATUS ACKS from the Ack's TAG)
        ctl_tag = Mux(ans_from == _AckFrom.VIEW, acks, Mux(ans_tag_ctl, ctl.tag, 0))
        m.d.comb += ack_tag.eq(Mux(ans_from == _AckFrom.READ, rd_n, ctl_tag) if mem else ctl_tag)

        # checks 4-7 of a JNLWR/JNLDESC on its control data (docs/protocol.md
        # "JNLDESC"), and the SEQ# space spent (check 9): read by VERDICT to
        # answer, and with batches by ALLOC (``place``, see there). In a
        # batch past its first descriptor the previous one's SEQ# step is
        # pending: NEXT_SEQ + 1 == 2**64 - 1.
        K = protocol.Kind
        # Registers one cycle behind their inputs, so that VERDICT's decision
        # starts from flip-flops, not from 32- and 64-bit equality trees (the
        # UP5K's critical paths ended in that decision): ``small`` holds
        # still for at least a cycle before EXEC and ALLOC (TRAILER, ALIGN,
        # ALLOC_W come first), EPOCH, NEXT_SEQ and BIDX change only in EXEC,
        # LOAD_SET and ANSWER, never in the cycle before a decision.
        kind_ok, rules_ok, epoch_ok, desc_dcrc_ok, seq_spent = (
            Signal(name=n) for n in ("kind_ok", "rules_ok", "epoch_ok", "desc_dcrc_ok",
                                     "seq_spent"))
        checks += [kind_ok.eq(ge_const(ctl.kind, K.UPDATE) & lt_const(ctl.kind, K.MARK + 1))]
        if W == 1:
            # At width 8 the KIND's rules and the DATA_CRC check in two
            # stages: each test of the control data a register of its own
            # (one cycle behind ``small``), their choice by KIND one more
            # (two behind, as ALLOC's comparisons: settled by ALLOC). As one
            # stage ABC shared the equality and zero tests of DATA_LEN and
            # LENGTH between ``rules_ok``, ``desc_dcrc_ok`` and ``fits_q``,
            # nine LUTs deep: the UP5K's critical path (29.5 ns).
            dl_zero, len_zero, dl_eq_len, dcrc_zero, k_len, k_mark = (
                Signal(name=n) for n in ("dl_zero", "len_zero", "dl_eq_len", "dcrc_zero",
                                         "k_len", "k_mark"))
            checks += [
                dl_zero.eq(ctl.data_len == 0), len_zero.eq(ctl.length == 0),
                dl_eq_len.eq(ctl.data_len == ctl.length), dcrc_zero.eq(ctl.data_crc == 0),
                k_len.eq((ctl.kind == K.UPDATE) | (ctl.kind == K.BASE)),
                k_mark.eq(ctl.kind == K.MARK),
                rules_ok.eq(Mux(k_len, dl_eq_len, dl_zero & (len_zero | ~k_mark))),
                epoch_ok.eq(ctl.epoch == epoch),
                desc_dcrc_ok.eq(~dl_zero | dcrc_zero),
            ]
        else:
            checks += [
                rules_ok.eq(Mux((ctl.kind == K.UPDATE) | (ctl.kind == K.BASE),
                                ctl.data_len == ctl.length,
                                Mux(ctl.kind == K.MARK, (ctl.data_len == 0) & (ctl.length == 0),
                                    ctl.data_len == 0))),
                epoch_ok.eq(ctl.epoch == epoch),
                desc_dcrc_ok.eq((ctl.data_len != 0) | (ctl.data_crc == 0)),
            ]
        checks += [
            # without batches NEXT_SEQ all ones: the counter's ``carry`` (its
            # low word all ones, a register) and the high word, a 33-input
            # AND instead of 64 (area, UP5K)
            seq_spent.eq(next_seq[1:].all() & (next_seq[0] | (bidx != 0)) if B > 1
                         else seq.carry & next_seq[32:].all()),
        ]
        # a JNLWR's DATA_LEN against its LENGTH (check 5; ``small`` holds its
        # control data from body byte 63 on, BLEN from HCHECK)
        wlen_ok = Signal()
        checks += [wlen_ok.eq(ctl.data_len == blen - 64)]
        # At width 32 the checks VERDICT read from ``small`` as 32-input ORs
        # in the decision's cycle are registers one cycle behind it (a
        # JNLRD's RESERVED word here, a LOAD's unknown FLAGS in
        # ``_load_checks``): ``small`` holds still in the cycle before
        # VERDICT (TRAILER or ALIGN comes first), as for the checks above.
        wide_verdict = W > 1
        jr_bad = Signal(name="jr_bad")
        if wide_verdict:
            checks += [jr_bad.eq(layouts.JnlRd(small[:128]).reserved != 0)]
        desc_checks_ok = kind_ok & rules_ok & epoch_ok & desc_dcrc_ok

        # -- ALLOC's figures, a pipeline of registers --------------------------
        # R (granules) one cycle behind ``small``/``blen``, its comparisons
        # with the ring registers one more (two behind): ALLOC decides on
        # flip-flops only. ALLOC is entered two cycles after ``small`` last
        # moved (ALLOC_W waits where TRAILER does not), and the ring
        # registers hold from the ANSWER before. (The path was: DATA_LEN ->
        # + 127 -> R <= X -> the decision -> ``place``, 61 ns on the UP5K.)
        is_desc_now = (ftype == FT.JNLDESC) if mem else Const(1, 1)
        RW = LENGTH_BITS - G + 1
        r_q = Signal(RW)
        fits_q = Signal()
        checks += [
            # ceil(DATA_LEN / 64) + 1 as one adder: + 64 before the shift;
            # a JNLWR's from its header LENGTH (control data included)
            r_q.eq(Mux(is_desc_now, (ctl.data_len[:LENGTH_BITS] + 127)[G:], (blen + 63)[G:])),
            fits_q.eq(Mux(is_desc_now, lt_const(ctl.data_len, protocol.MAX_DATA + 1),
                          bl["ge64"])),
        ]
        c_tail, c_free, c_joptr, c_gap, c_size = (
            Signal(name=f"r_le_{n}") for n in ("tail", "free", "joptr", "gap", "size"))
        ex_tail, ex_size = Signal(name="ex_tail"), Signal(name="ex_size")   # R == tail / SIZE
        j_ge = Signal(init=1)                      # JIPTR >= JOPTR
        empty_q = Signal(init=1)                   # USED == 0
        rt_q = Signal(SG)                          # R + the tail (a tail skip)
        if not mem:
            # Only EXEC reads R after ALLOC, and ``small`` holds from ALLOC to
            # EXEC, so ``r_q`` still holds it: no copy (a flip-flop with no
            # logic in front costs a logic cell). A data ring's JNLWR needs
            # the copy: its body moves ``small`` before EXEC.
            rlen = Cat(Const(0, G), r_q)
        checks += [
            c_tail.eq(le_wide(r_q, tail)), c_free.eq(le_wide(r_q, free)),
            c_joptr.eq(le_wide(r_q, joptr)), c_gap.eq(le_wide(r_q, gap)),
            c_size.eq(le_wide(r_q, size)),
            ex_tail.eq((tail[RW:] == 0) & (tail[:RW] == r_q)),
            ex_size.eq((size[RW:] == 0) & (size[:RW] == r_q)),
            j_ge.eq(jiptr >= joptr), empty_q.eq(used == 0),
            rt_q.eq(tail + r_q),
        ]
        # an exact fit at the end (JIPTR wraps to 0) and what USED grows by,
        # chosen in ALLOC for EXEC (which then adds one register to USED and
        # PLACE + R to JIPTR: one carry chain each, no comparison after)
        exact = Signal()
        used_add = Signal(SG)
        # TIME = max(CLOCK, LAST_TIME): the 64-bit comparison in two 32-bit
        # halves, registers one cycle behind (a 64-bit chain on the UP5K is
        # most of a 25 ns cycle). The CLOCK compared is the previous
        # cycle's, so ALLOC stamps CLOCK when that was past LAST_TIME (CLOCK
        # never goes back but on a LOAD TIME, and none comes between) and
        # LAST_TIME otherwise: TIME is still >= LAST_TIME and a time the
        # clock showed no later than the stamp.
        # (CLOCK wrapping past 2**64 in that cycle stamps LAST_TIME: the
        # wrapped CLOCK is below the one compared.)
        t_hi_gt, t_hi_eq, t_lo_gt, t_top = Signal(), Signal(), Signal(), Signal()
        checks += [t_hi_gt.eq(ts.now[32:] > last_time[32:]),
                     t_hi_eq.eq(ts.now[32:] == last_time[32:]),
                     t_lo_gt.eq(ts.now[:32] > last_time[:32]),
                     t_top.eq(ts.now[63])]
        now_past_last = (t_hi_gt | (t_hi_eq & t_lo_gt)) & ~(t_top & ~ts.now[63])

        small_ld_ = layouts.Load(small)
        ld_q = self._load_checks(m, locals())
        # a LOAD's SIZE after it (LOAD_SET): the SIZE word of a LOAD RING
        ld_new_size = Mux((small_ld_.flags & protocol.LoadFlag.RING).any(),
                          stamp_time[G:G + SG], size)
        # RELEASE_AT refuses: P out of range, or D against USED (D > USED
        # borrows; D == USED, leaving 0, must hold exactly when UPTO is the
        # last journal)
        rel_refused = rel_bad | rel_left[SG] | (rel_zero != rel_last)

        if mem:
            # the WRAP marker (MARK): a control data with KIND 0xFF, all else
            # 0, a word a cycle at the old JIPTR (WRAP_AT since EXEC)
            kind_at = _CTL["kind"][0]
            mark_addr = word_address(dbytes(wrap_at), W) + kcnt
            mark_data = Mux(kcnt == kind_at // W, int(protocol.Kind.WRAP) << 8 * (kind_at % W), 0)
        if wide_wr:
            # CCRC over two cycles as HCRC is: ``cd`` the data's share of
            # the beat taken, ``cv`` CCRC takes it (set below the FSM),
            # ``cr`` from CRC_INIT (the DCRC's start at body byte 64).
            # ``ccrc_look`` is CCRC with the pending term in: the CCRC
            # stamped at bytes 60..63 may follow the beat at 56 at once.
            cd, ccrc_nxt, ccrc_look = (Signal(32, name=n) for n in ("cd", "ccrc_nxt", "ccrc_look"))
            cv, cr = Signal(name="cv"), Signal(name="cr")
            m.d.comb += [ccrc_nxt.eq(cd ^ Mux(cr, crc32c_state_term(Const(CRC_INIT, 32), W),
                                              crc32c_state_term(ccrc, W))),
                         ccrc_look.eq(Mux(cv, ccrc_nxt, ccrc))]
            # the body's ring beat, stamped, and the CCRC's input (outside the
            # FSM: read in BODY only, they need no decode of the state)
            crc_in, stamped = self._stamped_w(m, locals())
            m.d.sync += [cd.eq(crc32c_data_term(crc_in, W)), cr.eq(at_data0)]
            m.d.comb += [
                wr.en.eq((take & wr_body & alloc_ok) | wr_fill),
                # (PAD pads from where the body stopped: the body's address)
                wr.addr.eq(Mux(wr_mark, mark_addr, word_address(dbytes(place) + bcnt, W))),
                wr.data.eq(Mux(wr_fill, Mux(wr_mark, mark_data, 0), stamped)),
            ]

        if wide_stamp:
            with m.If((take & to_stamp) | stamp_alloc | (stamp_status & ~resp.busy) | stamp_load):
                m.d.sync += stamp_time.eq(
                    Mux(to_stamp, Cat(stamp_time[8 * W:], beat),
                        Mux(stamp_alloc & ~now_past_last, last_time, ts.now)))

        # the ingress shifts of ``small`` (see ``to_small``); HUNT_CRC's
        # rotation and BLOAD, in the FSM, never come with either
        # (or, in the sim build, in the states: ``window_in_states``)
        if not in_states:
            with m.If(take & to_small):
                m.d.sync += small.eq(shift_in)
            with m.If(aligning):
                m.d.sync += small.eq(Cat(small[8 * W:], Const(0, 8 * W)))

        with m.FSM(name="ingress") as fsm:
            with m.State("HEADER"):
                with m.If(take):
                    # (``small`` shifts on ``to_small``, below the FSM, or
                    # here in the sim build)
                    m.d.sync += [hcnt.eq(hcnt + W), magic_ok.eq(magic_next)]
                    if in_states:
                        m.d.sync += small.eq(shift_in)
                    if W == 1:      # (width 32: ``hv``, below the FSM)
                        with m.If(lt_const(hcnt, 12)):
                            m.d.sync += hcrc.eq(hcrc_next)
                    with m.If(hcnt == 16 - W):
                        m.d.sync += rdy.eq(0)
                        m.next = "HCHECK"

            with m.State("HUNT"):
                # Bytes are dropped until MAGIC starts a full window; its HCRC
                # is then recomputed from the window (HUNT_CRC).
                # (``rdy`` is ~full_magic here: HUNT_CRC starts when it is 0)
                full_magic = (hcnt == 16) & magic_ok
                with m.If(full_magic):
                    m.d.sync += [kcnt.eq(0), hcrc.eq(CRC_INIT)]
                    m.next = "HUNT_CRC"
                with m.Elif(take):
                    m.d.sync += magic_ok.eq(magic_next)
                    if in_states:
                        m.d.sync += small.eq(shift_in)
                    hcnt_next = Mux(hcnt < 16, hcnt + W, hcnt)
                    with m.If(hcnt < 16):
                        m.d.sync += hcnt.eq(hcnt + W)
                    # the window after this beat full and starting with MAGIC
                    m.d.sync += rdy.eq(~((hcnt_next == 16) & magic_next))

            with m.State("HUNT_CRC"):
                # The window rotates by a byte per cycle, 16 times in all, so
                # it is back in place at the end; the oldest byte is always
                # at the bottom (no 16-way byte mux), the first 12 go into HCRC.
                m.d.sync += kcnt.eq(kcnt + 1)
                if W == 1:          # (width 32: on ``sm_rot``, below the FSM)
                    m.d.sync += small[128:].eq(Cat(win[8 * W:], win[:8 * W]))
                m.d.comb += crc_hunt.eq(1)
                if W == 1:          # (width 32: ``hv``, below the FSM)
                    with m.If(lt_const(kcnt, 12 // W)):
                        m.d.sync += hcrc.eq(hunt_crc_next)
                with m.If(kcnt == 16 // W - 1):
                    m.next = "HCHECK"

            with m.State("HCHECK"):
                # The header's checks are registers one cycle behind the
                # window (``h_*``, above): HCHECK spends its first cycle
                # waiting for them (the window and HCRC hold still here).
                magic_ok, hdr_crc_ok, length_ok, type_ok = h_magic, h_crc, h_len, h_type
                # A NAK is staged in ``ans`` and ALLOC overwrites
                # ``stamp_time`` (STATUS NOW); the responder reads them while
                # it sends (no second copy of the answer), so wait until the
                # previous answer is out if this frame would change what it
                # reads. The window holds still. (The HEARTBEAT token is
                # sent from ``ans``, not from ``small``.)
                # (``h_pass``: the header passes and the answer staged is
                # not a STATUS, a register beside the checks)
                m.d.sync += h_settled.eq(1)
                with m.If(h_settled & (~resp.busy | h_pass)):
                    m.d.sync += h_settled.eq(0)
                    m.d.sync += [ftype.eq(hdr.type), blen.eq(hdr.length[:LENGTH_BITS]),
                                 *(bl[n].eq(fn(hdr.length[:LENGTH_BITS]))
                                   for n, (fn, _) in blen_fns.items()),
                                 hcnt.eq(0), kcnt.eq(0), hcrc.eq(CRC_INIT), bcnt.eq(0),
                                 ccrc.eq(CRC_INIT),
                                 hello_bad.eq(0), nul_seen.eq(0)]
                    if W > 1:
                        m.d.sync += regions(Const(0, LENGTH_BITS))
                        m.d.sync += [bend.eq(hdr.length[:LENGTH_BITS] + (W - 1)),
                                     end_hit.eq((hdr.length[:LENGTH_BITS] != 0)   # 1..W bytes
                                                & lt_const(hdr.length[:LENGTH_BITS], W + 1))]
                    # A NAK is staged in HNAK, the cycle after: the staged
                    # answer's enables do not wait for this decision
                    with m.If(~magic_ok | ~hdr_crc_ok):
                        # drop the oldest byte (beat) and look for the next MAGIC
                        m.d.sync += hcnt.eq(16 - W)
                        with m.If(hunting):
                            # (a window one beat short)
                            m.d.sync += [rdy.eq(1), to_small.eq(1)]
                            m.next = "HUNT"
                        with m.Else():
                            m.d.sync += hunting.eq(1)
                            m.next = "HNAK"
                    with m.Elif(~h_form | ~length_ok | ~type_ok):
                        with m.If(~length_ok):
                            m.d.sync += [hcnt.eq(16 - W), hunting.eq(1)]
                        with m.Else():
                            m.d.sync += hunting.eq(0)
                        m.next = "HNAK"
                    with m.Else():
                        m.d.sync += hunting.eq(0)
                        with m.If(h_zero):
                            if wide_stamp:
                                # (a STATUS is answered exactly at LENGTH 0)
                                m.d.sync += stamp_status.eq(hdr.type == FT.STATUS)
                            m.next = "VERDICT"
                        with m.Elif(Const(int(mem)) & h_wr):
                            m.next = "ALLOC_W"
                        with m.Else():
                            m.d.sync += [rdy.eq(1), to_small.eq(1), to_stamp.eq(0)]
                            m.next = "BODY"

            with m.State("HNAK"):
                # HCHECK's NAK BAD_FRAME of a header it refused: the window
                # and the checks it decided on (``h_*``) hold still, and the
                # responder is idle (HCHECK waited for it). HCHECK left HCNT
                # at 16 - W when the hunt goes on from this window (MAGIC,
                # HCRC or LENGTH bad), at 0 when the frame's body is skipped.
                # TYPE is 0 for a header out of sync (MAGIC or HCRC bad).
                m.d.sync += nak(ST.BAD_FRAME, Mux(h_magic & h_crc, hdr.type, 0),
                                after_=Mux(hcnt == 0, _After.SKIP, _After.HUNT))
                m.next = "ANSWER"

            with m.State("ALLOC_W"):
                # two cycles (one after a TRAILER of one beat) for R and its
                # comparisons to follow ``small`` or ``blen`` (see ``r_q``)
                m.d.sync += settle.eq(1)
                with m.If(settle):
                    m.d.sync += settle.eq(0)
                    if wide_stamp:
                        # (at W > 1 only ALLOC_W leads to ALLOC; BIDX holds)
                        m.d.sync += stamp_alloc.eq(bidx == 0)
                    m.next = "ALLOC"

            with m.State("ALLOC"):
                # docs/protocol.md "Allocation": a JNLWR's R from the header
                # LENGTH, before the first body byte (a body whose DATA_LEN
                # disagrees is NAKed anyway); a JNLDESC's from DATA_LEN, once
                # the body is in. All in granules of 64 bytes, every figure a
                # register (``r_q`` and the comparisons after it).
                is_desc = is_desc_now
                # an empty ring rewinds only when its tail cannot take R
                fits_tail = c_tail
                rew = empty_q & ~fits_tail
                if mem:
                    m.d.sync += rlen.eq(Cat(Const(0, G), r_q))
                m.d.sync += [wrap.eq(0),
                             alloc_ok.eq(0), rewind.eq(rew),
                             alloc_full.eq(0),
                             # an accepted journal is placed at 0 exactly
                             # when the tail cannot take it (a rewind or a
                             # tail skip; JOPTR - JIPTR <= the tail)
                             exact.eq(Mux(fits_tail, ex_tail, ex_size)),
                             used_add.eq(Mux(fits_tail | empty_q, r_q, rt_q))]
                # With batches a JNLDESC's JOFS is written only when EXEC
                # will take it (it fits, checks 4-7 pass, the SEQ# space is
                # not spent: the same figures VERDICT decides on), so that
                # ``place`` keeps the JOFS of the batch's last one taken for
                # the answer of a batch stopped at a later one. (Written in
                # EXEC instead, JOFS put a multiplexer in front of EXEC's
                # JIPTR adder: the same LCs on the UP5K, 16.4 MHz, not 17.5.)
                place_here = ~is_desc if B > 1 else Const(1, 1)
                if mem or B == 1:
                    with m.If(place_here):
                        m.d.sync += place.eq(Mux(rew, 0, jiptr))

                def place_taken(value):
                    if B > 1:
                        with m.If(is_desc & desc_checks_ok & ~seq_spent):
                            m.d.sync += place.eq(value)
                # a batch's TIME is taken once, at its first descriptor
                if wide_stamp:
                    m.d.sync += stamp_alloc.eq(0)        # (ALLOC lasts a cycle)
                else:
                    with m.If(bidx == 0):
                        m.d.sync += stamp_time.eq(Mux(now_past_last, ts.now, last_time))
                # a ring of the other kind is refused at VERDICT (WRONG_MODE)
                with m.If(fits_q & c_size & (is_desc == desc)):
                    with m.If(rew):
                        m.d.sync += alloc_ok.eq(1)          # empty: all of SIZE from 0
                        place_taken(0)
                    with m.Elif(~c_free):
                        m.d.sync += alloc_full.eq(1)
                    with m.Elif(j_ge):
                        with m.If(fits_tail):
                            m.d.sync += alloc_ok.eq(1)
                            place_taken(jiptr)
                        with m.Elif(c_joptr):
                            m.d.sync += [alloc_ok.eq(1), wrap.eq(1)]
                            if mem or B == 1:
                                with m.If(place_here):
                                    m.d.sync += place.eq(0)
                            place_taken(0)
                        with m.Else():
                            m.d.sync += alloc_full.eq(1)
                    with m.Elif(c_gap):
                        m.d.sync += alloc_ok.eq(1)
                        place_taken(jiptr)
                    with m.Else():
                        m.d.sync += alloc_full.eq(1)
                if mem:
                    with m.If(is_desc):
                        m.next = "VERDICT"
                    with m.Else():
                        m.d.sync += [rdy.eq(1), to_small.eq(1), to_stamp.eq(0)]
                        if wide_wr:
                            m.d.sync += wr_body.eq(1)      # (a JNLWR: ALLOC's only BODY)
                        m.next = "BODY"
                else:
                    m.next = "VERDICT"

            with m.State("BODY"):
                self._body(m, locals())

            with m.State("TRAILER"):
                with m.If(take):
                    if W == 1:
                        # (kcnt is 0 from HCHECK on: BODY does not count with it)
                        m.d.sync += [bcrc_bad.eq(Mux(kcnt == 0, 0, bcrc_bad)
                                                 | (beat != (bcrc ^ CRC_INIT).word_select(kcnt[:2], 8))),
                                     kcnt.eq(kcnt + 1),
                                     # (``ccrc`` and ``small`` hold still here)
                                     dcrc_bad.eq(ctl.data_crc != (dcrc ^ CRC_INIT))]
                        trailer_done = kcnt == 3
                    else:
                        # the BCRC's bytes: the body's last beat from lane
                        # KLAST on, then this beat (W = 4: always one beat),
                        # padded as HCRC is (``eb``, above)
                        rx_bcrc = Cat(tailbeat, beat).bit_select(Cat(Const(0, 3), klast), 32)
                        m.d.sync += [eb.eq(crc32c_pad_lanes(rx_bcrc ^ CRC_INIT, klast, W)),
                                     ed.eq(crc32c_pad_lanes(ctl.data_crc ^ CRC_INIT, klast, W)),
                                     dz.eq(ctl.data_crc != 0)]
                        trailer_done = Const(1)
                    with m.If(trailer_done):
                        m.d.sync += rdy.eq(0)   # (no state after TRAILER takes a beat)
                        with m.If(Const(int(mem)) & (ftype == FT.JNLWR) & alloc_ok
                                  & (bcnt != rlen)):
                            if wide_wr:
                                m.d.sync += wr_fill.eq(1)
                            m.next = "PAD" if mem else "VERDICT"
                        # (BCNT is LENGTH rounded up to a beat: at W > 1 a
                        # body of 29..31 bytes is already in place)
                        with m.Elif(bl["lt32"] if W == 1 else lt_const(bcnt, 32)):
                            m.d.sync += aligning.eq(lt_const(bcnt, 32))
                            m.next = "ALIGN"
                        with m.Elif(ftype == FT.JNLDESC):
                            if W == 1:
                                # (the 4 BCRC bytes were R's two cycles)
                                m.next = "ALLOC"
                            else:
                                m.d.sync += settle.eq(1)
                                m.next = "ALLOC_W"
                        with m.Else():
                            m.next = "VERDICT"

            if mem:   # (states of a data ring)
                with m.State("PAD"):
                    # zero padding up to R (docs/protocol.md "Records"): the ring
                    # image between JOPTR and JIPTR equals the model's
                    if not wide_wr:
                        m.d.comb += [wr.addr.eq(word_address(dbytes(place) + bcnt, W)),
                                     wr.data.eq(0), wr.en.eq(1)]
                    m.d.sync += bcnt.eq(bcnt_next)
                    with m.If(bcnt_next == rlen):
                        if wide_wr:
                            m.d.sync += wr_fill.eq(0)
                        m.next = "VERDICT"

            with m.State("ALIGN"):
                # shift a body shorter than 32 bytes down to bit 0 of ``small``,
                # then two cycles for ``x_d`` and its comparisons to follow it
                # (``small`` shifts on ``aligning``, below the FSM: BCNT < 32)
                m.d.sync += [bcnt.eq(bcnt_next), aligning.eq(next_lt(32))]
                if in_states:
                    with m.If(lt_const(bcnt, 32)):
                        m.d.sync += small.eq(Cat(small[8 * W:], Const(0, 8 * W)))
                with m.If(bcnt == 32 + W):
                    m.next = "VERDICT"

            if B > 1:
                with m.State("BLOAD"):
                    # descriptor BIDX's bytes 32..63 from the batch RAM into
                    # ``small``, a word a cycle (the RAM answers a cycle late)
                    m.d.comb += [bram_r.addr.eq(Cat(kcnt[:5 - LW], bidx)), bram_r.en.eq(1)]
                    m.d.sync += kcnt.eq(kcnt + 1)
                    if W == 1:      # (width 32: on ``sm_bload``, below the FSM)
                        with m.If(kcnt != 0):
                            m.d.sync += small.eq(Cat(small[8 * W:], bram_r.data))
                    with m.If(kcnt == 32 // W):
                        m.next = "ALLOC_W"

            with m.State("VERDICT"):
                # The request's decision, from registered checks only: the
                # answer is staged and the one-hot VERDICT says what EXEC,
                # the next cycle, does to the engine's state. The responder
                # still emits the previous answer: wait, so that the state it
                # reads (STATUS, HELLO) holds still.
                bcrc_ok = bl["zero"] | ~bcrc_bad
                small_jr = layouts.JnlRd(small[:128])
                small_ld = layouts.Load(small)
                m.d.sync += kcnt.eq(0)
                with m.If(~resp.busy):
                    # (HELLO, HEARTBEAT and STATUS answers stage no NAK or step)
                    m.d.sync += [ans_flags.eq(0), ans_nak.eq(0), ans_step.eq(0), verdict.eq(0)]
                    if wide_verdict:
                        # every staging register loads in this cycle, whatever
                        # the decision (an ACK's figures, overwritten below;
                        # the outcomes that stage nothing here, a JNLRD's read,
                        # a RELEASE's walk or RELEASE_D, stage their answer in
                        # later states): their clock enable is the state and
                        # BUSY, not the whole chain of checks (``small`` ->
                        # the checks -> the enable of ``ans_len`` was the
                        # width-32 critical path after the ninth step)
                        m.d.sync += ack(ftype, _AckFrom.ZERO)
                    if wide_stamp:
                        m.d.sync += stamp_status.eq(0)
                    m.next = "EXEC"
                    with m.If(~bcrc_ok):
                        m.d.sync += nak(ST.BAD_BCRC, ftype,
                                        tag=((ftype == FT.JNLWR) | (ftype == FT.JNLDESC))
                                        & bl["ge64"])
                    with m.Else():
                        with m.Switch(ftype):
                            with m.Case(FT.JNLWR):
                                self._verdict_journal(m, locals(), FT.JNLWR)
                            with m.Case(FT.JNLDESC):
                                self._verdict_journal(m, locals(), FT.JNLDESC)
                            with m.Case(FT.ACK, FT.NAK, FT.STATUS_RESP):
                                m.d.sync += nak(ST.BAD_TYPE, ftype)
                            with m.Case(FT.HELLO):
                                with m.If(bl["hello"] & ~hello_bad):
                                    m.d.sync += [ans_type.eq(FT.HELLO), ans_len.eq(80),
                                                 ans_from.eq(_AckFrom.VIEW),
                                                 ans_src.eq(Source.HELLO), after.eq(_After.HEADER)]
                                with m.Else():
                                    m.d.sync += nak(ST.BAD_REQUEST, ftype)
                            with m.Case(FT.HEARTBEAT):
                                with m.If(bl["token"]):
                                    # the token goes out as the Ack's SEQ (x_seq)
                                    m.d.sync += [ans_type.eq(FT.HEARTBEAT), ans_len.eq(blen),
                                                 ans_from.eq(_AckFrom.NAK_X),
                                                 ans_src.eq(Source.ECHO), after.eq(_After.HEADER)]
                                with m.Else():
                                    m.d.sync += nak(ST.BAD_REQUEST, ftype)
                            with m.Case(FT.STATUS):
                                with m.If(bl["zero"]):
                                    m.d.sync += [ans_type.eq(FT.STATUS_RESP), ans_len.eq(80),
                                                 ans_from.eq(_AckFrom.VIEW),
                                                 ans_src.eq(Source.STATUS), after.eq(_After.HEADER)]
                                    if not wide_stamp:
                                        m.d.sync += stamp_time.eq(ts.now)
                                with m.Else():
                                    m.d.sync += nak(ST.BAD_REQUEST, ftype)
                            with m.Case(FT.RELEASE):
                                self._verdict_release(m, locals())
                            with m.Case(FT.LOAD):
                                self._verdict_load(m, locals())
                            with m.Case(FT.JNLRD):
                                if not mem:
                                    # no journal data to read (docs/protocol.md "JNLRD")
                                    m.d.sync += nak(ST.WRONG_MODE, ftype)
                                else:
                                    with m.If(desc):
                                        m.d.sync += nak(ST.WRONG_MODE, ftype)
                                    with m.Elif(~bl["jnlrd"]
                                                | (jr_bad if wide_verdict
                                                   else (small_jr.reserved != 0))):
                                        m.d.sync += nak(ST.BAD_REQUEST, ftype)
                                    with m.Elif(x_lt_tail | x_gt_next):
                                        m.d.sync += nak(ST.NOT_FOUND, ftype, seq_x=True)
                                    with m.Else():
                                        m.d.sync += verdict[_V.READ].eq(1)

            with m.State("EXEC"):
                # VERDICT's decision takes effect: each bit of the one-hot
                # VERDICT enables its own registers (the answer is staged
                # already), so no priority chain of checks sits in front of
                # the enables of the ring registers, USED, NEXT_SEQ and HELD
                # (WRAP_AT's in ``_wrap_at``, below the FSM: VERDICT is
                # cleared here, so that a bit set is this state).
                # Nothing VERDICT read has moved: VERDICT writes only the
                # answer's staging (and a STATUS's NOW, which no commit reads).
                m.next = "ANSWER"
                m.d.sync += verdict.eq(0)
                # a STATUS's or HELLO's JIPTR, sent from the Ack's JOFS
                # (``ack_jofs``; nothing here moves JIPTR for them)
                with m.If(ans_from == _AckFrom.VIEW):
                    m.d.sync += place.eq(jiptr)
                if mem:
                    with m.If(verdict[_V.TAKE_WR]):
                        self._exec_journal(m, locals(), FT.JNLWR)
                with m.If(verdict[_V.TAKE_DESC]):
                    self._exec_journal(m, locals(), FT.JNLDESC)
                with m.If(verdict[_V.FULL]):
                    m.d.sync += self.full.eq(1)
                with m.If(verdict[_V.RELEASE_D]):
                    m.next = "RELEASE_D"
                with m.If(verdict[_V.LOAD]):
                    m.next = "LOAD_SET"
                if mem:
                    small_jr = layouts.JnlRd(small[:128])
                    with m.If(verdict[_V.READ]):
                        # min(COUNT, NEXT_SEQ - FROM) records from FROM_SEQ
                        if W > 1:
                            n = rd_n_q
                        else:
                            avail = Signal(RB)
                            m.d.comb += avail.eq(x_d[:RB])
                            count = small_jr.count
                            count_lt = (count[:RB] < avail)
                            if RB < len(count):
                                count_lt &= count[RB:] == 0
                            n = Mux(count_lt, count[:RB], avail)
                        if W > 1:
                            m.d.sync += [rd_left_z.eq(rd_n_q == 0), rd_left_ge2.eq(ge_const(rd_n_q, 2))]
                        m.d.sync += [rd_left.eq(n), rd_n.eq(n),
                                     rd_cnt.eq(x_from_tail),
                                     walk_off.eq(dbytes(joptr)),
                                     walk_for_release.eq(0), dl_step.eq(0)]
                        m.next = "READ_SEEK"
                    with m.If(verdict[_V.WALK]):
                        # a data ring's RELEASE: free the records from JOPTR
                        m.d.sync += [rd_cnt.eq(x_from_tail), walk_for_release.eq(1),
                                     walk_off.eq(dbytes(joptr)), dl_step.eq(0)]
                        m.next = "WALK"

            if mem:   # (states of a data ring)
                with m.State("MARK"):
                    # the WRAP marker: a control data with KIND 0xFF, all else 0
                    if not wide_wr:
                        m.d.comb += [wr.addr.eq(mark_addr), wr.data.eq(mark_data), wr.en.eq(1)]
                    m.d.sync += kcnt.eq(kcnt + 1)
                    with m.If(kcnt == 64 // W - 1):
                        if wide_wr:
                            m.d.sync += [wr_fill.eq(0), wr_mark.eq(0)]
                        m.next = "ANSWER"

            with m.State("RELEASE_D"):
                self._release_d(m, locals())

            with m.State("RELEASE_W"):
                # a cycle for ``rel_left`` (USED - D) and ``rel_zero`` to follow RELEASE_D
                m.d.sync += rel_go.eq(1)
                m.next = "RELEASE_AT"

            with m.State("RELEASE_AT"):
                self._release_at(m, locals())

            with m.State("LOAD_SET"):
                self._load_set(m, locals())

            with m.State("LOAD_TIME"):
                # the LOAD's ACK TIME: the clock the cycle after the load;
                # its JOFS: JIPTR after the load (``ack_jofs``)
                m.d.sync += place.eq(jiptr)
                if wide_stamp:
                    m.d.sync += stamp_load.eq(0)
                else:
                    m.d.sync += stamp_time.eq(ts.now)
                m.next = "ANSWER"

            with m.State("ANSWER"):
                with m.If(~resp.busy):
                    m.d.comb += resp.start.eq(1)
                    m.d.sync += [bcnt.eq(0), kcnt.eq(0), hcrc.eq(CRC_INIT),
                                 ans.seq.eq(ack_seq), ans.time.eq(ack_time),
                                 ans.jofs.eq(ack_jofs), ans.tag.eq(ack_tag),
                                 ans_read.eq(ans_from == _AckFrom.READ)]
                    # counted here, not where the NAK is decided: a STATUS_RESP
                    # still being sent must show the NAKS of its own moment
                    with m.If(ans_nak):
                        m.d.sync += naks.eq(naks + 1)
                    m.d.sync += self.nak.eq(ans_nak)
                    # an accepted JNLWR takes its SEQ# here, as its ACK is
                    # built (ACK SEQ = NEXT_SEQ, no 64-bit decrementer)
                    # (and so does the last one taken of a batch NAKed at a
                    # later one: a NAK from WRITE, "JNLDESC batches")
                    with m.If(ans_step):
                        m.d.comb += seq.step.eq(1)
                        m.d.sync += held.eq(held + 1)
                    if B > 1:
                        m.d.sync += bidx.eq(0)
                    with m.Switch(after):
                        with m.Case(_After.HEADER):
                            m.d.sync += [rdy.eq(1), to_small.eq(1)]
                            m.next = "HEADER"
                        with m.Case(_After.HUNT):
                            m.d.sync += [rdy.eq(~((hcnt == 16) & magic_ok)), to_small.eq(1)]
                            m.next = "HUNT"
                        with m.Case(_After.SKIP):
                            m.d.sync += [rdy.eq(~bl["zero"]), to_small.eq(0)]
                            m.next = "SKIP"

            with m.State("SKIP"):
                # drop the body (``bcnt`` up to LENGTH, from 0 after ANSWER)
                # and then its 4 BCRC bytes (``kcnt``): no counter of its own
                # (``rdy`` is ~LENGTH = 0 here)
                with m.If(bl["zero"]):
                    m.d.sync += [rdy.eq(1), to_small.eq(1)]
                    m.next = "HEADER"
                with m.Elif(take):
                    if W == 1:
                        with m.If(bcnt != blen):
                            m.d.sync += bcnt.eq(bcnt_next)
                        with m.Else():
                            m.d.sync += kcnt.eq(kcnt + 1)
                            with m.If(kcnt == 3):
                                m.d.sync += to_small.eq(1)
                                m.next = "HEADER"
                    else:
                        # whole beats up to the body's last, then the one
                        # holding the rest of the BCRC (W = 4)
                        with m.If(bcnt[LW:] != bend[LW:]):
                            m.d.sync += bcnt.eq(bcnt_next)
                        with m.Else():
                            m.d.sync += to_small.eq(1)
                            m.next = "HEADER"

            # -- record walk: DATA_LEN of the record at walk_off -------------
            if mem:   # (states of a data ring)
                with m.State("WALK"):
                    with m.If((dl_step != 0) & (dl_step <= 4 // W)):
                        if W == 1:
                            m.d.sync += dl.word_select((dl_step - 1)[:2], 8).eq(rd.data)
                        else:
                            m.d.sync += dl.eq(rd.data)     # DATA_LEN is one word
                    m.d.sync += dl_step.eq(dl_step + 1)
                    with m.If(dl_step == 4 // W + _WALK_SETTLE):
                        m.d.sync += dl_step.eq(0)
                        with m.If(walk_for_release):
                            m.next = "RELEASE_STEP"
                        with m.Else():
                            m.next = "READ_STEP"

            if mem:   # (states of a data ring)
                with m.State("RELEASE_STEP"):
                    # docs/protocol.md "RELEASE": free TAIL_SEQ..UPTO in order
                    at_wrap = walk_at_wrap
                    DB = RB - G + 1                # a data ring's sizes in granules
                    # (USED - R - the skipped tail, from registers; R + tail
                    # as a register of its own mapped to 1 116 LUT4 more in
                    # Yosys, the walk alone at width 32: docs/hardware.md)
                    m.d.sync += [
                        joptr.eq(walk_next[G:]), walk_off.eq(walk_next),
                        used.eq(Mux(at_wrap, walk_used_w, walk_used)
                                if W > 1 else
                                used - walk_r[G:] - Mux(at_wrap, size[:DB] - wrap_at[:DB], 0)),
                        held.eq(held - 1),
                        self.full.eq(0),
                    ]
                    # (WRAP_AT: ``_wrap_at``)
                    with m.If(rd_cnt == 0):
                        m.d.sync += ack(FT.RELEASE, _AckFrom.RELEASE)
                        m.next = "ANSWER"
                    with m.Else():
                        m.d.sync += rd_cnt.eq(rd_cnt - 1)
                        m.next = "WALK"

            if mem:   # (states of a data ring)
                with m.State("READ_SEEK"):
                    with m.If(rd_cnt == 0):
                        with m.If(rd_left_z if W > 1 else rd_left == 0):
                            m.d.sync += ack(FT.JNLRD, _AckFrom.READ)
                            m.next = "ANSWER"
                        with m.Else():
                            m.next = "WALK"
                    with m.Else():
                        m.next = "WALK"

            if mem:   # (states of a data ring)
                with m.State("READ_STEP"):
                    # either skip a record below FROM_SEQ or emit it
                    m.d.sync += walk_off.eq(walk_next)
                    with m.If(rd_cnt == 0):
                        m.d.sync += [ans_type.eq(FT.JNLWR),
                                     ans_flags.eq(Mux(rd_left_ge2 if W > 1 else ge_const(rd_left, 2),
                                                      int(protocol.FrameFlag.MORE), 0)),
                                     ans_len.eq(dl[:LENGTH_BITS] + 64), ans_src.eq(Source.RING),
                                     ans_base.eq(walk_off),
                                     rd_left.eq(rd_left - 1)]
                        if W > 1:
                            m.d.sync += [rd_left_z.eq(rd_left == 1),
                                         rd_left_ge2.eq(ge_const(rd_left, 3))]
                        m.next = "READ_START"
                    with m.Else():
                        m.d.sync += rd_cnt.eq(rd_cnt - 1)
                        m.next = "READ_SEEK"

            if mem:   # (states of a data ring)
                with m.State("READ_START"):
                    # the staged description reaches the responder one cycle late
                    m.d.comb += resp.start.eq(1)
                    m.next = "READ_WAIT"

            if mem:   # (states of a data ring)
                with m.State("READ_WAIT"):
                    with m.If(~resp.busy):
                        m.next = "READ_SEEK"

        # The registered checks and figures (``checks``: HCHECK's ``h_*``,
        # ALLOC's R and its comparisons, EXEC's, a LOAD's ``ld_*``, a
        # RELEASE's, NEXT_SEQ - x, FREE, the tail, the gap, CLOCK against
        # LAST_TIME) load every cycle, but in the sim build
        # (``lazy_checks``) only outside HEADER and BODY, where a frame's
        # bytes stream in and ``small`` moves every beat. Every reader is
        # at least a cycle past the last of those beats (HCHECK waits a
        # cycle, TRAILER, ALIGN or ALLOC_W comes before ALLOC and VERDICT,
        # RELEASE_D/W before RELEASE_AT), so it reads what it read when
        # they loaded every cycle; and what FREE, the tail and the gap
        # follow (SIZE, USED, JIPTR, JOPTR) holds in HEADER and BODY, so
        # they hold settled there (the STATUS view reads FREE while the
        # next header comes in). The sim's Verilator model then skips
        # their logic in 80 of a descriptor's ~89 cycles (docs/sim.md,
        # "Harness speed", 2026-12-07 (3)).
        if _LAZY_CHECKS:
            # (a named wire: sim/build.py computes the checks' inputs inside
            # the blocks it enables, ``_checks_inline``)
            checks_en = Signal()
            m.d.comb += checks_en.eq(~fsm.ongoing("HEADER") & ~fsm.ongoing("BODY"))
            with m.If(checks_en):
                m.d.sync += checks
        self._wrap_at(m, locals())
        if W > 1:
            # KCNT at width 32: it counts in HUNT_CRC, BLOAD and MARK only,
            # from 0, and is 0 in every other state, so it needs no clear of
            # its own in HUNT, HCHECK, VERDICT and ANSWER: it is loaded every
            # cycle, KCNT + 1 in those three states up to their last count
            # and 0 elsewhere (the last count's 0 included). It was loaded in
            # seven states, its clock enable the ingress state -> HCHECK's
            # and HUNT's decisions -> the enable (named at width 32 once
            # VERDICT's checks were off the critical path). This overrides
            # the FSM's assignments above, which width 8 keeps.
            k_run = fsm.ongoing("HUNT_CRC") & (kcnt != 16 // W - 1)
            if B > 1:
                k_run |= fsm.ongoing("BLOAD") & (kcnt != 32 // W)
            if mem:
                k_run |= fsm.ongoing("MARK") & (kcnt != 64 // W - 1)
            m.d.sync += kcnt.eq(Mux(k_run, kcnt + 1, 0))

            # The CRCs' second cycle (``hd_full`` above): the flags of the
            # cycle's take, then the registers' loop from them. Nothing in
            # the FSM writes HCRC or CCRC in the cycle after such a take
            # (HEADER, HUNT_CRC, BODY or TRAILER follow).
            m.d.sync += [
                hv.eq((take & ((fsm.ongoing("HEADER") & lt_const(hcnt, 12))
                               | fsm.ongoing("BODY")))
                      | (fsm.ongoing("HUNT_CRC") & lt_const(kcnt, 12 // W))),
                h_last.eq(fsm.ongoing("BODY") & end_hit),
            ]
            with m.If(hv):
                m.d.sync += hcrc.eq(crc32c_state_term(hcrc, W) ^ Mux(h_last, hd_last, hd_full))
            # (read from VERDICT on, after TRAILER; the CRC32C of no data
            # is 0: a DCRC over bytes 64.. only)
            m.d.comb += [bcrc_bad.eq(bcrc != eb), dcrc_bad.eq(Mux(bl["ge65"], ccrc != ed, dz))]
            if wide_wr:
                m.d.sync += cv.eq(fsm.ongoing("BODY") & take & ~at_ccrc)
                with m.If(cv):
                    m.d.sync += ccrc.eq(ccrc_nxt)

        if W > 1:
            # (width 32) HUNT_CRC's rotation of the window and BLOAD's words
            # into ``small`` on two flip-flops set a cycle ahead, as
            # ``aligning`` is, not in the FSM: ``sm_rot`` is 1 exactly in
            # HUNT_CRC, ``sm_bload`` exactly in BLOAD past KCNT 0 (KCNT is 0
            # on entering either). The decode of the ingress state in front
            # of the 256 flip-flops' multiplexer (the state -> ``small`` was
            # a width-32 critical path after the fourteenth step's first
            # changes, docs/hardware.md "Timing closure, fourteenth step")
            # is gone.
            sm_rot = Signal(name="sm_rot")
            m.d.sync += sm_rot.eq((fsm.ongoing("HUNT") & (hcnt == 16) & win_magic)
                                  | (fsm.ongoing("HUNT_CRC") & (kcnt != 16 // W - 1)))
            with m.If(sm_rot):
                m.d.sync += small[128:].eq(Cat(win[8 * W:], win[:8 * W]))
            if B > 1:
                sm_bload = Signal(name="sm_bload")
                m.d.sync += sm_bload.eq(fsm.ongoing("BLOAD") & (kcnt != 32 // W))
                with m.If(sm_bload):
                    m.d.sync += small.eq(Cat(small[8 * W:], bram_r.data))

        # ``small`` moves (every write above: a beat shifted in, ALIGN's
        # shift, HUNT_CRC's rotation of the window, BLOAD's words), and the
        # window's LENGTH after the move: the bytes a beat up
        if W > 1:
            small_en = (take & to_small) | aligning | sm_rot
            if B > 1:
                small_en |= sm_bload
        else:
            small_en = (take & to_small) | aligning | fsm.ongoing("HUNT_CRC")
            if B > 1:
                small_en |= fsm.ongoing("BLOAD") & (kcnt != 0)
        len_up = layouts.Header(Cat(win[8 * W:], Const(0, 8 * W))).length
        if not in_states:
            with m.If(small_en):
                m.d.sync += [len_le[c].eq(lt_const(len_up, c + 1)) for c in max_lens]

        m.d.comb += [
            resp.echo.eq(ans.seq),
            # rd_n holds while the Ack is sent (it changes only in EXEC,
            # which waits for the responder)
            resp.ack_add.eq(Mux(ans_read, rd_n_m1, 0)),
        ]
        return m

    # -- BODY, split out for reading ------------------------------------------
    def _stamped_w(self, m, v):
        """Width 32 with data memory: the body beat as the ring takes it
        (``stamped``) and as the CCRC/DCRC sees it (``crc_in``; the CCRC
        stamped is ``ccrc_look``, the pending step in). Built outside the FSM:
        only BODY reads them, so no decode of the state need sit in front
        of the ring's write data.

        Speculative ring write, stamped (SEQ#, TIME, JOFS, CCRC); the lanes
        after the data's end are written as zeros (the record's padding).
        ``crc_in`` is the stamped beat but at bytes 60..63, where the CCRC
        itself is written and the CRC does not move, so that the CRC's
        input multiplexer does not have the CRC register among its inputs
        (a loop the enable breaks but synthesis times). Its choice is made
        from the region registers (``at_seq``..., set a beat ahead), not
        from comparisons on BCNT."""
        W, LW = self.W, self.LW
        bcnt, next_seq, stamp_time, ccrc = (v[k] for k in ("bcnt", "next_seq", "stamp_time",
                                                            "ccrc"))
        place = v["dbytes"](v["place"])            # JOFS in bytes (a data ring's)
        at_seq, at_time, at_place, at_ccrc, at_data0 = (
            v[k] for k in ("at_seq", "at_time", "at_place", "at_ccrc", "at_data0"))
        sel = bcnt[LW:3]
        crc_in = Signal(8 * W)
        with m.If(at_seq):
            m.d.comb += crc_in.eq(next_seq.word_select(sel, 8 * W))
        with m.Elif(at_time):
            m.d.comb += crc_in.eq(stamp_time.word_select(sel, 8 * W))
        with m.Elif(at_place):
            m.d.comb += crc_in.eq(Cat(place, Const(0, 64 - len(place))).word_select(sel, 8 * W))
        with m.Else():
            m.d.comb += crc_in.eq(v["body_beat"])
        stamped = Mux(at_ccrc, (ccrc ^ CRC_INIT).word_select(bcnt[LW:2], 8 * W)
                      if W < 4 else v["ccrc_look"] ^ CRC_INIT, crc_in)
        return crc_in, stamped

    def _body(self, m, v):
        """BODY: a beat per cycle (docs/hardware.md, "How a JNLWR goes through").

        At width 32 each lane is body byte BCNT + lane (BCNT is a multiple
        of 4, so a beat never straddles two control fields); the last beat
        holds KLAST body bytes and the start of the BCRC. The width-8 branch
        is the byte-serial logic kept as it was, not the wide one at W = 1:
        the iCEBreaker build is near full (93 % of its LCs), and this way its netlist
        is unchanged by width 32."""
        W, LW = self.W, self.LW
        (take, bcnt, bcnt_next, blen, bcrc, small, hello_bad, nul_seen, ccrc,
         b_lt16, b_lt60, b_lt64, next_seq, stamp_time, place, wr, alloc_ok, ftype,
         beat, mem, to_small, to_stamp) = (v[k] for k in (
            "take", "bcnt", "bcnt_next", "blen", "bcrc", "small", "hello_bad",
            "nul_seen", "ccrc", "b_lt16", "b_lt60", "b_lt64", "next_seq", "stamp_time",
            "place", "wr", "alloc_ok", "ftype", "beat", "mem", "to_small", "to_stamp"))
        place = Cat(Const(0, G), place)[:self.ring_bits]   # JOFS in bytes (a data ring's)
        if self.desc_batch > 1:
            # a batch's descriptors, bytes 32..63 of each, into the batch RAM
            # (docs/protocol.md "JNLDESC batches"; read back in BLOAD)
            bram_w, BB = v["bram_w"], v["BB"]
            m.d.comb += [bram_w.addr.eq(Cat(bcnt[LW:5], bcnt[6:6 + BB])),
                         bram_w.data.eq(beat),
                         bram_w.en.eq(take & (ftype == FT.JNLDESC) & bcnt[5])]
        # A LOAD with RING is 40 bytes: bytes 0..31 stay in ``small``,
        # the SIZE word (32..39) goes to ``stamp_time`` (free until EXEC:
        # HCHECK holds a frame while a STATUS, which sends it, is out)
        # Body bytes 0..63 go into ``small`` (``to_small``), but a LOAD's
        # 32..63 into ``stamp_time`` (``to_stamp``): both registers are
        # loaded here at each take for the byte after it (BCNT + W), and
        # cleared at the body's last take below (TRAILER shifts neither)
        # (from BCNT + W, the BCNT they go with, ``next_lt``)
        is_load = ftype == FT.LOAD
        n_lt32, n_lt64 = v["next_lt"](32), v["next_lt"](64)
        with m.If(take):
            m.d.sync += [to_small.eq(n_lt64 & ~(is_load & ~n_lt32)),
                         to_stamp.eq(is_load & ~n_lt32 & n_lt64)]
        # (the sim build shifts ``small`` and ``stamp_time`` by the body
        # byte's position, on the conditions ``to_small`` and ``to_stamp``
        # are stated to equal: ``window_in_states``)
        in_states = bool(_WINDOW_IN_STATES)
        size_word = is_load & ~lt_const(bcnt, 32)
        to_small_now = b_lt64 & ~size_word
        if not v["wide_stamp"]:
            with m.If(take & (b_lt64 & size_word if in_states else to_stamp)):
                m.d.sync += stamp_time.eq(Cat(stamp_time[8 * W:], beat))
        if W > 1:
            end_hit, klast, tailbeat = (v[k] for k in ("end_hit", "klast", "tailbeat"))
            with m.If(take):
                # the BCRC over whole beats, the last one's lanes after the
                # body masked: one CRC network, not one per byte count (the
                # received BCRC is padded to match in TRAILER, ``eb``); the
                # step itself is ``hv``'s, below the FSM
                m.d.sync += [bcnt.eq(bcnt_next),
                             end_hit.eq(v["end_next"]), *v["regions"](bcnt_next)]
                if in_states:
                    with m.If(to_small_now):
                        m.d.sync += small.eq(Cat(small[8 * W:], beat))
                # HELLO body checks, a lane at a time in order (a valid HELLO
                # is 80 bytes: every beat is full; any other length is refused)
                bad, nul = hello_bad, nul_seen
                for lane in range(W):
                    b = beat[8 * lane:8 * lane + 8]
                    i = bcnt | lane
                    bad = Mux(i == 0, (b == 0) | ge_const(b, max(protocol.Role) + 1), bad)
                    bad = Mux(i == 1, bad | (b != 0), bad)
                    at16 = ~b_lt16
                    bad = Mux(at16, bad | b[7] | ((b != 0) & nul & (i != 48)), bad)
                    nul = Mux(at16, Mux(i == 48, b == 0, nul | (b == 0)), nul)
                m.d.sync += [hello_bad.eq(bad), nul_seen.eq(nul)]
                with m.If(end_hit):
                    m.d.sync += [tailbeat.eq(beat), to_small.eq(0), to_stamp.eq(0)]
                    if mem:
                        m.d.sync += v["wr_body"].eq(0)
                    m.next = "TRAILER"
            if not mem:
                return
            # the ring's write port is assigned outside the FSM (``wr_body``);
            # the CCRC, then from byte 64 on the DCRC (stamped == beat
            # there), whole beats, the last masked (TRAILER's checks take its
            # zeros back), steps below the FSM (``cv``)
            return
        # width 8
        with m.If(take):
            m.d.sync += [bcnt.eq(bcnt_next), bcrc.eq(v["hcrc_next"])]   # (bcrc is hcrc)
            if in_states:
                with m.If(to_small_now):
                    m.d.sync += small.eq(Cat(small[8:], beat))
            # HELLO body checks as protocol.Hello.unpack makes them
            with m.If(bcnt == 0):
                m.d.sync += hello_bad.eq((beat == 0) | ge_const(beat, max(protocol.Role) + 1))
            with m.If(bcnt == 1):
                m.d.sync += hello_bad.eq(hello_bad | (beat != 0))
            with m.If(~b_lt16):
                m.d.sync += [
                    nul_seen.eq(Mux(bcnt == 48, beat == 0, nul_seen | (beat == 0))),
                    hello_bad.eq(hello_bad | beat[7]
                                 | ((beat != 0) & nul_seen & (bcnt != 48))),
                ]
            with m.If(bcnt == v["bl"]["m1"]):
                m.d.sync += [to_small.eq(0), to_stamp.eq(0)]
                m.next = "TRAILER"
        if not mem:
            return
        # speculative ring write, stamped (SEQ#, TIME, JOFS, CCRC)
        stamped = Signal(8)
        with m.If(lt_const(bcnt, 8)):
            m.d.comb += stamped.eq(next_seq.word_select(bcnt[:3], 8))
        with m.Elif(b_lt16):
            m.d.comb += stamped.eq(stamp_time.word_select(bcnt[:3], 8))
        with m.Elif(ge_const(bcnt, 24) & lt_const(bcnt, 32)):
            m.d.comb += stamped.eq(place.word_select(bcnt[:3], 8))
        with m.Elif(~b_lt60 & b_lt64):
            m.d.comb += stamped.eq((ccrc ^ CRC_INIT).word_select(bcnt[:2], 8))
        with m.Else():
            m.d.comb += stamped.eq(beat)
        with m.If(take & (b_lt60 | ~b_lt64)):
            # CCRC, then from byte 64 on the DCRC (stamped == beat there)
            m.d.sync += ccrc.eq(crc32c_step(Mux(bcnt == 64, CRC_INIT, ccrc), stamped, 1))
        m.d.comb += [
            wr.addr.eq(place + bcnt),
            wr.data.eq(stamped),
            wr.en.eq(take & alloc_ok & (ftype == FT.JNLWR)),
        ]

    # -- VERDICT and EXEC branches, split out for reading -------------------------------
    def _verdict_journal(self, m, v, req):
        """docs/protocol.md "JNLWR" and "JNLDESC" — checks, in this order —
        and "Allocation" (decided in ALLOC): the answer and VERDICT's bit;
        EXEC (``_exec_journal``) moves the pointers the cycle after."""
        ctl, nak, desc, verdict = (v[k] for k in ("ctl", "nak", "desc", "verdict"))
        is_desc = req == FT.JNLDESC
        kind_ok, rules_ok = v["kind_ok"], v["rules_ok"]
        bl = v["bl"]
        body64 = bl["ge64"]
        if not is_desc and not self.memory:
            # no data memory: every JNLWR (constant conditions left out:
            # Yosys writes an empty case of them as invalid Verilog)
            m.d.sync += nak(ST.WRONG_MODE, req, tag=body64)
            return
        mode_check = self.memory or not is_desc
        if mode_check:
            with m.If(desc if not is_desc else ~desc):
                # a data ring takes JNLWR only, a descriptor ring JNLDESC only
                m.d.sync += nak(ST.WRONG_MODE, req, tag=body64)
        bidx = v["bidx"]
        if is_desc:
            # 64·N, 1 <= N <= DESC_BATCH ("JNLDESC batches", check 3)
            length_bad = ~bl["desc"]
            with (m.Elif if mode_check else m.If)(length_bad):
                m.d.sync += nak(ST.BAD_LENGTH, req, tag=body64)
            # a descriptor after the first of a batch is refused with the
            # SEQ#/TIME/JOFS of the one before it (taken, its step pending)
            nak = (lambda code, req_type, *, tag=False, _nak=nak:
                   _nak(code, req_type, tag=tag,
                        from_=Mux(bidx != 0, _AckFrom.WRITE, _AckFrom.ZERO)))
        else:
            with m.Elif(~body64):
                m.d.sync += nak(ST.BAD_LENGTH, req)
        with m.Elif(~kind_ok):
            m.d.sync += nak(ST.BAD_KIND, req, tag=True)
        with m.Elif(~rules_ok if is_desc else (~v["wlen_ok"] | ~rules_ok)):
            m.d.sync += nak(ST.BAD_LENGTH, req, tag=True)
        with m.Elif(~v["epoch_ok"]):
            m.d.sync += nak(ST.STALE_EPOCH, req, tag=True)
        # the CRC32C of no data is 0 (a JNLDESC's data is the host's; a
        # JNLWR's DATA_CRC was compared in TRAILER)
        with m.Elif(~v["desc_dcrc_ok"] if is_desc else v["dcrc_bad"]):
            m.d.sync += nak(ST.BAD_DCRC, req, tag=True)
        with m.Elif(~v["alloc_ok"] & ~v["alloc_full"]):
            m.d.sync += nak(ST.OVERSIZE, req, tag=True)
        with m.Elif(v["alloc_full"] | v["seq_spent"]):
            # the model keeps NEXT_SEQ a u64: the last sequence number is never issued
            m.d.sync += [nak(ST.FULL, req, tag=True), verdict[_V.FULL].eq(1)]
        with m.Else():
            m.d.sync += [v["ack"](req, _AckFrom.WRITE, tag=True),
                         verdict[_V.TAKE_DESC if is_desc else _V.TAKE_WR].eq(1)]

    def _exec_journal(self, m, v, req):
        """A journal taken (VERDICT decided it): the commit. A JNLWR's record
        is already in the ring; only pointers move here."""
        is_desc = req == FT.JNLDESC
        B = self.desc_batch
        bidx, bl = v["bidx"], v["bl"]
        place, rlen, wrap = v["place"], v["rlen"], v["wrap"]
        used, size = v["used"], v["size"]
        base_used = Mux(v["empty_q"], 0, used)
        m.d.sync += [
            # PLACE + R, or 0 for an exact fit at the end (from ALLOC)
            v["jiptr"].eq(Mux(v["exact"], 0, place + rlen[G:])),
            # R, plus SIZE - JIPTR for a tail skip (from ALLOC)
            used.eq(base_used + v["used_add"]),
            v["last_time"].eq(v["stamp_time"]),
            v["acks"].eq(v["acks"] + 1),
            self.full.eq(0),
        ]
        # (WRAP_AT: ``_wrap_at``)
        with m.If(v["rewind"]):
            m.d.sync += v["joptr"].eq(0)
        if not is_desc and self.memory:
            with m.If(wrap):
                if v["wide_wr"]:
                    m.d.sync += [v["wr_fill"].eq(1), v["wr_mark"].eq(1)]
                m.next = "MARK"           # a data ring's WRAP marker
        if is_desc and B > 1:
            with m.If(bidx != 0):
                # the previous descriptor's SEQ# step (see BIDX)
                m.d.comb += v["seq"].step.eq(1)
                m.d.sync += v["held"].eq(v["held"] + 1)
            with m.If(bidx != bl["nlast"]):
                # the next descriptor (the ACK waits for the last)
                m.d.sync += bidx.eq(bidx + 1)
                m.next = "BLOAD"

    def _wrap_at(self, m, v):
        """WRAP_AT's writes, all in one place outside the FSM, enabled by
        registers that say the state: VERDICT's bits in EXEC (cleared
        there), ``rel_go`` in RELEASE_AT, ``ld_go`` in LOAD_SET (a data
        ring's RELEASE_STEP decodes its state). Written in those states, its
        enable decoded the 5-bit state and each state's choices in a chain
        Yosys shared with other enables (the ingress state -> EXEC's and
        RELEASE_AT's choices -> WRAP_AT's clock enable, nine LUTs, was the
        UP5K's critical path after its eighth step: 32.0 ns). The states
        and the values are as before. (JIPTR, JOPTR, USED and FULL moved out
        the same way mapped to 87 SB_LUT4 more on the UP5K: they stay.)"""
        verdict, size, jiptr, wrap_at = (v[k] for k in ("verdict", "size", "jiptr", "wrap_at"))
        L = protocol.LoadFlag
        take = verdict[_V.TAKE_DESC] | (verdict[_V.TAKE_WR] if self.memory else 0)
        with m.If(take):
            # a journal taken (``_exec_journal``)
            with m.If(v["rewind"]):
                m.d.sync += wrap_at.eq(size)
            with m.If(v["wrap"]):
                m.d.sync += wrap_at.eq(jiptr)    # the marker's place
        with m.If(v["rel_go"] & ~v["rel_refused"] & v["rel_past_end"]):
            m.d.sync += wrap_at.eq(size)          # a RELEASE past the end (``_release_at``)
        with m.If(v["ld_go"] & (v["small_ld_"].flags & (L.CLEAR | L.RING | L.PTR)).any()):
            m.d.sync += wrap_at.eq(v["ld_new_size"])    # a LOAD (``_load_set``)
        if self.memory:
            # a data ring's RELEASE_STEP past the skipped tail
            with m.If(v["fsm"].ongoing("RELEASE_STEP") & v["walk_at_wrap"]):
                m.d.sync += wrap_at.eq(size)

    def _verdict_release(self, m, v):
        """docs/protocol.md "RELEASE": a data ring walks its records from
        JOPTR (WALK, RELEASE_STEP); a descriptor ring takes JOPTR from the
        request and checks it against the pointers (RELEASE_D, RELEASE_AT)."""
        nak, ack, desc, ftype, verdict = (v[k] for k in ("nak", "ack", "desc", "ftype",
                                                         "verdict"))
        bl = v["bl"]
        with m.If(~Mux(desc, bl["rel_at"], bl["rel"])):
            m.d.sync += nak(ST.BAD_REQUEST, ftype)
        with m.Elif(v["x_ge_next"]):
            m.d.sync += nak(ST.NOT_FOUND, ftype, seq_x=True)
        with m.Elif(v["x_lt_tail"]):
            m.d.sync += ack(FT.RELEASE, _AckFrom.RELEASE)
        with (m.Elif(desc) if self.memory else m.Else()):
            # the JOPTR checks in two cycles of their own (RELEASE_D,
            # RELEASE_AT): three 35-bit carry chains after the 65-bit
            # FROM/UPTO one were the UP5K's critical path, and then the
            # three alone
            m.d.sync += verdict[_V.RELEASE_D].eq(1)
        if self.memory:
            with m.Else():
                m.d.sync += verdict[_V.WALK].eq(1)

    def _release_d(self, m, v):
        """RELEASE_D: a descriptor ring's RELEASE, UPTO in TAIL_SEQ..NEXT_SEQ-1
        (VERDICT checked it): P = the JOPTR given, D = (P - JOPTR) mod SIZE, or
        SIZE when 0: the bytes released (granules), a skipped tail included;
        registered with the other checks for RELEASE_AT, which compares D
        with USED. P - JOPTR and the tests of P are registers already
        (``rel_diff``): one 35-bit chain here."""
        small = v["small"]
        size, joptr, wrap_at = v["size"], v["joptr"], v["wrap_at"]
        SG = len(size)
        diff, past_end = v["rel_diff"], v["rel_past"]
        # HELD after: NEXT_SEQ - UPTO - 1, from EXEC's NEXT_SEQ - UPTO (x_d,
        # 1..HELD here: VERDICT checked it) less one: a 35-bit decrement
        # instead of a second 64-bit adder; 0 exactly when UPTO is the last
        # journal (x_d = 1, compared in full so that it holds in any state)
        x_d = v["x_d"]
        m.d.sync += [
            v["rel_d"].eq(diff[:SG] + Mux(past_end, size, 0)),
            v["rel_past_end"].eq(past_end),
            v["rel_held"].eq(x_d[:SG] - 1),
            v["rel_last"].eq(v["x_d_le1"] & x_d[0]),
            v["rel_bad"].eq(v["rel_p_bad"]),
        ]
        m.next = "RELEASE_W"

    def _release_at(self, m, v):
        """RELEASE_AT: the RELEASE_D figures against USED, and the commit."""
        nak, ack, small, ftype = (v[k] for k in ("nak", "ack", "small", "ftype"))
        size, used, joptr, held = (v[k] for k in ("size", "used", "joptr", "held"))
        SG = len(size)
        pg = layouts.ReleaseAt(small[:128]).joptr[G:G + SG]
        # USED - D with its borrow: D > USED borrows, D == USED leaves 0,
        # which must hold exactly when UPTO is the last journal
        # (``rel_refused``; WRAP_AT: ``_wrap_at``)
        with m.If(v["rel_refused"]):
            m.d.sync += nak(ST.BAD_REQUEST, ftype)
        with m.Else():
            m.d.sync += [used.eq(v["rel_left"][:SG]), joptr.eq(pg),
                         held.eq(v["rel_held"]),            # TAIL_SEQ = UPTO + 1
                         self.full.eq(0),
                         ack(FT.RELEASE, _AckFrom.RELEASE)]
        m.d.sync += v["rel_go"].eq(0)
        m.next = "ANSWER"

    def _load_checks(self, m, v):
        """The checks of a LOAD that read wide fields (docs/protocol.md
        "LOAD"), as registers one cycle behind ``small`` and the ring
        registers: VERDICT decides on them, and the LOAD's effects wait for
        LOAD_SET (the path was: a 35-bit comparison of PTR with SIZE ->
        EXEC's decision -> the timestamp unit's FREEZE and LOAD enables)."""
        L = protocol.LoadFlag
        ld = v["small_ld_"]
        fl = ld.flags
        size = v["size"]
        SG = len(size)
        ring = (fl & L.RING).any()
        # the SIZE word of a LOAD RING (body bytes 32..39, see _body)
        ld_size = v["stamp_time"]
        new_size = Mux(ring, ld_size[G:G + SG], size)
        q = {n: Signal(name=f"ld_{n}") for n in ("seq0", "size_bad", "ptr_bad", "too_big",
                                                  "held0")}
        v["checks"] += [
            q["seq0"].eq(ld.seq == 0),
            q["size_bad"].eq((ld_size[:G] != 0) | lt_const(ld_size, 128)
                             | ge_const(ld_size, (1 << self.max_ring_bits) + 1)),
            q["ptr_bad"].eq((ld.ptr[:G] != 0) | ld.ptr[G + SG - 1:].any()
                            | (ld.ptr[G:G + SG] >= new_size)),
            q["too_big"].eq(ge_const(ld_size, self.memory + 1)),
            q["held0"].eq(v["held"] == 0),
        ]
        if v["wide_verdict"]:
            # FLAGS outside the known ones (a 32-input OR, VERDICT's first check)
            q["flags_bad"] = Signal(name="ld_flags_bad")
            v["checks"] += [q["flags_bad"].eq((fl & ~_LOAD_FLAGS).any())]
        return q

    def _verdict_load(self, m, v):
        """docs/protocol.md "LOAD": the checks (VERDICT); LOAD_SET applies it."""
        L = protocol.LoadFlag
        ld, blen, nak, ack = v["small_ld"], v["blen"], v["nak"], v["ack"]
        q = v["ld_q"]
        fl = ld.flags
        ring = (fl & L.RING).any()
        empty_after = (fl & L.CLEAR).any() | q["held0"]
        bl = v["bl"]
        with m.If(~Mux(ring, bl["load_ring"], bl["load"])
                  | (q["flags_bad"] if "flags_bad" in q else (fl & ~_LOAD_FLAGS).any())):
            m.d.sync += nak(ST.BAD_REQUEST, FT.LOAD)
        with m.Elif((fl & L.SEQ).any() & q["seq0"]):
            m.d.sync += nak(ST.BAD_REQUEST, FT.LOAD)
        with m.Elif((ring & q["size_bad"]) | ((fl & L.DESC).any() & ~ring)):
            m.d.sync += nak(ST.BAD_REQUEST, FT.LOAD)
        with m.Elif((fl & L.PTR).any() & q["ptr_bad"]):
            m.d.sync += nak(ST.BAD_REQUEST, FT.LOAD)
        with m.Elif(ring & ~(fl & L.DESC).any() & q["too_big"]):
            # a data ring larger than the data memory (all of them without one)
            m.d.sync += nak(ST.WRONG_MODE, FT.LOAD)
        with m.Elif((fl & (L.SEQ | L.PTR | L.RING)).any() & ~empty_after):
            m.d.sync += nak(ST.NOT_EMPTY, FT.LOAD)
        with m.Else():
            # the ACK (SEQ = NEXT_SEQ, TIME = CLOCK, JOFS = JIPTR) is read
            # from the state after the load, in ANSWER
            m.d.sync += [ack(FT.LOAD, _AckFrom.LOAD), v["verdict"][_V.LOAD].eq(1)]

    def _load_set(self, m, v):
        """LOAD_SET: a LOAD that VERDICT accepted takes effect (its fields hold
        in ``small`` and ``stamp_time``), a cycle after the decision (WRAP_AT:
        ``_wrap_at``)."""
        L = protocol.LoadFlag
        ld = v["small_ld_"]
        fl = ld.flags
        size = v["size"]
        SG = len(size)
        seq, ts = v["seq"], v["ts"]
        ring = (fl & L.RING).any()
        with m.If((fl & (L.CLEAR | L.RING)).any()):
            # RING: the ring is empty already (checked in VERDICT)
            m.d.sync += [v["jiptr"].eq(0), v["joptr"].eq(0), v["used"].eq(0), v["held"].eq(0)]
        with m.If(ring):
            m.d.sync += size.eq(v["ld_new_size"])
            if self.memory:
                m.d.sync += v["desc"].eq((fl & L.DESC).any())
        with m.If((fl & L.SEQ).any()):
            m.d.comb += [seq.load.eq(1), seq.load_value.eq(ld.seq)]
            # TAIL_SEQ = NEXT_SEQ: HELD is 0 here (checked in VERDICT)
        with m.If((fl & L.PTR).any()):
            m.d.sync += [v["jiptr"].eq(ld.ptr[G:]), v["joptr"].eq(ld.ptr[G:])]
        with m.If((fl & L.TIME).any()):
            m.d.comb += [ts.load.eq(1), ts.load_value.eq(ld.time),
                         ts.freeze.eq((fl & L.FREEZE).any())]
        with m.If((fl & L.EPOCH).any()):
            m.d.sync += v["epoch"].eq(ld.epoch)
        m.d.sync += self.full.eq(0)
        if v["wide_stamp"]:
            m.d.sync += v["stamp_load"].eq(1)
        m.next = "LOAD_TIME"
