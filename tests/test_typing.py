"""The public API is typed: `mypy --strict` passes on a user script (issue 17)."""
import os
import subprocess
import sys

import pytest

import fusedopt

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "typing", "user_script.py")


def test_the_user_script_runs():
    result = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "refused: grad" in result.stdout and result.stdout.count("ADAM(stepsize=") == 1


def test_mypy_strict_passes_on_user_code(tmp_path):
    pytest.importorskip("mypy", reason="mypy is in the [test] extra")
    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(fusedopt.__file__)))
    if os.path.basename(package_root) not in ("site-packages", "dist-packages"):
        env["MYPYPATH"] = package_root  # an editable install: mypy does not follow its import hook
    result = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental",
                             "--cache-dir", str(tmp_path), SCRIPT], capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
