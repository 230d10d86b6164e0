"""The board top and its bitstream build.

``test_top_answers_over_uart`` runs the top (UART -> FIFO -> JournalEngine ->
UART) in Amaranth's simulator with a Python model of the serial line;
``test_icebreaker_bitstream`` builds the real iCEBreaker bitstream with the
YoWASP toolchain and reads nextpnr's report (LC count and fmax).
"""

import argparse
import json
import math
import random
from pathlib import Path

import pytest
from amaranth.hdl import Elaboratable, Module, Mux, Signal
from amaranth.lib import io
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator

from tricopy.boards import build as board_build
from tricopy.boards.spram import SPRAMRing
from tricopy.hdl.top import EngineTop, Led
from tricopy.host.wire import protocol

REPO = Path(__file__).resolve().parents[1]


class LineDecoder:
    """8N1 receiver in Python, fed one line level per clock."""

    def __init__(self, divisor):
        self.divisor = divisor
        self.data = bytearray()
        self.errors = 0
        self._count = None  # clocks into the current character, None when idle
        self._byte = 0

    def feed(self, level):
        d = self.divisor
        if self._count is None:
            if level == 0:
                self._count, self._byte = 0, 0
            return
        self._count += 1
        bit, phase = divmod(self._count, d)
        if phase != d // 2:
            return
        if bit == 0 and level != 0:
            self._count = None  # glitch
        elif 1 <= bit <= 8:
            self._byte |= level << (bit - 1)
        elif bit == 9:
            if level:
                self.data.append(self._byte)
            else:
                self.errors += 1
            self._count = None


def line_bits(data, divisor, stop=1):
    for byte in data:
        for bit in [0] + [(byte >> n) & 1 for n in range(8)] + [stop]:
            yield from [bit] * divisor


def test_top_answers_over_uart():
    """LOAD (frozen clock) and STATUS over the UART pins, answers parsed by
    the host codec: the same bytes a host sees from a board."""
    clk_hz, baud = 12_000_000, 2_400_000
    dut = EngineTop(clk_hz, ring_size=128, baud=baud)
    divisor = dut.divisor
    assert divisor == 5
    load = protocol.Load(int(protocol.LoadFlag.TIME | protocol.LoadFlag.FREEZE), time=12345)
    request = load.frame().serialize() + protocol.Frame(protocol.FrameType.STATUS).serialize()
    decoder = LineDecoder(divisor)
    leds = {}

    async def bench(ctx):
        levels = list(line_bits(request, divisor))
        cycle = 0
        # generous budget: both answers are 152 bytes at 10 bits each
        budget = len(levels) + 160 * 10 * divisor + 2000
        while cycle < budget and len(decoder.data) < 52 + 100:
            ctx.set(dut.uart_rx, levels[cycle] if cycle < len(levels) else 1)
            await ctx.tick()
            decoder.feed(ctx.get(dut.uart_tx))
            cycle += 1
        leds["after_traffic"] = ctx.get(dut.leds)
        # a character with a 0 stop bit lights the sticky link error LED
        for level in list(line_bits(b"\x55", divisor, stop=0)) + [1] * 4 * divisor:
            ctx.set(dut.uart_rx, level)
            await ctx.tick()
            decoder.feed(ctx.get(dut.uart_tx))
        await ctx.tick().repeat(30 * divisor)
        leds["after_error"] = ctx.get(dut.leds)
        assert ctx.get(dut.uart_tx) == 1

    sim = Simulator(dut)
    sim.add_clock(1 / clk_hz)
    sim.add_testbench(bench)
    sim.run()

    frames = protocol.FrameParser().feed(bytes(decoder.data))
    assert decoder.errors == 0
    assert [f.type for f in frames] == [protocol.FrameType.ACK, protocol.FrameType.STATUS_RESP]
    ack = protocol.Ack.unpack(frames[0].body)
    assert (ack.seq, ack.time, ack.jofs, ack.req_type) == (1, 12345, 0, protocol.FrameType.LOAD)
    status = protocol.EngineStatus.unpack(frames[1].body)
    assert (status.ring_size, status.free, status.next_seq, status.now, status.wrap_at) == \
        (128, 128, 1, 12345, 128)
    assert leds["after_traffic"] & (1 << Led.ACTIVITY)
    assert not leds["after_traffic"] & (1 << Led.LINK_ERROR)
    assert leds["after_error"] & (1 << Led.LINK_ERROR)
    assert len(decoder.data) == 152, "nothing after the answers"


def _ideal_line(data, bit):
    """The line of ``data`` sent 8N1 by an ideal host, one level per clock,
    with bits of ``bit`` clocks (a float) and no gap between bytes."""
    bits = [b for byte in data for b in [0] + [(byte >> n) & 1 for n in range(8)] + [1]]
    return [bits[int((n + 0.5) / bit)] for n in range(int(len(bits) * bit))]


def _ideal_decode(levels, bit):
    """Bytes of an 8N1 line sampled by an ideal receiver in the middle of
    each bit (``bit`` clocks, a float), and the clock each start bit began."""
    out, starts, i = bytearray(), [], 0
    while True:
        try:
            e = levels.index(0, i)
        except ValueError:
            return bytes(out), starts
        sample = [levels[int(e + (n + 0.5) * bit)] if int(e + (n + 0.5) * bit) < len(levels)
                  else None for n in range(10)]
        if None in sample:
            return bytes(out), starts
        assert sample[0] == 0 and sample[9] == 1, f"framing error at clock {e}"
        out.append(sum(b << n for n, b in enumerate(sample[1:9])))
        starts.append(e)
        i = int(e + 9.5 * bit)


@pytest.mark.parametrize("board, clk_hz", [("icebreaker", 12_000_000), ("ulx3s", 25_000_000)])
def test_descriptors_over_uart_at_3_mbaud(board, clk_hz):
    """The board top as the relay runs it (the engine without data memory)
    at the default 3 Mbaud, from an ideal host's line (the ULX3S's 25 MHz
    is no multiple of it: 25/3 clocks a bit): LOADs, JNLDESC back to back
    and a STATUS get the model's answers byte for byte, and the engine keeps
    up with the line: one ACK per request time, 84 bytes of line each
    (docs/boards.md, "Baud rate": descriptor journals/s at 3 Mbaud)."""
    from tricopy.hdl.engine import JournalEngine
    from tricopy.hdl.top import DEFAULT_BAUD
    from tricopy.host.engine.model import EngineModel, EngineStream
    assert DEFAULT_BAUD == protocol.ENGINE_BAUD == 3_000_000
    core = JournalEngine(8, 128, clk_hz, site="board", memory=0)
    dut = EngineTop(clk_hz, core=core)
    bit = clk_hz / DEFAULT_BAUD
    LF = protocol.LoadFlag
    n = 3
    request = (protocol.Load(int(LF.TIME | LF.FREEZE), time=777).frame().serialize()
               + protocol.Load(int(LF.CLEAR | LF.RING | LF.DESC), size=1 << 30).frame().serialize())
    for i in range(n):
        ctl = protocol.Control(length=4096, data_len=4096, data_crc=0x1234 + i, tag=i + 1,
                               kind=protocol.Kind.UPDATE, address=i << 12)
        request += protocol.descriptor_frame(ctl).serialize()
    request += protocol.Frame(protocol.FrameType.STATUS).serialize()
    want = EngineStream(EngineModel(128, memory=0, name="board", clock=lambda: 0)).feed(request)
    levels = _ideal_line(request, bit)
    tx = []

    async def bench(ctx):
        for cycle in range(len(levels) + int((100 + 60) * 10 * bit)):
            ctx.set(dut.uart_rx, levels[cycle] if cycle < len(levels) else 1)
            tx.append(ctx.get(dut.uart_tx))
            await ctx.tick()
        assert not ctx.get(dut.leds) & (1 << Led.LINK_ERROR)

    sim = Simulator(dut)
    sim.add_clock(1 / clk_hz)
    sim.add_testbench(bench)
    sim.run()

    got, starts = _ideal_decode(tx, bit)
    assert got == want, f"got {got.hex()}\nwant {want.hex()}"
    # the answers leave at the baud rate: bytes of a frame 10 bits apart, to the clock
    # (an ideal receiver would also take a line some % off; this would not)
    for f in range(len(got) // 52):
        gaps = {b - a for a, b in zip(starts[52 * f:52 * f + 52], starts[52 * f + 1:52 * f + 52])}
        assert gaps <= {math.floor(10 * bit), math.ceil(10 * bit)}, (f, gaps, 10 * bit)
    # ACKs of the JNLDESCs (frames 3..5, 52 bytes each, after two LOAD ACKs)
    acks = [starts[52 * k] for k in range(2, 2 + n)]
    spacing = [b - a for a, b in zip(acks, acks[1:])]
    line = 84 * 10 * bit                   # one JNLDESC frame on the line
    assert all(abs(s - line) <= 2 for s in spacing), (spacing, line)


def test_parse_report(tmp_path):
    report = {
        "utilization": {"ICESTORM_LC": {"used": 812, "available": 5280},
                        "ICESTORM_RAM": {"used": 17, "available": 30}},
        "fmax": {"cd_sync.clk": {"achieved": 41.5, "constraint": 12.0}},
    }
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    r = board_build.parse_report(path, "icebreaker", tmp_path / "top.bin", 12.0)
    assert (r.lc_used, r.lc_available, r.fmax_mhz) == (812, 5280, 41.5)
    assert "812/5280 LC" in r.summary() and "41.5 MHz" in r.summary()
    assert r.constraint_mhz == 12.0 and r.timing_met
    # the slowest clock counts; missing its target, or timed against less
    # than the board's clock (a constraint lost on the way), is not met
    for clocks, want in (({"a": {"achieved": 41.5, "constraint": 12.0},
                           "b": {"achieved": 11.9, "constraint": 12.0}}, (11.9, False)),
                         ({"a": {"achieved": 41.5, "constraint": 10.0}}, (41.5, False)),
                         ({"a": {"achieved": 41.5}}, (41.5, False))):
        path.write_text(json.dumps({**report, "fmax": clocks}))
        r = board_build.parse_report(path, "icebreaker", tmp_path / "top.bin", 12.0)
        assert (r.fmax_mhz, r.timing_met) == want, clocks
    path.write_text(json.dumps({"utilization": {}, "fmax": {}}))
    with pytest.raises(board_build.BuildError, match="no usable nextpnr report"):
        board_build.parse_report(path, "icebreaker", tmp_path / "top.bin", 12.0)
    with pytest.raises(board_build.BuildError, match="no usable nextpnr report"):
        board_build.parse_report(tmp_path / "missing.json", "ulx3s", tmp_path / "top.bit", 25.0)


def test_cli_registers_board_build():
    parser = argparse.ArgumentParser()
    board_build.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["board", "build", "--board", "ulx3s", "--width", "8"])
    assert (args.board, args.width, args.ring_size, args.func) == \
        ("ulx3s", 8, None, board_build._run)
    with pytest.raises(SystemExit):
        parser.parse_args(["board", "build", "--board", "de0nano"])
    args = parser.parse_args(["board", "build", "--board", "icebreaker", "--desc-batch", "64"])
    assert args.desc_batch == 64


def test_board_batch_defaults():
    """JNLDESC batches on the ULX3S; not on the iCEBreaker, where they do not
    fit the board test's LC budget (docs/hardware.md, "JNLDESC batches in
    the gateware")."""
    assert board_build.BOARDS["ulx3s"].DESC_BATCH == protocol.DESC_BATCH
    assert board_build.BOARDS["icebreaker"].DESC_BATCH == 1


def test_cli_registers_board_synth():
    parser = argparse.ArgumentParser()
    board_build.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["board", "synth", "--width", "32"])
    assert (args.width, args.ring_size, args.func) == (32, 65536, board_build._run_synth)
    assert args.freq == 25.0
    assert parser.parse_args(["board", "synth", "--width", "32", "--freq", "100"]).freq == 100.0
    with pytest.raises(SystemExit):
        parser.parse_args(["board", "synth", "--width", "16"])


def test_synth_engine_checks_before_any_tool(tmp_path, monkeypatch):
    """A bad width is refused by the engine itself; a missing tool is a
    BuildError naming it, not a traceback."""
    with pytest.raises(ValueError, match="not 16"):
        board_build.synth_engine(width=16, build_dir=tmp_path)
    with pytest.raises(ValueError, match="not 0"):
        board_build.synth_engine(width=32, build_dir=tmp_path, freq_mhz=0)
    monkeypatch.setenv("YOSYS", "no-such-yosys")
    with pytest.raises(board_build.BuildError, match="no-such-yosys"):
        board_build.synth_engine(width=8, ring_size=1024, build_dir=tmp_path)


def test_build_rejects_bad_parameters():
    with pytest.raises(ValueError, match="'de0nano'"):
        board_build.build("de0nano")
    with pytest.raises(ValueError, match="not 32"):
        board_build.build("icebreaker", width=32)


def test_icebreaker_bitstream():
    """Synthesize, place and route the iCEBreaker (iCE40 UP5K) top, its
    engine without data memory (descriptor rings only, the board default:
    docs/hardware.md, "Resources"); nextpnr's report must show a design that
    fits the UP5K's 5280 LCs with a margin (at most 5000, about 95 %: the
    figures move by ~20 LC between equivalent netlists, and a design at
    the brim fails to place) and meets the board's 12 MHz clock."""
    out = REPO / "build" / "test" / "icebreaker"
    report = board_build.build("icebreaker", build_dir=out)
    print(report.summary())
    assert 0 < report.lc_used <= report.lc_available == 5280
    assert report.lc_used <= 5000, "the UP5K top lost its margin: docs/hardware.md, Resources"
    assert report.fmax_mhz >= report.clk_mhz == 12.0
    assert report.timing_met, f"nextpnr timed against {report.constraint_mhz} MHz"
    assert report.bitstream.stat().st_size > 100_000
    assert report.utilization["ICESTORM_SPRAM"]["used"] == 0      # no ring memory
    (out / "summary.txt").write_text(report.summary() + "\n")


def test_ulx3s_bitstream():
    """Synthesize, place and route the ULX3S (ECP5 85F) top; nextpnr's report
    must show a design that fits and meets the board's 25 MHz clock."""
    out = REPO / "build" / "test" / "ulx3s"
    report = board_build.build("ulx3s", build_dir=out)
    print(report.summary())
    assert 0 < report.lc_used <= report.lc_available
    assert report.fmax_mhz >= report.clk_mhz == 25.0
    assert report.timing_met, f"nextpnr timed against {report.constraint_mhz} MHz"
    assert report.bitstream.stat().st_size > 100_000
    (out / "summary.txt").write_text(report.summary() + "\n")


class SPRAMModel(Elaboratable):
    """SB_SPRAM256KA as Yosys' cells_sim.v describes it: a read loads
    DATAOUT, a nibble-masked write leaves DATAOUT undefined (here 0xA5A5),
    no chip select holds it."""

    def __init__(self, *, ADDRESS, DATAIN, MASKWREN, WREN, CHIPSELECT, DATAOUT):
        self.ports = (ADDRESS, DATAIN, MASKWREN, WREN, CHIPSELECT, DATAOUT)

    def elaborate(self, platform):
        address, datain, maskwren, wren, cs, dataout = self.ports
        m = Module()
        m.submodules.mem = mem = Memory(shape=16, depth=16384, init=[])
        wr = mem.write_port(granularity=4)
        rd = mem.read_port(transparent_for=())
        poisoned = Signal()
        m.d.comb += [
            wr.addr.eq(address), wr.data.eq(datain),
            wr.en.eq(Mux(cs & wren, maskwren, 0)),
            rd.addr.eq(address), rd.en.eq(cs & ~wren),
            dataout.eq(Mux(poisoned, 0xA5A5, rd.data)),
        ]
        with m.If(cs):
            m.d.sync += poisoned.eq(wren)
        return m


@pytest.mark.parametrize("path", ["memory", "spram"])
@pytest.mark.parametrize("depth", [256, 131072])
def test_spram_ring(path, depth):
    """Both elaborations of the ring: writes land in the right byte lane and
    SPRAM, reads take one cycle, and r_data holds while no read is performed
    (r_en low, or a write in the same or the previous cycle)."""
    dut = SPRAMRing(depth, primitive=SPRAMModel if path == "spram" else None)
    rng = random.Random(depth)
    ref = {}
    addrs = rng.sample(range(depth), 48) + [0, 1, depth - 2, depth - 1]

    async def bench(ctx):
        for addr in addrs:
            ref[addr] = rng.randrange(256)
            ctx.set(dut.w_addr, addr)
            ctx.set(dut.w_data, ref[addr])
            ctx.set(dut.w_en, 1)
            await ctx.tick()
        ctx.set(dut.w_en, 0)
        for addr in rng.sample(sorted(ref), len(ref)):
            ctx.set(dut.r_addr, addr)
            ctx.set(dut.r_en, 1)
            await ctx.tick()
            ctx.set(dut.r_en, 0)
            assert ctx.get(dut.r_data) == ref[addr]
            # a write, with r_en up too: no read, the byte stays
            ctx.set(dut.r_addr, addr ^ 1)
            ctx.set(dut.w_addr, addr)
            ctx.set(dut.w_data, ref[addr] ^ 0xFF)
            ctx.set(dut.w_en, 1)
            ctx.set(dut.r_en, 1)
            await ctx.tick()
            ctx.set(dut.w_en, 0)
            ctx.set(dut.r_en, 0)
            assert ctx.get(dut.r_data) == ref[addr]
            await ctx.tick()
            assert ctx.get(dut.r_data) == ref[addr]
            ref[addr] ^= 0xFF

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def test_spram_ring_uses_all_four_sprams():
    """On the UP5K, a 128 KiB SPRAMRing places four SB_SPRAM256KA and no EBR."""
    class Probe(Elaboratable):
        # Addresses from a counter, write data and enables from the UART pin,
        # read data onto an LED: nothing for synthesis to remove.
        def elaborate(self, platform):
            m = Module()
            m.submodules.ring = ring = SPRAMRing(131072)
            m.submodules.rx = rx = io.Buffer("i", platform.request("uart", 0, dir="-").rx)
            m.submodules.led = led = io.Buffer("o", platform.request("led", 0, dir="-"))
            count = Signal(17)
            m.d.sync += count.eq(count + 1)
            m.d.comb += [
                ring.w_addr.eq(count), ring.r_addr.eq(count ^ 0x15555),
                ring.w_data.eq(count[3:11]), ring.w_en.eq(rx.i),
                ring.r_en.eq(~rx.i), led.o.eq(ring.r_data.xor()),
            ]
            return m

    report = board_build.build_design("icebreaker", Probe(), REPO / "build" / "test" / "spram")
    print(report.summary())
    assert report.utilization["ICESTORM_SPRAM"]["used"] == 4
    assert report.utilization["ICESTORM_RAM"]["used"] == 0


@pytest.mark.parametrize("path", ["memory", "spram"])
def test_engine_on_ring(path):
    """The engine with its default ring and with SPRAMRing (on the model of
    the primitive) answers a run of requests as host/engine/model.py does,
    byte for byte, through FULL, RELEASE, the read-out and a wrap; ``full``
    follows the FULL NAK and ``nak`` pulses once per NAK sent."""
    from tricopy.host.engine.model import EngineModel, EngineStream
    from tricopy.hdl.engine import JournalEngine
    P, T, LF = protocol, protocol.FrameType, protocol.LoadFlag

    def journal(tag, data):
        ctl = P.Control(length=len(data), data_len=len(data), data_crc=P.crc32c(data), tag=tag)
        return P.Frame(T.JNLWR, P.journal_body(ctl, data)).serialize()

    steps = [  # (request, full after it); ring 256
        (P.Load(LF.TIME | LF.FREEZE, 0, 5, 0).frame().serialize(), 0),
        (journal(1, b""), 0),                         # records of 64 bytes at 0, 64, 128
        (journal(2, b""), 0),
        (journal(3, b""), 0),
        (P.Frame(T.STATUS).serialize(), 0),
        (P.Release(2).frame().serialize(), 0),
        (journal(4, bytes(range(64))), 0),            # R = 128 skips the tail: WRAP marker
        (journal(5, b""), 1),                         # FULL
        (P.JnlRd(3, 9).frame().serialize(), 1),       # over the wrap, CCRC recomputed
        (P.Frame(T.HEARTBEAT, b"12345678").serialize(), 1),
        (P.Release(3).frame().serialize(), 0),
        (P.Release(9).frame().serialize(), 0),        # NOT_FOUND
        (P.Frame(T.STATUS).serialize(), 0),
    ]
    model = EngineStream(EngineModel(256, clock=lambda: 0, name="sim"))
    want = [model.feed(req) for req, _ in steps]
    naks = sum(out.count(P.MAGIC.to_bytes(4, "little") + bytes([P.VERSION, T.NAK]))
               for out in want)
    assert naks == 2

    ring = None if path == "memory" else (lambda depth: SPRAMRing(depth, primitive=SPRAMModel))
    dut = JournalEngine(8, 256, 12_000_000, site="sim", ring=ring)
    got, fulls, pulses = [], [], [0]

    async def bench(ctx):
        ctx.set(dut.tx.ready, 1)
        for req, _ in steps:
            out = bytearray()
            for b in req:
                ctx.set(dut.rx.payload, b)
                ctx.set(dut.rx.valid, 1)
                taken = False
                while not taken:   # both sides are sampled before the edge
                    taken = ctx.get(dut.rx.ready)
                    out += _collect(ctx)
                    await ctx.tick()
            ctx.set(dut.rx.valid, 0)
            for _ in range(400):
                out += _collect(ctx)
                await ctx.tick()
            got.append(bytes(out))
            fulls.append(ctx.get(dut.full))

    def _collect(ctx):
        pulses[0] += ctx.get(dut.nak)
        return bytes([ctx.get(dut.tx.payload)]) if ctx.get(dut.tx.valid) else b""

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert got == want
    assert fulls == [full for _, full in steps]
    assert pulses[0] == naks
