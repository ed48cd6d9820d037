"""What help() shows a new user: every public class has its own docstring, its constructor
does not fall back to object's "Initialize self", every optimizer class shows how it is
stepped, and no public docstring cites a private module or a document the repository
does not ship."""
import importlib
import inspect
import re

import pytest

MODULES = ["fusedopt", "fusedopt.optimizers", "fusedopt.schedules", "fusedopt.optim", "fusedopt.torch",
           "fusedopt.distributed"]
USAGE = {"fusedopt.optimizers": "opt.update(params, ", "fusedopt.optim": "opt.step(params, ",
         "fusedopt.torch": "opt.step("}  # LBFGS: opt.step(closure)
PRIVATE = re.compile(r"fusedopt\._(?!core\b)\w+|\b_\w+\.py\b|\bSPEC\b|Initialize self")


def public_classes():
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # torch or mpi4py missing
            continue
        for attr in getattr(module, "__all__", []):
            obj = getattr(module, attr)
            if inspect.isclass(obj) and obj.__module__.startswith("fusedopt"):
                yield pytest.param(name, obj, id=f"{name}.{attr}")


@pytest.mark.parametrize("module,cls", list(public_classes()))
def test_class_docs(module, cls):
    doc = inspect.getdoc(cls)
    assert doc, f"{cls.__name__} has no docstring"
    # A class with a constructor of its own (not object's or an exception's) documents it.
    own_init = cls.__init__ is not object.__init__ and not issubclass(cls, BaseException)
    init = (inspect.getdoc(cls.__init__) or "") if own_init else ""
    assert "Initialize self" not in init
    texts = [doc, init] + [inspect.getdoc(v) or "" for k, v in vars(cls).items() if not k.startswith("_")]
    for text in texts:
        assert not PRIVATE.search(text), PRIVATE.search(text).group(0)
    concrete = cls.__name__ not in ("Optimizer", "GradientMemory") and not issubclass(cls, Exception)
    if module in USAGE and concrete and "Schedule" not in cls.__name__:
        assert USAGE[module] in doc, f"{cls.__name__}'s docstring shows no {USAGE[module]}"
