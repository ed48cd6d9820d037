// The textbook kernels of one instruction set (compiled once per level, see
// the fusedopt_isa function in CMakeLists.txt): every entry of kRuleTable,
// for float32 and float64.
#include <utility>
#include "optim/math.h"

#ifndef FUSEDOPT_ISA
#error "FUSEDOPT_ISA must name the instruction set of this translation unit"
#endif

namespace fusedopt {
namespace FUSEDOPT_ISA {

template <std::size_t... I>
static void fill(TextbookTable& t, std::index_sequence<I...>) {
  ((t.f32[I] = &run_textbook_segment<float, kRuleTable[I].rule, kRuleTable[I].decay, kRuleTable[I].phase>), ...);
  ((t.f64[I] = &run_textbook_segment<double, kRuleTable[I].rule, kRuleTable[I].decay, kRuleTable[I].phase>), ...);
}

void fill_textbook_table(TextbookTable& t) {
  fill(t, std::make_index_sequence<kRuleTable.size()>{});
  t.sumsq32 = &sum_squares<float>;
  t.sumsq64 = &sum_squares<double>;
}

}  // namespace FUSEDOPT_ISA
}  // namespace fusedopt
