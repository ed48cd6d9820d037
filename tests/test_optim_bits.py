"""fusedopt.optim bit for bit against the NumPy float32/float64 reference of its
documented operation order (tests/optim_reference.py), at every SIMD level and
thread count, on sizes with SIMD tails; Lion against the paper in float64."""
import numpy as np
import pytest

import fusedopt
from fusedopt import _core, optim
from optim_cases import CASE_IDS, CASES, RICH
from optim_reference import Reference, global_norm, lion_paper_f64

SIZES = [(1,), (15,), (17, 3), (130,), (2049,), (3, 1000)]


def _tree(rng, dtype):
    return [rng.standard_normal(s).astype(dtype) for s in SIZES]


def _run(kind, hyper, dtype, rng, steps=6, clip=None, mask=None, assign=False):
    params = _tree(rng, dtype)
    mine = [p.copy() for p in params]
    ref = Reference(kind, lr=0.01, max_grad_norm=clip, mask=mask, **hyper)
    cls = getattr(optim, kind)
    if assign:  # the defaults at construction, then every value by assignment (those choosing the rule too)
        opt = cls(lr=0.01, max_grad_norm=clip, weight_decay_mask=mask)
        for name, value in hyper.items():
            setattr(opt, name, value)
    else:
        opt = cls(lr=0.01, max_grad_norm=clip, weight_decay_mask=mask, **hyper)
    for _ in range(steps):
        grads = [(rng.standard_normal(p.shape) * 3).astype(dtype) for p in params]
        opt.step(mine, grads)
        ref.step(params, grads, norm=opt.last_grad_norm)
        if clip is not None:
            assert opt.last_grad_norm == pytest.approx(global_norm(grads), rel=1e-12)
    return mine, params, opt, ref


def _assert_bits(mine, ref):
    for a, b in zip(mine, ref):
        np.testing.assert_array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8))


@pytest.mark.parametrize("kind,hyper", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bits_at_every_simd_level_and_thread_count(kind, hyper, dtype, rng, restore_simd_level, restore_num_threads):
    seed = int(rng.integers(2**31))
    results = []
    for level in fusedopt._core.simd_levels_supported():
        _core._set_simd_level(level)
        for threads in (1, 2):
            fusedopt.set_num_threads(threads)
            mine, ref_params, opt, ref = _run(kind, hyper, dtype, np.random.default_rng(seed))
            _assert_bits(mine, ref_params)
            for name, tree in opt.state_arrays().items():
                _assert_bits(tree, [st[name] for st in ref.state])
            results.append(mine)
    for other in results[1:]:
        _assert_bits(other, results[0])


@pytest.mark.parametrize("kind,hyper", CASES, ids=CASE_IDS)
def test_large_tree_runs_threaded_with_the_same_bits(kind, hyper, rng, restore_num_threads):
    # Above serial_below elements the thread team runs the chunks; with clipping the norm pass too.
    shapes = [(70_001,), (5, 333)]
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    out = []
    for threads in (1, 2):
        fusedopt.set_num_threads(threads)
        mine = [p.copy() for p in params]
        opt = getattr(optim, kind)(lr=0.01, max_grad_norm=100.0, **hyper)
        ref_params = [p.copy() for p in params]
        ref = Reference(kind, lr=0.01, max_grad_norm=100.0, **hyper)
        for _ in range(3):
            opt.step(mine, grads)
            ref.step(ref_params, grads, norm=opt.last_grad_norm)
        _assert_bits(mine, ref_params)
        out.append((mine, opt.last_grad_norm))
    _assert_bits(out[0][0], out[1][0])
    assert out[0][1] == out[1][1]


@pytest.mark.parametrize("kind,hyper", RICH)
def test_hyper_parameters_assigned_after_construction_reach_the_kernel(kind, hyper, rng):
    # Each hyper-parameter is stored into the native field(s) it declares, on assignment as at construction.
    mine, ref_params, _, _ = _run(kind, hyper, np.float64, rng, assign=True)
    _assert_bits(mine, ref_params)


def test_every_native_hyper_parameter_has_a_check_and_a_class():
    from fusedopt.optim import _base, _checks

    assert {domain for _, domain in _core.optim_hyper_fields} <= set(_checks.DOMAINS)
    exposed = {f for name in optim.__all__ for d in vars(getattr(optim, name)).values()
               if isinstance(d, _base._Hyper) for f in d.fields}
    # max_grad_norm, grad_scale and unscale_in_place are the base class's options of every optimizer;
    # decoupled_weight_decay AdamW fixes.
    assert exposed | {"max_grad_norm", "grad_scale", "unscale_in_place", "decoupled_weight_decay"} == \
        {name for name, _ in _core.optim_hyper_fields}


def test_the_kernel_table_is_generated_from_the_specs():
    # Every (rule, decay, phase) of every spec, in enum order, and nothing else.
    specs = {rule: _core.optim_rule_spec(rule) for rule in _core.OptimRule.__members__.values()}
    assert list(_core.optim_kernels) == [(rule, d, p) for rule, spec in sorted(specs.items(), key=lambda kv: int(kv[0]))
                                         for d in spec["decays"] for p in spec["phases"]]
    for kind, hyper in CASES:
        rule = getattr(optim, kind)(**hyper)._native_rule()
        assert sorted(specs[rule]["slots"]) == sorted(Reference(kind, **hyper).slot_names())
        assert specs[rule]["scalars"] == Reference(kind, **hyper).scalars


def test_the_registry_covers_every_rule_with_and_without_decay():
    # Every rule is chosen by some case, once with weight decay and once without (where it has decay).
    chosen = set()
    for kind, hyper in CASES:
        rule = getattr(optim, kind)(**hyper)._native_rule()
        chosen.add((rule, Reference(kind, **hyper).h.get("weight_decay", 0) != 0))  # Rprop has none
    for rule in _core.OptimRule.__members__.values():
        assert (rule, False) in chosen or (rule, True) in chosen, rule
        if len(_core.optim_rule_spec(rule)["decays"]) > 1:
            assert (rule, True) in chosen, f"{rule}: no case with weight decay"


@pytest.mark.parametrize("kind,hyper", RICH)
def test_clipping_and_mask_bits(kind, hyper, rng):
    mask = [True, False, True, False, True, False]
    decay = {"weight_decay": 0.3} if "weight_decay" in Reference(kind).h else {}  # Rprop has none
    mine, ref_params, _, _ = _run(kind, {**hyper, **decay}, np.float32, rng, clip=2.0, mask=mask)
    _assert_bits(mine, ref_params)


def test_mixed_dtypes_in_one_tree(rng):
    params = {"a": rng.standard_normal(33).astype(np.float32), "b": rng.standard_normal(20)}
    grads = {"a": rng.standard_normal(33).astype(np.float32), "b": rng.standard_normal(20)}
    opt = optim.Adam(lr=0.1)
    ref = Reference("Adam", lr=0.1)
    ref_params = [params["a"].copy(), params["b"].copy()]
    for _ in range(4):
        opt.step(params, grads)
        ref.step(ref_params, [grads["a"], grads["b"]])
    _assert_bits([params["a"], params["b"]], ref_params)
    assert params["a"].dtype == np.float32 and params["b"].dtype == np.float64


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_lion_against_the_paper_in_float64(wd, rng):
    p = rng.standard_normal(1000)
    m = np.zeros_like(p)
    mine = [p.copy()]
    opt = optim.Lion(lr=1e-3, betas=(0.9, 0.99), weight_decay=wd)
    for _ in range(20):
        g = rng.standard_normal(p.shape)
        opt.step(mine, [g])
        p, m = lion_paper_f64(p, g, m, 1e-3, 0.9, 0.99, wd)
    np.testing.assert_allclose(mine[0], p, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(opt.state_arrays()["exp_avg"][0], m, rtol=1e-13, atol=1e-15)


def test_lion_sign_of_zero_leaves_the_parameter():
    # u = 0 exactly (m = 0, g = 0): sign(0) = 0, no step; with NaN the step is NaN.
    p = [np.ones(20, np.float32)]
    optim.Lion(lr=0.5).step(p, [np.zeros(20, np.float32)])
    np.testing.assert_array_equal(p[0], np.ones(20, np.float32))
    g = np.zeros(20, np.float32)
    g[3] = np.nan
    optim.Lion(lr=0.5).step(p, [g])
    assert np.isnan(p[0][3]) and np.all(p[0][np.arange(20) != 3] == 1)
