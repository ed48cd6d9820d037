// Binding of the optim family's native state (fusedopt.optim, fusedopt.torch):
// the rule enums and specs, the hyper-parameters (OptimHyper, by the names
// optim/rules.h declares) and OptimState, which holds a tree's plan, the state
// slots of every leaf, the rule's scalar state and the step count, checks
// every array of a step before anything is written, and commits the whole
// step in one call.
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "optim/step.h"
#include "arrays.h"
#include "grads_back.h"
#include "numpy_api.h"
#include "overlap.h"
#include "registry.h"
#include "tree.h"

namespace fusedopt {

namespace {

std::string got_of(PyObject* o) {
  if (!PyArray_Check(o)) return Py_TYPE(o)->tp_name;
  PyArrayObject* a = reinterpret_cast<PyArrayObject*>(o);
  return py::str(py::handle(reinterpret_cast<PyObject*>(PyArray_DESCR(a)))).cast<std::string>() + " array of shape " +
         shape_string(PyArray_DIMS(a), static_cast<std::size_t>(PyArray_NDIM(a)));
}

// An array of the leaf's shape and dtype (or `dtype`: a master or its float32
// slots), or a TypeError/ValueError naming the leaf (messages are built only on
// failure: this runs for every leaf of every step).
PyArrayObject* matching_leaf(const Plan& plan, std::size_t l, PyObject* o, const char* what,
                             std::optional<Dtype> dtype = std::nullopt) {
  const LeafSpec& s = plan.leaves()[l];
  const Dtype want = dtype.value_or(s.dtype);
  PyArrayObject* a = PyArray_Check(o) ? reinterpret_cast<PyArrayObject*>(o) : nullptr;
  const bool dtype_ok = a && PyArray_TYPE(a) == type_number(want);
  const bool shape_ok = a && PyArray_NDIM(a) == static_cast<int>(s.shape.size()) &&
                        std::equal(s.shape.begin(), s.shape.end(), PyArray_DIMS(a));
  if (dtype_ok && shape_ok) return a;
  const std::string msg = where(what, s) + ": expected a " + dtype_name(want) + " array of shape " +
                          plan.shape_str(l) + (std::strcmp(what, "grads") == 0 ? " (its parameter's)" : "") + ", got " + (a ? "a " : "") +
                          got_of(o);
  if (!dtype_ok) throw py::type_error(msg);
  throw py::value_error(msg);
}

std::vector<std::string> rule_slot_names(OptimRule r) {
  std::vector<std::string> out;
  for (const SlotSpec& slot : spec_of(r).slots)
    if (slot.name[0]) out.emplace_back(slot.name);
  return out;
}

double OptimHyper::*hyper_field(const std::string& name) {
  for (const HyperSpec& h : kHyperSpecs)
    if (name == h.name) return h.field;
  throw py::key_error("no optim hyper-parameter '" + name + "' (fusedopt._core.optim_hyper_fields lists them)");
}

// Clears a flag when the step ends, however it ends.
struct BusyGuard {
  std::atomic<bool>& flag;
  ~BusyGuard() { flag.store(false); }
};

class OptimState {
 public:
  OptimState(OptimRule rule, py::object plan, std::vector<bool> decay_mask, py::object hyper, bool master_weights)
      : rule_(rule), plan_obj_(std::move(plan)), hyper_obj_(std::move(hyper)), master_(master_weights) {
    if (static_cast<unsigned>(rule) >= kNumOptimRules) throw py::value_error("rule: not an OptimRule");
    if (!py::isinstance<Plan>(plan_obj_)) throw py::type_error("plan must be a fusedopt._core.Plan");
    if (!py::isinstance<OptimHyper>(hyper_obj_)) throw py::type_error("hyper must be a fusedopt._core.OptimHyper");
    plan_ = plan_obj_.cast<const Plan*>();
    hyper_ = &hyper_obj_.cast<const OptimHyper&>();
    set_decay_mask(decay_mask);
    const OptimRuleSpec& spec = spec_of(rule_);
    for (std::size_t k = 0; k < kMaxScalarState; ++k) scalars_[k] = spec.scalar_state[k].start;
    for (std::size_t k = 0; k < kSlots; ++k) {
      if (!uses_slot(rule_, k)) continue;
      const int start = spec.slots[k].start;
      const double fill = start == kZero ? 0.0 : hyper_->*kHyperSpecs[start].field;
      for (Dtype d : {F32, F64, BF16, F16}) {
        if (!has_arena(d)) continue;
        const std::size_t n = plan_->arena_size(d);
        arenas_[k][d] = aligned_empty(n, slot_dtype(d));
        void* data = arena_data(arenas_[k][d], slot_dtype(d), n, "slot");
        if (slot_dtype(d) == F32)
          std::fill_n(static_cast<float*>(data), n, static_cast<float>(fill));
        else if (d == F64)
          std::fill_n(static_cast<double*>(data), n, fill);
        else  // the start value's float32 rounded to nearest even, as NumPy and ml_dtypes convert it
          arenas_[k][d].attr("fill")(py::module_::import("numpy").attr("float32")(fill));
      }
    }
    if (master_)
      for (Dtype d : {BF16, F16})
        if (has_arena(d)) masters_[d] = aligned_empty(plan_->arena_size(d), F32);  // written at the first step
  }

  void step(py::handle params, py::handle grads, double lr, bool check_finite) {
    if (!(lr >= 0.0 && std::isfinite(lr))) throw py::value_error("lr must be finite and >= 0, got " + std::to_string(lr));
    if (step_count_ == LLONG_MAX)
      throw py::value_error("step_count is 2**63 - 1, the most this optimizer counts: no further step can be taken");
    const auto& specs = plan_->leaves();
    std::vector<OptimLeaf> data(specs.size());
    std::vector<py::object> held;  // every array the kernels touch, alive while the GIL is released
    held.reserve(2 * specs.size());
    const OptimHyper hyper = *hyper_;  // a copy: Python may assign to it while the GIL is released
    // The step has one gradient factor: clipping's or the unscale's (the norm would be the scaled gradients').
    if (hyper.max_grad_norm > 0.0 && hyper.grad_scale > 0.0)
      throw py::value_error("max_grad_norm and grad_scale are both set: unscale the gradients before clipping them");
    GradsBack back(hyper.grad_scale > 0.0 && hyper.unscale_in_place != 0.0);
    plan_->walk(grads.ptr(), "grads", [&](std::size_t l, PyObject* o) {
      PyArrayObject* a = back.take(matching_leaf(*plan_, l, o, "grads"), specs[l], held);
      data[l].dtype = specs[l].dtype;
      data[l].g = PyArray_DATA(a);
    });
    plan_->walk(params.ptr(), "params", [&](std::size_t l, PyObject* o) {
      PyArrayObject* a = matching_leaf(*plan_, l, o, "params");
      if (!PyArray_ISWRITEABLE(a))
        throw py::value_error(where("params", specs[l]) + ": the array is read-only; it must be writeable to be stepped in place");
      if (!PyArray_ISCARRAY(a) || !PyArray_ISNOTSWAPPED(a))
        throw py::value_error(where("params", specs[l]) +
                              ": the array must be C-contiguous, aligned and in native byte order to be stepped in place");
      held.push_back(py::reinterpret_borrow<py::object>(o));
      data[l].p = PyArray_DATA(a);
    });
    if (back.on()) {
      std::vector<const void*> taken;
      taken.reserve(data.size());
      for (const OptimLeaf& d : data) taken.push_back(d.g);
      check_overlaps(data, held);
      for (std::size_t l = 0; l < specs.size(); ++l) {
        back.refuse_moved(taken[l], data[l].g, specs[l]);
        data[l].gout = const_cast<void*>(data[l].g);
      }
    } else {
      check_overlaps(data, held);
    }
    if (check_finite)
      for (std::size_t l = 0; l < specs.size(); ++l) {
        const bool ok = all_finite(data[l].g, specs[l].dtype, specs[l].size);
        if (!ok) {
          PyErr_SetString(PyExc_FloatingPointError,
                          (where("grads", specs[l]) + " contains NaN or Inf (check_finite=True); nothing was modified").c_str());
          throw py::error_already_set();
        }
      }
    for (std::size_t l = 0; l < specs.size(); ++l) {
      data[l].decay = decay_[l] != 0;
      data[l].size = specs[l].size;
      for (std::size_t k = 0; k < kSlots; ++k)
        data[l].s[k] = uses_slot(rule_, k) ? slot_data(k, specs[l]) : nullptr;
      data[l].master = master_data(specs[l]);
    }
    LowRounding rounding = rounding_;
    rounding.fresh_master = master_ && !master_ready_;
    ScalarState scalars = scalars_;   // committed with the step
    bool expected = false;
    if (!busy_.compare_exchange_strong(expected, true))
      throw py::value_error("this optimizer is being stepped by another thread; step it from one thread at a time");
    BusyGuard guard{busy_};
    double norm;
    {
      py::gil_scoped_release nogil;
      norm = run_optim_step(rule_, plan_->layout(), data, hyper, lr, step_count_ + 1, scalars, rounding);
    }
    ++step_count_;
    master_ready_ = master_;
    scalars_ = scalars;
    last_norm_ = norm;
    back.copy_back();
  }

  std::vector<std::string> slot_names() const { return rule_slot_names(rule_); }

  // The rule's scalar state, {name: value}.
  py::dict scalars() const {
    py::dict out;
    const OptimRuleSpec& spec = spec_of(rule_);
    for (std::size_t k = 0; k < kMaxScalarState; ++k)
      if (spec.scalar_state[k].name[0]) out[spec.scalar_state[k].name] = scalars_[k];
    return out;
  }

  // Views into slot `name`, one per leaf (writable: they are the state itself).
  py::list slot_views(const std::string& name) const {
    const std::size_t k = slot_of(name);
    py::list out;
    for (const auto& s : plan_->leaves()) out.append(arena_view(arenas_[k][s.dtype], slot_dtype(s.dtype), s.offset, s.shape));
    return out;
  }

  // The float32 masters, one per leaf: a writable view for a 16-bit leaf once
  // its master exists (after the first step or a load), else None.
  py::list master_views() const {
    py::list out;
    for (const auto& s : plan_->leaves())
      if (master_ready_ && is_low(s.dtype))
        out.append(arena_view(masters_[s.dtype], F32, s.offset, s.shape));
      else
        out.append(py::none());
    return out;
  }

  // The rule's scalar state from {name: value}: every name it keeps, finite, no other.
  ScalarState parsed_scalars(py::dict scalars) const {
    const OptimRuleSpec& spec = spec_of(rule_);
    ScalarState new_scalars{};
    std::size_t named = 0;
    for (std::size_t k = 0; k < kMaxScalarState; ++k) {
      const char* name = spec.scalar_state[k].name;
      if (!name[0]) continue;
      ++named;
      if (!scalars.contains(name)) throw py::value_error(std::string("the state has no scalar ") + name);
      new_scalars[k] = py::cast<double>(scalars[name]);
      if (!std::isfinite(new_scalars[k]))
        throw py::value_error(std::string("scalar ") + name + " must be finite, got " + std::to_string(new_scalars[k]));
    }
    if (py::len(scalars) != named)
      throw py::value_error("the state has scalars this rule does not keep (its scalars: " +
                            std::to_string(named) + ")");
    return new_scalars;
  }

  // Replaces the rule's scalar state (checked first: all or nothing).
  void set_scalars(py::dict scalars) {
    const ScalarState new_scalars = parsed_scalars(scalars);
    if (busy_.load()) throw py::value_error("this optimizer is being stepped by another thread");
    scalars_ = new_scalars;
  }

  // Checks every array of `slots` (one list per used slot name), the rule's
  // scalar state (every name, a finite value), the count and, with master
  // weights, `master` (a float32 array per 16-bit leaf, None for the others;
  // None: each master is created from its parameter at the next step), then
  // copies them in: all or nothing.
  void load(py::dict slots, py::dict scalars, long long step_count, py::object master) {
    if (step_count < 0) throw py::value_error("step_count must be >= 0, got " + std::to_string(step_count));
    const ScalarState new_scalars = parsed_scalars(scalars);
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
        arrays.push_back(contiguous(l, leaves[l], name, slot_dtype(specs[l].dtype)));
      }
      sources.emplace_back(k, std::move(arrays));
    }
    std::vector<py::object> masters;
    if (!master.is_none()) {
      if (!master_) throw py::value_error("master: this state keeps no master weights (master_weights=False)");
      py::sequence leaves = py::reinterpret_borrow<py::sequence>(master);
      if (static_cast<std::size_t>(py::len(leaves)) != specs.size())
        throw py::value_error("master has " + std::to_string(py::len(leaves)) + " leaves, expected " +
                              std::to_string(specs.size()));
      for (std::size_t l = 0; l < specs.size(); ++l) {
        py::object leaf = leaves[l];
        if (!is_low(specs[l].dtype)) {
          if (!leaf.is_none())
            throw py::value_error(where("master", specs[l]) + ": a " + dtype_name(specs[l].dtype) +
                                  " leaf has no master, expected None");
          masters.emplace_back();
          continue;
        }
        masters.push_back(contiguous(l, leaf, "master", F32));
      }
    }
    for (std::size_t k = 0; k < kSlots; ++k)
      if (uses_slot(rule_, k) && std::none_of(sources.begin(), sources.end(), [&](const auto& s) { return s.first == k; }))
        throw py::value_error(std::string("the state has no slot ") + spec_of(rule_).slots[k].name);
    if (busy_.load()) throw py::value_error("this optimizer is being stepped by another thread");
    for (const auto& [k, arrays] : sources)
      for (std::size_t l = 0; l < specs.size(); ++l)
        std::memcpy(slot_data(k, specs[l]), PyArray_DATA(reinterpret_cast<PyArrayObject*>(arrays[l].ptr())),
                    specs[l].size * item_size(slot_dtype(specs[l].dtype)));
    for (std::size_t l = 0; l < masters.size(); ++l)
      if (masters[l])
        std::memcpy(master_data(specs[l]), PyArray_DATA(reinterpret_cast<PyArrayObject*>(masters[l].ptr())),
                    specs[l].size * sizeof(float));
    master_ready_ = master_ && !master.is_none();
    step_count_ = step_count;
    scalars_ = new_scalars;
    last_norm_ = -1.0;
  }

  void set_decay_mask(const std::vector<bool>& mask) {
    if (mask.size() != plan_->leaves().size())
      throw py::value_error("decay_mask has " + std::to_string(mask.size()) + " entries, the tree has " +
                            std::to_string(plan_->leaves().size()) + " leaves");
    decay_.assign(mask.begin(), mask.end());
  }
  std::vector<bool> decay_mask() const { return std::vector<bool>(decay_.begin(), decay_.end()); }

  bool stochastic_rounding() const { return rounding_.stochastic; }
  void set_stochastic_rounding(bool on) { rounding_.stochastic = on; }
  bool stochastic_state() const { return rounding_.stochastic_state; }
  void set_stochastic_state(bool on) { rounding_.stochastic_state = on; }
  std::uint64_t seed() const { return rounding_.seed; }
  void set_seed(std::uint64_t seed) { rounding_.seed = seed; }

  bool master_weights() const { return master_; }
  OptimRule rule() const { return rule_; }
  const py::object& plan() const { return plan_obj_; }
  const py::object& hyper() const { return hyper_obj_; }
  long long step_count() const { return step_count_; }
  py::object last_grad_norm() const { return last_norm_ < 0.0 ? py::none() : py::cast(last_norm_); }

 private:
  std::size_t slot_of(const std::string& name) const {
    for (std::size_t k = 0; k < kSlots; ++k)
      if (uses_slot(rule_, k) && name == spec_of(rule_).slots[k].name) return k;
    std::string known;
    for (const auto& n : slot_names()) known += (known.empty() ? "" : ", ") + n;
    throw py::value_error("no state slot '" + name + "' in this optimizer (its slots: " + (known.empty() ? "none" : known) + ")");
  }

  // float32 and float64 arenas always exist (maybe empty); 16-bit ones when a leaf has that dtype.
  bool has_arena(Dtype d) const { return !is_low(d) || plan_->uses(d); }

  // The slots of a 16-bit leaf are float32 with master weights, else of the leaf's dtype.
  Dtype slot_dtype(Dtype d) const { return master_ && is_low(d) ? F32 : d; }

  void* slot_data(std::size_t k, const LeafSpec& s) const {
    char* base = static_cast<char*>(PyArray_DATA(reinterpret_cast<PyArrayObject*>(arenas_[k][s.dtype].ptr())));
    return base + s.offset * item_size(slot_dtype(s.dtype));
  }

  float* master_data(const LeafSpec& s) const {
    if (!master_ || !is_low(s.dtype)) return nullptr;
    return static_cast<float*>(PyArray_DATA(reinterpret_cast<PyArrayObject*>(masters_[s.dtype].ptr()))) + s.offset;
  }

  // A C-contiguous array of leaf l's shape and `dtype` (a copy when needed), or the leaf's error.
  py::object contiguous(std::size_t l, py::handle leaf, const std::string& what, Dtype dtype) const {
    matching_leaf(*plan_, l, leaf.ptr(), what.c_str(), dtype);
    PyObject* c = PyArray_FromAny(leaf.ptr(), PyArray_DescrFromType(type_number(dtype)), 0, 0, NPY_ARRAY_CARRAY_RO, nullptr);
    if (!c) throw py::error_already_set();
    return py::reinterpret_steal<py::object>(c);
  }

  // Parameters overlapping each other or a state arena are refused; a gradient
  // overlapping either is read as it was before the step (a copy, kept in `held`),
  // as numpy's p - lr * g.copy() reads it. Addresses that passed are remembered.
  void check_overlaps(std::vector<OptimLeaf>& data, std::vector<py::object>& held) {
    const auto& specs = plan_->leaves();
    auto& key = checked_.probe();  // the arenas and the plan are this state's for life
    for (const OptimLeaf& d : data) {  // push_back: an initializer-list insert is a range insert per leaf
      key.push_back(d.g);
      key.push_back(d.p);
    }
    if (checked_.seen()) return;
    std::vector<Span> spans;
    spans.reserve(specs.size() + 2 * kSlots);
    for (std::size_t l = 0; l < specs.size(); ++l)
      add_span(spans, data[l].p, specs[l].size * item_size(specs[l].dtype), "params", l);
    for (std::size_t k = 0; k < kSlots; ++k)
      if (uses_slot(rule_, k))
        for (Dtype d : {F32, F64, BF16, F16})
          if (has_arena(d))
            add_span(spans, PyArray_DATA(reinterpret_cast<PyArrayObject*>(arenas_[k][d].ptr())),
                   plan_->arena_size(d) * item_size(slot_dtype(d)), spec_of(rule_).slots[k].name, kNoIndex);
    for (Dtype d : {BF16, F16})
      if (masters_[d])
        add_span(spans, PyArray_DATA(reinterpret_cast<PyArrayObject*>(masters_[d].ptr())),
                 plan_->arena_size(d) * sizeof(float), "master", kNoIndex);
    refuse_overlaps(*plan_, spans);
    bool copied = false;  // then the key is not remembered: this step reads copies
    for (std::size_t l = 0; l < specs.size(); ++l)
      if (const void* c = copy_if_overlapping(spans, data[l].g, specs[l].size * item_size(specs[l].dtype), held[l], held)) {
        data[l].g = c;
        copied = true;
      }
    if (!copied) checked_.add();
  }

  OptimRule rule_;
  py::object plan_obj_;  // keeps plan_ alive
  const Plan* plan_ = nullptr;
  py::object hyper_obj_;  // keeps hyper_ alive; Python assigns its fields between steps
  const OptimHyper* hyper_ = nullptr;
  py::object arenas_[kSlots][kNumDtypes];  // slot k, dtype d: 64-byte aligned, laid out as the plan's arenas
  LowRounding rounding_;                   // of bfloat16/float16 leaves
  bool master_ = false;                    // 16-bit leaves keep a float32 master and float32 slots
  py::object masters_[kNumDtypes];         // the masters of the BF16 and F16 leaves, laid out as the plan's arenas
  bool master_ready_ = false;              // the masters hold values (else the next step widens the parameters)
  std::vector<char> decay_;
  ScalarState scalars_{};  // the rule's scalar state (spec_of(rule_).scalar_state)
  long long step_count_ = 0;
  double last_norm_ = -1.0;
  std::atomic<bool> busy_{false};
  CheckedAddresses checked_;
};

}  // namespace

void register_optim(py::module_& m) {
  py::enum_<OptimRule> rules(m, "OptimRule", "The optim family's rules (csrc/optim/rules.h, kOptimRuleSpecs).");
  for (unsigned r = 0; r < kNumOptimRules; ++r) rules.value(kOptimRuleSpecs[r].name, OptimRule(r));
  py::enum_<OptimDecay>(m, "OptimDecay", "How weight decay enters an optim rule.")
      .value("NONE", OptimDecay::NONE)
      .value("L2", OptimDecay::L2)
      .value("DECOUPLED", OptimDecay::DECOUPLED);
  py::enum_<OptimPhase>(m, "OptimPhase", "FIRST: the step that starts slot 0 from the gradient (SGD's buffer).")
      .value("FIRST", OptimPhase::FIRST)
      .value("STEADY", OptimPhase::STEADY);
  py::list table;
  for (const auto& e : kOptimKernels) table.append(py::make_tuple(e.rule, e.decay, e.phase));
  m.attr("optim_kernels") = py::tuple(table);
  m.def("optim_rule_spec", [](OptimRule r) {
    if (static_cast<unsigned>(r) >= kNumOptimRules) throw py::value_error("rule: not an OptimRule");
    const OptimRuleSpec& s = spec_of(r);
    py::dict out, slots, scalars;
    for (const SlotSpec& slot : s.slots)
      if (slot.name[0]) slots[slot.name] = slot.start == kZero ? py::object(py::none()) : py::str(kHyperSpecs[slot.start].name);
    for (const ScalarStateSpec& sc : s.scalar_state)
      if (sc.name[0]) scalars[sc.name] = sc.start;
    py::list decays, phases;
    for (OptimDecay d : {OptimDecay::NONE, OptimDecay::L2, OptimDecay::DECOUPLED})
      if (has_decay(r, d)) decays.append(d);
    for (OptimPhase p : {OptimPhase::FIRST, OptimPhase::STEADY})
      if (has_phase(r, p)) phases.append(p);
    out["slots"] = slots;
    out["scalars"] = scalars;
    out["decays"] = py::tuple(decays);
    out["phases"] = py::tuple(phases);
    return out;
  }, py::arg("rule"),
     "A rule's spec: slots {name: the hyper-parameter it starts at, or None for 0}, scalars {name: start}, "
     "decays and phases.");
  py::list fields;
  for (const HyperSpec& h : kHyperSpecs) fields.append(py::make_tuple(h.name, h.domain_name));
  m.attr("optim_hyper_fields") = py::tuple(fields);

  py::class_<OptimHyper>(m, "OptimHyper",
                         "Hyper-parameters of an optim rule, by name (optim_hyper_fields; each rule reads its own).")
      .def(py::init<>())
      .def("__getitem__", [](const OptimHyper& h, const std::string& name) { return h.*hyper_field(name); })
      .def("__setitem__", [](OptimHyper& h, const std::string& name, double value) { h.*hyper_field(name) = value; });

  py::class_<OptimState>(m, "OptimState", "An optim rule's state over one tree: plan, slots, scalars, step count.")
      .def(py::init<OptimRule, py::object, std::vector<bool>, py::object, bool>(), py::arg("rule"), py::arg("plan"),
           py::arg("decay_mask"), py::arg("hyper"), py::arg("master_weights") = false)
      .def("step", &OptimState::step, py::arg("params"), py::arg("grads"), py::arg("lr"), py::arg("check_finite"),
           "One step of the rule over the whole tree: every array checked first, then one fused pass "
           "(two with clipping), the step count and scalar state committed with it.")
      .def("slot_views", &OptimState::slot_views, py::arg("name"), "Writable views of a slot, one per leaf.")
      .def("load", &OptimState::load, py::arg("slots"), py::arg("scalars"), py::arg("step_count"),
           py::arg("master") = py::none(),
           "Copy {slot name: leaves}, {scalar name: value} and the masters (master weights: a float32 array per "
           "16-bit leaf, None for the others; None: created from the parameters at the next step) in and set the "
           "step count, after checking everything.")
      .def("master_views", &OptimState::master_views,
           "Writable views of the float32 masters, one per leaf (None for a leaf without one, and before they exist).")
      .def_property_readonly("master_weights", &OptimState::master_weights)
      .def_property_readonly("slot_names", &OptimState::slot_names)
      .def_property("scalars", &OptimState::scalars, &OptimState::set_scalars)
      .def_property("decay_mask", &OptimState::decay_mask, &OptimState::set_decay_mask)
      .def_property("stochastic_rounding", &OptimState::stochastic_rounding, &OptimState::set_stochastic_rounding,
                    "Round bfloat16/float16 parameters stochastically (else to nearest even).")
      .def_property("stochastic_state", &OptimState::stochastic_state, &OptimState::set_stochastic_state,
                    "Round the bfloat16/float16 state slots stochastically (else to nearest even).")
      .def_property("seed", &OptimState::seed, &OptimState::set_seed, "The stochastic rounding's seed, 0 <= seed < 2**64.")
      .def_property_readonly("rule", &OptimState::rule)
      .def_property_readonly("plan", &OptimState::plan)
      .def_property_readonly("hyper", &OptimState::hyper)
      .def_property_readonly("step_count", &OptimState::step_count)
      .def_property_readonly("last_grad_norm", &OptimState::last_grad_norm);
}

}  // namespace fusedopt
