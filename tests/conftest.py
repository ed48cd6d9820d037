"""Shared fixtures: the reference module on sys.path, RNGs, restoring global native
settings (SIMD level, thread count) that some tests change, and hypothesis's profiles.

Hypothesis profiles (HYPOTHESIS_PROFILE=name; CONTRIBUTING.md):
- "deterministic" (the default, and what CI runs): examples derived from each test alone
  (derandomize) and no example database, with hypothesis pinned in the test extra (its
  derandomized examples change between releases), so a run's outcome depends only on the code;
- "thorough": fresh random examples, ten times as many for every test (its own
  max_examples included), still without a database; run it before resolving an issue
  that touches kernels, trees or state."""
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
from hypothesis import settings  # noqa: E402

THOROUGH_FACTOR = 10
settings.register_profile("deterministic", derandomize=True, database=None, print_blob=True)
settings.register_profile("thorough", derandomize=False, database=None, print_blob=True)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "deterministic")
settings.load_profile(PROFILE)


def _thorough(s):
    return settings(s, max_examples=s.max_examples * THOROUGH_FACTOR)


def pytest_collection_modifyitems(items):
    """Under "thorough", every hypothesis test and state machine runs THOROUGH_FACTOR times as
    many examples as its own settings say (a profile alone cannot raise an explicit max_examples)."""
    if PROFILE != "thorough":
        return
    seen = set()
    for item in items:
        test = getattr(item, "obj", None)
        own = getattr(test, "_hypothesis_internal_use_settings", None)
        if own is not None and id(test) not in seen:
            seen.add(id(test))
            test._hypothesis_internal_use_settings = _thorough(own)
        cls = getattr(item, "cls", None)
        if cls is not None and isinstance(getattr(cls, "settings", None), settings) and cls not in seen:
            seen.add(cls)
            cls.settings = _thorough(cls.settings)

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
