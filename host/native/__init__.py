"""Native steady-state loops of the sites (C extensions), built once and cached.

docs/benchmarks.md, "What the goals need: a native steady-state loop per
site", is the design: each loop runs only a site's steady state and hands
everything else back to the Python path, which stays the definition.  The
first is the secondary's (``restore.c``, used by ``restore.py``).

A loop is compiled with the C compiler and the Python and OpenSSL headers
(``make setup`` installs ``gcc`` and ``libssl-dev``) into the user's cache
folder, ``$XDG_CACHE_HOME/tricopy/native/<hash>/``, keyed by the source,
this Python and its OpenSSL, so a changed source is never loaded stale and
an unchanged one is built once.  Why not a setuptools extension: the
package is installed editable from the source tree, where a build product
would outlive the source it came from; the cache keyed by the source's hash
cannot.  :func:`load` returns the module, or raises :class:`NativeUnavailable`
with one line saying why (no compiler, no headers): the caller then runs
the Python path.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import shutil
import ssl
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

__all__ = ["NativeUnavailable", "load", "cache_dir"]

_HERE = Path(__file__).parent
_CFLAGS = ("-O2", "-fPIC", "-shared", "-Wall", "-Wno-unused-parameter",
           "-Wno-missing-field-initializers", "-Wno-cast-function-type")
_LIBS = ("-lssl", "-lcrypto")
_loaded: dict[str, object] = {}


class NativeUnavailable(RuntimeError):
    """The native loop cannot be built or loaded here; the Python path runs."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tricopy" / "native"


def _key(source: bytes) -> str:
    h = hashlib.sha256(source)
    for part in (sys.version, ssl.OPENSSL_VERSION, " ".join(_CFLAGS + _LIBS)):
        h.update(part.encode())
    return h.hexdigest()[:16]


def _build(name: str, src: Path, out: Path) -> None:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise NativeUnavailable(f"no C compiler to build the native {name} loop "
                                f"(install gcc, or run `make setup`)")
    include = sysconfig.get_paths()["include"]
    out.parent.mkdir(parents=True, exist_ok=True)
    # built beside its final name, then renamed: two sites starting at once
    # never load a half-written file
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".so")
    os.close(fd)
    try:
        run = subprocess.run([cc, *_CFLAGS, f"-I{include}", str(src), "-o", tmp, *_LIBS],
                             capture_output=True, text=True)
        if run.returncode != 0:
            first = (run.stderr.strip().splitlines() or ["?"])[0]
            raise NativeUnavailable(f"building the native {name} loop failed: {first} "
                                    f"(needs gcc, Python's and OpenSSL's headers: `make setup`)")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load(name: str):
    """The compiled module ``_<name>`` of ``<name>.c``, built on first use."""
    if name in _loaded:
        return _loaded[name]
    src = _HERE / f"{name}.c"
    source = src.read_bytes()
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    path = cache_dir() / _key(source) / f"_{name}{suffix}"
    if not path.exists():
        _build(name, src, path)
    spec = importlib.util.spec_from_file_location(f"_{name}", path)
    try:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except ImportError as exc:
        raise NativeUnavailable(f"the native {name} loop does not load: {exc}") from None
    _loaded[name] = module
    return module
