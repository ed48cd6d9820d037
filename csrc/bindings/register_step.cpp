// Registration of the paysage family's native state (fusedopt._core.State,
// paysage_state.h): its rule enums and kernel table, the class, and
// bound_update, its step as a plain builtin.
#include <initializer_list>
#include <new>
#include <string>
#include <utility>

#include "overlap.h"
#include "paysage_state.h"
#include "registry.h"

namespace fusedopt {

namespace {


// State.update as a plain METH_FASTCALL builtin bound to one State (a capsule
// holding it): a small step's cost is mostly calls, and pybind11's dispatcher
// (argument casters, a locked type lookup for `self`) is the larger part of it.
constexpr const char* kStateCapsule = "fusedopt.State";

PyObject* raise_current() {
  try {
    throw;
  } catch (py::error_already_set& e) {
    e.restore();
  } catch (py::builtin_exception& e) {
    e.set_error();
  } catch (StructureError& e) {
    py::object type = py::module_::import("fusedopt._core").attr("StructureError");
    PyErr_SetString(type.ptr(), e.what());
  } catch (std::bad_alloc&) {
    PyErr_NoMemory();
  } catch (std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  }
  return nullptr;
}

PyObject* fast_update(PyObject* capsule, PyObject* const* args, Py_ssize_t n) {
  if (n != 5) {
    PyErr_SetString(PyExc_TypeError, "update(optimizer, rule, stepsize, model, grad) takes exactly 5 arguments");
    return nullptr;
  }
  auto* state = static_cast<State*>(PyCapsule_GetPointer(capsule, kStateCapsule));
  if (!state) return nullptr;
  PyObject* unset_rate = PyTuple_GET_ITEM(static_cast<PyObject*>(PyCapsule_GetContext(capsule)), 1);
  try {
    state->update(args[0], args[1], args[2], unset_rate, args[3], args[4]);
  } catch (...) {
    return raise_current();
  }
  Py_RETURN_NONE;
}

PyMethodDef kFastUpdate = {"update", reinterpret_cast<PyCFunction>(reinterpret_cast<void*>(fast_update)), METH_FASTCALL,
                           "update(optimizer, rule, stepsize, model, grad): Optimizer.update's native part "
                           "(fusedopt._paysage.native_step)."};

void release_state(PyObject* capsule) { Py_XDECREF(static_cast<PyObject*>(PyCapsule_GetContext(capsule))); }

// A builtin update() bound to `self` and `unset_rate`, which it keeps alive (the capsule's
// context is the pair).
py::object bound_update(py::handle self, py::object unset_rate) {
  State* state = self.cast<State*>();
  if (!PyCallable_Check(unset_rate.ptr())) throw py::type_error("bound_update: unset_rate must be callable");
  py::object capsule = py::reinterpret_steal<py::object>(PyCapsule_New(state, kStateCapsule, release_state));
  if (!capsule) throw py::error_already_set();
  py::tuple held = py::make_tuple(py::reinterpret_borrow<py::object>(self), std::move(unset_rate));
  if (PyCapsule_SetContext(capsule.ptr(), held.release().ptr()) != 0) throw py::error_already_set();
  PyObject* f = PyCFunction_New(&kFastUpdate, capsule.ptr());
  if (!f) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(f);
}

template <class E>
void export_enum(py::module_& m, const char* name, const char* doc, std::initializer_list<std::pair<const char*, E>> values) {
  py::enum_<E> e(m, name, doc);
  for (const auto& [n, v] : values) e.value(n, v);
}

}  // namespace

void register_step(py::module_& m) {
  register_overlap(m);
  {
    py::enum_<Rule> e(m, "Rule", "The named update rules of the paysage family (csrc/paysage/rules.h).");
    for (const auto& s : kRuleSpecs) e.value(s.name, s.rule);
  }
  export_enum<Phase>(m, "Phase", "Which moments of a rule start on a step (m = g, v = g*g) instead of averaging.",
                     {{"STEADY", Phase::STEADY}, {"FIRST", Phase::FIRST}, {"FIRST_MEAN", Phase::FIRST_MEAN},
                      {"FIRST_MEAN_SQUARE", Phase::FIRST_MEAN_SQUARE}});
  export_enum<Output>(m, "Output", "Where a step's result goes.",
                      {{"NONE", Output::NONE}, {"DELTA", Output::DELTA}, {"IN_PLACE", Output::IN_PLACE},
                       {"BOTH", Output::BOTH}});
  py::list table;
  for (const auto& k : kKernels) table.append(py::make_tuple(k.rule, k.phase, k.output));
  m.attr("kernels") = py::tuple(table);

  py::class_<State>(m, "State",
                    "A GradientMemory's native state: plan, moment arenas, per-leaf sums, weights; one step() call "
                    "checks, runs and commits a whole step.")
      .def(py::init<>())
      .def_property("plan", [](const State& s) { return s.plan; }, &State::set_plan)
      .def_property("mean", [](const State& s) { return s.mean; },
                    [](State& s, py::object a) { s.set_moment(false, std::move(a)); })
      .def_property("mean_square", [](const State& s) { return s.mean_square; },
                    [](State& s, py::object a) { s.set_moment(true, std::move(a)); })
      .def_property("mean_tree", [](State& s) { return s.tree(false); },
                    [](State& s, py::object t) { s.set_tree(false, std::move(t)); })
      .def_property("mean_square_tree", [](State& s) { return s.tree(true); },
                    [](State& s, py::object t) { s.set_tree(true, std::move(t)); })
      .def_readwrite("sums", &State::sums)
      .def_readwrite("w", &State::w)
      .def_readwrite("w2", &State::w2)
      .def_property("conv_count",
                    [](const State& s) { return s.conv_count < 0 ? py::object(py::none()) : py::object(py::int_(s.conv_count)); },
                    [](State& s, py::object n) { s.conv_count = n.is_none() ? -1 : n.cast<long long>(); })
      .def_readwrite("conv_inplace", &State::conv_inplace,
                     "Whether the last optimizer step was in place (check_convergence then uses the sums).")
      .def_readwrite("pending", &State::pending,
                     "The loaded moments waiting for a gradient's structure (GradientMemory's), or None; cleared "
                     "by the step that installs them.")
      .def("install_next", &State::install_next, py::arg("plan"), py::arg("mean"), py::arg("mean_square"),
           "The next step starts from this plan and these moment arenas (or None) and commits them, clearing "
           "`pending`, with its results; a refused step leaves the state as it was.")
      .def("average_next", &State::average_next, py::arg("rows"), py::arg("base"), py::arg("divisor"),
           "The next step reads each gradient leaf lying inside `base` as (((rows[0] + rows[1]) + ...) / divisor) "
           "at the same byte offset, averaged inside its kernel; base=None: no rows.")
      .def("step", &State::step, py::arg("owner"), py::arg("rule"), py::arg("output"), py::arg("grad"),
           py::arg("target"), py::arg("lr"), py::arg("check_finite"),
           "One step of `rule` over the tree `grad`. target: the parameters (IN_PLACE, BOTH), or a model whose "
           "parameter_update(delta) is called before the step commits (DELTA), or None. With an owner (the "
           "optimizer), its step_count and delta are committed with the moments. Returns the delta tree or None.");
  m.def("bound_update", &bound_update, py::arg("state"), py::arg("unset_rate"),
        "A builtin f(optimizer, rule, stepsize, model, grad) taking Optimizer.update's step of `rule` on `state`: "
        "the optimizer's lr, ascent, check_finite and keep_delta are read from it, unset_rate(stepsize) -> (key, rate) "
        "gives the rate while lr is None, a model (has parameter_update) takes the delta, anything else is stepped "
        "in place. The interface is declared in fusedopt._paysage.native_step.");
}

}  // namespace fusedopt