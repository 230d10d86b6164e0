"""The primary's journal stream to the relay, sans I/O.

No sockets, timers, files or futures here: ``MasterGroup`` (``primary/site.py``)
tells a :class:`SendStream` what happened (a journal was logged, a link came
up with the relay's HELLO, an ACK/FULL/NAK arrived, the link dropped) and does
what it answers (send these PSEQs, complete these journals, probe in so many
seconds, suspend for this reason).  The stateful tests drive it directly,
against the relay's own stream objects (``tests/test_streams.py``).

The rules it holds (docs/replication.md):

* PSEQ order is send order; after a reconnect every journal after the
  relay's LAST_SEQ goes again, in order (exactly-once is the relay's gate).
* An ACK is cumulative: it completes every pending journal up to its PSEQ.
* A HELLO whose LAST_SEQ is below the highest PSEQ the relay ever ACKed
  means the relay lost acked journals: never resend over it, suspend.
* FULL (inflow control) is answered with one probe -- the oldest pending
  journal alone -- after a delay that doubles, never by resending the window;
  the relay's gap NAKs for journals sent before the FULL came back are
  expected.  Only an ACK of the probe lets the rest go.
* Writes waiting on a relay that is not there (unreachable, or FULL) wait a
  bounded time, then the group suspends with a reason.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ..wire.protocol import Status
from ..wire.pseq import TAG_MOD, next_pseq, tag_after, tag_distance

__all__ = ["SendStream", "Resume", "RelayLost", "FULL_PROBE_FIRST", "FULL_PROBE_MAX"]

FULL_PROBE_FIRST = 0.05     # inflow control: first probe this long after a FULL ...
FULL_PROBE_MAX = 1.0        # ... then doubling up to this

T = TypeVar("T")


@dataclass(frozen=True)
class RelayLost:
    """The relay holds PSEQ only up to ``relay_last`` but ACKed up to ``acked``."""
    relay_last: int
    acked: int

    @property
    def first(self) -> int:
        return next_pseq(self.relay_last)

    def __str__(self) -> str:
        return (f"relay holds PSEQ up to {self.relay_last} but acked up to {self.acked}: "
                f"journals {self.first}..{self.acked} lost at the relay")


@dataclass
class Resume:
    """What to do when a link comes up: complete ``acked``, send ``send`` in order."""
    acked: list = field(default_factory=list)        # (tag, item) the relay already holds
    send: list[int] = field(default_factory=list)    # PSEQs to send now, in order


class SendStream(Generic[T]):
    """One group's ordered, exactly-once journal stream from the primary to the relay.

    ``pending`` maps PSEQ -> the caller's item (whatever it needs to build the
    JNLWR and to complete the host write) for every journal logged and not
    yet ACKed, oldest first.  ``last_pseq`` is the last PSEQ given out,
    ``acked_hwm`` the highest the relay ever ACKed (0: unknown).
    """

    def __init__(self, last_pseq: int = 0, acked_hwm: int = 0):
        self.pending: OrderedDict[int, T] = OrderedDict()
        self.last_pseq = last_pseq
        self.acked_hwm = acked_hwm
        self.online = False          # a link is up and past HELLO
        self.blocked = False         # the relay answered FULL; only probes go out
        self.full_tag = 0            # the PSEQ the relay answered FULL to
        self.full_since: float | None = None
        self.probe_delay = FULL_PROBE_FIRST
        self.sent_upto = 0           # the last PSEQ handed to a link
        self.waiting_since: float | None = None   # writes waiting, relay not reachable
        self.acked = self.resent = self.full_probes = 0

    # -- journals in ---------------------------------------------------------------

    def next_tag(self) -> int:
        return next_pseq(self.last_pseq)

    def add(self, tag: int, item: T) -> bool:
        """Journal ``tag`` (== next_tag()) was logged; True: send it now."""
        if tag != self.next_tag():
            raise ValueError(f"PSEQ {tag} out of order: the next is {self.next_tag()}")
        self.last_pseq = tag
        self.pending[tag] = item
        if self.online and not self.blocked:
            self.sent_upto = tag
            return True
        return False

    def rebase(self, last: int) -> None:
        """Continue after PSEQ ``last`` (a resync from the relay's LAST_TAG); nothing pending."""
        if self.pending:
            raise ValueError("rebase with journals pending would reuse their PSEQs")
        self.last_pseq = self.acked_hwm = last

    def clear_faults(self) -> None:
        """A resync starts afresh: no FULL, no wait for an unreachable relay on record."""
        self.blocked, self.full_since, self.waiting_since = False, None, None

    def drop_all(self) -> list[T]:
        """The group suspends: every pending journal, oldest first, is given back."""
        items = list(self.pending.values())
        self.pending.clear()
        self.full_since = None     # ``blocked`` stays: the host is told ENOSPC after a FULL
        return items

    # -- link events ---------------------------------------------------------------

    def connected(self, relay_last: int) -> Resume | RelayLost:
        """A link is up; the relay's HELLO says it holds PSEQ up to ``relay_last``."""
        self.waiting_since = None
        hwm = self.acked_hwm
        if hwm and tag_after(hwm, relay_last):
            return RelayLost(relay_last, hwm)
        resume = Resume()
        if relay_last:
            resume.acked = self._ack_upto(relay_last)
            if not self.pending and self.last_pseq != relay_last:
                # Nothing to send again, and the relay's last differs from ours.
                # Ahead: it holds PSEQs our log lost in a crash.  Behind: PSEQs
                # were given out here and a power loss took their records
                # before they were sent (the PSEQ state file, synced, still
                # names them); never ACKed, so no host write completed with
                # them, and the activity log resyncs their extents.  Either
                # way the stream goes on after the relay's last: our next
                # PSEQ after it would be a gap the relay refuses (found by
                # tests/test_powercut_primary.py under load).
                self.last_pseq = self.acked_hwm = relay_last
        self.online = True
        if self.blocked:
            resume.send = self._probe_tags()     # still FULL?  One journal asks.
        else:
            resume.send = self._all()
        return resume

    def disconnected(self) -> None:
        self.online = False

    def unreachable(self, now: float, limit: float) -> str | None:
        """No link to the relay at ``now``: the suspend reason once writes waited > ``limit`` s."""
        if not self.pending:
            self.waiting_since = None
            return None
        if self.waiting_since is None:
            self.waiting_since = now
        if now - self.waiting_since > limit:
            return f"relay unreachable for more than {limit:g} s with writes waiting"
        return None

    def on_ack(self, tag: int) -> Resume:
        """ACK OK of PSEQ ``tag`` (cumulative); after a FULL the rest go now."""
        resume = Resume(acked=self._ack_upto(tag))
        if self.blocked:
            # The probe got in: the relay has room again.  The journals after
            # it were refused (or never sent): all of them, in order.
            self.blocked, self.full_since = False, None
            resume.send = self._all()
        return resume

    def on_full(self, tag: int, now: float, limit: float) -> float | str:
        """FULL for PSEQ ``tag``: seconds until the probe, or the suspend reason."""
        if not self.blocked:
            self.blocked, self.full_since = True, now
            self.probe_delay = FULL_PROBE_FIRST
        else:
            self.probe_delay = min(self.probe_delay * 2, FULL_PROBE_MAX)
        self.full_tag = tag
        if now - self.full_since > limit:
            return f"relay journal FULL for more than {limit:.0f} s"
        return self.probe_delay

    def on_refused(self, tag: int, status: int) -> str | None:
        """NAK ``status`` for PSEQ ``tag``: the suspend reason, or None when expected."""
        if status == Status.BAD_REQUEST and self.blocked and tag_after(tag, self.full_tag):
            # Sent before the FULL came back: the relay took no PSEQ after the
            # FULLed one, so it calls these a gap.  They go again after the probe.
            return None
        return f"relay refused journal PSEQ {tag}: {Status(status).name}"

    def probe(self) -> int | None:
        """The probe timer fired: the PSEQ to send alone, or None (not FULL any more)."""
        tags = self._probe_tags() if self.blocked and self.online else []
        return tags[0] if tags else None

    # -- internals -----------------------------------------------------------------

    def _ack_upto(self, tag: int) -> list:
        done = []
        while self.pending:
            first = next(iter(self.pending))
            if tag_distance(tag, first) >= TAG_MOD // 2:
                break     # ``first`` is after ``tag``
            done.append((first, self.pending.pop(first)))
            self.acked += 1
            self.acked_hwm = first
        return done

    def _all(self) -> list[int]:
        tags = list(self.pending)
        for tag in tags:
            if self.sent_upto and not tag_after(tag, self.sent_upto):
                self.resent += 1
            self.sent_upto = tag
        return tags

    def _probe_tags(self) -> list[int]:
        if not self.pending:
            return []
        tag = next(iter(self.pending))
        self.resent += 1
        self.full_probes += 1
        if not self.sent_upto or tag_after(tag, self.sent_upto):
            self.sent_upto = tag
        return [tag]
