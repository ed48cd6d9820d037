// Binding of the 8-bit optimizers' native state (fusedopt.optim's Adam8bit,
// AdamW8bit, Lion8bit): Quant8State holds a tree's plan, its rule, each leaf's
// slots (codes and block absmax for leaves of at least min_8bit_size elements,
// float32 below) and the step count, reads
// the optim family's OptimHyper, and checks every array of a step (overlap as
// OptimState: docs/aliasing.md) before anything is written. Also the blockwise
// encoder and decoder themselves, for state conversion and tests.
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "optim/quant8.h"
#include "optim/step.h"
#include "arrays.h"
#include "grads_back.h"
#include "numpy_api.h"
#include "overlap.h"
#include "registry.h"
#include "tree.h"

namespace fusedopt {

namespace {

constexpr int kNpyUint8 = NPY_UINT8;

std::string describe(PyObject* o) {
  if (!PyArray_Check(o)) return Py_TYPE(o)->tp_name;
  PyArrayObject* a = reinterpret_cast<PyArrayObject*>(o);
  return py::str(py::handle(reinterpret_cast<PyObject*>(PyArray_DESCR(a)))).cast<std::string>() + " array of shape " +
         shape_string(PyArray_DIMS(a), static_cast<std::size_t>(PyArray_NDIM(a)));
}

// `o` as an array of NumPy type `type` and `shape`, or a TypeError/ValueError naming `what`.
PyArrayObject* checked(PyObject* o, int type, const std::vector<Py_ssize_t>& shape, const std::string& what) {
  PyArrayObject* a = PyArray_Check(o) ? reinterpret_cast<PyArrayObject*>(o) : nullptr;
  const bool type_ok = a && PyArray_TYPE(a) == type;
  const bool shape_ok = a && PyArray_NDIM(a) == static_cast<int>(shape.size()) &&
                        std::equal(shape.begin(), shape.end(), PyArray_DIMS(a));
  if (type_ok && shape_ok) return a;
  const std::string msg = what + ": expected a " + py::str(py::handle(reinterpret_cast<PyObject*>(PyArray_DescrFromType(type)))).cast<std::string>() +
                          " array of shape " + shape_string(shape.data(), shape.size()) + ", got " + (a ? "a " : "") +
                          describe(o);
  if (!type_ok) throw py::type_error(msg);
  throw py::value_error(msg);
}

py::object new_array(int type, const std::vector<Py_ssize_t>& shape) {
  std::vector<npy_intp> dims(shape.begin(), shape.end());
  PyObject* a = PyArray_ZEROS(static_cast<int>(dims.size()), dims.data(), type, 0);
  if (!a) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(a);
}

void* data_of(const py::object& a) { return PyArray_DATA(reinterpret_cast<PyArrayObject*>(a.ptr())); }

// A C-contiguous copy when `o` is not one (the caller keeps it alive).
PyArrayObject* contiguous(PyArrayObject* a, std::vector<py::object>& held) {
  if (PyArray_ISCARRAY_RO(a) && PyArray_ISNOTSWAPPED(a)) {
    held.push_back(py::reinterpret_borrow<py::object>(reinterpret_cast<PyObject*>(a)));
    return a;
  }
  PyObject* c = PyArray_FromAny(reinterpret_cast<PyObject*>(a), PyArray_DescrFromType(PyArray_TYPE(a)), 0, 0,
                                NPY_ARRAY_CARRAY_RO | NPY_ARRAY_ENSURECOPY, nullptr);
  if (!c) throw py::error_already_set();
  held.push_back(py::reinterpret_steal<py::object>(c));
  return reinterpret_cast<PyArrayObject*>(c);
}

struct Busy {
  std::atomic<bool>& flag;
  ~Busy() { flag.store(false); }
};

void check_block(long long block) {
  if (block < 16 || block > 4096 || (block & (block - 1)) != 0)
    throw py::value_error("block_size must be a power of two from 16 to 4096, got " + std::to_string(block));
}

class Quant8State {
 public:
  Quant8State(py::object plan, std::vector<bool> decay_mask, py::object hyper, long long block_size, long long min_8bit_size,
              OptimRule rule)
      : plan_obj_(std::move(plan)), hyper_obj_(std::move(hyper)), rule_(rule) {
    if (quant8_rule_index(rule) == kNumQuant8Rules)
      throw py::value_error(std::string("rule: ") + spec_of(rule).name + " has no 8-bit state (ADAM and LION have)");
    if (!py::isinstance<Plan>(plan_obj_)) throw py::type_error("plan must be a fusedopt._core.Plan");
    if (!py::isinstance<OptimHyper>(hyper_obj_)) throw py::type_error("hyper must be a fusedopt._core.OptimHyper");
    check_block(block_size);
    if (min_8bit_size < 0) throw py::value_error("min_8bit_size must be >= 0, got " + std::to_string(min_8bit_size));
    plan_ = plan_obj_.cast<const Plan*>();
    hyper_ = &hyper_obj_.cast<const OptimHyper&>();
    block_ = static_cast<std::size_t>(block_size);
    min_8bit_ = static_cast<std::size_t>(min_8bit_size);
    const bool lion = rule == rule_named("LION");
    for (const LeafSpec& s : plan_->leaves())
      if (s.dtype != F32)
        throw py::type_error(where("params", s) + (lion ? ": Lion8bit steps" : ": Adam8bit and AdamW8bit step") +
                             " float32 parameters, got " + dtype_name(s.dtype) + " (use fusedopt.optim." +
                             (lion ? "Lion" : "Adam/AdamW") + " for float64)");
    set_decay_mask(decay_mask);
    // the rule's slots, then one absmax slot for each
    const std::size_t k_rule = quant8_slots(rule);
    for (std::size_t k = 0; k < k_rule; ++k) names_.push_back(spec_of(rule).slots[k].name);
    for (std::size_t k = 0; k < k_rule; ++k) names_.push_back(names_[k] + "_absmax");
    slots_.resize(names_.size());
    for (std::size_t l = 0; l < plan_->leaves().size(); ++l)
      for (std::size_t k = 0; k < slots_.size(); ++k) slots_[k].push_back(new_array(slot_type(l, k), slot_shape(l, k)));
  }

  void step(py::handle params, py::handle grads, double lr, bool check_finite) {
    if (!(lr >= 0.0 && std::isfinite(lr))) throw py::value_error("lr must be finite and >= 0, got " + std::to_string(lr));
    if (step_count_ == LLONG_MAX)
      throw py::value_error("step_count is 2**63 - 1, the most this optimizer counts: no further step can be taken");
    const auto& specs = plan_->leaves();
    std::vector<Quant8Leaf> leaves(specs.size());
    std::vector<py::object> held;  // gradient l at held[l], then the parameters: alive while the GIL is released
    held.reserve(2 * specs.size());
    const OptimHyper h = *hyper_;  // a copy: Python may assign to it while the GIL is released
    GradsBack back(h.grad_scale > 0.0 && h.unscale_in_place != 0.0);
    plan_->walk(grads.ptr(), "grads", [&](std::size_t l, PyObject* o) {
      PyArrayObject* a = back.take(checked(o, NPY_FLOAT, specs[l].shape, where("grads", specs[l])), specs[l], held);
      leaves[l].g = static_cast<const float*>(PyArray_DATA(a));
    });
    plan_->walk(params.ptr(), "params", [&](std::size_t l, PyObject* o) {
      PyArrayObject* a = checked(o, NPY_FLOAT, specs[l].shape, where("params", specs[l]));
      if (!PyArray_ISWRITEABLE(a))
        throw py::value_error(where("params", specs[l]) + ": the array is read-only; it must be writeable to be stepped in place");
      if (!PyArray_ISCARRAY(a) || !PyArray_ISNOTSWAPPED(a))
        throw py::value_error(where("params", specs[l]) +
                              ": the array must be C-contiguous, aligned and in native byte order to be stepped in place");
      held.push_back(py::reinterpret_borrow<py::object>(o));
      leaves[l].p = static_cast<float*>(PyArray_DATA(a));
    });
    std::vector<const float*> taken;
    for (const Quant8Leaf& d : leaves) taken.push_back(d.g);
    check_overlaps(leaves, held);
    for (std::size_t l = 0; l < specs.size(); ++l) {
      back.refuse_moved(taken[l], leaves[l].g, specs[l]);
      if (back.on()) leaves[l].gout = const_cast<float*>(leaves[l].g);
    }
    if (check_finite)
      for (std::size_t l = 0; l < specs.size(); ++l)
        if (!all_finite(leaves[l].g, F32, specs[l].size)) {
          PyErr_SetString(PyExc_FloatingPointError,
                          (where("grads", specs[l]) + " contains NaN or Inf (check_finite=True); nothing was modified").c_str());
          throw py::error_already_set();
        }
    const std::size_t k_rule = rule_slots();
    for (std::size_t l = 0; l < specs.size(); ++l) {
      Quant8Leaf& d = leaves[l];
      d.n = specs[l].size;
      d.decay = decay_[l] != 0;
      for (std::size_t k = 0; k < k_rule; ++k) {
        if (quantized(l)) {
          d.codes[k] = static_cast<std::uint8_t*>(data_of(slots_[k][l]));
          d.absmax[k] = static_cast<float*>(data_of(slots_[k_rule + k][l]));
        } else {
          d.values[k] = static_cast<float*>(data_of(slots_[k][l]));
        }
      }
    }
    bool expected = false;
    if (!busy_.compare_exchange_strong(expected, true))
      throw py::value_error("this optimizer is being stepped by another thread; step it from one thread at a time");
    Busy guard{busy_};
    {
      py::gil_scoped_release nogil;
      run_quant8_step(rule_, leaves, block_, h, lr, step_count_ + 1);
    }
    ++step_count_;
    back.copy_back();
  }

  const std::vector<std::string>& slot_names() const { return names_; }

  py::list slot_views(const std::string& name) const {
    const std::size_t k = slot_of(name);
    py::list out;
    for (const auto& a : slots_[k]) out.append(a[py::make_tuple(py::ellipsis())]);
    return out;
  }

  // {slot name: leaves} for every slot, each leaf checked, then copied in: all
  // or nothing. `scalars` as OptimState.load's: this rule keeps none.
  void load(py::dict slots, py::dict scalars, long long step_count) {
    if (step_count < 0) throw py::value_error("step_count must be >= 0, got " + std::to_string(step_count));
    if (py::len(scalars) != 0) throw py::value_error("the state has scalars this rule does not keep (its scalars: 0)");
    const auto& specs = plan_->leaves();
    std::vector<std::vector<py::object>> sources(slots_.size());
    for (std::size_t k = 0; k < slots_.size(); ++k) {
      const std::string& name = names_[k];
      if (!slots.contains(name)) throw py::value_error("the state has no slot " + name);
      py::sequence leaves = py::reinterpret_borrow<py::sequence>(slots[name.c_str()]);
      if (static_cast<std::size_t>(py::len(leaves)) != specs.size())
        throw py::value_error("state slot " + name + " has " + std::to_string(py::len(leaves)) +
                              " leaves, expected " + std::to_string(specs.size()));
      for (std::size_t l = 0; l < specs.size(); ++l) {
        py::object leaf = leaves[l];
        const std::string what = where(name, specs[l]);
        PyArrayObject* a = checked(leaf.ptr(), slot_type(l, k), slot_shape(l, k), what);
        std::vector<py::object> keep;
        a = contiguous(a, keep);
        if (k >= rule_slots()) {  // absmax: finite and >= 0
          const float* x = static_cast<const float*>(PyArray_DATA(a));
          const std::size_t n = static_cast<std::size_t>(PyArray_SIZE(a));
          if (!std::all_of(x, x + n, [](float f) { return f >= 0.0f && std::isfinite(f); }))
            throw py::value_error(what + ": every block's absmax must be finite and >= 0");
        }
        sources[k].push_back(keep.back());
      }
    }
    if (busy_.load()) throw py::value_error("this optimizer is being stepped by another thread");
    for (std::size_t k = 0; k < slots_.size(); ++k)
      for (std::size_t l = 0; l < specs.size(); ++l)
        std::memcpy(data_of(slots_[k][l]), data_of(sources[k][l]),
                    static_cast<std::size_t>(PyArray_NBYTES(reinterpret_cast<PyArrayObject*>(sources[k][l].ptr()))));
    step_count_ = step_count;
  }

  void set_decay_mask(const std::vector<bool>& mask) {
    if (mask.size() != plan_->leaves().size())
      throw py::value_error("decay_mask has " + std::to_string(mask.size()) + " entries, the tree has " +
                            std::to_string(plan_->leaves().size()) + " leaves");
    decay_.assign(mask.begin(), mask.end());
  }
  std::vector<bool> decay_mask() const { return std::vector<bool>(decay_.begin(), decay_.end()); }
  std::vector<bool> quantized_leaves() const {
    std::vector<bool> out;
    for (std::size_t l = 0; l < plan_->leaves().size(); ++l) out.push_back(quantized(l));
    return out;
  }

  const py::object& plan() const { return plan_obj_; }
  const py::object& hyper() const { return hyper_obj_; }
  long long step_count() const { return step_count_; }
  long long block_size() const { return static_cast<long long>(block_); }
  long long min_8bit_size() const { return static_cast<long long>(min_8bit_); }
  OptimRule rule() const { return rule_; }

 private:
  std::size_t rule_slots() const { return quant8_slots(rule_); }
  bool quantized(std::size_t l) const { return plan_->leaves()[l].size >= min_8bit_; }
  int slot_type(std::size_t l, std::size_t k) const { return k < rule_slots() && quantized(l) ? kNpyUint8 : NPY_FLOAT; }
  std::vector<Py_ssize_t> slot_shape(std::size_t l, std::size_t k) const {
    const LeafSpec& s = plan_->leaves()[l];
    if (k < rule_slots()) return s.shape;
    return {quantized(l) ? static_cast<Py_ssize_t>((s.size + block_ - 1) / block_) : 0};
  }
  std::size_t slot_of(const std::string& name) const {
    std::string all;
    for (std::size_t k = 0; k < names_.size(); ++k) {
      if (name == names_[k]) return k;
      all += (k ? ", " : "") + names_[k];
    }
    throw py::value_error("no state slot '" + name + "' in this optimizer (its slots: " + all + ")");
  }
  // Parameters overlapping each other or a state array are refused; a gradient
  // overlapping either is read as it was before the step (a copy, kept in
  // `held`), as OptimState does. Addresses that passed are remembered.
  void check_overlaps(std::vector<Quant8Leaf>& leaves, std::vector<py::object>& held) {
    const auto& specs = plan_->leaves();
    auto& key = checked_.probe();  // the state arrays and the plan are this state's for life
    for (const Quant8Leaf& d : leaves) key.insert(key.end(), {static_cast<const void*>(d.g), static_cast<const void*>(d.p)});
    if (checked_.seen()) return;
    std::vector<Span> spans;
    spans.reserve((1 + slots_.size()) * specs.size());
    for (std::size_t l = 0; l < specs.size(); ++l) add_span(spans, leaves[l].p, specs[l].size * sizeof(float), "params", l);
    for (std::size_t k = 0; k < slots_.size(); ++k)
      for (const py::object& a : slots_[k])
        add_span(spans, data_of(a), static_cast<std::size_t>(PyArray_NBYTES(reinterpret_cast<PyArrayObject*>(a.ptr()))),
                 names_[k].c_str(), kNoIndex);
    refuse_overlaps(*plan_, spans);
    bool copied = false;  // then the key is not remembered: this step reads copies
    for (std::size_t l = 0; l < specs.size(); ++l)
      if (const void* c = copy_if_overlapping(spans, leaves[l].g, specs[l].size * sizeof(float), held[l], held)) {
        leaves[l].g = static_cast<const float*>(c);
        copied = true;
      }
    if (!copied) checked_.add();
  }

  py::object plan_obj_;
  const Plan* plan_ = nullptr;
  py::object hyper_obj_;  // keeps hyper_ alive; Python assigns its fields between steps
  const OptimHyper* hyper_ = nullptr;
  std::size_t block_ = 256, min_8bit_ = 4096;
  OptimRule rule_;
  std::vector<std::string> names_;            // the rule's slots, then their absmax
  std::vector<std::vector<py::object>> slots_;  // per name, one array per leaf
  std::vector<char> decay_;
  long long step_count_ = 0;
  std::atomic<bool> busy_{false};
  CheckedAddresses checked_;
};

py::tuple quantize_blockwise(py::handle x, bool is_signed, long long block_size) {
  check_block(block_size);
  PyArrayObject* a = PyArray_Check(x.ptr()) ? reinterpret_cast<PyArrayObject*>(x.ptr()) : nullptr;
  if (!a || PyArray_TYPE(a) != NPY_FLOAT) throw py::type_error("x: expected a float32 array, got " + describe(x.ptr()));
  std::vector<py::object> keep;
  a = contiguous(a, keep);
  const std::size_t n = static_cast<std::size_t>(PyArray_SIZE(a)), block = static_cast<std::size_t>(block_size);
  std::vector<Py_ssize_t> shape(PyArray_DIMS(a), PyArray_DIMS(a) + PyArray_NDIM(a));
  py::object codes = new_array(kNpyUint8, shape);
  py::object absmax = new_array(NPY_FLOAT, {static_cast<Py_ssize_t>((n + block - 1) / block)});
  quant8_encode(static_cast<const float*>(PyArray_DATA(a)), n, block, is_signed, static_cast<std::uint8_t*>(data_of(codes)),
                static_cast<float*>(data_of(absmax)));
  return py::make_tuple(codes, absmax);
}

py::object dequantize_blockwise(py::handle codes, py::handle absmax, bool is_signed, long long block_size) {
  check_block(block_size);
  PyArrayObject* c = PyArray_Check(codes.ptr()) ? reinterpret_cast<PyArrayObject*>(codes.ptr()) : nullptr;
  if (!c || PyArray_TYPE(c) != kNpyUint8) throw py::type_error("codes: expected a uint8 array, got " + describe(codes.ptr()));
  const std::size_t n = static_cast<std::size_t>(PyArray_SIZE(c)), block = static_cast<std::size_t>(block_size);
  std::vector<py::object> keep;
  c = contiguous(c, keep);
  PyArrayObject* m = contiguous(checked(absmax.ptr(), NPY_FLOAT, {static_cast<Py_ssize_t>((n + block - 1) / block)}, "absmax"), keep);
  std::vector<Py_ssize_t> shape(PyArray_DIMS(c), PyArray_DIMS(c) + PyArray_NDIM(c));
  py::object out = new_array(NPY_FLOAT, shape);
  quant8_decode(static_cast<const std::uint8_t*>(PyArray_DATA(c)), static_cast<const float*>(PyArray_DATA(m)), n, block,
                is_signed, static_cast<float*>(data_of(out)));
  return out;
}

}  // namespace

void register_quant8(py::module_& m) {
  m.def("quantize_blockwise", &quantize_blockwise, py::arg("x"), py::arg("signed"), py::arg("block_size"),
        "(codes uint8, absmax float32 per block) of a float32 array: Adam8bit's encoder (docs/lowbit.md).");
  m.def("dequantize_blockwise", &dequantize_blockwise, py::arg("codes"), py::arg("absmax"), py::arg("signed"),
        py::arg("block_size"), "The float32 values of blockwise codes.");
  py::class_<Quant8State>(m, "Quant8State",
                          "The 8-bit state of an optim rule (ADAM, LION) over one tree: plan, slots, step count.")
      .def(py::init<py::object, std::vector<bool>, py::object, long long, long long, OptimRule>(), py::arg("plan"),
           py::arg("decay_mask"), py::arg("hyper"), py::arg("block_size"), py::arg("min_8bit_size"), py::arg("rule"))
      .def("step", &Quant8State::step, py::arg("params"), py::arg("grads"), py::arg("lr"), py::arg("check_finite"))
      .def("slot_views", &Quant8State::slot_views, py::arg("name"))
      .def("load", &Quant8State::load, py::arg("slots"), py::arg("scalars"), py::arg("step_count"))
      .def_property_readonly("slot_names", &Quant8State::slot_names)
      .def_property_readonly("scalars", [](const Quant8State&) { return py::dict(); })
      .def_property("decay_mask", &Quant8State::decay_mask, &Quant8State::set_decay_mask)
      .def_property_readonly("quantized_leaves", &Quant8State::quantized_leaves)
      .def_property_readonly("plan", &Quant8State::plan)
      .def_property_readonly("hyper", &Quant8State::hyper)
      .def_property_readonly("step_count", &Quant8State::step_count)
      .def_property_readonly("block_size", &Quant8State::block_size)
      .def_property_readonly("min_8bit_size", &Quant8State::min_8bit_size)
      .def_property_readonly("rule", &Quant8State::rule)
      .def_property_readonly("last_grad_norm", [](const Quant8State&) { return py::none(); });
}

}  // namespace fusedopt
