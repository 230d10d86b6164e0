"""``tricopy bench distance``: the remote-copy patent's claim, measured.

The claim: with a relay near the primary and the secondary far away, the host
pays only the near round trip and still loses no acknowledged write when the
primary site is lost.  Synchronous two-site copy pays the far round trip on
every write; asynchronous two-site copy answers at once and loses what was
not shipped yet.  This bench runs all three with our own parts and the link
emulator (``tricopy linkemu``, host/tools/linkemu.py) on both links:

==========  ==================  ==================  ===============================
set-up      primary -> relay    relay -> secondary  lost with the primary site
==========  ==================  ==================  ===============================
tricopy     0.5 ms (near)       D ms (far)          the primary
sync        D ms (relay far)    0 ms                the primary
async       0 ms (relay local)  D ms                the primary and the relay
==========  ==================  ==================  ===============================

The relay answers a journal only after its fdatasync, so placing it at the
far site makes every host write pay the far round trip and land durably
there before its ACK: synchronous two-site.  Placed at the primary's site, it
answers after a local fdatasync and ships later: asynchronous two-site, and
losing the site loses the relay with it (docs/benchmarks.md says why this is
faithful).

Two parts, one run:

* **latency**: per set-up one trio of processes, the emulators' delays
  switched for each far distance D; fio ``--ioengine=nbd`` against the
  primary's export (4 KiB random writes at QD1 and QD16): IOPS, p50/p99
  completion latency, the secondary's lag (journals the relay holds that the
  secondary has not restored, sampled every 0.1 s; and the seconds it takes
  to catch up once fio stops).  D = 0 is the reference: tricopy's latency
  with only the 0.5 ms link.
* **loss**: per set-up and kill a fresh trio at D = ``--loss-distance``, the
  chaos runner's stamped workload (host/tools/chaos.py: 16 writers, one write
  in flight each, every acknowledgement recorded), SIGKILL of the primary
  (and, for async, the relay) at a seeded random moment, ``tricopy
  takeover`` at the secondary (``--force`` without the relay for async), and
  the SVOLs checked block by block against the acknowledged history
  (:class:`~tricopy.host.tools.chaos.History`): acknowledged writes missing,
  and any violation of the prefix property.

Seeded (kill moments, write contents and extents); process timing is not
reproducible, so a seed replays the same schedule, not the same interleaving.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..rcm import control
from . import chaos
from .bench_replicate import LagSampler

__all__ = ["SETUPS", "DistanceCluster", "LossCounter", "lost_writes", "bench_latency",
           "bench_loss", "run", "register_bench"]

NEAR_MS = 0.5                         # the relay's distance in the tricopy set-up
DISTANCES = (1.0, 5.0, 25.0, 50.0)    # far one-way delays swept, ms
LOSS_DISTANCE = 25.0
JOBS = (("randwrite", 4096, 1), ("randwrite", 4096, 16))
GROUP = "g1"                          # the chaos cluster's group


@dataclass(frozen=True)
class Setup:
    """Where the relay stands, and what a lost primary site takes with it."""

    name: str
    what: str
    relay_dies_with_primary: bool

    def delays(self, far_ms: float) -> tuple[float, float]:
        """One-way delays (primary -> relay, relay -> secondary) in ms at far distance D."""
        if self.name == "tricopy":
            return NEAR_MS, far_ms
        if self.name == "sync":
            return far_ms, 0.0           # the relay at the far site
        return 0.0, far_ms               # async: the relay at the primary's site

    @property
    def far_link(self) -> str:
        """The emulated link that crosses the distance D."""
        return "pr" if self.name == "sync" else "rs"


SETUPS = {
    "tricopy": Setup("tricopy", "three sites: relay near (0.5 ms), secondary far (D)", False),
    "sync": Setup("sync", "synchronous two-site: the relay at the far site (D), secondary "
                          "beside it", False),
    "async": Setup("async", "asynchronous two-site: the relay at the primary's site, "
                            "secondary far (D); the relay dies with the primary", True),
}


class BenchError(Exception):
    """A bench that could not run (a site or fio did not come up): one line says why."""


# -- the sites --------------------------------------------------------------------------

class DistanceCluster(chaos.ChaosCluster):
    """The chaos runner's trio and emulators, plus the primary's NBD export for fio."""

    def __init__(self, root: Path):
        # Before the base class writes the configs; ``nbd_port`` is the
        # secondary's export there (the chaos runner's takeover rounds).
        self.primary_nbd_port = chaos._free_port()
        super().__init__(root)

    def _write_configs(self) -> None:
        super()._write_configs()
        with open(self.root / "primary" / "site.toml", "a") as f:
            f.write(f'[nbd]\nlisten = "127.0.0.1:{self.primary_nbd_port}"\n')

    @property
    def uri(self) -> str:
        return f"nbd://127.0.0.1:{self.primary_nbd_port}/pvol0"

    def place(self, pr_ms: float, rs_ms: float, rates: dict[str, float] | None = None) -> None:
        """Both links' one-way delays, without jitter, and bandwidths in bytes/s per
        direction (0 or absent: unlimited); for new bytes from now on."""
        for link, ms in (("pr", pr_ms), ("rs", rs_ms)):
            self.emu(link, "set", delay_ms=ms, jitter_ms=0.0,
                     rate_bps=(rates or {}).get(link, 0))

    def up(self, pr_ms: float, rs_ms: float, rates: dict[str, float] | None = None) -> None:
        """Emulators at the given delays, then the three sites (started side by side),
        and the primary connected to the relay."""
        self.start_links()
        self.place(pr_ms, rs_ms, rates)
        with ThreadPoolExecutor(3) as pool:
            for f in [pool.submit(self.start, r) for r in chaos.ROLES]:
                f.result()
        deadline = time.monotonic() + 30
        while not self.status("primary").get("connected"):
            if time.monotonic() > deadline:
                raise BenchError(f"the primary did not connect to the relay within 30 s: see "
                                 f"{self.root}/primary/site.log")
            time.sleep(0.05)

    def lag(self) -> int:
        """Journals the relay accepted that the secondary has not restored yet."""
        return self.status("relay")["next_seq"] - 1 - self.status("secondary")["last_restored"]

    def wait_caught_up(self, timeout: float = 120.0) -> float:
        t0 = time.monotonic()
        while self.lag() > 0:
            if time.monotonic() - t0 > timeout:
                raise BenchError(f"the secondary is still {self.lag()} journals behind after "
                                 f"{timeout:g} s: see {self.root}/secondary/site.log")
            time.sleep(0.01)
        return time.monotonic() - t0


# -- latency against distance -------------------------------------------------------------

def bench_latency(root: Path, setups, distances, seconds: float, jobs=JOBS,
                  echo=print, far_rate: float = 0, rounds: int = 1,
                  seed: int = 1) -> list[dict]:
    """fio through NBD per set-up and far distance (D = 0: the reference); the
    sweep ``rounds`` times over, each round in its own seeded order, each point
    reported as the median of its rounds: a shared machine's load drifts, and
    neither a distance nor the reference may always come at the same place."""
    rng = random.Random(f"{seed}:latency")
    from .bench_replicate import fio
    raw = []
    for name in setups:
        setup = SETUPS[name]
        c = DistanceCluster(root / f"latency-{name}")
        try:
            rates = {setup.far_link: far_rate}
            c.up(*setup.delays(0.0), rates)
            for rnd in range(1, rounds + 1):
                order = [0.0, *distances]
                rng.shuffle(order)
                for far in order:
                    pr, rs = setup.delays(far)
                    c.place(pr, rs, rates)
                    for rw, bs, depth in jobs:
                        c.wait_caught_up()
                        load = os.getloadavg()[0]
                        with LagSampler(c) as lag:
                            r = fio(c.uri, rw, bs, depth, seconds,
                                    chaos.VOL_BLOCKS * chaos.BLOCK)
                        r.update(setup=name, far_ms=far, pr_ms=pr, rs_ms=rs, round=rnd,
                                 lag_mean=round(sum(lag.samples) / max(1, len(lag.samples)), 1),
                                 lag_max=max(lag.samples, default=0),
                                 catch_up_s=round(c.wait_caught_up(), 3),
                                 load=round((load + os.getloadavg()[0]) / 2, 2))
                        raw.append(r)
                        echo(f"latency  {name:<8} round {rnd}/{rounds}  D {far:>4g} ms (pr "
                             f"{pr:g}, rs {rs:g})  {bs // 1024} KiB QD{depth:<2} "
                             f"{r['iops']:>6,} IOPS  p50 {r['p50_us'] / 1e3:>7.2f} ms  p99 "
                             f"{r['p99_us'] / 1e3:>7.2f} ms  lag mean {r['lag_mean']} max "
                             f"{r['lag_max']} journals, caught up in {r['catch_up_s']:.2f} s  "
                             f"load {r['load']}")
        finally:
            c.stop()
    return median_rows(raw)


def median_rows(raw: list[dict]) -> list[dict]:
    """One row per (set-up, D, job): medians over its rounds (the worst lag seen),
    and each round's p50 kept in ``p50_us_rounds``."""
    groups: dict[tuple, list[dict]] = {}
    for r in raw:
        groups.setdefault((r["setup"], r["far_ms"], r["rw"], r["bs"], r["iodepth"]), []).append(r)
    out = []
    for rows in groups.values():
        m = dict(rows[0])
        m.pop("round", None)
        for k in ("iops", "p50_us", "p99_us", "MB_per_s", "lag_mean", "catch_up_s", "load"):
            m[k] = statistics.median(r[k] for r in rows)
        m["lag_max"] = max(r["lag_max"] for r in rows)
        m["rounds"] = len(rows)
        m["p50_us_rounds"] = [r["p50_us"] for r in rows]
        m["per_round"] = [{k: r[k] for k in ("round", "iops", "p50_us", "p99_us", "lag_mean",
                                             "lag_max", "catch_up_s", "load")} for r in rows]
        out.append(m)
    return out


# -- acknowledged writes lost ----------------------------------------------------------------

def lost_writes(history: chaos.History, svols: list[bytes]) -> tuple[int, list[str]]:
    """(acknowledged writes missing from ``svols``, violations of the prefix property).

    Block by block through :meth:`History.check`: each worker's range must be
    exactly its writes 1..k; the acknowledged writes after k are missing."""
    bad, ks = history.check(svols, all_acked=False)
    return sum(max(0, history.acked(w) - k) for w, k in enumerate(ks)), bad


class LossCounter:
    """One kill: a fresh trio, the stamped load, the kill, the takeover, the count."""

    def __init__(self, root: Path, setup: Setup, far_ms: float, rng: random.Random,
                 window: tuple[float, float] = (1.0, 3.0), far_rate: float = 0):
        self.far_rate = far_rate          # bytes/s on the far link, 0: unlimited
        self.window = window              # the kill comes this many seconds into the load
        self.root = root
        self.setup = setup
        self.far_ms = far_ms
        self.rng = rng

    async def run(self) -> dict:
        from ..rcm.pairs import RcmError, Sites
        from ..rcm.takeover import takeover
        c = DistanceCluster(self.root)
        row = {"setup": self.setup.name, "far_ms": self.far_ms}
        history = chaos.History()
        work = chaos.Workload(c.control_addr("primary"), history,
                              random.Random(self.rng.getrandbits(32)))
        work.active = set(range(chaos.WORKERS))          # 16 writers, one write each in flight
        tasks = []
        try:
            await asyncio.to_thread(c.up, *self.setup.delays(self.far_ms),
                                    {self.setup.far_link: self.far_rate})
            after = self.rng.uniform(*self.window)
            tasks = [asyncio.create_task(work.worker(w)) for w in range(chaos.WORKERS)]
            deadline = time.monotonic() + 60
            while history.total_acked() == 0:           # the load flows: the clock starts
                if time.monotonic() > deadline:
                    raise BenchError(f"no write acknowledged within 60 s: see the site logs "
                                     f"in {self.root}")
                await asyncio.sleep(0.01)
            await asyncio.sleep(after)
            row["lag_at_kill"] = await asyncio.to_thread(c.lag)
            victims = ["primary"] + (["relay"] if self.setup.relay_dies_with_primary else [])
            # The site is lost with its network: the link leaving it is cut at the same
            # instant, and what the emulator still held on it never arrives.
            exit_link = "rs" if self.setup.relay_dies_with_primary else "pr"
            c.emu(exit_link, "fault", kind="blackhole")
            for role in victims:
                c.procs[role].send_signal(signal.SIGKILL)
            for role in victims:
                c.procs.pop(role).wait()
            row["killed"] = "+".join(victims)
            row["cut"] = exit_link
            row["kill_after_s"] = round(after, 2)
            # The takeover starts at once: the harshest moment for it, with the
            # journals still on their way to the far site (an operator would come
            # later and find less in flight).
            sites = Sites(*(Path(c.control_addr(r)) for r in ("primary", "relay", "secondary")))
            taking = asyncio.create_task(asyncio.to_thread(
                takeover, sites, GROUP, force=self.setup.relay_dies_with_primary,
                timeout=60, swap_if_alive=False))
            work.stop = True
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            try:
                rec = await taking
            except RcmError as exc:
                row.update(error=f"takeover: {exc}", lost=None, violations=[])
                return row
            # acks read from replies the primary sent before it died count too
            row["acked"] = history.total_acked()
            row["takeover_seq"] = rec["seq"]
            row["forced"] = bool(rec.get("forced"))
            row["rto_s"] = rec.get("rto_seconds")
            svols = [c.volume("secondary", i) for i in range(chaos.VOLUMES)]
            row["lost"], row["violations"] = lost_writes(history, svols)
            return row
        finally:
            work.stop = True
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            c.stop()


def bench_loss(root: Path, setups, far_ms: float, kills: int, seed: int,
               echo=print, logs: Path | None = None,
               window: tuple[float, float] = (1.0, 3.0), far_rate: float = 0) -> list[dict]:
    """``kills`` primary-site losses per set-up; a kill whose takeover failed or whose
    SVOLs are no prefix keeps its sites' logs in ``logs``/<set-up>-<kill>/."""
    rows = []
    for name in setups:
        rng = random.Random(f"{seed}:{name}")            # one schedule per set-up
        for i in range(kills):
            kroot = root / f"loss-{name}-{i}"
            row = asyncio.run(LossCounter(kroot, SETUPS[name], far_ms, rng, window, far_rate).run())
            row["kill"] = i + 1
            rows.append(row)
            if (row.get("error") or row["violations"]) and logs is not None:
                _keep_logs(kroot, logs / f"{name}-{i}")
                echo(f"the sites' logs of this kill: {logs / f'{name}-{i}'}")
            what = (row["error"] if row.get("error") else
                    f"{row['acked']:>5} acked, lost {row['lost']:>3}, lag at kill "
                    f"{row['lag_at_kill']:>3} journals, takeover at SEQ# {row['takeover_seq']}"
                    f"{' (forced)' if row['forced'] else ''}, prefix violations "
                    f"{len(row['violations'])}")
            echo(f"loss     {name:<8} D {far_ms:g} ms  kill {i + 1:>2}/{kills}  "
                 f"{row.get('killed', '?'):<13} after {row.get('kill_after_s', 0):.2f} s  {what}")
    return rows


def _keep_logs(src: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for f in list(src.glob("*/site.log")) + list(src.glob("linkemu-*.log")):
        shutil.copy(f, dest / (f.parent.name + ".log" if f.name == "site.log" else f.name))


# -- the whole run ---------------------------------------------------------------------------

def run(*, setups=tuple(SETUPS), distances=DISTANCES, seconds: float = 4.0,
        loss_distance: float = LOSS_DISTANCE, kills: int = 10, seed: int = 1,
        jobs=JOBS, latency: bool = True, echo=print, logs: Path | None = None,
        kill_window: tuple[float, float] = (1.0, 3.0), far_rate: float = 0,
        rounds: int = 1) -> dict:
    """Both parts; returns the report (machine, load, rows, seconds)."""
    from .bench import machine
    t0 = time.monotonic()
    load0 = os.getloadavg()[0]
    report = {"machine": machine(), "date": datetime.date.today().isoformat(), "seed": seed,
              "far_rate_bps": far_rate, "rounds": rounds,
              "seconds_per_job": seconds, "kills": kills, "loss_distance_ms": loss_distance}
    root = Path(tempfile.mkdtemp(prefix="tricopy-distance-",
                                 dir=os.environ.get("TRICOPY_BENCH_DIR")))
    try:
        report["latency"] = (bench_latency(root, setups, distances, seconds, jobs, echo,
                                           far_rate, rounds, seed) if latency else [])
        report["loss"] = bench_loss(root, setups, loss_distance, kills, seed, echo, logs,
                                    kill_window, far_rate)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report["load"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    report["seconds"] = round(time.monotonic() - t0, 1)
    return report


# -- tables, plots, the docs -----------------------------------------------------------------

DOC_BEGIN = "<!-- bench distance: generated by `tricopy bench distance --docs`, begin -->"
DOC_END = "<!-- bench distance: generated, end -->"


def estimate_seconds(setups, distances, seconds: float, kills: int, jobs=JOBS,
                     latency: bool = True, rounds: int = 1) -> float:
    """A rough forecast on the 2-core build machine (fio's 1 s ramp, starts, catch-ups)."""
    lat = (len(setups) * (4 + rounds * (1 + len(distances)) * len(jobs) * (seconds + 1.8))
           if latency else 0)
    return lat + len(setups) * kills * 6.0


def _by(rows, setup, far, depth):
    for r in rows:
        if r["setup"] == setup and r["far_ms"] == far and r["iodepth"] == depth:
            return r
    return None


def _ms(us: int) -> str:
    return f"{us / 1e3:.2f}" if us < 10_000 else f"{us / 1e3:.1f}"


def markdown(report: dict, command: str, plots: dict[str, str] | None = None) -> str:
    """The tables (and plot links) of one run, for docs/benchmarks.md."""
    lat, loss = report["latency"], report["loss"]
    mach = report["machine"]
    run_tag = f"`{command}`, {mach}"
    out = [f"Run {report['date']}: `{command}` on {mach}; load average (1 min) "
           f"{report['load'][0]} at the start, {report['load'][1]} at the end; "
           f"{report['seconds']:.0f} s in all; seed {report['seed']}; "
           + (f"each latency point the median of {report.get('rounds', 1)} round(s) of "
              f"{report['seconds_per_job']:g} s fio jobs; " if lat else "")
           + "far link "
           + (f"{report['far_rate_bps'] / 1e6:g} MB/s each way." if report.get("far_rate_bps")
              else "of unlimited bandwidth.") + "", ""]
    out += [f"* **{s.name}**: {s.what}" for s in SETUPS.values()
            if any(r["setup"] == s.name for r in lat + loss)] + [""]
    if lat:
        depths = sorted({r["iodepth"] for r in lat})
        head = ["set-up", "far D (one way)", "links pr / rs"]
        for d in depths:
            head += [f"QD{d} p50 / p99 ms", f"QD{d} IOPS"]
        head += [f"p50 QD{depths[0]} vs D = 0", f"QD{depths[0]} p50 per round, ms",
                 f"lag mean / max (QD{depths[-1]})",
                 "catch-up", "load", "command, machine"]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for setup in SETUPS:
            fars = sorted({r["far_ms"] for r in lat if r["setup"] == setup})
            for far in fars:
                rs = [_by(lat, setup, far, d) for d in depths]
                first = rs[0]
                base = _by(lat, setup, 0.0, depths[0])
                cells = [setup, f"{far:g} ms", f"{first['pr_ms']:g} / {first['rs_ms']:g} ms"]
                for r in rs:
                    cells += [f"{_ms(r['p50_us'])} / {_ms(r['p99_us'])}", f"{r['iops']:,}"]
                ratio = (f"{first['p50_us'] / base['p50_us']:.2f}×"
                         if base and base["p50_us"] and far else "1 (reference)" if base else "")
                cells += [ratio, " ".join(_ms(x) for x in first.get("p50_us_rounds",
                                                                    [first["p50_us"]])),
                          f"{rs[-1]['lag_mean']} / {rs[-1]['lag_max']} journals",
                          f"{rs[-1]['catch_up_s']:.2f} s",
                          " / ".join(str(r["load"]) for r in rs), run_tag]
                out.append("| " + " | ".join(cells) + " |")
        out.append("")
    if loss:
        head = ["set-up", "far D", "lost with the site", "kills", "writes acked (all kills)",
                "acked writes lost, per kill", "lost in all", "prefix violations",
                "lag at the kill, mean", "takeover errors", "command, machine"]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for setup in SETUPS:
            rows = [r for r in loss if r["setup"] == setup]
            if not rows:
                continue
            ok = [r for r in rows if not r.get("error")]
            lags = [r["lag_at_kill"] for r in rows if "lag_at_kill" in r]
            cells = [setup, f"{rows[0]['far_ms']:g} ms", rows[0].get("killed", "?"),
                     str(len(rows)), f"{sum(r['acked'] for r in ok):,}",
                     " ".join(str(r["lost"]) for r in ok) or "-",
                     str(sum(r["lost"] for r in ok)),
                     str(sum(len(r["violations"]) for r in ok)),
                     f"{sum(lags) / max(1, len(lags)):.0f} journals",
                     str(len(rows) - len(ok)), run_tag]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    for title, path in (plots or {}).items():
        out += [f"![{title}]({path})", ""]
    return "\n".join(out)


def plot(report: dict, folder: Path) -> dict[str, Path]:
    """PNGs: latency against the far distance per set-up; acked writes lost per kill."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    colors = {"tricopy": "tab:green", "sync": "tab:red", "async": "tab:blue"}
    lat = report["latency"]
    if lat:
        depths = sorted({r["iodepth"] for r in lat})
        fig, axes = plt.subplots(1, len(depths), figsize=(5.5 * len(depths), 4.2), squeeze=False)
        for ax, depth in zip(axes[0], depths):
            for setup in SETUPS:
                rows = sorted((r for r in lat if r["setup"] == setup and r["iodepth"] == depth),
                              key=lambda r: r["far_ms"])
                if not rows:
                    continue
                x = [r["far_ms"] for r in rows]
                ax.plot(x, [r["p50_us"] / 1e3 for r in rows], "o-", color=colors[setup],
                        label=f"{setup} p50")
                ax.plot(x, [r["p99_us"] / 1e3 for r in rows], ":", color=colors[setup],
                        alpha=0.7, label=f"{setup} p99")
            ax.set_xscale("symlog", linthresh=1)
            ax.set_yscale("log")
            ax.set_xticks([0, 1, 5, 25, 50])
            ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.set_xlabel("far site, one-way delay D (ms)")
            ax.set_ylabel("host write latency (ms)")
            ax.set_title(f"4 KiB random writes, QD{depth}, fio over NBD")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        out["latency against far distance"] = folder / "distance-latency.png"
        fig.savefig(out["latency against far distance"], dpi=90)
        plt.close(fig)
    loss = [r for r in report["loss"] if not r.get("error")]
    if loss:
        fig, ax = plt.subplots(figsize=(7, 3.8))
        names = [s for s in SETUPS if any(r["setup"] == s for r in loss)]
        width = 0.8 / len(names)
        for i, setup in enumerate(names):
            rows = [r for r in loss if r["setup"] == setup]
            xs = [r["kill"] + (i - (len(names) - 1) / 2) * width for r in rows]
            ax.bar(xs, [r["lost"] for r in rows], width, color=colors[setup],
                   label=f"{setup}: {sum(r['lost'] for r in rows)} lost in {len(rows)} kills")
            # a dot on every kill: a kill that lost nothing shows as a dot at 0, not as nothing
            ax.plot(xs, [r["lost"] for r in rows], "o", color=colors[setup], markersize=4)
        ax.set_xlabel(f"kill (primary site lost at a random moment, D = "
                      f"{report['loss_distance_ms']:g} ms)")
        ax.set_ylabel("acknowledged writes lost")
        ax.set_ylim(bottom=-0.05 * max(1, max(r["lost"] for r in loss)))
        ax.set_xticks(sorted({r["kill"] for r in loss}))
        ax.legend(fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
        fig.tight_layout()
        out["acknowledged writes lost per kill"] = folder / "distance-loss.png"
        fig.savefig(out["acknowledged writes lost per kill"], dpi=90)
        plt.close(fig)
    return out


def repo_docs() -> Path:
    """docs/ of the code that runs: the repository is the package folder
    (``tricopy`` is a namespace package: no ``__file__`` of its own)."""
    return Path(__file__).resolve().parents[2] / "docs"


def replace_between(text: str, begin: str, end: str, body: str) -> str:
    """``text`` with what lies between the markers ``begin`` and ``end`` replaced."""
    try:
        i = text.index(begin) + len(begin)
        j = text.index(end, i)
    except ValueError:
        raise BenchError(f"the markers {begin!r} ... {end!r} are not in the file: put them "
                         f"back where the generated tables go") from None
    return text[:i] + "\n" + body.strip("\n") + "\n" + text[j:]


def write_docs(report: dict, command: str, docs: Path) -> Path:
    """Rewrite the generated part of ``docs``/benchmarks.md, the PNGs in docs/img/
    and the run's whole report beside them (distance-report.json: every round)."""
    pngs = plot(report, docs / "img")
    (docs / "img" / "distance-report.json").write_text(json.dumps(report, indent=1) + "\n")
    page = docs / "benchmarks.md"
    body = markdown(report, command, {k: str(p.relative_to(docs)) for k, p in pngs.items()})
    page.write_text(replace_between(page.read_text(), DOC_BEGIN, DOC_END, body))
    return page


def _floats(text: str) -> tuple[float, ...]:
    try:
        out = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise SystemExit(f"tricopy bench distance: {text!r} is not a comma-separated list of "
                         f"milliseconds, e.g. 1,5,25,50") from None
    if any(x < 0 for x in out):
        raise SystemExit(f"tricopy bench distance: a delay below 0 in {text!r}")
    return out


def _run(args) -> int:
    setups = tuple(s.strip() for s in args.setups.split(",") if s.strip())
    unknown = [s for s in setups if s not in SETUPS]
    if unknown or not setups:
        raise SystemExit(f"tricopy bench distance: unknown set-up {unknown or args.setups!r}; "
                         f"the set-ups: {', '.join(SETUPS)}")
    distances = _floats(args.distances)
    if args.kills < 0 or args.seconds <= 0 or args.far_rate < 0 or args.rounds < 1:
        raise SystemExit("tricopy bench distance: --kills and --far-rate must be >= 0, "
                         "--seconds > 0 and --rounds >= 1")
    for tool in ("fio",) if not args.no_latency else ():
        if shutil.which(tool) is None:
            raise SystemExit(f"tricopy bench distance: {tool} is not installed (Debian "
                             f"package {tool}), or run with --no-latency")
    echo = (lambda _t: None) if args.json else print
    est = estimate_seconds(setups, distances, args.seconds, args.kills,
                           latency=not args.no_latency, rounds=args.rounds)
    lat = ("no latency part" if args.no_latency else
           f"far D {', '.join(f'{d:g}' for d in distances)} ms (and 0: the reference) x 4 KiB "
           f"QD1, QD16 for {args.seconds:g} s each, {args.rounds} rounds")
    far = f"{args.far_rate:g} MB/s" if args.far_rate else "unlimited"
    echo(f"bench distance: set-ups {', '.join(setups)}; {lat}; {args.kills} kills per set-up "
         f"at D = {args.loss_distance:g} ms; far link {far}; about {est / 60:.0f} min on 2 "
         f"busy cores")
    try:
        report = run(setups=setups, distances=distances, seconds=args.seconds,
                     loss_distance=args.loss_distance, kills=args.kills, seed=args.seed,
                     latency=not args.no_latency, echo=echo, logs=Path(args.logs),
                     far_rate=args.far_rate * 1e6, rounds=args.rounds)
    except (BenchError, RuntimeError) as exc:      # a site or fio that did not come up
        print(f"tricopy bench distance: {exc}", file=sys.stderr)
        return 1
    command = "tricopy bench distance" + "".join(
        f" {flag} {val}" for flag, val, default in (
            ("--seconds", f"{args.seconds:g}", "3"), ("--kills", str(args.kills), "10"),
            ("--distances", args.distances, ",".join(f"{d:g}" for d in DISTANCES)),
            ("--loss-distance", f"{args.loss_distance:g}", f"{LOSS_DISTANCE:g}"),
            ("--setups", args.setups, ",".join(SETUPS)), ("--seed", str(args.seed), "1"),
            ("--far-rate", f"{args.far_rate:g}", "0"), ("--rounds", str(args.rounds), "3"))
        if val != default) + (" --no-latency" if args.no_latency else "")
    report["command"] = command
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print()
        print(markdown(report, command))
    if args.docs:
        page = write_docs(report, command, repo_docs())
        echo(f"rewrote the generated tables in {page} and the plots in {page.parent / 'img'}")
    return 0


def register_bench(which) -> None:
    """Add ``distance`` to the ``tricopy bench`` subcommands."""
    text = ("the patent's claim measured: tricopy's three sites against synchronous and "
            "asynchronous two-site copy, host latency against the far distance and acked "
            "writes lost when the primary site dies")
    p = which.add_parser("distance", help=text, description=text)
    p.add_argument("--distances", default=",".join(f"{d:g}" for d in DISTANCES),
                   help="far one-way delays to sweep, ms, comma-separated (default 1,5,25,50; "
                        "0, the reference, is always run)")
    p.add_argument("--seconds", type=float, default=3.0,
                   help="fio runtime per job after its 1 s ramp (default 3)")
    p.add_argument("--rounds", type=int, default=3,
                   help="sweeps of the distances; each point is the median of its rounds "
                        "(default 3)")
    p.add_argument("--kills", type=int, default=10,
                   help="primary-site losses per set-up in the loss experiment (default 10)")
    p.add_argument("--loss-distance", type=float, default=LOSS_DISTANCE,
                   help="far one-way delay of the loss experiment, ms (default 25)")
    p.add_argument("--setups", default=",".join(SETUPS),
                   help="which set-ups, comma-separated (default tricopy,sync,async)")
    p.add_argument("--seed", type=int, default=1, help="kill moments and write contents")
    p.add_argument("--far-rate", type=float, default=0.0,
                   help="bandwidth of the far link, MB/s each way (default 0: unlimited); "
                        "a thin far link makes the secondary lag, and the takeover drain")
    p.add_argument("--no-latency", action="store_true", help="only the loss experiment")
    p.add_argument("--docs", action="store_true",
                   help="rewrite the generated tables of docs/benchmarks.md and the plots "
                        "in docs/img/")
    p.add_argument("--logs", default="distance-logs",
                   help="where the sites' logs of a kill that went wrong go (default "
                        "./distance-logs)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_run)
