"""Fuzzing the live servers of the sites: the control sockets and the data ports.

The three sites run as processes (tests/e2e/cluster.py) with plaintext
links, so the fuzzed bytes reach the frame parser and the HELLO checks
directly (with TLS, a stranger never gets past the handshake; here the
parsers meet every input an authenticated but broken peer could send).
Each example is one connection over a real socket.  Properties:

* **control** (every site's real commands): each complete request line
  gets one answer line, JSON with ``ok``; a refusal has a typed ``type``
  that is not a Python internals leak (IndexError, struct.error, ...);
* **data ports** (the relay's, as the primary would reach it, and the
  secondary's, as the relay would): whatever the site answers is whole,
  valid frames;
* and after every example: the site is alive, its log has no traceback,
  a good request on a *new* connection is still answered (``status`` on
  the control socket, a HELLO on the data port gets a HELLO or a NAK).

These examples may suspend the group or take a link over ("the newest
connection wins"): the property is that each site keeps serving, not
that replication goes on (the chaos runner's subject).
"""

from __future__ import annotations

import base64
import errno
import json
import socket
import string

import pytest
from hypothesis import given, strategies as st

from e2e.cluster import Cluster
from tricopy.host.rcm import control
from tricopy.host.wire import protocol
from tricopy.host.wire.protocol import FrameType, Role

from .fuzzing import corpus, frame_stream, fuzz_settings, mutated, structured_frames

WIRE = [data for _, data in corpus("wire")]
CONTROL = [data for _, data in corpus("control")]

COMMANDS = {
    "primary": ("status", "write", "write_zeroes", "trim", "flush", "read", "jnlg", "digest",
                "mark_out_of_sync", "pair_create", "pair_split", "pair_resync", "pair_delete"),
    "relay": ("status", "jnlg", "pair_set", "fence"),
    "secondary": ("status", "jnlg", "pair_set", "snapshot", "takeover", "digest"),
}
# Commands that may name the real group: the others would end the pair for
# good (pair_delete, takeover, fence), which is refused by no input rule.
REAL_GROUP_OK = {"status", "jnlg", "digest", "snapshot", "mark_out_of_sync"}
# Answer types that are Python's internals, not a refusal the site means.
LEAKS = {"IndexError", "error", "OverflowError", "AttributeError", "ZeroDivisionError",
         "RecursionError", "UnicodeDecodeError", "JSONDecodeError", "AssertionError",
         "RuntimeError", "NameError", "UnboundLocalError", "NotImplementedError", "MemoryError",
         "InvalidOperation", "struct.error", "Error"}


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("fuzz-sites"), tls=False, volumes=1)
    cluster.start_all()
    try:
        yield cluster
    finally:
        cluster.stop_all()


def exchange(addr, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data``, close our side, read until the site closes (or resets)."""
    if isinstance(addr, str):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    out = bytearray()
    with s:
        s.connect(addr)
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            while chunk := s.recv(1 << 16):
                out += chunk
        except OSError as exc:          # the site closed a connection it would not serve
            if exc.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN):
                raise
    return bytes(out)


def still_serving(cluster: Cluster, role: str) -> None:
    proc = cluster.procs[role]
    assert proc.poll() is None, f"{role} exited:\n" + cluster.log(role)[-3000:]
    log = cluster.log(role)
    assert "Traceback" not in log, f"{role} logged a traceback:\n" + log[-4000:]
    assert control.call(cluster.control_addr(role), "status", timeout=10)["ok"]


# -- control sockets ---------------------------------------------------------------------

_INTS = st.sampled_from((-1, 0, 1, 4095, 4096, 1 << 20, (1 << 20) - 4096, 1 << 31, 1 << 32,
                         1 << 63, 1 << 64, -(1 << 63))) | st.integers()
_NUMBERS = _INTS | st.sampled_from((float("inf"), float("-inf"), float("nan"), 0.5, 4096.0,
                                    1e300, "4096", "x", None))
_JSON = st.recursive(st.none() | st.booleans() | _INTS | st.floats()
                     | st.text(string.printable, max_size=8),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(string.ascii_lowercase, max_size=5), inner,
                                       max_size=3), max_leaves=5)
_DATA = st.binary(max_size=9000).map(lambda b: base64.b64encode(b).decode())
_ARGS = {"idx": _NUMBERS, "offset": _NUMBERS, "length": _NUMBERS, "first": _NUMBERS,
         "count": _NUMBERS, "relay_last_tag": _NUMBERS, "epoch": _NUMBERS,
         "data": _DATA | st.sampled_from(("", "====", "not base64!", "AAA")),
         # A few names only: each snapshot of the real group copies the SVOLs.
         "name": st.sampled_from(("fz1", "fz2", "", ".", "..", "../fz", "a/b", "fz\n", "é")),
         "chunks": st.lists(_NUMBERS, max_size=4),
         "force": st.booleans(), "state": st.sampled_from(("PAIR", "SMPL", "COPY", "SUSP", "x"))}
# The arguments each command reads (host/primary/site.py, relay/site.py,
# secondary/site.py): drawn for it most of the time, so that the handler
# gets past the first missing key to the values themselves.
_WANTS = {"write": ("idx", "offset", "data"), "write_zeroes": ("idx", "offset", "length"),
          "trim": ("idx", "offset", "length"), "read": ("idx", "offset", "length"),
          "digest": ("idx", "first", "count"), "mark_out_of_sync": ("idx", "chunks"),
          "pair_resync": ("relay_last_tag",), "pair_set": ("state", "epoch"),
          "fence": ("epoch",), "snapshot": ("name",), "takeover": ("force",)}


@st.composite
def requests(draw, role: str) -> bytes:
    cmd = draw(st.sampled_from(COMMANDS[role]) | st.text(max_size=6))
    req = {"id": draw(_JSON), "cmd": cmd}
    keys = {k for k in _WANTS.get(cmd, ()) if draw(st.integers(0, 9))}
    keys |= draw(st.sets(st.sampled_from(sorted(_ARGS)), max_size=2))
    for key in sorted(keys):
        req[key] = draw(_ARGS[key] | _JSON) if not draw(st.integers(0, 4)) else draw(_ARGS[key])
    if cmd in REAL_GROUP_OK and draw(st.integers(0, 3)):
        req["group"] = "g1"
    elif draw(st.booleans()):
        req["group"] = draw(_JSON.filter(lambda g: g != "g1"))
    if draw(st.integers(0, 5)) == 0:
        del req["id"]
    return json.dumps(req).encode() + b"\n"


def check_control(cluster: Cluster, role: str, raw: bytes) -> None:
    answer = exchange(cluster.control_addr(role), raw)
    lines = answer.splitlines(keepends=True)
    assert len(lines) == raw.count(b"\n"), (raw, answer)
    for line in lines:
        assert line.endswith(b"\n")
        ans = json.loads(line)
        assert isinstance(ans, dict) and isinstance(ans["ok"], bool), ans
        if not ans["ok"]:
            assert ans["type"] not in LEAKS, ans
            assert isinstance(ans["error"], str) and ans["error"], ans
    still_serving(cluster, role)


@pytest.mark.parametrize("role", ["primary", "relay", "secondary"])
def test_control_corpus(trio, role):
    for _, raw in corpus("control"):
        check_control(trio, role, raw)


@pytest.mark.parametrize("role", ["primary", "relay", "secondary"])
@fuzz_settings(100)
@given(data=st.data())
def test_control_socket_any_request(trio, role, data):
    lines = data.draw(st.lists(requests(role) | mutated(CONTROL, max_mutations=3),
                               min_size=1, max_size=4))
    check_control(trio, role, b"".join(lines))


# -- data ports ----------------------------------------------------------------------------

def check_data_port(cluster: Cluster, role: str, raw: bytes) -> None:
    answer = exchange(cluster.data_addr(role), raw)
    parser = protocol.FrameParser()
    parser.feed(answer)                     # a ProtocolError: the site sent garbage
    assert parser.buffered == 0, "the site sent a partial frame"
    # A new connection is still served: a HELLO for a group that is not
    # there gets its NAK (not a silence, not a reset).
    probe_role = Role.PRIMARY if role == "relay" else Role.RELAY
    probe = protocol.Hello(probe_role, 999, 0, 0, "nosuchgroup", "probe").frame().serialize()
    frames = protocol.FrameParser().feed(exchange(cluster.data_addr(role), probe))
    assert frames and frames[0].type in (FrameType.NAK, FrameType.HELLO), frames
    still_serving(cluster, role)


@pytest.mark.parametrize("role", ["relay", "secondary"])
def test_data_port_corpus(trio, role):
    for _, raw in corpus("wire"):
        check_data_port(trio, role, raw)


@pytest.mark.parametrize("role", ["relay", "secondary"])
@fuzz_settings(100)
@given(data=st.data())
def test_data_port_any_bytes(trio, role, data):
    check_data_port(trio, role, data.draw(structured_frames(WIRE) | frame_stream(WIRE)))


def test_mark_out_of_sync_refuses_chunks_outside_the_volume(trio):
    """Regression (found by fuzzing): chunk -1 marked the volume's last chunk
    without a word, chunk 99999999 was an IndexError."""
    before = trio.status("primary")["copy_pending_bytes"]
    for chunk in (-1, 99999999):
        with pytest.raises(control.ControlError, match="'chunks'") as info:
            control.call(trio.control_addr("primary"), "mark_out_of_sync", group="g1", idx=0,
                         chunks=[chunk])
        assert info.value.type == "ArgumentError"
    assert trio.status("primary")["copy_pending_bytes"] == before
