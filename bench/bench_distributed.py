"""Speed of a data-parallel step (fusedopt.distributed) against the raw collectives.

Run on 2 ranks from the repository root::

    OMP_NUM_THREADS=1 mpiexec -n 2 python bench/bench_distributed.py            # 1e5, 1e6, 1e7
    OMP_NUM_THREADS=1 mpiexec -n 2 python bench/bench_distributed.py --quick    # seconds: a smoke run

Before and after a change of fusedopt.distributed, side by side in one run::

    git archive OLD python/fusedopt/distributed | tar -x -C /tmp/old
    OMP_NUM_THREADS=1 mpiexec -n 2 python bench/bench_distributed.py --sizes 1e5 \
        --before /tmp/old/python/fusedopt/distributed

(the old package runs on this build's native module, so only the Python differs; each mode is
timed in both versions within the same interleaved rounds, each by four DataParallels made in
turn and stepped in turn: where one's buffers and objects lie moves its step by several µs.)

For each size (float32 ADAM, in-place path) and each mode (deterministic or MPI's own
reductions, sharded or replicated moments) every rank takes steps on the same layout. The
modes, the raw collectives and the single-process step of a size are timed in interleaved
rounds (--rounds, --repeats calls each per round); a time is the median over all calls of the
slowest rank's, after warm-up. Each step is
split into its phases (DataParallel.timings): local checks and packing, the agreement
allreduce, the gradient exchange, the native average, the optimizer step, the all-gather and
the copies back into the caller's trees; "busbw" is the bus bandwidth of the step's own
collectives (exchange and all-gather), beside the raw Allreduce's.
Beside them, the same run times the raw mpi4py collectives on the same bytes (an Allreduce,
whose bus bandwidth is 2 (N-1)/N bytes / t, the Alltoallv + Allgatherv pair the
deterministic mode uses and the Reduce_scatter + Allgatherv pair of the sharded native
mode), an 8-byte Allreduce (the per-message cost) and a single-process
step of the whole tree. Results go to a table on stdout and to JSON (--out), which
bench/model_distributed.py turns into the model of docs/distributed.md.
"""
import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
from mpi4py import MPI

import fusedopt
from fusedopt import distributed, optimizers

COMM = MPI.COMM_WORLD
SIZE, RANK = COMM.Get_size(), COMM.Get_rank()
MODES = [("det", True, True), ("det", True, False), ("native", False, True), ("native", False, False)]
PHASES = ("pack", "agree", "exchange", "average", "step", "gather", "copy")
COMM_PHASES = ("agree", "exchange", "gather")


def slowest_median(samples):
    """Median over repeats of the slowest rank's time (a step ends when every rank is done)."""
    every = COMM.allgather(samples)
    return statistics.median(max(col) for col in zip(*every))


class Timed:
    """One thing to time: fn() is called `repeats` times per round, each after a Barrier;
    `phases` (optional) reads cumulative phase timings before and after each call."""

    def __init__(self, fn, phases=None):
        self.fn, self.phases, self.samples = fn, phases, []
        self.split = {p: [] for p in PHASES} if phases else None

    def round(self, repeats):
        for _ in range(repeats):
            before = dict(self.phases()) if self.phases else None
            COMM.Barrier()
            t0 = time.perf_counter()
            self.fn()
            self.samples.append(time.perf_counter() - t0)
            if before is not None:
                after = self.phases()
                for p in PHASES:
                    self.split[p].append(after[p] - before[p])

    def warm(self, repeats):
        """Untimed calls: the first steps and every buffer's first touches."""
        self.round(repeats)
        self.samples.clear()
        for v in (self.split or {}).values():
            v.clear()

    def median(self):
        return slowest_median(self.samples)


def load_before(path, name="fusedopt._distributed_before"):
    """Another version's fusedopt.distributed package (a directory), as the module `name`."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(path, "__init__.py"),
                                                  submodule_search_locations=[path])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class Mode:
    """A mode's steps, taken in turn by its DataParallels (add() makes one, with arrays of its
    own): where a step's buffers and Python objects lie in memory moves its time by several µs,
    so versions are compared over several placements, made in turn."""

    def __init__(self, n, det, shard, package=distributed, family="paysage"):
        self.args, self.runs, self.turn = (n, det, shard, package, family), [], 0

    def add(self):
        n, det, shard, package, family = self.args
        rng = np.random.default_rng(RANK)
        params = rng.standard_normal(n).astype(np.float32)
        grad = rng.standard_normal(n).astype(np.float32)
        if family == "optim":  # fusedopt.optim's Adam, stepped with step()
            from fusedopt import optim
            dp = package.DataParallel(optim.Adam(lr=1e-3), shard_state=shard, deterministic=det)
            self.runs.append((dp.step, dp, params, grad))
        else:
            dp = package.DataParallel(optimizers.ADAM(stepsize=1e-3), shard_state=shard, deterministic=det)
            self.runs.append((dp.update, dp, params, grad))
        return self

    def step(self):
        step, _, params, grad = self.runs[self.turn % len(self.runs)]
        self.turn += 1
        step(params, grad)

    def timings(self):  # the sum over the DataParallels: a step's increments are its own
        return {p: sum(dp.timings[p] for _, dp, _, _ in self.runs) for p in PHASES}

    def item(self):
        return Timed(self.step, self.timings), self.runs[0][1]


def mode_result(n, item, dp):
    step = item.median()
    split = {p: statistics.median(COMM.allgather(statistics.median(v))) for p, v in item.split.items()}
    # Bus bandwidth of the step's own collectives (exchange + all-gather move 2 (N-1)/N of the bytes).
    busbw = 2 * (SIZE - 1) / SIZE * 4 * n / max(split["exchange"] + split["gather"], 1e-12) / 1e9
    return {"step_s": step, "phases_s": split, "comm_share": sum(split[p] for p in COMM_PHASES) / step,
            "busbw_GBps": busbw, "state_nbytes": COMM.allreduce(dp.state_nbytes, op=MPI.MAX)}


def raw_items(n):
    """The raw collectives on the bytes of n float32 elements."""
    nbytes = 4 * n
    buf = np.ones(n, np.float32)
    shard = -(-nbytes // SIZE // 64) * 64
    counts = [min(shard, max(0, nbytes - r * shard)) for r in range(SIZE)]
    displs = [min(r * shard, nbytes) for r in range(SIZE)]
    send = np.zeros(nbytes, np.uint8)
    recv = np.zeros(SIZE * shard, np.uint8)
    mine = counts[RANK]

    def pair():
        COMM.Alltoallv([send, (counts, displs), MPI.BYTE], [recv, ([mine] * SIZE, [r * mine for r in range(SIZE)]),
                                                            MPI.BYTE])
        COMM.Allgatherv(MPI.IN_PLACE, [send, (counts, displs), MPI.BYTE])
    sums = np.empty(counts[RANK] // 4, np.float32)
    float_counts = [c // 4 for c in counts]

    def native_pair():  # the sharded native mode's collectives
        COMM.Reduce_scatter([buf, MPI.FLOAT], [sums, MPI.FLOAT], float_counts, op=MPI.SUM)
        COMM.Allgatherv(MPI.IN_PLACE, [send, (counts, displs), MPI.BYTE])
    return {"allreduce_s": Timed(lambda: COMM.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)),
            "alltoall_allgather_s": Timed(pair), "reduce_scatter_allgather_s": Timed(native_pair)}


def single_item(n):
    """One process stepping the whole tree (rank 0; the others wait at the next Barrier)."""
    rng = np.random.default_rng(0)
    params = rng.standard_normal(n).astype(np.float32)
    grad = rng.standard_normal(n).astype(np.float32)
    opt = optimizers.ADAM(stepsize=1e-3)
    return Timed(lambda: opt.update(params, grad) if RANK == 0 else None)


def bench_size(n, rounds, repeats, warmup, before=None, instances=1):
    """Every mode, the raw collectives and the single-process step of n elements, timed in
    interleaved rounds (a machine's slow spell then falls on all of them alike); with `before`
    (another version's package), every mode in it too, as "<mode> before"."""
    modes = {}
    for name, det, shard in MODES:
        key = f"{name}/{'sharded' if shard else 'replicated'}"
        pair = [Mode(n, det, shard)] + ([Mode(n, det, shard, before)] if before is not None else [])
        for i in range(instances):
            for mode in pair if i % 2 == 0 else pair[::-1]:
                mode.add()
        modes[key] = pair[0].item()
        if before is not None:  # right beside it, and first every other round (what ran just
            modes[f"{key} before"] = pair[1].item()  # before a step shows in its time)
    raw = raw_items(n)
    single = single_item(n)
    items = [single, *raw.values(), *(item for item, _ in modes.values())]
    for item in items:
        item.warm(warmup)
    swapped = list(items)
    if before is not None:  # each mode's pair in the other order
        first = 1 + len(raw)
        swapped[first::2], swapped[first + 1::2] = items[first + 1::2], items[first::2]
    for r in range(rounds):
        for item in swapped if r % 2 else items:
            item.round(repeats)
    # rank 0's own times: the other ranks only waited
    entry = {"bytes": 4 * n, "single_process_step_s": COMM.bcast(statistics.median(single.samples), root=0)}
    for key, item in raw.items():
        entry[key] = item.median()
    entry["allreduce_busbw_GBps"] = 2 * (SIZE - 1) / SIZE * 4 * n / entry["allreduce_s"] / 1e9
    for key, (item, dp) in modes.items():
        entry[key] = mode_result(n, item, dp)
    return entry


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1e5,1e6,1e7")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds over every mode")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls of each per round")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="1e4 and 1e5 elements, 2 rounds of 3")
    parser.add_argument("--out", default="bench/results/distributed.json")
    parser.add_argument("--before", metavar="DIR", help="another version's fusedopt/distributed directory, "
                        "timed beside this one (a 'before' row per mode)")
    parser.add_argument("--instances", type=int, help="DataParallels per mode, stepped in turn "
                        "(default 1; 4 with --before)")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.rounds, args.repeats, args.warmup = "1e4,1e5", 2, 3, 2
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    result = {"ranks": SIZE, "machine": platform.machine(), "mpi": MPI.Get_library_version().split("\n")[0],
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "threads": fusedopt.get_num_threads(),
              "simd": fusedopt.simd_level(), "rounds": args.rounds, "repeats": args.repeats, "sizes": {}}
    tiny = np.zeros(1, np.float64)
    tiny_item = Timed(lambda: COMM.Allreduce(MPI.IN_PLACE, tiny, op=MPI.MAX))
    tiny_item.warm(20)
    tiny_item.round(200)
    result["allreduce_8B_s"] = tiny_item.median()
    before = load_before(args.before) if args.before else None
    for n in sizes:
        result["sizes"][str(n)] = bench_size(n, args.rounds, args.repeats, args.warmup, before,
                                             args.instances or (4 if before is not None else 1))
    if RANK == 0:
        report(result)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"\nwritten to {args.out}")


def report(result):
    us = 1e6
    print(f"{result['ranks']} ranks, {result['mpi']}; 8-byte Allreduce {result['allreduce_8B_s'] * us:.1f} us")
    print(f"{'elements':>10} {'mode':>20} {'step us':>10} {'comm %':>7} {'busbw GB/s':>11} {'of raw':>7} "
          f"{'vs raw allreduce':>17} {'added us':>9} {'state B':>10}")
    for n, e in result["sizes"].items():
        for key in (k for k in e if "/" in k and not k.endswith(" before")):
            m = e[key]
            raw = e["alltoall_allgather_s"] if key.startswith("det") else (
                e["reduce_scatter_allgather_s"] if key.endswith("/sharded") else e["allreduce_s"])
            # The local step the mode must take: its shard of the tree, or (replicated) all of it.
            local = e["single_process_step_s"] / (result["ranks"] if key.endswith("/sharded") else 1)
            added = m["step_s"] - raw - local
            print(f"{n:>10} {key:>20} {m['step_s'] * us:10.1f} {100 * m['comm_share']:6.1f}% "
                  f"{m['busbw_GBps']:11.2f} {100 * m['busbw_GBps'] / max(e['allreduce_busbw_GBps'], 1e-12):6.0f}% "
                  f"{m['step_s'] / e['allreduce_s']:16.2f}x {added * us:9.1f} {m['state_nbytes']:10d}")
        print(f"{n:>10} {'raw Allreduce':>20} {e['allreduce_s'] * us:10.1f} "
              f"  busbw {e['allreduce_busbw_GBps']:.2f} GB/s; Alltoallv+Allgatherv {e['alltoall_allgather_s'] * us:.1f} us;"
              f" Reduce_scatter+Allgatherv {e['reduce_scatter_allgather_s'] * us:.1f} us;"
              f" single process {e['single_process_step_s'] * us:.1f} us")
    compared = [(n, k) for n, e in result["sizes"].items() for k in e if k.endswith(" before")]
    if compared:
        print(f"\n{'elements':>10} {'mode':>20} {'before us':>10} {'after us':>10} {'added us':>9} "
              f"{'agree before':>13} {'agree after':>12} {'pack before':>12} {'pack after':>11}")
    for n, key in compared:
        e = result["sizes"][n]
        old, new = e[key], e[key[:-len(" before")]]
        print(f"{n:>10} {key[:-len(' before')]:>20} {old['step_s'] * us:10.2f} {new['step_s'] * us:10.2f} "
              f"{(new['step_s'] - old['step_s']) * us:9.2f} {old['phases_s']['agree'] * us:13.2f} "
              f"{new['phases_s']['agree'] * us:12.2f} {old['phases_s']['pack'] * us:12.2f} "
              f"{new['phases_s']['pack'] * us:11.2f}")


if __name__ == "__main__":
    sys.exit(main())
