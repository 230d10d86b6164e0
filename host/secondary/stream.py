"""The secondary's journal stream, sans I/O: what to stage, apply, mark and refuse.

``RestoreStream`` holds the rules of a RESTORE group and nothing else: no
files, no sockets, no clock.  Journals and HELLOs go in; decisions come out
(stage or skip, which journals to apply next, when the apply mark must be
saved first, why a relay must be refused).  ``RestoreGroup``
(``secondary/site.py``) is the adapter that does the I/O it asks for: the
SVOL writes, the state file, the link.  The stateful tests drive this object
directly through reconnects, duplicates, gaps, crashes and relays that went
backwards (``tests/test_streams.py``).

The numbers (docs/replication.md, "The SVOL is a prefix at every instant"):

* ``restored`` (R): every journal up to R is on the SVOLs for good;
* ``mark`` (M): nothing past M was ever applied; saved before applying past it;
* ``applied``: applied to the SVOLs so far (R <= applied <= M);
* ``replay_to``: after a restart with M > R, the SVOLs may hold R+1..M in
  part (torn); they are no prefix of anything until ``applied`` reaches it;
* ``ext_end``: journals ``applied``+1..``ext_end`` are staged outside this
  object, by the native loop (host/native/restore.py), always the ones
  that come next; the journals staged here follow them.
"""

from __future__ import annotations

from ..wire import protocol
from ..wire.protocol import Control, Hello, Kind, Status

__all__ = ["MARK_AHEAD", "RestoreStream"]

# How far past the restore point one apply mark may reach: bounds the work of
# finding the staged run and the replay a crash can leave to do.
MARK_AHEAD = 4096


class RestoreStream:
    """The journal stream of one RESTORE group (GRNUM ``group`` at ``epoch``)."""

    def __init__(self, group: int, epoch: int, *, restored: int = 0, mark: int = 0):
        self.group = group
        self.epoch = epoch
        self.restored = restored
        self.mark = max(mark, restored)
        self.applied = restored
        self.replay_to = self.mark if self.mark > restored else 0
        self.staged: dict[int, tuple[Control, bytes]] = {}
        self.staged_bytes = 0
        self.received = 0
        self.ext_end = self.applied

    # -- what comes in ------------------------------------------------------------

    def refuse(self, hello: Hello) -> str | None:
        """Why a relay's HELLO must be refused (stream identity), or None.

        A journal stream is (epoch, SEQ#).  A relay at another epoch, or one
        whose newest SEQ# is below what the SVOLs hold (restore point or apply
        mark), is not the stream the SVOLs hold: its journals would be skipped
        as replays or applied over newer data.
        """
        if hello.epoch != self.epoch:
            return f"relay {hello.site!r} is at epoch {hello.epoch}, this group at {self.epoch}"
        high = self.high
        if hello.last_seq < high:
            return (f"relay {hello.site!r} holds journals only up to SEQ# {hello.last_seq} but "
                    f"the SVOLs hold journals up to SEQ# {high} (restore point "
                    f"{self.restored}): the relay's journal went backwards (lost or "
                    f"recreated); run `tricopy pair resync` to copy what differs")
        return None

    def verify(self, body: bytes) -> tuple[Control, bytes]:
        """Check a one-journal JNLWR body; raise protocol.BadBody saying what is wrong."""
        return self.verify_journal(*protocol.split_journal(body))

    def verify_batch(self, body: bytes) -> list[tuple[Control, memoryview]]:
        """Check every journal of a JNLWR body, one or a batch (docs/protocol.md,
        "Journal batches"); the first bad one raises protocol.BadBody, and
        then nothing of the frame may be staged."""
        return [self.verify_journal(ctl, data) for ctl, data in protocol.split_journals(body)]

    def verify_journal(self, ctl: Control, data) -> tuple[Control, bytes]:
        """Check one journal; raise protocol.BadBody saying what is wrong."""
        if not ctl.ccrc_ok():
            raise protocol.BadBody(f"journal seq {ctl.seq}: control CRC mismatch", Status.BAD_FRAME)
        if ctl.data_len != len(data):
            raise protocol.BadBody(f"journal seq {ctl.seq}: DATA_LEN {ctl.data_len} but "
                                   f"{len(data)} bytes follow", Status.BAD_LENGTH)
        if ctl.kind not in protocol.WIRE_KINDS:
            raise protocol.BadBody(f"journal seq {ctl.seq}: kind {ctl.kind}", Status.BAD_KIND)
        if ctl.kind in protocol.DATA_KINDS:
            kind_ok = ctl.data_len == ctl.length
        elif ctl.kind == Kind.MARK:
            kind_ok = ctl.length == 0 and ctl.data_len == 0
        else:
            kind_ok = ctl.data_len == 0
        if not kind_ok:
            raise protocol.BadBody(f"journal seq {ctl.seq}: kind {Kind(ctl.kind).name} with "
                                   f"LENGTH {ctl.length}, DATA_LEN {ctl.data_len}", Status.BAD_LENGTH)
        if ctl.data_crc != (protocol.crc32c(data) if data else 0):
            raise protocol.BadBody(f"journal seq {ctl.seq}: data CRC mismatch", Status.BAD_DCRC)
        if ctl.group != self.group:
            raise protocol.BadBody(f"journal seq {ctl.seq} for group {ctl.group}", Status.WRONG_GROUP)
        if ctl.epoch != self.epoch:
            raise protocol.BadBody(f"journal seq {ctl.seq} has epoch {ctl.epoch}, "
                                   f"group is at {self.epoch}", Status.STALE_EPOCH)
        return ctl, data

    def receive(self, ctl: Control, data: bytes) -> bool:
        """Stage a verified journal; False if it is a replay of one already held."""
        self.received += 1
        if ctl.seq <= max(self.applied, self.ext_end) or ctl.seq in self.staged:
            return False
        self.staged[ctl.seq] = (ctl, data)
        self.staged_bytes += len(data) + protocol.CONTROL_SIZE
        return True

    # -- what to do next ----------------------------------------------------------

    @property
    def high(self) -> int:
        """The newest SEQ# the SVOLs may hold."""
        return max(self.mark, self.applied)

    @property
    def catching_up(self) -> bool:
        """A crash left journals up to ``replay_to`` maybe half applied."""
        return self.applied < self.replay_to

    def _next_staged(self) -> bool:
        return self.ext_end > self.applied or self.applied + 1 in self.staged

    def gap(self) -> int | None:
        """The first missing SEQ# when journals beyond it are staged, else None."""
        if self.staged and not self._next_staged():
            return self.applied + 1
        return None

    def run_end(self) -> int:
        """The last SEQ# of the staged run that follows ``applied`` (capped at MARK_AHEAD)."""
        seq, stop = self.applied, self.applied + MARK_AHEAD
        if self.ext_end > seq:
            seq = min(self.ext_end, stop)
        while seq < stop and seq + 1 in self.staged:
            seq += 1
        return seq

    def mark_due(self) -> int | None:
        """The apply mark to save before applying on, or None if the mark allows progress."""
        if self.applied < self.mark or not self._next_staged():
            return None
        return self.run_end()

    def take_external(self, limit: int | None = None) -> int:
        """How far the journals staged outside (``ext_end``) may be applied now,
        never past the mark: 0 if none; else they count as applied at once,
        as with :meth:`take`."""
        end = self.mark if limit is None else min(self.mark, self.applied + limit)
        upto = min(end, self.ext_end)
        if upto <= self.applied:
            return 0
        self.applied = upto
        return upto

    def ext_dropped(self) -> None:
        """The journals staged outside are gone (the relay sends them again)."""
        self.ext_end = self.applied

    def take(self, limit: int | None = None) -> list[tuple[Control, bytes]]:
        """The next journals to apply, in order, never past a gap or the mark
        (nor before the journals staged outside, :meth:`take_external`).

        They count as applied at once: the caller applies every one of them
        or suspends the group (:meth:`RestoreGroup.restore`).
        """
        if self.ext_end > self.applied:
            return []
        end = self.mark if limit is None else min(self.mark, self.applied + limit)
        out = []
        seq = self.applied
        while seq < end and (nxt := self.staged.pop(seq + 1, None)) is not None:
            out.append(nxt)
            self.staged_bytes -= len(nxt[1]) + protocol.CONTROL_SIZE
            seq += 1
        self.applied = seq
        return out

    def not_applied(self, seq: int) -> None:
        """Journal ``seq`` of a taken batch failed to apply: it and those after
        it are not on the SVOLs, so ``applied`` (and any restore point) stays
        before it.  Its extent may hold part of the failed write, so the image
        is no prefix until ``seq`` is applied again: as after a crash, the
        SVOLs are fenced (``catching_up``).  The caller suspends the group."""
        self.applied = min(self.applied, seq - 1)
        self.ext_end = min(self.ext_end, self.applied)
        self.replay_to = max(self.replay_to, seq)

    # -- what was made durable ------------------------------------------------------

    def mark_saved(self, mark: int) -> None:
        self.mark = max(self.mark, mark)

    def restored_saved(self, seq: int) -> None:
        self.restored = seq

    def rebase(self, relay_seq: int, new_stream: bool = False) -> bool:
        """The ordered resync of a stream that went backwards: the restore point
        moves back to the relay's newest SEQ# (the copy that follows rewrites
        what differs).  With ``new_stream`` (another relay's stream, at a new
        epoch) it moves there either way: the next journal is ``relay_seq`` + 1.
        True if it moved; the caller saves R = M = relay_seq."""
        if relay_seq >= self.high and not (new_stream and relay_seq != self.high):
            return False
        self.staged.clear()
        self.staged_bytes = 0
        self.restored = self.mark = self.applied = self.ext_end = relay_seq
        self.replay_to = 0
        return True
