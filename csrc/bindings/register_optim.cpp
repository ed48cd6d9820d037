// Binding of the textbook optimizers' native state (fusedopt.optim): the rule
// enums, the hyper-parameters and OptimState, which holds a tree's plan, the
// state slots of every leaf and the step count, checks every array of a step
// before anything is written, and commits the whole step in one call.
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "optim/step.h"
#include "arrays.h"
#include "numpy_api.h"
#include "registry.h"
#include "tree.h"

namespace fusedopt {

namespace {

std::string at_leaf(const std::string& what, const LeafSpec& s) {
  return s.path.empty() ? what : what + " at " + s.path;
}

std::string got_of(PyObject* o) {
  if (!PyArray_Check(o)) return Py_TYPE(o)->tp_name;
  PyArrayObject* a = reinterpret_cast<PyArrayObject*>(o);
  return py::str(py::handle(reinterpret_cast<PyObject*>(PyArray_DESCR(a)))).cast<std::string>() + " array of shape " +
         shape_string(PyArray_DIMS(a), static_cast<std::size_t>(PyArray_NDIM(a)));
}

// An array of the leaf's dtype and shape, or a TypeError/ValueError naming the leaf
// (messages are built only on failure: this runs for every leaf of every step).
PyArrayObject* matching_leaf(const Plan& plan, std::size_t l, PyObject* o, const std::string& what) {
  const LeafSpec& s = plan.leaves()[l];
  PyArrayObject* a = PyArray_Check(o) ? reinterpret_cast<PyArrayObject*>(o) : nullptr;
  const bool dtype_ok = a && PyArray_TYPE(a) == npy_type_number(s.dtype);
  const bool shape_ok = a && PyArray_NDIM(a) == static_cast<int>(s.shape.size()) &&
                        std::equal(s.shape.begin(), s.shape.end(), PyArray_DIMS(a));
  if (dtype_ok && shape_ok) return a;
  const std::string msg = at_leaf(what, s) + ": expected a " + dtype_name(s.dtype) + " array of shape " +
                          plan.shape_str(l) + (what == "grads" ? " (its parameter's)" : "") + ", got " + (a ? "a " : "") +
                          got_of(o);
  if (!dtype_ok) throw py::type_error(msg);
  throw py::value_error(msg);
}

// Clears a flag when the step ends, however it ends.
struct BusyGuard {
  std::atomic<bool>& flag;
  ~BusyGuard() { flag.store(false); }
};

class OptimState {
 public:
  OptimState(TextbookRule rule, py::object plan, std::vector<bool> decay_mask, py::object hyper)
      : rule_(rule), plan_obj_(std::move(plan)), hyper_obj_(std::move(hyper)) {
    if (!py::isinstance<Plan>(plan_obj_)) throw py::type_error("plan must be a fusedopt._core.Plan");
    if (!py::isinstance<TextbookHyper>(hyper_obj_)) throw py::type_error("hyper must be a fusedopt._core.TextbookHyper");
    plan_ = plan_obj_.cast<const Plan*>();
    hyper_ = &hyper_obj_.cast<const TextbookHyper&>();
    set_decay_mask(decay_mask);
    const double fill = rule == TextbookRule::ADAGRAD ? hyper_->initial_accumulator_value : 0.0;
    for (std::size_t k = 0; k < kSlots; ++k) {
      if (!uses_slot(rule_, k)) continue;
      for (Dtype d : {F32, F64}) {
        const std::size_t n = plan_->arena_size(d);
        arenas_[k][d] = aligned_empty(n, d);
        void* data = arena_data(arenas_[k][d], d, n, "slot");
        if (d == F32)
          std::fill_n(static_cast<float*>(data), n, static_cast<float>(fill));
        else
          std::fill_n(static_cast<double*>(data), n, fill);
      }
    }
  }

  void step(py::handle params, py::handle grads, double lr, bool check_finite) {
    if (!(lr >= 0.0 && std::isfinite(lr))) throw py::value_error("lr must be finite and >= 0, got " + std::to_string(lr));
    const auto& specs = plan_->leaves();
    std::vector<TextbookLeaf> data(specs.size());
    std::vector<py::object> held;  // every array the kernels touch, alive while the GIL is released
    held.reserve(2 * specs.size());
    plan_->walk(grads.ptr(), "grads", [&](std::size_t l, PyObject* o) {
      PyArrayObject* a = matching_leaf(*plan_, l, o, "grads");
      if (!PyArray_ISCARRAY_RO(a) || !PyArray_ISNOTSWAPPED(a)) {  // strided: a contiguous copy
        PyObject* c = PyArray_FromAny(o, PyArray_DescrFromType(PyArray_TYPE(a)), 0, 0,
                                      NPY_ARRAY_CARRAY_RO | NPY_ARRAY_ENSURECOPY, nullptr);
        if (!c) throw py::error_already_set();
        held.push_back(py::reinterpret_steal<py::object>(c));
        a = reinterpret_cast<PyArrayObject*>(c);
      } else {
        held.push_back(py::reinterpret_borrow<py::object>(o));
      }
      data[l].dtype = specs[l].dtype;
      data[l].g = PyArray_DATA(a);
    });
    plan_->walk(params.ptr(), "params", [&](std::size_t l, PyObject* o) {
      PyArrayObject* a = matching_leaf(*plan_, l, o, "params");
      if (!PyArray_ISWRITEABLE(a))
        throw py::value_error(at_leaf("params", specs[l]) + ": the array is read-only; it must be writeable to be stepped in place");
      if (!PyArray_ISCARRAY(a) || !PyArray_ISNOTSWAPPED(a))
        throw py::value_error(at_leaf("params", specs[l]) +
                              ": the array must be C-contiguous, aligned and in native byte order to be stepped in place");
      held.push_back(py::reinterpret_borrow<py::object>(o));
      data[l].p = PyArray_DATA(a);
    });
    check_no_shared_params(data);
    if (check_finite)
      for (std::size_t l = 0; l < specs.size(); ++l) {
        const bool ok = all_finite(data[l].g, specs[l].dtype, specs[l].size);
        if (!ok) {
          PyErr_SetString(PyExc_FloatingPointError,
                          (at_leaf("grads", specs[l]) + " contains NaN or Inf (check_finite=True); nothing was modified").c_str());
          throw py::error_already_set();
        }
      }
    for (std::size_t l = 0; l < specs.size(); ++l) {
      data[l].decay = decay_[l] != 0;
      for (std::size_t k = 0; k < kSlots; ++k)
        data[l].s[k] = uses_slot(rule_, k) ? slot_data(k, specs[l]) : nullptr;
    }
    const TextbookHyper hyper = *hyper_;  // a copy: Python may assign to it while the GIL is released
    bool expected = false;
    if (!busy_.compare_exchange_strong(expected, true))
      throw py::value_error("this optimizer is being stepped by another thread; step it from one thread at a time");
    BusyGuard guard{busy_};
    double norm;
    {
      py::gil_scoped_release nogil;
      norm = run_textbook_step(rule_, plan_->layout(), data, hyper, lr, step_count_ + 1);
    }
    ++step_count_;
    last_norm_ = norm;
  }

  std::vector<std::string> slot_names() const {
    std::vector<std::string> out;
    for (std::size_t k = 0; k < kSlots; ++k)
      if (uses_slot(rule_, k)) out.emplace_back(fusedopt::slot_names(rule_)[k]);
    return out;
  }

  // Views into slot `name`, one per leaf (writable: they are the state itself).
  py::list slot_views(const std::string& name) const {
    const std::size_t k = slot_of(name);
    py::list out;
    for (const auto& s : plan_->leaves()) out.append(arena_view(arenas_[k][s.dtype], s.dtype, s.offset, s.shape));
    return out;
  }

  // Checks every array of `slots` (one list per used slot name) and the
  // count, then copies them in: all or nothing.
  void load(py::dict slots, long long step_count) {
    if (step_count < 0) throw py::value_error("step_count must be >= 0, got " + std::to_string(step_count));
    const auto& specs = plan_->leaves();
    std::vector<std::pair<std::size_t, std::vector<py::object>>> sources;
    for (const auto& item : slots) {
      const std::string name = py::str(item.first);
      const std::size_t k = slot_of(name);
      py::sequence leaves = py::reinterpret_borrow<py::sequence>(item.second);
      if (static_cast<std::size_t>(py::len(leaves)) != specs.size())
        throw py::value_error("state slot " + name + " has " + std::to_string(py::len(leaves)) + " leaves, expected " +
                              std::to_string(specs.size()));
      std::vector<py::object> arrays;
      for (std::size_t l = 0; l < specs.size(); ++l) {
        py::object leaf = leaves[l];
        matching_leaf(*plan_, l, leaf.ptr(), name);
        PyObject* c = PyArray_FromAny(leaf.ptr(), PyArray_DescrFromType(npy_type_number(specs[l].dtype)), 0, 0,
                                      NPY_ARRAY_CARRAY_RO, nullptr);
        if (!c) throw py::error_already_set();
        arrays.push_back(py::reinterpret_steal<py::object>(c));
      }
      sources.emplace_back(k, std::move(arrays));
    }
    for (std::size_t k = 0; k < kSlots; ++k)
      if (uses_slot(rule_, k) && std::none_of(sources.begin(), sources.end(), [&](const auto& s) { return s.first == k; }))
        throw py::value_error(std::string("the state has no slot ") + fusedopt::slot_names(rule_)[k]);
    if (busy_.load()) throw py::value_error("this optimizer is being stepped by another thread");
    for (const auto& [k, arrays] : sources)
      for (std::size_t l = 0; l < specs.size(); ++l)
        std::memcpy(slot_data(k, specs[l]), PyArray_DATA(reinterpret_cast<PyArrayObject*>(arrays[l].ptr())),
                    specs[l].size * item_size(specs[l].dtype));
    step_count_ = step_count;
    last_norm_ = -1.0;
  }

  void set_decay_mask(const std::vector<bool>& mask) {
    if (mask.size() != plan_->leaves().size())
      throw py::value_error("decay_mask has " + std::to_string(mask.size()) + " entries, the tree has " +
                            std::to_string(plan_->leaves().size()) + " leaves");
    decay_.assign(mask.begin(), mask.end());
  }
  std::vector<bool> decay_mask() const { return std::vector<bool>(decay_.begin(), decay_.end()); }

  TextbookRule rule() const { return rule_; }
  const py::object& plan() const { return plan_obj_; }
  const py::object& hyper() const { return hyper_obj_; }
  long long step_count() const { return step_count_; }
  py::object last_grad_norm() const { return last_norm_ < 0.0 ? py::none() : py::cast(last_norm_); }

 private:
  std::size_t slot_of(const std::string& name) const {
    for (std::size_t k = 0; k < kSlots; ++k)
      if (uses_slot(rule_, k) && name == fusedopt::slot_names(rule_)[k]) return k;
    std::string known;
    for (const auto& n : slot_names()) known += (known.empty() ? "" : ", ") + n;
    throw py::value_error("no state slot '" + name + "' in this optimizer (its slots: " + (known.empty() ? "none" : known) + ")");
  }

  void* slot_data(std::size_t k, const LeafSpec& s) const {
    char* base = static_cast<char*>(PyArray_DATA(reinterpret_cast<PyArrayObject*>(arenas_[k][s.dtype].ptr())));
    return base + s.offset * item_size(s.dtype);
  }

  // Two parameter leaves sharing memory would be stepped twice (and raced by threads).
  void check_no_shared_params(const std::vector<TextbookLeaf>& data) const {
    const auto& specs = plan_->leaves();
    std::vector<std::pair<const char*, std::size_t>> spans;
    for (std::size_t l = 0; l < specs.size(); ++l)
      if (specs[l].size > 0) spans.emplace_back(static_cast<const char*>(data[l].p), l);
    std::sort(spans.begin(), spans.end());
    for (std::size_t k = 1; k < spans.size(); ++k) {
      const LeafSpec& prev = specs[spans[k - 1].second];
      if (spans[k - 1].first + prev.size * item_size(prev.dtype) > spans[k].first)
        throw py::value_error(at_leaf("params", specs[spans[k].second]) + ": shares memory with " + at_leaf("params", prev) +
                              "; each parameter must be its own array");
    }
  }

  TextbookRule rule_;
  py::object plan_obj_;  // keeps plan_ alive
  const Plan* plan_ = nullptr;
  py::object hyper_obj_;  // keeps hyper_ alive; Python assigns its fields between steps
  const TextbookHyper* hyper_ = nullptr;
  py::object arenas_[kSlots][2];  // slot k, dtype d: 64-byte aligned, laid out as the plan's arenas
  std::vector<char> decay_;
  long long step_count_ = 0;
  double last_norm_ = -1.0;
  std::atomic<bool> busy_{false};
};

}  // namespace

void register_optim(py::module_& m) {
  py::enum_<TextbookRule> rules(m, "TextbookRule", "The textbook optimizers' rules (csrc/optim/rules.h).");
  for (const auto& [rule, name] : kRuleNames) rules.value(name, rule);
  py::enum_<Decay>(m, "Decay", "How weight decay enters a textbook rule.")
      .value("NONE", Decay::NONE)
      .value("L2", Decay::L2)
      .value("DECOUPLED", Decay::DECOUPLED);
  py::enum_<TextbookPhase>(m, "TextbookPhase", "FIRST: the step that creates SGD's momentum buffer.")
      .value("FIRST", TextbookPhase::FIRST)
      .value("STEADY", TextbookPhase::STEADY);
  py::list table;
  for (const auto& e : kRuleTable) table.append(py::make_tuple(e.rule, e.decay, e.phase));
  m.attr("rule_table") = py::tuple(table);
  m.def("rule_slots", [](TextbookRule r) {
    std::vector<std::string> out;
    for (std::size_t k = 0; k < kSlots; ++k)
      if (uses_slot(r, k)) out.emplace_back(slot_names(r)[k]);
    return out;
  }, py::arg("rule"), "The state slots of a rule, in torch.optim's names.");

  py::class_<TextbookHyper>(m, "TextbookHyper", "Hyper-parameters of a textbook rule (each rule reads its own).")
      .def(py::init<>())
      .def_readwrite("beta1", &TextbookHyper::beta1)
      .def_readwrite("beta2", &TextbookHyper::beta2)
      .def_readwrite("eps", &TextbookHyper::eps)
      .def_readwrite("weight_decay", &TextbookHyper::weight_decay)
      .def_readwrite("momentum", &TextbookHyper::momentum)
      .def_readwrite("dampening", &TextbookHyper::dampening)
      .def_readwrite("lr_decay", &TextbookHyper::lr_decay)
      .def_readwrite("initial_accumulator_value", &TextbookHyper::initial_accumulator_value)
      .def_readwrite("max_grad_norm", &TextbookHyper::max_grad_norm)
      .def_readwrite("maximize", &TextbookHyper::maximize)
      .def_readwrite("decoupled", &TextbookHyper::decoupled);

  py::class_<OptimState>(m, "OptimState", "A textbook optimizer's state over one tree: plan, slots, step count.")
      .def(py::init<TextbookRule, py::object, std::vector<bool>, py::object>(), py::arg("rule"), py::arg("plan"),
           py::arg("decay_mask"), py::arg("hyper"))
      .def("step", &OptimState::step, py::arg("params"), py::arg("grads"), py::arg("lr"), py::arg("check_finite"),
           "One step of the rule over the whole tree: every array checked first, then one fused pass "
           "(two with clipping), the step count committed with it.")
      .def("slot_views", &OptimState::slot_views, py::arg("name"), "Writable views of a slot, one per leaf.")
      .def("load", &OptimState::load, py::arg("slots"), py::arg("step_count"),
           "Copy {slot name: leaves} in and set the step count, after checking everything.")
      .def_property_readonly("slot_names", &OptimState::slot_names)
      .def_property("decay_mask", &OptimState::decay_mask, &OptimState::set_decay_mask)
      .def_property_readonly("rule", &OptimState::rule)
      .def_property_readonly("plan", &OptimState::plan)
      .def_property_readonly("hyper", &OptimState::hyper)
      .def_property_readonly("step_count", &OptimState::step_count)
      .def_property_readonly("last_grad_norm", &OptimState::last_grad_norm);
}

}  // namespace fusedopt
