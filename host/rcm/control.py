"""The control socket of every site: JSON lines over TCP.

Request:  ``{"id": 7, "cmd": "write", "idx": 0, "offset": 4096, "data": "<base64>"}``
Answer:   ``{"id": 7, "ok": true, ...}`` or ``{"id": 7, "ok": false, "error": "...", "type": "..."}``

Each request line is served in its own task, so one connection can have
several writes in flight; answers carry the request's ``id``.  The sites
register their commands (``status`` everywhere; ``write``, ``write_zeroes``,
``trim``, ``flush`` on the primary).  ``tricopy status`` / pair commands use
the same socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import socket
from typing import Awaitable, Callable

__all__ = ["ControlError", "ControlServer", "ControlClient", "call"]

log = logging.getLogger(__name__)

Handler = Callable[[dict], Awaitable[dict]]

_LIMIT = 64 << 20    # one line can carry a base64 write of up to ~48 MiB


class ControlError(Exception):
    """A control request failed; ``type`` is the server-side error class name."""

    def __init__(self, message: str, type: str = "ControlError"):
        super().__init__(message)
        self.type = type


class ControlServer:
    """Serve registered commands on a TCP address."""

    def __init__(self, handlers: dict[str, Handler]):
        self.handlers = handlers
        self._server: asyncio.base_events.Server | None = None

    async def start(self, addr: tuple[str, int]) -> None:
        self._server = await asyncio.start_server(self._serve, *addr, limit=_LIMIT)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks = set()
        lock = asyncio.Lock()
        try:
            while line := await reader.readline():
                task = asyncio.create_task(self._one(line, writer, lock))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            writer.close()

    async def _one(self, line: bytes, writer: asyncio.StreamWriter, lock: asyncio.Lock) -> None:
        rid = None
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise ControlError("request must be a JSON object")
            rid = req.get("id")
            handler = self.handlers.get(req.get("cmd"))
            if handler is None:
                raise ControlError(f"unknown command {req.get('cmd')!r}; "
                                   f"known: {', '.join(sorted(self.handlers))}")
            answer = {"id": rid, "ok": True, **(await handler(req))}
        except Exception as exc:   # every failure is answered, never crashes the site
            if not isinstance(exc, (ControlError, ValueError, KeyError, TypeError)):
                log.exception("control command failed")
            answer = {"id": rid, "ok": False, "error": str(exc), "type": type(exc).__name__}
        async with lock:
            with contextlib.suppress(ConnectionError):
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()


class ControlClient:
    """Asyncio client; several requests may be in flight on one connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._reader, self._writer = reader, writer
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._rx = asyncio.create_task(self._receive())

    @classmethod
    async def open(cls, addr: tuple[str, int]) -> "ControlClient":
        reader, writer = await asyncio.open_connection(*addr, limit=_LIMIT)
        return cls(reader, writer)

    async def call(self, cmd: str, **args) -> dict:
        rid = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        self._writer.write(json.dumps({"id": rid, "cmd": cmd, **args}).encode() + b"\n")
        await self._writer.drain()
        answer = await fut
        if not answer.get("ok"):
            raise ControlError(answer.get("error", "?"), answer.get("type", "ControlError"))
        return answer

    async def _receive(self) -> None:
        exc: Exception = ConnectionError("control connection closed")
        try:
            while line := await self._reader.readline():
                answer = json.loads(line)
                fut = self._waiting.pop(answer.get("id"), None)
                if fut is not None and not fut.done():
                    fut.set_result(answer)
        except Exception as e:
            exc = e
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionError(str(exc)))
        self._waiting.clear()

    async def close(self) -> None:
        self._rx.cancel()
        self._writer.close()


def call(addr: tuple[str, int], cmd: str, timeout: float = 10.0, **args) -> dict:
    """Blocking one-shot request (for the CLI and tests)."""
    with socket.create_connection(addr, timeout=timeout) as s:
        s.sendall(json.dumps({"id": 1, "cmd": cmd, **args}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(1 << 16)
            if not chunk:
                raise ControlError(f"{addr[0]}:{addr[1]} closed without answering {cmd!r}")
            buf += chunk
    answer = json.loads(buf)
    if not answer.get("ok"):
        raise ControlError(answer.get("error", "?"), answer.get("type", "ControlError"))
    return answer
