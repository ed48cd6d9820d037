"""The exact text of the errors a new user meets first, in every family: each names the
argument (params or grads/grad), the leaf, what was expected and, where there is one,
the fix; structure errors name the missing and the unexpected keys. Each refused step
leaves the parameters as they were."""
import re

import numpy as np
import pytest

from fusedopt import StructureError, optim, optimizers


def params():
    return {"W": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}


def grads(**changed):
    out = {"W": np.ones((2, 3), np.float32), "b": np.ones(3, np.float32)}
    out.update(changed)
    return {k: v for k, v in out.items() if v is not None}


class Model:
    """The paysage path: a model with parameter_update(delta)."""

    def __init__(self):
        self.params = params()

    def parameter_update(self, delta):
        for k in self.params:
            self.params[k] -= delta[k]


STRUCTURE = " (parameters and gradients share one structure, fixed at the first step)"
F16 = np.ones((2, 3), np.float16)
WRONG_SHAPE = np.ones((3, 2), np.float32)

# (family, first step's grads or None, this step's params, this step's grads, error, message)
CASES = [
    # paysage family, in place: the first step's plan is the gradient's
    ("paysage", None, params(), grads(W=F16), TypeError,
     "grad at ['W']: expected a float32 or float64 array, got dtype float16 (convert it, e.g. x.astype(np.float32))"),
    ("paysage", grads(), params(), grads(W=F16), TypeError,
     "grad at ['W']: expected a float32 numpy array (as on the first step), got dtype float16"),
    ("paysage", None, params(), grads(W=WRONG_SHAPE), ValueError,
     "params at ['W']: shape (2, 3) does not match the gradient's (3, 2)"),
    ("paysage", grads(), params(), grads(W=WRONG_SHAPE), ValueError,
     "grad at ['W']: expected shape (2, 3), got (3, 2)"),
    ("paysage", grads(), params(), grads(b=None), StructureError,
     "grad does not match the structure it is stepped with: expected a dict with keys ['W', 'b'], "
     "got a dict of 1 entry; missing key 'b'" + STRUCTURE),
    ("paysage", grads(), params(), grads(c=np.ones(1, np.float32), d=np.ones(1, np.float32)), StructureError,
     "grad does not match the structure it is stepped with: expected a dict with keys ['W', 'b'], "
     "got a dict of 4 entries; unexpected keys 'c', 'd'" + STRUCTURE),
    ("paysage", None, {"W": params()["W"]}, grads(), StructureError,
     "params does not match the structure it is stepped with: expected (as in the gradient) "
     "a dict with keys ['W', 'b'], got a dict of 1 entry; missing key 'b'" + STRUCTURE),
    ("paysage", None, params(), [1.0], TypeError,
     "grad at [0]: expected a numpy array (float32 or float64) or a tuple, list, dict or namedtuple of them, "
     "got float (wrap a scalar in np.array(x, np.float32))"),
    # textbook family: the plan is the parameters'
    ("optim", None, params(), grads(W=F16), TypeError,
     "grads at ['W']: expected a float32 array of shape (2, 3) (its parameter's), got a float16 array of shape (2, 3)"),
    ("optim", None, params(), grads(W=WRONG_SHAPE), ValueError,
     "grads at ['W']: expected a float32 array of shape (2, 3) (its parameter's), got a float32 array of shape (3, 2)"),
    ("optim", None, {**params(), "W": F16}, grads(), TypeError,
     "grads at ['W']: expected a float16 array of shape (2, 3) (its parameter's), got a float32 array of shape (2, 3)"),
    ("optim", None, {**params(), "W": np.ones((2, 3), np.int32)}, grads(), TypeError,
     "params at ['W']: expected a float32, float64, bfloat16 (ml_dtypes) or float16 array, got dtype int32 "
     "(convert it, e.g. x.astype(np.float32))"),
    ("optim", grads(), params(), grads(b=None), StructureError,
     "grads does not match the structure it is stepped with: expected a dict with keys ['W', 'b'], "
     "got a dict of 1 entry; missing key 'b'" + STRUCTURE),
    ("optim", None, {"W": params()["W"]}, grads(), StructureError,
     "grads does not match the structure it is stepped with: expected a dict with keys ['W'], "
     "got a dict of 2 entries; unexpected key 'b'" + STRUCTURE),
]


def make(family):
    if family == "paysage":
        opt = optimizers.ADAM(stepsize=1e-3)
        return opt, opt.update
    opt = optim.Adam(lr=1e-3)
    return opt, opt.step


@pytest.mark.parametrize("family,first,p,g,error,message", CASES)
def test_message(family, first, p, g, error, message):
    opt, step = make(family)
    if first is not None:
        step(params(), first)
    before = {k: v.copy() for k, v in p.items()}
    with pytest.raises(error, match="^" + re.escape(message) + "$"):
        step(p, g)
    assert all(np.array_equal(p[k], before[k]) for k in p)
    assert opt.step_count == (first is not None)


def test_paysage_model_path_names_the_gradient():
    """On the paysage path (update(model, grad)) the gradient's own errors name grad."""
    opt, model = optimizers.ADAM(stepsize=1e-3), Model()
    opt.update(model, grads())
    with pytest.raises(ValueError, match=r"^grad at \['W'\]: expected shape \(2, 3\), got \(3, 2\)$"):
        opt.update(model, grads(W=WRONG_SHAPE))
    with pytest.raises(StructureError, match=r"missing key 'b' \(parameters"):
        opt.update(model, grads(b=None))


@pytest.mark.parametrize("saved,into,message", [
    (optimizers.Momentum, optimizers.ADAM, "the state was saved by Momentum, it cannot be loaded into ADAM "
                                           "(load it into a new Momentum(), or train this ADAM from its start)"),
    (optim.AdamW, optim.Adam, "the state was saved by AdamW, it cannot be loaded into Adam "
                              "(load it into a new AdamW(), or train this Adam from its start)"),
])
def test_state_of_another_class(saved, into, message):
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        into().load_state_dict(saved().state_dict())
