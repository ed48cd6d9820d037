"""bench/demo.py, the main job, on a small model: its default run completes, reports
bit-identical parameters in every round, states its thread settings (the recommended
fusedopt.thread_limits.training()), both speedups and one line per other family."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[1] / "bench" / "demo.py"
if not DEMO.exists():  # the wheel checks copy tests/ alone
    pytest.skip("bench/ is not beside tests/", allow_module_level=True)


def test_demo_small_run():
    out = subprocess.run([sys.executable, str(DEMO), "--rounds", "2", "--size", "64", "--family-size", "4096"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "bit-identical to the numpy ADAM: True (2 of 2 rounds)" in text
    assert re.search(r"^threads: fusedopt \d+ .*\[fusedopt\.thread_limits\.training\(\)", text, re.M)
    assert re.search(r"^speedup of fusedopt: optimizer step [\d.]+x, whole training [\d.]+x", text, re.M)
    assert re.search(r"^  fusedopt\.optim\.Adam vs numpy textbook Adam: .* of 4,096 float32 elements, [\d.]+x$",
                     text, re.M)
    assert re.search(r"^  fusedopt\.torch\.Adam vs torch\.optim\.Adam\(fused=True\): (.*[\d.]+x|skipped .*)$",
                     text, re.M)
    assert len(re.findall(r"\(spread +\d+%\)", text)) == 4


def test_demo_refuses_bad_arguments():
    out = subprocess.run([sys.executable, str(DEMO), "--rounds", "0"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--rounds, --size and --family-size must be positive" in out.stderr
