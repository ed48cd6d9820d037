"""The Python cost of a data-parallel step: versions of fusedopt.distributed side by side.

Times DataParallel steps of both families (fusedopt.optimizers' ADAM through update(), in place;
fusedopt.optim's Adam through step()) in both modes (sharded, replicated; deterministic) at
each size, in this checkout's package and in other versions' (directories of their
fusedopt/distributed package, run on this build's native module, so only the Python differs),
all in the same interleaved rounds. Run from the repository root::

    git archive OLD python/fusedopt/distributed | tar -x -C /tmp/old
    OMP_NUM_THREADS=1 nice -n -15 mpiexec -n 2 python bench/bench_distributed_cost.py \
        --version before=/tmp/old/python/fusedopt/distributed

A time is the median over all calls of the slowest rank's (bench_distributed.Timed); "checks"
and "agree" are the medians of DataParallel.timings' "pack" and "agree" phases.
"""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_distributed import COMM, RANK, SIZE, Mode, load_before  # noqa: E402

from fusedopt import distributed  # noqa: E402

FAMILIES = ("paysage", "optim")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="append", default=[], metavar="NAME=DIR",
                        help="another version's fusedopt/distributed directory (repeatable)")
    parser.add_argument("--sizes", default="1e3,1e5")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--instances", type=int, default=2, help="DataParallels per version and case, in turn")
    args = parser.parse_args()
    versions = [(name, load_before(path, f"fusedopt._distributed_{name}"))
                for name, path in (v.split("=", 1) for v in args.version)] + [("this", distributed)]
    cases = {}
    for n in (int(float(s)) for s in args.sizes.split(",")):
        for family in FAMILIES:
            for shard in (True, False):
                row = cases[n, family, "sharded" if shard else "replicated"] = {}
                modes = {name: Mode(n, True, shard, package, family) for name, package in versions}
                for i in range(args.instances):
                    for mode in modes.values():
                        mode.add()
                for name, mode in modes.items():
                    row[name] = mode.item()[0]
    items = [item for row in cases.values() for item in row.values()]
    for item in items:
        item.warm(5)
    for r in range(args.rounds):
        order = items if r % 2 == 0 else items[::-1]
        for item in order:
            item.round(args.repeats)
    names = [name for name, _ in versions]
    table = []
    for (n, family, mode), row in cases.items():
        cells = []
        for name in names:
            item = row[name]
            phase = {p: statistics.median(COMM.allgather(statistics.median(item.split[p]))) for p in ("pack", "agree")}
            cells.append((item.median(), phase["pack"], phase["agree"]))
        table.append((n, family, mode, cells))
    if RANK == 0:
        us = 1e6
        print(f"{SIZE} rank(s), load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
              "step us (checks us, agree us)")
        print(f"{'elements':>9} {'family':>8} {'mode':>10} " + " ".join(f"{name:>24}" for name in names))
        for n, family, mode, cells in table:
            print(f"{n:>9} {family:>8} {mode:>10} " + " ".join(
                f"{s * us:9.1f} ({p * us:5.1f}, {a * us:4.1f})" for s, p, a in cells))


if __name__ == "__main__":
    sys.exit(main())
