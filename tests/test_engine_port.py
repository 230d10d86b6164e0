"""Engine backends: ModelEngine in process, PortEngine over pyserial URLs and
SocketEngine over asyncio TCP (the sim backend's link) against ``engine serve``
(the same byte protocol as the Verilator harness and boards)."""

from __future__ import annotations

import argparse
import asyncio
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from tricopy.host.wire import protocol as P
from tricopy.host.engine.base import (EngineError, EngineNak, EngineTimeout, ModelEngine,
                                      open_engine)
from tricopy.host.engine.model import EngineModel
from tricopy.host.engine.port import PortEngine, SocketEngine
from tricopy.host.engine.serve import parse_listen, register, serve
from tricopy.host.wire.protocol import Kind, LoadFlag as LF, Status as S

FREEZE = LF.TIME | LF.FREEZE


def journal(n: int, tag: int = 0, epoch: int = 0) -> tuple[P.Control, bytes]:
    data = bytes((i * 5 + tag) & 0xFF for i in range(n))
    return P.Control(length=n, data_len=n, data_crc=P.crc32c(data), tag=tag, epoch=epoch,
                     kind=Kind.UPDATE, address=8192), data


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def link(kind: str, url: str, **kw):
    """The engine link of ``kind`` to a ``socket://host:port`` URL."""
    if kind == "pyserial":
        return PortEngine(url, **kw)
    host, port = url.removeprefix("socket://").rsplit(":", 1)
    return SocketEngine(host, int(port), **kw)


LINKS = pytest.mark.parametrize("kind", ["pyserial", "asyncio"])


@pytest.fixture
def server():
    with serve(2048, clock=lambda: 0) as srv:
        yield srv


async def script(engine) -> list:
    """A request sequence touching every Engine method; returns everything answered."""
    out = [await engine.load(FREEZE, time=123456)]
    for i in range(12):                              # enough to fill and hit FULL
        out.append(await engine.submit(*journal(i * 50, tag=i)))
    out.append(await engine.read(1, 3))
    out.append(await engine.release(2))
    out.append(await engine.release(2))               # idempotent
    out.append(await engine.release(99))              # NOT_FOUND, returned not raised
    out.append(await engine.submit(*journal(10, epoch=7)))   # STALE_EPOCH
    out.append(await engine.status())
    with pytest.raises(EngineNak) as info:
        await engine.read(1, 1)
    out.append(info.value.status)
    return out


def test_model_engine_semantics():
    async def go():
        engine = open_engine("model", size=2048, clock=lambda: 0)
        assert isinstance(engine, ModelEngine) and engine.name == "model"
        out = await script(engine)
        acks = out[1:13]                             # growing journals: OKs, then FULLs
        k = sum(a.status == S.OK for a in acks)
        assert [a.status for a in acks] == [S.OK] * k + [S.FULL] * (12 - k) and k >= 5
        assert [a.seq for a in acks[:k]] == list(range(1, k + 1))
        assert [a.tag for a in acks] == list(range(12))
        (c1, d1), (c2, d2), (c3, d3) = out[13]
        assert (c1.seq, c2.seq, c3.seq) == (1, 2, 3) and d2 == journal(50, tag=1)[1]
        assert out[16].status == S.NOT_FOUND and out[17].status == S.STALE_EPOCH
        assert out[18].tail_seq == 3 and out[18].now == 123456
        assert out[19] == S.NOT_FOUND
        await engine.close()
    run(go())


@LINKS
def test_port_engine_answers_like_the_model(server, kind):
    """Same requests, same answers: the byte path adds nothing and loses nothing."""
    async def go():
        async with link(kind, server.url, timeout=5) as port:
            via_port = await script(port)
        via_model = await script(ModelEngine(EngineModel(2048, clock=lambda: 0)))
        return via_port, via_model
    via_port, via_model = run(go())
    assert via_port == via_model


def test_open_engine_port_and_state_outlives_the_connection(server):
    async def go():
        engine = open_engine("port", size=0, url=server.url)
        await engine.load(FREEZE, time=1)
        ack = await engine.submit(*journal(100, tag=5))
        await engine.close()
        engine = open_engine("board", size=0, url=server.url)
        st = await engine.status()
        got = await engine.read(1, 10)
        await engine.close()
        return ack, st, got
    ack, st, got = run(go())
    assert (ack.status, ack.seq, ack.tag) == (S.OK, 1, 5)
    assert (st.next_seq, st.held, st.ring_size) == (2, 1, 2048)
    assert got == [(got[0][0], journal(100, tag=5)[1])] and got[0][0].ccrc_ok()


@LINKS
def test_concurrent_callers_are_serialized(server, kind):
    async def go():
        async with link(kind, server.url) as engine:
            await engine.load(FREEZE | LF.CLEAR, time=9)
            acks = await asyncio.gather(*(engine.submit(*journal(3, tag=t)) for t in range(15)))
            return acks, await engine.read(1, 100)
    acks, journals = run(go())
    assert sorted(a.seq for a in acks) == list(range(1, 16))     # 15 x 128 B fit in 2048
    assert all(a.status == S.OK for a in acks)
    assert {a.tag: a.seq for a in acks} == {c.tag: c.seq for c, _ in journals}


def test_loop_url_detects_an_out_of_step_link():
    """loop:// hands our own request back: not the answer, so it must be refused."""
    async def go():
        async with PortEngine("loop://", timeout=0.3) as engine:
            with pytest.raises(EngineError, match="STATUS_RESP"):
                await engine.status()
            with pytest.raises(EngineError):
                await engine.release(1)
    run(go())


class DelayProxy:
    """TCP proxy that holds back the engine's first answer for ``delay`` seconds."""

    def __init__(self, target: str, delay: float):
        host, port = target.removeprefix("socket://").rsplit(":", 1)
        self.target = (host, int(port))
        self.delay = delay
        self.delivered = threading.Event()     # the held-back answer has been passed on
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"socket://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        client, _ = self.listener.accept()
        upstream = socket.create_connection(self.target)
        threading.Thread(target=self._pump, args=(client, upstream, 0), daemon=True).start()
        self._pump(upstream, client, self.delay, self.delivered)

    @staticmethod
    def _pump(src, dst, delay, delivered=None):
        try:
            while data := src.recv(65536):
                if delay:
                    time.sleep(delay)        # the fault being emulated: a slow link
                    delay = 0
                    dst.sendall(data)
                    delivered.set()
                    continue
                dst.sendall(data)
        except OSError:
            pass


@LINKS
def test_timeout_then_resync(server, kind):
    proxy = DelayProxy(server.url, delay=0.6)

    async def go():
        async with link(kind, proxy.url, timeout=0.2) as engine:
            with pytest.raises(EngineTimeout):
                await engine.load(FREEZE, time=77)
            # the late ACK is now on its way into our buffer (not read yet)
            assert await asyncio.to_thread(proxy.delivered.wait, 5)
            st = await engine.status()                # resync drops it, then a clean answer
            ack = await engine.submit(*journal(1, tag=3))
            return st, ack
    st, ack = run(go())
    assert st.now == 77                               # the LOAD did reach the engine
    assert (ack.status, ack.seq, ack.tag) == (S.OK, 1, 3)
    proxy.listener.close()


@LINKS
def test_silent_engine_times_out(kind):
    listener = socket.create_server(("127.0.0.1", 0))
    url = f"socket://127.0.0.1:{listener.getsockname()[1]}"

    async def go():
        async with link(kind, url, timeout=0.2) as engine:
            t0 = time.monotonic()
            with pytest.raises(EngineTimeout):
                await engine.status()
            with pytest.raises(EngineTimeout, match="resync"):
                await engine.status()
            return time.monotonic() - t0
    elapsed = run(go())
    assert elapsed < 2
    listener.close()


def test_open_engine_errors():
    with pytest.raises((EngineError, ValueError), match="power of two"):
        open_engine("sim", size=1000)
    with pytest.raises(ValueError, match="'fpga'"):
        open_engine("fpga", size=1024)
    with pytest.raises(ValueError, match="url"):
        open_engine("board", size=1024)
    with pytest.raises(EngineError, match="cannot open"):
        open_engine("port", size=1024, url="socket://127.0.0.1:1")
    with pytest.raises(ValueError, match="100"):
        open_engine("model", size=100)


def test_parse_listen():
    assert parse_listen("0.0.0.0:7000") == ("0.0.0.0", 7000)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("7000", "host:", "host:port", "h:70000"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_listen(bad)


def test_register_adds_the_subcommand():
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["engine", "serve", "--size", "64K", "--listen", "127.0.0.1:0"])
    assert (args.size, args.listen, callable(args.func)) == (65536, "127.0.0.1:0", True)
    with pytest.raises(SystemExit):
        parser.parse_args(["engine", "serve", "--size", "lots"])


def test_engine_serve_process():
    """The CLI entry as a separate process, driven over its socket."""
    proc = subprocess.Popen([sys.executable, "-m", "tricopy.host.engine.serve", "--size", "4K"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "listening on socket://" in line, line + proc.stderr.read()
        url = line.split()[-1]

        async def go():
            async with PortEngine(url) as engine:
                await engine.load(FREEZE, time=5)
                ack = await engine.submit(*journal(4000))
                return ack, await engine.status()
        ack, st = run(go())
        assert (ack.status, st.ring_size, st.free) == (S.OK, 4096, 0)
    finally:
        proc.terminate()
        proc.wait(10)


def test_engine_serve_process_refuses_a_bad_size():
    proc = subprocess.run([sys.executable, "-m", "tricopy.host.engine.serve", "--size", "100"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "not 100" in proc.stderr


@pytest.mark.parametrize("ftype", [P.FrameType.HELLO, P.FrameType.STATUS, P.FrameType.RELEASE,
                                   P.FrameType.JNLDESC, P.FrameType.HEARTBEAT])
def test_a_huge_length_is_refused_at_the_header(server, ftype):
    """A header with a good HCRC that announces more body than its TYPE can
    carry (MAX_LENGTH) is answered at once with NAK BAD_FRAME, and the frame
    right behind it is answered too: the engine hunts instead of waiting for
    up to MAX_BODY bytes that never come (issue 12)."""
    head = struct.pack("<IBBHI", P.MAGIC, P.VERSION, ftype, 0, P.MAX_BODY)
    head += struct.pack("<I", P.crc32c(head))
    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(head + P.Frame(P.FrameType.STATUS).serialize())
        parser, got = P.FrameParser(), []
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            got += parser.feed(sock.recv(4096))      # a timeout here fails the test
    nak = P.Ack.from_frame(got[0])
    assert (nak.status, nak.req_type) == (S.BAD_FRAME, ftype)
    assert got[1].type == P.FrameType.STATUS_RESP
    assert P.EngineStatus.unpack(got[1].body).naks == 1
