// The bfloat16/float16 kernel table of the SIMD level in use (the level that
// common/dispatch.cpp chose or set_simd_level switched to).
#include <string>
#include "common/dispatch.h"
#include "optim/lowp_types.h"

namespace fusedopt {

namespace baseline { void fill_lowp_table(LowpTable&); }
namespace avx2 { void fill_lowp_table(LowpTable&); }
namespace avx512 { void fill_lowp_table(LowpTable&); }

namespace {

struct LowpTables {
  LowpTable baseline_, avx2_, avx512_;
  LowpTables() {
    baseline::fill_lowp_table(baseline_);
#ifdef FUSEDOPT_HAVE_AVX2
    avx2::fill_lowp_table(avx2_);
#endif
#ifdef FUSEDOPT_HAVE_AVX512
    avx512::fill_lowp_table(avx512_);
#endif
  }
};

}  // namespace

const LowpTable& lowp_kernels() {
  static const LowpTables tables;
  const std::string level = simd_level();
  if (level == "avx512") return tables.avx512_;
  if (level == "avx2") return tables.avx2_;
  return tables.baseline_;
}

}  // namespace fusedopt
