#include "grads_back.h"

#include "overlap.h"

namespace fusedopt {

PyArrayObject* GradsBack::take(PyArrayObject* a, const LeafSpec& s, std::vector<py::object>& held) {
  PyObject* o = reinterpret_cast<PyObject*>(a);
  if (on_ && !PyArray_ISWRITEABLE(a))
    throw py::value_error(where("grads", s) + ": the array is read-only; unscale_in_place writes the unscaled gradient into it");
  if (PyArray_ISCARRAY_RO(a) && PyArray_ISNOTSWAPPED(a)) {
    held.push_back(py::reinterpret_borrow<py::object>(o));
    return a;
  }
  PyObject* c = PyArray_FromAny(o, PyArray_DescrFromType(PyArray_TYPE(a)), 0, 0,
                                (on_ ? NPY_ARRAY_CARRAY : NPY_ARRAY_CARRAY_RO) | NPY_ARRAY_ENSURECOPY, nullptr);
  if (!c) throw py::error_already_set();
  held.push_back(py::reinterpret_steal<py::object>(c));
  if (on_) strided_.emplace_back(py::reinterpret_borrow<py::object>(o), held.back());
  return reinterpret_cast<PyArrayObject*>(c);
}

void GradsBack::refuse_moved(const void* taken, const void* now, const LeafSpec& s) const {
  if (on_ && taken != now)
    throw py::value_error(where("grads", s) + " shares memory with what the step writes: unscale_in_place cannot write the "
                          "unscaled gradient back into it");
}

void GradsBack::copy_back() const {
  for (const auto& [grad, copy] : strided_)
    if (PyArray_CopyInto(reinterpret_cast<PyArrayObject*>(grad.ptr()), reinterpret_cast<PyArrayObject*>(copy.ptr())) < 0)
      throw py::error_already_set();
}

}  // namespace fusedopt
