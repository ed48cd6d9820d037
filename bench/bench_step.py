"""Side-by-side speed of one optimizer step: fusedopt against its peers.

Run from the repository root::

    python bench/bench_step.py            # full run (a few minutes)
    python bench/bench_step.py --quick    # seconds: development check, no 6.4e7 case

For ADAM, RMSProp, Momentum and Gradient, and the optim family (fusedopt.optim:
optim.Adam, optim.AdamW, optim.SGD, optim.RMSprop, optim.Adagrad, optim.Lion,
optim.NAdam, optim.RAdam, optim.Adamax, optim.Adadelta, optim.ASGD, optim.Rprop,
optim.Adafactor;
peers_optim.py), at each size, in one process and in
float32, every implementation of peers.py takes steps on its own copy of the
same parameters and gradients; the time per step is the median over repeats
after warm-up, and then over interleaved rounds (every implementation once per
round) so that a slow spell of a shared machine hits all of them alike. The memory-bandwidth ceiling of ADAM's traffic (read 4 float32
arrays, write 3) is measured in the same run, at the same size, with
fusedopt._core.probe. Results go to a table on stdout, and to JSON and a PNG
plot under bench/results/ (or --out).
"""
import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections import namedtuple
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402  (bench/ is not a package)
import peers_optim  # noqa: E402

import fusedopt  # noqa: E402
from fusedopt import _core  # noqa: E402

DEFAULT_SIZES = "1e3,1e4,1e5,1e6,1e7,6.4e7,200x4096,1000x100"
QUICK_SIZES = "1e3,1e4,1e5,1e6,200x4096,1000x100"
MIN_REPEATS = 3
LARGE = 10_000_000  # elements from which freeing memory between implementations is worth a full gc
# The targets of docs/performance.md ("Targets"), checked for ADAM in place at the end of the run.
TARGET_SHARE_LARGE = 0.95      # of the probe at 6.4e7 elements
TARGET_GELEM = 2.5             # G elements/s at 1e5 and 1e6
TARGET_US_1E3 = 3.0            # microseconds per step at 1e3
TARGET_US_TREE = 500.0         # microseconds per step for the many-leaf trees:
TARGET_TREES = {(200, 200 * 4096), (1000, 1000 * 100)}  # (leaves, elements)
# Issue 25's classes: at least this speed-up over torch's best row at 1000 x 100.
TARGET_TORCH_X_1000X100 = 10.0
ISSUE25 = tuple(f"optim.{c}" for c in ("NAdam", "RAdam", "Adamax", "Adadelta", "ASGD", "Rprop", "Adafactor"))

# Settings of the OpenMP runtime (shared by fusedopt, torch and DeepSpeed) that change timings.
OPENMP_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_PROC_BIND", "OMP_PLACES",
              "FUSEDOPT_SIMD")

Case = namedtuple("Case", "label leaf_sizes")  # one leaf: a bare array; several: a list


def parse_case(text):
    """'1e6' -> one array of 10**6 elements; '200x4096' -> 200 arrays of 4096."""
    text = text.strip()
    if "x" in text:
        count, size = text.split("x")
        return Case(text, [int(float(size))] * int(float(count)))
    return Case(text, [int(float(text))])


def make_tree(case, rng, scale=1.0):
    arrays = [rng.standard_normal(n, dtype=np.float32) for n in case.leaf_sizes]
    for a in arrays:
        a *= np.float32(scale)
    return arrays[0] if len(arrays) == 1 else arrays


def copy_tree(tree):
    return tree.copy() if isinstance(tree, np.ndarray) else [a.copy() for a in tree]


def last_level_cache_bytes():
    """Size of the largest CPU cache (sysfs), 32 MiB when unknown."""
    best = 0
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (entry / "size").read_text().strip()
        except OSError:
            continue
        units = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}
        value = int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
        best = max(best, value)
    return best or 32 * 1024 ** 2


# -- timing ----------------------------------------------------------------------

def _timed(step, n):
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return time.perf_counter() - t0


def measure(step, budget, max_repeats):
    """Median seconds per step, with the repeat and inner-loop counts used.

    The first step (moments created: another kernel) and a calibration that
    also warms caches are not timed. Then `repeats` timings of `inner` steps,
    sized so that the whole takes about `budget` seconds (never fewer than
    MIN_REPEATS single steps, however slow a step is).
    """
    enabled = gc.isenabled()
    gc.disable()  # as timeit does: no collector pauses inside a timing
    try:
        step()
        n = 1
        while True:
            elapsed = _timed(step, n)
            if elapsed >= min(0.01, budget / 4):
                break
            n *= 4
        est = elapsed / n
        repeats = int(min(max(budget / est, MIN_REPEATS), max_repeats))
        inner = max(1, int(budget / (repeats * est)))
        times = [_timed(step, inner) / inner for _ in range(repeats)]
    finally:
        if enabled:
            gc.enable()
    return statistics.median(times), repeats, inner


def measure_probe(n, budget):
    """Median seconds of one pass of the ADAM-shaped bandwidth probe over n floats."""
    g, p, m, v = (np.full(n, 0.5, dtype=np.float32) for _ in range(4))  # values do not matter
    first = [_core.probe(g, p, m, v) for _ in range(3)]  # page faults and warm caches
    est = max(min(first), 1e-7)
    calls = int(min(max(budget / (est + 2e-6), 5), 20000))
    times = [_core.probe(g, p, m, v) for _ in range(calls)]
    return statistics.median(times)


# -- the run -----------------------------------------------------------------------

def setup_threads(threads, want_deepspeed):
    """Same thread count everywhere; heavy imports done before any timing."""
    fusedopt.set_num_threads(threads)
    versions = {"numpy": np.__version__, "fusedopt": fusedopt.__version__}
    try:
        import numexpr
        numexpr.set_num_threads(threads)
        versions["numexpr"] = numexpr.__version__
    except ImportError:
        pass
    try:
        import torch
        versions["torch"] = torch.__version__
        if want_deepspeed:
            try:
                peers.deepspeed_adam()
                import deepspeed
                versions["deepspeed"] = deepspeed.__version__
            except peers.Skip as e:  # reported again, per case, as a skip
                print(f"note: DeepSpeed skipped: {e}")
        torch.set_num_threads(threads)  # after deepspeed's import, which may change it
    except ImportError:
        pass
    return versions


def run_case(case, names, keys, args, cache_bytes, report):
    """Every implementation of every optimizer at one size, in `args.rounds`
    interleaved rounds (A B C, A B C, ...): a slow spell of the machine then
    hits every implementation alike, and each figure is the median over rounds."""
    n = sum(case.leaf_sizes)
    probe_runs, secs, counts, skips = [], {}, {}, {}
    rng = np.random.default_rng(0)
    p0, grads = make_tree(case, rng), make_tree(case, rng, scale=0.1)
    for _ in range(args.rounds):
        probe_runs.append(measure_probe(n, args.budget))
        for name in names:
            for impl in peers.implementations(name):
                if (keys and impl.key not in keys) or (name, impl.key) in skips:
                    continue
                params = copy_tree(p0)
                try:
                    step = impl.make(name, params, grads)
                    sec, repeats, inner = measure(step, args.budget, args.repeats)
                except Exception as e:
                    if impl.key.startswith("fusedopt") and not isinstance(e, peers.Skip):
                        raise  # fusedopt failing is a bug to see, not a peer to skip
                    skips[(name, impl.key)] = str(e) if isinstance(e, peers.Skip) else f"failed: {type(e).__name__}: {e}"
                    continue
                finally:
                    step = params = None  # the 6.4e7 case holds ~2 GB per implementation
                    collect(n)
                secs.setdefault((name, impl.key), []).append(sec)
                counts[(name, impl.key)] = (repeats, inner)
    del p0, grads
    collect(n)
    probe_s = statistics.median(probe_runs)
    probe = {
        "case": case.label, "elements": n, "leaves": len(case.leaf_sizes),
        "probe_seconds": probe_s, "probe_gbps": n * 28 / probe_s / 1e9,
        "in_cache": 16 * n <= cache_bytes,  # 4 arrays of 4 bytes per element
        "rounds": [n * 28 / t / 1e9 for t in probe_runs],
    }
    report["probes"].append(probe)
    for name in names:
        rows = []
        for impl in peers.implementations(name):
            if keys and impl.key not in keys:
                continue
            if (name, impl.key) in skips:
                reason = skips[(name, impl.key)]
                report["skipped"].append({"case": case.label, "optimizer": name, "implementation": impl.key,
                                          "reason": reason})
                rows.append({"implementation": impl.key, "label": impl.label, "skipped": reason})
                continue
            runs = secs[(name, impl.key)]
            rows.append(row(case, name, impl, statistics.median(runs), *counts[(name, impl.key)], probe))
            rows[-1]["us_per_round"] = [t * 1e6 for t in runs]
        finish_ratios(rows)
        report["rows"].extend(r for r in rows if "skipped" not in r)
        print_block(case, name, probe, rows)


def collect(n):
    """Free what the last implementation left in reference cycles (torch's
    optimizers make some). A full collection costs ~0.2 s once torch is
    imported, so small cases collect the young generations only: objects made
    since the last collection, which is where those cycles are."""
    if n >= LARGE:
        gc.collect()
    else:
        gc.collect(1)


def row(case, name, impl, sec, repeats, inner, probe):
    n = sum(case.leaf_sizes)
    gbps = n * peers.BYTES_PER_ELEMENT[name] / sec / 1e9
    return {
        "case": case.label, "elements": n, "leaves": len(case.leaf_sizes), "optimizer": name,
        "implementation": impl.key, "label": impl.label,
        "us_per_step": sec * 1e6, "gelem_per_s": n / sec / 1e9, "gbps": gbps,
        "share_of_probe": gbps / probe["probe_gbps"], "probe_in_cache": probe["in_cache"],
        "repeats": repeats, "inner": inner,
    }


def finish_ratios(rows):
    """fusedopt_speedup: this implementation's time / fusedopt in-place's time."""
    ref = next((r for r in rows if r.get("implementation") == "fusedopt_inplace" and "us_per_step" in r), None)
    for r in rows:
        if ref is not None and "us_per_step" in r:
            r["fusedopt_speedup"] = r["us_per_step"] / ref["us_per_step"]


# -- output ------------------------------------------------------------------------

def print_legend(args, versions, cache_bytes):
    print(f"fusedopt {fusedopt.__version__}, SIMD {fusedopt.simd_level()}, {fusedopt.get_num_threads()} threads "
          f"(OpenMP {'on' if _core.have_openmp() else 'off'}), {_core.compiler}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    env = [f"{k}={os.environ[k]}" for k in OPENMP_ENV if k in os.environ]
    if env:
        print("environment: " + " ".join(env))
    print(f"CPU: {cpu_model()}, largest cache {cache_bytes // 1024 ** 2} MiB; budget {args.budget} s "
          f"per implementation, size and round, median of up to {args.repeats} repeats after warm-up, "
          f"then the median of {args.rounds} interleaved rounds")
    print("float32. GB/s counts the bytes an in-place step must move per element: "
          + ", ".join(f"{k} {v}" for k, v in peers.BYTES_PER_ELEMENT.items())
          + " (arrays read + written, 4 bytes each).")
    print("'of probe': GB/s over the ADAM-shaped bandwidth probe (read 4 arrays, write 3) measured at the same size "
          "in this run; a cache figure where the 4 arrays fit in the largest cache. "
          "'fusedopt x': this row's time / fusedopt in-place's time.")
    print("* paysage path: update(model, grad); its time includes the model's p -= delta (np.subtract).\n")


def print_block(case, name, probe, rows):
    where = "cache figure: the arrays fit in cache" if probe["in_cache"] else "memory"
    print(f"== {name}, {case_title(case)}: probe {probe['probe_gbps']:.1f} GB/s "
          f"= {probe['probe_gbps'] / 28:.2f} G elem/s at 28 B ({where})")
    print(f"   {'implementation':<44}{'us/step':>11}{'G elem/s':>10}{'GB/s':>8}{'of probe':>10}{'fusedopt x':>12}")
    for r in rows:
        if "skipped" in r:
            print(f"   {r['label']:<44}  skipped: {r['skipped']}")
            continue
        speed = f"{r['fusedopt_speedup']:.2f}" if "fusedopt_speedup" in r else "-"
        print(f"   {r['label']:<44}{r['us_per_step']:>11.1f}{r['gelem_per_s']:>10.3f}{r['gbps']:>8.1f}"
              f"{100 * r['share_of_probe']:>9.0f}%{speed:>12}")
    print(flush=True)


def case_title(case):
    if len(case.leaf_sizes) == 1:
        return f"{case.leaf_sizes[0]:,} elements"
    return f"{len(case.leaf_sizes)} leaves x {case.leaf_sizes[0]:,} = {sum(case.leaf_sizes):,} elements"


def check_targets(report):
    """The targets (docs/performance.md) for ADAM in place, and the same for fusedopt.optim's
    optimizers (issue 14), for the cases that were run."""
    targeted = ("ADAM",) + tuple(peers_optim.HYPER)
    rows = [r for r in report["rows"] if r["optimizer"] in targeted and r["implementation"] == "fusedopt_inplace"]
    checks = []
    for r in rows:
        if r["optimizer"] != "ADAM":
            r = {**r, "case": f"{r['optimizer']} {r['case']}"}
        if r["elements"] == 64_000_000 and r["leaves"] == 1:
            checks.append((r["case"], f"{100 * r['share_of_probe']:.1f}% of probe", ">= 95%",
                           r["share_of_probe"] >= TARGET_SHARE_LARGE))
        if r["elements"] in (100_000, 1_000_000) and r["leaves"] == 1:
            checks.append((r["case"], f"{r['gelem_per_s']:.2f} G elem/s", f">= {TARGET_GELEM}",
                           r["gelem_per_s"] >= TARGET_GELEM))
        if r["elements"] == 1000 and r["leaves"] == 1:
            checks.append((r["case"], f"{r['us_per_step']:.2f} us", f"<= {TARGET_US_1E3} us",
                           r["us_per_step"] <= TARGET_US_1E3))
        if (r["leaves"], r["elements"]) in TARGET_TREES:
            checks.append((r["case"], f"{r['us_per_step']:.0f} us", f"<= {TARGET_US_TREE:.0f} us",
                           r["us_per_step"] <= TARGET_US_TREE))
    for r in rows:
        best_torch = min((p["fusedopt_speedup"] for p in report["rows"] if p["implementation"].startswith("torch_")
                          and (p["optimizer"], p["case"]) == (r["optimizer"], r["case"])), default=None)
        if r["optimizer"] in ISSUE25 and (r["leaves"], r["elements"]) == (1000, 100_000) and best_torch:
            checks.append((f"{r['optimizer']} {r['case']}", f"{best_torch:.1f}x torch's best",
                           f">= {TARGET_TORCH_X_1000X100:g}x", best_torch >= TARGET_TORCH_X_1000X100))
    peer_rows = [r for r in report["rows"] if not r["implementation"].startswith("fusedopt")]
    slower = [r for r in peer_rows if r.get("fusedopt_speedup", 2.0) < 1.0]
    if peer_rows:
        checks.append(("all", f"{len(slower)} peer rows (any optimizer) faster than fusedopt", "none",
                       not slower))
    report["targets"] = [{"case": c, "measured": m, "target": t, "met": ok} for c, m, t, ok in checks]
    print("Targets of docs/performance.md (ADAM in place unless said):")
    for c, m, t, ok in checks:
        print(f"   {c:<24} {m:<52} target {t:<12} {'met' if ok else 'SHORT'}")
    for r in slower:
        print(f"   faster than fusedopt: {r['optimizer']} {r['case']}: {r['label']} "
              f"({r['us_per_step']:.1f} us, fusedopt x {r['fusedopt_speedup']:.2f})")


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def add_measurement_options(ap, case, threads_for, quick, results):
    """The options every side-by-side benchmark shares (bench_step.py, bench_torch.py); `case`
    names what a measurement is per (size, case), `results` the files --out gets."""
    ap.add_argument("--impls", default="", help="comma-separated implementation keys (default: all)")
    ap.add_argument("--repeats", type=int, help="most repeats per measurement (default 15; --quick 5)")
    ap.add_argument("--budget", type=float, help=f"seconds of measurement per implementation, {case} and round "
                                                 "(default 0.15; --quick 0.02)")
    ap.add_argument("--rounds", type=int, help=f"interleaved rounds per {case}, median over them "
                                               "(default 3; --quick 1)")
    ap.add_argument("--threads", type=int, default=2, help=f"threads for {threads_for} (default 2)")
    ap.add_argument("--quick", action="store_true", help=f"short measurements, {quick}")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"),
                    help=f"folder for {results} (default bench/results)")


def apply_quick_defaults(args):
    """Repeats, budget and rounds not given: the full run's, or --quick's."""
    args.repeats = args.repeats or (5 if args.quick else 15)
    args.budget = args.budget or (0.02 if args.quick else 0.15)
    args.rounds = args.rounds or (1 if args.quick else 3)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", help=f"comma-separated sizes or NxM trees (default {DEFAULT_SIZES}; "
                                     f"--quick: {QUICK_SIZES})")
    ap.add_argument("--optimizers", default=",".join(peers.OPTIMIZERS), help="comma-separated subset")
    add_measurement_options(ap, "size", "fusedopt, torch and numexpr", "sizes up to 1e6",
                            "bench_step.json and bench_step.png")
    ap.add_argument("--no-plot", action="store_true", help="skip the PNG")
    args = ap.parse_args(argv)
    apply_quick_defaults(args)
    sizes = args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES)
    cases = [parse_case(s) for s in sizes.split(",") if s.strip()]
    names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
    unknown = [n for n in names if n not in peers.OPTIMIZERS]
    if unknown:
        ap.error(f"unknown optimizers {unknown}; choose from {list(peers.OPTIMIZERS)}")
    keys = {k.strip() for k in args.impls.split(",") if k.strip()}

    started = time.time()
    want_ds = any(n in ("ADAM", "optim.Adam", "optim.AdamW", "optim.Adagrad", "optim.Lion") for n in names) and (
        not keys or "deepspeed" in keys)
    versions = setup_threads(args.threads, want_ds)
    cache_bytes = last_level_cache_bytes()
    report = {
        "meta": {
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu": cpu_model(),
            "cores": os.cpu_count(), "largest_cache_bytes": cache_bytes, "simd_level": fusedopt.simd_level(),
            "threads": fusedopt.get_num_threads(), "openmp": _core.have_openmp(), "compiler": _core.compiler,
            "versions": versions, "bytes_per_element": peers.BYTES_PER_ELEMENT, "dtype": "float32",
            "environment": {k: os.environ[k] for k in OPENMP_ENV if k in os.environ},
            "args": {"sizes": sizes, "optimizers": names, "impls": sorted(keys), "repeats": args.repeats,
                     "budget": args.budget, "rounds": args.rounds, "threads": args.threads, "quick": args.quick},
        },
        "probes": [], "rows": [], "skipped": [],
    }
    report["meta"]["load_average_start"] = os.getloadavg()
    print_legend(args, versions, cache_bytes)
    gc.collect()  # the imports' garbage, once; later collections stay cheap (see collect)
    if os.getloadavg()[0] > 1.0:
        print(f"WARNING: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: other processes "
              "compete for the CPU and threaded steps wait for descheduled threads; figures are not final "
              "(OMP_WAIT_POLICY=passive shortens that wait for every OpenMP user here).\n")
    for case in cases:
        run_case(case, names, keys, args, cache_bytes, report)
    check_targets(report)
    report["meta"]["wall_seconds"] = time.time() - started
    report["meta"]["load_average_end"] = os.getloadavg()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_step.json").write_text(json.dumps(report, indent=1))
    print(f"\nwrote {out / 'bench_step.json'}", end="")
    if not args.no_plot:
        import plot
        written = plot.plot(report, out / "bench_step.png")
        print(f", {written}" if written else " (no PNG: matplotlib is not installed)", end="")
    print(f"; {report['meta']['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
