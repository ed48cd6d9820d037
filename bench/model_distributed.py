"""The model of a data-parallel step at N ranks on 10 and 100 Gb/s networks (docs/distributed.md),
from the costs bench_distributed.py measured::

    python bench/model_distributed.py bench/results/distributed.json [--elements 1e6,1e7,1e8]

Measured (at the largest size of the run, per rank): c_pack, seconds per byte of packing the
gradient (and the local checks); c_avg, per byte read by a separate rank-average pass (0 when the
step kernel averages the rows: its cost is then in the step); c_step, per
element of the single-process ADAM step; o, the fixed cost of a step (the 1e4-element or the
smallest step minus its modelled parts); alpha, the per-message cost of the MPI library (an
8-byte Allreduce). Assumed: the network's bandwidth B and its latency L per message (default
15 us at 10 Gb/s, TCP; 2 us at 100 Gb/s, RDMA), one rank per node.

A step of n float32 elements (4n bytes) at N ranks, ring/pairwise algorithms:
    messages  m(N)   = 2 (N - 1) + 2 ceil(log2 N)        (exchange + all-gather + agreement)
    bytes     b(n,N) = 2 (N - 1) / N * 4n                 (both algorithms move the same bytes)
    T_comm           = m(N) (alpha + L) + b(n,N) / B
    sharded:    T = o + c_pack 4n + c_avg 4n + c_step n / N + c_pack 4n + T_comm
    replicated: T = o + c_pack 4n + c_avg 4n + c_step n     + T_comm
(the second c_pack 4n of the sharded step is the copy of the gathered parameters back into the
caller's arrays; MPI's own reduce-scatter replaces c_avg 4n by its own summation).
"""
import argparse
import json
import math

NETWORKS = {"10 Gb/s": (10e9 / 8, 15e-6), "100 Gb/s": (100e9 / 8, 2e-6)}
RANKS = (2, 4, 8, 16, 32, 64)


def constants(result):
    sizes = sorted(result["sizes"], key=int)
    big = result["sizes"][sizes[-1]]
    n = int(sizes[-1])
    det = big["det/sharded"]["phases_s"]
    c = {"c_pack": det["pack"] / (4 * n), "c_avg": det["average"] / (4 * n),
         "c_step": big["single_process_step_s"] / n, "alpha": result["allreduce_8B_s"]}
    small_n = int(sizes[0])
    small = result["sizes"][sizes[0]]["det/sharded"]
    modelled = (2 * c["c_pack"] + c["c_avg"]) * 4 * small_n + c["c_step"] * small_n / result["ranks"]
    c["o"] = max(0.0, small["step_s"] - sum(small["phases_s"][p] for p in ("exchange", "agree", "gather")) - modelled)
    return c


def step_time(c, n, ranks, bandwidth, latency, sharded):
    messages = 2 * (ranks - 1) + 2 * math.ceil(math.log2(ranks))
    comm = messages * (c["alpha"] + latency) + 2 * (ranks - 1) / ranks * 4 * n / bandwidth
    local = c["o"] + (c["c_pack"] + c["c_avg"]) * 4 * n
    if sharded:
        return local + c["c_pack"] * 4 * n + c["c_step"] * n / ranks + comm, comm
    return local + c["c_step"] * n + comm, comm


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("result")
    parser.add_argument("--elements", default="1e6,1e7,1e8")
    args = parser.parse_args()
    with open(args.result) as f:
        result = json.load(f)
    c = constants(result)
    print("measured: " + ", ".join(f"{k} = {v:.3g}" for k, v in c.items()) + " (seconds per byte / element / step)")
    for net, (bandwidth, latency) in NETWORKS.items():
        print(f"\n{net} (latency {latency * 1e6:.0f} us per message): ms per step, comm share in brackets")
        print(f"{'elements':>10} {'moments':>11} " + " ".join(f"{'N=' + str(r):>13}" for r in RANKS))
        for n in (int(float(x)) for x in args.elements.split(",")):
            for sharded in (True, False):
                cells = []
                for r in RANKS:
                    t, comm = step_time(c, n, r, bandwidth, latency, sharded)
                    cells.append(f"{t * 1e3:7.2f} ({100 * comm / t:2.0f}%)")
                single = c["c_step"] * n * 1e3
                print(f"{n:>10.0e} {'sharded' if sharded else 'replicated':>11} " + " ".join(f"{x:>13}" for x in cells)
                      + f"   single process {single:.2f}")


if __name__ == "__main__":
    main()
