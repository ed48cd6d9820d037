#!/usr/bin/env bash
# The test suite against a built fusedopt wheel under the oldest NumPy fusedopt supports
# (pyproject.toml: numpy>=1.23), in a fresh virtual environment: NumPy 1.x's scalar
# promotion differs from NumPy 2's (NEP 50), and the paysage drop-in follows the NumPy it
# runs on, as paysage does. The environment has the [test,paysage,mpi] extras, not torch:
# the torch tests skip there (they run under NumPy 2 in .ci/run).
#
#   tools/test_numpy_oldest.sh path/to/fusedopt-*.whl
#
# Environment: PYTHON (default python3; NumPy 1.23 has wheels for CPython 3.8 to 3.11),
# FUSEDOPT_NUMPY_OLDEST (default 1.23.5).
set -euo pipefail
export MPLBACKEND=Agg
WHEEL=$(realpath "$1")
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
NUMPY=${FUSEDOPT_NUMPY_OLDEST:-1.23.5}
WORK=$(mktemp -d /tmp/fusedopt-numpy-oldest.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
"$PY" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
# One resolution with NumPy pinned: the extras' packages come in versions that support it.
"$VPY" -m pip install --quiet "numpy==$NUMPY" "$WHEEL[test,paysage,mpi]"
"$VPY" -m pip install --quiet --no-deps "paysage==0.2.1"
"$VPY" -c "import numpy, sys; sys.exit(numpy.__version__ != '$NUMPY')" ||
  { echo "test_numpy_oldest: numpy $NUMPY was not installed" >&2; exit 1; }
# The installed wheel, not the source tree: tests/ is copied into a folder of its own.
mkdir "$WORK/run"
cp -r "$SRC/tests" "$SRC/pyproject.toml" "$WORK/run/"
cd "$WORK/run"
"$VPY" -m fusedopt
"$VPY" -m pytest -q -p no:cacheprovider tests
