"""fusedopt.torch under torch.distributed: examples/torch_distributed.py launched with
torchrun (2 processes, gloo) checks DDP and ZeroRedundancyOptimizer against
torch.optim.AdamW within the parity tolerance, and a ZeRO checkpoint round trip bit
for bit; each check prints a line, and the exit status is 1 if one fails.
Time limit: 300 s (about 20 s on 2 idle cores)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="needs torch (pip install 'fusedopt[torch]')")
import torch.distributed  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "torch_distributed.py"
if not EXAMPLE.exists():  # the wheel checks copy tests/ alone
    pytest.skip("examples/ is not beside tests/", allow_module_level=True)
from test_docs_examples import same_output  # noqa: E402  (the doc pages' rule for printed numbers)
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("this torch has no gloo backend", allow_module_level=True)


def test_ddp_and_zero_with_fusedopt_torch():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(EXAMPLE)], capture_output=True, text=True, timeout=300, env=env)
    lines = out.stdout.strip().split("\n")
    assert out.returncode == 0, out.stdout + out.stderr
    assert lines[0] == "2 processes, gloo backend"
    assert [line.split(" ", 1)[0] for line in lines[1:]] == ["ok"] * 3, out.stdout
    assert lines[1].startswith("ok  DDP, fusedopt.torch.AdamW: loss ")
    assert "ZeroRedundancyOptimizer(optimizer_class=fusedopt.torch.AdamW)" in lines[2]
    assert "bit for bit" in lines[3]
    page = (ROOT / "docs" / "torch-distributed.md").read_text()
    shown = re.search(r"<!-- prints -->\n```text\n(.*?)```", page, re.S).group(1)
    assert same_output(out.stdout, shown), f"printed:\n{out.stdout}\nthe page says:\n{shown}"
