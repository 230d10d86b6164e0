"""asyncio streams whose protocol receives into a buffer of its own.

Why: both TLS layers a site runs on (asyncio's ``SSLProtocol`` on the
accepting side, uvloop's on the connecting side) hand decrypted bytes to a
plain ``Protocol`` by calling ``SSLObject.read(256 KiB)`` for every chunk:
CPython allocates a 256 KiB ``bytes`` for each call, reads into it and
shrinks it, and asyncio's layer makes one more such call per chunk that
finds nothing left.  A link receives several chunks per frame batch.

With a *buffered* protocol (``get_buffer``/``buffer_updated``) both layers
decrypt straight into the buffer we lend them instead.  The stream
machinery above stays asyncio's own: :class:`BufferedStream` forwards every
event to a ``StreamReaderProtocol``, so ``StreamReader``/``StreamWriter``
(flow control, ``drain``, ``wait_closed``) behave exactly as before; the
bytes are copied once, from our buffer into the reader's.  What it buys is
small: 4 % fewer instructions per TLS hop (docs/benchmarks.md, "TLS reads
into a buffer, and what a link hop costs").
"""

from __future__ import annotations

import asyncio
import ssl

__all__ = ["BufferedStream", "open_stream", "RECV_BUFFER"]

#: Bytes lent to the transport per receive (one buffer per connection):
#: four TLS records of 16 KiB plaintext, a read of the plain socket.
RECV_BUFFER = 64 << 10


class BufferedStream(asyncio.BufferedProtocol):
    """A ``StreamReaderProtocol`` behind the buffered-protocol interface.

    It must not derive from ``asyncio.Protocol``: uvloop takes any
    ``Protocol`` for a plain one and ignores ``get_buffer``.
    """

    def __init__(self, inner: asyncio.StreamReaderProtocol, size: int = RECV_BUFFER):
        self.inner = inner
        self._view = memoryview(bytearray(size))

    # the buffered interface: the transport writes into our buffer, then
    # tells how much; the reader copies it out at once (the buffer is reused)
    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self.inner.data_received(self._view[:nbytes])

    # everything else is the stream protocol's
    def connection_made(self, transport) -> None:
        self.inner.connection_made(transport)

    def connection_lost(self, exc) -> None:
        self.inner.connection_lost(exc)

    def eof_received(self):
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


async def open_stream(host: str, port: int, *, ssl: ssl.SSLContext | None = None,
                      ssl_handshake_timeout: float | None = None, limit: int = 1 << 16
                      ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """``asyncio.open_connection`` with a :class:`BufferedStream` protocol."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    inner = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await loop.create_connection(
        lambda: BufferedStream(inner), host, port, ssl=ssl,
        ssl_handshake_timeout=ssl_handshake_timeout)
    return reader, asyncio.StreamWriter(transport, inner, reader, loop)
