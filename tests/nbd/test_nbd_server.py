"""The asyncio server over real sockets: bad clients, errors, concurrency, TLS."""

from __future__ import annotations

import datetime
import errno
import ipaddress
import json
import logging
import socket
import ssl
import struct
import subprocess
import sys
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import ServerThread
from nbdraw import RawClient, run
from tricopy.host.nbd import Export, ExportError, FileExport
from tricopy.host.nbd import protocol as p
from tricopy.host.nbd.protocol import Cmd


def test_read_only_export_refuses_writes_with_eperm(served):
    with RawClient(served.port) as c:
        c.connect("ro")
        assert c.request(Cmd.WRITE, 0, 4096, b"x" * 4096)[0] == p.NBD_EPERM
        assert c.request(Cmd.TRIM, 0, 4096)[0] == p.NBD_EPERM
        assert c.request(Cmd.WRITE_ZEROES, 0, 4096)[0] == p.NBD_EPERM
        assert c.request(Cmd.READ, 4096, 4096) == (0, served.ro_content[4096:8192])
    assert served.ro.read_bytes() == served.ro_content


def test_bad_clients_do_not_disturb_a_good_one(served):
    good = RawClient(served.port)
    good.connect("disk")
    assert good.request(Cmd.WRITE, 0, 4096, b"g" * 4096, handle=1) == (0, b"")

    with RawClient(served.port) as bad:         # unknown client flags
        bad.greeting(client_flags=0xFF00)
        assert bad.is_closed()
    with RawClient(served.port) as bad:         # garbage instead of an option
        bad.greeting()
        bad.sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert bad.is_closed()
    with RawClient(served.port) as bad:         # malformed options get errors, not a close
        bad.greeting()
        bad.option(p.NBD_OPT_GO, b"\x00\x00\x10\x00abc")
        assert bad.option_reply()[1] == p.NBD_REP_ERR_INVALID
        bad.option(p.NBD_OPT_INFO, struct.pack(">I", 2**32 - 1) + bytes(5000))
        assert bad.option_reply()[1] == p.NBD_REP_ERR_INVALID
        bad.option(0x7777)
        assert bad.option_reply()[1] == p.NBD_REP_ERR_UNSUP
        bad.option(p.NBD_OPT_ABORT)
        assert bad.option_reply()[1] == p.NBD_REP_ACK
        assert bad.is_closed()
    with RawClient(served.port) as bad:         # bad request magic mid-transmission
        bad.connect("disk")
        bad.sock.sendall(b"\x00" * 28)
        assert bad.is_closed()
    with RawClient(served.port) as bad:         # absurd write length: refused, link survives
        bad.connect("disk")
        bad.send_request(Cmd.WRITE, 0, 2**32 - 1, handle=5)
        bad.send_request(Cmd.READ, 0, 2**32 - 4096, handle=6)
        # The write's payload never comes, so its reply cannot either; the
        # connection is dropped by the client, which must not hurt the server.
    with RawClient(served.port) as bad:         # disconnect halfway through a request
        bad.connect("disk")
        bad.sock.sendall(struct.pack(">IHHQQI", p.NBD_REQUEST_MAGIC, 0, Cmd.WRITE, 1, 0, 8192)
                         + b"half")

    assert good.request(Cmd.READ, 0, 4096, handle=2) == (0, b"g" * 4096)
    # and real clients still connect
    info = json.loads(run("nbdinfo", "--json", served.uri()).stdout)
    assert info["exports"][0]["export-size"] == 64 << 20
    good.close()


def test_oversized_write_is_refused_and_the_connection_continues(served):
    with RawClient(served.port) as c:
        c.connect("disk")
        length = (32 << 20) + 4096
        c.send_request(Cmd.WRITE, 0, length, handle=1)
        chunk = b"\x99" * (1 << 20)
        for _ in range(length // len(chunk)):
            c.sock.sendall(chunk)
        c.sock.sendall(chunk[:4096])
        assert c.simple_reply() == (p.NBD_EINVAL, 1, b"")
        assert c.request(Cmd.READ, 0, 4096, handle=2) == (0, bytes(4096))


def test_pipelined_requests_get_replies_matched_by_handle(served):
    with RawClient(served.port) as c:
        c.connect("disk", structured=True)
        for i in range(32):   # distinct patterns in distinct blocks
            c.send_request(Cmd.WRITE, i * 65536, 65536, bytes([i]) * 65536, handle=1000 + i)
        done = {c.simple_reply()[1] for _ in range(32)}
        assert done == {1000 + i for i in range(32)}
        for i in range(32):
            c.send_request(Cmd.READ, i * 65536, 65536, handle=2000 + i)
        for _ in range(32):
            flags, ctype, handle, payload = c.chunk()
            assert (flags, ctype) == (p.NBD_REPLY_FLAG_DONE, p.NBD_REPLY_TYPE_OFFSET_DATA)
            i = handle - 2000
            assert struct.unpack(">Q", payload[:8])[0] == i * 65536
            assert payload[8:] == bytes([i]) * 65536


def test_disc_finishes_in_flight_requests(served):
    with RawClient(served.port) as c:
        c.connect("disk")
        # One segment, so the server sees DISC before the write has completed.
        c.sock.sendall(struct.pack(">IHHQQI", p.NBD_REQUEST_MAGIC, p.NBD_CMD_FLAG_FUA,
                                   Cmd.WRITE, 4, 8192, 4096) + b"d" * 4096
                       + struct.pack(">IHHQQI", p.NBD_REQUEST_MAGIC, 0, Cmd.DISC, 5, 0, 0))
        assert c.simple_reply() == (0, 4, b"")
        assert c.is_closed()
    assert served.disk.read_bytes()[8192:12288] == b"d" * 4096


class BatchingExport(FileExport):
    """A FileExport that takes WRITEs in batches and records each batch; a
    write to offset ``bad`` fails alone."""

    batch_max = 65536

    def __init__(self, *args, bad: int, **kw):
        super().__init__(*args, **kw)
        self.bad = bad
        self.batches: list[list[int]] = []

    async def write_many(self, writes):
        self.batches.append([offset for offset, _, _ in writes])
        errors = []
        for offset, data, fua in writes:
            try:
                if offset == self.bad:
                    raise ExportError(p.NBD_ENOSPC, "this one is full")
                await self.write(offset, data, fua)
                errors.append(None)
            except ExportError as exc:
                errors.append(exc)
        return errors


def test_writes_of_one_read_go_as_one_batch(tmp_path):
    """WRITEs that arrive in one segment reach ``write_many`` together, at
    most MAX_INFLIGHT at a time; each gets its own reply, a failed one its
    own error only; a write above ``batch_max`` and a READ go on their own."""
    from tricopy.host.nbd.server import MAX_INFLIGHT
    disk = tmp_path / "b.img"
    disk.write_bytes(bytes(4 << 20))
    export = BatchingExport(disk, 512, bad=5 * 512)
    thread = ServerThread({"b": export})
    port = thread.start()
    try:
        with RawClient(port) as c:
            c.connect("b")
            # 512-byte writes: all of them fit in one read of the server
            n = MAX_INFLIGHT + 8
            c.sock.sendall(b"".join(
                struct.pack(">IHHQQI", p.NBD_REQUEST_MAGIC, 0, Cmd.WRITE, 100 + i, i * 512,
                            512) + bytes([i]) * 512 for i in range(n))
                + struct.pack(">IHHQQI", p.NBD_REQUEST_MAGIC, 0, Cmd.WRITE, 99, 1 << 20,
                              131072) + b"L" * 131072)
            replies = {}
            for _ in range(n + 1):
                error, handle, _ = c.simple_reply()
                replies[handle] = error
            assert replies == {**{100 + i: 0 for i in range(n) if i != 5},
                               105: p.NBD_ENOSPC, 99: 0}
            assert c.request(Cmd.READ, 0, 1024, handle=7) == (0, bytes(512) + b"\x01" * 512)
        written = [o for batch in export.batches for o in batch]
        assert sorted(written) == [i * 512 for i in range(n)], "each write exactly once"
        assert max(len(b) for b in export.batches) > 1, "no write went in a batch"
        assert max(len(b) for b in export.batches) <= MAX_INFLIGHT
        assert disk.read_bytes()[1 << 20:(1 << 20) + 131072] == b"L" * 131072
        data = disk.read_bytes()
        assert data[5 * 512:6 * 512] == bytes(512), "the failed write was applied"
        assert data[6 * 512:7 * 512] == b"\x06" * 512
    finally:
        thread.stop()


class FailingExport(Export):
    """A backend whose every write fails with a chosen exception."""

    size, block_size = 1 << 20, 4096

    def __init__(self, exc: BaseException):
        self.exc = exc

    async def read(self, offset, length):
        raise self.exc

    async def write(self, offset, data, fua):
        raise self.exc

    async def flush(self):
        raise self.exc

    async def trim(self, offset, length):
        raise self.exc

    async def write_zeroes(self, offset, length, fua):
        raise self.exc

    def close(self):
        pass


@pytest.mark.parametrize("exc, expected", [
    (OSError(errno.ENOSPC, "full"), p.NBD_ENOSPC),
    (OSError(errno.EROFS, "read-only fs"), p.NBD_EPERM),
    (OSError(errno.EIO, "media error"), p.NBD_EIO),
    (ExportError(p.NBD_ENOSPC, "journal full"), p.NBD_ENOSPC),
    (RuntimeError("bug"), p.NBD_EIO),
])
def test_backend_errors_are_mapped(exc, expected):
    thread = ServerThread({"bad": FailingExport(exc)})
    port = thread.start()
    try:
        with RawClient(port) as c:
            c.connect("bad", structured=True)
            c.send_request(Cmd.WRITE, 0, 4096, bytes(4096), handle=1)
            assert c.simple_reply() == (expected, 1, b"")
            c.send_request(Cmd.READ, 0, 4096, handle=2)
            flags, ctype, handle, payload = c.chunk()
            assert (ctype, handle) == (p.NBD_REPLY_TYPE_ERROR, 2)
            assert struct.unpack(">I", payload[:4])[0] == expected
            message = payload[6:].decode()
            assert "bug" not in message  # internals are logged, not sent
            assert c.request(Cmd.FLUSH, handle=3)[0] == expected
    finally:
        thread.stop()


# --- TLS ---------------------------------------------------------------------
def _make_certs(directory) -> ssl.SSLContext:
    """A CA and a server certificate for 127.0.0.1, laid out for libnbd/qemu."""
    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(subject, issuer, key, sign_key, ca: bool):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        else:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
        return builder.sign(sign_key, hashes.SHA256())

    name = lambda cn: x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])  # noqa: E731
    ca_key, srv_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = cert(name("tricopy test CA"), name("tricopy test CA"), ca_key, ca_key, True)
    srv = cert(name("127.0.0.1"), ca.subject, srv_key, ca_key, False)
    pem = lambda c: c.public_bytes(serialization.Encoding.PEM)  # noqa: E731
    key_pem = srv_key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption())
    (directory / "ca-cert.pem").write_bytes(pem(ca))
    (directory / "server-cert.pem").write_bytes(pem(srv))
    (directory / "server-key.pem").write_bytes(key_pem)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(directory / "server-cert.pem", directory / "server-key.pem")
    return ctx


@pytest.fixture
def tls_served(tmp_path):
    certs = tmp_path / "pki"
    certs.mkdir()
    disk = tmp_path / "tls.img"
    disk.write_bytes(bytes(4 << 20))
    thread = ServerThread({"disk": FileExport(disk, 4096)}, tls_context=_make_certs(certs))
    port = thread.start()
    try:
        yield port, certs, disk
    finally:
        thread.stop()


def test_tls_with_nbdinfo_and_qemu_io(tls_served):
    port, certs, disk = tls_served
    # TLS is mandatory: a plaintext client is refused.
    proc = run("nbdinfo", "--json", f"nbd://127.0.0.1:{port}/disk", check=False)
    assert proc.returncode != 0
    info = json.loads(run("nbdinfo", "--json",
                          f"nbds://127.0.0.1:{port}/disk?tls-certificates={certs}").stdout)
    assert info["TLS"] is True and info["exports"][0]["export-size"] == 4 << 20
    run("qemu-io", "--object", f"tls-creds-x509,id=tls0,endpoint=client,dir={certs}",
        "--image-opts", "-t", "writeback", "-c", "write -P 0x3c 0 64k", "-c", "read -P 0x3c 0 64k",
        f"driver=nbd,host=127.0.0.1,port={port},export=disk,tls-creds=tls0")
    assert disk.read_bytes()[:65536] == b"\x3c" * 65536


def test_tls_raw_client_and_plaintext_injection(tls_served):
    port, certs, disk = tls_served
    with RawClient(port) as c:
        c.greeting()
        c.option(p.NBD_OPT_GO, struct.pack(">I4sH", 4, b"disk", 0))
        assert c.option_reply()[1] == p.NBD_REP_ERR_TLS_REQD
        c.option(p.NBD_OPT_STARTTLS)
        assert c.option_reply()[1] == p.NBD_REP_ACK
        ctx = ssl.create_default_context(cafile=str(certs / "ca-cert.pem"))
        c.sock = ctx.wrap_socket(c.sock, server_hostname="127.0.0.1")
        replies = c.go("disk")
        assert replies[-1][1] == p.NBD_REP_ACK
        assert c.request(Cmd.WRITE, 0, 4096, b"t" * 4096)[0] == 0
    assert disk.read_bytes()[:4096] == b"t" * 4096
    with RawClient(port) as c:   # plaintext sent right behind STARTTLS is refused
        c.greeting()
        c.option(p.NBD_OPT_STARTTLS)
        c.option(p.NBD_OPT_LIST)
        assert c.option_reply()[1] == p.NBD_REP_ACK
        assert c.is_closed()


def test_multi_conn_flush_covers_other_connections(served):
    # CAN_MULTI_CONN is advertised for FileExport: a write completed on one
    # connection is visible to, and flushed by, another connection.
    with RawClient(served.port) as a, RawClient(served.port) as b:
        a.connect("disk")
        b.connect("disk")
        assert a.request(Cmd.WRITE, 0, 4096, b"m" * 4096)[0] == 0
        assert b.request(Cmd.FLUSH)[0] == 0
        assert b.request(Cmd.READ, 0, 4096) == (0, b"m" * 4096)


def test_module_entry_point_serves_files(tmp_path):
    img = tmp_path / "cli.img"
    img.write_bytes(bytes(1 << 20))
    with socket.socket() as probe_sock:   # a free port, released for the server
        probe_sock.bind(("127.0.0.1", 0))
        port = probe_sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "tricopy.host.nbd", "--port", str(port),
                             f"cli={img}:ro"], stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            probe = run("nbdinfo", "--json", f"nbd://127.0.0.1:{port}/cli", check=False)
            if probe.returncode == 0:
                break
            time.sleep(0.1)
        info = json.loads(probe.stdout)
        assert info["exports"][0]["is_read_only"] is True
    finally:
        proc.terminate()
        proc.wait(10)


def starttls_client(port: int, pki, cert: str | None) -> RawClient:
    """A raw client past STARTTLS, trusting the CA in ``pki`` and showing the
    certificate ``cert`` of that folder (none when None)."""
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    ctx.check_hostname = False
    if cert:
        ctx.load_cert_chain(pki / f"{cert}.pem", pki / f"{cert}.key")
    c = RawClient(port)
    c.greeting()
    c.option(p.NBD_OPT_STARTTLS)
    assert c.option_reply()[1] == p.NBD_REP_ACK
    c.sock = ctx.wrap_socket(c.sock)
    return c


def tls_disk_server(tmp_path, names, revoke=()):
    """A 1 MiB file export behind STARTTLS that asks for client certificates
    of a fresh CA (``names``: the certificates made, the first the server's);
    ``revoke``: names put on the CA's CRL, which the server reads.  Returns
    (pki folder, disk file, started ServerThread, port, CRL serials)."""
    from tricopy.host.config import NbdConfig
    from tricopy.host.nbd.primary_export import _tls_context
    from tricopy.host.tools.certs import make_certs, write_crl
    pki = make_certs(tmp_path / "pki", list(names))
    serials = write_crl(pki, list(revoke)) if revoke else []
    cfg = NbdConfig(("127.0.0.1", 0), pki / f"{names[0]}.pem", pki / f"{names[0]}.key",
                    pki / "ca.pem", pki / "crl.pem" if revoke else None)
    disk = tmp_path / "c.img"
    disk.write_bytes(bytes(1 << 20))
    thread = ServerThread({"disk": FileExport(disk, 4096)}, tls_context=_tls_context(cfg))
    return pki, disk, thread, thread.start(), serials


def test_tls_can_require_a_client_certificate(tmp_path, caplog):
    """nbd.tls_client_ca: a client without a certificate of that CA is refused
    after STARTTLS with one log line; one with a certificate is served."""
    pki, disk, thread, port, _ = tls_disk_server(tmp_path, ["primary", "host1"])

    def client(cert: str | None):
        return starttls_client(port, pki, cert)

    try:
        with caplog.at_level(logging.WARNING, logger="tricopy.host.nbd.server"):
            with client(None) as c:
                with pytest.raises((OSError, EOFError, AssertionError, struct.error)):
                    c.go("disk")
                    assert c.request(Cmd.WRITE, 0, 4096, b"n" * 4096)[0] == 0
            deadline = time.monotonic() + 5
            while not any("refused" in r.getMessage() for r in caplog.records):
                assert time.monotonic() < deadline, caplog.text
                time.sleep(0.05)
            assert [r.getMessage().split(": ", 1)[1] for r in caplog.records
                    if "refused" in r.getMessage()] == ["refused: no certificate"]
            with client("host1") as c:
                assert c.go("disk")[-1][1] == p.NBD_REP_ACK
                assert c.request(Cmd.WRITE, 0, 4096, b"y" * 4096)[0] == 0
    finally:
        thread.stop()
    assert disk.read_bytes()[:4096] == b"y" * 4096


def test_tls_refuses_a_revoked_client_certificate(tmp_path, caplog):
    """nbd.tls_client_crl: a client whose certificate the CA revoked is refused
    right after STARTTLS with one line naming it (who, serial, since when, what
    to do); a client already connected and a new good one are served."""
    # host2 revoked, as `tricopy certs revoke host2` does
    pki, disk, thread, port, [serial] = tls_disk_server(
        tmp_path, ["primary", "host1", "host2"], revoke=["host2"])

    def client(cert: str | None):
        return starttls_client(port, pki, cert)

    def refusals():
        return [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]

    try:
        with caplog.at_level(logging.WARNING, logger="tricopy.host.nbd.server"), \
                client("host1") as before:
            assert before.go("disk")[-1][1] == p.NBD_REP_ACK
            with client("host2") as c:
                with pytest.raises((OSError, EOFError, AssertionError, struct.error)):
                    c.go("disk")
                    c.request(Cmd.WRITE, 4096, 4096, b"r" * 4096)
            deadline = time.monotonic() + 5
            while not refusals():
                assert time.monotonic() < deadline, caplog.text
                time.sleep(0.05)
            [line] = refusals()
            want = f"refused: certificate of host2 revoked: serial {serial:#x} is on crl.pem since "
            assert line.startswith("nbd ('127.0.0.1', "), line
            assert line.split(": ", 1)[1].startswith(want), line
            assert line.endswith(" UTC; issue it a new certificate (tricopy certs)"), line
            # the connection made before is still served, and a new good client too
            assert before.request(Cmd.WRITE, 0, 4096, b"y" * 4096)[0] == 0
            with client("host1") as c:
                assert c.go("disk")[-1][1] == p.NBD_REP_ACK
                assert c.request(Cmd.READ, 0, 4096) == (0, b"y" * 4096)
            assert len(refusals()) == 1
    finally:
        thread.stop()
    assert disk.read_bytes()[4096:8192] == bytes(4096)     # nothing of the revoked client


@pytest.mark.parametrize("what", ["not a CRL", "another CA's CRL", "missing"])
def test_a_bad_client_crl_is_a_one_line_config_error(tmp_path, what):
    """nbd.tls_client_crl is read at start as strictly as tls.crl: a file that
    is no CRL of tls_client_ca stops the start with a line naming it."""
    from tricopy.host.config import ConfigError, NbdConfig
    from tricopy.host.nbd.primary_export import _tls_context
    from tricopy.host.tools.certs import make_certs
    pki = make_certs(tmp_path / "pki", ["primary"])
    crl = pki / "crl.pem"
    if what == "not a CRL":
        crl = pki / "primary.pem"                    # a certificate, not a list
    elif what == "another CA's CRL":
        crl = make_certs(tmp_path / "other", []) / "crl.pem"
    else:
        crl = pki / "nothing.pem"
    cfg = NbdConfig(("127.0.0.1", 0), pki / "primary.pem", pki / "primary.key", pki / "ca.pem",
                    crl)
    with pytest.raises(ConfigError) as err:
        _tls_context(cfg)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"nbd.tls_client_crl {crl}"), msg
    assert "tricopy certs revoke" in msg, msg
    want = {"not a CRL": ": not a PEM CRL", "another CA's CRL": " is not signed by the CA in",
            "missing": ": cannot read: No such file"}[what]
    assert want in msg, msg


def test_module_entry_point_takes_a_client_crl(tmp_path):
    """python -m tricopy.host.nbd --tls-client-crl: a revoked client is refused
    with the one line; a list of another CA stops the server at once."""
    from tricopy.host.tools.certs import make_certs, write_crl
    pki = make_certs(tmp_path / "pki", ["server", "host1", "host2"])
    write_crl(pki, ["host2"])
    other = make_certs(tmp_path / "other", [])
    img = tmp_path / "m.img"
    img.write_bytes(bytes(1 << 20))
    with socket.socket() as probe_sock:
        probe_sock.bind(("127.0.0.1", 0))
        port = probe_sock.getsockname()[1]
    cmd = [sys.executable, "-m", "tricopy.host.nbd", "--port", str(port),
           "--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"),
           "--tls-client-ca", str(pki / "ca.pem")]
    bad = subprocess.run(cmd + ["--tls-client-crl", str(other / "crl.pem"), f"m={img}"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].endswith(
        f"error: --tls-client-crl {other / 'crl.pem'} is not signed by the CA in "
        f"{pki / 'ca.pem'}; write it with `tricopy certs revoke` in the CA's folder"), bad.stderr

    def client(cert: str | None):
        return starttls_client(port, pki, cert)

    proc = subprocess.Popen(cmd + ["--tls-client-crl", str(pki / "crl.pem"), f"m={img}"],
                            stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(100):
            try:
                c = client("host1")
                break
            except OSError:
                time.sleep(0.1)
        with c:
            assert c.go("m")[-1][1] == p.NBD_REP_ACK
        with client("host2") as c:
            with pytest.raises((OSError, EOFError, AssertionError, struct.error)):
                c.go("m")
    finally:
        proc.terminate()
        err = proc.communicate(timeout=10)[1]
    refused = [line for line in err.splitlines() if ": refused: " in line]   # the warning
    assert len(refused) == 1, err
    assert "refused: certificate of host2 revoked: serial 0x" in refused[0], err
    assert refused[0].endswith("UTC; issue it a new certificate (tricopy certs)"), err
