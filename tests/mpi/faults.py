"""Run under mpiexec -n N (N >= 2): ranks configured unlike each other, and one-rank failures.

    python faults.py RESULT.json GROUP      (GROUP: hangs, divergence or failures)

Each case of issue 23 on both families (fusedopt.optimizers' ADAM on the paysage and the
in-place path, fusedopt.optim's Adam), both shard modes: a configuration that differs on the
last rank (or rank 0) must raise the same ValueError on every rank, naming what differs and
the ranks of each value, and change nothing; after the rank is set right, the next step must
be the single process's, bit for bit. A hang is a failure: the launch has a time limit.
"""
import copy
import sys

import numpy as np
from battery import OPTIMIZERS, Model, average, grad, params0
from harness import COMM, RANK, SIZE, Checks, copy_tree, leaves, out_path, same_state

from fusedopt import distributed, optim, optimizers, schedules

LAST = SIZE - 1
TREE = "mixed"


def make(family, **kw):
    if family == "paysage":
        return optimizers.ADAM(**{"stepsize": schedules.Linear(initial=0.01, delta=0.001, minval=0.001), **kw})
    return optim.Adam(**{"lr": 0.01, **kw})


class Run:
    """A DataParallel and its single-process reference, stepped alike (paysage path: a model)."""

    def __init__(self, family, shard, path, mine=None, steps=1):
        self.family, self.path = family, path
        self.ref = make(family)
        self.dp = distributed.DataParallel(make(family, **(mine or {})), shard_state=shard)
        self.ref_p, self.p = params0(TREE), params0(TREE)
        self.step = 0
        for _ in range(steps):
            self.good_step()

    @property
    def target(self):
        return Model(self.p) if self.path == "model" else self.p

    def update(self, grad_tree=None):
        g = grad(TREE, self.step, RANK) if grad_tree is None else grad_tree
        if self.family == "paysage":
            opt = self.dp.optimizer
            saved = opt.lr, copy.deepcopy(opt.stepsize)
            self.dp.update_lr()
            try:
                self.dp.update(self.target, g)
            except BaseException:
                opt.lr, opt.stepsize = saved  # update_lr() is local: put back what it drew
                raise
        else:
            self.dp.step(self.p, g)

    def good_step(self):
        if self.family == "paysage":
            self.ref.update_lr()
            self.ref.update(Model(self.ref_p) if self.path == "model" else self.ref_p, average(TREE, self.step))
        else:
            self.ref.step(self.ref_p, average(TREE, self.step))
        self.update()
        self.step += 1

    def local(self):
        """What this rank holds (no collective): parameters, step count, the wrapped optimizer's own state."""
        opt = self.dp.optimizer
        return copy_tree(self.p), self.dp.step_count, copy.deepcopy(opt.state_dict())

    def unchanged(self, c, before, what):
        p, count, state = before
        c.equal_trees(p, self.p, f"{what}: params changed")
        c.check(self.dp.step_count == count, f"{what}: step_count {count} -> {self.dp.step_count}")
        same_state(c, state, self.dp.optimizer.state_dict(), f"{what}: the optimizer's state changed")

    def matches(self, c, what):
        self.good_step()
        c.equal_trees(self.ref_p, self.p, f"{what}: the next good step")


def refused(c, what, fn, words, kind=ValueError, same_text=True):
    """fn() raises `kind` on every rank (the same message everywhere, when same_text), naming `words`."""
    try:
        fn()
        got = None
    except Exception as exc:  # noqa: BLE001 - the type is checked
        got = exc
    every = COMM.allgather(None if got is None else (type(got).__name__, str(got)))
    c.check(all(e is not None and e[0] == kind.__name__ for e in every), f"{what}: raised {every}")
    if same_text:
        c.check(len(set(every)) == 1, f"{what}: messages differ across ranks: {every}")
    for word in words:
        c.check(got is not None and word in str(got), f"{what}: {word!r} not in {got}")
    return got


def _set(**values):
    def apply(opt):
        for name, value in values.items():
            target = opt.memory if name == "mean_weight" else opt
            setattr(target, name, value)
    return apply


def cases(family):
    """(name, the last rank's differing options, what the message names)."""
    if family == "paysage":
        return [("check_finite", {"check_finite": True}, ["check_finite", f"rank {LAST}"]),
                ("keep_delta", {"keep_delta": True}, ["keep_delta"]),
                ("ascent", {"ascent": True}, ["ascent"]),
                ("lr", {"stepsize": schedules.Linear(initial=0.02, delta=0.001, minval=0.001)}, ["lr", f"rank {LAST}"]),
                ("betas", {"mean_weight": 0.8}, ["mean_weight"]),
                ("tolerance", {"tolerance": 1e-3}, ["tolerance"])]
    return [("check_finite", {"check_finite": True}, ["check_finite", f"rank {LAST}"]),
            ("lr", {"lr": 0.02}, ["lr", "0.02"]),
            ("betas", {"betas": (0.8, 0.999)}, ["hyper-parameters", "0.8"]),
            ("weight decay", {"weight_decay": 0.1}, ["hyper-parameters"]),
            ("maximize", {"maximize": True}, ["hyper-parameters"])]


HANGS = ("check_finite", "keep_delta")  # today: one rank in a collective the others never join


def configurations(c, family, shard, path, group):
    """Each option unlike on the last rank: made so (a fresh optimizer), or set so after a step."""
    tag = f"{family}/{path}/shard={shard}"
    for name, kw, words in cases(family):
        if (name in HANGS) != (group == "hangs"):
            continue
        for steps in (0, 1):
            what = f"{tag}: {name} on rank {LAST} only, " + ("from the start" if steps == 0 else "set after a step")
            run = Run(family, shard, path, kw if RANK == LAST and steps == 0 else None, steps=steps)
            if RANK == LAST and steps:
                _set(**kw)(run.dp.optimizer)
            before = run.local()
            refused(c, what, run.update, words)
            run.unchanged(c, before, what)
            if steps:  # set right: a fresh one resumes from the reference, and steps as it does
                run.dp = distributed.DataParallel(make(family), shard_state=shard)
                run.dp.load_state_dict(run.ref.state_dict())
                run.matches(c, what)


def schedules_apart(c, family, shard, path, group):
    """An extra update_lr() (a schedule drawn once more) on one rank."""
    what = f"{family}/{path}/shard={shard}: a schedule one step ahead on rank {LAST}"
    if family == "paysage":
        run = Run(family, shard, path)
        if RANK == LAST:
            run.dp.update_lr()
        before = run.local()
        refused(c, what, run.update, ["schedule value"])
    else:
        ref = optim.Adam(lr=schedules.ExponentialDecay(initial=0.01, coefficient=0.9))
        dp = distributed.DataParallel(optim.Adam(lr=schedules.ExponentialDecay(initial=0.01, coefficient=0.9)),
                                      shard_state=shard)
        p = params0(TREE)
        dp.step(p, grad(TREE, 0, RANK))
        ref.step(params0(TREE), average(TREE, 0))
        if RANK == LAST:
            next(dp.optimizer.lr)
        value = dp.optimizer.lr.value
        refused(c, what, lambda: dp.step(p, grad(TREE, 1, RANK)), ["lr"])
        c.check(dp.optimizer.lr.value == value, f"{what}: the schedule moved on a refused step")
        c.check(dp.step_count == 1, f"{what}: step_count {dp.step_count}")
        return
    run.unchanged(c, before, what)


def take_step(family, opt, target, g):
    """One step as each family takes it (paysage: update_lr() first)."""
    if family == "paysage":
        opt.update_lr()
        opt.update(target, g)
    else:
        opt.step(target, g)


def stepped_before_wrapping(c, family, shard, path, group):
    """The optimizer stepped before it was wrapped: on rank 0 only (refused, naming the step
    counts), or on every rank alike (sharded: its moments are cut into the shards)."""
    tag = f"{family}/{path}/shard={shard}"
    pre = make(family)
    pre_p = params0(TREE)
    steps = 3 if RANK == 0 else 0
    for s in range(steps):
        take_step(family, pre, pre_p, average(TREE, s))
    dp = distributed.DataParallel(pre, shard_state=shard)
    p = params0(TREE)

    if SIZE > 1:
        refused(c, f"{tag}: stepped on rank 0 before wrapping",
                lambda: take_step(family, dp, Model(p) if path == "model" else p, grad(TREE, 0, RANK)),
                ["step_count", "rank 0"])
        c.equal_trees(params0(TREE), p, f"{tag}: stepped on rank 0 before wrapping: params")
    # Every rank alike: the wrapper resumes from it as a single process would.
    ref, pre = make(family), make(family)
    ref_p, pre_p, p = params0(TREE), params0(TREE), params0(TREE)
    for s in range(2):
        for opt, params in ((ref, ref_p), (pre, pre_p)):
            take_step(family, opt, params, average(TREE, s))
    dp = distributed.DataParallel(pre, shard_state=shard)
    same_state(c, ref.state_dict(), dp.state_dict(), f"{tag}: stepped before wrapping, state_dict")
    p = copy_tree(ref_p)
    for s in range(2, 4):
        take_step(family, ref, Model(ref_p) if path == "model" else ref_p, average(TREE, s))
        take_step(family, dp, Model(p) if path == "model" else p, grad(TREE, s, RANK))
        c.equal_trees(ref_p, p, f"{tag}: stepped before wrapping on every rank, step {s}")
    same_state(c, ref.state_dict(), dp.state_dict(), f"{tag}: stepped before wrapping, state after")


def reset_on_one_rank(c, family, shard, path, group):
    tag = f"{family}/{path}/shard={shard}: reset() on rank {LAST}"
    run = Run(family, shard, path, steps=2)
    if RANK == LAST:
        run.dp.reset()
    before = run.local()
    refused(c, f"{tag}, same layout", run.update, ["optimizer state exists"])
    run.unchanged(c, before, f"{tag}, same layout")
    # A new layout: the ranks with moments refuse it, the reset one would take it.
    g = grad(TREE, run.step, RANK)
    g["w"] = g["w"].reshape(17, 33)
    q = copy_tree(run.p)
    q["w"] = q["w"].reshape(17, 33)
    run.p = q
    before = run.local()
    refused(c, f"{tag}, new layout", lambda: run.update(g), [], same_text=False)
    run.unchanged(c, before, f"{tag}, new layout")
    if shard:  # state_dict() gathers on some ranks only: refused on every rank instead
        refused(c, f"{tag}: state_dict", run.dp.state_dict, ["moments"])


def model_raises(c, shard, det):
    """Issue 23 item 3: a paysage model whose parameter_update raises leaves the step undone."""
    tag = f"paysage/model raises/shard={shard}/det={det}"

    class Failing(Model):
        def __init__(self, params, ranks):
            super().__init__(params)
            self.ranks = ranks

        def parameter_update(self, delta):
            if RANK in self.ranks:
                raise RuntimeError("the model refused its delta")
            super().parameter_update(delta)

    ref = OPTIMIZERS["ADAM"]()
    dp = distributed.DataParallel(OPTIMIZERS["ADAM"](), shard_state=shard, deterministic=det)
    ref_p, p = params0(TREE), params0(TREE)
    for s in range(2):
        for opt in (ref, dp):
            opt.update_lr()
        ref.update(Model(ref_p), average(TREE, s))
        dp.update(Model(p), grad(TREE, s, RANK))
    dp.update_lr()
    before = copy_tree(p), dp.step_count, copy.deepcopy(dp.optimizer.state_dict())
    refused(c, f"{tag}: on every rank", lambda: dp.update(Failing(p, range(SIZE)), grad(TREE, 2, RANK)), [],
            kind=RuntimeError)
    c.equal_trees(before[0], p, f"{tag}: params")
    c.check(dp.step_count == before[1], f"{tag}: step_count {before[1]} -> {dp.step_count}")
    same_state(c, before[2], dp.optimizer.state_dict(), f"{tag}: moments")
    ref.update_lr()
    ref.update(Model(ref_p), average(TREE, 2))
    dp.update(Model(p), grad(TREE, 2, RANK))
    if det:
        c.equal_trees(ref_p, p, f"{tag}: the next good step")
    if SIZE > 1:  # on one rank: that rank's step is undone, the next step refused on every rank
        for opt in (ref, dp):
            opt.update_lr()
        try:
            dp.update(Failing(p, [LAST]), grad(TREE, 3, RANK))
        except RuntimeError:
            c.check(RANK == LAST, f"{tag}: raised on rank {RANK}")
        dp.update_lr()
        refused(c, f"{tag}: the step after one rank's model raised", lambda: dp.update(Model(p), grad(TREE, 4, RANK)),
                ["step_count"])


def nan_with_a_schedule(c, shard):
    """fusedopt.optim with a schedule and check_finite: a NaN on one rank's gradient is refused on
    every rank before the step, and the schedule drawn for it is put back (as a single process does)."""
    tag = f"optim/nan with a schedule/shard={shard}"

    def make_one():
        return optim.Adam(lr=schedules.ExponentialDecay(initial=0.01, coefficient=0.9), check_finite=True)
    ref, dp = make_one(), distributed.DataParallel(make_one(), shard_state=shard)
    ref_p, p = params0(TREE), params0(TREE)
    ref.step(ref_p, average(TREE, 0))
    dp.step(p, grad(TREE, 0, RANK))
    value = dp.optimizer.lr.value
    g = grad(TREE, 1, RANK)
    if RANK == LAST:
        g["b"][2] = np.nan
    refused(c, tag, lambda: dp.step(p, g), [], kind=FloatingPointError, same_text=False)
    c.check(dp.optimizer.lr.value == value, f"{tag}: the schedule moved ({value} -> {dp.optimizer.lr.value})")
    c.check(dp.step_count == 1, f"{tag}: step_count {dp.step_count}")
    ref.step(ref_p, average(TREE, 1))
    dp.step(p, grad(TREE, 1, RANK))
    c.equal_trees(ref_p, p, f"{tag}: the next good step")


def opt_out(c):
    """The abort hook: installed by the first DataParallel of a job of several ranks, removable."""
    c.check(sys.excepthook is not sys.__excepthook__, "no hook after DataParallel()")
    distributed.abort_on_uncaught(False)
    c.check(sys.excepthook is sys.__excepthook__, "abort_on_uncaught(False) left the hook")
    distributed.DataParallel(optimizers.ADAM())
    c.check(sys.excepthook is sys.__excepthook__, "a DataParallel installed it after the opt-out")
    distributed.abort_on_uncaught(True)
    c.check(sys.excepthook is not sys.__excepthook__, "abort_on_uncaught(True) did not install it")


# The cases by kind: each launch runs one group (so that each fails alone on code
# that hangs in another), on both families, both paths and both shard modes.
SECTIONS = {"hangs": (configurations, stepped_before_wrapping, reset_on_one_rank),
            "divergence": (configurations, schedules_apart, stepped_before_wrapping)}


def main():
    group = sys.argv[2]
    c = Checks()
    for family, paths in (("paysage", ("model", "params")), ("optim", ("params",))):
        for shard in (True, False):
            for path in paths:
                for section in SECTIONS.get(group, ()):
                    if section is stepped_before_wrapping and shard != (group == "hangs"):
                        continue  # sharded it hung; replicated the step counts diverged
                    c.run(f"{section.__name__} {family}/{path}/shard={shard}", section, family, shard, path, group)
    if group == "failures":
        for shard in (True, False):
            for det in (True, False):
                c.run(f"model raises shard={shard} det={det}", model_raises, shard, det)
        for shard in (True, False):
            c.run(f"nan with a schedule shard={shard}", nan_with_a_schedule, shard)
        c.run("opt out", opt_out)
    c.finish(out_path())


if __name__ == "__main__":
    main()
