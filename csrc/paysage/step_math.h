// The element math of every fused step (docs/semantics.md), in paysage's exact
// operation order, written once for scalars and 16-lane vectors alike.
// Compiled with -ffp-contract=off and without -ffast-math so that each
// operation rounds as NumPy's float32/float64 operations do.
#pragma once
#include <cmath>
#include <cstddef>
#include <type_traits>
#include "paysage/kernel_modes.h"
#include "paysage/exact_division.h"
#include "common/simd_vec.h"

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

// Whether MODE divides v by 1 - w2 (and maybe x by 1 - w): the modes whose
// divisions exact_division.h speeds up (every ADAM and RMSProp step).
template <unsigned MODE>
constexpr bool divides_by_constants() { return (MODE & UNBIASED) != 0; }

// V is T or a native vector of T; scalars of c broadcast over lanes. EXACT:
// divide by the constants with checked FMAs (exact_division.h).
template <unsigned MODE, bool EXACT, class V, class T>
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
    divide_by_constants<EXACT, (MODE & MEAN_DIV) != 0, (MODE & UNBIASED) != 0>(num, den, c);
    x.d = num / vsqrt(c.eps + den);
  }
  if constexpr ((MODE & SCALE) != 0) x.d = c.lr * x.d;
  if constexpr (steps_p(MODE)) x.p = x.p - x.d;
}

// Loads, computes and stores W consecutive elements starting at i (W = 1 or 16).
template <unsigned MODE, bool EXACT, class V, class T>
FUSEDOPT_INLINE V step_at(const Segment<T>& s, const StepScalars<T>& c, std::size_t i) {
  Lanes<V> x{};
  x.g = load<V>(s.g + i);
  if constexpr (reads_m(MODE)) x.m = load<V>(s.m + i);
  if constexpr (reads_v(MODE)) x.v = load<V>(s.v + i);
  if constexpr (steps_p(MODE)) x.p = load<V>(s.p + i);
  step_math<MODE, EXACT>(x, c);
  if constexpr (updates_m(MODE)) store(s.m_out + i, x.m);
  if constexpr (updates_v(MODE)) store(s.v_out + i, x.v);
  if constexpr (steps_p(MODE)) store(s.p + i, x.p);
  if constexpr (writes_out(MODE)) store(s.out + i, x.d);
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
template <class T, unsigned MODE, bool EXACT>
double run_segment_with(const Segment<T>& seg, const StepScalars<T>& scalars) {
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
#pragma GCC unroll 4
    for (std::size_t k = 0; k < K; ++k) {
      const V d = step_at<MODE, EXACT, V>(s, c, i + k * L);
      if constexpr (reduce) acc[group][k] += d * d;
    }
  };
  std::size_t i = 0;
  // Unrolled so the accumulators stay in registers (a branch in the element
  // math, as EXACT division has, otherwise keeps GCC from unrolling).
  for (; i + kGroups * kLanes <= s.n; i += kGroups * kLanes) {
#pragma GCC unroll 4
    for (std::size_t group = 0; group < kGroups; ++group) block(i + group * kLanes, group);
  }
  for (std::size_t group = 0; i + kLanes <= s.n; i += kLanes, ++group) block(i, group);
  T lane[kLanes] = {};
  for (std::size_t j = 0; i + j < s.n; ++j) {
    const T d = step_at<MODE, false, T>(s, c, i + j);
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

// The kernel of MODE: with FMA division by the constants when this level has
// it and the caller checked both divisors (non-zero reciprocals), else the
// divider. Decided once per segment, not per vector.
template <class T, unsigned MODE>
double run_segment(const Segment<T>& seg, const StepScalars<T>& c) {
  if constexpr (std::is_same_v<T, float> && kHaveExactDivision && divides_by_constants<MODE>()) {
    const bool ready = ((MODE & MEAN_DIV) == 0 || c.inv_one_minus_w != 0.0f) &&
                       ((MODE & UNBIASED) == 0 || c.inv_one_minus_w2 != 0.0f);
    if (ready) return run_segment_with<T, MODE, true>(seg, c);
  }
  return run_segment_with<T, MODE, false>(seg, c);
}

// Bandwidth probe with ADAM's in-place traffic (read g, p, m, v; write p, m,
// v) and trivial arithmetic: what the memory system allows a fused step.
inline double run_probe(const Segment<float>& s, const StepScalars<float>&) {
  for (std::size_t i = 0; i < s.n; ++i) {
    const float g = s.g[i];
    s.p[i] = s.p[i] + g;
    s.m_out[i] = s.m[i] + g;
    s.v_out[i] = s.v[i] + g;
  }
  return 0.0;
}

// The data-parallel average of fusedopt.distributed, for its two users: the
// step kernels that average a chunk of the ranks' rows on the fly
// (multi_tensor.cpp) and the separate pass (rank_sum.cpp), both through the
// kernel table, so it runs at the step's SIMD level.
// Rank 0's row first, then each later rank in rank order: the per-element order
// is fixed, the loops over i vectorize. The first addition reads rows 0 and 1
// and the last one finishes, so two ranks take a single pass; out may be
// rows[0] + lo (same index only).
template <class T, class Finish>
inline void sum_rows(const T* const* rows, std::size_t k, std::size_t lo, std::size_t len, Finish finish, T* out) {
  const T* r0 = rows[0] + lo;
  if (k == 1) {
    for (std::size_t i = 0; i < len; ++i) out[i] = finish(r0[i]);
    return;
  }
  const T* r1 = rows[1] + lo;
  if (k == 2) {
    for (std::size_t i = 0; i < len; ++i) out[i] = finish(r0[i] + r1[i]);
    return;
  }
  for (std::size_t i = 0; i < len; ++i) out[i] = r0[i] + r1[i];
  for (std::size_t r = 2; r + 1 < k; ++r) {
    const T* in = rows[r] + lo;
    for (std::size_t i = 0; i < len; ++i) out[i] = out[i] + in[i];
  }
  const T* last = rows[k - 1] + lo;
  for (std::size_t i = 0; i < len; ++i) out[i] = finish(out[i] + last[i]);
}

// out[i] = (((rows[0][lo+i] + rows[1][lo+i]) + ...) + rows[k-1][lo+i]) / divisor
// for i < len, every operation rounded to T. A power-of-two divisor in [1, 2^100]
// multiplies by its reciprocal instead: 2^-j is then exact (and normal), and
// x * 2^-j is the same real number as x / 2^j, so both round to the same bits
// (subnormal results, Inf and NaN included); the divider is what limits this pass
// otherwise.
template <class T>
void average_rows(const T* const* rows, std::size_t k, std::size_t lo, std::size_t len, T divisor, T* out) {
  int exponent = 0;
  if (divisor >= T(1) && divisor <= T(0x1p100) && std::frexp(divisor, &exponent) == T(0.5)) {
    const T inverse = T(1) / divisor;  // exact: a power of two
    sum_rows(rows, k, lo, len, [inverse](T s) { return s * inverse; }, out);
  } else {
    sum_rows(rows, k, lo, len, [divisor](T s) { return s / divisor; }, out);
  }
}

}  // namespace FUSEDOPT_ISA
}  // namespace fusedopt

