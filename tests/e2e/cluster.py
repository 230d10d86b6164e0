"""A three-site cluster of real processes on loopback, for the end-to-end tests.

Each site runs as ``python -m tricopy.host.sites_cli <role> --config <file>``;
the tests talk to them only through their control sockets and files.

The links are TLS with mutual authentication, as in a real deployment
(docs/security.md): :func:`test_certs` makes the CA and the certificates once
per machine (a cache folder in /tmp), the control sockets are Unix sockets
(0600) in a short folder of /tmp (a socket path has at most 107 bytes).
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path

from tricopy.host.config import TlsConfig
from tricopy.host.rcm import control
from tricopy.host.wire import tls as tls_mod

ROLES = ("secondary", "relay", "primary")
VOL_SIZE = 1 << 20
BLOCK = 4096


CERT_NAMES = ("primary", "relay", "secondary", "standby", "admin", "mallory")
CERTS = Path(tempfile.gettempdir()) / f"tricopy-test-certs-{os.getuid()}-v3"


def test_certs() -> Path:
    """The test CA's folder: ca.pem and <name>.pem/.key for :data:`CERT_NAMES`
    (mallory: a certificate of the right CA for a site no config names), and
    ``other/``: another CA with its own "relay".  Made once, then reused."""
    if not (CERTS / "done").exists():
        from tricopy.host.tools.certs import make_certs
        tmp = Path(tempfile.mkdtemp(prefix="tricopy-certs-", dir=CERTS.parent))
        make_certs(tmp, list(CERT_NAMES), days=3650)
        make_certs(tmp / "other", ["relay", "primary", "secondary"], days=3650,
                   ca_name="some other CA")
        (tmp / "done").write_text("")
        try:
            tmp.rename(CERTS)
        except OSError:          # another session made it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
    return CERTS


test_certs.__test__ = False      # not a pytest test


def tls_files(name: str, other_ca: bool = False) -> TlsConfig:
    d = test_certs() / "other" if other_ca else test_certs()
    return TlsConfig(d / "ca.pem", d / f"{name}.pem", d / f"{name}.key")


def client_tls(name: str, other_ca: bool = False):
    """A client SSLContext with ``name``'s certificate (for a hand-driven peer)."""
    return tls_mod.client_context(tls_files(name, other_ca))


def server_tls(name: str, other_ca: bool = False):
    return tls_mod.server_context(tls_files(name, other_ca))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """Configs, processes and helpers for one primary/relay/secondary trio."""

    def __init__(self, root: Path, *, journal_size: int = 8 << 20, volumes: int = 2,
                 durability: str = "fsync", restore_interval: float = 0.0,
                 full_suspend_after: float = 60.0, nbd: bool = False,
                 link_suspend_after: float = 30.0, initial_state: str = "PAIR",
                 relay_loss: str = "suspend", relay_volumes: bool = False,
                 vol_size: int = VOL_SIZE, engine: str = "model",
                 engine_mode: str | None = None, tls: bool = True,
                 site_extra: dict[str, str] | None = None, standby: bool = False):
        self.root = root
        # standby=True: a fourth site, "standby", a relay the primary can be moved
        # to (docs/operations.md, "A standby relay"); started like the others.
        self.roles = ROLES + (("standby",) if standby else ())
        self.site_extra = dict(site_extra or {})   # role -> top-level TOML lines added to its config
        extra = self.site_extra.get("secondary", "")
        if os.environ.get("TRICOPY_TEST_NATIVE") and "native = " not in extra:
            # every test with the secondary's native loop (host/native/restore.py):
            # TRICOPY_TEST_NATIVE=1 pytest tests/e2e
            self.site_extra["secondary"] = "native = true\n" + extra   # (before any table)
        self.tls = tls                         # False: tls = false in every config
        self.engine = engine                   # the relay's --engine (model, sim)
        self.engine_mode = engine_mode         # the relay's --engine-mode (None: its default)
        self.volumes = volumes
        self.ports = {r: (free_port(), free_port()) for r in self.roles}   # (data, control)
        # nbd=True: the primary exports pvol<i>, the secondary svol<i> (read-only)
        nbd_roles = ("primary", "secondary") + (("relay",) if relay_volumes else ())
        self.nbd_ports = {r: free_port() for r in nbd_roles} if nbd else {}
        self.link_suspend_after = link_suspend_after
        self.relay_loss = relay_loss
        self.relay_volumes = relay_volumes     # data volumes at the relay (Fig. 12)
        # "PAIR" (the default here, not in the site config): a ready pair of new
        # volumes, which the sites accept because every volume says create = true
        # and none exists yet.  "SMPL": pair with the RCM (host/rcm/pairs.py).
        self.initial_state = initial_state
        self.vol_size = vol_size
        self.procs: dict[str, subprocess.Popen] = {}
        # control sockets: a short folder (root may be too deep for a socket path)
        self.sock_dir = Path(tempfile.mkdtemp(prefix="tc-", dir="/tmp"))
        weakref.finalize(self, shutil.rmtree, str(self.sock_dir), True)
        for role in self.roles:
            (root / role).mkdir(parents=True, exist_ok=True)
        self._write_configs(journal_size, durability, restore_interval, full_suspend_after)

    def control_addr(self, role: str) -> str:
        """The site's control socket (a Unix socket path; control.call takes it)."""
        return str(self.sock_dir / f"{role}.sock")

    def control_arg(self, role: str) -> str:
        """The control address as the command line writes it."""
        return f"unix:{self.control_addr(role)}"

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """``tricopy <args>`` (an RCM command) against this trio, as a user runs it."""
        sites = [a for r in ("primary", "relay", "secondary") + self.roles[3:]
                 for a in (f"--{r}", self.control_arg(r))]
        return subprocess.run([sys.executable, "-m", "tricopy.host.cli", *args, *sites],
                              capture_output=True, text=True, timeout=timeout)

    def data_addr(self, role: str) -> tuple[str, int]:
        return ("127.0.0.1", self.ports[role][0])

    def sites(self):
        """The RCM's view of this trio (host/rcm/pairs.py)."""
        from tricopy.host.rcm.pairs import Sites
        return Sites(*(self.control_addr(r) for r in ("primary", "relay", "secondary")),
                     standby=self.control_addr("standby") if "standby" in self.roles else None)

    def _write_configs(self, journal_size: int, durability: str, interval: float,
                       full_after: float) -> None:
        def common(role: str) -> str:
            data, ctl = self.ports[role]
            if self.tls:
                t = tls_files(role)
                sec = f'tls = {{ ca = "{t.ca}", cert = "{t.cert}", key = "{t.key}" }}\n'
            else:
                sec = "tls = false\n"
            return (f'site = "{role}"\nlisten = "127.0.0.1:{data}"\n'
                    f'control = "{self.control_arg(role)}"\n'
                    f'state_dir = "state"\nheartbeat = 0.5\n{sec}{self.site_extra.get(role, "")}')

        def vols(prefix: str) -> str:
            return "".join(f'[[volume]]\nidx = {i}\ngroup = 1\npath = "{prefix}{i}.img"\n'
                           f'size = {self.vol_size}\nblock_size = {BLOCK}\ncreate = true\n'
                           for i in range(self.volumes))

        group = f'grnum = 1\ngrname = "g1"\ninitial_state = "{self.initial_state}"\n'
        names = {"primary": 'peer_site = "relay"\n',
                 "relay": 'peer_site = "secondary"\nupstream_site = "primary"\n',
                 "secondary": 'upstream_site = "relay"\n'}
        if "standby" in self.roles:
            names["primary"] += (f'standby = "127.0.0.1:{self.ports["standby"][0]}"\n'
                                 f'standby_site = "standby"\n')
            names["secondary"] += 'standby_site = "standby"\n'
        docs = {
            "primary": common("primary") + f'[[group]]\n{group}{names["primary"]}attr = "MASTER"\n'
                       f'peer = "127.0.0.1:{self.ports["relay"][0]}"\nfull_suspend_after = {full_after}\n'
                       f'link_suspend_after = {self.link_suspend_after}\n'
                       f'relay_loss = "{self.relay_loss}"\n'
                       + vols("pvol"),
            "relay": common("relay") + f'[[group]]\n{group}{names["relay"]}attr = "INTERMEDIARY"\n'
                     f'peer = "127.0.0.1:{self.ports["secondary"][0]}"\n'
                     f'reverse_peer = "127.0.0.1:{self.ports["primary"][0]}"\n'
                     f'durability = "{durability}"\n'
                     f'journal = {{ path = "jnl1.vol", size = {journal_size} }}\n'
                     + (vols("rvol") if self.relay_volumes else ""),
            "secondary": common("secondary") + f'[[group]]\n{group}{names["secondary"]}'
                         f'attr = "RESTORE"\npeer = "127.0.0.1:{self.ports["relay"][0]}"\n'
                         f'restore_interval = {interval}\n' + vols("svol"),
        }
        if "standby" in self.roles:      # a relay like the other, empty until used
            docs["standby"] = (common("standby") + f'[[group]]\n{group}{names["relay"]}'
                               f'attr = "INTERMEDIARY"\n'
                               f'peer = "127.0.0.1:{self.ports["secondary"][0]}"\n'
                               f'durability = "{durability}"\n'
                               f'journal = {{ path = "jnl1.vol", size = {journal_size} }}\n')
        for role, port in self.nbd_ports.items():
            docs[role] += f'[nbd]\nlisten = "127.0.0.1:{port}"\n'
        for role, text in docs.items():
            (self.root / role / "site.toml").write_text(text)

    # -- processes -------------------------------------------------------------

    def start(self, role: str) -> None:
        d = self.root / role
        log = open(d / "site.log", "ab")
        relay = role in ("relay", "standby")
        args = ["--engine", self.engine] if relay else []
        if relay and self.engine_mode:
            args += ["--engine-mode", self.engine_mode]
        self.procs[role] = subprocess.Popen(
            [sys.executable, "-m", "tricopy.host.sites_cli", "relay" if relay else role,
             "--config", str(d / "site.toml"),
             *args],
            stdout=log, stderr=subprocess.STDOUT, cwd=d)
        log.close()
        deadline = time.monotonic() + 20
        while True:
            if self.procs[role].poll() is not None:
                raise RuntimeError(f"{role} exited with {self.procs[role].returncode}:\n"
                                   + self.log(role)[-3000:])
            try:
                control.call(self.control_addr(role), "status", timeout=2)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{role} did not come up:\n" + self.log(role)[-3000:])
                time.sleep(0.05)

    def start_all(self) -> None:
        for role in ROLES:
            self.start(role)

    def kill(self, role: str) -> None:
        """kill -9: no chance to flush or close anything."""
        proc = self.procs.pop(role)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def terminate(self, role: str, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """A clean stop: send ``sig`` and return the exit code (kill -9 after ``timeout``)."""
        proc = self.procs.pop(role)
        proc.send_signal(sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"{role} did not stop within {timeout} s of {sig!r}:\n"
                                 + self.log(role)[-3000:]) from None

    def stop_all(self) -> None:
        for role in list(self.procs):
            self.kill(role)

    def nbd_uri(self, role: str, idx: int) -> str:
        """``nbd://`` URI of volume ``idx`` at the primary (PVOL), relay or secondary (SVOL)."""
        prefix = {"primary": "pvol", "relay": "rvol"}.get(role, "svol")
        return f"nbd://127.0.0.1:{self.nbd_ports[role]}/{prefix}{idx}"

    def log(self, role: str) -> str:
        return (self.root / role / "site.log").read_text(errors="replace")

    def status(self, role: str) -> dict:
        return control.call(self.control_addr(role), "status")["groups"][0]

    # -- checks ----------------------------------------------------------------

    def wait_drained(self, timeout: float = 60.0, relay: str = "relay") -> dict:
        """Until the primary has nothing in flight, the relay (or ``relay``: the
        standby) holds nothing and the secondary restored the relay's last journal."""
        deadline = time.monotonic() + timeout
        while True:
            p, r, s = (self.status(x) for x in ("primary", relay, "secondary"))
            if (p["pending"] == 0 and r["held"] == 0
                    and s["last_restored"] == r["next_seq"] - 1):
                return {"primary": p, "relay": r, "secondary": s}
            if time.monotonic() > deadline:
                raise AssertionError(f"not drained after {timeout} s: primary={p} relay={r} "
                                     f"secondary={s}")
            time.sleep(0.1)

    def volume_bytes(self, role: str, idx: int) -> bytes:
        prefix = {"primary": "pvol", "relay": "rvol"}.get(role, "svol")
        return (self.root / role / f"{prefix}{idx}.img").read_bytes()


class Workload:
    """Random host writes through the primary's control socket.

    ``workers`` coroutines each own a disjoint block range (so the expected
    volume content is exact) and write overlapping random extents inside it,
    with some WRITE_ZEROES and TRIM.  A request that fails because the primary
    went away is retried until it is ACKed, so ``model`` — updated only on
    ACK — is the content every volume must end with.
    """

    def __init__(self, addr: tuple[str, int], volumes: int, *, workers: int = 8, seed: int = 1):
        self.addr = addr
        self.rng = random.Random(seed)
        self.model = [bytearray(VOL_SIZE) for _ in range(volumes)]
        if workers < volumes or workers % volumes:
            raise ValueError(f"workers ({workers}) must be a multiple of volumes ({volumes})")
        blocks = VOL_SIZE // BLOCK
        per_vol = workers // volumes
        span = blocks // per_vol
        self.regions = [(w % volumes, (w // volumes) * span, span) for w in range(workers)]
        self.acked = 0
        self.retries = 0
        self.latencies: list[float] = []
        self.stop = False
        self._abandoned = False     # run() was cancelled: stop retrying

    def _op(self, region):
        idx, first, span = region
        n = self.rng.randint(1, min(16, span))
        start = first + self.rng.randint(0, span - n)
        offset, length = start * BLOCK, n * BLOCK
        pick = self.rng.random()
        if pick < 0.85:
            data = self.rng.randbytes(length)
            req = ("write", {"idx": idx, "offset": offset,
                             "data": base64.b64encode(data).decode()})
        else:
            data = bytes(length)
            req = ("write_zeroes" if pick < 0.93 else "trim",
                   {"idx": idx, "offset": offset, "length": length})
        return req, (idx, offset, data)

    async def _worker(self, region, count: int | None) -> None:
        client = None
        done = 0
        while not self.stop and (count is None or done < count):
            (cmd, args), (idx, offset, data) = self._op(region)
            while True:
                try:
                    if client is None:
                        client = await control.ControlClient.open(self.addr)
                    t0 = time.monotonic()
                    await asyncio.wait_for(client.call(cmd, **args), 60)
                    self.latencies.append(time.monotonic() - t0)
                    break
                except (OSError, ConnectionError, asyncio.TimeoutError):
                    # the primary is down or restarting: the same request again
                    self.retries += 1
                    if client is not None:
                        await client.close()
                    client = None
                    if self._abandoned:
                        return          # cancelled (see run) while the primary is down
                    await asyncio.sleep(0.1)
            self.model[idx][offset:offset + len(data)] = data
            self.acked += 1
            done += 1
        if client is not None:
            await client.close()

    async def run(self, count: int | None = None, duration: float | None = None) -> None:
        tasks = [asyncio.create_task(self._worker(r, count)) for r in self.regions]
        try:
            if duration is not None:
                await asyncio.sleep(duration)
                self.stop = True
            # shielded: a cancel of run() comes here at once, not only once
            # every worker has ended
            await asyncio.shield(asyncio.gather(*tasks))
        except asyncio.CancelledError:
            # Python 3.11's wait_for can swallow a cancellation that meets a
            # call just finishing; that worker would then retry a killed
            # primary for ever (seen under load: test_unclean_stop hung), so
            # a worker retrying also gives up (its write is not in the model).
            self.stop = self._abandoned = True
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
