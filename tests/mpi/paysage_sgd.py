"""Run under mpiexec -n N: paysage's own fit.SGD loop, data-parallel with only the optimizer wrapped.

    python paysage_sgd.py RESULT.json

Each rank trains an RBM on its own share of the rows (rank 0's initial parameters broadcast,
as data parallelism starts). Afterwards the parameters must be equal on every rank and equal
to a single-process replay: a copy of the initial model stepped by a plain fusedopt optimizer
with the rank-order average of the per-rank gradients the loop produced, epoch by epoch.
"""
import copy

import numpy as np
from harness import COMM, RANK, SIZE, Checks, leaves, out_path, rank_order_average, threshold

from paysage import backends as be
from paysage import batch, fit, layers
from paysage.models import BoltzmannMachine

from fusedopt import distributed
from fusedopt import optimizers as f_opt
from fusedopt import schedules as f_sched

ROWS_PER_RANK, NUM_VISIBLE, NUM_HIDDEN, BATCH_SIZE, EPOCHS = 80, 24, 10, 20, 3  # 3 batches an epoch


def model_params(model):
    return ([layer.params for layer in model.layers], [conn.weights.params for conn in model.connections])


def make_optimizer():
    return f_opt.ADAM(stepsize=f_sched.ExponentialDecay(initial=0.02, coefficient=0.6))


def train(c, shard):
    what = f"paysage fit.SGD shard={shard}"
    rng = np.random.RandomState(2024)
    rows = (rng.rand(ROWS_PER_RANK * SIZE, NUM_VISIBLE) < 0.3).astype(np.float32)
    mine = rows[RANK * ROWS_PER_RANK:(RANK + 1) * ROWS_PER_RANK]
    be.set_seed(137 + RANK)  # each rank samples its own fantasy particles
    data = batch.in_memory_batch(mine, BATCH_SIZE, train_fraction=0.75)
    model = BoltzmannMachine([layers.BernoulliLayer(NUM_VISIBLE), layers.BernoulliLayer(NUM_HIDDEN)])
    model.initialize(data, "hinton")
    for (_, a), (_, b) in zip(leaves(model_params(model)), leaves(COMM.bcast(model_params(model), root=0))):
        a[...] = b
    initial = copy.deepcopy(model)
    start = copy.deepcopy(model_params(model))

    seen = []

    def grad_method(vdata, model_, positive, negative):
        g = fit.pcd(vdata, model_, positive, negative)
        seen.append(copy.deepcopy(g))
        return g

    opt = distributed.DataParallel(make_optimizer(), shard_state=shard)
    sgd = fit.SGD(model, data)
    sgd.monitor = None  # the progress monitor's metrics are not what is compared
    sgd.train(opt, EPOCHS, method=grad_method, mcsteps=1, verbose=False)
    c.same_on_every_rank(model_params(model), f"{what}: params")

    every = COMM.allgather(seen)
    steps = len(seen)
    c.check(steps == EPOCHS * 3 and all(len(s) == steps for s in every), f"{what}: {steps} steps per rank")
    replay, ref = initial, make_optimizer()
    for step in range(steps):
        if step % 3 == 0:
            ref.update_lr()
        ref.update(replay, rank_order_average([s[step] for s in every]))
    c.equal_trees(model_params(replay), model_params(model), f"{what}: params vs the single-process replay")
    c.equal_trees(ref.delta, opt.delta, f"{what}: last delta")
    c.check(type(opt.delta) is type(ref.delta), f"{what}: delta is paysage's {type(ref.delta).__name__}")
    moved = [not np.array_equal(a, b) for (_, a), (_, b) in zip(leaves(start), leaves(model_params(model)))]
    c.check(all(moved), f"{what}: training moved every parameter")
    t = threshold(ref)
    for tol in (t, float(np.nextafter(t, 0.0))):
        ref.tolerance = opt.optimizer.tolerance = tol
        c.check(opt.check_convergence() == ref.check_convergence(), f"{what}: check_convergence at {tol!r}")
    state, ref_state = opt.state_dict(), ref.state_dict()
    c.check(all(np.array_equal(ref_state[k], state[k]) for k in ref_state), f"{what}: state_dict")


def main():
    c = Checks()
    for shard in (True, False):
        c.run(f"paysage shard={shard}", train, shard)
    c.finish(out_path())


if __name__ == "__main__":
    main()
