#include "paysage_state.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "common/dispatch.h"
#include "arrays.h"
#include "numpy_api.h"
#include <numpy/arrayscalars.h>

namespace fusedopt {

namespace {

std::string shape_of(PyArrayObject* a) {
  return shape_string(PyArray_DIMS(a), static_cast<std::size_t>(PyArray_NDIM(a)));
}

std::string type_of(PyObject* o) {
  if (PyArray_Check(o))
    return "dtype " + py::str(py::handle(reinterpret_cast<PyObject*>(PyArray_DESCR(reinterpret_cast<PyArrayObject*>(o))))).cast<std::string>();
  return Py_TYPE(o)->tp_name;
}

// Checks one leaf against its spec (array, dtype, shape); returns it as an array.
PyArrayObject* check_leaf(const Plan& plan, std::size_t l, PyObject* o, const char* name) {
  const LeafSpec& s = plan.leaves()[l];
  const int want = npy_type_number(s.dtype);
  if (!PyArray_Check(o) || PyArray_TYPE(reinterpret_cast<PyArrayObject*>(o)) != want)
    throw py::type_error(where(name, s) + ": expected a " + dtype_name(s.dtype) + " numpy array (as on the first step), got " +
                         type_of(o));
  PyArrayObject* a = reinterpret_cast<PyArrayObject*>(o);
  const bool same = PyArray_NDIM(a) == static_cast<int>(s.shape.size()) &&
                    std::equal(s.shape.begin(), s.shape.end(), PyArray_DIMS(a));
  if (!same) {
    // The plan is the gradient's: a parameter that differs is named with both shapes, whichever is wrong.
    if (std::string(name) == "params")
      throw py::value_error(where(name, s) + ": shape " + shape_of(a) + " does not match the gradient's " + plan.shape_str(l));
    throw py::value_error(where(name, s) + ": expected shape " + plan.shape_str(l) + ", got " + shape_of(a));
  }
  return a;
}

// The leaf as an array when it is what `s` recorded (array, dtype, shape), else nullptr:
// the check of every leaf of every step, inline; check_leaf then says what is wrong.
inline PyArrayObject* matching(const LeafSpec& s, PyObject* o) {
  if (!PyArray_Check(o)) return nullptr;
  PyArrayObject* a = reinterpret_cast<PyArrayObject*>(o);
  const int nd = PyArray_NDIM(a);
  if (PyArray_TYPE(a) != npy_type_number(s.dtype) || nd != static_cast<int>(s.shape.size())) return nullptr;
  const npy_intp* dims = PyArray_DIMS(a);
  for (int k = 0; k < nd; ++k)
    if (dims[k] != s.shape[k]) return nullptr;
  return a;
}

bool leaf_finite(const void* data, const LeafSpec& s) { return all_finite(data, s.dtype, s.size); }

// A moment's arenas, (float32 arena, float64 arena), or None.
void* arena_of(py::handle pair, Dtype d, const Plan& plan, const char* what) {
  if (pair.is_none()) return nullptr;
  if (!PyTuple_Check(pair.ptr()) || PyTuple_GET_SIZE(pair.ptr()) != 2)
    throw py::type_error(std::string(what) + " arenas must be a (float32 array, float64 array) pair");
  return arena_data(PyTuple_GET_ITEM(pair.ptr(), d), d, plan.arena_size(d), what);
}

py::object new_arenas(const Plan& plan) {
  return py::make_tuple(aligned_empty(plan.arena_size(F32), F32), aligned_empty(plan.arena_size(F64), F64));
}


// Everything one kernel call reads and writes, checked, and the references
// that keep it alive until the call is over.
struct Prepared {
  std::vector<LeafData> data;
  std::vector<const void*> row_ptrs;  // n_rows per leaf with rows
  std::vector<py::object> keep;
  std::vector<double> sums;  // sum(d*d) per leaf, committed by the caller
  double* sums_target = nullptr;  // or written straight into the state's sums
  py::object delta = py::none();
};

// Points every gradient leaf lying inside avg.base at its rows (the same byte
// offset in each row); other leaves are read as they are. A leaf that is only
// partly inside the base, or not a C-contiguous view of it, is refused.
void bind_rows(Prepared& P, const Plan& plan, const RowAverage& avg, const std::vector<PyArrayObject*>& garrays) {
  const py::list rows = py::reinterpret_borrow<py::list>(avg.rows);
  const std::size_t k = rows.size();
  PyArrayObject* b = reinterpret_cast<PyArrayObject*>(avg.base.ptr());
  const std::uintptr_t base = reinterpret_cast<std::uintptr_t>(PyArray_DATA(b));
  const std::uintptr_t base_end = base + static_cast<std::uintptr_t>(PyArray_NBYTES(b));
  std::vector<const char*> row(k);
  std::vector<std::size_t> row_bytes(k);
  for (std::size_t r = 0; r < k; ++r) {
    PyArrayObject* a = reinterpret_cast<PyArrayObject*>(rows[r].ptr());
    row[r] = static_cast<const char*>(PyArray_DATA(a));
    row_bytes[r] = static_cast<std::size_t>(PyArray_NBYTES(a));
  }
  P.keep.push_back(avg.rows);
  P.keep.push_back(avg.base);
  const auto& specs = plan.leaves();
  P.row_ptrs.assign(specs.size() * k, nullptr);  // sized once: leaves point into it
  for (std::size_t l = 0; l < specs.size(); ++l) {
    LeafData& d = P.data[l];
    const std::size_t item = item_size(specs[l].dtype), bytes = specs[l].size * item;
    const std::uintptr_t g = reinterpret_cast<std::uintptr_t>(PyArray_DATA(garrays[l]));
    if (bytes == 0 || g + bytes <= base || g >= base_end) continue;  // not in the base
    if (g < base || g + bytes > base_end || d.g != PyArray_DATA(garrays[l]))
      throw py::value_error(where("grad", specs[l]) + ": a leaf of the averaged gradient must be a C-contiguous "
                            "view lying wholly inside the base of average_next");
    const std::size_t off = static_cast<std::size_t>(g - base);
    for (std::size_t r = 0; r < k; ++r) {
      if (off + bytes > row_bytes[r] || reinterpret_cast<std::uintptr_t>(row[r] + off) % item)
        throw py::value_error(where("grad", specs[l]) + ": row " + std::to_string(r) +
                              " of the average does not hold this leaf's bytes (short or misaligned)");
      P.row_ptrs[l * k + r] = row[r] + off;
    }
    d.rows = &P.row_ptrs[l * k];
    d.n_rows = k;
  }
}

// m, v: the moments read; m_out, v_out: where new ones go (may be m, v).
// `state` lists more of the optimizer's memory that no parameter may share.
void prepare(Prepared& P, const Plan& plan, unsigned mode, py::handle grad, py::handle params, py::handle m,
             py::handle m_out, py::handle v, py::handle v_out, py::handle sums_array, bool check_finite,
             CheckedAddresses* checked, const RowAverage& avg) {
  const char* gn = "grad";
  const auto& specs = plan.leaves();
  auto& data = P.data;
  auto& keep = P.keep;
  data.resize(specs.size());
  keep.reserve(2 * specs.size() + 6);
  auto hold = [&](PyObject* o) { keep.push_back(py::reinterpret_borrow<py::object>(o)); };
  auto copy_of = [&](PyArrayObject* a) {
    PyObject* c = PyArray_FromAny(reinterpret_cast<PyObject*>(a), PyArray_DescrFromType(PyArray_TYPE(a)), 0, 0,
                                  NPY_ARRAY_CARRAY_RO | NPY_ARRAY_ENSURECOPY, nullptr);
    if (!c) throw py::error_already_set();
    keep.push_back(py::reinterpret_steal<py::object>(c));
    return PyArray_DATA(reinterpret_cast<PyArrayObject*>(c));
  };
  std::vector<PyArrayObject*> garrays(specs.size());
  plan.walk(grad.ptr(), gn, [&](std::size_t l, PyObject* o) {
    PyArrayObject* a = matching(specs[l], o);
    if (!a) a = check_leaf(plan, l, o, gn);
    hold(o);
    garrays[l] = a;
    data[l].dtype = specs[l].dtype;
    data[l].g = PyArray_ISCARRAY_RO(a) && PyArray_ISNOTSWAPPED(a) ? PyArray_DATA(a) : copy_of(a);
  });
  if (avg.active()) bind_rows(P, plan, avg, garrays);
  // A leaf with rows whose average the kernel cannot compute on the fly: averaged into a
  // new array of its own (the base and the rows stay as they are, whatever fails later).
  auto materialize = [&](std::size_t l) {
    LeafData& d = data[l];
    const std::size_t n = specs[l].size;
    py::object out = aligned_empty(n, d.dtype);
    void* o = PyArray_DATA(reinterpret_cast<PyArrayObject*>(out.ptr()));
    if (d.dtype == F32)
      kernels().average32(reinterpret_cast<const float* const*>(d.rows), d.n_rows, 0, n, static_cast<float>(avg.divisor),
                          static_cast<float*>(o));
    else
      kernels().average64(reinterpret_cast<const double* const*>(d.rows), d.n_rows, 0, n, avg.divisor,
                          static_cast<double*>(o));
    keep.push_back(std::move(out));
    d.g = o;
    d.rows = nullptr;
    d.n_rows = 0;
  };
  if (steps_p(mode)) {
    plan.walk(params.ptr(), "params", [&](std::size_t l, PyObject* o) {
      const LeafSpec& s = specs[l];
      PyArrayObject* a = matching(s, o);
      if (!a) {
        if (PyArray_Check(o) && PyArray_TYPE(reinterpret_cast<PyArrayObject*>(o)) != npy_type_number(s.dtype))
          throw py::type_error(where("params", s) + ": dtype " + type_of(o).substr(6) + " does not match the gradient's " +
                               dtype_name(s.dtype));
        a = check_leaf(plan, l, o, "params");
      }
      if (!PyArray_ISWRITEABLE(a)) throw py::value_error(where("params", s) + ": the array is read-only; it must be writeable to be stepped in place");
      if (!PyArray_ISCARRAY(a) || !PyArray_ISNOTSWAPPED(a))
        throw py::value_error(where("params", s) + ": the array must be C-contiguous, aligned and in native byte order to be stepped in place");
      hold(o);
      data[l].p = PyArray_DATA(a);
    });
  }
  void* base[4][2] = {};  // m, m_out, v, v_out per dtype
  const py::handle pairs[4] = {m, m_out, v, v_out};
  const bool used[4] = {uses_m(mode), updates_m(mode), uses_v(mode), updates_v(mode)};
  const char* names[4] = {"mean", "mean", "mean square", "mean square"};
  for (int k = 0; k < 4; ++k) {
    if (!used[k]) continue;
    if (pairs[k].is_none()) {
      if (k == 0 && !reads_m(mode)) continue;  // a moment that starts here is not read
      if (k == 2 && !reads_v(mode)) continue;
      throw py::value_error(std::string("this step needs the ") + names[k] + ", which the state does not hold");
    }
    hold(pairs[k].ptr());
    for (Dtype d : {F32, F64})
      if (plan.arena_size(d) > 0) base[k][d] = arena_of(pairs[k], d, plan, names[k]);
  }
  const void* sums = nullptr;
  std::size_t sums_bytes = 0;
  if (!sums_array.is_none() && PyArray_Check(sums_array.ptr())) {
    PyArrayObject* a = reinterpret_cast<PyArrayObject*>(sums_array.ptr());
    sums = PyArray_DATA(a);
    sums_bytes = static_cast<std::size_t>(PyArray_NBYTES(a));
  }
  bool known = false;
  if (checked) {  // the key: plan, the 8 arena bases, sums data and bytes, then (g, p) and any rows per leaf
    auto& key = checked->probe();
    key.push_back(&plan);
    for (int k = 0; k < 4; ++k) key.insert(key.end(), {base[k][F32], base[k][F64]});
    key.insert(key.end(), {sums, reinterpret_cast<const void*>(sums_bytes)});
    key.reserve(key.size() + 2 * data.size());
    for (const LeafData& d : data) {
      key.push_back(d.g);  // push_back: an initializer list costs a range insert per leaf
      key.push_back(d.p);
      if (d.rows) {
        key.push_back(reinterpret_cast<const void*>(d.n_rows));
        key.insert(key.end(), d.rows, d.rows + d.n_rows);
      }
    }
    known = checked->seen();
  }
  if (!known) {
    std::vector<Span> spans;  // what the step writes, or reads as its own state
    spans.reserve(specs.size() + 9);
    auto add = [&](const void* b, std::size_t bytes, const char* what, std::size_t leaf) {
      add_span(spans, b, bytes, what, leaf);
    };
    for (std::size_t l = 0; l < specs.size(); ++l) add(data[l].p, specs[l].size * item_size(specs[l].dtype), "params", l);
    for (int k = 0; k < 4; ++k)
      if (!(k % 2 == 1 && pairs[k].is(pairs[k - 1])))  // the same arenas read and written
        for (Dtype d : {F32, F64}) add(base[k][d], plan.arena_size(d) * item_size(d), names[k], kNoIndex);
    add(sums, sums_bytes, "sum of squares", kNoIndex);
    refuse_overlaps(plan, spans);
    // A gradient in memory the step writes is read as it was before the step
    // (numpy's p - lr * g.copy()), whatever the SIMD width or thread count.
    // A leaf with rows reads its rows, not g (nor the base g lies in): rows in such memory
    // are averaged into an array of their own first.
    bool copied = false;  // then the key is not remembered: this step's reads are not the leaves'
    if (!spans.empty())
      for (std::size_t l = 0; l < specs.size(); ++l) {
        const LeafData& d = data[l];
        const std::size_t bytes = specs[l].size * item_size(specs[l].dtype);
        auto hit = [&](const void* b) {
          const char* c = static_cast<const char*>(b);
          return overlapping(spans, c, c + bytes) != nullptr;
        };
        bool rows_hit = false;
        for (std::size_t r = 0; r < d.n_rows && !rows_hit; ++r) rows_hit = hit(d.rows[r]);
        if (rows_hit) {
          materialize(l);
          copied = true;
        } else if (!d.rows && hit(d.g)) {
          data[l].g = copy_of(garrays[l]);
          copied = true;
        }
      }
    if (!copied && checked) checked->add();
  }
  if (check_finite)
    for (std::size_t l = 0; l < specs.size(); ++l) {
      if (data[l].rows) materialize(l);
      if (!leaf_finite(data[l].g, specs[l])) {
        PyErr_SetString(PyExc_FloatingPointError,
                        (where(gn, specs[l]) + " contains NaN or Inf (check_finite=True); nothing was modified").c_str());
        throw py::error_already_set();
      }
    }
  py::object outs[2] = {py::none(), py::none()};
  void* obase[2] = {nullptr, nullptr};
  if (writes_out(mode)) {
    for (Dtype d : {F32, F64})
      if (plan.uses(d)) {  // even when all its leaves are empty: they still need views
        outs[d] = recycled_empty(plan.arena_size(d), d);
        obase[d] = arena_data(outs[d], d, plan.arena_size(d), "output");
      }
    // Built before the kernel runs: the containers' constructors may run Python
    // code, and nothing may fail once parameters or moments changed.
    P.delta = plan.views(outs[F32], outs[F64]);
  }
  for (std::size_t l = 0; l < specs.size(); ++l) {
    const LeafSpec& s = specs[l];
    const std::size_t bytes = s.offset * item_size(s.dtype);
    auto at = [&](void* b) { return b ? static_cast<void*>(static_cast<char*>(b) + bytes) : nullptr; };
    data[l].m = at(base[0][s.dtype]);
    data[l].m_out = at(base[1][s.dtype]);
    data[l].v = at(base[2][s.dtype]);
    data[l].v_out = at(base[3][s.dtype]);
    data[l].out = at(obase[s.dtype]);
  }
  if ((mode & SCALE) && !P.sums_target) P.sums.assign(specs.size(), 0.0);
}

// The rule that a step of `rule` is when a weight is 0: that moment is dropped.
Rule effective_rule(Rule rule, double w, double w2) {
  switch (rule) {
    case Rule::ADAM:
      if (w == 0 && w2 == 0) return Rule::GRADIENT;
      if (w == 0) return Rule::RMSPROP;
      if (w2 == 0) return Rule::MOMENTUM;
      return rule;
    case Rule::MOMENTUM:
      return w == 0 ? Rule::GRADIENT : rule;
    case Rule::RMSPROP:
      if (w2 == 0) return Rule::GRADIENT;
      if (w != 0)
        throw py::value_error("RMSPROP steps with a memory whose mean_weight is 0 (it keeps no mean), got " +
                              std::to_string(w));
      return rule;
    default:
      return rule;
  }
}

Phase phase_for(const RuleSpec& s, bool start_m, bool start_v) {
  if (start_m && start_v) return Phase::FIRST;
  if (start_m) return s.sq ? Phase::FIRST_MEAN : Phase::FIRST;
  if (start_v) return s.mean ? Phase::FIRST_MEAN_SQUARE : Phase::FIRST;
  return Phase::STEADY;
}

// paysage divides the sum of per-leaf mean squares by len(layers) + len(weights);
// other trees by their number of leaves.
long long count_for_rms(py::handle grad, const Plan& plan) {
  const long long leaves = std::max<long long>(static_cast<long long>(plan.leaves().size()), 1);
  PyObject* g = grad.ptr();
  if (!PyObject_HasAttrString(g, "layers") || !PyObject_HasAttrString(g, "weights")) return leaves;
  py::object layers = grad.attr("layers"), weights = grad.attr("weights");
  const Py_ssize_t a = PyObject_Length(layers.ptr()), b = a < 0 ? -1 : PyObject_Length(weights.ptr());
  if (a < 0 || b < 0) {  // fields without a length: not a paysage Gradient after all
    PyErr_Clear();
    return leaves;
  }
  return std::max<long long>(a + b, 1);
}

// Whether `sums` can take this step's per-leaf sums.
bool sums_fit(py::handle sums, std::size_t n) {
  if (!PyArray_Check(sums.ptr())) return false;
  PyArrayObject* a = reinterpret_cast<PyArrayObject*>(sums.ptr());
  return PyArray_TYPE(a) == NPY_DOUBLE && PyArray_ISCARRAY(a) && PyArray_ISNOTSWAPPED(a) &&
         static_cast<std::size_t>(PyArray_SIZE(a)) == n;
}

// A rule or output given as its enum or as the enum's int value: ints skip
// pybind11's enum caster (a locked type lookup per argument), which was a
// measurable part of a small step.
template <class E>
E enum_arg(py::handle h, unsigned count, const char* what) {
  if (PyLong_CheckExact(h.ptr())) {
    const long v = PyLong_AsLong(h.ptr());
    if (v < 0 || static_cast<unsigned long>(v) >= count)
      throw py::value_error(std::string("no ") + what + " has the value " + std::to_string(v));
    return static_cast<E>(v);
  }
  return h.cast<E>();
}

// Attribute names, interned once (a step sets two of them).
PyObject* interned(const char* name) {
  PyObject* s = PyUnicode_InternFromString(name);
  if (!s) throw py::error_already_set();
  return s;  // kept for the life of the process
}

}  // namespace

void State::set_plan(py::object p) {
  if (!p.is_none() && !py::isinstance<Plan>(p)) throw py::type_error("plan must be a fusedopt._core.Plan or None");
  plan = std::move(p);
  plan_ptr_ = plan.is_none() ? nullptr : &plan.cast<const Plan&>();
  conv_count = -1;
  drop_spares();
  checked_.clear();  // its keys name the old plan, whose address another plan may take
  staged_ = Staged{};
}

void State::set_moment(bool square, py::object arenas) {
  (square ? mean_square : mean) = std::move(arenas);
  (square ? v_tree_ : m_tree_) = py::none();
  drop_spares();
  staged_ = Staged{};
}

py::object State::step(py::handle owner, py::handle rule_arg, py::handle output_arg, py::handle grad, py::handle target,
                       double lr, bool check_finite) {
  return step_as(owner, enum_arg<Rule>(rule_arg, kNumRules, "rule"), enum_arg<Output>(output_arg, kNumOutputs, "output"),
                 grad, target, lr, check_finite);
}

void State::update(PyObject* owner, PyObject* rule, PyObject* stepsize, PyObject* unset_rate, PyObject* model,
                   PyObject* grad) {
  static PyObject* const dict_name = interned("__dict__");
  py::object dict = py::reinterpret_steal<py::object>(PyObject_GetAttr(owner, dict_name));
  if (!dict) throw py::error_already_set();
  if (!PyDict_Check(dict.ptr())) throw py::type_error("the optimizer's __dict__ must be a dict");
  static PyObject* const lr_name = interned("lr");
  py::object value = setting(owner, dict, lr_name);
  double lr = value.is_none() ? unset_lr(stepsize, unset_rate) : as_double(value.ptr());
  static PyObject* const ascent_name = interned("ascent");
  static PyObject* const finite_name = interned("check_finite");
  if (truth(setting(owner, dict, ascent_name))) lr = -lr;
  const bool check_finite = truth(setting(owner, dict, finite_name));
  if (check_finite && !std::isfinite(lr)) {
    py::object shown = py::reinterpret_steal<py::object>(PyObject_Repr(py::float_(lr).ptr()));
    PyErr_SetString(PyExc_FloatingPointError, ("the learning rate is " + py::str(shown).cast<std::string>() +
                                               " and check_finite is True: nothing was modified").c_str());
    throw py::error_already_set();
  }
  Output output = Output::DELTA;
  if (!is_model(model)) {
    static PyObject* const keep_name = interned("keep_delta");
    output = truth(setting(owner, dict, keep_name)) ? Output::BOTH : Output::IN_PLACE;
  }
  step_as(owner, rule_of(rule), output, grad, model, lr, check_finite);
}

py::object State::step_as(py::handle owner, Rule rule, Output output, py::handle grad, py::handle target, double lr,
                          bool check_finite) {
  const RowAverage avg = std::move(pending_avg_);  // for this step only, whatever happens
  pending_avg_ = RowAverage{};
  const Staged staged = std::move(staged_);  // the same
  staged_ = Staged{};
  const Rule r = effective_rule(rule, w, w2);
  const bool fixed = !mean.is_none() || !mean_square.is_none();  // moments fix the structure
  bool model_called = false;
  if (staged.active())
    return run(owner, r, output, grad, target, lr, check_finite, staged.plan, model_called, avg, staged);
  if (plan.is_none())
    return run(owner, r, output, grad, target, lr, check_finite, new_plan(grad), model_called, avg, staged);
  try {
    return run(owner, r, output, grad, target, lr, check_finite, plan, model_called, avg, staged);
  } catch (py::error_already_set& e) {
    if (fixed || model_called || !(e.matches(PyExc_TypeError) || e.matches(PyExc_ValueError))) throw;
  } catch (py::builtin_exception&) {
    if (fixed || model_called) throw;
  } catch (StructureError&) {
    if (fixed || model_called) throw;
  }
  // No moments yet: a gradient of another structure simply starts over.
  return run(owner, r, output, grad, target, lr, check_finite, new_plan(grad), model_called, avg, staged);
}

void State::install_next(py::object plan_obj, py::object m, py::object v) {
  if (!py::isinstance<Plan>(plan_obj)) throw py::type_error("install_next: plan must be a fusedopt._core.Plan");
  const Plan& p = plan_obj.cast<const Plan&>();
  for (const py::object* arenas : {&m, &v})
    if (!arenas->is_none())
      for (Dtype d : {F32, F64}) arena_of(*arenas, d, p, "install_next: moment");
  staged_ = Staged{std::move(plan_obj), std::move(m), std::move(v)};
}

void State::average_next(py::object rows, py::object base, double divisor) {
  pending_avg_ = RowAverage{};
  if (base.is_none()) return;
  auto contiguous = [](py::handle a) {
    return PyArray_Check(a.ptr()) && PyArray_ISCARRAY_RO(reinterpret_cast<PyArrayObject*>(a.ptr()));
  };
  if (!contiguous(base) || !PyArray_ISWRITEABLE(reinterpret_cast<PyArrayObject*>(base.ptr())))
    throw py::type_error("average_next: base must be a writeable C-contiguous numpy array");
  if (!PyList_Check(rows.ptr()) || PyList_GET_SIZE(rows.ptr()) == 0)
    throw py::type_error("average_next: rows must be a non-empty list of arrays");
  py::list copy;  // the caller's list may change before the step
  for (py::handle row : rows) {
    if (!contiguous(row)) throw py::type_error("average_next: every row must be a C-contiguous numpy array");
    copy.append(row);
  }
  // The number of ranks: a whole number that float32 holds exactly (the float32 kernels divide by it).
  if (!(divisor >= 1 && divisor <= 16777216.0 && divisor == std::floor(divisor)))
    throw py::value_error("average_next: divisor must be a whole number in [1, 2**24] (the number of ranks)");
  pending_avg_ = RowAverage{std::move(copy), std::move(base), divisor};
}

py::object State::setting(PyObject* owner, const py::object& dict, PyObject* name) {
  PyObject* v = PyDict_GetItemWithError(dict.ptr(), name);  // borrowed
  if (v) return py::reinterpret_borrow<py::object>(v);
  if (PyErr_Occurred()) throw py::error_already_set();
  py::object found = py::reinterpret_steal<py::object>(PyObject_GetAttr(owner, name));
  if (!found) throw py::error_already_set();
  return found;
}

bool State::truth(const py::object& o) {
  if (o.ptr() == Py_True) return true;
  if (o.ptr() == Py_False) return false;
  const int t = PyObject_IsTrue(o.ptr());
  if (t < 0) throw py::error_already_set();
  return t;
}

double State::as_double(PyObject* o) {
  if (PyFloat_CheckExact(o)) return PyFloat_AS_DOUBLE(o);
  if (PyArray_IsScalar(o, Float32)) return static_cast<double>(PyArrayScalar_VAL(o, Float32));
  const double v = PyFloat_AsDouble(o);
  if (v == -1.0 && PyErr_Occurred()) throw py::error_already_set();
  return v;
}

double State::unset_lr(PyObject* stepsize, PyObject* unset_rate) {
  static PyObject* const value_name = interned("value");
  if (!unset_key_.is_none()) {
    PyObject* value = PyObject_GetAttr(stepsize, value_name);
    const bool hit = value == unset_key_.ptr();
    Py_XDECREF(value);
    if (hit) return unset_rate_;
    PyErr_Clear();  // unset_rate says what is wrong
  }
  py::object answer = py::reinterpret_steal<py::object>(PyObject_CallOneArg(unset_rate, stepsize));
  if (!answer) throw py::error_already_set();
  if (!PyTuple_Check(answer.ptr()) || PyTuple_GET_SIZE(answer.ptr()) != 2)
    throw py::type_error("unset_rate must return a (key, rate) pair");
  const double rate = as_double(PyTuple_GET_ITEM(answer.ptr(), 1));
  PyObject* key = PyTuple_GET_ITEM(answer.ptr(), 0);
  if (key != Py_None) {
    unset_key_ = py::reinterpret_borrow<py::object>(key);
    unset_rate_ = rate;
  }
  return rate;
}

Rule State::rule_of(PyObject* rule) {
  if (rule_obj_.ptr() != rule) {
    rule_ = enum_arg<Rule>(rule, kNumRules, "rule");
    rule_obj_ = py::reinterpret_borrow<py::object>(rule);
  }
  return rule_;
}

bool State::is_model(PyObject* model) {
  PyObject* type = reinterpret_cast<PyObject*>(Py_TYPE(model));
  if (model_type_.ptr() != type) {
    static PyObject* const update_name = interned("parameter_update");
    PyObject* found = PyObject_GetAttr(model, update_name);
    if (!found) {  // hasattr's rule: only an AttributeError means "has none"
      if (!PyErr_ExceptionMatches(PyExc_AttributeError)) throw py::error_already_set();
      PyErr_Clear();
    }
    Py_XDECREF(found);
    model_is_model_ = found != nullptr;
    model_type_ = py::reinterpret_borrow<py::object>(type);
  }
  return model_is_model_;
}

bool State::unshared(PyObject* arena) {
  // NumPy points views of a view at the array that owns the memory.
  PyObject* owner = PyArray_BASE(reinterpret_cast<PyArrayObject*>(arena));
  return Py_REFCNT(arena) == 1 && (owner == nullptr || Py_REFCNT(owner) == 1);
}

py::object State::free_spare(py::object& spare, const Plan& plan) {
  if (!spare.is_none() && Py_REFCNT(spare.ptr()) == 1 && unshared(PyTuple_GET_ITEM(spare.ptr(), 0)) &&
      unshared(PyTuple_GET_ITEM(spare.ptr(), 1))) {
    py::object out = std::move(spare);
    spare = py::none();  // a moved-from object is null, not None
    return out;
  }
  spare = py::none();
  return new_arenas(plan);
}

py::object State::run(py::handle owner, Rule r, Output output, py::handle grad, py::handle target, double lr,
                      bool check_finite, py::object plan_obj, bool& model_called, const RowAverage& avg,
                      const Staged& staged) {
  const bool same_plan = plan_obj.is(plan);
  const Plan& p = same_plan && plan_ptr_ ? *plan_ptr_ : plan_obj.cast<const Plan&>();
  py::object m = same_plan ? mean : staged.mean, v = same_plan ? mean_square : staged.mean_square;
  const RuleSpec& spec = spec_of(r);
  const bool start_m = spec.mean && m.is_none(), start_v = spec.sq && v.is_none();
  const Phase ph = phase_for(spec, start_m, start_v);
  const int k = kernel_index(r, ph, output);
  if (k < 0)
    throw py::value_error(std::string("rule ") + spec.name + " has no step with this output (see fusedopt._core.kernels)");
  const unsigned mode = kKernels[static_cast<std::size_t>(k)].mode;
  // On the paysage path the model takes the delta before anything commits:
  // the new moments go to second buffers until parameter_update returns.
  const bool deferred = output == Output::DELTA && !target.is_none();
  // (Spares are the current plan's: a staged plan takes new second buffers.)
  auto second = [&](py::object& spare) { return same_plan ? free_spare(spare, p) : new_arenas(p); };
  py::object m_out = start_m ? new_arenas(p) : (updates_m(mode) && deferred ? second(m_spare_) : m);
  py::object v_out = start_v ? new_arenas(p) : (updates_v(mode) && deferred ? second(v_spare_) : v);
  Prepared P;
  // When nothing can fail after the kernel, it writes the sums in place.
  const bool sums_in_place = !deferred && same_plan && sums_fit(sums, p.leaves().size());
  P.sums_target = sums_in_place ? static_cast<double*>(PyArray_DATA(reinterpret_cast<PyArrayObject*>(sums.ptr()))) : nullptr;
  prepare(P, p, mode, grad, steps_p(mode) ? target : py::handle(Py_None), start_m ? m_out : m, m_out,
          start_v ? v_out : v, v_out, same_plan ? sums : py::none(), check_finite,
          same_plan ? &checked_ : nullptr, avg);  // keys name the state's own plan, which it keeps alive
  // Allocated now: the commit below must not fail.
  py::object new_sums = py::none();
  if (!sums_in_place && !(same_plan && sums_fit(sums, p.leaves().size()))) {
    npy_intp n = static_cast<npy_intp>(p.leaves().size());
    new_sums = py::reinterpret_steal<py::object>(PyArray_ZEROS(1, &n, NPY_DOUBLE, 0));
    if (!new_sums) throw py::error_already_set();
  }
  const bool count_now = owner.ptr() != Py_None && (!same_plan || conv_count < 0);
  const long long count = count_now ? count_for_rms(grad, p) : conv_count;
  // The owner's step_count and delta go straight into its instance dict: its attributes may
  // have setters written in Python (checked on assignment), and Python code in the commit
  // could take a signal between two writes. Read now, so that a missing or odd step_count
  // fails before anything changes.
  static PyObject* const step_count_name = interned("step_count");
  static PyObject* const delta_name = interned("delta");
  static PyObject* const dict_name = interned("__dict__");
  py::object owner_dict, next_count;
  if (owner.ptr() != Py_None) {
    owner_dict = py::reinterpret_steal<py::object>(PyObject_GetAttr(owner.ptr(), dict_name));
    if (!owner_dict) throw py::error_already_set();
    PyObject* n = PyDict_Check(owner_dict.ptr()) ? PyDict_GetItemWithError(owner_dict.ptr(), step_count_name)
                                                 : nullptr;  // borrowed
    if (PyErr_Occurred()) throw py::error_already_set();
    if (!n || !PyLong_CheckExact(n)) throw py::type_error("the optimizer's step_count must be an int");
    next_count = py::reinterpret_steal<py::object>(PyNumber_Add(n, one_.ptr()));
    if (!next_count) throw py::error_already_set();
  }
  {
    py::gil_scoped_release nogil;
    double* out = P.sums_target ? P.sums_target : P.sums.data();
    run_step(mode, p.layout(), P.data, Hyper{lr, w, w2, avg.divisor}, (mode & SCALE) ? out : nullptr);
  }
  if (deferred) {
    model_called = true;
    try {
      static PyObject* const update_name = interned("parameter_update");
      py::object r = py::reinterpret_steal<py::object>(
          PyObject_CallMethodOneArg(target.ptr(), update_name, P.delta.ptr()));
      if (!r) throw py::error_already_set();
    } catch (...) {  // nothing commits; the second buffers stay for the next step
      if (!start_m && !m_out.is(m)) m_spare_ = m_out;
      if (!start_v && !v_out.is(v)) v_spare_ = v_out;
      throw;
    }
  }
  // Commit: from here on nothing runs Python code or raises.
  if (!same_plan) {
    plan = plan_obj;
    plan_ptr_ = &p;
    drop_spares();
    checked_.clear();
  }
  if (staged.active()) pending = py::none();
  if (!m_out.is(mean)) {  // new arenas, or a staged plan's
    if (!start_m && deferred) m_spare_ = m;
    mean = std::move(m_out);
    m_tree_ = py::none();
  }
  if (!v_out.is(mean_square)) {
    if (!start_v && deferred) v_spare_ = v;
    mean_square = std::move(v_out);
    v_tree_ = py::none();
  }
  if (!new_sums.is_none()) sums = std::move(new_sums);
  if (!P.sums.empty())
    std::copy(P.sums.begin(), P.sums.end(), static_cast<double*>(PyArray_DATA(reinterpret_cast<PyArrayObject*>(sums.ptr()))));
  if (owner.ptr() != Py_None) {
    conv_count = count;
    conv_inplace = output != Output::DELTA;
    if (PyDict_SetItem(owner_dict.ptr(), step_count_name, next_count.ptr()) < 0 ||
        PyDict_SetItem(owner_dict.ptr(), delta_name, P.delta.ptr()) < 0)  // only out of memory
      throw py::error_already_set();
  }
  return P.delta;
}

}  // namespace fusedopt
