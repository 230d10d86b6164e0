"""The chaos runner's short run (``tricopy chaos``, host/tools/chaos.py), part of ``make test``.

30 seeded rounds: every site SIGKILLed, every fault of the link emulator on
both links, a planned swap, a power cut of the relay and of the secondary,
an unplanned takeover and its failback (each kind once or twice), queue
depths 1, 4 and 16, random, sequential and hot-spot writes; zero violations
of the checks (consistent snapshots are prefixes of the acknowledged
history, after each drain every acknowledged write is on the SVOL and SVOL
== PVOL, no write refused, every acknowledged write on the site that took
over).  About two minutes on the 2-core build machine.  Two short runs
with a sync of the power-cut disk skipped must report violations (the
power-cut rounds can see a missing sync).  ``TRICOPY_CHAOS_ROUNDS`` / ``TRICOPY_CHAOS_SEED``
change the run; a failing seed's logs are kept in ``chaos-logs/`` under the
test's folder.
"""

from __future__ import annotations

import os

from tricopy.host.tools import chaos

ROUNDS = int(os.environ.get("TRICOPY_CHAOS_ROUNDS", "30"))
SEED = int(os.environ.get("TRICOPY_CHAOS_SEED", "1"))


def test_chaos_rounds_find_no_violation(tmp_path):
    fig = chaos.run(tmp_path / "run", SEED, ROUNDS, logs=tmp_path / "chaos-logs")
    print("\n" + fig.table())
    assert not fig.violations, "\n".join(fig.violations[:20]) + \
        f"\n(logs: {tmp_path / 'chaos-logs'})"
    assert fig.rounds == ROUNDS
    if ROUNDS >= len(chaos.FAULT_KINDS):
        assert set(fig.faults) == set(chaos.FAULT_KINDS), "a site or a link was never hit"
        assert fig.patterns["hotspot"] and len(fig.depths) == len(chaos.DEPTHS)
    assert fig.verified == fig.acked > 0
    assert fig.snapshots_consistent > 0


def test_power_cuts_of_the_relay_catch_a_skipped_fdatasync(tmp_path):
    """The relay's journal fdatasync a no-op on its power-cut disk: a cut
    loses journals it ACKed, and the run must say so."""
    fig = chaos.run(tmp_path / "run", 3, 2, logs=None, echo=lambda _t: None,
                    faults=("power:relay",), mutations=("fdatasync",))
    assert fig.violations, "a relay that never syncs lost nothing at two power cuts"


def test_power_cuts_of_the_secondary_catch_a_skipped_fsync(tmp_path):
    """The secondary's SVOL and state fsyncs no-ops: a cut loses what it
    had restored and recorded, and the run must say so."""
    fig = chaos.run(tmp_path / "run", 3, 2, logs=None, echo=lambda _t: None,
                    faults=("power:secondary",), mutations=("fsync",))
    assert fig.violations, "a secondary that never syncs lost nothing at two power cuts"


def test_checker_catches_a_lost_write_and_a_non_prefix():
    """The history's checker itself, on images that are wrong on purpose."""
    h = chaos.History()
    idx0, first0, _ = h.regions[0]
    idx1, first1, _ = h.regions[1]
    a, b = chaos.stamped(0, 1, 1), chaos.stamped(1, 1, 1)
    h.sent[0].append([idx0, first0 * chaos.BLOCK, a, 0.0, 1.0])
    h.acks[0].append(1.0)
    h.sent[1].append([idx1, first1 * chaos.BLOCK, b, 2.0, 3.0])     # sent after a was acked
    h.acks[1].append(3.0)
    size = chaos.VOL_BLOCKS * chaos.BLOCK
    vols = [bytearray(size) for _ in range(chaos.VOLUMES)]
    vols[idx1][first1 * chaos.BLOCK:(first1 + 1) * chaos.BLOCK] = b   # b without a
    bad, _ = h.check([bytes(v) for v in vols], all_acked=False)
    assert any("acknowledged before it was sent" in x for x in bad), bad
    bad, _ = h.check([bytes(v) for v in vols], all_acked=True)
    assert any("acknowledged writes lost" in x for x in bad), bad
    vols[idx0][first0 * chaos.BLOCK + 100] ^= 1                         # a torn block
    bad, _ = h.check([bytes(v) for v in vols], all_acked=False)
    assert any("not its writes 1..0" in x for x in bad), bad
    vols[idx0][first0 * chaos.BLOCK:(first0 + 1) * chaos.BLOCK] = a
    assert h.check([bytes(v) for v in vols], all_acked=True) == ([], [1, 1] + [0] * 14)
