"""Leaf paths name leaves in error messages and in state_dict()'s leaf_paths: they
must be unique within a tree and the same in every process (no memory addresses)."""
import re

import numpy as np
import pytest

from fusedopt import _core, optimizers


class Key:
    """A hashable key with the default repr (which shows the object's address)."""


class SameRepr:
    def __init__(self, i):
        self.i = i

    def __hash__(self):
        return self.i

    def __eq__(self, other):
        return isinstance(other, SameRepr) and other.i == self.i

    def __repr__(self):
        return "K"


def leaves(n):
    return [np.full(3, i, np.float32) for i in range(n)]


def test_keys_whose_reprs_collide_get_distinct_deterministic_paths():
    a, b, c = leaves(3)
    tree = {SameRepr(1): a, SameRepr(2): b, "K": c}
    paths = _core.Plan(tree).paths
    assert len(set(paths)) == 3
    assert paths == _core.Plan({SameRepr(1): a, SameRepr(2): b, "K": c}).paths  # same tree, same paths
    assert paths[2] == "['K']"


def test_paths_hold_no_memory_address():
    tree = {Key(): x for x in leaves(3)}
    paths = _core.Plan(tree).paths
    assert len(set(paths)) == 3
    for p in paths:
        assert not re.search(r"0x[0-9a-fA-F]{4,}", p), p
    other = _core.Plan({Key(): x for x in leaves(3)}).paths
    assert paths == other  # another set of objects in the same order: the same paths


def test_collisions_across_levels_stay_unique():
    """A custom repr may spell another leaf's whole path: every path is still unique."""

    class Tricky:
        def __hash__(self):
            return 7

        def __eq__(self, other):
            return isinstance(other, Tricky)

        def __repr__(self):
            return "'a']['b'"

    a, b = leaves(2)
    paths = _core.Plan({"a": {"b": a}, Tricky(): b}).paths
    assert len(set(paths)) == 2


def test_state_dict_round_trip_with_colliding_keys():
    grad = {SameRepr(1): np.ones(4, np.float32), SameRepr(2): np.full(4, 2, np.float32)}
    params = {k: np.zeros(4, np.float32) for k in grad}
    opt = optimizers.ADAM(1e-2)
    opt.update(params, grad)
    state = opt.state_dict()
    assert len(set(state["leaf_paths"])) == 2
    twin = optimizers.ADAM(1e-2)
    twin.load_state_dict(state)
    twin_params = {k: v.copy() for k, v in params.items()}
    opt.update(params, grad)
    twin.update(twin_params, grad)
    for k in grad:
        assert np.array_equal(params[k], twin_params[k])
