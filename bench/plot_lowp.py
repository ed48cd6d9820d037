"""Plot of bench_lowp.py's results: each row's speed as a multiple of torch's
fused float32 AdamW, one group of bars per size.

    python bench/plot_lowp.py bench/results/bench_lowp.json [out.png]

A dashed line marks 1x (torch fused float32) and a dotted one the issue's
target for bfloat16 with stochastic rounding (1.6x).
"""
import json
import sys
from pathlib import Path

TARGET_SR = 1.6


def plot(report, path):
    """Write the PNG; returns its path, or None when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    results = report["results"]
    sizes = list(dict.fromkeys(r["elements"] for r in results))
    rows = list(dict.fromkeys(r["row"] for r in results))
    speed = {(r["elements"], r["row"]): r["vs_torch_fused_f32"] for r in results}
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(max(8, 0.4 * len(rows) * len(sizes)) + 4, 5))
    for k, row in enumerate(rows):
        xs = [i + k * width for i, n in enumerate(sizes) if (n, row) in speed]
        ax.bar(xs, [speed[(n, row)] for n in sizes if (n, row) in speed], width, label=row, color=plt.cm.tab20(k % 20))
    ax.axhline(1.0, color="black", linestyle="--", linewidth=0.8)
    ax.axhline(TARGET_SR, color="black", linestyle=":", linewidth=0.8)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(sizes))])
    ax.set_xticklabels([f"{n:.1e} elements" for n in sizes])
    ax.set_yscale("log")
    ax.set_ylabel("speed, multiple of torch fused AdamW float32")
    ax.set_title(f"AdamW step, {report['threads']} threads, SIMD {report['simd']}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    source = Path(sys.argv[1])
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else source.with_suffix(".png")
    print(plot(json.loads(source.read_text()), out) or "matplotlib is not installed")
