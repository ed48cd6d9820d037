"""bench/numpy_optim.py, the NumPy peer of bench_step.py's optim rows, against
fusedopt.optim at the benchmark's hyper-parameters (peers_optim.HYPER): a wrong
peer would make a wrong table. Both follow docs/optim.md in float32, rounding
every operation on its own (NumPy's + - * / sqrt are correctly rounded, as the
kernels' are), so the tolerance is zero: the same bits, parameters and state."""
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
if not BENCH.exists():  # the wheel checks copy tests/ alone
    pytest.skip("bench/ is not beside tests/", allow_module_level=True)
sys.path.insert(0, str(BENCH))
import numpy_optim  # noqa: E402
import peers_optim  # noqa: E402

from fusedopt import optim  # noqa: E402

STEPS = 12  # past RAdam's unrectified first steps (rho_t > 5 from step 6)
# The bench's classes whose NumPy row is a Skip: numpy_optim has element-wise rules only.
WITHOUT_NUMPY_PEER = {"optim.Adafactor"}


def test_only_the_factored_step_lacks_a_numpy_peer():
    assert {n for n in peers_optim.HYPER if n.split(".", 1)[1] not in numpy_optim.RULES} == WITHOUT_NUMPY_PEER
    with pytest.raises(peers_optim.Skip):
        peers_optim.make_numpy("optim.Adafactor", [], [])


@pytest.mark.parametrize("name", sorted(set(peers_optim.HYPER) - WITHOUT_NUMPY_PEER))
def test_numpy_peer_matches_fusedopt(name):
    rng = np.random.default_rng(7)
    shapes = [(33,), (4, 5)]
    # |p| ~ lr: an update's last bits reach the parameters (with |p| ~ 1 they would round away)
    params = [np.float32(peers_optim.LR) * rng.standard_normal(s, dtype=np.float32) for s in shapes]
    ours = [p.copy() for p in params]
    kind = name.split(".", 1)[1]
    opt = getattr(optim, kind)(lr=peers_optim.LR, **peers_optim.HYPER[name])
    peer = numpy_optim.NumpyOptim(kind, peers_optim.HYPER[name], peers_optim.LR)
    for step in range(STEPS):
        # new gradients each step, some entries 0 and some repeating the last step's sign flipped:
        # Rprop's three branches, SGD's first step and later ones
        grads = [np.float32(0.1) * rng.standard_normal(s, dtype=np.float32) for s in shapes]
        for g in grads:
            g.flat[::5] = 0
        opt.step(ours, grads)
        peer.step(params, grads)
        for a, b in zip(params, ours):
            np.testing.assert_array_equal(a, b, err_msg=f"{name}, step {step + 1}")
    assert_same_state(peer, opt)


def assert_same_state(peer, opt):
    """The peer's state arrays, in docs/optim.md's slot order, are fusedopt's."""
    sd = opt.state_dict()
    for i, (slots, _) in enumerate(peer.state):
        assert len(slots) == len(sd["slots"])
        for slot, ours in zip(sd["slots"], slots):
            np.testing.assert_array_equal(ours, sd[f"{slot}.{i}"], err_msg=f"{slot} of leaf {i}")


def test_asgd_peer_averages_after_t0():
    """ASGD's other branch (mu != 1: ax = ax + (p - ax) * mu), reached with a small t0."""
    hyper = {**peers_optim.HYPER["optim.ASGD"], "t0": 2.0}
    rng = np.random.default_rng(3)
    params = [rng.standard_normal(17, dtype=np.float32)]
    ours = [params[0].copy()]
    opt = optim.ASGD(lr=0.05, **hyper)
    peer = numpy_optim.NumpyOptim("ASGD", hyper, 0.05)
    for _ in range(6):
        grads = [rng.standard_normal(17, dtype=np.float32)]
        opt.step(ours, grads)
        peer.step(params, grads)
    np.testing.assert_array_equal(params[0], ours[0])
    assert not np.array_equal(peer.state[0][0][0], params[0])  # ax averaged, not a copy of p
    assert_same_state(peer, opt)
