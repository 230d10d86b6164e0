"""asyncio adapter: sockets and exports around the sans-I/O NBD core.

One :class:`NbdServer` listens on TCP and runs one session per connection.
A session feeds received bytes to :class:`~.protocol.ServerConnection`, starts
one task per validated request (so a slow request does not hold back the next;
NBD replies carry the request's handle, so their order does not matter), or
one task for the WRITEs of one read when the export takes batches
(``Export.batch_max``), and writes whatever the core queues.  A failing
session closes only its own socket.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import ssl
from typing import Mapping

from ..wire import tls as _tls

from ..perf import PERF, now
from . import protocol
from .export import Export, ExportError
from .protocol import Close, Cmd, Ready, Request, ServerConnection, StartTls

__all__ = ["NbdServer"]

log = logging.getLogger(__name__)

# Bounds on one connection's work in progress, so a client pipelining many
# large writes cannot make the server hold them all in memory at once.
MAX_INFLIGHT = 32
MAX_INFLIGHT_BYTES = 64 << 20
_READ_CHUNK = 1 << 20
# A client that sends STARTTLS and then stalls is dropped after this long.
TLS_HANDSHAKE_TIMEOUT = 10.0

# Backend OSError → NBD error (anything else becomes NBD_EIO).
_ERRNO_MAP = {
    errno.EPERM: protocol.NBD_EPERM,
    errno.EACCES: protocol.NBD_EPERM,
    errno.EROFS: protocol.NBD_EPERM,
    errno.ENOSPC: protocol.NBD_ENOSPC,
    errno.EDQUOT: protocol.NBD_ENOSPC,
    errno.EFBIG: protocol.NBD_ENOSPC,
    errno.EINVAL: protocol.NBD_EINVAL,
    errno.ENOMEM: protocol.NBD_ENOMEM,
    errno.EOVERFLOW: protocol.NBD_EOVERFLOW,
    errno.EOPNOTSUPP: protocol.NBD_ENOTSUP,
    errno.ESHUTDOWN: protocol.NBD_ESHUTDOWN,
}


def nbd_error(exc: BaseException) -> int:
    """The NBD error value reported for a backend exception."""
    if isinstance(exc, ExportError):
        return exc.errno
    if isinstance(exc, OSError) and exc.errno in _ERRNO_MAP:
        return _ERRNO_MAP[exc.errno]
    return protocol.NBD_EIO


class NbdServer:
    """An NBD server for ``exports`` on ``host:port`` (``port=0`` picks a free one).

    With ``tls_context`` (a server-side :class:`ssl.SSLContext`) TLS is
    mandatory: clients must send NBD_OPT_STARTTLS before anything else.
    Use ``async with NbdServer(...) as server:`` or ``start()``/``close()``;
    ``server.port`` is the bound port.
    """

    def __init__(self, exports: Mapping[str, Export], host: str = "127.0.0.1", port: int = 0,
                 tls_context: ssl.SSLContext | None = None, max_connections: int = 32):
        for name, export in exports.items():
            protocol.check_export(name, export)
        self.exports = dict(exports)
        self.host = host
        self.port = port
        self.tls_context = tls_context
        self.max_connections = max_connections     # connections served at once
        self._server: asyncio.base_events.Server | None = None
        self._sessions: dict[asyncio.Task, asyncio.StreamWriter] = {}

    async def start(self) -> None:
        """Bind and start accepting connections."""
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        await self._server.serve_forever()

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
        # Abort the sockets rather than cancel the session tasks: each session
        # then sees EOF, cancels its own requests and ends normally.
        for writer in self._sessions.values():
            writer.transport.abort()
        await asyncio.gather(*self._sessions, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> "NbdServer":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        peer = writer.get_extra_info("peername")
        if len(self._sessions) >= self.max_connections:
            log.warning("nbd %s: refused: %d connections already open (max_connections)",
                        peer, self.max_connections)
            writer.transport.abort()
            return
        self._sessions[task] = writer
        try:
            await _Session(self, reader, writer).run()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
            log.info("nbd %s: connection lost: %s", peer, exc)
        except Exception:  # one broken session must never take the server down
            log.exception("nbd %s: session failed", peer)
        finally:
            self._sessions.pop(task, None)
            writer.close()


class _Session:
    """One client connection: the read loop, request tasks and the writer."""

    def __init__(self, server: NbdServer, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter):
        self.server = server
        self.reader = reader
        self.writer = writer
        self.conn = ServerConnection(server.exports, tls=server.tls_context is not None)
        self.export: Export | None = None
        self.tasks: set[asyncio.Task] = set()
        self.inflight = 0            # requests admitted and not answered yet
        self.inflight_bytes = 0
        self._writes: list[Request] = []     # WRITEs of this read, not started yet
        self._flush_pending = False
        self.peer = writer.get_extra_info("peername")

    async def run(self) -> None:
        close: Close | None = None
        try:
            self._flush()
            while close is None:
                data = await self.reader.read(_READ_CHUNK)
                if not data:
                    break
                for event in self.conn.receive_data(data):
                    close = await self._on_event(event) or close
                self._start_writes()
                self._flush()
                await self.writer.drain()
        finally:
            self._start_writes()
            if close is not None and close.graceful and self.tasks:
                # DISC: the spec wants in-flight requests finished and answered.
                await asyncio.gather(*self.tasks, return_exceptions=True)
            for task in self.tasks:
                task.cancel()
        if close is not None:
            log.info("nbd %s: closing: %s", self.peer, close.reason)
        self._flush()
        await self.writer.drain()

    async def _on_event(self, event) -> Close | None:
        if isinstance(event, Request):
            PERF["nbd.in_flight"].add(self.inflight)     # requests already being served
            size = event.length if event.cmd in (Cmd.READ, Cmd.WRITE) else 0
            await self._admit(size)
            self.inflight += 1
            self.inflight_bytes += size
            if event.cmd is Cmd.WRITE and event.length <= self.export.batch_max:
                # The WRITEs one read brought go as one batch (``_start_writes``).
                self._writes.append(event)
            else:
                self._start(self._serve(event))
        elif isinstance(event, Ready):
            self.export = event.export
            log.info("nbd %s: export %r", self.peer, event.name)
        elif isinstance(event, StartTls):
            self._flush()
            try:
                await self.writer.start_tls(self.server.tls_context,
                                            ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT)
            except (ssl.SSLError, OSError, asyncio.TimeoutError) as exc:
                why = _tls.refusal(exc, TLS_HANDSHAKE_TIMEOUT)
                log.warning("nbd %s: refused: %s", self.peer, why)   # the one line
                return Close(f"TLS refused: {why}", graceful=False)
            # A certificate of the right CA that the CA revoked since (the
            # context's CRL, nbd.tls_client_crl): refused before any option.
            if (why := _tls.revoked(self.writer)) is not None:
                log.warning("nbd %s: refused: %s", self.peer, why)   # the one line
                return Close(f"TLS refused: {why}", graceful=False)
            self.conn.tls_started()
        elif isinstance(event, Close):
            return event
        return None

    def _start(self, coro) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _start_writes(self) -> None:
        if self._writes:
            writes, self._writes = self._writes, []
            self._start(self._serve_writes(writes))

    async def _admit(self, size: int) -> None:
        """Wait until one more request of ``size`` bytes fits the connection's bounds."""
        while self.inflight and (self.inflight >= MAX_INFLIGHT
                                 or self.inflight_bytes + size > MAX_INFLIGHT_BYTES):
            self._start_writes()     # the batch so far must run for room to come
            self._flush()
            await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)

    def _done(self, request: Request) -> None:
        self.inflight -= 1
        self.inflight_bytes -= request.length if request.cmd in (Cmd.READ, Cmd.WRITE) else 0

    async def _serve(self, request: Request) -> None:
        export = self.export
        try:
            data = b""
            if request.cmd is Cmd.READ:
                data = await export.read(request.offset, request.length)
                if len(data) != request.length:
                    raise ExportError(protocol.NBD_EIO, f"backend returned {len(data)} of "
                                                        f"{request.length} bytes")
            elif request.cmd is Cmd.WRITE:
                t0 = now()
                await export.write(request.offset, request.data, request.fua)
                PERF["nbd.write"].add(now() - t0)      # request parsed -> reply queued
            elif request.cmd is Cmd.FLUSH:
                await export.flush()
            elif request.cmd is Cmd.TRIM:
                await export.trim(request.offset, request.length)
                if request.fua:
                    await export.flush()
            elif request.cmd is Cmd.WRITE_ZEROES:
                await export.write_zeroes(request.offset, request.length, request.fua)
            self.conn.reply(request, data=data)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._reply_error(request, exc)
        finally:
            self._done(request)
        self._flush_soon()

    async def _serve_writes(self, requests: list[Request]) -> None:
        """WRITEs that arrived together, as one batch (``Export.write_many``)."""
        t0 = now()
        try:
            try:
                errors = await self.export.write_many(
                    [(r.offset, r.data, r.fua) for r in requests])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                errors = [exc] * len(requests)
            took = now() - t0
            for request, exc in zip(requests, errors):
                if exc is None:
                    self.conn.reply(request)
                    PERF["nbd.write"].add(took)        # request parsed -> reply queued
                else:
                    self._reply_error(request, exc)
        finally:
            for request in requests:
                self._done(request)
        self._flush_soon()

    def _reply_error(self, request: Request, exc: Exception) -> None:
        # Expected backend errors explain themselves to the client (in a
        # structured READ error); anything else is logged here, not leaked.
        if isinstance(exc, (ExportError, OSError)):
            message = str(exc)[:200]
        else:
            log.error("nbd %s: %s failed", self.peer, request.cmd.name, exc_info=exc)
            message = "internal server error"
        self.conn.reply(request, error=nbd_error(exc), message=message)

    def _flush_soon(self) -> None:
        # Replies completed in the same event-loop turn (a relay ACK completes
        # many writes at once) leave in one transport write, not one each.
        if not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        data = self.conn.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)
