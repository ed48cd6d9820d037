// Compiled once per instruction set (see CMakeLists.txt): FUSEDOPT_ISA names
// the namespace of this copy, and the flags of its target pick the SIMD width.
#include <utility>
#include "paysage/rules.h"
#include "paysage/step_math.h"

#ifndef FUSEDOPT_ISA
#error "FUSEDOPT_ISA must name the instruction set of this translation unit"
#endif
#define FUSEDOPT_STR2(x) #x
#define FUSEDOPT_STR(x) FUSEDOPT_STR2(x)

namespace fusedopt {
namespace FUSEDOPT_ISA {

template <std::size_t... I>
static void fill(KernelTable& t, std::index_sequence<I...>) {
  ((t.f32[kKernels[I].mode] = &run_segment<float, kKernels[I].mode>), ...);
  ((t.f64[kKernels[I].mode] = &run_segment<double, kKernels[I].mode>), ...);
}

void fill_table(KernelTable& t) {
  fill(t, std::make_index_sequence<kKernels.size()>{});
  t.average32 = &average_rows<float>;
  t.average64 = &average_rows<double>;
  t.probe = &run_probe;
  t.check_divisor = kHaveExactDivision ? &check_divisor : nullptr;
  t.name = FUSEDOPT_STR(FUSEDOPT_ISA);
}

}  // namespace FUSEDOPT_ISA
}  // namespace fusedopt
