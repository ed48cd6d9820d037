#!/usr/bin/env bash
# Proves the C++ core builds for aarch64 and computes the documented bits there:
# cross-compiles the kernels (csrc/*/*.cpp but csrc/bindings/) and the bit
# test tests/cpp/kernel_bits.cpp with Debian's aarch64 toolchain, with the
# project's float flags, and runs the test under qemu-user.
#
#   tools/check_aarch64.sh            # installs the toolchain with apt-get if missing
#
# Files named *_isa.cpp are the per-instruction-set kernel copies; aarch64 builds
# only their baseline copy (as CMakeLists.txt does off x86-64).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cxx="${FUSEDOPT_AARCH64_CXX:-aarch64-linux-gnu-g++}"
if ! command -v "$cxx" >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    echo "check_aarch64: needs $cxx and qemu-aarch64 (Debian: apt-get install g++-aarch64-linux-gnu qemu-user)" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++-aarch64-linux-gnu qemu-user >/dev/null
fi
work="$(mktemp -d -t fusedopt-aarch64.XXXXXX)"
trap 'rm -rf "$work"' EXIT
# The same float flags as CMakeLists.txt's FUSEDOPT_FP_FLAGS: aarch64 GCC would
# otherwise contract a*b+c into FMAs (its default outside strict ISO modes).
flags=(-std=c++17 -O3 -ffp-contract=off -fno-math-errno -fno-trapping-math -fopenmp -DFUSEDOPT_OPENMP
       -I"$root/csrc" -Wall -Wextra)
cd "$root"
sources=()
for src in $(ls csrc/*/*.cpp | grep -v "^csrc/bindings/"); do
  name="$(basename "$src" .cpp)"
  if [[ "$name" == *_isa ]]; then
    sources+=("$src:-DFUSEDOPT_ISA=baseline")
  else
    sources+=("$src:")
  fi
done
sources+=("tests/cpp/kernel_bits.cpp:")
printf '%s\n' "${sources[@]}" | xargs -P "${CMAKE_BUILD_PARALLEL_LEVEL:-2}" -I{} bash -c '
  src="${1%%:*}"; def="${1#*:}"; shift
  "$@" $def -c "$src" -o "'"$work"'/$(echo "$src" | tr / _).o"' _ {} "$cxx" "${flags[@]}"
"$cxx" -fopenmp "$work"/*.o -o "$work/kernel_bits"
# ELF e_machine (bytes 18-19, little-endian) of aarch64 is 183.
[[ "$(od -An -tu2 -j18 -N2 "$work/kernel_bits" | tr -d ' ')" == 183 ]] || {
  echo "check_aarch64: the test binary is not an aarch64 executable" >&2; exit 1; }
echo "check_aarch64: built $(ls csrc/*/*.cpp | grep -vc "^csrc/bindings/") core sources for aarch64; running the bit test under qemu"
QEMU_LD_PREFIX=/usr/aarch64-linux-gnu qemu-aarch64 "$work/kernel_bits"
