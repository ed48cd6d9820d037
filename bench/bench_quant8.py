"""AdamW and Lion with 8-bit states beside their float32 steps: fusedopt.optim.AdamW8bit,
fusedopt.optim.AdamW and torch.optim.AdamW(fused=True), fusedopt.optim.Lion8bit and
fusedopt.optim.Lion, float32 parameters; bitsandbytes' AdamW8bit on CPU too, up to
1e7, when it is installed (optional).

    python bench/bench_quant8.py                 # 1e6, 1e7, 6.4e7
    python bench/bench_quant8.py --sizes 1e6     # one size

Each implementation steps its own copy of the same parameters and gradients;
the time per step is the median over interleaved rounds (every implementation
once per round), so a slow spell of a shared machine hits all of them alike.
Bytes/element is the traffic of a step: parameter read and write, gradient
read, and each moment read and written (1 byte per 8-bit code, the block
absmax adds 8/256 per moment and step). "of probe" is the share of the
bandwidth of fusedopt._core.probe (28 bytes per element, measured in each round)
that a row's bytes per element reach.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_step  # noqa: E402  (bench/ is not a package)

import fusedopt
from fusedopt import optim

BYTES = {"fusedopt AdamW8bit": 4 + 4 + 4 + 2 * (1 + 1) + 2 * 2 * 4 / 256,
         "bitsandbytes AdamW8bit": 4 + 4 + 4 + 2 * (1 + 1) + 2 * 2 * 4 / 256,
         "fusedopt AdamW f32": 4 + 4 + 4 + 2 * (4 + 4), "torch fused AdamW f32": 4 + 4 + 4 + 2 * (4 + 4),
         "fusedopt Lion8bit": 4 + 4 + 4 + (1 + 1) + 2 * 4 / 256, "fusedopt Lion f32": 4 + 4 + 4 + (4 + 4)}


def steppers(n, rng):
    p = rng.standard_normal(n).astype(np.float32)
    g = (rng.standard_normal(n) * 1e-2).astype(np.float32)
    out = {}
    for name, cls in (("fusedopt AdamW8bit", optim.AdamW8bit), ("fusedopt AdamW f32", optim.AdamW),
                      ("fusedopt Lion8bit", optim.Lion8bit), ("fusedopt Lion f32", optim.Lion)):
        params, opt = [p.copy()], cls(lr=1e-4)
        out[name] = (lambda params=params, opt=opt: opt.step(params, [g]))
    try:
        import torch
        torch.set_num_threads(fusedopt.get_num_threads())
        tp = torch.nn.Parameter(torch.from_numpy(p.copy()))
        tp.grad = torch.from_numpy(g.copy())
        topt = torch.optim.AdamW([tp], lr=1e-4, fused=True)
        out["torch fused AdamW f32"] = topt.step
    except ImportError:
        pass
    try:  # optional peer, never a dependency; its CPU path is Python ops, so only up to 1e7
        import bitsandbytes as bnb
        import torch
        if n <= 10 ** 7:
            bp = torch.nn.Parameter(torch.from_numpy(p.copy()))
            bp.grad = torch.from_numpy(g.copy())
            out["bitsandbytes AdamW8bit"] = bnb.optim.AdamW8bit([bp], lr=1e-4).step
    except ImportError:
        pass
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1e6,1e7,6.4e7")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    print(f"threads {fusedopt.get_num_threads()}, SIMD {fusedopt.simd_level()}")
    print(f"{'size':>8} {'implementation':<24} {'bytes/el':>8} {'ms/step':>9} {'GB/s':>6} {'x torch':>8} {'of probe':>8}")
    for size in args.sizes.split(","):
        n = int(float(size))
        fns = steppers(n, np.random.default_rng(0))
        for fn in fns.values():  # warm-up: state created, pages touched
            fn()
            fn()
        times = {name: [] for name in fns}
        probes = []
        for _ in range(args.rounds):
            probes.append(bench_step.measure_probe(n, 0.2))
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        base = statistics.median(times["torch fused AdamW f32"]) if "torch fused AdamW f32" in times else None
        probe_gbs = 28 * n / statistics.median(probes) / 1e9
        for name, ts in times.items():
            t = statistics.median(ts)
            ratio = f"{base / t:8.2f}" if base else "       -"
            gbs = BYTES[name] * n / t / 1e9
            print(f"{size:>8} {name:<24} {BYTES[name]:8.2f} {t * 1e3:9.3f} {gbs:6.1f} {ratio} {gbs / probe_gbs:8.2f}")
        del fns


if __name__ == "__main__":
    main()
