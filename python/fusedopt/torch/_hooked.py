"""fusedopt.torch's step wrapper: torch's ``Optimizer.profile_hook_step``
without its cost when it has nothing to do.

torch wraps every optimizer class's ``step`` (``Optimizer._patch_step_function``,
at the first construction) in ``profile_hook_step``: a profiler range
(``record_function``, most of a small step's time) around the step pre-hooks
(global, then the instance's), the step, ``_optimizer_step_code`` and the
post-hooks (the instance's, then global). A step marked ``hooked`` is not
wrapped again; this one runs torch's own wrapper whenever a hook is
registered or the profiler is on, so hooks, their order, their returned
arguments and the profiler's events are torch's. Otherwise it runs the step
inside the C++ ``_RecordFunctionFast`` range of the same name (what other
RecordFunction observers, such as the execution trace observer, see) and calls
``_optimizer_step_code`` as torch does. LR schedulers wrap the bound method
(``_opt_called``) outside all this, so they see every step either way. A
subclass's own ``step`` is wrapped by torch; called from it (``super().step()``),
this one runs the step alone, so hooks run once.
"""
from __future__ import annotations

import functools
from contextlib import nullcontext
from typing import Any, Callable, TypeVar

import torch
from torch.optim import Optimizer
from torch.optim import optimizer as _torch_optimizer

F = TypeVar("F", bound=Callable[..., Any])

_profiler_enabled = torch.autograd._profiler_enabled
_record_fast = getattr(torch._C._profiler, "_RecordFunctionFast", None)


def hooked(func: F) -> F:
    """`func` (an optimizer's step method) wrapped as torch wraps it, with a
    fast path when no step hook is registered and the profiler is off."""
    torch_step = Optimizer.profile_hook_step(func)
    global_pre = _torch_optimizer._global_optimizer_pre_hooks  # torch's registries, mutated in place
    global_post = _torch_optimizer._global_optimizer_post_hooks
    names: dict[type, str] = {}
    record = _record_fast if _record_fast is not None else lambda name: nullcontext()

    @functools.wraps(func)
    def step(self: Any, *args: Any, **kwargs: Any) -> Any:
        cls = type(self)
        if cls.step is not step:  # called by a subclass's own step, which torch wrapped: hooks ran there
            return func(self, *args, **kwargs)
        if global_pre or global_post or self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks \
                or _profiler_enabled():
            return torch_step(self, *args, **kwargs)
        name = names.get(cls)
        if name is None:
            name = names[cls] = f"Optimizer.step#{cls.__name__}.step"
        with record(name):
            out = func(self, *args, **kwargs)
            self._optimizer_step_code()
        return out

    step.hooked = True  # type: ignore[attr-defined]  # torch's mark: do not wrap again
    return step  # type: ignore[return-value]
