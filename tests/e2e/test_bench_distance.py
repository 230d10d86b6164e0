"""``tricopy bench distance`` reduced (host/tools/bench_distance.py): the safety facts.

One far distance (25 ms one way, 4 MB/s), QD1 for 1 s per point, two kills
per set-up half a second to a second into the stamped load.  Not the timings (the
build machine is shared): every point measured, and the loss experiment's
facts -- losing the primary loses no acknowledged write with tricopy's relay
near the primary nor with the relay at the far site (synchronous two-site),
and the asynchronous set-up, whose relay dies with the primary, does lose
some: the checker counts losses when there are some.  No prefix violation
anywhere.  About 50 s on the 2-core build machine (65 s at load 9).
"""

from __future__ import annotations

from tricopy.host.tools import bench_distance as bd
from tricopy.host.tools import chaos

# A far link thinner than the load (4 MB/s each way against ~10 MB/s of stamped
# writes): the secondary lags a few MB behind, so it is the takeover's drain
# of the relay that saves tricopy's acknowledged writes (without it they are
# lost: the test then fails), not the relay's 1 s wait for the dead primary.
FAR_RATE = 4e6


def test_reduced_distance_bench_tricopy_and_sync_lose_nothing_async_does(tmp_path):
    rep = bd.run(distances=(25.0,), seconds=1.0, kills=2, jobs=bd.JOBS[:1], seed=3,
                 logs=tmp_path / "logs", kill_window=(0.5, 1.0), far_rate=FAR_RATE)
    assert {(r["setup"], r["far_ms"]) for r in rep["latency"]} == \
        {(s, d) for s in bd.SETUPS for d in (0.0, 25.0)}
    assert all(r["iops"] > 0 and r["p50_us"] > 0 for r in rep["latency"])
    by = {s: [r for r in rep["loss"] if r["setup"] == s] for s in bd.SETUPS}
    for setup, rows in by.items():
        assert len(rows) == 2
        for r in rows:
            assert not r.get("error"), r
            assert r["acked"] > 0, r
            assert r["violations"] == [], (setup, r["violations"][:5])
    assert [r["lost"] for r in by["tricopy"]] == [0, 0], by["tricopy"]
    assert [r["lost"] for r in by["sync"]] == [0, 0], by["sync"]
    assert all(r["forced"] for r in by["async"])
    assert sum(r["lost"] for r in by["async"]) > 0, by["async"]
    text = bd.markdown(rep, "tricopy bench distance (test)")
    assert text.count("| tricopy |") == 3 and "(test)" in text


def test_lost_writes_counts_an_injected_loss():
    """The count itself, on SVOLs built from a history: the last acked write
    of one worker taken away is one acked write lost, and nothing else."""
    h = chaos.History()
    size = chaos.VOL_BLOCKS * chaos.BLOCK
    vols = [bytearray(size) for _ in range(chaos.VOLUMES)]
    for w in (0, 1):
        idx, first, _ = h.regions[w]
        for n in (1, 2):
            data = chaos.stamped(w, n, 1 + n)
            rec = h.send(w, idx, (first + n) * chaos.BLOCK, data)
            h.ack(w, rec)
            if not (w == 1 and n == 2):           # worker 1's write 2 never arrived
                vols[idx][(first + n) * chaos.BLOCK:(first + n) * chaos.BLOCK + len(data)] = data
    lost, bad = bd.lost_writes(h, [bytes(v) for v in vols])
    assert (lost, bad) == (1, [])
    idx, first, _ = h.regions[1]
    data = h.sent[1][1][2]
    vols[idx][(first + 2) * chaos.BLOCK:(first + 2) * chaos.BLOCK + len(data)] = data
    assert bd.lost_writes(h, [bytes(v) for v in vols]) == (0, [])


def test_docs_block_and_plots_are_rewritten_between_the_markers(tmp_path):
    """``--docs`` on a copy of docs/: the text outside the markers stays, the
    block holds this run's tables, the PNGs exist; missing markers: a typed error."""
    import shutil

    import pytest
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(bd.repo_docs() / "benchmarks.md", docs / "benchmarks.md")
    before = (docs / "benchmarks.md").read_text()
    lat = [dict(setup=s, far_ms=far, pr_ms=0.0, rs_ms=far, rw="randwrite", bs=4096,
                iodepth=1, iops=100 + i, p50_us=1000 * (1 + i), p99_us=3000 * (1 + i),
                lag_mean=1.0, lag_max=2, catch_up_s=0.01, load=1.0, MB_per_s=0.4)
           for i, (s, far) in enumerate((s, f) for s in bd.SETUPS for f in (0.0, 25.0))]
    loss = [dict(setup=s, far_ms=25.0, kill=k, killed="primary", acked=10, lost=lost,
                 violations=[], lag_at_kill=3) for s, lost in
            (("tricopy", 0), ("sync", 0), ("async", 4)) for k in (1, 2)]
    rep = dict(machine="a test machine", date="2026-12-06", seed=1, seconds=1.0,
               seconds_per_job=1.0, rounds=1, load=[1.0, 1.0], latency=lat, loss=loss,
               loss_distance_ms=25.0)
    bd.write_docs(rep, "tricopy bench distance --test", docs)
    after = (docs / "benchmarks.md").read_text()
    head, tail = before.split(bd.DOC_BEGIN)[0], before.split(bd.DOC_END)[1]
    assert after.startswith(head) and after.endswith(tail)
    block = after.split(bd.DOC_BEGIN)[1].split(bd.DOC_END)[0]
    assert "| async | 25 ms | primary | 2 | 20 | 4 4 | 8 |" in block
    assert block.count("`tricopy bench distance --test`, a test machine") == 9
    for png in ("distance-latency.png", "distance-loss.png"):
        assert (docs / "img" / png).read_bytes()[:4] == b"\x89PNG"
        assert f"img/{png}" in block
    (docs / "benchmarks.md").write_text(head)
    with pytest.raises(bd.BenchError, match="markers"):
        bd.write_docs(rep, "x", docs)
