"""Assignments into fusedopt.torch's ``opt.state`` are what the next step uses, as
in torch: a parameter's state dict replaced (ZeroRedundancyOptimizer's load does
this to a live optimizer), one state tensor replaced, an entry deleted. And the
containers stay torch's to the outside: state_dict() holds plain dicts (torch.load
with weights_only=True), pickling and deepcopy keep the tracked containers.

References: torch.optim 2.13 (foreach=False) at torch_cases.TOL."""
import copy
import io
import os
import pickle
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")

import fusedopt.torch as ft  # noqa: E402
import torch_cases as tc  # noqa: E402
from test_torch_trust import ALWAYS, assert_same, pair  # noqa: E402


@pytest.mark.parametrize("name", tc.NAMES)
def test_a_replaced_state_dict_is_used_by_the_next_step(name):
    ref, ref_params, ours, our_params = pair(name)
    donor_ref, donor_ref_params, donor, donor_params = pair(name, steps=5)
    for opt, params, src, src_params in ((ref, ref_params, donor_ref, donor_ref_params),
                                        (ours, our_params, donor, donor_params)):
        for p, q in zip(params, src_params):
            if q in src.state:  # plain SGD keeps none
                opt.state[p] = {k: v.clone() for k, v in src.state[q].items()}
    tc.train(ref, ref_params, 2, start=3, none=ALWAYS)
    tc.train(ours, our_params, 2, start=3, none=ALWAYS)
    assert_same(ref, ref_params, ours, our_params)


@pytest.mark.parametrize("name", tc.NAMES)
def test_a_replaced_state_tensor_is_used_by_the_next_step(name):
    ref, ref_params, ours, our_params = pair(name)
    for opt, params in ((ref, ref_params), (ours, our_params)):
        for i, p in enumerate(params):
            for slot in list(opt.state[p]):
                # new tensors: a count 2 steps on, moments scaled and shifted (second moments stay >= 0)
                t = opt.state[p][slot].clone()
                opt.state[p][slot] = t + 2 if slot == "step" else t * (0.5 if i % 2 else 2.0) + 0.25
    tc.train(ref, ref_params, 3, start=3, none=ALWAYS)
    tc.train(ours, our_params, 3, start=3, none=ALWAYS)
    assert_same(ref, ref_params, ours, our_params)


@pytest.mark.parametrize("name", ["Adam", "RMSprop", "Lion"])
def test_a_deleted_state_starts_over_as_torch_s(name):
    ref, ref_params, ours, our_params = pair(name)
    for opt, params in ((ref, ref_params), (ours, our_params)):
        del opt.state[params[1]]
        opt.state[params[3]].clear()
    tc.train(ref, ref_params, 2, start=3, none=ALWAYS)
    tc.train(ours, our_params, 2, start=3, none=ALWAYS)
    assert_same(ref, ref_params, ours, our_params)


def test_state_dict_is_plain_and_loads_with_weights_only():
    _, _, ours, our_params = pair("Adam")
    sd = ours.state_dict()
    assert all(type(v) is dict for v in sd["state"].values())
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    fresh = ft.Adam(tc.groups(tc.clone_params(our_params), "Adam", tc.CONFIGS["Adam"][1]), **tc.CONFIGS["Adam"][1])
    fresh.load_state_dict(loaded)
    assert tc.state_equal(fresh.state_dict()["state"], sd["state"])


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_keep_tracking_assignments(how):
    ref, ref_params, ours, our_params = pair("Adam")
    if how == "deepcopy":
        ours, our_params = copy.deepcopy((ours, our_params))
    else:
        ours, our_params = pickle.loads(pickle.dumps((ours, our_params)))
    tc.train(ours, our_params, 1, start=3, none=ALWAYS)  # a plan over the copy's own tensors
    tc.train(ref, ref_params, 1, start=3, none=ALWAYS)
    for opt, params in ((ref, ref_params), (ours, our_params)):
        opt.state[params[0]] = {k: v.clone() * 2 for k, v in opt.state[params[0]].items()}
    tc.train(ref, ref_params, 1, start=4, none=ALWAYS)
    tc.train(ours, our_params, 1, start=4, none=ALWAYS)
    assert_same(ref, ref_params, ours, our_params)


def test_two_optimizers_stepped_in_turn_keep_their_plans():
    """Each optimizer counts the changes to its own state: the other's plan (whose first
    step assigns into its own state) does not rebuild this one's, step after step."""
    params = [tc.make_params(torch.float32), tc.make_params(torch.float32)]
    opts = [ft.AdamW(ps, lr=1e-2) for ps in params]
    for ps in params:
        tc.set_grads(ps, tc.grads_for(ps, 0, none=lambda i, k: False))
    plans = []
    for _ in range(4):
        for opt in opts:
            opt.step()
        plans.append([id(opt._plans[0]) for opt in opts])
    assert all(p == plans[0] for p in plans)


def test_a_state_dict_shared_by_two_optimizers_counts_in_both():
    """Another optimizer's dict of a parameter's state put into ours (one Slots object
    in both): an entry assigned through the other optimizer is what our next step uses."""
    ref, ref_params, ours, our_params = pair("Adam")
    other = ft.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    donor = other.state[other.param_groups[0]["params"][0]]  # other's own dict
    donor.update({k: v.clone() for k, v in ours.state[our_params[0]].items()})
    ours.state[our_params[0]] = donor
    assert ours.state[our_params[0]] is donor
    ref.state[ref_params[0]] = {k: v.clone() for k, v in ref.state[ref_params[0]].items()}
    tc.train(ref, ref_params, 2, start=3, none=ALWAYS)
    tc.train(ours, our_params, 2, start=3, none=ALWAYS)  # new plans, installed into donor; then steady
    for target in (ref.state[ref_params[0]], other.state[other.param_groups[0]["params"][0]]):
        target["exp_avg"] = target["exp_avg"].clone() * 2
    tc.train(ref, ref_params, 2, start=5, none=ALWAYS)
    tc.train(ours, our_params, 2, start=5, none=ALWAYS)
    assert_same(ref, ref_params, ours, our_params)


ZERO_SCRIPT = textwrap.dedent("""
    import io, sys
    import torch, torch.distributed as dist
    from torch.distributed.optim import ZeroRedundancyOptimizer
    import fusedopt.torch as ft
    dist.init_process_group("gloo", rank=0, world_size=1, init_method="tcp://127.0.0.1:" + sys.argv[1])
    torch.manual_seed(0)
    def model():
        torch.manual_seed(0)
        return torch.nn.Linear(8, 4)
    def run(m, opt, steps, seed):
        g = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            opt.zero_grad()
            m(torch.randn(16, 8, generator=g)).square().mean().backward()
            opt.step()
    out = []
    for cls in (torch.optim.Adam, ft.Adam):
        a, b = model(), model()
        za = ZeroRedundancyOptimizer(a.parameters(), optimizer_class=cls, lr=1e-2)
        zb = ZeroRedundancyOptimizer(b.parameters(), optimizer_class=cls, lr=1e-2)
        run(a, za, 3, 1)
        run(b, zb, 1, 2)                       # b is live: it has stepped, its plan exists
        za.consolidate_state_dict(to=0)
        buf = io.BytesIO()                    # a checkpoint: ZeRO's CPU load would share a's tensors
        torch.save(za.state_dict(), buf)
        buf.seek(0)
        zb.load_state_dict(torch.load(buf))   # ZeRO assigns optim.state[p] = {...}
        b.load_state_dict(a.state_dict())
        run(a, za, 2, 3)
        run(b, zb, 2, 3)
        out.append(all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters())))
    print(out)
    dist.destroy_process_group()
""")


def test_load_into_a_live_zero_redundancy_optimizer_continues_the_saved_run(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "zero.py"
    script.write_text(ZERO_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(script), str(port)], capture_output=True, text=True, timeout=120,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # torch's Adam and fusedopt's: the run loaded into the live optimizer continues the saved one exactly
    assert proc.stdout.strip().splitlines()[-1] == "[True, True]", proc.stdout
