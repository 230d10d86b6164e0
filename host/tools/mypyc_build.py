"""Compile the wire codec with mypyc, in place (an experiment, not the build).

    python -m tricopy.host.tools.mypyc_build [--clean]

mypyc turns a type-annotated module into a C extension that CPython imports
instead of the ``.py`` beside it; removing the ``.so`` files (``--clean``)
brings the pure module back.  The repository has no ``tricopy/`` folder of
its own (pyproject maps ``tricopy.host`` to ``host/``), and mypyc names a
module after the folders it sits in, so the build runs from a temporary
folder holding a ``tricopy`` link to the checkout.

Needs ``mypy`` (which ships mypyc) and a C compiler.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: The modules compiled, as paths under the checkout.
MODULES = ["host/wire/protocol.py", "host/nbd/protocol.py", "host/secondary/stream.py"]

_SETUP = """\
import sys
from setuptools import setup
from mypyc.build import mypycify
setup(name="tricopy-mypyc", script_args=["build_ext", "--inplace", "--build-temp", sys.argv[1]],
      ext_modules=mypycify(sys.argv[2:] + ["--follow-imports=silent", "--ignore-missing-imports",
                                           "--explicit-package-bases"],
                           opt_level="3", separate=True))
"""


def built() -> list[Path]:
    """The compiled modules now in the checkout."""
    return sorted(p for m in MODULES for p in (ROOT / m).parent.glob(
        Path(m).stem + "*.so"))


def clean() -> None:
    for path in built():
        path.unlink()


def build() -> None:
    clean()
    with tempfile.TemporaryDirectory(prefix="tricopy-mypyc-") as tmp:
        shim = Path(tmp) / "shim"
        shim.mkdir()
        (shim / "tricopy").symlink_to(ROOT)
        (Path(tmp) / "setup.py").write_text(_SETUP)
        env = dict(os.environ, MYPYPATH=str(shim), PYTHONPATH=str(shim))
        subprocess.run([sys.executable, str(Path(tmp) / "setup.py"), str(Path(tmp) / "temp")]
                       + [f"tricopy/{m}" for m in MODULES],
                       cwd=shim, env=env, check=True, stdout=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tricopy.host.tools.mypyc_build",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--clean", action="store_true",
                        help="remove the compiled modules (back to pure Python)")
    args = parser.parse_args(argv)
    if args.clean:
        clean()
    else:
        try:
            build()
        except (subprocess.CalledProcessError, OSError) as exc:
            print(f"mypyc build failed ({exc}): install mypy and a C compiler, "
                  f"or run the pure-Python modules (nothing to do)", file=sys.stderr)
            return 1
    for path in built():
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
