"""Time a real paysage training epoch with paysage's optimizers and with fusedopt's.

For each optimizer, two identical RBMs (same seed, same data) are trained with
paysage's own ``fit.SGD`` loop: one with ``paysage.optimizers``/``schedules``, one
with ``fusedopt.optimizers``/``schedules``. Epochs of the two alternate so that a
change in machine load hits both alike; each trainer keeps its own copy of numpy's
global RNG state so the alternation does not change what it samples, and the final
parameters are compared bit for bit. The time spent inside ``optimizer.update`` is
measured by wrapping that method on the instance; its share of the epoch is the
optimizer's part of training time.

Needs paysage 0.2.1 (``pip install --no-deps paysage==0.2.1`` plus numexpr pandas
cytoolz matplotlib). Usage:
    MPLBACKEND=Agg python bench/bench_paysage_epoch.py [--visible 784 --hidden 200 ...]
Prints a table and writes JSON to bench/results/paysage_epoch.json (or --out).
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

os.environ.setdefault("MPLBACKEND", "Agg")

from paysage import backends as be  # noqa: E402
from paysage import batch, fit, layers  # noqa: E402
from paysage import optimizers as p_opt  # noqa: E402
from paysage import schedules as p_sched  # noqa: E402
from paysage.models import BoltzmannMachine  # noqa: E402

import fusedopt  # noqa: E402
from fusedopt import optimizers as f_opt  # noqa: E402
from fusedopt import schedules as f_sched  # noqa: E402

OPTIMIZERS = ("Gradient", "Momentum", "RMSProp", "ADAM")
MODULES = {"paysage": (p_opt, p_sched), "fusedopt": (f_opt, f_sched)}


class Trainer:
    """One RBM, its optimizer and its own global-RNG state, trained an epoch at a time."""

    def __init__(self, modules, name, data, args):
        opt_mod, sched_mod = modules
        saved = np.random.get_state()
        be.set_seed(args.seed)
        self.batch = batch.Batch({"train": batch.InMemoryTable(data, args.batch)})  # no validation set needed
        self.model = BoltzmannMachine([layers.BernoulliLayer(args.visible), layers.BernoulliLayer(args.hidden)])
        self.model.initialize(self.batch, "hinton")
        self.sgd = fit.SGD(self.model, self.batch)
        self.sgd.monitor = None  # time training itself, not paysage's validation metrics
        self.optimizer = getattr(opt_mod, name)(stepsize=sched_mod.ExponentialDecay(initial=0.01, coefficient=0.9))
        self.update_seconds = 0.0
        inner = self.optimizer.update

        def timed_update(model, grad):
            start = time.perf_counter()
            inner(model, grad)
            self.update_seconds += time.perf_counter() - start

        self.optimizer.update = timed_update  # instance attribute: the class is untouched
        self.rng_state = np.random.get_state()
        np.random.set_state(saved)

    def epoch(self):
        """Train one epoch; return (epoch seconds, seconds inside optimizer.update)."""
        saved = np.random.get_state()
        np.random.set_state(self.rng_state)
        self.update_seconds = 0.0
        start = time.perf_counter()
        self.sgd.train(self.optimizer, 1, method=fit.pcd, mcsteps=1, verbose=False)
        total = time.perf_counter() - start
        self.rng_state = np.random.get_state()
        np.random.set_state(saved)
        return total, self.update_seconds

    def params(self):
        return ([p for layer in self.model.layers for p in layer.params]
                + [p for conn in self.model.connections for p in conn.weights.params])


def run(name, data, args):
    trainers = {label: Trainer(mods, name, data, args) for label, mods in MODULES.items()}
    times = {label: [] for label in trainers}
    for repeat in range(args.warmup + args.epochs):
        for label, trainer in trainers.items():
            total, update = trainer.epoch()
            if repeat >= args.warmup:
                times[label].append((total, update))
    identical = all(np.array_equal(a, b) for a, b in
                    zip(trainers["paysage"].params(), trainers["fusedopt"].params()))
    row = {"optimizer": name, "identical_params": identical}
    for label, samples in times.items():
        epoch = statistics.median(t for t, _ in samples)
        update = statistics.median(u for _, u in samples)
        row[label] = {"epoch_s": epoch, "update_s": update, "share": update / epoch,
                      "epochs": [t for t, _ in samples], "updates": [u for _, u in samples]}
    row["update_speedup"] = row["paysage"]["update_s"] / row["fusedopt"]["update_s"]
    row["epoch_speedup"] = row["paysage"]["epoch_s"] / row["fusedopt"]["epoch_s"]
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--visible", type=int, default=784, help="visible units (MNIST-sized by default)")
    parser.add_argument("--hidden", type=int, default=200, help="hidden units")
    parser.add_argument("--rows", type=int, default=1000, help="training rows")
    parser.add_argument("--batch", type=int, default=100, help="minibatch size")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per trainer (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs first")
    parser.add_argument("--seed", type=int, default=137)
    parser.add_argument("--threads", type=int, default=None, help="fusedopt threads (default: its own default)")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS), help="comma-separated subset")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "results", "paysage_epoch.json"))
    args = parser.parse_args(argv)

    if args.threads is not None:
        fusedopt.set_num_threads(args.threads)
    data = (np.random.RandomState(args.seed).rand(args.rows, args.visible) < 0.2).astype(np.float32)
    load_before = os.getloadavg()
    rows = [run(name, data, args) for name in args.optimizers.split(",")]
    load_after = os.getloadavg()

    n_params = args.visible * args.hidden + args.visible + args.hidden
    print(f"paysage RBM {args.visible}x{args.hidden} ({n_params} parameters), {args.rows // args.batch} batches "
          f"of {args.batch} per epoch; median of {args.epochs} epochs; fusedopt simd={fusedopt.simd_level()} "
          f"threads={fusedopt.get_num_threads()}; load average {load_before[0]:.2f} -> {load_after[0]:.2f}")
    calls = args.rows // args.batch  # optimizer.update calls per epoch
    print(f"epoch: median time of one epoch; update: time inside optimizer.update per call (its total in the "
          f"epoch / {calls}); share: update's part of the epoch")
    head = (f"{'optimizer':<10} {'epoch paysage':>14} {'epoch fusedopt':>15} {'update paysage':>15} "
            f"{'update fusedopt':>16} {'share before':>13} {'share after':>12} {'update x':>9} {'identical':>10}")
    print(head)
    print("-" * len(head))
    for r in rows:
        p, f = r["paysage"], r["fusedopt"]
        print(f"{r['optimizer']:<10} {p['epoch_s'] * 1e3:>11.1f} ms {f['epoch_s'] * 1e3:>12.1f} ms "
              f"{p['update_s'] * 1e6 / calls:>12.0f} us {f['update_s'] * 1e6 / calls:>13.0f} us {p['share']:>13.1%} "
              f"{f['share']:>12.1%} {r['update_speedup']:>8.1f}x {str(r['identical_params']):>10}")

    result = {
        "benchmark": "paysage_epoch",
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": vars(args) | {"parameters": n_params},
        "machine": {"cpu_count": os.cpu_count(), "load_average_before": load_before,
                    "load_average_after": load_after, "platform": platform.platform(),
                    "python": sys.version.split()[0], "numpy": np.__version__,
                    "fusedopt_simd": fusedopt.simd_level(), "fusedopt_threads": fusedopt.get_num_threads(),
                    "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "OPENBLAS_NUM_THREADS")
                            if k in os.environ}},
        "rows": rows,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(f"wrote {args.out}")
    return 0 if all(r["identical_params"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
