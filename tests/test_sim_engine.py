"""The ``sim`` engine backend: the JournalEngine RTL, Verilated, live on TCP.

Three checks of ``sim/`` (docs/sim.md):
- the engine test vectors replayed through the harness's socket, byte for
  byte (HELLO's SITE field is the one allowed difference);
- one random request script through ``ModelEngine`` and the sim engine: the
  same answers, call for call;
- three sites with the relay on ``--engine sim``: a workload drains to
  SVOLs equal to the PVOLs.
(and the build's own checks, and an idle harness's accept() calls under
strace: ~8 s.)

Four harness builds (ring 256 for the vectors and the script; without data
memory, 512 for its vectors, and the one build for every descriptor ring
the relay and the demo use; 256 KiB with data memory for the relay), cached
in the user's cache folder (docs/sim.md, "Rebuild cache"): a first run costs
about a minute more per build here.  With the builds cached the file runs
in about 70 s on the shared 2-core machine (the demo ~20 s of it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import random
import socket
import time
from pathlib import Path

import pytest

from tricopy.host.wire import protocol as P
from tricopy.host.engine.base import EngineError, EngineNak, ModelEngine, open_engine
from tricopy.host.engine.model import EngineModel, with_site
from tricopy.host.wire.protocol import LoadFlag as LF
from tricopy.sim.bridge import SimEngine, SimHarness
from tricopy.sim import build as sim_build
from tricopy.sim.build import DESC_RESET_SIZE, SimBuildError, harness_path

VECTORS = Path(__file__).resolve().parents[1] / "host" / "wire" / "vectors" / "engine.json"
VECTOR_SIZE = 256
E2E_RING = 256 << 10
T0 = 1_700_000_000_000_000_000
#: The scenarios' "needs" the gateware has (as in tests/hdl/test_engine_cocotb.py).
RTL_FEATURES = {"ring_load", "no_memory", "desc_batch"}


# -- the vectors, byte for byte --------------------------------------------------


def _recv_exactly(sock: socket.socket, n: int, timeout: float = 5.0) -> bytes:
    data = bytearray()
    deadline = time.monotonic() + timeout
    while len(data) < n:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(n - len(data))
        except socket.timeout:
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


@pytest.mark.parametrize("size, memory", [(VECTOR_SIZE, None), (512, 0)],
                         ids=["data-256", "no-memory-512"])
def test_vectors_over_tcp(size, memory):
    # Every scenario of the build's reset size and data memory (the
    # descriptor ones and LOAD RING included): 256 with data memory, and
    # the build without data memory (descriptor rings only) at 512.
    scenarios = {name: sc for name, sc in json.loads(VECTORS.read_text())["scenarios"].items()
                 if sc["size"] == size and sc.get("memory", size) == (size if memory is None
                                                                        else memory)}
    # What the gateware lacks (docs/protocol.md, "JNLDESC batches": it refuses a batch;
    # tricopy.sim.differential holds it to a model without batches)
    lacking = {name for name, sc in scenarios.items() if set(sc.get("needs", ())) - RTL_FEATURES}
    assert lacking <= {"desc_batch"}, lacking
    scenarios = {name: sc for name, sc in scenarios.items() if name not in lacking}
    assert len(scenarios) >= (20 if memory is None else 1)
    steps = 0
    # reset_on_connect: a fresh engine per connection, one connection per scenario
    with SimHarness(size, reset_on_connect=True, memory=memory) as sim:
        for name, sc in scenarios.items():
            with socket.create_connection(("127.0.0.1", sim.port)) as sock:
                for i, step in enumerate(sc["steps"]):
                    want = bytes.fromhex(step["out"])
                    if step.get("site"):
                        want = with_site(want, "sim")
                    sock.sendall(bytes.fromhex(step["in"]))
                    got = _recv_exactly(sock, len(want))
                    assert got == want, f"{name} step {i}: got {got.hex()}, want {want.hex()}"
                    steps += 1
                # sink is empty: nothing beyond what the model answered
                assert _recv_exactly(sock, 1, timeout=0.05) == b"", f"{name}: extra bytes"
    assert steps > (100 if memory is None else 5)


# -- the same script through the model and the RTL --------------------------------

async def _script(engine, seed: int, ops: int) -> list:
    """Random requests, driven by the engine's own answers; returns every answer."""
    rng = random.Random(seed)
    log = [await engine.load(LF.TIME | LF.FREEZE, time=T0)]
    epoch, tag = 0, 0
    for _ in range(ops):
        x = rng.random()
        if x < 0.55:
            tag += 1
            n = rng.choice([0, 1, 63, 64, 65, rng.randrange(193)])
            data = rng.randbytes(n)
            ctl = P.Control(length=n, data_len=n, data_crc=P.crc32c(data), epoch=epoch,
                            idx=rng.getrandbits(16), address=rng.getrandbits(64), tag=tag,
                            kind=P.Kind.UPDATE)
            if rng.random() < 0.05:
                ctl = dataclasses.replace(ctl, epoch=epoch + 1)    # STALE_EPOCH
            log.append(await engine.submit(ctl, data))
        elif x < 0.7:
            st = await engine.status()
            log.append(st)
            try:
                log.append(await engine.read(st.tail_seq, rng.randint(1, 4)))
            except EngineNak as exc:
                log.append(("nak", exc.status))
        elif x < 0.85:
            st = await engine.status()
            upto = rng.randint(st.tail_seq - 1, st.next_seq)   # includes NOT_FOUND cases
            log.append(await engine.release(upto))
        elif x < 0.95:
            log.append(await engine.status())
        else:
            epoch += 1
            log.append(await engine.load(LF.EPOCH, epoch=epoch))
    log.append(await engine.status())
    return log


def test_model_and_sim_answer_alike():
    async def run():
        model = ModelEngine(EngineModel(VECTOR_SIZE, name="model"))
        sim = open_engine("sim", size=VECTOR_SIZE)
        assert isinstance(sim, SimEngine)
        try:
            want = await _script(model, seed=7, ops=400)
            got = await _script(sim, seed=7, ops=400)
        finally:
            await sim.close()
        assert sim.harness.proc.returncode == 0, "harness did not exit on close()"
        return want, got

    want, got = asyncio.run(run())
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g == w, f"answer {i}: sim {g} != model {w}"
    statuses = {a.status for a in want if isinstance(a, P.Ack)}
    assert {P.Status.OK, P.Status.FULL, P.Status.STALE_EPOCH} <= statuses, statuses


async def _desc_script(engine, seed: int, ops: int) -> list:
    """Random descriptor-ring requests (LOAD RING|DESC, JNLDESC, RELEASE with
    the JOPTR of the next journal), driven by the engine's own answers."""
    rng = random.Random(seed)
    log = [await engine.load(LF.TIME | LF.FREEZE, time=T0)]
    jofs: dict[int, int] = {}
    for _ in range(ops):
        x = rng.random()
        if x < 0.05 or len(log) == 1:
            size = rng.choice([256, 320, 1024, 4096, 1 << 40])
            ptr = max(0, size - 64 * rng.randrange(1, 8))
            log.append(await engine.load(LF.CLEAR | LF.RING | LF.DESC | LF.PTR, ptr=ptr,
                                         size=size))
        elif x < 0.6:
            n = rng.choice([0, 1, 64, 65, rng.randrange(400)])
            ctl = P.Control(length=n, data_len=n, data_crc=rng.getrandbits(32) if n else 0,
                            tag=rng.getrandbits(32), kind=P.Kind.UPDATE)
            ack = await engine.place(ctl)
            if ack.status == P.Status.OK:
                jofs[ack.seq] = ack.jofs
            log.append(ack)
        elif x < 0.85:
            st = await engine.status()
            log.append(st)
            if st.next_seq > st.tail_seq:
                upto = rng.randint(st.tail_seq, st.next_seq - 1)
                joptr = jofs[upto + 1] if upto + 1 < st.next_seq else st.jiptr
                log.append(await engine.release(upto, joptr))
        else:
            log.append(await engine.status())
    log.append(await engine.status())
    return log


def test_model_and_sim_answer_alike_descriptor():
    """The same descriptor script through the model without data memory and the
    sim built without one (docs/sim.md): the same answers."""
    async def run():
        model = ModelEngine(EngineModel(512, name="model", memory=0))
        sim = open_engine("sim", size=512, memory=0)
        try:
            want = await _desc_script(model, seed=11, ops=300)
            got = await _desc_script(sim, seed=11, ops=300)
        finally:
            await sim.close()
        return want, got

    want, got = asyncio.run(run())
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g == w, f"answer {i}: sim {g} != model {w}"
    statuses = {a.status for a in want if isinstance(a, P.Ack)}
    assert {P.Status.OK, P.Status.FULL} <= statuses, statuses


def test_sim_rejects_a_ring_the_gateware_cannot_have():
    with pytest.raises(SimBuildError, match="power of two"):
        harness_path(3 * 64)
    with pytest.raises(EngineError, match="1000"):     # the relay's path, before any build
        open_engine("sim", size=1000)
    with pytest.raises(EngineError, match="1000"):     # a descriptor ring: a multiple of 64
        open_engine("sim", size=1000, memory=0)


# -- three sites, the relay on the RTL -----------------------------------------------

@pytest.mark.parametrize("mode, journal", [(None, 1 << 30), ("data", E2E_RING)],
                         ids=["descriptor-default-1GiB", "data"])
def test_relay_on_sim_engine(tmp_path, mode, journal):
    # Descriptor rings (the default) on a 1 GiB journal volume: the engine
    # holds no data, so its build does not depend on the journal's size.
    from e2e.cluster import Cluster, Workload        # tests/ is on sys.path (rootdir-less)
    from tricopy.host.rcm import control
    # build before the relay's 20 s start-up deadline
    if mode is None:
        harness_path(DESC_RESET_SIZE, memory=0)
    else:
        harness_path(E2E_RING)
    cluster = Cluster(tmp_path, journal_size=journal, engine="sim", engine_mode=mode)
    try:
        cluster.start_all()
        work = Workload(cluster.control_addr("primary"), cluster.volumes, workers=4, seed=5)
        asyncio.run(work.run(count=12))
        state = cluster.wait_drained(timeout=90)
        assert work.acked == 48
        assert state["relay"]["next_seq"] - 1 >= 48
        for idx in range(cluster.volumes):
            pvol = cluster.volume_bytes("primary", idx)
            assert pvol == bytes(work.model[idx])
            assert cluster.volume_bytes("secondary", idx) == pvol, f"SVOL {idx} != PVOL {idx}"
        st = control.call(cluster.control_addr("relay"), "status")
        assert (st["engine"], st["engine_mode"]) == ("sim", mode or "descriptor")
        assert st["groups"][0]["size"] == journal
        # TIME is the wall clock the relay loaded into the RTL (not the time
        # since the harness started): the secondary's image is seconds old
        age = control.call(cluster.control_addr("secondary"), "status")["groups"][0][
            "restored_age_s"]
        assert -1 < age < 120, age
        # kill -9 the relay: its harness must notice (stdin EOF) and exit
        harnesses = _children(cluster.procs["relay"].pid, "tricopy-sim")
        assert len(harnesses) == 1, harnesses
        cluster.kill("relay")
        deadline = time.monotonic() + 5
        while Path(f"/proc/{harnesses[0]}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{harnesses[0]}").exists(), "harness outlived its relay"
    finally:
        cluster.stop_all()


def _children(pid: int, name: str) -> list[int]:
    """Child processes of ``pid`` called ``name`` (from /proc)."""
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            if Path(f"/proc/{child}/comm").read_text().strip() == name:
                kids.append(int(child))
    return kids


# -- one build, in the user's cache; `tricopy demo --engine sim` -----------------------

def test_build_cache_is_the_users(monkeypatch, tmp_path):
    monkeypatch.delenv("TRICOPY_SIM_BUILD", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert sim_build.build_root() == tmp_path / "xdg" / "tricopy" / "sim"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert sim_build.build_root() == tmp_path / "home" / ".cache" / "tricopy" / "sim"
    monkeypatch.setenv("TRICOPY_SIM_BUILD", str(tmp_path / "here"))
    assert sim_build.build_root() == tmp_path / "here"


def test_one_descriptor_build_serves_every_journal_size():
    """The engine without data memory loads its ring size at run time: the
    relay's engines for a 64 KiB and a 1 GiB journal are the same executable,
    and each takes its size with LOAD RING|DESC."""
    async def run(size):
        engine = open_engine("sim", size=size, memory=0)
        try:
            ack = await engine.load(LF.CLEAR | LF.RING | LF.DESC, size=size)
            assert ack.status == P.Status.OK
            st = await engine.status()
            placed = await engine.place(P.Control(length=4096, data_len=4096, data_crc=1, tag=9,
                                                  kind=P.Kind.UPDATE))
            return engine.harness.proc.args[0], st.ring_size, placed
        finally:
            await engine.close()

    exe_small, ring_small, _ = asyncio.run(run(64 << 10))
    exe_big, ring_big, placed = asyncio.run(run(1 << 30))
    assert exe_small == exe_big == str(harness_path(DESC_RESET_SIZE, memory=0))
    assert (ring_small, ring_big) == (64 << 10, 1 << 30)
    assert (placed.status, placed.seq, placed.jofs) == (P.Status.OK, 1, 0)


def test_a_failed_build_is_one_line_naming_its_log(monkeypatch, tmp_path):
    monkeypatch.setenv("TRICOPY_SIM_BUILD", str(tmp_path / "cache"))
    monkeypatch.setattr(sim_build, "_VERILATOR_ARGS",
                        sim_build._VERILATOR_ARGS + ["--no-such-verilator-option"])
    with pytest.raises(SimBuildError) as err:
        harness_path(DESC_RESET_SIZE, memory=0)
    message = str(err.value)
    assert "\n" not in message and "verilator failed" in message, message
    assert message.endswith(f"see {err.value.log}")
    assert "no-such-verilator-option" in err.value.log.read_text()
    # nothing that looks like a finished build, no scratch left behind
    assert not list((tmp_path / "cache").glob(f"*/{sim_build.EXE_NAME}"))
    assert not list((tmp_path / "cache").glob("*.tmp*"))


def test_one_edge_a_cycle_refuses_any_other_use_of_clk():
    """The sim build clocks the engine's registers on both edges of clk (one
    eval a cycle): only sound when clk is nothing but their posedge clock,
    so any other use is refused, in one line, rather than simulated wrong."""
    ok = ("module engine(clk, rst, q);\n  input clk;\n  wire clk;\n"
          "  always @(posedge clk)\n    q <= rst;\n  sub u (\n    .clk(clk),\n  );\nendmodule\n")
    assert sim_build._one_edge_a_cycle(ok) == ok.replace("posedge clk", "edge clk")
    for bad in ("  always @(negedge clk)\n", "  assign q = clk & rst;\n",
                "  always @(posedge clk or posedge rst)\n"):
        with pytest.raises(SimBuildError, match="uses clk other than") as err:
            sim_build._one_edge_a_cycle(ok.replace("endmodule", bad + "endmodule"))
        assert "\n" not in str(err.value)


def test_crc_tables_become_part_selects():
    """The sim build reads each CRC table lookup as a part-select of a
    localparam (sim/build.py, ``_crc_tables``), per module (wire names are a
    module's own), and refuses a table it cannot rewrite rather than
    leaving a shift of 8192 bits in the model."""
    from tricopy.hdl.crc import byte_table
    table = f"8192'h{byte_table():02048x}"
    module = ("module {name}(q);\n  wire [31:0] \\$5 ;\n  wire [13:0] \\$6 ;\n"
              "  assign \\$5  = {table} >> \\$6 ;\nendmodule\n")
    text = module.format(name="a", table=table) + module.format(name="b", table=table)
    out = sim_build._crc_tables(text)
    assert out.count("  assign \\$5 = crc_table_") == 2 and ">>" not in out
    assert "localparam [8191:0] crc_table_1 = " + table + ";" in out
    assert "crc_table_2[\\$6 +: 32]" in out
    # into a wider wire the shift is not a 32-bit word: refused
    wide = text.replace("wire [31:0]", "wire [63:0]")
    with pytest.raises(SimBuildError, match="CRC table lookup") as err:
        sim_build._crc_tables(wide)
    assert "\n" not in str(err.value)


_REGISTERS = """module engine(clk, rst, en, d, q);
  reg [7:0] \\$5 ;
  reg [7:0] count = 8'h00;
  reg [255:0] \\small  = 256'h0;
  reg [255:0] \\$6 ;
  always @(edge clk)
    count <= \\$5 ;
  always @(edge clk)
    \\small  <= \\$6 ;
  always @* begin
    if (\\$auto$verilog_backend.cc:2355:dump_module$15 ) begin end
    \\$5  = count;
    casez (en)
      1'h1:
          \\$5  = d;
    endcase
    if (rst) begin
      \\$5  = 8'h00;
    end
  end
  always @* begin
    if (\\$auto$verilog_backend.cc:2355:dump_module$15 ) begin end
    \\$6  = \\small ;
    if (en) begin
      \\$6 [7:0] = d;
    end
  end
endmodule
"""


def test_next_values_are_computed_in_the_clocked_blocks():
    """The sim build computes each register's next value in its clocked block
    (sim/build.py, ``_next_in_clocked``) instead of in a variable copied
    from the register and back every cycle; on the engine's own Verilog
    every register is merged, and a form the rewrite does not know fails
    the build in one line rather than being simulated otherwise."""
    out = sim_build._next_in_clocked(_REGISTERS)
    assert "\\$5" not in out and "\\$6" not in out and "always @*" not in out
    assert ("  always @(edge clk) begin\n    casez (en)\n      1'h1:\n          count <= d;\n"
            "    endcase\n    if (rst) begin\n      count <= 8'h00;\n    end\n  end\n") in out
    assert "  always @(edge clk) begin\n    if (en) begin\n      \\small [7:0] <= d;\n" in out
    engine = sim_build.generate_verilog(DESC_RESET_SIZE, sim_build.DEFAULT_CLK_HZ, 0)
    # (every register's copy merged: none left, and a block per register)
    assert "  always @(edge clk)\n" not in engine
    assert engine.count("  always @(edge clk) begin\n") > 100
    unknown = {
        "is read elsewhere": _REGISTERS.replace("endmodule", "  assign q = \\$5 ;\nendmodule"),
        "reads itself": _REGISTERS.replace("\\$5  = d;", "\\$5  = \\$5  + d;"),
        "a second target": _REGISTERS.replace("\\$5  = d;", "\\$5  = d;\n          q = d;"),
        "another width": _REGISTERS.replace("reg [7:0] \\$5 ;", "reg [8:0] \\$5 ;"),
        "a statement of another kind": _REGISTERS.replace("\\$6  = \\small ;",
                                                          "$display(d);"),
        "no always @*": _REGISTERS.replace("\\$6  = \\small ;", "q = \\small ;").replace(
            "\\$6 [7:0] = d;", "q[7:0] = d;"),
        "another clocked form": _REGISTERS.replace("count <= \\$5 ;", "count <= d;"),
    }
    for why, text in unknown.items():
        with pytest.raises(SimBuildError, match="_next_in_clocked") as err:
            sim_build._next_in_clocked(text)
        assert "\n" not in str(err.value), why


_CHECKS = """module engine(clk, rst, a, b, c, q);
  wire checks_en;
  wire \\$1 ;
  wire [8:0] \\$2 ;
  wire \\$3 ;
  wire [3:0] \\$4 ;
  reg h_ok = 1'h0;
  reg [3:0] h_low = 4'h0;
  assign \\$2  = a + b;
  assign \\$1  = \\$2  == 9'h100;
  assign \\$3  = a < c;
  assign \\$4  = a ^ b;
  assign q = \\$3 ;
  always @(edge clk) begin
    if (checks_en) begin
      h_ok <= \\$1 ;
      h_low <= \\$4 [3:0];
    end
  end
endmodule
"""


def test_the_checks_inputs_are_computed_in_their_blocks():
    """The sim build computes a wire only the registered checks read inside
    the checks' block (sim/build.py, ``_checks_inline``), at the wire's
    width, so Verilator evaluates it only when ``checks_en`` holds: a tree
    of such wires moves whole; a wire read elsewhere too, or by a
    bit-select, stays. On the engine's Verilog HCHECK's LENGTH-against-TYPE
    check moves into ``h_pass``'s block; without the blocks, or with
    nothing to move, the build fails in one line."""
    import re
    out = sim_build._checks_inline(_CHECKS)
    assert "h_ok <= $unsigned(1'($unsigned(9'(a + b)) == 9'h100));" in out
    assert not re.search(r"\\\$[12] ", out)
    assert "assign \\$3  = a < c;" in out and "h_low <= \\$4 [3:0];" in out
    engine = _sim_engine_verilog()
    block = re.search(r"^  always @\(edge clk\) begin\n    if \(checks_en\) begin\n"
                      r"      h_pass <= (.*);\n", engine, re.M)
    assert block and block.group(1).count("\\small [223:192] <") == 11
    for text in (_CHECKS.replace("checks_en", "other_en"),
                 _CHECKS.replace("h_ok <= \\$1 ;", "h_ok <= \\$1 [0];")):
        with pytest.raises(SimBuildError, match="_checks_inline") as err:
            sim_build._checks_inline(text)
        assert "\n" not in str(err.value)


@functools.lru_cache(maxsize=1)
def _sim_engine_verilog() -> str:
    """The descriptor engine's Verilog as the sim build makes it (~10 s)."""
    return sim_build.generate_verilog(DESC_RESET_SIZE, sim_build.DEFAULT_CLK_HZ, 0)


def test_the_responders_word_is_chosen_at_a_take_in_the_sim_build_only():
    """The sim build writes the responder's word multiplexer into ``word_q``
    at a take, by source and then index (hdl/responder.py,
    ``words_at_take``), so Verilator evaluates it only when a beat is taken;
    outside the switch (the boards, the proofs) it is the flat case on
    (source, index) into ``word``, as before (at width 8 without read-out,
    the source's copy ``src_q``)."""
    import re
    from amaranth.back import verilog
    from tricopy.hdl.responder import Responder, words_at_take

    def clocked_word_q(text):
        return re.search(r"^  always @\(edge clk\) begin\n    if \(\S+ ?\) begin\n"
                         r"      \(\* full_case = 32'd1 \*\)\n      casez \(source\)\n"
                         r"(.*?)^  end\n", text, re.M | re.S)

    engine = _sim_engine_verilog()
    block = clocked_word_q(engine)
    assert block and "word_q <= word" not in engine
    assert all(f"word_q <= ack[{32 * w + 31}:{32 * w}];" in block.group(1) for w in range(8))
    plain = verilog.convert(Responder(7, ring=False), name="resp", emit_src=False)
    with words_at_take():
        switched = verilog.convert(Responder(7, ring=False), name="resp", emit_src=False)
    # the boards' flat case reads the source, or at width 8 without read-out
    # (the UP5K top) its copy a cycle behind, ``src_q``
    assert re.search(r"casez \(\{ (source|src_q),", plain) and re.search(r"= word;$", plain, re.M)
    assert not re.search(r"casez \(\{ (source|src_q),", switched)
    assert "casez (source)" in switched
    assert not re.search(r"= word;$", switched, re.M)


def test_the_window_shifts_in_the_states_in_the_sim_build_only():
    """The sim build shifts ``small`` and ``stamp_time`` in the FSM's states
    and compares LENGTH with HCHECK's checks (hdl/engine.py,
    ``window_in_states``): the registers set a beat ahead for the UP5K
    (``to_small``, ``to_stamp``, ``aligning``, ``len_le``) are read by
    nothing there, so Verilator drops them. The boards' engine (outside the
    switch) shifts on them and keeps the LENGTH bounds' registers."""
    import os
    import re
    from amaranth.back import verilog
    from tricopy.hdl.engine import JournalEngine

    def read(text, name):
        # a use of ``name`` other than its declaration or a write to it
        return re.search(rf"^(?!\s*reg\b).*\b{name}\b(?!\s*<=)", text, re.M)

    os.environ["AMARANTH_USE_YOSYS"] = "builtin"
    sim = _sim_engine_verilog()
    board = verilog.convert(JournalEngine(8, DESC_RESET_SIZE, sim_build.DEFAULT_CLK_HZ, memory=0),
                            name="engine", emit_src=False)
    for name in ("to_small", "to_stamp", "aligning"):
        assert not read(sim, name), name
        assert read(board, name), name
    assert "len_le" not in sim and re.search(r"^\s*reg len_le40\b", board, re.M)


def test_the_harness_steps_only_an_evaluation_of_the_known_shape(tmp_path):
    """The harness calls the model's clocked logic directly, skipping
    Verilator's trigger loops (harness.cpp, ``edge()``). The build reads
    the generated C++ first (sim/build.py, ``_check_eval``): today's
    Verilator on the engine passes, and an evaluation of any other shape
    (another trigger, another phase, a second function in the nba phase)
    fails the build in one line rather than being skipped."""
    import subprocess
    (tmp_path / "engine.v").write_text(_sim_engine_verilog())
    subprocess.run(["verilator", *[a for a in sim_build._VERILATOR_ARGS
                                   if a not in ("--exe", "--build")],
                    "-Mdir", "obj", "engine.v", str(sim_build.HARNESS_TOP)],
                   cwd=tmp_path, env=sim_build._tool_env(), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = sim_build._ROOT
    cpp = "".join(p.read_text() for p in sorted((tmp_path / "obj").glob(f"{root}__*.cpp")))
    sim_build._check_eval(cpp)
    nba = "vlSelfRef.__VnbaTriggered[0U])) {\n"
    unknown = {
        "a second trigger": ("vlSelfRef.__Vtrigprevexpr___TOP__clk__0 = vlSelfRef.clk;\n",
                             "vlSelfRef.__Vtrigprevexpr___TOP__clk__0 = vlSelfRef.clk;\n"
                             "    vlSelfRef.__VactTriggered[0U] |= 2ULL;\n"),
        "another function in the nba phase": (nba, nba + f"        {root}___nba_comb(vlSelf);\n"),
        "an input-combinational phase": (f"{root}___eval_phase__nba(vlSelf);\n",
                                         f"{root}___eval_phase__nba(vlSelf);\n"
                                         f"        {root}___eval_phase__ico(vlSelf);\n"),
        "no nba phase": (f"{root}___eval_nba(", f"{root}___eval_nba_renamed("),
    }
    for why, (old, new) in unknown.items():
        assert cpp.count(old) >= 1, why
        with pytest.raises(SimBuildError, match="_EVAL_SHAPE") as err:
            sim_build._check_eval(cpp.replace(old, new))
        assert "\n" not in str(err.value), why


def test_an_idle_harness_calls_accept_only_for_a_connection(tmp_path):
    """With no client the harness keeps simulating (CLOCK follows wall
    time) and looks for one after every batch. A non-blocking accept()
    with nothing waiting still allocates and frees a socket in the kernel:
    called at every batch it cost an idle harness ~41 % of a core against
    ~12 % with a client. Under strace: two seconds of idle batches (two
    stats lines, thousands of batches), then one connection, and exactly
    one accept()."""
    import os
    import shutil
    import subprocess
    strace = shutil.which("strace")
    assert strace, "strace is missing: make setup installs it (APT_PACKAGES)"
    exe = harness_path(DESC_RESET_SIZE, memory=0)
    summary = tmp_path / "strace.txt"
    proc = subprocess.Popen([strace, "-c", "-e", "trace=accept,accept4", "-o", str(summary),
                             str(exe), "--port", "0", "--watch-stdin"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TRICOPY_SIM_STATS": "1"})
    try:
        port = int(proc.stdout.readline().split()[1])
        for _ in range(2):      # a stats line a second: the harness has idled
            assert "cycles" in proc.stderr.readline()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(P.Frame(P.FrameType.STATUS, b"").serialize())
            parser, frames = P.FrameParser(), []
            while not frames:       # the connection was taken: STATUS is answered
                frames += parser.feed(client.recv(1 << 16))
            assert frames[0].type == P.FrameType.STATUS_RESP
    finally:
        proc.stdin.close()
        proc.wait(30)
    # strace -c: "% time  seconds  usecs/call  calls  [errors]  syscall"
    calls = sum(int(line.split()[3]) for line in summary.read_text().splitlines()
                if line.split()[-1:] in (["accept"], ["accept4"]))
    assert calls == 1, summary.read_text()


def _demo(tmp_path, *args, env=None, timeout=300):
    import os
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "tricopy.host.cli", "demo", "--engine", "sim",
                           "--duration", "3", "--size", "4", "--dir", str(tmp_path / "demo"),
                           *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_demo_on_sim_engine(tmp_path):
    """`tricopy demo --engine sim` as a user runs it (shortened): builds the
    engine once (cached; about a minute with a cold cache), then pairs,
    writes for 3 s and verifies like the default demo.  ~20 s when cached."""
    harness_path(DESC_RESET_SIZE, memory=0)     # a cold cache costs the build, not the demo's run
    out = _demo(tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "engine sim" in out.stdout and "sim engine ready in" in out.stdout
    assert "building the sim engine" not in out.stdout       # the cached build is reused
    assert "verified: PVOL == SVOL for all 2 volumes (SHA-256 equal)" in out.stdout
    assert out.stdout.count("equal") >= 2 and "DIFFERENT" not in out.stdout
    assert "--engine sim" in out.stdout                       # what to try next


def test_demo_says_in_one_line_when_the_build_times_out(tmp_path):
    cache = tmp_path / "cache"
    out = _demo(tmp_path, env={"TRICOPY_SIM_BUILD": str(cache),
                               "TRICOPY_SIM_BUILD_TIMEOUT": "0.5"}, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("tricopy demo: the sim engine did not build: the Verilator "
                               "build did not finish in 0.5 s"), lines[0]
    log = Path(lines[0].rsplit("see ", 1)[1])
    assert log.exists() and log.parent == cache
    assert "started the relay" not in out.stdout             # no site was started
    assert not list(cache.glob(f"*/{sim_build.EXE_NAME}")) and not list(cache.glob("*.tmp*"))
