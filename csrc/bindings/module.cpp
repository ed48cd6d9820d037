// The extension module fusedopt._core: imports NumPy's C API, then lets each
// binding topic register itself.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#define FUSEDOPT_IMPORT_NUMPY
#include "numpy_api.h"
#include "registry.h"

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
  if (_import_array() < 0) throw py::error_already_set();
  m.doc() = "fusedopt's fused C++ kernels (SIMD by runtime dispatch, OpenMP threads).";
  using namespace fusedopt;
  register_tree(m);
  register_step(m);
  register_runtime(m);
  register_optim(m);
  register_reduce(m);
  register_lbfgs(m);
  register_muon(m);
  register_quant8(m);
  register_unchanged(m);
  register_adafactor(m);
}
