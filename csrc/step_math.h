// The element math of every fused step (SPEC section 3), in paysage's exact
// operation order, written once for scalars and 16-lane vectors alike.
// Compiled with -ffp-contract=off and without -ffast-math so that each
// operation rounds as NumPy's float32/float64 operations do.
#pragma once
#include <cstddef>
#include "kernel_modes.h"
#include "simd_vec.h"

#ifndef FUSEDOPT_ISA
#error "include only from a translation unit compiled for one instruction set (kernels_isa.cpp)"
#endif

// Everything here lives in the namespace of the instruction set being
// compiled: the same template compiled with other flags in another
// translation unit must stay a different function, or the linker would keep
// one copy for all levels (and could run AVX-512 code on the baseline path).
namespace fusedopt {
namespace FUSEDOPT_ISA {

// The values of one element (or 16 lanes) as a step sees and leaves them.
template <class V>
struct Lanes {
  V g, m, v, p, d;
};

template <unsigned MODE>
constexpr bool reads_m() {
  return mode_mean(MODE) == MOMENT_EMA ||
         (mode_mean(MODE) == MOMENT_NONE && (mode_dir(MODE) == DIR_M || mode_dir(MODE) == DIR_NORM_M));
}
template <unsigned MODE>
constexpr bool reads_v() {
  return mode_sq(MODE) == MOMENT_EMA ||
         (mode_sq(MODE) == MOMENT_NONE && (mode_dir(MODE) == DIR_NORM_G || mode_dir(MODE) == DIR_NORM_M));
}
template <unsigned MODE>
constexpr bool steps_p() { return mode_out(MODE) == OUT_INPLACE || mode_out(MODE) == OUT_BOTH; }
template <unsigned MODE>
constexpr bool writes_out() { return mode_out(MODE) == OUT_WRITE || mode_out(MODE) == OUT_BOTH; }

// V is T or a native vector of T; scalars of c broadcast over lanes.
template <unsigned MODE, class V, class T>
FUSEDOPT_INLINE void step_math(Lanes<V>& x, const StepScalars<T>& c) {
  constexpr unsigned mean = mode_mean(MODE), sq = mode_sq(MODE), dir = mode_dir(MODE);
  if constexpr (mean == MOMENT_INIT) x.m = x.g;
  if constexpr (mean == MOMENT_EMA) x.m = (c.w * x.m) + (c.one_minus_w * x.g);
  if constexpr (sq == MOMENT_INIT) x.v = x.g * x.g;
  if constexpr (sq == MOMENT_EMA) x.v = (c.w2 * x.v) + ((c.one_minus_w2 * x.g) * x.g);  // not (1-w2)*(g*g)
  if constexpr (dir == DIR_G) x.d = x.g;
  if constexpr (dir == DIR_M) x.d = x.m;
  if constexpr (dir == DIR_NORM_G || dir == DIR_NORM_M) {
    V num = dir == DIR_NORM_M ? x.m : x.g;
    V den = x.v;
    if constexpr ((MODE & MEAN_DIV) != 0) num = num / c.one_minus_w;
    if constexpr ((MODE & UNBIASED) != 0) den = den / c.one_minus_w2;
    x.d = num / vsqrt(c.eps + den);
  }
  if constexpr ((MODE & SCALE) != 0) x.d = c.lr * x.d;
  if constexpr (steps_p<MODE>()) x.p = x.p - x.d;
}

// Loads, computes and stores W consecutive elements starting at i (W = 1 or 16).
template <unsigned MODE, class V, class T>
FUSEDOPT_INLINE V step_at(const Segment<T>& s, const StepScalars<T>& c, std::size_t i) {
  Lanes<V> x{};
  x.g = load<V>(s.g + i);
  if constexpr (reads_m<MODE>()) x.m = load<V>(s.m + i);
  if constexpr (reads_v<MODE>()) x.v = load<V>(s.v + i);
  if constexpr (steps_p<MODE>()) x.p = load<V>(s.p + i);
  step_math<MODE>(x, c);
  if constexpr (mode_mean(MODE) != MOMENT_NONE) store(s.m + i, x.m);
  if constexpr (mode_sq(MODE) != MOMENT_NONE) store(s.v + i, x.v);
  if constexpr (steps_p<MODE>()) store(s.p + i, x.p);
  if constexpr (writes_out<MODE>()) store(s.out + i, x.d);
  return x.d;
}

// Number of sum(d*d) accumulators: element i goes to lane i mod 16 of group
// (i / 16) mod 4 on every instruction set (one zmm, two ymm or four xmm of
// floats per 16 lanes), so the sum has the same bits whatever SIMD level runs.
// Four groups keep four additions in flight: one accumulator would make the
// add latency the limit of cheap steps (Gradient, Momentum).
constexpr std::size_t kLanes = 16, kGroups = 4;

// One segment: 64 elements at a time (as native vectors), then 16 at a time,
// then the tail. With SCALE, d*d is rounded in T (as numpy's square) and
// summed per lane, then the lanes in a fixed order in double.
template <class T, unsigned MODE>
double run_segment(const Segment<T>& seg, const StepScalars<T>& scalars) {
  // Local copies: the compiler then knows the element stores cannot change
  // the pointers or scalars, and keeps them in registers.
  const Segment<T> s = seg;
  const StepScalars<T> c = scalars;
  using V = typename Vec<T>::type;
  constexpr std::size_t L = Vec<T>::lanes, K = kLanes / L;
  static_assert(K * L == kLanes, "a native vector must divide 16 lanes");
  static_assert(kGroups == 4, "the final sum below adds four groups");
  constexpr bool reduce = (MODE & SCALE) != 0;
  V acc[kGroups][K] = {};
  auto block = [&](std::size_t i, std::size_t group) {
    for (std::size_t k = 0; k < K; ++k) {
      const V d = step_at<MODE, V>(s, c, i + k * L);
      if constexpr (reduce) acc[group][k] += d * d;
    }
  };
  std::size_t i = 0;
  for (; i + kGroups * kLanes <= s.n; i += kGroups * kLanes)
    for (std::size_t group = 0; group < kGroups; ++group) block(i + group * kLanes, group);
  for (std::size_t group = 0; i + kLanes <= s.n; i += kLanes, ++group) block(i, group);
  T lane[kLanes] = {};
  for (std::size_t j = 0; i + j < s.n; ++j) {
    const T d = step_at<MODE, T>(s, c, i + j);
    lane[j] = d * d;
  }
  double total = 0.0;
  if constexpr (reduce) {
    // Groups first, lane by lane in T (a few vector adds per chunk), then the
    // 16 lanes and the tail in double.
    for (std::size_t k = 0; k < K; ++k) acc[0][k] = (acc[0][k] + acc[1][k]) + (acc[2][k] + acc[3][k]);
    for (std::size_t j = 0; j < kLanes; ++j) total += static_cast<double>(acc[0][j / L][j % L]);
    for (std::size_t j = 0; j < kLanes; ++j) total += static_cast<double>(lane[j]);
  }
  return total;
}

// Bandwidth probe with ADAM's in-place traffic (read g, p, m, v; write p, m,
// v) and trivial arithmetic: what the memory system allows a fused step.
inline double run_probe(const Segment<float>& s, const StepScalars<float>&) {
  for (std::size_t i = 0; i < s.n; ++i) {
    const float g = s.g[i];
    s.p[i] = s.p[i] + g;
    s.m[i] = s.m[i] + g;
    s.v[i] = s.v[i] + g;
  }
  return 0.0;
}

}  // namespace FUSEDOPT_ISA
}  // namespace fusedopt

