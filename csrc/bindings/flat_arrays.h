// Checked access to the plain arrays the LBFGS and Muon passes take: each is
// a C-contiguous, aligned float32 or float64 ndarray; a refusal names the
// argument and says what was expected.
#pragma once
#include <pybind11/pybind11.h>

#include <cstddef>
#include <string>
#include <vector>

#include "common/dtype.h"

namespace py = pybind11;

namespace fusedopt {

struct ArrayRef {
  Dtype dtype;
  void* data;
  std::size_t n;
};

// `want` < 0: float32 or float64; else that Dtype. `n` < 0: any size.
ArrayRef array_ref(py::handle obj, const std::string& what, bool writeable, int want = -1, long long n = -1);

// The arrays of a list (each checked as above, all of one dtype), with
// references held in `keep` so that they outlive a call without the GIL.
std::vector<ArrayRef> array_list(py::handle seq, const std::string& what, bool writeable, int want,
                                 std::vector<py::object>& keep);

// Refuses (ValueError naming both) a written array whose memory overlaps
// another written array or a read one; `same_ok`: a read array that is exactly
// a written one (an element-wise pass in place) is allowed.
struct Named {
  ArrayRef a;
  std::string name;
};
void check_disjoint(const std::vector<Named>& writes, const std::vector<Named>& reads, bool same_ok);

// A step's commit mark (fusedopt.torch's Muon and Adafactor): a writeable 1-element
// float64 array that the call sets to 1 once all its writes are done, in the same
// call, so that no exception from a signal handler can come between the two
// (nullptr for None). Checked with the other arguments, before anything is written.
double* done_mark(py::handle done, const std::string& what);

}  // namespace fusedopt
