// The element math of every fused step (SPEC section 3), in paysage's exact
// operation order. Compiled with -ffp-contract=off and without -ffast-math so
// that each operation rounds as NumPy's float32/float64 operations do.
#pragma once
#include <cmath>
#include <cstddef>
#include "kernel_modes.h"

namespace fusedopt {

// Number of independent sum(d*d) accumulators: a fixed lane count keeps the
// reduction order, and so its bits, the same on every instruction set.
constexpr std::size_t kLanes = 16;

template <class T, unsigned MODE>
inline T step_element(const Segment<T>& s, const StepScalars<T>& c, std::size_t i) {
  constexpr unsigned mean = mode_mean(MODE), sq = mode_sq(MODE), dir = mode_dir(MODE),
                     out = mode_out(MODE);
  const T g = s.g[i];
  T m{}, v{};
  if constexpr (mean == MOMENT_INIT) {
    m = g;
    s.m[i] = m;
  } else if constexpr (mean == MOMENT_EMA) {
    m = (c.w * s.m[i]) + (c.one_minus_w * g);
    s.m[i] = m;
  } else if constexpr (dir == DIR_M || dir == DIR_NORM_M) {
    m = s.m[i];
  }
  if constexpr (sq == MOMENT_INIT) {
    v = g * g;
    s.v[i] = v;
  } else if constexpr (sq == MOMENT_EMA) {
    v = (c.w2 * s.v[i]) + ((c.one_minus_w2 * g) * g);  // not (1 - w2) * (g * g)
    s.v[i] = v;
  } else if constexpr (dir == DIR_NORM_G || dir == DIR_NORM_M) {
    v = s.v[i];
  }
  T d{};
  if constexpr (dir == DIR_G) {
    d = g;
  } else if constexpr (dir == DIR_M) {
    d = m;
  } else if constexpr (dir == DIR_NORM_G || dir == DIR_NORM_M) {
    T x = dir == DIR_NORM_M ? m : g;
    if constexpr ((MODE & MEAN_DIV) != 0) x = x / c.one_minus_w;
    if constexpr ((MODE & UNBIASED) != 0) v = v / c.one_minus_w2;
    d = x / std::sqrt(c.eps + v);
  }
  if constexpr ((MODE & SCALE) != 0) d = c.lr * d;
  if constexpr (out == OUT_WRITE || out == OUT_BOTH) s.out[i] = d;
  if constexpr (out == OUT_INPLACE || out == OUT_BOTH) s.p[i] = s.p[i] - d;
  return d;
}

// One segment: full blocks of kLanes elements, then the tail; d*d is rounded
// in T (as numpy's square) and accumulated per lane in double.
template <class T, unsigned MODE>
double run_segment(const Segment<T>& s, const StepScalars<T>& c) {
  constexpr bool reduce = (MODE & SCALE) != 0;
  double acc[kLanes] = {};
  std::size_t i = 0;
  for (; i + kLanes <= s.n; i += kLanes) {
    T d[kLanes];
    for (std::size_t j = 0; j < kLanes; ++j) d[j] = step_element<T, MODE>(s, c, i + j);
    if constexpr (reduce)
      for (std::size_t j = 0; j < kLanes; ++j) acc[j] += static_cast<double>(d[j] * d[j]);
  }
  for (std::size_t j = 0; i + j < s.n; ++j) {
    const T d = step_element<T, MODE>(s, c, i + j);
    if constexpr (reduce) acc[j] += static_cast<double>(d * d);
  }
  double total = 0.0;
  if constexpr (reduce)
    for (std::size_t j = 0; j < kLanes; ++j) total += acc[j];
  return total;
}

}  // namespace fusedopt

namespace fusedopt {

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

}  // namespace fusedopt
