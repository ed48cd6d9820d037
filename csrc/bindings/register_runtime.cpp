// Binding of run-time settings: SIMD level, threads, build facts, and the
// bandwidth probe used by the benchmarks.
#include <pybind11/stl.h>

#include <stdexcept>

#include "common/dispatch.h"
#include "paysage/exact_divisors.h"
#include "common/multi_tensor.h"
#include "common/threads.h"
#include "numpy_api.h"
#include "registry.h"

namespace fusedopt {

namespace {

float* probe_data(py::handle a, std::size_t n, const char* name) {
  PyObject* o = a.ptr();
  if (!PyArray_Check(o) || PyArray_TYPE(reinterpret_cast<PyArrayObject*>(o)) != NPY_FLOAT ||
      !PyArray_ISCARRAY(reinterpret_cast<PyArrayObject*>(o)) ||
      static_cast<std::size_t>(PyArray_SIZE(reinterpret_cast<PyArrayObject*>(o))) != n)
    throw py::value_error(std::string("probe: ") + name + " must be a writeable C-contiguous float32 array like g");
  return static_cast<float*>(PyArray_DATA(reinterpret_cast<PyArrayObject*>(o)));
}

std::string compiler() {
#if defined(__clang__)
  return "clang " __clang_version__;
#elif defined(__GNUC__)
  return "gcc " __VERSION__;
#else
  return "unknown";
#endif
}

}  // namespace

void register_runtime(py::module_& m) {
  m.def("simd_level", &simd_level, "The SIMD level in use: 'avx512', 'avx2' or 'baseline'.");
  m.def("simd_levels_compiled", &simd_levels_compiled, "SIMD levels compiled into this build, best first.");
  m.def("simd_levels_supported", &simd_levels_supported, "Compiled SIMD levels this CPU can run, best first.");
  // pybind11 raises std::invalid_argument as ValueError.
  m.def("_set_simd_level", &set_simd_level, py::arg("level"),
        "Switch SIMD level (for tests); FUSEDOPT_SIMD does the same at import.");
  const std::string env_problem = init_num_threads();
  if (!env_problem.empty() && PyErr_WarnEx(PyExc_RuntimeWarning, env_problem.c_str(), 1) < 0)
    throw py::error_already_set();
  m.def("get_num_threads", &get_num_threads,
        "Threads a large step uses (default: OMP_NUM_THREADS, else the cores; 1 in a child forked after a threaded "
        "step).");
  m.def("set_num_threads", &set_num_threads, py::arg("n"),
        "Set the threads a large step uses: 1..max_threads (1 without OpenMP).");
  m.attr("max_threads") = max_threads();
  m.def("have_openmp", &have_openmp);
  m.def("_set_exact_division", &set_exact_division, py::arg("on"),
        "Divide float32 leaves by 1 - w and 1 - w2 with checked FMAs (on, default) or the divider (off).");
  m.def("_exact_division", &exact_division, "Whether checked FMA division by the step's constants is on.");
  m.def("_exact_division_active", &exact_division_active,
        "Whether it is on and the selected SIMD level has it (AVX-512).");
  m.def("_check_divisor", [](float c, float r) {
    bool (*check)(float, float) = kernels().check_divisor;
    return check != nullptr && check(c, r);
  }, py::arg("c"), py::arg("r"), "Whether the selected level's FMA division by c with reciprocal r equals the divider on [1, 2).");
  m.def("_exact_reciprocal", &exact_reciprocal, py::arg("c"),
        "1/c if float32 division by c may use FMAs at the selected level (checked once per c), else 0.");
  m.def("_judge_parallel_step", &judge_parallel_step_for_test, py::arg("chunks"), py::arg("by_caller"),
        py::arg("threads"), py::arg("worked"), py::arg("waited"),
        "Judge a parallel step with these figures (as the step does); returns the serial steps now ahead.");
  m.def("_reset_parallel_judge", &reset_parallel_judge, "Forget every judgement of parallel steps.");
  m.attr("compiler") = compiler();
  m.attr("chunk_elements") = kChunk;
  m.attr("serial_below") = kSerialBelow;
  m.def(
      "probe",
      [](py::handle g, py::handle p, py::handle mm, py::handle v) {
        if (!PyArray_Check(g.ptr())) throw py::type_error("probe: g must be a float32 array");
        const std::size_t n = static_cast<std::size_t>(PyArray_SIZE(reinterpret_cast<PyArrayObject*>(g.ptr())));
        float* pg = probe_data(g, n, "g");
        float* pp = probe_data(p, n, "p");
        float* pm = probe_data(mm, n, "m");
        float* pv = probe_data(v, n, "v");
        py::gil_scoped_release nogil;
        return run_probe(pg, pp, pm, pv, n);
      },
      py::arg("g"), py::arg("p"), py::arg("m"), py::arg("v"),
      "Seconds for one pass reading g, p, m, v and writing p, m, v (ADAM's in-place traffic).");
}

}  // namespace fusedopt
