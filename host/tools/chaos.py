"""``tricopy chaos``: the three sites under a stamped workload, faults round after round.

The sites run as processes on this machine (``python -m
tricopy.host.sites_cli``), with mutual TLS, and a link emulator
(``tricopy linkemu``, host/tools/linkemu.py) on each of the two links:
primary -> emulator -> relay and relay -> emulator -> secondary.  Host writes
go through the primary's control socket; every 4 KiB block carries a stamp
(worker, write number, block), each worker owns a block range and has one
write in flight, so what any volume image holds can be checked against the
acknowledged history exactly (:class:`History`, which the consistency and
takeover tests in tests/e2e/ use too).

Each **round** sets a queue depth (active workers: 1, 4 or 16) and a block
pattern (random extents, sequential, a hot spot of a few blocks rewritten
over and over; two workers always hammer their own 4-block hot spot), runs
the workload, and injects one fault:

* ``kill:<site>`` -- SIGKILL the primary, relay or secondary, restart it
  after 0.2 to 1 s;
* ``<link>:<fault>`` on ``pr`` (primary-relay) or ``rs`` (relay-secondary):
  ``stall`` (0.3 to 3 s: shorter and longer than the sites' 1.5 s liveness
  timeout), ``blackhole`` (a partition, 0.5 to 3 s), ``reset`` (RST both
  sides), ``slow_close`` (quiet, then a FIN), ``delay`` (5 to 50 ms one way
  with jitter and a bandwidth limit, 1 to 3 s), ``corrupt`` (one to three
  flipped bytes: TLS must refuse them and the link reconnect);
* ``swap:planned`` -- a planned swap and the swap back, writes paused;
* ``power:<site>`` (relay, secondary) -- a power cut of the site: it runs on
  the power-cut disk (host/disk/powerswitch.py), so its writes never synced
  are lost (some torn), not just its process; restarted on what survived
  after 0.2 to 1 s, the load running;
* ``takeover:unplanned`` -- the primary SIGKILLed under load (the relay
  survives), ``tricopy takeover`` at the secondary, every acknowledged
  write checked on its volumes, writes there over NBD, the old primary
  back (fenced), ``tricopy failback`` of the delta, the load back on the
  primary.

The checks, each a violation when it fails (the run goes on):

* **snapshots** -- twice a round the secondary's ``snapshot`` copies its
  SVOLs between two restore steps; every copy it calls consistent must be a
  prefix of the acknowledged history: per worker the range is exactly its
  writes 1..k, and a write is there only if every write acknowledged before it
  was sent is there too.  (Copies it calls not consistent -- a crash's replay
  under way -- are counted, not checked.)
* **drain** -- at the end of each round the workload pauses (every write
  acknowledged), the trio drains, and the SVOLs must hold every acknowledged
  write and nothing else: no acked write lost (SIGKILLs lose no durable
  state, and the relay ACKs only what an fdatasync covers, so this holds in
  every round, a relay power cut included), and SVOL == PVOL.
* **takeover** -- after ``tricopy takeover`` every acknowledged write is on
  the new primary's volumes (a write in flight at the kill is there whole or
  not at all; :meth:`History.settle` then keeps or forgets it); after the
  failback both sites' volumes are equal and hold every acknowledged write,
  and the primary acknowledges writes again.
* **writes refused** -- a write the primary answers with an error (the group
  suspended, say) is a violation: no fault here may cost more than a delay.

A seed fixes the schedule of faults, durations, patterns and write contents;
the timing of processes is not reproducible, so a seed replays the same run
of faults, not the same interleaving.  The run stops by itself after
``--rounds`` (or once ``--max-seconds`` are up), prints a table, and on a violation keeps the sites' logs (and
the runner's round log) in ``--logs/seed-<N>/``.

Not in the rounds yet: a power cut of the primary (its PVOL legitimately
loses acknowledged writes never FLUSHed, which the stamped history cannot
tell from a loss: tests/test_powercut_primary.py checks it alone),
WRITE_ZEROES/TRIM.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import collections
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..rcm import control

__all__ = ["ChaosCluster", "ChaosRun", "run", "register", "FAULT_KINDS"]

ROLES = ("secondary", "relay", "primary")
LINKS = {"pr": ("primary", "relay"), "rs": ("relay", "secondary")}
LINK_FAULTS = ("stall", "blackhole", "reset", "slow_close", "delay", "corrupt")
POWER_ROLES = ("relay", "secondary")
FAULT_KINDS = tuple([f"kill:{r}" for r in ("primary", "relay", "secondary")]
                    + [f"{link}:{f}" for link in LINKS for f in LINK_FAULTS]
                    + ["swap:planned"]      # a planned swap and the swap back (failover)
                    + [f"power:{r}" for r in POWER_ROLES]
                    + ["takeover:unplanned"])   # primary lost, takeover, failback
DATA = "disk"                        # a site's volumes, journal and state folder: <role>/disk/
PATTERNS = ("random", "sequential", "hotspot")
DEPTHS = (1, 4, 16)

BLOCK = 4096
VOL_BLOCKS = 256                     # 1 MiB volumes
VOLUMES = 2
WORKERS = 16
SPAN = 32                            # blocks per ordinary worker
HOT = 4                              # blocks of a hot spot
MAGIC = 0x5354414D50                 # "STAMP"
HEADER = struct.Struct("<QIII")      # magic, worker, write number, block
BASE_DELAY_MS = 0.5                  # the links' everyday one-way delay


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stamped(worker: int, wnum: int, nblocks: int) -> bytes:
    out = bytearray()
    for b in range(nblocks):
        head = HEADER.pack(MAGIC, worker, wnum, b)
        out += head + bytes([(worker * 31 + wnum + b) & 0xFF]) * (BLOCK - len(head))
    return bytes(out)


# -- the sites and the links ----------------------------------------------------------

class SiteDown(RuntimeError):
    """A site that does not start again (after a fault: a violation that ends the run)."""


class ChaosCluster:
    """Three site processes and two ``tricopy linkemu`` processes under ``root``."""

    def __init__(self, root: Path, *, heartbeat: float = 0.5, durability: str = "fsync",
                 powered: tuple[str, ...] = (), mutations: tuple[str, ...] = (),
                 seed: int = 0):
        from .certs import make_certs
        self.root = root
        # The sites that run on the power-cut disk (host/disk/powerswitch.py),
        # and the syncs it skips (only to show the checks notice).
        self.powered = tuple(powered)
        self.mutations = tuple(mutations)
        self._starts = seed * 10_000     # each start of a powered site: its cuts' seed
        self.durability = durability
        self.heartbeat = heartbeat
        self.ports = {r: (_free_port(),) for r in ROLES}
        self.nbd_port = _free_port()      # the secondary's exports (writable once taken over)
        self.sock_dir = Path(tempfile.mkdtemp(prefix="chaos-", dir="/tmp"))  # short socket paths
        self.procs: dict[str, subprocess.Popen] = {}
        self.emus: dict[str, subprocess.Popen] = {}
        self.emu_ports: dict[str, int] = {}
        make_certs(root / "certs", list(ROLES), days=30)
        for role in ROLES:
            (root / role / DATA).mkdir(parents=True, exist_ok=True)

    # addresses
    def control_addr(self, role: str) -> str:
        return str(self.sock_dir / f"{role}.sock")

    def emu_control(self, link: str) -> str:
        return str(self.sock_dir / f"emu-{link}.sock")

    def start_links(self) -> None:
        for link, (_, dst) in LINKS.items():
            log = open(self.root / f"linkemu-{link}.log", "ab")
            proc = subprocess.Popen(
                [sys.executable, "-m", "tricopy.host.cli", "linkemu", "--listen", "127.0.0.1:0",
                 "--target", f"127.0.0.1:{self.ports[dst][0]}", "--name", link,
                 "--delay", str(BASE_DELAY_MS), "--jitter", str(BASE_DELAY_MS / 4),
                 "--control", f"unix:{self.emu_control(link)}"],
                stdout=subprocess.PIPE, stderr=log, text=True)
            log.close()
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"linkemu {link} did not start: see {self.root}/linkemu-{link}.log")
            self.emu_ports[link] = int(line.split()[2].rsplit(":", 1)[1])
            self.emus[link] = proc
        self._write_configs()

    def _write_configs(self) -> None:
        certs = self.root / "certs"

        def common(role: str) -> str:
            return (f'site = "{role}"\nlisten = "127.0.0.1:{self.ports[role][0]}"\n'
                    f'control = "unix:{self.control_addr(role)}"\nstate_dir = "{DATA}/state"\n'
                    f'heartbeat = {self.heartbeat}\n'
                    f'tls = {{ ca = "{certs}/ca.pem", cert = "{certs}/{role}.pem", '
                    f'key = "{certs}/{role}.key" }}\n')

        def vols(prefix: str) -> str:
            return "".join(f'[[volume]]\nidx = {i}\ngroup = 1\npath = "{DATA}/{prefix}{i}.img"\n'
                           f'size = {VOL_BLOCKS * BLOCK}\nblock_size = {BLOCK}\ncreate = true\n'
                           for i in range(VOLUMES))

        group = 'grnum = 1\ngrname = "g1"\ninitial_state = "PAIR"\n'
        docs = {
            "primary": common("primary") + f'[[group]]\n{group}peer_site = "relay"\n'
                       f'attr = "MASTER"\npeer = "127.0.0.1:{self.emu_ports["pr"]}"\n'
                       f'full_suspend_after = 120\nlink_suspend_after = 120\n' + vols("pvol"),
            "relay": common("relay") + f'[[group]]\n{group}peer_site = "secondary"\n'
                     f'upstream_site = "primary"\nattr = "INTERMEDIARY"\n'
                     f'peer = "127.0.0.1:{self.emu_ports["rs"]}"\ndurability = "{self.durability}"\n'
                     f'reverse_peer = "127.0.0.1:{self.ports["primary"][0]}"\n'
                     f'journal = {{ path = "{DATA}/jnl1.vol", size = {8 << 20} }}\n',
            "secondary": common("secondary") + f'[[group]]\n{group}upstream_site = "relay"\n'
                         f'attr = "RESTORE"\nrestore_interval = 0\n'
                         # after a swap it writes to the relay, through the pr emulator
                         f'peer = "127.0.0.1:{self.emu_ports["pr"]}"\n' + vols("svol")
                         + f'[nbd]\nlisten = "127.0.0.1:{self.nbd_port}"\n',
        }
        for role, text in docs.items():
            (self.root / role / "site.toml").write_text(text)

    def start(self, role: str) -> None:
        from ..disk import powerswitch as ps
        d = self.root / role
        env = dict(os.environ)
        if role in self.powered:
            self._starts += 1
            env.update({ps.ENV_ROOT: str(d / DATA), ps.ENV_OUTSIDE: "state/snapshots",
                        ps.ENV_MUTATIONS: ",".join(self.mutations),
                        ps.ENV_SEED: str(self._starts)})
        log = open(d / "site.log", "ab")
        self.procs[role] = subprocess.Popen(
            [sys.executable, "-m", "tricopy.host.sites_cli", role, "--config", str(d / "site.toml")],
            stdout=log, stderr=subprocess.STDOUT, cwd=d, env=env)
        log.close()
        deadline = time.monotonic() + 30
        while True:
            if self.procs[role].poll() is not None:
                rc = self.procs.pop(role).returncode
                lines = (d / "site.log").read_text(errors="replace").strip().splitlines()
                raise SiteDown(f"{role} exited with {rc}: {lines[-1] if lines else '(no log)'}")
            try:
                control.call(self.control_addr(role), "status", timeout=2)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise SiteDown(f"{role} did not come up within 30 s")
                time.sleep(0.05)

    def kill(self, role: str) -> None:
        proc = self.procs.pop(role)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def power_cut(self, role: str) -> None:
        """Cut the power of ``role`` (it must run on the power-cut disk): its
        unsynced writes are lost; its folder then holds what survived."""
        from ..disk import powerswitch as ps
        if role not in self.powered:
            raise ValueError(f"{role} does not run on the power-cut disk")
        proc = self.procs.pop(role)
        proc.send_signal(ps.SWITCH)
        try:
            rc = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise SiteDown(f"{role} did not cut its power within 60 s (SIGKILLed)")
        if rc != ps.EXIT_POWER_CUT:
            raise SiteDown(f"{role} exited with {rc} instead of cutting its power: see "
                               f"{self.root / role / 'site.log'}")
        data = self.root / role / DATA
        shutil.rmtree(data)
        os.rename(ps.cut_folder(data), data)

    def emu(self, link: str, cmd: str, **args) -> dict:
        return control.call(self.emu_control(link), cmd, timeout=5, **args)

    def status(self, role: str) -> dict:
        return control.call(self.control_addr(role), "status", timeout=5)["groups"][0]

    def volume(self, role: str, idx: int) -> bytes:
        prefix = "pvol" if role == "primary" else "svol"
        return (self.root / role / DATA / f"{prefix}{idx}.img").read_bytes()

    def stop(self) -> None:
        for role in list(self.procs):
            self.kill(role)
        for proc in self.emus.values():
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.emus.clear()
        shutil.rmtree(self.sock_dir, ignore_errors=True)


# -- the workload and its history -------------------------------------------------------

class History:
    """Every write sent, per worker: [idx, offset, data, t_send, t_ack or None].

    The one prefix checker of the project: the chaos rounds, the consistency
    and the takeover tests (tests/e2e/) all record their stamped writes here
    and ask :meth:`check`.  Each worker owns a block range of one volume and
    has one write in flight, so its k-th acknowledgement is its write k.
    ``regions`` gives each worker's (volume idx, first block, blocks); by
    default the chaos layout (14 ordinary workers, 2 hot spots).
    """

    def __init__(self, regions: list[tuple[int, int, int]] | None = None):
        if regions is None:
            regions = []
            per_vol = (WORKERS - 2) // VOLUMES
            for w in range(WORKERS - 2):
                regions.append((w % VOLUMES, (w // VOLUMES) * SPAN, SPAN))
            for v in range(VOLUMES):
                regions.append((v, per_vol * SPAN, HOT))
        self.regions: list[tuple[int, int, int]] = list(regions)
        self.sent: list[list[list]] = [[] for _ in self.regions]
        self.acks: list[list[float]] = [[] for _ in self.regions]   # t_ack, in order
        self._cache: dict[int, tuple[int, bytearray]] = {}

    def send(self, w: int, idx: int, offset: int, data: bytes) -> list:
        """Record worker ``w``'s next write as sent now (before the request goes out)."""
        rec = [idx, offset, data, time.monotonic(), None]
        self.sent[w].append(rec)
        return rec

    def ack(self, w: int, rec: list) -> None:
        """Record the acknowledgement of ``rec``, worker ``w``'s write in flight."""
        rec[4] = time.monotonic()
        self.acks[w].append(rec[4])

    def acked(self, w: int) -> int:
        return len(self.acks[w])

    def total_acked(self) -> int:
        return sum(map(len, self.acks))

    def acked_before(self, v: int, t: float) -> int:
        return bisect.bisect_left(self.acks[v], t)

    def replay(self, w: int, k: int) -> bytes:
        """Worker ``w``'s range after its writes 1..k (cached forward)."""
        idx, first, span = self.regions[w]
        ck, img = self._cache.get(w, (0, bytearray(span * BLOCK)))
        if k < ck:
            ck, img = 0, bytearray(span * BLOCK)
        else:
            img = bytearray(img)
        for _, off, data, _, _ in self.sent[w][ck:k]:
            pos = off - first * BLOCK
            img[pos:pos + len(data)] = data
        self._cache[w] = (k, img)
        return bytes(img)

    def settle(self, ks: list[int]) -> int:
        """After a takeover: each worker's write that was in flight when its
        writer died either reached the new writer's volume (``ks[w]``, from
        :meth:`check`) -- it counts as acknowledged now, it is durable there --
        or it is forgotten.  Returns how many were kept."""
        kept = 0
        for w, k in enumerate(ks):
            if k > self.acked(w):
                now = time.monotonic()
                for rec in self.sent[w][self.acked(w):k]:
                    rec[4] = now
                    self.acks[w].append(now)
                    kept += 1
            del self.sent[w][max(k, self.acked(w)):]
        return kept

    def check(self, svols: list[bytes], *, all_acked: bool) -> tuple[list[str], list[int]]:
        """Violations of the prefix property (and, with ``all_acked``, of "every
        acknowledged write is there"); and k per worker."""
        bad: list[str] = []
        ks: list[int] = []
        for w, (idx, first, span) in enumerate(self.regions):
            region = svols[idx][first * BLOCK:(first + span) * BLOCK]
            k = 0
            for pos in range(0, len(region), BLOCK):
                magic, worker, wnum, _ = HEADER.unpack_from(region, pos)
                if magic == MAGIC:
                    if worker != w:
                        bad.append(f"worker {w}: a block of worker {worker} in its range")
                    k = max(k, wnum)
            if k > len(self.sent[w]):
                bad.append(f"worker {w}: write {k} was never sent (invented)")
                k = len(self.sent[w])
            if all_acked and k < self.acked(w):
                bad.append(f"worker {w}: {self.acked(w)} writes acknowledged but the SVOL holds "
                           f"only up to write {k}: acknowledged writes lost")
            if region != self.replay(w, k):
                bad.append(f"worker {w}: its range is not its writes 1..{k}")
            ks.append(k)
        for w, k in enumerate(ks):
            if k == 0:
                continue
            sent = self.sent[w][k - 1][3]
            for v, kv in enumerate(ks):
                before = self.acked_before(v, sent)
                if before > kv:
                    bad.append(f"write {k} of worker {w} is on the SVOL but write {before} of "
                               f"worker {v}, acknowledged before it was sent, is not (only {kv})")
        return bad, ks


class Refused(Exception):
    """The site answered a write with an error (not: it is away)."""


class ControlTarget:
    """Host writes through a primary's control socket (``write``)."""

    def __init__(self, addr: str):
        self.addr = addr

    async def connect(self) -> "ControlTarget._Conn":
        return self._Conn(await control.ControlClient.open(self.addr))

    class _Conn:
        def __init__(self, client):
            self.client = client

        async def write(self, idx: int, offset: int, data: bytes) -> None:
            try:
                await self.client.call("write", idx=idx, offset=offset,
                                       data=base64.b64encode(data).decode())
            except control.ControlError as exc:
                raise Refused(str(exc)) from None

        async def close(self) -> None:
            await self.client.close()


class NbdTarget:
    """Host writes over NBD to a site's exports (``svol<idx>`` at the secondary),
    one connection per volume."""

    def __init__(self, port: int, prefix: str):
        self.port, self.prefix = port, prefix

    async def connect(self) -> "NbdTarget._Conn":
        return self._Conn(self)

    class _Conn:
        def __init__(self, target):
            self.t = target
            self.clients: dict = {}

        async def write(self, idx: int, offset: int, data: bytes) -> None:
            from ..nbd.client import NbdClient, NbdError, NbdRefused
            try:
                if idx not in self.clients:
                    self.clients[idx] = await NbdClient.open("127.0.0.1", self.t.port,
                                                             f"{self.t.prefix}{idx}")
                await self.clients[idx].write(offset, data)
            except NbdRefused as exc:
                raise Refused(str(exc)) from None
            except NbdError as exc:
                raise ConnectionError(str(exc)) from None

        async def close(self) -> None:
            for c in self.clients.values():
                await c.close()


class Workload:
    """Stamped writers, one write in flight each, to ``target`` (the primary's
    control socket, or the exports of the site that took over)."""

    def __init__(self, addr: str, history: History, rng: random.Random):
        self.target = ControlTarget(addr)
        self.tasks: list[asyncio.Task] = []
        self.h = history
        self.rng = rng
        self.active: set[int] = set(range(WORKERS))
        self.pattern = "random"
        self.paused = False
        self.stop = False
        self.busy = [False] * WORKERS
        self.cursor = [0] * WORKERS
        self.retries = 0
        self.refused: list[str] = []
        self.wake = asyncio.Event()

    def _extent(self, w: int) -> tuple[int, int]:
        idx, first, span = self.h.regions[w]
        if span == HOT or self.pattern == "hotspot":
            hot = min(HOT, span)
            n = self.rng.randint(1, 2)
            return first + self.rng.randint(0, hot - n), n
        if self.pattern == "sequential":
            n = self.rng.randint(1, 8)
            start = self.cursor[w]
            if start + n > span:
                start = 0
            self.cursor[w] = start + n
            return first + start, n
        n = self.rng.randint(1, 8)
        return first + self.rng.randint(0, span - n), n

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self.worker(w)) for w in range(WORKERS)]

    async def cancel(self) -> None:
        """End every worker now, in flight or not (a write in flight stays unacknowledged)."""
        pending = set(self.tasks)
        while pending:
            # Again until they end: Python 3.11's wait_for loses a cancel that
            # comes as the call it waits for fails (the writer just died).
            for t in pending:
                t.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.5)
        self.tasks = []
        self.busy = [False] * WORKERS

    async def worker(self, w: int) -> None:
        client = [None]
        try:
            await self._work(w, client)
        finally:
            if client[0] is not None:
                try:
                    await client[0].close()
                except (OSError, ConnectionError):
                    pass

    async def _work(self, w: int, conn: list) -> None:
        client = target = None
        while not self.stop:
            if self.paused or w not in self.active:
                self.wake.clear()
                await self.wake.wait()
                continue
            self.busy[w] = True
            block, n = self._extent(w)
            idx = self.h.regions[w][0]
            data = stamped(w, len(self.h.sent[w]) + 1, n)
            rec = self.h.send(w, idx, block * BLOCK, data)
            acked = False
            while not acked:
                try:
                    if client is not None and target is not self.target:
                        await client.close()
                        client = None
                    if client is None:
                        target = self.target
                        client = conn[0] = await target.connect()
                    await asyncio.wait_for(client.write(idx, block * BLOCK, data), 120)
                    acked = True
                except Refused as exc:
                    # The writer refused the write: no fault in these rounds may do that.
                    # Left unacknowledged (it may or may not be on the PVOL).
                    self.refused.append(f"worker {w} write {len(self.h.sent[w])}: {exc}")
                    await asyncio.sleep(0.5)
                    break
                except (OSError, ConnectionError, EOFError, asyncio.TimeoutError):
                    self.retries += 1         # the primary is down or restarting: again
                    if client is not None:
                        await client.close()
                    client = conn[0] = None
                    await asyncio.sleep(0.1)
            if acked:
                self.h.ack(w, rec)
            self.busy[w] = False

    async def quiesce(self, timeout: float = 150.0) -> bool:
        """Pause; wait until no write is in flight (False: some still are after ``timeout``)."""
        self.paused = True
        deadline = time.monotonic() + timeout
        while any(self.busy):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def resume(self) -> None:
        self.paused = False
        self.wake.set()


# -- the run --------------------------------------------------------------------------

@dataclass
class Figures:
    rounds: int = 0
    faults: collections.Counter = field(default_factory=collections.Counter)
    patterns: collections.Counter = field(default_factory=collections.Counter)
    depths: collections.Counter = field(default_factory=collections.Counter)
    acked: int = 0
    verified: int = 0
    snapshots: int = 0
    snapshots_consistent: int = 0
    violations: list[str] = field(default_factory=list)
    retries: int = 0
    seconds: float = 0.0

    def table(self) -> str:
        rows = [("rounds", str(self.rounds)),
                ("faults", ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items()))),
                ("patterns", ", ".join(f"{k} {v}" for k, v in sorted(self.patterns.items()))),
                ("queue depths", ", ".join(f"QD{k} {v}" for k, v in sorted(self.depths.items()))),
                ("writes acked", str(self.acked)),
                ("writes verified", f"{self.verified} (on the SVOL after a drain)"),
                ("retries", f"{self.retries} (writes sent again while the primary was away)"),
                ("snapshots checked", f"{self.snapshots_consistent} called consistent, checked as "
                                      f"prefixes, of {self.snapshots} taken"),
                ("violations", str(len(self.violations))),
                ("time", f"{self.seconds:.0f} s")]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


class ChaosRun:
    def __init__(self, root: Path, seed: int, rounds: int, *, logs: Path | None = None,
                 echo=print, max_seconds: float | None = None, durability: str = "fsync",
                 faults: tuple[str, ...] = FAULT_KINDS, mutations: tuple[str, ...] = ()):
        self.max_seconds = max_seconds
        self.kinds = faults
        self.root = root
        self.seed = seed
        self.rounds = rounds
        self.logs = logs
        self.echo = echo
        self.rng = random.Random(seed)
        self.fig = Figures()
        self.history = History()
        powered = tuple(k.partition(":")[2] for k in faults if k.startswith("power:"))
        self.cluster = ChaosCluster(root, durability=durability, powered=powered,
                                    mutations=mutations, seed=seed)
        self.lines: list[str] = []
        self._snap = 0

    def note(self, text: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {text}"
        self.lines.append(line)
        with open(self.root / "chaos.log", "a") as f:
            f.write(line + "\n")

    def violation(self, rnd: int, check: str, text: str) -> None:
        v = f"seed {self.seed} round {rnd}: {check}: {text}"
        self.fig.violations.append(v)
        self.note("VIOLATION " + v)
        self.echo("VIOLATION " + v)

    def cycles(self, items) -> list:
        """Every item once in a shuffled cycle, cycle after cycle, for each round: every
        site and link is hit, every pattern and depth used, in any run of enough rounds."""
        out: list = []
        while len(out) < self.rounds:
            cycle = list(items)
            self.rng.shuffle(cycle)
            out += cycle
        return out[:self.rounds]

    async def snapshot(self, rnd: int) -> None:
        if "secondary" not in self.cluster.procs:
            return
        self._snap += 1
        name = f"r{rnd}s{self._snap}"
        try:
            client = await control.ControlClient.open(self.cluster.control_addr("secondary"))
            try:
                ans = await asyncio.wait_for(client.call("snapshot", group="g1", name=name), 30)
            finally:
                await client.close()
        except (OSError, ConnectionError, asyncio.TimeoutError, control.ControlError):
            return            # killed meanwhile
        folder = Path(ans["folder"])
        svols = [(folder / f"svol{i}.img").read_bytes() for i in range(VOLUMES)]
        shutil.rmtree(folder, ignore_errors=True)
        self.fig.snapshots += 1
        if not ans["consistent"]:
            self.note(f"round {rnd}: snapshot {name} at SEQ# {ans['last_restored']}: "
                      f"not consistent (a replay under way)")
            return
        self.fig.snapshots_consistent += 1
        bad, _ = self.history.check(svols, all_acked=False)
        for b in bad:
            self.violation(rnd, f"snapshot {name} (SEQ# {ans['last_restored']}) not a prefix", b)

    async def run_for(self, rnd: int, seconds: float, snapshots: int = 1) -> None:
        times = sorted(self.rng.uniform(0, seconds) for _ in range(snapshots))
        t0 = time.monotonic()
        for t in times:
            await asyncio.sleep(max(0.0, t0 + t - time.monotonic()))
            await self.snapshot(rnd)
        await asyncio.sleep(max(0.0, t0 + seconds - time.monotonic()))

    async def swap_round(self, rnd: int, work: "Workload") -> str:
        """A planned swap (the secondary becomes the writer, replication turns
        around) and the swap back, with the writes paused: afterwards the
        roles are as configured and both volumes equal at each step."""
        from ..rcm.pairs import RcmError, Sites
        from ..rcm.takeover import swap
        c = self.cluster
        if not await work.quiesce():
            self.violation(rnd, "swap", "writes still in flight after 150 s")
            return "swap skipped"
        sites = Sites(*(Path(c.control_addr(r)) for r in ("primary", "relay", "secondary")))
        try:
            there = await asyncio.to_thread(swap, sites, "g1", timeout=60)
            if [c.volume("primary", i) for i in range(VOLUMES)] != \
                    [c.volume("secondary", i) for i in range(VOLUMES)]:
                self.violation(rnd, "swap: equal volumes", "the two data sites differ after "
                                                           "the swap")
            back = await asyncio.to_thread(swap, sites.resolved(), "g1", timeout=60)
        except RcmError as exc:
            self.violation(rnd, "swap", str(exc))
            return f"swap failed: {exc}"
        finally:
            work.resume()
        return (f"swap at SEQ# {there['seq']} ({there['rto_seconds']:.2f} s), back at SEQ# "
                f"{back['seq']} ({back['rto_seconds']:.2f} s)")

    async def takeover_round(self, rnd: int, work: "Workload") -> str:
        """The primary lost under load (SIGKILL; the relay survives), ``tricopy
        takeover`` at the secondary, writes there over NBD, the old primary
        back (fenced), ``tricopy failback`` with the delta, the load back on
        the primary.  Every acknowledged write must be on the site that took
        over, and after the failback both volumes equal and hold them all."""
        from ..rcm.failback import failback
        from ..rcm.pairs import RcmError, Sites
        from ..rcm.takeover import takeover
        c = self.cluster
        sites = Sites(*(Path(c.control_addr(r)) for r in ("primary", "relay", "secondary")))
        lag = ""
        if self.rng.random() < 0.5:
            # Half the time the secondary is behind when the primary dies (the
            # relay-secondary link stalled): the takeover must wait for it.
            secs = self.rng.uniform(0.5, 2.5)
            c.emu("rs", "fault", kind="stall", seconds=secs)
            await self.run_for(rnd, secs / 2, snapshots=0)
            lag = f"rs stalled {secs:.1f} s, "
        c.kill("primary")
        await work.cancel()          # writes in flight: never acknowledged, maybe journaled
        try:
            took = await asyncio.to_thread(takeover, sites, "g1", timeout=60,
                                           swap_if_alive=False)
        except RcmError as exc:
            self.violation(rnd, "takeover", str(exc))
            raise SiteDown(f"takeover failed: {exc}") from None
        vols = [c.volume("secondary", i) for i in range(VOLUMES)]
        bad, ks = self.history.check(vols, all_acked=True)
        for b in bad:
            self.violation(rnd, "takeover: every acknowledged write on the new primary", b)
        landed = self.history.settle(ks)
        acked0 = self.history.total_acked()
        work.target = NbdTarget(c.nbd_port, "svol")
        work.start()
        await self.run_for(rnd, self.rng.uniform(0.5, 1.5), snapshots=0)
        await asyncio.to_thread(c.start, "primary")
        deadline = time.monotonic() + 30
        while not (await asyncio.to_thread(c.status, "primary")).get("fenced"):
            if time.monotonic() > deadline:
                self.violation(rnd, "takeover", "the old primary did not fence itself in 30 s")
                break
            await asyncio.sleep(0.05)
        if not await work.quiesce():
            self.violation(rnd, "takeover", "writes at the new primary not acknowledged in 150 s")
        there = self.history.total_acked() - acked0
        try:
            back = await asyncio.to_thread(failback, sites, "g1")
        except RcmError as exc:
            self.violation(rnd, "failback", str(exc))
            raise SiteDown(f"failback failed: {exc}") from None
        pvols = [c.volume("primary", i) for i in range(VOLUMES)]
        if pvols != [c.volume("secondary", i) for i in range(VOLUMES)]:
            self.violation(rnd, "failback: equal volumes", "the old primary's volumes differ "
                                                           "from the taken-over ones")
        for b in self.history.check(pvols, all_acked=True)[0]:
            self.violation(rnd, "failback: every acknowledged write on the primary", b)
        work.target = ControlTarget(c.control_addr("primary"))
        work.resume()
        resumed = self.history.total_acked()
        deadline = time.monotonic() + 30
        while self.history.total_acked() < resumed + len(work.active):
            if time.monotonic() > deadline:
                self.violation(rnd, "failback", "no write acknowledged by the primary within "
                                                "30 s of the failback")
                break
            await asyncio.sleep(0.02)
        return (f"{lag}takeover at SEQ# {took['seq']} ({took['rto_seconds']:.2f} s, {landed} in "
                f"flight kept), {there} writes there, failback {back['moved_bytes'] >> 10} KiB "
                f"of {back['full_bytes'] >> 10}")

    async def fault(self, rnd: int, kind: str) -> str:
        c, rng = self.cluster, self.rng
        what, _, how = kind.partition(":")
        if what == "kill":
            c.kill(how)
            down = rng.uniform(0.2, 1.0)
            await self.run_for(rnd, down, snapshots=1 if how != "secondary" else 0)
            await asyncio.to_thread(c.start, how)
            return f"SIGKILL {how}, restarted after {down:.1f} s"
        if what == "power":
            await asyncio.to_thread(c.power_cut, how)
            down = rng.uniform(0.2, 1.0)
            await self.run_for(rnd, down, snapshots=1 if how != "secondary" else 0)
            await asyncio.to_thread(c.start, how)
            return f"power cut {how}, restarted on what survived after {down:.1f} s"
        link = what
        if how in ("stall", "blackhole"):
            secs = rng.uniform(0.3, 3.0) if how == "stall" else rng.uniform(0.5, 3.0)
            c.emu(link, "fault", kind=how, seconds=secs)
            await self.run_for(rnd, secs + 0.2)
            return f"{how} {secs:.1f} s"
        if how == "reset":
            c.emu(link, "fault", kind="reset")
            return "reset (RST both sides)"
        if how == "slow_close":
            secs = rng.uniform(0.3, 2.0)
            c.emu(link, "fault", kind="slow_close", seconds=secs)
            await self.run_for(rnd, secs + 0.2)
            return f"slow close, FIN after {secs:.1f} s"
        if how == "delay":
            ms = rng.uniform(5, 50)
            rate = rng.choice([0, 2_000_000, 20_000_000])
            secs = rng.uniform(1.0, 3.0)
            c.emu(link, "set", delay_ms=ms, jitter_ms=ms / 5, rate_bps=rate)
            await self.run_for(rnd, secs)
            c.emu(link, "set", delay_ms=BASE_DELAY_MS, jitter_ms=BASE_DELAY_MS / 4, rate_bps=0)
            return f"delay {ms:.0f} ms +-{ms / 5:.0f}, rate {rate / 1e6:g} MB/s, {secs:.1f} s"
        if how == "corrupt":
            n = rng.randint(1, 3)
            direction = rng.choice(["up", "down", None])
            before = c.emu(link, "status")["counters"].get("corrupted", 0)
            c.emu(link, "fault", kind="corrupt", count=n, direction=direction)
            await self.run_for(rnd, 1.0)
            after = c.emu(link, "status")["counters"].get("corrupted", 0)
            return (f"corrupt {n} byte(s) {direction or 'both ways'}, "
                    f"{after - before} flipped so far")
        raise ValueError(kind)

    async def drain_check(self, rnd: int, work: Workload) -> bool:
        """False: the trio did not drain (the run stops: nothing after it would mean much)."""
        c = self.cluster
        if not await work.quiesce():
            self.violation(rnd, "drain", "writes still not acknowledged after 150 s: workers "
                           + ", ".join(str(w) for w, b in enumerate(work.busy) if b))
            work.resume()
            return False
        deadline = time.monotonic() + 90
        while True:
            try:
                p, r, s = [await asyncio.to_thread(c.status, x)
                           for x in ("primary", "relay", "secondary")]
                if (p["pending"] == 0 and r["held"] == 0
                        and s["last_restored"] == r["next_seq"] - 1 and s["consistent"]):
                    break
                if p["grsts"] == "SUSP":
                    # No fault here lasts long enough to suspend the group
                    # (120 s): a suspension is a check that fired (the relay
                    # lost journals the primary had ACKed, say); it ends no sooner.
                    self.violation(rnd, "drain", f"the primary suspended the group: "
                                                 f"{p['reason']}")
                    work.resume()
                    return False
            except (OSError, control.ControlError) as exc:
                p = r = s = {"error": str(exc)}
            if time.monotonic() > deadline:
                self.violation(rnd, "drain", f"not drained within 90 s: primary={p} relay={r} "
                                             f"secondary={s}")
                work.resume()
                return False
            await asyncio.sleep(0.05)
        svols = [c.volume("secondary", i) for i in range(VOLUMES)]
        pvols = [c.volume("primary", i) for i in range(VOLUMES)]
        bad, ks = self.history.check(svols, all_acked=True)
        for b in bad:
            self.violation(rnd, "drain: every acknowledged write on the SVOL", b)
        if svols != pvols:
            diff = [i for i in range(VOLUMES) if svols[i] != pvols[i]]
            self.violation(rnd, "drain: SVOL == PVOL", f"volumes {diff} differ")
        failed = {int(b.split()[1].rstrip(":")) for b in bad if b.startswith("worker ")}
        self.fig.verified = sum(self.history.acked(w) for w, k in enumerate(ks)
                                if w not in failed and k == self.history.acked(w))
        work.resume()
        return True

    async def main(self) -> Figures:
        t0 = time.monotonic()
        c = self.cluster
        c.start_links()
        for role in ROLES:
            await asyncio.to_thread(c.start, role)
        work = Workload(c.control_addr("primary"), self.history, random.Random(self.seed + 1))
        work.start()
        try:
            plan = zip(self.cycles(self.kinds), self.cycles(DEPTHS), self.cycles(PATTERNS))
            for rnd, (kind, depth, pattern) in enumerate(plan, 1):
                if self.max_seconds is not None and time.monotonic() - t0 > self.max_seconds:
                    self.echo(f"time is up ({self.max_seconds:g} s): stopping after "
                              f"{rnd - 1} rounds")
                    break
                ordinary = list(range(WORKERS - 2))
                self.rng.shuffle(ordinary)
                if depth == 1:
                    work.active = {WORKERS - 2} if pattern == "hotspot" else {ordinary[0]}
                else:      # the two hot-spot workers and depth - 2 others
                    work.active = {WORKERS - 2, WORKERS - 1} | set(ordinary[:depth - 2])
                work.pattern = pattern
                work.resume()
                acked0 = self.history.total_acked()
                await self.run_for(rnd, self.rng.uniform(0.4, 1.0))
                try:
                    what = (await self.swap_round(rnd, work) if kind == "swap:planned"
                            else await self.takeover_round(rnd, work)
                            if kind == "takeover:unplanned" else await self.fault(rnd, kind))
                except SiteDown as exc:
                    self.violation(rnd, f"{kind}: the site back", str(exc))
                    self.fig.rounds = rnd
                    self.fig.faults[kind] += 1
                    self.echo(f"a site did not come back in round {rnd}: the run stops here")
                    break
                await self.run_for(rnd, self.rng.uniform(0.3, 0.8))
                drained = await self.drain_check(rnd, work)
                self.fig.rounds = rnd
                self.fig.faults[kind] += 1
                self.fig.patterns[pattern] += 1
                self.fig.depths[len(work.active)] += 1
                self.fig.acked = self.history.total_acked()
                for r in work.refused:
                    self.violation(rnd, "write refused", r)
                work.refused.clear()
                self.note(f"round {rnd}: {kind}: {what}; QD{len(work.active)} {pattern}; "
                          f"{self.fig.acked - acked0} writes acked")
                self.echo(f"round {rnd:>3}/{self.rounds}  {kind:<15} {what:<50} "
                          f"QD{len(work.active):<2} {pattern:<10} +{self.fig.acked - acked0} "
                          f"acked  violations {len(self.fig.violations)}")
                if not drained:
                    self.echo(f"the trio did not drain in round {rnd}: the run stops here")
                    break
        finally:
            work.stop = True
            work.resume()
            await work.cancel()
            self.fig.retries = work.retries
            self.fig.seconds = time.monotonic() - t0
            c.stop()
            if self.fig.violations and self.logs is not None:
                self.keep_logs()
        return self.fig

    def keep_logs(self) -> Path:
        dest = self.logs / f"seed-{self.seed}"
        dest.mkdir(parents=True, exist_ok=True)
        for role in ROLES:
            src = self.root / role / "site.log"
            if src.exists():
                shutil.copy(src, dest / f"{role}.log")
        for f in list(self.root.glob("linkemu-*.log")) + [self.root / "chaos.log"]:
            if f.exists():
                shutil.copy(f, dest / f.name)
        (dest / "violations.txt").write_text("\n".join(self.fig.violations) + "\n")
        self.echo(f"logs of seed {self.seed}: {dest}")
        return dest


def run(root: Path, seed: int, rounds: int, *, logs: Path | None = None, echo=print,
        max_seconds: float | None = None, durability: str = "fsync",
        faults: tuple[str, ...] = FAULT_KINDS, mutations: tuple[str, ...] = ()) -> Figures:
    """One seeded run in ``root`` (a new or empty folder); returns its figures.
    ``mutations``: syncs the power-cut disk skips (``fdatasync``, ``fsync``,
    ``dirsync``), only to show that the checks catch a missing sync."""
    root.mkdir(parents=True, exist_ok=True)
    chaos = ChaosRun(root, seed, rounds, logs=logs, echo=echo, max_seconds=max_seconds,
                     durability=durability, faults=faults, mutations=mutations)
    return asyncio.run(chaos.main())


def _kinds(text: str | None) -> tuple[str, ...]:
    """``--faults``: kinds or prefixes (``kill``, ``pr``, ``rs:stall``), comma-separated."""
    if not text:
        return FAULT_KINDS
    out = tuple(k for k in FAULT_KINDS
                if any(k == t or k.startswith(t + ":") or k.endswith(":" + t)
                       for t in text.split(",")))
    if not out:
        raise SystemExit(f"tricopy chaos: --faults {text!r} names no fault; the kinds: "
                         f"{', '.join(FAULT_KINDS)}")
    return out


def _mutations(text: str | None) -> tuple[str, ...]:
    from ..disk.powercut import MUTATIONS
    out = tuple(m for m in (text or "").split(",") if m)
    bad = sorted(set(out) - MUTATIONS)
    if bad:
        raise SystemExit(f"tricopy chaos: --mutate {','.join(bad)}: not a sync the disk can "
                         f"skip; give some of {', '.join(sorted(MUTATIONS))}")
    return out


def _run(args) -> int:
    keep = args.dir is not None
    root = Path(args.dir) if keep else Path(tempfile.mkdtemp(prefix="tricopy-chaos-"))
    fig = Figures()
    try:
        for seed in range(args.seed, args.seed + args.seeds):
            load0 = os.getloadavg()
            one = run(root / f"seed-{seed}", seed, args.rounds, logs=Path(args.logs),
                      echo=(lambda _t: None) if args.quiet else print,
                      max_seconds=args.max_seconds, durability=args.durability,
                      faults=_kinds(args.faults), mutations=_mutations(args.mutate))
            print(f"\nseed {seed}: load average {load0[0]:.2f} at the start, "
                  f"{os.getloadavg()[0]:.2f} at the end")
            print(one.table())
            fig.rounds += one.rounds
            fig.faults += one.faults
            fig.patterns += one.patterns
            fig.depths += one.depths
            fig.acked += one.acked
            fig.verified += one.verified
            fig.snapshots += one.snapshots
            fig.snapshots_consistent += one.snapshots_consistent
            fig.violations += one.violations
            fig.retries += one.retries
            fig.seconds += one.seconds
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    if args.seeds > 1:
        print(f"\nall {args.seeds} seeds:")
        print(fig.table())
    return 1 if fig.violations else 0


def register(subparsers) -> None:
    p = subparsers.add_parser("chaos", help="sites under load, faults round after round, checks",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=1, help="first seed (default 1)")
    p.add_argument("--seeds", type=int, default=1, help="seeds to run, one after the other")
    p.add_argument("--rounds", type=int, default=30, help="rounds per seed (default 30)")
    p.add_argument("--dir", help="keep the sites' folders here (default: a temporary folder)")
    p.add_argument("--logs", default="chaos-logs",
                   help="where a failing seed's site logs go (default ./chaos-logs)")
    p.add_argument("--max-seconds", type=float,
                   help="per seed: start no round after this many seconds")
    p.add_argument("--faults", help="only these kinds (or prefixes: kill, pr, rs, stall, ...), "
                                    "comma-separated; default: all")
    p.add_argument("--durability", choices=("fsync", "memory"), default="fsync",
                   help="the relay's policy (memory: no acked write lost to a process crash "
                        "either, docs/replication.md)")
    p.add_argument("--mutate", metavar="SYNCS",
                   help="make these syncs of the power-cut disk no-ops (fdatasync, fsync, "
                        "dirsync; comma-separated): a check of the checks, the power: rounds "
                        "must then report violations")
    p.add_argument("--quiet", action="store_true", help="only the tables")
    p.set_defaults(func=_run)
