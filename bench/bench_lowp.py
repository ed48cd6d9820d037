"""Side-by-side speed of one AdamW step with bfloat16/float16 parameters on CPU:
fusedopt.optim (rounded to nearest and stochastically) against torch's fused AdamW
on float32 and bfloat16, and fusedopt.optim on float32.

Run from the repository root::

    python bench/bench_lowp.py                # 1e6, 1e7 and 6.4e7 elements (about 2 GB)
    python bench/bench_lowp.py --quick        # seconds: 1e6 only, one round

Each row steps its own copy of the same parameters with the same (kept) gradient;
the time per step is the median over repeats after warm-up (bench_step.measure),
then the median over interleaved rounds (every row once per round, so a slow spell
of a shared machine hits all alike). Bytes per element: what one step reads and
writes (AdamW: p, g, exp_avg, exp_avg_sq read; p, exp_avg, exp_avg_sq written).
Speed is given as a multiple of torch fused float32 in the same run.
"""
import argparse
import json
import statistics
import sys
from pathlib import Path

import ml_dtypes
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_step  # noqa: E402  (bench/ is not a package)

import fusedopt  # noqa: E402
from fusedopt import optim  # noqa: E402

BF16 = np.dtype(ml_dtypes.bfloat16)
HYPER = dict(lr=1e-3, weight_decay=1e-2)


def torch_row(torch, n, dtype, rng):
    p = torch.nn.Parameter(torch.from_numpy(rng.standard_normal(n, dtype=np.float32)).to(dtype))
    p.grad = torch.from_numpy(rng.standard_normal(n, dtype=np.float32)).to(dtype)
    opt = torch.optim.AdamW([p], fused=True, **HYPER)
    return lambda: opt.step()


def fusedopt_row(n, dtype, rng, **options):
    params = [rng.standard_normal(n, dtype=np.float32).astype(dtype)]
    grads = [rng.standard_normal(n, dtype=np.float32).astype(dtype)]
    opt = optim.AdamW(**HYPER, **options)
    return lambda: opt.step(params, grads)


def rows(torch, n, rng):
    """(name, bytes per element, step)."""
    out = [("torch fused AdamW float32", 28, torch_row(torch, n, torch.float32, rng)),
           ("torch fused AdamW bfloat16", 14, torch_row(torch, n, torch.bfloat16, rng)),
           ("fusedopt AdamW float32", 28, fusedopt_row(n, np.float32, rng)),
           ("fusedopt AdamW bfloat16, nearest", 14, fusedopt_row(n, BF16, rng)),
           ("fusedopt AdamW bfloat16, stochastic", 14, fusedopt_row(n, BF16, rng, stochastic_rounding=True, seed=1)),
           ("fusedopt AdamW float16, nearest", 14, fusedopt_row(n, np.float16, rng))]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1e6 elements, one round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--budget", type=float, default=0.4, help="seconds per measurement")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "bench_lowp.json")
    args = ap.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    fusedopt.set_num_threads(args.threads)
    sizes = [10**6] if args.quick else [10**6, 10**7, 64 * 10**6]
    rounds = 1 if args.quick else args.rounds
    results = []
    print(f"threads {args.threads}, SIMD {fusedopt.simd_level()}, torch {torch.__version__}, {rounds} rounds")
    print(f"{'elements':>9}  {'row':<38} {'B/elem':>6} {'ms/step':>9} {'GB/s':>6} {'x torch f32':>11}")
    for n in sizes:
        table = rows(torch, n, np.random.default_rng(0))
        times = {name: [] for name, _, _ in table}
        for _ in range(rounds):
            for name, _, step in table:
                times[name].append(bench_step.measure(step, args.budget, 200)[0])
        base = statistics.median(times[table[0][0]])
        for name, nbytes, _ in table:
            t = statistics.median(times[name])
            results.append(dict(elements=n, row=name, bytes_per_element=nbytes, seconds=t,
                                gb_per_s=nbytes * n / t / 1e9, vs_torch_fused_f32=base / t))
            print(f"{n:>9.1e}  {name:<38} {nbytes:>6} {t * 1e3:>9.3f} {nbytes * n / t / 1e9:>6.1f} {base / t:>11.2f}")
        del table
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"threads": args.threads, "simd": fusedopt.simd_level(), "rounds": rounds,
                                    "results": results}, indent=1))


if __name__ == "__main__":
    main()
