// Picks, once, the kernel table of the best instruction set this CPU has.
#pragma once
#include <string>
#include <vector>
#include "paysage/kernel_modes.h"
#include "optim/rules.h"

namespace fusedopt {

// The table in use: chosen at first use from the CPU's features, lowered by
// the environment variable FUSEDOPT_SIMD=avx512|avx2|baseline.
const KernelTable& kernels();
// The optim family's kernels of the same level.
const OptimTable& optim_kernels();
std::string simd_level();
// The same level as a number, for the tables chosen per step (no string built).
enum class SimdLevel { BASELINE, AVX2, AVX512 };
SimdLevel simd_level_id();
// Levels compiled into this build, and those of them this CPU can run.
std::vector<std::string> simd_levels_compiled();
std::vector<std::string> simd_levels_supported();
// Switch level at run time (tests use it to cover every path in one process);
// throws std::invalid_argument for a level that is not compiled or supported.
void set_simd_level(const std::string& level);

}  // namespace fusedopt
