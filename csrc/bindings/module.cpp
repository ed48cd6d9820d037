// The extension module fusedopt._core: imports NumPy's C API, then lets each
// binding topic register itself.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#define FUSEDOPT_IMPORT_NUMPY
#include "numpy_api.h"
#include "../mode_list.h"
#include "registry.h"

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
  if (_import_array() < 0) throw py::error_already_set();
  m.doc() = "fusedopt's fused C++ kernels (SIMD by runtime dispatch, OpenMP threads).";
  using namespace fusedopt;
  py::dict consts;
  consts["MOMENT_NONE"] = static_cast<unsigned>(MOMENT_NONE);
  consts["MOMENT_INIT"] = static_cast<unsigned>(MOMENT_INIT);
  consts["MOMENT_EMA"] = static_cast<unsigned>(MOMENT_EMA);
  consts["DIR_NONE"] = static_cast<unsigned>(DIR_NONE);
  consts["DIR_G"] = static_cast<unsigned>(DIR_G);
  consts["DIR_M"] = static_cast<unsigned>(DIR_M);
  consts["DIR_NORM_G"] = static_cast<unsigned>(DIR_NORM_G);
  consts["DIR_NORM_M"] = static_cast<unsigned>(DIR_NORM_M);
  consts["OUT_NONE"] = static_cast<unsigned>(OUT_NONE);
  consts["OUT_WRITE"] = static_cast<unsigned>(OUT_WRITE);
  consts["OUT_INPLACE"] = static_cast<unsigned>(OUT_INPLACE);
  consts["OUT_BOTH"] = static_cast<unsigned>(OUT_BOTH);
  consts["MEAN_SHIFT"] = static_cast<unsigned>(MEAN_SHIFT);
  consts["SQ_SHIFT"] = static_cast<unsigned>(SQ_SHIFT);
  consts["DIR_SHIFT"] = static_cast<unsigned>(DIR_SHIFT);
  consts["OUT_SHIFT"] = static_cast<unsigned>(OUT_SHIFT);
  consts["UNBIASED"] = static_cast<unsigned>(UNBIASED);
  consts["MEAN_DIV"] = static_cast<unsigned>(MEAN_DIV);
  consts["SCALE"] = static_cast<unsigned>(SCALE);
  m.attr("MODE_BITS") = consts;
  m.attr("compiled_modes") = py::tuple(py::cast(std::vector<unsigned>(kModes.begin(), kModes.end())));
  register_tree(m);
  register_step(m);
  register_runtime(m);
  register_optim(m);
  register_reduce(m);
}
