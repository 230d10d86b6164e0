"""The secondary's native loop (host/native/restore.c) against the Python path.

The loop may only ever do what the Python path would: stage a JNLWR's
journals exactly when ``RestoreStream.verify_batch`` takes all of them and
they continue the stream as data journals inside their SVOLs, hand every
other frame up whole, refuse bytes exactly where ``FrameParser`` does, and
write to the SVOLs only what the restorer allows (never past the apply mark).
"""

import asyncio
import random
import socket
import ssl

import pytest

from tricopy.host.config import GroupAttr, GroupConfig, SiteConfig, VolumeConfig
from tricopy.host.native import restore as native
from tricopy.host.native.restore import NativeRestore
from tricopy.host.secondary.site import RestoreGroup
from tricopy.host.wire import protocol as p
from tricopy.host.wire.protocol import Control, Frame, FrameType, Kind

BLOCK = 4096
SIZE = 64 * BLOCK

m = native._restore()


def test_crc32c_is_the_packages():
    r = random.Random(1)
    for n in list(range(0, 40)) + [4095, 4096, 65536 + 3]:
        data = r.randbytes(n)
        start = r.getrandbits(32)
        assert m.crc32c(data) == p.crc32c(data)
        assert m.crc32c(data, start) == p.crc32c(data, start)


def make_group(tmp_path) -> RestoreGroup:
    tmp_path.mkdir(parents=True, exist_ok=True)
    vols = []
    for i in (0, 1):
        path = tmp_path / f"svol{i}.img"
        path.write_bytes(bytes(SIZE))
        vols.append(VolumeConfig(idx=i, group=1, path=path, size=SIZE, block_size=BLOCK))
    cfg = GroupConfig(grnum=1, grname="g1", attr=GroupAttr.RESTORE)
    site = SiteConfig(site="secondary", listen=None, control=None,
                      state_dir=tmp_path / "state", groups=(cfg,), volumes=tuple(vols))
    g = RestoreGroup(cfg, site)
    g.pair_set("PAIR", 0)
    return g


ZEROS = frozenset({Kind.ZERO, Kind.TRIM})


def journal(seq: int, r: random.Random, zeros: float = 0.0) -> tuple[Control, bytes]:
    """A data journal; with probability ``zeros`` a ZERO or TRIM (no data)."""
    n = r.randint(1, 3)
    data = r.randbytes(n * BLOCK)
    kind = Kind.UPDATE
    if r.random() < zeros:
        kind, data = r.choice([Kind.ZERO, Kind.TRIM]), b""
    ctl = Control(seq=seq, time=seq * 1000, address=r.randrange(SIZE // BLOCK - n + 1) * BLOCK,
                  length=n * BLOCK, data_len=len(data), data_crc=p.crc32c(data) if data else 0,
                  idx=r.randrange(2), kind=kind, group=1, epoch=0, tag=seq)
    return ctl.with_ccrc(), data


def frame_bytes(journals, flags=0) -> bytes:
    body = b"".join(c.pack() + d for c, d in journals)
    return p.serialize_frame(FrameType.JNLWR, body, flags)


class Pair:
    """A group's native loop on one end of a socket pair; the test writes the other."""

    def __init__(self, g: RestoreGroup):
        self.a, b = socket.socketpair()
        b.setblocking(False)
        self.n = NativeRestore(g, b.detach())

    def send(self, raw: bytes) -> int:
        self.a.sendall(raw)
        return self.n.rx.pump()


def python_takes(g: RestoreGroup, body: bytes, expect: int) -> bool:
    """What the Python path decides for a JNLWR body: the loop may stage it iff
    verify_batch takes every journal and they are the next data journals, in
    their SVOLs."""
    try:
        journals = g.stream.verify_batch(body)
    except p.ProtocolError:
        return False
    for k, (ctl, data) in enumerate(journals):
        vol = g.volumes.get(ctl.idx)
        if ctl.seq != expect + k or ctl.kind not in p.DATA_KINDS | ZEROS or vol is None:
            return False
        try:
            vol.check(ctl.address, ctl.length)
        except ValueError:
            return False
    return bool(journals)


def mutants(r: random.Random, seq: int):
    """Frames the loop must stage or refuse as the Python path would: each a
    batch of journals from ``seq`` with at most one thing wrong."""
    js = [journal(seq + k, r, zeros=0.15) for k in range(r.randint(1, 4))]
    i = r.randrange(len(js))
    ctl, data = js[i]
    what = r.choice(["none", "none", "ccrc", "dcrc", "group", "epoch", "kind", "seq",
                     "replay", "len", "idx", "range", "align", "mark", "zero"])
    f = dict(vars(ctl))
    if what == "ccrc":
        js[i] = (Control(**{**f, "ccrc": ctl.ccrc ^ 1}), data)
    elif what == "dcrc" and data:
        js[i] = (ctl, bytes([data[0] ^ 1]) + data[1:])
    elif what == "dcrc":          # a ZERO or TRIM with data, or with a DATA_CRC
        js[i] = (Control(**{**f, "data_crc": 1}).with_ccrc(), data)
    elif what in ("group", "epoch", "idx"):
        js[i] = (Control(**{**f, what: f[what] + (1 if what != "idx" else 5)}).with_ccrc(), data)
    elif what == "kind":
        js[i] = (Control(**{**f, "kind": 9}).with_ccrc(), data)
    elif what == "seq":
        js[i] = (Control(**{**f, "seq": ctl.seq + 1}).with_ccrc(), data)
    elif what == "replay":
        js = [(Control(**{**vars(c), "seq": c.seq - 1}).with_ccrc(), d) for c, d in js]
    elif what == "len":
        js[i] = (Control(**{**f, "length": ctl.length + BLOCK}).with_ccrc(), data)
    elif what == "range":
        js[i] = (Control(**{**f, "address": SIZE - BLOCK}).with_ccrc(), data) if ctl.length > BLOCK \
            else (Control(**{**f, "address": SIZE}).with_ccrc(), data)
    elif what == "align":
        js[i] = (Control(**{**f, "address": ctl.address + 512}).with_ccrc(), data)
    elif what in ("mark", "zero"):
        kind = Kind.MARK if what == "mark" else Kind.ZERO
        js[i] = (Control(**{**f, "kind": kind, "data_len": 0, "data_crc": 0,
                            "length": 0 if what == "mark" else ctl.length}).with_ccrc(), b"")
    return what, js


def test_the_loop_stages_exactly_what_the_python_path_takes(tmp_path):
    """Random batches, most with one fault: staged or handed up as Python decides."""
    g = make_group(tmp_path)
    pair = Pair(g)
    r = random.Random(7)
    expect = 1
    staged = handed = 0
    for _ in range(400):
        what, js = mutants(r, expect)
        raw = frame_bytes(js)
        body = raw[p.HEADER_SIZE:-p.TRAILER_SIZE]
        want = python_takes(g, body, expect)
        got = pair.send(raw)
        if want:
            assert got == m.NEED, what
            expect += len(js)
            assert pair.n.rx.staged_end == expect - 1
            staged += 1
        else:
            assert got == m.FRAME, what
            ftype, flags, taken = pair.n.rx.take_frame()
            assert (ftype, taken) == (FrameType.JNLWR, body)
            handed += 1
    assert staged > 40 and handed > 200       # both ways were taken, often


def test_other_frames_go_up_whole_and_bad_bytes_get_the_parsers_error(tmp_path):
    g = make_group(tmp_path)
    pair = Pair(g)
    hb = Frame(FrameType.HEARTBEAT, b"12345678").serialize()
    assert pair.send(hb) == m.FRAME
    assert pair.n.rx.take_frame() == (FrameType.HEARTBEAT, 0, b"12345678")
    r = random.Random(3)
    good = frame_bytes([journal(1, r)])
    for flip in (0, 5, 7, 10, 13, len(good) - 1, 40):   # magic, type, flags, length, HCRC, BCRC, body
        g2 = make_group(tmp_path / f"f{flip}")
        pair2 = Pair(g2)
        bad = bytearray(good)
        bad[flip] ^= 0x40
        got = pair2.send(bytes(bad))
        rest = pair2.n.rx.take_rest()
        try:
            frames = p.FrameParser().feed(rest)
        except p.ProtocolError:
            assert got == m.BAD, flip
            continue
        # (a flip the parser takes: an unknown journal, not bytes gone wrong)
        assert got in (m.FRAME, m.NEED) and frames, flip


def test_applies_in_order_and_never_past_the_mark(tmp_path):
    """The restorer's own steps over journals the loop staged: the SVOLs hold
    exactly the prefix up to ``applied``, which never passes the saved mark."""
    g = make_group(tmp_path)
    pair = Pair(g)
    g.native = pair.n
    r = random.Random(11)
    images = [bytearray(SIZE), bytearray(SIZE)]
    history = [None]
    seq = 1
    for _ in range(30):
        js = [journal(seq + k, r, zeros=0.2) for k in range(r.randint(1, 5))]
        seq += len(js)
        history += js
        assert pair.send(frame_bytes(js)) == m.NEED
        g.stream.ext_end = pair.n.rx.staged_end
        g.stream.received += len(js)
        for _ in range(r.randint(0, 2)):
            if r.random() < 0.5 and (mark := g.mark_due()) is not None:
                g.save_mark(mark)
            before = g.applied
            n = g.restore(r.randint(1, 9))
            assert g.applied == before + n <= g.stream.mark
            for ctl, data in history[before + 1:g.applied + 1]:
                images[ctl.idx][ctl.address:ctl.address + ctl.length] = data or bytes(ctl.length)
            for i in (0, 1):
                assert g.volumes[i].read(0, SIZE) == images[i], (g.applied, i)
            if r.random() < 0.3:
                g.checkpoint()
    assert g.applied > 30                      # most of it went through


def test_the_tls_session_is_taken_over_only_when_it_is_this_pythons(tmp_path):
    """The SSL pointer is read from ``_ssl._SSLSocket`` and checked: OpenSSL
    must say it belongs to that object, and the OpenSSL must be Python's."""
    from tricopy.host.tools.bench_tls import memory_pair, site_contexts
    s, c, bios = memory_pair(*site_contexts(tmp_path))     # the sites' own contexts
    assert m.ssl_ok(s._sslobj, ssl.OPENSSL_VERSION_NUMBER)
    with pytest.raises(RuntimeError, match="OpenSSL"):
        m.ssl_ok(s._sslobj, ssl.OPENSSL_VERSION_NUMBER + 1)
    with pytest.raises(TypeError):
        m.ssl_ok(object(), ssl.OPENSSL_VERSION_NUMBER)
    # Bytes the client seals come out of the loop as staged journals.
    g = make_group(tmp_path / "g")
    a, b = socket.socketpair()
    b.setblocking(False)
    n = NativeRestore(g, b.detach(), s._sslobj)
    r = random.Random(5)
    js = [journal(k, r) for k in (1, 2, 3)]
    c.write(frame_bytes(js))
    a.sendall(bios[3].read())
    assert n.rx.pump() == m.NEED and n.rx.staged_end == 3
    n.close()


def test_a_full_stage_stops_reading_until_the_restorer_applies(tmp_path):
    """Bounded memory as on the Python path: past the group's stage limit the
    loop stops taking frames (TCP pushes back on the relay) and goes on once
    journals were applied."""
    g = make_group(tmp_path)
    g.stage_limit = 3 * BLOCK + 2 * p.CONTROL_SIZE
    pair = Pair(g)
    g.native = pair.n
    r = random.Random(2)
    js = [journal(k, r) for k in range(1, 7)]
    frames = [[j] for j in js]
    raw = b"".join(frame_bytes(f) for f in frames)
    assert pair.send(raw) == m.FULL
    held = pair.n.rx.staged
    assert 0 < held < 6 and pair.n.rx.staged_bytes <= g.stage_limit
    g.stream.ext_end = pair.n.rx.staged_end
    g.save_mark(g.mark_due())
    assert g.restore() == held and pair.n.rx.staged == 0
    while pair.n.rx.staged_end < 6:
        got = pair.n.rx.pump()
        assert got in (m.NEED, m.FULL)
        g.stream.ext_end = pair.n.rx.staged_end
        if (mark := g.mark_due()) is not None:
            g.save_mark(mark)
        g.restore()
    g.stream.ext_end = pair.n.rx.staged_end
    if (mark := g.mark_due()) is not None:
        g.save_mark(mark)
    g.restore()
    assert g.applied == 6


def test_an_svol_write_error_suspends_before_the_journal_that_failed(tmp_path):
    """A write the SVOL refuses: as on the Python path, that journal and those
    after it are not applied, the restore point stays before them, the group
    suspends and says why."""
    import os
    g = make_group(tmp_path)
    pair = Pair(g)
    g.native = pair.n
    r = random.Random(4)
    js = [journal(k, r) for k in range(1, 9)]
    for ctl, _ in js:
        js[ctl.seq - 1] = (Control(**{**vars(ctl), "idx": 0 if ctl.seq <= 4 else 1}).with_ccrc(),
                           js[ctl.seq - 1][1])
    assert pair.send(frame_bytes(js)) == m.NEED
    g.stream.ext_end = pair.n.rx.staged_end
    g.save_mark(g.mark_due())
    # SVOL 1 (journals 5..8) now refuses writes: its descriptor is read-only
    ro = os.open(g.volumes[1].path, os.O_RDONLY)
    os.dup2(ro, g.volumes[1]._fd)
    os.close(ro)
    g.restore()
    assert g.grsts == "SUSP" and "journal seq 5" in g.reason, g.reason
    assert g.applied == 4
    g.checkpoint()
    assert g.last_restored == 4 and g.restore() == 0
