"""One rank failing at each point of a step, the exception caught on every rank.

Run by battery.py on 2 and 3 ranks (or alone: ``python failpoints.py RESULT.json``; mostly with
check_finite, which has every point). The last rank raises (an interrupt, a MemoryError, its
optimizer's own error) at one point of a step: in the local checks before the agreement, right
after the agreement (on a new layout, while the layout is installed, too), after the gradient
exchange, in the check of the average, in the wrapped optimizer's step, before each all-gather.
The script catches it on every rank and goes on, as a training loop that catches
KeyboardInterrupt to save a checkpoint would: every rank must raise in that same step (the
failing rank its own exception, the others the same type, or RuntimeError, naming the rank),
and nothing may hang (the launch has a time limit). A step whose every rank raised before any
rank stepped (every paysage-path step, every replicated step, a sharded in-place step that
fails before the agreed check_finite) changes nothing anywhere; a sharded in-place step whose
other ranks had stepped their shards may leave the step counts apart, which the next collective
refuses on every rank. A failure after the step's last collective (the replicated step itself)
raises on that rank only, and the next step raises on every rank. Every case then loads the
reference's state and continues bit for bit as a single process does.
"""
import copy

from battery import Model, average, grad, params0
from harness import COMM, RANK, SIZE, Checks, copy_tree, out_path, same_state

from fusedopt import distributed, optim, optimizers, schedules

LAST = SIZE - 1
TREE = "mixed"
STEPS = 2  # good steps before the failing one


def make(family, check_finite, keep):
    if family == "paysage":
        return optimizers.ADAM(stepsize=schedules.Linear(initial=0.01, delta=0.001, minval=0.001),
                               check_finite=check_finite, keep_delta=keep)
    return optim.Adam(lr=schedules.ExponentialDecay(initial=0.01, coefficient=0.9), check_finite=check_finite)


def step(dp, family, path, p, g):
    if family == "paysage":
        dp.update_lr()
        dp.update(Model(p) if path == "model" else p, g)
    else:
        dp.step(p, g)


def raising(kind, when=lambda calls: calls == 1, after=False):
    """A wrapper of a bound method that raises `kind` at the calls `when` picks (the first by
    default; before the call, or after it with `after`)."""
    def wrap(method):
        calls = [0]

        def wrapped(*args, **kwargs):
            calls[0] += 1
            hit = when(calls[0])
            if hit and not after:
                raise kind("injected")
            out = method(*args, **kwargs)
            if hit:
                raise kind("injected")
            return out
        return wrapped
    return wrap


# (name, the DataParallel attribute wrapped on the last rank, its wrapper, good steps before,
# whether it applies to (family, shard, det, check_finite, keep, path))
POINTS = [
    ("before the agreement, in the local checks", "_local_checks", raising(KeyboardInterrupt), STEPS,
     lambda f, shard, det, cf, keep, path: True),
    ("right after the agreement, installing a new layout", "_adopt", raising(KeyboardInterrupt), 0,
     lambda f, shard, det, cf, keep, path: True),
    ("right after the agreement", "_average", raising(KeyboardInterrupt), STEPS,
     lambda f, shard, det, cf, keep, path: True),
    ("after the exchange", "_alltoall", raising(MemoryError, after=True), STEPS,
     lambda f, shard, det, cf, keep, path: det),
    ("after MPI's own reduction", "_reduce", raising(MemoryError, after=True), STEPS,
     lambda f, shard, det, cf, keep, path: not det),
    ("in the check of the average", "_finite_error", raising(KeyboardInterrupt), STEPS,
     lambda f, shard, det, cf, keep, path: cf),
    ("in the wrapped optimizer's step", "optimizer", None, STEPS,
     lambda f, shard, det, cf, keep, path: True),
    ("before the all-gather", "_allgather", raising(MemoryError), STEPS,
     lambda f, shard, det, cf, keep, path: shard or det),
    ("between the parameters' and the kept delta's all-gathers", "_allgather",
     raising(MemoryError, when=lambda n: n == 2), STEPS,
     lambda f, shard, det, cf, keep, path: shard and keep and path == "params"),
]


def inject(dp, family, attr, wrapper):
    """Make the last rank fail at the point; return the exception type it raises."""
    if attr == "optimizer":  # its own step raises (a subclass's update, say)
        name = "update" if family == "paysage" else "step"
        if RANK == LAST:
            setattr(dp.optimizer, name, raising(RuntimeError)(getattr(dp.optimizer, name)))
        return RuntimeError
    if attr == "_average":  # the step's first call after the agreement
        attr = "_average_shard" if dp.shard_state else "_average_replicated"
    if RANK == LAST:
        setattr(dp, attr, wrapper(getattr(dp, attr)))
    return {"_local_checks": KeyboardInterrupt, "_adopt": KeyboardInterrupt, "_average_shard": KeyboardInterrupt,
            "_average_replicated": KeyboardInterrupt,
            "_finite_error": KeyboardInterrupt}.get(attr, MemoryError)


def uninject(dp, family, attr):
    if attr == "optimizer":
        dp.optimizer.__dict__.pop("update" if family == "paysage" else "step", None)
    else:
        for name in ("_average_shard", "_average_replicated") if attr == "_average" else (attr,):
            dp.__dict__.pop(name, None)


def local(dp, p):
    return copy_tree(p), dp.step_count, copy.deepcopy(dp.optimizer.state_dict())


def failing_step(c, family, path, shard, det, cf, keep, point):
    name, attr, wrapper, steps, _ = point
    tag = f"{family}/{path}/shard={shard}/det={det}/check_finite={cf}/keep_delta={keep}: {name}"
    ref, dp = make(family, cf, keep), distributed.DataParallel(make(family, cf, keep), shard_state=shard,
                                                               deterministic=det)
    ref_p, p = params0(TREE), params0(TREE)
    for s in range(steps):
        step(ref, family, path, ref_p, average(TREE, s))
        step(dp, family, path, p, grad(TREE, s, RANK))
    kind = inject(dp, family, attr, wrapper)
    before = local(dp, p)
    try:
        step(dp, family, path, p, grad(TREE, steps, RANK))
        got = None
    except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt included: it is what is checked
        got = exc
    uninject(dp, family, attr)
    if family == "paysage":  # update_lr() is local: the failed step's draw is put back by hand
        dp.optimizer.lr, dp.optimizer.stepsize = ref.lr, copy.deepcopy(ref.stepsize)
    every = COMM.allgather(None if got is None else (type(got).__name__, str(got)))
    # The replicated step itself runs after the step's last collective: it fails on its rank only.
    alone = attr == "optimizer" and not shard
    if alone:
        c.check(every[LAST] == (kind.__name__, "injected") and all(e is None for e in every[:LAST]),
                f"{tag}: raised {every}")
        refused_next(c, dp, family, path, p, steps, tag)
    else:
        c.check(every[LAST] == (kind.__name__, "injected"), f"{tag}: the failing rank raised {every[LAST]}")
        others = kind.__name__ if kind is not RuntimeError else "RuntimeError"
        for r, e in enumerate(every[:LAST]):
            c.check(e is not None and e[0] == others and f"on rank {LAST}" in e[1], f"{tag}: rank {r} raised {e}")
        # Every rank raised before any stepped, unless a sharded in-place step got past its
        # last agreement before the kernel (the check of the average) on the other ranks.
        atomic = path == "model" or not shard or attr == "_local_checks" or (
            cf and attr in ("_adopt", "_average", "_alltoall", "_reduce", "_finite_error"))
        if atomic:
            p_before, count, state = before
            c.equal_trees(p_before, p, f"{tag}: params changed")
            c.check(dp.step_count == count, f"{tag}: step_count {count} -> {dp.step_count}")
            same_state(c, state, dp.optimizer.state_dict(), f"{tag}: the optimizer's state changed")
        if shard:  # collective: completes on every rank, or raises on every rank (step counts apart)
            try:
                dp.state_dict()
                ok = "returned"
            except ValueError as exc:
                ok = "step_count" if "step_count" in str(exc) else str(exc)
            outcomes = COMM.allgather(ok)
            c.check(len(set(outcomes)) == 1 and outcomes[0] in (("returned",) if atomic else ("returned", "step_count")),
                    f"{tag}: state_dict() after the failed step: {outcomes}")
    if family == "paysage" and shard and path == "params":
        dp.check_convergence()  # collective on this path: must not hang
    # Set right from the reference: the next step is the single process's, bit for bit.
    dp.load_state_dict(ref.state_dict())
    p = copy_tree(ref_p)
    for s in range(steps, steps + 2):
        step(ref, family, path, ref_p, average(TREE, s))
        step(dp, family, path, p, grad(TREE, s, RANK))
        if det:
            c.equal_trees(ref_p, p, f"{tag}: resumed, step {s}")
        else:
            c.same_on_every_rank(p, f"{tag}: resumed, step {s}")


def refused_next(c, dp, family, path, p, steps, tag):
    try:
        step(dp, family, path, p, grad(TREE, steps, RANK))
        got = None
    except ValueError as exc:
        got = str(exc)
    every = COMM.allgather(got)
    c.check(all(e is not None and "step_count" in e for e in every), f"{tag}: the next step: {every}")


def configurations():
    for family, paths in (("paysage", ("model", "params")), ("optim", ("params",))):
        for path in paths:
            for shard in (True, False):
                for det in (True, False):
                    # check_finite has every point; without it, the exchange's failure leaves a
                    # sharded in-place step partly taken (on 2 ranks, fusedopt's own exchange).
                    for cf in (False, True) if SIZE == 2 and det else (True,):
                        for keep in (False, True) if family == "paysage" and path == "params" else (False,):
                            yield family, path, shard, det, cf, keep


def run_all(c):
    for family, path, shard, det, cf, keep in configurations():
        for point in POINTS:
            if point[4](family, shard, det, cf, keep, path):
                c.run(f"{family}/{path}/{shard}/{det}/{cf}/{keep}: {point[0]}", failing_step, family, path, shard,
                      det, cf, keep, point)


def main():
    c = Checks()
    run_all(c)
    c.finish(out_path())


if __name__ == "__main__":
    main()
