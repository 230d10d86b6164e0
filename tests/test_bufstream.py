"""BufferedStream: both TLS layers decrypt into its buffer, and the stream is intact.

The point of the class (host/wire/bufstream.py) is that the TLS layers take
the buffered path; a version uvloop or asyncio treated as a plain protocol
would still work, only slower, so these tests count the buffered calls.
"""

import asyncio
import hashlib
import os

import pytest
import uvloop

from tricopy.host.tools.bench_tls import site_contexts
from tricopy.host.wire import bufstream, tls
from tricopy.host.wire.bufstream import BufferedStream


@pytest.fixture(scope="module")
def contexts(tmp_path_factory):
    return site_contexts(tmp_path_factory.mktemp("certs"))


def _echo_round(server_ctx, client_ctx, sizes):
    """Each message to the site's listener and back: what came back, and how
    many receives each side's BufferedStream got."""
    counts = {"server": 0, "client": 0}
    original = BufferedStream.buffer_updated

    async def main():
        def counting(self, nbytes):
            counts[self.side] += 1
            original(self, nbytes)
        BufferedStream.buffer_updated = counting
        BufferedStream.side = "server"         # the listener's, until the client's is made

        async def echo(reader, writer):
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
            writer.close()
        server = await tls.start_server(echo, ("127.0.0.1", 0), what="test", ctx=server_ctx,
                                        allowed=None)
        port = server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        made = []
        real = loop.create_connection

        async def spy(factory, *args, **kw):
            def wrapped():
                proto = factory()
                proto.side = "client"
                made.append(proto)
                return proto
            return await real(wrapped, *args, **kw)
        loop.create_connection = spy
        reader, writer = await bufstream.open_stream("127.0.0.1", port, ssl=client_ctx)
        assert made and isinstance(made[0], BufferedStream)
        back = []
        for size in sizes:
            blob = os.urandom(size)
            writer.write(blob)
            await writer.drain()
            back.append((hashlib.sha256(blob).digest(),
                         hashlib.sha256(await reader.readexactly(size)).digest()))
        writer.close()
        server.close()
        return back

    try:
        back = uvloop.run(main())
    finally:
        BufferedStream.buffer_updated = original
        del BufferedStream.side
    return back, counts


# sizes across TLS records (16 KiB of plaintext each) and past the lent buffer
SIZES = [1, 4096 + 64, 16384, 16385, 9 * (4096 + 64), (1 << 16) + 1, (1 << 20) + 64]


def test_tls_both_ends_use_the_buffer(contexts):
    back, counts = _echo_round(*contexts, SIZES)
    assert all(sent == got for sent, got in back)
    # asyncio's SSLProtocol (accepting) and uvloop's (connecting) both took
    # the buffered path, several times for the 1 MiB message
    assert counts["server"] >= len(SIZES) and counts["client"] >= len(SIZES)


def test_plain_tcp_uses_the_buffer_too():
    back, counts = _echo_round(None, None, SIZES)
    assert all(sent == got for sent, got in back)
    assert counts["server"] >= len(SIZES) and counts["client"] >= len(SIZES)


def test_not_an_asyncio_protocol():
    # uvloop hands a Protocol its bytes by data_received whatever else it has
    assert issubclass(BufferedStream, asyncio.BufferedProtocol)
    assert not issubclass(BufferedStream, asyncio.Protocol)


def test_bench_tls_hop_runs_every_variant():
    # the benchmark behind docs/benchmarks.md "TLS reads into a buffer", short
    from tricopy.host.tools.bench_tls import HOW, bench_seal_open, bench_tls_hop
    rows = bench_tls_hop(4096 + 64, 20, rounds=1)
    assert [(r["how"], r["receiver"]) for r in rows] == (
        [(h, "accepting side") for h in HOW] + [(h, "connecting side") for h in HOW])
    assert all(r["cpu_us_per_message"] > 0 for r in rows)
    assert bench_seal_open(4096, 20)["cpu_us_per_message"] > 0
