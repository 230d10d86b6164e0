"""Transport security of the site links and the control sockets (docs/security.md).

* **Contexts.**  Every link between sites is TLS 1.3 with mutual certificate
  authentication: both sides present a certificate of the cluster's CA
  (``tricopy certs``) and both verify the other's.  The hostname check of
  ``ssl`` is off on purpose: what a site checks is the *site name* in the
  peer's certificate (CN or a DNS SAN), against the name the config expects
  there (``peer_site`` / ``upstream_site`` of a group, ``control_clients``).
* **Listeners.**  :func:`start_server` accepts TCP, applies the connection
  limits, runs the TLS handshake itself (so each refusal gets one log line
  that says why: no certificate, another CA, wrong site name, not TLS at all)
  and only then hands the connection to the site's callback.
* **Connecting.**  :func:`client_args` gives :func:`link.connect` the context
  and the expected site name of one group's downstream peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import time
from asyncio import sslproto
from pathlib import Path
from typing import Awaitable, Callable, Iterable

from .bufstream import BufferedStream

__all__ = ["server_context", "client_context", "peer_names", "refusal", "start_server",
           "client_args", "check_peer", "Limits", "warn_once", "Revocations", "revoked"]

log = logging.getLogger(__name__)

Callback = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Revocations:
    """The certificates the cluster CA revoked: a CRL file (``tls.crl``,
    written by ``tricopy certs revoke``), read once when a site starts.
    The NBD server uses it too, for its clients' CA (``nbd.tls_client_crl``).

    The CRL must be signed by the CA in ``ca`` (else :class:`ValueError`: a
    site does not start on a list anybody could have written).  The check
    is ours, right after the handshake, rather than OpenSSL's CRL flags:
    OpenSSL fails the handshake with "certificate revoked" and keeps the
    certificate to itself, where the refusal should name the site.
    """

    def __init__(self, path: Path, ca: Path, key: str = "tls.crl"):
        # ``key``: the config key that named the file, so the refusal to start names it
        from cryptography import x509
        try:
            crl = x509.load_pem_x509_crl(Path(path).read_bytes())
            authority = x509.load_pem_x509_certificate(Path(ca).read_bytes())
        except ValueError as exc:
            raise ValueError(f"{key} {path}: not a PEM CRL ({exc}); write it with "
                             f"`tricopy certs revoke`") from None
        if crl.issuer != authority.subject or not crl.is_signature_valid(authority.public_key()):
            raise ValueError(f"{key} {path} is not signed by the CA in {ca}; write it with "
                             f"`tricopy certs revoke` in the CA's folder")
        self.path = Path(path)
        self.serials = {e.serial_number: e.revocation_date_utc for e in crl}

    def why(self, der: bytes) -> str | None:
        """Why the certificate ``der`` (DER) is refused, or None."""
        from cryptography import x509
        cert = x509.load_der_x509_certificate(der)
        when = self.serials.get(cert.serial_number)
        if when is None:
            return None
        cn = [a.value for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
        return (f"certificate of {', '.join(map(str, cn)) or 'no name'} revoked: serial "
                f"{cert.serial_number:#x} is on {self.path.name} since "
                f"{when:%Y-%m-%d %H:%M} UTC; issue it a new certificate (tricopy certs)")


def revoked(writer_or_sslobj) -> str | None:
    """Why the verified peer certificate is revoked (its context's CRL), or None."""
    obj = writer_or_sslobj
    if isinstance(obj, asyncio.StreamWriter):
        obj = obj.get_extra_info("ssl_object")
    crl = getattr(getattr(obj, "context", None), "tricopy_crl", None)
    if crl is None:
        return None
    der = obj.getpeercert(binary_form=True)
    return crl.why(der) if der else None


def _context(purpose: int, ca: Path, cert: Path, key: Path,
             crl: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(cafile=ca)
    ctx.verify_mode = ssl.CERT_REQUIRED       # both ways: mutual authentication
    if purpose == ssl.PROTOCOL_TLS_CLIENT:
        ctx.check_hostname = False            # the site name is checked instead (check_peer)
    # checked by revoked() on every connection made with this context
    ctx.tricopy_crl = Revocations(crl, ca) if crl is not None else None
    return ctx


_cache: dict[tuple, ssl.SSLContext] = {}


def _cached(protocol: int, tls) -> ssl.SSLContext | None:
    if tls is None:
        return None
    crl = getattr(tls, "crl", None)
    key = (protocol, tls.ca, tls.cert, tls.key, crl)
    if key not in _cache:
        _cache[key] = _context(protocol, tls.ca, tls.cert, tls.key, crl)
    return _cache[key]


def server_context(tls) -> ssl.SSLContext | None:
    """The listening side's context for a :class:`config.TlsConfig` (None: plaintext)."""
    return _cached(ssl.PROTOCOL_TLS_SERVER, tls)


def client_context(tls) -> ssl.SSLContext | None:
    """The connecting side's context for a :class:`config.TlsConfig` (None: plaintext)."""
    return _cached(ssl.PROTOCOL_TLS_CLIENT, tls)


def peer_names(writer_or_sslobj) -> set[str]:
    """The site names in the verified peer certificate: its CN and DNS SANs."""
    obj = writer_or_sslobj
    if isinstance(obj, asyncio.StreamWriter):
        obj = obj.get_extra_info("ssl_object")
    if obj is None:
        return set()
    cert = obj.getpeercert() or {}
    names = {v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"}
    names |= {v for k, v in cert.get("subjectAltName", ()) if k == "DNS"}
    return names


def check_peer(names: set[str], expected: Iterable[str]) -> str | None:
    """Why a peer with certificate ``names`` is not one of ``expected`` (None: it is)."""
    expected = sorted(set(expected))
    if names & set(expected):
        return None
    shown = ", ".join(sorted(names)) or "no name"
    want = " or ".join(repr(e) for e in expected) or "no site (none configured)"
    return f"wrong site name: the certificate is for {shown}, expected {want}"


def refusal(exc: BaseException, timeout: float | None = None) -> str:
    """One phrase for why a TLS handshake failed."""
    if isinstance(exc, ConnectionAbortedError) and "taking longer" in str(exc):
        exc = TimeoutError()
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return f"no TLS handshake within {timeout:g} s" if timeout else "TLS handshake timed out"
    if isinstance(exc, ssl.SSLCertVerificationError):
        code, msg = exc.verify_code, exc.verify_message
        if code in (18, 19, 20, 21, 2):  # self-signed, unknown issuer, unable to verify
            return f"certificate from another CA ({msg})"
        if code == 10:
            return f"certificate expired ({msg})"
        return f"certificate not accepted ({msg})"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        if reason in ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "TLSV13_ALERT_CERTIFICATE_REQUIRED"):
            return "no certificate"
        if reason == "TLSV1_ALERT_UNKNOWN_CA":
            return "certificate from another CA (the peer does not know ours)"
        if reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNEXPECTED_RECORD",
                      "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "UNEXPECTED_MESSAGE",
                      "HTTPS_PROXY_REQUEST", "RECORD_LENGTH_MISMATCH"):
            return f"not a TLS client (plaintext?): {reason}"
        if reason in ("UNSUPPORTED_PROTOCOL", "TLSV1_ALERT_PROTOCOL_VERSION",
                      "NO_PROTOCOLS_AVAILABLE"):
            return "TLS older than 1.3"
        return f"TLS error {reason or exc}"
    if isinstance(exc, (ConnectionError, asyncio.IncompleteReadError, EOFError)):
        return "closed during the TLS handshake"
    return f"{type(exc).__name__}: {exc}"


_warned: dict[str, float] = {}


def warn_once(logger: logging.Logger, message: str, every: float = 30.0) -> None:
    """Log ``message`` at warning level, the same text again only after ``every``
    seconds (a connecting site retries twice a second; one line says it)."""
    now = time.monotonic()
    if now - _warned.get(message, -every) >= every:
        _warned[message] = now
        logger.warning("%s", message)


class Limits:
    """Counters of one listener: connections being authenticated and connected."""

    def __init__(self, handshakes: int, connections: int):
        self.max_handshakes, self.max_connections = handshakes, connections
        self.handshakes = 0
        self.connections = 0


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return "a local client"


async def start_server(callback: Callback, addr: tuple[str, int], *, what: str,
                       ctx: ssl.SSLContext | None, allowed: Iterable[str] | None,
                       connections: int = 32, handshakes: int = 16,
                       handshake_timeout: float = 10.0, limit: int = 1 << 16
                       ) -> asyncio.base_events.Server:
    """``asyncio.start_server`` with limits and, given ``ctx``, mutual TLS.

    ``allowed``: the site names a client certificate may carry (None: any
    certificate of the CA; the caller checks the name later).  Every refused
    connection gets one warning line ``<what>: refused <peer>: <why>``.

    The TLS layer is asyncio's own SSLProtocol, installed as the connection's
    protocol from the first byte: its handshake result (a future) says why a
    peer was refused, where a server made with ``ssl=`` drops the reason
    (uvloop logs nothing), and ``StreamWriter.start_tls`` after accepting
    would race the peer's ClientHello into the plain stream buffer.
    """
    limits = Limits(handshakes, connections)
    allowed = None if allowed is None else set(allowed)
    loop = asyncio.get_running_loop()

    def full() -> str | None:
        for key, n, most in (("limits.handshakes", limits.handshakes, limits.max_handshakes),
                             ("limits.connections", limits.connections,
                              limits.max_connections)):
            if n >= most:
                return f"{n} connections already open ({key} = {most})"
        return None

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        limits.connections += 1
        try:
            await callback(reader, writer)
        finally:
            limits.connections -= 1

    async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if (why := full()) is not None:
            log.warning("%s: refused %s: %s", what, _peer(writer), why)
            writer.transport.abort()
            return
        await serve(reader, writer)

    async def secured(proto: "_TlsAccept", reader, app) -> None:
        try:
            await proto.waiter
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            if not proto.refused:
                log.warning("%s: refused %s: %s", what, proto.peer,
                            refusal(exc, handshake_timeout))
            return
        finally:
            if proto.counted:
                limits.handshakes -= 1
        writer = asyncio.StreamWriter(proto._app_transport, app, reader, loop)
        if (why := revoked(writer)) is not None:
            log.warning("%s: refused %s: %s", what, proto.peer, why)
            writer.transport.abort()
            return
        if allowed is not None:
            why = check_peer(peer_names(writer), allowed)
            if why is not None:
                log.warning("%s: refused %s: %s", what, proto.peer, why)
                writer.transport.abort()
                return
        try:
            await serve(reader, writer)
        finally:
            writer.close()

    class _TlsAccept(sslproto.SSLProtocol):
        refused = counted = False
        peer = "?"

        def connection_made(self, transport) -> None:
            peer = transport.get_extra_info("peername")
            self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?"
            if (why := full()) is not None:
                self.refused = True
                log.warning("%s: refused %s: %s", what, self.peer, why)
                transport.abort()
                if not self.waiter.done():
                    self.waiter.set_exception(ConnectionAbortedError(why))
                return
            self.counted = True
            limits.handshakes += 1
            super().connection_made(transport)

    def factory():
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        if ctx is None:
            return BufferedStream(asyncio.StreamReaderProtocol(reader, plain, loop=loop))
        app = asyncio.StreamReaderProtocol(reader, loop=loop)
        waiter = loop.create_future()
        # the TLS layer decrypts into BufferedStream's buffer (bufstream.py says why)
        proto = _TlsAccept(loop, BufferedStream(app), ctx, waiter, server_side=True,
                           ssl_handshake_timeout=handshake_timeout)
        proto.waiter = waiter
        task = loop.create_task(secured(proto, reader, app))
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)
        return proto

    return await loop.create_server(factory, *addr)


_tasks: set[asyncio.Task] = set()


def client_args(site, group) -> dict:
    """``connect()`` keywords for a group's downstream peer: ``tls`` (the
    client context) and ``peer_site`` (the site name its certificate must carry)."""
    return {"tls": client_context(site.tls), "peer_site": group.peer_site}


def unix_socket(path: Path) -> socket.socket:
    """A listening Unix socket at ``path`` that only this user can connect to (0600).

    A leftover socket file of a stopped site is replaced; one that still
    answers belongs to a running site and is an error.
    """
    path = Path(path)
    if path.is_socket():
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink()            # stale: nobody listens
            else:
                raise OSError(98, f"another process serves control socket {path}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)                 # created 0600, no window with wider rights
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(64)
    sock.setblocking(False)
    return sock


def same_user(writer: asyncio.StreamWriter) -> str | None:
    """Why the process at the other end of a Unix socket may not use it (None: it may).

    The file mode already keeps other users out; SO_PEERCRED checks it again
    (root may always connect)."""
    sock = writer.get_extra_info("socket")
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    with contextlib.suppress(OSError):
        import struct
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", creds)
        if uid not in (os.getuid(), 0):
            return f"uid {uid} (pid {pid}) is not this site's user {os.getuid()}"
    return None


async def start_link_server(callback: Callback, site) -> asyncio.base_events.Server:
    """The data port of a relay or secondary (``site.listen``): with ``[tls]``
    only certificates of the CA naming one of the groups' ``upstream_site``
    get past the handshake; each group checks its own after HELLO
    (:func:`refuse_upstream`)."""
    lim = site.limits
    upstream = [g.upstream_site for g in site.groups if g.upstream_site]
    # A relay set up for a planned swap takes the journals of either data
    # site; which one a group takes now is checked after HELLO.
    upstream += [g.peer_site for g in site.groups if g.reverse_peer and g.peer_site]
    # A secondary takes the stream of the standby relay too (the epoch decides).
    upstream += [g.standby_site for g in site.groups
                 if g.standby_site and g.attr.value == "RESTORE"]
    ctx = server_context(site.tls)
    return await start_server(callback, site.listen, what=f"{site.site} data port", ctx=ctx,
                              allowed=upstream if ctx is not None else None,
                              connections=lim.connections, handshakes=lim.handshakes,
                              handshake_timeout=lim.handshake_timeout)


def refuse_upstream(link, group) -> str | None:
    """Why ``link`` may not serve ``group`` as its upstream (None: it may)."""
    if not link.secure or group.upstream_site is None:
        return None
    # A RESTORE group may also take its stream from the standby relay: which
    # of the two is current is the epoch's business (a stream at an older
    # epoch is refused by the group, host/secondary/stream.py).
    return check_peer(link.peer_names, [n for n in (group.upstream_site, group.standby_site) if n])


def proven_upstream(link, group) -> bool:
    """Whether ``link``'s peer proved it is ``group``'s upstream: a TLS
    certificate of the cluster CA naming ``upstream_site`` (or the standby's
    ``standby_site``; checked by :func:`refuse_upstream` before this is
    asked).  A plaintext peer proves nothing, whatever its HELLO says;
    docs/security.md, "HELLO from a stranger", says what it may and may not do."""
    return link.secure and group.upstream_site is not None and refuse_upstream(link, group) is None
