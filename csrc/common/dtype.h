// The two element types of the paysage family and their facts, in one place.
#pragma once
#include <cstddef>

namespace fusedopt {

enum Dtype : int { F32 = 0, F64 = 1 };

constexpr std::size_t item_size(Dtype d) { return d == F32 ? 4 : 8; }
constexpr const char* dtype_name(Dtype d) { return d == F32 ? "float32" : "float64"; }
// NumPy's type numbers (NPY_FLOAT, NPY_DOUBLE; checked against NumPy's headers
// in bindings/numpy_api.h), so that kernels need no NumPy header.
constexpr int npy_type_number(Dtype d) { return d == F32 ? 11 : 12; }

}  // namespace fusedopt
