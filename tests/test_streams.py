"""Stateful tests of the sans-I/O stream objects, driven through every fault order.

Hypothesis plays a primary, a relay and a secondary built from the objects
the sites use (``PseqGate``, ``ForwardStream``, ``RestoreStream``), with
in-memory disks, and interleaves host writes, deliveries, duplicates, lost
links, FULL, fsyncs, restore steps, checkpoints, power loss of the relay and
crashes of the secondary, and offers relays whose stream went backwards or
that are at another epoch.  After every step it checks what an observer
could see:

* no journal the relay ACKed is lost while the relay survives (it is held,
  or on the SVOL for good);
* the relay stores journals in PSEQ order, once each;
* the SVOL is the prefix 1..applied of the relay's history whenever the
  secondary does not say it is catching up after a crash;
* a relay whose stream went backwards is always refused, never trusted.
"""

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tricopy.host.relay.streams import Admission, ForwardStream, ForwardViolation, PseqGate
from tricopy.host.secondary.stream import RestoreStream
from tricopy.host.wire.protocol import Control, Hello, Kind, Role
from tricopy.host.wire.pseq import next_pseq

BLOCKS = 6           # a hot spot: blocks are written again and again
RING = 12            # journals the relay's ring holds before FULL


def journal(seq: int, pseq: int, block: int) -> Control:
    return Control(seq=seq, address=block, length=0, kind=Kind.MARK, tag=pseq, group=1)


class Trio(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        # primary: PSEQ -> block; pending = sent, not ACKed
        self.p_next = 0
        self.p_pending: list[int] = []
        self.p_blocks: dict[int, int] = {}
        self.p_acked: set[int] = set()
        self.to_relay: list[int] = []             # PSEQs on the wire
        # relay: held journals (seq -> pseq), durable prefix, JOPTR (tail)
        self.gate = PseqGate()
        self.fwd = ForwardStream(0, 0)
        self.r_held: dict[int, int] = {}
        self.r_next = 1
        self.r_durable = 0
        self.r_tail = 1
        self.r_last_durable_tag = 0
        self.history: dict[int, tuple[int, int]] = {}     # seq -> (pseq, block)
        # secondary: stream, durable (R, M), SVOL (block -> seq that wrote it)
        self.s_state = (0, 0)
        self.s = RestoreStream(1, 0)
        self.svol: dict[int, int] = {}
        self.connected = False
        self.next_out = 1
        self.to_secondary: list[int] = []

    # -- the primary ---------------------------------------------------------------

    @rule(block=st.integers(0, BLOCKS - 1))
    def host_write(self, block):
        self.p_next = next_pseq(self.p_next)
        self.p_blocks[self.p_next] = block
        self.p_pending.append(self.p_next)
        self.to_relay.append(self.p_next)

    @precondition(lambda self: self.to_relay)
    @rule(dup=st.booleans(), skip=st.booleans())
    def deliver_to_relay(self, dup, skip=False):
        if skip and len(self.to_relay) > 1:
            pseq = self.to_relay.pop(1)     # the one before it was refused (FULL): a gap
        else:
            pseq = self.to_relay[0] if dup else self.to_relay.pop(0)
        if self.gate.admit(pseq) is not Admission.NEW:
            return                               # a resend (re-ACKed) or a gap (NAKed)
        if self.r_next - self.r_tail >= RING:
            self.to_relay.clear()                # FULL: the primary probes again later
            return
        self.r_held[self.r_next] = pseq
        self.history[self.r_next] = (pseq, self.p_blocks[pseq])
        self.r_next += 1
        self.gate.taken(pseq)

    @rule()
    def relay_fsync(self):
        """Group commit: everything appended is durable, then ACKed."""
        self.r_durable = self.r_next - 1
        if self.r_durable >= self.r_tail:
            self.r_last_durable_tag = self.r_held[self.r_durable]
        for seq in range(self.r_tail, self.r_durable + 1):
            pseq = self.r_held[seq]
            if pseq in self.p_pending:
                self.p_pending.remove(pseq)
                self.p_acked.add(pseq)

    @rule()
    def primary_reconnects(self):
        """The link drops; the primary sends again what was not ACKed."""
        self.to_relay = list(self.p_pending)

    @rule()
    def relay_crash(self):
        """Power loss at the relay: what was not fsynced is gone; the gate
        restarts from the newest durable journal's PSEQ."""
        for seq in range(max(self.r_durable + 1, self.r_tail), self.r_next):
            del self.r_held[seq]
            del self.history[seq]
        self.r_next = max(self.r_durable + 1, self.r_tail)
        self.gate = PseqGate(self.r_last_durable_tag)
        self.fwd = ForwardStream(0, self.r_next - 1)    # all held may have been sent
        self.connected = False
        self.to_secondary.clear()
        self.to_relay = list(self.p_pending)

    # -- relay -> secondary -----------------------------------------------------------

    @rule()
    def connect(self):
        self.connected = False
        self.to_secondary.clear()
        newest = self.r_next - 1
        assert self.s.refuse(Hello(Role.RELAY, 1, 0, newest, "g1", "relay")) is None, \
            "the relay's own stream was refused"
        peer = Hello(Role.SECONDARY, 1, 0, self.s.restored, "g1", "secondary")
        assert self.fwd.refuse(peer, newest, self.r_tail) is None, \
            "the secondary's restore point does not continue the relay's stream"
        self.next_out = self.fwd.start(self.s.restored, self.r_tail)
        self.release(self.s.restored)
        self.connected = True

    @precondition(lambda self: self.connected)
    @rule(n=st.integers(1, 5))
    def forward(self, n):
        # Only durable journals leave the relay (durability "fsync").
        n = min(n, self.fwd.room(self.next_out), self.r_durable - self.next_out + 1)
        if n <= 0:
            return
        self.to_secondary += range(self.next_out, self.next_out + n)
        self.next_out += n
        self.fwd.sent(self.next_out - 1)

    @precondition(lambda self: self.to_secondary)
    @rule(dup=st.booleans(), skip=st.booleans())
    def deliver_to_secondary(self, dup, skip):
        if skip and len(self.to_secondary) > 1:
            seq = self.to_secondary.pop(1)       # out of order: a gap first
        else:
            seq = self.to_secondary[0] if dup else self.to_secondary.pop(0)
        pseq, block = self.history[seq]
        self.s.receive(journal(seq, pseq, block), b"")

    @rule()
    def link_drops(self):
        self.connected = False
        self.to_secondary.clear()

    # -- the secondary ----------------------------------------------------------------

    @rule(k=st.integers(1, 6))
    def restore_step(self, k):
        if (mark := self.s.mark_due()) is not None:
            self.s_state = (self.s_state[0], mark)         # saved before applying past it
            self.s.mark_saved(mark)
        for ctl, _ in self.s.take(k):
            assert ctl.seq <= self.s_state[1], "applied past the durable apply mark"
            self.svol[ctl.address] = ctl.seq

    @rule()
    def checkpoint(self):
        self.s_state = (self.s.applied, max(self.s_state[1], self.s.applied))
        self.s.restored_saved(self.s.applied)
        if self.connected:
            self.release(self.fwd.ack(self.s.restored))

    @rule()
    def secondary_crash(self):
        """SIGKILL: the SVOL keeps what was applied, the state file is (R, M)."""
        r, m = self.s_state
        self.s = RestoreStream(1, 0, restored=r, mark=m)
        self.connected = False
        self.to_secondary.clear()

    def release(self, upto: int) -> None:
        while self.r_tail <= min(upto, self.r_next - 1):
            del self.r_held[self.r_tail]
            self.r_tail += 1

    @rule(writes=st.integers(1, 8), blocks=st.randoms(use_true_random=False),
          refused=st.booleans())
    def traffic(self, writes, blocks, refused):
        """A burst that goes all the way: writes, relay, fsync, link, forward,
        delivery (the single-step rules interleave faults inside it).
        ``refused``: one journal in the middle does not get in (FULL), so
        the ones after it arrive after a gap."""
        for _ in range(writes):
            self.host_write(blocks.randrange(BLOCKS))
        if refused and len(self.to_relay) > 2:
            self.to_relay.pop(blocks.randrange(1, len(self.to_relay) - 1))
        while self.to_relay:
            self.deliver_to_relay(False)
        self.relay_fsync()
        if not self.connected:
            self.connect()
        self.forward(RING)
        while self.to_secondary:
            self.deliver_to_secondary(False, False)

    # -- relays that are not this stream: always refused ----------------------------

    @rule(back=st.integers(1, 5))
    def a_relay_behind_is_refused(self, back):
        high = self.s.high
        if high >= back:
            hello = Hello(Role.RELAY, 1, 0, high - back, "g1", "recreated")
            assert self.s.refuse(hello) is not None

    @rule()
    def a_relay_at_another_epoch_is_refused(self):
        hello = Hello(Role.RELAY, 1, 1, self.r_next - 1, "g1", "stale")
        assert "epoch" in self.s.refuse(hello)

    @precondition(lambda self: self.connected)
    @rule(extra=st.integers(1, 3))
    def an_ack_past_what_was_sent_is_refused(self, extra):
        try:
            self.fwd.ack(self.fwd.forwarded + extra)
        except ForwardViolation:
            return
        raise AssertionError("an ACK past what was forwarded was taken")

    # -- what an observer may check ------------------------------------------------

    def image(self, n: int) -> dict[int, int]:
        img: dict[int, int] = {}
        for seq in range(1, n + 1):
            img[self.history[seq][1]] = seq
        return img

    @invariant()
    def acked_writes_are_held_or_restored(self):
        held = set(self.r_held.values())
        restored = {self.history[seq][0] for seq in range(1, self.s_state[0] + 1)}
        for pseq in self.p_acked:
            assert pseq in held or pseq in restored, f"PSEQ {pseq} was ACKed and is gone"

    @invariant()
    def relay_order_is_pseq_order(self):
        pseqs = [self.history[s][0] for s in sorted(self.history)]
        assert all(next_pseq(a) == b for a, b in zip(pseqs, pseqs[1:])), pseqs

    @invariant()
    def svol_is_a_prefix_unless_catching_up(self):
        if self.s.catching_up:
            return
        assert self.svol == self.image(self.s.applied), (
            f"the SVOL is not the prefix 1..{self.s.applied} and nothing says so")

    @invariant()
    def nothing_applied_past_the_mark(self):
        r, m = self.s_state
        assert r <= m and self.s.applied <= max(m, r)


Trio.TestCase.settings = settings(max_examples=200, stateful_step_count=80, deadline=None)
TestTrio = Trio.TestCase


def test_gate_admits_each_pseq_once_across_the_wrap():
    gate = PseqGate(2**32 - 2)
    assert gate.admit(2**32 - 1) is Admission.NEW
    gate.taken(2**32 - 1)
    assert gate.admit(1) is Admission.NEW          # 0 is never a PSEQ
    assert gate.admit(2**32 - 1) is Admission.RESEND
    assert gate.admit(2) is Admission.GAP


def test_forward_stream_never_releases_what_was_not_sent():
    fwd = ForwardStream(0, 10)
    assert fwd.start(4, 3) == 5
    fwd.sent(12)
    assert fwd.ack(12) == 12
    try:
        fwd.ack(13)
    except ForwardViolation as exc:
        assert "13" in str(exc) and "12" in str(exc)
    else:
        raise AssertionError("an ACK past what was sent was taken")
