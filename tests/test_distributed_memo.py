"""The step's agreement hashes the wrapped optimizer's settings again only when they may have
changed: every assignment of a setting bumps the optimizer's (or its memory's) change count
``_version``, and what changes without an assignment (a schedule's value, whether state exists)
is read every step. Checked in one process (MPI.COMM_SELF): the memo of the hash
(``DataParallel._static``) is kept across steps, made again after each kind of change, and the
agreed hash follows the change. The refusal of a change on one rank only is checked under
mpiexec (tests/mpi/battery.py, unlike_later)."""
import numpy as np
import pytest

pytest.importorskip("mpi4py", reason="fusedopt.distributed needs mpi4py (pip install 'fusedopt[mpi]')")

from mpi4py import MPI  # noqa: E402

from fusedopt import distributed, optim, optimizers, schedules  # noqa: E402


class ArrayValue:
    """A schedule whose value is a 0-d array, changed in place."""

    def __init__(self, value):
        self.value = np.array(value)

    def __next__(self):
        return float(self.value)


def _stepped(dp, step, n=3):
    params = np.zeros(8, np.float32)
    for i in range(n):
        step(dp, params, np.full(8, 0.5 + i, np.float32))
    return params


def _paysage_step(dp, params, grad):
    dp.update(params, grad)


def _optim_step(dp, params, grad):
    dp.step(params, grad)


PAYSAGE_CHANGES = {
    "tolerance": lambda o: setattr(o, "tolerance", 1e-3),
    "ascent": lambda o: setattr(o, "ascent", True),
    "check_finite": lambda o: setattr(o, "check_finite", True),
    "keep_delta": lambda o: setattr(o, "keep_delta", True),
    "lr": lambda o: setattr(o, "lr", 0.5),
    "update_lr": lambda o: o.update_lr(),
    "stepsize": lambda o: setattr(o, "stepsize", schedules.Constant(initial=0.01)),
    "memory weight": lambda o: setattr(o.memory, "mean_weight", 0.5),
    "memory": lambda o: setattr(o, "memory", optimizers.GradientMemory(0.9, 0.999)),
    "reset": lambda o: o.reset(),
    "load_state_dict": lambda o: o.load_state_dict(o.state_dict()),
}


@pytest.mark.parametrize("shard", [True, False])
@pytest.mark.parametrize("change", sorted(PAYSAGE_CHANGES))
def test_paysage_memo_kept_across_steps_and_made_again_after_a_change(change, shard):
    opt = optimizers.ADAM(stepsize=0.01)
    dp = distributed.DataParallel(opt, comm=MPI.COMM_SELF, shard_state=shard)
    params = _stepped(dp, _paysage_step)
    memo = dp._static
    dp.update(params, np.ones(8, np.float32))
    assert dp._static is memo  # nothing changed: the settings were not hashed again
    PAYSAGE_CHANGES[change](opt)
    if change in ("reset", "memory"):
        dp.reset()  # (the wrapper's own reset forgets a state it holds for the layout too)
    dp.update(params, np.ones(8, np.float32))
    assert dp._static is not memo, change


def test_paysage_array_value_changed_in_place_is_read_every_step():
    # Before any update_lr() the step's rate is stepsize.value: a 0-d array can change with no
    # assignment, so the hash is made again every step and follows it.
    opt = optimizers.ADAM(stepsize=ArrayValue(0.01))
    dp = distributed.DataParallel(opt, comm=MPI.COMM_SELF)
    params = _stepped(dp, _paysage_step)
    opt.stepsize.value[...] = 0.03
    fresh = dp._agreement_value(dp._layout, False, *dp._key(opt, False))[0]
    dp._static = None
    assert dp._agreement_value(dp._layout, False, *dp._key(opt, False))[0] == fresh  # the fields made afresh
    opt.stepsize.value[...] = 0.01
    assert dp._agreement_value(dp._layout, False, *dp._key(opt, False))[0] != fresh


OPTIM_CHANGES = {
    "lr": lambda o: setattr(o, "lr", 5e-4),
    "betas": lambda o: setattr(o, "betas", (0.8, 0.99)),
    "weight_decay": lambda o: setattr(o, "weight_decay", 0.1),
    "check_finite": lambda o: setattr(o, "check_finite", True),
    "max_grad_norm": lambda o: setattr(o, "max_grad_norm", 1.0),
    "load_state_dict": lambda o: o.load_state_dict(o.state_dict()),
}


@pytest.mark.parametrize("change", sorted(OPTIM_CHANGES))
def test_optim_memo_kept_across_steps_and_made_again_after_a_change(change):
    opt = optim.Adam(lr=1e-3)
    dp = distributed.DataParallel(opt, comm=MPI.COMM_SELF, shard_state=False)  # (max_grad_norm: replicated)
    params = _stepped(dp, _optim_step)
    memo = dp._static
    dp.step(params, np.ones(8, np.float32))
    assert dp._static is memo
    OPTIM_CHANGES[change](opt)
    dp.step(params, np.ones(8, np.float32))
    assert dp._static is not memo, change


def test_every_optim_setting_write_is_counted():
    # Every entry of _values is written through _store or _set_all, which bump _version.
    opt = optim.Adam(lr=1e-3)
    for name, value in (("check_finite", True), ("max_grad_norm", 2.0), ("stochastic_rounding", True),
                        ("stochastic_state", True), ("seed", 3), ("master_weights", True), ("weight_decay_mask", [True]),
                        ("betas", (0.5, 0.5)), ("eps", 1e-6)):
        before = opt._version
        setattr(opt, name, value)
        assert opt._version > before, name
    before = opt._version
    with pytest.raises(ValueError):
        opt.betas = (2.0, 0.5)  # refused: the old dict is put back, and the count moved anyway
    assert opt._version > before


def test_paysage_step_count_and_native_step_leave_the_count():
    opt = optimizers.ADAM(stepsize=0.01)
    version, mem_version = opt._version, opt.memory._version
    opt.update(np.zeros(4), np.ones(4))
    opt.step_count = 5
    assert (opt._version, opt.memory._version) == (version, mem_version)
