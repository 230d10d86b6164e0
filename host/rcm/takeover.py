"""``tricopy takeover``: make the secondary's copy the primary (patent Fig. 11).

Run against the secondary when the primary site is lost (or must stop being
the writer).  The order is what makes it safe:

1. **Fence the relay** at the new epoch: from now on it refuses any primary
   below it (a primary that was only cut off, not dead, cannot add journals
   behind our back), then settles what it already took; it answers with the
   last SEQ# it issued.
2. **Drain**: wait until the secondary has restored every journal up to that
   SEQ#.  This is what makes the loss zero when only the primary site is
   gone: each write the primary acknowledged was durable at the relay.
3. **Promote the secondary**: it applies what it staged, saves its restore
   point, makes the new epoch durable and serves its volumes read-write
   under the same NBD export names.  It records the SEQ# and TIME it holds.

Without the relay, step 2 is impossible and the journals the relay still
holds would be lost: the command refuses unless ``--force``, and then says
exactly which SEQ# the new primary holds.

The old primary, when it comes back, is refused by the relay at its old
epoch and fences itself (its exports answer EPERM).  What is not built yet:
the planned swap that reverses replication, and the failback with a delta
(the site that took over records every chunk it writes for it).
"""

from __future__ import annotations

import sys
import time

from .pairs import POLL, RcmError, Sites, Unreachable, _site_args, _sites

__all__ = ["takeover", "register"]


def _status_or_none(sites: Sites, role: str, grname: str) -> dict | None:
    try:
        return sites.group_status(role, grname)
    except Unreachable:
        return None


def takeover(sites: Sites, grname: str, *, force: bool = False, timeout: float = 300.0,
             say=lambda line: None) -> dict:
    """Take group ``grname`` over at the secondary; returns the secondary's record
    ({"epoch", "seq", "time", "forced", ...}) plus what the run saw."""
    sec = sites.group_status("secondary", grname)
    if sec.get("takeover"):
        return {**sec["takeover"], "already": True}
    # Refuse what no drain can fix before fencing anything: a fenced relay
    # takes no more writes from the old primary, so from there on the
    # takeover has to be finished.
    if sec["grsts"] in ("SMPL", "COPY") or (not sec["consistent"] and not sec["catching_up_to"]):
        why = sec["reason"] or f"the group is {sec['grsts']} there"
        raise RcmError(f"the secondary's volumes are no consistent image ({why}): there is "
                       f"nothing to take over; nothing was changed")
    epoch = sec["epoch"] + 1
    primary = _status_or_none(sites, "primary", grname)
    if primary is not None and not primary.get("fenced"):
        say(f"the primary answers ({primary['grsts']}): it is fenced by the relay and refuses "
            f"writes from now on")
    try:
        fence = sites.call("relay", "fence", group=grname, epoch=epoch)
    except Unreachable as exc:
        if not force:
            raise RcmError(f"{exc}.  It may hold journals the secondary has not restored (the "
                           f"secondary holds SEQ# {sec['last_restored']}): bring the relay back "
                           f"and run takeover again, or accept losing them with --force") from None
        say(f"relay not reachable; --force: taking over at the secondary's SEQ# "
            f"{sec['last_restored']}")
        last = None
    else:
        last = fence["last_seq"]
        say(f"relay fenced at epoch {epoch}; restoring up to its last SEQ# {last}")
        deadline = time.monotonic() + timeout
        while sec["last_restored"] < last:
            if time.monotonic() > deadline:
                why = sec.get("reason") or ("the relay is not connected to it"
                                            if not sec.get("connected") else "")
                raise RcmError(f"the secondary restored up to SEQ# {sec['last_restored']} of "
                               f"{last} within {timeout:g} s{': ' + why if why else ''}.  The "
                               f"relay stays fenced (the old primary can no longer write): "
                               f"run takeover again once it catches up, or with --force to "
                               f"take over at what it holds")
            time.sleep(POLL)
            sec = sites.group_status("secondary", grname)
    record = sites.call("secondary", "takeover", group=grname, epoch=epoch, force=force,
                        relay_seq=last)
    record["relay_last_seq"] = last
    return record


def _run(args) -> int:
    try:
        sites = _sites(args)
        rec = takeover(sites, args.group, force=args.force, timeout=args.timeout,
                       say=lambda line: print(f"takeover: {line}"))
    except RcmError as exc:
        print(f"tricopy takeover: {exc}", file=sys.stderr)
        return 1
    if rec.get("already"):
        print(f"group {args.group} was taken over already at SEQ# {rec['seq']} (epoch "
              f"{rec['epoch']})")
        return 0
    lost = ""
    if rec["relay_last_seq"] is None:
        lost = " (forced without the relay: journals after it that only the relay held are lost)"
    print(f"group {args.group} taken over at the secondary: it holds every journal up to SEQ# "
          f"{rec['seq']} (TIME {rec['time']} ns on the relay engine's clock){lost}; epoch "
          f"{rec['from_epoch']} -> {rec['epoch']}; its NBD exports are read-write now")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "takeover", help="make the secondary the primary of a group (the primary site is lost)",
        description="Takeover at the secondary (docs/operations.md, Takeover).")
    p.add_argument("--group", required=True, help="GRNAME of the journal group")
    p.add_argument("--force", action="store_true",
                   help="take over without the relay: journals only it holds are lost")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds to wait for the secondary to restore the relay's journals")
    _site_args(p)
    p.set_defaults(func=_run)
