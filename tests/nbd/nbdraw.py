"""A minimal NBD client over a raw socket, for sending exactly the bytes a test wants.

Real clients (qemu-io, nbdinfo, ...) never send malformed input; this one can.
"""

from __future__ import annotations

import socket
import struct
import subprocess

from tricopy.host.nbd import protocol as p


class RawClient:
    """Blocking NBD client: handshake helpers plus request/reply primitives."""

    def __init__(self, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.structured = False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "RawClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def recv_exact(self, n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError(f"connection closed after {len(data)} of {n} bytes")
            data += chunk
        return bytes(data)

    def is_closed(self) -> bool:
        """True if the server closed the connection (reads EOF) within the timeout."""
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True

    # --- handshake ----------------------------------------------------------
    def greeting(self, client_flags: int = 3) -> int:
        magic, opt, flags = struct.unpack(">QQH", self.recv_exact(18))
        assert (magic, opt) == (p.NBDMAGIC, p.IHAVEOPT)
        self.sock.sendall(struct.pack(">I", client_flags))
        return flags

    def option(self, option: int, data: bytes = b"") -> None:
        self.sock.sendall(struct.pack(">QII", p.IHAVEOPT, option, len(data)) + data)

    def option_reply(self) -> tuple[int, int, bytes]:
        magic, option, rtype, length = struct.unpack(">QIII", self.recv_exact(20))
        assert magic == p.NBD_REP_MAGIC
        return option, rtype, self.recv_exact(length)

    def go(self, name: str, infos: tuple[int, ...] = (p.NBD_INFO_BLOCK_SIZE,)) -> list:
        """Send NBD_OPT_GO; return all replies up to and including ACK or an error."""
        raw = name.encode()
        self.option(p.NBD_OPT_GO, struct.pack(">I", len(raw)) + raw
                    + struct.pack(f">H{len(infos)}H", len(infos), *infos))
        replies = []
        while True:
            reply = self.option_reply()
            replies.append(reply)
            if reply[1] != p.NBD_REP_INFO:
                return replies

    def connect(self, name: str, structured: bool = False) -> None:
        """Full handshake into transmission on export ``name``."""
        self.greeting()
        if structured:
            self.option(p.NBD_OPT_STRUCTURED_REPLY)
            assert self.option_reply()[1] == p.NBD_REP_ACK
            self.structured = True
        replies = self.go(name)
        assert replies[-1][1] == p.NBD_REP_ACK, replies

    # --- transmission -------------------------------------------------------
    def send_request(self, cmd: int, offset: int = 0, length: int = 0, data: bytes = b"",
                     flags: int = 0, handle: int = 1) -> None:
        self.sock.sendall(struct.pack(">IHHQQI", p.NBD_REQUEST_MAGIC, flags, cmd, handle,
                                      offset, length) + data)

    def simple_reply(self, read_length: int = 0) -> tuple[int, int, bytes]:
        """(error, handle, data) of a simple reply; data only on success."""
        magic, error, handle = struct.unpack(">IIQ", self.recv_exact(16))
        assert magic == p.NBD_SIMPLE_REPLY_MAGIC, hex(magic)
        data = self.recv_exact(read_length) if read_length and not error else b""
        return error, handle, data

    def chunk(self) -> tuple[int, int, int, bytes]:
        """(flags, type, handle, payload) of one structured reply chunk."""
        magic, flags, ctype, handle, length = struct.unpack(">IHHQI", self.recv_exact(20))
        assert magic == p.NBD_STRUCTURED_REPLY_MAGIC, hex(magic)
        return flags, ctype, handle, self.recv_exact(length)

    def request(self, cmd: int, offset: int = 0, length: int = 0, data: bytes = b"",
                flags: int = 0, handle: int = 1) -> tuple[int, bytes]:
        """One request, its simple reply: (error, data)."""
        self.send_request(cmd, offset, length, data, flags, handle)
        error, got, payload = self.simple_reply(length if cmd == p.Cmd.READ else 0)
        assert got == handle
        return error, payload


def run(*cmd: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    """Run a client command; on failure the assertion shows its output."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc
