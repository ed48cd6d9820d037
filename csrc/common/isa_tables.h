// The table fillers of each instruction set's copy of the kernels
// (paysage/kernels_isa.cpp, optim/kernels_isa.cpp); only the copies a build compiles are defined.
#pragma once
#include "paysage/kernel_modes.h"
#include "optim/rules.h"

namespace fusedopt {
namespace baseline { void fill_table(KernelTable&); void fill_optim_table(OptimTable&); }
namespace avx2 { void fill_table(KernelTable&); void fill_optim_table(OptimTable&); }
namespace avx512 { void fill_table(KernelTable&); void fill_optim_table(OptimTable&); }
}  // namespace fusedopt
