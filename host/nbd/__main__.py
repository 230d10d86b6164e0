"""Serve files over NBD: ``python -m tricopy.host.nbd [--tls-cert C --tls-key K] NAME=PATH[:ro] ...``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import ssl

from ..wire.tls import Revocations
from .export import FileExport
from .server import NbdServer


def parse_export(spec: str) -> tuple[str, tuple[str, bool]]:
    """``NAME=PATH`` or ``NAME=PATH:ro`` → (name, (path, read_only))."""
    name, sep, path = spec.partition("=")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"export must be NAME=PATH[:ro], not {spec!r}")
    read_only = path.endswith(":ro")
    return name, (path.removesuffix(":ro"), read_only)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tricopy.host.nbd", description=__doc__)
    ap.add_argument("exports", nargs="+", type=parse_export, metavar="NAME=PATH[:ro]")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=10809)
    ap.add_argument("--block-size", type=int, default=4096)
    ap.add_argument("--tls-cert", help="PEM certificate chain; enables mandatory TLS")
    ap.add_argument("--tls-key", help="PEM private key for --tls-cert")
    ap.add_argument("--tls-client-ca", help="PEM CA: clients must present a certificate of it")
    ap.add_argument("--tls-client-crl",
                    help="PEM CRL of --tls-client-ca (tricopy certs revoke): refuse those clients")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    tls = None
    if args.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
        if args.tls_client_ca:
            tls.load_verify_locations(cafile=args.tls_client_ca)
            tls.verify_mode = ssl.CERT_REQUIRED
    if args.tls_client_crl:
        if not (args.tls_cert and args.tls_client_ca):
            ap.error("--tls-client-crl needs --tls-cert, --tls-key and --tls-client-ca")
        try:        # checked by the server after each STARTTLS (tls.revoked)
            tls.tricopy_crl = Revocations(args.tls_client_crl, args.tls_client_ca,
                                          key="--tls-client-crl")
        except (OSError, ValueError) as exc:
            ap.error(str(exc))
    exports = {name: FileExport(path, args.block_size, ro) for name, (path, ro) in args.exports}
    server = NbdServer(exports, args.host, args.port, tls_context=tls)

    async def run() -> None:
        await server.start()
        logging.info("serving %s on %s:%d", ", ".join(exports), args.host, server.port)
        await server.serve_forever()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
