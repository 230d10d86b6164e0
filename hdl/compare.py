"""Comparisons with constants as plain logic.

Yosys maps ``x < 60`` on a 23-bit ``x`` to a 23-cell carry chain on the
iCE40 (one logic cell per bit). The engine compares its byte counters with
small constants in many places, so these helpers spell the comparison out
as equalities on the upper bits, which synthesize to a few LUTs.

A simulator wants the opposite: Verilator computes ``x < 60`` in one machine
comparison, the spelt-out form in a dozen masked equalities, every cycle.
Inside :func:`native_compares` the helpers write the plain comparison (the
same function; ``tests/hdl/test_compare.py`` holds the two spellings
equal): the Verilator harness builds that way (``sim/build.py``; docs/sim.md,
"Harness speed"), the boards and the formal proofs keep the spelt-out form.
"""

from functools import reduce

from amaranth.hdl import Const, Value

from .switch import Switch

__all__ = ["lt_const", "ge_const", "le_wide", "native_compares"]

_NATIVE = Switch("tricopy_native_compares")


def native_compares():
    """Within this block :func:`lt_const` and :func:`ge_const` write plain
    comparisons (module docstring): for a simulator, not for synthesis."""
    return _NATIVE.on()


def lt_const(x, k: int) -> Value:
    """``x < k`` for an unsigned value ``x`` and an integer constant ``k``."""
    x = Value.cast(x)
    if not isinstance(k, int):
        raise TypeError(f"k must be an integer constant, not {k!r}")
    n = len(x)
    if k <= 0:
        return Const(0, 1)
    if k >= 1 << n:
        return Const(1, 1)
    if _NATIVE:
        return x < k
    # x < k iff, at some bit i where k has a 1, x has a 0 and the bits above
    # i are equal to k's
    terms = []
    for i in range(n):
        if (k >> i) & 1:
            above = x[i + 1:]
            same = (above == (k >> (i + 1))) if len(above) else Const(1, 1)
            terms.append(~x[i] & same)
    return reduce(lambda a, b: a | b, terms)


def ge_const(x, k: int) -> Value:
    """``x >= k`` for an unsigned value ``x`` and an integer constant ``k``."""
    return ~lt_const(x, k)


def le_wide(a, b) -> Value:
    """``a <= b`` for unsigned values where ``a`` is narrower than ``b``.

    Yosys zero-extends ``a`` and builds a carry chain the width of ``b``
    (a logic cell per bit on the iCE40); above ``a``'s width the chain only
    asks whether ``b`` has a bit set there, which a few LUTs answer.
    """
    a, b = Value.cast(a), Value.cast(b)
    n = len(a)
    if n >= len(b):
        return a <= b
    return b[n:].any() | (a <= b[:n])
