// Binding of Adafactor's step (optim/adafactor.h): one call steps every
// parameter of a tree. Everything is checked first (dtypes, shapes, the
// state's shapes, shared memory); then the step runs without the GIL, with a
// reference held to every array it touches.
#include <pybind11/stl.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "flat_arrays.h"
#include "numpy_api.h"
#include "optim/adafactor.h"
#include "registry.h"

namespace fusedopt {

namespace {

constexpr int kHyper = 8;  // step, lr, beta2_decay, eps1, eps2, d, weight_decay, maximize

using Shape = std::vector<npy_intp>;

std::string show(const npy_intp* dims, std::size_t nd) {
  std::string out = "(";
  for (std::size_t k = 0; k < nd; ++k) out += (k ? ", " : "") + std::to_string(dims[k]);
  return out + (nd == 1 ? ",)" : ")");
}

py::list as_list(py::handle seq, const std::string& what, std::size_t count) {
  if (!PyList_Check(seq.ptr())) throw py::type_error("adafactor_step: " + what + " must be a list");
  py::list items = py::reinterpret_borrow<py::list>(seq);
  if (items.size() != count)
    throw py::value_error("adafactor_step: " + what + " must have one entry per parameter");
  return items;
}

// An array of the step, named only when a refusal needs it: a tree has
// thousands of arrays, and a step of an unchanged tree builds no string.
struct Ref {
  ArrayRef a;
  const char* what;  // the argument: "params", "grads", "old_rows", ...
  std::size_t l;     // its index
};

std::string name_of(const char* what, std::size_t l) {
  return "adafactor_step: " + std::string(what) + "[" + std::to_string(l) + "]";
}
std::string name_of(const Ref& r) { return name_of(r.what, r.l); }

// `o` as an array (array_ref's conditions: a float32/float64 ndarray, `want`
// when >= 0, C-contiguous, aligned, writeable when asked); array_ref, with
// the name, says why when it is refused.
ArrayRef checked_array(PyObject* o, const char* what, std::size_t l, bool writeable, int want) {
  if (PyArray_Check(o)) {
    auto* a = reinterpret_cast<PyArrayObject*>(o);
    const int type = PyArray_TYPE(a);
    const bool f32 = type == NPY_FLOAT && (want < 0 || want == F32);
    const bool f64 = type == NPY_DOUBLE && (want < 0 || want == F64);
    if ((f32 || f64) && PyArray_IS_C_CONTIGUOUS(a) && PyArray_ISALIGNED(a) && (!writeable || PyArray_ISWRITEABLE(a)))
      return {f32 ? F32 : F64, PyArray_DATA(a), static_cast<std::size_t>(PyArray_SIZE(a))};
  }
  return array_ref(o, name_of(what, l), writeable, want);
}

// The array at items[l], checked (dtype, shape `dims` with dims[one] = 1 when
// one >= 0, writeable), or nullptr for None where allowed.
struct Checked {
  std::vector<py::object> keep;  // a reference to every array, held through the call without the GIL
  std::vector<Ref> writes, reads;
  const void* get(const py::list& items, std::size_t l, const char* what, Dtype dtype, const npy_intp* dims,
                  std::size_t nd, std::ptrdiff_t one, bool writeable, bool none_ok) {
    PyObject* item = PyList_GET_ITEM(items.ptr(), static_cast<Py_ssize_t>(l));
    if (item == Py_None) {
      if (!none_ok) throw py::type_error(name_of(what, l) + " must be an array, got None");
      return nullptr;
    }
    const ArrayRef a = checked_array(item, what, l, writeable, dtype);
    auto* arr = reinterpret_cast<PyArrayObject*>(item);
    bool same = static_cast<std::size_t>(PyArray_NDIM(arr)) == nd;
    for (std::size_t k = 0; same && k < nd; ++k)
      same = PyArray_DIMS(arr)[k] == (static_cast<std::ptrdiff_t>(k) == one ? 1 : dims[k]);
    if (!same) {
      Shape want(dims, dims + nd);
      if (one >= 0) want[static_cast<std::size_t>(one)] = 1;
      throw py::value_error(name_of(what, l) + " must have shape " + show(want.data(), nd) + ", got " +
                            show(PyArray_DIMS(arr), static_cast<std::size_t>(PyArray_NDIM(arr))));
    }
    (writeable ? writes : reads).push_back({a, what, l});
    keep.push_back(py::reinterpret_borrow<py::object>(item));
    return a.data;
  }
};

// The written arrays sorted by address, refused if two overlap; then a
// lookup of the written array a read one overlaps, in O(log n) (a tree has
// thousands of arrays: no pairwise check).
class Disjoint {
 public:
  explicit Disjoint(const std::vector<Ref>& writes) : w_(writes) {
    std::sort(w_.begin(), w_.end(), [](const Ref& a, const Ref& b) { return begin(a) < begin(b); });
    for (std::size_t k = 1; k < w_.size(); ++k)
      if (begin(w_[k]) < end(w_[k - 1]))
        throw py::value_error(name_of(w_[k - 1]) + " and " + name_of(w_[k]) + " must not share memory");
  }
  const Ref* find(const Ref& r) const {
    auto it = std::lower_bound(w_.begin(), w_.end(), end(r), [](const Ref& a, const char* e) {
      return begin(a) < e;
    });
    if (it == w_.begin()) return nullptr;
    --it;
    return end(*it) > begin(r) ? &*it : nullptr;
  }
  void refuse_overlap(const Ref& r) const {
    if (const Ref* w = find(r)) throw py::value_error(name_of(*w) + " must not share memory with " + name_of(r));
  }

 private:
  static const char* begin(const Ref& x) { return static_cast<const char*>(x.a.data); }
  static const char* end(const Ref& x) { return begin(x) + x.a.n * item_size(x.a.dtype); }
  std::vector<Ref> w_;
};

}  // namespace

void register_adafactor(py::module_& m) {
  m.def("adafactor_step", [](py::handle params, py::handle grads, py::handle old_rows, py::handle old_cols,
                             py::handle old_vars, py::handle new_rows, py::handle new_cols, py::handle new_vars,
                             py::handle hyper, bool copy_grads, py::handle done) {
    double* mark = done_mark(done, "adafactor_step: done");
    if (!PyList_Check(params.ptr())) throw py::type_error("adafactor_step: params must be a list of numpy arrays");
    const py::list P = py::reinterpret_borrow<py::list>(params);
    const std::size_t L = P.size();
    const ArrayRef H = array_ref(hyper, "adafactor_step: hyper", false, F64, static_cast<long long>(L * kHyper));
    const double* h = static_cast<const double*>(H.data);
    const py::list G = as_list(grads, "grads", L), R0 = as_list(old_rows, "old_rows", L),
                   C0 = as_list(old_cols, "old_cols", L), V0 = as_list(old_vars, "old_vars", L),
                   R1 = as_list(new_rows, "new_rows", L), C1 = as_list(new_cols, "new_cols", L),
                   V1 = as_list(new_vars, "new_vars", L);
    Checked c;
    c.keep.reserve(6 * L);
    std::vector<Ref> grad_refs;
    std::vector<adafactor::Leaf> leaves(L);
    int dtype = -1;  // the first parameter's: every array of the step has it
    for (std::size_t l = 0; l < L; ++l) {
      adafactor::Leaf& leaf = leaves[l];
      PyObject* item = PyList_GET_ITEM(P.ptr(), static_cast<Py_ssize_t>(l));
      const ArrayRef p = checked_array(item, "params", l, true, dtype);
      dtype = p.dtype;
      auto* arr = reinterpret_cast<PyArrayObject*>(item);
      const npy_intp* dims = PyArray_DIMS(arr);
      const std::size_t nd = static_cast<std::size_t>(PyArray_NDIM(arr));
      leaf.dtype = p.dtype;
      leaf.param = p.data;
      leaf.n = p.n;
      if (leaf.n == 0)
        throw py::value_error("adafactor_step: params[" + std::to_string(l) + "] has no elements");
      c.writes.push_back({p, "params", l});
      c.keep.push_back(py::reinterpret_borrow<py::object>(item));
      leaf.grad = c.get(G, l, "grads", leaf.dtype, dims, nd, -1, false, false);
      grad_refs.push_back(c.reads.back());
      c.reads.pop_back();  // checked below: copied or refused
      leaf.factored = nd >= 2;
      if (leaf.factored) {
        const auto last = static_cast<std::ptrdiff_t>(nd) - 1;
        leaf.cols = static_cast<std::size_t>(dims[nd - 1]);
        leaf.rows = static_cast<std::size_t>(dims[nd - 2]);
        leaf.batch = leaf.n / (leaf.rows * leaf.cols);
        leaf.old_row = c.get(R0, l, "old_rows", leaf.dtype, dims, nd, last, false, true);
        leaf.old_col = c.get(C0, l, "old_cols", leaf.dtype, dims, nd, last - 1, false, true);
        leaf.new_row = const_cast<void*>(c.get(R1, l, "new_rows", leaf.dtype, dims, nd, last, true, false));
        leaf.new_col = const_cast<void*>(c.get(C1, l, "new_cols", leaf.dtype, dims, nd, last - 1, true, false));
      } else {
        leaf.old_var = c.get(V0, l, "old_vars", leaf.dtype, dims, nd, -1, false, true);
        leaf.new_var = const_cast<void*>(c.get(V1, l, "new_vars", leaf.dtype, dims, nd, -1, true, false));
      }
      const double* x = h + l * kHyper;
      leaf.step = x[0];
      leaf.lr = x[1];
      leaf.beta2_decay = x[2];
      leaf.eps1 = x[3];
      leaf.eps2 = x[4];
      leaf.d = x[5];
      leaf.weight_decay = x[6];
      leaf.maximize = x[7] != 0.0;
    }
    // A gradient that shares memory with what the step writes: a copy (numpy's
    // semantics, fusedopt.optim) or refused (fusedopt.torch).
    const Disjoint writes(c.writes);
    for (const auto& r : c.reads) writes.refuse_overlap(r);
    std::vector<std::unique_ptr<char[]>> copies;
    for (std::size_t l = 0; l < L; ++l) {
      if (!copy_grads || !writes.find(grad_refs[l])) {
        writes.refuse_overlap(grad_refs[l]);
        continue;
      }
      const std::size_t bytes = leaves[l].n * item_size(leaves[l].dtype);
      copies.emplace_back(new char[bytes]);
      std::memcpy(copies.back().get(), leaves[l].grad, bytes);
      leaves[l].grad = copies.back().get();
    }
    {
      py::gil_scoped_release nogil;
      adafactor::step(leaves);
    }
    if (mark) *mark = 1.0;
  }, py::arg("params"), py::arg("grads"), py::arg("old_rows"), py::arg("old_cols"), py::arg("old_vars"),
     py::arg("new_rows"), py::arg("new_cols"), py::arg("new_vars"), py::arg("hyper"), py::arg("copy_grads"),
     py::arg("done") = py::none(),
     "One Adafactor step of every parameter (docs/optim.md, \"Adafactor\"); hyper: float64 (len(params), 8) rows "
     "of step, lr, beta2_decay, eps1, eps2, d, weight_decay, maximize; done: None, or a float64 array of one "
     "element set to 1 when the step is done");
}

}  // namespace fusedopt
