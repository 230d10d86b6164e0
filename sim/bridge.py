"""The ``sim`` engine backend: run the Verilator harness, talk to it as a port.

:class:`SimHarness` starts ``tricopy-sim`` (built by :mod:`tricopy.sim.build`)
on an ephemeral 127.0.0.1 port and reads the port from its first stdout
line. The harness watches its stdin: when this process closes the pipe, or
dies (even by SIGKILL), the harness exits, so no engine outlives its relay.
:class:`SimEngine` is a :class:`SocketEngine` (the frames of a
:class:`~tricopy.host.engine.port.PortEngine`, on asyncio streams) to
127.0.0.1:PORT that stops its harness on :meth:`close`.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import threading
import time

from tricopy.host.engine.base import EngineError
from tricopy.host.engine.port import SocketEngine
from tricopy.host.wire.protocol import ring_size_ok
from tricopy.sim.build import DEFAULT_CLK_HZ, DESC_RESET_SIZE, SimBuildError, harness_path

__all__ = ["SimHarness", "SimEngine", "open_sim_engine"]

_PORT_LINE = re.compile(rb"PORT (\d+)\n")
_STATS_LINE = re.compile(r"tricopy-sim: cycles (\d+) wall [\d.]+ s busy ([\d.]+) cycles/s")


class SimHarness:
    """A running ``tricopy-sim`` process: the engine RTL listening on TCP.

    ``reset_on_connect`` resets the RTL whenever a client connects (a fresh
    engine per connection: the test vectors want one per scenario); by
    default the engine state survives reconnects, as a board's does.
    """

    def __init__(self, ring_size: int, *, clk_hz: int = DEFAULT_CLK_HZ,
                 reset_on_connect: bool = False, max_lead_ms: float = 10.0,
                 start_timeout: float = 10.0, memory: int | None = None, stats: bool = False):
        try:
            exe = harness_path(ring_size, clk_hz, memory=memory)
        except SimBuildError as exc:
            raise EngineError(f"sim backend: {exc}") from exc
        self.ring_size = ring_size
        self.clk_hz = clk_hz
        cmd = [str(exe), "--port", "0", "--watch-stdin", "--max-lead-ms", str(max_lead_ms)]
        if reset_on_connect:
            cmd.append("--reset-on-connect")
        env = None
        self._stats: tuple[int, float] | None = None
        if stats:           # the harness prints cycles and its speed each second
            env = {**os.environ, "TRICOPY_SIM_STATS": "1"}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE if stats else None, env=env)
        if stats:
            threading.Thread(target=self._read_stats, daemon=True).start()
        try:
            self.port = self._read_port(start_timeout)
        except BaseException:
            self.stop()
            raise

    def _read_stats(self) -> None:
        for line in self.proc.stderr:
            m = _STATS_LINE.search(line.decode(errors="replace"))
            if m:
                self._stats = (int(m.group(1)), float(m.group(2)))

    def last_stats(self) -> tuple[int | None, float | None]:
        """(cycles simulated, cycles per second of stepping) from the harness's
        last stats line (``stats=True``; printed about once a second)."""
        return self._stats if self._stats else (None, None)

    @property
    def url(self) -> str:
        return f"socket://127.0.0.1:{self.port}"

    def _read_port(self, timeout: float) -> int:
        line = b""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise EngineError(f"sim harness did not report its port within {timeout} s")
            chunk = os.read(fd, 1)
            if not chunk:
                raise EngineError(f"sim harness exited with {self.proc.wait()} before listening")
            line += chunk
        m = _PORT_LINE.fullmatch(line)
        if not m:
            raise EngineError(f"sim harness said {line!r}, expected 'PORT <n>'")
        return int(m.group(1))

    def stop(self, timeout: float = 5.0) -> None:
        """Close the harness's stdin (it exits), kill it if it does not."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f and not f.closed:
                f.close()

    def __enter__(self) -> "SimHarness":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class SimEngine(SocketEngine):
    """The ``sim`` backend: a :class:`SocketEngine` that owns its harness process."""

    def __init__(self, harness: SimHarness, *, timeout: float = 2.0):
        self.harness = harness
        super().__init__("127.0.0.1", harness.port, timeout=timeout, name="sim")

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            self.harness.stop()


def open_sim_engine(size: int, *, clk_hz: int | None = None, timeout: float = 2.0,
                    memory: int | None = None) -> SimEngine:
    """Build (if needed) and start a harness with a ring of ``size`` bytes; connect to it.
    ``memory=0``: the gateware without data memory, descriptor rings only. Its
    ring size is a run-time value, so one build serves every ``size`` (any
    multiple of 64 from 128 to 2**40): the engine starts with the ring of
    :data:`DESC_RESET_SIZE` bytes and the caller LOADs RING|DESC with ``size``
    (the relay does, at start: ``RelayGroup.recover_engine``).

    ``clk_hz`` defaults to ``$TRICOPY_SIM_CLK_HZ`` or :data:`DEFAULT_CLK_HZ`.
    """
    if clk_hz is None:
        env = os.environ.get("TRICOPY_SIM_CLK_HZ", "")
        try:
            clk_hz = int(env) if env else DEFAULT_CLK_HZ
        except ValueError:
            raise EngineError(f"TRICOPY_SIM_CLK_HZ must be an integer, not {env!r}") from None
    if memory == 0:
        if not isinstance(size, int) or not ring_size_ok(size):
            raise EngineError(f"sim backend: a descriptor ring must be a multiple of 64 from "
                              f"128 to 2**40 bytes, not {size!r}")
        size = DESC_RESET_SIZE
    harness = SimHarness(size, clk_hz=clk_hz, memory=memory)
    try:
        return SimEngine(harness, timeout=timeout)
    except BaseException:
        harness.stop()
        raise
