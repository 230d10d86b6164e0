"""Command line for the three sites: ``primary``, ``relay``, ``secondary``.

``register(subparsers)`` adds the commands to the ``tricopy`` CLI (host/cli.py);
``python -m tricopy.host.sites_cli relay --config relay.toml`` runs one directly.

Life cycle (docs/operations.md, "Running a site"):

* **start** — the config is loaded and :func:`prepare` checks what the site
  needs before anything is touched (state_dir's parent, free ports, folders,
  one file per volume, believable PAIR claims), then makes the volumes that
  say ``create = true``.  A site that cannot start prints one line,
  ``tricopy <role>: <config>: <what is wrong> — <what to do>``, and exits
  with :data:`EXIT_STARTUP`; the traceback is logged only at debug level.
* **run** — one log line says what listens where.
* **stop** — SIGTERM or SIGINT cancels the site's run task, gives it
  :data:`STOP_GRACE` seconds, calls the site's ``aclose()``/``close()`` if it
  has one, cancels what is left, logs ``<role> <site> stopped (SIGTERM)`` and
  exits with 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import inspect
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

import uvloop

from .config import ConfigError, GroupAttr, SiteConfig, load_config, swapped
from .rcm.jnlg import JnlgTable
from .disk import powerswitch
from .disk.volume import Volume

__all__ = ["register", "main", "prepare", "StartupError", "EXIT_STARTUP", "STOP_GRACE"]

log = logging.getLogger("tricopy.host.sites_cli")   # also under `python -m`

EXIT_STARTUP = 2          # the config or the files on disk do not allow a start
EXIT_ENDED = 1            # the site's run ended by itself (not by a signal)
STOP_GRACE = 5.0          # seconds a site gets to stop after SIGTERM/SIGINT
RESTART = "RESTART"       # _serve's answer when a swap asked for a restart

ROLE_ATTR = {"primary": GroupAttr.MASTER, "relay": GroupAttr.INTERMEDIARY,
             "secondary": GroupAttr.RESTORE}


class StartupError(Exception):
    """A site that cannot start; ``hint`` tells the operator what to do."""

    def __init__(self, message: str, hint: str):
        super().__init__(message)
        self.hint = hint


class _Interrupted(Exception):
    """A stop signal before the event loop was up."""


# -- start: checks before anything is touched ----------------------------------

def prepare(cfg: SiteConfig, role: str) -> None:
    """Check that ``cfg`` can start as ``role``, then create its new volumes.

    Every refusal is a :class:`StartupError` (or a ``VolumeError`` from
    :class:`Volume`) that says what to do.  The PAIR check runs before any
    volume is created, because it asks whether the files existed before.
    """
    groups = [g for g in cfg.groups if g.attr is ROLE_ATTR[role]]
    if not groups:
        raise StartupError(f"no [[group]] with attr = \"{ROLE_ATTR[role].value}\"",
                           f"is this the {role}'s config file?")
    volumes = [v for g in groups for v in cfg.volumes_of(g.grnum)]
    _check_state_dir(cfg)
    _check_ports(cfg, role)
    _check_nbd_crl(cfg)
    _check_files(groups, volumes)
    _check_pair_claims(cfg, groups)
    for v in volumes:
        Volume(v.path, v.size, v.block_size, idx=v.idx, create=v.create).close()


def _check_state_dir(cfg: SiteConfig) -> None:
    d = cfg.state_dir
    if d.exists() and not d.is_dir():
        raise StartupError(f"state_dir {d} is not a folder", "point state_dir at a folder")
    if not d.exists() and not d.parent.is_dir():
        raise StartupError(f"state_dir {d}: folder {d.parent} does not exist",
                           f"create {d.parent}, or point state_dir into a folder that exists")


def _check_ports(cfg: SiteConfig, role: str) -> None:
    """Bind each address the site will listen on, the way asyncio will; the
    site binds them for real moments later, but this refusal names the key."""
    keys = [("control", cfg.control)] if isinstance(cfg.control, tuple) else []
    if isinstance(cfg.control, Path) and not cfg.control.parent.is_dir():
        raise StartupError(f"control socket {cfg.control}: folder {cfg.control.parent} does "
                           f"not exist", "create it, or point control = \"unix:PATH\" elsewhere")
    for key, path in _tls_files(cfg):
        if not path.is_file():
            raise StartupError(f"{key} {path}: no such file",
                               "make the certificates with `tricopy certs` (docs/security.md)")
    if role != "primary":                    # the primary only connects out
        keys.append(("listen", cfg.listen))
    if cfg.nbd is not None:      # a relay's: its data volumes (Fig. 12), read-only
        keys.append(("nbd.listen", cfg.nbd.listen))
    for key, addr in keys:
        if addr is None or addr[1] == 0:
            continue
        host, port = addr
        try:
            infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise StartupError(f"{key} {host}:{port}: {exc.strerror}",
                               f"give {key} an address of this machine") from None
        for family, kind, proto, _, sockaddr in infos:
            with socket.socket(family, kind, proto) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    s.bind(sockaddr)
                except OSError as exc:
                    raise StartupError(f"{key} {host}:{port}: {exc.strerror}",
                                       _bind_hint(exc.errno, key)) from None


def _check_nbd_crl(cfg: SiteConfig) -> None:
    """Read ``nbd.tls_client_crl`` now: a bad list stops the start before
    anything listens (the NBD server reads it again when it starts)."""
    if cfg.nbd is None:
        return
    from .nbd.primary_export import client_crl
    try:
        client_crl(cfg.nbd)
    except ConfigError as exc:       # "<what is wrong>; <what to do>", naming the file
        what, _, todo = str(exc).rpartition("; ")
        raise StartupError(what, todo) from None


def _tls_files(cfg: SiteConfig):
    files = []
    if cfg.tls is not None:
        files += [("tls.ca", cfg.tls.ca), ("tls.cert", cfg.tls.cert), ("tls.key", cfg.tls.key)]
    if cfg.nbd is not None and cfg.nbd.tls_client_ca is not None:
        files.append(("nbd.tls_client_ca", cfg.nbd.tls_client_ca))
    if cfg.nbd is not None and cfg.nbd.tls_client_crl is not None:
        files.append(("nbd.tls_client_crl", cfg.nbd.tls_client_crl))
    return files


def _bind_hint(code: int | None, key: str) -> str:
    if code == errno.EADDRINUSE:
        return f"another process listens there: stop it, or give {key} another port"
    if code == errno.EADDRNOTAVAIL:
        return f"that is not an address of this machine: fix {key}"
    if code == errno.EACCES:
        return f"ports below 1024 need privileges: give {key} a port of 1024 or more"
    return f"fix {key}"


def _check_files(groups, volumes) -> None:
    """Folders exist; one file backs one volume (the config compared paths,
    this compares device and inode, so hard links are caught too)."""
    files = [(f"volume idx {v.idx} of group {v.group}", v.path) for v in volumes]
    for g in groups:
        if g.journal is not None:
            files.append((f"the journal of group {g.grname}", g.journal.path))
            if not g.journal.path.parent.is_dir():
                raise StartupError(f"journal {g.journal.path}: folder "
                                   f"{g.journal.path.parent} does not exist",
                                   "create it or fix journal.path")
    seen: dict[tuple[int, int], tuple[str, object]] = {}
    for what, path in files:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue
        first = seen.setdefault((st.st_dev, st.st_ino), (what, path))
        if first[0] != what:
            raise StartupError(f"{what} ({path}) and {first[0]} ({first[1]}) are the same file",
                               "give each volume its own file")


def _holds_data(path) -> bool:
    """True unless the file is missing or has no block allocated (a sparse
    file never written: it reads as all zeros)."""
    try:
        return os.stat(path).st_blocks > 0
    except FileNotFoundError:
        return False


def _check_pair_claims(cfg: SiteConfig, groups) -> None:
    """``initial_state = "PAIR"`` says "PVOL and SVOL are already equal".  The
    only case a site can vouch for is volumes that are new here (missing
    before this start, or never written); a group already in the JNLG table
    keeps its recorded state and is not asked again."""
    table = JnlgTable.load((cfg.state_dir / "jnlg.json").resolve())
    for g in groups:
        row = table.entries.get(g.grnum)
        if g.initial_state != "PAIR" or (
                row is not None and (row.grname, row.grattr) == (g.grname, g.attr.value)):
            continue
        todo = "leave initial_state at \"SMPL\" and pair with `tricopy pair create`"
        for v in cfg.volumes_of(g.grnum):
            if _holds_data(v.path):
                raise StartupError(f"group {g.grname}: initial_state = \"PAIR\", but volume "
                                   f"idx {v.idx} ({v.path}) already holds data", todo)
        if g.journal is not None and g.journal.path.exists():
            raise StartupError(f"group {g.grname}: initial_state = \"PAIR\", but the journal "
                               f"{g.journal.path} already exists",
                               todo + " (or move the old journal away)")


def _one_line(exc: BaseException) -> str:
    """``<what is wrong> — <what to do>`` for an error that stopped the start."""
    if isinstance(exc, StartupError):
        return f"{exc} — {exc.hint}"
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}" if exc.filename else str(exc)
    else:
        text = str(exc) or type(exc).__name__
    if " — " in text:                        # VolumeError says what to do itself
        return text
    if isinstance(exc, ConfigError):
        hint = "fix the config (docs/operations.md lists every key)"
    elif isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        hint = "another process listens there: stop it, or change the port in the config"
    elif isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM):
        hint = "run the site as the owner of that file or folder, or fix its permissions"
    elif isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        hint = "free space on that file system"
    elif isinstance(exc, OSError):
        hint = "fix what the message names and start the site again"
    else:
        hint = ("the config and the files on disk disagree: fix the config, or move the "
                "old file away (docs/operations.md)")
    return f"{text} — {hint}"


def _make_site(args: argparse.Namespace, cfg: SiteConfig, role: str):
    if role == "primary":
        from .primary.site import Primary
        return Primary(cfg)
    if role == "relay":
        from .relay.site import Relay
        return Relay(cfg, engine_kind=args.engine, engine_url=args.engine_url,
                     engine_mode=args.engine_mode)
    from .secondary.site import Secondary
    return Secondary(cfg)


def swapped_role(cfg: SiteConfig, role: str) -> tuple[SiteConfig, str]:
    """The role this site runs now and the config for it.

    After a planned swap (docs/operations.md, "Swap") the JNLG table says the
    data sites trade roles: the site configured as the primary runs as the
    secondary and the other way round, with the addresses ``config.swapped``
    picks.  The relay stays the relay (its groups turn around in place).
    """
    if role == "relay" or not (cfg.state_dir / "jnlg.json").exists():
        return cfg, role
    table = JnlgTable.load(cfg.state_dir / "jnlg.json")
    mine = [g for g in cfg.groups if g.attr is ROLE_ATTR[role]]
    flipped = [g for g in mine if (e := table.entries.get(g.grnum)) is not None
               and e.grname == g.grname and e.grattr != g.attr.value
               and e.grattr in ("MASTER", "RESTORE")]
    if not flipped:
        return cfg, role
    if len(flipped) != len(mine):
        names = ", ".join(g.grname for g in flipped)
        raise StartupError(f"group(s) {names} were swapped and the site's other groups were "
                           f"not: one site process runs one role",
                           "swap the site's other groups too (tricopy takeover --group G)")
    other = "secondary" if role == "primary" else "primary"
    if other == "secondary" and cfg.listen is None:
        raise StartupError("this site was swapped to the restore side but its config has no "
                           "listen address", "give listen = \"HOST:PORT\" (the relay's "
                           "reverse_peer)")
    groups = [swapped(g) if g in flipped else g for g in cfg.groups]
    return dataclasses.replace(cfg, groups=groups), other


# -- run and stop ---------------------------------------------------------------

def _listening(cfg: SiteConfig, role: str) -> str:
    parts = []
    if role != "primary" and cfg.listen:
        parts.append("data %s:%d" % cfg.listen)
    if isinstance(cfg.control, Path):
        parts.append(f"control unix:{cfg.control}")
    elif cfg.control:
        parts.append("control %s:%d" % cfg.control + (" (TLS)" if cfg.tls and
                                                       not cfg.control_plaintext else
                                                       " (plaintext, read-only)"))
    if cfg.nbd is not None:
        parts.append("nbd %s:%d" % cfg.nbd.listen)
    peers = [f"{g.grname} -> %s:%d" % g.peer for g in cfg.groups
             if g.attr is ROLE_ATTR[role] and g.peer is not None]
    if peers:
        parts.append("peers " + ", ".join(peers))
    return ", ".join(parts) or "nothing"


async def _serve(site, role: str, cfg: SiteConfig, config_path: str,
                 power: powerswitch.PowerSwitch | None = None) -> str | None:
    """Run ``site`` until SIGTERM/SIGINT; the signal's name, or None if the run
    ended by itself.  An error of the run (a port taken, a journal that does
    not match) propagates.  ``power``: the chaos runner's power switch
    (host/disk/powerswitch.py), armed on this loop."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    caught: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        caught.append(sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    if power is not None:
        power.arm(loop)
    log.info("%s %s starting: %s (pid %d, config %s)", role, cfg.site,
             _listening(cfg, role), os.getpid(), config_path)
    if cfg.tls is None:
        log.warning("%s %s: tls = false: the links to the other sites are plaintext and not "
                    "authenticated; anyone who reaches the data port can pose as a peer "
                    "(docs/security.md)", role, cfg.site)
    run = asyncio.create_task(site.run(), name=f"{role} run")
    stopper = asyncio.create_task(stop.wait(), name="stop signal")
    restart = getattr(site, "restart", None)     # a swap: restart into the other role
    if restart is not None:
        asyncio.create_task(restart.wait(), name="restart").add_done_callback(
            lambda _: (caught.append(RESTART), stop.set()))
    try:
        await asyncio.wait({run, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if run.done():
            run.result()
            return None
        loop.set_exception_handler(_quiet_cancel)
        # Cancel again until the run ends: a cancelled server may sit in
        # wait_closed() for connections that the cancel did not reach.
        deadline = time.monotonic() + STOP_GRACE
        while not run.done() and time.monotonic() < deadline:
            run.cancel()
            await asyncio.wait({run}, timeout=min(0.5, deadline - time.monotonic()))
        if not run.done():
            log.warning("%s %s did not stop within %g s; leaving anyway", role, cfg.site,
                        STOP_GRACE)
        elif not run.cancelled() and run.exception() is not None:
            log.warning("%s %s: %s while stopping", role, cfg.site, run.exception())
        return caught[0]
    finally:
        loop.set_exception_handler(_quiet_cancel)     # also when the run failed
        stopper.cancel()
        await _close(site, role)
        await _cancel_the_rest()


def _quiet_cancel(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """The loop's error handler while stopping.  Python 3.11's start_server
    calls ``task.exception()`` on a connection handler task even when it was
    cancelled (fixed in 3.12), which logs a CancelledError traceback for
    every connection open at the stop; that one is expected here."""
    if isinstance(context.get("exception"), asyncio.CancelledError):
        log.debug("while stopping: %s", context.get("message"))
        return
    loop.default_exception_handler(context)


async def _close(site, role: str) -> None:
    """The site's own clean-up hook, if it has one: ``aclose()`` or ``close()``."""
    closer = getattr(site, "aclose", None) or getattr(site, "close", None)
    if closer is None:
        return
    try:
        result = closer()
        if inspect.isawaitable(result):
            await asyncio.wait_for(result, STOP_GRACE)
    except Exception as exc:              # a failed close must not hide the stop
        log.warning("%s: close failed: %s", role, exc)
        log.debug("close failed", exc_info=True)


async def _cancel_the_rest(timeout: float = 2.0) -> None:
    """Cancel the tasks the site left behind (link handlers, timers) and
    collect their ends here, so the loop's shutdown has nothing to complain
    about in the log."""
    me = asyncio.current_task()
    rest = [t for t in asyncio.all_tasks() if t is not me]
    for t in rest:
        t.cancel()
    if not rest:
        return
    done, _ = await asyncio.wait(rest, timeout=timeout)
    for t in done:
        if not t.cancelled() and t.exception() is not None:
            log.debug("task %s ended with %r while stopping", t.get_name(), t.exception())


def _early_stop(signum, frame) -> None:
    raise _Interrupted(signal.Signals(signum).name)


def _run(args: argparse.Namespace) -> int:
    role = args.command
    level = getattr(logging, args.log_level.upper())
    # force: `tricopy relay` (host/cli.py) has configured logging already, with
    # a format that names no role; the site's lines look the same however it
    # was started (docs/operations.md shows them).
    logging.basicConfig(level=level, force=True,
                        format=f"%(asctime)s {role} %(levelname)s %(name)s: %(message)s")
    errors: tuple[type[BaseException], ...] = (StartupError, ValueError, OSError)
    if role == "relay":
        from .relay.site import RelayError
        errors += (RelayError,)
    # Until the event loop takes the signals over, a stop signal ends the start.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _early_stop)
    with contextlib.ExitStack() as stack:
        try:
            # A test tool's simulated disk (never set in operation): every file
            # call of the site below goes through it, from the first.
            power = powerswitch.from_env()
            if power is not None:
                stack.enter_context(power)
        except ValueError as exc:
            print(f"tricopy {role}: {exc}", file=sys.stderr)
            return EXIT_STARTUP
        return _run_site(args, role, errors, power)


def _run_site(args: argparse.Namespace, role: str, errors: tuple, power) -> int:
    cfg = None
    try:
        cfg = load_config(args.config)
        cfg, role = swapped_role(cfg, role)
        if role != args.command:
            for h in logging.getLogger().handlers:
                h.setFormatter(logging.Formatter(
                    f"%(asctime)s {role} %(levelname)s %(name)s: %(message)s"))
            log.warning("site %s (configured as the %s) runs as the %s: its groups were "
                        "swapped (docs/operations.md, Swap)", cfg.site, args.command, role)
        prepare(cfg, role)
        site = _make_site(args, cfg, role)
        how = uvloop.run(_serve(site, role, cfg, args.config, power))
    except _Interrupted as exc:
        how = str(exc)
    except errors as exc:
        log.debug("%s cannot start", role, exc_info=True)
        where = "" if isinstance(exc, ConfigError) else f"{args.config}: "  # it names the file
        print(f"tricopy {role}: {where}{_one_line(exc)}", file=sys.stderr)
        return EXIT_STARTUP
    name = cfg.site if cfg is not None else args.config
    if how == RESTART:
        # Same process (PID, log file, supervisor) in its new role: exec the
        # same command line, which reads the swapped role from the JNLG table.
        log.warning("%s %s restarts in its new role after a swap", role, name)
        logging.shutdown()
        os.execv(sys.executable, sys.orig_argv)
    if how is None:
        log.error("%s %s stopped (its run ended by itself)", role, name)
        return EXIT_ENDED
    log.info("%s %s stopped (%s)", role, name, how)
    return 0


def register(subparsers) -> None:
    """Add ``primary``, ``relay`` and ``secondary`` to an argparse subparsers object."""
    for name, text in (("primary", "run the primary site (PVOLs, MASTER groups)"),
                       ("relay", "run the relay site (journal engine and journal volume)"),
                       ("secondary", "run the secondary site (SVOLs, RESTORE groups)")):
        p = subparsers.add_parser(name, help=text, description=text)
        p.add_argument("--config", required=True, help="the site's TOML file")
        p.add_argument("--log-level", default="info",
                       choices=["debug", "info", "warning", "error"])
        if name == "relay":
            p.add_argument("--engine", default="model", choices=["model", "sim", "board", "port"],
                           help="journal engine backend (default: model)")
            p.add_argument("--engine-url", default=None,
                           help="pyserial URL of a board/port engine (/dev/ttyUSB0, socket://h:p)")
            p.add_argument("--engine-mode", default=None, choices=["descriptor", "data"],
                           help="descriptor: the engine gets control data only and the relay "
                                "stores the data (the default); data: the engine keeps every "
                                "journal too (its ring must be the journal size)")
        p.set_defaults(func=_run, command=name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tricopy-site")
    register(parser.add_subparsers(required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
