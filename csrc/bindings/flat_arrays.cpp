#include "flat_arrays.h"

#include "numpy_api.h"

namespace fusedopt {

ArrayRef array_ref(py::handle obj, const std::string& what, bool writeable, int want, long long n) {
  PyObject* o = obj.ptr();
  if (!PyArray_Check(o)) throw py::type_error(what + " must be a numpy array, got " + std::string(Py_TYPE(o)->tp_name));
  auto* a = reinterpret_cast<PyArrayObject*>(o);
  const int type = PyArray_TYPE(a);
  if (type != NPY_FLOAT && type != NPY_DOUBLE)
    throw py::type_error(what + " must be float32 or float64, got " +
                         py::str(py::handle(reinterpret_cast<PyObject*>(PyArray_DESCR(a)))).cast<std::string>());
  const Dtype dtype = type == NPY_FLOAT ? F32 : F64;
  if (want >= 0 && dtype != static_cast<Dtype>(want))
    throw py::type_error(what + " must be " + dtype_name(static_cast<Dtype>(want)) + ", got " + dtype_name(dtype));
  if (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a))
    throw py::value_error(what + " must be C-contiguous and aligned");
  if (writeable && !PyArray_ISWRITEABLE(a)) throw py::value_error(what + " must be writeable");
  const std::size_t size = static_cast<std::size_t>(PyArray_SIZE(a));
  if (n >= 0 && size != static_cast<std::size_t>(n))
    throw py::value_error(what + " must have " + std::to_string(n) + " elements, got " + std::to_string(size));
  return {dtype, PyArray_DATA(a), size};
}

std::vector<ArrayRef> array_list(py::handle seq, const std::string& what, bool writeable, int want,
                                 std::vector<py::object>& keep) {
  if (!PyList_Check(seq.ptr())) throw py::type_error(what + " must be a list of numpy arrays");
  const py::list items = py::reinterpret_borrow<py::list>(seq);
  std::vector<ArrayRef> out;
  for (std::size_t k = 0; k < items.size(); ++k) {
    py::object item = items[k];
    out.push_back(array_ref(item, what + "[" + std::to_string(k) + "]", writeable, want));
    want = out.back().dtype;
    keep.push_back(std::move(item));
  }
  return out;
}

namespace {

bool overlap(const ArrayRef& x, const ArrayRef& y) {
  const char* a = static_cast<const char*>(x.data);
  const char* b = static_cast<const char*>(y.data);
  const std::size_t na = x.n * item_size(x.dtype), nb = y.n * item_size(y.dtype);
  return na && nb && a < b + nb && b < a + na;
}

bool same(const ArrayRef& x, const ArrayRef& y) { return x.data == y.data && x.n == y.n && x.dtype == y.dtype; }

}  // namespace

void check_disjoint(const std::vector<Named>& writes, const std::vector<Named>& reads, bool same_ok) {
  for (std::size_t i = 0; i < writes.size(); ++i) {
    for (std::size_t j = i + 1; j < writes.size(); ++j)
      if (overlap(writes[i].a, writes[j].a))
        throw py::value_error(writes[i].name + " and " + writes[j].name + " must not share memory");
    for (const auto& r : reads)
      if (overlap(writes[i].a, r.a) && !(same_ok && same(writes[i].a, r.a)))
        throw py::value_error(writes[i].name + " must not share memory with " + r.name);
  }
}

double* done_mark(py::handle done, const std::string& what) {
  if (done.is_none()) return nullptr;
  return static_cast<double*>(array_ref(done, what, true, F64, 1).data);
}

}  // namespace fusedopt
