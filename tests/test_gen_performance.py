"""docs/gen_performance.py turns benchmark JSON into the tables of the docs and
the README: checked on a small report whose figures are known."""
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "gen_performance.py"
if not SCRIPT.exists():  # the wheel checks copy tests/ alone
    pytest.skip("docs/ is not beside tests/", allow_module_level=True)
spec = importlib.util.spec_from_file_location("gen_performance", SCRIPT)
gen = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen)


def row(case, impl, us, elements):
    return {"case": case, "elements": elements, "leaves": 1, "optimizer": "ADAM", "implementation": impl,
            "us_per_step": us, "gelem_per_s": elements / us / 1e3}


def report(load=0.2, quick=False):
    meta = {"date": "2026-01-02T03:04:05Z", "cpu": "Test CPU", "cores": 2, "simd_level": "avx2", "threads": 2,
            "dtype": "float32", "versions": {"numpy": "2.0", "fusedopt": "0.1.0"},
            "load_average_start": [load, 0, 0], "load_average_end": [load, 0, 0],
            "args": {"sizes": "1e3,1e6", "optimizers": ["ADAM"], "impls": [], "repeats": 15, "budget": 0.15,
                     "rounds": 3, "threads": 2, "quick": quick}}
    rows = [row("1e3", "fusedopt_inplace", 2.0, 1000), row("1e3", "numpy", 10.0, 1000),
            row("1e6", "fusedopt_inplace", 200.0, 10**6), row("1e6", "numpy", 2500.0, 10**6)]
    return {"meta": meta, "rows": rows, "probes": [], "skipped": []}


def run(tmp_path, rep):
    results, docs = tmp_path / "results", tmp_path / "docs"
    results.mkdir()
    (docs / "_static").mkdir(parents=True)
    (results / "bench_step.json").write_text(json.dumps(rep))
    readme = tmp_path / "README.md"
    readme.write_text(f"# t\n\nbefore\n\n{gen.BEGIN}\nold table\n{gen.END}\n\nafter\n")
    assert gen.main(["--results", str(results), "--docs", str(docs), "--readme", str(readme)]) == 0
    return readme.read_text(), (docs / "_generated" / "performance.md").read_text()


def test_tables_carry_the_figures_date_machine_and_command(tmp_path):
    readme, page = run(tmp_path, report())
    assert "old table" not in readme and readme.startswith("# t\n\nbefore\n") and readme.endswith("after\n")
    for text in (readme, page):
        assert "| fusedopt, in place | 2.0 (0.50) | 200 (5.00) |" in text
        assert "| numpy float32 | 10.0 (0.10) | 2,500 (0.40) |" in text
        assert "| speedup over numpy float32 | 5.00x | 12.50x |" in text
        assert "Measured 2026-01-02 03:04 UTC on Test CPU, 2 cores" in text
        assert ("`python bench/bench_step.py --sizes 1e3,1e6 --optimizers ADAM --rounds 3 --repeats 15 "
                "--budget 0.15 --threads 2`") in text
        assert "Not representative" not in text


def test_a_loaded_or_quick_run_says_it_is_not_representative(tmp_path):
    readme, _ = run(tmp_path, report(load=3.5, quick=True))
    assert "**Not representative:** the load average was 3.5 on 2 cores" in readme
    assert "`--quick` run" in readme and "bench_step.py --quick" in readme


def test_missing_results_fail_clearly(tmp_path, capsys):
    assert gen.main(["--results", str(tmp_path), "--docs", str(tmp_path), "--readme", str(tmp_path / "R")]) == 1
    assert "bench_step.json not found" in capsys.readouterr().err
