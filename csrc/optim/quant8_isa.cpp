// The 8-bit optimizers' element pass of one instruction set (compiled once
// per level, see fusedopt_isa in CMakeLists.txt): per block, decode by table,
// the rule's float32 element math (optim/math.h, as fusedopt.optim's kernel),
// the new absmax and the encode. Plain float32 operations in loops the
// compiler vectorises: every element gets the same IEEE operations at every
// level, so the bits do not depend on it.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include "common/simd_vec.h"
#include "optim/math.h"
#include "optim/quant8.h"

#ifndef FUSEDOPT_ISA
#error "FUSEDOPT_ISA must name the instruction set of this translation unit"
#endif

namespace fusedopt {
namespace FUSEDOPT_ISA {

namespace {

constexpr std::size_t kMaxBlock = 4096;

// The rule's element math on the slots s (in and out) of one element or one
// vector of lanes; returns the new parameter.
template <OptimRule R, OptimDecay D, class V>
FUSEDOPT_INLINE V stepped(V g, V p, V* s, const OptimScalars<float>& c) {
  OptimLanes<V> x{};
  x.g = g;
  x.p = p;
  x.s0 = s[0];
  if constexpr (quant8_slots(R) > 1) x.s1 = s[1];
  optim_math<R, D, OptimPhase::STEADY>(x, c);
  s[0] = x.s0;
  if constexpr (quant8_slots(R) > 1) s[1] = x.s1;
  return x.p;
}

// a if it is larger than m or NaN, else m: a running maximum that keeps the first NaN.
template <class V>
FUSEDOPT_INLINE V max_or_nan(V m, V a) {
  return (a > m) | (a != a) ? a : m;
}

using VF = Vec<float>::type;
typedef std::uint32_t VU __attribute__((vector_size(kVecBytes)));
typedef std::int32_t VI __attribute__((vector_size(kVecBytes)));
typedef std::uint8_t VB __attribute__((vector_size(kVecBytes / 4)));
constexpr std::size_t L = Vec<float>::lanes;

// The value of every code (quant8_map.h's arithmetic decoder, once per process): a
// decode is one table read per lane, the same floats at every level.
struct Quant8Values {
  alignas(64) float m[256], v[256];
  Quant8Values() {
    for (unsigned c = 0; c < 256; ++c) {
      m[c] = quant8_signed_value(static_cast<std::uint8_t>(c));
      v[c] = quant8_unsigned_value(static_cast<std::uint8_t>(c));
    }
  }
  const float* of(std::size_t slot) const { return quant8_signed_slot(slot) ? m : v; }
};

FUSEDOPT_INLINE VF decode(const float* table, const std::uint8_t* codes) {
#if defined(__AVX512F__)
  const __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes)));
  return (VF)_mm512_i32gather_ps(idx, table, 4);
#elif defined(__AVX2__)
  const __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes)));
  return (VF)_mm256_i32gather_ps(table, idx, 4);
#else
  const VI idx = __builtin_convertvector(load<VB>(codes), VI);
  VF out;
  for (std::size_t k = 0; k < L; ++k) out[k] = table[idx[k]];
  return out;
#endif
}

// Codes of x / absmax, as quant8_signed / quant8_unsigned on each lane.
template <bool Signed>
FUSEDOPT_INLINE VB encode(VF q) {
  const VU u = (VU)q;
  const VU i = quant8_index_of_bits<VU, VI>(u, Signed ? kQuant8SignedBits : kQuant8UnsignedBits);
  if constexpr (Signed) return __builtin_convertvector(i == 0u ? i : i | ((u >> 31) << 7), VB);
  return __builtin_convertvector(i, VB);
}

// The codes of n values x (a whole number of vectors) of a block whose absmax is a
// (quant8_map.h's Quant8Scale: the reciprocal, or a division where it overflows).
template <bool Signed>
FUSEDOPT_INLINE void encode_block(const float* x, std::uint8_t* codes, std::size_t n, float a) {
  const Quant8Scale scale(a);
  if (!scale.divide) {
    for (std::size_t i = 0; i < n; i += L) store(codes + i, encode<Signed>(load<VF>(x + i) * scale.by));
  } else {  // an absmax below 2^-128
    for (std::size_t i = 0; i < n; i += L) store(codes + i, encode<Signed>(scale(load<VF>(x + i))));
  }
}

// One block of n <= kMaxBlock elements at g and p, with each slot's codes at codes[k]
// and its absmax at *absmax[k]: decoded, stepped and the new slot values kept on the
// stack, then encoded with the new absmax. n is a whole number of vectors.
template <OptimRule R, OptimDecay D>
FUSEDOPT_INLINE void step_block(const float* g, float* p, std::uint8_t* const* codes, float* const* absmax,
                                std::size_t n, const OptimScalars<float>& c, const Quant8Values& t) {
  constexpr std::size_t K = quant8_slots(R);
  alignas(64) float s[K][kMaxBlock];
  VF top[K];
  float old[K];
  for (std::size_t k = 0; k < K; ++k) top[k] = VF{} + 0.0f, old[k] = *absmax[k];
  for (std::size_t i = 0; i < n; i += L) {
    VF x[K];
    for (std::size_t k = 0; k < K; ++k) x[k] = decode(t.of(k), codes[k] + i) * old[k];
    store(p + i, stepped<R, D>(load<VF>(g + i), load<VF>(p + i), x, c));
    for (std::size_t k = 0; k < K; ++k) {
      store(s[k] + i, x[k]);
      // the signed slot's |x| (NaNs included); the unsigned slot is >= 0 or NaN already
      top[k] = max_or_nan(top[k], quant8_signed_slot(k) ? (VF)((VI)x[k] & 0x7fffffff) : x[k]);
    }
  }
  for (std::size_t k = 0; k < K; ++k) {
    float a = 0.0f;
    for (std::size_t j = 0; j < L; ++j) a = max_or_nan(a, top[k][j]);
    if (quant8_signed_slot(k))
      encode_block<true>(s[k], codes[k], n, a);
    else
      encode_block<false>(s[k], codes[k], n, a);
    *absmax[k] = a;
  }
}

template <OptimRule R, OptimDecay D>
void quantized_span(const Quant8Span& s, std::size_t block, const OptimScalars<float>& c) {
  constexpr std::size_t K = quant8_slots(R);
  static const Quant8Values table;
  const Quant8Leaf& l = s.leaf;
  for (std::size_t b0 = s.begin; b0 < s.end; b0 += block) {
    const std::size_t n = std::min(block, s.end - b0), blk = b0 / block;
    const std::size_t whole = n / L * L;
    std::uint8_t* codes[K];
    float* absmax[K];
    for (std::size_t k = 0; k < K; ++k) codes[k] = l.codes[k] + b0, absmax[k] = l.absmax[k] + blk;
    if (whole == n) {
      step_block<R, D>(l.g + b0, l.p + b0, codes, absmax, n, c, table);
      continue;
    }
    // A leaf's last block, shorter than whole vectors: stepped on a zero-padded copy
    // (padding codes 0 and gradients 0 give slot values 0, which leave the absmax as it is).
    alignas(64) float g[kMaxBlock], p[kMaxBlock];
    alignas(64) std::uint8_t copies[K][kMaxBlock];
    std::uint8_t* padded_codes[K];
    const std::size_t padded = whole + L;
    std::fill(g + whole, g + padded, 0.0f);
    std::fill(p + whole, p + padded, 0.0f);
    std::copy(l.g + b0, l.g + b0 + n, g);
    std::copy(l.p + b0, l.p + b0 + n, p);
    for (std::size_t k = 0; k < K; ++k) {
      padded_codes[k] = copies[k];
      std::fill(copies[k] + whole, copies[k] + padded, 0);
      std::copy(codes[k], codes[k] + n, copies[k]);
    }
    step_block<R, D>(g, p, padded_codes, absmax, padded, c, table);
    std::copy(p, p + n, l.p + b0);
    for (std::size_t k = 0; k < K; ++k) std::copy(copies[k], copies[k] + n, codes[k]);
  }
}

// A leaf below min_8bit_size: float32 slot values, element by element.
template <OptimRule R, OptimDecay D>
void float_span(const Quant8Span& s, const OptimScalars<float>& c) {
  constexpr std::size_t K = quant8_slots(R);
  const Quant8Leaf& l = s.leaf;
  for (std::size_t i = s.begin; i < s.end; ++i) {
    float x[K];
    for (std::size_t k = 0; k < K; ++k) x[k] = l.values[k][i];
    l.p[i] = stepped<R, D>(l.g[i], l.p[i], x, c);
    for (std::size_t k = 0; k < K; ++k) l.values[k][i] = x[k];
  }
}

template <OptimRule R, OptimDecay D>
void span(const Quant8Span& s, std::size_t block, const OptimScalars<float>& c) {
  if (s.leaf.codes[0])
    quantized_span<R, D>(s, block, c);
  else
    float_span<R, D>(s, c);
}

template <std::size_t Q, unsigned D>
constexpr Quant8Fn entry() {
  constexpr OptimRule R = kQuant8Rules[Q];
  if constexpr (has_decay(R, OptimDecay(D)))
    return &span<R, OptimDecay(D)>;
  else
    return nullptr;
}

static_assert(kNumOptimDecays == 3, "fill() sets the entries of the three decay modes");
template <std::size_t... Q>
void fill(Quant8Table& fns, std::index_sequence<Q...>) {
  ((fns[Q][0] = entry<Q, 0>(), fns[Q][1] = entry<Q, 1>(), fns[Q][2] = entry<Q, 2>()), ...);
}

}  // namespace

void fill_quant8(Quant8Table& fns) { fill(fns, std::make_index_sequence<kNumQuant8Rules>{}); }

}  // namespace FUSEDOPT_ISA
}  // namespace fusedopt
