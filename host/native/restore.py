"""The secondary's native loop (``restore.c``) under one relay connection.

What runs where (docs/benchmarks.md, "What the goals need: a native
steady-state loop per site"):

* **C**, on every readable event of the link's socket: read, decrypt
  through the TLS session Python made, parse, check each journal of a JNLWR
  as ``RestoreStream.verify_journal`` does, stage those that continue the
  stream (the next SEQ#, a data journal inside its SVOL) and, when the
  restorer asks, write them to the SVOLs.
* **Python**, for everything else: every frame the C loop does not stage
  comes to :meth:`NativeRestore.run` whole and takes the path it takes
  without the loop (``Secondary._frame``): HEARTBEAT echoes, a replay or a
  gap, a MARK journal, a bad journal's NAK, another frame type.
  Bytes that are no frame at all go to :class:`protocol.FrameParser`, which
  names the error.  The restorer keeps the apply mark, the checkpoint and
  the ACK; it learns how far the loop staged from ``RestoreStream.ext_end``.

While the loop owns the connection, asyncio's transport does not read it
(``pause_reading`` on the socket's transport); the site's ACKs still go out
through asyncio's transport and the same TLS session, in the same thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import struct
import time

from . import NativeUnavailable, load
from ..disk import fileio
from ..wire import protocol
from ..wire.link import LinkClosed, LinkError, LinkTimeout
from ..wire.protocol import Control, Frame, FrameType

__all__ = ["NativeRestore", "layout"]

log = logging.getLogger(__name__)


def layout() -> dict:
    """The wire layout the C loop reads, from host/wire/protocol.py."""
    field = {}
    # each field's width from the one struct format (OFFSETS lists them in its order)
    codes = Control.STRUCT.format.lstrip("<")
    sizes = dict(zip(Control.OFFSETS, (struct.calcsize("<" + c) for c in codes)))
    assert sum(sizes.values()) == Control.STRUCT.size == protocol.CONTROL_SIZE
    for name in ("seq", "time", "address", "length", "data_len", "data_crc", "epoch", "idx",
                 "kind", "group", "tag", "ccrc"):
        field[name] = (Control.OFFSETS[name], sizes[name])
    return {
        "magic": protocol.MAGIC, "version": protocol.VERSION, "header": protocol.HEADER_SIZE,
        "trailer": protocol.TRAILER_SIZE, "control": protocol.CONTROL_SIZE,
        "jnlwr": int(FrameType.JNLWR), "ccrc_span": Control.OFFSETS["ccrc"],
        "flags_ok": int(protocol.FrameFlag.MORE),
        "max_length": {int(t): n for t, n in protocol.MAX_LENGTH.items()},
        "data_kinds": [int(k) for k in protocol.DATA_KINDS],
        # no data, zeros over LENGTH (Volume.write_zeroes; a TRIM reads back as zeros)
        "zero_kinds": [int(protocol.Kind.ZERO), int(protocol.Kind.TRIM)],
        **field,
    }


_module = None


def _restore():
    global _module
    if _module is None:
        m = load("restore")
        m.configure(layout())
        _module = m
    return _module


class NativeRestore:
    """The C loop on one relay link of one RESTORE group."""

    def __init__(self, group, fd: int, sslobj=None, *, name: str = "native",
                 peername: str = "?") -> None:
        """The loop on socket ``fd`` (owned from now on: closed by :meth:`close`),
        reading through ``sslobj`` (an ``_ssl._SSLSocket``) if not None."""
        m = _restore()
        self._m = m
        self.group = group
        self.fd = fd
        self.name, self.peername = name, peername
        stream = group.stream
        vols = [(i, v._fd, v.size, v.block_size) for i, v in sorted(group.volumes.items())]
        self.rx = m.Receiver(fd, sslobj, ssl.OPENSSL_VERSION_NUMBER, stream.group,
                             stream.epoch, stream.applied + 1, vols, group.stage_limit)
        self.rx.fast = not stream.staged
        self.link = None
        self._raw = None
        self._held: list[Frame] = []
        self._events: asyncio.Queue = asyncio.Queue()
        self._reading = False
        self._since = time.monotonic()
        self._full = False
        self.closed = False

    @classmethod
    def from_link(cls, group, link) -> "NativeRestore":
        """Take over ``link``'s socket after the HELLOs (raises why it cannot,
        before anything of the link changed)."""
        m = _restore()
        writer = link._writer
        sock = writer.get_extra_info("socket")
        if sock is None:
            raise NativeUnavailable("the link has no socket")
        sslobj = writer.get_extra_info("ssl_object")
        if sslobj is not None:
            # the socket's own transport, under asyncio's TLS layer
            raw = writer.transport._ssl_protocol._transport
            inner = sslobj._sslobj
            m.ssl_ok(inner, ssl.OPENSSL_VERSION_NUMBER)      # raises why not
        else:
            raw, inner = writer.transport, None
        fd = os.dup(sock.fileno())
        try:
            self = cls(group, fd, inner, name=link.name, peername=link.peername)
        except BaseException:
            os.close(fd)
            raise
        # The link's own reader stops here for good; what it holds is handed on.
        raw.pause_reading()
        self.link, self._raw = link, raw
        self._held = list(link._frames)          # parsed, not yet taken: Python's first
        link._frames.clear()
        rest = link._parser.take_buffered() + bytes(link._reader._buffer)
        link._reader._buffer.clear()
        if rest:
            self.rx.feed(rest)
        return self

    # -- the event loop's side ---------------------------------------------------------

    def _start_reading(self) -> None:
        if not self._reading and not self.closed:
            asyncio.get_running_loop().add_reader(self.fd, self._readable)
            self._reading = True
            self._since = time.monotonic()      # silence counts from here (the watchdog)

    def _stop_reading(self) -> None:
        if self._reading:
            asyncio.get_running_loop().remove_reader(self.fd)
            self._reading = False

    def _readable(self) -> None:
        if self.closed or self._full:
            return
        m, rx, stream = self._m, self.rx, self.group.stream
        before = rx.received
        try:
            why = rx.pump()
        except OSError as exc:
            self._stop(LinkClosed(f"{self.name}: {exc}"))
            return
        if rx.received != before:
            stream.received += rx.received - before
            stream.ext_end = rx.staged_end
            self.group.staged_more()
        if why == m.NEED:
            return
        self._stop_reading()
        if why == m.FRAME:
            self._events.put_nowait(Frame(*self._frame_parts()))
        elif why == m.FULL:
            self._full = True           # resume() once the restorer made room
        elif why == m.BAD:
            self._events.put_nowait(self._bad())
        elif why == m.EOF:
            self._stop(LinkClosed(f"{self.name}: {self.peername} closed the connection"))
        else:
            self._stop(LinkClosed(f"{self.name}: {rx.error}"))

    def _frame_parts(self):
        ftype, flags, body = self.rx.take_frame()
        return protocol.FrameType(ftype), body, flags

    def _bad(self) -> LinkError:
        """Bytes that are no good frame: Python's parser says what is wrong."""
        rest = self.rx.take_rest()
        try:
            protocol.FrameParser().feed(rest)
        except protocol.ProtocolError as exc:
            log.warning("%s: bad frame from %s: %s", self.name, self.peername, exc)
            return LinkClosed(f"{self.name}: bad frame: {exc}")
        # (not expected: the loop calls BAD only what the parser refuses)
        return LinkClosed(f"{self.name}: a frame the native loop refused")

    def _stop(self, exc: LinkError) -> None:
        self._stop_reading()
        self._events.put_nowait(exc)

    def resume(self) -> None:
        """The restorer made room: read on (the frames already here first)."""
        self._full = False
        self._start_reading()
        self._readable()

    # -- the restorer's side -------------------------------------------------------------

    def apply(self, upto: int):
        """Write the staged journals up to SEQ# ``upto``: (applied, time, tag, touched, error)."""
        writer = None if fileio.backend() is fileio.OS else fileio.pwritev
        out = self.rx.apply(upto, writer)
        if self._full and not self.closed:
            self.resume()
        self.after_python()         # (Python's staging may have emptied)
        return out

    def after_python(self) -> None:
        """A frame went the Python way: while Python's staging holds journals,
        the loop stages none (they would come after those); once it is empty
        again, the loop takes over from the next SEQ#."""
        stream = self.group.stream
        if stream.staged:
            self.rx.fast = False
        elif not self.rx.fast:
            if not self.rx.staged:
                self.rx.staged_end = stream.applied
            self.rx.fast = True

    def reset(self) -> None:
        """The stream was rebased (a resync): what the loop staged is void."""
        self.rx.drop()
        self.rx.staged_end = self.group.stream.applied
        self.rx.fast = not self.group.stream.staged

    # -- the connection ------------------------------------------------------------------

    async def run(self, on_frame) -> None:
        """Until the link ends: frames the loop hands up go to ``on_frame``
        (a coroutine function), a silent link ends after 3 heartbeats."""
        for frame in self._held:
            await on_frame(frame)
        self._held = []
        heartbeat = self.link._heartbeat
        self._start_reading()
        self._readable()
        while True:
            try:
                item = await asyncio.wait_for(self._events.get(), heartbeat / 2)
            except asyncio.TimeoutError:
                if self.link.closed:
                    raise LinkClosed(f"{self.link.name}: closed")
                # Only while the loop wants bytes: not while it holds back
                # (staging full, as the Python path stops reading) -- as
                # Link._watch counts only a read that waits.
                silent = time.monotonic() - max(self.rx.last_rx, self._since)
                if self._reading and silent >= 3 * heartbeat:
                    raise LinkTimeout(f"{self.link.name}: nothing from {self.link.peername} for "
                                      f"{3 * heartbeat:.1f} s")
                continue
            if isinstance(item, BaseException):
                raise item
            await on_frame(item)
            if self.link.closed:
                raise LinkClosed(f"{self.link.name}: closed")
            self.after_python()
            self._start_reading()
            self._readable()

    def close(self) -> None:
        """Stop the loop, forget what it staged (the relay resends it), and give
        the socket back to asyncio's transport so that TLS can close cleanly."""
        if self.closed:
            return
        self._stop_reading()
        self.closed = True
        self.rx.drop()
        self.group.stream.ext_dropped()
        os.close(self.fd)
        if self._raw is not None:
            try:
                self._raw.resume_reading()
            except Exception:       # the transport is closing already
                pass
