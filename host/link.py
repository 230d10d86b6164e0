"""Frames over TCP: the asyncio adapter under the sans-I/O codec (host/protocol.py).

A :class:`Link` is one TCP connection carrying frames both ways.  It

* parses with :class:`protocol.FrameParser`; any malformed frame closes the
  link (docs/protocol.md: on TCP every frame error is fatal to the connection),
  so nothing from a bad frame is ever handed up;
* keeps the link alive with HEARTBEAT: the side that *opened* the connection
  sends one every ``heartbeat`` seconds, the side that accepted it echoes it.
  (Only one side asks: if both answered every HEARTBEAT they would echo each
  other forever.)  Either side that hears nothing for ``3 * heartbeat``
  seconds declares the link dead with :class:`LinkTimeout`;
* exchanges HELLO as the first frame (:func:`connect`, :meth:`Link.expect_hello`).

Reconnecting is the caller's loop: the sites know what to resend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from . import protocol
from .protocol import Frame, FrameType

__all__ = ["LinkError", "LinkClosed", "LinkTimeout", "LinkRefused", "Link", "connect", "nak"]

log = logging.getLogger(__name__)

_READ_CHUNK = 1 << 16


class LinkError(Exception):
    """The link is unusable; reconnect."""


class LinkClosed(LinkError):
    """The peer closed the connection (or it was reset)."""


class LinkTimeout(LinkError):
    """Nothing heard from the peer within the liveness timeout."""


class LinkRefused(LinkError):
    """The peer answered HELLO with a NAK (wrong group, stale epoch, ...)."""

    def __init__(self, message: str, status: protocol.Status):
        super().__init__(message)
        self.status = status


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
        self._hb_task = asyncio.create_task(self._beat()) if initiator else None

    @property
    def peername(self) -> str:
        peer = self._writer.get_extra_info("peername")
        return f"{peer[0]}:{peer[1]}" if peer else "?"

    def send(self, frame: Frame) -> None:
        """Queue one frame (no await: ordering is the call order)."""
        if self.closed:
            raise LinkClosed(f"{self.name}: link already closed")
        self._writer.write(frame.serialize())

    async def drain(self) -> None:
        try:
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            await self.close()
            raise LinkClosed(f"{self.name}: {exc}") from None

    async def recv(self) -> Frame:
        """The next frame other than HEARTBEAT; raises LinkError when the link is gone."""
        while True:
            while not self._frames:
                try:
                    chunk = await asyncio.wait_for(self._reader.read(_READ_CHUNK),
                                                   3 * self._heartbeat)
                except asyncio.TimeoutError:
                    await self.close()
                    raise LinkTimeout(f"{self.name}: nothing from {self.peername} for "
                                      f"{3 * self._heartbeat:.1f} s") from None
                except (ConnectionError, OSError) as exc:
                    await self.close()
                    raise LinkClosed(f"{self.name}: {exc}") from None
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
            ack = protocol.Ack.from_frame(frame)
            await self.close()
            raise LinkRefused(f"{self.name}: HELLO refused: {protocol.Status(ack.status).name}",
                              protocol.Status(ack.status))
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

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._hb_task is not None and self._hb_task is not asyncio.current_task():
            self._hb_task.cancel()
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()


async def connect(addr: tuple[str, int], hello: protocol.Hello, *, heartbeat: float = 1.0,
                  timeout: float = 5.0, name: str = "link") -> tuple[Link, protocol.Hello]:
    """Open a link, send our HELLO, return the link and the peer's HELLO."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*addr), timeout)
    except (OSError, asyncio.TimeoutError) as exc:
        raise LinkClosed(f"{name}: cannot connect to {addr[0]}:{addr[1]}: {exc}") from None
    link = Link(reader, writer, initiator=True, heartbeat=heartbeat, name=name)
    link.send(hello.frame())
    await link.drain()
    return link, await link.expect_hello()


def nak(status: protocol.Status, req_type: int, tag: int = 0, seq: int = 0) -> Frame:
    """A NAK frame for a request this site refuses."""
    return protocol.Ack(seq=seq, tag=tag, status=status, req_type=req_type).frame()
