"""The benchmark plot draws a ``bench hops`` result into a PNG (≈ 1 s)."""

from tricopy.host.tools.bench_plot import label, plot_hops


def rows():
    out = []
    for rnd in range(2):
        for qd in (1, 16):
            out.append({"what": "nbdkit-fua", "round": rnd, "bs": 4096, "iodepth": qd,
                        "iops": 1000 * qd + rnd, "cpu_us_per_write": {"nbdkit": 60}})
            for tree, iops in (("/tmp/x/before", 300), ("/tmp/x/after/", 400)):
                out.append({"what": f"tricopy[{tree}]", "tree": tree, "round": rnd, "bs": 4096,
                            "iodepth": qd, "iops": iops * qd,
                            "cpu_us_per_write": {"secondary": 50, "relay": 70, "primary": 60,
                                                 "sum": 180}})
    return out


def test_labels_name_the_tree_folder():
    r = rows()
    assert [label(x) for x in r[:3]] == ["nbdkit-fua", "tricopy before", "tricopy after"]


def test_plot_writes_a_png(tmp_path):
    out = tmp_path / "hops.png"
    plot_hops(rows(), str(out), title="test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
