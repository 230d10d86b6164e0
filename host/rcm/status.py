"""``tricopy status``: one verdict per group from all three sites, for people and scripts.

:func:`gather_status` asks every site (an unreachable one is recorded as
such, a reachable one without the group says which groups it has);
:func:`assess` turns the three views into the group's **headline**: the worst
condition found, with the site and the reason, and a level scripts can use:

* 0 ``healthy``: PAIR everywhere, both links up, the SVOLs a consistent image;
* 1 ``degraded``: host writes are served but the copy is behind or not being
  made (a copy running, a split, the secondary or its link down, taken over);
* 2 ``down``: host writes fail or will stall (the primary or the relay
  unreachable or suspended on an error, the primary fenced).

``tricopy status`` exits with the worst level over the groups it shows.  It
also gives the RPO right now (journals, bytes and seconds not yet restored)
and what a takeover would lose now.  ``--watch`` prints a timestamp per
sample; ``--watch --json`` prints JSON lines.  A closed pipe ends it quietly.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime

from .pairs import ROLES, RcmError, Sites, Unreachable, _site_args, _sites

__all__ = ["HEALTHY", "DEGRADED", "DOWN", "gather_status", "assess", "format_status", "register"]

HEALTHY, DEGRADED, DOWN = 0, 1, 2
LEVELS = ("healthy", "degraded", "down")


def gather_status(sites: Sites, grname: str | None = None) -> list[dict]:
    """One row per group: the three sites' views (None: site unreachable;
    {"missing": True, "has": [...]}: reachable, but without this group)."""
    views, reach = {}, {}
    for role in ROLES:
        try:
            views[role] = {g["grname"]: g for g in sites.call(role, "status")["groups"]}
            reach[role] = True
        except Unreachable:
            views[role], reach[role] = {}, False
    names = sorted(set().union(*(v.keys() for v in views.values())))
    if grname is not None:
        if grname not in names:
            raise RcmError(f"no reachable site knows a group named {grname!r}")
        names = [grname]
    rows = []
    for name in names:
        row = {"group": name}
        for role in ROLES:
            v = views[role].get(name)
            if v is None and reach[role]:
                v = {"missing": True, "has": sorted(views[role])}
            row[role] = v
        p, r, s = (_present(row[x]) for x in ROLES)
        if r:
            issued = r["next_seq"] - 1
            restored = s["last_restored"] if s else None
            row.update(journal_used_pct=r["used_pct"], seq_issued=issued,
                       # A restarted relay counts what it holds as sent; never show
                       # fewer forwarded than the secondary restored.
                       seq_forwarded=max(r["forwarded"], restored or 0),
                       backlog_entries=r["held"], backlog_bytes=r["used"], lag_s=r["lag"],
                       journal_age_s=r.get("oldest_age_s"))
        if s:
            row.update(seq_restored=s["last_restored"], consistent=s["consistent"],
                       restored_age_s=s.get("restored_age_s"))
        if p:
            row.update(copy_done=p["copy_done"], copy_total=p["copy_total"],
                       copy_pending_bytes=p["copy_pending_bytes"])
        row.update(assess(row))
        rows.append(row)
    return rows


def _present(v: dict | None) -> dict | None:
    return None if v is None or v.get("missing") else v


def _where(v: dict | None, role: str) -> str:
    if v is None:
        return f"{role} unreachable"
    if v.get("missing"):
        has = ", ".join(v["has"]) or "none"
        return f"{role} has no such group (its groups: {has})"
    return ""


def assess(row: dict) -> dict:
    """The headline of one group: {"state", "level", "site", "why", "rpo", "takeover_loss",
    "links"} (worst condition wins)."""
    p, r, s = (_present(row[x]) for x in ROLES)
    found: list[tuple[int, str, str, str]] = []      # (level, state, site, why)

    def note(level, state, site, why):
        found.append((level, state, site, why))

    taken = s.get("takeover") if s else None
    if taken:
        note(DEGRADED, "TAKEN OVER", "secondary",
             f"the secondary site is the primary since epoch {taken['epoch']} (SEQ# "
             f"{taken['seq']}); no replication until the old primary site rejoins")
    at_relay = r.get("takeover") if r else None
    if at_relay:
        taken = at_relay
        note(DEGRADED, "TAKEN OVER", "relay",
             f"the relay site is the primary since epoch {at_relay['epoch']} (SEQ# "
             f"{at_relay['seq']}), replicating to the secondary; the old primary site is "
             f"fenced when it returns")
    if p is None:
        if not taken:
            note(DOWN, "PRIMARY LOST", "primary", _where(row["primary"], "primary"))
    elif p.get("fenced"):
        note(DEGRADED if taken else DOWN, "FENCED", "primary", p["reason"])
    elif p["grsts"] == "SMPL":
        note(DEGRADED, "SMPL", "primary", "not paired: no copy is made (`tricopy pair create`)")
    elif p["grsts"] == "SUSP":
        if p.get("split") or p.get("tracking"):    # host writes go on, tracked
            note(DEGRADED, "SUSP", "primary", p["reason"] or "split by the operator")
        else:
            note(DOWN, "SUSP", "primary", p["reason"])
    elif p["grsts"] == "COPY":
        total = p["copy_total"] or 1
        note(DEGRADED, "COPY", "primary", f"copy {p['copy_done']}/{p['copy_total']} chunks "
                                          f"({100 * p['copy_done'] // total}%): the SVOLs are no "
                                          f"image until it ends")
    paired = p is not None and p["grsts"] in ("PAIR", "COPY") and not p.get("fenced")
    if r is None:
        if paired:
            note(DOWN, "RELAY LOST", "relay", _where(row["relay"], "relay")
                 + ": host writes stall, then go on tracked (or fail: relay_loss = \"fence\")")
        elif not taken:
            note(DEGRADED, "RELAY LOST", "relay", _where(row["relay"], "relay"))
    elif r["grsts"] == "SUSP" and not taken:
        note(DOWN if paired else DEGRADED, "SUSP", "relay", r["reason"])
    if s is None:
        note(DEGRADED, "SECONDARY LOST", "secondary", _where(row["secondary"], "secondary"))
    elif not taken or at_relay:
        if s["grsts"] == "SUSP":
            note(DEGRADED, "SUSP", "secondary", s["reason"])
        elif not s["consistent"] and (p is None or p["grsts"] != "COPY"):
            note(DEGRADED, "NOT CONSISTENT", "secondary",
                 s["reason"] or "the SVOLs are not a consistent image")
    links = {"primary->relay": None if p is None else bool(p.get("connected")),
             "relay->secondary": None if r is None else bool(r.get("secondary_connected"))}
    if paired and r is not None and links["primary->relay"] is False:
        note(DOWN, "LINK DOWN", "primary", "the primary is not connected to the relay")
    if paired and r is not None and links["relay->secondary"] is False and s is not None:
        note(DEGRADED, "LINK DOWN", "relay", "the relay is not connected to the secondary")
    rpo = None
    if r is not None:
        rpo = {"journals": r["held"], "bytes": r["used"], "seconds": r["lag"]}
    if taken:
        loss = "nothing (taken over already)"
    elif s is None:
        loss = "no takeover possible: the secondary is unreachable"
    elif r is not None:
        loss = (f"nothing while the relay survives; if it is lost too, SEQ# "
                f"{s['last_restored'] + 1}..{r['next_seq'] - 1} "
                f"({r['next_seq'] - 1 - s['last_restored']} journals, {r['lag']:.2f} s)"
                if r["next_seq"] - 1 > s["last_restored"] else "nothing: the secondary has it all")
    else:
        loss = (f"relay unreachable: a forced takeover keeps SEQ# {s['last_restored']}; what "
                f"only the relay holds is lost if it does not come back")
    if not found:
        found.append((HEALTHY, "PAIR", "", ""))
    level, state, site, why = max(found, key=lambda f: f[0])
    return {"state": state, "level": level, "health": LEVELS[level], "site": site, "why": why,
            "problems": [{"level": f[0], "state": f[1], "site": f[2], "why": f[3]}
                         for f in found if f[0] > HEALTHY],
            "links": links, "rpo": rpo, "takeover_loss": loss}


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def format_status(rows: list[dict]) -> str:
    """Human-readable ``tricopy status``."""
    out = []
    for row in rows:
        p, r, s = (_present(row[x]) for x in ROLES)
        at = f" at the {row['site']}" if row["site"] else ""
        out.append(f"group {row['group']}: {row['state']}{at} -- {row['health']}")
        for prob in row["problems"]:
            out.append(f"  {prob['site']}: {prob['state']}: {prob['why']}")
        states = " / ".join(f"{role} {v['grsts']}" if (v := _present(row[role]))
                            else _where(row[role], role) for role in ROLES)
        out.append(f"  sites    {states}")
        link = lambda up: "?" if up is None else ("up" if up else "DOWN")   # noqa: E731
        out.append("  links    " + ", ".join(f"{k} {link(v)}" for k, v in row["links"].items()))
        for v in (p, r, s):
            if v and v.get("recovery_warning"):
                out.append(f"  warning: {v['recovery_warning']}")
        if row["rpo"] is not None:
            rpo = row["rpo"]
            out.append(f"  RPO      {rpo['journals']} journals / {_mib(rpo['bytes'])} / "
                       f"{rpo['seconds']:.2f} s not yet restored")
        else:
            out.append("  RPO      unknown: the relay is unreachable")
        out.append(f"  takeover now loses: {row['takeover_loss']}")
        if r:
            age = row.get("journal_age_s")
            out.append(f"  journal  {row['journal_used_pct']:5.1f}% used" +
                       (f", oldest journal stamped {age:.1f} s ago" if age is not None else ""))
            seq = f"  SEQ#     issued {row['seq_issued']}  forwarded {row['seq_forwarded']}"
            out.append(seq + (f"  restored {row['seq_restored']}" if s else ""))
        if s and s.get("takeover"):
            t = s["takeover"]
            out.append(f"  takeover the secondary site is the primary at epoch {t['epoch']}: it took "
                       f"over at SEQ# {t['seq']}{' (forced)' if t['forced'] else ''}; "
                       f"{_mib(s['written_bytes'])} of chunks written since")
        elif s:
            age = s.get("restored_age_s")
            out.append(f"  SVOLs    {'consistent' if s['consistent'] else 'NOT consistent'}"
                       f" (restored {s['last_restored']}" +
                       (f", the image of {age:.1f} s ago)" if age is not None else ")"))
        if r and r.get("local"):            # data volumes at the relay (Fig. 12)
            lc = r["local"]
            state = "consistent" if lc["consistent"] and lc["grsts"] != "SUSP" else \
                ("SUSP: " + lc["reason"] if lc["grsts"] == "SUSP" else
                 "NOT consistent" + (": " + lc["reason"] if lc["reason"] else ""))
            out.append(f"  relay copy {state} (restored {lc['last_restored']}, "
                       f"{len(lc['volumes'])} volume(s))")
        if p:
            for d in p["dvols"]:
                out.append(f"  IDX {d['idx']}    {d['volsts']:4}  BJPtr {d['bjptr']}/{d['blocks']}"
                           f" blocks  {d['volname']}")
            if p["grsts"] == "COPY":
                out.append(f"  copy     {p['copy_done']}/{p['copy_total']} chunks, "
                           f"{_mib(p['copy_pending_bytes'])} still to send")
            elif p["copy_pending_bytes"]:
                out.append(f"  bitmap   {_mib(p['copy_pending_bytes'])} of chunks differ: "
                           f"`tricopy pair resync` sends them")
    return "\n".join(out) if out else "no groups"


def _run_status(args) -> int:
    try:
        sites = _sites(args)
        while True:
            try:
                rows = gather_status(sites, args.group)
            except RcmError as exc:
                if not args.watch:
                    raise
                rows, err = [], str(exc)
            else:
                err = ""
            level = max((row["level"] for row in rows), default=DOWN)
            stamp = datetime.now().astimezone().isoformat(timespec="seconds")
            if args.json and args.watch:        # JSON lines: one sample per line
                print(json.dumps({"time": stamp, "level": level, "groups": rows,
                                  **({"error": err} if err else {})}), flush=True)
            elif args.json:
                print(json.dumps({"level": level, "groups": rows}, indent=1))
            else:
                if args.watch:
                    print(f"--- {stamp}")
                print(format_status(rows) if rows else f"tricopy status: {err}", flush=True)
            if not args.watch:
                return level
            time.sleep(args.watch)
            if not args.json:
                print()
    except RcmError as exc:
        print(f"tricopy status: {exc}", file=sys.stderr)
        return DOWN
    except BrokenPipeError:
        # `tricopy status --json | head`: the reader is gone; say nothing more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 0


def register(subparsers) -> None:
    s = subparsers.add_parser("status", help="one verdict per group from all three sites",
                              description="Status (docs/operations.md, Status). Exit status: "
                                          "0 healthy, 1 degraded, 2 down.")
    s.add_argument("--group", help="only this GRNAME")
    s.add_argument("--json", action="store_true",
                   help="machine-readable output (JSON lines with --watch)")
    s.add_argument("--watch", type=float, metavar="SECONDS", help="repeat every SECONDS")
    _site_args(s)
    s.set_defaults(func=_run_status)
