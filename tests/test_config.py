"""fusedopt.show_config / python -m fusedopt, the version, and the packaging
files that ship with the extension (type stubs, py.typed)."""
import ast
import importlib.metadata
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fusedopt
from fusedopt import _core
from fusedopt._config import config, show_config

LEVELS = ["avx512", "avx2", "baseline"]  # best first, as the extension lists them
PACKAGE_DIR = Path(fusedopt.__file__).resolve().parent


def expected_lines(c):
    """The facts show_config must print, one per line in its order, each as
    (label, value) pairs taken from c rather than from show_config's code."""
    env = c["simd_env"] if c["simd_env"] is not None else "not set"
    return [
        ("fusedopt", c["version"]),
        ("SIMD levels compiled in", ", ".join(c["simd_compiled"])),
        ("SIMD levels supported", ", ".join(c["simd_supported"])),
        ("SIMD level selected", f"{c['simd_selected']} (FUSEDOPT_SIMD {env})"),
        ("division by 1-w, 1-w2", "FMAs for float32" if c["fma_division"] else "divider"),
        ("OpenMP", f"{'on' if c['openmp'] else 'off'}, {c['num_threads']} threads"),
        ("compiler", c["compiler"]),
        ("extension", c["extension"]),
        ("Python, NumPy", f"{c['python']}, {c['numpy']}"),
    ]


def check_lines(text, c):
    lines = text.splitlines()
    facts = expected_lines(c)
    assert len(lines) == len(facts)
    assert lines[0] == f"fusedopt {c['version']}"
    for line, (label, value) in zip(lines[1:], facts[1:]):
        got_label, _, got_value = line.partition(":")
        assert got_label.strip() == label
        assert got_value.strip().startswith(value)


def test_version_matches_installed_metadata():
    assert fusedopt.__version__ == importlib.metadata.version("fusedopt")


def test_config_reports_the_extension_state():
    c = config()
    assert c["version"] == fusedopt.__version__
    assert c["simd_compiled"] == [lvl for lvl in LEVELS if lvl in c["simd_compiled"]]
    assert "baseline" in c["simd_compiled"]
    assert c["simd_supported"] == [lvl for lvl in c["simd_compiled"] if lvl in c["simd_supported"]]
    assert "baseline" in c["simd_supported"]
    assert c["simd_selected"] == fusedopt.simd_level() and c["simd_selected"] in c["simd_supported"]
    # FMA division by the constants is on by default, on AVX-512 only (csrc/paysage/exact_division.h).
    assert c["fma_division"] == (c["simd_selected"] == "avx512" and _core._exact_division())
    assert c["openmp"] is _core.have_openmp()
    assert c["num_threads"] == fusedopt.get_num_threads() >= 1
    assert c["compiler"] == _core.compiler and c["compiler"] != ""
    assert c["extension"] == _core.__file__ and Path(c["extension"]).is_file()
    assert c["numpy"] == np.__version__


def test_show_config_prints_every_fact():
    out = io.StringIO()
    show_config(file=out)
    check_lines(out.getvalue(), config())


def test_show_config_follows_simd_level_and_threads():
    before_level, before_threads = fusedopt.simd_level(), fusedopt.get_num_threads()
    try:
        _core._set_simd_level("baseline")
        fusedopt.set_num_threads(1)
        out = io.StringIO()
        show_config(file=out)
        text = out.getvalue()
        assert "  SIMD level selected     : baseline (" in text
        assert "  division by 1-w, 1-w2   : divider\n" in text
        assert f"  OpenMP                  : {'on' if _core.have_openmp() else 'off'}, 1 threads\n" in text
    finally:
        _core._set_simd_level(before_level)
        fusedopt.set_num_threads(before_threads)


def test_python_m_fusedopt_prints_config(tmp_path):
    # A fresh interpreter: FUSEDOPT_SIMD and OMP_NUM_THREADS are read at import.
    env = dict(os.environ, FUSEDOPT_SIMD="baseline", OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "fusedopt"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    c = dict(config(), simd_selected="baseline", simd_env="baseline", num_threads=1, fma_division=False)
    check_lines(run.stdout, c)


def _stub_names(body):
    names = set()
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def test_type_stubs_cover_the_extension():
    stub = PACKAGE_DIR / "_core.pyi"
    assert (PACKAGE_DIR / "py.typed").is_file()
    tree = ast.parse(stub.read_text())
    module_names = {n for n in dir(_core) if not n.startswith("__")}
    stub_names = _stub_names(tree.body) - {"_Arena"}
    assert stub_names == module_names
    plan_stub = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Plan")
    plan_names = {n for n in dir(_core.Plan) if not n.startswith("_")}
    assert _stub_names(plan_stub.body) - {"__init__"} == plan_names


def test_package_imported_from_expected_place():
    # tools/build_wheel.sh sets this to the fresh venv, so that the suite proves
    # it ran against the installed wheel, not the source tree.
    prefix = os.environ.get("FUSEDOPT_EXPECT_PREFIX")
    if not prefix:
        pytest.skip("FUSEDOPT_EXPECT_PREFIX not set (only tools/build_wheel.sh sets it)")
    root = Path(prefix).resolve()
    assert root in PACKAGE_DIR.parents
    assert root in Path(_core.__file__).resolve().parents
