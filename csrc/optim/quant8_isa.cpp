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

// The largest |x[i]| (abs) or x[i], NaN if any is NaN, over native vectors
// then lanes; max is exact, so the lane count does not change the result.
inline float block_max(const float* x, std::size_t n, bool abs) {
  using V = Vec<float>::type;
  typedef std::int32_t IV __attribute__((vector_size(kVecBytes)));
  constexpr std::size_t L = Vec<float>::lanes;
  V acc = V{} + 0.0f;
  std::size_t i = 0;
  for (; i + L <= n; i += L) {
    V a = load<V>(x + i);
    if (abs) a = reinterpret_cast<V>(reinterpret_cast<IV>(a) & 0x7fffffff);  // fabs, NaNs included
    acc = max_or_nan(acc, a);
  }
  float out = 0.0f;
  for (std::size_t j = 0; j < L; ++j) out = max_or_nan(out, acc[j]);
  for (; i < n; ++i) out = max_or_nan(out, abs ? std::fabs(x[i]) : x[i]);
  return out;
}

template <Quant8Decay D>
void quantized_span(const Quant8Span& s, std::size_t block, const Quant8Scalars& c) {
  const Quant8Leaf& l = s.leaf;
  alignas(64) float m[kMaxBlock], v[kMaxBlock];
  for (std::size_t b0 = s.begin; b0 < s.end; b0 += block) {
    const std::size_t n = std::min(block, s.end - b0), blk = b0 / block;
    const float old_ma = l.ma[blk], old_va = l.va[blk];
    const std::uint8_t* mc = l.mc + b0;
    const std::uint8_t* vc = l.vc + b0;
    for (std::size_t i = 0; i < n; ++i) {
      m[i] = quant8_signed_value(mc[i]) * old_ma;
      v[i] = quant8_unsigned_value(vc[i]) * old_va;
    }
    for (std::size_t i = 0; i < n; ++i) adam_element<D>(l.g + b0, l.p + b0, m[i], v[i], i, c);
    const float am = block_max(m, n, true), av = block_max(v, n, false);
    std::uint8_t* mo = l.mc + b0;
    std::uint8_t* vo = l.vc + b0;
    // An absmax of 0 means every value is 0 (or -0): divided by 1 they stay 0.
    const float dm = am > 0.0f ? am : 1.0f, dv = av > 0.0f ? av : 1.0f;
    for (std::size_t i = 0; i < n; ++i) {
      mo[i] = quant8_signed(m[i] / dm);
      vo[i] = quant8_unsigned(v[i] / dv);
    }
    l.ma[blk] = am;
    l.va[blk] = av;
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
