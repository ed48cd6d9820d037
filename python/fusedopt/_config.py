"""Build and run-time facts of this fusedopt install, for bug reports.

``fusedopt.show_config()`` prints them; ``python -m fusedopt`` does the same.
"""
import os
import platform
import sys

import numpy as np

from . import _core


FMA_DIVISION = "FMAs for float32, checked per constant (divider for float64)"


def config():
    """The facts ``show_config`` prints, as a dict of plain Python values."""
    from . import __version__

    return {
        "version": __version__,
        "simd_compiled": list(_core.simd_levels_compiled()),
        "simd_supported": list(_core.simd_levels_supported()),
        "simd_selected": _core.simd_level(),
        "simd_env": os.environ.get("FUSEDOPT_SIMD"),
        "fma_division": bool(_core._exact_division_active()),
        "openmp": bool(_core.have_openmp()),
        "num_threads": int(_core.get_num_threads()),
        "compiler": str(_core.compiler),
        "extension": _core.__file__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
    }


def show_config(file=None):
    """Prints version, SIMD levels (compiled in, supported by this CPU, in use), how
    float32 steps divide by 1 - w and 1 - w2, OpenMP and its thread count, and the
    compiler that built the extension."""
    c = config()
    env = c["simd_env"] if c["simd_env"] is not None else "not set"
    lines = [
        f"fusedopt {c['version']}",
        f"  SIMD levels compiled in : {', '.join(c['simd_compiled'])}",
        f"  SIMD levels supported   : {', '.join(c['simd_supported'])} (this CPU, {c['machine']})",
        f"  SIMD level selected     : {c['simd_selected']} (FUSEDOPT_SIMD {env})",
        f"  division by 1-w, 1-w2   : {FMA_DIVISION if c['fma_division'] else 'divider'}",
        f"  OpenMP                  : {'on' if c['openmp'] else 'off'}, {c['num_threads']} threads",
        f"  compiler                : {c['compiler']}",
        f"  extension               : {c['extension']}",
        f"  Python, NumPy           : {c['python']}, {c['numpy']}",
    ]
    print("\n".join(lines), file=sys.stdout if file is None else file)
