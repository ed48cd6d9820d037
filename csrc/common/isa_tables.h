// The table fillers of each instruction set's copy of the kernels
// (paysage/kernels_isa.cpp, optim/kernels_isa.cpp); only the copies a build compiles are defined.
#pragma once
#include "paysage/kernel_modes.h"
#include "optim/rules.h"

namespace fusedopt {
namespace baseline { void fill_table(KernelTable&); void fill_textbook_table(TextbookTable&); }
namespace avx2 { void fill_table(KernelTable&); void fill_textbook_table(TextbookTable&); }
namespace avx512 { void fill_table(KernelTable&); void fill_textbook_table(TextbookTable&); }
}  // namespace fusedopt
