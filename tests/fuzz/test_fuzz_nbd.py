"""Fuzzing the NBD server core (host/nbd/protocol.py, sans-I/O): handshake,
options and transmission requests.

Contract: :meth:`ServerConnection.receive_data` never raises; a client that
breaks the framing gets a :class:`Close` event (and nothing after it);
every :class:`Request` it lets through is already valid for its export
(command, flags, alignment, range, size limit, read-only), so the backend
only ever sees well-formed requests; replying to each never fails; and
the events do not depend on how the bytes were cut.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, strategies as st

from tricopy.host.nbd import protocol as nbd
from tricopy.host.nbd.protocol import Close, Cmd, Ready, Request, ServerConnection, StartTls

from .fuzzing import chunkings, corpus, corpus_ids, fuzz_settings, mutated

SEEDS = [data for _, data in corpus("nbd")]


@dataclass
class FakeExport:
    size: int
    block_size: int
    read_only: bool
    description: str = "fuzz"
    multi_conn: bool = False
    max_payload: int = 64 << 10


EXPORTS = {"vol": FakeExport(1 << 20, 4096, False), "ro": FakeExport(64 << 10, 512, True, ""),
           "": FakeExport(8192, 1, False)}


def check_request(req: Request, export: FakeExport) -> None:
    assert isinstance(req.cmd, Cmd) and req.cmd is not Cmd.DISC
    allowed = nbd.NBD_CMD_FLAG_FUA | (nbd.NBD_CMD_FLAG_NO_HOLE if req.cmd is Cmd.WRITE_ZEROES
                                      else 0)
    assert req.flags & ~allowed == 0
    if req.cmd is Cmd.FLUSH:
        assert req.offset == req.length == 0
        return
    assert not (export.read_only and req.cmd is not Cmd.READ)
    assert req.offset % export.block_size == 0 and req.length % export.block_size == 0
    assert 0 <= req.offset and req.offset + req.length <= export.size
    if req.cmd in (Cmd.READ, Cmd.WRITE):
        assert req.length <= nbd.block_sizes(export)[2]
    assert len(req.data) == (req.length if req.cmd is Cmd.WRITE else 0)


def drive(chunks: list[bytes], *, tls: bool = False) -> list:
    """Feed ``chunks``; answer every request (READs with zeros, every third
    with an error) as a backend would; return the events."""
    conn = ServerConnection(EXPORTS, tls=tls)
    events: list = []
    export = None
    closed = False
    n = 0
    for chunk in chunks:
        got = conn.receive_data(chunk)
        if closed:
            assert got == [], "events after Close"
        for ev in got:
            assert not closed, "events after Close"
            if isinstance(ev, StartTls):
                conn.tls_started()        # as the adapter does once TLS is up
            elif isinstance(ev, Ready):
                assert EXPORTS[ev.name] is ev.export
                export = ev.export
            elif isinstance(ev, Request):
                assert export is not None, "a request before the export was chosen"
                check_request(ev, export)
                n += 1
                if n % 3 == 0:
                    conn.reply(ev, error=nbd.NBD_EIO, message="fuzz")
                else:
                    conn.reply(ev, data=bytes(ev.length) if ev.cmd is Cmd.READ else b"")
            elif isinstance(ev, Close):
                closed = True
            else:
                raise AssertionError(f"unknown event {ev!r}")
        conn.data_to_send()
        events += got
    assert conn.data_to_send() == b""
    return events


def run(raw: bytes, chunks: list[bytes]) -> None:
    whole = drive([raw])
    assert drive(chunks) == whole, "the events depend on how the bytes were cut"
    drive(chunks, tls=True)


@pytest.mark.parametrize("raw", corpus_ids("nbd"))
def test_nbd_corpus(raw):
    run(raw, [raw[i:i + 1] for i in range(len(raw))])
    assert any(isinstance(e, (Ready, Close)) for e in drive([raw]))


@fuzz_settings(1000)
@given(st.data())
def test_nbd_core_any_bytes(data):
    raw = data.draw(mutated(SEEDS, max_mutations=8) | st.binary(max_size=200))
    run(raw, data.draw(chunkings(raw)))


_INTERESTING = st.sampled_from((0, 1, 511, 512, 4096, 4097, 8192, 64 << 10, (64 << 10) + 4096,
                                1 << 20, (1 << 20) - 4096, 1 << 32, (1 << 64) - 1,
                                (1 << 64) - 4096))


@st.composite
def _requests(draw) -> bytes:
    """A GO handshake for an export, then requests with drawn fields."""
    name = draw(st.sampled_from(sorted(EXPORTS)))
    raw = name.encode()
    out = (b"\x00\x00\x00\x03" + nbd._OPTION_HEADER.pack(nbd.IHAVEOPT, nbd.NBD_OPT_GO, 8 + len(raw))
           + len(raw).to_bytes(4, "big") + raw + b"\x00\x01\x00\x03")
    for _ in range(draw(st.integers(1, 6))):
        cmd = draw(st.sampled_from([int(c) for c in Cmd]) | st.integers(0, 0xFFFF))
        flags = draw(st.sampled_from((0, 1, 2, 3, 0x8000)))
        offset = draw(_INTERESTING | st.integers(0, 1 << 21))
        length = draw(_INTERESTING.filter(lambda n: n < 1 << 32) | st.integers(0, 1 << 17))
        body = bytes(min(length, 1 << 17)) if cmd == Cmd.WRITE else b""
        out += nbd._REQUEST.pack(nbd.NBD_REQUEST_MAGIC, flags, cmd, draw(st.integers(0, 9)),
                                 offset, length) + body
    return out


@fuzz_settings(300)
@given(st.data())
def test_nbd_core_requests(data):
    raw = data.draw(_requests())
    run(raw, data.draw(chunkings(raw)))
