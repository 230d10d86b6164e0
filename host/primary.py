"""The primary site: PVOLs, the host write path, the synchronous link to the relay.

Patent Fig. 7/8: a host write is applied to the PVOL, journaled (control data +
journal data) to the relay, and completed only after the relay's ACK.

Order and pipelining: the step "stamp PSEQ, log, apply to the PVOL, queue the
JNLWR" runs without an ``await`` inside, so on the event loop it is atomic:
journal order == PVOL apply order, whatever number of writes are in flight.
The ACKs are then awaited concurrently (one ordered stream, many in flight).

Exactly-once across reconnects and restarts (docs/replication.md): every
journal carries the group's primary sequence number PSEQ in TAG.  Before a
journal is applied it is appended to the write log
``<state_dir>/<grname>.plog``; after a reconnect the relay's HELLO says the
last PSEQ it holds durably, and every logged journal after it is sent again,
in order.  On restart the log is replayed onto the PVOL (redo) so a write
that was logged but not yet applied is not lost either.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import time
from collections import OrderedDict
from pathlib import Path

from . import protocol
from .config import GroupAttr, GroupConfig, SiteConfig
from .control import ControlServer
from .link import Link, LinkError, LinkRefused, connect
from .protocol import Control, Frame, FrameType, Kind, Role, Status
from .relay import TAG_MOD, next_pseq, tag_distance
from .volume import Volume, VolumeError

__all__ = ["GroupSuspended", "WriteLog", "MasterGroup", "Primary"]

log = logging.getLogger(__name__)

LOG_TRUNCATE = 8 << 20      # truncate the write log past this size once nothing is in flight
RECONNECT_DELAY = 0.2
FULL_RETRY_DELAY = 0.2      # inflow control: wait this long after a FULL before resending


class GroupSuspended(Exception):
    """The group is suspended (GRSTS SUSP): writes are refused; ``reason`` says why."""


class WriteLog:
    """The primary's write log: every journal, before it is applied, until it is ACKed.

    Records are the control data (with CCRC) followed by the data.  A torn tail
    (crash in the middle of an append) is cut off on open.  ``<grname>.pseq``
    remembers the last PSEQ across a truncation.
    """

    def __init__(self, path: Path):
        self.path = path
        self._pseq_path = path.with_suffix(".pseq")
        self.records: list[tuple[Control, bytes]] = []
        good = 0
        if path.exists():
            raw = path.read_bytes()
            pos = 0
            while pos + protocol.CONTROL_SIZE <= len(raw):
                ctl = Control.unpack(raw[pos:pos + protocol.CONTROL_SIZE])
                end = pos + protocol.CONTROL_SIZE + ctl.data_len
                if not ctl.ccrc_ok() or end > len(raw):
                    break
                data = raw[pos + protocol.CONTROL_SIZE:end]
                if ctl.data_len and protocol.crc32c(data) != ctl.data_crc:
                    break
                self.records.append((ctl, data))
                pos = good = end
            if good != len(raw):
                log.warning("write log %s: cut a torn tail of %d bytes", path, len(raw) - good)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        os.ftruncate(self._fd, good)
        os.lseek(self._fd, good, os.SEEK_SET)
        self.size = good
        self.saved_tag = 0
        if self._pseq_path.exists():
            self.saved_tag = int(json.loads(self._pseq_path.read_text())["last_tag"])

    def last_tag(self) -> int:
        return self.records[-1][0].tag if self.records else self.saved_tag

    def append(self, ctl: Control, data: bytes) -> None:
        # One write() per record; it reaches the page cache before the PVOL
        # apply, so a killed process never has applied-but-unlogged writes.
        os.write(self._fd, ctl.pack() + data)
        self.size += protocol.CONTROL_SIZE + len(data)

    def truncate(self, last_tag: int) -> None:
        tmp = self._pseq_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"last_tag": last_tag}))
        with open(tmp) as f:
            os.fsync(f.fileno())
        os.replace(tmp, self._pseq_path)
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        self.size = 0
        self.saved_tag = last_tag
        self.records = []

    def flush(self) -> None:
        os.fsync(self._fd)


class MasterGroup:
    """One MASTER journal group: PVOLs, PSEQ, in-flight journals, the relay link.

    ``grsts`` is the group status (patent Fig. 5, GRSTS): PAIR while journals
    flow, SUSP (with ``reason``) when the relay refuses them; ``blocked`` is
    True while the relay answers FULL (inflow control).  ``dirty`` lists the
    extents applied to a PVOL but not journaled because the group suspended:
    the seam for the dirty bitmap and delta resync.
    """

    def __init__(self, cfg: GroupConfig, site: SiteConfig):
        self.cfg = cfg
        self.site = site
        self.volumes = {v.idx: Volume(v.path, v.size, v.block_size, idx=v.idx)
                        for v in site.volumes_of(cfg.grnum)}
        site.state_dir.mkdir(parents=True, exist_ok=True)
        self.log = WriteLog(site.state_dir / f"{cfg.grname}.plog")
        self.grsts = "PAIR"
        self.reason = ""
        self.blocked = False
        self.dirty: list[tuple[int, int, int]] = []
        self.link: Link | None = None
        self.acked = 0
        self.resent = 0
        self.pending: OrderedDict[int, tuple[Control, bytes, asyncio.Future]] = OrderedDict()
        self._full_since: float | None = None
        self.last_pseq = self.log.last_tag()    # the last PSEQ given to a journal (0: none yet)
        self._redo()

    def _redo(self) -> None:
        """Replay the write log onto the PVOLs and re-queue every logged journal."""
        loop = asyncio.get_running_loop()
        for ctl, data in self.log.records:
            self._apply(ctl, data)
            self.pending[ctl.tag] = (ctl, data, loop.create_future())
        if self.log.records:
            log.info("group %s: redid %d logged journals", self.cfg.grname, len(self.log.records))

    def _apply(self, ctl: Control, data: bytes) -> None:
        vol = self.volumes[ctl.idx]
        if ctl.kind in protocol.DATA_KINDS:
            vol.write(ctl.address, data)
        elif ctl.kind == Kind.ZERO:
            vol.write_zeroes(ctl.address, ctl.length)
        elif ctl.kind == Kind.TRIM:
            vol.trim(ctl.address, ctl.length)

    # -- host write path ---------------------------------------------------------

    def volume(self, idx: int) -> Volume:
        vol = self.volumes.get(idx)
        if vol is None:
            raise VolumeError(f"no PVOL with idx {idx} in group {self.cfg.grname}")
        return vol

    async def journal(self, kind: Kind, idx: int, offset: int, length: int,
                      data: bytes = b"", fua: bool = False) -> int:
        """Apply one host request and journal it; returns once the relay ACKed all of it."""
        self.volume(idx).check(offset, length)
        futures = []
        # Journals larger than MAX_DATA are split; the pieces are consecutive PSEQs.
        step = protocol.MAX_DATA
        pos = 0
        while True:
            n = min(step, length - pos)
            piece = data[pos:pos + n] if kind in protocol.DATA_KINDS else b""
            futures.append(self._enqueue(kind, idx, offset + pos, n, piece, fua))
            pos += n
            if pos >= length:
                break
        if self.link is not None:
            try:
                await self.link.drain()
            except LinkError:
                pass          # the link task reconnects and resends
        acks = await asyncio.gather(*futures)
        return acks[-1].seq

    def _enqueue(self, kind: Kind, idx: int, offset: int, length: int, data: bytes,
                 fua: bool) -> asyncio.Future:
        # No await in here: PSEQ order == log order == PVOL apply order == send order.
        if self.grsts == "SUSP":
            raise GroupSuspended(f"group {self.cfg.grname} is suspended: {self.reason}")
        tag = self.last_pseq = next_pseq(self.last_pseq)
        ctl = Control(address=offset, length=length, data_len=len(data),
                      data_crc=protocol.crc32c(data) if data else 0, epoch=self.cfg.epoch,
                      idx=idx, kind=kind, flags=1 if fua else 0, group=self.cfg.grnum,
                      tag=tag).with_ccrc()
        self.log.append(ctl, data)
        self._apply(ctl, data)
        fut = asyncio.get_running_loop().create_future()
        self.pending[tag] = (ctl, data, fut)
        if self.link is not None and not self.link.closed:
            self.link.send(Frame(FrameType.JNLWR, protocol.journal_body(ctl, data)))
        return fut

    async def flush(self) -> None:
        """Host FLUSH: PVOLs and the write log durable (acked writes already are at the relay)."""
        def sync():
            self.log.flush()
            for vol in self.volumes.values():
                vol.flush()
        await asyncio.to_thread(sync)

    # -- the relay link ------------------------------------------------------------

    def _suspend(self, reason: str) -> None:
        self.grsts, self.reason = "SUSP", reason
        log.error("group %s suspended: %s", self.cfg.grname, reason)
        for ctl, _, fut in self.pending.values():
            self.dirty.append((ctl.idx, ctl.address, ctl.length))
            if not fut.done():
                fut.set_exception(GroupSuspended(f"group {self.cfg.grname} suspended: {reason}"))
        self.pending.clear()
        self.log.truncate(self.last_pseq)

    def _acked_upto(self, tag: int) -> None:
        """Every pending journal up to PSEQ ``tag`` is durable at the relay."""
        while self.pending:
            first = next(iter(self.pending))
            if tag_distance(tag, first) >= TAG_MOD // 2:
                break     # ``first`` is after ``tag``
            ctl, _, fut = self.pending.pop(first)
            self.acked += 1
            if not fut.done():
                fut.set_result(protocol.Ack(tag=first, req_type=FrameType.JNLWR))
        if not self.pending and self.log.size > LOG_TRUNCATE:
            self.log.truncate(self.last_pseq)

    async def run_link(self) -> None:
        """Connect to the relay forever; resend what it does not hold."""
        while True:
            if self.grsts == "SUSP":
                await asyncio.sleep(1.0)
                continue
            hello = protocol.Hello(Role.PRIMARY, self.cfg.grnum, self.cfg.epoch,
                                   self.last_pseq, self.cfg.grname, self.site.site)
            try:
                link, peer = await connect(self.cfg.peer, hello, heartbeat=self.site.heartbeat,
                                           name=f"{self.site.site}->relay")
            except LinkRefused as exc:
                self._suspend(f"relay refused HELLO: {exc.status.name}")
                continue
            except LinkError as exc:
                log.debug("relay not reachable: %s", exc)
                await asyncio.sleep(RECONNECT_DELAY)
                continue
            try:
                await self._session(link, peer)
            except LinkError as exc:
                log.info("relay link: %s", exc)
            finally:
                self.link = None
                await link.close()
            await asyncio.sleep(FULL_RETRY_DELAY if self.blocked else RECONNECT_DELAY)

    async def _session(self, link: Link, peer: protocol.Hello) -> None:
        if peer.last_seq:
            self._acked_upto(peer.last_seq)      # the relay holds these durably already
            if not self.pending and tag_distance(peer.last_seq, self.last_pseq) < TAG_MOD // 2:
                # The relay knows a later PSEQ than we do (our log was lost): continue after it.
                self.last_pseq = peer.last_seq
        self.link = link
        for ctl, data, _ in self.pending.values():
            link.send(Frame(FrameType.JNLWR, protocol.journal_body(ctl, data)))
            self.resent += 1
        await link.drain()
        while True:
            frame = await link.recv()
            if frame.type not in (FrameType.ACK, FrameType.NAK):
                continue
            ack = protocol.Ack.from_frame(frame)
            if ack.status == Status.OK:
                self.blocked, self._full_since = False, None
                self._acked_upto(ack.tag)
            elif ack.status == Status.FULL:
                # Inflow control: stop, wait for the secondary to drain the relay, resend.
                now = time.monotonic()
                self.blocked = True
                self._full_since = self._full_since or now
                if now - self._full_since > self.cfg.full_suspend_after:
                    self._suspend(f"relay journal FULL for more than "
                                  f"{self.cfg.full_suspend_after:.0f} s")
                return
            else:
                self._suspend(f"relay refused journal PSEQ {ack.tag}: {Status(ack.status).name}")
                return

    def status(self) -> dict:
        return {"grnum": self.cfg.grnum, "grname": self.cfg.grname, "attr": "MASTER",
                "grsts": self.grsts, "reason": self.reason, "blocked": self.blocked,
                "pending": len(self.pending), "acked": self.acked, "resent": self.resent,
                "last_pseq": self.last_pseq, "dirty_extents": len(self.dirty),
                "connected": self.link is not None and not self.link.closed}


class Primary:
    """The primary site process: MASTER groups and the control socket (host writes)."""

    def __init__(self, cfg: SiteConfig):
        self.cfg = cfg
        self.groups: dict[int, MasterGroup] = {}
        self.control = ControlServer({
            "status": self._status, "write": self._write, "write_zeroes": self._zeroes,
            "trim": self._trim, "flush": self._flush, "read": self._read,
        })

    def _group_of(self, idx: int) -> MasterGroup:
        for g in self.groups.values():
            if idx in g.volumes:
                return g
        raise VolumeError(f"no PVOL with idx {idx}")

    async def write(self, idx: int, offset: int, data: bytes) -> int:
        return await self._group_of(idx).journal(Kind.UPDATE, idx, offset, len(data), data)

    async def write_zeroes(self, idx: int, offset: int, length: int) -> int:
        return await self._group_of(idx).journal(Kind.ZERO, idx, offset, length)

    async def trim(self, idx: int, offset: int, length: int) -> int:
        return await self._group_of(idx).journal(Kind.TRIM, idx, offset, length)

    async def flush(self) -> None:
        for g in self.groups.values():
            await g.flush()

    async def _write(self, req: dict) -> dict:
        data = base64.b64decode(req["data"], validate=True)
        return {"seq": await self.write(int(req["idx"]), int(req["offset"]), data)}

    async def _zeroes(self, req: dict) -> dict:
        return {"seq": await self.write_zeroes(int(req["idx"]), int(req["offset"]), int(req["length"]))}

    async def _trim(self, req: dict) -> dict:
        return {"seq": await self.trim(int(req["idx"]), int(req["offset"]), int(req["length"]))}

    async def _flush(self, req: dict) -> dict:
        await self.flush()
        return {}

    async def _read(self, req: dict) -> dict:
        vol = self._group_of(int(req["idx"])).volume(int(req["idx"]))
        return {"data": base64.b64encode(vol.read(int(req["offset"]), int(req["length"]))).decode()}

    async def _status(self, req: dict) -> dict:
        return {"site": self.cfg.site, "role": "primary",
                "groups": [g.status() for g in self.groups.values()]}

    async def run(self) -> None:
        for g in self.cfg.groups:
            if g.attr is GroupAttr.MASTER:
                self.groups[g.grnum] = MasterGroup(g, self.cfg)
        if not self.groups:
            raise ValueError("primary config has no MASTER group")
        if self.cfg.control:
            await self.control.start(self.cfg.control)
        log.info("primary %s up, %d group(s)", self.cfg.site, len(self.groups))
        await asyncio.gather(*(g.run_link() for g in self.groups.values()))
