"""``engine serve``: the reference engine on a TCP socket.

The server speaks the engine byte protocol (:class:`EngineStream` in front of
:class:`EngineModel`), the same bytes as the Verilator harness and the
boards, so anything that drives those (``PortEngine`` with a ``socket://``
URL, the relay's ``--engine port``) can be pointed at the model instead.

One client at a time.  The engine state outlives a connection, as a board's
does across a cable replug; each connection gets a fresh byte parser (a link
reset).
"""

from __future__ import annotations

import argparse
import socket
import socketserver
import sys
import threading
from typing import Callable

from tricopy.host.engine.model import EngineModel, EngineStream

__all__ = ["EngineServer", "serve", "register", "main"]

_POLL = 0.2             # s: how often a connected handler looks for a shutdown


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) as a socket address."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"listen address must be HOST:PORT, not {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


class _Handler(socketserver.BaseRequestHandler):
    server: "EngineServer"

    def handle(self) -> None:
        stream = EngineStream(self.server.model)
        self.request.settimeout(_POLL)
        while not self.server.stopping.is_set():
            try:
                data = self.request.recv(1 << 16)
            except socket.timeout:
                continue
            except OSError:
                return
            if not data:
                return
            answer = stream.feed(data)
            if answer:
                try:
                    self.request.sendall(answer)
                except OSError:
                    return


class EngineServer(socketserver.TCPServer):
    """A TCP server exposing one :class:`EngineModel` through :class:`EngineStream`.

    Runs on a daemon thread from construction; ``url`` is what to pass to
    ``PortEngine`` / ``open_engine("port", url=...)``.  Use as a context
    manager or call :meth:`close`.
    """

    allow_reuse_address = True

    def __init__(self, model: EngineModel, listen: str = "127.0.0.1:0"):
        host, port = parse_listen(listen)
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), _Handler)
        self.model = model
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self.serve_forever, args=(_POLL,),
                                        name="engine-serve", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"socket://[{host}]:{port}" if ":" in host else f"socket://{host}:{port}"

    def wait(self) -> None:
        """Block until :meth:`close` (from another thread) or a KeyboardInterrupt."""
        self._thread.join()

    def close(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()

    def __enter__(self) -> "EngineServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve(size: int, listen: str = "127.0.0.1:0", *,
          clock: Callable[[], int] | None = None, name: str = "model") -> EngineServer:
    """Start serving a fresh :class:`EngineModel` of ``size`` ring bytes; returns the running server."""
    return EngineServer(EngineModel(size, clock=clock, name=name), listen)


def _size(text: str) -> int:
    """Ring size: bytes, or with a K/M/G suffix (powers of 1024)."""
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper(), 1)
    digits = text[:-1] if scale > 1 else text
    if not digits.isdigit():
        raise argparse.ArgumentTypeError(f"size must be bytes, optionally with K/M/G, not {text!r}")
    return int(digits) * scale


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        server = serve(args.size, args.listen)
    except (ValueError, OSError) as exc:
        print(f"engine serve: {exc}", file=sys.stderr)
        return 2
    print(f"engine model ({args.size} bytes) listening on {server.url}", flush=True)
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``engine serve --size N --listen HOST:PORT`` to a CLI's subcommands.

    Each leaf parser sets ``func``: call ``args.func(args)`` for the exit code.
    """
    engine = subparsers.add_parser("engine", help="journal engine tools")
    commands = engine.add_subparsers(dest="engine_command", required=True)
    p = commands.add_parser("serve", help="serve the reference engine model over TCP")
    p.add_argument("--size", type=_size, required=True,
                   help="ring bytes: a multiple of 64, at least 128 (K/M/G suffixes allowed)")
    p.add_argument("--listen", default="127.0.0.1:0",
                   help="HOST:PORT to listen on (port 0: any free port, printed on start)")
    p.set_defaults(func=_cmd_serve)


def main(argv: list[str] | None = None) -> int:
    """``python -m tricopy.host.engine.serve ...``: the subcommand on its own."""
    parser = argparse.ArgumentParser(prog="tricopy")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["engine", "serve", *(argv if argv is not None else sys.argv[1:])])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
