"""The ``board`` / ``port`` backend: engine frames over a pyserial URL; and
the same over an asyncio TCP connection, for the ``sim`` harness.

A board's UART, the Verilator harness's pty or socket and ``engine serve``
all speak the same byte protocol, so one class reaches them all through
``serial.serial_for_url`` (as LiteX's ``litex_client`` does).  pyserial is
blocking; every exchange runs on one dedicated worker thread, which also
keeps a cancelled call from overlapping the next one on the wire.

:class:`SocketEngine` speaks the same frames over ``asyncio`` streams, with
the same timeout and resync rules.  The thread hop and pyserial's select
loop cost the relay ~250 µs of CPU per journal (`tricopy bench replicate
--engine sim`), more than everything else it does for a journal; the sim
harness is always a TCP peer, so it needs neither.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import time

import serial

from tricopy.host.wire import protocol
from tricopy.host.engine.base import EngineError, EngineTimeout, FrameEngine
from tricopy.host.wire.protocol import Frame, FrameType

__all__ = ["PortEngine", "SocketEngine"]

_LENGTH_AT = 8          # header LENGTH offset (docs/protocol.md, "Frame")


class PortEngine(FrameEngine):
    """A journal engine at the other end of a byte link (``/dev/tty*``, ``socket://``, ...).

    ``timeout`` is the longest silence tolerated while an answer is due.
    After a timeout or a garbled answer the link is out of step: late bytes
    may still arrive.  The next call first resynchronizes by sending a
    HEARTBEAT with a random token and discarding everything up to its echo.
    """

    def __init__(self, url: str, *, timeout: float = 2.0, name: str = "port",
                 baudrate: int = protocol.ENGINE_BAUD):
        self.name = name
        self.url = url
        self.timeout = timeout
        try:
            self._port = serial.serial_for_url(url, baudrate=baudrate, timeout=timeout)
        except (serial.SerialException, ValueError, OSError) as exc:
            raise EngineError(f"cannot open engine link {url!r}: {exc}") from exc
        self._worker = concurrent.futures.ThreadPoolExecutor(1, f"engine-{name}")
        self._lock = asyncio.Lock()
        self._parser = protocol.FrameParser()
        self._out_of_step = False

    async def transact(self, frame: Frame) -> list[Frame]:
        async with self._lock:
            loop = asyncio.get_running_loop()
            try:
                return await loop.run_in_executor(self._worker, self._transact, frame)
            except asyncio.CancelledError:
                self._out_of_step = True        # the answer may still be on its way
                raise

    async def close(self) -> None:
        self._worker.shutdown(wait=True)
        self._port.close()

    # -- blocking side, on the worker thread ---------------------------------

    def _transact(self, frame: Frame) -> list[Frame]:
        try:
            if self._out_of_step:
                self._resync()
            self._port.write(frame.serialize())
            answer = []
            while True:
                got = self._read_frame()
                answer.append(got)
                if got.type != FrameType.JNLWR:     # read-out ends at its ACK/NAK
                    return answer
        except EngineError:
            self._out_of_step = True
            raise
        except (serial.SerialException, OSError) as exc:
            self._out_of_step = True
            raise EngineError(f"engine link {self.url!r} failed: {exc}") from exc

    def _read_exact(self, n: int) -> bytes:
        data = bytearray()
        deadline = time.monotonic() + self.timeout
        while len(data) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise EngineTimeout(f"engine at {self.url!r} silent for {self.timeout} s "
                                    f"({len(data)} of {n} bytes of a frame arrived)")
            self._port.timeout = left
            data += self._port.read(n - len(data))
        return bytes(data)

    def _read_frame(self) -> Frame:
        # Exact-size reads: pyserial's read(n) returns as soon as n bytes are in.
        try:
            head = self._read_exact(protocol.HEADER_SIZE)
            frames = self._parser.feed(head)         # checks the header first
            if not frames:
                length = int.from_bytes(head[_LENGTH_AT:_LENGTH_AT + 4], "little")
                frames = self._parser.feed(self._read_exact(length + protocol.TRAILER_SIZE))
        except protocol.ProtocolError as exc:
            raise EngineError(f"engine at {self.url!r} sent a bad frame: {exc}") from exc
        return frames[0]

    def _resync(self) -> None:
        """Drop stale bytes up to the echo of a fresh HEARTBEAT token."""
        self._port.reset_input_buffer()
        probe = Frame(FrameType.HEARTBEAT, os.urandom(8)).serialize()
        self._port.write(probe)
        seen = bytearray()
        deadline = time.monotonic() + self.timeout
        while (at := seen.find(probe)) < 0:
            left = deadline - time.monotonic()
            if left <= 0:
                raise EngineTimeout(f"engine at {self.url!r} did not echo a resync HEARTBEAT "
                                    f"within {self.timeout} s")
            self._port.timeout = min(left, 0.02)
            seen += self._port.read(65536)
            del seen[:max(0, len(seen) - 65536 - len(probe))]   # bound the memory
        if len(seen) > at + len(probe):
            raise EngineError(f"engine at {self.url!r} sent bytes after the resync echo")
        self._parser = protocol.FrameParser()
        self._out_of_step = False


class SocketEngine(FrameEngine):
    """A journal engine at the other end of a TCP connection, on the event loop.

    The same contract as :class:`PortEngine` (``timeout`` is the longest
    silence while an answer is due; after a timeout, a garbled answer or a
    cancelled call the next call first resyncs with a HEARTBEAT token) without
    a worker thread.  Connects on the first call.
    """

    def __init__(self, host: str, port: int, *, timeout: float = 2.0, name: str = "socket"):
        self.name = name
        self.url = f"socket://{host}:{port}"
        self.host, self.port = host, port
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        self._parser = protocol.FrameParser()
        self._out_of_step = False

    async def transact(self, frame: Frame) -> list[Frame]:
        async with self._lock:
            try:
                if self._writer is None:
                    self._reader, self._writer = await asyncio.wait_for(
                        asyncio.open_connection(self.host, self.port), self.timeout)
                if self._out_of_step:
                    await self._resync()
                self._writer.write(frame.serialize())
                answer = []
                while True:
                    got = await self._read_frame()
                    answer.append(got)
                    if got.type != FrameType.JNLWR:     # read-out ends at its ACK/NAK
                        return answer
            except asyncio.CancelledError:
                self._out_of_step = True                # the answer may still be on its way
                raise
            except EngineError:
                self._out_of_step = True
                raise
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
                self._out_of_step = True
                raise EngineError(f"engine link {self.url!r} failed: {exc!r}") from exc

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
            self._writer = self._reader = None

    async def _read_frame(self) -> Frame:
        # One timer per frame (asyncio.timeout), not a task per read
        # (wait_for): this path runs once per journal.
        try:
            async with asyncio.timeout(self.timeout):
                head = await self._reader.readexactly(protocol.HEADER_SIZE)
                frames = self._parser.feed(head)         # checks the header first
                if not frames:
                    length = int.from_bytes(head[_LENGTH_AT:_LENGTH_AT + 4], "little")
                    frames = self._parser.feed(
                        await self._reader.readexactly(length + protocol.TRAILER_SIZE))
        except TimeoutError:
            raise EngineTimeout(f"engine at {self.url!r} silent for {self.timeout} s "
                                f"while a frame was due") from None
        except protocol.ProtocolError as exc:
            raise EngineError(f"engine at {self.url!r} sent a bad frame: {exc}") from exc
        return frames[0]

    async def _resync(self) -> None:
        """Drop stale bytes up to the echo of a fresh HEARTBEAT token."""
        probe = Frame(FrameType.HEARTBEAT, os.urandom(8)).serialize()
        self._writer.write(probe)
        seen = bytearray()
        deadline = time.monotonic() + self.timeout
        while (at := seen.find(probe)) < 0:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise asyncio.TimeoutError
                chunk = await asyncio.wait_for(self._reader.read(65536), left)
            except asyncio.TimeoutError:
                raise EngineTimeout(f"engine at {self.url!r} did not echo a resync HEARTBEAT "
                                    f"within {self.timeout} s") from None
            if not chunk:
                raise EngineError(f"engine at {self.url!r} closed the link during a resync")
            seen += chunk
            del seen[:max(0, len(seen) - 65536 - len(probe))]   # bound the memory
        if len(seen) > at + len(probe):
            raise EngineError(f"engine at {self.url!r} sent bytes after the resync echo")
        self._parser = protocol.FrameParser()
        self._out_of_step = False
