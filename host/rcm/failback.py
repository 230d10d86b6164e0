"""``tricopy failback``: give the group back to its old primary site, with a delta.

After ``tricopy takeover`` the secondary site is the writer and the old
primary site, when it returns, is fenced.  Failback moves the data back and
puts replication on its configured path again (primary -> relay ->
secondary) without a full copy.  The order is what makes it safe:

1. **Fence the old primary** explicitly at the takeover's epoch (a site that
   was suspended never talks to the relay and would not know) and ask it
   which chunks may differ: the writes it applied that the relay never
   ACKed and the extents an unclean stop left (its copy bitmap).
2. **Quiesce the site that took over** (durably: it takes no more host
   writes, even after a restart) and ask it which chunks it wrote since the
   takeover (``<grname>.written``).
3. **Copy the union** from the site that took over to the old primary's
   PVOLs, then flush them.  With ``--digest`` every chunk is compared by
   BLAKE2b digest and only the differing ones are copied: the fallback that
   needs no record at all (a forced takeover, a lost ``.written``).
4. **Relay** to the new epoch: what it held is on the taken-over volumes
   already; it releases it and stamps the next journals with the new epoch.
5. **The site that took over becomes the restore side again** at the new
   epoch, its restore point the relay's last SEQ# (read-only again).
6. **The old primary rejoins** at the new epoch: copy bitmap and activity
   log empty, journals after the relay's last PSEQ.

Each step is idempotent and the durable quiesce holds until step 5, so a
failback interrupted anywhere is finished by running it again.  The delta
travels through the host that runs the command (its control connections);
run it near the sites for a large delta.
"""

from __future__ import annotations

import sys
import time

from .pairs import RcmError, Sites, Unreachable, _configured, _site_args, progress_bar
from .takeover import swap
from .jnlg import COPY_CHUNK

__all__ = ["failback", "register"]

DIGEST_BATCH = 256      # chunks per digest request (the sites' cap)


def _ranges(chunks: dict[int, set[int]], chunk: int) -> list[tuple[int, int]]:
    return [(idx, c * chunk) for idx in sorted(chunks) for c in sorted(chunks[idx])]


def _digest_delta(sites: Sites, grname: str, sizes: dict[int, int],
                  other: str = "secondary") -> dict[int, set[int]]:
    """Chunks (COPY_CHUNK) whose digests differ between the primary and ``other``
    (the site that took over: the secondary, or the relay's data volumes)."""
    out: dict[int, set[int]] = {}
    for idx, size in sizes.items():
        n = -(-size // COPY_CHUNK)
        for first in range(0, n, DIGEST_BATCH):
            count = min(DIGEST_BATCH, n - first)
            a = sites.call("primary", "digest", group=grname, idx=idx, first=first,
                           count=count)["digests"]
            b = sites.call(other, "digest", group=grname, idx=idx, first=first,
                           count=count, pseq=0)["digests"]
            out.setdefault(idx, set()).update(first + i for i, (x, y) in enumerate(zip(a, b))
                                              if x != y)
    return out


def _copy(sites: Sites, grname: str, src: str, todo: list[tuple[int, int]], chunk: int,
          sizes: dict[int, int], progress) -> int:
    """Copy the chunks ``todo`` from ``src`` (the site that took over) to the fenced
    old primary's PVOLs; returns the bytes moved."""
    moved = 0
    for i, (idx, off) in enumerate(todo):
        length = min(chunk, sizes[idx] - off)
        data = sites.call(src, "read", group=grname, idx=idx, offset=off,
                          length=length)["data"]
        sites.call("primary", "write_fenced", group=grname, idx=idx, offset=off, data=data)
        moved += length
        if progress:
            progress({"grsts": "COPY", "copy_total": len(todo), "copy_done": i + 1})
    return moved


def failback(sites: Sites, grname: str, *, digest: bool = False, progress=None,
             say=lambda line: None) -> dict:
    """Fail group ``grname`` back to its old primary; returns what was moved."""
    t0 = time.monotonic()
    sec = sites.group_status("secondary", grname)
    try:
        relay = sites.group_status("relay", grname)
        prim = sites.group_status("primary", grname)
    except Unreachable as exc:
        raise RcmError(f"{exc}: a failback needs the old primary and the relay up (the "
                       f"old primary receives the delta, the relay carries the journals "
                       f"after it)") from None
    if (relay.get("takeover") or {}).get("site") == "relay":
        return _from_relay(sites, grname, relay, prim, t0, progress, say)
    took = sec["takeover"] or {}
    epoch = (took.get("failback") or max(took["epoch"], relay["fence_epoch"]) + 1) if took \
        else sec["epoch"]
    copied = relay["epoch"] == epoch     # the relay moves on only after the copy's flush
    if not took and not (copied and prim["fenced"]):
        if not prim["fenced"] and prim["epoch"] == sec["epoch"]:
            return {"already": True, "epoch": prim["epoch"]}
        raise RcmError(f"group {grname} was not taken over at the secondary (it is the "
                       f"{sec['role']} there, epoch {sec['epoch']}): nothing to fail back")
    sizes = {d["idx"]: d["size"] for d in prim["dvols"]}
    full = sum(sizes.values())
    moved = chunks_copied = 0
    restored = took.get("seq", sec["last_restored"])
    if copied:
        say(f"a failback to epoch {epoch} was interrupted after its copy; finishing it")
    else:
        div = sites.call("primary", "fence", group=grname, epoch=took["epoch"])
        say(f"old primary fenced at epoch {div['fence_epoch']}")
        q = sites.call("secondary", "quiesce", group=grname, epoch=epoch)
        say(f"secondary quiesced: it takes no more writes (failback to epoch {epoch})")
        if digest:
            want = _digest_delta(sites, grname, sizes)
            chunk = COPY_CHUNK
        else:
            if q["forced"]:
                raise RcmError("the takeover was forced (journals only the relay held were "
                               "lost): the two sites may differ anywhere, not only where they "
                               "recorded writes; run `tricopy failback --digest`")
            if q["chunk"] != div["chunk"]:
                raise RcmError(f"the two sites track chunks of {q['chunk']} and "
                               f"{div['chunk']} bytes; run `tricopy failback --digest`")
            chunk = q["chunk"]
            want = {}
            for src in (q["written"], div["chunks"]):
                for idx, cs in src.items():
                    want.setdefault(int(idx), set()).update(cs)
        todo = _ranges(want, chunk)
        say(f"delta: {len(todo)} chunk(s) of {chunk >> 10} KiB ("
            + ("digests compared" if digest else "written at the secondary since the takeover "
               "+ not acknowledged at the old primary") + ")")
        moved = _copy(sites, grname, "secondary", todo, chunk, sizes, progress)
        chunks_copied = len(todo)
        sites.call("primary", "write_fenced", group=grname, flush=True)   # before step 4
    r = sites.call("relay", "rejoin", group=grname, epoch=epoch, restored=restored)
    say(f"relay at epoch {epoch}, journals from SEQ# {r['last_seq'] + 1}")
    sites.call("secondary", "rejoin", group=grname, epoch=epoch, restored=r["last_seq"])
    sites.call("primary", "rejoin", group=grname, epoch=epoch, relay_last_tag=r["last_tag"])
    return {"epoch": epoch, "moved_bytes": moved, "chunks": chunks_copied, "full_bytes": full,
            "digest": digest, "seconds": round(time.monotonic() - t0, 3)}


def _from_relay(sites: Sites, grname: str, relay: dict, prim: dict, t0: float, progress,
                say) -> dict:
    """Failback after `tricopy takeover --to relay`: the relay site's data volumes
    are the newest.  The relay keeps no record of which chunks it wrote, so the
    delta is found by digests (both sites read every chunk; only the differing
    ones are copied).  The relay is quiesced, the secondary restores everything
    it stamped, the delta goes to the old primary, then the relay carries the
    primary's journals again at a new epoch."""
    took = relay["takeover"]
    epoch = took.get("failback") or max(took["epoch"], relay["fence_epoch"]) + 1
    sites.call("primary", "fence", group=grname, epoch=took["epoch"])
    say(f"old primary fenced at epoch {took['epoch']}")
    q = sites.call("relay", "quiesce", group=grname, epoch=epoch)
    say(f"relay quiesced: its data volumes take no more writes (failback to epoch {epoch})")
    deadline = time.monotonic() + 600
    while True:       # every journal the relay stamped restored at the secondary and locally
        r = sites.group_status("relay", grname)
        local = (r.get("local") or {}).get("last_restored", 0)
        if r["secondary_acked"] >= q["last_seq"] and local >= q["last_seq"]:
            break
        if time.monotonic() > deadline:
            raise RcmError(f"the secondary restored SEQ# {r['secondary_acked']} of the relay's "
                           f"{q['last_seq']} in 600 s: is the far link up? run failback again")
        time.sleep(0.2)
    sizes = {d["idx"]: d["size"] for d in prim["dvols"]}
    want = _digest_delta(sites, grname, sizes, other="relay")
    todo = _ranges(want, COPY_CHUNK)
    say(f"delta: {len(todo)} chunk(s) of {COPY_CHUNK >> 10} KiB (digests compared)")
    moved = _copy(sites, grname, "relay", todo, COPY_CHUNK, sizes, progress)
    sites.call("primary", "write_fenced", group=grname, flush=True)   # before the relay moves
    sites.call("secondary", "move_epoch", group=grname, epoch=epoch, restored=q["last_seq"])
    r = sites.call("relay", "demote", group=grname, epoch=epoch)
    say(f"relay at epoch {epoch}, journals from the primary after PSEQ {r['last_tag']}")
    sites.call("primary", "rejoin", group=grname, epoch=epoch, relay_last_tag=r["last_tag"])
    return {"epoch": epoch, "moved_bytes": moved, "chunks": len(todo),
            "full_bytes": sum(sizes.values()), "digest": True,
            "seconds": round(time.monotonic() - t0, 3)}


def _run(args) -> int:
    try:
        configured = _configured(args)
        sites = configured.resolved()
        if sites.primary != configured.primary:
            # A planned swap made the configured secondary the writer: swap back.
            rec = swap(sites, args.group, say=lambda line: print(f"failback: {line}"))
            print(f"group {args.group} swapped back at SEQ# {rec['seq']}, epoch {rec['epoch']}: "
                  f"the configured primary is the writer again (read-write after "
                  f"{rec['rto_seconds']:g} s), no data copied")
            return 0
        rec = failback(sites, args.group, digest=args.digest,
                       progress=progress_bar() if sys.stderr.isatty() else None,
                       say=lambda line: print(f"failback: {line}"))
        if args.rejoin and not rec.get("already"):
            # The old primary only rejoins, as the restore side: the site that
            # took over stays the writer, now replicated through the relay.
            sw = swap(configured.resolved(), args.group,
                      say=lambda line: print(f"failback: {line}"))
            rec["rejoined"] = sw
    except RcmError as exc:
        print(f"tricopy failback: {exc}", file=sys.stderr)
        return 1
    if rec.get("already"):
        print(f"group {args.group}: nothing to fail back (the primary is the writer at epoch "
              f"{rec['epoch']})")
        return 0
    pct = 100.0 * rec["moved_bytes"] / rec["full_bytes"] if rec["full_bytes"] else 0.0
    print(f"group {args.group} failed back to the primary at epoch {rec['epoch']}: "
          f"{rec['moved_bytes']} bytes copied ({rec['chunks']} chunks, {pct:.1f}% of a full "
          f"copy of {rec['full_bytes']} bytes) in {rec['seconds']:g} s; the primary's NBD "
          f"exports are read-write, the secondary's read-only, replication runs again")
    if rec.get("rejoined"):
        print(f"group {args.group}: --rejoin: swapped at SEQ# {rec['rejoined']['seq']}, epoch "
              f"{rec['rejoined']['epoch']}: the site that took over is the writer again "
              f"(writes refused for {rec['seconds'] + rec['rejoined']['rto_seconds']:.2f} s in "
              f"all), replicating to the old primary; `tricopy failback` swaps back")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "failback", help="give a taken-over group back to its old primary site (a delta copy)",
        description="Failback after a takeover (docs/operations.md, Failback).")
    p.add_argument("--group", required=True, help="GRNAME of the journal group")
    p.add_argument("--digest", action="store_true",
                   help="compare every chunk by digest instead of trusting the records of "
                        "what was written (needed after a forced takeover)")
    p.add_argument("--rejoin", action="store_true",
                   help="after the delta, swap again: the site that took over stays the "
                        "writer and replicates to the old primary (which only rejoins)")
    _site_args(p)
    p.set_defaults(func=_run)
