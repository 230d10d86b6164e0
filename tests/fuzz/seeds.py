"""Writes the seed corpus of the fuzz targets (``corpus/<target>/seed-*``).

``python -m tests.fuzz.seeds`` (from the repository root) makes the files
again; they are committed, so the fuzzers never depend on this script
running.  Regression inputs (``regress-*``) are written by hand when a
crash is found and are never touched here.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from tricopy.host.nbd import protocol as nbd
from tricopy.host.wire import protocol as p
from tricopy.host.wire.protocol import Control, Frame, FrameType, Kind, LoadFlag, Role, Status

CORPUS = Path(__file__).parent / "corpus"


def _journal(kind: int, data: bytes = b"", *, address: int = 4096, length: int | None = None,
             seq: int = 0, tag: int = 1, epoch: int = 0) -> Frame:
    ctl = Control(seq=seq, address=address, length=len(data) if length is None else length,
                  data_len=len(data), data_crc=p.crc32c(data), epoch=epoch, kind=kind, tag=tag,
                  group=1)
    return Frame(FrameType.JNLWR, p.journal_body(ctl.with_ccrc(), data))


def wire_seeds() -> dict[str, bytes]:
    """Frames as the sites send them (one per file, and one batch)."""
    hello = p.Hello(Role.RELAY, 1, 0, 0, "g1", "relay").frame()
    frames = {
        "hello-relay": hello,
        "hello-primary": p.Hello(Role.PRIMARY, 1, 3, 77, "g1", "primary").frame(),
        "heartbeat": Frame(FrameType.HEARTBEAT),
        "jnlwr-update": _journal(Kind.UPDATE, bytes(range(256)) * 2),
        "jnlwr-zero": _journal(Kind.ZERO, length=65536),
        "jnlwr-mark": _journal(Kind.MARK, address=p.Mark.COPY_BEGIN, length=0),
        "ack": p.Ack(seq=5, time=123, jofs=128, tag=1).frame(),
        "nak-stale-epoch": p.Ack(tag=2, status=Status.STALE_EPOCH,
                                 req_type=FrameType.HELLO).frame(),
        "jnlrd": p.JnlRd(1, 8).frame(),
        "release": p.Release(4).frame(),
        "release-at": p.Release(4, 640).frame(),
        "load": p.Load(LoadFlag.SEQ | LoadFlag.EPOCH, seq=10, epoch=2).frame(),
        "load-ring": p.Load(LoadFlag.RING | LoadFlag.DESC, size=1 << 20).frame(),
        "status": Frame(FrameType.STATUS),
        "status-resp": p.EngineStatus(0, 0, 4096, 4096, 1, 1, 0, 0, 0, 0, 0, 4096).frame(),
        "jnldesc": p.descriptor_frame(Control(address=0, length=4096, data_len=4096,
                                              kind=Kind.UPDATE, tag=9)),
    }
    out = {name: f.serialize() for name, f in frames.items()}
    out["batch"] = b"".join(f.serialize() for f in (
        hello, _journal(Kind.UPDATE, b"x" * 64, tag=1), _journal(Kind.TRIM, length=4096, tag=2),
        Frame(FrameType.HEARTBEAT), _journal(Kind.MARK, address=p.Mark.COPY_END, length=0, tag=3)))
    # A primary's session as the relay sees it: HELLO at epoch 0, journals
    # numbered by PSEQ in TAG (the data port fuzzers start from it).
    out["batch-primary"] = b"".join(f.serialize() for f in (
        p.Hello(Role.PRIMARY, 1, 0, 0, "g1", "primary").frame(),
        _journal(Kind.UPDATE, b"p" * 4096, address=0, tag=1),
        _journal(Kind.ZERO, address=4096, length=4096, tag=2),
        _journal(Kind.UPDATE, b"q" * 512, address=8192, tag=3)))
    return out


def engine_seeds() -> dict[str, bytes]:
    """Request streams as the relay drives its engine (a data ring of the model)."""
    s = lambda *frames: b"".join(f.serialize() for f in frames)    # noqa: E731
    hello = p.Hello(Role.RELAY, 0, 0, 0, "", "relay").frame()
    return {
        "hello-status": s(hello, Frame(FrameType.STATUS)),
        "write-read-release": s(
            p.Load(LoadFlag.SEQ | LoadFlag.TIME | LoadFlag.FREEZE, seq=100, time=5).frame(),
            _journal(Kind.UPDATE, b"a" * 100, tag=1), _journal(Kind.ZERO, length=512, tag=2),
            _journal(Kind.MARK, address=1, length=0, tag=3),
            p.JnlRd(100, 3).frame(), p.Release(101).frame(), Frame(FrameType.STATUS)),
        "fill-and-wrap": s(*[_journal(Kind.UPDATE, bytes([i]) * 200, tag=i) for i in range(8)],
                           p.Release(3).frame(),
                           *[_journal(Kind.UPDATE, bytes([i]) * 150, tag=i) for i in range(8, 12)]),
        "descriptor-ring": s(p.Load(LoadFlag.RING | LoadFlag.DESC, size=1024).frame(),
                             p.descriptor_frame(Control(length=100, data_len=100,
                                                        kind=Kind.UPDATE, tag=1)),
                             p.descriptor_frame(Control(length=0, kind=Kind.MARK, tag=2)),
                             p.Release(1, 256).frame()),
        "epoch": s(p.Load(LoadFlag.EPOCH, epoch=7).frame(), _journal(Kind.UPDATE, b"b", tag=5),
                   _journal(Kind.UPDATE, b"c", tag=6, epoch=7)),
        "heartbeat-token": s(Frame(FrameType.HEARTBEAT, b"12345678")),
    }


EXPORT = "vol"


def _opt(option: int, data: bytes = b"") -> bytes:
    return struct.pack(">QII", nbd.IHAVEOPT, option, len(data)) + data


def _go(name: str = EXPORT, infos=(nbd.NBD_INFO_BLOCK_SIZE,), option=nbd.NBD_OPT_GO) -> bytes:
    raw = name.encode()
    return _opt(option, struct.pack(">I", len(raw)) + raw + struct.pack(">H", len(infos))
                + b"".join(struct.pack(">H", i) for i in infos))


def _req(cmd: int, offset: int = 0, length: int = 0, flags: int = 0, handle: int = 1,
         data: bytes = b"") -> bytes:
    return struct.pack(">IHHQQI", nbd.NBD_REQUEST_MAGIC, flags, cmd, handle, offset, length) + data


def nbd_seeds() -> dict[str, bytes]:
    """Client byte streams: handshakes and transmission requests (export "vol", 4 KiB blocks)."""
    flags = struct.pack(">I", nbd.NBD_FLAG_C_FIXED_NEWSTYLE | nbd.NBD_FLAG_C_NO_ZEROES)
    go = flags + _opt(nbd.NBD_OPT_STRUCTURED_REPLY) + _go()
    return {
        "go-requests": go + _req(1, 0, 4096, data=b"w" * 4096, handle=1)
        + _req(0, 0, 4096, handle=2) + _req(1, 4096, 4096, nbd.NBD_CMD_FLAG_FUA, 3, b"z" * 4096)
        + _req(3, handle=4) + _req(4, 8192, 8192, handle=5)
        + _req(6, 0, 4096, nbd.NBD_CMD_FLAG_NO_HOLE, 6) + _req(2, handle=7),
        "export-name": struct.pack(">I", nbd.NBD_FLAG_C_FIXED_NEWSTYLE) + _opt(
            nbd.NBD_OPT_EXPORT_NAME, EXPORT.encode()) + _req(0, 0, 4096) + _req(2),
        "list-info-abort": flags + _opt(nbd.NBD_OPT_LIST) + _go(option=nbd.NBD_OPT_INFO,
                                                               infos=(0, 1, 2, 3))
        + _opt(99) + _opt(nbd.NBD_OPT_STARTTLS) + _opt(nbd.NBD_OPT_ABORT),
        "bad-requests": flags + _go() + _req(0, 1, 4096) + _req(0, 1 << 40, 4096)
        + _req(1, 0, 64 << 20) + _req(9, handle=9) + _req(3, 0, 0, 0x8000) + _req(2),
    }


def control_seeds() -> dict[str, bytes]:
    """Control request lines (JSON lines, host/rcm/control.py)."""
    lines = [
        {"id": 1, "cmd": "status"},
        {"id": 2, "cmd": "write", "idx": 0, "offset": 4096, "data": "AAAA"},
        {"id": 3, "cmd": "read", "idx": 0, "offset": 0, "length": 4096},
        {"id": "x", "cmd": "jnlg"},
        {"id": [1], "cmd": "nope"},
    ]
    out = {f"line-{i}": json.dumps(line).encode() + b"\n" for i, line in enumerate(lines)}
    out["many"] = b"".join(out.values()) + b"[1,2]\n\"str\"\n{}\n"
    return out


CONFIG_RELAY = '''site = "relay"
listen = "127.0.0.1:7002"
control = "unix:control.sock"
state_dir = "state"
tls = { ca = "certs/ca.pem", cert = "certs/relay.pem", key = "certs/relay.key" }
heartbeat = 0.5

[limits]
connections = 64
control_line = 65536

[[group]]
grnum = 1
grname = "db"
attr = "INTERMEDIARY"
peer = "127.0.0.1:7003"
peer_site = "secondary"
upstream_site = "primary"
durability = "fsync"
journal = { path = "jnl1.vol", size = 16777216 }
'''

CONFIG_PRIMARY = '''site = "primary"
control = "127.0.0.1:7100"
control_plaintext = true
state_dir = "/var/lib/tricopy"
tls = false
metrics = "127.0.0.1:9100"

[nbd]
listen = "127.0.0.1:10809"

[[group]]
grnum = 1
grname = "db"
attr = "MASTER"
peer = "127.0.0.1:7002"
link_suspend_after = 30
full_suspend_after = 10.5

[[volume]]
idx = 0
group = 1
path = "pvol0.img"
size = 1048576
block_size = 4096
create = true

[[volume]]
idx = 1
group = 1
path = "pvol1.img"
size = 2097152
'''

CONFIG_SECONDARY = '''site = "secondary"
listen = "[::1]:7003"
tls = false

[[group]]
grnum = 7
grname = "db"
attr = "restore"
epoch = 2
restore_interval = 0.25
initial_state = "PAIR"

[[volume]]
idx = 0
group = 7
path = "svol0.img"
size = 1048576
create = true
'''


def config_seeds() -> dict[str, bytes]:
    return {"relay.toml": CONFIG_RELAY.encode(), "primary.toml": CONFIG_PRIMARY.encode(),
            "secondary.toml": CONFIG_SECONDARY.encode()}


TARGETS = {"wire": wire_seeds, "engine": engine_seeds, "nbd": nbd_seeds,
           "control": control_seeds, "config": config_seeds}


def main() -> None:
    for target, make in TARGETS.items():
        folder = CORPUS / target
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in make().items():
            (folder / f"seed-{name}").write_bytes(data)


if __name__ == "__main__":
    main()
