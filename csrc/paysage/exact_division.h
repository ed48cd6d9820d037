// Division of float32 lanes by a constant of the step (1 - w or 1 - w2) with
// the hardware divider's exact bits, at the cost of one multiply and two FMAs
// instead of a division (the divider is what limits ADAM and RMSProp below
// memory-bound sizes).
//
// q = x * r with r = RN(1/c); e = x - q*c (exact in one FMA); result q + e*r
// (one FMA). Whether this equals RN(x/c) depends on c; it is checked for every
// float32 significand s in [1, 2) before a constant is used (check_divisor,
// about 2^23 lanes, once per constant). For 2^-60 <= |x| < 2^100 and c in
// [2^-24, 2^24] no intermediate is subnormal or overflows, so x = s * 2^k
// scales every step exactly and the check covers all such x (and -x, as
// rounding to nearest is symmetric). Vectors with any lane outside that range
// (zeros, subnormals, huge values, Inf, NaN) use the divider.
//
// AVX-512 only: with 8-lane AVX2 the extra multiplies and FMAs saturate
// their two pipes, and the divider is no slower there.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>
#include "paysage/kernel_modes.h"
#include "common/simd_vec.h"

#ifndef FUSEDOPT_ISA
#error "include only from a translation unit compiled for one instruction set (kernels_isa.cpp)"
#endif

namespace fusedopt {
namespace FUSEDOPT_ISA {

// Range of |x| and of c where the scaling argument above holds.
constexpr float kExactDivMinX = 0x1p-60f, kExactDivMaxX = 0x1p100f;
constexpr float kExactDivMinC = 0x1p-24f, kExactDivMaxC = 0x1p24f;

#if defined(__AVX512F__)
constexpr bool kHaveExactDivision = true;
using VF = Vec<float>::type;

// q + (x - q*c) * r with both FMAs single-rounded (no check of the range).
FUSEDOPT_INLINE VF div_fma(VF x, float c, float r) {
  const __m512 vx = (__m512)x, vc = _mm512_set1_ps(c), vr = _mm512_set1_ps(r);
  const __m512 q = _mm512_mul_ps(vx, vr);
  return (VF)_mm512_fmadd_ps(_mm512_fnmadd_ps(q, vc, vx), vr, q);
}

// Range test in integers (the FMA pipes are the busy ones): with t the bits
// of |x| minus those of kExactDivMinX, x is in range iff t < kRangeSpan as
// unsigned; NaN, Inf, zeros and subnormals all fail.
constexpr std::uint32_t kMinXBits = 0x21800000u;  // bits of 2^-60
constexpr std::uint32_t kRangeSpan = 0x71800000u - kMinXBits;  // bits of 2^100 - bits of 2^-60
static_assert(__builtin_bit_cast(std::uint32_t, kExactDivMinX) == kMinXBits, "2^-60");
static_assert(__builtin_bit_cast(std::uint32_t, kExactDivMaxX) == 0x71800000u, "2^100");
// Both num and den in range (den >= 0 is a mean square: its sign bit is set
// only for -0 or a NaN, which fail without taking the absolute value).
FUSEDOPT_INLINE bool all_in_exact_range(VF num, VF den) {
  const __m512i lo = _mm512_set1_epi32(static_cast<int>(kMinXBits));
  const __m512i span = _mm512_set1_epi32(static_cast<int>(kRangeSpan));
  const __m512i tn = _mm512_sub_epi32(_mm512_and_si512((__m512i)num, _mm512_set1_epi32(0x7fffffff)), lo);
  const __m512i td = _mm512_sub_epi32((__m512i)den, lo);
  const __mmask16 ok = _mm512_mask_cmplt_epu32_mask(_mm512_cmplt_epu32_mask(tn, span), td, span);
  return ok == 0xFFFF;
}
#else
constexpr bool kHaveExactDivision = false;
#endif

// num / c1 and den / c2 for the step's constants c1 = 1 - w, c2 = 1 - w2
// (each only if asked for). EXACT (float32 AVX-512 vectors, the divisors
// checked): FMAs when every lane of both is in range, else the
// divider; one test and one branch per vector.
template <bool EXACT, bool DIV_NUM, bool DIV_DEN, class V, class T>
FUSEDOPT_INLINE void divide_by_constants(V& num, V& den, const StepScalars<T>& c) {
#if defined(__AVX512F__)
  if constexpr (EXACT && std::is_same_v<V, VF>) {
    static_assert(DIV_DEN, "EXACT kernels divide den (run_segment picks them only then)");
    const bool ok = all_in_exact_range(DIV_NUM ? num : den, den);
    if (__builtin_expect(ok, 1)) {
      if constexpr (DIV_NUM) num = div_fma(num, c.one_minus_w, c.inv_one_minus_w);
      if constexpr (DIV_DEN) den = div_fma(den, c.one_minus_w2, c.inv_one_minus_w2);
      return;
    }
  }
#endif
  if constexpr (DIV_NUM) num = num / c.one_minus_w;
  if constexpr (DIV_DEN) den = den / c.one_minus_w2;
}

// Whether div_fma(x, c, r) == x / c, bit for bit, for every significand of
// [1, 2) (r = 1/c in use; tests pass other r to see the check fail); false
// when c is outside [kExactDivMinC, kExactDivMaxC] or this level is not AVX-512.
inline bool check_divisor(float c, float r) {
#if defined(__AVX512F__)
  if (!(c >= kExactDivMinC && c <= kExactDivMaxC)) return false;
  constexpr std::size_t L = Vec<float>::lanes;
  typedef std::int32_t VI __attribute__((vector_size(kVecBytes)));
  VI bits;
  for (std::size_t k = 0; k < L; ++k) bits[k] = 0x3f800000 + static_cast<std::int32_t>(k);
  VI differ = {};
  for (std::int32_t b = 0x3f800000; b < 0x40000000; b += static_cast<std::int32_t>(L)) {
    const VF x = (VF)bits;
    differ |= (VI)div_fma(x, c, r) ^ (VI)(x / c);
    bits += static_cast<std::int32_t>(L);
  }
  for (std::size_t k = 0; k < L; ++k)
    if (differ[k] != 0) return false;
  return true;
#else
  (void)c;
  (void)r;
  return false;
#endif
}

}  // namespace FUSEDOPT_ISA
}  // namespace fusedopt
