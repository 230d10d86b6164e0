"""The control socket of every site: JSON lines over a Unix socket or TCP.

Request:  ``{"id": 7, "cmd": "write", "idx": 0, "offset": 4096, "data": "<base64>"}``
Answer:   ``{"id": 7, "ok": true, ...}`` or ``{"id": 7, "ok": false, "error": "...", "type": "..."}``

Each request line is served in its own task, so one connection can have
several writes in flight; answers carry the request's ``id``.  The sites
register their commands (``status`` everywhere; ``write``, ``write_zeroes``,
``trim``, ``flush`` on the primary).  ``tricopy status`` / pair commands use
the same socket.

Who may use it (docs/security.md): a Unix socket (``control = "unix:PATH"``,
the default in generated configs) is created 0600 and checks the peer's uid;
TCP needs mutual TLS with a client certificate named in ``control_clients``.
Plain TCP (``control_plaintext = true``, 127.0.0.1 only) is unauthenticated
and serves only the read-only commands (:data:`READ_ONLY`).

Limits (``[limits]``): a request line longer than ``control_line``, a
request beyond ``control_inflight`` unanswered ones, or one that would hold
more than ``control_buffered`` request bytes being served closes that
connection with a log line naming the limit (the requests already taken are
still served); ``connections`` per listener.  Other connections go on.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import itertools
import json
import logging
import socket
import ssl
from pathlib import Path
from typing import Awaitable, Callable

from ..wire import tls as _tls

__all__ = ["ControlError", "ArgumentError", "WrongSite", "Request", "ControlServer", "ControlClient", "call",
           "describe", "READ_ONLY"]

log = logging.getLogger(__name__)

Handler = Callable[[dict], Awaitable[dict]]

_LIMIT = 64 << 20    # the clients' line limit (answers of large reads)
READ_ONLY = frozenset({"status", "jnlg"})   # served to unauthenticated (plaintext) peers

Addr = "tuple[str, int] | str | Path"      # a str or Path is a Unix socket


class ControlError(Exception):
    """A control request failed; ``type`` is the server-side error class name."""

    def __init__(self, message: str, type: str = "ControlError"):
        super().__init__(message)
        self.type = type


class ArgumentError(ControlError):
    """A request argument is missing or not of its type: the answer names
    the command, the argument and what to send (never a bare KeyError)."""

    def __init__(self, message: str):
        super().__init__(message, "ArgumentError")


class WrongSite(ControlError):
    """The control socket reached over TLS has a certificate of the cluster CA
    but for another site than the one meant: nothing was sent to it."""

    def __init__(self, message: str):
        super().__init__(message, "WrongSite")


def _check_site(addr, sslobj, expect_site: str | None) -> None:
    """Refuse a TLS control server whose certificate is revoked or does not
    name ``expect_site``, as the replication links refuse a wrong peer: the
    address may be stale or point at another site, and a pair command sent
    there would move the wrong site's state."""
    why = _tls.revoked(sslobj)
    if why is None and expect_site is not None:
        why = _tls.check_peer(_tls.peer_names(sslobj), [expect_site])
    if why is not None:
        hint = ("" if "revoked" in why else
                ": check the address and the site name the cluster file gives for it")
        raise WrongSite(f"{describe(addr)}: {why}; nothing was sent{hint}")


_MISSING = object()
_U63 = (1 << 63) - 1


class Request(dict):
    """A control request: the JSON object, with typed access to its arguments.

    Handlers read arguments with :meth:`integer`, :meth:`text`, ... (or
    ``req["name"]``); a missing or ill-typed one raises :class:`ArgumentError`
    with one line saying which argument of which command and what it must
    be, so a client gets an answer it can act on and the site goes on.
    """

    @property
    def cmd(self) -> str:
        return str(self.get("cmd"))

    def __missing__(self, name):
        raise ArgumentError(f"{self.cmd}: missing argument {name!r}; add \"{name}\": ... to "
                            f"the request")

    def _arg(self, name: str, default, what: str):
        value = self.get(name, _MISSING)
        if value is _MISSING or (value is None and default is not _MISSING):
            if default is _MISSING:
                raise ArgumentError(f"{self.cmd}: missing argument {name!r} ({what}); add "
                                    f"\"{name}\": <{what}> to the request")
            return default
        return value

    def _bad(self, name: str, what: str, value) -> ArgumentError:
        shown = repr(value)
        if len(shown) > 40:
            shown = shown[:37] + "..."
        return ArgumentError(f"{self.cmd}: argument {name!r} must be {what}, not {shown} "
                             f"({type(value).__name__}); fix it in the request")

    def integer(self, name: str, default=_MISSING, *, min: int = 0, max: int = _U63):
        """An integer argument in ``min..max`` (JSON true/false are no integers)."""
        what = f"an integer from {min} to {max}"
        value = self._arg(name, default, what)
        if value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, int) or not min <= value <= max:
            raise self._bad(name, what, value)
        return value

    def number(self, name: str, default=_MISSING, *, min: float = 0.0):
        """A number (integer or decimal) of at least ``min``."""
        what = f"a number of at least {min:g}"
        value = self._arg(name, default, what)
        if value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= min:
            raise self._bad(name, what, value)
        return float(value)

    def text(self, name: str, default=_MISSING) -> str:
        """A string argument."""
        value = self._arg(name, default, "a string")
        if value is not default and not isinstance(value, str):
            raise self._bad(name, "a string", value)
        return value

    def flag(self, name: str, default: bool = False) -> bool:
        """A true/false argument (absent: ``default``)."""
        value = self._arg(name, default, "true or false")
        if not isinstance(value, bool):
            raise self._bad(name, "true or false", value)
        return value

    def data(self, name: str = "data") -> bytes:
        """Bytes sent as base64 text."""
        value = self.text(name)
        try:
            return base64.b64decode(value, validate=True)
        except binascii.Error as exc:
            raise ArgumentError(f"{self.cmd}: argument {name!r} is not base64 ({exc}); send "
                                f"the bytes base64-encoded") from None

    def integers(self, name: str) -> list[int]:
        """A list of integers, each at least 0."""
        value = self._arg(name, _MISSING, "a list of integers")
        if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int)
                                              or v < 0 for v in value):
            raise self._bad(name, "a list of integers >= 0", value)
        return value


def _no_constant(name: str):
    """NaN and Infinity are no JSON (RFC 8259) though Python reads them: a
    request holding one is refused as a whole (found by fuzzing: an
    ``"offset": Infinity`` reached int() in a handler, an OverflowError)."""
    raise ValueError(f"{name} is not a JSON number")


class ControlServer:
    """Serve registered commands on a Unix socket or a TCP address."""

    def __init__(self, handlers: dict[str, Handler]):
        self.handlers = handlers
        self._server: asyncio.base_events.Server | None = None
        self.path: Path | None = None

    async def start(self, addr, site=None) -> None:
        """Listen on ``addr``: a Path (Unix socket, 0600) or (host, port).

        ``site`` (a SiteConfig) gives the TLS files, ``control_clients``,
        ``control_plaintext`` and ``[limits]``; without it (tests) a TCP
        socket is plaintext and read-only."""
        from ..config import LimitsConfig
        limits = site.limits if site is not None else LimitsConfig()
        self.max_line, self.max_inflight = limits.control_line, limits.control_inflight
        self.max_buffered = limits.control_buffered
        if isinstance(addr, (str, Path)):
            self.path = Path(addr)
            self._open = 0
            self._max_conn = limits.connections
            self._server = await asyncio.start_unix_server(
                self._unix, sock=_tls.unix_socket(self.path), limit=self.max_line)
            return
        tls = site.tls if site is not None else None
        writable = tls is not None and not (site is not None and site.control_plaintext)
        ctx = _tls.server_context(tls) if writable else None
        self._server = await _tls.start_server(
            lambda r, w: self._serve(r, w, writable), addr, what="control", ctx=ctx,
            allowed=site.control_clients if ctx is not None else None,
            connections=limits.connections, handshakes=limits.handshakes,
            handshake_timeout=limits.handshake_timeout, limit=self.max_line)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()

    async def _unix(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        why = _tls.same_user(writer)
        if why is None and self._open >= self._max_conn:
            why = f"{self._open} connections already open (limits.connections = {self._max_conn})"
        if why is not None:
            log.warning("control: refused a local client: %s", why)
            writer.transport.abort()
            return
        self._open += 1
        try:
            await self._serve(reader, writer, True)
        finally:
            self._open -= 1

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     writable: bool) -> None:
        tasks: set[asyncio.Task] = set()
        lock = asyncio.Lock()
        held = [0]                                  # request bytes being served
        peer = writer.get_extra_info("peername")
        peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "a local client"
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError:
                    break                           # EOF (a last line without \n is dropped)
                except asyncio.LimitOverrunError:
                    log.warning("control: closed the connection of %s: a request line over "
                                "%d bytes (limits.control_line)", peer, self.max_line)
                    writer.transport.abort()
                    break
                # Bounded work per connection: a client that sends more
                # than its bounds before reading the answers is closed (its
                # requests already taken are still served), the others go on.
                why = None
                if len(tasks) >= self.max_inflight:
                    why = (f"{len(tasks)} requests in flight "
                           f"(limits.control_inflight = {self.max_inflight})")
                elif tasks and held[0] + len(line) > self.max_buffered:
                    why = (f"{held[0] + len(line)} request bytes held "
                           f"(limits.control_buffered = {self.max_buffered})")
                if why is not None:
                    log.warning("control: closed the connection of %s: %s", peer, why)
                    writer.transport.abort()
                    break
                held[0] += len(line)
                task = asyncio.create_task(self._one(line, writer, lock, writable, peer))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                task.add_done_callback(lambda _t, n=len(line): held.__setitem__(0, held[0] - n))
        except (ConnectionError, ssl.SSLError, OSError):
            pass
        finally:
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            writer.close()

    async def _one(self, line: bytes, writer: asyncio.StreamWriter, lock: asyncio.Lock,
                   writable: bool = True, peer: str = "?") -> None:
        rid = None
        try:
            try:
                req = json.loads(line, parse_constant=_no_constant)
            except (ValueError, RecursionError) as exc:
                # Not JSON, not UTF-8, or nested deeper than the stack (which
                # logged a traceback per line): one typed answer (found by fuzzing).
                why = "nested too deeply" if isinstance(exc, RecursionError) else exc
                raise ControlError(f"request line is not JSON ({why}); send one JSON "
                                   f"object per line") from None
            if not isinstance(req, dict):
                raise ControlError("request must be a JSON object")
            req = Request(req)
            rid = req.get("id")
            cmd = req.get("cmd")
            handler = self.handlers.get(cmd)
            if handler is None:
                raise ControlError(f"unknown command {cmd!r}; "
                                   f"known: {', '.join(sorted(self.handlers))}")
            if not writable and cmd not in READ_ONLY:
                log.warning("control: refused %r from %s: an unauthenticated (plaintext TCP) "
                            "connection may only read (%s)", cmd, peer,
                            ", ".join(sorted(READ_ONLY)))
                raise PermissionError(f"{cmd!r} is not served on an unauthenticated control "
                                      f"connection; use the Unix socket or TCP with TLS")
            answer = {"id": rid, "ok": True, **(await handler(req))}
        except Exception as exc:   # every failure is answered, never crashes the site
            if not isinstance(exc, (ControlError, ValueError, KeyError, TypeError,
                                    PermissionError)):
                log.exception("control command failed")
            answer = {"id": rid, "ok": False, "error": str(exc), "type": type(exc).__name__}
        # A handler may ask for something to happen once its answer is out
        # (a site that restarts into another role after a swap).
        after = answer.pop("_after", None)
        async with lock:
            # a connection closed (over a limit, or gone) has nobody to answer
            if not writer.transport.is_closing():
                with contextlib.suppress(ConnectionError, OSError):
                    writer.write(json.dumps(answer).encode() + b"\n")
                    await writer.drain()
        if after is not None:
            after()


async def _open(addr, tls: ssl.SSLContext | None, limit: int):
    if isinstance(addr, (str, Path)):
        return await asyncio.open_unix_connection(str(addr), limit=limit)
    return await asyncio.open_connection(*addr, limit=limit, ssl=tls)


def describe(addr) -> str:
    """``unix:/path`` or ``host:port``: how a control address is written."""
    if isinstance(addr, (str, Path)):
        return f"unix:{addr}"
    return f"{addr[0]}:{addr[1]}"


class ControlClient:
    """Asyncio client; several requests may be in flight on one connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._reader, self._writer = reader, writer
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._rx = asyncio.create_task(self._receive())

    @classmethod
    async def open(cls, addr, tls: ssl.SSLContext | None = None,
                   expect_site: str | None = None) -> "ControlClient":
        """``addr``: (host, port), with ``tls`` a client context for mutual TLS
        (and ``expect_site``, the site name its certificate must carry); or a
        Unix socket path."""
        reader, writer = await _open(addr, tls, _LIMIT)
        if tls is not None and not isinstance(addr, (str, Path)):
            try:
                _check_site(addr, writer.get_extra_info("ssl_object"), expect_site)
            except WrongSite:
                writer.close()
                raise
        return cls(reader, writer)

    async def call(self, cmd: str, **args) -> dict:
        rid = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        # A caller cancelled while it waited (a chaos round abandoning a killed
        # site) leaves no one to read the connection's end: mark it read.
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._waiting[rid] = fut
        try:
            self._writer.write(json.dumps({"id": rid, "cmd": cmd, **args}).encode() + b"\n")
            await self._writer.drain()
        except BaseException:
            # Nobody will await the answer: drop it (else "exception never retrieved").
            self._waiting.pop(rid, None)
            raise
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


def call(addr, cmd: str, timeout: float = 10.0, tls: ssl.SSLContext | None = None,
         expect_site: str | None = None, **args) -> dict:
    """Blocking one-shot request (for the CLI and tests).

    ``addr``: (host, port), or a Unix socket path (str or Path); ``tls``: a
    client context (host/wire/tls.py) for a TCP control socket with TLS;
    ``expect_site``: the site name the server's certificate must carry
    (:class:`WrongSite` before anything is sent, if it does not)."""
    if isinstance(addr, (str, Path)):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(str(addr))
        except OSError:
            s.close()
            raise
    else:
        s = socket.create_connection(addr, timeout=timeout)
        if tls is not None:
            try:
                s = tls.wrap_socket(s, server_side=False)
                _check_site(addr, s, expect_site)
            except (OSError, WrongSite):
                s.close()
                raise
    with s:
        s.sendall(json.dumps({"id": 1, "cmd": cmd, **args}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(1 << 16)
            if not chunk:
                raise ControlError(f"{describe(addr)} closed without answering {cmd!r}")
            buf += chunk
    answer = json.loads(buf)
    if not answer.get("ok"):
        raise ControlError(answer.get("error", "?"), answer.get("type", "ControlError"))
    return answer
