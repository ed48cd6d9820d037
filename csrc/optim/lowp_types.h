// The optim family's kernels for bfloat16 and float16 leaves (one table per
// instruction set, optim/kernels_lowp_isa.cpp): state in the leaf's format,
// math in float32 (optim/math.h), results rounded to nearest even or
// stochastically (optim/lowp.h).
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include "optim/rules.h"

namespace fusedopt {

enum class LowFormat : unsigned { BF16, F16 };

// Pointers of one contiguous piece of a 16-bit leaf; `index` is the global
// element index (in the tree's leaf order) of the piece's first element. With
// master weights the step reads and writes the float32 master `m` and slots
// `ms` (not `s`) and only writes `p`; `fresh`: the master is first widened from p.
struct LowSegment {
  const std::uint16_t* g;
  std::uint16_t* p;
  std::uint16_t* s[kSlots];
  std::size_t n;
  std::uint64_t index;
  float* m = nullptr;
  float* ms[kSlots] = {};
  bool fresh = false;
  std::uint16_t* gout = nullptr;  // where g * unscale is stored, narrowed to nearest (g itself), or null
};

// Stochastic rounding's per-step keys: the parameter's (0) and slot k's (1 + k).
struct LowKeys {
  std::uint64_t key[1 + kSlots];
};

// SplitMix64's output function (Steele, Lea and Flood 2014), a bijection of 64-bit integers.
constexpr std::uint64_t mix64(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The key of stream j at step t (streams: 0 the parameter, 1, 2, ... the rule's
// slots in the order of its spec).
constexpr std::uint64_t low_key(std::uint64_t seed, std::uint64_t stream, std::uint64_t t) {
  return mix64(mix64(mix64(seed) ^ stream) + t);
}

// lowbias32 (Chris Wellons' integer hash search), a bijection of 32-bit integers.
constexpr std::uint32_t lowbias32(std::uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  return x ^ (x >> 16);
}

// What lowbias32 hashes pair q with, for the pairs whose index has high word `hi`.
constexpr std::uint32_t pair_salt(std::uint64_t key, std::uint32_t hi) {
  return static_cast<std::uint32_t>(mix64(key + hi));
}

// The 16 random bits of element i (docs/lowbit.md): one 32-bit word serves the
// two elements of pair i >> 1, the even one its low half. Vector code
// (optim/lowp.h) computes the same words a vector of pairs at a time.
constexpr std::uint32_t random_bits16(std::uint64_t key, std::uint64_t i) {
  const std::uint64_t q = i >> 1;
  const std::uint32_t w = lowbias32(static_cast<std::uint32_t>(q) ^ pair_salt(key, static_cast<std::uint32_t>(q >> 32)));
  return (i & 1u) ? w >> 16 : w & 0xFFFFu;
}

using LowFn = void (*)(const LowSegment&, const OptimScalars<float>&, const LowKeys&);
using LowSumSquaresFn = double (*)(const std::uint16_t* g, std::size_t n);

// Kernels index for index with kOptimKernels: [format][parameter stochastic]
// [slots stochastic] with the state in the leaf's format (fn), or
// [format][parameter stochastic] with float32 masters and slots (master).
struct LowpTable {
  std::array<LowFn, kOptimKernels.size()> fn[2][2][2];
  std::array<LowFn, kOptimKernels.size()> master[2][2];
  LowSumSquaresFn sumsq[2];
};

// The table of the SIMD level in use (common/dispatch.h's simd_level()).
const LowpTable& lowp_kernels();

}  // namespace fusedopt
