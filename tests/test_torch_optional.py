"""torch is optional: ``import fusedopt`` (and fusedopt.optim) never imports
it, and the ``torch`` extra pins the version fusedopt.torch is tested with."""
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None

import pytest


def test_import_fusedopt_does_not_import_torch():
    code = ("import sys, fusedopt, fusedopt.optim, fusedopt.optimizers, fusedopt.schedules; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(tomllib is None, reason="tomllib needs Python 3.11")
def test_torch_extra_pins_the_tested_version():
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["optional-dependencies"]["torch"] == ["torch==2.13.0"]
