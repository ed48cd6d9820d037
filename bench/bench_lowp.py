"""Side-by-side speed of one AdamW step with bfloat16/float16 parameters on CPU:
fusedopt.optim (rounded to nearest, the parameter stochastically, and the parameter and
moments stochastically) against torch's fused AdamW
on float32 and bfloat16, and fusedopt.optim on float32; and master weights
(``master_weights=True``: a float32 master and float32 moments per bfloat16
parameter, the parameter written from the master in the same pass) against a
float32 step followed by a separate conversion pass into the bfloat16 parameter
(NumPy's ``astype``-style cast, one thread; and torch's ``copy_``, threaded); and,
where they are installed, the peers: DeepSpeed's CPU Adam on bfloat16 parameters
with float32 or bfloat16 moments, and torchao's ``_AdamW(bf16_stochastic_round=True)``.

Run from the repository root::

    python bench/bench_lowp.py                # 1e6, 1e7 and 6.4e7 elements (about 2 GB)
    python bench/bench_lowp.py --quick        # seconds: 1e6 only, one round
    python bench/bench_lowp.py --rows master,float32  # only the rows whose name has one of them
                                              # (and torch fused float32, the base)

Each row steps its own copy of the same parameters with the same (kept) gradient;
the time per step is the median over repeats after warm-up (bench_step.measure),
then the median over interleaved rounds (every row once per round, so a slow spell
of a shared machine hits all alike). Bytes per element: what one step reads and
writes (AdamW: p, g, exp_avg, exp_avg_sq read; p, exp_avg, exp_avg_sq written;
with master weights: g (2), master, exp_avg, exp_avg_sq read (12) and written (12),
the bfloat16 parameter written (2): 28; the float32 step and its separate pass:
28 + master read (4) + parameter written (2) = 34). Speed is given as a multiple of
torch fused float32 in the same run, and as the share of the bandwidth of
fusedopt._core.probe (28 bytes per element, ADAM's traffic) measured in each round.
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
import peers  # noqa: E402
import plot_lowp  # noqa: E402

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


def separate_pass_row(torch, n, rng, how):
    """fusedopt's float32 AdamW on the master, then the bfloat16 parameter converted from it
    in a second pass: NumPy's cast (``p16[...] = master``, as ``master.astype(bfloat16)``
    without the allocation) or torch's ``copy_`` on views of the same memory."""
    master = [rng.standard_normal(n, dtype=np.float32)]
    grads = [rng.standard_normal(n, dtype=np.float32)]
    p16 = master[0].astype(BF16)
    opt = optim.AdamW(**HYPER)
    if how == "numpy":
        def step():
            opt.step(master, grads)
            p16[...] = master[0]
        return step
    source = torch.from_numpy(master[0])
    target = torch.from_numpy(p16.view(np.int16)).view(torch.bfloat16)

    def step():
        opt.step(master, grads)
        target.copy_(source)
    return step


def _bf16_pair(torch, n, rng):
    p = torch.nn.Parameter(torch.from_numpy(rng.standard_normal(n, dtype=np.float32)).to(torch.bfloat16))
    p.grad = torch.from_numpy(rng.standard_normal(n, dtype=np.float32)).to(torch.bfloat16)
    return p


def deepspeed_row(torch, n, rng, fp32_state):
    """DeepSpeed's CPU Adam (adamw_mode) on a bfloat16 parameter, its moments in float32 or in
    bfloat16 (``fp32_optimizer_states``), rounded to nearest."""
    cls = peers.deepspeed_adam()  # Skip when DeepSpeed or its op is unavailable
    opt = cls([_bf16_pair(torch, n, rng)], adamw_mode=True, fp32_optimizer_states=fp32_state, **HYPER)
    return opt.step


def torchao_row(torch, n, rng):
    """torchao's AdamW with the bfloat16 parameter rounded stochastically (its step is
    torch.compile'd: the first call, untimed, compiles it)."""
    try:
        from torchao.optim import _AdamW
    except ImportError as e:
        raise peers.Skip(f"torchao is not installed (pip install --no-deps torchao): {e}") from None
    opt = _AdamW([_bf16_pair(torch, n, rng)], bf16_stochastic_round=True, **HYPER)
    return opt.step


def peer_rows(torch, n, rng):
    """The optional peers (name, bytes per element, make); a row whose peer is missing is
    reported as skipped."""
    return [("DeepSpeed CPU AdamW bf16, f32 state", 22, lambda: deepspeed_row(torch, n, rng, True)),
            ("DeepSpeed CPU AdamW bf16, bf16 state", 14, lambda: deepspeed_row(torch, n, rng, False)),
            ("torchao _AdamW bf16, stochastic", 14, lambda: torchao_row(torch, n, rng))]


def rows(torch, n, rng):
    """(name, bytes per element, step)."""
    out = [("torch fused AdamW float32", 28, torch_row(torch, n, torch.float32, rng)),
           ("torch fused AdamW bfloat16", 14, torch_row(torch, n, torch.bfloat16, rng)),
           ("fusedopt AdamW float32", 28, fusedopt_row(n, np.float32, rng)),
           ("fusedopt AdamW bfloat16, nearest", 14, fusedopt_row(n, BF16, rng)),
           ("fusedopt AdamW bfloat16, stochastic", 14, fusedopt_row(n, BF16, rng, stochastic_rounding=True, seed=1)),
           ("fusedopt AdamW bfloat16, stochastic state too", 14,
            fusedopt_row(n, BF16, rng, stochastic_rounding=True, stochastic_state=True, seed=1)),
           ("fusedopt AdamW float16, nearest", 14, fusedopt_row(n, np.float16, rng)),
           ("fusedopt AdamW bf16 master, nearest", 28, fusedopt_row(n, BF16, rng, master_weights=True)),
           ("fusedopt AdamW bf16 master, stochastic", 28,
            fusedopt_row(n, BF16, rng, master_weights=True, stochastic_rounding=True, seed=1)),
           ("master: f32 AdamW + numpy cast to bf16", 34, separate_pass_row(torch, n, rng, "numpy")),
           ("master: f32 AdamW + torch copy_ to bf16", 34, separate_pass_row(torch, n, rng, "torch"))]
    for name, nbytes, make in peer_rows(torch, n, rng):
        try:
            out.append((name, nbytes, make()))
        except peers.Skip as e:
            print(f"{name}: skipped: {e}")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1e6 elements, one round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--budget", type=float, default=0.4, help="seconds per measurement")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", default="", help="only rows whose name contains one of these comma-separated words "
                    "(torch fused float32 always)")
    ap.add_argument("--sizes", default="", help="comma-separated element counts (default 1e6,1e7,6.4e7)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "bench_lowp.json")
    args = ap.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    fusedopt.set_num_threads(args.threads)
    sizes = [10**6] if args.quick else [10**6, 10**7, 64 * 10**6]
    if args.sizes:
        sizes = [int(float(s)) for s in args.sizes.split(",")]
    rounds = 1 if args.quick else args.rounds
    results = []
    print(f"threads {args.threads}, SIMD {fusedopt.simd_level()}, torch {torch.__version__}, {rounds} rounds")
    print(f"{'elements':>9}  {'row':<40} {'B/elem':>6} {'ms/step':>9} {'GB/s':>6} {'x torch f32':>11} "
          f"{'of probe':>8}")
    for n in sizes:
        table = [r for i, r in enumerate(rows(torch, n, np.random.default_rng(0))) if i == 0 or any(w in r[0] for w in args.rows.split(","))]
        times = {name: [] for name, _, _ in table}
        probes = []
        for _ in range(rounds):
            probes.append(bench_step.measure_probe(n, args.budget))
            for name, _, step in table:
                times[name].append(bench_step.measure(step, args.budget, 200)[0])
        base = statistics.median(times[table[0][0]])
        probe_gbs = 28 * n / statistics.median(probes) / 1e9
        print(f"{n:>9.1e}  {'probe (28 B/elem)':<40} {28:>6} {statistics.median(probes) * 1e3:>9.3f} {probe_gbs:>6.1f}")
        for name, nbytes, _ in table:
            t = statistics.median(times[name])
            gbs = nbytes * n / t / 1e9
            results.append(dict(elements=n, row=name, bytes_per_element=nbytes, seconds=t, gb_per_s=gbs,
                                vs_torch_fused_f32=base / t, share_of_probe=gbs / probe_gbs))
            print(f"{n:>9.1e}  {name:<40} {nbytes:>6} {t * 1e3:>9.3f} {gbs:>6.1f} {base / t:>11.2f} "
                  f"{gbs / probe_gbs:>8.2f}")
        del table
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"threads": args.threads, "simd": fusedopt.simd_level(), "rounds": rounds, "results": results}
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}; plot: {plot_lowp.plot(report, args.out.with_suffix('.png'))}")


if __name__ == "__main__":
    main()
