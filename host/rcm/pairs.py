"""The remote copy manager (RCM): ``tricopy pair ...`` and ``tricopy status``.

The RCM holds no state of its own: it talks to the three sites' control
sockets (host/rcm/control.py), checks the pairing rules of patent [0053] on their
JNLG tables (host/rcm/jnlg.py) and moves each site's pair state.  The primary owns
the copy (base journal scan, copy bitmap); the relay and the secondary record
the state, and the secondary learns the SEQ# from which its SVOLs are a
consistent image (``consistent_seq``).

The sites are named by their control addresses, on the command line
(``--primary ADDR --relay ADDR --secondary ADDR``, each ``unix:PATH`` or
``HOST:PORT``) or in a cluster file (``--cluster FILE``, TOML with the keys
``primary``, ``relay``, ``secondary``, and for TCP control sockets a ``tls``
table with this client's ``ca``, ``cert``, ``key``; docs/security.md).
docs/operations.md has the states and every command.
"""

from __future__ import annotations

import json
import ssl
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import control
from ..config import ConfigError, TlsConfig, parse_control
from ..wire import tls as _tls
from .jnlg import NEVER, PairingError, check_pairing

__all__ = ["RcmError", "Unreachable", "Sites", "pair_create", "pair_sync", "pair_split", "pair_resync",
           "pair_delete", "gather_status", "format_status", "register"]

ROLES = ("primary", "relay", "secondary")
POLL = 0.2


class RcmError(Exception):
    """A pair command that could not be carried out; the message says why."""


class Unreachable(RcmError):
    """A site's control socket did not answer (down, or cut off from here)."""


@dataclass(frozen=True)
class Sites:
    """The control addresses of one primary / relay / secondary trio: (host, port)
    for TCP (with ``tls``, a client SSLContext, for mutual TLS), or a Unix socket path."""
    primary: "tuple[str, int] | Path"
    relay: "tuple[str, int] | Path"
    secondary: "tuple[str, int] | Path"
    tls: "ssl.SSLContext | None" = None

    @classmethod
    def from_file(cls, path: str) -> "Sites":
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except OSError as exc:
            raise RcmError(f"cannot read cluster file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise RcmError(f"{path}: not valid TOML: {exc}") from None
        base = Path(path).resolve().parent
        try:
            ctx = None
            if isinstance(doc.get("tls"), dict):
                t = doc["tls"]
                files = [base / t[k] for k in ("ca", "cert", "key")]
                ctx = _tls.client_context(TlsConfig(*files))
            return cls(*(parse_control(doc.get(r), f"{path}: {r}", base) for r in ROLES),
                       tls=ctx)
        except KeyError as exc:
            raise RcmError(f"{path}: tls.{exc.args[0]}: missing") from None
        except (ConfigError, OSError, ssl.SSLError) as exc:
            raise RcmError(f"{path}: {exc}") from None

    def call(self, role: str, cmd: str, **args) -> dict:
        addr = getattr(self, role)
        where = control.describe(addr)
        try:
            return control.call(addr, cmd, tls=self.tls, **args)
        except control.ControlError as exc:
            raise RcmError(f"{role} ({where}) refused {cmd}: {exc}") from None
        except OSError as exc:
            raise Unreachable(f"{role} ({where}) not reachable: {exc}") from None

    def group_status(self, role: str, grname: str) -> dict:
        for g in self.call(role, "status")["groups"]:
            if g["grname"] == grname:
                return g
        raise RcmError(f"the {role} has no group named {grname!r}")


# -- the pair commands ---------------------------------------------------------------

Progress = Callable[[dict], None]


def pair_create(sites: Sites, grname: str) -> None:
    """PAIR_CREATE: check the pairing rules, then SMPL -> COPY (the base copy starts)."""
    tables = {r: sites.call(r, "jnlg") for r in ROLES}
    check_pairing(grname, tables["primary"], tables["relay"], tables["secondary"])
    relay = sites.group_status("relay", grname)
    # Downstream first: by the time the first base journal flows, the relay and
    # secondary already know they are in COPY (the SVOLs are not consistent).
    sites.call("secondary", "pair_set", group=grname, grsts="COPY", consistent_seq=NEVER,
               relay_seq=relay["next_seq"] - 1)
    sites.call("relay", "pair_set", group=grname, grsts="COPY")
    sites.call("primary", "pair_create", group=grname)


def pair_sync(sites: Sites, grname: str, *, timeout: float = 600.0,
              progress: Progress | None = None) -> int:
    """PAIR_SYNC: wait for COPY -> PAIR, then for the SVOLs to be consistent.

    Returns the SEQ# from which the SVOLs are consistent.  ``progress`` gets the
    primary's group status on every poll.
    """
    deadline = time.monotonic() + timeout
    while True:
        p = sites.group_status("primary", grname)
        if progress is not None:
            progress(p)
        if p["grsts"] == "PAIR":
            break
        if p["grsts"] != "COPY":
            raise RcmError(f"group {grname} is {p['grsts']} at the primary, not copying"
                           + (f": {p['reason']}" if p["reason"] else ""))
        if time.monotonic() > deadline:
            raise RcmError(f"group {grname} still in COPY after {timeout:g} s")
        time.sleep(POLL)
    # Every base journal is ACKed, so each has a SEQ# at or below the relay's last.
    point = sites.group_status("relay", grname)["next_seq"] - 1
    sites.call("relay", "pair_set", group=grname, grsts="PAIR")
    sites.call("secondary", "pair_set", group=grname, grsts="PAIR", consistent_seq=point)
    while not sites.group_status("secondary", grname)["consistent"]:
        if time.monotonic() > deadline:
            raise RcmError(f"secondary has not restored up to SEQ# {point} after {timeout:g} s")
        time.sleep(POLL)
    return point


def pair_split(sites: Sites, grname: str, *, timeout: float = 60.0) -> None:
    """PAIR/COPY -> SUSP: host writes go on at the primary, tracked in the copy bitmap."""
    sites.call("primary", "pair_split", group=grname)
    deadline = time.monotonic() + timeout
    # Journals in flight at the split still reach the relay (nothing is dropped).
    while sites.group_status("primary", grname)["pending"]:
        if time.monotonic() > deadline:
            raise RcmError(f"journals in flight at the split not ACKed after {timeout:g} s")
        time.sleep(POLL)
    sites.call("relay", "pair_set", group=grname, grsts="SUSP")
    sites.call("secondary", "pair_set", group=grname, grsts="SUSP")


def pair_resync(sites: Sites, grname: str) -> None:
    """SUSP -> COPY of the chunks in the copy bitmap (delta resync); sync to reach PAIR."""
    relay = sites.group_status("relay", grname)
    # relay_seq: the ordered resync of a journal stream that went backwards
    # (the secondary holds SEQ#s the relay lost); the copy rewrites what differs.
    sites.call("secondary", "pair_set", group=grname, grsts="COPY", consistent_seq=NEVER,
               relay_seq=relay["next_seq"] - 1)
    sites.call("relay", "pair_set", group=grname, grsts="COPY")
    sites.call("primary", "pair_resync", group=grname, relay_last_tag=relay["last_tag"])


def pair_delete(sites: Sites, grname: str) -> None:
    """Any state -> SMPL on all three sites."""
    sites.call("primary", "pair_delete", group=grname)
    sites.call("relay", "pair_set", group=grname, grsts="SMPL")
    sites.call("secondary", "pair_set", group=grname, grsts="SMPL")


# -- status --------------------------------------------------------------------------

def gather_status(sites: Sites, grname: str | None = None) -> list[dict]:
    """One row per group: the three sites' views merged (None for an unreachable site)."""
    views = {}
    for role in ROLES:
        try:
            views[role] = {g["grname"]: g for g in sites.call(role, "status")["groups"]}
        except RcmError:
            views[role] = {}
    names = sorted(set().union(*(v.keys() for v in views.values())))
    if grname is not None:
        if grname not in names:
            raise RcmError(f"no site knows a group named {grname!r}")
        names = [grname]
    rows = []
    for name in names:
        p, r, s = (views[role].get(name) for role in ROLES)
        row = {"group": name, "primary": p, "relay": r, "secondary": s,
               "state": p["grsts"] if p else "?"}
        if r:
            row.update(journal_used_pct=r["used_pct"], seq_issued=r["next_seq"] - 1,
                       seq_forwarded=r["forwarded"], backlog_entries=r["held"],
                       backlog_bytes=r["used"], lag_s=r["lag"])
        if s:
            row.update(seq_restored=s["last_restored"], consistent=s["consistent"])
        if p:
            row.update(copy_done=p["copy_done"], copy_total=p["copy_total"],
                       copy_pending_bytes=p["copy_pending_bytes"])
        rows.append(row)
    return rows


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def format_status(rows: list[dict]) -> str:
    """Human-readable ``tricopy status``."""
    out = []
    for row in rows:
        p, r, s = row["primary"], row["relay"], row["secondary"]
        states = " / ".join(f"{role} {v['grsts'] if v else 'unreachable'}"
                            for role, v in zip(ROLES, (p, r, s)))
        out.append(f"group {row['group']}: {row['state']}   ({states})")
        for v in (p, r, s):
            if v and v.get("reason"):
                out.append(f"  reason: {v['reason']}")
            if v and v.get("recovery_warning"):
                out.append(f"  warning: {v['recovery_warning']}")
        if r:
            out.append(f"  journal  {row['journal_used_pct']:5.1f}% used, backlog "
                       f"{row['backlog_entries']} journals / {_mib(row['backlog_bytes'])}, "
                       f"lag {row['lag_s']:.2f} s")
            out.append(f"  SEQ#     issued {row['seq_issued']}  forwarded {row['seq_forwarded']}"
                       + (f"  restored {row['seq_restored']}" if s else ""))
        if s and s.get("takeover"):
            t = s["takeover"]
            out.append(f"  takeover the secondary site is the primary at epoch {t['epoch']}: it took "
                       f"over at SEQ# {t['seq']}{' (forced)' if t['forced'] else ''}; "
                       f"{_mib(s['written_bytes'])} of chunks written since")
        elif s:
            out.append(f"  SVOLs    {'consistent' if s['consistent'] else 'NOT consistent'}"
                       f" (restored {s['last_restored']})")
        if p:
            for d in p["dvols"]:
                out.append(f"  IDX {d['idx']}    {d['volsts']:4}  BJPtr {d['bjptr']}/{d['blocks']}"
                           f" blocks  {d['volname']}")
            if p["grsts"] in ("COPY", "SUSP"):
                out.append(f"  copy     {p['copy_done']}/{p['copy_total']} chunks, "
                           f"{_mib(p['copy_pending_bytes'])} still to send")
    return "\n".join(out) if out else "no groups"


def progress_bar(stream=sys.stdout) -> Progress:
    """A ``pair_sync`` progress callback: a bar on a terminal, a line per 10 % otherwise."""
    last = [-1]

    def show(p: dict) -> None:
        total = p["copy_total"] or 1
        done = p["copy_total"] if p["grsts"] == "PAIR" else p["copy_done"]
        frac = 1.0 if p["grsts"] == "PAIR" else min(1.0, done / total)
        bar = "#" * int(frac * 30) + "-" * (30 - int(frac * 30))
        text = (f"{p['grsts']:4} [{bar}] {frac * 100:5.1f}%  {done}/{p['copy_total']} chunks "
                f"of {p['copy_chunk'] >> 10} KiB")
        if stream.isatty():
            stream.write("\r" + text + ("\n" if p["grsts"] == "PAIR" else ""))
        elif int(frac * 10) != last[0]:
            last[0] = int(frac * 10)
            stream.write(text + "\n")
        stream.flush()
    return show


# -- command line ----------------------------------------------------------------------

def _sites(args) -> Sites:
    if args.cluster:
        return Sites.from_file(args.cluster)
    missing = [r for r in ROLES if getattr(args, r) is None]
    if missing:
        raise RcmError(f"give --cluster FILE or all of --primary/--relay/--secondary "
                       f"(missing: {', '.join('--' + m for m in missing)})")
    try:
        return Sites(*(parse_control(getattr(args, r), f"--{r}", Path.cwd()) for r in ROLES))
    except ConfigError as exc:
        raise RcmError(str(exc)) from None


def _run_pair(args) -> int:
    try:
        sites = _sites(args)
        op = args.op
        if op == "create":
            pair_create(sites, args.group)
            print(f"group {args.group}: COPY (base copy started)")
        elif op == "split":
            pair_split(sites, args.group)
            print(f"group {args.group}: SUSP (writes tracked in the copy bitmap)")
        elif op == "resync":
            pair_resync(sites, args.group)
            print(f"group {args.group}: COPY (delta resync started)")
        elif op == "delete":
            pair_delete(sites, args.group)
            print(f"group {args.group}: SMPL")
        if op == "sync" or (op in ("create", "resync") and not args.no_wait):
            point = pair_sync(sites, args.group, timeout=args.timeout,
                              progress=progress_bar())
            print(f"group {args.group}: PAIR, SVOLs consistent from SEQ# {point}")
    except (RcmError, PairingError) as exc:
        print(f"tricopy pair {args.op}: {exc}", file=sys.stderr)
        return 1
    return 0


def _run_status(args) -> int:
    try:
        sites = _sites(args)
        while True:
            rows = gather_status(sites, args.group)
            if args.json:
                print(json.dumps(rows, indent=1))
            else:
                print(format_status(rows))
            if not args.watch:
                return 0
            time.sleep(args.watch)
            print()
    except RcmError as exc:
        print(f"tricopy status: {exc}", file=sys.stderr)
        return 1


def _site_args(p) -> None:
    p.add_argument("--cluster", help="TOML file with primary/relay/secondary control addresses")
    for r in ROLES:
        p.add_argument(f"--{r}", metavar="unix:PATH|HOST:PORT",
                       help=f"the {r}'s control socket")


def register(subparsers) -> None:
    """Add ``pair`` and ``status`` to the ``tricopy`` command line."""
    p = subparsers.add_parser("pair", help="pair management: create, sync, split, resync, delete",
                              description="Pair management (the RCM). See docs/operations.md.")
    p.add_argument("op", choices=["create", "sync", "split", "resync", "delete"])
    p.add_argument("--group", required=True, help="GRNAME of the journal group")
    p.add_argument("--no-wait", action="store_true",
                   help="create/resync: return once COPY started, do not follow it to PAIR")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for PAIR")
    _site_args(p)
    p.set_defaults(func=_run_pair)
    s = subparsers.add_parser("status", help="state, journal use, sequence numbers, lag per group")
    s.add_argument("--group", help="only this GRNAME")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--watch", type=float, metavar="SECONDS", help="repeat every SECONDS")
    _site_args(s)
    s.set_defaults(func=_run_status)
