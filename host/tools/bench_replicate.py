"""`tricopy bench replicate` and `tricopy bench nbd`: fio through the primary's NBD export.

Both start the three sites as real processes on loopback (a temporary folder,
free ports, the default ``fsync`` durability unless ``--durability memory``),
then run Debian's fio with ``--ioengine=nbd`` against the primary's PVOL
export, so every measured write went PVOL → relay (durable) before fio saw
its reply.  docs/benchmarks.md reports the figures.

* ``replicate``: 4 KiB and 64 KiB random writes at iodepth 1 and 16: MB/s,
  writes/s, p50/p99 completion latency, and the secondary's lag (journals the
  relay holds that the secondary has not restored yet, when fio stops, and the
  time until it caught up); ``--engine model --engine sim`` runs the jobs
  once per relay journal engine (descriptor rings, the relay's default).
* ``nbd``: the same fio jobs (4 KiB randwrite depth 1 and 16, 1 MiB
  sequential write) against ``nbdkit file`` on a file of the same disk, the
  baseline, and against tricopy; the ratio is tricopy / nbdkit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..rcm import control

__all__ = ["Sites", "fio", "bench_replicate", "bench_nbd", "register_bench"]

MiB = 1 << 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sites:
    """Primary, relay and secondary as processes in ``root``; the primary and secondary serve NBD."""

    ROLES = ("secondary", "relay", "primary")

    def __init__(self, root: Path, *, vol_size: int, journal_size: int, durability: str,
                 tls: bool = True, tree: str | None = None, engine: str = "model",
                 native: bool = False):
        self.root = root
        self.engine = engine          # the relay's --engine
        # ``tree``: run the sites from another copy of the code (a folder that
        # holds ``tricopy/``), e.g. the code before a change, in the same run.
        self.env = None
        if tree:
            self.env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
        self.vol_size = vol_size
        self.ports = {r: {"data": _free_port(), "control": _free_port(), "nbd": _free_port()}
                      for r in self.ROLES}
        self.procs: dict[str, subprocess.Popen] = {}
        # new volumes on every site: a ready pair (docs/operations.md, the PAIR rule)
        group = 'grnum = 1\ngrname = "bench"\ninitial_state = "PAIR"\n'
        if tls:           # the links as deployed: TLS 1.3, mutual certificates
            from .certs import make_certs
            make_certs(root / "certs", list(self.ROLES))
        names = {"primary": 'peer_site = "relay"\n',
                 "relay": 'peer_site = "secondary"\nupstream_site = "primary"\n',
                 "secondary": 'upstream_site = "relay"\n'}
        vol = lambda prefix: (f'[[volume]]\nidx = 0\ngroup = 1\npath = "{prefix}0.img"\n'
                              f'size = {vol_size}\nblock_size = 4096\ncreate = true\n')
        docs = {
            "primary": f'[[group]]\n{group}{names["primary"]}attr = "MASTER"\n'
                       f'peer = "127.0.0.1:{self.ports["relay"]["data"]}"\n' + vol("pvol"),
            "relay": f'[[group]]\n{group}{names["relay"]}attr = "INTERMEDIARY"\n'
                     f'peer = "127.0.0.1:{self.ports["secondary"]["data"]}"\n'
                     f'durability = "{durability}"\n'
                     f'journal = {{ path = "jnl.vol", size = {journal_size} }}\n',
            "secondary": f'[[group]]\n{group}{names["secondary"]}attr = "RESTORE"\n'
                         + vol("svol"),
        }
        for role, body in docs.items():
            p = self.ports[role]
            head = (f'site = "{role}"\nlisten = "127.0.0.1:{p["data"]}"\n'
                    f'control = "127.0.0.1:{p["control"]}"\ncontrol_plaintext = true\n'
                    f'state_dir = "state"\n')   # status only: read-only without TLS
            head += (f'tls = {{ ca = "../certs/ca.pem", cert = "../certs/{role}.pem", '
                     f'key = "../certs/{role}.key" }}\n' if tls else "tls = false\n")
            if native and role == "secondary":
                head += "native = true\n"      # its steady state in C (host/native/)
            tail = f'[nbd]\nlisten = "127.0.0.1:{p["nbd"]}"\n' if role != "relay" else ""
            (root / role).mkdir(parents=True, exist_ok=True)
            (root / role / "site.toml").write_text(head + body + tail)

    def uri(self, role: str = "primary") -> str:
        prefix = "pvol" if role == "primary" else "svol"
        return f"nbd://127.0.0.1:{self.ports[role]['nbd']}/{prefix}0"

    def status(self, role: str) -> dict:
        return control.call(("127.0.0.1", self.ports[role]["control"]), "status")["groups"][0]

    def start(self) -> None:
        for role in self.ROLES:
            self.start_role(role)
        deadline = time.monotonic() + 10
        while not self.status("primary")["connected"]:
            if time.monotonic() > deadline:
                raise RuntimeError("the primary did not connect to the relay")
            time.sleep(0.05)

    def start_role(self, role: str) -> None:
        d = self.root / role
        cmd = [sys.executable, "-m", "tricopy.host.sites_cli", role, "--config",
               str(d / "site.toml"), "--log-level", "warning"]
        if role == "relay":
            cmd += ["--engine", self.engine]
        with open(d / "site.log", "ab") as log:
            self.procs[role] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                cwd=d, env=self.env)
        deadline = time.monotonic() + 30
        while True:
            if self.procs[role].poll() is not None:
                raise RuntimeError(f"{role} exited: {(d / 'site.log').read_text()[-2000:]}")
            try:
                self.status(role)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{role} did not come up") from None
                time.sleep(0.05)

    def stop_role(self, role: str) -> None:
        proc = self.procs.pop(role)
        proc.terminate()
        proc.wait(10)

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) each site process has used so far, from /proc.

        CPU per write is the figure that other jobs on a shared machine do
        not move much, unlike writes/s.
        """
        return {role: proc_cpu(proc.pid) for role, proc in self.procs.items()}

    def rss_peak(self) -> dict[str, float]:
        """Each site's peak resident memory so far, MiB (VmHWM in /proc/PID/status)."""
        return {role: proc_rss_peak(proc.pid) for role, proc in self.procs.items()}

    def perf(self) -> dict[str, dict]:
        """Each site's per-hop counters (host/perf.py; empty for code without them)."""
        return {role: control.call(("127.0.0.1", self.ports[role]["control"]),
                                   "status").get("perf", {}) for role in self.ROLES}

    def lag(self) -> int:
        """Journals accepted by the relay that the secondary has not restored yet."""
        return self.status("relay")["next_seq"] - 1 - self.status("secondary")["last_restored"]

    def wait_caught_up(self, timeout: float = 120.0) -> float:
        """Seconds until the secondary restored everything the relay holds."""
        t0 = time.monotonic()
        while self.lag() > 0:
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"secondary still {self.lag()} journals behind after {timeout} s")
            time.sleep(0.02)
        return time.monotonic() - t0


def proc_user_sys(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of process ``pid`` so far (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick      # utime, stime


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    return sum(proc_user_sys(pid))


def proc_rss_peak(pid: int) -> float:
    """Peak resident set size of process ``pid`` since it started, MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def loadavg() -> float:
    """The 1-minute load average (what `uptime` shows first)."""
    return os.getloadavg()[0]


class LagSampler:
    """Samples ``sites.lag()`` every 0.1 s in a thread while a ``with`` block runs
    (``sites``: anything with a ``lag()`` in journals; a sample a site could not
    answer is skipped)."""

    def __init__(self, sites):
        self.sites = sites
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from ..rcm import control
        while not self._stop.wait(0.1):
            try:
                self.samples.append(self.sites.lag())
            except (OSError, control.ControlError):
                pass

    def __enter__(self) -> "LagSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def max(self) -> int:
        return max(self.samples, default=0)

    @property
    def mean(self) -> float:
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else 0.0


def fio(uri: str, rw: str, bs: int, iodepth: int, seconds: float, size: int) -> dict:
    """One fio job over NBD; returns MB/s, IOPS and p50/p99 completion latency (µs)."""
    cmd = ["fio", "--name=b", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}", f"--bs={bs}",
           f"--iodepth={iodepth}", f"--size={size}", "--time_based", f"--runtime={seconds}",
           "--ramp_time=1", "--output-format=json", "--filename=x"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    if proc.returncode:
        raise RuntimeError(f"fio failed ({proc.returncode}): {proc.stderr[-2000:]}")
    w = json.loads(proc.stdout[proc.stdout.index("{"):])["jobs"][0]["write"]
    pct = w["clat_ns"].get("percentile", {})
    return {"rw": rw, "bs": bs, "iodepth": iodepth, "MB_per_s": round(w["bw_bytes"] / 1e6, 1),
            "iops": round(w["iops"]),
            "p50_us": round(pct.get("50.000000", 0) / 1e3), "p99_us": round(pct.get("99.000000", 0) / 1e3)}


def _workdir():
    return tempfile.TemporaryDirectory(prefix="tricopy-bench-", dir=os.environ.get("TRICOPY_BENCH_DIR"))


def bench_replicate(seconds: float, durability: str = "fsync",
                    engines: list[str] | tuple[str, ...] = ("model",)) -> list[dict]:
    """fio through the replication path: 4/64 KiB random writes, depth 1 and 16, plus
    lag; the same jobs once per relay journal engine in ``engines``."""
    results = []
    for engine in engines:
        if engine == "sim":
            # built before the relay starts (its start-up wait is not for a compiler)
            from tricopy.sim.build import DESC_RESET_SIZE, harness_path
            harness_path(DESC_RESET_SIZE, memory=0)
        with _workdir() as tmp:
            results += _replicate(Path(tmp), seconds, durability, engine)
    return results


def _replicate(tmp: Path, seconds: float, durability: str, engine: str) -> list[dict]:
    results = []
    sites = Sites(tmp, vol_size=256 * MiB, journal_size=512 * MiB, durability=durability,
                  engine=engine)
    sites.start()
    try:
        for bs in (4096, 65536):
            for depth in (1, 16):
                load = loadavg()
                cpu0, seq0 = sites.cpu_seconds(), sites.status("relay")["next_seq"]
                with LagSampler(sites) as lag:
                    r = fio(sites.uri(), "randwrite", bs, depth, seconds, 256 * MiB)
                r["lag_max"], r["lag_mean"] = lag.max, lag.mean
                r["catch_up_s"] = round(sites.wait_caught_up(), 2)
                # Over fio's ramp and run and the catch-up: every journal fully handled.
                cpu1, seq1 = sites.cpu_seconds(), sites.status("relay")["next_seq"]
                writes = max(1, seq1 - seq0)
                r["cpu_us_per_write"] = {role: round((cpu1[role] - cpu0[role]) * 1e6 / writes)
                                         for role in sites.ROLES}
                r["rss_peak_mib"] = sites.rss_peak()
                r["durability"] = durability
                r["engine"] = engine
                r["load"] = round((load + loadavg()) / 2, 2)
                results.append(r)
    finally:
        sites.stop()
    return results


def bench_far_site(seconds: float, durability: str = "fsync") -> list[dict]:
    """Host write latency with the secondary up, then stopped (the far site must
    not slow the host until the journal fills), then the backlog's drain time."""
    results = []
    with _workdir() as tmp:
        sites = Sites(Path(tmp), vol_size=256 * MiB, journal_size=1024 * MiB,
                      durability=durability)
        sites.start()
        try:
            for depth in (1, 16):
                up = fio(sites.uri(), "randwrite", 4096, depth, seconds, 256 * MiB)
                sites.wait_caught_up()
                seq0 = sites.status("relay")["next_seq"]
                sites.stop_role("secondary")
                down = fio(sites.uri(), "randwrite", 4096, depth, seconds, 256 * MiB)
                backlog = sites.status("relay")["next_seq"] - seq0
                sites.start_role("secondary")
                drain = sites.wait_caught_up()
                results.append({"rw": "randwrite", "bs": 4096, "iodepth": depth,
                                "durability": durability, "secondary_up": up,
                                "secondary_down": down, "backlog_journals": backlog,
                                "drain_s": round(drain, 2)})
        finally:
            sites.stop()
    return results


JOBS = (("randwrite", 4096, 1), ("randwrite", 4096, 16), ("write", MiB, 1))


def bench_nbd(seconds: float, durability: str = "fsync") -> list[dict]:
    """The same fio jobs against ``nbdkit file`` (baseline) and the tricopy primary."""
    if shutil.which("nbdkit") is None:
        raise RuntimeError("nbdkit is not installed (Debian package nbdkit)")
    size = 256 * MiB
    results = []
    with _workdir() as tmp:
        img = Path(tmp) / "nbdkit.img"
        with open(img, "wb") as f:
            f.truncate(size)
        port = _free_port()
        kit = subprocess.Popen(["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(port),
                                "--exit-with-parent", "file", f"file={img}"])
        try:
            uri = f"nbd://127.0.0.1:{port}/"
            deadline = time.monotonic() + 10
            while subprocess.run(["nbdinfo", "--size", uri], capture_output=True).returncode:
                if time.monotonic() > deadline:
                    raise RuntimeError("nbdkit did not come up")
                time.sleep(0.05)
            base = {job: fio(uri, *job, seconds, size) for job in JOBS}
        finally:
            kit.terminate()
            kit.wait()
        sites = Sites(Path(tmp) / "sites", vol_size=size, journal_size=512 * MiB,
                      durability=durability)
        sites.start()
        try:
            for job in JOBS:
                r = fio(sites.uri(), *job, seconds, size)
                b = base[job]
                results.append({"rw": job[0], "bs": job[1], "iodepth": job[2],
                                "durability": durability, "nbdkit": b, "tricopy": r,
                                "iops_ratio": round(r["iops"] / b["iops"], 3) if b["iops"] else None})
                sites.wait_caught_up()
        finally:
            sites.stop()
    return results


HOP_JOBS = (("randwrite", 4096, 1), ("randwrite", 4096, 16))
#: counters that count items (journals, depth); the others are seconds
_COUNTS = ("_journals", "_queue", "in_flight", "_batch", "_per_ack")


def _nbdkit_fua(img: Path):
    """``nbdkit file`` with every write FUA (the fua filter, ``fuamode=force``): the
    durable baseline -- each write is on disk before its reply, as tricopy's is
    at the relay.  Returns (process, uri)."""
    port = _free_port()
    kit = subprocess.Popen(["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(port),
                            "--exit-with-parent", "--filter=fua", "file", f"file={img}",
                            "fuamode=force"])
    uri = f"nbd://127.0.0.1:{port}/"
    deadline = time.monotonic() + 10
    while subprocess.run(["nbdinfo", "--size", uri], capture_output=True).returncode:
        if time.monotonic() > deadline:
            kit.kill()
            raise RuntimeError("nbdkit did not come up")
        time.sleep(0.05)
    return kit, uri


def _qemu_nbd(img: Path):
    """``qemu-nbd --cache=writethrough``: QEMU's NBD server, each write
    written through to the file (O_DSYNC) before its reply -- the durable
    server a user would pick off the shelf.  Returns (process, uri)."""
    port = _free_port()
    proc = subprocess.Popen(["qemu-nbd", "-f", "raw", "--cache=writethrough", "-t",
                             "-b", "127.0.0.1", "-p", str(port), str(img)])
    uri = f"nbd://127.0.0.1:{port}/"
    deadline = time.monotonic() + 10
    while subprocess.run(["nbdinfo", "--size", uri], capture_output=True).returncode:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("qemu-nbd did not come up")
        time.sleep(0.05)
    return proc, uri


def _baseline(results: list, what: str, start, img: Path, jobs, seconds: float, size: int,
              rnd: int) -> None:
    """Run ``jobs`` against one baseline server (``start(img)`` -> (process, uri)),
    appending its rows with its CPU µs per write."""
    proc, uri = start(img)
    try:
        for job in jobs:
            load, c0 = loadavg(), proc_cpu(proc.pid)
            r = fio(uri, *job, seconds, size)
            writes = max(1, round(r["iops"] * (seconds + 1)))    # ramp + run, approx.
            r["cpu_us_per_write"] = {what.split("-")[0]: round((proc_cpu(proc.pid) - c0)
                                                               * 1e6 / writes)}
            results.append(dict(r, what=what, round=rnd, load=round(load, 2)))
    finally:
        proc.terminate()
        proc.wait()


def _hop_delta(before: dict, after: dict, writes: int) -> dict:
    """Per site and counter: mean per event (µs, or items) and events per write."""
    out = {}
    for role, hops in after.items():
        for name, (n, total, _) in hops.items():
            n0, t0, _ = before.get(role, {}).get(name, (0, 0.0, 0.0))
            dn, dt = n - n0, total - t0
            if dn <= 0:
                continue
            mean = dt / dn if name.endswith(_COUNTS) else dt / dn * 1e6
            out[name] = {"mean": round(mean, 1), "per_write": round(dn / writes, 3)}
    return out


def round_order(trees: list, rnd: int) -> list[tuple[int, object]]:
    """(index, tree) in the order round ``rnd`` runs them: odd rounds reversed.
    The tree that ran second often did better (the machine settles, caches
    are warm), which alone looked like a 3-19 % gain in a before/after
    (docs/benchmarks.md, "compiled with mypyc")."""
    order = list(enumerate(trees))
    return order[::-1] if rnd % 2 else order


def bench_hops(seconds: float, durability: str = "fsync", trees: list | None = None,
               rounds: int = 1, jobs=HOP_JOBS, native: bool = False) -> list[dict]:
    """Durable baselines (nbdkit FUA; ``qemu-nbd --cache=writethrough`` when
    installed) and the three sites, same run: IOPS, p50/p99, CPU µs per write
    per site, per-hop waits and queues; ``trees``: code copies to run the
    sites from, one after the other (None: this code), e.g. before/after,
    in the reverse order in odd rounds; ``native``: each tree also with the
    secondary's native loop (host/native/restore.py)."""
    variants = [(t, n) for t in (trees or [None]) for n in ((False, True) if native else (False,))]
    size = 256 * MiB
    results = []
    with _workdir() as tmp:
        img = Path(tmp) / "nbdkit.img"
        with open(img, "wb") as f:
            f.truncate(size)
        for rnd in range(rounds):
            _baseline(results, "nbdkit-fua", _nbdkit_fua, img, jobs, seconds, size, rnd)
            if shutil.which("qemu-nbd"):
                _baseline(results, "qemu-nbd-writethrough", _qemu_nbd, img, jobs, seconds,
                          size, rnd)
            for i, (tree, nat) in round_order(variants, rnd):
                sites = Sites(Path(tmp) / f"sites{rnd}.{i}", vol_size=size,
                              journal_size=512 * MiB, durability=durability, tree=tree,
                              native=nat)
                sites.start()
                try:
                    for job in jobs:
                        load = loadavg()
                        cpu0, seq0 = sites.cpu_seconds(), sites.status("relay")["next_seq"]
                        perf0 = sites.perf()
                        r = fio(sites.uri(), *job, seconds, size)
                        r["catch_up_s"] = round(sites.wait_caught_up(), 2)
                        cpu1, seq1 = sites.cpu_seconds(), sites.status("relay")["next_seq"]
                        writes = max(1, seq1 - seq0)
                        cpu = {role: round((cpu1[role] - cpu0[role]) * 1e6 / writes)
                               for role in sites.ROLES}
                        cpu["sum"] = sum(cpu.values())
                        name = (tree or "this tree") + (", native secondary" if nat else "")
                        results.append(dict(r, what=f"tricopy[{name}]", round=rnd,
                                            tree=tree, native=nat, durability=durability,
                                            load=round((load + loadavg()) / 2, 2),
                                            cpu_us_per_write=cpu,
                                            rss_peak_mib=sites.rss_peak(),
                                            hops=_hop_delta(perf0, sites.perf(), writes)))
                        sites.wait_caught_up()
                finally:
                    sites.stop()
    # ratios against the baselines' figures of the same round and job
    for what, key in (("nbdkit-fua", "iops_ratio"), ("qemu-nbd-writethrough", "iops_ratio_qemu")):
        base = {(r["round"], r["bs"], r["iodepth"]): r for r in results if r["what"] == what}
        for r in results:
            b = base.get((r["round"], r["bs"], r["iodepth"]))
            r[key] = round(r["iops"] / b["iops"], 3) if b and b["iops"] else None
    return results


#: per site, the counter that says how many journals one of its batches held
#: (one wake-up, one frame, one ACK): the primary's journals per relay ACK,
#: the relay's journals per group-commit fdatasync, the secondary's journals
#: per frame the relay forwarded
BATCH_OF = {"primary": "primary.acked_per_ack", "relay": "relay.fsync_journals",
            "secondary": "relay.forward_batch"}


def fit_batch_costs(results: list[dict]) -> dict[str, dict]:
    """Split each site's CPU per write into a cost per batch and a cost per
    journal: the least-squares fit of ``cpu = per_batch / B + per_journal``
    over the tricopy rows (one per depth), B the site's journals per batch
    (``BATCH_OF``).  Why: deeper queues make larger batches, so CPU per
    write falls with depth; the fit says which of the two a change must cut
    (docs/benchmarks.md, "Per batch and per journal").  Needs two batch
    sizes at least; a site without them is left out."""
    out = {}
    rows = [r for r in results if r["what"].startswith("tricopy") and r.get("hops")]
    for site, counter in BATCH_OF.items():
        pts = [(1.0 / r["hops"][counter]["mean"], r["cpu_us_per_write"][site])
               for r in rows if r["hops"].get(counter, {}).get("mean", 0) > 0]
        if len({round(x, 3) for x, _ in pts}) < 2:
            continue
        n = len(pts)
        mx = sum(x for x, _ in pts) / n
        my = sum(y for _, y in pts) / n
        sxx = sum((x - mx) ** 2 for x, _ in pts)
        a = sum((x - mx) * (y - my) for x, y in pts) / sxx
        b = my - a * mx
        worst = max(abs(a * x + b - y) / y for x, y in pts if y)
        out[site] = {"per_batch_us": round(a), "per_journal_us": round(b), "points": n,
                     "worst_misfit": round(worst, 2)}
    return out


def _print_fit(fit: dict[str, dict]) -> None:
    if not fit:
        return
    print("CPU per write = per batch / journals per batch + per journal (least squares "
          "over the depths):")
    for site, f in fit.items():
        print(f"    {site:<10} per batch {f['per_batch_us']:>6,} µs  per journal "
              f"{f['per_journal_us']:>5,} µs  ({f['points']} depths, worst misfit "
              f"{f['worst_misfit']:.0%})")
    print(f"    {'sum':<10} per batch {sum(f['per_batch_us'] for f in fit.values()):>6,} µs  "
          f"per journal {sum(f['per_journal_us'] for f in fit.values()):>5,} µs")


def _print_hops(results: list[dict]) -> None:
    for r in results:
        qemu = (f" (qemu-nbd {r['iops_ratio_qemu']:.3f})"
                if r.get("iops_ratio_qemu") is not None else "")
        print(f"round {r['round']} {r['rw']} {r['bs'] // 1024} KiB QD{r['iodepth']:<2} "
              f"{r['what']:<28} {r['iops']:>7,} IOPS  p50 {r['p50_us']:>6,} µs  "
              f"p99 {r['p99_us']:>7,} µs  ratio {r['iops_ratio']:.3f}{qemu}  load {r['load']}")
        cpu = r["cpu_us_per_write"]
        print("    CPU µs/write: " + "  ".join(f"{k} {v}" for k, v in cpu.items()))
        if r.get("rss_peak_mib"):
            print("    peak RSS MiB: " + "  ".join(f"{k} {v}" for k, v in r["rss_peak_mib"].items()))
        if r.get("hops"):
            for name, h in r["hops"].items():
                unit = "" if name.endswith(_COUNTS) else " µs"
                print(f"    {name:<32} mean {h['mean']:>9,.1f}{unit:<3}  per write {h['per_write']}")


def _print(results: list[dict], nbd: bool) -> None:
    def line(r):
        return (f"{r['MB_per_s']:>8,.1f} MB/s {r['iops']:>8,} IOPS  p50 {r['p50_us']:>6,} µs"
                f"  p99 {r['p99_us']:>7,} µs")
    for r in results:
        what = f"{r['rw']:<9} {r['bs'] // 1024:>4} KiB QD{r['iodepth']:<2} [{r['durability']}]"
        if "secondary_down" in r:
            print(f"{what} secondary up   {line(r['secondary_up'])}")
            print(f"{what} secondary down {line(r['secondary_down'])}  backlog "
                  f"{r['backlog_journals']:,} journals, drained in {r['drain_s']} s")
        elif nbd:
            print(f"{what} nbdkit  {line(r['nbdkit'])}")
            print(f"{what} tricopy {line(r['tricopy'])}  ratio {r['iops_ratio']:.2f}")
        else:
            cpu = " ".join(f"{role[0].upper()} {us}" for role, us in r["cpu_us_per_write"].items())
            what += f" engine {r['engine']:<5}"
            print(f"{what} {line(r)}  load {r['load']}  lag mean {r['lag_mean']} max "
                  f"{r['lag_max']} journals, caught up in {r['catch_up_s']} s; CPU µs/write {cpu}")
            if r.get("rss_peak_mib"):
                rss = " ".join(f"{role[0].upper()} {m}" for role, m in r["rss_peak_mib"].items())
                print(f"{'':<34} peak RSS MiB {rss}")


def _run(args) -> int:
    from .bench import machine
    if args.bench == "hops":
        jobs = HOP_JOBS
        if args.depths:
            jobs = tuple(("randwrite", 4096, d) for d in args.depths)
        results = bench_hops(args.seconds, args.durability, args.tree, args.rounds, jobs,
                             args.native)
    elif args.bench == "replicate":
        results = bench_replicate(args.seconds, args.durability, args.engine or ["model"])
    else:
        fn = {"nbd": bench_nbd, "far-site": bench_far_site}[args.bench]
        results = fn(args.seconds, args.durability)
    report = {"machine": machine(), "results": results}
    if args.bench == "hops" and args.depths:
        # one fit per tree and round: mixing trees would blur a before/after
        report["batch_costs"] = {
            f"{tree or 'this tree'}{', native secondary' if nat else ''} round {rnd}":
                fit_batch_costs([r for r in results if r.get("round") == rnd
                                 and r.get("tree") == tree and r.get("native") == nat])
            for tree in (args.tree or [None]) for nat in ((False, True) if args.native else (False,))
            for rnd in range(args.rounds)}
    if getattr(args, "plot", None):
        from .bench_plot import plot_hops
        plot_hops(results, args.plot, title=f"{report['machine']}, load "
                  f"{min(r['load'] for r in results)}-{max(r['load'] for r in results)}")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"machine: {report['machine']}")
        if args.bench == "hops":
            _print_hops(results)
            for what, fit in report.get("batch_costs", {}).items():
                print(f"{what}:")
                _print_fit(fit)
        else:
            _print(results, args.bench == "nbd")
    return 0


def _depths(text: str) -> list[int]:
    try:
        depths = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give queue depths as 1,4,16") from None
    if len(depths) < 2 or min(depths) < 1 or max(depths) > 256:
        raise argparse.ArgumentTypeError(f"{text!r}: give two depths or more, each 1..256")
    return depths


def register_bench(which) -> None:
    """Add ``replicate`` and ``nbd`` to the ``tricopy bench`` subcommands."""
    for name, text in (("replicate", "fio through the primary's NBD export: three sites on loopback"),
                       ("nbd", "fio: nbdkit file (baseline) vs the tricopy primary, replicating"),
                       ("far-site", "host write latency with the secondary up, then stopped"),
                       ("hops", "durable baselines (nbdkit FUA, qemu-nbd writethrough) vs "
                                "the three sites: IOPS, latency, CPU µs/write per site, "
                                "per-hop waits and queues")):
        p = which.add_parser(name, help=text, description=text)
        if name == "hops":
            p.add_argument("--tree", action="append", default=None,
                           help="run the sites from this copy of the code (a folder holding "
                                "tricopy/); repeat for several, e.g. before and after")
            p.add_argument("--rounds", type=int, default=1,
                           help="repeat baseline + trees this many times (noise)")
            p.add_argument("--native", action="store_true",
                           help="run each tree twice: the secondary in Python and with its "
                                "native loop (site key native, host/native/)")
            p.add_argument("--depths", type=_depths, default=None, metavar="D,D,...",
                           help="4 KiB randwrite at these queue depths instead of QD1 and "
                                "QD16, and each site's CPU split into a cost per batch and "
                                "per journal (e.g. 1,4,16,64)")
            p.add_argument("--plot", metavar="PNG", default=None,
                           help="also draw IOPS and CPU µs/write per site (medians over the "
                                "rounds) into this PNG (matplotlib: the bench extra)")
        if name == "replicate":
            p.add_argument("--engine", action="append", choices=["model", "sim"], default=None,
                           help="relay journal engine, descriptor rings (default model); "
                                "repeat to run the jobs once per engine, e.g. --engine model "
                                "--engine sim")
        p.add_argument("--seconds", type=float, default=10.0, help="fio runtime per figure")
        p.add_argument("--durability", choices=["fsync", "memory"], default="fsync",
                       help="relay durability policy (memory is unsafe: labelled in the output)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=_run)
