// Binding of Plan (a tree's recorded structure) and the aligned arenas.
#include <pybind11/stl.h>

#include "arrays.h"
#include "registry.h"
#include "tree.h"

namespace fusedopt {

namespace {

Dtype parse_dtype(const std::string& s) {
  if (s == "float32") return F32;
  if (s == "float64") return F64;
  throw py::value_error("dtype must be 'float32' or 'float64', not '" + s + "'");
}

}  // namespace

void register_tree(py::module_& m) {
  py::register_exception<StructureError>(m, "StructureError", PyExc_ValueError);

  py::class_<Plan>(m, "Plan", "The structure of a tree, recorded once; leaves laid out in 64-byte aligned arenas.")
      .def(py::init<py::handle, const std::string&, bool>(), py::arg("tree"), py::arg("name") = "grad",
           py::arg("low_precision") = false)
      .def_property_readonly("num_leaves", [](const Plan& p) { return p.leaves().size(); })
      .def_property_readonly("arena_sizes", [](const Plan& p) { return py::make_tuple(p.arena_size(F32), p.arena_size(F64)); })
      .def_property_readonly("leaf_sizes", [](const Plan& p) {
        std::vector<std::size_t> out;
        for (const auto& s : p.leaves()) out.push_back(s.size);
        return out;
      })
      .def_property_readonly("leaf_dtypes", [](const Plan& p) {
        std::vector<std::string> out;
        for (const auto& s : p.leaves()) out.push_back(dtype_name(s.dtype));
        return out;
      })
      .def_property_readonly("paths", [](const Plan& p) {
        std::vector<std::string> out;
        for (const auto& s : p.leaves()) out.push_back(s.path);
        return out;
      })
      .def_property_readonly("shapes", [](const Plan& p) {
        py::list out;
        for (const auto& s : p.leaves()) out.append(py::tuple(py::cast(s.shape)));
        return out;
      })
      .def("views", &Plan::views, py::arg("arena32"), py::arg("arena64"),
           "A tree of this structure whose leaves are views into the two arenas.")
      .def("unflatten", &Plan::unflatten, py::arg("leaves"))
      .def(
          "flatten",
          [](const Plan& p, py::handle tree, const std::string& name) {
            py::list out;
            p.walk(tree.ptr(), name.c_str(), [&](std::size_t, PyObject* o) { out.append(py::handle(o)); });
            return out;
          },
          py::arg("tree"), py::arg("name") = "tree", "The leaves of `tree`, after checking its containers match.");

  m.def(
      "aligned_empty", [](std::size_t n, const std::string& dtype) { return aligned_empty(n, parse_dtype(dtype)); },
      py::arg("n"), py::arg("dtype"), "A 1-d uninitialised array whose data starts on a 64-byte boundary.");
}

}  // namespace fusedopt
