"""The first hour (issue 17): reprs that say what an object is, StructureError public, and
help() documenting every option and EPS."""
import pydoc

import numpy as np
import pytest

import fusedopt
from fusedopt import optimizers, schedules


def test_optimizer_reprs_give_kind_and_hyper_parameters():
    opt = optimizers.ADAM(schedules.PowerLawDecay(initial=0.01, coefficient=0.1), mean_weight=0.8, check_finite=True)
    assert repr(opt) == ("ADAM(stepsize=PowerLawDecay(initial=0.01, coefficient=0.1, value=0.01), mean_weight=0.8, "
                         "mean_square_weight=0.999, tolerance=1e-07, ascent=False, check_finite=True, "
                         "keep_delta=False)")
    assert repr(optimizers.Momentum(0.5, momentum=0.25, ascent=True)) == (
        "Momentum(stepsize=Constant(initial=0.5, value=0.5), momentum=0.25, tolerance=1e-07, ascent=True, "
        "check_finite=False, keep_delta=False)")
    assert repr(optimizers.RMSProp(tolerance=0.5)).startswith(
        "RMSProp(stepsize=Constant(initial=0.001, value=0.001), mean_square_weight=0.9, tolerance=0.5,")
    assert repr(optimizers.Gradient(keep_delta=True)) == (
        "Gradient(stepsize=Constant(initial=0.001, value=0.001), tolerance=1e-07, ascent=False, "
        "check_finite=False, keep_delta=True)")


def test_memory_and_schedule_reprs():
    mem = optimizers.GradientMemory(0.9, 0.5)
    assert repr(mem) == "GradientMemory(mean_weight=0.9, mean_square_weight=0.5, moments=None)"
    mem.update([np.ones(3, np.float32), np.ones(2)])
    assert repr(mem) == "GradientMemory(mean_weight=0.9, mean_square_weight=0.5, moments='2 leaves')"
    waiting = optimizers.GradientMemory()
    waiting.load_state_dict(mem.state_dict())
    assert repr(waiting).endswith("moments='2 leaves, waiting for a gradient')")
    step = schedules.Step(initial=0.1, final=0.01, steps=3)
    next(step)
    assert repr(step) == "Step(initial=0.1, final=0.01, steps=3, t=1, value=0.1)"


def test_structure_error_is_public():
    assert fusedopt.StructureError is fusedopt._core.StructureError and "StructureError" in fusedopt.__all__
    assert issubclass(fusedopt.StructureError, ValueError)
    opt = optimizers.Momentum(0.1)
    opt.update([np.zeros(2, np.float32)], [np.ones(2, np.float32)])
    with pytest.raises(fusedopt.StructureError, match=r"expected a list of 1 entry"):
        opt.update([np.zeros(2, np.float32)] * 2, [np.ones(2, np.float32)] * 2)


@pytest.mark.parametrize("cls", [optimizers.Gradient, optimizers.Momentum, optimizers.RMSProp, optimizers.ADAM])
def test_help_documents_every_option(cls):
    text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
    for option in ("stepsize", "tolerance", "ascent", "check_finite", "keep_delta"):
        assert f"{option} (" in text, option
    if cls in (optimizers.RMSProp, optimizers.ADAM):
        assert "EPS = 2**-23" in text
    assert optimizers.EPS == 2.0 ** -23
