"""Transport security and control authentication (docs/security.md), against real sites.

Every refused peer — no certificate, a certificate of another CA, a
certificate of the right CA for another site, no TLS at all — is turned away
before HELLO with one log line that says why; the HELLO refusals (wrong
group, stale epoch) log one line too.  The attack of the outside test is
replayed: a plain socket posing as the relay sends a JNLWR to the
secondary's data port; nothing reaches the SVOL and replication goes on.
Control: an unauthenticated client changes nothing; a line over the limit
closes only its own connection, and so do too many requests or request bytes
unanswered at once (limits.control_inflight, limits.control_buffered).
"""

import asyncio
import base64
import itertools
import json
import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import time

import pytest

from tricopy.host.rcm import control
from tricopy.host.wire import protocol
from tricopy.host.wire.link import LinkError, LinkRefused, connect
from tricopy.host.wire.protocol import Frame, FrameType, Hello, Role, Status

from .cluster import BLOCK, Cluster, Workload, client_tls, free_port, test_certs
from .test_links import journal, wait_for


def _ctx(cert: str | None, *, other_ca: bool = False) -> ssl.SSLContext:
    """A client context that trusts the cluster CA and presents ``cert``
    (None: no certificate; ``other_ca``: that name's certificate of another CA)."""
    d = test_certs()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=d / "ca.pem")
    if cert is not None:
        c = d / "other" if other_ca else d
        ctx.load_cert_chain(c / f"{cert}.pem", c / f"{cert}.key")
    return ctx


def _count(log: str, needle: str) -> int:
    return sum(1 for line in log.splitlines() if needle in line)


def _lines(cluster: Cluster, role: str, needle: str, n: int = 1) -> None:
    wait_for(lambda: _count(cluster.log(role), needle) >= n, f"{needle!r} in the {role}'s log")
    time.sleep(0.2)      # and no second line for the same refusal
    assert _count(cluster.log(role), needle) == n, cluster.log(role)[-3000:]


def test_relay_data_port_refuses_every_unauthenticated_peer(cluster):
    cluster.start("relay")
    addr = cluster.data_addr("relay")

    async def attempt(ctx, hello=None):
        hello = hello or Hello(Role.PRIMARY, 1, 0, 0, "g1", "primary")
        with pytest.raises(LinkError):
            link, _ = await connect(addr, hello, heartbeat=0.5, tls=ctx)
            await asyncio.wait_for(link.recv(), 5)

    refusals = [
        (_ctx(None), "refused 127.0.0.1:", "no certificate"),
        (_ctx("primary", other_ca=True), "refused 127.0.0.1:", "certificate from another CA"),
        (_ctx("mallory"), "wrong site name: the certificate is for mallory, expected 'primary'",
         None),
        (_ctx("secondary"), "the certificate is for secondary, expected 'primary'", None),
        (None, "refused 127.0.0.1:", "not a TLS client"),
    ]
    for ctx, needle, reason in refusals:
        asyncio.run(attempt(ctx))
        _lines(cluster, "relay", reason or needle)

    async def hello_refusals():
        with pytest.raises(LinkRefused) as info:
            await connect(addr, Hello(Role.PRIMARY, 1, 0, 0, "other", "primary"),
                          heartbeat=0.5, tls=client_tls("primary"))
        assert info.value.status == Status.WRONG_GROUP
        with pytest.raises(LinkRefused) as info:
            await connect(addr, Hello(Role.PRIMARY, 1, 7, 0, "g1", "primary"),
                          heartbeat=0.5, tls=client_tls("primary"))
        assert info.value.status == Status.STALE_EPOCH

    asyncio.run(hello_refusals())
    _lines(cluster, "relay", "refused HELLO from 127.0.0.1")          # wrong group
    _lines(cluster, "relay", "refused HELLO: primary 'primary' is at epoch 7")  # stale
    # the one configured primary still gets in
    async def good():
        link, peer = await connect(addr, Hello(Role.PRIMARY, 1, 0, 0, "g1", "primary"),
                                   heartbeat=0.5, tls=client_tls("primary"), peer_site="relay")
        assert peer.role == Role.RELAY and "relay" in link.peer_names
        await link.close()
    asyncio.run(good())
    assert cluster.status("relay")["next_seq"] == 1       # nothing journaled by anyone


def test_mallory_cannot_inject_into_the_secondary_and_replication_goes_on(cluster):
    cluster.start_all()
    work = Workload(cluster.control_addr("primary"), cluster.volumes, workers=4, seed=71)
    asyncio.run(work.run(count=10))
    cluster.wait_drained()
    before = cluster.status("secondary")["last_restored"]
    payload = b"INJECTED-BY-MALLORY!".ljust(BLOCK, b"!")
    addr = cluster.data_addr("secondary")
    # The outside test's script: a plain socket, HELLO posing as the relay, one JNLWR.
    raw = (Hello(Role.RELAY, 1, 0, before + 1, "g1", "relay").frame().serialize()
           + Frame(FrameType.JNLWR, protocol.journal_body(
               journal(before + 1, payload, seq=before + 1), payload)).serialize())
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(raw)
        try:
            assert s.recv(100) == b""          # closed without a word of the protocol
        except ConnectionResetError:
            pass
    _lines(cluster, "secondary", "not a TLS client")

    # The same over TLS with a certificate of the right CA for no configured
    # site, and with a "relay" certificate of another CA.
    async def tls_attempt(ctx):
        with pytest.raises(LinkError):
            link, _ = await connect(addr, Hello(Role.RELAY, 1, 0, before + 1, "g1", "relay"),
                                    heartbeat=0.5, tls=ctx)
            link.send(Frame(FrameType.JNLWR, protocol.journal_body(
                journal(before + 1, payload, seq=before + 1), payload)))
            await asyncio.wait_for(link.recv(), 5)
    asyncio.run(tls_attempt(_ctx("mallory")))
    _lines(cluster, "secondary", "the certificate is for mallory, expected 'relay'")
    asyncio.run(tls_attempt(_ctx("relay", other_ca=True)))
    _lines(cluster, "secondary", "certificate from another CA")

    # replication never stopped: more writes arrive, the SVOLs equal the PVOLs
    asyncio.run(work.run(count=10))
    st = cluster.wait_drained()
    assert st["secondary"]["last_restored"] > before
    assert st["secondary"]["grsts"] == "PAIR", st["secondary"]
    for i in range(cluster.volumes):
        svol = cluster.volume_bytes("secondary", i)
        assert b"INJECTED-BY-MALLORY" not in svol
        assert svol == bytes(work.model[i]) == cluster.volume_bytes("primary", i)
    assert cluster.status("relay")["secondary_connected"]


def test_control_socket_is_the_users_only(cluster):
    cluster.start("secondary")
    path = cluster.control_addr("secondary")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_ISSOCK(os.stat(path).st_mode)


def _relay_toml(root, *, control: str) -> "os.PathLike":
    d = test_certs()
    text = (f'site = "relay"\nlisten = "127.0.0.1:{free_port()}"\n{control}\nstate_dir = "state"\n'
            f'tls = {{ ca = "{d}/ca.pem", cert = "{d}/relay.pem", key = "{d}/relay.key" }}\n'
            f'[[group]]\ngrnum = 1\ngrname = "g1"\nattr = "INTERMEDIARY"\n'
            f'peer = "127.0.0.1:{free_port()}"\npeer_site = "secondary"\nupstream_site = "primary"\n'
            f'journal = {{ path = "jnl.vol", size = 1048576 }}\n')
    root.mkdir(parents=True, exist_ok=True)
    (root / "site.toml").write_text(text)
    return root / "site.toml"


def _site(role: str, config, log):
    return subprocess.Popen([sys.executable, "-m", "tricopy.host.sites_cli", role, "--config",
                             str(config)], stdout=log, stderr=subprocess.STDOUT,
                            cwd=config.parent)


def test_tcp_control_needs_an_admin_certificate(tmp_path):
    """Remote administration: TCP control with mutual TLS; only a certificate
    named in control_clients (default "admin") is served."""
    port = free_port()
    config = _relay_toml(tmp_path / "relay", control=f'control = "127.0.0.1:{port}"')
    addr = ("127.0.0.1", port)
    with open(tmp_path / "relay.log", "wb") as log:
        proc = _site("relay", config, log)
    try:
        admin = client_tls("admin")
        wait_for(lambda: _try(lambda: control.call(addr, "status", tls=admin)), "the relay")
        refused = [(_ctx(None), "no certificate"),
                   (_ctx("primary", other_ca=True), "certificate from another CA"),
                   (_ctx("relay"), "the certificate is for relay, expected 'admin'"),
                   (None, "not a TLS client")]
        for ctx, reason in refused:
            with pytest.raises((OSError, control.ControlError)):
                control.call(addr, "pair_set", tls=ctx, group="g1", grsts="PAIR", timeout=5)
            text = lambda: (tmp_path / "relay.log").read_text()
            wait_for(lambda: _count(text(), reason) >= 1, reason)
            assert _count(text(), f"control: refused 127.0.0.1:") >= 1
        time.sleep(0.2)
        log = (tmp_path / "relay.log").read_text()
        for _, reason in refused:
            assert _count(log, reason) == 1, log
        # nothing changed; the admin is served
        assert control.call(addr, "status", tls=admin)["groups"][0]["grsts"] == "SMPL"
    finally:
        proc.terminate()
        proc.wait(10)


def _try(fn):
    try:
        return fn() or True
    except (OSError, control.ControlError):
        return False


def test_plaintext_tcp_control_is_read_only(tmp_path):
    """control_plaintext (127.0.0.1 only): status and jnlg, nothing that reads
    PVOL data or changes anything; each refusal logs one line."""
    c = Cluster(tmp_path, tls=False)
    port = free_port()
    cfg = (tmp_path / "primary" / "site.toml")
    cfg.write_text(re.sub(r'control = ".*"', f'control = "127.0.0.1:{port}"\n'
                                              f'control_plaintext = true', cfg.read_text()))
    addr = ("127.0.0.1", port)
    with open(tmp_path / "primary.log", "wb") as log:
        proc = _site("primary", cfg, log)
    try:
        wait_for(lambda: _try(lambda: control.call(addr, "status")), "the primary")
        before = control.call(addr, "status")["groups"][0]
        for cmd, args in (("write", {"idx": 0, "offset": 0,
                                     "data": base64.b64encode(b"x" * BLOCK).decode()}),
                          ("read", {"idx": 0, "offset": 0, "length": BLOCK}),
                          ("pair_delete", {"group": "g1"})):
            with pytest.raises(control.ControlError) as err:
                control.call(addr, cmd, **args)
            assert err.value.type == "PermissionError"
        log = (tmp_path / "primary.log").read_text()
        assert "tls = false: the links to the other sites are plaintext" in log
        for cmd in ("write", "read", "pair_delete"):
            assert _count(log, f"control: refused {cmd!r}") == 1, log
        after = control.call(addr, "status")["groups"][0]
        assert (after["grsts"], after["pending"]) == (before["grsts"], before["pending"])
        assert (tmp_path / "primary" / "pvol0.img").read_bytes()[:BLOCK] == bytes(BLOCK)
    finally:
        proc.terminate()
        proc.wait(10)


def test_control_limits_close_only_the_offending_connection(tmp_path):
    c = Cluster(tmp_path, site_extra={
        "secondary": "[limits]\ncontrol_line = 65536\nconnections = 4\n"})
    try:
        c.start("secondary")
        path = c.control_addr("secondary")

        async def scenario():
            good = await control.ControlClient.open(path)
            assert (await good.call("status"))["role"] == "secondary"
            r, w = await asyncio.open_unix_connection(path)
            w.write(b'{"id": 1, "cmd": "status", "pad": "' + b"x" * 100_000)
            await w.drain()
            assert await asyncio.wait_for(r.read(), 5) == b""      # closed, no answer
            # a line just under the limit is still answered (an error, but served)
            big = json.dumps({"id": 2, "cmd": "status", "pad": "x" * 60_000})
            r2, w2 = await asyncio.open_unix_connection(path)
            w2.write(big.encode() + b"\n")
            assert json.loads(await asyncio.wait_for(r2.readline(), 5))["ok"]
            w2.close()
            assert (await good.call("status"))["role"] == "secondary"    # untouched
            # connections: 4 at most; the fifth is closed, the others served
            extra = [await asyncio.open_unix_connection(path) for _ in range(4)]
            await asyncio.sleep(0.2)
            assert await asyncio.wait_for(extra[-1][0].read(), 5) == b""
            assert (await good.call("status"))["role"] == "secondary"
            for _, ew in extra:
                ew.close()
            await good.close()

        asyncio.run(scenario())
        _lines(c, "secondary", "a request line over 65536 bytes (limits.control_line)")
        _lines(c, "secondary", "(limits.connections = 4)")
    finally:
        c.stop_all()


def _control_limit_scenario(tmp_path, over: list[bytes], needle: str) -> None:
    """A secondary with ``control_inflight = 4`` and ``control_buffered = 20000``:
    a client that keeps to them is served; one that sends ``over`` in one
    write before reading any answer is closed without an answer and with one
    log line holding ``needle``; the first client is still served."""
    c = Cluster(tmp_path, site_extra={
        "secondary": "[limits]\ncontrol_line = 65536\ncontrol_inflight = 4\n"
                     "control_buffered = 20000\n"})
    try:
        c.start("secondary")
        path = c.control_addr("secondary")

        async def scenario():
            good = await control.ControlClient.open(path)
            # four unanswered requests at once, and one of 12 kB, are served
            answers = await asyncio.gather(*(good.call("status") for _ in range(4)))
            assert all(a["role"] == "secondary" for a in answers)
            assert (await good.call("status", pad="x" * 12_000))["role"] == "secondary"
            r, w = await asyncio.open_unix_connection(path)
            w.write(b"".join(over))
            await w.drain()
            assert await asyncio.wait_for(r.read(), 5) == b""        # closed, no answer
            w.close()
            assert (await good.call("status"))["role"] == "secondary"    # untouched
            await good.close()

        asyncio.run(scenario())
        _lines(c, "secondary", needle)
        assert "socket.send() raised exception" not in c.log("secondary")
    finally:
        c.stop_all()


def test_control_inflight_closes_only_the_offending_connection(tmp_path):
    """``limits.control_inflight``: twenty requests pipelined before reading
    any answer, over a bound of 4."""
    _control_limit_scenario(
        tmp_path, [json.dumps({"id": i, "cmd": "status"}).encode() + b"\n" for i in range(20)],
        "4 requests in flight (limits.control_inflight = 4)")


def test_control_buffered_closes_only_the_offending_connection(tmp_path):
    """``limits.control_buffered``: four 12 kB requests at once hold 24 kB at
    the second, over a bound of 20000 bytes (each alone is served)."""
    _control_limit_scenario(
        tmp_path, [json.dumps({"id": i, "cmd": "status", "pad": "x" * 12_000}).encode() + b"\n"
                   for i in range(4)],
        "request bytes held (limits.control_buffered = 20000)")


def test_data_port_limits_close_only_the_idle_handshakes(tmp_path):
    """The TLS data ports' own limits (docs/security.md, "Limits"): connections
    that never finish a TLS handshake hold at most ``limits.handshakes`` slots;
    one more is closed at once, the idle ones are closed after
    ``limits.handshake_timeout``, each with one log line, and the primary's
    link, already up, keeps replicating meanwhile (issue 12)."""
    c = Cluster(tmp_path, site_extra={
        "relay": "[limits]\nhandshakes = 2\nhandshake_timeout = 2.0\n"})
    try:
        c.start_all()
        work = Workload(c.control_addr("primary"), c.volumes, workers=2, seed=81)
        asyncio.run(work.run(count=4))
        c.wait_drained()
        addr = c.data_addr("relay")
        idle = [socket.create_connection(addr, timeout=5) for _ in range(2)]   # no ClientHello
        time.sleep(0.3)
        with socket.create_connection(addr, timeout=5) as third:
            try:
                assert third.recv(100) == b""            # closed at once, not held
            except ConnectionResetError:
                pass
        _lines(c, "relay", "(limits.handshakes = 2)")
        # the link that was up before keeps replicating while both slots are taken
        asyncio.run(work.run(count=4))
        c.wait_drained()
        for s in idle:                                   # then the idle ones go
            try:
                assert s.recv(100) == b""
            except ConnectionResetError:
                pass
            s.close()
        _lines(c, "relay", "no TLS handshake within 2 s", 2)
        for i in range(c.volumes):
            assert c.volume_bytes("secondary", i) == bytes(work.model[i])
    finally:
        c.stop_all()


def test_plaintext_hello_from_a_stranger_changes_nothing(tmp_path):
    """tls = false: a HELLO posing as the relay with a stale epoch, or with a
    journal that went backwards, is refused (NAK, one log line each) and the
    secondary's group stays as it was: PAIR, restoring, the relay's link up
    (docs/security.md, "HELLO from a stranger")."""
    c = Cluster(tmp_path, tls=False)
    c.start_all()
    try:
        work = Workload(c.control_addr("primary"), c.volumes, workers=2, seed=12)
        asyncio.run(work.run(count=6))
        high = c.wait_drained()["secondary"]["last_restored"]
        addr = c.data_addr("secondary")

        async def stranger(hello: Hello) -> int:
            with pytest.raises(LinkRefused) as info:
                await connect(addr, hello, heartbeat=0.5)
            return info.value.status

        assert asyncio.run(stranger(Hello(Role.RELAY, 1, 9, high + 5, "g1", "relay"))) \
            == Status.STALE_EPOCH
        assert asyncio.run(stranger(Hello(Role.RELAY, 1, 0, 0, "g1", "relay"))) \
            == Status.SEQ_REGRESSION
        st = c.status("secondary")          # (the NAK is sent after the verdict)
        assert (st["grsts"], st["reason"], st["hellos_refused"]) == ("PAIR", "", 2), st
        _lines(c, "secondary", "refused an unauthenticated HELLO", 2)
        # the relay's stream was never disturbed: more writes arrive and restore
        asyncio.run(work.run(count=6))
        st = c.wait_drained()
        assert st["secondary"]["last_restored"] > high and st["secondary"]["grsts"] == "PAIR"
        for i in range(c.volumes):
            assert c.volume_bytes("secondary", i) == bytes(work.model[i])
    finally:
        c.stop_all()


def _ask(path, request: dict) -> dict:
    """One raw request on a Unix control socket (``control.call`` keeps
    ``timeout`` for itself, and that is one of the arguments sent here)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(json.dumps(request).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            assert chunk, f"{path} closed without answering {request['cmd']!r}"
            buf += chunk
    return json.loads(buf)


_GROUP_ONLY = {"pair_create", "pair_split", "pair_delete", "swap_cancel"}
_ARGS = ("group", "idx", "offset", "length", "data", "epoch", "restored", "relay_last_tag",
         "count", "first", "chunks", "grsts", "consistent_seq", "relay_seq", "pseq", "timeout",
         "force", "name", "reverse", "flush", "full")


def test_every_control_command_answers_a_bad_argument_with_a_typed_error(cluster):
    """Each command of each site, sent with no arguments and then with every
    argument of the wrong type: the answer is a typed error of one line that
    names the argument (never KeyError, TypeError or ValueError with a bare
    key), and the site keeps serving (issue 12)."""
    cluster.start_all()
    for role in ("primary", "relay", "secondary"):
        addr = cluster.control_addr(role)
        with pytest.raises(control.ControlError) as info:
            control.call(addr, "no-such-command")
        commands = str(info.value).split("known: ")[1].split(", ")
        assert "status" in commands and len(commands) > 5, commands
        seen = set()
        for cmd, value, group in itertools.product(commands, (None, [], "x", -1, 1.5, True),
                                                   (None, "g1")):
            args = {} if value is None else dict.fromkeys(_ARGS, value)
            if group is not None:
                if cmd in _GROUP_ONLY:
                    continue          # with the right group these would act (split, delete)
                args["group"] = group       # past the group: the command's other arguments
            answer = _ask(addr, {"id": 1, "cmd": cmd, **args})
            if answer["ok"]:
                continue                  # (status, flush, ... need no argument)
            why, kind = answer["error"], answer["type"]
            assert kind not in ("KeyError", "TypeError", "ValueError"), (role, cmd, args, kind, why)
            assert why and "\n" not in why, (role, cmd, why)
            if kind == "ArgumentError":
                assert why.startswith(f"{cmd}: ") and re.search(r"argument '\w+'", why), why
                if group is not None:
                    assert "'group'" not in why, why
            seen.add(kind)
        assert "ArgumentError" in seen, seen
        assert control.call(addr, "status")["groups"], role       # still serving
    st = cluster.wait_drained()
    assert st["secondary"]["grsts"] == "PAIR" and st["relay"]["grsts"] == "PAIR", st


def test_rcm_checks_the_control_servers_site_name(tmp_path):
    """Remote administration: the RCM refuses a TCP control socket whose
    certificate (of the cluster CA) names another site than the cluster file
    says, before it sends anything; the right name is served; a cluster file
    with TCP + TLS and no site name is refused up front (issue 12)."""
    from tricopy.host.rcm.pairs import RcmError, Sites
    port = free_port()
    config = _relay_toml(tmp_path / "relay", control=f'control = "127.0.0.1:{port}"')
    addr = ("127.0.0.1", port)
    with open(tmp_path / "relay.log", "wb") as log:
        proc = _site("relay", config, log)
    try:
        admin = client_tls("admin")
        wait_for(lambda: _try(lambda: control.call(addr, "status", tls=admin)), "the relay")
        d = test_certs()

        def cluster_file(extra: str) -> str:
            path = tmp_path / f"cluster{len(extra)}.toml"
            path.write_text(f'primary = "unix:{tmp_path}/p.sock"\nrelay = "127.0.0.1:{port}"\n'
                            f'secondary = "unix:{tmp_path}/s.sock"\n{extra}'
                            f'tls = {{ ca = "{d}/ca.pem", cert = "{d}/admin.pem", '
                            f'key = "{d}/admin.key" }}\n')
            return str(path)

        wrong = Sites.from_file(cluster_file('relay_site = "secondary"\n'))
        with pytest.raises(RcmError, match="the certificate is for relay, expected 'secondary'"):
            wrong.call("relay", "pair_set", group="g1", grsts="PAIR")
        with pytest.raises(control.WrongSite):
            asyncio.run(control.ControlClient.open(addr, admin, expect_site="primary"))
        with pytest.raises(RcmError, match="add relay_site ="):
            Sites.from_file(cluster_file(""))
        right = Sites.from_file(cluster_file('relay_site = "relay"\n'))
        # the wrong-site call was never sent: the relay is still SMPL, and took nothing
        assert right.call("relay", "status")["groups"][0]["grsts"] == "SMPL"
        assert "pair_set" not in (tmp_path / "relay.log").read_text()
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_revoked_certificate_is_refused_until_it_is_made_again(tmp_path):
    """`tricopy certs revoke relay`: after a restart the secondary refuses the
    relay's certificate (one line per connection, naming it), a connecting
    side with the CRL refuses it too, nothing more is restored; a new
    certificate for the relay and its restart let replication resume
    (issue 12)."""
    from tricopy.host.config import TlsConfig
    from tricopy.host.tools.certs import write_crl
    from tricopy.host.wire import tls as tls_mod
    from tricopy.host.wire.link import LinkUnauthenticated
    certs = tmp_path / "certs"
    shutil.copytree(test_certs(), certs, ignore=shutil.ignore_patterns("other", "done"))
    write_crl(certs, [], fresh=True)                 # what `tricopy certs` writes for a new CA
    c = Cluster(tmp_path / "trio")
    for role in ("primary", "relay", "secondary"):
        cfg = c.root / role / "site.toml"
        text = cfg.read_text().replace(str(test_certs()), str(certs))
        cfg.write_text(re.sub(r"(tls = \{[^}]*) \}", rf'\1, crl = "{certs}/crl.pem" }}', text))
    certs_cli = [sys.executable, "-m", "tricopy.host.cli", "certs", "--out", str(certs)]
    try:
        c.start_all()
        work = Workload(c.control_addr("primary"), c.volumes, workers=2, seed=5)
        asyncio.run(work.run(count=6))
        high = c.wait_drained()["secondary"]["last_restored"]

        out = subprocess.run(certs_cli + ["revoke", "relay"], capture_output=True, text=True)
        assert out.returncode == 0 and "revoked relay" in out.stdout, out.stdout + out.stderr
        c.terminate("secondary")
        c.start("secondary")
        needle = "secondary data port: refused 127.0.0.1:"
        wait_for(lambda: _count(c.log("secondary"), "certificate of relay revoked") >= 2,
                 "the secondary refusing the revoked relay")
        refusals = [line for line in c.log("secondary").splitlines()
                    if "certificate of relay revoked" in line]
        assert all(needle in line for line in refusals), refusals
        # a connecting side with the CRL refuses the relay's certificate as well
        primary_tls = tls_mod.client_context(TlsConfig(certs / "ca.pem", certs / "primary.pem",
                                                       certs / "primary.key", certs / "crl.pem"))
        with pytest.raises(LinkUnauthenticated, match="certificate of relay revoked"):
            asyncio.run(connect(c.data_addr("relay"), Hello(Role.PRIMARY, 1, 0, 0, "g1", "primary"),
                                tls=primary_tls, peer_site="relay"))
        asyncio.run(work.run(count=6))          # acked by the relay, held there
        n = _count(c.log("secondary"), "certificate of relay revoked")
        wait_for(lambda: _count(c.log("secondary"), "certificate of relay revoked") > n + 1,
                 "more refusals after the writes")
        st = c.status("secondary")
        assert st["last_restored"] == high and not st["connected"], st

        out = subprocess.run(certs_cli + ["--sites", "relay", "--clients", ""],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
        c.terminate("relay")
        c.start("relay")
        st = c.wait_drained()
        assert st["secondary"]["last_restored"] > high
        for i in range(c.volumes):
            assert c.volume_bytes("secondary", i) == bytes(work.model[i])
    finally:
        c.stop_all()
