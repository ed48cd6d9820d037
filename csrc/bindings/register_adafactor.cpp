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

Shape shape_of(py::handle a) {
  auto* arr = reinterpret_cast<PyArrayObject*>(a.ptr());
  return Shape(PyArray_DIMS(arr), PyArray_DIMS(arr) + PyArray_NDIM(arr));
}

std::string show(const Shape& s) {
  std::string out = "(";
  for (std::size_t k = 0; k < s.size(); ++k) out += (k ? ", " : "") + std::to_string(s[k]);
  return out + (s.size() == 1 ? ",)" : ")");
}

py::list as_list(py::handle seq, const std::string& what, std::size_t count) {
  if (!PyList_Check(seq.ptr())) throw py::type_error("adafactor_step: " + what + " must be a list");
  py::list items = py::reinterpret_borrow<py::list>(seq);
  if (items.size() != count)
    throw py::value_error("adafactor_step: " + what + " must have one entry per parameter");
  return items;
}

// The array at items[l], checked (dtype, shape, writeable), or nullptr for None where allowed.
struct Checked {
  std::vector<py::object> keep;
  std::vector<Named> writes, reads;
  const void* get(const py::list& items, std::size_t l, const std::string& what, Dtype dtype, const Shape& shape,
                  bool writeable, bool none_ok) {
    py::object item = items[l];
    const std::string name = "adafactor_step: " + what + "[" + std::to_string(l) + "]";
    if (item.is_none()) {
      if (!none_ok) throw py::type_error(name + " must be an array, got None");
      return nullptr;
    }
    const ArrayRef a = array_ref(item, name, writeable, dtype);
    if (shape_of(item) != shape)
      throw py::value_error(name + " must have shape " + show(shape) + ", got " + show(shape_of(item)));
    (writeable ? writes : reads).push_back({a, name});
    keep.push_back(std::move(item));
    return a.data;
  }
};

// The written arrays sorted by address, refused if two overlap; then a
// lookup of the written array a read one overlaps, in O(log n) (a tree has
// thousands of arrays: no pairwise check).
class Disjoint {
 public:
  explicit Disjoint(const std::vector<Named>& writes) : w_(writes) {
    std::sort(w_.begin(), w_.end(), [](const Named& a, const Named& b) { return begin(a) < begin(b); });
    for (std::size_t k = 1; k < w_.size(); ++k)
      if (begin(w_[k]) < end(w_[k - 1]))
        throw py::value_error(w_[k - 1].name + " and " + w_[k].name + " must not share memory");
  }
  const Named* find(const Named& r) const {
    auto it = std::lower_bound(w_.begin(), w_.end(), end(r), [](const Named& a, const char* e) {
      return begin(a) < e;
    });
    if (it == w_.begin()) return nullptr;
    --it;
    return end(*it) > begin(r) ? &*it : nullptr;
  }
  void refuse_overlap(const Named& r) const {
    if (const Named* w = find(r)) throw py::value_error(w->name + " must not share memory with " + r.name);
  }

 private:
  static const char* begin(const Named& x) { return static_cast<const char*>(x.a.data); }
  static const char* end(const Named& x) { return begin(x) + x.a.n * item_size(x.a.dtype); }
  std::vector<Named> w_;
};

}  // namespace

void register_adafactor(py::module_& m) {
  m.def("adafactor_step", [](py::handle params, py::handle grads, py::handle old_rows, py::handle old_cols,
                             py::handle old_vars, py::handle new_rows, py::handle new_cols, py::handle new_vars,
                             py::handle hyper, bool copy_grads, py::handle done) {
    double* mark = done_mark(done, "adafactor_step: done");
    std::vector<py::object> keep;
    const auto P = array_list(params, "adafactor_step: params", true, -1, keep);
    const std::size_t L = P.size();
    const ArrayRef H = array_ref(hyper, "adafactor_step: hyper", false, F64, static_cast<long long>(L * kHyper));
    const double* h = static_cast<const double*>(H.data);
    const py::list G = as_list(grads, "grads", L), R0 = as_list(old_rows, "old_rows", L),
                   C0 = as_list(old_cols, "old_cols", L), V0 = as_list(old_vars, "old_vars", L),
                   R1 = as_list(new_rows, "new_rows", L), C1 = as_list(new_cols, "new_cols", L),
                   V1 = as_list(new_vars, "new_vars", L);
    Checked c;
    std::vector<Named> grad_refs;
    std::vector<adafactor::Leaf> leaves(L);
    for (std::size_t l = 0; l < L; ++l) {
      adafactor::Leaf& leaf = leaves[l];
      const Shape shape = shape_of(keep[l]);
      leaf.dtype = P[l].dtype;
      leaf.param = P[l].data;
      leaf.n = P[l].n;
      if (leaf.n == 0)
        throw py::value_error("adafactor_step: params[" + std::to_string(l) + "] has no elements");
      c.writes.push_back({P[l], "adafactor_step: params[" + std::to_string(l) + "]"});
      leaf.grad = c.get(G, l, "grads", leaf.dtype, shape, false, false);
      grad_refs.push_back(c.reads.back());
      c.reads.pop_back();  // checked below: copied or refused
      leaf.factored = shape.size() >= 2;
      if (leaf.factored) {
        Shape rs = shape, cs = shape;
        rs.back() = 1;
        cs[cs.size() - 2] = 1;
        leaf.cols = static_cast<std::size_t>(shape.back());
        leaf.rows = static_cast<std::size_t>(shape[shape.size() - 2]);
        leaf.batch = leaf.n / (leaf.rows * leaf.cols);
        leaf.old_row = c.get(R0, l, "old_rows", leaf.dtype, rs, false, true);
        leaf.old_col = c.get(C0, l, "old_cols", leaf.dtype, cs, false, true);
        leaf.new_row = const_cast<void*>(c.get(R1, l, "new_rows", leaf.dtype, rs, true, false));
        leaf.new_col = const_cast<void*>(c.get(C1, l, "new_cols", leaf.dtype, cs, true, false));
      } else {
        leaf.old_var = c.get(V0, l, "old_vars", leaf.dtype, shape, false, true);
        leaf.new_var = const_cast<void*>(c.get(V1, l, "new_vars", leaf.dtype, shape, true, false));
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
