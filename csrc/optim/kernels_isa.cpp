// The optim family's kernels of one instruction set (compiled once per level,
// see the fusedopt_isa function in CMakeLists.txt): every entry of
// kOptimKernels, for float32 and float64, and every rule's per-step scalars.
#include <utility>
#include "optim/math.h"

#ifndef FUSEDOPT_ISA
#error "FUSEDOPT_ISA must name the instruction set of this translation unit"
#endif

namespace fusedopt {
namespace FUSEDOPT_ISA {

template <std::size_t... I, std::size_t... R>
static void fill(OptimTable& t, std::index_sequence<I...>, std::index_sequence<R...>) {
  ((t.f32[I] = &run_optim_segment<float, kOptimKernels[I].rule, kOptimKernels[I].decay, kOptimKernels[I].phase>), ...);
  ((t.f64[I] = &run_optim_segment<double, kOptimKernels[I].rule, kOptimKernels[I].decay, kOptimKernels[I].phase>), ...);
  ((t.values[R] = &step_values<OptimRule(R)>), ...);
}

void fill_optim_table(OptimTable& t) {
  fill(t, std::make_index_sequence<kOptimKernels.size()>{}, std::make_index_sequence<kNumOptimRules>{});
  t.sumsq32 = &sum_squares<float>;
  t.sumsq64 = &sum_squares<double>;
}

}  // namespace FUSEDOPT_ISA
}  // namespace fusedopt
