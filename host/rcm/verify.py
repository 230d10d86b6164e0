"""``tricopy verify``: compare PVOL and SVOL online, chunk by chunk, by digest.

The volumes change while they are compared, so each batch of chunks is
compared *at one point of the write history*: the primary hashes the
chunks and says the PSEQ of the last journal it had applied (nothing
happens in between: it runs on the primary's event loop without a pause);
the secondary hashes the same chunks once it has applied exactly that
PSEQ, or later.  Later means a journal after the point may have touched a
chunk, so a mismatch then is checked again (up to ``RETRIES`` times) before
it counts; a chunk that never settles is reported as *busy*, not as out of
sync.  DRBD's ``drbdadm verify`` is the model; the digest is BLAKE2b-128.

The secondary's SVOLs must be a consistent image (PAIR, not catching up)
and journals must flow (the relay up), or the secondary never reaches the
primary's point and the command says so.
"""

from __future__ import annotations

import hashlib
import sys
import time

from ..disk.volume import Volume
from .jnlg import COPY_CHUNK
from .pairs import RcmError, Sites, _site_args, _sites, progress_bar

__all__ = ["chunk_digests", "verify", "register"]

BATCH = 64          # chunks per round trip (4 MiB)
RETRIES = 5


def chunk_digests(vol: Volume, first: int, count: int, chunk: int = COPY_CHUNK) -> list[str]:
    """BLAKE2b-128 of chunks ``first .. first+count-1`` of ``vol`` (the last one may be short)."""
    out = []
    for c in range(first, first + count):
        off = c * chunk
        if off >= vol.size:
            break
        out.append(hashlib.blake2b(vol.read(off, min(chunk, vol.size - off)),
                                   digest_size=16).hexdigest())
    return out


def _ranges(chunks: list[int]) -> str:
    out, start = [], None
    for i, c in enumerate(chunks):
        if start is None:
            start = c
        if i + 1 == len(chunks) or chunks[i + 1] != c + 1:
            out.append(f"{start}" if start == c else f"{start}-{c}")
            start = None
    return ", ".join(out)


def verify(sites: Sites, grname: str, *, rate: float | None = None, progress=None,
           mark: bool = False) -> dict:
    """Compare every chunk; returns {"chunks", "bytes", "out_of_sync": {idx: [chunk]},
    "busy": {idx: [chunk]}, "seconds"}."""
    p = sites.group_status("primary", grname)
    s = sites.group_status("secondary", grname)
    if p["grsts"] != "PAIR" or not s["consistent"]:
        raise RcmError(f"verify needs a PAIR group with consistent SVOLs (primary "
                       f"{p['grsts']}, SVOLs {'consistent' if s['consistent'] else 'not consistent'})")
    t0 = time.monotonic()
    total = sum(-(-d["size"] // COPY_CHUNK) for d in p["dvols"])
    done = 0
    result = {"chunks": 0, "bytes": 0, "out_of_sync": {}, "busy": {}}
    for d in sorted(p["dvols"], key=lambda d: d["idx"]):
        idx = d["idx"]
        first = 0
        while True:
            chunks = list(range(first, first + BATCH))
            mine = sites.call("primary", "digest", group=grname, idx=idx, first=first, count=BATCH)
            if not mine["digests"]:
                break
            chunks = chunks[:len(mine["digests"])]
            suspect = _compare(sites, grname, idx, chunks, mine)
            for _ in range(RETRIES):
                if not suspect[1]:
                    break
                suspect = _recheck(sites, grname, idx, suspect[1])
            bad, busy = suspect
            result["out_of_sync"].setdefault(idx, []).extend(bad)
            result["busy"].setdefault(idx, []).extend(busy)
            n = len(chunks)
            result["chunks"] += n
            result["bytes"] += n * COPY_CHUNK
            done += n
            if progress:
                progress({"grsts": "COPY", "copy_total": total, "copy_done": done,
                          "copy_chunk": COPY_CHUNK})
            if rate:
                ahead = result["bytes"] / rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
            first += n
    for key in ("out_of_sync", "busy"):
        result[key] = {i: sorted(set(c)) for i, c in result[key].items() if c}
    if mark:
        for idx, chunks in result["out_of_sync"].items():
            sites.call("primary", "mark_out_of_sync", group=grname, idx=idx, chunks=chunks)
    result["seconds"] = time.monotonic() - t0
    return result


def _compare(sites, grname, idx, chunks, mine) -> tuple[list[int], list[int]]:
    """(out of sync for sure, to check again) for one batch at the primary's point."""
    theirs = sites.call("secondary", "digest", group=grname, idx=idx, first=chunks[0],
                        count=len(chunks), pseq=mine["pseq"])
    differ = [c for c, a, b in zip(chunks, mine["digests"], theirs["digests"]) if a != b]
    if theirs["pseq"] == mine["pseq"]:
        return differ, []         # both at the same point: a difference is real
    return [], differ             # the secondary went past it: check those again


def _recheck(sites, grname, idx, chunks) -> tuple[list[int], list[int]]:
    bad, again = [], []
    for c in chunks:
        mine = sites.call("primary", "digest", group=grname, idx=idx, first=c, count=1)
        b, a = _compare(sites, grname, idx, [c], mine)
        bad += b
        again += a
    return bad, again


def _run(args) -> int:
    try:
        sites = _sites(args)
        res = verify(sites, args.group, rate=args.rate * (1 << 20) if args.rate else None,
                     progress=progress_bar(), mark=args.mark)
    except RcmError as exc:
        print(f"tricopy verify: {exc}", file=sys.stderr)
        return 2
    mib = res["bytes"] / (1 << 20)
    print(f"group {args.group}: compared {res['chunks']} chunks ({mib:.1f} MiB) in "
          f"{res['seconds']:.1f} s")
    for idx, chunks in res["busy"].items():
        print(f"  IDX {idx}: {len(chunks)} chunk(s) written too often to compare: "
              f"{_ranges(chunks)}")
    if not res["out_of_sync"]:
        print("  PVOL == SVOL: no chunk out of sync")
        return 0
    for idx, chunks in res["out_of_sync"].items():
        print(f"  IDX {idx}: {len(chunks)} chunk(s) of {COPY_CHUNK >> 10} KiB out of sync: "
              f"{_ranges(chunks)}")
    if args.mark:
        print("  marked in the primary's copy bitmap: `tricopy pair split` then "
              "`tricopy pair resync` copies them")
    else:
        print("  run again with --mark, then `tricopy pair split` and `tricopy pair resync` "
              "to copy them")
    return 1


def register(subparsers) -> None:
    p = subparsers.add_parser("verify", help="compare PVOL and SVOL online by chunk digests",
                              description="Online verify (docs/operations.md, Verify).")
    p.add_argument("--group", required=True, help="GRNAME of the journal group")
    p.add_argument("--rate", type=float, metavar="MIB_PER_S",
                   help="read at most this many MiB/s on each side")
    p.add_argument("--mark", action="store_true",
                   help="set the chunks out of sync in the primary's copy bitmap")
    _site_args(p)
    p.set_defaults(func=_run)
