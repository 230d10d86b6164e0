"""The small asyncio NBD client of the test tools (host/nbd/client.py) against
the project's NBD server: writes land, reads and flushes answer, refusals are
typed errors."""

from __future__ import annotations

import asyncio

import pytest

from tricopy.host.nbd import FileExport, NbdServer
from tricopy.host.nbd.client import NbdClient, NbdRefused


def test_client_writes_reads_flushes_and_gets_refusals(tmp_path):
    disk, ro = tmp_path / "disk.img", tmp_path / "ro.img"
    disk.write_bytes(bytes(1 << 20))
    ro.write_bytes(bytes(1 << 20))

    async def main():
        exports = {"disk": FileExport(disk, 4096), "ro": FileExport(ro, 4096, read_only=True)}
        server = NbdServer(exports, "127.0.0.1", 0)
        await server.start()
        try:
            c = await NbdClient.open("127.0.0.1", server.port, "disk")
            assert c.size == 1 << 20
            await c.write(8192, b"\xab" * 4096)
            await c.write(12288, b"\xcd" * 8192, fua=True)
            await c.flush()
            assert await c.read(8192, 12288) == b"\xab" * 4096 + b"\xcd" * 8192
            with pytest.raises(NbdRefused):
                await c.write(1 << 20, b"\x00" * 4096)         # past the end
            await c.write(0, b"\x01" * 4096)                   # the connection goes on
            await c.close()
            r = await NbdClient.open("127.0.0.1", server.port, "ro")
            with pytest.raises(NbdRefused) as err:
                await r.write(0, b"\x00" * 4096)
            assert err.value.errno == 1                        # EPERM
            await r.close()
            with pytest.raises(NbdRefused):
                await NbdClient.open("127.0.0.1", server.port, "nosuch")
        finally:
            await server.close()
            for e in exports.values():
                e.close()

    asyncio.run(main())
    data = disk.read_bytes()
    assert data[:4096] == b"\x01" * 4096 and data[8192:12288] == b"\xab" * 4096
