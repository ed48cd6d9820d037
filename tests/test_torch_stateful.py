"""A stateful test of fusedopt.torch (issue 22) against torch.optim as the model.

Random sequences of: steps (some gradients None), refused steps (a bad
gradient, parameter or hyper-parameter: nothing may change), in-place edits of
state tensors (step counts and moments, as code that rewinds a schedule does),
assignments into the state (a parameter's dict, one tensor, a deletion),
lr changes, state_dict/load_state_dict (own, crossed with torch's, refused, and
through a load pre-hook), deepcopy and pickle, zero_grad, all applied to a
fusedopt.torch optimizer and to torch.optim's (foreach=False; Lion's
reference in torch_cases). After every rule, parameters and every state tensor
agree at torch_cases.TOL (float64) and the step counts exactly.
"""
import copy
import pickle

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

torch = pytest.importorskip("torch")

import fusedopt.torch as ft  # noqa: E402
import torch_cases as tc  # noqa: E402

DTYPE = torch.float64
BAD = ["dtype", "sparse", "meta", "expanded", "lr", "tensor-lr", "betas"]


class TorchOptimizerMachine(RuleBasedStateMachine):

    @initialize(name=st.sampled_from(tc.NAMES), data=st.data(), seed=st.integers(0, 2 ** 16))
    def start(self, name, data, seed):
        self.name = name
        self.config = data.draw(st.sampled_from(tc.CONFIGS[name]), label="config")
        self.ref_params = tc.make_params(DTYPE, seed=seed)
        self.our_params = tc.clone_params(self.ref_params)
        self.ref = tc.reference_class(name)(tc.groups(self.ref_params, name, self.config), **self.config)
        self.ours = getattr(ft, name)(tc.groups(self.our_params, name, self.config), **self.config)
        self.k = 0

    def both(self):
        return ((self.ref, self.ref_params), (self.ours, self.our_params))

    # -- steps ---------------------------------------------------------------------------
    @rule(missing=st.sets(st.integers(0, len(tc.SHAPES) - 1), max_size=3))
    def step(self, missing):
        grads = tc.grads_for(self.ref_params, self.k, none=lambda i, k: i in missing)
        self.k += 1
        for opt, params in self.both():
            tc.set_grads(params, grads)
            opt.step()

    @rule(how=st.sampled_from(BAD), group=st.integers(0, 1))
    def refused_step(self, how, group):
        """A step with one bad thing in `group`: refused, nothing changes; then
        the bad thing is taken away again."""
        opt, params = self.ours, self.our_params
        tc.set_grads(params, tc.grads_for(params, self.k, none=lambda i, k: False))
        g = opt.param_groups[group]
        undo = None
        if how in ("dtype", "sparse", "meta", "expanded"):
            bad = {"dtype": lambda: torch.zeros(3, dtype=torch.float8_e4m3fn),
                   "sparse": lambda: torch.zeros(3, dtype=DTYPE),
                   "meta": lambda: torch.zeros(3, dtype=DTYPE, device="meta"),
                   "expanded": lambda: torch.zeros(1, dtype=DTYPE).expand(3)}[how]()
            p = torch.nn.Parameter(bad)
            p.grad = torch.zeros(3, dtype=DTYPE).to_sparse() if how == "sparse" else torch.ones_like(bad)
            g["params"].append(p)
            undo = g["params"].pop
            error = TypeError if how in ("dtype", "sparse", "meta") else ValueError
        elif how in ("lr", "tensor-lr"):
            old = g["lr"]
            g["lr"] = -0.5 if how == "lr" else torch.tensor([0.1, 0.2])
            undo = lambda: g.__setitem__("lr", old)  # noqa: E731
            error = ValueError
        else:
            key = "betas" if "betas" in g else "etas" if "etas" in g else "weight_decay"  # Rprop: no decay
            old = g[key]
            g[key] = {"betas": (0.9, 1.5), "etas": (0.5, 0.9)}.get(key, -1.0)
            undo = lambda: g.__setitem__(key, old)  # noqa: E731
            error = ValueError
        before = tc.snapshot(opt, params)
        try:
            with pytest.raises(error):
                opt.step()
            assert tc.unchanged(before, tc.snapshot(opt, params))
        finally:
            undo()
        for p in params:
            p.grad = None

    @rule(lr=st.sampled_from([0.0, 1e-3, 0.02, 0.1]), group=st.integers(0, 1))
    def set_lr(self, lr, group):
        for opt, _ in self.both():
            opt.param_groups[group]["lr"] = lr

    @rule(set_to_none=st.booleans())
    def zero_grad(self, set_to_none):
        for opt, _ in self.both():
            opt.zero_grad(set_to_none=set_to_none)

    # -- edits of the state tensors --------------------------------------------------------
    def stepped(self):
        return [i for i, p in enumerate(self.our_params) if self.ours.state.get(p)]

    @precondition(lambda self: self.name != "SGD" and self.stepped())
    @rule(data=st.data(), to=st.sampled_from(["zero", "back", "ahead"]))
    def edit_step(self, data, to):
        i = data.draw(st.sampled_from(self.stepped()), label="param")
        for opt, params in self.both():
            step = opt.state[params[i]]["step"]
            step.fill_({"zero": 0.0, "back": max(float(step) - 2, 0.0), "ahead": float(step) + 5}[to])

    @precondition(lambda self: self.stepped())
    @rule(data=st.data(), factor=st.sampled_from([0.0, 0.5, 3.0]))
    def edit_moment(self, data, factor):
        i = data.draw(st.sampled_from(self.stepped()), label="param")
        slots = sorted(s for s in self.ours.state[self.our_params[i]] if s != "step")
        if not slots:
            return
        slot = data.draw(st.sampled_from(slots), label="slot")
        for opt, params in self.both():
            opt.state[params[i]][slot].mul_(factor)  # factor >= 0: second moments stay >= 0

    @precondition(lambda self: self.stepped())
    @rule(data=st.data(), what=st.sampled_from(["dict", "tensor", "delete"]))
    def assign_state(self, data, what):
        """Assignments into opt.state (ZeroRedundancyOptimizer's load assigns whole dicts)."""
        i = data.draw(st.sampled_from(self.stepped()), label="param")
        slots = sorted(self.ours.state[self.our_params[i]])
        slot = data.draw(st.sampled_from(slots), label="slot")
        for opt, params in self.both():
            p = params[i]
            if what == "dict":
                opt.state[p] = {k: v.clone() for k, v in opt.state[p].items()}
            elif what == "tensor":
                t = opt.state[p][slot].clone()
                opt.state[p][slot] = t + 1 if slot == "step" else t * 0.5
            else:
                del opt.state[p]

    # -- state dicts, hooks, copies ----------------------------------------------------------
    @rule(crossed=st.booleans())
    def save_and_load(self, crossed):
        """Each loads its own state dict, or (torch's twins only) the other's."""
        ref_sd, our_sd = copy.deepcopy(self.ref.state_dict()), copy.deepcopy(self.ours.state_dict())
        if crossed and self.name != "Lion":
            ref_sd, our_sd = our_sd, ref_sd
        self.ref.load_state_dict(ref_sd)
        self.ours.load_state_dict(our_sd)

    @rule(factor=st.sampled_from([0.5, 2.0]))
    def load_through_a_pre_hook(self, factor):
        """A load pre-hook that rescales every group's lr in the loaded dict."""
        def rescale(opt, sd):
            sd["param_groups"] = [{**g, "lr": g["lr"] * factor} for g in sd["param_groups"]]

        for opt, _ in self.both():
            handle = opt.register_load_state_dict_pre_hook(rescale)
            opt.load_state_dict(copy.deepcopy(opt.state_dict()))
            handle.remove()

    @precondition(lambda self: self.stepped())
    @rule(data=st.data())
    def refused_load(self, data):
        i = data.draw(st.sampled_from(self.stepped()), label="param")
        sd = copy.deepcopy(self.ours.state_dict())
        slot = data.draw(st.sampled_from(sorted(sd["state"][i])), label="slot")
        sd["state"][i][slot] = torch.zeros(99, dtype=DTYPE) if slot != "step" else torch.tensor(-1.0)
        before = tc.snapshot(self.ours, self.our_params)
        with pytest.raises(ValueError, match=rf"state\[{i}\]"):
            self.ours.load_state_dict(sd)
        assert tc.unchanged(before, tc.snapshot(self.ours, self.our_params))

    @rule(how=st.sampled_from(["deepcopy", "pickle"]))
    def copy_optimizers(self, how):
        """Both optimizers replaced by copies (with copies of their parameters)."""
        clone = copy.deepcopy if how == "deepcopy" else (lambda o: pickle.loads(pickle.dumps(o)))
        self.ref, self.ours = clone(self.ref), clone(self.ours)
        self.ref_params = [p for g in self.ref.param_groups for p in g["params"]]
        self.our_params = [p for g in self.ours.param_groups for p in g["params"]]

    # -- the invariant ---------------------------------------------------------------------------
    @invariant()
    def same_as_torch(self):
        if not hasattr(self, "ours"):
            return
        rtol, atol = tc.TOL[DTYPE]
        for i, (a, b) in enumerate(zip(self.ref_params, self.our_params)):
            torch.testing.assert_close(b.detach(), a.detach(), rtol=rtol, atol=atol,
                                       msg=lambda m: f"param {i}: {m}")
            ra, rb = self.ref.state.get(a, {}), self.ours.state.get(b, {})
            assert set(rb) == set(ra), f"param {i}: slots {sorted(rb)} != torch's {sorted(ra)}"
            for slot, va in ra.items():
                if slot == "step":
                    assert float(rb[slot]) == float(va), f"param {i}: step {float(rb[slot])} != {float(va)}"
                else:
                    torch.testing.assert_close(rb[slot], va, rtol=rtol, atol=atol,
                                               msg=lambda m: f"param {i} {slot}: {m}")
        for ga, gb in zip(self.ref.param_groups, self.ours.param_groups):
            assert float(gb["lr"]) == float(ga["lr"])


TorchOptimizerMachine.TestCase.settings = settings(max_examples=30, stateful_step_count=20, deadline=None)
test_torch_optimizer_machine = TorchOptimizerMachine.TestCase
