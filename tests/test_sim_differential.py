"""The differential run (``python -m tricopy.sim.differential``), bounded.

The documented run sends 10**6 descriptors (docs/hardware.md, "Differential
run"); this one sends 50,000 (about half of them in JNLDESC batches, and
about 30,000 other requests) with a fixed seed through the relay's sim
build (without data memory, cached in the user's cache folder; a cold
build adds 15-60 s) and requires identical answers. The second test holds
the checker to a model known to be wrong (an exact fit at the end of the
ring refused as FULL): the run must stop there and name that answer.
About 10-25 s for the file on the shared 2-core machine, the build cached.
"""

from __future__ import annotations

from tricopy.host.engine.model import EngineModel
from tricopy.sim.build import DESC_RESET_SIZE
from tricopy.sim.differential import run_differential


def test_a_hundred_thousand_requests_answer_alike():
    res = run_differential(50_000, seed=20261206)
    assert res.ok, res.mismatch
    # The run went through the edges it is meant to cover, not around them.
    assert res.events["exact fit at the end"] > 1000, res.events
    assert res.events["tail skip (wrap)"] > 100, res.events
    assert res.events["ring filled exactly"] > 1000, res.events
    # JNLDESC batches (docs/protocol.md, "JNLDESC batches"): taken whole,
    # stopped at a refused descriptor, refused whole
    for event in ("batch taken whole", "batch stopped", "batch refused whole"):
        assert res.events[event] > 100, res.events
    for status in ("OK", "FULL", "OVERSIZE", "BAD_FRAME", "BAD_BCRC", "BAD_REQUEST", "NOT_FOUND",
                   "NOT_EMPTY", "STALE_EPOCH", "WRONG_MODE", "BAD_DCRC", "BAD_KIND"):
        assert res.statuses.get(status, 0) > 50, (status, res.statuses)
    assert res.counts["LOAD"] > 1000 and res.counts["RELEASE"] > 10_000, res.counts
    # about half the descriptors come in batches, so fewer frames carry them
    assert res.counts["descriptors in batches"] > 15_000, res.counts
    assert res.requests > 50_000 and res.answer_bytes > 2_500_000


class _ExactFitRefused(EngineModel):
    """A model with an off-by-one: a record that exactly fills the tail of a
    ring holding journals is refused (``<`` where the rule says ``<=``)."""

    def _allocate(self, r: int) -> int | None:
        if self._used and self._jiptr >= self._joptr and r == self._size - self._jiptr:
            return None
        return super()._allocate(r)


def test_a_wrong_model_is_caught_at_its_first_wrong_answer():
    res = run_differential(50_000, seed=20261206, model_factory=lambda: _ExactFitRefused(
        DESC_RESET_SIZE, memory=0, name="sim", clock=lambda: 0))
    assert not res.ok
    # The first differing answer is an exact fit: FULL in the model, OK in the RTL.
    assert "(JNLDESC" in res.mismatch, res.mismatch
    assert "model NAK FULL req=0x18" in res.mismatch, res.mismatch
    assert "sim ACK OK req=0x18" in res.mismatch, res.mismatch
