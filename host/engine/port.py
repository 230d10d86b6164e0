"""The ``board`` / ``port`` backend: engine frames over a pyserial URL.

A board's UART, the Verilator harness's pty or socket and ``engine serve``
all speak the same byte protocol, so one class reaches them all through
``serial.serial_for_url`` (as LiteX's ``litex_client`` does).  pyserial is
blocking; every exchange runs on one dedicated worker thread, which also
keeps a cancelled call from overlapping the next one on the wire.
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

__all__ = ["PortEngine"]

_LENGTH_AT = 8          # header LENGTH offset (docs/protocol.md, "Frame")


class PortEngine(FrameEngine):
    """A journal engine at the other end of a byte link (``/dev/tty*``, ``socket://``, ...).

    ``timeout`` is the longest silence tolerated while an answer is due.
    After a timeout or a garbled answer the link is out of step: late bytes
    may still arrive.  The next call first resynchronizes by sending a
    HEARTBEAT with a random token and discarding everything up to its echo.
    """

    def __init__(self, url: str, *, timeout: float = 2.0, name: str = "port",
                 baudrate: int = 115200):
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
