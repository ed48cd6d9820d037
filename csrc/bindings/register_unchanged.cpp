// fusedopt.torch's steady-state check in one call instead of Python passes
// over a group's parameters: whether every parameter's .grad is still the
// object the plan holds and its data_ptr() still the address it recorded,
// and (plan_unchanged) whether the group's values and the step counts shown
// are as the last step left them. Read only; attribute lookups are Python's
// own, so tensor subclasses answer as they would to Python code.
#include "numpy_api.h"  // first: it includes Python.h

#include <pybind11/pybind11.h>

#include <cmath>
#include <cstring>

#include "registry.h"

namespace fusedopt {

namespace {

// What Python's own lookups of p.grad and p.data_ptr() find on a tensor type, taken
// once per type: the getter of the 'grad' data descriptor and the C function of the
// 'data_ptr' method, valid while the type's version tag stands (any change to the type
// or its bases clears it). Calling them directly skips the generic attribute and method
// machinery, about a third of this check's cost per parameter.
struct TensorAccess {
  PyTypeObject* type = nullptr;
  unsigned int tag = 0;
  getter grad = nullptr;
  void* grad_closure = nullptr;
  PyCFunction data_ptr = nullptr;
};

PyObject* grad_name() {
  static PyObject* name = PyUnicode_InternFromString("grad");
  return name;
}

PyObject* data_ptr_name() {
  static PyObject* name = PyUnicode_InternFromString("data_ptr");
  return name;
}

bool tag_valid(PyTypeObject* tp) {
#ifdef Py_TPFLAGS_VALID_VERSION_TAG
  if (!PyType_HasFeature(tp, Py_TPFLAGS_VALID_VERSION_TAG)) return false;
#endif
  return tp->tp_version_tag != 0;
}

// The cached access for p's type, or nullptr: then the generic lookups (a type whose
// 'grad' is not a C getter or whose 'data_ptr' not a C method without arguments, e.g. a
// subclass overriding either in Python, or a type without a version tag).
const TensorAccess* access_of(PyTypeObject* tp) {
  static TensorAccess cache[2];  // parameters are torch.nn.Parameter or torch.Tensor
  static int next = 0;
  if (!tag_valid(tp)) return nullptr;
  for (const auto& c : cache)
    if (c.type == tp && c.tag == tp->tp_version_tag) return &c;
  // Looked up on the type, a descriptor gives itself; the lookup (re)assigns the tag
  py::object g = py::reinterpret_steal<py::object>(PyObject_GetAttr(reinterpret_cast<PyObject*>(tp), grad_name()));
  py::object d =
      py::reinterpret_steal<py::object>(PyObject_GetAttr(reinterpret_cast<PyObject*>(tp), data_ptr_name()));
  if (!g || !d) {
    PyErr_Clear();
    return nullptr;
  }
  if (!Py_IS_TYPE(g.ptr(), &PyGetSetDescr_Type) || !Py_IS_TYPE(d.ptr(), &PyMethodDescr_Type)) return nullptr;
  const PyGetSetDef* gs = reinterpret_cast<PyGetSetDescrObject*>(g.ptr())->d_getset;
  const PyMethodDef* md = reinterpret_cast<PyMethodDescrObject*>(d.ptr())->d_method;
  if (gs->get == nullptr || (md->ml_flags & (METH_VARARGS | METH_KEYWORDS | METH_NOARGS | METH_O | METH_FASTCALL)) !=
                                METH_NOARGS ||
      !tag_valid(tp))
    return nullptr;
  TensorAccess& c = cache[next];
  next = (next + 1) % 2;
  c = {tp, tp->tp_version_tag, gs->get, gs->closure, md->ml_meth};
  return &c;
}

// p.grad, as Python's lookup gives it (new reference; nullptr with an exception set).
PyObject* grad_of(PyObject* p, const TensorAccess* a) {
  return a ? a->grad(p, a->grad_closure) : PyObject_GetAttr(p, grad_name());
}

// p.data_ptr(), as Python's call gives it: an instance attribute of that name (a
// non-data descriptor's method can be shadowed) takes the generic call.
PyObject* data_ptr_of(PyObject* p, const TensorAccess* a) {
  if (a) {
    const PyCFunction method = a->data_ptr;  // taken first: the dict lookup may run Python code
    PyObject* dict = PyObject_GenericGetDict(p, nullptr);
    if (!dict) {
      PyErr_Clear();  // no instance dict: nothing shadows the method
    } else {
      const bool shadowed = PyDict_GET_SIZE(dict) != 0 && PyDict_Contains(dict, data_ptr_name()) != 0;
      Py_DECREF(dict);
      if (!shadowed) return method(p, nullptr);
    }
  }
  return PyObject_CallMethodNoArgs(p, data_ptr_name());
}

bool same_grads_and_memory(py::handle params, py::handle grads, py::handle ptrs) {
  PyObject* ps = params.ptr();
  PyObject* gs = grads.ptr();
  PyObject* as = ptrs.ptr();
  if (!PyList_CheckExact(ps) || !PyList_CheckExact(gs) || !PyList_CheckExact(as)) return false;
  // each index is checked against the current sizes: a getter may change the lists
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(ps); ++i) {
    if (PyList_GET_SIZE(gs) != PyList_GET_SIZE(ps) || PyList_GET_SIZE(as) != PyList_GET_SIZE(ps)) return false;
    py::object p = py::reinterpret_borrow<py::object>(PyList_GET_ITEM(ps, i));
    const TensorAccess* access = access_of(Py_TYPE(p.ptr()));
    py::object g = py::reinterpret_steal<py::object>(grad_of(p.ptr(), access));
    if (!g) throw py::error_already_set();
    if (i >= PyList_GET_SIZE(gs) || g.ptr() != PyList_GET_ITEM(gs, i)) return false;
    access = access_of(Py_TYPE(p.ptr()));  // the getter ran Python code: look again
    py::object ptr = py::reinterpret_steal<py::object>(data_ptr_of(p.ptr(), access));
    if (!ptr) throw py::error_already_set();
    if (i >= PyList_GET_SIZE(as)) return false;
    const int eq = PyObject_RichCompareBool(ptr.ptr(), PyList_GET_ITEM(as, i), Py_EQ);
    if (eq < 0) throw py::error_already_set();
    if (!eq) return false;
  }
  return PyList_GET_SIZE(gs) == PyList_GET_SIZE(ps) && PyList_GET_SIZE(as) == PyList_GET_SIZE(ps);
}

// Whether value v (now in the group) may stand for `old` (as the plan took it):
// the same object, or of the same exact type and equal (exact types first: True == 1,
// but a bool setting given 1 is refused). -1: the comparison raised (cleared).
int same_value(PyObject* v, PyObject* old) {
  if (v == old) return 1;
  if (Py_TYPE(v) != Py_TYPE(old)) return 0;
  const int eq = PyObject_RichCompareBool(v, old, Py_EQ);
  if (eq < 0) PyErr_Clear();  // e.g. a tuple now holding a tensor: the full check says what is wrong
  return eq;
}

// A new plain lr the steady path may take (as check_hyper would accept it): a float or
// int (exactly), 0 <= lr < inf.
bool plain_lr(PyObject* lr) {
  if (!PyFloat_CheckExact(lr) && !PyLong_CheckExact(lr)) return false;
  const double x = PyFloat_CheckExact(lr) ? PyFloat_AS_DOUBLE(lr) : PyLong_AsDouble(lr);
  if (x == -1.0 && PyErr_Occurred()) {
    PyErr_Clear();  // an int too large for a double: the full check refuses it
    return false;
  }
  return x >= 0.0 && x < INFINITY;
}

// Whether every array's bytes still equal its snapshot (a bytes object). NumPy's own
// accessors: its buffer export costs more than the rest of this check.
bool same_bytes(PyObject* arrays, PyObject* snapshots) {
  if (!PyList_CheckExact(arrays) || !PyList_CheckExact(snapshots) ||
      PyList_GET_SIZE(arrays) != PyList_GET_SIZE(snapshots))
    return false;
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(arrays); ++i) {
    PyObject* snap = PyList_GET_ITEM(snapshots, i);
    PyObject* a = PyList_GET_ITEM(arrays, i);
    if (!PyBytes_CheckExact(snap) || !PyArray_Check(a)) return false;
    auto* arr = reinterpret_cast<PyArrayObject*>(a);
    if (!PyArray_IS_C_CONTIGUOUS(arr) || PyArray_NBYTES(arr) != PyBytes_GET_SIZE(snap) ||
        std::memcmp(PyArray_DATA(arr), PyBytes_AS_STRING(snap), static_cast<size_t>(PyBytes_GET_SIZE(snap))) != 0)
      return false;
  }
  return true;
}

// The whole steady-state check of a plan: None when the next step needs the full check,
// else the group's lr to step with (raw[0] itself when unchanged).
py::object plan_unchanged(py::handle group, py::handle keys, py::handle raw, py::handle grads, py::handle ptrs,
                          py::handle watched, py::handle shown) {
  PyObject* g = group.ptr();
  PyObject* ks = keys.ptr();
  PyObject* rs = raw.ptr();
  if (!PyDict_CheckExact(g) || !PyTuple_CheckExact(ks) || !PyTuple_CheckExact(rs) ||
      PyTuple_GET_SIZE(ks) != PyTuple_GET_SIZE(rs) || PyTuple_GET_SIZE(ks) == 0)
    return py::none();
  py::object lr;
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(ks); ++i) {
    PyObject* v = PyDict_GetItemWithError(g, PyTuple_GET_ITEM(ks, i));  // borrowed
    if (!v) {
      if (PyErr_Occurred()) PyErr_Clear();
      return py::none();  // a key removed: the full check says what
    }
    py::object held = py::reinterpret_borrow<py::object>(v);  // the comparisons below may run Python code
    PyObject* old = PyTuple_GET_ITEM(rs, i);
    const int same = same_value(v, old);
    if (same == 1) {
      if (i == 0) lr = py::reinterpret_borrow<py::object>(old);
    } else if (i == 0 && same == 0 && plain_lr(v)) {
      lr = std::move(held);  // a scheduler's new plain lr, checked as check_hyper checks it
    } else {
      return py::none();
    }
  }
  static PyObject* params_name = PyUnicode_InternFromString("params");
  PyObject* params = PyDict_GetItemWithError(g, params_name);
  if (!params) {
    if (PyErr_Occurred()) PyErr_Clear();
    return py::none();
  }
  py::object held_params = py::reinterpret_borrow<py::object>(params);
  if (!same_grads_and_memory(held_params, grads, ptrs) || !same_bytes(watched.ptr(), shown.ptr()))
    return py::none();
  return lr;
}

}  // namespace

void register_unchanged(py::module_& m) {
  m.def("same_grads_and_memory", &same_grads_and_memory, py::arg("params"), py::arg("grads"), py::arg("ptrs"),
        "Whether lists params, grads and ptrs have equal lengths and every params[i].grad is grads[i] "
        "(the same object) and params[i].data_ptr() == ptrs[i] (fusedopt.torch's steady-state check).");
  m.def("plan_unchanged", &plan_unchanged, py::arg("group"), py::arg("keys"), py::arg("raw"), py::arg("grads"),
        py::arg("ptrs"), py::arg("watched"), py::arg("shown"),
        "fusedopt.torch's steady-state check of one plan: None unless every group[keys[i]] is raw[i] or of its "
        "exact type and equal (keys[0], the lr, may also be any float or int in [0, inf)), "
        "same_grads_and_memory(group['params'], grads, ptrs) holds and every array of the list `watched` "
        "has the bytes of the same entry of the list `shown`; else the lr to step with (raw[0] when unchanged).");
}

}  // namespace fusedopt
