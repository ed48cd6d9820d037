// The per-chunk work of LBFGS's passes (optim/lbfgs.cpp drives them), one
// table per SIMD level (optim/lbfgs_isa.cpp, compiled once per level). Each
// function covers the elements [b, e) of one chunk and returns that chunk's
// sum in the lane order of optim/flat_sum.h; the same source at every level,
// with no contracted operation, so the bits do not depend on the level.
#pragma once
#include <cstddef>

namespace fusedopt {

template <class T>
struct LbfgsPasses {
  // sum a*b
  double (*dot)(const T* a, const T* b, std::size_t b0, std::size_t e);
  // sum |a|
  double (*abs_sum)(const T* a, std::size_t b0, std::size_t e);
  // max |alpha * a| (NaN once seen)
  T (*scaled_abs_max)(const T* a, T alpha, std::size_t b0, std::size_t e);
  // y = g - prev; s = d * t; prev = g; returns sum y*s and stores sum y*y in *yy
  double (*new_pair)(const T* g, T* prev, const T* d, T t, T* y, T* s, std::size_t b0, std::size_t e, double* yy);
  // x = -g, returns sum w*x (0 when w is null)
  double (*negate_dot)(T* x, const T* g, const T* w, std::size_t b0, std::size_t e);
  // x = x + alpha * v, returns sum w*x
  double (*axpy_dot)(T* x, T alpha, const T* v, const T* w, std::size_t b0, std::size_t e);
  // x = (x + alpha * v) * h, returns sum w*x
  double (*axpy_scale_dot)(T* x, T alpha, const T* v, T h, const T* w, std::size_t b0, std::size_t e);
};

struct LbfgsTable {
  LbfgsPasses<float> f32;
  LbfgsPasses<double> f64;
};

}  // namespace fusedopt
