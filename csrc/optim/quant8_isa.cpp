// The 8-bit optimizers' element pass of one instruction set (compiled once
// per level, see fusedopt_isa in CMakeLists.txt): per block, decode by table,
// the rule's float32 element math (optim/math.h, as fusedopt.optim's kernel),
// the new absmax and the encode. Plain float32 operations in loops the
// compiler vectorises: every element gets the same IEEE operations at every
// level, so the bits do not depend on it.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
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

// table[idx & 31] on every lane (the encoder's tables, quant8_map.h).
FUSEDOPT_INLINE VU lookup32(const std::uint32_t* table, VU idx) {
#if defined(__AVX512F__)
  const __m512i lo = _mm512_loadu_si512(table), hi = _mm512_loadu_si512(table + 16);
  return (VU)_mm512_permutex2var_epi32(lo, (__m512i)idx, hi);
#elif defined(__AVX2__)
  // four 8-entry permutes, chosen by bits 3 and 4 of idx (moved to the sign bit for blendv)
  const __m256i i = (__m256i)idx;
  const __m256 b3 = _mm256_castsi256_ps(_mm256_slli_epi32(i, 28)), b4 = _mm256_castsi256_ps(_mm256_slli_epi32(i, 27));
  __m256 q[4];
  for (int k = 0; k < 4; ++k)
    q[k] = _mm256_castsi256_ps(_mm256_permutevar8x32_epi32(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(table + 8 * k)), i));
  return (VU)_mm256_castps_si256(_mm256_blendv_ps(_mm256_blendv_ps(q[0], q[1], b3), _mm256_blendv_ps(q[2], q[3], b3), b4));
#else
  VU out;
  for (std::size_t k = 0; k < L; ++k) out[k] = table[idx[k] & 31u];
  return out;
#endif
}

// x limited to [lo, hi] as unsigned integers.
FUSEDOPT_INLINE VU clamp(VU x, std::uint32_t lo, std::uint32_t hi) {
#if defined(__AVX512F__)
  return (VU)_mm512_min_epu32(_mm512_max_epu32((__m512i)x, _mm512_set1_epi32(static_cast<int>(lo))),
                              _mm512_set1_epi32(static_cast<int>(hi)));
#elif defined(__AVX2__)
  return (VU)_mm256_min_epu32(_mm256_max_epu32((__m256i)x, _mm256_set1_epi32(static_cast<int>(lo))),
                              _mm256_set1_epi32(static_cast<int>(hi)));
#else
  x = x < lo ? VU{} + lo : x;
  return x > hi ? VU{} + hi : x;
#endif
}

// L codes widened to 32-bit lanes.
FUSEDOPT_INLINE VU widen(const std::uint8_t* codes) {
#if defined(__AVX512F__)
  return (VU)_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes)));
#elif defined(__AVX2__)
  return (VU)_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes)));
#else
  return __builtin_convertvector(load<VB>(codes), VU);
#endif
}

// L codes (lanes of at most 255) stored as bytes.
FUSEDOPT_INLINE void narrow(std::uint8_t* codes, VU x) {
#if defined(__AVX512F__)
  _mm_storeu_si128(reinterpret_cast<__m128i*>(codes), _mm512_cvtepi32_epi8((__m512i)x));
#elif defined(__AVX2__)
  // byte 0 of each lane to the bottom of its 128-bit half, then the two halves together
  const __m256i pick = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,  //
                                        0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
  const __m256i b = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8((__m256i)x, pick), _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(codes), _mm256_castsi256_si128(b));
#elif defined(__SSE2__)
  const __m128i w = _mm_packs_epi32((__m128i)x, (__m128i)x);
  const int b = _mm_cvtsi128_si32(_mm_packus_epi16(w, w));
  std::memcpy(codes, &b, sizeof b);
#else
  store(codes, __builtin_convertvector(x, VB));
#endif
}

// The largest lane.
FUSEDOPT_INLINE std::uint32_t lanes_max(VU x) {
#if defined(__AVX512F__)
  return _mm512_reduce_max_epu32((__m512i)x);
#else
  std::uint32_t most = 0;
  for (std::size_t j = 0; j < L; ++j) most = std::max(most, static_cast<std::uint32_t>(x[j]));
  return most;
#endif
}

// The float value of every code on a vector (quant8_map.h's decoder, by the map's
// arithmetic: no table read). Signed: the sign bit 7 of codes above 0x80.
template <bool Signed>
FUSEDOPT_INLINE VF decode(const std::uint8_t* codes) {
  constexpr int M = Signed ? kQuant8SignedBits : kQuant8UnsignedBits;
  const VU c = widen(codes);
  const VU i = Signed ? c & 127u : c;
  const VF w = __builtin_convertvector((VI)(i + 1u), VF);
  VU bits = ((VU)w << 2) + quant8_decode_bias(M);
  const VU tail = i == 0u ? VU{} : (i << 23) + static_cast<std::uint32_t>(126 - quant8_binades(M)) * (1u << 23);
  bits = i <= kQuant8TailCodes ? tail : bits;
  if constexpr (Signed) bits = c > 128u ? bits | 0x80000000u : bits;
  return (VF)bits;
}

// Codes of x / absmax, as quant8_signed / quant8_unsigned on each lane (the encoder's
// tables, quant8_map.h).
template <bool Signed>
FUSEDOPT_INLINE VU encode(VF q) {
  const Quant8Encoding& t = Signed ? kQuant8SignedEncoding : kQuant8UnsignedEncoding;
  const VU u = (VU)q;
  const VU a = clamp(u & 0x7fffffffu, kQuant8ClampLow, kQuant8ClampHigh);
  const VU e = a >> 23;
  const VU i = (a + lookup32(t.add, e)) >> lookup32(t.shift, e);
  if constexpr (Signed) return (u > 0x80000000u) & (i != 0u) ? i | 128u : i;
  return i;
}

// The codes of n values x (a whole number of vectors) of a block whose absmax is a
// (quant8_map.h's Quant8Scale: the reciprocal, or a division where it overflows).
template <bool Signed>
FUSEDOPT_INLINE void encode_block(const float* x, std::uint8_t* codes, std::size_t n, float a) {
  const Quant8Scale scale(a);
  if (!scale.divide) {
    for (std::size_t i = 0; i < n; i += L) narrow(codes + i, encode<Signed>(load<VF>(x + i) * scale.by));
  } else {  // an absmax below 2^-128
    for (std::size_t i = 0; i < n; i += L) narrow(codes + i, encode<Signed>(scale(load<VF>(x + i))));
  }
}

// The block's absmax from the lanes' largest bits: for values >= +0 the bits order as
// the floats do, so without NaN (bits above +inf's, or a -0: the sign bit) the
// largest bits are the value max_or_nan would keep. Otherwise the first NaN (or the
// +0 before a -0) as max_or_nan keeps it, lane by lane and then across lanes.
FUSEDOPT_INLINE float block_absmax(VU top, const float* x, std::size_t n, bool abs) {
  const std::uint32_t most = lanes_max(top);
  if (most <= 0x7f800000u) {
    float a;
    std::memcpy(&a, &most, sizeof a);
    return a;
  }
  VF lanes = VF{} + 0.0f;
  for (std::size_t i = 0; i < n; i += L) {
    const VF v = load<VF>(x + i);
    lanes = max_or_nan(lanes, abs ? (VF)((VI)v & 0x7fffffff) : v);
  }
  float a = 0.0f;
  for (std::size_t j = 0; j < L; ++j) a = max_or_nan(a, lanes[j]);
  return a;
}

// One block of n <= kMaxBlock elements at g and p, with each slot's codes at codes[k]
// and its absmax at *absmax[k]: decoded, stepped and the new slot values kept on the
// stack, then encoded with the new absmax. n is a whole number of vectors. gout: g
// times c.unscale is stored there (GradScaler's unscale_in_place), or null.
template <OptimRule R, OptimDecay D>
FUSEDOPT_INLINE void step_block(const float* g, float* p, float* gout, std::uint8_t* const* codes,
                                float* const* absmax, std::size_t n, const OptimScalars<float>& c) {
  constexpr std::size_t K = quant8_slots(R);
  alignas(64) float s[K][kMaxBlock];
  VU top[K];
  float old[K];
  for (std::size_t k = 0; k < K; ++k) top[k] = VU{}, old[k] = *absmax[k];
  for (std::size_t i = 0; i < n; i += L) {
    VF x[K];
    for (std::size_t k = 0; k < K; ++k)
      x[k] = (quant8_signed_slot(k) ? decode<true>(codes[k] + i) : decode<false>(codes[k] + i)) * old[k];
    const VF gi = load<VF>(g + i);
    if (gout) store(gout + i, gi * c.unscale);
    store(p + i, stepped<R, D>(gi, load<VF>(p + i), x, c));
    for (std::size_t k = 0; k < K; ++k) {
      store(s[k] + i, x[k]);
      // the signed slot's |x|; the unsigned slot is >= 0 (or NaN, or -0: block_absmax)
      const VU b = quant8_signed_slot(k) ? (VU)x[k] & 0x7fffffffu : (VU)x[k];
      top[k] = b > top[k] ? b : top[k];
    }
  }
  for (std::size_t k = 0; k < K; ++k) {
    const float a = block_absmax(top[k], s[k], n, quant8_signed_slot(k));
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
  const Quant8Leaf& l = s.leaf;
  for (std::size_t b0 = s.begin; b0 < s.end; b0 += block) {
    const std::size_t n = std::min(block, s.end - b0), blk = b0 / block;
    const std::size_t whole = n / L * L;
    std::uint8_t* codes[K];
    float* absmax[K];
    for (std::size_t k = 0; k < K; ++k) codes[k] = l.codes[k] + b0, absmax[k] = l.absmax[k] + blk;
    if (whole == n) {
      step_block<R, D>(l.g + b0, l.p + b0, l.gout ? l.gout + b0 : nullptr, codes, absmax, n, c);
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
    step_block<R, D>(g, p, l.gout ? g : nullptr, padded_codes, absmax, padded, c);
    std::copy(p, p + n, l.p + b0);
    if (l.gout) std::copy(g, g + n, l.gout + b0);
    for (std::size_t k = 0; k < K; ++k) std::copy(copies[k], copies[k] + n, codes[k]);
  }
}

// A leaf below min_8bit_size: float32 slot values, element by element.
template <OptimRule R, OptimDecay D>
void float_span(const Quant8Span& s, const OptimScalars<float>& c) {
  constexpr std::size_t K = quant8_slots(R);
  const Quant8Leaf& l = s.leaf;
  for (std::size_t i = s.begin; i < s.end; ++i) {
    const float g = l.g[i];
    if (l.gout) l.gout[i] = g * c.unscale;
    float x[K];
    for (std::size_t k = 0; k < K; ++k) x[k] = l.values[k][i];
    l.p[i] = stepped<R, D>(g, l.p[i], x, c);
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

// The blockwise encoder on its own (state conversion): each block's absmax in element
// order (quant8_max), its codes by the step's encoder on a zero-padded copy.
void encode_blocks(const float* x, std::size_t n, std::size_t block, bool is_signed, std::uint8_t* codes, float* absmax) {
  alignas(64) float buf[kMaxBlock];
  alignas(64) std::uint8_t out[kMaxBlock];
  for (std::size_t b0 = 0, blk = 0; b0 < n; b0 += block, ++blk) {
    const std::size_t m = std::min(block, n - b0), whole = (m + L - 1) / L * L;
    float a = 0.0f;
    for (std::size_t i = 0; i < m; ++i) a = quant8_max(a, std::fabs(x[b0 + i]));
    std::copy(x + b0, x + b0 + m, buf);
    std::fill(buf + m, buf + whole, 0.0f);
    if (is_signed)
      encode_block<true>(buf, out, whole, a);
    else
      encode_block<false>(buf, out, whole, a);
    std::copy(out, out + m, codes + b0);
    absmax[blk] = a;
  }
}

// The decoder on its own: map(code) * absmax of the block.
void decode_blocks(const std::uint8_t* codes, const float* absmax, std::size_t n, std::size_t block, bool is_signed,
                   float* out) {
  alignas(64) std::uint8_t buf[kMaxBlock];
  alignas(64) float values[kMaxBlock];
  for (std::size_t b0 = 0, blk = 0; b0 < n; b0 += block, ++blk) {
    const std::size_t m = std::min(block, n - b0), whole = (m + L - 1) / L * L;
    std::copy(codes + b0, codes + b0 + m, buf);
    std::fill(buf + m, buf + whole, std::uint8_t{0});
    for (std::size_t i = 0; i < whole; i += L)
      store(values + i, (is_signed ? decode<true>(buf + i) : decode<false>(buf + i)) * absmax[blk]);
    std::copy(values, values + m, out + b0);
  }
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
void fill(Quant8Fn (&fns)[kNumQuant8Rules][kNumOptimDecays], std::index_sequence<Q...>) {
  ((fns[Q][0] = entry<Q, 0>(), fns[Q][1] = entry<Q, 1>(), fns[Q][2] = entry<Q, 2>()), ...);
}

}  // namespace

void fill_quant8(Quant8Table& t) {
  fill(t.step, std::make_index_sequence<kNumQuant8Rules>{});
  t.encode = &encode_blocks;
  t.decode = &decode_blocks;
}

}  // namespace FUSEDOPT_ISA
}  // namespace fusedopt
