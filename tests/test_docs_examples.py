"""Every ```python block of README.md and docs/*.md runs as written and prints what
the page says it prints.

A block runs in a fresh namespace of its own, in a temporary working folder.
A block that needs an optional package says so on the line before its fence,
``<!-- requires: torch -->`` (or ``mpi4py``, ``paysage``, a fusedopt module such as
``fusedopt.optim``): it is skipped, with that reason, where the package is missing.
Blocks of other languages (bash, text) are not run.

Every python block is followed by the output it prints: a ```text block right
after it, marked ``<!-- prints -->`` (the marker is not rendered). The printed
lines must match it line by line: the words exactly, and each number to a relative
1e-3 (losses computed by BLAS matrix products may differ in their last digits
from one CPU or BLAS build to another; fusedopt's own steps do not).
"""
import ast
import contextlib
import importlib
import importlib.util
import io
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if not (ROOT / "README.md").exists():  # the wheel checks copy tests/ alone, without the docs
    pytest.skip("README.md and docs/ are not beside tests/", allow_module_level=True)
FENCE = re.compile(r"(?:<!--\s*requires:\s*(?P<req>[^>]*?)\s*-->\s*\n)?^```python[ \t]*\n(?P<code>.*?)^```[ \t]*\n"
                   r"(?:\s*<!--\s*prints\s*-->\s*\n```text[ \t]*\n(?P<out>.*?)^```[ \t]*$)?", re.S | re.M)
NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def blocks():
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for path in files:
        text = path.read_text()
        for m in FENCE.finditer(text):
            line = text.count("\n", 0, m.start("code")) + 1
            reqs = m.group("req").split(",") if m.group("req") else []
            yield pytest.param(m.group("code"), [r.strip() for r in reqs if r.strip()], m.group("out"),
                               id=f"{path.relative_to(ROOT)}:{line}")


# What an import needs beyond numpy: fusedopt's optional families need their extra.
NEEDS = {"fusedopt.torch": "torch", "fusedopt.distributed": "mpi4py"}


def imported_packages(code):
    """The optional packages a block imports: every top-level package other than the
    standard library, numpy and fusedopt, plus the extra each fusedopt family needs."""
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    needed = {NEEDS[n] for n in names if n in NEEDS}
    needed |= {n.split(".")[0] for n in names} - set(sys.stdlib_module_names) - {"numpy", "fusedopt"}
    return needed


def available(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def same_output(printed, expected):
    """Line by line: the text between numbers equal, the numbers within a relative 1e-3."""
    got, want = printed.rstrip("\n").split("\n"), expected.rstrip("\n").split("\n")
    if len(got) != len(want):
        return False
    for g, w in zip(got, want):
        if NUMBER.split(g.rstrip()) != NUMBER.split(w.rstrip()):
            return False
        for a, b in zip(NUMBER.findall(g), NUMBER.findall(w)):
            if not math.isclose(float(a), float(b), rel_tol=1e-3, abs_tol=1e-9):
                return False
    return True


@pytest.mark.parametrize("code,requires,expected", list(blocks()))
def test_optional_imports_are_declared(code, requires, expected):
    # An undeclared optional import fails only where the package is missing (the NumPy 1.23
    # step runs without torch), so every block declares what it imports.
    assert imported_packages(code) <= set(requires), \
        f"declare <!-- requires: {', '.join(sorted(imported_packages(code)))} --> before this block"


def test_imported_packages():
    assert imported_packages("import torch\nimport fusedopt.torch as ft\nimport os") == {"torch"}
    assert imported_packages("from fusedopt import distributed\nimport numpy as np") == {"mpi4py"}
    assert imported_packages("from ml_dtypes import bfloat16\nimport fusedopt") == {"ml_dtypes"}


def test_there_are_examples():
    # The extractor must find the README's examples: a broken pattern would skip them all.
    assert sum(1 for _ in blocks()) >= 8


@pytest.mark.parametrize("printed,expected,same", [
    ("loss 0.5000 -> 0.0012\n", "loss 0.5 -> 0.0012", True),
    ("loss 0.5004 -> 0.0012", "loss 0.5 -> 0.0012", True),       # 8e-4 relative
    ("loss 0.5100 -> 0.0012", "loss 0.5 -> 0.0012", False),
    ("loss 0.5 => 0.0012", "loss 0.5 -> 0.0012", False),
    ("loss 0.5 -> 0.0012\nmore", "loss 0.5 -> 0.0012", False),
    ("[ 1. -2.  3.]", "[ 1. -2.  3.]", True),
    ("[ 1. -2.  3.]", "[ 1.  2.  3.]", False),
    ("True", "False", False),
])
def test_same_output(printed, expected, same):
    assert same_output(printed, expected) is same


@pytest.mark.parametrize("code,requires,expected", list(blocks()))
def test_example_runs_and_prints(code, requires, expected, tmp_path, monkeypatch):
    assert expected is not None, "an example must print what it did, shown in a <!-- prints --> ```text block after it"
    missing = [r for r in requires if not available(r)]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    for name in requires:  # imported outside the capture: paysage prints a line when first imported
        importlib.import_module(name)
    monkeypatch.chdir(tmp_path)
    state = np.random.get_state()  # examples may seed numpy's global RNG (paysage does)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, "<doc example>", "exec"), {"__name__": "__doc_example__"})
    finally:
        np.random.set_state(state)
    assert same_output(out.getvalue(), expected), f"printed:\n{out.getvalue()}\nthe page says:\n{expected}"
