#include "arrays.h"

#include <cstdint>
#include <string>

#include "numpy_api.h"

namespace fusedopt {

namespace {
int npy_type(Dtype d) { return d == F32 ? NPY_FLOAT : NPY_DOUBLE; }
}  // namespace

py::object arena_view(py::handle arena, Dtype dtype, std::size_t offset, const std::vector<Py_ssize_t>& shape) {
  PyArrayObject* base = reinterpret_cast<PyArrayObject*>(arena.ptr());
  char* data = static_cast<char*>(PyArray_DATA(base)) + offset * (dtype == F32 ? 4 : 8);
  std::vector<npy_intp> dims(shape.begin(), shape.end());
  PyObject* view = PyArray_New(&PyArray_Type, static_cast<int>(dims.size()), dims.data(), npy_type(dtype), nullptr,
                               data, 0, NPY_ARRAY_CARRAY, nullptr);
  if (!view) throw py::error_already_set();
  Py_INCREF(arena.ptr());
  if (PyArray_SetBaseObject(reinterpret_cast<PyArrayObject*>(view), arena.ptr()) < 0) {
    Py_DECREF(view);
    throw py::error_already_set();
  }
  return py::reinterpret_steal<py::object>(view);
}

py::object aligned_empty(std::size_t n, Dtype dtype) {
  const std::size_t item = dtype == F32 ? 4 : 8;
  npy_intp raw_n = static_cast<npy_intp>(n + 64 / item);
  PyObject* raw = PyArray_EMPTY(1, &raw_n, npy_type(dtype), 0);
  if (!raw) throw py::error_already_set();
  py::object owner = py::reinterpret_steal<py::object>(raw);
  const auto addr = reinterpret_cast<std::uintptr_t>(PyArray_DATA(reinterpret_cast<PyArrayObject*>(raw)));
  const std::size_t skip = ((64 - addr % 64) % 64) / item;
  return arena_view(owner, dtype, skip, {static_cast<Py_ssize_t>(n)});
}

void* arena_data(py::handle arena, Dtype dtype, std::size_t need, const char* what) {
  PyObject* o = arena.ptr();
  if (!PyArray_Check(o)) throw py::type_error(std::string(what) + " arena must be a numpy array");
  PyArrayObject* a = reinterpret_cast<PyArrayObject*>(o);
  if (PyArray_TYPE(a) != npy_type(dtype) || !PyArray_ISCARRAY(a) || !PyArray_ISNOTSWAPPED(a) ||
      static_cast<std::size_t>(PyArray_SIZE(a)) < need)
    throw py::value_error(std::string(what) + " arena must be a writeable C-contiguous " +
                          (dtype == F32 ? "float32" : "float64") + " array of at least " + std::to_string(need) +
                          " elements");
  return PyArray_DATA(a);
}

}  // namespace fusedopt
