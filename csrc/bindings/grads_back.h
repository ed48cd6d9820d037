// The gradients of a step with unscale_in_place (fusedopt.torch under
// GradScaler): the kernel stores g * (1/grad_scale) where it read g, as
// torch's fused optimizers leave .grad unscaled. A strided gradient is read
// from a writeable contiguous copy that is copied back after the kernel, in
// the same call; one that shares memory with what the step writes is refused.
#pragma once
#include <pybind11/pybind11.h>

#include <string>
#include <utility>
#include <vector>

#include "numpy_api.h"
#include "tree.h"

namespace py = pybind11;

namespace fusedopt {

class GradsBack {
 public:
  explicit GradsBack(bool on) : on_(on) {}
  bool on() const { return on_; }

  // The contiguous array the kernel reads (and, when on, writes) for the gradient
  // `a` of leaf `s`: `a` itself or a copy; kept alive in `held`.
  PyArrayObject* take(PyArrayObject* a, const LeafSpec& s, std::vector<py::object>& held);

  // After the overlap check: a ValueError when it read leaf `s`'s gradient from a
  // copy (`now` is not `taken`), which the kernel could not write back.
  void refuse_moved(const void* taken, const void* now, const LeafSpec& s) const;

  // The strided gradients' unscaled values, from their copies.
  void copy_back() const;

 private:
  bool on_;
  std::vector<std::pair<py::object, py::object>> strided_;  // (gradient, its copy)
};

}  // namespace fusedopt
