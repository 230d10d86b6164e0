"""Fuzzing the TLS variants of the sites' servers (the default configuration).

test_fuzz_sites.py fuzzes the plaintext servers, where any bytes reach the
parsers.  With TLS two more layers meet a stranger's or a broken peer's
bytes, and both are fuzzed here against real site processes:

* **the handshake** of every TLS listener (the relay's and the secondary's
  data ports, a TCP control socket): a ClientHello from the corpus with
  byte-level mutations, or any bytes, then the end of the connection;
* **an authenticated client's requests**: after a real mutual-TLS
  handshake with the ``admin`` certificate, the control-line strategy of
  test_fuzz_sites.py on a TCP control socket; an example ends when every
  line is answered (or the site closes the connection).  (An authenticated
  peer's frames on a data port are not fuzzed here: such a stream has no
  end the test can wait for without a timer; the plaintext data-port
  fuzzers reach the same parsers.)

Properties, after every example: whatever the site answered is whole
frames (answer lines with ``ok`` and no leaked Python type, for control),
the site is alive with no traceback in its log, and a new TLS connection is
served (a HELLO gets a HELLO or a NAK; ``status`` is answered).
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys

import pytest
from hypothesis import given, strategies as st

from e2e.cluster import Cluster, client_tls, free_port, test_certs
from e2e.test_links import wait_for
from tricopy.host.rcm import control
from tricopy.host.wire import protocol
from tricopy.host.wire.protocol import FrameType, Role

from .fuzzing import corpus, fuzz_settings, mutated
from .test_fuzz_sites import CONTROL, LEAKS, requests

HELLOS = [data for _, data in corpus("tls")]
UPSTREAM = {"relay": "primary", "secondary": "relay"}      # whose certificate each port takes


def tls_exchange(addr, ctx: ssl.SSLContext, data: bytes, until=None,
                 timeout: float = 10.0) -> bytes:
    """A TLS connection with ``ctx``: send ``data``, read the site's answer
    until the site closes the connection or ``until(answer)`` holds.

    No close_notify from us: asyncio's TLS transport takes a peer's
    close_notify as the end of the connection both ways (a half-close
    would cut off the answer), so the end is the site's or ``until``'s.
    MemoryBIO rather than a wrapped socket keeps a reset or a close in
    mid-record from losing what was already decrypted."""
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_side=False)
    got = bytearray()
    with socket.create_connection(addr, timeout=timeout) as sock:
        def flush() -> None:
            if out.pending:
                sock.sendall(out.read())

        def receive() -> bool:
            try:
                chunk = sock.recv(1 << 16)
            except ConnectionResetError:
                chunk = b""
            if chunk:
                inc.write(chunk)
            else:
                inc.write_eof()
            return bool(chunk)

        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                flush()
                if not receive():
                    raise ConnectionError(f"{addr}: closed during the TLS handshake")
        obj.write(data)
        flush()
        while until is None or not until(bytes(got)):
            try:
                got += obj.read(1 << 16)
                continue
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:              # close_notify, or EOF in mid-record
                break
            flush()                           # (TLS 1.3 may answer a key update)
            if not receive():
                try:                          # what is left in the buffer
                    while chunk := obj.read(1 << 16):
                        got += chunk
                except ssl.SSLError:
                    pass
                break
    return bytes(got)


def _frames(answer: bytes) -> int:
    try:
        return len(protocol.FrameParser().feed(answer))
    except protocol.ProtocolError:
        return 1                              # (garbage: stop reading, the check says why)


def raw_exchange(addr, data: bytes, timeout: float = 10.0) -> None:
    """Any bytes where a ClientHello belongs, then our end; read until the site closes."""
    with socket.create_connection(addr, timeout=timeout) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(1 << 16):
                pass
        except (ConnectionResetError, BrokenPipeError):
            pass                              # the site refused the connection: fine


def alive(proc: subprocess.Popen, log: str, what: str) -> None:
    assert proc.poll() is None, f"{what} exited:\n" + log[-3000:]
    assert "Traceback" not in log, f"{what} logged a traceback:\n" + log[-4000:]


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("fuzz-tls"), volumes=1)       # TLS on
    cluster.start_all()
    try:
        yield cluster
    finally:
        cluster.stop_all()


@pytest.fixture(scope="module")
def tcp_control(tmp_path_factory):
    """A relay alone (no peers) with its control socket on TCP with mutual
    TLS: (address, process, log path)."""
    root = tmp_path_factory.mktemp("fuzz-tls-control")
    d, port = test_certs(), free_port()
    (root / "site.toml").write_text(
        f'site = "relay"\nlisten = "127.0.0.1:{free_port()}"\ncontrol = "127.0.0.1:{port}"\n'
        f'state_dir = "state"\n'
        f'tls = {{ ca = "{d}/ca.pem", cert = "{d}/relay.pem", key = "{d}/relay.key" }}\n'
        f'[[group]]\ngrnum = 1\ngrname = "g1"\nattr = "INTERMEDIARY"\n'
        f'peer = "127.0.0.1:{free_port()}"\npeer_site = "secondary"\nupstream_site = "primary"\n'
        f'journal = {{ path = "jnl.vol", size = 1048576 }}\n')
    log_path = root / "relay.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tricopy.host.sites_cli", "relay",
                                 "--config", str(root / "site.toml")],
                                stdout=log, stderr=subprocess.STDOUT, cwd=root)
    addr = ("127.0.0.1", port)

    def up() -> bool:
        try:
            return control.call(addr, "status", tls=client_tls("admin"), timeout=2)["ok"]
        except (OSError, control.ControlError):
            return proc.poll() is not None    # (exited: fail below, not in wait_for)
    try:
        wait_for(up, "the relay's TCP control socket")
        alive(proc, log_path.read_text(), "relay")
        yield addr, proc, log_path
    finally:
        proc.terminate()
        proc.wait(10)


def data_port_serves(cluster: Cluster, role: str) -> None:
    """A new authenticated connection gets a HELLO or a NAK for its HELLO."""
    probe_role = Role.PRIMARY if role == "relay" else Role.RELAY
    probe = protocol.Hello(probe_role, 999, 0, 0, "nosuchgroup", "probe").frame().serialize()
    frames = protocol.FrameParser().feed(
        tls_exchange(cluster.data_addr(role), client_tls(UPSTREAM[role]), probe,
                     until=lambda got: _frames(got) >= 1))
    assert frames and frames[0].type in (FrameType.NAK, FrameType.HELLO), frames
    alive(cluster.procs[role], cluster.log(role), role)
    assert control.call(cluster.control_addr(role), "status", timeout=10)["ok"]


def control_serves(tcp_control) -> None:
    addr, proc, log_path = tcp_control
    assert control.call(addr, "status", tls=client_tls("admin"), timeout=10)["ok"]
    alive(proc, log_path.read_text(), "relay (TCP control)")


_HANDSHAKE = mutated(HELLOS, max_mutations=4) | st.binary(max_size=300)


# -- handshakes ------------------------------------------------------------------------------

@pytest.mark.parametrize("role", ["relay", "secondary"])
def test_tls_handshake_corpus(trio, role):
    for raw in HELLOS:
        raw_exchange(trio.data_addr(role), raw)
        data_port_serves(trio, role)


@pytest.mark.parametrize("role", ["relay", "secondary"])
@fuzz_settings(25)
@given(raw=_HANDSHAKE)
def test_tls_data_port_any_handshake(trio, role, raw):
    raw_exchange(trio.data_addr(role), raw)
    data_port_serves(trio, role)


@fuzz_settings(25)
@given(raw=_HANDSHAKE)
def test_tls_control_any_handshake(tcp_control, raw):
    raw_exchange(tcp_control[0], raw)
    control_serves(tcp_control)


# -- an authenticated peer's stream ---------------------------------------------------------

@fuzz_settings(25)
@given(data=st.data())
def test_tls_control_any_request(tcp_control, data):
    lines = data.draw(st.lists(requests("relay") | mutated(CONTROL, max_mutations=3),
                               min_size=1, max_size=4))
    raw = b"".join(lines)
    answer = tls_exchange(tcp_control[0], client_tls("admin"), raw,
                          until=lambda got: got.count(b"\n") >= raw.count(b"\n"))
    got = answer.splitlines(keepends=True)
    assert len(got) == raw.count(b"\n"), (raw, answer)
    for line in got:
        ans = json.loads(line)
        assert isinstance(ans, dict) and isinstance(ans["ok"], bool), ans
        if not ans["ok"]:
            assert ans["type"] not in LEAKS | {"KeyError", "TypeError", "ValueError"}, ans
            assert isinstance(ans["error"], str) and ans["error"], ans
    control_serves(tcp_control)
