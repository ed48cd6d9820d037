// Binding of the LBFGS vector passes (optim/lbfgs.h) as plain functions over
// flat numpy arrays; fusedopt.optim.LBFGS and fusedopt.torch.LBFGS drive them.
// Each checks every array first, then runs without the GIL.
#include <pybind11/stl.h>

#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "flat_arrays.h"
#include "optim/lbfgs.h"
#include "registry.h"

namespace fusedopt {

namespace {

template <class T>
T* ptr(const ArrayRef& a) { return static_cast<T*>(a.data); }

template <class T>
std::vector<T*> ptrs(const std::vector<ArrayRef>& v) {
  std::vector<T*> out;
  for (const auto& a : v) out.push_back(ptr<T>(a));
  return out;
}

// Calls f(T{}) with T the array's element type.
template <class F>
auto by_dtype(Dtype d, F&& f) {
  if (d == F32) return f(float{});
  return f(double{});
}

std::vector<std::size_t> leaf_sizes(const std::vector<ArrayRef>& leaves) {
  std::vector<std::size_t> out;
  for (const auto& a : leaves) out.push_back(a.n);
  return out;
}

void check_total(const std::vector<std::size_t>& sizes, std::size_t n, const char* what) {
  std::size_t total = 0;
  for (std::size_t s : sizes) total += s;
  if (total != n)
    throw py::value_error(std::string(what) + ": the leaves hold " + std::to_string(total) +
                          " elements, the flat vector " + std::to_string(n));
}

// Checks flat and the writeable leaves (one dtype, sizes adding up to flat's),
// then runs f(flat, leaves, sizes) without the GIL.
template <class F>
void over_leaves(py::handle leaves, py::handle flat, const std::string& name, F&& f) {
  const ArrayRef A = array_ref(flat, name + ": flat", false);
  std::vector<py::object> keep;
  const auto L = array_list(leaves, name + ": leaves", true, A.dtype, keep);
  const auto sizes = leaf_sizes(L);
  check_total(sizes, A.n, name.c_str());
  std::vector<Named> writes;
  for (std::size_t l = 0; l < L.size(); ++l) writes.push_back({L[l], name + ": leaves[" + std::to_string(l) + "]"});
  check_disjoint(writes, {{A, name + ": flat"}}, false);
  py::gil_scoped_release nogil;
  by_dtype(A.dtype, [&](auto z) {
    using T = decltype(z);
    f(static_cast<const T*>(A.data), ptrs<T>(L), sizes);
    return 0;
  });
}

}  // namespace

void register_lbfgs(py::module_& m) {
  m.def("lbfgs_dot", [](py::handle a, py::handle b) {
    const ArrayRef x = array_ref(a, "lbfgs_dot: a", false);
    const ArrayRef y = array_ref(b, "lbfgs_dot: b", false, x.dtype, static_cast<long long>(x.n));
    py::gil_scoped_release nogil;
    return by_dtype(x.dtype, [&](auto t) { using T = decltype(t); return lbfgs::dot(ptr<T>(x), ptr<T>(y), x.n); });
  }, "sum(a*b) in double, in the fixed chunk and lane order of docs/optim.md");
  m.def("lbfgs_abs_sum", [](py::handle a) {
    const ArrayRef x = array_ref(a, "lbfgs_abs_sum: a", false);
    py::gil_scoped_release nogil;
    return by_dtype(x.dtype, [&](auto t) { using T = decltype(t); return lbfgs::abs_sum(ptr<T>(x), x.n); });
  }, "sum(|a|) in double, in the fixed order");
  m.def("lbfgs_abs_max", [](py::handle a, double alpha) {
    const ArrayRef x = array_ref(a, "lbfgs_abs_max: a", false);
    py::gil_scoped_release nogil;
    return by_dtype(x.dtype, [&](auto t) {
      using T = decltype(t);
      return static_cast<double>(lbfgs::scaled_abs_max(ptr<T>(x), static_cast<T>(alpha), x.n));
    });
  }, py::arg("a"), py::arg("alpha") = 1.0, "max |alpha * a| (the product rounded in a's dtype); NaN if any is NaN");
  m.def("lbfgs_new_pair", [](py::handle g, py::handle prev, py::handle d, double t, py::handle y, py::handle s) {
    const ArrayRef G = array_ref(g, "lbfgs_new_pair: g", false);
    const auto n = static_cast<long long>(G.n);
    const ArrayRef P = array_ref(prev, "lbfgs_new_pair: prev", true, G.dtype, n);
    const ArrayRef D = array_ref(d, "lbfgs_new_pair: d", false, G.dtype, n);
    const ArrayRef Y = array_ref(y, "lbfgs_new_pair: y", true, G.dtype, n);
    const ArrayRef S = array_ref(s, "lbfgs_new_pair: s", true, G.dtype, n);
    check_disjoint({{P, "lbfgs_new_pair: prev"}, {Y, "lbfgs_new_pair: y"}, {S, "lbfgs_new_pair: s"}},
                   {{G, "lbfgs_new_pair: g"}, {D, "lbfgs_new_pair: d"}}, false);
    py::gil_scoped_release nogil;
    return by_dtype(G.dtype, [&](auto z) {
      using T = decltype(z);
      return lbfgs::new_pair(ptr<T>(G), ptr<T>(P), ptr<T>(D), static_cast<T>(t), ptr<T>(Y), ptr<T>(S), G.n);
    });
  }, "y = g - prev; s = d * t; prev = g; returns (sum y*s, sum y*y)");
  m.def("lbfgs_two_loop", [](py::handle d, py::handle g, py::handle ys, py::handle ss, py::handle ro, double h_diag,
                             py::handle al) {
    const ArrayRef G = array_ref(g, "lbfgs_two_loop: g", false);
    const auto n = static_cast<long long>(G.n);
    const ArrayRef D = array_ref(d, "lbfgs_two_loop: d", true, G.dtype, n);
    std::vector<py::object> keep;
    const auto Y = array_list(ys, "lbfgs_two_loop: old_dirs", false, G.dtype, keep);
    const auto S = array_list(ss, "lbfgs_two_loop: old_stps", false, G.dtype, keep);
    if (S.size() != Y.size()) throw py::value_error("lbfgs_two_loop: old_dirs and old_stps must have one entry each");
    for (const auto& v : Y) if (v.n != G.n) throw py::value_error("lbfgs_two_loop: old_dirs entries must have g's size");
    for (const auto& v : S) if (v.n != G.n) throw py::value_error("lbfgs_two_loop: old_stps entries must have g's size");
    const ArrayRef R = array_ref(ro, "lbfgs_two_loop: ro", false, G.dtype, static_cast<long long>(Y.size()));
    const ArrayRef A = array_ref(al, "lbfgs_two_loop: al", true, G.dtype);
    if (A.n < Y.size()) throw py::value_error("lbfgs_two_loop: al must hold one entry per stored pair");
    std::vector<Named> reads{{G, "lbfgs_two_loop: g"}, {R, "lbfgs_two_loop: ro"}};
    for (std::size_t k = 0; k < Y.size(); ++k) {
      reads.push_back({Y[k], "lbfgs_two_loop: old_dirs[" + std::to_string(k) + "]"});
      reads.push_back({S[k], "lbfgs_two_loop: old_stps[" + std::to_string(k) + "]"});
    }
    check_disjoint({{D, "lbfgs_two_loop: d"}, {A, "lbfgs_two_loop: al"}}, reads, false);
    py::gil_scoped_release nogil;
    return by_dtype(G.dtype, [&](auto z) {
      using T = decltype(z);
      const auto yp = ptrs<T>(Y), sp = ptrs<T>(S);
      return lbfgs::two_loop(ptr<T>(D), ptr<T>(G), yp.data(), sp.data(), ptr<T>(R), Y.size(), static_cast<T>(h_diag),
                             ptr<T>(A), G.n);
    });
  }, "d = the two-loop recursion's direction from g and the stored pairs; writes al; returns sum g*d");
  m.def("lbfgs_gather", [](py::handle leaves, const std::vector<std::size_t>& sizes, py::handle flat) {
    const ArrayRef F = array_ref(flat, "lbfgs_gather: flat", true);
    if (!PyList_Check(leaves.ptr())) throw py::type_error("lbfgs_gather: leaves must be a list");
    const py::list items = py::reinterpret_borrow<py::list>(leaves);
    if (items.size() != sizes.size()) throw py::value_error("lbfgs_gather: one size per leaf");
    check_total(sizes, F.n, "lbfgs_gather");
    std::vector<py::object> keep;
    std::vector<const void*> data;
    std::vector<Named> reads;
    for (std::size_t l = 0; l < sizes.size(); ++l) {
      py::object item = items[l];
      if (item.is_none()) {
        data.push_back(nullptr);
      } else {
        const std::string what = "lbfgs_gather: leaves[" + std::to_string(l) + "]";
        reads.push_back({array_ref(item, what, false, F.dtype, static_cast<long long>(sizes[l])), what});
        data.push_back(reads.back().a.data);
      }
      keep.push_back(std::move(item));
    }
    check_disjoint({{F, "lbfgs_gather: flat"}}, reads, false);
    py::gil_scoped_release nogil;
    by_dtype(F.dtype, [&](auto z) {
      using T = decltype(z);
      std::vector<const T*> p;
      for (const void* v : data) p.push_back(static_cast<const T*>(v));
      lbfgs::gather(p, sizes, ptr<T>(F));
      return 0;
    });
  }, "flat = the leaves end to end (None: zeros of its size)");
  m.def("lbfgs_scatter", [](py::handle flat, py::handle leaves) {
    over_leaves(leaves, flat, "lbfgs_scatter", [](auto* f, const auto& ls, const auto& sizes) {
      lbfgs::scatter(f, ls, sizes);
    });
  }, "each leaf = its slice of flat");
  m.def("lbfgs_add", [](py::handle leaves, py::handle flat, double t) {
    over_leaves(leaves, flat, "lbfgs_add", [t](auto* f, const auto& ls, const auto& sizes) {
      using T = std::remove_const_t<std::remove_pointer_t<decltype(f)>>;
      lbfgs::add(ls, sizes, f, static_cast<T>(t));
    });
  }, "each leaf = leaf + t * its slice of flat (t rounded to the dtype)");
}

}  // namespace fusedopt
