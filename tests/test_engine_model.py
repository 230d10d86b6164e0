"""The reference journal engine (host/engine/model.py) against docs/protocol.md.

Hand-written cases check what the vectors cannot show (the ring image, the
clock); a Hypothesis state machine drives random request sequences against a
plain-Python account of what was submitted and checks, after every step,
the rules docs/protocol.md states: SEQ# without gaps, JIPTR/JOPTR inside
the ring, wrap and exact fit, FULL only when the journal does not fit.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule)

from tricopy.host.wire import protocol as P
from tricopy.host.engine.model import WRAP_MARKER, EngineModel, EngineStream, unpad
from tricopy.host.wire.protocol import Frame, FrameType as T, Kind, LoadFlag as LF, Status as S


def data_of(n: int, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed) & 0xFF for i in range(n))


def jnlwr(data: bytes = b"", *, kind: int = Kind.UPDATE, tag: int = 0, epoch: int = 0,
          **fields) -> Frame:
    values = dict(length=len(data), data_len=len(data), data_crc=P.crc32c(data), kind=kind,
                  tag=tag, epoch=epoch, address=512, idx=2)
    values.update(fields)
    return Frame(T.JNLWR, P.journal_body(P.Control(**values), data))


def one_ack(model: EngineModel, frame: Frame) -> P.Ack:
    (answer,) = model.handle(frame)
    return P.Ack.from_frame(answer)


class Clock:
    """A free-running ns source the test moves by hand."""
    def __init__(self, now: int = 0):
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def frozen():
    model = EngineModel(512, clock=Clock())
    assert one_ack(model, P.Load(LF.TIME | LF.FREEZE, time=1000).frame()).status == S.OK
    return model


# -- construction ------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 64, 100, 127, 200, -128, True, 256.0, "256"])
def test_bad_sizes_are_refused_by_name(size):
    with pytest.raises(ValueError, match=repr(size).replace("(", r"\(").replace(".", r"\.")):
        EngineModel(size)


def test_smallest_ring_and_odd_multiple_are_fine():
    assert EngineModel(128).size == 128
    assert EngineModel(192).wrap_at == 192      # the model does not need a power of two


def test_bad_name():
    with pytest.raises(ValueError):
        EngineModel(256, name="x" * 33)
    with pytest.raises(UnicodeEncodeError):
        EngineModel(256, name="relé")


def test_reset_state():
    m = EngineModel(256, clock=Clock(5))
    assert (m.jiptr, m.joptr, m.used, m.free, m.wrap_at) == (0, 0, 0, 256, 256)
    assert (m.next_seq, m.tail_seq, m.held, m.epoch, m.acks, m.naks) == (1, 1, 0, 0, 0, 0)
    assert m.now == 0 and m.last_time == 0
    assert m.ring() == bytes(256)


# -- ring image ----------------------------------------------------------------------

def test_record_image_is_stamped_control_data_then_padded_data(frozen):
    data = data_of(70)
    ack = one_ack(frozen, jnlwr(data, tag=42))
    assert (ack.seq, ack.time, ack.jofs, ack.tag) == (1, 1000, 0, 42)
    ring = frozen.ring()
    ctl = P.Control.unpack(ring[:64])
    assert (ctl.seq, ctl.time, ctl.jofs, ctl.tag, ctl.address) == (1, 1000, 0, 42, 512)
    assert ctl.ccrc_ok()
    assert ring[64:134] == data and ring[134:192] == bytes(58)
    assert frozen.jiptr == 192 and frozen.used == 192


def test_wrap_marker_written_at_jiptr(frozen):
    one_ack(frozen, jnlwr(data_of(150)))         # [0, 256)
    one_ack(frozen, jnlwr(data_of(100)))         # [256, 448)
    one_ack(frozen, P.Release(1).frame())        # JOPTR 256
    ack = one_ack(frozen, jnlwr(data_of(120), tag=7))
    assert (ack.status, ack.jofs) == (S.OK, 0)
    ring = frozen.ring()
    assert ring[448:512] == WRAP_MARKER
    assert P.Control.unpack(WRAP_MARKER).kind == Kind.WRAP
    assert P.Control.unpack(ring[:64]).tag == 7
    assert (frozen.wrap_at, frozen.used, frozen.jiptr) == (448, 192 + 64 + 192, 192)


def test_exact_fit_writes_no_marker(frozen):
    one_ack(frozen, jnlwr(data_of(100)))         # [0, 192)
    before = frozen.ring()
    one_ack(frozen, jnlwr(data_of(250)))         # [192, 512)
    assert frozen.jiptr == 0 and frozen.wrap_at == 512
    assert frozen.ring()[:192] == before[:192]


def test_partial_space_writes_nothing(frozen):
    one_ack(frozen, jnlwr(data_of(150)))         # [0, 256)
    one_ack(frozen, jnlwr(data_of(64)))          # [256, 384)
    one_ack(frozen, P.Release(1).frame())
    before, naks = frozen.ring(), frozen.naks
    ack = one_ack(frozen, jnlwr(data_of(300), tag=3))
    assert (ack.status, ack.tag, ack.seq, ack.jofs) == (S.FULL, 3, 0, 0)
    assert frozen.ring() == before and frozen.naks == naks + 1
    assert (frozen.jiptr, frozen.joptr, frozen.wrap_at, frozen.next_seq) == (384, 256, 512, 3)


def test_refused_journal_changes_nothing_but_naks(frozen):
    one_ack(frozen, jnlwr(data_of(10)))
    state = (frozen.ring(), frozen.jiptr, frozen.used, frozen.next_seq, frozen.acks)
    for frame in (jnlwr(data_of(10), epoch=1), jnlwr(data_of(10), data_crc=1),
                  jnlwr(data_of(10), kind=0), jnlwr(data_of(9), length=10),
                  jnlwr(data_of(600))):
        assert one_ack(frozen, frame).status != S.OK
    assert (frozen.ring(), frozen.jiptr, frozen.used, frozen.next_seq, frozen.acks) == state
    assert frozen.naks == 5


def test_clear_keeps_bytes_but_drops_journals(frozen):
    one_ack(frozen, jnlwr(data_of(10)))
    image = frozen.ring()
    ack = one_ack(frozen, P.Load(LF.CLEAR).frame())
    assert (ack.seq, ack.jofs, ack.time) == (2, 0, 1000)
    assert frozen.ring() == image and frozen.held == 0 and frozen.tail_seq == 2


# -- clock -------------------------------------------------------------------------

def test_clock_runs_from_the_loaded_base():
    clock = Clock(10_000)
    m = EngineModel(256, clock=clock)
    clock.now += 50
    assert m.now == 50                           # reset: CLOCK 0, then it runs
    one_ack(m, P.Load(LF.TIME, time=1 << 40).frame())
    clock.now += 7
    assert m.now == (1 << 40) + 7
    assert one_ack(m, jnlwr()).time == (1 << 40) + 7


def test_freeze_holds_until_a_load_with_time():
    clock = Clock()
    m = EngineModel(256, clock=clock)
    one_ack(m, P.Load(LF.TIME | LF.FREEZE, time=500).frame())
    clock.now += 1000
    one_ack(m, P.Load(LF.EPOCH | LF.FREEZE, epoch=2).frame())   # no TIME: FREEZE has no effect
    clock.now += 1000
    assert m.now == 500
    one_ack(m, P.Load(LF.TIME, time=600).frame())                # TIME without FREEZE: runs
    clock.now += 3
    assert m.now == 603


def test_time_never_goes_backwards():
    clock = Clock()
    m = EngineModel(1024, clock=clock)
    one_ack(m, P.Load(LF.TIME, time=10_000).frame())
    t1 = one_ack(m, jnlwr()).time
    one_ack(m, P.Load(LF.TIME, time=5).frame())                  # clock set backwards
    clock.now += 100
    assert one_ack(m, jnlwr()).time == t1 == m.last_time          # stalls at LAST_TIME
    clock.now += 20_000
    assert one_ack(m, jnlwr()).time == 5 + 20_100


def test_clock_wraps_at_64_bits():
    clock = Clock()
    m = EngineModel(256, clock=clock)
    one_ack(m, P.Load(LF.TIME, time=(1 << 64) - 2).frame())
    clock.now += 5
    assert m.now == 3
    m.status().pack()                            # NOW still fits its field


# -- requests ----------------------------------------------------------------------

def test_hello_reports_engine_state(frozen):
    one_ack(frozen, P.Load(LF.EPOCH, epoch=9).frame())
    one_ack(frozen, jnlwr(epoch=9))
    (answer,) = frozen.handle(P.Hello(P.Role.RELAY, 4, 1, 0, "g", "r").frame())
    assert P.Hello.unpack(answer.body) == P.Hello(P.Role.ENGINE, 0, 9, 1, "", "model")


def test_status_matches_state(frozen):
    one_ack(frozen, jnlwr(data_of(100)))
    one_ack(frozen, P.Release(5).frame())        # NOT_FOUND counts as a NAK
    (answer,) = frozen.handle(Frame(T.STATUS))
    assert P.EngineStatus.unpack(answer.body) == P.EngineStatus(
        jiptr=192, joptr=0, ring_size=512, free=320, next_seq=2, tail_seq=1, now=1000,
        acks=1, naks=1, epoch=0, held=1, wrap_at=512)


def test_load_seq_checks_come_before_any_effect(frozen):
    one_ack(frozen, jnlwr())
    ack = one_ack(frozen, P.Load(LF.SEQ | LF.TIME | LF.EPOCH, seq=50, time=1, epoch=1).frame())
    assert ack.status == S.NOT_EMPTY
    assert (frozen.now, frozen.epoch, frozen.next_seq) == (1000, 0, 2)


def test_readout_is_repeatable_until_released(frozen):
    for i in range(3):
        one_ack(frozen, jnlwr(data_of(i * 40, seed=i), tag=i))
    first = frozen.handle(P.JnlRd(1, 3).frame())
    assert frozen.handle(P.JnlRd(1, 3).frame()) == first
    assert [f.flags for f in first] == [P.FrameFlag.MORE, P.FrameFlag.MORE, 0, 0]
    assert [P.split_journal(f.body)[1] for f in first[:3]] == [data_of(i * 40, seed=i)
                                                              for i in range(3)]
    ack = P.Ack.from_frame(first[-1])
    assert (ack.seq, ack.tag, ack.jofs, ack.req_type) == (3, 3, 0, T.JNLRD)


def test_release_of_unknown_seq_releases_nothing(frozen):
    one_ack(frozen, jnlwr())
    ack = one_ack(frozen, P.Release(2).frame())
    assert (ack.status, ack.seq, ack.req_type) == (S.NOT_FOUND, 2, T.RELEASE)
    assert frozen.held == 1


# -- the byte front end -------------------------------------------------------------

def test_stream_truncated_frame_waits():
    """A truncated frame cannot be told from slow bytes: nothing is answered."""
    stream = EngineStream(EngineModel(256))
    assert stream.feed(jnlwr(data_of(10), tag=6).serialize()[:-40]) == b""
    assert stream.feed(Frame(T.STATUS).serialize()) == b""      # swallowed as body bytes
    # ... until the frame's declared length is complete: then one BAD_BCRC, and the
    # rest of the second STATUS is taken as the start of a header (the host times out).
    (nak,) = P.FrameParser().feed(stream.feed(Frame(T.STATUS).serialize() * 2))
    assert P.Ack.from_frame(nak).status == S.BAD_BCRC


def test_stream_hunt_survives_any_split_of_the_magic():
    frame = Frame(T.HEARTBEAT, b"12345678").serialize()
    data = b"\x01junk TR" + b"TRC" + frame
    for cut in range(len(data) + 1):
        stream = EngineStream(EngineModel(256))
        out = stream.feed(data[:cut]) + stream.feed(data[cut:])
        frames = P.FrameParser().feed(out)
        assert [f.type for f in frames] == [T.NAK, T.HEARTBEAT], cut


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=6))
def test_stream_on_random_bytes_never_raises(data, cuts):
    stream = EngineStream(EngineModel(128, clock=lambda: 0))
    out = bytearray()
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for a, b in zip(points, points[1:]):
        out += stream.feed(data[a:b])
    frames = P.FrameParser().feed(bytes(out))        # answers are always well formed
    assert all(f.type != T.JNLWR or P.split_journal(f.body)[0].ccrc_ok() for f in frames)


@settings(max_examples=200, deadline=None)
@given(frames=st.lists(st.builds(Frame, st.sampled_from(list(T)), st.binary(max_size=90),
                                 st.sampled_from([0, 1])), min_size=1, max_size=6),
       noise=st.binary(max_size=20))
def test_stream_resynchronizes_after_noise(frames, noise):
    """After noise, the stream hunts and answers the following valid frames like a fresh one.

    Compared through a second model that saw only the frames: the answers after
    the noise's NAK must match once the hunt has found the first header.
    """
    clean = b"".join(f.serialize() for f in frames)
    stream = EngineStream(EngineModel(1024, clock=lambda: 0))
    # Noise with no MAGIC inside and a bad first byte: exactly one NAK, then the frames.
    noise = b"\xA5" + noise.replace(b"T", b"t")
    out = P.FrameParser().feed(stream.feed(noise + clean))
    ref = P.FrameParser().feed(EngineStream(EngineModel(1024, clock=lambda: 0)).feed(clean))
    assert P.Ack.from_frame(out[0]).status == S.BAD_FRAME
    # STATUS answers differ by the one NAK count; compare the rest exactly.
    def strip(fs):
        return [f if f.type != T.STATUS_RESP else f.type for f in fs]
    assert strip(out[1:]) == strip(ref)


# -- random request sequences ---------------------------------------------------------

def note(text: str) -> None:
    """A Hypothesis event (coverage statistics), also usable outside Hypothesis."""
    if currently_in_test_context():
        event(text)


class EngineMachine(RuleBasedStateMachine):
    """Random submit / read / release / load traffic against the model.

    ``self.journals`` is the plain account: SEQ# -> (control as sent, data) of
    every journal the engine should hold.
    """

    @initialize(size_blocks=st.integers(2, 16))
    def setup(self, size_blocks):
        self.clock = Clock(0)
        self.model = EngineModel(size_blocks * 64, clock=self.clock)
        self.journals: dict[int, tuple[P.Control, bytes]] = {}
        self.next_seq = 1
        self.last_time = 0
        self.epoch = 0

    def answer(self, frame: Frame) -> P.Ack:
        return one_ack(self.model, frame)

    # Biased so that wraps, partial space and full rings come up within a few steps:
    # mostly small records, some large ones, few stale epochs, few CLEARs.
    @rule(n=st.integers(0, 200) | st.integers(0, 3).map(lambda b: 64 * b) | st.integers(0, 900),
          kind=st.sampled_from([Kind.UPDATE, Kind.UPDATE, Kind.BASE, Kind.ZERO, Kind.MARK]),
          tag=st.integers(0, 2**32 - 1), stale=st.sampled_from([False] * 7 + [True]))
    def submit(self, n, kind, tag, stale):
        data = data_of(n, seed=tag) if kind in P.DATA_KINDS else b""
        length = n if kind != Kind.MARK else 0
        epoch = self.epoch + 1 if stale else self.epoch
        frame = jnlwr(data, kind=kind, tag=tag, epoch=epoch & 0xFFFFFFFF, length=length)
        free_before = self.model.free
        ack = self.answer(frame)
        assert ack.tag == tag and ack.req_type == T.JNLWR
        r = P.record_size(len(data))
        if stale:
            assert ack.status == S.STALE_EPOCH
        elif r > self.model.size:
            assert ack.status == S.OVERSIZE
        elif r > free_before:
            assert ack.status == S.FULL
        self.last = (ack, r, free_before)
        note(f"JNLWR {S(ack.status).name}" + (" with FREE >= R" if r <= free_before else ""))
        if ack.status != S.OK:
            assert (ack.seq, ack.time, ack.jofs) == (0, 0, 0)
            return
        assert ack.seq == self.next_seq                 # contiguous sequence numbers
        assert ack.time >= self.last_time               # TIME never goes backwards
        self.next_seq += 1
        self.last_time = ack.time
        self.journals[ack.seq] = (P.split_journal(frame.body)[0], data)

    @rule(ns=st.integers(0, 10**9))
    def tick(self, ns):
        self.clock.now += ns

    @precondition(lambda self: self.journals)
    @rule(k=st.integers(0, 3) | st.integers(0, 30))
    def release(self, k):
        tail = min(self.journals)
        upto = tail + k - 1                              # k == 0: below TAIL_SEQ
        ack = self.answer(P.Release(upto).frame())
        if upto >= self.next_seq:
            assert (ack.status, ack.seq) == (S.NOT_FOUND, upto)
            return
        assert (ack.status, ack.seq, ack.jofs) == (S.OK, upto, self.model.joptr)
        for seq in range(tail, upto + 1):
            del self.journals[seq]

    @rule(back=st.integers(0, 3), count=st.integers(0, 30), past=st.integers(0, 2))
    def read(self, back, count, past):
        tail = min(self.journals, default=self.next_seq)
        start = tail - back if back else tail + past
        frames = self.model.handle(P.JnlRd(max(start, 0), count).frame())
        ack = P.Ack.from_frame(frames[-1])
        if start < tail or start > self.next_seq:
            assert ack.status == S.NOT_FOUND and len(frames) == 1
            return
        n = min(count, self.next_seq - start)
        assert (ack.status, ack.tag, ack.seq) == (S.OK, n, start + n - 1)
        for i, frame in enumerate(frames[:-1]):
            ctl, data = P.split_journal(frame.body)
            sent, sent_data = self.journals[start + i]
            assert ctl.ccrc_ok() and data == sent_data           # read-out == what was sent
            assert ctl.seq == start + i
            assert P.Control(**{**vars(sent), "seq": ctl.seq, "time": ctl.time,
                                "jofs": ctl.jofs, "ccrc": ctl.ccrc}) == ctl

    @rule(clear=st.sampled_from([False] * 3 + [True]), seq=st.none() | st.integers(0, 2**40),
          time=st.none() | st.integers(0, 2**63), freeze=st.booleans(),
          epoch=st.none() | st.integers(0, 5))
    def load(self, clear, seq, time, freeze, epoch):
        flags = ((LF.CLEAR if clear else 0) | (LF.SEQ if seq is not None else 0)
                 | (LF.TIME if time is not None else 0) | (LF.EPOCH if epoch is not None else 0)
                 | (LF.FREEZE if freeze else 0))
        ack = self.answer(P.Load(int(flags), seq or 0, time or 0, epoch or 0).frame())
        if seq == 0:
            assert ack.status == S.BAD_REQUEST
            return
        if seq is not None and self.journals and not clear:
            assert ack.status == S.NOT_EMPTY
            return
        assert ack.status == S.OK
        if clear:
            self.journals.clear()
        if seq is not None:
            self.next_seq = seq
        if epoch is not None:
            self.epoch = epoch
        assert ack.seq == self.next_seq and ack.jofs == self.model.jiptr

    @invariant()
    def pointers_and_ring_image(self):
        m = getattr(self, "model", None)
        if m is None:
            return
        size = m.size
        assert 0 <= m.used <= size and m.free == size - m.used
        assert m.jiptr % 64 == 0 and m.joptr % 64 == 0 and 0 <= m.jiptr < size
        assert 0 <= m.joptr < size and 0 < m.wrap_at <= size and m.wrap_at % 64 == 0
        assert m.next_seq == self.next_seq and m.held == len(self.journals)
        assert m.tail_seq == min(self.journals, default=self.next_seq)
        assert sorted(self.journals) == list(range(m.tail_seq, m.next_seq))
        # Walk the ring from JOPTR: every held record in SEQ# order, contiguous,
        # the skipped tail marked at WRAP_AT, and the walk ends at JIPTR having
        # covered exactly USED bytes -- so JIPTR never overtook JOPTR.
        ring, pos, walked = m.ring(), m.joptr, 0
        for seq in range(m.tail_seq, m.next_seq):
            if pos == m.wrap_at != size:
                assert ring[pos:pos + 64] == WRAP_MARKER
                walked += size - pos
                pos = 0
            ctl = P.Control.unpack(ring[pos:pos + 64])
            sent, data = self.journals[seq]
            assert (ctl.seq, ctl.jofs, ctl.tag) == (seq, pos, sent.tag) and ctl.ccrc_ok()
            r = P.record_size(ctl.data_len)
            assert ring[pos + 64:pos + 64 + len(data)] == data
            assert ring[pos + 64 + len(data):pos + r] == bytes(r - 64 - len(data))
            pos += r
            walked += r
            assert pos <= size
            pos %= size
        assert walked == m.used
        if m.used:
            assert pos == m.jiptr
        if m.used == size:
            note("ring full, JIPTR == JOPTR")
        if m.wrap_at != size:                    # a marker only while records sit before it
            note("WRAP marker held")
            assert m.used and m.jiptr <= m.joptr


TestEngineMachine = EngineMachine.TestCase
TestEngineMachine.settings = settings(max_examples=120, stateful_step_count=60, deadline=None,
                                      suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("seed", range(4))
def test_long_random_workload(seed):
    """The machine's rules and invariants over thousands of steps, seeded.

    Hypothesis keeps its cases short; this drives long runs in which the
    ring goes round many times, and proves it reached the corner cases.
    """
    import random
    rng = random.Random(seed)
    machine = EngineMachine()
    machine.setup(size_blocks=[4, 7, 12, 16][seed])
    seen = {"wrap": 0, "partial": 0, "full_ring": 0, "exact_fit": 0}
    for _ in range(3000):
        op = rng.random()
        if op < 0.45:
            n = rng.choice([rng.randrange(0, 200), 64 * rng.randrange(0, 4), rng.randrange(900)])
            machine.submit(n=n, kind=rng.choice([Kind.UPDATE, Kind.BASE, Kind.ZERO]),
                           tag=rng.randrange(1 << 32), stale=rng.random() < 0.05)
            ack, r, free_before = machine.last
            seen["partial"] += ack.status == S.FULL and r <= free_before
            seen["exact_fit"] += ack.status == S.OK and ack.jofs + r == machine.model.size
        elif op < 0.8 and machine.journals:
            machine.release(k=rng.choice([0, 1, 1, 1, 2, 3]))
        elif op < 0.9:
            machine.read(back=rng.randrange(0, 2), count=rng.randrange(0, 5), past=0)
        elif op < 0.97:
            machine.tick(ns=rng.randrange(10**6))
        else:
            machine.load(clear=rng.random() < 0.5, seq=None, time=None, freeze=False,
                         epoch=None)
        machine.pointers_and_ring_image()
        seen["wrap"] += machine.model.wrap_at != machine.model.size
        seen["full_ring"] += machine.model.used == machine.model.size
    assert all(seen.values()), seen


# -- a wide link: frames from beat boundaries (docs/protocol.md, "Wide links") ----

def _padded(frame: bytes, beat: int = 4) -> bytes:
    return frame + bytes(-len(frame) % beat)


def test_wide_stream_pads_answers_and_skips_the_beat_rest():
    """Each answer is padded to a whole beat, and after a request ending
    inside a beat, the rest of that beat is not the next frame's start."""
    stream = EngineStream(EngineModel(256, clock=lambda: 0), beat=4)
    j = jnlwr(data_of(5), tag=1).serialize()               # 89 bytes: 3 lanes of padding
    assert len(j) % 4 == 1
    out = stream.feed(_padded(j) + _padded(Frame(T.STATUS).serialize()))
    assert len(out) % 4 == 0
    ack, status = P.FrameParser().feed(unpad(out, 4))
    assert (P.Ack.from_frame(ack).status, status.type) == (S.OK, T.STATUS_RESP)
    # the same frames on a byte link give the same answers, without padding
    narrow = EngineStream(EngineModel(256, clock=lambda: 0)).feed(j + Frame(T.STATUS).serialize())
    assert unpad(out, 4) == narrow


def test_wide_stream_hunts_by_beats():
    """A bad header is answered once; the hunt only looks at beat boundaries,
    so a MAGIC one lane off is not taken, the next aligned frame is."""
    hb = Frame(T.HEARTBEAT, b"12345678").serialize()        # 28 bytes, whole beats
    bad = bytearray(hb)
    bad[13] ^= 1                                            # HCRC
    data = bytes(bad) + b"\x00" + hb + b"\x00" * 3 + hb     # the first good one is off by a lane
    out = EngineStream(EngineModel(256, clock=lambda: 0), beat=4).feed(data)
    frames = P.FrameParser().feed(unpad(out, 4))
    assert [f.type for f in frames] == [T.NAK, T.HEARTBEAT]
    assert P.Ack.from_frame(frames[0]).status == S.BAD_FRAME
    # on a byte link the off-lane frame is found too (and the zeros after it
    # are a bad header of their own)
    narrow = P.FrameParser().feed(EngineStream(EngineModel(256, clock=lambda: 0)).feed(data))
    assert [f.type for f in narrow] == [T.NAK, T.HEARTBEAT, T.NAK, T.HEARTBEAT]


def test_wide_stream_skips_a_refused_body_to_the_beat():
    """A header refused with a trusted LENGTH skips body, BCRC and the beat's rest."""
    bad_version = bytearray(Frame(T.HEARTBEAT, b"abc").serialize())   # 23 bytes
    bad_version[4] = 9
    bad_version[12:16] = P.crc32c(bytes(bad_version[:12])).to_bytes(4, "little")
    hb = Frame(T.HEARTBEAT).serialize()
    out = EngineStream(EngineModel(256, clock=lambda: 0), beat=4).feed(
        _padded(bytes(bad_version)) + hb)
    frames = P.FrameParser().feed(unpad(out, 4))
    assert [f.type for f in frames] == [T.NAK, T.HEARTBEAT]


@pytest.mark.parametrize("beat", [0, 3, 8])
def test_wide_stream_beat_checked(beat):
    with pytest.raises(ValueError, match=str(beat)):
        EngineStream(EngineModel(256), beat=beat)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=5))
def test_wide_stream_any_chunking(data, cuts):
    """On a wide link too the answers depend on the bytes, not their arrival."""
    whole = EngineStream(EngineModel(128, clock=lambda: 0), beat=4).feed(data)
    stream = EngineStream(EngineModel(128, clock=lambda: 0), beat=4)
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    out = b"".join(stream.feed(data[a:b]) for a, b in zip(points, points[1:]))
    assert out == whole and len(out) % 4 == 0


# -- descriptor rings (docs/protocol.md, "Two kinds of ring") -------------------

def desc(n: int, *, kind: int = Kind.UPDATE, tag: int = 0, epoch: int = 0, **fields) -> Frame:
    """A JNLDESC for ``n`` bytes of data the host keeps (DATA_CRC as the data's)."""
    values = dict(length=0 if kind == Kind.MARK else n, data_len=n,
                  data_crc=P.crc32c(data_of(n)), kind=kind, tag=tag, epoch=epoch, address=512)
    values.update(fields)
    return P.descriptor_frame(P.Control(**values))


def _state(m: EngineModel) -> tuple:
    st = m.status()
    return (st.jiptr, st.joptr, st.ring_size, st.free, st.next_seq, st.tail_seq, st.held,
            st.wrap_at, st.acks, st.naks)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=st.sampled_from([128, 256, 1024, 4096, 192 * 64]),
       ops=st.lists(st.one_of(st.tuples(st.just("w"), st.integers(0, 5000)),
                              st.tuples(st.just("r"), st.integers(0, 6))), max_size=80))
def test_descriptor_ring_allocates_as_the_data_ring(size, ops):
    """The same journals, JNLWR on a data ring and JNLDESC on a descriptor ring, get the same
    answers (SEQ#, TIME, JOFS, FULL, OVERSIZE) and leave the same pointers; the descriptor
    ring's RELEASE gets the JOPTR the data ring's walk found, as a host store would give it."""
    data_ring = EngineModel(size, clock=lambda: 0)
    desc_ring = EngineModel(size, clock=lambda: 0, memory=0)
    for m in (data_ring, desc_ring):
        assert one_ack(m, P.Load(LF.TIME | LF.FREEZE, time=77).frame()).status == S.OK
    for i, (op, n) in enumerate(ops):
        if op == "w":
            a = one_ack(data_ring, jnlwr(data_of(n, i), tag=i))
            b = one_ack(desc_ring, desc(n, tag=i, data_crc=P.crc32c(data_of(n, i))))
            assert (a.status, a.seq, a.time, a.jofs, a.tag) == (b.status, b.seq, b.time, b.jofs,
                                                                b.tag)
            event(S(a.status).name)
        else:
            upto = data_ring.tail_seq - 1 + n
            a = one_ack(data_ring, P.Release(upto).frame())
            b = one_ack(desc_ring, P.Release(upto, data_ring.joptr).frame())
            assert (a.status, a.seq, a.jofs) == (b.status, b.seq, b.jofs)
        assert _state(data_ring) == _state(desc_ring)
        if data_ring.wrap_at != size:
            event("wrapped")


def test_descriptor_ring_keeps_no_data_and_no_image():
    m = EngineModel(1 << 40, clock=lambda: 0, memory=0)
    assert m.descriptor and m.memory == 0 and m._ring is None
    with pytest.raises(ValueError, match="no ring image"):
        m.ring()
    ack = one_ack(m, desc(4096, tag=3))
    assert (ack.status, ack.seq, ack.jofs, ack.req_type) == (S.OK, 1, 0, T.JNLDESC)
    assert one_ack(m, jnlwr(data_of(10))).status == S.WRONG_MODE
    assert one_ack(m, P.JnlRd(1, 1).frame()).status == S.WRONG_MODE


@pytest.mark.parametrize("memory", [64, 100, 448])
def test_memory_must_hold_the_reset_ring(memory):
    with pytest.raises(ValueError, match="memory"):
        EngineModel(512, memory=memory)


@pytest.mark.parametrize("size", [1 << 20, 1 << 30, 1 << 40])
def test_descriptor_model_memory_does_not_grow_with_the_ring(size):
    """EngineModel(SIZE, memory=0): what it allocates for 2000 journals and their releases does
    not depend on SIZE (the data model of 1 GiB holds a 1 GiB bytearray)."""
    import tracemalloc
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        m = EngineModel(size, clock=lambda: 0, memory=0)
        for i in range(2000):
            assert one_ack(m, desc(4096 + i, tag=i)).status == S.OK
            if i % 10 == 9:
                # everything but the last journal: JOPTR is its JOFS
                last = m.next_seq - 1
                assert one_ack(m, P.Release(last - 1, m.jiptr - P.record_size(4096 + i))
                               .frame()).status == S.OK
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert m.held == 1 and m.next_seq == 2001
    assert peak < 64 << 10, f"{peak} bytes traced for a ring of {size}"


def test_load_ring_switches_modes_on_an_empty_ring_only():
    m = EngineModel(512, clock=lambda: 0)                 # a data ring, 512 B of memory
    assert one_ack(m, desc(10)).status == S.WRONG_MODE
    assert one_ack(m, jnlwr(data_of(10))).status == S.OK
    ring = P.Load(LF.RING | LF.DESC, size=1 << 40).frame()
    assert one_ack(m, ring).status == S.NOT_EMPTY
    assert (m.size, m.descriptor) == (512, False)
    assert one_ack(m, P.Load(LF.CLEAR | LF.RING | LF.DESC, size=1 << 40).frame()).status == S.OK
    assert (m.size, m.descriptor, m.jiptr, m.wrap_at) == (1 << 40, True, 0, 1 << 40)
    assert one_ack(m, desc(10)).status == S.OK
    assert one_ack(m, P.Load(LF.CLEAR | LF.RING, size=256).frame()).status == S.OK
    assert (m.size, m.descriptor) == (256, False)
    assert one_ack(m, jnlwr(data_of(100), tag=1)).jofs == 0
    (rec, ack) = m.handle(P.JnlRd(3, 1).frame())
    assert P.split_journal(rec.body)[1] == data_of(100)


# -- JNLDESC batches (docs/protocol.md, "JNLDESC batches") ---------------------

def _dctl(n: int, tag: int, epoch: int = 0) -> P.Control:
    return P.Control(length=n, data_len=n, data_crc=n and 0x1000 | n, kind=Kind.UPDATE,
                     tag=tag, epoch=epoch)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=st.sampled_from([128, 320, 1024, 4096]),
       batches=st.lists(st.lists(st.tuples(st.integers(0, 1500), st.booleans()),
                                 min_size=1, max_size=6), max_size=30),
       releases=st.lists(st.integers(0, 3), max_size=30))
def test_a_batch_is_its_descriptors_one_by_one(size, batches, releases):
    """A batch leaves the engine exactly as its descriptors sent one by one up to the
    first refused (which changes only NAKS), and its one answer is the cumulative one:
    the last single ACK, or the refused descriptor's NAK with the SEQ#/JOFS of the one
    before it."""
    a = EngineModel(size, clock=lambda: 0, memory=0)
    b = EngineModel(size, clock=lambda: 0, memory=0)
    for m in (a, b):
        assert one_ack(m, P.Load(LF.TIME | LF.FREEZE, time=77).frame()).status == S.OK
    tag = 0
    for i, batch in enumerate(batches):
        controls = []
        for n, stale in batch:
            tag += 1
            controls.append(_dctl(n, tag, epoch=int(stale and n % 7 == 0)))
        got = one_ack(a, P.descriptor_batch_frame(controls))
        singles = []
        for ctl in controls:
            singles.append(one_ack(b, P.descriptor_frame(ctl)))
            if singles[-1].status != S.OK:
                break
        last = singles[-1]
        if last.status == S.OK:
            assert got == last
        else:
            before = singles[-2] if len(singles) > 1 else P.Ack()
            assert (got.status, got.tag, got.req_type) == (last.status, last.tag, T.JNLDESC)
            assert (got.seq, got.time, got.jofs) == (before.seq, before.time, before.jofs)
            event(f"refused at {len(singles) - 1} of {len(controls)}")
        assert _state(a) == _state(b)
        if i < len(releases) and releases[i] == 0 and a.held:
            # release everything now and then: JOPTR goes to JIPTR
            st = b.status()
            for m in (a, b):
                assert one_ack(m, P.Release(st.next_seq - 1, st.jiptr).frame()).status == S.OK


def test_a_batch_of_one_is_the_single_jnldesc_byte_for_byte():
    ctl = _dctl(100, 5)
    assert P.descriptor_batch_frame([ctl]).serialize() == P.descriptor_frame(ctl).serialize()
    outs = []
    for frame in (P.descriptor_batch_frame([ctl]), P.descriptor_frame(ctl)):
        m = EngineModel(1024, clock=lambda: 0, memory=0)
        outs.append(EngineStream(m).feed(frame.serialize()))
    assert outs[0] == outs[1]


def test_one_time_for_a_whole_batch():
    """Every descriptor of a batch gets the TIME of the batch, even with the clock
    moving between them: the host writes each record's TIME from the one answer."""
    def ticking():                          # the clock moves 1 us at every look
        ticks = iter(range(10**6, 10**9, 1000))
        return lambda: next(ticks)

    batch, single = (EngineModel(4096, clock=ticking(), memory=0) for _ in range(2))
    ack = batch.jnldesc_batch([_dctl(10, 1), _dctl(10, 2), _dctl(10, 3)])
    first = single.jnldesc(_dctl(10, 1))    # the same moment, a single descriptor
    assert ack.status == S.OK and ack.seq == 3
    assert ack.time == first.time == batch.last_time
    assert batch.jnldesc(_dctl(10, 4)).time > ack.time


def test_an_engine_without_batches_refuses_one_whole():
    """desc_batch=1 (a gateware built without batches, the iCEBreaker's): a batch of two is BAD_LENGTH with the first TAG,
    and nothing is taken; so is a batch above DESC_BATCH for every engine."""
    for m, n in ((EngineModel(1024, clock=lambda: 0, memory=0, desc_batch=1), 2),
                 (EngineModel(1024, clock=lambda: 0, memory=0), P.DESC_BATCH + 1)):
        body = b"".join(_dctl(1, 7 + i).pack() for i in range(n))
        ack = one_ack(m, Frame(T.JNLDESC, body))
        assert (ack.status, ack.tag, ack.seq) == (S.BAD_LENGTH, 7, 0)
        assert (m.next_seq, m.used, m.naks) == (1, 0, 1)
    with pytest.raises(ValueError, match="desc_batch"):
        EngineModel(1024, memory=0, desc_batch=0)
    with pytest.raises(ValueError, match="1 to 64"):
        P.descriptor_batch_frame([])


def test_place_batch_over_frames_and_in_process():
    """``FrameEngine.place_batch`` through the byte front end and ``ModelEngine``'s
    in-process shortcut give the same cumulative answers; an engine without
    batches answers BAD_LENGTH, which the host sees as a NAK, not an error."""
    import asyncio
    from tricopy.host.engine.base import FrameEngine, ModelEngine

    class BytesEngine(FrameEngine):
        name = "bytes"

        def __init__(self, model):
            self.stream = EngineStream(model)

        async def transact(self, frame):
            return P.FrameParser().feed(self.stream.feed(frame.serialize()))

        async def close(self):
            pass

    async def run(engine):
        out = [await engine.load(LF.TIME | LF.FREEZE, time=5)]
        out.append(await engine.place_batch([_dctl(100, 1), _dctl(0, 2), _dctl(64, 3)]))
        out.append(await engine.place_batch([_dctl(10, 4), _dctl(10, 5)]))      # FULL at 5
        out.append(await engine.place_batch([_dctl(10, 6)]))
        return out

    over_frames = asyncio.run(run(BytesEngine(EngineModel(512, clock=lambda: 0, memory=0))))
    in_process = asyncio.run(run(ModelEngine(EngineModel(512, clock=lambda: 0, memory=0))))
    assert over_frames == in_process
    assert [(a.status, a.seq, a.tag) for a in over_frames[1:]] == \
        [(S.OK, 3, 3), (S.FULL, 4, 5), (S.FULL, 0, 6)]
    gateware_like = EngineModel(512, clock=lambda: 0, memory=0, desc_batch=1)
    for engine in (BytesEngine(gateware_like), ModelEngine(gateware_like)):
        ack = asyncio.run(engine.place_batch([_dctl(1, 8), _dctl(1, 9)]))
        assert (ack.status, ack.tag) == (S.BAD_LENGTH, 8)
    assert gateware_like.next_seq == 1
