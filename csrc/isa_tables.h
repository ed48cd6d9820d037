// The table fillers of each instruction set's copy of the kernels
// (kernels_isa.cpp, textbook_isa.cpp); only the copies a build compiles are defined.
#pragma once
#include "kernel_modes.h"
#include "textbook_rules.h"

namespace fusedopt {
namespace baseline { void fill_table(KernelTable&); void fill_textbook_table(TextbookTable&); }
namespace avx2 { void fill_table(KernelTable&); void fill_textbook_table(TextbookTable&); }
namespace avx512 { void fill_table(KernelTable&); void fill_textbook_table(TextbookTable&); }
}  // namespace fusedopt
