"""Harness speed: simulated cycles per CPU-second of the ``tricopy-sim`` process.

``python -m tricopy.sim.speed [--count N] [--exe PATH]`` starts the harness
without data memory built with a nominal clock it never reaches (so it runs
flat out and never waits for wall time), LOADs a 2**40-byte descriptor ring
and sends ``N`` JNLDESC descriptors of 4 KiB journals pipelined over one
socket, while a reader takes the ACKs. Cycles come from the engine's own
clock (STATUS NOW, ``1e9 / clk_hz`` ns per cycle); CPU time from
``/proc/<pid>/stat`` of the harness, which other jobs on a shared machine
move less than wall time. This is the stimulus of docs/sim.md's "Harness
speed" table.

``--replay`` sends the same stream without a socket: the harness reads it
from a file (``tricopy-sim --replay IN OUT``), runs it through the RTL flat
out and reports the cycles and the CPU time of the stepping alone, the
model's own speed, which the socket work and the shared machine's task
switches move less.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tricopy.host.wire import protocol as P

__all__ = ["measure", "measure_replay", "FREE_CLK_HZ"]

#: A clock no harness reaches: simulated time is always behind wall time, so
#: the harness never sleeps (the same nominal clock as ``bench engine``'s sim/free).
FREE_CLK_HZ = 500_000_000
_RING = 1 << 40
_DATA_LEN = 4096


class SpeedError(Exception):
    """The harness did not answer as expected (one line: what happened)."""


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat(5); fields[0] is field 3
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _read_frames(sock: socket.socket, n: int, timeout: float) -> list[P.Frame]:
    parser, frames = P.FrameParser(), []
    sock.settimeout(timeout)
    while len(frames) < n:
        try:
            data = sock.recv(1 << 16)
        except socket.timeout:
            raise SpeedError(f"the harness sent {len(frames)} of {n} answers in {timeout:g} s")
        if not data:
            raise SpeedError(f"the harness closed the connection after {len(frames)} answers")
        frames += parser.feed(data)
    return frames


def _stimulus(count: int) -> tuple[bytes, bytes]:
    """The LOAD of a 2**40-byte descriptor ring, and ``count`` JNLDESC frames."""
    load = P.Load(P.LoadFlag.CLEAR | P.LoadFlag.RING | P.LoadFlag.DESC, size=_RING)
    frames = b"".join(
        P.descriptor_frame(P.Control(address=i * _DATA_LEN, length=_DATA_LEN,
                                     data_len=_DATA_LEN, tag=i & 0xFFFFFFFF)).serialize()
        for i in range(count))
    return load.frame().serialize(), frames


def _check_acks(answers: list[P.Frame], count: int) -> None:
    ok = sum(1 for f in answers if f.type == P.FrameType.ACK
             and P.Ack.unpack(f.body).status == P.Status.OK)
    if ok != count:
        raise SpeedError(f"{count - ok} of {count} descriptors were not answered ACK OK")


def _status(sock: socket.socket) -> P.EngineStatus:
    sock.sendall(P.Frame(P.FrameType.STATUS, b"").serialize())
    return P.EngineStatus.unpack(_read_frames(sock, 1, 30.0)[0].body)


def measure(exe: Path, count: int = 40_000, clk_hz: int = FREE_CLK_HZ) -> dict:
    """Run ``count`` pipelined JNLDESC through the harness at ``exe``; its figures."""
    proc = subprocess.Popen([str(exe), "--port", "0", "--watch-stdin"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        if not line.startswith("PORT "):
            raise SpeedError(f"{exe} said {line!r}, not PORT <n>")
        sock = socket.create_connection(("127.0.0.1", int(line.split()[1])))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        load, frames = _stimulus(count)
        sock.sendall(load)
        _read_frames(sock, 1, 30.0)
        st0 = _status(sock)
        cpu0, t0 = _cpu_seconds(proc.pid), time.perf_counter()
        writer = threading.Thread(target=sock.sendall, args=(frames,), daemon=True)
        writer.start()
        answers = _read_frames(sock, count, 120.0)
        cpu1, t1 = _cpu_seconds(proc.pid), time.perf_counter()
        writer.join()
        st1 = _status(sock)
        sock.close()
    finally:
        proc.stdin.close()
        proc.wait(10)
    _check_acks(answers, count)
    if cpu1 <= cpu0:
        raise SpeedError(f"the harness used no measurable CPU time for {count} descriptors: "
                         f"send more (--count)")
    # STATUS runs in the harness too: its cycles are in NOW, and few
    cycles = (st1.now - st0.now) * clk_hz // 1_000_000_000
    return {"descriptors": count, "cycles": cycles, "cycles_per_descriptor": cycles / count,
            "cpu_s": cpu1 - cpu0, "wall_s": t1 - t0,
            "M_cycles_per_cpu_s": cycles / (cpu1 - cpu0) / 1e6,
            "M_cycles_per_wall_s": cycles / (t1 - t0) / 1e6}


def measure_replay(exe: Path, count: int = 40_000) -> dict:
    """The same stream as :func:`measure` through ``exe --replay``: no socket,
    the CPU time of the stepping alone. The LOAD's cycles are counted too
    (about 50 of some millions)."""
    load, frames = _stimulus(count)
    with tempfile.TemporaryDirectory(prefix="tricopy-speed-") as tmp:
        stream_in, stream_out = Path(tmp) / "in", Path(tmp) / "out"
        stream_in.write_bytes(load + frames)
        try:
            done = subprocess.run([str(exe), "--replay", str(stream_in), str(stream_out)],
                                  capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            raise SpeedError(f"{exe} --replay did not finish in 600 s")
        words = done.stdout.split()
        if done.returncode != 0 or words[:1] != ["REPLAY"] or len(words) != 5:
            said = (done.stderr or done.stdout).strip().splitlines()
            raise SpeedError(f"{exe} --replay failed (exit {done.returncode})"
                             f"{': ' + said[-1] if said else ''}")
        cycles, cpu_ns = int(words[2]), int(words[4])
        try:
            answers = P.FrameParser().feed(stream_out.read_bytes())
        except P.ProtocolError as exc:
            raise SpeedError(f"the replay's answers are not frames: {exc}")
    _check_acks(answers[1:], count)       # answers[0] is the LOAD's
    if cpu_ns <= 0:
        raise SpeedError(f"the replay used no measurable CPU time for {count} descriptors: "
                         f"send more (--count)")
    return {"descriptors": count, "cycles": cycles, "cycles_per_descriptor": cycles / count,
            "cpu_s": cpu_ns / 1e9, "M_cycles_per_cpu_s": cycles / cpu_ns * 1e3}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tricopy.sim.speed",
                                description="the sim harness's simulated cycles per CPU-second")
    p.add_argument("--count", type=int, default=40_000, help="JNLDESC descriptors to send")
    p.add_argument("--exe", type=Path, help="a tricopy-sim built with --clk-hz "
                   f"{FREE_CLK_HZ} (default: build or find the one without data memory)")
    p.add_argument("--runs", type=int, default=1, help="measure this many times")
    p.add_argument("--replay", action="store_true",
                   help="no socket: the harness reads the stream from a file (the model's speed)")
    args = p.parse_args(argv)
    if args.count < 1:
        p.error(f"--count must be at least 1, not {args.count}")
    try:
        if args.exe is None:
            from tricopy.sim.build import SimBuildError, harness_path, DESC_RESET_SIZE
            try:
                args.exe = harness_path(DESC_RESET_SIZE, FREE_CLK_HZ, memory=0,
                                        log=lambda m: print(m, file=sys.stderr))
            except SimBuildError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
        for _ in range(args.runs):
            if args.replay:
                r = measure_replay(args.exe, args.count)
                print(f"{r['M_cycles_per_cpu_s']:.2f} M cycles per CPU-second of the replay "
                      f"({r['cycles']:,} cycles, {r['cycles_per_descriptor']:.1f} per "
                      f"descriptor, {r['cpu_s']:.2f} CPU s, load {os.getloadavg()[0]:.1f})",
                      flush=True)
                continue
            r = measure(args.exe, args.count)
            print(f"{r['M_cycles_per_cpu_s']:.2f} M cycles per harness CPU-second, "
                  f"{r['M_cycles_per_wall_s']:.2f} M per wall second "
                  f"({r['cycles']:,} cycles, {r['cycles_per_descriptor']:.1f} per descriptor, "
                  f"{r['cpu_s']:.2f} CPU s, load {os.getloadavg()[0]:.1f})", flush=True)
    except (SpeedError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
