"""The relay's journal engine in gateware (docs/protocol.md, "The journal engine").

Block diagram (docs/hardware.md has the long form)::

    rx bytes ─▶ header window/HCRC ─▶ body: BCRC, DCRC, control capture ─▶ EXEC
                    │  hunt on bad                 │ speculative write        │
                    ▼                              ▼                          ▼
                 (NAK)                      ring memory ◀──── read-out walk ─┤
                                                   │                          │
    tx bytes ◀──────────────────────── Responder ◀─┴──── answers (ACK/NAK/...)┘

Ingress is one byte per clock. A JNLWR's ring placement is decided from the
header LENGTH before the first body byte, so control data (already stamped
with SEQ#, TIME, JOFS and its CCRC) and journal data go straight into the
ring as they arrive; JIPTR moves only when every check has passed, so a NAK
leaves nothing behind but bytes in free space. The ring memory is a plain
``lib.memory.Memory`` with one write and one read port that are never used
at the same time (ingress stalls during read-out): on iCE40 UP5K it maps to
SPRAM (single port, 16-bit: pair bytes when porting), on ECP5 to block RAM.
"""

from amaranth.lib import enum

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..host import protocol
from . import layouts
from .crc import CRC_INIT, crc32c_step
from .responder import LENGTH_BITS, Responder, Source

__all__ = ["JournalEngine"]

FT = protocol.FrameType
ST = protocol.Status
_KNOWN_TYPES = [int(t) for t in FT]
_LOAD_FLAGS = int(protocol.LoadFlag.SEQ | protocol.LoadFlag.TIME | protocol.LoadFlag.EPOCH
                  | protocol.LoadFlag.CLEAR | protocol.LoadFlag.FREEZE | protocol.LoadFlag.PTR)
_CTL = layouts.byte_offsets(layouts.Control)


class _After(enum.Enum, shape=2):
    """Where ingress goes once an answer has been handed to the responder."""
    HEADER = 0
    HUNT = 1
    SKIP = 2


class JournalEngine(wiring.Component):
    """Journal engine: frames in on ``rx``, answers out on ``tx`` (bytes).

    Parameters
    ----------
    data_width : int
        Stream width in bits; this version implements 8.
    ring_size : int
        Ring bytes, a power of two >= 128 (docs/protocol.md "State").
    clk_hz : int
        Clock frequency, for the nanosecond timestamp unit.
    site : str
        SITE answered in HELLO: "sim" or "board".
    timestamp, sequencer : optional factories
        Replace the Timestamp/Sequencer blocks (tests only).
    """

    def __init__(self, data_width: int = 8, ring_size: int = 4096, clk_hz: int = 12_000_000,
                 *, site: str = "sim", timestamp=None, sequencer=None):
        if data_width != 8:
            raise ValueError(f"data_width must be 8 in this version, not {data_width!r}")
        if (not isinstance(ring_size, int) or ring_size < 128
                or ring_size & (ring_size - 1)):
            raise ValueError(f"ring_size must be a power of two >= 128, not {ring_size!r}")
        if site not in ("sim", "board"):
            raise ValueError(f"site must be 'sim' or 'board', not {site!r}")
        self.data_width = data_width
        self.ring_size = ring_size
        self.ring_bits = ring_size.bit_length() - 1
        self.clk_hz = clk_hz
        self.site = site
        if timestamp is None:
            from .timestamp import Timestamp as timestamp
        if sequencer is None:
            from .sequencer import Sequencer as sequencer
        self._timestamp = timestamp
        self._sequencer = sequencer
        super().__init__({
            "rx": In(stream.Signature(8)),
            "tx": Out(stream.Signature(8)),
        })

    def elaborate(self, platform):
        m = Module()
        SIZE = self.ring_size
        RB = self.ring_bits

        m.submodules.ts = ts = self._timestamp(self.clk_hz)
        m.submodules.seq = seq = self._sequencer()
        m.submodules.resp = resp = Responder(RB)
        m.submodules.ring = ring = Memory(shape=8, depth=SIZE, init=[])
        wr = ring.write_port()
        rd = ring.read_port(transparent_for=())
        wiring.connect(m, tx=wiring.flipped(self.tx), resp=resp.tx)

        # -- engine state (docs/protocol.md "State") ------------------------
        jiptr = Signal(RB)
        joptr = Signal(RB)
        used = Signal(RB + 1)
        wrap_at = Signal(RB + 1, init=SIZE)
        tail_seq = Signal(64, init=1)
        last_time = Signal(64)
        epoch = Signal(32)
        acks = Signal(32)
        naks = Signal(32)
        next_seq = seq.value
        empty = used == 0

        # -- answer staging ---------------------------------------------------
        ans = Signal(layouts.Ack)
        ans_type = Signal(8)
        ans_len = Signal(LENGTH_BITS)
        ans_src = Signal(Source)
        ans_base = Signal(RB)
        ans_flags = Signal(16)
        after = Signal(_After)
        status_now = Signal(64)

        status = Signal(layouts.EngineStatus)
        hello = Signal(layouts.Hello)
        m.d.comb += [
            status.jiptr.eq(jiptr), status.joptr.eq(joptr), status.ring_size.eq(SIZE),
            status.free.eq(SIZE - used), status.next_seq.eq(next_seq),
            status.tail_seq.eq(tail_seq), status.now.eq(status_now),
            status.acks.eq(acks), status.naks.eq(naks), status.epoch.eq(epoch),
            status.held.eq(next_seq - tail_seq), status.wrap_at.eq(wrap_at),
            hello.role.eq(protocol.Role.ENGINE), hello.epoch.eq(epoch),
            hello.last_seq.eq(next_seq - 1),
            hello.site.eq(int.from_bytes(self.site.encode().ljust(32, b"\0"), "little")),
            resp.ftype.eq(ans_type), resp.flags.eq(ans_flags), resp.length.eq(ans_len),
            resp.source.eq(ans_src), resp.base.eq(ans_base), resp.ack.eq(ans),
            resp.status.eq(status), resp.hello.eq(hello),
        ]

        def nak(code, req_type, *, tag=0, seq_=0, after_=_After.HEADER):
            """Stage a NAK; NAKS counts it when it is handed to the responder."""
            return [
                ans.eq(0), ans.status.eq(code), ans.req_type.eq(req_type),
                ans.tag.eq(tag), ans.seq.eq(seq_),
                ans_type.eq(FT.NAK), ans_len.eq(protocol.Ack.SIZE), ans_src.eq(Source.ACK),
                ans_flags.eq(0), after.eq(after_),
            ]

        def ack(req_type, *, seq_=0, time=0, jofs=0, tag=0):
            return [
                ans.eq(0), ans.seq.eq(seq_), ans.time.eq(time), ans.jofs.eq(jofs),
                ans.tag.eq(tag), ans.req_type.eq(req_type),
                ans_type.eq(FT.ACK), ans_len.eq(protocol.Ack.SIZE), ans_src.eq(Source.ACK),
                ans_flags.eq(0), after.eq(_After.HEADER),
            ]

        # -- ingress registers -----------------------------------------------
        win = Signal(128)                      # last 16 bytes, oldest in bits 0..7
        hdr = layouts.Header(win)
        hcnt = Signal(range(17))
        hcrc = Signal(32, init=CRC_INIT)
        hunting = Signal()
        kcnt = Signal(range(64))               # small loop counter (HCRC recheck, marker)
        ftype = Signal(8)
        blen = Signal(LENGTH_BITS)
        bcnt = Signal(LENGTH_BITS)
        skip = Signal(LENGTH_BITS + 1)
        bcrc = Signal(32, init=CRC_INIT)
        dcrc = Signal(32, init=CRC_INIT)
        ccrc = Signal(32, init=CRC_INIT)
        rx_bcrc = Signal(32)
        small = Signal(32 * 8)                 # first 32 body bytes of a request
        ctl = Signal(layouts.Control)          # control bytes 32..63 of a JNLWR
        hello_bad = Signal()
        nul_seen = Signal()
        # allocation result, fixed before the first body byte
        rlen = Signal(LENGTH_BITS)
        place = Signal(RB)
        wrap = Signal()
        rewind = Signal()
        mark_at = Signal(RB)
        alloc_ok = Signal()
        alloc_full = Signal()
        stamp_time = Signal(64)

        byte = self.rx.payload
        take = self.rx.valid & self.rx.ready
        hdr_crc_ok = hdr.hcrc == (hcrc ^ CRC_INIT)
        magic_ok = hdr.magic == protocol.MAGIC

        # ring read port: the responder while it emits, else the walker
        walk_addr = Signal(RB)
        m.d.comb += [
            rd.addr.eq(Mux(resp.busy, resp.rd_addr, walk_addr)),
            rd.en.eq(Mux(resp.busy, resp.rd_en, 1)),
            resp.rd_data.eq(rd.data),
        ]

        # walker: read DATA_LEN of the record at walk_off (4 bytes + latency)
        walk_off = Signal(RB)
        dl = Signal(32)
        dl_step = Signal(range(5))
        walk_r = Signal(LENGTH_BITS)
        m.d.comb += walk_r.eq(Cat(Const(0, 6), (dl[:LENGTH_BITS] + 63)[6:]) + 64)
        walk_sum = Signal(RB + 1)
        m.d.comb += walk_sum.eq(walk_off + walk_r)
        # next record: the skipped tail ends at WRAP_AT; SIZE truncates to 0
        walk_next = Mux(walk_sum == wrap_at, 0, walk_sum[:RB])
        m.d.comb += walk_addr.eq(walk_off + _CTL["data_len"][0] + dl_step)
        rd_from = Signal(64)
        rd_left = Signal(32)
        rd_n = Signal(32)
        rd_seq = Signal(64)
        rel_upto = Signal(64)
        walk_for_release = Signal()

        with m.FSM(name="ingress"):
            with m.State("HEADER"):
                m.d.comb += self.rx.ready.eq(1)
                with m.If(take):
                    m.d.sync += [win.eq(Cat(win[8:], byte)), hcnt.eq(hcnt + 1)]
                    with m.If(hcnt < 12):
                        m.d.sync += hcrc.eq(crc32c_step(hcrc, byte, 1))
                    with m.If(hcnt == 15):
                        m.next = "HCHECK"

            with m.State("HUNT"):
                # Bytes are dropped until MAGIC starts a full window; its HCRC
                # is then recomputed from the window (HUNT_CRC).
                full_magic = (hcnt == 16) & magic_ok
                m.d.comb += self.rx.ready.eq(~full_magic)
                with m.If(full_magic):
                    m.d.sync += [kcnt.eq(0), hcrc.eq(CRC_INIT)]
                    m.next = "HUNT_CRC"
                with m.Elif(take):
                    m.d.sync += win.eq(Cat(win[8:], byte))
                    with m.If(hcnt < 16):
                        m.d.sync += hcnt.eq(hcnt + 1)

            with m.State("HUNT_CRC"):
                m.d.sync += [hcrc.eq(crc32c_step(hcrc, win.word_select(kcnt[:4], 8), 1)),
                             kcnt.eq(kcnt + 1)]
                with m.If(kcnt == 11):
                    m.next = "HCHECK"

            with m.State("HCHECK"):
                length_ok = hdr.length <= protocol.MAX_BODY
                type_ok = Const(0)
                for t in _KNOWN_TYPES:
                    type_ok = type_ok | (hdr.type == t)
                m.d.sync += [ftype.eq(hdr.type), blen.eq(hdr.length[:LENGTH_BITS]),
                             hcnt.eq(0), kcnt.eq(0), hcrc.eq(CRC_INIT), bcnt.eq(0),
                             bcrc.eq(CRC_INIT), dcrc.eq(CRC_INIT), ccrc.eq(CRC_INIT),
                             hello_bad.eq(0), nul_seen.eq(0), small.eq(0),
                             skip.eq(hdr.length[:LENGTH_BITS] + Mux(hdr.length == 0, 0, 4))]
                with m.If(~magic_ok | ~hdr_crc_ok):
                    # drop the oldest byte and look for the next MAGIC
                    m.d.sync += hcnt.eq(15)
                    with m.If(hunting):
                        m.next = "HUNT"
                    with m.Else():
                        m.d.sync += [hunting.eq(1), *nak(ST.BAD_FRAME, 0, after_=_After.HUNT)]
                        m.next = "ANSWER"
                with m.Elif((hdr.version != protocol.VERSION)
                            | (hdr.flags & ~int(protocol.FrameFlag.MORE)).any()
                            | ~length_ok | ~type_ok):
                    m.d.sync += nak(ST.BAD_FRAME, hdr.type,
                                    after_=Mux(length_ok, _After.SKIP, _After.HUNT))
                    with m.If(~length_ok):
                        m.d.sync += [hcnt.eq(15), hunting.eq(1)]
                    with m.Else():
                        m.d.sync += hunting.eq(0)
                    m.next = "ANSWER"
                with m.Else():
                    m.d.sync += hunting.eq(0)
                    with m.If(hdr.length == 0):
                        m.next = "EXEC"
                    with m.Elif(hdr.type == FT.JNLWR):
                        m.next = "ALLOC"
                    with m.Else():
                        m.next = "BODY"

            with m.State("ALLOC"):
                # docs/protocol.md "Allocation", decided from the header
                # LENGTH (a body whose DATA_LEN disagrees is NAKed anyway).
                r = Cat(Const(0, 6), (blen + 63)[6:])
                # an empty ring rewinds only when its tail cannot take R
                rew = empty & (r > SIZE - jiptr)
                jip = Mux(rew, 0, jiptr)
                jop = Mux(rew, 0, joptr)
                free = SIZE - used
                m.d.sync += [rlen.eq(r), wrap.eq(0), mark_at.eq(jip), alloc_ok.eq(0),
                             rewind.eq(rew),
                             alloc_full.eq(0), place.eq(jip),
                             stamp_time.eq(Mux(ts.now > last_time, ts.now, last_time))]
                with m.If((blen >= 64) & (r <= SIZE)):
                    with m.If(r > free):
                        m.d.sync += alloc_full.eq(1)
                    with m.Elif(jip >= jop):
                        with m.If(r <= SIZE - jip):
                            m.d.sync += alloc_ok.eq(1)
                        with m.Elif(r <= jop):
                            m.d.sync += [alloc_ok.eq(1), wrap.eq(1), place.eq(0)]
                        with m.Else():
                            m.d.sync += alloc_full.eq(1)
                    with m.Elif(r <= jop - jip):
                        m.d.sync += alloc_ok.eq(1)
                    with m.Else():
                        m.d.sync += alloc_full.eq(1)
                m.next = "BODY"

            with m.State("BODY"):
                m.d.comb += self.rx.ready.eq(1)
                with m.If(take):
                    m.d.sync += [bcnt.eq(bcnt + 1), bcrc.eq(crc32c_step(bcrc, byte, 1))]
                    with m.If(bcnt < 32):
                        m.d.sync += small.word_select(bcnt[:5], 8).eq(byte)
                    with m.If((bcnt >= 32) & (bcnt < 64)):
                        # only the upper half is stored: 256 flip-flops, not 512
                        m.d.sync += ctl.as_value()[256:].word_select(bcnt[:5], 8).eq(byte)
                    with m.If(bcnt >= 64):
                        m.d.sync += dcrc.eq(crc32c_step(dcrc, byte, 1))
                    # HELLO body checks as protocol.Hello.unpack makes them
                    with m.If(bcnt == 0):
                        m.d.sync += hello_bad.eq((byte == 0) | (byte > max(protocol.Role)))
                    with m.If(bcnt == 1):
                        m.d.sync += hello_bad.eq(hello_bad | (byte != 0))
                    with m.If(bcnt >= 16):
                        m.d.sync += [
                            nul_seen.eq(Mux(bcnt == 48, byte == 0, nul_seen | (byte == 0))),
                            hello_bad.eq(hello_bad | byte[7]
                                         | ((byte != 0) & nul_seen & (bcnt != 48))),
                        ]
                    with m.If(bcnt == blen - 1):
                        m.next = "TRAILER"
                # speculative ring write, stamped (SEQ#, TIME, JOFS, CCRC)
                stamped = Signal(8)
                with m.If(bcnt < 8):
                    m.d.comb += stamped.eq(next_seq.word_select(bcnt[:3], 8))
                with m.Elif(bcnt < 16):
                    m.d.comb += stamped.eq(stamp_time.word_select(bcnt[:3], 8))
                with m.Elif((bcnt >= 24) & (bcnt < 32)):
                    m.d.comb += stamped.eq(Cat(place).as_unsigned().word_select(bcnt[:3], 8))
                with m.Elif((bcnt >= 60) & (bcnt < 64)):
                    m.d.comb += stamped.eq((ccrc ^ CRC_INIT).word_select(bcnt[:2], 8))
                with m.Else():
                    m.d.comb += stamped.eq(byte)
                with m.If(take & (bcnt < 60)):
                    m.d.sync += ccrc.eq(crc32c_step(ccrc, stamped, 1))
                m.d.comb += [
                    wr.addr.eq(place + bcnt),
                    wr.data.eq(stamped),
                    wr.en.eq(take & alloc_ok & (ftype == FT.JNLWR)),
                ]

            with m.State("TRAILER"):
                m.d.comb += self.rx.ready.eq(1)
                with m.If(take):
                    m.d.sync += [rx_bcrc.eq(Cat(rx_bcrc[8:], byte)), kcnt.eq(kcnt + 1)]
                    with m.If(kcnt == 3):
                        with m.If((ftype == FT.JNLWR) & alloc_ok & (bcnt < rlen)):
                            m.next = "PAD"
                        with m.Else():
                            m.next = "EXEC"

            with m.State("PAD"):
                # zero padding up to R (docs/protocol.md "Records"): the ring
                # image between JOPTR and JIPTR equals the model's
                m.d.comb += [wr.addr.eq(place + bcnt), wr.data.eq(0), wr.en.eq(1)]
                m.d.sync += bcnt.eq(bcnt + 1)
                with m.If(bcnt == rlen - 1):
                    m.next = "EXEC"

            with m.State("EXEC"):
                # The responder still emits the previous answer: wait, so that
                # the state it reads (STATUS, HELLO) holds still.
                bcrc_ok = (blen == 0) | (rx_bcrc == (bcrc ^ CRC_INIT))
                small_jr = layouts.JnlRd(small[:128])
                small_rel = layouts.Release(small[:64])
                small_ld = layouts.Load(small)
                m.d.sync += [kcnt.eq(0), ans_flags.eq(0)]
                with m.If(~resp.busy):
                    m.next = "ANSWER"
                    with m.If(~bcrc_ok):
                        m.d.sync += nak(ST.BAD_BCRC, ftype,
                                        tag=Mux((ftype == FT.JNLWR) & (blen >= 64), ctl.tag, 0))
                    with m.Else():
                        with m.Switch(ftype):
                            with m.Case(FT.JNLWR):
                                self._exec_jnlwr(m, locals())
                            with m.Case(FT.ACK, FT.NAK, FT.STATUS_RESP):
                                m.d.sync += nak(ST.BAD_TYPE, ftype)
                            with m.Case(FT.HELLO):
                                with m.If((blen == protocol.Hello.SIZE) & ~hello_bad):
                                    m.d.sync += [ans_type.eq(FT.HELLO), ans_len.eq(80),
                                                 ans_src.eq(Source.HELLO), after.eq(_After.HEADER)]
                                with m.Else():
                                    m.d.sync += nak(ST.BAD_REQUEST, ftype)
                            with m.Case(FT.HEARTBEAT):
                                with m.If((blen == 0) | (blen == 8)):
                                    m.d.sync += [ans_type.eq(FT.HEARTBEAT), ans_len.eq(blen),
                                                 ans_src.eq(Source.ECHO), after.eq(_After.HEADER)]
                                with m.Else():
                                    m.d.sync += nak(ST.BAD_REQUEST, ftype)
                            with m.Case(FT.STATUS):
                                with m.If(blen == 0):
                                    m.d.sync += [ans_type.eq(FT.STATUS_RESP), ans_len.eq(80),
                                                 ans_src.eq(Source.STATUS), after.eq(_After.HEADER),
                                                 status_now.eq(ts.now)]
                                with m.Else():
                                    m.d.sync += nak(ST.BAD_REQUEST, ftype)
                            with m.Case(FT.RELEASE):
                                upto = small_rel.upto
                                with m.If(blen != protocol.Release.SIZE):
                                    m.d.sync += nak(ST.BAD_REQUEST, ftype)
                                with m.Elif(upto >= next_seq):
                                    m.d.sync += nak(ST.NOT_FOUND, ftype, seq_=upto)
                                with m.Elif(upto < tail_seq):
                                    m.d.sync += ack(FT.RELEASE, seq_=upto, jofs=joptr)
                                with m.Else():
                                    m.d.sync += [rel_upto.eq(upto), walk_for_release.eq(1),
                                                 walk_off.eq(joptr), dl_step.eq(0)]
                                    m.next = "WALK"
                            with m.Case(FT.LOAD):
                                self._exec_load(m, locals())
                            with m.Case(FT.JNLRD):
                                frm = small_jr.from_seq
                                avail = next_seq - frm
                                with m.If((blen != protocol.JnlRd.SIZE)
                                          | (small_jr.reserved != 0)):
                                    m.d.sync += nak(ST.BAD_REQUEST, ftype)
                                with m.Elif((frm < tail_seq) | (frm > next_seq)):
                                    m.d.sync += nak(ST.NOT_FOUND, ftype, seq_=frm)
                                with m.Else():
                                    n = Mux(small_jr.count < avail, small_jr.count, avail)
                                    m.d.sync += [rd_from.eq(frm), rd_left.eq(n), rd_n.eq(n),
                                                 rd_seq.eq(tail_seq), walk_off.eq(joptr),
                                                 walk_for_release.eq(0), dl_step.eq(0)]
                                    m.next = "READ_SEEK"

            with m.State("MARK"):
                # the WRAP marker: a control data with KIND 0xFF, all else 0
                m.d.comb += [
                    wr.addr.eq(mark_at + kcnt),
                    wr.data.eq(Mux(kcnt == _CTL["kind"][0], int(protocol.Kind.WRAP), 0)),
                    wr.en.eq(1),
                ]
                m.d.sync += kcnt.eq(kcnt + 1)
                with m.If(kcnt == 63):
                    m.next = "ANSWER"

            with m.State("ANSWER"):
                with m.If(~resp.busy):
                    m.d.comb += resp.start.eq(1)
                    m.d.sync += [bcnt.eq(0), kcnt.eq(0)]
                    # counted here, not where the NAK is decided: a STATUS_RESP
                    # still being sent must show the NAKS of its own moment
                    with m.If(ans_type == FT.NAK):
                        m.d.sync += naks.eq(naks + 1)
                    with m.Switch(after):
                        with m.Case(_After.HEADER):
                            m.next = "HEADER"
                        with m.Case(_After.HUNT):
                            m.next = "HUNT"
                        with m.Case(_After.SKIP):
                            m.next = "SKIP"

            with m.State("SKIP"):
                m.d.comb += self.rx.ready.eq(skip != 0)
                with m.If(skip == 0):
                    m.next = "HEADER"
                with m.Elif(take):
                    m.d.sync += skip.eq(skip - 1)
                    with m.If(skip == 1):
                        m.next = "HEADER"

            # -- record walk: DATA_LEN of the record at walk_off -------------
            with m.State("WALK"):
                with m.If(dl_step != 0):
                    m.d.sync += dl.word_select((dl_step - 1)[:2], 8).eq(rd.data)
                m.d.sync += dl_step.eq(dl_step + 1)
                with m.If(dl_step == 4):
                    m.d.sync += dl_step.eq(0)
                    with m.If(walk_for_release):
                        m.next = "RELEASE_STEP"
                    with m.Else():
                        m.next = "READ_STEP"

            with m.State("RELEASE_STEP"):
                # docs/protocol.md "RELEASE": free TAIL_SEQ..UPTO in order
                at_wrap = walk_sum == wrap_at
                m.d.sync += [
                    joptr.eq(walk_next), walk_off.eq(walk_next),
                    used.eq(used - walk_r - Mux(at_wrap, SIZE - wrap_at, 0)),
                    tail_seq.eq(tail_seq + 1),
                ]
                with m.If(at_wrap):
                    m.d.sync += wrap_at.eq(SIZE)
                with m.If(tail_seq == rel_upto):
                    m.d.sync += ack(FT.RELEASE, seq_=rel_upto, jofs=walk_next)
                    m.next = "ANSWER"
                with m.Else():
                    m.next = "WALK"

            with m.State("READ_SEEK"):
                with m.If(rd_seq == rd_from):
                    with m.If(rd_left == 0):
                        m.d.sync += ack(FT.JNLRD, seq_=rd_from - 1, jofs=joptr, tag=rd_n)
                        m.next = "ANSWER"
                    with m.Else():
                        m.next = "WALK"
                with m.Else():
                    m.next = "WALK"

            with m.State("READ_STEP"):
                # either skip a record below FROM_SEQ or emit it
                m.d.sync += [walk_off.eq(walk_next), rd_seq.eq(rd_seq + 1)]
                with m.If(rd_seq == rd_from):
                    m.d.sync += [ans_type.eq(FT.JNLWR),
                                 ans_flags.eq(Mux(rd_left > 1, int(protocol.FrameFlag.MORE), 0)),
                                 ans_len.eq(dl[:LENGTH_BITS] + 64), ans_src.eq(Source.RING),
                                 ans_base.eq(walk_off),
                                 rd_from.eq(rd_from + 1), rd_left.eq(rd_left - 1)]
                    m.next = "READ_START"
                with m.Else():
                    m.next = "READ_SEEK"

            with m.State("READ_START"):
                # the staged description reaches the responder one cycle late
                m.d.comb += resp.start.eq(1)
                m.next = "READ_WAIT"

            with m.State("READ_WAIT"):
                with m.If(~resp.busy):
                    m.next = "READ_SEEK"

        m.d.comb += [
            resp.echo.eq(small[:64]),
        ]
        return m

    # -- EXEC branches, split out for reading -------------------------------
    def _exec_jnlwr(self, m, v):
        """docs/protocol.md "JNLWR — checks, in this order" and "Allocation"."""
        blen, ctl, epoch, dcrc, nak = v["blen"], v["ctl"], v["epoch"], v["dcrc"], v["nak"]
        SIZE = self.ring_size
        kind = ctl.kind
        dlen = ctl.data_len
        tag = ctl.tag
        K = protocol.Kind
        kind_ok = (kind >= K.UPDATE) & (kind <= K.MARK)
        rules_ok = Mux((kind == K.UPDATE) | (kind == K.BASE), dlen == ctl.length,
                       Mux(kind == K.MARK, (dlen == 0) & (ctl.length == 0), dlen == 0))
        with m.If(blen < 64):
            m.d.sync += nak(ST.BAD_LENGTH, FT.JNLWR)
        with m.Elif(~kind_ok):
            m.d.sync += nak(ST.BAD_KIND, FT.JNLWR, tag=tag)
        with m.Elif((dlen != blen - 64) | ~rules_ok):
            m.d.sync += nak(ST.BAD_LENGTH, FT.JNLWR, tag=tag)
        with m.Elif(ctl.epoch != epoch):
            m.d.sync += nak(ST.STALE_EPOCH, FT.JNLWR, tag=tag)
        with m.Elif(ctl.data_crc != (dcrc ^ CRC_INIT)):
            m.d.sync += nak(ST.BAD_DCRC, FT.JNLWR, tag=tag)
        with m.Elif(~v["alloc_ok"] & ~v["alloc_full"]):
            m.d.sync += nak(ST.OVERSIZE, FT.JNLWR, tag=tag)
        with m.Elif(v["alloc_full"] | (v["next_seq"] == (1 << 64) - 1)):
            # the model keeps NEXT_SEQ a u64: the last sequence number is never issued
            m.d.sync += nak(ST.FULL, FT.JNLWR, tag=tag)
        with m.Else():
            # commit: the record is already in the ring
            place, rlen, wrap, mark_at = v["place"], v["rlen"], v["wrap"], v["mark_at"]
            used, empty = v["used"], v["empty"]
            base_used = Mux(empty, 0, used)
            m.d.sync += [
                v["jiptr"].eq(place + rlen),
                v["used"].eq(base_used + rlen + Mux(wrap, SIZE - mark_at, 0)),
                v["last_time"].eq(v["stamp_time"]),
                v["acks"].eq(v["acks"] + 1),
                v["ack"](FT.JNLWR, seq_=v["next_seq"], time=v["stamp_time"], jofs=place, tag=tag),
            ]
            m.d.comb += v["seq"].step.eq(1)
            with m.If(v["rewind"]):
                m.d.sync += [v["joptr"].eq(0), v["wrap_at"].eq(SIZE)]
            with m.If(wrap):
                m.d.sync += v["wrap_at"].eq(mark_at)
                m.next = "MARK"

    def _exec_load(self, m, v):
        """docs/protocol.md "LOAD"."""
        L = protocol.LoadFlag
        ld, blen, nak, ack = v["small_ld"], v["blen"], v["nak"], v["ack"]
        fl = ld.flags
        SIZE = self.ring_size
        seq, ts = v["seq"], v["ts"]
        empty_after = (fl & L.CLEAR).any() | (v["next_seq"] == v["tail_seq"])
        with m.If((blen != protocol.Load.SIZE) | (fl & ~_LOAD_FLAGS).any()):
            m.d.sync += nak(ST.BAD_REQUEST, FT.LOAD)
        with m.Elif((fl & L.SEQ).any() & (ld.seq == 0)):
            m.d.sync += nak(ST.BAD_REQUEST, FT.LOAD)
        with m.Elif((fl & L.PTR).any() & ((ld.ptr[:6] != 0) | (ld.ptr >= SIZE))):
            m.d.sync += nak(ST.BAD_REQUEST, FT.LOAD)
        with m.Elif((fl & (L.SEQ | L.PTR)).any() & ~empty_after):
            m.d.sync += nak(ST.NOT_EMPTY, FT.LOAD)
        with m.Else():
            new_seq = Mux((fl & L.SEQ).any(), ld.seq, v["next_seq"])
            new_jiptr = Mux((fl & L.PTR).any(), ld.ptr[:self.ring_bits],
                            Mux((fl & L.CLEAR).any(), 0, v["jiptr"]))
            clock = Mux((fl & L.TIME).any(), ld.time, ts.now)
            with m.If((fl & L.CLEAR).any()):
                m.d.sync += [v["jiptr"].eq(0), v["joptr"].eq(0), v["used"].eq(0),
                             v["wrap_at"].eq(SIZE), v["tail_seq"].eq(v["next_seq"])]
            with m.If((fl & L.SEQ).any()):
                m.d.comb += [seq.load.eq(1), seq.load_value.eq(ld.seq)]
                m.d.sync += v["tail_seq"].eq(ld.seq)
            with m.If((fl & L.PTR).any()):
                m.d.sync += [v["jiptr"].eq(ld.ptr), v["joptr"].eq(ld.ptr),
                             v["wrap_at"].eq(SIZE)]
            with m.If((fl & L.TIME).any()):
                m.d.comb += [ts.load.eq(1), ts.load_value.eq(ld.time),
                             ts.freeze.eq((fl & L.FREEZE).any())]
            with m.If((fl & L.EPOCH).any()):
                m.d.sync += v["epoch"].eq(ld.epoch)
            m.d.sync += ack(FT.LOAD, seq_=new_seq, time=clock, jofs=new_jiptr)
