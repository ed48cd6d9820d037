// Reduced-precision leaves of the optim family (docs/lowbit.md, "bfloat16 and
// float16 parameters"): the conversions between bfloat16/float16 and float32,
// round to nearest even and stochastic rounding, and the counter-based
// generator of the stochastic rounding's bits. Everything is integer lane
// arithmetic (GCC vector extensions) plus exactly rounded float operations,
// so every instruction set gives the same bits; AVX-512F's float16 conversions
// (one instruction each way) round the same way, which tests/test_lowp.py
// checks on every 16-bit pattern.
#pragma once
#include <cstdint>
#include <cstring>
#include "common/simd_vec.h"
#include "optim/lowp_types.h"

#ifndef FUSEDOPT_ISA
#error "include only from a translation unit compiled for one instruction set (optim/kernels_lowp_isa.cpp)"
#endif

namespace fusedopt {
namespace FUSEDOPT_ISA {

struct LowLanes {
  using F = Vec<float>::type;
  typedef std::uint32_t U __attribute__((vector_size(kVecBytes)));
  typedef std::int32_t I __attribute__((vector_size(kVecBytes)));
  typedef std::uint16_t H __attribute__((vector_size(kVecBytes / 2)));
  static constexpr std::size_t lanes = Vec<float>::lanes;
};
using VF = LowLanes::F;
using VU = LowLanes::U;
using VH = LowLanes::H;

FUSEDOPT_INLINE VU bits(VF x) { return (VU)x; }
FUSEDOPT_INLINE VF from_bits(VU u) { return (VF)u; }

// 16-bit lanes to 32-bit lanes and back (zero extension, truncation). AVX-512
// has one instruction each; GCC's generic conversion splits them.
FUSEDOPT_INLINE VU zero_extend(VH h) {
#if defined(__AVX512F__)
  return (VU)_mm512_cvtepu16_epi32((__m256i)h);
#else
  return __builtin_convertvector(h, VU);
#endif
}

FUSEDOPT_INLINE VH truncate(VU u) {
#if defined(__AVX512F__)
  return (VH)_mm512_cvtepi32_epi16((__m512i)u);
#else
  return __builtin_convertvector(u, VH);
#endif
}

// The stored 16-bit values as float32 (exact).
template <LowFormat F>
FUSEDOPT_INLINE VF widen(VH h) {
  if constexpr (F == LowFormat::BF16) {
    return from_bits(zero_extend(h) << 16);
  } else {
#if defined(__AVX512F__)
    return (VF)_mm512_cvtph_ps((__m256i)h);  // exact, as below (a NaN's payload may differ: canonical on output)
#else
    const VU w = zero_extend(h);
    const VU sign = (w & 0x8000u) << 16, e = (w >> 10) & 0x1Fu, m = w & 0x3FFu;
    const VU normal = ((e + 112u) << 23) | (m << 13);
    const VU special = 0x7F800000u | (m << 13);  // inf, NaN with its payload
    const VU sub = bits(__builtin_convertvector((LowLanes::I)m, VF) * 0x1p-24f);  // m * 2**-24, exact
    return from_bits(sign | (e == 0u ? sub : (e == 31u ? special : normal)));
#endif
  }
}

// float32 to the 16-bit format. `noise` (only read when Stochastic) holds the
// random bits below the cut: 16 for bfloat16, 13 for float16; without it the
// rounding is to nearest, ties to even. Every NaN becomes the format's
// canonical quiet NaN (0x7FC0, 0x7E00): which NaN operand an operation passes
// on depends on the order the compiler gives commutative operands, so a
// NaN's sign and payload are not the same at every level.
template <LowFormat F, bool Stochastic>
FUSEDOPT_INLINE VH narrow(VF x, VU noise) {
  const VU b = bits(x), a = b & 0x7FFFFFFFu;
  const auto nan = a > 0x7F800000u;
  VU r;
  if constexpr (F == LowFormat::BF16) {
    const VU add = Stochastic ? noise : 0x7FFFu + ((b >> 16) & 1u);
    r = (b + add) >> 16;
    r = nan ? VU{} + 0x7FC0u : r;
  } else {
#if defined(__AVX512F__)
    if constexpr (!Stochastic) {  // the same rounding in one instruction; the quiet NaN 0x7FC00000 gives 0x7E00
      const VF y = nan ? from_bits(VU{} + 0x7FC00000u) : x;
      return (VH)_mm512_cvtps_ph((__m512)y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    }
#endif
    const VU sign = (b >> 16) & 0x8000u;
    const VU rebased = a - 0x38000000u;  // exponent bias 127 -> 15
    const VU add = Stochastic ? noise : 0xFFFu + ((rebased >> 13) & 1u);
    VU normal = (rebased + add) >> 13;
    normal = normal > 0x7C00u ? VU{} + 0x7C00u : normal;  // overflow: infinity
    VU sub;  // |x| < 2**-14: a multiple of 2**-24 (half's subnormal step)
    if constexpr (Stochastic) {
      const VF scaled = from_bits(a) * 0x1p24f + __builtin_convertvector((LowLanes::I)noise, VF) * 0x1p-13f;
      sub = (VU)__builtin_convertvector(scaled, LowLanes::I);  // truncation
    } else {
      sub = bits(from_bits(a) + 0.5f) - 0x3F000000u;  // the addition rounds at 2**-24, ties to even
    }
    r = nan ? VU{} + 0x7E00u : sign | (a >= 0x38800000u ? normal : sub);
  }
  return truncate(r);
}

// The generator (docs/lowbit.md gives it in full, optim/lowp_types.h as
// scalar code): lowbias32 of each pair index, salted by the stream's key.
// x >> 16 on every lane. AVX-512 shifts run on one port, shared with the
// multiplies of the hash; a byte shuffle (the same bits) runs on another.
FUSEDOPT_INLINE VU shr16(VU x) {
#if defined(__AVX512BW__)
  const __m512i moves = _mm512_set4_epi32(int(0x80800F0E), int(0x80800B0A), int(0x80800706), int(0x80800302));
  return (VU)_mm512_shuffle_epi8((__m512i)x, moves);
#else
  return x >> 16;
#endif
}

FUSEDOPT_INLINE VU lowbias32(VU x) {
  x ^= shr16(x);
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= shr16(x);
  return x;
}

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "a word's low half is the even element's");

// The random bits of elements 2q .. 2q + 2L - 1 (q = first_pair): the words of
// pairs q .. q + L - 1, split into the halves for the two vectors of elements
// (zero-extended): `even` gets elements 2q .. 2q + L - 1.
FUSEDOPT_INLINE void random_pairs(std::uint64_t key, std::uint64_t first_pair, VU& even, VU& odd) {
  VU lane{};
  for (std::size_t k = 0; k < LowLanes::lanes; ++k) lane[k] = static_cast<std::uint32_t>(k);
  const std::uint32_t hi = static_cast<std::uint32_t>(first_pair >> 32);
  const VU base = VU{} + static_cast<std::uint32_t>(first_pair);
  const VU lo = base + lane;
  const VU salt0 = VU{} + pair_salt(key, hi), salt1 = VU{} + pair_salt(key, hi + 1u);
  const VU w = lowbias32(lo ^ (lo < base ? salt1 : salt0));  // a carry into the high word: its salt
  VH halves[2];
  std::memcpy(halves, &w, sizeof w);
  even = zero_extend(halves[0]);
  odd = zero_extend(halves[1]);
}

template <LowFormat F>
constexpr std::uint32_t kNoiseMask = F == LowFormat::BF16 ? 0xFFFFu : 0x1FFFu;

}  // namespace FUSEDOPT_ISA
}  // namespace fusedopt
