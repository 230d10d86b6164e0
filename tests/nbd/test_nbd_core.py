"""The sans-I/O NBD core: exact bytes for the handshake, validation and limits."""

from __future__ import annotations

import struct
import tracemalloc
from dataclasses import dataclass

import pytest

from tricopy.host.nbd import protocol as p
from tricopy.host.nbd.protocol import Close, Cmd, Ready, ServerConnection, StartTls


@dataclass
class FakeExport:
    """Only the attributes the core reads: the core never does I/O."""

    size: int = 1 << 20
    block_size: int = 4096
    read_only: bool = False
    description: str = "test export"
    multi_conn: bool = False
    max_payload: int = 32 << 20


def option(opt: int, data: bytes = b"") -> bytes:
    return struct.pack(">QII", p.IHAVEOPT, opt, len(data)) + data


def go_data(name: str, infos=(p.NBD_INFO_BLOCK_SIZE,)) -> bytes:
    raw = name.encode()
    return struct.pack(">I", len(raw)) + raw + struct.pack(f">H{len(infos)}H", len(infos), *infos)


def request(cmd: int, offset=0, length=0, data=b"", flags=0, handle=7) -> bytes:
    return struct.pack(">IHHQQI", p.NBD_REQUEST_MAGIC, flags, cmd, handle, offset, length) + data


def replies(out: bytes) -> list[tuple[int, int, bytes]]:
    """Split option replies: (option, type, data)."""
    result = []
    while out:
        magic, opt, rtype, length = struct.unpack_from(">QIII", out)
        assert magic == p.NBD_REP_MAGIC
        result.append((opt, rtype, out[20:20 + length]))
        out = out[20 + length:]
    return result


def negotiated(export=None, structured=False, **kw) -> ServerConnection:
    conn = ServerConnection({"disk": export or FakeExport()}, **kw)
    conn.data_to_send()
    feed = struct.pack(">I", 3)
    if structured:
        feed += option(p.NBD_OPT_STRUCTURED_REPLY)
    feed += option(p.NBD_OPT_GO, go_data("disk"))
    events = conn.receive_data(feed)
    assert isinstance(events[-1], Ready)
    conn.data_to_send()
    return conn


def simple(out: bytes) -> tuple[int, int]:
    magic, error, handle = struct.unpack(">IIQ", out[:16])
    assert magic == p.NBD_SIMPLE_REPLY_MAGIC
    return error, handle


def test_greeting_is_fixed_newstyle_no_zeroes():
    conn = ServerConnection({"disk": FakeExport()})
    assert conn.data_to_send() == struct.pack(">QQH", p.NBDMAGIC, p.IHAVEOPT, 3)


def test_go_reports_export_block_sizes_and_enters_transmission():
    conn = ServerConnection({"disk": FakeExport()})
    conn.data_to_send()
    events = conn.receive_data(struct.pack(">I", 3) + option(
        p.NBD_OPT_GO, go_data("disk", (p.NBD_INFO_BLOCK_SIZE, p.NBD_INFO_NAME,
                                       p.NBD_INFO_DESCRIPTION))))
    got = replies(conn.data_to_send())
    flags = (p.NBD_FLAG_HAS_FLAGS | p.NBD_FLAG_SEND_FLUSH | p.NBD_FLAG_SEND_FUA
             | p.NBD_FLAG_SEND_TRIM | p.NBD_FLAG_SEND_WRITE_ZEROES)
    assert got == [
        (p.NBD_OPT_GO, p.NBD_REP_INFO, struct.pack(">HQH", p.NBD_INFO_EXPORT, 1 << 20, flags)),
        (p.NBD_OPT_GO, p.NBD_REP_INFO, struct.pack(">H", p.NBD_INFO_NAME) + b"disk"),
        (p.NBD_OPT_GO, p.NBD_REP_INFO, struct.pack(">H", p.NBD_INFO_DESCRIPTION) + b"test export"),
        (p.NBD_OPT_GO, p.NBD_REP_INFO,
         struct.pack(">HIII", p.NBD_INFO_BLOCK_SIZE, 4096, 4096, 32 << 20)),
        (p.NBD_OPT_GO, p.NBD_REP_ACK, b""),
    ]
    assert [type(e) for e in events] == [Ready] and events[0].name == "disk"


def test_read_only_and_multi_conn_flags():
    ro = p.transmission_flags(FakeExport(read_only=True, multi_conn=True))
    assert ro & p.NBD_FLAG_READ_ONLY and ro & p.NBD_FLAG_CAN_MULTI_CONN
    assert not ro & (p.NBD_FLAG_SEND_TRIM | p.NBD_FLAG_SEND_WRITE_ZEROES)
    assert not p.transmission_flags(FakeExport()) & p.NBD_FLAG_CAN_MULTI_CONN


def test_go_without_block_size_request_is_refused_after_advertising_it():
    conn = ServerConnection({"disk": FakeExport()})
    conn.data_to_send()
    events = conn.receive_data(struct.pack(">I", 3) + option(p.NBD_OPT_GO, go_data("disk", ())))
    types = [r[1] for r in replies(conn.data_to_send())]
    assert types == [p.NBD_REP_INFO, p.NBD_REP_INFO, p.NBD_REP_ERR_BLOCK_SIZE_REQD]
    assert events == []


def test_option_errors_keep_negotiating():
    conn = ServerConnection({"disk": FakeExport()})
    conn.data_to_send()
    conn.receive_data(struct.pack(">I", 3)
                      + option(p.NBD_OPT_GO, go_data("nope"))
                      + option(99)
                      + option(p.NBD_OPT_GO, b"\x00\x00\x00\xff")        # name overruns
                      + option(p.NBD_OPT_GO, go_data("disk") + b"x")      # trailing byte
                      + option(p.NBD_OPT_STARTTLS)                         # TLS not configured
                      + option(p.NBD_OPT_LIST, b"x")
                      + option(p.NBD_OPT_LIST))
    got = replies(conn.data_to_send())
    assert [r[1] for r in got] == [
        p.NBD_REP_ERR_UNKNOWN, p.NBD_REP_ERR_UNSUP, p.NBD_REP_ERR_INVALID,
        p.NBD_REP_ERR_INVALID, p.NBD_REP_ERR_UNSUP, p.NBD_REP_ERR_INVALID,
        p.NBD_REP_SERVER, p.NBD_REP_ACK]
    assert b"nope" in got[0][2]  # the message names what was wrong
    assert got[6][2] == struct.pack(">I", 4) + b"disk" + b"test export"


def test_export_name_sends_zero_padding_unless_no_zeroes():
    for client_flags, pad in ((1, 124), (3, 0)):
        conn = ServerConnection({"disk": FakeExport()})
        conn.data_to_send()
        events = conn.receive_data(struct.pack(">I", client_flags)
                                   + option(p.NBD_OPT_EXPORT_NAME, b"disk"))
        out = conn.data_to_send()
        assert len(out) == 10 + pad and struct.unpack(">Q", out[:8])[0] == 1 << 20
        assert isinstance(events[0], Ready)


@pytest.mark.parametrize("feed", [
    struct.pack(">I", 0),                                              # not fixed newstyle
    struct.pack(">I", 3) + b"BADMAGIC" + bytes(8),                     # option magic
    struct.pack(">I", 3) + option(p.NBD_OPT_EXPORT_NAME, b"nope"),     # unknown export
], ids=["not-fixed-newstyle", "bad-option-magic", "export-name-unknown"])
def test_unrecoverable_handshake_closes(feed):
    conn = ServerConnection({"disk": FakeExport()})
    events = conn.receive_data(feed)
    assert isinstance(events[-1], Close) and not events[-1].graceful


def test_huge_option_is_skipped_without_buffering():
    conn = ServerConnection({"disk": FakeExport()})
    conn.data_to_send()
    length = 40 << 20
    tracemalloc.start()
    conn.receive_data(struct.pack(">I", 3) + struct.pack(">QII", p.IHAVEOPT, p.NBD_OPT_GO, length))
    chunk = bytes(64 << 10)
    for _ in range(length // len(chunk)):
        conn.receive_data(chunk)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2 << 20, peak
    assert [r[1] for r in replies(conn.data_to_send())] == [p.NBD_REP_ERR_TOO_BIG]
    conn.receive_data(option(p.NBD_OPT_LIST))  # still negotiating
    assert replies(conn.data_to_send())[-1][1] == p.NBD_REP_ACK


def test_tls_mandatory_mode():
    conn = ServerConnection({"disk": FakeExport()}, tls=True)
    conn.data_to_send()
    events = conn.receive_data(struct.pack(">I", 3) + option(p.NBD_OPT_GO, go_data("disk"))
                               + option(p.NBD_OPT_STARTTLS))
    got = replies(conn.data_to_send())
    assert [r[1] for r in got] == [p.NBD_REP_ERR_TLS_REQD, p.NBD_REP_ACK]
    assert events == [StartTls()]
    conn.tls_started()
    events = conn.receive_data(option(p.NBD_OPT_GO, go_data("disk")))
    assert isinstance(events[-1], Ready)


def test_plaintext_after_starttls_is_refused():
    conn = ServerConnection({"disk": FakeExport()}, tls=True)
    events = conn.receive_data(struct.pack(">I", 3) + option(p.NBD_OPT_STARTTLS)
                               + option(p.NBD_OPT_GO, go_data("disk")))
    # No StartTls event: the adapter must not begin a handshake that will never come.
    assert len(events) == 1 and isinstance(events[0], Close) and not events[0].graceful
    assert [r[1] for r in replies(conn.data_to_send()[18:])] == [p.NBD_REP_ACK]


def test_export_name_before_starttls_closes():
    conn = ServerConnection({"disk": FakeExport()}, tls=True)
    events = conn.receive_data(struct.pack(">I", 3) + option(p.NBD_OPT_EXPORT_NAME, b"disk"))
    assert isinstance(events[-1], Close)


def test_valid_requests_become_events():
    conn = negotiated()
    events = conn.receive_data(
        request(Cmd.READ, 4096, 8192, handle=1)
        + request(Cmd.WRITE, 0, 4096, b"a" * 4096, p.NBD_CMD_FLAG_FUA, handle=2)
        + request(Cmd.WRITE_ZEROES, 0, 8192, flags=p.NBD_CMD_FLAG_NO_HOLE, handle=3)
        + request(Cmd.TRIM, 0, 4096, handle=4) + request(Cmd.FLUSH, handle=5))
    assert [(e.cmd, e.handle) for e in events] == [
        (Cmd.READ, 1), (Cmd.WRITE, 2), (Cmd.WRITE_ZEROES, 3), (Cmd.TRIM, 4), (Cmd.FLUSH, 5)]
    assert events[1].fua and events[1].data == b"a" * 4096
    assert conn.data_to_send() == b""  # nothing answered until the backend replies
    conn.reply(events[0], data=b"r" * 8192)
    conn.reply(events[1])
    out = conn.data_to_send()
    assert simple(out) == (0, 1) and out[16:16 + 8192] == b"r" * 8192
    assert simple(out[16 + 8192:]) == (0, 2)


@pytest.mark.parametrize("req, export, error", [
    (request(Cmd.READ, 100, 4096), FakeExport(), p.NBD_EINVAL),                  # misaligned
    (request(Cmd.READ, 1 << 20, 4096), FakeExport(), p.NBD_EINVAL),              # past the end
    (request(Cmd.WRITE, 1 << 20, 4096, bytes(4096)), FakeExport(), p.NBD_ENOSPC),
    (request(Cmd.WRITE_ZEROES, 0, 2 << 20), FakeExport(), p.NBD_ENOSPC),
    (request(Cmd.TRIM, 0, 2 << 20), FakeExport(), p.NBD_EINVAL),
    (request(Cmd.READ, 0, 33 << 20), FakeExport(size=64 << 20), p.NBD_EINVAL),   # > max
    (request(Cmd.WRITE, 0, 4096, bytes(4096)), FakeExport(read_only=True), p.NBD_EPERM),
    (request(Cmd.TRIM, 0, 4096), FakeExport(read_only=True), p.NBD_EPERM),
    (request(Cmd.FLUSH, 0, 4096), FakeExport(), p.NBD_EINVAL),
    (request(Cmd.READ, 0, 4096, flags=1 << 7), FakeExport(), p.NBD_EINVAL),      # unknown flag
    (request(Cmd.READ, 0, 4096, flags=p.NBD_CMD_FLAG_NO_HOLE), FakeExport(), p.NBD_EINVAL),
    (request(7, 0, 4096), FakeExport(), p.NBD_EINVAL),                           # BLOCK_STATUS
], ids=["misaligned", "read-past-end", "write-past-end", "zeroes-past-end", "trim-past-end",
        "read-too-big", "ro-write", "ro-trim", "flush-with-range", "unknown-flag",
        "no-hole-on-read", "unknown-command"])
def test_bad_requests_get_nbd_errors_and_the_connection_lives(req, export, error):
    conn = negotiated(export)
    events = conn.receive_data(req + request(Cmd.READ, 0, 4096, handle=9))
    assert simple(conn.data_to_send()) == (error, 7)
    assert [(e.cmd, e.handle) for e in events] == [(Cmd.READ, 9)]


def test_oversized_write_is_discarded_unbuffered_then_refused():
    conn = negotiated(FakeExport(size=64 << 20))
    length = 33 << 20
    tracemalloc.start()
    events = conn.receive_data(request(Cmd.WRITE, 0, length))
    chunk = bytes(256 << 10)
    for _ in range(length // len(chunk)):
        events += conn.receive_data(chunk)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2 << 20, peak
    assert events == [] and simple(conn.data_to_send()) == (p.NBD_EINVAL, 7)
    assert conn.receive_data(request(Cmd.FLUSH, handle=8))[0].handle == 8


def test_bad_request_magic_closes_and_disc_is_graceful():
    conn = negotiated()
    events = conn.receive_data(b"\xde\xad\xbe\xef" + bytes(24))
    assert isinstance(events[0], Close) and not events[0].graceful
    conn = negotiated()
    events = conn.receive_data(request(Cmd.WRITE, 0, 4096, bytes(4096), handle=1)
                               + request(Cmd.DISC) + request(Cmd.FLUSH))
    assert events[1:] == [Close("client sent NBD_CMD_DISC", graceful=True)]
    conn.reply(events[0])  # a request in flight at DISC is still answered
    assert simple(conn.data_to_send()) == (0, 1)


def test_structured_read_replies_and_errors():
    conn = negotiated(structured=True)
    assert conn.structured_replies
    events = conn.receive_data(request(Cmd.READ, 8192, 4096, handle=3))
    conn.reply(events[0], data=b"z" * 4096)
    out = conn.data_to_send()
    magic, flags, ctype, handle, length = struct.unpack(">IHHQI", out[:20])
    assert (magic, flags, ctype, handle, length) == (
        p.NBD_STRUCTURED_REPLY_MAGIC, p.NBD_REPLY_FLAG_DONE, p.NBD_REPLY_TYPE_OFFSET_DATA, 3,
        8 + 4096)
    assert struct.unpack(">Q", out[20:28])[0] == 8192 and out[28:] == b"z" * 4096
    conn.receive_data(request(Cmd.READ, 100, 4096, handle=4))
    out = conn.data_to_send()
    magic, flags, ctype, handle, length = struct.unpack(">IHHQI", out[:20])
    assert (ctype, handle, flags) == (p.NBD_REPLY_TYPE_ERROR, 4, p.NBD_REPLY_FLAG_DONE)
    error, msg_len = struct.unpack(">IH", out[20:26])
    assert error == p.NBD_EINVAL and b"aligned" in out[26:26 + msg_len]


def test_byte_at_a_time_equals_all_at_once():
    feed = (struct.pack(">I", 3) + option(p.NBD_OPT_LIST) + option(p.NBD_OPT_GO, go_data("disk"))
            + request(Cmd.WRITE, 0, 4096, b"w" * 4096) + request(Cmd.READ, 3, 4096))
    whole = ServerConnection({"disk": FakeExport()})
    ev_whole = whole.receive_data(feed)
    split = ServerConnection({"disk": FakeExport()})
    ev_split = [e for i in range(len(feed)) for e in split.receive_data(feed[i:i + 1])]
    assert ev_whole == ev_split and len(ev_whole) == 2
    assert whole.data_to_send() == split.data_to_send()


def test_bad_export_configuration_is_refused():
    with pytest.raises(ValueError, match="power of two"):
        ServerConnection({"disk": FakeExport(block_size=3000)})
    with pytest.raises(ValueError, match="multiple"):
        ServerConnection({"disk": FakeExport(size=4097)})
