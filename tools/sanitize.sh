#!/usr/bin/env bash
# Builds fusedopt with AddressSanitizer + UndefinedBehaviorSanitizer
# (-DFUSEDOPT_SANITIZE=ON) into a throw-away virtualenv, outside the source
# tree, and runs the test suite against that build.
#
#   tools/sanitize.sh                    # whole suite
#   tools/sanitize.sh tests/test_state.py -x   # any pytest arguments
#
# FUSEDOPT_SANITIZE_DIR keeps the virtualenv and build between runs
# (default: a new temporary directory, removed at the end).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
if [[ -n "${FUSEDOPT_SANITIZE_DIR:-}" ]]; then
  work="$FUSEDOPT_SANITIZE_DIR"
  mkdir -p "$work"
else
  work="$(mktemp -d -t fusedopt-sanitize.XXXXXX)"
  trap 'rm -rf "$work"' EXIT
fi

# An isolated virtualenv: an editable install of fusedopt in the main
# environment would otherwise shadow the sanitized build.
if [[ ! -x "$work/venv/bin/python" ]]; then
  "$python" -m venv "$work/venv"
fi
venv_py="$work/venv/bin/python"
"$venv_py" -m pip install --quiet "scikit-build-core>=0.10" "pybind11>=2.12" "numpy>=2.0" "pytest>=7" "hypothesis==6.170.27" "ml_dtypes" "expecttest"
# Two compile jobs: the instrumented bindings need ~0.5 GB each and the machine may be shared.
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
# --no-cache-dir: pip caches the wheel it builds from a local checkout, and a cached
# uninstrumented build of the same version would be installed instead of this one.
"$venv_py" -m pip install --quiet --no-cache-dir --no-build-isolation --no-deps --force-reinstall \
  -C cmake.define.FUSEDOPT_SANITIZE=ON -C cmake.build-type=RelWithDebInfo \
  -C "cmake.define.CMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG" -C build-dir="$work/build" "$root"

# (Importing _core without the ASan runtime preloaded would abort, so look for the file.)
platlib="$("$venv_py" -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')"
core="$(ls "$platlib"/fusedopt/_core*.so)"
# (grep without -q: under pipefail, -q's early exit can kill ldd with SIGPIPE and fail the pipe.)
if ! ldd "$core" | grep libasan >/dev/null; then
  echo "sanitize.sh: $core is not linked against libasan" >&2
  exit 1
fi

# Every object must be instrumented, the kernels above all (compile options set
# after a target is defined would silently miss it).
if [[ -f "$work/build/build.ninja" ]] && grep -E '^  FLAGS = ' "$work/build/build.ninja" | grep -v -- '-fsanitize=address' >/dev/null; then
  echo "sanitize.sh: some objects are compiled without -fsanitize=address (see $work/build/build.ninja)" >&2
  exit 1
fi

# The ASan runtime must be loaded before everything else, and libstdc++ with it:
# python itself is C, and ASan can only intercept C++ throws (pybind11 turns every
# error into one) when libstdc++ is present at start-up. CPython keeps objects alive
# until exit by design, so leak detection is off. Reports go to files as well,
# since pytest captures the stderr of the tests.
rm -rf "$work/reports" && mkdir -p "$work/reports"
cxx="${CXX:-g++}"
export LD_PRELOAD="$("$cxx" -print-file-name=libasan.so) $("$cxx" -print-file-name=libstdc++.so)"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1:log_path=$work/reports/asan"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$work/reports/ubsan"
export PYTHONFAULTHANDLER=1
cd "$root"
if [[ $# -eq 0 ]]; then
  set -- tests -q
fi
# -p no:cacheprovider: do not write .pytest_cache into the source tree.
status=0
"$venv_py" -m pytest -p no:cacheprovider "$@" || status=$?
if compgen -G "$work/reports/*" > /dev/null; then
  cat "$work"/reports/* >&2
  echo "sanitize.sh: the sanitizers reported errors (above)" >&2
  exit 1
fi
exit "$status"
