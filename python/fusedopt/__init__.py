"""fusedopt: gradient optimizers whose per-element work runs in fused C++ kernels.

A drop-in replacement for paysage's ``optimizers`` and ``schedules`` modules::

    from fusedopt import optimizers, schedules
"""
import os as _os

# libgomp's default barrier spins for milliseconds; on a busy machine the
# waiting thread then holds the core that the thread it waits for needs, and a
# 50 µs step can take 10+ ms. A short spin keeps back-to-back steps hot and lets
# a descheduled worker run. Only when the user has not chosen, and only
# effective if libgomp is not loaded yet (docs/threads.md).
if "OMP_WAIT_POLICY" not in _os.environ and "GOMP_SPINCOUNT" not in _os.environ:
    _os.environ["GOMP_SPINCOUNT"] = "10000"

from . import _core, optim, optimizers, schedules  # noqa: E402
from ._core import StructureError, get_num_threads, set_num_threads, simd_level
from ._config import show_config
from ._threads import blas_threads, thread_limits

from ._version import __version__

__all__ = ["optim", "optimizers", "schedules", "simd_level", "get_num_threads", "set_num_threads", "thread_limits",
           "blas_threads", "show_config", "StructureError", "__version__"]
