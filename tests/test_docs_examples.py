"""Every ```python block of README.md and docs/*.md runs as written.

A block runs in a fresh namespace of its own, in a temporary working folder.
A block that needs an optional package says so on the line before its fence,
``<!-- requires: torch -->`` (or ``mpi4py``, ``paysage``, a fusedopt module such as
``fusedopt.optim``): it is skipped, with that reason, where the package is missing.
Blocks of other languages (bash, text) are not run.
"""
import importlib
import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if not (ROOT / "README.md").exists():  # the wheel checks copy tests/ alone, without the docs
    pytest.skip("README.md and docs/ are not beside tests/", allow_module_level=True)
FENCE = re.compile(r"(?:<!--\s*requires:\s*(?P<req>[^>]*?)\s*-->\s*\n)?^```python[ \t]*\n(?P<code>.*?)^```[ \t]*$",
                   re.S | re.M)


def blocks():
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for path in files:
        text = path.read_text()
        for k, m in enumerate(FENCE.finditer(text)):
            line = text.count("\n", 0, m.start("code")) + 1
            reqs = m.group("req").split(",") if m.group("req") else []
            yield pytest.param(m.group("code"), [r.strip() for r in reqs if r.strip()],
                               id=f"{path.relative_to(ROOT)}:{line}")


def available(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def test_there_are_examples():
    # The extractor must find the README's examples: a broken pattern would skip them all.
    assert sum(1 for _ in blocks()) >= 8


@pytest.mark.parametrize("code,requires", list(blocks()))
def test_example_runs(code, requires, tmp_path, monkeypatch):
    missing = [r for r in requires if not available(r)]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    monkeypatch.chdir(tmp_path)
    state = np.random.get_state()  # examples may seed numpy's global RNG (paysage does)
    try:
        exec(compile(code, "<doc example>", "exec"), {"__name__": "__doc_example__"})
    finally:
        np.random.set_state(state)
