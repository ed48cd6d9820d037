"""Sharing the cores between numpy's BLAS and fusedopt's threads (docs/threads.md,
"Sharing the cores with BLAS").

numpy's matrix products run on OpenBLAS's threads, which keep spinning for a while
after each product; a fusedopt step right after one then waits for a helper thread
that a spinning BLAS thread keeps off its core. ``thread_limits`` sets both thread
counts in one call (and restores them on leaving a ``with`` block).

The BLAS libraries are found without threadpoolctl: OpenBLAS, which numpy's and
scipy's wheels bundle, is called directly through its C API
(``openblas_set_num_threads`` under the names its builds export). Any other BLAS
(MKL, BLIS, Accelerate) is set through threadpoolctl when that is installed.
"""
from __future__ import annotations

import ctypes
import os
from typing import Any, List, Optional, Tuple

from . import _core

# OpenBLAS's C API under the prefixes and suffixes of its builds: plain, 64-bit
# integer (numpy 1.x wheels: openblas_..64_) and scipy-openblas (numpy 2.x wheels).
_OPENBLAS_NAMES = [(prefix + "openblas_get_num_threads" + suffix, prefix + "openblas_set_num_threads" + suffix)
                   for prefix in ("", "scipy_") for suffix in ("", "64_")]


class _OpenBLAS:
    """One loaded OpenBLAS library, by its get/set thread functions."""

    def __init__(self, path: str, get: Any, set_: Any) -> None:
        self.name, self._get, self._set = f"openblas ({os.path.basename(path)})", get, set_
        self._get.restype = ctypes.c_int
        self._set.argtypes = [ctypes.c_int]

    def get(self) -> int:
        return int(self._get())

    def set(self, n: int) -> None:
        self._set(n)


class _Threadpoolctl:
    """A BLAS other than OpenBLAS, through threadpoolctl's controller."""

    def __init__(self, controller: Any) -> None:
        self.name, self._c = controller.internal_api, controller

    def get(self) -> int:
        return int(self._c.num_threads)

    def set(self, n: int) -> None:
        self._c.set_num_threads(n)


def _loaded_libraries() -> List[str]:
    """Paths of the shared libraries mapped into this process (Linux; [] elsewhere)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split(None, 5)[5].strip() for line in maps if line.count(" ") >= 5 and ".so" in line}
    except OSError:
        return []
    return sorted(p for p in paths if p.startswith("/"))


def _blas_libraries() -> List[Any]:
    found: List[Any] = []
    for path in _loaded_libraries():
        if "openblas" not in os.path.basename(path).lower():
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get, set_ in _OPENBLAS_NAMES:
            if hasattr(lib, get) and hasattr(lib, set_):
                found.append(_OpenBLAS(path, getattr(lib, get), getattr(lib, set_)))
                break
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return found
    for controller in ThreadpoolController().select(user_api="blas").lib_controllers:
        if controller.internal_api != "openblas" or not found:
            found.append(_Threadpoolctl(controller))
    return found


def blas_threads() -> List[Tuple[str, int]]:
    """``[(library, threads)]`` of the BLAS libraries loaded in this process (numpy's
    OpenBLAS directly; other BLAS libraries only when threadpoolctl is installed)."""
    return [(lib.name, lib.get()) for lib in _blas_libraries()]


def _check_count(name: str, value: Optional[int]) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be None or an integer >= 1, got {value!r}")
    return value


class thread_limits:
    """Sets fusedopt's thread count and the BLAS libraries' together; as a context manager,
    restores both when the block ends.

    ``thread_limits(fusedopt=n, blas=m)`` runs fusedopt's steps on ``n`` threads (as
    ``set_num_threads(n)``) and numpy's matrix products on ``m`` (every BLAS library
    loaded: numpy's OpenBLAS directly, others through threadpoolctl when installed);
    None leaves that count as it is. ``thread_limits.training()`` gives the setting the
    docs recommend for loops that alternate matrix products and steps: BLAS keeps its
    threads and fusedopt steps on the calling thread when the two together would ask for
    more threads than the process has cores.

    Usage::

        with fusedopt.thread_limits(fusedopt=1):     # or fusedopt.thread_limits.training()
            for x, y in batches:
                opt.update(params, gradients(params, x, y))
        limits = fusedopt.thread_limits(blas=1)      # or for the rest of the process
        limits.restore()                             # back to what was before

    Attributes:
        before: ``{"fusedopt": n, "blas": [(library, threads), ...]}``, the counts replaced.
    """

    def __init__(self, fusedopt: Optional[int] = None, blas: Optional[int] = None) -> None:
        """Sets the counts now (see the class documentation); ValueError, with nothing changed, for a
        count that is not None or an integer from 1 (fusedopt: to ``fusedopt._core.max_threads``)."""
        fusedopt = _check_count("fusedopt", fusedopt)
        blas = _check_count("blas", blas)
        if fusedopt is not None and fusedopt > _core.max_threads:
            raise ValueError(f"fusedopt must be at most {_core.max_threads}, got {fusedopt}")
        libraries = _blas_libraries()
        self.before = {"fusedopt": _core.get_num_threads(), "blas": [(lib.name, lib.get()) for lib in libraries]}
        self._libraries = libraries
        if blas is not None:
            for lib in libraries:
                lib.set(blas)
        if fusedopt is not None:
            _core.set_num_threads(fusedopt)

    @classmethod
    def training(cls) -> "thread_limits":
        """The recommended setting for a loop of matrix products and steps: fusedopt on one
        thread if BLAS's threads and fusedopt's together outnumber the cores, else unchanged."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        blas = max((n for _, n in blas_threads()), default=1)
        ours = _core.get_num_threads()
        return cls(fusedopt=1 if blas > 1 and ours > 1 and blas + ours > cores else None)

    def restore(self) -> None:
        """Puts back the thread counts this call replaced."""
        _core.set_num_threads(self.before["fusedopt"])
        for lib, (_, n) in zip(self._libraries, self.before["blas"]):
            lib.set(n)

    def __enter__(self) -> "thread_limits":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.restore()

    def __repr__(self) -> str:
        now = ", ".join(f"{name} {n}" for name, n in blas_threads()) or "none loaded"
        return f"thread_limits(fusedopt now {_core.get_num_threads()}, BLAS now: {now}; before: {self.before})"
