"""Two builds of fusedopt side by side: bench_step.py run alternately by two interpreters.

Each interpreter has its own fusedopt installed (for example two virtual environments, one
with the code before a change and one after). Rounds alternate between them (A, B, A, B, ...)
so that a slow spell of a shared machine hits both alike; the table gives, per case, the median
over rounds of each build's microseconds per step and their ratio::

    python bench/compare_builds.py --a /venvs/before/bin/python --b /venvs/after/bin/python \\
        --rounds 7 -- --impls fusedopt_inplace --optimizers ADAM --sizes 1e3,1e6

Everything after ``--`` goes to bench_step.py (``--rounds 1 --no-plot --out ...`` are added);
``--bench torch`` runs bench_torch.py instead (fusedopt.torch; ``--rounds 1 --out ...`` added).
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The bench script, the flags it is given, and the report it writes.
BENCHES = {"step": ("bench_step.py", ["--no-plot"], "bench_step.json"),
           "torch": ("bench_torch.py", [], "bench_torch.json")}


def run_once(python, bench, bench_args, out):
    script, flags, report = BENCHES[bench]
    cmd = [python, str(HERE / script), *bench_args, "--rounds", "1", *flags, "--out", out]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    rows = json.loads((Path(out) / report).read_text())["rows"]
    return {(r["optimizer"], r["case"], r["implementation"]): r["us_per_step"] for r in rows if "us_per_step" in r}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", required=True, help="interpreter of build A (e.g. before)")
    ap.add_argument("--b", required=True, help="interpreter of build B (e.g. after)")
    ap.add_argument("--labels", default="A,B", help="names of the two builds in the table")
    ap.add_argument("--rounds", type=int, default=5, help="rounds per build, alternating")
    ap.add_argument("--json", help="write the medians here")
    ap.add_argument("--bench", choices=sorted(BENCHES), default="step", help="bench_step.py or bench_torch.py")
    args, rest = ap.parse_known_args(argv)
    bench_args = [a for a in rest if a != "--"]
    label_a, label_b = args.labels.split(",")
    times = {label_a: {}, label_b: {}}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.rounds):
            for label, python in ((label_a, args.a), (label_b, args.b)) if k % 2 == 0 else \
                    ((label_b, args.b), (label_a, args.a)):
                for key, us in run_once(python, args.bench, bench_args, tmp).items():
                    times[label].setdefault(key, []).append(us)
            print(f"round {k + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    keys = [k for k in times[label_a] if k in times[label_b]]
    print(f"median us per step over {args.rounds} alternating rounds; ratio = {label_b} / {label_a}")
    print(f"{'optimizer':<10}{'case':<10}{'implementation':<22}{label_a:>12}{label_b:>12}{'ratio':>8}")
    result = []
    for key in keys:
        a, b = statistics.median(times[label_a][key]), statistics.median(times[label_b][key])
        print(f"{key[0]:<10}{key[1]:<10}{key[2]:<22}{a:>12.2f}{b:>12.2f}{b / a:>8.3f}")
        result.append({"optimizer": key[0], "case": key[1], "implementation": key[2],
                       label_a: a, label_b: b, "ratio": b / a, "rounds": args.rounds})
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
