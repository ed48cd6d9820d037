"""The step of one parameter group of a fusedopt.torch optimizer, planned once
and reused while nothing it depends on changes.

A plan splits the group's parameters that have gradients into buckets of equal
step count (when the count enters the update; otherwise one bucket) and gives
each bucket a fusedopt.optim engine whose moment arenas hold the bucket's
state: the state tensors torch users see (``opt.state[p]['exp_avg']``...) are
``torch.from_numpy`` views of those arenas, and each 'step' tensor is a 0-d view
into one array of counts per bucket, so a step is one native call and one
numpy ``+= 1`` per bucket, whatever the number of tensors.

Reuse costs a look at every parameter (its ``.grad`` and ``data_ptr()``): the
plan is rebuilt when the set of parameters with gradients, a parameter's
memory, the group's structural settings or the optimizer's state dict changed;
only the gradient arrays are rebuilt when just the ``.grad`` tensor objects
changed (as after ``zero_grad(set_to_none=True)`` and ``backward()``).

Building checks everything and changes nothing visible (moments are copied
into new arenas); ``run`` commits. Imports torch: only fusedopt.torch uses it.
"""
from __future__ import annotations

from contextlib import contextmanager
from operator import itemgetter
from typing import Any, Iterator, MutableMapping, Sequence

import numpy as np
import torch

from .. import _core
from . import _lowp as lowp
from ._engine import Engine, engine_key
from ._specs import Spec
from ._tracked import changes

_SUPPORTED = (torch.float32, torch.float64) + lowp.LOW
_PLAIN = (float, int, bool)


def step_dtype() -> torch.dtype:
    """The dtype of torch's 'step' tensors: float64 under a float64 default dtype, else float32."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def step_array_dtype() -> type:
    """step_dtype() as numpy's: the arrays behind the 'step' tensors."""
    return np.float64 if step_dtype() == torch.float64 else np.float32


def scalar_state_wide(spec: Spec, state: MutableMapping[str, Any]) -> bool:
    """Whether a parameter's scalar state (NAdam's 'mu_product') is held in
    float64, as torch holds it: in its scalar dtype when torch makes it, in the
    parameter's dtype once torch's load_state_dict has cast it."""
    held = state.get(spec.scalars[0][0]) if spec.scalars else None
    if torch.is_tensor(held):
        return held.dtype == torch.float64
    return step_dtype() == torch.float64


def array_of(t: torch.Tensor) -> np.ndarray:
    """The tensor's memory as a numpy array (a view; strided if the tensor is)."""
    try:
        return t.numpy()  # the common case, and the cheapest call: about 1 µs a tensor
    except RuntimeError:  # requires grad (create_graph=True), or a lazily negated view
        return t.detach().resolve_neg().numpy() if t.dtype != torch.bfloat16 else lowp.numpy_of(t)
    except TypeError:  # bfloat16, which NumPy lacks
        return lowp.numpy_of(t)


def steps_of(state: MutableMapping[str, Any], spec: Spec) -> int:
    """A parameter's step count as its state says: 'step' (0 when new), or for
    SGD, which keeps none, 1 once a momentum buffer exists (the first step then
    no longer copies the gradient)."""
    step = state.get("step") if spec.keeps_step else None
    if step is None:  # SGD's state saved without a 'step' (stochastic rounding keeps one)
        return 1 if spec.name == "SGD" and state.get("momentum_buffer") is not None else 0
    return int(step)


def check_pair(spec: Spec, where: str, p: torch.Tensor, g: torch.Tensor) -> None:
    """TypeError/ValueError unless fusedopt can step parameter p with gradient g."""
    for t, what in ((p, ""), (g, " gradient")):
        if t.device.type != "cpu":
            raise TypeError(f"{where}{what} is on device {t.device}; fusedopt.torch.{spec.name} steps CPU "
                            "tensors only")
        if t.layout != torch.strided:
            raise TypeError(f"{where}{what} is {t.layout} (sparse); fusedopt.torch.{spec.name} does not support "
                            "sparse tensors (torch.optim.SparseAdam does)")
    if overlaps_itself(p):
        raise ValueError(f"{where} has elements that share memory (strides {p.stride()}, e.g. an expand()ed "
                         "tensor): a step would write them more than once; step a tensor of memory of its own")
    if p.dtype not in _SUPPORTED:
        raise TypeError(f"{where} is {p.dtype}; fusedopt.torch.{spec.name} steps float32, float64, bfloat16 "
                        "and float16 tensors only")
    if g.dtype != p.dtype or g.shape != p.shape:
        raise ValueError(f"{where}: the gradient is {g.dtype} of shape {tuple(g.shape)}, the parameter "
                         f"{p.dtype} of shape {tuple(p.shape)}")


def overlaps_itself(t: torch.Tensor) -> bool:
    """Whether two elements of t are one location in memory (as numpy's
    internal-overlap check: exact, by listing the offsets when the strides do
    not settle it)."""
    if t.is_contiguous():
        return False
    dims = sorted((abs(stride), size) for stride, size in zip(t.stride(), t.shape) if size > 1)
    reach = 0  # the largest offset the dimensions so far reach
    if dims and dims[0][0] == 0:
        return True  # broadcast (expand): one location for a whole dimension
    for stride, size in dims:
        if stride <= reach:
            break
        reach += stride * (size - 1)
    else:
        return False  # each stride steps past everything the smaller ones reach
    offsets = sum(np.arange(size, dtype=np.int64).reshape([-1] + [1] * k) * stride
                  for k, (stride, size) in enumerate(dims))
    return bool(np.unique(offsets).size != t.numel())


def check_slot(where: str, slot: str, p: torch.Tensor, value: Any) -> None:
    """A slot of the state (`slot`, at `where`): a floating-point tensor of p's shape."""
    if not torch.is_tensor(value) or value.shape != p.shape or not value.is_floating_point() \
            or value.layout != torch.strided:
        got = f"a {value.dtype} tensor of shape {tuple(value.shape)}" if torch.is_tensor(value) else type(value).__name__
        raise ValueError(f"{where}: expected a floating-point tensor of shape {tuple(p.shape)}, got {got}")


def check_scalar(where: str, value: Any) -> float:
    """A per-parameter scalar state entry (NAdam's 'mu_product'): a finite number or 1-element tensor."""
    v = float(value) if torch.is_tensor(value) and value.numel() == 1 else value
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
        raise ValueError(f"{where}: expected a finite number (a 0-d tensor, as torch keeps it), got {value!r}")
    return float(v)


def check_step(where: str, value: Any) -> int:
    v = float(value) if torch.is_tensor(value) and value.numel() == 1 else value
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 <= v < 2 ** 53) or v != int(v):
        raise ValueError(f"{where}: expected a whole number >= 0 (a 0-d tensor, as torch keeps it), got {value!r}")
    return int(v)


class Bucket:
    """Parameters of one group that take one native call."""

    def __init__(self, spec: Spec, group: dict[str, Any], defaults: dict[str, Any], params: list[torch.Tensor],
                 grads: list[torch.Tensor], state: MutableMapping[Any, Any], count: int,
                 scalars: tuple[float, ...] = (), wide: bool = False) -> None:
        self.params = params
        self.arrays: list[np.ndarray] = []
        # (parameter, contiguous buffer) of parameters whose memory the kernel cannot step in place
        self.copies: list[tuple[torch.Tensor, torch.Tensor]] = []
        for p in params:
            if p.is_contiguous() and not p.is_neg():
                self.arrays.append(array_of(p.detach()))
            else:
                buf = torch.empty(p.shape, dtype=p.dtype)
                self.copies.append((p, buf))
                self.arrays.append(array_of(buf))
        self.grads = [array_of(g) for g in grads]
        self.slots = spec.slots(group)
        moments = {slot: [state[p].get(slot) if p in state else None for p in params] for slot in self.slots}
        self.engine = Engine(spec, group, self.arrays,
                             {slot: [None if m is None else array_of(m) for m in ms] for slot, ms in moments.items()},
                             {slot: spec.fresh(slot, defaults) for slot in self.slots}, count,
                             not wide if spec.scalars_in_place else step_dtype() != torch.float64,
                             lowp.masters(group, params, self.arrays, state))
        # The rule's scalar state, one row per parameter (equal rows: they share a bucket),
        # in the dtype torch keeps it in (float64 when wide); the rows are what the next run starts from.
        self.scalar_names = [name for name, _ in spec.scalars]
        self.scalars = np.array([scalars] * len(params), dtype=np.float64 if wide else np.float32).reshape(
            len(params), len(scalars))
        self.counts: np.ndarray | None = None
        if spec.keeps_step:
            self.counts = np.array([steps_of(state[p], spec) if p in state else 0 for p in params],
                                   dtype=step_array_dtype())
        # The engine's own count is the commit mark of a kernel run: the counts
        # shown are those of the plan's start plus the runs since.
        self.start = None if self.counts is None else self.counts.copy()
        self.runs = np.zeros(1, dtype=step_array_dtype())
        # All counts equal (always where the count enters the update: it is the bucket's key):
        # a commit fills the counts with start + runs, exact below 2**24 in either dtype, as the
        # ufunc's sum (a fill costs a fraction of a ufunc call)
        self.uniform_start = float(self.start[0]) if self.start is not None and self.start.size and \
            bool((self.start == self.start[0]).all()) else None
        self.opt = self.engine.opt  # fusedopt.optim's optimizer: its step and step_count, one call each
        self.first_run = self.committed = self.opt.step_count
        # The arrays whose values torch users see as the 'step' (and scalar) tensors, and their
        # bytes as last committed (a list the plan may share: from index shown_at on, this bucket's)
        self.watched: list[np.ndarray] = [] if self.counts is None else \
            [self.counts] + ([self.scalars] if self.scalar_names else [])
        self.shown: list[bytes] = [a.tobytes() for a in self.watched]
        self.shown_at = 0
        self.installed = False

    def install(self, state: MutableMapping[Any, Any]) -> None:
        """Point the parameters' state at this bucket's arenas and counts; marked done
        at the end (an install an exception cut short runs again, whole, at finish)."""
        masters = self.engine.masters() or [None] * len(self.params)
        if self.counts is None and not self.slots and not any(m is not None for m in masters):
            self.installed = True
            return  # plain SGD keeps no state, as torch's
        views = {slot: self.engine.views(slot) for slot in self.slots}
        for j, p in enumerate(self.params):
            s = state[p]
            if masters[j] is not None:
                s[lowp.MASTER] = torch.from_numpy(masters[j])
            if self.counts is not None:
                s["step"] = torch.from_numpy(self.counts[j:j + 1].reshape(()))
            for k, name in enumerate(self.scalar_names):
                s[name] = torch.from_numpy(self.scalars[j, k:k + 1].reshape(()))
            for slot in self.slots:
                s[slot] = lowp.tensor_of(views[slot][j])
        self.installed = True

    def current(self) -> bool:
        """Whether the step counts and scalars are still as committed (not edited in place)."""
        at = self.shown_at
        return all(a.tobytes() == self.shown[at + k] for k, a in enumerate(self.watched))

    def run(self, state: MutableMapping[Any, Any]) -> None:
        for p, buf in self.copies:  # detached: no autograd record, no grad mode to switch off
            buf.copy_(p.detach())
        if self.scalar_names:
            self.engine.scalars = self.scalars[0]  # as shown (torch's dtype), so a resumed state steps the same
        self.opt.step(self.arrays, self.grads)
        # the native step counted this run (its commit mark) and returned: one run past the
        # last commit (a commit cut short leaves the plan running, so the next step finishes it first)
        self.commit(state, self.committed - self.first_run + 1)

    def commit(self, state: MutableMapping[Any, Any], runs: int | None = None) -> None:
        """Show the kernel's runs (the engine's count since the plan began, read
        when not given): the copied parameters, the step counts, the state
        tensors. Every line can run again with the same result, so a commit that
        an exception from a signal handler cut short is completed by the next
        call (finish)."""
        if runs is None:
            runs = self.opt.step_count - self.first_run
        for p, buf in self.copies:
            p.detach().copy_(buf)
        if self.scalar_names:
            self.scalars[...] = self.engine.scalars
        counts = self.counts
        if counts is not None and self.start is not None:
            start = self.uniform_start
            if start is not None and start + runs < 16777216.0:  # 2**24: every whole number exact
                counts.fill(start + runs)
            else:
                self.runs[0] = runs  # an array operand: a ufunc converts a Python number slowly
                np.add(self.start, self.runs, out=counts)
            shown, at = self.shown, self.shown_at
            shown[at] = counts.tobytes()
            if self.scalar_names:
                shown[at + 1] = self.scalars.tobytes()
        if not self.installed:
            self.install(state)
        self.committed = self.first_run + runs

    def finish(self, state: MutableMapping[Any, Any]) -> None:
        """Complete a commit that was cut short (the engine ran past it)."""
        if self.opt.step_count != self.committed:
            self.commit(state)


class GroupPlan:
    """The buckets of one group and what their reuse depends on."""

    def __init__(self, spec: Spec, index: int, group: dict[str, Any], defaults: dict[str, Any],
                 state: MutableMapping[Any, Any], grads: list[Any], ptrs: list[int], hyper: tuple[Any, ...]) -> None:
        params: Sequence[torch.Tensor] = group["params"]
        where = f"param_groups[{index}]['params']"
        stepped: dict[int, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        for i, (p, g) in enumerate(zip(params, grads)):
            if g is None:
                continue
            check_pair(spec, f"{where}[{i}]", p, g)
            count = 0
            scalars = tuple(start for _, start in spec.scalars)
            wide = scalar_state_wide(spec, state[p] if p in state else {})
            if p in state:
                for slot in spec.slots(group):
                    if state[p].get(slot) is not None:
                        (spec.slot_check or check_slot)(f"state of {where}[{i}]['{slot}']", slot, p,
                                                        state[p][slot])
                if spec.keeps_step and "step" in state[p]:
                    count = check_step(f"state of {where}[{i}]['step']", state[p]["step"])
                else:
                    count = steps_of(state[p], spec)
                if state[p]:
                    scalars = tuple(check_scalar(f"state of {where}[{i}]['{name}']", state[p][name])
                                    if name in state[p] else start for name, start in spec.scalars)
            first = spec.made_by_first_step
            made = bool(first) and (first not in spec.slots(group) or (p in state and state[p].get(first) is not None))
            ps, gs = stepped.setdefault((_bucket_key(spec, count, made), scalars, wide), ([], []))
            ps.append(p)
            gs.append(g)
        with named_group(index):
            self.buckets = [Bucket(spec, group, defaults, ps, gs, state, key, scalars, wide)
                            for (key, scalars, wide), (ps, gs) in sorted(stepped.items())]
        self.key = engine_key(spec, group)
        self.hyper = hyper
        self.keys = tuple(spec.hyper)
        self._hyper_of = itemgetter(*spec.hyper)
        # The buckets' watched arrays and their committed bytes in two flat lists (the buckets
        # write their entries of `shown`), for unchanged()'s one native call.
        self.watched: list[np.ndarray] = []
        self.shown: list[bytes] = []
        for bucket in self.buckets:
            bucket.shown_at = len(self.shown)
            self.watched += bucket.watched
            self.shown += bucket.shown
            bucket.shown = self.shown
        self.raw: tuple[Any, ...] | None = None  # the group's values as last taken, when all plain (remember)
        self.running = False  # between the start of run() and its commit's end
        self.new_lr: float | int | None = None  # a plain lr unchanged() accepted, for run() to take
        self.ptrs = ptrs
        self.grad_ids = list(map(id, grads))
        self.grads: list[Any] | None = grads  # held, so that no other tensor can take a held one's id
        self.missing = [g is None for g in grads]
        self.state_id = (id(state), changes(state))
        # What check_memory compares: the memory a step writes (parameters, their state, the
        # step counts) and reads (gradients), with names for its messages.
        # Names sort as the parameters are listed (messages name the later one first).
        self.written: list[np.ndarray] = []
        self.written_names: list[tuple[tuple[int, int], str]] = []
        position = {id(p): i for i, p in enumerate(params)}
        # per parameter of the group: its bucket's index and its array there (None: no gradient)
        self.places: list[tuple[int, np.ndarray] | None] = [None] * len(params)
        for b, bucket in enumerate(self.buckets):
            for p, a in zip(bucket.params, bucket.arrays):
                self.places[position[id(p)]] = (b, a)
        for bucket in self.buckets:
            views = {slot: bucket.engine.views(slot) for slot in bucket.slots}
            for j, p in enumerate(bucket.params):
                name = f"{where}[{position[id(p)]}]"
                self.written.append(array_of(p))
                self.written_names.append(((index, position[id(p)]), name))
                for slot, leaves in views.items():
                    self.written.append(leaves[j])
                    self.written_names.append(((index, position[id(p)]), f"the optimizer's state of {name} ('{slot}')"))
            if bucket.counts is not None:
                self.written.append(bucket.counts)
                self.written_names.append(((index, -1), "the optimizer's step counts"))
            if bucket.scalar_names:
                self.written.append(bucket.scalars)
                self.written_names.append(((index, -1), "the optimizer's scalar state"))
        self.read_names = [f"{where}[{position[id(p)]}].grad" for bucket in self.buckets for p in bucket.params]
        self.grads_checked = False  # check_memory has not seen these gradients

    def remember(self, group: dict[str, Any]) -> None:
        """Keep the group's values as this step took them, when every one is a
        plain number, bool or tuple of them (values that cannot change in place,
        unlike a tensor lr or a list), so that unchanged() can compare them as they are."""
        raw = self._hyper_of(group)
        plain = all(type(v) in _PLAIN or (type(v) is tuple and all(type(x) in _PLAIN for x in v)) for v in raw)
        self.raw = raw if plain else None

    def unchanged(self, group: dict[str, Any], state: MutableMapping[Any, Any]) -> bool:
        """Whether the next step can run this plan without any check: the same
        parameter memory, the same .grad objects (held, so their ids are theirs),
        no assignment to the optimizer's state, no step count edited in place,
        no unfinished commit and the group's plain values as remembered. False
        sends the step through the full check, which decides."""
        raw = self.raw
        if raw is None or self.running or not self.grads_checked or self.state_id != (id(state), state.count[0]):
            return False
        # Every value the same object as taken, or of its exact type and equal (True == 1, but a bool
        # setting given 1 is refused); a scheduler's new plain lr (spec.hyper[0]) may differ, checked as
        # check_hyper checks it and given to the engines by run(). Then the .grad objects, the
        # parameters' memory and the step counts shown: all in one native call.
        lr = _core.plan_unchanged(group, self.keys, raw, self.grads, self.ptrs, self.watched, self.shown)
        if lr is None:
            return False
        self.new_lr = None if lr is raw[0] else lr
        return True

    def take_lr(self) -> None:
        """Give the engines the lr that unchanged() accepted; then remember it (a step
        interrupted before that takes it again)."""
        lr = self.new_lr
        for bucket in self.buckets:
            bucket.engine.opt.lr = float(lr)
        self.hyper = (lr,) + self.hyper[1:]
        self.raw = (lr,) + self.raw[1:]
        self.new_lr = None

    def refresh_grads(self, spec: Spec, index: int, group: dict[str, Any], grads: list[Any]) -> None:
        """New gradient tensors in the same places: check them and rebuild only their arrays."""
        fresh: list[list[np.ndarray]] = [[] for _ in self.buckets]
        for i, (g, place) in enumerate(zip(grads, self.places)):  # in order: each bucket lists its parameters in order
            if place is None:
                continue
            bucket, like = place
            try:  # converts only a CPU strided tensor without autograd history, of a NumPy dtype
                a = g.numpy()
            except (RuntimeError, TypeError):
                a = None
            if a is None or a.dtype != like.dtype or a.shape != like.shape:
                # the parameter passed check_pair when planned: its message when something is off
                check_pair(spec, f"param_groups[{index}]['params'][{i}]", group["params"][i], g)
                a = array_of(g)
            fresh[bucket].append(a)
        for bucket, arrays in zip(self.buckets, fresh):
            bucket.grads = arrays
        self.grad_ids = list(map(id, grads))
        self.grads = grads
        self.grads_checked = False

    def release_grads(self) -> None:
        """Drop the held gradients (zero_grad(set_to_none=True)): their memory is freed as torch frees it."""
        for bucket in self.buckets:
            bucket.grads = []
        self.grads = None
        self.grad_ids = []

    def sync(self, index: int, group: dict[str, Any]) -> None:
        """Give the engines the group's current hyper-parameters (checked again
        by fusedopt.optim: nothing is stepped until every group has taken them)."""
        with named_group(index):
            for bucket in self.buckets:
                bucket.engine.sync(group)

    def read(self) -> list[np.ndarray]:
        """The gradient arrays, in the order of read_names."""
        return [g for bucket in self.buckets for g in bucket.grads]

    def current(self) -> bool:
        """Whether no step count was edited in place since the last step."""
        for bucket in self.buckets:
            if not bucket.current():
                return False
        return True

    def finish(self, state: MutableMapping[Any, Any]) -> None:
        for bucket in self.buckets:
            bucket.finish(state)

    def run(self, state: MutableMapping[Any, Any]) -> None:
        if self.new_lr is not None:
            self.take_lr()
        self.running = True
        for bucket in self.buckets:
            bucket.run(state)
        self.state_id = (id(state), state.count[0])  # changes(state), without the call
        self.running = False


class Memory:
    """The memory the steps of an optimizer's plans write, checked to be disjoint."""

    def __init__(self, plans: Sequence[GroupPlan]) -> None:
        self.plans = list(plans)
        self.names = [n for plan in plans for n in plan.written_names]
        self.spans = _core.SpanSet([a for plan in plans for a in plan.written])
        found = self.spans.overlap
        if found is not None:
            i, j = found
            raise ValueError(_shared(*sorted((self.names[i], self.names[j]), reverse=True)))


def _shared(a: tuple[tuple[int, int], str], b: tuple[tuple[int, int], str]) -> str:
    a, b = (b[1], a[1]) if a[1].startswith("the optimizer's") else (a[1], b[1])
    if b.startswith("the optimizer's"):
        return f"{a} shares memory with {b}: the optimizer's own state cannot be stepped as a parameter"
    return (f"{a} shares memory with {b}: each parameter must have memory of its own (is a parameter "
            "listed twice, or a view of another?)")


def check_memory(plans: Sequence[GroupPlan], memory: Memory | None) -> Memory:
    """ValueError when parameters of any groups and buckets share memory with each
    other or with the optimizer's state, or a gradient overlaps any of that
    memory (torch.optim's SGD refuses such a gradient too; its other optimizers'
    results would depend on their implementation's order): one native call over
    every array when a plan is new (sorted once), else over the gradients that changed.
    Returns the memory to pass next time; changes nothing else."""
    if memory is None or memory.plans != list(plans):
        memory = Memory(plans)
        unchecked = list(plans)
    else:
        unchecked = [plan for plan in plans if not plan.grads_checked]
    if unchecked:
        read = [a for plan in unchecked for a in plan.read()]
        found = memory.spans.first_hit(read)
        if found is not None:
            i, j = found
            name = [n for plan in unchecked for n in plan.read_names][i]
            raise ValueError(f"{name} shares memory with {memory.names[j][1]}, which the step writes: fusedopt.torch "
                             "refuses such a gradient (as torch.optim's SGD does); pass a copy (grad.clone())")
        for plan in unchecked:
            plan.grads_checked = True
    return memory


def _bucket_key(spec: Spec, count: int, made: bool) -> int:
    """Parameters of a group with equal keys share a native call: the count
    itself where it enters the update (bias corrections, lr decay); for SGD
    whether its momentum buffer exists yet (the first step copies the
    gradient), for Rprop whether its step sizes do (`made`: the first step
    makes them from lr); else one call, whatever the counts."""
    if spec.counted:  # (SGD with stochastic rounding: 0 until its momentum buffer is made)
        return count if made or not spec.made_by_first_step else 0
    if spec.made_by_first_step:
        return int(made)
    return 0 if spec.keeps_step else min(count, 1)


@contextmanager
def named_group(index: int, prefix: str = "") -> Iterator[None]:
    """fusedopt.optim's TypeError/ValueError about a hyper-parameter, prefixed with the group."""
    try:
        yield
    except (TypeError, ValueError) as e:
        raise type(e)(f"{prefix}param_groups[{index}]: {e}") from None
