// Binding of Muon's element passes (optim/muon.h) over numpy arrays;
// fusedopt.optim.Muon and fusedopt.torch.Muon call them around their BLAS
// products. Each checks every array first, then runs without the GIL.
#include <pybind11/stl.h>

#include <vector>

#include "flat_arrays.h"
#include "numpy_api.h"
#include "optim/muon.h"
#include "registry.h"

namespace fusedopt {

namespace {

std::vector<float*> float_ptrs(const std::vector<ArrayRef>& v) {
  std::vector<float*> out;
  for (const auto& a : v) out.push_back(static_cast<float*>(a.data));
  return out;
}

void same_count(std::size_t a, std::size_t b, const char* what) {
  if (a != b) throw py::value_error(std::string(what) + ": the lists must have one entry per parameter");
}

// rows and cols of the first `count` arrays of `keep`, each 2-D.
void matrix_shapes(const std::vector<py::object>& keep, std::size_t count, const std::string& what,
                   std::vector<std::size_t>& rows, std::vector<std::size_t>& cols) {
  for (std::size_t l = 0; l < count; ++l) {
    auto* a = reinterpret_cast<PyArrayObject*>(keep[l].ptr());
    if (PyArray_NDIM(a) != 2) throw py::value_error(what + "[" + std::to_string(l) + "] must be 2-D");
    rows.push_back(static_cast<std::size_t>(PyArray_DIM(a, 0)));
    cols.push_back(static_cast<std::size_t>(PyArray_DIM(a, 1)));
  }
}

}  // namespace

void register_muon(py::module_& m) {
  m.def("muon_momentum", [](py::handle grads, py::handle bufs, py::handle xs, const std::vector<bool>& transposed,
                            double momentum, bool nesterov) {
    std::vector<py::object> keep;
    const auto G = array_list(grads, "muon_momentum: grads", false, -1, keep);
    const int dt = G.empty() ? -1 : G[0].dtype;
    const auto B = array_list(bufs, "muon_momentum: bufs", true, dt, keep);
    const auto X = array_list(xs, "muon_momentum: xs", true, F32, keep);
    same_count(G.size(), B.size(), "muon_momentum");
    same_count(G.size(), X.size(), "muon_momentum");
    same_count(G.size(), transposed.size(), "muon_momentum");
    std::vector<std::size_t> rows, cols;
    matrix_shapes(keep, G.size(), "muon_momentum: grads", rows, cols);
    for (std::size_t l = 0; l < G.size(); ++l)
      if (B[l].n != G[l].n || X[l].n != G[l].n)
        throw py::value_error("muon_momentum: bufs[" + std::to_string(l) + "] and xs[" + std::to_string(l) +
                              "] must have grads[" + std::to_string(l) + "]'s size");
    std::vector<Named> writes, reads;
    for (std::size_t l = 0; l < G.size(); ++l) {
      const std::string k = "[" + std::to_string(l) + "]";
      writes.push_back({B[l], "muon_momentum: bufs" + k});
      writes.push_back({X[l], "muon_momentum: xs" + k});
      reads.push_back({G[l], "muon_momentum: grads" + k});
    }
    check_disjoint(writes, reads, false);
    std::vector<double> sumsq(G.size());
    {
      py::gil_scoped_release nogil;
      if (dt == F64) {
        std::vector<const double*> g;
        std::vector<double*> b;
        for (std::size_t l = 0; l < G.size(); ++l) {
          g.push_back(static_cast<const double*>(G[l].data));
          b.push_back(static_cast<double*>(B[l].data));
        }
        muon::momentum<double>(g, b, float_ptrs(X), rows, cols, transposed, momentum, nesterov, sumsq.data());
      } else {
        std::vector<const float*> g;
        for (const auto& a : G) g.push_back(static_cast<const float*>(a.data));
        muon::momentum<float>(g, float_ptrs(B), float_ptrs(X), rows, cols, transposed, momentum, nesterov,
                              sumsq.data());
      }
    }
    return sumsq;
  }, "buf = lerp(buf, g, 1 - momentum); x = bf16(nesterov ? lerp(g, buf, momentum) : buf) (transposed where "
     "asked); returns sum x*x per leaf");
  m.def("muon_round", [](py::handle x) {
    const ArrayRef X = array_ref(x, "muon_round: x", true, F32);
    py::gil_scoped_release nogil;
    muon::round(static_cast<float*>(X.data), X.n);
  }, "x = bf16(x), in place");
  m.def("muon_scale", [](py::handle x, double norm) {
    const ArrayRef X = array_ref(x, "muon_scale: x", true, F32);
    py::gil_scoped_release nogil;
    muon::scale(static_cast<float*>(X.data), static_cast<float>(norm), X.n);
  }, "x = bf16(x / norm), norm rounded to float32");
  m.def("muon_combine", [](py::handle out, py::handle c, py::handle prod, double beta, double alpha) {
    const ArrayRef O = array_ref(out, "muon_combine: out", true, F32);
    const auto n = static_cast<long long>(O.n);
    const ArrayRef C = array_ref(c, "muon_combine: c", false, F32, n);
    const ArrayRef P = array_ref(prod, "muon_combine: prod", false, F32, n);
    check_disjoint({{O, "muon_combine: out"}}, {{C, "muon_combine: c"}, {P, "muon_combine: prod"}}, true);
    py::gil_scoped_release nogil;
    muon::combine(static_cast<float*>(O.data), static_cast<const float*>(C.data), static_cast<const float*>(P.data),
                  static_cast<float>(beta), static_cast<float>(alpha), O.n);
  }, "out = bf16(beta * c + alpha * prod), beta and alpha rounded to float32");
  m.def("muon_update", [](py::handle params, py::handle os, const std::vector<bool>& transposed,
                          py::handle decays, const std::vector<double>& neg_lr, py::handle done) {
    double* mark = done_mark(done, "muon_update: done");
    // one decay for every parameter, or one per parameter (groups of different lr and weight_decay)
    const std::vector<double> decay = PyList_Check(decays.ptr()) ? decays.cast<std::vector<double>>()
                                                                 : std::vector<double>(neg_lr.size(), decays.cast<double>());
    if (!PyList_Check(params.ptr())) throw py::type_error("muon_update: params must be a list of numpy arrays");
    const py::list items = py::reinterpret_borrow<py::list>(params);
    std::vector<py::object> keep;
    std::vector<ArrayRef> P;
    for (std::size_t l = 0; l < items.size(); ++l) {  // float32 and float64 alike: one call steps every group
      P.push_back(array_ref(items[l], "muon_update: params[" + std::to_string(l) + "]", true));
      keep.push_back(items[l]);
    }
    const auto O = array_list(os, "muon_update: os", false, F32, keep);
    same_count(P.size(), O.size(), "muon_update");
    same_count(P.size(), transposed.size(), "muon_update");
    same_count(P.size(), decay.size(), "muon_update");
    same_count(P.size(), neg_lr.size(), "muon_update");
    std::vector<std::size_t> rows, cols;
    matrix_shapes(keep, P.size(), "muon_update: params", rows, cols);
    for (std::size_t l = 0; l < P.size(); ++l) {
      if (O[l].n != P[l].n)
        throw py::value_error("muon_update: os[" + std::to_string(l) + "] must have params[" + std::to_string(l) +
                              "]'s size");
    }
    std::vector<Named> writes, reads;
    for (std::size_t l = 0; l < P.size(); ++l) {
      writes.push_back({P[l], "muon_update: params[" + std::to_string(l) + "]"});
      reads.push_back({O[l], "muon_update: os[" + std::to_string(l) + "]"});
    }
    check_disjoint(writes, reads, false);
    {
      py::gil_scoped_release nogil;
      for (std::size_t l = 0; l < P.size(); ++l) {
        const std::vector<const float*> o{static_cast<const float*>(O[l].data)};
        const std::vector<std::size_t> r{rows[l]}, c{cols[l]};
        const std::vector<bool> tr{transposed[l]};
        if (P[l].dtype == F64)
          muon::update<double>({static_cast<double*>(P[l].data)}, o, r, c, tr, decay[l], {neg_lr[l]});
        else
          muon::update<float>({static_cast<float*>(P[l].data)}, o, r, c, tr, static_cast<float>(decay[l]),
                              {static_cast<float>(neg_lr[l])});
      }
    }
    if (mark) *mark = 1.0;
  }, py::arg("params"), py::arg("os"), py::arg("transposed"), py::arg("decay"), py::arg("neg_lr"),
     py::arg("done") = py::none(),
     "p = p * decay (a number, or a list: one per parameter); p = p + neg_lr[l] * o (o read transposed where asked), per parameter; done: None, or a "
     "float64 array of one element set to 1 when every parameter is stepped");
}

}  // namespace fusedopt
