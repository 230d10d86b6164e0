"""A PNG of a ``tricopy bench hops`` run, for docs/benchmarks.md.

Two panels per job (4 KiB randwrite QD1, QD16): IOPS of every server in the
run (the durable baselines and each code tree of tricopy), and CPU µs per
write, tricopy's stacked by site.  Rounds are folded into medians, each bar
carrying the spread of its rounds as an error bar, because on a shared
machine one round says little.  matplotlib comes with the ``bench`` extra
and is imported only here, so the benchmarks run without it.
"""

from __future__ import annotations

import os
import statistics

__all__ = ["plot_hops", "label"]

_SITES = ("primary", "relay", "secondary")
#: the issue's goals on this machine (issue 14), drawn as dashed lines
GOALS = {"4 KiB QD16": {"iops": 15_000, "cpu": 80}, "4 KiB QD1": {"cpu": 200}}


def label(r: dict) -> str:
    """A short name for a row's server: a baseline, or tricopy and its tree's folder."""
    if r["what"].startswith("tricopy"):
        tree = r.get("tree")
        return f"tricopy {os.path.basename(os.path.normpath(tree))}" if tree else "tricopy"
    return r["what"]


def _folded(results: list[dict]) -> dict:
    """{(job, label): {"iops": [...], "cpu": {site: [...]}}} in order of appearance."""
    out: dict = {}
    for r in results:
        job = f"{r['bs'] // 1024} KiB QD{r['iodepth']}"
        slot = out.setdefault((job, label(r)), {"iops": [], "cpu": {}})
        slot["iops"].append(r["iops"])
        for site, us in r["cpu_us_per_write"].items():
            if site != "sum":
                slot["cpu"].setdefault(site, []).append(us)
    return out


def plot_hops(results: list[dict], path: str, title: str = "") -> None:
    """Draw ``results`` (``bench_hops`` rows) into the PNG ``path``."""
    import matplotlib
    matplotlib.use("Agg")               # no display: a file only
    import matplotlib.pyplot as plt

    folded = _folded(results)
    jobs = list(dict.fromkeys(job for job, _ in folded))
    fig, axes = plt.subplots(2, len(jobs), figsize=(6 * len(jobs), 7), squeeze=False)
    colors = {"primary": "tab:blue", "relay": "tab:orange", "secondary": "tab:green",
              "nbdkit": "tab:gray", "qemu": "tab:brown"}
    for col, job in enumerate(jobs):
        names = [name for j, name in folded if j == job]
        iops_ax, cpu_ax = axes[0][col], axes[1][col]
        for i, name in enumerate(names):
            slot = folded[(job, name)]
            med = statistics.median(slot["iops"])
            iops_ax.bar(i, med, yerr=[[med - min(slot["iops"])], [max(slot["iops"]) - med]],
                        color="tab:purple" if name.startswith("tricopy") else "tab:gray",
                        capsize=3)
            iops_ax.text(i, med, f"{med:,.0f}", ha="center", va="bottom", fontsize=8)
            bottom = 0.0
            for site in [s for s in _SITES if s in slot["cpu"]] or list(slot["cpu"]):
                us = statistics.median(slot["cpu"][site])
                cpu_ax.bar(i, us, bottom=bottom, color=colors.get(site, "tab:gray"),
                           label=site if i == len(names) - 1 or site in _SITES else None)
                bottom += us
            cpu_ax.text(i, bottom, f"{bottom:,.0f}", ha="center", va="bottom", fontsize=8)
        goal = GOALS.get(job, {})
        for ax, key in ((iops_ax, "iops"), (cpu_ax, "cpu")):
            if key in goal:
                ax.axhline(goal[key], color="tab:red", linestyle="--", linewidth=1,
                           label=f"goal {goal[key]:,}")
        for ax in (iops_ax, cpu_ax):
            ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
        iops_ax.set_title(f"4 KiB randwrite, {job.split()[-1]}: IOPS (median, min-max)"
                          if "4 KiB" in job else f"{job}: IOPS")
        cpu_ax.set_title("CPU µs per write (median; tricopy stacked by site)")
        handles, labels = cpu_ax.get_legend_handles_labels()
        seen = dict(zip(labels, handles))
        cpu_ax.legend(seen.values(), seen.keys(), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
