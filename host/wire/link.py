"""Frames over TCP: the asyncio adapter under the sans-I/O codec (host/wire/protocol.py).

A :class:`Link` is one TCP connection carrying frames both ways.  It

* parses with :class:`protocol.FrameParser`; any malformed frame closes the
  link (docs/protocol.md: on TCP every frame error is fatal to the connection),
  so nothing from a bad frame is ever handed up;
* keeps the link alive with HEARTBEAT: the side that *opened* the connection
  sends one every ``heartbeat`` seconds, the side that accepted it echoes it.
  (Only one side asks: if both answered every HEARTBEAT they would echo each
  other forever.)  Either side whose read hears nothing for ``3 * heartbeat``
  seconds declares the link dead with :class:`LinkTimeout`;
* exchanges HELLO as the first frame (:func:`connect`, :meth:`Link.expect_hello`);
* runs over TLS 1.3 with mutual authentication when the site has ``[tls]``
  (host/wire/tls.py): :func:`connect` checks that the peer's certificate
  names the site the config expects there, :attr:`Link.peer_names` gives the
  accepting side the names to check after HELLO.

Reconnecting is the caller's loop: the sites know what to resend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl

from . import protocol
from . import tls as _tls
from .bufstream import open_stream
from .protocol import Frame, FrameType

__all__ = ["LinkError", "LinkClosed", "LinkTimeout", "LinkRefused", "LinkUnauthenticated", "Link",
           "connect", "nak"]

log = logging.getLogger(__name__)

_READ_CHUNK = 1 << 16
_FLUSH_AT = 256 << 10     # queued bytes that drain() hands to the transport at once
_ALONE = 16 << 10         # a buffer this large is one TLS record or more by itself
# A TLS close waits for the peer's close_notify; a peer that vanished without a
# FIN or RST (a site lost with its network) never sends one, and asyncio would
# wait its 30 s SSL shutdown timeout -- inside a takeover's fence.  After this
# grace the connection is aborted instead.
_CLOSE_GRACE = 1.0


class LinkError(Exception):
    """The link is unusable; reconnect."""


class LinkClosed(LinkError):
    """The peer closed the connection (or it was reset)."""


class LinkTimeout(LinkError):
    """Nothing heard from the peer within the liveness timeout."""


class LinkRefused(LinkError):
    """The peer answered HELLO with a NAK (wrong group, stale epoch, ...)."""

    def __init__(self, message: str, status: protocol.Status, peer_epoch: int = 0):
        super().__init__(message)
        self.status = status
        self.peer_epoch = peer_epoch     # STALE_EPOCH: the refusing site's epoch (NAK TAG)


class _Silent(ConnectionError):
    """Set on the reader by the watchdog: the peer said nothing for too long.

    A ConnectionError: asyncio's ``StreamWriter.drain`` raises the reader's
    exception too, and every caller that treats a ConnectionError as a lost
    link must treat this one so (a relay forwarder's drain let it escape and
    the relay stopped; found by the chaos test's stalled-link round)."""


class LinkUnauthenticated(LinkClosed):
    """The TLS handshake failed or the peer's certificate names another site."""


class Link:
    """One frame connection.  ``initiator`` is True on the side that connected."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 initiator: bool, heartbeat: float = 1.0, name: str = "link"):
        self._reader = reader
        self._writer = writer
        self._parser = protocol.FrameParser()
        self._frames: list[Frame] = []
        self._heartbeat = heartbeat
        self._initiator = initiator
        self.name = name
        self.closed = False
        # Frames queued by send() and not yet handed to the transport: written
        # together once per event-loop turn (one send() syscall for many frames).
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._scheduled = False       # a flush is due at the end of this turn
        # Journals queued by send_journal() for the JNLWR being gathered.
        self._batch: list = []
        self._batch_n = 0
        self._batch_bytes = 0
        self._hb_task = asyncio.create_task(self._beat()) if initiator else None
        # The silence limit is watched by one task, not a timer per read: a
        # timeout around every read() made and cancelled a timer each time,
        # about 5 % of a site's CPU at depth 16 in its profile (docs/
        # benchmarks.md, "State files in place, one watchdog per link").
        # ``_wait_since``: when the read now waiting began (None: none waits).
        self._wait_since: float | None = None
        self._watch_task = asyncio.create_task(self._watch())
        # Read once: a closed TLS transport answers no more questions.
        peer = writer.get_extra_info("peername")
        self.peername = f"{peer[0]}:{peer[1]}" if peer else "?"
        #: site names in the peer's verified certificate (empty on a plaintext link)
        self.peer_names = _tls.peer_names(writer)
        self.secure = writer.get_extra_info("ssl_object") is not None

    def send(self, frame: Frame) -> None:
        """Queue one frame (no await: ordering is the call order).

        The frame goes out with every other frame queued in the same
        event-loop turn, in one transport write: the profile showed one
        ``send()`` syscall per frame as the primary's largest cost.
        """
        if self.closed:
            raise LinkClosed(f"{self.name}: link already closed")
        self._close_batch()           # a journal batch queued before goes first
        self._schedule()
        raw = frame.serialize()
        self._out.append(raw)
        self._out_bytes += len(raw)

    def send_journal(self, control: bytes, data: bytes | memoryview = b"") -> None:
        """Queue one journal (packed control data, data) for a JNLWR.

        Journals queued one after the other share one JNLWR frame, a batch
        (docs/protocol.md, "Journal batches"), closed by the next
        :meth:`send`, by :meth:`flush` (once per event-loop turn) or at
        ``BATCH_JOURNALS`` / ``BATCH_BYTES``.  The data is referenced, not
        copied: it must not change until the turn ends.  A batch of one is
        the single-journal JNLWR byte for byte.
        """
        if self.closed:
            raise LinkClosed(f"{self.name}: link already closed")
        size = len(control) + len(data)
        if self._batch and (self._batch_n >= protocol.BATCH_JOURNALS
                            or self._batch_bytes + size > protocol.BATCH_BYTES):
            self._close_batch()
        self._schedule()
        self._batch.append(control)
        if data:
            self._batch.append(data)
        self._batch_n += 1
        self._batch_bytes += size

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def _close_batch(self) -> None:
        if not self._batch:
            return
        parts = protocol.serialize_parts(FrameType.JNLWR, self._batch)
        self._out.extend(parts)
        self._out_bytes += self._batch_bytes + protocol.HEADER_SIZE + protocol.TRAILER_SIZE
        self._batch, self._batch_n, self._batch_bytes = [], 0, 0

    def flush(self) -> None:
        """Hand every queued frame to the transport now (normally done once per turn)."""
        self._scheduled = False
        self._close_batch()
        if not self._out:
            return
        out, self._out, self._out_bytes = self._out, [], 0
        if self._writer.is_closing():
            return        # the connection is gone; the sites resend after reconnecting
        if self.secure and len(out) > 1:
            # The TLS layer seals every buffer it is handed as a record of its
            # own (SSLObject.write per buffer), so a batch's 64-byte control
            # data would each cost a record and an AEAD call at both ends:
            # small buffers are joined.  A large one goes as it is (it fills
            # whole records anyway): joining it was one more copy of the data.
            self._writer.writelines(_coalesce(out))
        else:
            self._writer.writelines(out)

    async def drain(self) -> None:
        """Wait while the peer is slow to read (flow control).

        Frames queued in this turn are left for the turn's one write unless
        they add up to a lot: every writer drains after each journal, and
        flushing here would bring back one syscall per frame.
        """
        if self._out_bytes + self._batch_bytes >= _FLUSH_AT:
            self.flush()
        try:
            await self._writer.drain()
        except _Silent as exc:
            await self.close()
            raise LinkTimeout(f"{self.name}: {exc}") from None
        except (ConnectionError, OSError) as exc:
            await self.close()
            raise LinkClosed(f"{self.name}: {exc}") from None

    async def recv(self) -> Frame:
        """The next frame other than HEARTBEAT; raises LinkError when the link is gone."""
        while True:
            while not self._frames:
                self._wait_since = asyncio.get_running_loop().time()
                try:
                    chunk = await self._reader.read(_READ_CHUNK)
                except _Silent:
                    await self.close()
                    raise LinkTimeout(f"{self.name}: nothing from {self.peername} for "
                                      f"{3 * self._heartbeat:.1f} s") from None
                except (ConnectionError, OSError) as exc:
                    await self.close()
                    raise LinkClosed(f"{self.name}: {exc}") from None
                finally:
                    self._wait_since = None
                if not chunk:
                    await self.close()
                    raise LinkClosed(f"{self.name}: {self.peername} closed the connection")
                try:
                    self._frames.extend(self._parser.feed(chunk))
                except protocol.ProtocolError as exc:
                    # Fatal on TCP: drop the connection; the peer resends what was not ACKed.
                    log.warning("%s: bad frame from %s: %s", self.name, self.peername, exc)
                    await self.close()
                    raise LinkClosed(f"{self.name}: bad frame: {exc}") from None
            frame = self._frames.pop(0)
            if frame.type == FrameType.HEARTBEAT:
                if not self._initiator and not self.closed:
                    self.send(frame)   # echo; the initiator's own echoes only prove liveness
                continue
            return frame

    async def expect_hello(self) -> protocol.Hello:
        """Receive the peer's HELLO (a NAK instead raises LinkRefused)."""
        frame = await self.recv()
        if frame.type == FrameType.NAK:
            try:
                ack = protocol.Ack.from_frame(frame)
            except protocol.ProtocolError as exc:
                # A NAK we cannot read is a bad frame like any other: the
                # caller's reconnect loop must see a LinkError (found by
                # fuzzing: a BadBody here ended the primary's link task).
                await self.close()
                raise LinkClosed(f"{self.name}: bad NAK to HELLO: {exc}") from None
            await self.close()
            raise LinkRefused(f"{self.name}: HELLO refused: {protocol.Status(ack.status).name}",
                              protocol.Status(ack.status), ack.tag)
        if frame.type != FrameType.HELLO:
            await self.close()
            raise LinkClosed(f"{self.name}: expected HELLO, got {frame.type.name}")
        try:
            return protocol.Hello.unpack(frame.body)
        except protocol.ProtocolError as exc:
            await self.close()
            raise LinkClosed(f"{self.name}: bad HELLO: {exc}") from None

    async def _beat(self) -> None:
        with contextlib.suppress(LinkError, ConnectionError, OSError):
            while not self.closed:
                await asyncio.sleep(self._heartbeat)
                if self.closed:
                    break
                self.send(Frame(FrameType.HEARTBEAT))
                await self.drain()

    async def _watch(self) -> None:
        """End a read that has waited ``3 * heartbeat`` with nothing (checked
        every half heartbeat: a dead link is declared after 3 to 3.5)."""
        loop = asyncio.get_running_loop()
        limit = 3 * self._heartbeat
        while not self.closed:
            await asyncio.sleep(self._heartbeat / 2)
            since = self._wait_since
            if since is not None and loop.time() - since >= limit and not self.closed:
                # the waiting read raises it (and so does every drain after it)
                self._reader.set_exception(
                    _Silent(f"nothing from {self.peername} for {limit:.1f} s"))
                return

    async def close(self) -> None:
        if self.closed:
            return
        self.flush()      # a NAK queued just before closing still reaches the peer
        self.closed = True
        for task in (self._hb_task, self._watch_task):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        self._writer.close()
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow
        # the cancellation of the task that closes (when wait_closed ends in
        # the same turn), and a cancelled link task then ran on forever (a
        # test's shutdown hung; found in tests/e2e/test_relay_loss.py).
        try:
            async with asyncio.timeout(_CLOSE_GRACE):
                await self._writer.wait_closed()
        except TimeoutError:
            self._writer.transport.abort()
        except Exception:
            pass


def _coalesce(parts: list) -> list:
    """``parts`` with each run of buffers under ``_ALONE`` bytes joined into one."""
    out, run = [], []
    for part in parts:
        if len(part) < _ALONE:
            run.append(part)
            continue
        if run:
            out.append(b"".join(run))
            run = []
        out.append(part)
    if run:
        out.append(b"".join(run))
    return out


async def connect(addr: tuple[str, int], hello: protocol.Hello, *, heartbeat: float = 1.0,
                  timeout: float = 5.0, name: str = "link", tls: "ssl.SSLContext | None" = None,
                  peer_site: str | None = None) -> tuple[Link, protocol.Hello]:
    """Open a link, send our HELLO, return the link and the peer's HELLO.

    With ``tls`` (a client context, host/wire/tls.py) the connection is TLS
    1.3 and the peer's certificate must name ``peer_site``; a refusal raises
    :class:`LinkUnauthenticated` after one warning line (repeated at most
    every 30 s while the caller retries).
    """
    try:
        reader, writer = await asyncio.wait_for(
            open_stream(*addr, ssl=tls, ssl_handshake_timeout=timeout if tls else None),
            timeout)
    except ssl.SSLError as exc:
        why = f"{name}: refused {addr[0]}:{addr[1]}: {_tls.refusal(exc)}"
        _tls.warn_once(log, why)
        raise LinkUnauthenticated(why) from None
    except (OSError, asyncio.TimeoutError) as exc:
        raise LinkClosed(f"{name}: cannot connect to {addr[0]}:{addr[1]}: {exc}") from None
    link = Link(reader, writer, initiator=True, heartbeat=heartbeat, name=name)
    if tls is not None:
        why = _tls.revoked(writer)
        if why is None and peer_site is not None:
            why = _tls.check_peer(link.peer_names, [peer_site])
        if why is not None:
            why = f"{name}: refused {addr[0]}:{addr[1]}: {why}"
            _tls.warn_once(log, why)
            await link.close()
            raise LinkUnauthenticated(why)
    link.send(hello.frame())
    await link.drain()
    return link, await link.expect_hello()


def nak(status: protocol.Status, req_type: int, tag: int = 0, seq: int = 0) -> Frame:
    """A NAK frame for a request this site refuses."""
    return protocol.Ack(seq=seq, tag=tag, status=status, req_type=req_type).frame()
