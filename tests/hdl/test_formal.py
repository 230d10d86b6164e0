"""The formal proofs of the journal engine (hdl/formal.py, docs/hardware.md
"Formal proofs"), run with SymbiYosys and yices.

Each proof is k-induction (``mode prove``) at k = 2 over the real RTL with
pointers narrowed to ``max_ring_bits`` = 9 (rings of 2..8 granules, every
SIZE a LOAD RING can set at that width), for the boards' builds: width 8
without JNLDESC batches and with batches of up to 64 descriptors
(DESC_BATCH); width 32 is left to ``make formal``. docs/hardware.md has
the run times. The mutants below show that the proofs fail when
the guarantee they check is broken: a sequencer that skips or reuses
numbers, a batch that loses the SEQ# or HELD step of a descriptor taken, a
batch RAM that stores a descriptor's words in the wrong place or with a bit
flipped, a timestamp unit that runs fast.
"""

import pytest
from amaranth.hdl import Fragment, Module, Signal

from tricopy.hdl.engine import JournalEngine, _Port, lazy_checks, window_in_states
from tricopy.hdl.formal import (CompareSpec, EngineSpec, FormalToolError, TimestampSpec, _Taps,
                                _tool, main, run_sby)
from tricopy.hdl.sequencer import Sequencer
from tricopy.hdl.timestamp import Timestamp

pytestmark = pytest.mark.timeout(600)

DEPTH = 2


# The boards' builds: width 8 without batches (the iCEBreaker's default)
# and with batches of 64 (the ULX3S, the sim). Width 32 (with batches) is
# proven by ``make formal``, at a wider ring, to keep the suite bounded
# (docs/hardware.md, "Formal proofs")
@pytest.mark.parametrize("width, batch", [(8, 1), (8, 64)])
def test_engine_contract_proven(width, batch, tmp_path):
    res = run_sby(EngineSpec(width, desc_batch=batch), f"engine{width}_{batch}", mode="prove",
                  depth=DEPTH, workdir=tmp_path)
    assert res.passed, (res.failed, res.log[-3000:])


def test_engine_contract_proven_with_lazy_checks(tmp_path):
    """The sim build's engine (hdl/engine.py, ``lazy_checks``: the
    registered checks load only outside HEADER and BODY; ``window_in_states``:
    the window shifts in the FSM's states, LENGTH is compared with the
    checks) under the same contract, at the sim's width and batches."""
    with lazy_checks(), window_in_states():
        res = run_sby(EngineSpec(8, desc_batch=64), "engine8_64_lazy", mode="prove",
                      depth=DEPTH, workdir=tmp_path)
    assert res.passed, (res.failed, res.log[-3000:])


def test_timestamp_unit_proven(tmp_path):
    res = run_sby(TimestampSpec(), "timestamp", mode="prove", depth=DEPTH, workdir=tmp_path)
    assert res.passed, (res.failed, res.log[-3000:])


# The mutants keep the real counter's ``carry`` register (a port the
# engine reads), right for the value they hold (the spec restates it: "INV: NEXT_SEQ's carry"), so that
# what catches them is the broken step, not a missing register.
class _SkippingSequencer(Sequencer):
    """Steps by 2: a SEQ# is skipped."""

    def elaborate(self, platform):
        m = Module()
        carry = self.carry
        with m.If(self.load):
            m.d.sync += [self.value.eq(self.load_value), carry.eq(self.load_value[:32].all())]
        with m.Elif(self.step):
            m.d.sync += [self.value.eq(self.value + 2), carry.eq((self.value[:32] + 2)[:32].all())]
        return m


class _StuckSequencer(Sequencer):
    """Ignores ``step``: every journal gets the same SEQ#."""

    def elaborate(self, platform):
        m = Module()
        carry = self.carry
        with m.If(self.load):
            m.d.sync += [self.value.eq(self.load_value), carry.eq(self.load_value[:32].all())]
        return m


@pytest.mark.parametrize("mutant", [_SkippingSequencer, _StuckSequencer])
def test_engine_proof_catches_broken_sequencer(mutant, tmp_path):
    res = run_sby(EngineSpec(8, sequencer=mutant),
                  "seq_mutant", mode="prove", depth=DEPTH, workdir=tmp_path)
    assert not res.passed
    assert any(f.startswith(("SEQ:", "INV: NEXT_SEQ")) for f in res.failed), res.failed


class _Dropped:
    """Stands in for the sequencer in a batch's EXEC: its ``step`` goes nowhere."""

    def __init__(self):
        self.step = Signal(name="dropped_step")


class _NoPendingStepEngine(JournalEngine):
    """A batch's descriptor taken does not step NEXT_SEQ for the one before
    it (the answer still steps the last): two descriptors share a SEQ#."""

    def _exec_journal(self, m, v, req):
        super()._exec_journal(m, dict(v, seq=_Dropped()), req)


class _NoPendingHeldEngine(JournalEngine):
    """A batch's descriptor taken does not count the one before it in HELD."""

    def _exec_journal(self, m, v, req):
        super()._exec_journal(m, dict(v, held=Signal.like(v["held"], name="dropped_held")), req)


@pytest.mark.parametrize("mutant, expected", [
    (_NoPendingStepEngine, ("SEQ:", "INV: NEXT_SEQ", "INV: the pending SEQ#")),
    (_NoPendingHeldEngine, ("SEQ: HELD", "RING: HELD", "INV: a journal held")),
])
def test_batch_proof_catches_a_lost_pending_step(mutant, expected, tmp_path):
    res = run_sby(EngineSpec(8, desc_batch=2, engine=mutant), "batch_mutant", mode="prove",
                  depth=DEPTH, workdir=tmp_path)
    assert not res.passed
    assert any(f.startswith(expected) for f in res.failed), res.failed


class _BatchRamMutant(JournalEngine):
    """The batch RAM's write port, with ``addr_xor`` on its address and
    ``data_xor`` on its data: descriptors stored in the wrong word, or with
    a bit flipped."""

    addr_xor = data_xor = 0

    def _body(self, m, v):
        real = v["bram_w"]
        fake = _Port(Signal.like(real.addr), Signal.like(real.data), Signal())
        super()._body(m, dict(v, bram_w=fake))
        m.d.comb += [real.addr.eq(fake.addr ^ self.addr_xor),
                     real.data.eq(fake.data ^ self.data_xor), real.en.eq(fake.en)]


class _SwappedWords(_BatchRamMutant):
    addr_xor = 1


class _FlippedBit(_BatchRamMutant):
    data_xor = 1 << 3


@pytest.mark.parametrize("mutant", [_SwappedWords, _FlippedBit])
def test_batch_proof_catches_a_descriptor_read_back_wrong(mutant, tmp_path):
    res = run_sby(EngineSpec(8, desc_batch=2, engine=mutant), "bram_mutant", mode="prove",
                  depth=DEPTH, workdir=tmp_path)
    assert not res.passed
    assert any(f.startswith(("BATCH: a descriptor is read back", "INV: the RAM holds",
                             "INV: BLOAD")) for f in res.failed), res.failed


class _FastTimestamp(Timestamp):
    """Adds a nanosecond too many every cycle."""

    def __init__(self, clk_hz):
        super().__init__(clk_hz)
        self.ns_int += 1


def test_timestamp_proof_catches_a_wrong_step(tmp_path):
    res = run_sby(TimestampSpec(timestamp=_FastTimestamp), "ts_mutant", mode="prove",
                  depth=DEPTH, workdir=tmp_path)
    assert not res.passed
    # Either names the wrong step: the property itself, or the invariant of
    # the carry into the high word (a register computed from the step,
    # hdl/timestamp.py), whichever the solver reaches first in a run.
    caught = {"TIME: advances by NS_INT or NS_INT + 1", "INV: the clock's carry is this step's"}
    assert caught & set(res.failed), res.failed


def test_a_failed_assertion_is_named_in_either_summary_form(tmp_path):
    """SymbiYosys ends a base-case failure's line with " step <n>": the
    property's name must be found either way (the wrong-step test above
    failed once on the file:line it gave instead)."""
    from tricopy.hdl.formal import _assert_text
    src = tmp_path / "spec.py"
    src.write_text('x = 1\n        Assert(a == (b + 1),\n               "INV: the name")\n')
    head = "SBY 4:30:43 [t] summary:   failed assertion top._witness_.check_3 at "
    assert _assert_text(f"{head}{src}:2") == "INV: the name"
    assert _assert_text(f"{head}{src}:2 step 1") == "INV: the name"


def test_alloc_comparison_proven_at_every_width(tmp_path):
    res = run_sby(CompareSpec(), "compare", mode="prove", depth=1, workdir=tmp_path)
    assert res.passed, (res.failed, res.log[-3000:])


def _le_off_by_one(a, b):
    """The split form with ``<`` for ``<=``: an exact fit refused above 23 bits."""
    n = len(a)
    return b[n:].any() | (a < b[:n]) if n < len(b) else a <= b


def test_compare_proof_catches_a_wrong_split(tmp_path):
    res = run_sby(CompareSpec(le=_le_off_by_one), "compare_mutant", mode="prove", depth=1,
                  workdir=tmp_path)
    assert not res.passed
    assert res.failed == ["COMPARE: le_wide(R, x) is R <= x"], res.failed


def test_missing_register_is_named():
    frag = Fragment.get(JournalEngine(8, 192, memory=0), None)
    with pytest.raises(LookupError, match="'no_such_register'"):
        _Taps(frag)("no_such_register")


def test_bad_build_parameter_is_one_line(capsys):
    assert main(["--desc-batch", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: desc_batch must be an integer from 1 to 64")
    assert "Traceback" not in err and err.count("\n") == 1


def test_missing_tool_is_a_typed_error():
    with pytest.raises(FormalToolError, match="not found"):
        _tool("no-such-solver-binary")
