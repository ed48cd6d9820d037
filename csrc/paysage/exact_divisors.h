// Which constants of a step (1 - w, 1 - w2) the float32 kernels may divide by
// with FMAs instead of the divider (see exact_division.h): each new constant
// is checked once against the divider, bit for bit, and remembered.
#pragma once

namespace fusedopt {

// 1 / c if the selected SIMD level can divide by c exactly without the
// divider (checked on first use of c), else 0.
float exact_reciprocal(float c);

// On unless FUSEDOPT_FMA_DIVISION=0 (or off) is set; off makes every step use
// the divider (tests and benchmarks compare the two). Thread-safe.
void set_exact_division(bool on);
bool exact_division();
// On, and the selected SIMD level has it (AVX-512).
bool exact_division_active();

}  // namespace fusedopt
