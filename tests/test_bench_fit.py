"""``bench hops --depths``: each site's CPU per write split into a cost per
batch and a cost per journal, from rows made with known costs."""

import argparse

import pytest

from tricopy.host.tools.bench_replicate import _depths, fit_batch_costs

COSTS = {"primary": (235, 36), "relay": (314, 34), "secondary": (128, 25)}


def rows(batches=(1.0, 2.0, 4.0, 7.7, 14.8, 31.6), tree=None):
    out = []
    for b in batches:
        cpu = {site: a / b + j for site, (a, j) in COSTS.items()}
        hops = {"primary.acked_per_ack": {"mean": b}, "relay.fsync_journals": {"mean": b},
                "relay.forward_batch": {"mean": b}}
        out.append({"what": "tricopy[this tree]", "tree": tree, "round": 0,
                    "cpu_us_per_write": cpu, "hops": hops})
    # a baseline row of the same run: not a site, left out of the fit
    out.append({"what": "nbdkit-fua", "round": 0, "cpu_us_per_write": {"nbdkit": 60}})
    return out


def test_the_fit_finds_the_costs_the_rows_were_made_with():
    fit = fit_batch_costs(rows())
    assert {s: (f["per_batch_us"], f["per_journal_us"]) for s, f in fit.items()} == COSTS
    assert all(f["worst_misfit"] == 0 and f["points"] == 6 for f in fit.values())


def test_a_site_with_one_batch_size_has_no_fit():
    assert fit_batch_costs(rows(batches=(4.0, 4.0))) == {}


def test_misfit_shows_when_cpu_does_not_follow_batches():
    r = rows()
    r[0]["cpu_us_per_write"]["relay"] *= 2        # one depth far off the line
    assert fit_batch_costs(r)["relay"]["worst_misfit"] > 0.2


@pytest.mark.parametrize("text", ["16", "1,x", "0,4", "1,512"])
def test_depths_refused_with_a_reason(text):
    with pytest.raises(argparse.ArgumentTypeError, match="depths"):
        _depths(text)


def test_depths_parsed():
    assert _depths("1,4,16,64") == [1, 4, 16, 64]
