"""Unit tests of the wire codec: every header fault has its typed error."""

import random
import struct

import pytest

from tricopy.host.wire import protocol as p


def _header(magic=p.MAGIC, version=p.VERSION, ftype=p.FrameType.HEARTBEAT, flags=0,
            length=0, hcrc=None) -> bytes:
    head = struct.pack("<IBBHI", magic, version, ftype, flags, length)
    return head + struct.pack("<I", p.crc32c(head) if hcrc is None else hcrc)


def test_crc32c_check_value():
    # The CRC-32C check value of the Castagnoli catalogue entry.
    assert p.crc32c(b"123456789") == 0xE3069283
    assert p.crc32c(b"6789", p.crc32c(b"12345")) == 0xE3069283


def test_magic_is_trcp_on_the_wire():
    assert p.serialize_frame(p.FrameType.HEARTBEAT)[:4] == b"TRCP"


def test_empty_body_has_no_trailer():
    assert len(p.serialize_frame(p.FrameType.STATUS)) == p.HEADER_SIZE
    assert len(p.serialize_frame(p.FrameType.HEARTBEAT, b"x" * 8)) == p.HEADER_SIZE + 8 + 4


@pytest.mark.parametrize("head, error", [
    (_header(magic=0x12345678), p.BadMagic),
    (_header(hcrc=0), p.BadHeaderCRC),
    (_header(version=2), p.BadVersion),
    (_header(flags=0x8000), p.BadFlags),
    (_header(length=p.MAX_BODY + 1), p.FrameTooBig),
    (_header(ftype=0x7F), p.BadFrameType),
])
def test_bad_header_gives_typed_error(head, error):
    with pytest.raises(error):
        p.FrameParser().feed(head)


def test_absurd_length_refused_before_body_arrives():
    parser = p.FrameParser()
    with pytest.raises(p.FrameTooBig):
        parser.feed(_header(length=0xFFFFFFFF))
    assert parser.buffered == p.HEADER_SIZE


def test_bad_body_crc():
    wire = bytearray(p.serialize_frame(p.FrameType.HEARTBEAT, b"12345678"))
    wire[-1] ^= 1
    with pytest.raises(p.BadBodyCRC) as exc:
        p.FrameParser().feed(bytes(wire))
    assert exc.value.status == p.Status.BAD_BCRC


def test_parser_is_poisoned_after_an_error():
    parser = p.FrameParser()
    with pytest.raises(p.BadMagic):
        parser.feed(b"\0" * 16)
    with pytest.raises(p.BadMagic):
        parser.feed(p.serialize_frame(p.FrameType.STATUS))


def test_frames_split_anywhere_and_batched():
    frames = [p.Frame(p.FrameType.STATUS), p.Hello(p.Role.PRIMARY, 3, 7, 9, "g1", "tokyo").frame(),
              p.Ack(seq=5, tag=2).frame(), p.Frame(p.FrameType.JNLWR, b"c" * 64 + b"d" * 100,
                                                   p.FrameFlag.MORE)]
    wire = b"".join(f.serialize() for f in frames)
    for cut in range(0, len(wire), 7):
        parser = p.FrameParser()
        got = parser.feed(wire[:cut]) + parser.feed(wire[cut:])
        assert got == frames
        assert parser.buffered == 0


def test_parse_frame_rejects_trailing_bytes():
    with pytest.raises(p.BadBody):
        p.parse_frame(p.serialize_frame(p.FrameType.STATUS) + b"x")


def test_control_offsets_match_struct():
    ctl = p.Control(seq=1, time=2, address=3, jofs=4, length=5, data_len=6, data_crc=7,
                    epoch=8, idx=9, kind=10, flags=11, group=12, jvol_id=13, tag=14, ccrc=15)
    raw = ctl.pack()
    assert len(raw) == p.CONTROL_SIZE
    sizes = {"seq": 8, "time": 8, "address": 8, "jofs": 8, "length": 4, "data_len": 4,
             "data_crc": 4, "epoch": 4, "idx": 2, "kind": 1, "flags": 1, "group": 2,
             "jvol_id": 2, "tag": 4, "ccrc": 4}
    for name, off in p.Control.OFFSETS.items():
        size = sizes[name]
        assert off % size == 0, f"{name} is not naturally aligned"
        assert int.from_bytes(raw[off:off + size], "little") == getattr(ctl, name)
    assert p.Control.unpack(raw) == ctl


def test_ccrc_covers_bytes_0_to_59():
    ctl = p.Control(seq=42, address=8192, length=512, data_len=512).with_ccrc()
    assert ctl.ccrc_ok()
    assert not p.Control(**{**ctl.__dict__, "seq": 43}).ccrc_ok()


def test_sealed_control_is_with_ccrc_and_its_pack():
    fields = dict(address=4096 * 7, length=8192, data_len=8192, data_crc=0xDEADBEEF, epoch=3,
                  idx=2, kind=p.Kind.UPDATE, flags=1, group=5, tag=0xFFFF_FFFE)
    ctl, packed = p.Control.sealed(**fields)
    assert ctl == p.Control(**fields).with_ccrc()
    assert packed == ctl.pack() and ctl.ccrc_ok() and ctl.ccrc != 0


def test_short_control_is_bad_length():
    with pytest.raises(p.BadBody) as exc:
        p.Control.unpack(b"\0" * 63)
    assert exc.value.status == p.Status.BAD_LENGTH


@pytest.mark.parametrize("cls, body", [
    (p.Ack, b"\0" * 31),
    (p.Ack, b"\0" * 28 + bytes([200, 0, 0, 0])),          # unknown status
    (p.Ack, b"\0" * 30 + b"\x01\x00"),                     # reserved set
    (p.Hello, b"\0" * 80),                                 # role 0
    (p.Hello, bytes([1]) + b"\0" * 15 + b"a\0b" + b"\0" * 61),  # NUL inside a name
    (p.Hello, bytes([1]) + b"\0" * 15 + b"\xff" + b"\0" * 63),  # not ASCII
    (p.JnlRd, struct.pack("<QII", 1, 1, 1)),
    (p.Release, b"\0" * 9),
    (p.Load, struct.pack("<QQII", 0, 0, 0, 0x100)),
    (p.EngineStatus, b"\0" * 79),
])
def test_bad_bodies_give_bad_body(cls, body):
    with pytest.raises(p.BadBody):
        cls.unpack(body)


def test_ack_frame_type_must_match_status():
    nak_as_ack = p.Frame(p.FrameType.ACK, p.Ack(status=p.Status.FULL).pack())
    with pytest.raises(p.BadBody):
        p.Ack.from_frame(nak_as_ack)
    assert p.Ack.from_frame(p.Ack(status=p.Status.FULL).frame()).status == p.Status.FULL


def test_record_size_aligns_data_to_64():
    assert p.record_size(0) == 64
    assert p.record_size(1) == 128
    assert p.record_size(4096) == 64 + 4096
    assert p.record_size(4097) == 64 + 4096 + 64


def test_serialize_refuses_oversize_body():
    with pytest.raises(p.FrameTooBig):
        p.serialize_frame(p.FrameType.JNLWR, bytes(p.MAX_BODY + 1))


def test_hello_name_too_long_is_value_error():
    with pytest.raises(ValueError, match="at most 32"):
        p.Hello(p.Role.PRIMARY, grname="g" * 33).pack()


# -- descriptor rings: the codec side of docs/protocol.md "Two kinds of ring" --

def test_load_without_ring_is_the_32_byte_body_as_before():
    raw = p.Load(p.LoadFlag.TIME | p.LoadFlag.FREEZE, time=5, ptr=64).pack()
    assert raw == struct.pack("<QQQII", 0, 5, 64, 0, 0x12)
    with pytest.raises(ValueError):
        p.Load(p.LoadFlag.TIME, size=4096).pack()     # SIZE goes only with RING


def test_load_ring_appends_a_u64_size():
    flags = p.LoadFlag.RING | p.LoadFlag.DESC | p.LoadFlag.SEQ
    raw = p.Load(flags, seq=7, size=1 << 40).pack()
    assert len(raw) == 40
    assert raw[32:] == (1 << 40).to_bytes(8, "little")
    assert int.from_bytes(raw[28:32], "little") == 0x181
    assert p.Load.unpack(raw) == p.Load(flags, seq=7, size=1 << 40)


@pytest.mark.parametrize("body", [
    struct.pack("<QQQII", 0, 0, 0, 0, 0x80),               # RING in a 32-byte body
    struct.pack("<QQQIIQ", 0, 0, 0, 0, 0x01, 4096),        # 40 bytes without RING
    struct.pack("<QQQIIQ", 0, 0, 0, 0, 0x40 | 0x80, 4096),  # bit 6 stays undefined
    struct.pack("<QQQIIQ", 0, 0, 0, 0, 0x200 | 0x80, 4096),
])
def test_load_ring_body_rules(body):
    with pytest.raises(p.BadBody):
        p.Load.unpack(body)


def test_release_has_an_8_and_a_16_byte_form():
    assert p.Release(9).pack() == (9).to_bytes(8, "little")
    raw = p.Release(9, joptr=(1 << 40) - 64).pack()
    assert raw == struct.pack("<QQ", 9, (1 << 40) - 64)
    assert p.Release.unpack(raw) == p.Release(9, (1 << 40) - 64)
    assert p.Release.unpack(raw[:8]) == p.Release(9)


def test_descriptor_frame_is_the_control_data_alone():
    ctl = p.Control(length=4096, data_len=4096, data_crc=123, tag=4)
    frame = p.descriptor_frame(ctl)
    assert frame.type == p.FrameType.JNLDESC == 0x18
    assert frame.body == ctl.pack() and len(frame.body) == p.CONTROL_SIZE


def test_ring_sizes():
    assert p.ring_size_ok(128) and p.ring_size_ok(1 << 40) and p.ring_size_ok(192)
    assert not p.ring_size_ok(64) and not p.ring_size_ok((1 << 40) + 64)
    assert not p.ring_size_ok(1000)


# -- journal batches (docs/protocol.md, "Journal batches") ---------------------

def _journal(tag: int, data: bytes) -> tuple[p.Control, bytes]:
    ctl = p.Control(address=tag * 4096, length=len(data), data_len=len(data),
                    data_crc=p.crc32c(data), kind=p.Kind.UPDATE, tag=tag)
    return ctl, data


def test_a_batch_is_its_journals_back_to_back_and_splits_into_them():
    journals = [_journal(1, b"a" * 100), _journal(2, b""), _journal(3, b"c" * 4096)]
    parts = []
    for ctl, data in journals:
        parts += [ctl.pack(), data]
    body = b"".join(parts)
    got = p.split_journals(body)
    assert [(c, bytes(d)) for c, d in got] == journals
    # sent as parts: the same bytes as the frame of the joined body
    assert b"".join(p.serialize_parts(p.FrameType.JNLWR, parts)) == \
        p.serialize_frame(p.FrameType.JNLWR, body)


def test_a_batch_of_one_is_the_single_journal_frame():
    ctl, data = _journal(7, b"x" * 513)
    body = p.journal_body(ctl, data)
    assert b"".join(p.serialize_parts(p.FrameType.JNLWR, [ctl.pack(), data])) == \
        p.Frame(p.FrameType.JNLWR, body).serialize()
    ((got, view),) = p.split_journals(body)
    assert (got, bytes(view)) == (ctl, data)


@pytest.mark.parametrize("cut", [-1, -64, -65, 1, 63])
def test_a_batch_that_is_not_whole_journals_is_refused_whole(cut):
    ctl, data = _journal(1, b"a" * 100)
    body = p.journal_body(ctl, data) * 2
    body = body[:cut] if cut < 0 else body + bytes(cut)
    with pytest.raises(p.BadBody) as exc:
        p.split_journals(body)
    assert exc.value.status == p.Status.BAD_LENGTH


def test_an_empty_jnlwr_body_is_bad_length():
    with pytest.raises(p.BadBody) as exc:
        p.split_journals(b"")
    assert exc.value.status == p.Status.BAD_LENGTH


def _jnlwr(n: int, seed: int) -> bytes:
    data = random.Random(seed).randbytes(n)
    ctl = p.Control(address=0, length=n, data_len=n, data_crc=p.crc32c(data), idx=0,
                    kind=p.Kind.UPDATE, tag=seed).with_ccrc()
    return p.journal_body(ctl, data)


@pytest.mark.parametrize("seed", range(6))
def test_large_bodies_in_any_chunks(seed):
    """Bodies around GATHER_AT and up to the largest journal, between small
    frames, cut into chunks from 1 byte (header and trailer split) to 300 KiB."""
    rng = random.Random(seed)
    g = p.FrameParser.GATHER_AT
    sizes = [g - p.CONTROL_SIZE - 1, g - p.CONTROL_SIZE, g - p.CONTROL_SIZE + 1, 1 << 20,
             p.MAX_DATA, 100, 4096]
    rng.shuffle(sizes)
    frames = []
    for i, n in enumerate(sizes):
        frames.append(p.Frame(p.FrameType.JNLWR, _jnlwr(n, seed * 10 + i)))
        frames.append(p.Frame(p.FrameType.HEARTBEAT))
    raw = b"".join(f.serialize() for f in frames)
    parser, got, pos = p.FrameParser(), [], 0
    while pos < len(raw):
        n = rng.choice((1, 3, 7, 19, 4096, 65536, 300 << 10))
        got += parser.feed(raw[pos:pos + n])
        pos += n
    assert got == frames
    assert parser.buffered == 0


@pytest.mark.parametrize("where", ["body start", "body middle", "body end", "trailer"])
def test_large_body_crc_checked(where):
    """A flipped byte anywhere in a gathered body or its trailer is a bad
    body CRC, and the parser stays refused (mutation: skip the CRC check of
    gathered bodies -- this test fails)."""
    body = _jnlwr(1 << 20, 7)
    raw = bytearray(p.serialize_frame(p.FrameType.JNLWR, body))
    at = {"body start": p.HEADER_SIZE, "body middle": p.HEADER_SIZE + len(body) // 2,
          "body end": p.HEADER_SIZE + len(body) - 1, "trailer": len(raw) - 2}[where]
    raw[at] ^= 0x40
    parser = p.FrameParser()
    with pytest.raises(p.BadBodyCRC):
        for i in range(0, len(raw), 65536):
            parser.feed(bytes(raw[i:i + 65536]))
    with pytest.raises(p.BadBodyCRC):
        parser.feed(b"")
