"""bench/demo.py, the main job, on a small model: it runs, reports bit-identical
parameters in every round, and states its thread settings."""
import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[1] / "bench" / "demo.py"
if not DEMO.exists():  # the wheel checks copy tests/ alone
    pytest.skip("bench/ is not beside tests/", allow_module_level=True)


def test_demo_small_run():
    out = subprocess.run([sys.executable, str(DEMO), "--rounds", "2", "--size", "64"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "bit-identical to the numpy ADAM: True (2 of 2 rounds)" in out.stdout
    assert "threads: fusedopt " in out.stdout
    assert "medians over rounds" in out.stdout


def test_demo_refuses_bad_arguments():
    out = subprocess.run([sys.executable, str(DEMO), "--rounds", "0"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--rounds and --size must be positive" in out.stderr
