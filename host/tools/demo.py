"""``tricopy demo``: the three sites on this machine, a pair made over existing
data, a write workload, and the proof that the SVOLs equal the PVOLs.

Steps: make a CA and a certificate per site (``tricopy certs``: the links
are TLS with mutual authentication, docs/security.md), write three site
configs into a folder (a temporary one unless ``--dir``; control sockets are
Unix sockets in each site's folder), fill the PVOLs with data (random, with all-zero stretches), start
secondary, relay (``--engine``, the model by default) and primary as
processes, ``pair create`` + ``pair sync`` with a progress bar (COPY -> PAIR),
run random host writes for ``--duration`` seconds while printing status and
lag once a second, drain, compare SHA-256 digests of every PVOL and SVOL,
stop the sites.  The exit status is 1 if any digest differs.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..rcm import control, pairs as rcm, status as rcm_status
from .certs import make_certs

__all__ = ["register", "run"]

ROLES = ("secondary", "relay", "primary")
GROUP = "demo"
BLOCK = 4096


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DemoCluster:
    """Configs and processes of a primary/relay/secondary trio under one folder."""

    def __init__(self, root: Path, *, volumes: int, vol_size: int, journal_size: int,
                 engine: str):
        self.root, self.volumes, self.vol_size, self.engine = root, volumes, vol_size, engine
        self.ports = {r: (_free_port(), _free_port()) for r in ROLES}    # (data, control)
        self.procs: dict[str, subprocess.Popen] = {}
        make_certs(root / "certs", list(ROLES) + ["admin"])
        for role in ROLES:
            (root / role).mkdir(parents=True, exist_ok=True)
            (root / role / "site.toml").write_text(self._config(role, journal_size))
        (root / "cluster.toml").write_text("".join(f'{r} = "unix:{self.control(r)}"\n'
                                                   for r in ROLES))
        self.sites = rcm.Sites(*(self.control(r) for r in ("primary", "relay", "secondary")))

    def control(self, role: str) -> Path:
        """The site's control socket (Unix, 0600)."""
        return self.root / role / "control.sock"

    def _config(self, role: str, journal_size: int) -> str:
        data = self.ports[role][0]
        text = (f'site = "{role}"\nlisten = "127.0.0.1:{data}"\ncontrol = "unix:control.sock"\n'
                f'state_dir = "state"\n'
                f'tls = {{ ca = "../certs/ca.pem", cert = "../certs/{role}.pem", '
                f'key = "../certs/{role}.key" }}\n'
                f'\n[[group]]\ngrnum = 1\ngrname = "{GROUP}"\n')
        if role == "primary":
            text += (f'attr = "MASTER"\npeer = "127.0.0.1:{self.ports["relay"][0]}"\n'
                     f'peer_site = "relay"\n')
        elif role == "relay":
            text += (f'attr = "INTERMEDIARY"\npeer = "127.0.0.1:{self.ports["secondary"][0]}"\n'
                     f'peer_site = "secondary"\nupstream_site = "primary"\n'
                     f'reverse_peer = "127.0.0.1:{self.ports["primary"][0]}"   # for a swap\n'
                     f'journal = {{ path = "jnl1.vol", size = {journal_size} }}\n')
        else:
            text += (f'attr = "RESTORE"\nupstream_site = "relay"\n'
                     f'peer = "127.0.0.1:{self.ports["relay"][0]}"   # the writer after a swap\n')
        if role != "relay":
            # The PVOLs hold data already (preload); the SVOLs are made new.  The
            # group starts in SMPL (the default) and `pair create` copies the data.
            prefix, create = ("pvol", "") if role == "primary" else ("svol", "create = true\n")
            for i in range(self.volumes):
                text += (f'\n[[volume]]\nidx = {i}\ngroup = 1\npath = "{prefix}{i}.img"\n'
                         f'size = {self.vol_size}\nblock_size = {BLOCK}\n{create}')
        return text

    def volume_path(self, role: str, idx: int) -> Path:
        return self.root / role / f"{'pvol' if role == 'primary' else 'svol'}{idx}.img"

    def preload(self, seed: int = 1) -> None:
        """PVOLs that already hold data before they are paired."""
        rng = random.Random(seed)
        for i in range(self.volumes):
            img = bytearray(rng.randbytes(self.vol_size))
            quarter = self.vol_size // 4
            img[quarter:2 * quarter] = bytes(quarter)     # goes as ZERO journals
            self.volume_path("primary", i).write_bytes(img)

    def start(self, role: str) -> None:
        d = self.root / role
        cmd = [sys.executable, "-m", "tricopy.host.sites_cli", role, "--config",
               str(d / "site.toml")]
        if role == "relay":
            cmd += ["--engine", self.engine]
        with open(d / "site.log", "ab") as out:
            self.procs[role] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=d)
        deadline = time.monotonic() + 30
        while True:
            if self.procs[role].poll() is not None:
                raise rcm.RcmError(f"the {role} exited with {self.procs[role].returncode}; "
                                   f"see {d / 'site.log'}")
            try:
                control.call(self.control(role), "status", timeout=2)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise rcm.RcmError(f"the {role} did not come up; see {d / 'site.log'}")
                time.sleep(0.05)

    def stop(self) -> None:
        """SIGINT (a clean shutdown), then SIGKILL for a site that does not exit."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in self.procs.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    def drained(self) -> bool:
        p, r, s = (self.sites.group_status(x, GROUP) for x in ("primary", "relay", "secondary"))
        return p["pending"] == 0 and r["held"] == 0 and s["last_restored"] == r["next_seq"] - 1

    def digest(self, role: str, idx: int) -> str:
        h = hashlib.sha256()
        with open(self.volume_path(role, idx), "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()


async def _workload(cluster: DemoCluster, duration: float, workers: int = 8) -> int:
    """Random host writes (and some WRITE_ZEROES) over the whole PVOLs; returns how many."""
    addr = cluster.sites.primary
    blocks = cluster.vol_size // BLOCK
    done = 0
    stop = time.monotonic() + duration

    async def writer(seed: int) -> None:
        nonlocal done
        rng = random.Random(seed)
        client = await control.ControlClient.open(addr)
        try:
            while time.monotonic() < stop:
                n = rng.randint(1, 16)
                idx, off = rng.randrange(cluster.volumes), rng.randint(0, blocks - n) * BLOCK
                if rng.random() < 0.9:
                    await client.call("write", idx=idx, offset=off,
                                      data=base64.b64encode(rng.randbytes(n * BLOCK)).decode())
                else:
                    await client.call("write_zeroes", idx=idx, offset=off, length=n * BLOCK)
                done += 1
        finally:
            await client.close()

    async def reporter() -> None:
        t0, last = time.monotonic(), 0
        while time.monotonic() < stop:
            await asyncio.sleep(1.0)
            row = (await asyncio.to_thread(rcm_status.gather_status, cluster.sites, GROUP))[0]
            rate, last = done - last, done
            print(f"  t={time.monotonic() - t0:4.1f}s {row['state']:4}  writes {done:6d} "
                  f"({rate:4d}/s)  SEQ# issued {row['seq_issued']:6d} forwarded "
                  f"{row['seq_forwarded']:6d} restored {row['seq_restored']:6d}  backlog "
                  f"{row['backlog_entries']:4d}  journal {row['journal_used_pct']:4.1f}%  "
                  f"lag {row['lag_s']:.2f} s", flush=True)

    await asyncio.gather(reporter(), *(writer(i) for i in range(workers)))
    return done


def run(root: Path, *, duration: float = 15.0, vol_mib: int = 16, engine: str = "model",
        kept: bool = False) -> int:
    """The whole demo in folder ``root``; returns the exit status."""
    cluster = DemoCluster(root, volumes=2, vol_size=vol_mib << 20, journal_size=64 << 20,
                          engine=engine)
    sites = cluster.sites
    try:
        print(f"tricopy demo in {root}: 2 PVOLs of {vol_mib} MiB holding data, engine {engine}")
        cluster.preload()
        for role in ROLES:
            cluster.start(role)
            print(f"  started the {role} (control unix:{cluster.control(role)}, "
                  f"data links TLS 1.3 with mutual certificates)")
        print(f"pair create --group {GROUP}: base copy of the existing data (COPY -> PAIR)")
        rcm.pair_create(sites, GROUP)
        point = rcm.pair_sync(sites, GROUP, timeout=120, progress=rcm.progress_bar())
        print(f"  PAIR; the SVOLs are a consistent image from SEQ# {point}")
        print(f"host writes for {duration:g} s (8 writers), status once a second:")
        writes = asyncio.run(_workload(cluster, duration))
        print(f"draining ({writes} writes acked) ...")
        deadline = time.monotonic() + 60
        while not cluster.drained():
            if time.monotonic() > deadline:
                print("tricopy demo: the secondary did not catch up in 60 s", file=sys.stderr)
                return 1
            time.sleep(0.1)
        print(rcm_status.format_status(rcm_status.gather_status(sites, GROUP)))
        same = True
        for i in range(cluster.volumes):
            p, s = cluster.digest("primary", i), cluster.digest("secondary", i)
            same &= p == s
            print(f"  IDX {i}: PVOL sha256 {p}\n         SVOL sha256 {s}  "
                  f"{'equal' if p == s else 'DIFFERENT'}")
    finally:
        cluster.stop()
    if not same:
        print("tricopy demo: FAILED: an SVOL differs from its PVOL", file=sys.stderr)
        return 1
    print(f"verified: PVOL == SVOL for all {cluster.volumes} volumes (SHA-256 equal)")
    d = root if kept else Path("./tricopy-demo")
    keep = "" if kept else f"\nKeep the files with `tricopy demo --dir {d}`, then:"
    print(f"""
What to try next:{keep}
  (cd {d}/secondary && tricopy secondary --config site.toml) &
  (cd {d}/relay && tricopy relay --config site.toml --engine model) &
  (cd {d}/primary && tricopy primary --config site.toml) &
  tricopy status --cluster {d}/cluster.toml [--json] [--watch 1]
  tricopy pair split  --cluster {d}/cluster.toml --group {GROUP}
  tricopy pair resync --cluster {d}/cluster.toml --group {GROUP}   # delta copy, then PAIR
  tricopy verify --cluster {d}/cluster.toml --group {GROUP}        # PVOL vs SVOL, online
  tricopy takeover --cluster {d}/cluster.toml --group {GROUP}      # after stopping the primary
  tricopy pair delete --cluster {d}/cluster.toml --group {GROUP}
docs/operations.md explains the states and every command.""")
    return 0


def _run(args) -> int:
    if args.dir:
        root = Path(args.dir).resolve()
        if root.exists() and any(root.iterdir()):
            print(f"tricopy demo: {root} is not empty; give a new folder", file=sys.stderr)
            return 2
        root.mkdir(parents=True, exist_ok=True)
        try:
            return run(root, duration=args.duration, vol_mib=args.size, engine=args.engine,
                       kept=True)
        except rcm.RcmError as exc:
            print(f"tricopy demo: {exc}", file=sys.stderr)
            return 1
    root = Path(tempfile.mkdtemp(prefix="tricopy-demo-"))
    try:
        return run(root, duration=args.duration, vol_mib=args.size, engine=args.engine)
    except rcm.RcmError as exc:
        print(f"tricopy demo: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


def register(subparsers) -> None:
    """Add ``demo`` to the ``tricopy`` command line."""
    p = subparsers.add_parser("demo", help="run the three sites here, pair, write, verify",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=15.0, help="seconds of host writes")
    p.add_argument("--size", type=int, default=16, help="MiB per PVOL (two of them)")
    p.add_argument("--engine", default="model", help="relay journal engine (model, sim, ...)")
    p.add_argument("--dir", help="keep the sites' files in this (new or empty) folder")
    p.set_defaults(func=_run)
