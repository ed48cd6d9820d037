"""Shared fixtures: the reference module on sys.path, RNGs, and restoring global
native settings (SIMD level, thread count) that some tests change."""
import os
import sys
import warnings

import pytest

# hypothesis imports its patch writer (which pulls libcst -> mypy_extensions, whose import
# raises a DeprecationWarning) only when reporting a failing example; with warnings as
# errors that report would crash pytest, so import it here once, quietly.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import hypothesis.extra._patching  # noqa: F401
    except ImportError:
        pass

# Test modules import the reference as a plain module, whatever pytest's import mode.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import fusedopt  # noqa: E402
from fusedopt import _core  # noqa: E402


@pytest.fixture
def rng(request):
    """A generator seeded from the test's id, so every test is reproducible on its own."""
    seed = sum(ord(c) * (i + 1) for i, c in enumerate(request.node.nodeid)) % (2 ** 32)
    return np.random.default_rng(seed)


@pytest.fixture
def restore_simd_level():
    """Lets a test switch SIMD levels with _core._set_simd_level; puts the original back."""
    original = fusedopt.simd_level()
    yield
    _core._set_simd_level(original)
    assert fusedopt.simd_level() == original


@pytest.fixture
def restore_num_threads():
    """Lets a test change fusedopt's thread count; puts the original back."""
    original = fusedopt.get_num_threads()
    yield
    fusedopt.set_num_threads(original)
    assert fusedopt.get_num_threads() == original
