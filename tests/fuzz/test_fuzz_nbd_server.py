"""Fuzzing the NBD server over real sockets (host/nbd/server.py around the
sans-I/O core, with file exports).

Each example is one client connection with fuzzed bytes (mutated
handshakes and requests).  Properties: the server never logs a failed
session (its catch-all for a bug), and after every example a well-behaved
client on a new connection negotiates, writes a block and reads it back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import threading

import pytest
from hypothesis import given, strategies as st

from tricopy.host.nbd import FileExport, NbdServer
from tricopy.host.nbd import protocol as nbd

from .fuzzing import corpus, corpus_ids, fuzz_settings, mutated
from .test_fuzz_nbd import _requests
from .test_fuzz_sites import exchange

SEEDS = [data for _, data in corpus("nbd")]
SIZE = 1 << 20


class _Errors(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """An NbdServer on its own event loop thread: exports "vol" (read-write,
    4 KiB blocks), "ro" (read-only) and "" (512-byte blocks)."""
    d = tmp_path_factory.mktemp("fuzz-nbd")
    for name in ("vol", "ro", "default"):
        (d / name).write_bytes(bytes(SIZE))
    exports = {"vol": FileExport(d / "vol"), "ro": FileExport(d / "ro", read_only=True),
               "": FileExport(d / "default", 512)}
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    srv = NbdServer(exports, "127.0.0.1", 0)
    asyncio.run_coroutine_threadsafe(srv.start(), loop).result(10)
    errors = _Errors()
    logging.getLogger("tricopy.host.nbd").addHandler(errors)
    try:
        yield srv, errors
    finally:
        logging.getLogger("tricopy.host.nbd").removeHandler(errors)
        asyncio.run_coroutine_threadsafe(srv.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        for e in exports.values():
            e.close()


def _opt(option: int, data: bytes = b"") -> bytes:
    return struct.pack(">QII", nbd.IHAVEOPT, option, len(data)) + data


def good_client(port: int) -> None:
    """Negotiate "vol" with GO, write a fresh block, then (NBD orders nothing
    between requests in flight) read it back, and disconnect."""
    block = os.urandom(4096)
    offset = 4096 * (block[0] % 16)
    go = struct.pack(">I", 3) + b"vol" + struct.pack(">HH", 1, nbd.NBD_INFO_BLOCK_SIZE)
    req = struct.Struct(">IHHQQI")
    simple = struct.Struct(">IIQ")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        got = bytearray()

        def until(want: bytes) -> None:
            while want not in got:
                chunk = s.recv(1 << 16)
                assert chunk, f"the server closed before answering: {bytes(got)!r}"
                got.extend(chunk)

        s.sendall(struct.pack(">I", 3) + _opt(nbd.NBD_OPT_GO, go)
                  + req.pack(nbd.NBD_REQUEST_MAGIC, 0, 1, 1, offset, 4096) + block)
        until(simple.pack(nbd.NBD_SIMPLE_REPLY_MAGIC, 0, 1))
        s.sendall(req.pack(nbd.NBD_REQUEST_MAGIC, 0, 0, 2, offset, 4096))
        until(simple.pack(nbd.NBD_SIMPLE_REPLY_MAGIC, 0, 2) + block)
        s.sendall(req.pack(nbd.NBD_REQUEST_MAGIC, 0, 2, 3, 0, 0))


def check(server, raw: bytes) -> None:
    srv, errors = server
    exchange(("127.0.0.1", srv.port), raw)
    assert not errors.records, [r.getMessage() for r in errors.records]
    good_client(srv.port)


@pytest.mark.parametrize("raw", corpus_ids("nbd"))
def test_nbd_server_corpus(server, raw):
    check(server, raw)


@fuzz_settings(100)
@given(raw=mutated(SEEDS, max_mutations=8) | _requests())
def test_nbd_server_any_bytes(server, raw):
    check(server, raw)
