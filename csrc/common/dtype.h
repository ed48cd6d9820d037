// The element types of the kernels and their facts, in one place. The paysage
// family steps float32 and float64; the optim family also bfloat16 and
// float16 leaves (docs/lowbit.md), whose math runs in float32.
#pragma once
#include <cstddef>

namespace fusedopt {

enum Dtype : int { F32 = 0, F64 = 1, BF16 = 2, F16 = 3 };
constexpr int kNumDtypes = 4;

constexpr bool is_low(Dtype d) { return d == BF16 || d == F16; }
// Tables indexed by Dtype: a step asks these of every leaf, and one load is
// cheaper than a chain of comparisons.
constexpr std::size_t kItemSize[kNumDtypes] = {4, 8, 2, 2};
constexpr std::size_t item_size(Dtype d) { return kItemSize[d]; }
constexpr const char* dtype_name(Dtype d) {
  return d == F32 ? "float32" : d == F64 ? "float64" : d == BF16 ? "bfloat16" : "float16";
}
// NumPy's type numbers (NPY_FLOAT, NPY_DOUBLE, NPY_HALF; checked against
// NumPy's headers in bindings/numpy_api.h), so that kernels need no NumPy
// header. bfloat16 (ml_dtypes) has none fixed: bindings/arrays.h's
// type_number asks NumPy at run time.
constexpr int kNpyTypeNumber[kNumDtypes] = {11, 12, -1, 23};
constexpr int npy_type_number(Dtype d) { return kNpyTypeNumber[d]; }

}  // namespace fusedopt
