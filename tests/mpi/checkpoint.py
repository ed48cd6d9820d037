"""Run under mpiexec -n N: sharded checkpoints (DataParallel.save_sharded / load_sharded).

    python checkpoint.py RESULT.json DIR [--save] [--load N_SAVED ...] [--errors]

--save: three steps at this N of every case, then save_sharded(DIR/<N>/<case>) (and a second
checkpoint a step later, DIR/<N>b/<case>, for the mismatch checks). --load N: load the
checkpoint saved at N and take two more steps; parameters and state must equal a single
process that replayed the whole run (the first three steps averaged over N ranks, the rest over
this N), bit for bit. --errors: a missing file, a file of another checkpoint, a checkpoint of
other leaves and no checkpoint at all raise ValueError on every rank and change nothing.
"""
import argparse
import os
import shutil

from battery import average, grad, params0
from harness import COMM, RANK, SIZE, Checks, copy_tree, out_path, same_state

from fusedopt import distributed, optim, optimizers, schedules

TREE = "mixed"
STEPS = 3
CASES = {
    "ADAM": lambda: optimizers.ADAM(stepsize=schedules.Linear(initial=0.01, delta=0.002, minval=0.001)),
    "AdamW": lambda: optim.AdamW(lr=schedules.ExponentialDecay(initial=0.01, coefficient=0.8), weight_decay=0.1,
                                 weight_decay_mask=lambda path, a: a.ndim > 1),
}


def step(opt, params, g):
    if isinstance(opt, optim.Optimizer) or isinstance(getattr(opt, "optimizer", None), optim.Optimizer):
        opt.step(params, g)
    else:
        opt.update_lr()
        opt.update(params, g)


def replay(kind, saved_n, steps):
    """The single process's run: the first STEPS steps averaged over saved_n ranks, then over SIZE."""
    ref, p = CASES[kind](), params0(TREE)
    for s in range(steps):
        step(ref, p, average(TREE, s, n=saved_n if s < STEPS else SIZE))
    return ref, p


def save(c, root, kind, shard):
    dp, p = distributed.DataParallel(CASES[kind](), shard_state=shard), params0(TREE)
    for s in range(STEPS + 1):
        if s == STEPS:
            dp.save_sharded(os.path.join(root, f"{SIZE}", f"{kind}-{shard}"))
        step(dp, p, grad(TREE, s, RANK))
    dp.save_sharded(os.path.join(root, f"{SIZE}b", f"{kind}-{shard}"))
    c.check(os.path.exists(os.path.join(root, f"{SIZE}", f"{kind}-{shard}", f"shard-{RANK}-of-{SIZE}.npz")),
            f"save {kind} shard={shard}: no file of rank {RANK}")


def load(c, root, saved_n, kind, shard):
    what = f"load {kind} shard={shard} saved at {saved_n}, resumed at {SIZE}"
    ref, ref_p = replay(kind, saved_n, STEPS)
    dp = distributed.DataParallel(CASES[kind](), shard_state=shard)
    p = copy_tree(ref_p)
    dp.load_sharded(os.path.join(root, f"{saved_n}", f"{kind}-{shard}"), p)
    same_state(c, ref.state_dict(), dp.state_dict(), f"{what}: state_dict", loaded=True)
    for s in range(STEPS, STEPS + 2):
        step(ref, ref_p, average(TREE, s))
        step(dp, p, grad(TREE, s, RANK))
        c.equal_trees(ref_p, p, f"{what}: step {s}")
    same_state(c, ref.state_dict(), dp.state_dict(), f"{what}: state after")


def refused(c, what, fn, words):
    try:
        fn()
        got = None
    except Exception as exc:  # noqa: BLE001 - the type is checked
        got = exc
    every = COMM.allgather(None if got is None else type(got).__name__)
    c.check(all(e == "ValueError" for e in every), f"{what}: raised {every}: {got!r}")
    for word in words:
        c.check(got is not None and word in str(got), f"{what}: {word!r} not in {got}")


def errors(c, root, saved_n):
    """Checkpoints saved at saved_n (> 1), broken in a scratch directory of their own."""
    scratch = os.path.join(root, f"broken-{SIZE}")
    source = os.path.join(root, f"{saved_n}", "ADAM-True")
    other = os.path.join(root, f"{saved_n}b", "ADAM-True")
    if RANK == 0:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.copytree(source, os.path.join(scratch, "missing"))
        os.remove(os.path.join(scratch, "missing", f"shard-{saved_n - 1}-of-{saved_n}.npz"))
        shutil.copytree(source, os.path.join(scratch, "mixed"))
        shutil.copy(os.path.join(other, f"shard-{saved_n - 1}-of-{saved_n}.npz"), os.path.join(scratch, "mixed"))
        os.makedirs(os.path.join(scratch, "empty"))
    COMM.Barrier()
    for shard in (True, False):
        ref, ref_p = replay("ADAM", saved_n, STEPS)
        dp = distributed.DataParallel(CASES["ADAM"](), shard_state=shard)
        p = copy_tree(ref_p)
        step(dp, p, grad(TREE, 0, RANK))  # a state of its own, which the failed loads must leave
        before = dp.state_dict()
        tag = f"errors shard={shard}"
        refused(c, f"{tag}: a missing file", lambda: dp.load_sharded(os.path.join(scratch, "missing"), p),
                [f"shard-{saved_n - 1}-of-{saved_n}.npz"])
        refused(c, f"{tag}: a file of another checkpoint", lambda: dp.load_sharded(os.path.join(scratch, "mixed"), p),
                [])
        refused(c, f"{tag}: no checkpoint", lambda: dp.load_sharded(os.path.join(scratch, "empty"), p), ["no sharded"])
        small = params0("tiny")
        refused(c, f"{tag}: other leaves", lambda: dp.load_sharded(source, small), ["other leaves"])
        same_state(c, before, dp.state_dict(), f"{tag}: state after the failed loads")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("result")
    parser.add_argument("root")
    parser.add_argument("--save", action="store_true")
    parser.add_argument("--load", type=int, nargs="*", default=[])
    parser.add_argument("--errors", type=int)
    args = parser.parse_args()
    c = Checks()
    for saved_n in args.load:
        for kind in CASES:
            for shard in (True, False):
                c.run(f"load {saved_n} {kind} {shard}", load, args.root, saved_n, kind, shard)
    if args.errors:
        c.run("errors", errors, args.root, args.errors)
    if args.save:
        for kind in CASES:
            for shard in (True, False):
                c.run(f"save {kind} {shard}", save, args.root, kind, shard)
    c.finish(out_path())


if __name__ == "__main__":
    main()
