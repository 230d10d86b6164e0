"""Per-hop wait and queue figures of a site's data path, for ``tricopy bench``.

Each site keeps a few :class:`Hop` counters (a count, a sum of seconds or
of a depth, a maximum) and shows them under ``"perf"`` in its control
``status``; ``tricopy bench hops`` reads them before and after a fio run
and prints the means of the deltas (host/tools/bench_replicate.py).  They
only add: the cost is a ``perf_counter()`` or two per journal.
"""

from __future__ import annotations

from time import perf_counter

__all__ = ["Hop", "Perf", "PERF", "now"]

now = perf_counter


class Hop:
    """``n`` events, ``total`` (seconds or items) over them, the largest one."""

    __slots__ = ("n", "total", "max")

    def __init__(self) -> None:
        self.n = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, value: float, n: int = 1) -> None:
        self.n += n
        self.total += value
        if value > self.max:
            self.max = value

    def to_json(self) -> list:
        return [self.n, round(self.total, 6), round(self.max, 6)]


class Perf:
    """Named :class:`Hop` counters, created on first use."""

    def __init__(self) -> None:
        self.hops: dict[str, Hop] = {}

    def __getitem__(self, name: str) -> Hop:
        hop = self.hops.get(name)
        if hop is None:
            hop = self.hops[name] = Hop()
        return hop

    def to_json(self) -> dict:
        return {name: hop.to_json() for name, hop in sorted(self.hops.items())}


#: this process's counters (one site per process; in-process tests share it)
PERF = Perf()
