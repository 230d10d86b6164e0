"""NBD exports of the sites' volumes: PVOLs read-write at the primary, SVOLs read-only.

A :class:`PrimaryExport` is one PVOL of a running :class:`~tricopy.host.primary.site.Primary`.
Every write goes through the replication path (``MasterGroup.journal``):
applied to the PVOL, journaled to the relay, and answered only after the
relay's ACK, i.e. once the journal is durable at the relay under its
durability policy (docs/replication.md).  So an NBD reply to a WRITE,
WRITE_ZEROES or TRIM means "survives the loss of the primary".

* FUA additionally fsyncs the PVOL, so the write also survives a power loss
  of the primary itself (NBD's FUA is about the export's own storage).
* FLUSH fsyncs the write log and every PVOL of the site (``Primary.flush``):
  every write answered before it is then durable on the PVOL too.  One
  ``Primary`` serves all connections, so CAN_MULTI_CONN is safe.
* TRIM and WRITE_ZEROES are journaled as TRIM/ZERO journals without data.
* When the relay refuses or cannot be reached, ``MasterGroup`` first holds the
  write (inflow control), then suspends the group after ``full_suspend_after``
  (relay FULL) or ``link_suspend_after`` (relay unreachable) seconds.  The
  waiting writes and every later one fail: ``NBD_ENOSPC`` when the journal
  was full, ``NBD_EIO`` otherwise.  The client never waits longer than that.

:func:`serve_site_volumes` starts the NBD server a site's ``[nbd]`` config
asks for.  The secondary's SVOLs are served by :class:`SecondaryExport`:
read-only (writes answered ``NBD_EPERM`` by the protocol core), and fenced
(reads answered ``NBD_EIO``) while they are not a consistent image; after a
takeover at the secondary the same exports are read-write.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING

from ..config import ConfigError, NbdConfig, VolumeConfig
from ..wire.protocol import MAX_DATA, Kind
from ..disk.volume import Volume, VolumeError
from ..wire.tls import Revocations
from .export import Export, ExportError
from .protocol import NBD_EINVAL, NBD_EIO, NBD_ENOSPC, NBD_EPERM
from .server import NbdServer

if TYPE_CHECKING:
    from ..primary.site import MasterGroup
    from ..secondary.site import RestoreGroup

log = logging.getLogger(__name__)

__all__ = ["PrimaryExport", "SecondaryExport", "export_name", "primary_exports",
           "secondary_exports", "serve_site_volumes", "client_crl"]

# Reads below this size are served inline: a pread from the page cache costs
# less than the hop to a worker thread.
_INLINE_READ = 256 << 10


def export_name(vol: VolumeConfig) -> str:
    """The NBD export name of a volume: its file name without the suffix (``pvol0``)."""
    return vol.path.stem


class PrimaryExport(Export):
    """One PVOL (volume ``idx`` of a MASTER group) as a read-write NBD export."""

    multi_conn = True
    batch_max = MAX_DATA       # one journal each: larger writes are split (``journal``)

    def __init__(self, group: "MasterGroup", idx: int):
        self.group = group
        self.idx = idx
        self.volume: Volume = group.volume(idx)
        self.size = self.volume.size
        self.block_size = self.volume.block_size
        self.description = f"PVOL idx {idx} of group {group.cfg.grname}"
        self._fenced_logged = False

    async def read(self, offset: int, length: int) -> bytes:
        if length <= _INLINE_READ:
            return self.volume.read(offset, length)
        return await asyncio.to_thread(self.volume.read, offset, length)

    async def write(self, offset: int, data: bytes, fua: bool) -> None:
        await self._journal(Kind.UPDATE, offset, len(data), data, fua)

    async def write_zeroes(self, offset: int, length: int, fua: bool) -> None:
        await self._journal(Kind.ZERO, offset, length, b"", fua)

    async def trim(self, offset: int, length: int) -> None:
        await self._journal(Kind.TRIM, offset, length, b"", False)

    async def flush(self) -> None:
        try:
            await self.group.flush()
        except OSError as exc:
            raise ExportError(NBD_EIO, f"flush of group {self.group.cfg.grname} failed: "
                                       f"{exc.strerror}") from None

    async def write_many(self, writes: list) -> list:
        """Writes ``(offset, data, fua)`` of one NBD read, journaled as one batch
        (``MasterGroup.journal_many``); per write None or its error."""
        results = await self.group.journal_many(self.idx, writes)
        errors = [None if exc is None else self._refusal(exc) for exc in results]
        if any(fua for _, _, fua in writes):
            try:
                await asyncio.to_thread(self.volume.flush)
            except OSError as exc:
                errors = [err if err is not None or not fua else exc
                          for (_, _, fua), err in zip(writes, errors)]
        return errors

    async def _journal(self, kind: Kind, offset: int, length: int, data: bytes,
                       fua: bool) -> None:
        try:
            await self.group.journal(kind, self.idx, offset, length, data, fua=fua)
        except Exception as exc:
            raise self._refusal(exc) from None
        if fua:
            await asyncio.to_thread(self.volume.flush)

    def _refusal(self, exc: Exception) -> Exception:
        """What the NBD client is told for a write the group refused with ``exc``."""
        from ..primary.site import GroupFenced, GroupSuspended   # avoid a cycle at import
        if isinstance(exc, GroupFenced):
            # Another site is the primary now: a write here would fork the data.
            if not self._fenced_logged:
                log.error("NBD write to %s refused: %s", self.description, exc)
                self._fenced_logged = True
            return ExportError(NBD_EPERM, str(exc))
        if isinstance(exc, GroupSuspended):
            # A journal that was FULL for too long is "out of space" to the host;
            # any other refusal (relay unreachable, wrong epoch...) is an I/O error.
            errno = NBD_ENOSPC if self.group.blocked else NBD_EIO
            return ExportError(errno, str(exc))
        if isinstance(exc, VolumeError):     # the NBD core checks ranges first; defensive
            return ExportError(NBD_EINVAL, str(exc))
        return exc


def client_crl(cfg: NbdConfig) -> Revocations | None:
    """The NBD clients' revocation list (``nbd.tls_client_crl``), or None.

    Read once at start, strictly: a file that is no CRL, or not one signed
    by ``tls_client_ca``, stops the start (:class:`ConfigError`) rather than
    serving with a list that revokes nothing."""
    if cfg.tls_client_crl is None:
        return None
    key = "nbd.tls_client_crl"
    try:
        return Revocations(cfg.tls_client_crl, cfg.tls_client_ca, key=key)
    except OSError as exc:
        raise ConfigError(f"{key} {cfg.tls_client_crl}: cannot read: {exc.strerror}; write it "
                          f"with `tricopy certs revoke`") from None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _tls_context(cfg: NbdConfig) -> ssl.SSLContext | None:
    if cfg.tls_cert is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    if cfg.tls_client_ca is not None:     # clients must present a certificate of this CA
        ctx.load_verify_locations(cafile=cfg.tls_client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    # the NBD server checks a client's serial against it after STARTTLS (tls.revoked)
    ctx.tricopy_crl = client_crl(cfg)
    return ctx


async def serve_site_volumes(cfg: NbdConfig, exports: dict[str, Export],
                             connections: int = 32) -> NbdServer:
    """Start the site's NBD server on ``cfg.listen`` for ``exports``; returns it running."""
    server = NbdServer(exports, *cfg.listen, tls_context=_tls_context(cfg),
                       max_connections=connections)
    await server.start()
    return server


def primary_exports(groups) -> dict[str, Export]:
    """One :class:`PrimaryExport` per PVOL of the given MASTER groups, by export name."""
    exports: dict[str, Export] = {}
    for group in groups:
        for vol in group.site.volumes_of(group.cfg.grnum):
            name = export_name(vol)
            if name in exports:
                raise ValueError(f"two PVOLs would both be exported as {name!r}: "
                                 f"give the volume files different names")
            exports[name] = PrimaryExport(group, vol.idx)
    return exports


class SecondaryExport(Export):
    """One SVOL of a RESTORE group: read-only and fenced while it is no consistent
    image; read-write once the group was taken over at this site.

    Reads run on the event loop, between two restore steps of the restorer
    (which also runs there): a read never sees half of a step, so every read
    returns a prefix of the write history.  While the group says the SVOLs
    are no consistent image (replay after a crash, base copy running) reads
    fail with EIO and one log line per fenced period says why.

    After ``tricopy takeover`` the same export name serves the new PVOL
    read-write (``RestoreGroup.write_local``); a client connected before the
    takeover keeps its read-only flags until it reconnects.
    """

    multi_conn = True

    def __init__(self, group: "RestoreGroup", idx: int):
        self.group = group
        self.idx = idx
        self.volume: Volume = group.volumes[idx]
        self.size = self.volume.size
        self.block_size = self.volume.block_size
        self._fenced_logged = False

    @property
    def read_only(self) -> bool:
        return not self.group.writable

    @property
    def description(self) -> str:
        what = "PVOL (taken over)" if self.group.taken_over else "SVOL (read-only)"
        return f"{what} idx {self.idx} of group {self.group.cfg.grname}"

    async def read(self, offset: int, length: int) -> bytes:
        why = self.group.readable()
        if why is not None:
            if not self._fenced_logged:
                log.warning("NBD read of %s refused: %s", self.description, why)
                self._fenced_logged = True
            raise ExportError(NBD_EIO, why)
        self._fenced_logged = False
        return self.volume.read(offset, length)

    async def _write(self, kind: Kind, offset: int, length: int, data: bytes, fua: bool) -> None:
        try:
            await self.group.write_local(kind, self.idx, offset, length, data, fua)
        except VolumeError as exc:
            raise ExportError(NBD_EPERM if self.read_only else NBD_EIO, str(exc)) from None
        except OSError as exc:
            raise ExportError(NBD_EIO, f"{self.description}: {exc.strerror or exc}") from None

    async def write(self, offset: int, data: bytes, fua: bool) -> None:
        await self._write(Kind.UPDATE, offset, len(data), data, fua)

    async def write_zeroes(self, offset: int, length: int, fua: bool) -> None:
        await self._write(Kind.ZERO, offset, length, b"", fua)

    async def trim(self, offset: int, length: int) -> None:
        await self._write(Kind.TRIM, offset, length, b"", False)

    async def flush(self) -> None:
        if self.group.taken_over:
            try:
                await self.group.flush_local()
            except OSError as exc:
                raise ExportError(NBD_EIO, f"flush of group {self.group.cfg.grname} failed: "
                                           f"{exc.strerror}") from None


def secondary_exports(groups) -> dict[str, Export]:
    """A :class:`SecondaryExport` per SVOL of the given RESTORE groups, by export name."""
    exports: dict[str, Export] = {}
    for group in groups:
        for vol in group.site.volumes_of(group.cfg.grnum):
            exports[export_name(vol)] = SecondaryExport(group, vol.idx)
    return exports
