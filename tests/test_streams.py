"""Stateful tests of the sans-I/O stream objects, driven through every fault order.

Hypothesis plays a primary, a relay and a secondary built from the objects
the sites use (``SendStream``, ``PseqGate``, ``ForwardStream``,
``RestoreStream``), with in-memory disks, and interleaves host writes,
deliveries, duplicates, lost links, FULL and its probes, fsyncs, restore
steps, checkpoints, power loss of the relay, crashes of the primary and the
secondary, and offers relays whose stream went backwards or that are at
another epoch.  After every step it checks what an observer could see:

* no journal the relay ACKed is lost while the relay survives (it is held,
  or on the SVOL for good);
* host writes complete in PSEQ order, once; while the relay says FULL only
  one probe goes out, and once it has room nothing is left waiting;
* a relay HELLO below the highest PSEQ it ACKed is caught as a loss;
* the relay stores journals in PSEQ order, once each;
* the SVOL is the prefix 1..applied of the relay's history whenever the
  secondary does not say it is catching up after a crash;
* a relay whose stream went backwards is always refused, never trusted.
"""

from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tricopy.host.primary.stream import (FULL_PROBE_FIRST, FULL_PROBE_MAX, RelayLost, Resume,
                                         SendStream)
from tricopy.host.relay.streams import (Admission, AnswerGate, ForwardStream, ForwardViolation,
                                        PseqGate)
from tricopy.host.secondary.stream import RestoreStream
from tricopy.host.wire.protocol import Ack, Control, FrameType, Hello, Kind, Role, Status
from tricopy.host.wire.pseq import next_pseq

BLOCKS = 6           # a hot spot: blocks are written again and again
RING = 12            # journals the relay's ring holds before FULL


def journal(seq: int, pseq: int, block: int) -> Control:
    return Control(seq=seq, address=block, length=0, kind=Kind.MARK, tag=pseq, group=1)


class Trio(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        # primary: the real SendStream (items are block numbers), its link, its clock
        self.p = SendStream()
        self.p_blocks: dict[int, int] = {}
        self.p_acked: set[int] = set()
        self.p_last_completed = 0
        self.p_saved_hwm = 0                      # the ACK mark as last saved to disk
        self.probe_armed = False
        self.clock = 0.0
        self.to_relay: list[int] = []             # PSEQs on the wire
        self.to_primary: list[tuple[str, int]] = []   # answers on the wire
        # relay: held journals (seq -> pseq), durable prefix, JOPTR (tail),
        # answers in arrival order, each waiting for the SEQ# it needs durable
        self.gate = PseqGate()
        self.fwd = ForwardStream(0, 0)
        self.r_held: dict[int, int] = {}
        self.r_next = 1
        self.r_durable = 0
        self.r_tail = 1
        self.r_last_durable_tag = 0
        self.r_answers: list[tuple[int, str, int]] = []
        self.history: dict[int, tuple[int, int]] = {}     # seq -> (pseq, block)
        # secondary: stream, durable (R, M), SVOL (block -> seq that wrote it)
        self.s_state = (0, 0)
        self.s = RestoreStream(1, 0)
        self.svol: dict[int, int] = {}
        self.connected = False
        self.next_out = 1
        self.to_secondary: list[int] = []

    # -- the primary and its link ----------------------------------------------------

    @rule(block=st.integers(0, BLOCKS - 1))
    def host_write(self, block):
        tag = self.p.next_tag()
        self.p_blocks[tag] = block
        was_blocked = self.p.blocked
        if self.p.add(tag, block):
            assert not was_blocked, "a new journal was sent while the relay is FULL"
            self.to_relay.append(tag)

    def complete(self, acked) -> None:
        for tag, _ in acked:
            assert tag == next_pseq(self.p_last_completed) or not self.p_last_completed, \
                f"PSEQ {tag} completed after {self.p_last_completed}: out of order or twice"
            self.p_last_completed = tag
            self.p_acked.add(tag)

    @precondition(lambda self: not self.p.online)
    @rule()
    def primary_connects(self):
        """The relay settles the old connection's journals (durable) before its HELLO."""
        self.relay_fsync()
        self.r_answers.clear()
        resume = self.p.connected(self.gate.last)
        assert isinstance(resume, Resume), f"a relay that lost nothing was refused: {resume}"
        self.complete(resume.acked)
        if self.p.blocked:
            event("reconnected while FULL")
            assert len(resume.send) <= 1, "the window was resent while FULL"
        self.to_relay += resume.send

    @rule()
    def primary_link_drops(self):
        self.p.disconnected()
        self.to_relay.clear()
        self.to_primary.clear()
        self.probe_armed = False

    @rule()
    def primary_saves_hwm(self):
        self.p_saved_hwm = self.p.acked_hwm

    @rule(released=st.booleans())
    def primary_restarts(self, released):
        """A crash of the primary.  Its write log holds every journal after the
        ACK mark last saved, or after the in-memory one if segments up to it
        were released; redo queues them all again, as the restart does."""
        old = self.p
        self.primary_link_drops()
        start = old.acked_hwm if released else self.p_saved_hwm
        self.p = SendStream(last_pseq=old.last_pseq, acked_hwm=self.p_saved_hwm)
        for tag in range(start + 1, old.last_pseq + 1):
            self.p.pending[tag] = self.p_blocks[tag]
        self.p_last_completed = start

    @precondition(lambda self: self.p.online and self.p.acked_hwm > 1)
    @rule(back=st.integers(1, 5))
    def a_relay_that_lost_acked_journals_is_caught(self, back):
        """A HELLO below the ACK mark (the relay's journal was recreated)."""
        lost = self.p.connected(max(0, self.p.acked_hwm - back))
        assert isinstance(lost, RelayLost) and lost.acked == self.p.acked_hwm

    @precondition(lambda self: self.probe_armed)
    @rule(wait=st.floats(0.0, 2.0))
    def probe_fires(self, wait):
        self.clock += wait
        self.probe_armed = False
        tag = self.p.probe()
        if tag is not None:
            self.to_relay.append(tag)

    @precondition(lambda self: self.to_primary)
    @rule()
    def deliver_to_primary(self):
        kind, tag = self.to_primary.pop(0)
        if kind == "ack":
            resume = self.p.on_ack(tag)
            self.complete(resume.acked)
            self.to_relay += resume.send
        elif kind == "full":
            event("relay answered FULL")
            delay = self.p.on_full(tag, self.clock, float("inf"))
            assert FULL_PROBE_FIRST <= delay <= FULL_PROBE_MAX
            self.probe_armed = True
        else:
            event("gap NAK after a FULL")
            reason = self.p.on_refused(tag, Status.BAD_REQUEST)
            assert reason is None, f"the primary suspended on a gap a FULL explains: {reason}"

    # -- the relay's side of the primary link ------------------------------------------

    def answer(self, need: int, kind: str, tag: int) -> None:
        self.r_answers.append((need, kind, tag))
        self.flush_answers()

    def flush_answers(self) -> None:
        """Answers leave in arrival order, each once what it needs is durable."""
        while self.r_answers and self.r_answers[0][0] <= self.r_durable:
            _, kind, tag = self.r_answers.pop(0)
            self.to_primary.append((kind, tag))

    @precondition(lambda self: self.to_relay)
    @rule(dup=st.booleans())
    def deliver_to_relay(self, dup):
        pseq = self.to_relay[0] if dup else self.to_relay.pop(0)
        admission = self.gate.admit(pseq)
        if admission is Admission.RESEND:
            self.answer(self.r_next - 1, "ack", pseq)
            return
        if admission is Admission.GAP:
            self.answer(0, "nak", pseq)
            return
        if self.r_next - self.r_tail >= RING:
            self.answer(0, "full", pseq)
            return
        self.r_held[self.r_next] = pseq
        self.history[self.r_next] = (pseq, self.p_blocks[pseq])
        self.answer(self.r_next, "ack", pseq)
        self.r_next += 1
        self.gate.taken(pseq)

    @rule()
    def relay_fsync(self):
        """Group commit: everything appended is durable; the answers waiting for it go."""
        self.r_durable = self.r_next - 1
        if self.r_durable >= self.r_tail:
            self.r_last_durable_tag = self.r_held[self.r_durable]
        self.flush_answers()

    @rule()
    def relay_crash(self):
        """Power loss at the relay: what was not fsynced is gone; the gate
        restarts from the newest durable journal's PSEQ."""
        for seq in range(max(self.r_durable + 1, self.r_tail), self.r_next):
            del self.r_held[seq]
            del self.history[seq]
        self.r_next = max(self.r_durable + 1, self.r_tail)
        self.r_answers.clear()
        self.gate = PseqGate(self.r_last_durable_tag)
        self.fwd = ForwardStream(0, self.r_next - 1)    # all held may have been sent
        self.connected = False
        self.to_secondary.clear()
        self.primary_link_drops()

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

    @rule(writes=st.integers(1, 8), blocks=st.randoms(use_true_random=False))
    def traffic(self, writes, blocks):
        """A burst that goes all the way: writes, relay, fsync, answers, probes,
        link, forward, delivery (the single-step rules interleave faults inside it)."""
        if not self.p.online:
            self.primary_connects()
        for _ in range(writes):
            self.host_write(blocks.randrange(BLOCKS))
        self.settle_primary()
        if not self.connected:
            self.connect()
        self.forward(RING)
        while self.to_secondary:
            self.deliver_to_secondary(False, False)
        self.checkpoint()
        self.settle_primary()     # the ring has room again: the probe gets in, the rest follow

    def settle_primary(self) -> None:
        """Run the primary link until nothing moves; then nothing may wait that could go."""
        for _ in range(1000):
            if self.to_relay:
                self.deliver_to_relay(False)
            elif self.to_primary or self.r_answers:
                self.relay_fsync()
                while self.to_primary:
                    self.deliver_to_primary()
            elif self.probe_armed and self.r_next - self.r_tail < RING:
                self.probe_fires(1.0)
            else:
                break
        else:
            raise AssertionError("the primary link did not settle")
        if self.p.online and self.r_next - self.r_tail < RING:
            assert not self.p.pending, (f"PSEQ {list(self.p.pending)} wait although the relay "
                                        f"has room")

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


def test_send_stream_waits_a_bounded_time_then_names_the_reason():
    p = SendStream()
    assert p.unreachable(0.0, 30) is None                 # idle: no clock runs
    assert p.add(p.next_tag(), "w1") is False             # no link: queued, not sent
    assert p.unreachable(100.0, 30) is None               # the clock starts now
    assert p.unreachable(129.0, 30) is None
    assert "unreachable for more than 30 s" in p.unreachable(131.0, 30)
    resume = p.connected(0)
    assert resume.send == [1] and p.online
    assert p.on_full(1, 0.0, 60) == FULL_PROBE_FIRST
    assert p.on_full(1, 1.0, 60) == 2 * FULL_PROBE_FIRST  # the probe backs off
    assert p.on_full(1, 61.0, 60) == "relay journal FULL for more than 60 s"


def test_send_stream_continues_after_a_relay_that_knows_more():
    """The primary's write log was lost but the relay holds later PSEQs: go on after them."""
    p = SendStream(last_pseq=5, acked_hwm=5)
    assert isinstance(p.connected(9), Resume)
    assert p.next_tag() == 10 and p.acked_hwm == 9
    lost = SendStream(last_pseq=12, acked_hwm=12).connected(9)
    assert isinstance(lost, RelayLost) and str(lost).endswith("journals 10..12 lost at the relay")


def test_send_stream_continues_after_the_relay_when_its_own_unsent_pseqs_were_lost():
    """PSEQs 10..12 were given out, never sent, and a power loss took their
    records (nothing pending); the relay holds up to 9, ACKed up to 8: the
    next journal is 10, not 13 (a gap the relay would refuse)."""
    p = SendStream(last_pseq=12, acked_hwm=8)
    assert isinstance(p.connected(9), Resume)
    assert p.next_tag() == 10 and p.acked_hwm == 9
    # with journals still pending, they are what continues the stream
    q = SendStream(last_pseq=9, acked_hwm=8)
    q.add(q.next_tag(), "w10")
    resume = q.connected(9)
    assert resume.send == [10] and q.next_tag() == 11


# -- the relay's answers to the primary: cumulative ACKs, never before the fsync -----

@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["take", "take", "take", "dup", "nak", "sync", "ready"]),
                max_size=80), st.randoms(use_true_random=False))
def test_answer_gate_acks_only_what_is_durable_in_order(ops, rnd):
    """Played against the relay's rules: journals taken in PSEQ order get
    SEQ#s in order; a resend is ACKed once the newest journal is durable; a
    NAK waits for nothing.  Every ACK that leaves covers only durable
    journals, no answer overtakes another (a run of ACKs becomes its latest),
    and nothing durable is held back."""
    gate = AnswerGate()
    queued = []             # (seq needed or None, tag, is_ack) in queue order
    out = []                # what was sent: (tag, is_ack)
    pseq = seq = durable = 0
    sent_upto = 0           # answers of ``queued`` accounted for by ``out``

    def ready():
        nonlocal sent_upto
        frames, times = gate.ready(durable)
        assert len(times) <= len(queued) - sent_upto
        covered = queued[sent_upto:sent_upto + len(times)]
        sent_upto += len(times)
        # each answer released is durable (or needs nothing)
        assert all(need is None or need <= durable for need, _, _ in covered)
        # the frames are the released answers, in order, each run of ACKs as its last
        expect = []
        for _, tag, is_ack in covered:
            if is_ack and expect and expect[-1][1]:
                expect[-1] = (max(expect[-1][0], tag), True)
            else:
                expect.append((tag, is_ack))
        got = [(Ack.unpack(f.body).tag, f.type == FrameType.ACK) for f in frames]
        assert got == expect
        out.extend(got)
        # nothing durable left waiting at the head
        if gate:
            need = gate.need()
            assert need is not None and need > durable

    for op in ops:
        if op == "take":
            pseq, seq = pseq + 1, seq + 1
            ack = Ack(seq=seq, tag=pseq, req_type=FrameType.JNLWR)
            # as the relay queues it (an Ack, framed only if sent), or as a frame
            gate.add(seq, ack if rnd.random() < 0.5 else ack.frame())
            queued.append((seq, pseq, True))
        elif op == "dup" and pseq:
            tag = rnd.randint(1, pseq)
            gate.add(seq, Ack(tag=tag, req_type=FrameType.JNLWR).frame())
            queued.append((seq, tag, True))
        elif op == "nak":
            frame = Ack(tag=pseq + 2, status=Status.BAD_REQUEST, req_type=FrameType.JNLWR).frame()
            gate.add(None, frame)
            queued.append((None, pseq + 2, False))
        elif op == "sync":
            durable = rnd.randint(durable, seq)
        elif op == "ready":
            ready()
    durable = seq
    ready()
    assert not gate and sent_upto == len(queued)
    # an ACK that left covers PSEQs whose journals are all durable at that moment,
    # checked above; and the last ACK sent is for the newest PSEQ acked at all
    acks = [tag for tag, is_ack in out if is_ack]
    if acks:
        assert max(acks) == max(tag for _, tag, is_ack in queued if is_ack)
