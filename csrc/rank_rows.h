// The element order of the data-parallel average (fusedopt.distributed), in
// one place for its two users: the separate pass (rank_sum.cpp) and the step
// kernels that average a chunk of rows on the fly (multi_tensor.cpp). Both
// reach it through the kernel table, so it runs at the step's SIMD level.
#pragma once
#include <cmath>
#include <cstddef>

#ifndef FUSEDOPT_ISA
#error "include only from a translation unit compiled for one instruction set (kernels_isa.cpp)"
#endif

namespace fusedopt {
namespace FUSEDOPT_ISA {

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
