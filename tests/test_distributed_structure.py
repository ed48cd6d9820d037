"""The structure of fusedopt.distributed (issue 24): DataParallel is a facade whose constructor
picks one strategy class per family (fusedopt.optimizers or fusedopt.optim) and mode (sharded
or replicated); no method of the facade or of a strategy branches on the family or the mode,
and each file stays small. The source checks read the files and need no mpi4py."""
import ast
import os

import pytest

import fusedopt

PACKAGE = os.path.join(os.path.dirname(fusedopt.__file__), "distributed")
# The facade, the step's machinery and the strategies; _strategies.py is the one place that
# asks which family and mode (a table lookup).
STRATEGY_FILES = ["_interface.py", "_step.py", "_data_parallel.py", "_families.py", "_replicated.py", "_sharded.py",
                  "_sharded_paysage.py", "_sharded_optim.py"]
# The attributes that carried the family and the mode before the split, and the test that told
# the family: no method may name them at all.
FLAG_NAMES = {"_is_optim", "_shard", "_textbook", "_optim", "_sharded", "_family", "_mode"}
# What still tells the mode (the public property, the configuration tuple, the table of
# strategies): no method may decide on it; nor ask whose Optimizer the wrapped one is.
TESTED_NAMES = {"shard_state", "_config", "_STRATEGIES"}
TYPE_TESTED = {"Optimizer"}
MAX_LINES = 400


def _names(node):
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute):
            yield sub.attr, sub.lineno
        elif isinstance(sub, ast.Name):
            yield sub.id, sub.lineno


def _tests(node):
    """(the expressions a function decides on: conditions and boolean operands; its type tests)."""
    decided, typed = [], []
    for sub in ast.walk(node):
        if isinstance(sub, (ast.If, ast.IfExp, ast.While)):
            decided.append(sub.test)
        elif isinstance(sub, (ast.BoolOp, ast.Compare)):
            decided.append(sub)
        elif isinstance(sub, ast.comprehension):
            decided.extend(sub.ifs)
        elif isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) and sub.func.id in ("isinstance",
                                                                                                "issubclass"):
            typed.append(sub)
    return decided, typed


def branches_on_family_or_mode(source, filename="<source>"):
    """Every place in a function of `source` that names a family/mode flag or decides on what
    tells them, as 'file:line function: name'."""
    found = []
    for func in ast.walk(ast.parse(source, filename)):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for name, line in _names(func):
            if name in FLAG_NAMES:
                found.append(f"{filename}:{line} {func.name}: {name}")
        decided, typed = _tests(func)
        for names, tests in ((TESTED_NAMES, decided), (TYPE_TESTED, typed)):
            for test in tests:
                found += [f"{filename}:{line} {func.name}: decides on {name}"
                          for name, line in _names(test) if name in names]
    return found


def _read(name):
    with open(os.path.join(PACKAGE, name), encoding="utf-8") as f:
        return f.read()


@pytest.mark.parametrize("name", STRATEGY_FILES)
def test_no_method_branches_on_the_family_or_the_mode(name):
    assert branches_on_family_or_mode(_read(name), name) == []


@pytest.mark.parametrize("snippet,expected", [
    ("class A:\n def f(self):\n  if self._shard:\n   pass\n", "f: _shard"),
    ("class A:\n def f(self):\n  return 1 if self._is_optim else 2\n", "f: _is_optim"),
    ("class A:\n def f(self):\n  return self.shard_state and 1\n", "f: decides on shard_state"),
    ("class A:\n def f(self, o):\n  if isinstance(o, optim.Optimizer):\n   pass\n", "f: decides on Optimizer"),
    ("class A:\n def f(self):\n  return [x for x in y if self._config[1]]\n", "f: decides on _config"),
])
def test_the_check_sees_a_branch(snippet, expected):
    found = branches_on_family_or_mode(snippet)
    assert any(f.endswith(expected) for f in found), found


def test_the_check_lets_the_strategies_be():
    assert branches_on_family_or_mode("class A:\n def f(self):\n  return self._step_wrapped(1, 2)\n") == []


def test_every_file_is_small():
    sizes = {name: _read(name).count("\n") for name in sorted(os.listdir(PACKAGE)) if name.endswith(".py")}
    assert set(STRATEGY_FILES) <= set(sizes)
    assert {name: n for name, n in sizes.items() if n >= MAX_LINES} == {}


def test_the_facade_makes_one_strategy_per_family_and_mode():
    pytest.importorskip("mpi4py", reason="fusedopt.distributed needs mpi4py (pip install 'fusedopt[mpi]')")
    from fusedopt import optim, optimizers
    from fusedopt.distributed import DataParallel, _families, _replicated, _sharded

    families = {"paysage": (lambda: optimizers.ADAM(stepsize=0.1), _families._Paysage),
                "optim": (lambda: optim.Adam(lr=0.1), _families._Optim)}
    modes = {True: _sharded._Sharded, False: _replicated._Replicated}
    made = set()
    for make, family in families.values():
        for shard, mode in modes.items():
            dp = DataParallel(make(), shard_state=shard)
            cls = type(dp)
            assert isinstance(dp, DataParallel) and issubclass(cls, family) and issubclass(cls, mode)
            assert dp.shard_state is shard
            assert not issubclass(cls, tuple(f for _, f in families.values() if f is not family))
            assert not issubclass(cls, tuple(m for m in modes.values() if m is not mode))
            made.add(cls)
    assert len(made) == len(families) * len(modes)
    with pytest.raises(TypeError, match="DataParallel wraps a fusedopt.optimizers or fusedopt.optim optimizer, "
                                        "got int"):
        DataParallel(3)


def test_the_facade_refuses_arguments_as_its_constructor_does():
    """The strategy is picked before __init__ runs: a call __init__ refuses still gets Python's
    own message about DataParallel.__init__, and a copy is of the same strategy."""
    pytest.importorskip("mpi4py", reason="fusedopt.distributed needs mpi4py (pip install 'fusedopt[mpi]')")
    import copy

    from fusedopt import optimizers
    from fusedopt.distributed import DataParallel

    calls = [((), {}, "DataParallel.__init__() missing 1 required positional argument: 'optimizer'"),
             ((optimizers.ADAM(stepsize=0.1), None, True), {},
              "DataParallel.__init__() takes from 2 to 3 positional arguments but 4 were given"),
             ((optimizers.ADAM(stepsize=0.1),), {"bogus": 1},
              "DataParallel.__init__() got an unexpected keyword argument 'bogus'")]
    for args, kwargs, message in calls:
        with pytest.raises(TypeError) as raised:
            DataParallel(*args, **kwargs)
        assert str(raised.value) == message
    dp = DataParallel(optimizers.ADAM(stepsize=0.1), shard_state=False)
    twin = copy.copy(dp)  # (made by the strategy class itself, without arguments)
    assert type(twin) is type(dp) and twin.optimizer is dp.optimizer and twin.comm is dp.comm
