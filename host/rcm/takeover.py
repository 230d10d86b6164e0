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
epoch and fences itself (its exports answer EPERM); ``tricopy failback``
gives the group back to it with a delta (host/rcm/failback.py).

With the primary alive and healthy, the same command makes a planned swap
instead (:func:`swap`): no data is lost or copied, and replication goes on
the other way through the relay.
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


def _healthy_primary(sites: Sites, grname: str) -> dict | None:
    """The primary's group status if a planned swap can start from it."""
    p = _status_or_none(sites, "primary", grname)
    if p is None or p.get("fenced") or p["grsts"] != "PAIR" or not p.get("connected"):
        return None
    return p


def _wait_role(sites: Sites, role: str, want: str, timeout: float) -> None:
    """Until the site at ``role``'s address runs as ``want`` (it restarts into it)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if sites.call(role, "status")["role"] == want:
                return
        except RcmError:
            pass                   # restarting: refused, or closed mid-answer
        if time.monotonic() > deadline:
            raise RcmError(f"the site at the {role}'s address did not come back as the {want} "
                           f"within {timeout:g} s: see its log")
        time.sleep(POLL)


def swap(sites: Sites, grname: str, *, timeout: float = 300.0, say=lambda line: None) -> dict:
    """Planned swap: the secondary becomes the primary and the primary the
    secondary, replication continuing the other way through the relay, with
    no copy (docs/operations.md, "Swap").  Every site must be up and PAIR.

    1. The primary stops taking writes and waits until the relay ACKed all of
       them (``swap_out``; cancelled if anything below fails before step 2).
    2. The relay is fenced at the new epoch: it takes nothing more from the
       old primary, and answers its last SEQ#.
    3. The secondary restores up to that SEQ#: both volumes hold the same.
    4. The relay moves to the new epoch and turns around (durably).
    5. The old primary becomes the restore side, the secondary the primary;
       each restarts into its role (same process, same command line).
    """
    t0 = time.monotonic()
    prim = sites.group_status("primary", grname)
    sec = sites.group_status("secondary", grname)
    relay = sites.group_status("relay", grname)
    for role, st in (("primary", prim), ("relay", relay), ("secondary", sec)):
        if st.get("swap_blocker"):
            raise RcmError(f"no swap: the {role}'s config: {st['swap_blocker']}; nothing was "
                           f"changed")
    if sec.get("takeover") or not sec["consistent"]:
        raise RcmError(f"no swap: the secondary is {sec['grsts']}"
                       f"{' (taken over)' if sec.get('takeover') else ', not consistent'}; "
                       f"nothing was changed")
    epoch = max(prim["epoch"], sec["epoch"], relay["epoch"], relay["fence_epoch"]) + 1
    deadline = time.monotonic() + min(timeout, 30.0)
    while not prim.get("connected") and prim["grsts"] == "PAIR":     # e.g. just rejoined
        if time.monotonic() > deadline:
            break                  # swap_out says why
        time.sleep(POLL)
        prim = sites.group_status("primary", grname)
    out = sites.call("primary", "swap_out", group=grname, epoch=epoch)
    say(f"the primary stopped taking writes at PSEQ {out['last_pseq']}, all ACKed by the relay")
    try:
        last = sites.call("relay", "fence", group=grname, epoch=epoch)["last_seq"]
    except RcmError:
        sites.call("primary", "swap_cancel", group=grname)
        raise
    say(f"relay fenced at epoch {epoch}; the secondary restores up to SEQ# {last}")
    deadline = time.monotonic() + timeout
    while sec["last_restored"] < last:
        if time.monotonic() > deadline:
            raise RcmError(f"the secondary restored up to SEQ# {sec['last_restored']} of {last} "
                           f"within {timeout:g} s.  The relay stays fenced: run the command "
                           f"again once it catches up")
        time.sleep(POLL)
        sec = sites.group_status("secondary", grname)
    r = sites.call("relay", "rejoin", group=grname, epoch=epoch, restored=last, reverse=True)
    sites.call("primary", "become_restore", group=grname, epoch=epoch, restored=r["last_seq"])
    sites.call("secondary", "become_master", group=grname, epoch=epoch, restored=r["last_seq"],
               relay_last_tag=r["last_tag"])
    _wait_role(sites, "secondary", "primary", timeout)
    rto = time.monotonic() - t0
    _wait_role(sites, "primary", "secondary", timeout)
    say(f"roles swapped at SEQ# {r['last_seq']}: the writer is now the site that was the "
        f"secondary (writable {rto:.2f} s after the command started)")
    return {"epoch": epoch, "seq": r["last_seq"], "swap": True, "rto_seconds": round(rto, 3)}


def takeover(sites: Sites, grname: str, *, force: bool = False, timeout: float = 300.0,
             say=lambda line: None, swap_if_alive: bool = True) -> dict:
    """Take group ``grname`` over at the secondary; returns the secondary's record
    ({"epoch", "seq", "time", "forced", ...}) plus what the run saw.  With the
    primary healthy (PAIR, connected to the relay) and every site configured
    for it, a planned swap instead (:func:`swap`)."""
    t0 = time.monotonic()
    sec = sites.group_status("secondary", grname)
    if sec.get("takeover"):
        return {**sec["takeover"], "already": True}
    if swap_if_alive and not force and _healthy_primary(sites, grname) is not None:
        return swap(sites, grname, timeout=timeout, say=say)
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
    record["rto_seconds"] = round(time.monotonic() - t0, 3)    # command to writable exports
    return record


def _run(args) -> int:
    try:
        sites = _sites(args)
        rec = takeover(sites, args.group, force=args.force, timeout=args.timeout,
                       say=lambda line: print(f"takeover: {line}"),
                       swap_if_alive=not args.no_swap)
    except RcmError as exc:
        print(f"tricopy takeover: {exc}", file=sys.stderr)
        return 1
    if rec.get("already"):
        print(f"group {args.group} was taken over already at SEQ# {rec['seq']} (epoch "
              f"{rec['epoch']})")
        return 0
    if rec.get("swap"):
        print(f"group {args.group}: planned swap done at SEQ# {rec['seq']}, epoch "
              f"{rec['epoch']}: the site that was the secondary is the primary now (its NBD "
              f"exports read-write after {rec['rto_seconds']:g} s) and replicates to the old "
              f"primary through the relay; `tricopy failback` swaps back")
        return 0
    lost = ""
    if rec["relay_last_seq"] is None:
        lost = " (forced without the relay: journals after it that only the relay held are lost)"
    print(f"group {args.group} taken over at the secondary: it holds every journal up to SEQ# "
          f"{rec['seq']} (TIME {rec['time']} ns on the relay engine's clock){lost}; epoch "
          f"{rec['from_epoch']} -> {rec['epoch']}; its NBD exports are read-write now "
          f"({rec['rto_seconds']:g} s after the command started)")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "takeover", help="make the secondary the primary of a group (the primary site is lost)",
        description="Takeover at the secondary (docs/operations.md, Takeover).")
    p.add_argument("--group", required=True, help="GRNAME of the journal group")
    p.add_argument("--force", action="store_true",
                   help="take over without the relay: journals only it holds are lost")
    p.add_argument("--no-swap", action="store_true",
                   help="even with the primary healthy, take over and fence it instead of a "
                        "planned swap")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds to wait for the secondary to restore the relay's journals")
    _site_args(p)
    p.set_defaults(func=_run)
