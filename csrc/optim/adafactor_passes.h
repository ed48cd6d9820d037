// Adafactor's per-row element work (optim/adafactor.cpp drives it), one table
// per SIMD level (optim/adafactor_isa.cpp, compiled once per level). A row is
// a factored leaf's last dimension or a run of an unfactored leaf; every sum
// is in the 16-lane order of optim/flat_sum.h, and the same source at every
// level with no contracted operation gives the same bits.
#pragma once
#include <cstddef>

namespace fusedopt {

template <class T>
struct AdafactorPasses {
  // Factored row of `cols`: sum g*g (returned) and sum p*p (*pp); g*g of column j
  // added to part[j].
  double (*row_first)(const T* p, const T* g, std::size_t cols, double* part, double* pp);
  // Unfactored elements [b, e): var = lerp(old, g*g, w) (old null: zeros);
  // returns sum p*p.
  double (*var_first)(const T* p, const T* g, const T* old, T* var, std::size_t b, std::size_t e, T w);
  // The update u = rsqrt(max(v, floor)) * g (g negated with maximize), where v is
  // ri * c[j] / den for a factored row of `cols` and var[i] for elements [b, e):
  // returns sum u*u, or (apply) writes p = (decays ? p * decay : p) + coef * u.
  double (*row_update_sq)(const T* g, const T* c, T ri, T den, T floor, bool maximize, std::size_t cols);
  double (*var_update_sq)(const T* g, const T* var, T floor, bool maximize, std::size_t b, std::size_t e);
  void (*row_apply)(T* p, const T* g, const T* c, T ri, T den, T floor, bool maximize, T coef, T decay,
                    bool decays, std::size_t cols);
  void (*var_apply)(T* p, const T* g, const T* var, T floor, bool maximize, T coef, T decay, bool decays,
                    std::size_t b, std::size_t e);
};

struct AdafactorTable {
  AdafactorPasses<float> f32;
  AdafactorPasses<double> f64;
};

}  // namespace fusedopt
