// NumPy arrays for the arenas: 64-byte aligned buffers and views into them.
#pragma once
#include <pybind11/pybind11.h>

#include <cstddef>

#include "common/multi_tensor.h"

namespace py = pybind11;

namespace fusedopt {

// NumPy's type number of a dtype; bfloat16's is ml_dtypes' (-1 while
// ml_dtypes is not imported: then no array can be bfloat16).
int type_number(Dtype dtype);
// The dtype of a NumPy type number, or -1 for another type.
int dtype_of_type_number(int type);

// A 1-d array of n elements whose data starts on a 64-byte boundary.
py::object aligned_empty(std::size_t n, Dtype dtype);
// The same for an output arena (a step's delta): large ones reuse the buffer
// of an output arena that no array uses any more (see arrays.cpp).
py::object recycled_empty(std::size_t n, Dtype dtype);
// A C-contiguous view of `shape` into `arena` starting at element `offset`.
py::object arena_view(py::handle arena, Dtype dtype, std::size_t offset, const std::vector<Py_ssize_t>& shape);
// Data pointer of an arena after checking it is what the plan needs.
void* arena_data(py::handle arena, Dtype dtype, std::size_t need, const char* what);
// Whether the n elements at data are all finite (check_finite of both families).
bool all_finite(const void* data, Dtype dtype, std::size_t n);

}  // namespace fusedopt
