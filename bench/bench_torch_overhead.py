"""The cost of fusedopt.torch's adapter: a step of fusedopt.torch minus a step of
fusedopt.optim (the same rule and sizes on a numpy tree: the kernel floor), and
DeepSpeed's CPU optimizer and torch.optim's fused=True on the same tensors where
they run.

Run from the repository root::

    python bench/bench_torch_overhead.py                       # this checkout
    python bench/bench_torch_overhead.py --before /work/venv-main/bin/python

With --before, every round runs once under each interpreter (each imports its own
fusedopt), alternating, so a slow spell of a shared machine hits both alike; the
table gives the median over rounds of each side's median step. Gradients are kept
between steps (zero_grad(set_to_none=False)), as bench_torch.py's main row. The
target (issue 25): the overhead at most 3 us + 0.1 us per tensor.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_step  # noqa: E402  (bench/ is not a package)
import bench_torch  # noqa: E402
import peers  # noqa: E402
import peers_optim  # noqa: E402

CASES = "1e3,1e4,1e5,1e6,10x100,100x100,1000x100,100x1000"
OPTIMIZERS = "AdamW,Adagrad"
IMPLS = {"optim": bench_torch.make_fusedopt_optim, "torch": bench_torch.make_fusedopt_torch,
         "deepspeed": lambda name, p, g: peers_optim.make_deepspeed(f"optim.{name}", p, g),
         "torch_fused": lambda name, p, g: peers_optim.make_torch("fused")(f"optim.{name}", p, g)}


def target_us(tensors):
    return 3.0 + 0.1 * tensors


def fit_overhead(tensors, overheads):
    """(a, b) of the least-squares line overhead = a + b * tensors."""
    a_mat = np.stack([np.ones(len(tensors)), np.asarray(tensors, dtype=float)], axis=1)
    (a, b), *_ = np.linalg.lstsq(a_mat, np.asarray(overheads, dtype=float), rcond=None)
    return float(a), float(b)


def one_round(args):
    """{"name case impl": seconds per step} for one round in this interpreter (Skip: a string)."""
    bench_step.setup_threads(args.threads, "deepspeed" in args.impls)
    out = {}
    for name in args.optimizers.split(","):
        for label in args.cases.split(","):
            case = bench_torch.parse_case(label)
            p0, grads = bench_torch.make_tensors(case, np.random.default_rng(0))
            for impl in args.impls.split(","):
                params = [p.copy() for p in p0]
                try:
                    step = IMPLS[impl](name, params, grads)
                    out[f"{name} {label} {impl}"] = bench_step.measure(step, args.budget, args.repeats)[0]
                except peers.Skip as e:
                    out[f"{name} {label} {impl}"] = str(e)
                step = params = None
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=CASES)
    ap.add_argument("--optimizers", default=OPTIMIZERS)
    ap.add_argument("--impls", default="optim,torch,deepspeed", help="of optim, torch, deepspeed, torch_fused")
    ap.add_argument("--before", help="another Python (e.g. main's venv) whose fusedopt.torch is 'before'")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--budget", type=float, default=0.1, help="seconds per measurement")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "bench_torch_overhead.json"))
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(one_round(args)))
        return
    sides = {"after": sys.executable, **({"before": args.before} if args.before else {})}
    rounds = {side: [] for side in sides}
    for _ in range(args.rounds):
        for side, python in sides.items():
            impls = args.impls if side == "after" else "torch"  # the peers: measured once per round
            cmd = [python, __file__, "--worker", "--cases", args.cases, "--optimizers", args.optimizers,
                   "--impls", impls, "--budget", str(args.budget), "--repeats", str(args.repeats),
                   "--threads", str(args.threads)]
            run = subprocess.run(cmd, check=True, capture_output=True, text=True)
            rounds[side].append(json.loads(run.stdout.strip().splitlines()[-1]))
    report = {"load_average": os.getloadavg(), "rounds": rounds, "rows": []}
    print(f"fusedopt.torch's overhead over fusedopt.optim, median of {args.rounds} interleaved rounds, "
          f"{args.threads} threads, load average {os.getloadavg()[0]:.1f}")
    head = f"{'optimizer':<9}{'case':<10}{'optim us':>10}" + (f"{'before us':>11}{'over':>8}" if args.before else "") \
        + f"{'torch us':>10}{'over':>8}{'target':>8}  {'met':<5}{'DeepSpeed us':>13}{'torch fused us':>15}"
    print(head)
    for name in args.optimizers.split(","):
        for label in args.cases.split(","):
            row = {"optimizer": name, "case": label, "tensors": len(bench_torch.parse_case(label).shapes)}
            for side in sides:
                for impl in IMPLS:
                    vals = [r.get(f"{name} {label} {impl}") for r in rounds[side]]
                    if vals and all(isinstance(v, float) for v in vals):
                        row[f"{side}_{impl}_us"] = statistics.median(vals) * 1e6
                    elif vals and isinstance(vals[0], str):
                        row[f"{side}_{impl}_skipped"] = vals[0]
            optim = row["after_optim_us"]
            row["target_us"] = target_us(row["tensors"])
            for side in sides:
                row[f"{side}_overhead_us"] = row[f"{side}_torch_us"] - optim
            row["met"] = row["after_overhead_us"] <= row["target_us"]
            ds, fused = row.get("after_deepspeed_us"), row.get("after_torch_fused_us")
            line = f"{name:<9}{label:<10}{optim:>10.1f}"
            if args.before:
                line += f"{row['before_torch_us']:>11.1f}{row['before_overhead_us']:>8.1f}"
            line += (f"{row['after_torch_us']:>10.1f}{row['after_overhead_us']:>8.1f}{row['target_us']:>8.1f}  "
                     f"{'yes' if row['met'] else 'NO':<5}" + (f"{ds:>13.1f}" if ds is not None else f"{'-':>13}")
                     + (f"{fused:>15.1f}" if fused is not None else f"{'-':>15}"))
            print(line)
            report["rows"].append(row)
    for name in args.optimizers.split(","):
        for side in sides:
            rows = [r for r in report["rows"] if r["optimizer"] == name]
            if len({r["tensors"] for r in rows}) > 1:
                a, b = fit_overhead([r["tensors"] for r in rows], [r[f"{side}_overhead_us"] for r in rows])
                report.setdefault("fits", {})[f"{name} {side}"] = {"a_us": a, "b_us_per_tensor": b}
                print(f"{name} {side}: overhead ~ {a:.2f} us + {b:.3f} us x tensors (least squares over the rows; "
                      f"target 3 + 0.1 x tensors)")
    skipped = {v for r in rounds["after"] for v in r.values() if isinstance(v, str)}
    for reason in sorted(skipped):
        print(f"skipped: {reason}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
