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
  m.def("muon_update", [](py::handle params, py::handle os, const std::vector<bool>& transposed, double decay,
                          const std::vector<double>& neg_lr) {
    std::vector<py::object> keep;
    const auto P = array_list(params, "muon_update: params", true, -1, keep);
    const auto O = array_list(os, "muon_update: os", false, F32, keep);
    same_count(P.size(), O.size(), "muon_update");
    same_count(P.size(), transposed.size(), "muon_update");
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
    py::gil_scoped_release nogil;
    if (!P.empty() && P[0].dtype == F64) {
      std::vector<double*> p;
      std::vector<const float*> o;
      for (std::size_t l = 0; l < P.size(); ++l) {
        p.push_back(static_cast<double*>(P[l].data));
        o.push_back(static_cast<const float*>(O[l].data));
      }
      muon::update<double>(p, o, rows, cols, transposed, decay, neg_lr);
    } else {
      std::vector<const float*> o;
      for (const auto& a : O) o.push_back(static_cast<const float*>(a.data));
      std::vector<float> lr32(neg_lr.begin(), neg_lr.end());
      muon::update<float>(float_ptrs(P), o, rows, cols, transposed, static_cast<float>(decay), lr32);
    }
  }, "p = p * decay; p = p + neg_lr * o (o read transposed where asked), per parameter");
}

}  // namespace fusedopt
