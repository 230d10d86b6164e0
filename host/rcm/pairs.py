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
``primary``, ``relay``, ``secondary``, optionally ``standby`` (a standby
relay, docs/operations.md), and for TCP control sockets a ``tls``
table with this client's ``ca``, ``cert``, ``key`` and the site name each
TCP socket's certificate must carry, ``primary_site``, ``relay_site``,
``secondary_site``, ``standby_site``; docs/security.md).
docs/operations.md has the states and every command.
"""

from __future__ import annotations

import dataclasses

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
           "pair_delete", "register"]

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
    # The site name each TCP control socket's certificate must carry (the
    # RCM checks it before it sends anything, as the links check their peer).
    primary_site: str | None = None
    relay_site: str | None = None
    secondary_site: str | None = None
    # The standby relay's control address (and site name), if there is one.
    # After :meth:`resolved`, ``relay`` is the relay the group uses and
    # ``standby`` the other one.
    standby: "tuple[str, int] | Path | None" = None
    standby_site: str | None = None

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
                crl = base / t["crl"] if t.get("crl") else None
                ctx = _tls.client_context(TlsConfig(*files, crl=crl))
            roles = ROLES + (("standby",) if doc.get("standby") is not None else ())
            addrs = [parse_control(doc.get(r), f"{path}: {r}", base) for r in roles]
            names = {}
            for role, addr in zip(roles, addrs):
                name = doc.get(f"{role}_site")
                if name is not None and not (isinstance(name, str) and name):
                    raise RcmError(f"{path}: {role}_site must be a site name (a string), "
                                   f"not {name!r}")
                if ctx is not None and isinstance(addr, tuple) and name is None:
                    raise RcmError(f"{path}: {role} is a TCP control socket with TLS: add "
                                   f"{role}_site = \"<the site name in its certificate>\" so "
                                   f"the RCM checks it reaches that site")
                names[f"{role}_site"] = name
            standby = addrs[3] if len(addrs) > 3 else None
            return cls(*addrs[:3], tls=ctx, standby=standby, **names)
        except KeyError as exc:
            raise RcmError(f"{path}: tls.{exc.args[0]}: missing") from None
        except (ConfigError, OSError, ssl.SSLError, ValueError) as exc:
            raise RcmError(f"{path}: {exc}") from None

    def call(self, role: str, cmd: str, **args) -> dict:
        addr = getattr(self, role)
        if addr is None:
            raise RcmError(f"no {role} is known here: give --{role} ADDR or `{role} = ` in the "
                           f"cluster file")
        where = control.describe(addr)
        try:
            return control.call(addr, cmd, tls=self.tls, expect_site=getattr(self, f"{role}_site"),
                                **args)
        except control.WrongSite as exc:
            raise RcmError(f"{role}: {exc}") from None
        except control.ControlError as exc:
            raise RcmError(f"{role} ({where}) refused {cmd}: {exc}") from None
        except OSError as exc:
            raise Unreachable(f"{role} ({where}) not reachable: {exc}") from None

    def resolved(self) -> "Sites":
        """The sites by the roles they run now.  After a planned swap the site
        configured as the primary runs as the secondary and the other way
        round (docs/operations.md, "Swap"); every command means the roles as
        they are.  Asked of the configured primary, or of the secondary if the
        primary does not answer; as configured if neither does.  When the
        primary sends its journals to the standby relay, ``relay`` is that one."""
        for role, swapped_if in (("primary", "secondary"), ("secondary", "primary")):
            try:
                st = control.call(getattr(self, role), "status", tls=self.tls,
                                  expect_site=getattr(self, f"{role}_site"))
            except (OSError, control.ControlError):
                continue
            sites = self
            if st["role"] == swapped_if:
                # the sites keep their names (and certificates) in either role
                sites = dataclasses.replace(self, primary=self.secondary,
                                            secondary=self.primary,
                                            primary_site=self.secondary_site,
                                            secondary_site=self.primary_site)
            elif st["role"] == "primary" and self.standby is not None and any(
                    g.get("relay_in_use") == "standby" for g in st.get("groups", [])):
                sites = dataclasses.replace(self, relay=self.standby, standby=self.relay,
                                            relay_site=self.standby_site,
                                            standby_site=self.relay_site)
            return sites
        return self

    def group_status(self, role: str, grname: str) -> dict:
        for g in self.call(role, "status")["groups"]:
            if g["grname"] == grname:
                return g
        raise RcmError(f"the {role} has no group named {grname!r}")


# -- the pair commands ---------------------------------------------------------------

Progress = Callable[[dict], None]


def _tell(sites: Sites, grname: str, grsts: str, say) -> list[str]:
    """Set ``grsts`` at the relay and the secondary where they answer; the roles
    that did not.  The primary's state is the pair's: the others follow it."""
    missed = []
    for role in ("relay", "secondary"):
        try:
            sites.call(role, "pair_set", group=grname, grsts=grsts)
        except Unreachable as exc:
            missed.append(role)
            say(f"{exc}; it still shows the old state (run the command again once it is "
                f"back; `pair create` and `pair resync` bring it along too)")
    return missed


def pair_create(sites: Sites, grname: str, say=lambda line: None) -> None:
    """PAIR_CREATE: check the pairing rules, then SMPL -> COPY (the base copy starts)."""
    tables = {r: sites.call(r, "jnlg") for r in ROLES}
    prim = next((g for g in tables["primary"]["groups"] if g["grname"] == grname), None)
    if prim is not None and prim["grsts"] == "SMPL":
        # A delete that could not reach the relay or the secondary: finish it
        # (the primary's state is the pair's) before the rules are checked.
        for role in ("relay", "secondary"):
            row = next((g for g in tables[role]["groups"] if g["grname"] == grname), None)
            if row is not None and row["grsts"] != "SMPL":
                say(f"the {role} still showed {row['grsts']} from a delete it missed: set to SMPL")
                sites.call(role, "pair_set", group=grname, grsts="SMPL")
                tables[role] = sites.call(role, "jnlg")
    check_pairing(grname, tables["primary"], tables["relay"], tables["secondary"])
    relay = sites.group_status("relay", grname)
    # Downstream first: by the time the first base journal flows, the relay and
    # secondary already know they are in COPY (the SVOLs are not consistent).
    # full: the base copy rewrites every chunk, so the secondary may take up the
    # relay's stream at its newest SEQ# whatever its restore point was.
    sites.call("secondary", "pair_set", group=grname, grsts="COPY", consistent_seq=NEVER,
               relay_seq=relay["next_seq"] - 1, full=True)
    # local_resync: a relay copy that lacks released journals takes this copy too.
    sites.call("relay", "pair_set", group=grname, grsts="COPY", consistent_seq=NEVER,
               local_resync=True)
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
            raise RcmError(f"group {grname} still in COPY after {timeout:g} s: the copy goes "
                           f"on; `tricopy status` shows how far, `tricopy pair sync` waits again")
        time.sleep(POLL)
    # Every base journal is ACKed, so each has a SEQ# at or below the relay's last.
    point = sites.group_status("relay", grname)["next_seq"] - 1
    sites.call("relay", "pair_set", group=grname, grsts="PAIR", consistent_seq=point)
    sites.call("secondary", "pair_set", group=grname, grsts="PAIR", consistent_seq=point)
    while not sites.group_status("secondary", grname)["consistent"]:
        if time.monotonic() > deadline:
            raise RcmError(f"secondary has not restored up to SEQ# {point} after {timeout:g} s: "
                           f"`tricopy status` says why, `tricopy pair sync` waits again")
        time.sleep(POLL)
    return point


def pair_split(sites: Sites, grname: str, *, timeout: float = 60.0,
               say=lambda line: None) -> list[str]:
    """PAIR/COPY -> SUSP: host writes go on at the primary, tracked in the copy bitmap.
    Works with the relay or the secondary unreachable; returns those not told."""
    sites.call("primary", "pair_split", group=grname)
    deadline = time.monotonic() + timeout
    # Journals in flight at the split still reach the relay (nothing is dropped).
    while sites.group_status("primary", grname)["pending"]:
        if time.monotonic() > deadline:
            raise RcmError(f"journals in flight at the split not ACKed after {timeout:g} s")
        time.sleep(POLL)
    return _tell(sites, grname, "SUSP", say)


def move_relay(configured: Sites, grname: str, to: str, say=lambda line: None) -> Sites:
    """Send the group's journals through the standby relay (``to`` = "standby") or
    back through the configured relay (``to`` = "relay"); docs/operations.md,
    "A standby relay".  Returns the sites resolved for the move: ``pair_resync``
    follows with the delta (what the secondary lacks).

    A new epoch starts a new journal stream: the relay left behind (fenced
    where it answers) can no longer feed the secondary, and what it held but
    the secondary had not restored is in the delta.
    """
    names = {"relay": configured.relay, "standby": configured.standby}
    if to not in names:
        raise RcmError(f"--via must be \"relay\" or \"standby\", not {to!r}")
    if configured.standby is None and to == "standby":
        raise RcmError("no standby relay is known here: give --standby ADDR (its control "
                       "socket) or `standby = ` in the cluster file")
    site_names = {"relay": configured.relay_site, "standby": configured.standby_site}
    other = "standby" if to == "relay" else "relay"
    target = dataclasses.replace(configured, relay=names[to], standby=names[other],
                                 relay_site=site_names[to], standby_site=site_names[other])
    prim = target.group_status("primary", grname)
    if to == "standby" and not prim.get("standby_configured"):
        raise RcmError(f"group {grname} has no standby relay at the primary: give its "
                       f"[[group]] standby = \"HOST:PORT\" (and standby_site with TLS) and "
                       f"restart it")
    try:
        new = target.group_status("relay", grname)
    except Unreachable as exc:
        raise RcmError(f"the {to} relay must answer to take the group over: {exc}") from None
    sec = target.group_status("secondary", grname)
    epochs = [prim["epoch"], new["epoch"], sec.get("epoch", 0)]
    try:
        old = target.group_status("standby", grname) if target.standby is not None else None
    except Unreachable:
        old = None
    if old is not None:
        epochs.append(old["epoch"])
    epoch = max(epochs) + 1
    # What the secondary holds, as a PSEQ, before it moves (host/primary/regions.py).
    restored_tag = sec.get("restored_tag")
    if old is not None:       # it takes nothing more from the primary (if it answers)
        target.call("standby", "fence", group=grname, epoch=epoch)
    else:
        say(f"the other relay does not answer: it is left as it is (a stream at epoch "
            f"{epoch - 1} or older, refused by the secondary)")
    moved = target.call("primary", "use_relay", group=grname, relay=to, epoch=epoch)
    # The new stream continues the primary's PSEQs (none reused).
    r = target.call("relay", "adopt", group=grname, epoch=epoch, last_tag=moved["last_pseq"])
    target.call("secondary", "pair_set", group=grname, grsts="COPY", consistent_seq=NEVER,
                relay_seq=r["last_seq"], relay_tag=r["last_tag"], epoch=epoch)
    target.call("relay", "pair_set", group=grname, grsts="COPY", consistent_seq=NEVER)
    target.call("primary", "pair_resync", group=grname, relay_last_tag=r["last_tag"],
                restored_tag=restored_tag)
    say(f"journals go through the {to} relay at epoch {epoch}; the secondary's restore point "
        f"was PSEQ {restored_tag}")
    return target


def pair_resync(sites: Sites, grname: str, say=lambda line: None) -> bool:
    """SUSP -> COPY of the chunks in the copy bitmap (delta resync); sync to reach PAIR.

    A relay's copy (data volumes at the relay) that lacks journals already
    released (``needs_resync`` in its status) is brought back too: the group
    is split first if it is PAIR, every chunk is copied, and the relay's copy
    takes that copy from the relay's newest SEQ# on.  Returns True then."""
    # The primary has the last word (only a SUSP group resyncs), but it is told
    # last: ask it first, or a refusal would leave the relay and the secondary
    # in COPY, the SVOLs no longer called consistent, for nothing.
    p = sites.group_status("primary", grname)
    try:
        local = sites.group_status("relay", grname).get("local") or {}
    except Unreachable:
        local = {}          # (refused below, or where the relay's next SEQ# is asked)
    full = bool(local.get("needs_resync"))
    if full and not p["fenced"] and p["grsts"] == "PAIR":
        say(f"the relay's copy lacks journals already released ({local['reason']}): "
            f"split first, then every chunk is copied (the SVOLs too are no consistent "
            f"image until the copy ends)")
        pair_split(sites, grname, say=say)
        p = sites.group_status("primary", grname)
    # A resync that moved the relay's copy but never reached the primary (the
    # RCM was lost in between): the copy of every chunk is still owed.
    full = full or (local.get("resync_after") is not None and p["grsts"] == "SUSP")
    if p["fenced"]:
        raise RcmError(f"group {grname} is fenced at the primary: it was taken over at epoch "
                       f"{p['fence_epoch']} and can only rejoin as the restore side "
                       f"(`tricopy failback`); nothing was changed")
    if p["grsts"] != "SUSP":
        raise RcmError(f"group {grname} is {p['grsts']} at the primary: only a SUSP group can "
                       f"be resynced; nothing was changed"
                       + ("" if p["grsts"] != "PAIR" else
                          " (`tricopy pair split` first, to copy chunks `tricopy verify "
                          "--mark` found)"))
    relay = sites.group_status("relay", grname)
    # The secondary's restore point as a PSEQ, read before pair_set moves it
    # back: after a relay that lost everything, the primary copies only the
    # regions written after it (docs/replication.md, "The region table").
    restored_tag = sites.group_status("secondary", grname).get("restored_tag")
    # relay_seq: the ordered resync of a journal stream that went backwards
    # (the secondary holds SEQ#s the relay lost); the copy rewrites what differs.
    sites.call("secondary", "pair_set", group=grname, grsts="COPY", consistent_seq=NEVER,
               relay_seq=relay["next_seq"] - 1, relay_tag=relay["last_tag"])
    moved = sites.call("relay", "pair_set", group=grname, grsts="COPY", consistent_seq=NEVER,
                       local_resync=full).get("local_resync")
    if moved:
        say(f"the relay's copy restarts after SEQ# {moved['relay_seq']} (it was restored up "
            f"to {moved['last_restored']}): the copy of every chunk makes it whole")
    sites.call("primary", "pair_resync", group=grname, relay_last_tag=relay["last_tag"],
               restored_tag=restored_tag, full=full)
    return full


def copied(p: dict) -> str:
    """What the last copy moved, against a full copy (a primary's group status)."""
    moved, full = p["copy_total"] * p["copy_chunk"], p["copy_full_chunks"] * p["copy_chunk"]
    return (f"copied {moved} bytes ({p['copy_total']} chunks of {p['copy_chunk'] >> 10} KiB), "
            f"{100 * moved / max(full, 1):.2f}% of a full copy of {full} bytes")


def pair_delete(sites: Sites, grname: str, say=lambda line: None) -> list[str]:
    """Any state -> SMPL on all three sites; the relay and the secondary where they
    answer (returns those not told)."""
    sites.call("primary", "pair_delete", group=grname)
    return _tell(sites, grname, "SMPL", say)


# -- status --------------------------------------------------------------------------

def progress_bar(stream=sys.stdout) -> Progress:
    """A ``pair_sync`` progress callback: a bar with rate and ETA on a terminal, a line
    per 10 % otherwise; nothing for a copy that stopped (its error follows)."""
    last = [-1]
    t0 = [None, 0]        # monotonic time and chunks done at the first call

    def show(p: dict) -> None:
        if p["grsts"] not in ("COPY", "PAIR"):
            return        # the copy stopped: the error that follows says why, no bar
        total = p["copy_total"] or 1
        done = p["copy_total"] if p["grsts"] == "PAIR" else p["copy_done"]
        frac = 1.0 if p["grsts"] == "PAIR" else min(1.0, done / total)
        now = time.monotonic()
        if t0[0] is None:
            t0[0], t0[1] = now, done
        rate = (done - t0[1]) / (now - t0[0]) if now > t0[0] else 0.0
        chunk = p["copy_chunk"]
        eta = (f"ETA {max(0, p['copy_total'] - done) / rate:4.0f} s" if rate > 0
               and p["grsts"] == "COPY" else "")
        bar = "#" * int(frac * 30) + "-" * (30 - int(frac * 30))
        text = (f"{p['grsts']:4} [{bar}] {frac * 100:5.1f}%  {done}/{p['copy_total']} chunks "
                f"of {chunk >> 10} KiB  {rate * chunk / (1 << 20):6.1f} MiB/s  {eta}").rstrip()
        if stream.isatty():
            stream.write("\r" + text + ("\n" if p["grsts"] == "PAIR" else ""))
        elif (step := "PAIR" if p["grsts"] == "PAIR" else int(frac * 10)) != last[0]:
            # (the PAIR line comes once, also after a COPY poll at 100 %)
            last[0] = step
            stream.write(text + "\n")
        stream.flush()
    return show


# -- command line ----------------------------------------------------------------------

def _sites(args) -> Sites:
    return _configured(args).resolved()


def _configured(args) -> Sites:
    if args.cluster:
        return Sites.from_file(args.cluster)
    missing = [r for r in ROLES if getattr(args, r) is None]
    if missing:
        raise RcmError(f"give --cluster FILE or all of --primary/--relay/--secondary "
                       f"(missing: {', '.join('--' + m for m in missing)})")
    try:
        standby = getattr(args, "standby", None)
        return Sites(*(parse_control(getattr(args, r), f"--{r}", Path.cwd()) for r in ROLES),
                     standby=None if standby is None
                     else parse_control(standby, "--standby", Path.cwd()))
    except ConfigError as exc:
        raise RcmError(str(exc)) from None


def _run_pair(args) -> int:
    try:
        sites = _sites(args)
        op = args.op
        say = lambda line: print(f"tricopy pair {op}: {line}", file=sys.stderr)  # noqa: E731
        if op == "create":
            pair_create(sites, args.group, say=say)
            print(f"group {args.group}: COPY (base copy started)")
        elif op == "split":
            pair_split(sites, args.group, say=say)
            print(f"group {args.group}: SUSP (writes tracked in the copy bitmap)")
        elif op == "resync" and args.via:
            sites = move_relay(_configured(args), args.group, args.via, say=say)
            print(f"group {args.group}: COPY through the {args.via} relay (delta resync started)")
        elif op == "resync":
            full = pair_resync(sites, args.group, say=say)
            what = "a copy of every chunk, for the relay's copy" if full else "delta resync"
            print(f"group {args.group}: COPY ({what} started)")
        elif op == "delete":
            pair_delete(sites, args.group, say=say)
            print(f"group {args.group}: SMPL")
        if op == "sync" or (op in ("create", "resync") and not args.no_wait):
            point = pair_sync(sites, args.group, timeout=args.timeout,
                              progress=progress_bar())
            print(f"group {args.group}: PAIR, SVOLs consistent from SEQ# {point}")
            if op == "resync":
                print(copied(sites.group_status("primary", args.group)))
    except (RcmError, PairingError) as exc:
        print(f"tricopy pair {args.op}: {exc}", file=sys.stderr)
        return 1
    return 0


def _site_args(p) -> None:
    p.add_argument("--cluster", help="TOML file with primary/relay/secondary control addresses")
    for r in ROLES:
        p.add_argument(f"--{r}", metavar="unix:PATH|HOST:PORT",
                       help=f"the {r}'s control socket")
    p.add_argument("--standby", metavar="unix:PATH|HOST:PORT",
                   help="the standby relay's control socket, if there is one")


def register(subparsers) -> None:
    """Add ``pair`` to the ``tricopy`` command line (``status``: status.py)."""
    p = subparsers.add_parser("pair", help="pair management: create, sync, split, resync, delete",
                              description="Pair management (the RCM). See docs/operations.md.")
    p.add_argument("op", choices=["create", "sync", "split", "resync", "delete"])
    p.add_argument("--group", required=True, help="GRNAME of the journal group")
    p.add_argument("--no-wait", action="store_true",
                   help="create/resync: return once COPY started, do not follow it to PAIR")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for PAIR")
    p.add_argument("--via", choices=["standby", "relay"],
                   help="resync: move the group to the standby relay (the relay site is lost) "
                        "or back to its relay, copying only what the secondary lacks")
    _site_args(p)
    p.set_defaults(func=_run_pair)
