// LBFGS's per-chunk passes of one instruction set (compiled once per level,
// see the fusedopt_isa function in CMakeLists.txt): the sums in double, each
// element's product into lane (i - b) mod 16, vectorised across the lanes.
#include <cmath>
#include <limits>
#include "optim/flat_sum.h"
#include "optim/lbfgs_passes.h"

#ifndef FUSEDOPT_ISA
#error "FUSEDOPT_ISA must name the instruction set of this translation unit"
#endif

namespace fusedopt {
namespace FUSEDOPT_ISA {
namespace {

template <class T>
double prod(T a, T b) { return static_cast<double>(a) * static_cast<double>(b); }

template <class T>
double dot(const T* a, const T* b, std::size_t b0, std::size_t e) {
  return lane_sum(b0, e, [&](std::size_t i) { return prod(a[i], b[i]); });
}

template <class T>
double abs_sum(const T* a, std::size_t b0, std::size_t e) {
  return lane_sum(b0, e, [&](std::size_t i) { return static_cast<double>(std::fabs(a[i])); });
}

// Element i into lane (i - b) mod 16 as the sums: a lane keeps its largest
// value and whether it saw a NaN, so the loop vectorises; any NaN gives the
// quiet NaN (which NaN came first is not kept).
template <class T>
T scaled_abs_max(const T* a, T alpha, std::size_t b0, std::size_t e) {
  T m[kLanes] = {};
  unsigned nan[kLanes] = {};
  auto take = [&](std::size_t j, std::size_t i) {
    const T x = std::fabs(alpha * a[i]);
    m[j] = x > m[j] ? x : m[j];
    nan[j] |= x != x;
  };
  std::size_t i = b0;
  for (; i + kLanes <= e; i += kLanes)
    for (std::size_t j = 0; j < kLanes; ++j) take(j, i + j);
  for (std::size_t j = 0; i + j < e; ++j) take(j, i + j);
  T out = T(0);
  unsigned any = 0;
  for (std::size_t j = 0; j < kLanes; ++j) out = m[j] > out ? m[j] : out, any |= nan[j];
  return any ? std::numeric_limits<T>::quiet_NaN() : out;
}

template <class T>
double new_pair(const T* g, T* prev, const T* d, T t, T* y, T* s, std::size_t b0, std::size_t e, double* yy) {
  double yy_acc[kLanes] = {};
  const double ys = lane_sum(b0, e, [&](std::size_t i) {
    const T yi = g[i] - prev[i];
    const T si = d[i] * t;
    y[i] = yi;
    s[i] = si;
    prev[i] = g[i];
    yy_acc[(i - b0) % kLanes] += prod(yi, yi);
    return prod(yi, si);
  });
  double total = 0.0;
  for (std::size_t j = 0; j < kLanes; ++j) total += yy_acc[j];
  *yy = total;
  return ys;
}

template <class T>
double negate_dot(T* x, const T* g, const T* w, std::size_t b0, std::size_t e) {
  if (!w) {
    for (std::size_t i = b0; i < e; ++i) x[i] = -g[i];
    return 0.0;
  }
  return lane_sum(b0, e, [&](std::size_t i) {
    const T q = -g[i];
    x[i] = q;
    return prod(w[i], q);
  });
}

template <class T>
double axpy_dot(T* x, T alpha, const T* v, const T* w, std::size_t b0, std::size_t e) {
  return lane_sum(b0, e, [&](std::size_t i) {
    const T r = x[i] + alpha * v[i];
    x[i] = r;
    return prod(w[i], r);
  });
}

template <class T>
double axpy_scale_dot(T* x, T alpha, const T* v, T h, const T* w, std::size_t b0, std::size_t e) {
  return lane_sum(b0, e, [&](std::size_t i) {
    const T r = (x[i] + alpha * v[i]) * h;
    x[i] = r;
    return prod(w[i], r);
  });
}

template <class T>
LbfgsPasses<T> passes() {
  return {&dot<T>, &abs_sum<T>, &scaled_abs_max<T>, &new_pair<T>, &negate_dot<T>, &axpy_dot<T>, &axpy_scale_dot<T>};
}

}  // namespace

void fill_lbfgs_table(LbfgsTable& t) {
  t.f32 = passes<float>();
  t.f64 = passes<double>();
}

}  // namespace FUSEDOPT_ISA
}  // namespace fusedopt
