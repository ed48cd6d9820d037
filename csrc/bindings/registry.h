// Each binding topic registers its functions on the module.
#pragma once
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace fusedopt {
void register_step(pybind11::module_& m);
void register_tree(pybind11::module_& m);
void register_runtime(pybind11::module_& m);
void register_optim(pybind11::module_& m);
void register_reduce(pybind11::module_& m);  // fusedopt.distributed
void register_lbfgs(pybind11::module_& m);   // LBFGS's vector passes
void register_muon(pybind11::module_& m);    // Muon's element passes
void register_quant8(pybind11::module_& m);  // Adam8bit, AdamW8bit
void register_unchanged(pybind11::module_& m);  // fusedopt.torch's steady-state check
void register_adafactor(pybind11::module_& m);  // Adafactor's step
}  // namespace fusedopt
