// fusedopt.torch's steady-state check in one call instead of Python passes
// over a group's parameters: whether every parameter's .grad is still the
// object the plan holds and its data_ptr() still the address it recorded.
// Read only; attribute lookups are Python's own, so tensor subclasses answer
// as they would to Python code.
#include <pybind11/pybind11.h>

#include "registry.h"

namespace fusedopt {

namespace {

bool same_grads_and_memory(py::handle params, py::handle grads, py::handle ptrs) {
  PyObject* ps = params.ptr();
  PyObject* gs = grads.ptr();
  PyObject* as = ptrs.ptr();
  if (!PyList_CheckExact(ps) || !PyList_CheckExact(gs) || !PyList_CheckExact(as)) return false;
  static PyObject* grad_name = PyUnicode_InternFromString("grad");
  static PyObject* data_ptr_name = PyUnicode_InternFromString("data_ptr");
  // each index is checked against the current sizes: a getter may change the lists
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(ps); ++i) {
    if (PyList_GET_SIZE(gs) != PyList_GET_SIZE(ps) || PyList_GET_SIZE(as) != PyList_GET_SIZE(ps)) return false;
    py::object p = py::reinterpret_borrow<py::object>(PyList_GET_ITEM(ps, i));
    py::object g = py::reinterpret_steal<py::object>(PyObject_GetAttr(p.ptr(), grad_name));
    if (!g) throw py::error_already_set();
    if (i >= PyList_GET_SIZE(gs) || g.ptr() != PyList_GET_ITEM(gs, i)) return false;
    py::object ptr = py::reinterpret_steal<py::object>(PyObject_CallMethodNoArgs(p.ptr(), data_ptr_name));
    if (!ptr) throw py::error_already_set();
    if (i >= PyList_GET_SIZE(as)) return false;
    const int eq = PyObject_RichCompareBool(ptr.ptr(), PyList_GET_ITEM(as, i), Py_EQ);
    if (eq < 0) throw py::error_already_set();
    if (!eq) return false;
  }
  return PyList_GET_SIZE(gs) == PyList_GET_SIZE(ps) && PyList_GET_SIZE(as) == PyList_GET_SIZE(ps);
}

}  // namespace

void register_unchanged(py::module_& m) {
  m.def("same_grads_and_memory", &same_grads_and_memory, py::arg("params"), py::arg("grads"), py::arg("ptrs"),
        "Whether lists params, grads and ptrs have equal lengths and every params[i].grad is grads[i] "
        "(the same object) and params[i].data_ptr() == ptrs[i] (fusedopt.torch's steady-state check).");
}

}  // namespace fusedopt
