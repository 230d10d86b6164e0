"""``tricopy certs``: a cluster CA and one certificate per site (docs/security.md).

``tricopy certs --out DIR --sites primary,relay,secondary [--clients admin]``
writes into DIR:

* ``ca.pem`` / ``ca.key`` — the cluster's CA (keep ``ca.key`` offline: whoever
  has it can mint a site);
* ``<name>.pem`` / ``<name>.key`` — a certificate for each site and each
  control client, the name as CN and as DNS subjectAltName, usable as TLS
  server and client (the links are mutually authenticated).

Keys are EC P-256 and written 0600.  An existing CA in DIR is reused (so a
site can be added later) unless ``--new-ca``; an existing certificate is
replaced.  ``crl.pem``, the CA's revocation list, is written empty with a
new CA.

``tricopy certs revoke NAME... --out DIR`` adds the current certificate of
each NAME to ``crl.pem`` (signed by the CA; the entries already there stay);
without a NAME it re-signs the list for another ``--days``.
Sites that name it (``tls.crl``) refuse those certificates from their next
start; a certificate made again for NAME has a new serial and is accepted.
"""

from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path

__all__ = ["make_certs", "write_crl", "register"]


def _write(path: Path, data: bytes, private: bool) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def make_certs(out: str | Path, names: list[str], *, days: int = 825,
               new_ca: bool = False, ca_name: str = "tricopy cluster CA") -> Path:
    """Make (or reuse) the CA in ``out`` and a certificate per name; returns ``out``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    until = now + datetime.timedelta(days=days)
    pem = serialization.Encoding.PEM

    def key_bytes(key) -> bytes:
        return key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    ca_pem, ca_key_path = out / "ca.pem", out / "ca.key"
    if ca_pem.exists() and ca_key_path.exists() and not new_ca:
        ca_cert = x509.load_pem_x509_certificate(ca_pem.read_bytes())
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
        ca_cert = (x509.CertificateBuilder()
                   .subject_name(subject).issuer_name(subject)
                   .public_key(ca_key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now).not_valid_after(until + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                                False, False), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                                  critical=False)
                   .sign(ca_key, hashes.SHA256()))
        _write(ca_key_path, key_bytes(ca_key), True)
        _write(ca_pem, ca_cert.public_bytes(pem), False)
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    for name in names:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(ca_cert.subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(until)
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(True, False, False, False, False, False, False,
                                             False, False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        _write(out / f"{name}.key", key_bytes(key), True)
        _write(out / f"{name}.pem", cert.public_bytes(pem), False)
    if new_ca or not (out / "crl.pem").exists():
        write_crl(out, [], days=days, fresh=True)     # an old CA's list means nothing now
    return out


def write_crl(out: str | Path, revoke: list[str], *, days: int = 825,
              fresh: bool = False) -> list[int]:
    """(Re)write ``out/crl.pem``, signed by the CA in ``out``: the entries it
    already holds (unless ``fresh``) plus the current certificate of each
    name in ``revoke``.  Returns the serials added."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    out = Path(out)
    try:
        ca_cert = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
        ca_key = serialization.load_pem_private_key((out / "ca.key").read_bytes(), None)
    except FileNotFoundError as exc:
        raise ValueError(f"no CA in {out} ({exc.filename} missing): revoke in the folder where "
                         f"`tricopy certs` made the CA") from None
    now = datetime.datetime.now(datetime.timezone.utc)
    entries: dict[int, datetime.datetime] = {}
    crl_path = out / "crl.pem"
    if crl_path.exists() and not fresh:
        old = x509.load_pem_x509_crl(crl_path.read_bytes())
        if old.is_signature_valid(ca_cert.public_key()):
            entries = {e.serial_number: e.revocation_date_utc for e in old}
    added = []
    for name in revoke:
        try:
            cert = x509.load_pem_x509_certificate((out / f"{name}.pem").read_bytes())
        except FileNotFoundError:
            raise ValueError(f"no certificate {out / (name + '.pem')} to revoke") from None
        if cert.issuer != ca_cert.subject:
            raise ValueError(f"{name}.pem is not a certificate of the CA in {out}")
        entries.setdefault(cert.serial_number, now)
        added.append(cert.serial_number)
    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(ca_cert.subject)
               .last_update(now - datetime.timedelta(minutes=5))
               .next_update(now + datetime.timedelta(days=days)))
    for serial, when in sorted(entries.items()):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build())
    crl = builder.sign(ca_key, hashes.SHA256())
    _write(crl_path, crl.public_bytes(serialization.Encoding.PEM), False)
    return added


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    for n in names:
        if not all(c.isalnum() or c in "-_." for c in n) or len(n) > 64:
            raise ValueError(f"{n!r}: a site name is letters, digits, '-', '_', '.' (1..64)")
    return names


def _revoke(args) -> int:
    if args.command[0] != "revoke":
        print(f"tricopy certs: {' '.join(args.command)!r}: the only command is "
              f"`revoke NAME...` (without one, --sites makes certificates)", file=sys.stderr)
        return 2
    try:
        names = _names(",".join(args.command[1:]))
        serials = write_crl(args.out, names, days=args.days)
    except (ValueError, OSError) as exc:
        print(f"tricopy certs revoke: {exc}", file=sys.stderr)
        return 1
    for name, serial in zip(names, serials):
        print(f"revoked {name} (serial {serial:#x}) in {Path(args.out) / 'crl.pem'}")
    if not names:
        print(f"re-signed {Path(args.out) / 'crl.pem'}: valid {args.days} days from now")
    print("copy crl.pem to every site (tls.crl) and restart them; make a new certificate "
          "for a revoked site with `tricopy certs --sites NAME --clients ''`")
    return 0


def _run(args) -> int:
    if args.command:
        return _revoke(args)
    if args.sites is None:
        print("tricopy certs: --sites is needed to make certificates (or: revoke NAME...)",
              file=sys.stderr)
        return 2
    try:
        names = _names(args.sites) + _names(args.clients)
        if not names:
            raise ValueError("--sites names no site")
        out = make_certs(args.out, names, days=args.days, new_ca=args.new_ca)
    except (ValueError, OSError) as exc:
        print(f"tricopy certs: {exc}", file=sys.stderr)
        return 1
    print(f"CA {out / 'ca.pem'} (key {out / 'ca.key'}: keep it offline)")
    for n in names:
        print(f"{n}: {out / (n + '.pem')} {out / (n + '.key')}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("certs", help="make a cluster CA and site certificates (TLS)",
                              description="Make a CA and per-site certificates for the mutually "
                                          "authenticated TLS links (docs/security.md).")
    p.add_argument("command", nargs="*", metavar="revoke NAME",
                   help="revoke NAME...: add their certificates to crl.pem")
    p.add_argument("--out", required=True,
                   help="folder for ca.pem/ca.key, <name>.pem/.key and crl.pem")
    p.add_argument("--sites", help="comma-separated site names (CN and SAN)")
    p.add_argument("--clients", default="admin",
                   help="comma-separated control client names (default: admin; '' for none)")
    p.add_argument("--days", type=int, default=825,
                   help="validity in days (default 825; also of crl.pem)")
    p.add_argument("--new-ca", action="store_true", help="replace an existing CA in --out")
    p.set_defaults(func=_run)
