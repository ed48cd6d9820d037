// Adafactor's per-row passes of one instruction set (compiled once per level,
// see the fusedopt_isa function in CMakeLists.txt): torch's single-tensor
// element operations in T, the sums in double in the lane order.
#include <cmath>
#include "optim/adafactor_passes.h"
#include "optim/flat_sum.h"
#include "optim/torch_lerp.h"

#ifndef FUSEDOPT_ISA
#error "FUSEDOPT_ISA must name the instruction set of this translation unit"
#endif

namespace fusedopt {
namespace FUSEDOPT_ISA {
namespace {

template <class T>
double square(T x) { return static_cast<double>(x) * static_cast<double>(x); }

// torch's update: rsqrt of the clamped estimate, times the (signed) gradient.
template <class T>
T update(T v, T floor, T g) { return T(1) / std::sqrt(v < floor ? floor : v) * g; }

template <class T>
double row_first(const T* p, const T* g, std::size_t cols, double* part, double* pp) {
  *pp = lane_sum(0, cols, [&](std::size_t j) { return square(p[j]); });
  return lane_sum(0, cols, [&](std::size_t j) {
    const double x = square(g[j]);
    part[j] += x;
    return x;
  });
}

template <class T>
double var_first(const T* p, const T* g, const T* old, T* var, std::size_t b, std::size_t e, T w) {
  if (old)
    for (std::size_t i = b; i < e; ++i) var[i] = torch_lerp(old[i], g[i] * g[i], w);
  else
    for (std::size_t i = b; i < e; ++i) var[i] = torch_lerp(T(0), g[i] * g[i], w);
  return lane_sum(b, e, [&](std::size_t i) { return square(p[i]); });
}

// The gradient as the update takes it, one branch per row.
template <class T, class F>
double signed_sum(bool maximize, std::size_t b, std::size_t e, F&& f) {
  if (maximize) return lane_sum(b, e, [&](std::size_t i) { return f(i, T(-1)); });
  return lane_sum(b, e, [&](std::size_t i) { return f(i, T(1)); });
}

template <class T>
double row_update_sq(const T* g, const T* c, T ri, T den, T floor, bool maximize, std::size_t cols) {
  return signed_sum<T>(maximize, 0, cols, [&](std::size_t j, T sign) {
    return square(update(ri * c[j] / den, floor, sign < 0 ? -g[j] : g[j]));
  });
}

template <class T>
double var_update_sq(const T* g, const T* var, T floor, bool maximize, std::size_t b, std::size_t e) {
  return signed_sum<T>(maximize, b, e, [&](std::size_t i, T sign) {
    return square(update(var[i], floor, sign < 0 ? -g[i] : g[i]));
  });
}

template <class T, class U>
void apply_run(T* p, bool maximize, T coef, T decay, bool decays, std::size_t b, std::size_t e, U&& u) {
  if (decays) {
    if (maximize) for (std::size_t i = b; i < e; ++i) p[i] = p[i] * decay + coef * u(i, true);
    else for (std::size_t i = b; i < e; ++i) p[i] = p[i] * decay + coef * u(i, false);
  } else {
    if (maximize) for (std::size_t i = b; i < e; ++i) p[i] = p[i] + coef * u(i, true);
    else for (std::size_t i = b; i < e; ++i) p[i] = p[i] + coef * u(i, false);
  }
}

template <class T>
void row_apply(T* p, const T* g, const T* c, T ri, T den, T floor, bool maximize, T coef, T decay, bool decays,
               std::size_t cols) {
  apply_run(p, maximize, coef, decay, decays, 0, cols,
            [&](std::size_t j, bool neg) { return update(ri * c[j] / den, floor, neg ? -g[j] : g[j]); });
}

template <class T>
void var_apply(T* p, const T* g, const T* var, T floor, bool maximize, T coef, T decay, bool decays,
               std::size_t b, std::size_t e) {
  apply_run(p, maximize, coef, decay, decays, b, e,
            [&](std::size_t i, bool neg) { return update(var[i], floor, neg ? -g[i] : g[i]); });
}

template <class T>
AdafactorPasses<T> passes() {
  return {&row_first<T>, &var_first<T>, &row_update_sq<T>, &var_update_sq<T>, &row_apply<T>, &var_apply<T>};
}

}  // namespace

void fill_adafactor_table(AdafactorTable& t) {
  t.f32 = passes<float>();
  t.f64 = passes<double>();
}

}  // namespace FUSEDOPT_ISA
}  // namespace fusedopt
