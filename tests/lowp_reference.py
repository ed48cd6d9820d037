"""The independent NumPy reference of bfloat16/float16 leaves in fusedopt.optim
(docs/lowbit.md): each leaf widened to float32, stepped by the class's float32
reference (tests/optim_cases.py), then rounded back, to nearest even by
ml_dtypes/NumPy's own conversion or stochastically with the documented
generator, written here again in NumPy uint64 arithmetic."""
import ml_dtypes
import numpy as np

import fusedopt
from fusedopt import _core
from optim_cases import ENTRIES

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
M32, M64 = 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF


def bits_of(a):
    """An array's bytes, flat (NaN payloads compared too)."""
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def assert_bits(mine, ref):
    """Two lists of arrays with the same dtypes and bytes."""
    assert len(mine) == len(ref)
    for a, b in zip(mine, ref):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(bits_of(a), bits_of(b))


# Parity with torch's fused CPU kernels on 16-bit parameters (round to nearest; the
# operation orders differ): at most `ulps` spacings apart everywhere, and at most a `share`
# of the elements with other bits, per optimizer.
TORCH_FUSED_TOLERANCE = {"AdamW": (0.002, 1), "Adam": (0.002, 1), "Adagrad": (0.02, 16)}


def assert_near_torch_fused(name, pairs):
    """Each (what, ours, torch's) pair of 16-bit NumPy arrays within TORCH_FUSED_TOLERANCE[name]."""
    share, ulps = TORCH_FUSED_TOLERANCE[name]
    different = total = 0
    for what, a, b in pairs:
        assert a.dtype == b.dtype and a.dtype.itemsize == 2, what
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        ulp = np.spacing(np.abs(b)).astype(np.float64)
        assert np.all(np.abs(a64 - b64) <= ulps * ulp + 1e-8), f"{what}: {np.max(np.abs(a64 - b64) / ulp)} ulps"
        different += int(np.sum(a.view(np.uint16) != b.view(np.uint16)))
        total += a.size
    assert different <= share * total, f"{different} of {total} elements differ"


def levels_and_thread_counts():
    """Sets every supported SIMD level with 1 and 2 threads in turn (the fixtures
    restore_simd_level and restore_num_threads put the originals back)."""
    for level in _core.simd_levels_supported():
        _core._set_simd_level(level)
        for threads in (1, 2):
            fusedopt.set_num_threads(threads)
            yield level, threads


def mix64(z):
    """SplitMix64's output function, on a Python int."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def key(seed, stream, t):
    return mix64((mix64(mix64(seed) ^ stream) + t) & M64)


def lowbias32(x):
    """Chris Wellons' lowbias32 on uint64 arrays holding 32-bit values."""
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(0x7FEB352D)) & np.uint64(M32)
    x = x ^ (x >> np.uint64(15))
    x = (x * np.uint64(0x846CA68B)) & np.uint64(M32)
    return x ^ (x >> np.uint64(16))


def random_bits(k, index):
    """16 random bits (as uint64) for the global element indices `index` (uint64): the
    low (even index) or high (odd) half of lowbias32 of the pair index, salted with the
    low word of mix64(k + the pair index's high word)."""
    pair = index >> np.uint64(1)
    lo, hi = pair & np.uint64(M32), pair >> np.uint64(32)
    salts = {h: mix64((k + h) & M64) & M32 for h in np.unique(hi).tolist()}
    salt = np.array([salts[h] for h in hi.tolist()], dtype=np.uint64) if len(salts) > 1 \
        else np.full(index.shape, next(iter(salts.values()), 0), dtype=np.uint64)
    word = lowbias32(lo ^ salt)
    return (word >> (np.uint64(16) * (index & np.uint64(1)))) & np.uint64(0xFFFF)


def round_stochastic(x, dtype, noise):
    """float32 `x` to `dtype` with random bits `noise` (uint64) below the cut."""
    b = x.view(np.uint32).astype(np.uint64)
    a = b & np.uint64(0x7FFFFFFF)
    nan = a > 0x7F800000
    if dtype == BF16:
        out = (b + (noise & np.uint64(0xFFFF))) >> np.uint64(16)
        out = np.where(nan, np.uint64(0x7FC0), out)
        return (out & np.uint64(0xFFFF)).astype(np.uint16).view(BF16)
    sign = (b >> np.uint64(16)) & np.uint64(0x8000)
    r = noise & np.uint64(0x1FFF)
    with np.errstate(over="ignore"):
        normal = np.minimum((a - np.uint64(0x38000000) + r) >> np.uint64(13), np.uint64(0x7C00))
    scaled = a.astype(np.uint32).view(np.float32) * np.float32(2.0 ** 24) + r.astype(np.float32) * np.float32(2.0 ** -13)
    sub = scaled.astype(np.int64).astype(np.uint64)
    out = np.where(nan, np.uint64(0x7E00), sign | np.where(a >= 0x38800000, normal, sub))
    return out.astype(np.uint16).view(F16)


def round_nearest(x, dtype):
    """ml_dtypes'/NumPy's conversion, every NaN as the canonical quiet NaN."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = x.astype(dtype)
    out[np.isnan(x)] = np.array(CANONICAL_NAN[dtype], np.uint16).view(dtype)
    return out


CANONICAL_NAN = {BF16: 0x7FC0, F16: 0x7E00}


class LowReference:
    """Steps a list of leaves (bfloat16, float16 or float32) in place, as fusedopt.optim
    steps them: ``slots`` gives the rule's slot names in their order (the generator's
    streams 1, 2, ...); ``seed`` None rounds to nearest even; with a seed the parameters
    round stochastically, and the 16-bit slots too with ``stochastic_state``."""

    def __init__(self, kind, lr, slots, seed=None, max_grad_norm=None, mask=None, stochastic_state=False, **hyper):
        from optim_reference import Reference
        self.ref = Reference(kind, lr=lr, max_grad_norm=max_grad_norm, mask=mask, **hyper)
        self.entry, self.slots, self.seed = ENTRIES[kind], slots, seed
        self.stochastic_state = stochastic_state
        self.state = None

    @staticmethod
    def math(p):
        """The type a leaf's math runs in: float32 for the 16-bit formats."""
        return np.float32 if p.dtype in (BF16, F16) else p.dtype.type

    def round(self, x, dtype, stream, first):
        if dtype not in (BF16, F16):
            return x
        if self.seed is None or (stream > 0 and not self.stochastic_state):
            return round_nearest(x, dtype)
        index = np.arange(x.size, dtype=np.uint64) + np.uint64(first)
        bits = random_bits(key(self.seed, stream, self.ref.t), index).reshape(x.shape)
        return round_stochastic(x, dtype, bits)

    def step(self, params, grads, norm=None):
        ref = self.ref
        if self.state is None:
            self.state = [{name: np.full(p.shape, self.entry.start(name, ref.h), dtype=self.math(p)).astype(p.dtype)
                           for name in self.slots} for p in params]
        ref.t += 1
        if self.entry.begin is not None:
            self.entry.begin(ref)
        clip = 1.0 if ref.max_grad_norm is None else min(ref.max_grad_norm / (norm + 1e-6), 1.0)
        sign = -1.0 if ref.h.get("maximize") else 1.0
        first = 0
        for i, (p, g, st) in enumerate(zip(params, grads, self.state)):
            decay = ref.mask is None or ref.mask[i]
            T = self.math(p)
            p32 = p.astype(T)
            st32 = {name: v.astype(T) for name, v in st.items()}
            self.entry.step(ref, p32, g.astype(T) * T(sign * clip), st32, T, decay)
            p[...] = self.round(p32, p.dtype, 0, first)
            for j, name in enumerate(self.slots):
                st[name][...] = self.round(st32[name], p.dtype, 1 + j, first)
            first += p.size


class MasterReference(LowReference):
    """master_weights: optim_reference.Reference steps float32 masters (16-bit parameters
    widened at the first step; float32/float64 leaves are their own), and each 16-bit
    parameter becomes its master rounded, to nearest or with the parameter's stream 0.
    ``masters`` and ``ref.state`` (float32 slots) are the state to compare."""

    masters = None

    def step(self, params, grads, norm=None):
        if self.masters is None:
            self.masters = [p.astype(self.math(p)) for p in params]
        self.ref.step(self.masters, [g.astype(self.math(g)) for g in grads], norm)
        first = 0
        for p, m in zip(params, self.masters):
            p[...] = self.round(m, p.dtype, 0, first)
            first += p.size
