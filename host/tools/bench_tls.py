"""What one link hop costs in CPU: bytes through loopback TCP, plain or TLS.

Every journal crosses two links (primary -> relay -> secondary), each TLS 1.3
by default (docs/security.md).  These figures split a hop's cost into the
crypto itself (an ``SSLObject`` pair on memory BIOs: seal and open, no
socket), the socket path without TLS, and the TLS layers the sites run:
asyncio's ``SSLProtocol`` on the accepting side and uvloop's on the
connecting side, feeding the stream either through a plain protocol (a
256 KiB ``bytes`` allocated per read) or through :class:`BufferedStream`
(decrypted into a lent buffer; host/wire/bufstream.py).  Both ends run in
this process: the CPU figures are the hop's whole cost, sender and receiver.

The "blocking threads" variants are the other design a site could have: no
event loop, each end a thread on a blocking socket (``ssl.SSLSocket`` on
TLS, which reads and writes the socket itself, with no memory BIOs between
it and the kernel), the interpreter lock released while it waits and
while OpenSSL seals and opens.  They answer how much of a hop is asyncio's.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import tempfile
import threading
from asyncio import sslproto
from pathlib import Path
from types import SimpleNamespace

from ..wire import tls
from ..wire.bufstream import BufferedStream, open_stream
from .bench import _cpu

__all__ = ["bench_tls_hop", "bench_seal_open", "site_contexts", "HOW"]

#: the variants of one hop, in the order they are run and printed
HOW = ("plain tcp", "tls, plain protocol", "tls, buffered",
       "plain tcp, blocking threads", "tls, blocking threads")


def site_contexts(folder: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """The sites' own server and client contexts, for two sites of a new CA."""
    from .certs import make_certs
    make_certs(folder, ["a", "b"])
    site = lambda me: SimpleNamespace(ca=folder / "ca.pem", cert=folder / f"{me}.pem",
                                      key=folder / f"{me}.key")
    return tls.server_context(site("a")), tls.client_context(site("b"))


def memory_pair(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext):
    """A TLS connection on memory BIOs, its handshake done by hand: (server
    end, client end, [server in, server out, client in, client out])."""
    bios = [ssl.MemoryBIO() for _ in range(4)]
    srv = server_ctx.wrap_bio(bios[0], bios[1], server_side=True)
    cli = client_ctx.wrap_bio(bios[2], bios[3])
    for _ in range(10):
        for end in (cli, srv):
            try:
                end.do_handshake()
            except ssl.SSLWantReadError:
                pass
        bios[0].write(bios[3].read())
        bios[2].write(bios[1].read())
    return srv, cli, bios


async def _hop(how: str, ctxs, message: int, count: int, to_server: bool) -> float:
    """CPU seconds for ``count`` messages of ``message`` bytes over one connection."""
    loop = asyncio.get_running_loop()
    secure = how != "plain tcp"
    buffered = how != "tls, plain protocol"
    server_ctx, client_ctx = ctxs
    accepted = loop.create_future()

    def factory():
        # the stream protocol's callback runs once the connection (and, on
        # TLS, its handshake) is up, with the writer made for it
        app = asyncio.StreamReaderProtocol(
            asyncio.StreamReader(limit=1 << 16),
            lambda reader, writer: accepted.set_result((reader, writer)))
        proto = BufferedStream(app) if buffered else app
        if secure:
            proto = sslproto.SSLProtocol(loop, proto, server_ctx, loop.create_future(),
                                         server_side=True)
        return proto

    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    ctx = client_ctx if secure else None
    if buffered:
        r, w = await open_stream("127.0.0.1", port, ssl=ctx)
    else:
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    sr, sw = await accepted
    reader, writer = (sr, w) if to_server else (r, sw)
    blob = os.urandom(message)

    async def produce():
        for _ in range(count):
            writer.write(blob)
            await writer.drain()
            await asyncio.sleep(0)      # one message a loop turn, as a site sends a batch

    c0 = _cpu()
    sending = loop.create_task(produce())
    got = 0
    while got < count * message:
        chunk = await reader.read(1 << 16)
        if not chunk:
            raise RuntimeError("the benchmark's connection closed early")
        got += len(chunk)
    await sending
    cpu = _cpu() - c0
    for wr in (w, sw):
        wr.close()
    server.close()
    return cpu


def _hop_blocking(secure: bool, ctxs, message: int, count: int, to_server: bool) -> float:
    """CPU seconds for ``count`` messages over one connection, each end a
    thread on a blocking socket: the sender ``sendall``s each message, the
    receiver ``recv_into``s one 64 KiB buffer until every byte is in."""
    server_ctx, client_ctx = ctxs
    with socket.create_server(("127.0.0.1", 0)) as listener:
        accepted: list[socket.socket] = []
        # the server's handshake must run while the client's does: its own thread
        acceptor = threading.Thread(target=lambda: accepted.append(
            server_ctx.wrap_socket(listener.accept()[0], server_side=True) if secure
            else listener.accept()[0]))
        acceptor.start()
        conn = socket.create_connection(listener.getsockname())
        if secure:
            conn = client_ctx.wrap_socket(conn, server_hostname="a")
        acceptor.join()
    served = accepted[0]
    receiver, sender = (served, conn) if to_server else (conn, served)
    blob, buf = os.urandom(message), memoryview(bytearray(1 << 16))

    def produce():
        for _ in range(count):
            sender.sendall(blob)

    c0 = _cpu()
    sending = threading.Thread(target=produce)
    sending.start()
    got = 0
    while got < count * message:
        n = receiver.recv_into(buf)
        if not n:
            raise RuntimeError("the benchmark's connection closed early")
        got += n
    sending.join()
    cpu = _cpu() - c0
    for end in (served, conn):
        end.close()
    return cpu


def bench_tls_hop(message: int, count: int, rounds: int = 2) -> list[dict]:
    """CPU µs per message of ``message`` bytes for each way in :data:`HOW`,
    both directions (accepting side receives / connecting side receives),
    the variants alternated over ``rounds``; the lowest of the rounds."""
    import uvloop
    best: dict[tuple[str, bool], float] = {}
    with tempfile.TemporaryDirectory(prefix="tricopy-bench-tls-") as tmp:
        ctxs = site_contexts(Path(tmp))
        for rnd in range(rounds):
            order = HOW if rnd % 2 == 0 else tuple(reversed(HOW))
            for to_server in (True, False):
                for how in order:
                    if how.endswith("blocking threads"):
                        cpu = _hop_blocking(how.startswith("tls"), ctxs, message, count,
                                            to_server)
                    else:
                        cpu = uvloop.run(_hop(how, ctxs, message, count, to_server))
                    key = (how, to_server)
                    best[key] = min(best.get(key, cpu), cpu)
    return [{"what": "link hop", "how": how, "message": message, "receiver":
             "accepting side" if to_server else "connecting side",
             "cpu_us_per_message": round(1e6 * best[(how, to_server)] / count, 1)}
            for to_server in (True, False) for how in HOW]


def bench_seal_open(message: int, count: int) -> dict:
    """The TLS 1.3 crypto alone: one ``SSLObject`` seals ``message`` bytes,
    its peer opens them, on memory BIOs (no socket, no event loop)."""
    with tempfile.TemporaryDirectory(prefix="tricopy-bench-tls-") as tmp:
        srv, cli, bios = memory_pair(*site_contexts(Path(tmp)))
    blob, out = os.urandom(message), bytearray(message)
    c0 = _cpu()
    for _ in range(count):
        cli.write(blob)
        bios[0].write(bios[3].read())
        got = 0
        while got < message:
            got += srv.read(message - got, memoryview(out)[got:])
    cpu = _cpu() - c0
    return {"what": "seal+open", "message": message, "cipher": cli.cipher()[0],
            "cpu_us_per_message": round(1e6 * cpu / count, 1)}
