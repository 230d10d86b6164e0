"""A link whose peer went silent closes within the grace (host/wire/link.py, ``Link.close``).

A site lost with its network sends no FIN and no RST.  Closing a TLS link to
it used to wait for the peer's close_notify until asyncio's 30 s SSL shutdown
timeout -- inside the relay's fence, so ``tricopy takeover`` after a real
site loss failed with a control timeout (found by ``tricopy bench distance``,
which cuts the lost site's link).  The peer here completes the handshake and
then never reads again: the close must end within a few seconds.  About 2 s.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

from tricopy.host.wire import link


def test_close_to_a_silent_tls_peer_ends_within_the_grace():
    from e2e.cluster import client_tls, server_tls
    srv_ctx = server_tls("relay")
    lsock = socket.create_server(("127.0.0.1", 0))
    handshaken = threading.Event()
    release = threading.Event()

    def silent_peer():
        c, _ = lsock.accept()
        with srv_ctx.wrap_socket(c, server_side=True):
            handshaken.set()
            release.wait(60)        # holds the socket open, never reads: a vanished site

    threading.Thread(target=silent_peer, daemon=True).start()

    async def main() -> float:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", lsock.getsockname()[1], ssl=client_tls("primary"))
        await asyncio.to_thread(handshaken.wait, 10)
        lk = link.Link(reader, writer, initiator=True, name="to-a-lost-site")
        t0 = time.monotonic()
        await asyncio.wait_for(lk.close(), 10)
        return time.monotonic() - t0

    try:
        took = asyncio.run(main())
    finally:
        release.set()
        lsock.close()
    assert took < link._CLOSE_GRACE + 2.0, f"close took {took:.1f} s"
