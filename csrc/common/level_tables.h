// One table of kernels per SIMD level compiled into this build, each filled
// once by that level's fill function; current() is the table of the level in
// use (chosen from the CPU, FUSEDOPT_SIMD or set_simd_level).
#pragma once
#include "common/dispatch.h"

#if defined(FUSEDOPT_HAVE_AVX2)
#define FUSEDOPT_IF_AVX2(fill) (fill)
#else
#define FUSEDOPT_IF_AVX2(fill) nullptr
#endif
#if defined(FUSEDOPT_HAVE_AVX512)
#define FUSEDOPT_IF_AVX512(fill) (fill)
#else
#define FUSEDOPT_IF_AVX512(fill) nullptr
#endif

namespace fusedopt {

template <class Table>
class LevelTables {
 public:
  using Fill = void (*)(Table&);
  // A level that is not compiled passes nullptr (FUSEDOPT_IF_AVX2/AVX512).
  LevelTables(Fill baseline, Fill avx2, Fill avx512) {
    baseline(baseline_);
    if (avx2) avx2(avx2_);
    if (avx512) avx512(avx512_);
  }
  const Table& current() const {
    const SimdLevel level = simd_level_id();
    return level == SimdLevel::AVX512 ? avx512_ : level == SimdLevel::AVX2 ? avx2_ : baseline_;
  }

 private:
  Table baseline_{}, avx2_{}, avx512_{};
};

}  // namespace fusedopt
