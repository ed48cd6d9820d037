"""state_dict() / load_state_dict() of fusedopt.torch: torch's own format, an
exact round trip, and interchange with torch.optim's optimizers both ways
(a torch checkpoint resumes in fusedopt.torch and the other way round)."""
import copy
import io

import pytest

torch = pytest.importorskip("torch")

import fusedopt.torch as ft  # noqa: E402
import torch_cases as tc  # noqa: E402

CASES = [(name, i) for name in tc.NAMES for i in range(len(tc.CONFIGS[name]))]
TORCH_CASES = [(n, i) for n, i in CASES if n != "Lion"]
IDS = [f"{n}-{i}" for n, i in CASES]
TORCH_IDS = [f"{n}-{i}" for n, i in TORCH_CASES]
N = 9  # steps before the checkpoint, and after it


def through_file(state):
    """The state after torch.save and torch.load, as a checkpoint on disk."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def make(cls, name, config, params, **override):
    return cls(tc.groups(params, name, config), **{**config, **override})


def other_hyper_parameters(name):
    """Constructor values unlike the saved ones, which loading must replace."""
    return {"lr": 0.123} if name == "Rprop" else {"lr": 0.123, "weight_decay": 0.0}  # Rprop: no weight decay


def by_position(opt, params):
    return {i: dict(opt.state[p]) for i, p in enumerate(params) if p in opt.state}


@pytest.mark.parametrize("name,index", CASES, ids=IDS)
def test_round_trip_resumes_bit_for_bit(name, index):
    """N steps, save, load into a new optimizer made with other arguments,
    N more steps == 2N uninterrupted steps, bit for bit (parameters and state)."""
    config = tc.CONFIGS[name][index]
    cls = getattr(ft, name)
    straight_params = tc.make_params(torch.float32)
    resumed_params = tc.clone_params(straight_params)
    straight = make(cls, name, config, straight_params)
    tc.train(straight, straight_params, 2 * N)

    first = make(cls, name, config, resumed_params)
    tc.train(first, resumed_params, N)
    state = through_file(first.state_dict())
    resumed = make(cls, name, config, resumed_params, **other_hyper_parameters(name))
    resumed.load_state_dict(state)
    assert resumed.param_groups[1]["lr"] == first.param_groups[1]["lr"]
    tc.train(resumed, resumed_params, N, start=N)

    assert all(torch.equal(a, b) for a, b in zip(straight_params, resumed_params))
    assert tc.state_equal(by_position(straight, straight_params), by_position(resumed, resumed_params))


@pytest.mark.parametrize("name,index", TORCH_CASES, ids=TORCH_IDS)
def test_same_format_as_torch(name, index):
    """The same group keys and values, state slots, tensor shapes and dtypes as
    the torch optimizer's state dict after the same steps; distinct step tensors."""
    config = tc.CONFIGS[name][index]
    ref_params = tc.make_params(torch.float32)
    our_params = tc.clone_params(ref_params)
    ref = make(tc.reference_class(name), name, config, ref_params)
    ours = make(getattr(ft, name), name, config, our_params)
    tc.train(ref, ref_params, 5)
    tc.train(ours, our_params, 5)
    a, b = ref.state_dict(), ours.state_dict()
    assert [g["params"] for g in b["param_groups"]] == [g["params"] for g in a["param_groups"]]
    for ga, gb in zip(a["param_groups"], b["param_groups"]):
        # fusedopt's options of 16-bit parameters (docs/lowbit.md) at their defaults, the group's seed drawn
        assert set(gb) == set(ga) | {"stochastic_rounding", "stochastic_state", "seed", "master_weights"}
        assert not gb["stochastic_rounding"] and not gb["stochastic_state"] and not gb["master_weights"]
        assert isinstance(gb["seed"], int)
        for key in ga:
            if key not in ("foreach", "fused"):  # the reference runs with foreach=False
                assert gb[key] == ga[key], key
    assert set(b["state"]) == set(a["state"])
    steps = []
    for k, sa in a["state"].items():
        sb = b["state"][k]
        assert set(sb) == set(sa), k
        for slot, va in sa.items():
            assert (sb[slot].shape, sb[slot].dtype) == (va.shape, va.dtype), (k, slot)
        if "step" in sb:
            steps.append(sb["step"])
    assert len({id(s) for s in steps}) == len(steps)


def _fused_checkpoint(name, index):
    """Whether torch 2.13 has a fused CPU implementation of this case that
    trains it: none for RMSprop; its fused SGD with momentum fails when some
    parameters have momentum buffers and others not yet (None gradients)."""
    return name in ("Adam", "AdamW", "Adagrad") or (name == "SGD" and not tc.CONFIGS[name][index].get("momentum"))


CHECKPOINTS = [(n, i, False) for n, i in TORCH_CASES] + [(n, i, True) for n, i in TORCH_CASES if _fused_checkpoint(n, i)]


@pytest.mark.parametrize("name,index,fused", CHECKPOINTS,
                         ids=[f"{n}-{i}-{'fused' if f else 'foreach-off'}" for n, i, f in CHECKPOINTS])
def test_torch_checkpoint_resumes_in_fusedopt(name, index, fused):
    """torch trains N steps and saves; fusedopt.torch loads and trains N more
    steps as torch goes on: the same parameters and state (float64 tolerance).
    The saved optimizer may be torch's fused one where torch has it."""
    config = tc.CONFIGS[name][index]
    torch_kw = {"fused": True} if fused else {"foreach": False}
    ref_params = tc.make_params(torch.float64)
    ref = make(getattr(torch.optim, name), name, config, ref_params, **torch_kw)
    tc.train(ref, ref_params, N)
    state = through_file(ref.state_dict())

    our_params = tc.clone_params(ref_params)
    ours = make(getattr(ft, name), name, config, our_params, **other_hyper_parameters(name))
    ours.load_state_dict(state)
    assert all(ours.param_groups[0].get(k) in (None, False) for k in ("fused", "foreach"))
    if name in tc.SCALAR_STATE:
        # torch resuming its own checkpoint: its load casts the scalar state to the parameters'
        # float64 (docs/torch.md, "Scalar state"), which fusedopt's load does alike
        ref_params = tc.clone_params(ref_params)
        ref = make(getattr(torch.optim, name), name, config, ref_params, **torch_kw)
        ref.load_state_dict(through_file(state))
    tc.train(ref, ref_params, N, start=N)
    tc.train(ours, our_params, N, start=N)
    for i, (a, b) in enumerate(zip(ref_params, our_params)):
        torch.testing.assert_close(b.detach(), a.detach(), rtol=tc.TOL[torch.float64][0], atol=tc.TOL[torch.float64][1], msg=lambda m: f"param {i}: {m}")
        for slot, va in ref.state.get(a, {}).items():
            vb = ours.state[b][slot]
            if slot == "step":
                assert float(vb) == float(va)
            else:
                torch.testing.assert_close(vb, va, rtol=tc.TOL[torch.float64][0], atol=tc.TOL[torch.float64][1])


@pytest.mark.parametrize("name,index", TORCH_CASES, ids=TORCH_IDS)
def test_fusedopt_checkpoint_resumes_in_torch(name, index):
    """fusedopt.torch trains N steps and saves; torch.optim loads and trains N
    more steps as fusedopt.torch goes on."""
    config = tc.CONFIGS[name][index]
    our_params = tc.make_params(torch.float64)
    ours = make(getattr(ft, name), name, config, our_params)
    tc.train(ours, our_params, N)
    state = ours.state_dict()  # live, not through a file: torch then steps its tensors
    state = {"state": {k: {s: v.clone() for s, v in d.items()} for k, d in state["state"].items()},
             "param_groups": state["param_groups"]}

    ref_params = tc.clone_params(our_params)
    ref = make(tc.reference_class(name), name, config, ref_params, **other_hyper_parameters(name))
    ref.load_state_dict(state)
    if name in tc.SCALAR_STATE:  # as in the test above: both sides resume through a load
        our_params = tc.clone_params(our_params)
        ours = make(getattr(ft, name), name, config, our_params)
        ours.load_state_dict(copy.deepcopy(state))
    tc.train(ours, our_params, N, start=N)
    tc.train(ref, ref_params, N, start=N)
    rtol, atol = tc.TOL[torch.float64]
    for i, (a, b) in enumerate(zip(ref_params, our_params)):
        torch.testing.assert_close(b.detach(), a.detach(), rtol=rtol, atol=atol, msg=lambda m: f"param {i}: {m}")


def test_state_tensors_are_live_views():
    """opt.state[p] tensors are the moments the next step reads: writing into
    one (as a user resetting a moment would) changes the next step as in torch."""
    ref_params = tc.make_params(torch.float64)
    our_params = tc.clone_params(ref_params)
    ref = torch.optim.Adam(ref_params, lr=0.01, foreach=False)
    ours = ft.Adam(our_params, lr=0.01)
    always = lambda i, k: False  # noqa: E731
    tc.train(ref, ref_params, 3, none=always)
    tc.train(ours, our_params, 3, none=always)
    for opt, params in ((ref, ref_params), (ours, our_params)):
        opt.state[params[0]]["exp_avg"].mul_(-1.0)
        opt.state[params[1]]["exp_avg_sq"].zero_()
    tc.train(ref, ref_params, 3, start=3, none=always)
    tc.train(ours, our_params, 3, start=3, none=always)
    for a, b in zip(ref_params, our_params):
        torch.testing.assert_close(b.detach(), a.detach(), rtol=tc.TOL[torch.float64][0], atol=tc.TOL[torch.float64][1])


@pytest.mark.parametrize("name", tc.NAMES)
def test_deepcopy_and_pickle_continue_identically(name):
    """copy.deepcopy(opt) (which copies its parameters) and a pickled
    optimizer step exactly like the original from there on."""
    params = tc.make_params(torch.float32)
    opt = make(getattr(ft, name), name, tc.CONFIGS[name][1], params)
    tc.train(opt, params, 5)
    clone = copy.deepcopy(opt)
    clone_params = [p for g in clone.param_groups for p in g["params"]]
    assert all(a is not b for a, b in zip(params, clone_params))
    buf = io.BytesIO()
    torch.save(opt, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    loaded_params = [p for g in loaded.param_groups for p in g["params"]]
    for o, ps in ((opt, params), (clone, clone_params), (loaded, loaded_params)):
        tc.train(o, ps, 5, start=5)
    for a, b, c in zip(params, clone_params, loaded_params):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert tc.state_equal(by_position(opt, params), by_position(clone, clone_params))
    assert tc.state_equal(by_position(opt, params), by_position(loaded, loaded_params))
