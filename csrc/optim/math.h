// The element math of the textbook optimizers (docs/optim.md gives the same
// order in words), written once for scalars and native vectors alike, in the
// operation order of torch.optim 2.13's single-tensor updates. Compiled with
// -ffp-contract=off: every operation rounds on its own, as NumPy's do.
#pragma once
#include <cstddef>
#include "common/simd_vec.h"
#include "optim/rules.h"

#ifndef FUSEDOPT_ISA
#error "include only from a translation unit compiled for one instruction set (optim/kernels_isa.cpp)"
#endif

namespace fusedopt {
namespace FUSEDOPT_ISA {

template <class V>
struct TextbookLanes {
  V g, p, s0, s1, s2;
};

// torch's lerp(start, end, w): the form depends on |w| < 0.5, a per-step scalar.
template <class V, class T>
FUSEDOPT_INLINE V lerp(V start, V end, const TextbookScalars<T>& c) {
  const V diff = end - start;
  return c.lerp_small ? start + c.lerp_w * diff : end - diff * c.lerp_omw;
}

// NaN-propagating maximum (torch.maximum, np.maximum).
template <class V>
FUSEDOPT_INLINE V vmax(V a, V b) {
  const V m = a > b ? a : b;
  return a != a ? a : m;
}

// -1, 0 or 1, NaN for NaN (torch.sign, np.sign).
template <class V, class T>
FUSEDOPT_INLINE V vsign(V x) {
  const V zero = V{} + T(0), one = zero + T(1);
  V s = x > zero ? one : zero;
  s = x < zero ? -one : s;
  return x != x ? x : s;
}

template <TextbookRule R>
constexpr bool is_sgd() { return R == TextbookRule::SGD || R == TextbookRule::SGD_MOMENTUM || R == TextbookRule::SGD_NESTEROV; }
template <TextbookRule R>
constexpr bool is_adam() { return R == TextbookRule::ADAM || R == TextbookRule::ADAM_AMSGRAD; }
template <TextbookRule R>
constexpr bool is_rmsprop() {
  return R == TextbookRule::RMSPROP || R == TextbookRule::RMSPROP_CENTERED || R == TextbookRule::RMSPROP_MOMENTUM ||
         R == TextbookRule::RMSPROP_CENTERED_MOMENTUM;
}

template <TextbookRule R, Decay D, TextbookPhase P, class V, class T>
FUSEDOPT_INLINE void textbook_math(TextbookLanes<V>& x, const TextbookScalars<T>& c) {
  x.g = x.g * c.gscale;
  if constexpr (D == Decay::L2) x.g = x.g + c.wd * x.p;
  if constexpr (D == Decay::DECOUPLED) x.p = x.p * c.decay;
  if constexpr (is_sgd<R>()) {
    V d = x.g;
    if constexpr (R != TextbookRule::SGD) {
      if constexpr (P == TextbookPhase::FIRST) x.s0 = x.g;
      else x.s0 = (x.s0 * c.momentum) + (c.omd * x.g);
      d = R == TextbookRule::SGD_NESTEROV ? x.g + c.momentum * x.s0 : x.s0;
    }
    x.p = x.p + c.neg_lr * d;
  } else if constexpr (is_adam<R>()) {
    x.s0 = lerp(x.s0, x.g, c);
    x.s1 = (x.s1 * c.b2) + ((c.omb2 * x.g) * x.g);
    V den = x.s1;
    if constexpr (R == TextbookRule::ADAM_AMSGRAD) {
      x.s2 = vmax(x.s2, x.s1);
      den = x.s2;
    }
    den = (vsqrt(den) / c.bc2_sqrt) + c.eps;
    x.p = x.p + (c.neg_lr * x.s0) / den;
  } else if constexpr (is_rmsprop<R>()) {
    constexpr bool centered = R == TextbookRule::RMSPROP_CENTERED || R == TextbookRule::RMSPROP_CENTERED_MOMENTUM;
    constexpr bool momentum = R == TextbookRule::RMSPROP_MOMENTUM || R == TextbookRule::RMSPROP_CENTERED_MOMENTUM;
    x.s0 = (x.s0 * c.b2) + ((c.omb2 * x.g) * x.g);
    V avg = x.s0;
    if constexpr (centered) {
      x.s1 = lerp(x.s1, x.g, c);
      avg = avg - x.s1 * x.s1;  // torch's addcmul(value=-1): avg + (-1*ga)*ga, the same bits
    }
    avg = vsqrt(avg) + c.eps;
    if constexpr (momentum) {
      x.s2 = (x.s2 * c.momentum) + x.g / avg;
      x.p = x.p + c.neg_lr * x.s2;
    } else {
      x.p = x.p + (c.neg_lr * x.g) / avg;
    }
  } else if constexpr (R == TextbookRule::ADAGRAD) {
    x.s0 = x.s0 + x.g * x.g;
    x.p = x.p + (c.neg_lr * x.g) / (vsqrt(x.s0) + c.eps);
  } else if constexpr (R == TextbookRule::LION) {
    const V u = (c.b1 * x.s0) + (c.omb1 * x.g);
    x.p = x.p + c.neg_lr * vsign<V, T>(u);  // p - lr*sign(u): the same bits
    x.s0 = (c.b2 * x.s0) + (c.omb2 * x.g);
  }
}

// Which slots the kernel of (R, P) reads: FIRST writes SGD's buffer unread.
template <TextbookRule R, TextbookPhase P>
constexpr bool reads_slot(std::size_t k) { return uses_slot(R, k) && !(P == TextbookPhase::FIRST && k == 0); }

template <TextbookRule R, Decay D, TextbookPhase P, class V, class T>
FUSEDOPT_INLINE void textbook_at(const TextbookSegment<T>& s, const TextbookScalars<T>& c, std::size_t i) {
  TextbookLanes<V> x{};
  x.g = load<V>(s.g + i);
  x.p = load<V>(s.p + i);
  if constexpr (reads_slot<R, P>(0)) x.s0 = load<V>(s.s[0] + i);
  if constexpr (reads_slot<R, P>(1)) x.s1 = load<V>(s.s[1] + i);
  if constexpr (reads_slot<R, P>(2)) x.s2 = load<V>(s.s[2] + i);
  textbook_math<R, D, P>(x, c);
  store(s.p + i, x.p);
  if constexpr (uses_slot(R, 0)) store(s.s[0] + i, x.s0);
  if constexpr (uses_slot(R, 1)) store(s.s[1] + i, x.s1);
  if constexpr (uses_slot(R, 2)) store(s.s[2] + i, x.s2);
}

// One segment: four native vectors at a time, then one, then scalars. Every
// element goes through the same operations whichever path takes it, so the
// bits do not depend on the vector width or where a segment starts.
template <class T, TextbookRule R, Decay D, TextbookPhase P>
void run_textbook_segment(const TextbookSegment<T>& seg, const TextbookScalars<T>& scalars) {
  const TextbookSegment<T> s = seg;  // local copies: stores cannot alias them
  const TextbookScalars<T> c = scalars;
  using V = typename Vec<T>::type;
  constexpr std::size_t L = Vec<T>::lanes;
  std::size_t i = 0;
  for (; i + 4 * L <= s.n; i += 4 * L) {
#pragma GCC unroll 4
    for (std::size_t k = 0; k < 4; ++k) textbook_at<R, D, P, V>(s, c, i + k * L);
  }
  for (; i + L <= s.n; i += L) textbook_at<R, D, P, V>(s, c, i);
  for (; i < s.n; ++i) textbook_at<R, D, P, T>(s, c, i);
}

// sum(g*g) in double: element i adds to accumulator i mod 16 (the same at
// every level: each accumulator sees the same additions), then the 16 in order.
template <class T>
double sum_squares(const T* g, std::size_t n) {
  constexpr std::size_t K = 16;
  double acc[K] = {};
  std::size_t i = 0;
  for (; i + K <= n; i += K)
    for (std::size_t j = 0; j < K; ++j) acc[j] += static_cast<double>(g[i + j]) * static_cast<double>(g[i + j]);
  for (std::size_t j = 0; i + j < n; ++j) acc[j] += static_cast<double>(g[i + j]) * static_cast<double>(g[i + j]);
  double total = 0.0;
  for (std::size_t j = 0; j < K; ++j) total += acc[j];
  return total;
}

}  // namespace FUSEDOPT_ISA
}  // namespace fusedopt
