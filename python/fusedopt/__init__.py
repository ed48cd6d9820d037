"""fusedopt: gradient optimizers whose per-element work runs in fused C++ kernels.

A drop-in replacement for paysage's ``optimizers`` and ``schedules`` modules::

    from fusedopt import optimizers, schedules
"""
from . import _core, optimizers, schedules
from ._core import get_num_threads, set_num_threads, simd_level

__version__ = "0.1.0"

__all__ = ["optimizers", "schedules", "simd_level", "get_num_threads", "set_num_threads", "__version__"]
