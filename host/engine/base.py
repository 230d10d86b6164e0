"""What the relay needs from a journal engine, and how to open one.

The relay talks to its journal engine through :class:`Engine`; the backend is
chosen with ``--engine`` (docs/architecture.md, docs/sim.md):

- ``model``: :class:`ModelEngine`, the reference :class:`EngineModel` in
  process, frames handed over as objects (no byte round trip);
- ``board`` / ``port``: :class:`~tricopy.host.engine.port.PortEngine`, frames
  as bytes over a pyserial URL (``/dev/tty*``, ``socket://``, ``loop://``);
- ``sim``: :class:`~tricopy.sim.bridge.SimEngine`, the RTL in the Verilator
  harness (``sim/``), a :class:`~tricopy.host.engine.port.SocketEngine` (the
  same frames on asyncio TCP) that owns the process.

All backends share :class:`FrameEngine`, which turns calls into request
frames and checks every answer, so a backend only moves frames.
"""

from __future__ import annotations

import abc
from typing import Callable

from tricopy.host.wire import protocol
from tricopy.host.engine.model import EngineModel
from tricopy.host.wire.protocol import Ack, Control, Frame, FrameType, Status

__all__ = ["EngineError", "EngineTimeout", "EngineNak", "Engine", "FrameEngine",
           "ModelEngine", "open_engine", "ENGINE_KINDS"]

ENGINE_KINDS = ("model", "sim", "board", "port")


class EngineError(Exception):
    """The engine link failed or the engine answered something unusable."""


class EngineTimeout(EngineError):
    """The engine did not answer in time (lost bytes, truncated frame, dead link)."""


class EngineNak(EngineError):
    """A request that has no useful NAK answer was refused; ``ack`` is the NAK."""

    def __init__(self, what: str, ack: Ack):
        super().__init__(f"{what}: engine answered NAK {Status(ack.status).name} "
                         f"(seq={ack.seq})")
        self.ack = ack
        self.status = Status(ack.status)


class Engine(abc.ABC):
    """What the relay needs from a journal engine; backends: model, sim, board.

    Requests are answered strictly in order; an engine may be shared by
    several tasks, the backend serializes them.  NAKs to ``submit``,
    ``release`` and ``load`` are returned as :class:`Ack` with a non-zero
    ``status`` (FULL is a normal answer); ``read`` and ``status`` raise
    :class:`EngineNak`, since they have nothing else to return.
    """

    name: str

    @abc.abstractmethod
    async def submit(self, control: Control, data: bytes) -> Ack:
        """Journal one write; ``control`` goes as given (DATA_LEN, DATA_CRC set by the caller)."""

    @abc.abstractmethod
    async def place(self, control: Control) -> Ack:
        """JNLDESC: allocate and stamp a journal by its control data alone (a
        descriptor ring); the caller stores the data at the answer's JOFS."""

    @abc.abstractmethod
    async def read(self, from_seq: int, count: int) -> list[tuple[Control, bytes]]:
        """Up to ``count`` journals from ``from_seq``, CCRC and DATA_CRC checked."""

    @abc.abstractmethod
    async def release(self, upto: int, joptr: int | None = None) -> Ack:
        """Free the journals up to and including SEQ# ``upto``; on a descriptor
        ring ``joptr`` is where JOPTR goes (the JOFS of journal ``upto`` + 1)."""

    @abc.abstractmethod
    async def status(self) -> protocol.EngineStatus:
        """Pointers, counters and clock."""

    @abc.abstractmethod
    async def load(self, flags: int, seq: int = 0, time: int = 0, epoch: int = 0,
                   ptr: int = 0, size: int = 0) -> Ack:
        """Load sequence base, clock, epoch, ring position, ring size and mode
        (``flags``: :class:`protocol.LoadFlag`; ``size`` with RING)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the link; the engine's state is not touched."""

    async def __aenter__(self) -> "Engine":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


class FrameEngine(Engine):
    """An :class:`Engine` over a request/answer frame exchange.

    A backend implements :meth:`transact`: send one request frame, return
    every answer frame up to and including the first that is not a JNLWR
    read-out.  This class checks that each answer is the one the request
    calls for, so a link that got out of step is an error, not a wrong value.
    """

    @abc.abstractmethod
    async def transact(self, frame: Frame) -> list[Frame]:
        ...

    async def _ack(self, frame: Frame) -> Ack:
        answer = await self.transact(frame)
        if len(answer) != 1:
            raise EngineError(f"{frame.type.name}: expected one answer, got {len(answer)} frames")
        try:
            ack = Ack.from_frame(answer[0])
        except protocol.ProtocolError as exc:
            raise EngineError(f"{frame.type.name}: unusable answer: {exc}") from exc
        if ack.req_type != frame.type:
            raise EngineError(f"{frame.type.name}: answer is for request type "
                              f"{ack.req_type:#04x}; link out of step")
        return ack

    async def submit(self, control: Control, data: bytes) -> Ack:
        ack = await self._ack(Frame(FrameType.JNLWR, protocol.journal_body(control, data)))
        if ack.tag != control.tag:
            raise EngineError(f"JNLWR: answer carries TAG {ack.tag}, sent {control.tag}; "
                              "link out of step")
        return ack

    async def place(self, control: Control) -> Ack:
        ack = await self._ack(protocol.descriptor_frame(control))
        if ack.tag != control.tag:
            raise EngineError(f"JNLDESC: answer carries TAG {ack.tag}, sent {control.tag}; "
                              "link out of step")
        return ack

    async def place_batch(self, controls: list[Control]) -> Ack:
        """JNLDESC of 1..DESC_BATCH descriptors, one cumulative answer
        (docs/protocol.md, "JNLDESC batches"): an ACK carries the last
        descriptor's SEQ#, JOFS and TAG and the batch's one TIME; a NAK the
        refused descriptor's TAG and the SEQ#/JOFS of the one before it (0:
        none taken). Descriptors after a refused one are not taken."""
        ack = await self._ack(protocol.descriptor_batch_frame(controls))
        tags = [c.tag for c in controls]
        if ack.tag not in tags or (ack.status == Status.OK and ack.tag != tags[-1]):
            raise EngineError(f"JNLDESC batch: answer carries TAG {ack.tag}, sent {tags[0]}.."
                              f"{tags[-1]}; link out of step")
        return ack

    async def read(self, from_seq: int, count: int) -> list[tuple[Control, bytes]]:
        answer = await self.transact(protocol.JnlRd(from_seq, count).frame())
        try:
            ack = Ack.from_frame(answer[-1])
        except protocol.ProtocolError as exc:
            raise EngineError(f"JNLRD: unusable answer: {exc}") from exc
        if ack.req_type != FrameType.JNLRD:
            raise EngineError(f"JNLRD: answer is for request type {ack.req_type:#04x}")
        if ack.status != Status.OK:
            raise EngineNak(f"JNLRD {from_seq}+{count}", ack)
        journals = [self._journal(f, from_seq + i) for i, f in enumerate(answer[:-1])]
        if ack.tag != len(journals):
            raise EngineError(f"JNLRD: ACK counts {ack.tag} journals, {len(journals)} arrived")
        return journals

    @staticmethod
    def _journal(frame: Frame, seq: int) -> tuple[Control, bytes]:
        """Check one read-out JNLWR: it is the control data at rest, so check all of it."""
        try:
            ctl, data = protocol.split_journal(frame.body)
        except protocol.ProtocolError as exc:
            raise EngineError(f"JNLRD: read-out of SEQ# {seq} unusable: {exc}") from exc
        if frame.type != FrameType.JNLWR:
            raise EngineError(f"JNLRD: expected JNLWR, got {frame.type.name}")
        if not ctl.ccrc_ok():
            raise EngineError(f"JNLRD: SEQ# {seq} control data fails its CCRC")
        if ctl.seq != seq:
            raise EngineError(f"JNLRD: expected SEQ# {seq}, got {ctl.seq}")
        if ctl.data_len != len(data) or protocol.crc32c(data) != ctl.data_crc:
            raise EngineError(f"JNLRD: SEQ# {seq} data does not match DATA_LEN/DATA_CRC")
        return ctl, data

    async def release(self, upto: int, joptr: int | None = None) -> Ack:
        return await self._ack(protocol.Release(upto, joptr).frame())

    async def status(self) -> protocol.EngineStatus:
        answer = await self.transact(Frame(FrameType.STATUS))
        if len(answer) != 1:
            raise EngineError(f"STATUS: expected one answer, got {len(answer)} frames")
        try:
            if answer[0].type == FrameType.NAK:
                raise EngineNak("STATUS", Ack.from_frame(answer[0]))
            if answer[0].type != FrameType.STATUS_RESP:
                raise EngineError(f"STATUS: expected STATUS_RESP, got {answer[0].type.name}")
            return protocol.EngineStatus.unpack(answer[0].body)
        except protocol.ProtocolError as exc:
            raise EngineError(f"STATUS: unusable answer: {exc}") from exc

    async def load(self, flags: int, seq: int = 0, time: int = 0, epoch: int = 0,
                   ptr: int = 0, size: int = 0) -> Ack:
        return await self._ack(protocol.Load(flags, seq, time, epoch, ptr, size).frame())


class ModelEngine(FrameEngine):
    """The ``model`` backend: :class:`EngineModel` in process, no byte round trip."""

    def __init__(self, model: EngineModel):
        self.model = model
        self.name = model.name

    async def transact(self, frame: Frame) -> list[Frame]:
        return self.model.handle(frame)

    async def place(self, control: Control) -> Ack:
        # In process, the JNLDESC needs no frame round trip (serialize, parse,
        # answer, parse): a third of the relay's ingest in the profile.  The
        # same model code answers it (EngineModel.jnldesc).
        return self.model.jnldesc(control)

    async def place_batch(self, controls: list[Control]) -> Ack:
        if not 1 <= len(controls) <= self.model.desc_batch:
            return await super().place_batch(controls)   # the frame's refusal
        return self.model.jnldesc_batch(controls)

    async def close(self) -> None:
        pass


def open_engine(kind: str, *, size: int, url: str | None = None,
                clock: Callable[[], int] | None = None, memory: int | None = None) -> Engine:
    """Open a journal engine backend by kind (``--engine``).

    ``size`` is the ring size of a ``model``; a ``board``/``port`` engine has
    its own (ask :meth:`Engine.status`).  ``url`` is the pyserial URL of a
    ``board``/``port``.  ``clock`` is the model's ns source, ``memory`` its
    data memory (default ``size``; 0: none, descriptor rings only, and no
    copy of the journal in this process).
    """
    if kind == "model":
        return ModelEngine(EngineModel(size, clock=clock, memory=memory))
    if kind in ("board", "port"):
        if not url:
            raise ValueError(f"engine kind {kind!r} needs a url (/dev/ttyUSB0, socket://host:port)")
        from tricopy.host.engine.port import PortEngine
        return PortEngine(url, name=kind)
    if kind == "sim":
        # The RTL in a Verilator harness (sim/): built on first use, started
        # here, stopped by close(). Imported late: it needs amaranth/verilator.
        try:
            from tricopy.sim.bridge import open_sim_engine
        except ImportError as exc:
            raise EngineError(f"sim backend needs the hdl extras (pip install -e '.[dev]'): "
                              f"{exc}") from exc
        return open_sim_engine(size, memory=memory)
    raise ValueError(f"engine kind must be one of {', '.join(ENGINE_KINDS)}, not {kind!r}")

