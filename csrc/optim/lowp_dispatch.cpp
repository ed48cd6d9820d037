// The bfloat16/float16 kernel table of the SIMD level in use (the level that
// common/dispatch.cpp chose or set_simd_level switched to).
#include "common/level_tables.h"
#include "optim/lowp_types.h"

namespace fusedopt {

namespace baseline { void fill_lowp_table(LowpTable&); }
namespace avx2 { void fill_lowp_table(LowpTable&); }
namespace avx512 { void fill_lowp_table(LowpTable&); }

const LowpTable& lowp_kernels() {
  static const LevelTables<LowpTable> tables(baseline::fill_lowp_table, FUSEDOPT_IF_AVX2(avx2::fill_lowp_table),
                                             FUSEDOPT_IF_AVX512(avx512::fill_lowp_table));
  return tables.current();
}

}  // namespace fusedopt
