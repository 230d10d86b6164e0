"""The relay's two journal streams, sans I/O: in from the primary, out to the secondary.

No sockets, files or engine here: ``RelayGroup`` (``relay/site.py``) feeds
these objects what arrives and does what they decide.  The stateful tests
drive them directly (``tests/test_streams.py``).

* :class:`PseqGate` admits the primary's journals exactly once, by PSEQ
  (docs/replication.md, "Resend and duplicates").
* :class:`AnswerGate` orders the answers to the primary, merges ACKs into
  cumulative ones and holds every ACK until the journals it covers are
  durable (docs/replication.md, "Cumulative ACKs").
* :class:`ForwardStream` checks that a secondary continues this relay's
  stream, keeps the window of journals sent but not ACKed, and never lets an
  ACK release what was not forwarded.
"""

from __future__ import annotations

import enum
from collections import deque

from ..wire.protocol import Ack, Frame, FrameType, Hello
from ..wire.pseq import TAG_MOD, next_pseq, tag_after, tag_distance

__all__ = ["Admission", "PseqGate", "AnswerGate", "ForwardViolation", "ForwardStream",
           "FORWARD_WINDOW"]

FORWARD_WINDOW = 1024      # journals sent but not yet ACKed by the secondary


class Admission(enum.Enum):
    NEW = "new"          # PSEQ == last + 1 (or the first ever): take it
    RESEND = "resend"    # at or before the last taken: held already, ACK it again
    GAP = "gap"          # after last + 1: something in between is missing; NAK


class PseqGate:
    """Exactly-once admission of one group's journals by PSEQ (carried in TAG).

    ``last`` is the last PSEQ taken (0: none yet; the first journal then sets
    the base).  It survives a restart through the journal volume and the
    relay's state file (``RelayGroup._recover_last_tag``).
    """

    def __init__(self, last: int = 0):
        self.last = last

    def admit(self, tag: int, last: int | None = None) -> Admission:
        """How to take PSEQ ``tag``; ``last``: judge it after that PSEQ
        instead of the last taken (the journals of a batch not taken yet)."""
        if last is None:
            last = self.last
        if not last:
            return Admission.NEW
        dist = tag_distance(tag, last)
        if dist == 0 or dist >= TAG_MOD // 2:
            return Admission.RESEND
        return Admission.NEW if tag == next_pseq(last) else Admission.GAP

    def taken(self, tag: int) -> None:
        self.last = tag


class AnswerGate:
    """The answers to one primary connection, in the order its journals came.

    Each answer is queued with the SEQ# that must be durable before it may
    go (``None``: nothing to wait for -- a NAK, or durability ``memory``).
    :meth:`ready` gives what may go once the store is durable up to a SEQ#:
    answers in queue order, never past one still waiting for its fsync, and
    each run of ACKs merged into one, the ACK with the latest PSEQ (TAG).
    An ACK is cumulative (docs/replication.md): it says the relay holds,
    durably, every journal of this stream up to its PSEQ, which is true of
    the latest ACK of a run because journals are taken in PSEQ order.  A NAK
    is never merged or moved: the ACKs before it go first, then the NAK.
    """

    def __init__(self) -> None:
        self._queue: deque[tuple[int | None, Frame | Ack, float]] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, seq: int | None, answer: Frame | Ack, t: float = 0.0) -> None:
        """Queue ``answer``, to go once journal ``seq`` is durable; ``t``: when
        it was queued (the caller's clock, for the wait it reports).  An
        answer is a frame, or an OK ``Ack`` whose frame is built only if it
        is the one of its run that goes (most of them are merged away)."""
        self._queue.append((seq, answer, t))

    def need(self) -> int | None:
        """The SEQ# whose fsync the first queued answer waits for, or None."""
        return self._queue[0][0] if self._queue else None

    def ready(self, durable: int) -> tuple[list[Frame], list[float]]:
        """Frames to send now, the store being durable up to ``durable``, and
        the queue times of the answers they carry."""
        frames: list[Frame] = []
        times: list[float] = []
        best: Frame | Ack | None = None      # the latest ACK of the current run
        best_tag = 0
        q = self._queue
        while q:
            seq, answer, t = q[0]
            if seq is not None and seq > durable:
                break                  # not on disk yet: neither it nor anything after it
            q.popleft()
            times.append(t)
            if isinstance(answer, Ack):
                tag = answer.tag
            elif answer.type == FrameType.ACK:
                tag = Ack.unpack(answer.body).tag
            else:
                if best is not None:
                    frames.append(_frame(best))
                    best = None
                frames.append(answer)
                continue
            if best is None or tag_after(tag, best_tag):
                best, best_tag = answer, tag
        if best is not None:
            frames.append(_frame(best))
        return frames, times

    def clear(self) -> None:
        self._queue.clear()


def _frame(answer: Frame | Ack) -> Frame:
    return answer.frame() if isinstance(answer, Ack) else answer


def answer_ack(answer: Frame | Ack) -> Ack:
    """The ACK or NAK an answer of the relay's ingest carries (see ``AnswerGate.add``)."""
    return answer if isinstance(answer, Ack) else Ack.from_frame(answer)


class ForwardViolation(Exception):
    """The secondary ACKed a SEQ# this relay never forwarded."""


class ForwardStream:
    """Journals from this relay to the secondary, in SEQ# order (patent Fig. 9).

    ``forwarded`` is the last SEQ# sent (or known restored by the secondary,
    which implies sent, maybe before a restart); ``acked`` the secondary's
    restore point as last heard.
    """

    def __init__(self, epoch: int, forwarded: int, window: int = FORWARD_WINDOW):
        self.epoch = epoch
        self.forwarded = forwarded
        self.acked = 0
        self.window = window

    def refuse(self, peer: Hello, newest: int, tail: int) -> str | None:
        """Why the secondary's HELLO does not continue this relay's stream, or None.

        ``newest`` is the last SEQ# this relay issued, ``tail`` the oldest it holds.
        """
        if peer.epoch != self.epoch:
            return f"secondary {peer.site!r} is at epoch {peer.epoch}, this group at {self.epoch}"
        if peer.last_seq > newest:
            return (f"secondary {peer.site!r} has restored up to SEQ# {peer.last_seq} but this "
                    f"relay has issued only up to {newest}: the relay's journal went backwards "
                    f"(lost or recreated); run `tricopy pair resync`")
        if peer.last_seq + 1 < tail:
            # Only a secondary whose restored state went back (an older copy
            # put in place) gets here: the relay released only what it ACKed.
            # The primary is in PAIR, so `pair resync` alone is refused: a
            # new pair (a full copy) takes the secondary back, or a relay
            # journal recreated empty makes it the ordered resync that copies
            # what was written after the secondary's restore point.
            return (f"secondary {peer.site!r} restored up to SEQ# {peer.last_seq} but the "
                    f"journal starts at {tail}: journals {peer.last_seq + 1}..{tail - 1} are "
                    f"missing there (its restore point went back: put back from a copy?); "
                    f"either run `tricopy pair delete`, then `tricopy pair create` (a full "
                    f"copy), or recreate this relay's journal volume, then run `tricopy pair "
                    f"resync` (only the regions written since; docs/operations.md, Known gaps)")
        return None

    def start(self, restored: int, tail: int) -> int:
        """A secondary that passed :meth:`refuse` restored up to ``restored``:
        the first SEQ# to send it."""
        self.forwarded = max(self.forwarded, restored)
        self.acked = restored
        return max(restored + 1, tail)

    def ack(self, upto: int) -> int:
        """A cumulative ACK: the SEQ# up to which journals may be released."""
        if upto > self.forwarded:
            raise ForwardViolation(f"the secondary ACKed SEQ# {upto} but only {self.forwarded} "
                                   f"was forwarded")
        self.acked = max(self.acked, upto)
        return upto

    def room(self, nxt: int) -> int:
        """How many journals from ``nxt`` on may be sent now (0: the window is full)."""
        return max(0, self.window - (nxt - 1 - self.acked))

    def sent(self, upto: int) -> None:
        self.forwarded = max(self.forwarded, upto)
