# Type stubs for fusedopt._core, the C++ extension (csrc/bindings/*.cpp).
# tests/test_config.py checks that every public name of the module is here.
import enum
from typing import Any, Callable, ClassVar, Literal, Optional, Sequence

import numpy as np
import numpy.typing as npt

_Arena = npt.NDArray[np.float32] | npt.NDArray[np.float64]

class Rule(enum.Enum):
    """The named update rules of the paysage family (csrc/paysage/rules.h)."""

    GRADIENT = ...
    MOMENTUM = ...
    RMSPROP = ...
    ADAM = ...
    UPDATE_MEAN = ...
    UPDATE_MEAN_SQUARE = ...
    UPDATE_BOTH = ...
    NORMALIZE = ...
    NORMALIZE_UNBIASED = ...
    NORMALIZE_UNBIASED_MEAN = ...

class Phase(enum.Enum):
    """Which moments of a rule start on a step (m = g, v = g*g) instead of averaging."""

    STEADY = ...
    FIRST = ...
    FIRST_MEAN = ...
    FIRST_MEAN_SQUARE = ...

class Output(enum.Enum):
    """Where a step's result goes."""

    NONE = ...
    DELTA = ...
    IN_PLACE = ...
    BOTH = ...

# Every compiled (rule, phase, output): the rule table of csrc/paysage/rules.h.
kernels: tuple[tuple[Rule, Phase, Output], ...]
# The compiler that built the extension, e.g. "gcc 12.2.0".
compiler: str
# Elements per chunk that one thread steps at a time.
chunk_elements: int
# Steps with fewer elements than this run on the calling thread only.
serial_below: int
# The largest count set_num_threads accepts: 4 per CPU, at least 256.
max_threads: int

class StructureError(ValueError):
    """A tree does not have the structure its plan recorded."""

class Plan:
    """The structure of a tree, recorded once; leaves laid out in 64-byte aligned arenas."""

    def __init__(self, tree: Any, name: str = "grad", low_precision: bool = False) -> None: ...
    @property
    def num_leaves(self) -> int: ...
    @property
    def arena_sizes(self) -> tuple[int, int]: ...
    @property
    def leaf_sizes(self) -> list[int]: ...
    @property
    def leaf_dtypes(self) -> list[Literal["float32", "float64", "bfloat16", "float16"]]: ...
    @property
    def paths(self) -> list[str]: ...
    @property
    def shapes(self) -> list[tuple[int, ...]]: ...
    def views(self, arena32: _Arena | None, arena64: _Arena | None) -> Any:
        """A tree of this structure whose leaves are views into the two arenas."""
    def unflatten(self, leaves: Sequence[Any]) -> Any: ...
    def flatten(self, tree: Any, name: str = "tree") -> list[Any]:
        """The leaves of `tree`, after checking its containers match."""

def aligned_empty(n: int, dtype: Literal["float32", "float64"]) -> _Arena:
    """A 1-d uninitialised array whose data starts on a 64-byte boundary."""

class State:
    """A GradientMemory's native state: plan, moment arenas, per-leaf sums, weights; one step()
    call checks, runs and commits a whole step."""

    plan: Plan | None
    # (float32 arena, float64 arena) of each moment, or None.
    mean: tuple[_Arena, _Arena] | None
    mean_square: tuple[_Arena, _Arena] | None
    # Trees of views into the moments' arenas (built on first use), or None.
    mean_tree: Any
    mean_square_tree: Any
    sums: npt.NDArray[np.float64] | None
    w: float
    w2: float
    conv_count: int | None
    # Whether the last optimizer step was in place (check_convergence then uses the sums).
    conv_inplace: bool
    # The loaded moments waiting for a gradient's structure (GradientMemory's), or None.
    pending: Any
    def __init__(self) -> None: ...
    def step(self, owner: Any, rule: Rule | int, output: Output | int, grad: Any, target: Any, lr: float,
             check_finite: bool) -> Any:
        """One step of `rule` over the tree `grad`. target: the parameters (IN_PLACE, BOTH), or a model
        whose parameter_update(delta) is called before the step commits (DELTA), or None. With an owner
        (the optimizer), its step_count and delta are committed with the moments. Returns the delta tree
        or None."""
    def average_next(self, rows: list[npt.NDArray[np.uint8]] | None, base: npt.NDArray[np.uint8] | None,
                     divisor: float) -> None:
        """The next step reads each gradient leaf lying inside `base` as
        (((rows[0] + rows[1]) + ...) / divisor) at the same byte offset, averaged inside its kernel
        (fusedopt.distributed); base=None: no rows."""
    def install_next(self, plan: Plan, mean: tuple[_Arena, _Arena] | None,
                     mean_square: tuple[_Arena, _Arena] | None) -> None:
        """The next step starts from this plan and these moments and commits them (clearing
        `pending`) with its results; a refused step leaves the state as it was."""

class SpanSet:
    """The memory of a list of arrays, compared by bounds as numpy.may_share_memory compares it."""

    def __init__(self, arrays: Sequence[npt.NDArray[Any]]) -> None: ...
    # (i, j), i < j, when arrays[i] and arrays[j] overlap (the first pair found), else None.
    overlap: tuple[int, int] | None
    def first_hit(self, arrays: Sequence[npt.NDArray[Any]]) -> tuple[int, int] | None:
        """(i, j) when arrays[i] overlaps the set's arrays[j] (the first found), else None."""
def bound_update(state: State, unset_rate: Callable[[Any], tuple[Any, float]]
                 ) -> Callable[[Any, Rule | int, Any, Any, Any], None]:
    """Optimizer.update's native call on `state`: f(optimizer, rule, stepsize, model, grad).
    It reads the optimizer's lr, ascent, check_finite, keep_delta and step_count, writes its
    step_count and delta, and takes unset_rate(stepsize) -> (key, rate) while lr is None: the
    interface declared in fusedopt._paysage.native_step."""
def simd_level() -> Literal["avx512", "avx2", "baseline"]:
    """The SIMD level in use: 'avx512', 'avx2' or 'baseline'."""

def simd_levels_compiled() -> list[str]:
    """SIMD levels compiled into this build, best first."""

def simd_levels_supported() -> list[str]:
    """Compiled SIMD levels this CPU can run, best first."""

def _set_simd_level(level: str) -> None:
    """Switch SIMD level (for tests); FUSEDOPT_SIMD does the same at import."""

def get_num_threads() -> int:
    """Threads a large step uses (default: OMP_NUM_THREADS, else the cores; 1 in a child forked after a threaded step)."""

def set_num_threads(n: int) -> None:
    """Set the threads a large step uses: 1..max_threads (1 without OpenMP)."""

def have_openmp() -> bool: ...
def _set_exact_division(on: bool) -> None:
    """Divide float32 leaves by 1 - w and 1 - w2 with checked FMAs (on, default) or the divider (off)."""

def _exact_division() -> bool:
    """Whether checked FMA division by the step's constants is on."""

def _exact_division_active() -> bool:
    """Whether it is on and the selected SIMD level has it (AVX-512)."""

def _check_divisor(c: float, r: float) -> bool:
    """Whether the selected level's FMA division by c with reciprocal r equals the divider on [1, 2)."""

def _judge_parallel_step(chunks: int, by_caller: int, threads: int, worked: float, waited: float) -> int:
    """Judge a parallel step with these figures (as the step does); returns the serial steps now ahead."""

def _reset_parallel_judge() -> None:
    """Forget every judgement of parallel steps."""

def _exact_reciprocal(c: float) -> float:
    """1/c if float32 division by c may use FMAs at the selected level (checked once per c), else 0."""

def probe(
    g: npt.NDArray[np.float32], p: npt.NDArray[np.float32], m: npt.NDArray[np.float32], v: npt.NDArray[np.float32]
) -> float:
    """Seconds for one pass reading g, p, m, v and writing p, m, v (ADAM's in-place traffic)."""

# -- the optim family (csrc/optim/rules.h, csrc/bindings/register_optim.cpp) --
class OptimRule:
    """The optim family's rules: one per spec of kOptimRuleSpecs, named by it (a pybind11 enum;
    its members are generated from the specs, so they are listed in __members__, not here)."""
    __members__: ClassVar[dict[str, OptimRule]]
    @property
    def name(self) -> str: ...
    @property
    def value(self) -> int: ...
    def __int__(self) -> int: ...

class OptimDecay(enum.IntEnum):
    """How weight decay enters an optim rule."""
    NONE = 0
    L2 = 1
    DECOUPLED = 2

class OptimPhase(enum.IntEnum):
    """FIRST: the step that starts slot 0 from the gradient (SGD's buffer)."""
    FIRST = 0
    STEADY = 1

# Every compiled (rule, decay, phase) combination, generated from the rule specs.
optim_kernels: tuple[tuple[OptimRule, OptimDecay, OptimPhase], ...]
# Every native hyper-parameter (FUSEDOPT_OPTIM_HYPER): (name, domain), the domain one of
# "FINITE", "NON_NEGATIVE", "UNIT_OPEN", "UNIT_CLOSED", "FLAG".
optim_hyper_fields: tuple[tuple[str, str], ...]

def optim_rule_spec(rule: OptimRule) -> dict[str, Any]:
    """A rule's spec: "slots" {name: the hyper-parameter it starts at, or None for 0},
    "scalars" {name: start value}, "decays" and "phases" (tuples of the enums)."""

class OptimHyper:
    """Hyper-parameters of an optim rule, read and written by the names of optim_hyper_fields."""
    def __init__(self) -> None: ...
    def __getitem__(self, name: str) -> float: ...
    def __setitem__(self, name: str, value: float) -> None: ...

class OptimState:
    """An optim rule's state over one tree: plan, slots, scalars, step count."""
    def __init__(self, rule: OptimRule, plan: Plan, decay_mask: Sequence[bool], hyper: OptimHyper,
                 master_weights: bool = False) -> None: ...
    def step(self, params: Any, grads: Any, lr: float, check_finite: bool) -> None:
        """One step of the rule over the whole tree (every array checked first)."""
    def slot_views(self, name: str) -> list[_Arena]:
        """Writable views of a slot, one per leaf (float32 at 16-bit leaves with master weights)."""
    def load(self, slots: dict[str, Sequence[Any]], scalars: dict[str, float], step_count: int,
             master: Optional[Sequence[Any]] = None) -> None:
        """Copy {slot name: leaves}, {scalar name: value} and the masters (a float32 array per 16-bit leaf,
        None for the others; None: created from the parameters at the next step) in and set the step count,
        after checking everything."""
    def master_views(self) -> list[Optional[_Arena]]:
        """Writable views of the float32 masters, one per leaf (None without one, and before they exist)."""
    @property
    def master_weights(self) -> bool: ...
    @property
    def slot_names(self) -> list[str]: ...
    @property
    def scalars(self) -> dict[str, float]: ...
    @scalars.setter
    def scalars(self, values: dict[str, float]) -> None: ...
    @property
    def decay_mask(self) -> list[bool]: ...
    @decay_mask.setter
    def decay_mask(self, mask: Sequence[bool]) -> None: ...
    @property
    def stochastic_rounding(self) -> bool: ...
    @stochastic_rounding.setter
    def stochastic_rounding(self, on: bool) -> None: ...
    @property
    def stochastic_state(self) -> bool: ...
    @stochastic_state.setter
    def stochastic_state(self, on: bool) -> None: ...
    @property
    def seed(self) -> int: ...
    @seed.setter
    def seed(self, seed: int) -> None: ...
    @property
    def rule(self) -> OptimRule: ...
    @property
    def plan(self) -> Plan: ...
    @property
    def hyper(self) -> OptimHyper: ...
    @property
    def step_count(self) -> int: ...
    @property
    def last_grad_norm(self) -> float | None: ...
# fusedopt.distributed (csrc/bindings/register_reduce.cpp)
_Bytes = npt.NDArray[np.uint8]

class FlatPack:
    """A tree's leaves laid end to end in one byte buffer (fusedopt.distributed)."""

    def __init__(
        self, paths: Sequence[str], shapes: Sequence[Sequence[int]], dtypes: Sequence[str], offsets: Sequence[int]
    ) -> None: ...
    @property
    def num_leaves(self) -> int: ...
    @property
    def end(self) -> int: ...
    def check(self, leaves: list[Any], name: str, writeable: bool = False) -> None:
        """Raise TypeError/ValueError naming the first leaf that does not fit."""
    def pack(self, leaves: list[Any], out: _Bytes, name: str, lo: int = 0, hi: int = ...) -> None:
        """Check the leaves, then copy their bytes in the flat range [lo, hi) into `out` (holding that range)."""
    def unpack(self, flat: _Bytes, leaves: list[Any], name: str, lo: int = 0, hi: int = ...) -> None:
        """Copy the flat range [lo, hi) of `flat` (holding that range) back into the checked, writeable leaves."""
    def views(self, flat: _Bytes) -> list[Any]:
        """Views of every leaf into `flat`."""
    def flat_view(self, leaves: list[Any], name: str, writeable: bool = False) -> _Bytes | None:
        """check(), then a uint8 view of the one leaf's own bytes when it is a plain aligned C-contiguous
        array filling the layout; None otherwise."""

def rank_average(
    rows: Sequence[_Bytes], out: _Bytes, off32: int, n32: int, off64: int, n64: int, divisor: float
) -> None:
    """out = (((rows[0] + rows[1]) + ...) + rows[k-1]) / divisor per element, in each part's dtype;
    rows are separate uint8 buffers (read-only ones too), out may be rows[0]."""

# LBFGS's vector passes (csrc/optim/lbfgs.h); sums in double, in the fixed chunk and lane order.
def lbfgs_dot(a: _Arena, b: _Arena) -> float: ...
def lbfgs_abs_sum(a: _Arena) -> float: ...
def lbfgs_abs_max(a: _Arena, alpha: float = 1.0) -> float: ...
def lbfgs_new_pair(g: _Arena, prev: _Arena, d: _Arena, t: float, y: _Arena, s: _Arena) -> tuple[float, float]: ...
def lbfgs_two_loop(d: _Arena, g: _Arena, ys: list[_Arena], ss: list[_Arena], ro: _Arena, h_diag: float,
                   al: _Arena) -> float: ...
def lbfgs_gather(leaves: list[_Arena | None], sizes: list[int], flat: _Arena) -> None: ...
def lbfgs_scatter(flat: _Arena, leaves: list[_Arena]) -> None: ...
def lbfgs_add(leaves: list[_Arena], flat: _Arena, t: float) -> None: ...

# Muon's element passes (csrc/optim/muon.h); the matrices are float32 arrays of bfloat16 values.
def muon_momentum(grads: list[_Arena], bufs: list[_Arena], xs: list[npt.NDArray[np.float32]],
                  transposed: list[bool], momentum: float, nesterov: bool) -> list[float]: ...
def muon_round(x: npt.NDArray[np.float32]) -> None: ...
def muon_scale(x: npt.NDArray[np.float32], norm: float) -> None: ...
def muon_combine(out: npt.NDArray[np.float32], c: npt.NDArray[np.float32], prod: npt.NDArray[np.float32],
                 beta: float, alpha: float) -> None: ...
def muon_update(params: list[_Arena], os: list[npt.NDArray[np.float32]], transposed: list[bool],
                decay: float | list[float], neg_lr: list[float],
                done: npt.NDArray[np.float64] | None = None) -> None: ...

# Adafactor's step (csrc/optim/adafactor.h): every parameter in one call; hyper rows of
# step, lr, beta2_decay, eps1, eps2, d, weight_decay, maximize.
def adafactor_step(params: list[_Arena], grads: list[_Arena], old_rows: list[_Arena | None],
                   old_cols: list[_Arena | None], old_vars: list[_Arena | None], new_rows: list[_Arena | None],
                   new_cols: list[_Arena | None], new_vars: list[_Arena | None], hyper: npt.NDArray[np.float64],
                   copy_grads: bool, done: npt.NDArray[np.float64] | None = None) -> None: ...

# Adam8bit / AdamW8bit / Lion8bit (csrc/bindings/register_quant8.cpp, docs/lowbit.md)
def quantize_blockwise(x: Any, signed: bool, block_size: int) -> tuple[Any, Any]:
    """(codes uint8, absmax float32 per block) of a float32 array: Adam8bit's encoder."""
def dequantize_blockwise(codes: Any, absmax: Any, signed: bool, block_size: int) -> Any:
    """The float32 values of blockwise codes."""
class Quant8State:
    """The 8-bit state of an optim rule (OptimRule.ADAM, OptimRule.LION) over one tree: plan,
    the rule's slots (codes and block absmax), step count; the interface of OptimState."""
    def __init__(self, plan: Plan, decay_mask: Sequence[bool], hyper: OptimHyper, block_size: int,
                 min_8bit_size: int, rule: OptimRule) -> None: ...
    def step(self, params: Any, grads: Any, lr: float, check_finite: bool) -> None: ...
    def slot_views(self, name: str) -> list[Any]: ...
    def load(self, slots: dict[str, Sequence[Any]], scalars: dict[str, float], step_count: int) -> None: ...
    @property
    def slot_names(self) -> list[str]: ...
    @property
    def scalars(self) -> dict[str, float]: ...
    @property
    def decay_mask(self) -> list[bool]: ...
    @decay_mask.setter
    def decay_mask(self, mask: Sequence[bool]) -> None: ...
    @property
    def quantized_leaves(self) -> list[bool]: ...
    @property
    def plan(self) -> Plan: ...
    @property
    def hyper(self) -> OptimHyper: ...
    @property
    def step_count(self) -> int: ...
    @property
    def block_size(self) -> int: ...
    @property
    def min_8bit_size(self) -> int: ...
    @property
    def rule(self) -> OptimRule: ...
    @property
    def last_grad_norm(self) -> None: ...
def same_grads_and_memory(params: list[Any], grads: list[Any], ptrs: list[int]) -> bool: ...
def plan_unchanged(group: dict[str, Any], keys: tuple[str, ...], raw: tuple[Any, ...], grads: list[Any],
                   ptrs: list[int], watched: list[Any], shown: list[bytes]) -> Any: ...
