// The Adam8bit/AdamW8bit element pass of one instruction set (compiled once
// per level, see fusedopt_isa in CMakeLists.txt). Plain float32 operations in
// loops the compiler vectorises: every element gets the same IEEE operations
// at every level, so the bits do not depend on it.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include "common/simd_vec.h"
#include "optim/quant8.h"

#ifndef FUSEDOPT_ISA
#error "FUSEDOPT_ISA must name the instruction set of this translation unit"
#endif

namespace fusedopt {
namespace FUSEDOPT_ISA {

namespace {

constexpr std::size_t kMaxBlock = 4096;

// torch's Adam/AdamW element math (docs/optim.md) on element i; m, v in and out.
template <Quant8Decay D>
inline void adam_element(const float* g_in, float* p_io, float& m, float& v, std::size_t i, const Quant8Scalars& c) {
  float g = g_in[i] * c.gscale;
  float p = p_io[i];
  if (D == Quant8Decay::L2) g = g + c.wd * p;
  if (D == Quant8Decay::DECOUPLED) p = p * c.decay;
  const float diff = g - m;
  m = c.lerp_small ? m + c.lerp_w * diff : g - diff * c.lerp_omw;
  v = (v * c.b2) + ((c.omb2 * g) * g);
  const float den = (std::sqrt(v) / c.bc2_sqrt) + c.eps;
  p_io[i] = p + (c.neg_lr * m) / den;
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
FUSEDOPT_INLINE VB encode_signed(VF q) {
  const VU u = (VU)q;
  const VU i = quant8_index_of_bits<VU, VI>(u, kQuant8SignedBits);
  return __builtin_convertvector(i == 0u ? i : i | ((u >> 31) << 7), VB);
}
FUSEDOPT_INLINE VB encode_unsigned(VF q) {
  return __builtin_convertvector(quant8_index_of_bits<VU, VI>((VU)q, kQuant8UnsignedBits), VB);
}

// adam_element on a vector of lanes (the same operations in the same order).
template <Quant8Decay D>
FUSEDOPT_INLINE VF adam_lanes(VF g, VF p, VF& m, VF& v, const Quant8Scalars& c) {
  g = g * c.gscale;
  if (D == Quant8Decay::L2) g = g + c.wd * p;
  if (D == Quant8Decay::DECOUPLED) p = p * c.decay;
  const VF diff = g - m;
  m = c.lerp_small ? m + c.lerp_w * diff : g - diff * c.lerp_omw;
  v = (v * c.b2) + ((c.omb2 * g) * g);
  const VF den = (vsqrt(v) / c.bc2_sqrt) + c.eps;
  return p + (c.neg_lr * m) / den;
}

// One block of n <= kMaxBlock elements at g, p and the codes mc, vc, whose
// absmax are ma, va: decoded, stepped and the new moments kept on the stack,
// then encoded with the new absmax. n is a whole number of vectors.
template <Quant8Decay D>
FUSEDOPT_INLINE void step_block(const float* g, float* p, std::uint8_t* mc, std::uint8_t* vc, float& ma, float& va,
                                std::size_t n, const Quant8Scalars& c, const Quant8Values& t) {
  alignas(64) float m[kMaxBlock], v[kMaxBlock];
  VF am = VF{} + 0.0f, av = VF{} + 0.0f;
  const float old_ma = ma, old_va = va;
  for (std::size_t i = 0; i < n; i += L) {
    VF mi = decode(t.m, mc + i) * old_ma, vi = decode(t.v, vc + i) * old_va;
    store(p + i, adam_lanes<D>(load<VF>(g + i), load<VF>(p + i), mi, vi, c));
    store(m + i, mi);
    store(v + i, vi);
    am = max_or_nan(am, (VF)((VI)mi & 0x7fffffff));  // fabs, NaNs included
    av = max_or_nan(av, vi);
  }
  float a = 0.0f, b = 0.0f;
  for (std::size_t j = 0; j < L; ++j) {
    a = max_or_nan(a, am[j]);
    b = max_or_nan(b, av[j]);
  }
  const Quant8Scale sm(a), sv(b);
  if (!sm.divide && !sv.divide) {
    for (std::size_t i = 0; i < n; i += L) {
      store(mc + i, encode_signed(load<VF>(m + i) * sm.by));
      store(vc + i, encode_unsigned(load<VF>(v + i) * sv.by));
    }
  } else {  // an absmax below 2^-128
    for (std::size_t i = 0; i < n; i += L) {
      store(mc + i, encode_signed(sm(load<VF>(m + i))));
      store(vc + i, encode_unsigned(sv(load<VF>(v + i))));
    }
  }
  ma = a;
  va = b;
}

template <Quant8Decay D>
void quantized_span(const Quant8Span& s, std::size_t block, const Quant8Scalars& c) {
  static const Quant8Values table;
  const Quant8Leaf& l = s.leaf;
  for (std::size_t b0 = s.begin; b0 < s.end; b0 += block) {
    const std::size_t n = std::min(block, s.end - b0), blk = b0 / block;
    const std::size_t whole = n / L * L;
    if (whole == n) {
      step_block<D>(l.g + b0, l.p + b0, l.mc + b0, l.vc + b0, l.ma[blk], l.va[blk], n, c, table);
      continue;
    }
    // A leaf's last block, shorter than whole vectors: stepped on a zero-padded copy
    // (padding codes 0 and gradients 0 give moments 0, which leave the absmax as it is).
    alignas(64) float g[kMaxBlock], p[kMaxBlock];
    alignas(64) std::uint8_t mc[kMaxBlock], vc[kMaxBlock];
    const std::size_t padded = whole + L;
    std::fill(g + whole, g + padded, 0.0f);
    std::fill(p + whole, p + padded, 0.0f);
    std::fill(mc + whole, mc + padded, 0);
    std::fill(vc + whole, vc + padded, 0);
    std::copy(l.g + b0, l.g + b0 + n, g);
    std::copy(l.p + b0, l.p + b0 + n, p);
    std::copy(l.mc + b0, l.mc + b0 + n, mc);
    std::copy(l.vc + b0, l.vc + b0 + n, vc);
    step_block<D>(g, p, mc, vc, l.ma[blk], l.va[blk], padded, c, table);
    std::copy(p, p + n, l.p + b0);
    std::copy(mc, mc + n, l.mc + b0);
    std::copy(vc, vc + n, l.vc + b0);
  }
}

template <Quant8Decay D>
void float_span(const Quant8Span& s, const Quant8Scalars& c) {
  const Quant8Leaf& l = s.leaf;
  for (std::size_t i = s.begin; i < s.end; ++i) adam_element<D>(l.g, l.p, l.m[i], l.v[i], i, c);
}

template <Quant8Decay D>
void span(const Quant8Span& s, std::size_t block, const Quant8Scalars& c) {
  if (s.leaf.mc)
    quantized_span<D>(s, block, c);
  else
    float_span<D>(s, c);
}

}  // namespace

void fill_quant8(Quant8Fn* fns) {
  fns[0] = &span<Quant8Decay::NONE>;
  fns[1] = &span<Quant8Decay::L2>;
  fns[2] = &span<Quant8Decay::DECOUPLED>;
}

}  // namespace FUSEDOPT_ISA
}  // namespace fusedopt
