"""Tables and plot of the performance page and the README, from benchmark results.

    python docs/gen_performance.py            # reads bench/results/*.json

Reads ``bench/results/bench_step.json`` (``bench/bench_step.py``) and, when
present, ``bench/results/paysage_epoch.json`` (``bench/bench_paysage_epoch.py``);
writes ``docs/_generated/performance.md`` (included by docs/performance.md),
copies the plot to ``docs/_static/bench_step.png`` and replaces the table
between the ``perf-table`` markers of README.md. Every table states when and
on what machine it was measured and the command that measured it; a run on a
loaded machine or with ``--quick`` says that it is not representative.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- perf-table:begin -->", "<!-- perf-table:end -->"

# Row order and labels of the step tables (implementation keys of bench_step.py).
IMPLS = [
    ("fusedopt_inplace", "fusedopt, in place"),
    ("fusedopt_divider", "fusedopt, in place, divider only"),
    ("fusedopt_paysage", "fusedopt, paysage path*"),
    ("numpy", "numpy float32"),
    ("numexpr", "numexpr (paysage style)"),
    ("torch_foreach", "torch foreach"),
    ("torch_fused", "torch fused"),
    ("deepspeed", "DeepSpeed CPU Adam"),
]
BASE = "fusedopt_inplace"
FOOTNOTE = ("`*` the paysage path's time includes a minimal model's `parameter_update` "
            "(one `np.subtract(p, d, out=p)` per leaf).")


def fmt_us(us: float) -> str:
    return f"{us:,.0f}" if us >= 100 else f"{us:.1f}"


def command_of(args: dict) -> str:
    """The bench_step.py command line that reproduces the run's settings."""
    parts = ["python bench/bench_step.py"]
    if args.get("quick"):
        parts.append("--quick")
    parts.append(f"--sizes {args['sizes']}")
    parts.append(f"--optimizers {','.join(args['optimizers'])}")
    if args.get("impls"):
        parts.append(f"--impls {','.join(args['impls'])}")
    parts.append(f"--rounds {args['rounds']} --repeats {args['repeats']} --budget {args['budget']} "
                 f"--threads {args['threads']}")
    return " ".join(parts)


def caveats(meta: dict) -> list[str]:
    """Why a run's figures are not representative, if they are not."""
    out = []
    # At the end the run's own threads count in the load: only more than that is competition.
    own = int(meta.get("args", {}).get("threads") or 1)
    start, end = meta["load_average_start"][0], meta["load_average_end"][0]
    if start > 1.0 or end > own + 1.0:
        load = max(start, end)
        out.append(f"the load average was {load:.1f} on {meta['cores']} cores (other processes competed "
                   "for the CPU)")
    if meta["args"].get("quick"):
        out.append("it was a `--quick` run (short measurements, one round)")
    return out


def provenance(meta: dict) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in sorted(meta["versions"].items()))
    lines = [
        f"Measured {meta['date'][:10]} {meta['date'][11:16]} UTC on {meta['cpu']}, {meta['cores']} cores, "
        f"SIMD level {meta['simd_level']}, {meta['threads']} fusedopt threads, {meta['dtype']}; {versions}.",
        "",
        f"Command: `{command_of(meta['args'])}`; per size the median over interleaved rounds "
        "(every implementation once per round) of the median over repeats.",
    ]
    why = caveats(meta)
    if why:
        lines += ["", f"**Not representative:** {'; '.join(why)}. Re-run on a quiet machine and "
                      "regenerate with `python docs/gen_performance.py`."]
    return "\n".join(lines)


def cases_of(report: dict) -> list[str]:
    seen: list[str] = []
    for r in report["rows"]:
        if r["case"] not in seen:
            seen.append(r["case"])
    return seen


def step_table(report: dict, optimizer: str) -> str:
    """µs per step (G elements/s) per implementation and case, and fusedopt's speedup."""
    rows = [r for r in report["rows"] if r["optimizer"] == optimizer]
    if not rows:
        return ""
    cases = [c for c in cases_of(report) if any(r["case"] == c for r in rows)]
    cell = {(r["implementation"], r["case"]): r for r in rows}
    head = f"| {optimizer}: µs per step (G elements/s); speedup of fusedopt in place | " + " | ".join(cases) + " |"
    lines = [head, "|---" * (len(cases) + 1) + "|"]
    for key, label in IMPLS:
        if not any((key, c) in cell for c in cases):
            continue
        vals = [f"{fmt_us(cell[key, c]['us_per_step'])} ({cell[key, c]['gelem_per_s']:.2f})"
                if (key, c) in cell else "–" for c in cases]
        lines.append(f"| {label} | " + " | ".join(vals) + " |")
    for key, label in IMPLS:
        if key == BASE or not any((key, c) in cell for c in cases):
            continue
        vals = [f"{cell[key, c]['us_per_step'] / cell[BASE, c]['us_per_step']:.2f}x"
                if (key, c) in cell and (BASE, c) in cell else "–" for c in cases]
        lines.append(f"| speedup over {label} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def probe_table(report: dict) -> str:
    if not report["probes"]:
        return ""
    cases = [p["case"] for p in report["probes"]]
    vals = [f"{p['probe_gbps']:.0f} GB/s" + (" (cache)" if p["in_cache"] else "") for p in report["probes"]]
    return ("| bandwidth probe (ADAM's traffic) | " + " | ".join(cases) + " |\n"
            + "|---" * (len(cases) + 1) + "|\n| | " + " | ".join(vals) + " |")


def epoch_table(epoch: dict) -> str:
    cfg, m = epoch["config"], epoch["machine"]
    calls = cfg["rows"] // cfg["batch"]
    lines = [
        f"paysage RBM {cfg['visible']} x {cfg['hidden']} ({cfg['parameters']:,} parameters) trained by "
        f"paysage's own `fit.SGD`, median of {cfg['epochs']} epochs; measured {epoch['time_utc']} on "
        f"{m['platform']}, {m['cpu_count']} cores, fusedopt {m['fusedopt_threads']} threads, load average "
        f"{m['load_average_before'][0]:.1f} -> {m['load_average_after'][0]:.1f}. Command: "
        f"`python bench/bench_paysage_epoch.py --epochs {cfg['epochs']}`.",
        "",
        "| optimizer | epoch, paysage | epoch, fusedopt | `update` per call, paysage | `update` per call, "
        "fusedopt | parameters identical |",
        "|---|---|---|---|---|---|",
    ]
    for r in epoch["rows"]:
        p, f = r["paysage"], r["fusedopt"]
        lines.append(f"| {r['optimizer']} | {p['epoch_s'] * 1e3:.1f} ms | {f['epoch_s'] * 1e3:.1f} ms | "
                     f"{p['update_s'] * 1e6 / calls:.0f} µs | {f['update_s'] * 1e6 / calls:.0f} µs | "
                     f"{'yes' if r['identical_params'] else 'NO'} |")
    return "\n".join(lines)


def readme_block(report: dict) -> str:
    return "\n".join([BEGIN, "", provenance(report["meta"]), "", step_table(report, "ADAM"), "", FOOTNOTE, "",
                      "![ADAM steps per second against step size](docs/_static/bench_step.png)", "", END])


def docs_page(report: dict, epoch: dict | None) -> str:
    parts = [provenance(report["meta"]), ""]
    for name in report["meta"]["args"]["optimizers"]:
        table = step_table(report, name)
        if table:
            parts += [table, ""]
    probe = probe_table(report)
    if probe:
        parts += [probe, ""]
    parts += [FOOTNOTE, ""]
    if epoch is not None:
        parts += ["## A paysage training loop", "", epoch_table(epoch), ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = ap.parse_args(argv)
    step_json = args.results / "bench_step.json"
    if not step_json.exists():
        print(f"{step_json} not found: run python bench/bench_step.py first", file=sys.stderr)
        return 1
    report = json.loads(step_json.read_text())
    epoch_json = args.results / "paysage_epoch.json"
    epoch = json.loads(epoch_json.read_text()) if epoch_json.exists() else None

    (args.docs / "_generated").mkdir(exist_ok=True)
    (args.docs / "_generated" / "performance.md").write_text(docs_page(report, epoch))
    png = args.results / "bench_step.png"
    if png.exists():
        shutil.copyfile(png, args.docs / "_static" / "bench_step.png")
    readme = args.readme.read_text()
    if BEGIN not in readme or END not in readme:
        print(f"{args.readme} has no {BEGIN} ... {END} block", file=sys.stderr)
        return 1
    head, rest = readme.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    args.readme.write_text(head + readme_block(report) + tail)
    print(f"wrote {args.docs / '_generated' / 'performance.md'}, the README table"
          + (", the plot" if png.exists() else " (no plot: bench_step.png missing)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
