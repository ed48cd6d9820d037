"""Plot of bench_step.py's results: throughput against size, one line per implementation.

    python bench/plot.py bench/results/bench_step.json [out.png]

One panel per optimizer, log-log axes. Single-array sizes are joined by
lines; the many-leaf trees are hollow markers at their total element count.
On the ADAM panel a dashed line shows the bandwidth probe's ceiling (probe
GB/s / 28 bytes per element), measured in the same run.
"""
import json
import sys
from pathlib import Path

TREE_MARKERS = ["^", "s", "D", "v"]


def plot(report, path):
    """Write the PNG; returns its path, or None when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = report["rows"]
    names = [n for n in report["meta"]["args"]["optimizers"] if any(r["optimizer"] == n for r in rows)]
    keys = list(dict.fromkeys(r["implementation"] for r in rows))
    colors = {k: f"C{i}" for i, k in enumerate(keys)}
    tree_cases = list(dict.fromkeys(r["case"] for r in rows if r["leaves"] > 1))
    markers = {c: TREE_MARKERS[i % len(TREE_MARKERS)] for i, c in enumerate(tree_cases)}

    cols = 2 if len(names) > 1 else 1
    nrows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(7 * cols, 5 * nrows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        mine = [r for r in rows if r["optimizer"] == name]
        for key in keys:
            line = sorted((r for r in mine if r["implementation"] == key and r["leaves"] == 1),
                          key=lambda r: r["elements"])
            trees = [r for r in mine if r["implementation"] == key and r["leaves"] > 1]
            if not line and not trees:
                continue
            label = (line or trees)[0]["label"]
            if line:
                ax.plot([r["elements"] for r in line], [r["gelem_per_s"] for r in line], "o-",
                        color=colors[key], label=label, markersize=4)
            for r in trees:
                ax.plot(r["elements"], r["gelem_per_s"], markers[r["case"]], color=colors[key],
                        markerfacecolor="none", markersize=8, label=None if line else label)
        if name == "ADAM":
            probes = sorted((p for p in report["probes"] if p["leaves"] == 1), key=lambda p: p["elements"])
            if probes:
                ax.plot([p["elements"] for p in probes], [p["probe_gbps"] / 28 for p in probes], "k--",
                        label="bandwidth probe / 28 B")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{name}, float32, {report['meta']['threads']} threads")
        ax.set_xlabel("elements per step")
        ax.set_ylabel("G elements / s (higher is better)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    if tree_cases:
        note = "hollow markers: trees " + ", ".join(f"{c} ({markers[c]})" for c in tree_cases)
        fig.text(0.01, 0.005, note, fontsize=8)
    fig.suptitle(f"fusedopt step throughput ({report['meta']['cpu']}, SIMD {report['meta']['simd_level']}, "
                 f"{report['meta']['date']})", fontsize=10)
    fig.tight_layout(rect=(0, 0.02, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or len(argv) > 2:
        sys.exit("usage: python bench/plot.py RESULTS.json [OUT.png]")
    src = Path(argv[0])
    dst = Path(argv[1]) if len(argv) > 1 else src.with_suffix(".png")
    written = plot(json.loads(src.read_text()), dst)
    print(f"wrote {written}" if written else "matplotlib is not installed: no plot")


if __name__ == "__main__":
    main()
