"""Build-time switches for the simulator's builds of the RTL.

Some logic is written two ways with the same behaviour: one that maps well
onto FPGA LUTs and carry chains (the default, what boards and proofs
build) and one that Verilator's C++ evaluates faster (``sim/build.py``
turns it on while it elaborates).  A :class:`Switch` is off unless code
runs inside its ``on()`` block, so nothing but that build ever sees it.
"""

from __future__ import annotations

import contextlib
import contextvars

__all__ = ["Switch"]


class Switch:
    """A context-local flag, off by default."""

    def __init__(self, name: str):
        self._var = contextvars.ContextVar(name, default=False)

    def __bool__(self) -> bool:
        return self._var.get()

    @contextlib.contextmanager
    def on(self):
        token = self._var.set(True)
        try:
            yield
        finally:
            self._var.reset(token)
