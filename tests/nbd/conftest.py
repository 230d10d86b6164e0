"""Fixtures: a real NbdServer on 127.0.0.1 in a thread with its own event loop."""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from tricopy.host.nbd import FileExport, NbdServer

DISK_SIZE = 64 << 20
RO_SIZE = 8 << 20
BLOCK = 4096


class ServerThread:
    """Runs ``NbdServer`` on a private event loop so clients use real sockets."""

    def __init__(self, exports: dict, tls_context=None):
        self.exports = exports
        self.tls_context = tls_context
        self.loop = asyncio.new_event_loop()
        self.server: NbdServer | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> int:
        self._thread.start()
        self.server = NbdServer(self.exports, "127.0.0.1", 0, tls_context=self.tls_context)
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self.server.port

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
        for export in self.exports.values():
            export.close()


class RecordingExport(FileExport):
    """A FileExport that also records each write-type call, so tests can see
    what the client really sent (FUA or not, TRIM or zeroes)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.calls: list[tuple[str, int, int, bool]] = []

    async def write(self, offset, data, fua):
        self.calls.append(("write", offset, len(data), fua))
        await super().write(offset, data, fua)

    async def trim(self, offset, length):
        self.calls.append(("trim", offset, length, False))
        await super().trim(offset, length)

    async def write_zeroes(self, offset, length, fua):
        self.calls.append(("zeroes", offset, length, fua))
        await super().write_zeroes(offset, length, fua)

    async def flush(self):
        self.calls.append(("flush", 0, 0, False))
        await super().flush()


@dataclass
class Served:
    port: int
    disk: Path          # "disk": 64 MiB read-write, 4 KiB blocks
    ro: Path            # "ro": 8 MiB read-only, known content
    ro_content: bytes
    export: RecordingExport

    def uri(self, name: str = "disk") -> str:
        return f"nbd://127.0.0.1:{self.port}/{name}"


@pytest.fixture
def served(tmp_path):
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(DISK_SIZE)
    ro = tmp_path / "ro.img"
    content = os.urandom(RO_SIZE)
    ro.write_bytes(content)
    recording = RecordingExport(disk, BLOCK, description="scratch disk")
    thread = ServerThread({
        "disk": recording,
        "ro": FileExport(ro, BLOCK, read_only=True),
    })
    port = thread.start()
    try:
        yield Served(port, disk, ro, content, recording)
    finally:
        thread.stop()

