"""PSEQ arithmetic: the primary's per-group journal numbers, carried in TAG.

The primary numbers its journals 1, 2, 3, ... (PSEQ) and the relay accepts
only the next one, re-ACKs one it holds and NAKs a gap
(docs/replication.md, "Resend and duplicates").  TAG is 32 bits, so PSEQ
wraps: comparisons are serial arithmetic (RFC 1982 style), and 0 is never a
PSEQ ("none yet").  Both sides take these from here.
"""

from __future__ import annotations

__all__ = ["TAG_MOD", "next_pseq", "tag_distance", "tag_after"]

TAG_MOD = 1 << 32          # PSEQ lives in the 32-bit TAG and wraps


def next_pseq(pseq: int) -> int:
    """The PSEQ after ``pseq``; 0 is never used (it means "none yet")."""
    return pseq + 1 if pseq + 1 < TAG_MOD else 1


def tag_distance(tag: int, last: int) -> int:
    """How far ``tag`` is after ``last`` in the wrapping 32-bit PSEQ space."""
    return (tag - last) % TAG_MOD


def tag_after(tag: int, mark: int) -> bool:
    """True if PSEQ ``tag`` comes after ``mark`` (mark 0: "none yet")."""
    if mark == 0:
        return tag != 0
    return 0 < tag_distance(tag, mark) < TAG_MOD // 2
