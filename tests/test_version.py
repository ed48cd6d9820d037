"""One version source: python/fusedopt/_version.py is the installed distribution's
version (pyproject reads it at build time) and fusedopt.__version__."""
import importlib.metadata
import re
from pathlib import Path

import fusedopt

ROOT = Path(__file__).resolve().parents[1]


def test_version_matches_installed_metadata():
    assert fusedopt.__version__ == importlib.metadata.version("fusedopt")


def test_version_is_written_once():
    # pyproject declares the version dynamic and names _version.py as its source;
    # no other file of the package spells a version string.
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject
    assert not re.search(r'(?m)^version\s*=', pyproject)
    assert 'input = "python/fusedopt/_version.py"' in pyproject
    assert re.fullmatch(r"\d+\.\d+\.\d+(\.dev\d+|rc\d+)?", fusedopt.__version__)
