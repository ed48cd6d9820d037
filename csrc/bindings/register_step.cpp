// Binding of the fused step: checks every tensor of the step (nothing is
// modified until all of them pass), then runs the kernel without the GIL.
#include <algorithm>
#include <cmath>
#include <utility>
#include <string>
#include <vector>

#include "../dispatch.h"
#include "arrays.h"
#include "numpy_api.h"
#include "registry.h"
#include "tree.h"

namespace fusedopt {

namespace {

std::string where(const char* name, const LeafSpec& s) {
  return s.path.empty() ? std::string(name) : std::string(name) + " at " + s.path;
}

const char* dtype_name(Dtype d) { return d == F32 ? "float32" : "float64"; }
std::size_t item_size(Dtype d) { return d == F32 ? 4 : 8; }
constexpr std::size_t kNoLeaf = static_cast<std::size_t>(-1);

std::string shape_of(PyArrayObject* a) {
  std::string out = "(";
  for (int i = 0; i < PyArray_NDIM(a); ++i) out += (i ? ", " : "") + std::to_string(PyArray_DIMS(a)[i]);
  return out + (PyArray_NDIM(a) == 1 ? ",)" : ")");
}

std::string type_of(PyObject* o) {
  if (PyArray_Check(o))
    return "dtype " + py::str(py::handle(reinterpret_cast<PyObject*>(PyArray_DESCR(reinterpret_cast<PyArrayObject*>(o))))).cast<std::string>();
  return Py_TYPE(o)->tp_name;
}

// Checks one leaf against its spec (array, dtype, shape); returns it as an array.
PyArrayObject* check_leaf(const Plan& plan, std::size_t l, PyObject* o, const char* name) {
  const LeafSpec& s = plan.leaves()[l];
  const int want = s.dtype == F32 ? NPY_FLOAT : NPY_DOUBLE;
  if (!PyArray_Check(o) || PyArray_TYPE(reinterpret_cast<PyArrayObject*>(o)) != want)
    throw py::type_error(where(name, s) + ": expected a " + dtype_name(s.dtype) + " numpy array (as on the first step), got " +
                         type_of(o));
  PyArrayObject* a = reinterpret_cast<PyArrayObject*>(o);
  const bool same = PyArray_NDIM(a) == static_cast<int>(s.shape.size()) &&
                    std::equal(s.shape.begin(), s.shape.end(), PyArray_DIMS(a));
  if (!same) throw py::value_error(where(name, s) + ": expected shape " + plan.shape_str(l) + ", got " + shape_of(a));
  return a;
}

template <class T>
bool all_finite(const T* x, std::size_t n) {
  bool ok = true;
  for (std::size_t i = 0; i < n; ++i) ok &= std::isfinite(x[i]);
  return ok;
}

bool leaf_finite(const void* data, const LeafSpec& s) {
  return s.dtype == F32 ? all_finite(static_cast<const float*>(data), s.size)
                        : all_finite(static_cast<const double*>(data), s.size);
}

// A byte range one step writes or reads as state, and whose it is.
struct Span {
  const char* begin;
  const char* end;
  const char* what;  // "params" (then `leaf` names it) or the arena's name
  std::size_t leaf;
};

std::string span_name(const Plan& plan, const Span& s) {
  return s.leaf == kNoLeaf ? "the optimizer's " + std::string(s.what) + " arena" : where(s.what, plan.leaves()[s.leaf]);
}

// Parameters, moment arenas and sums must not share memory: a parameter in
// another's memory would be stepped twice (and raced by threads), one in a
// moment arena would corrupt the optimizer's own state. Sorts `spans`.
void refuse_overlaps(const Plan& plan, std::vector<Span>& spans) {
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) { return a.begin < b.begin; });
  for (std::size_t k = 1; k < spans.size(); ++k) {
    const Span& prev = spans[k - 1];
    const Span& next = spans[k];
    if (prev.end <= next.begin) continue;
    const Span& param = next.leaf != kNoLeaf ? next : prev;
    const Span& other = &param == &next ? prev : next;
    throw py::value_error(span_name(plan, param) + ": shares memory with " + span_name(plan, other) +
                          (other.leaf == kNoLeaf ? " (the optimizer's own state cannot be stepped as parameters)"
                                                 : "; each parameter must be its own array"));
  }
}

// Whether [begin, end) overlaps any of `spans` (sorted, disjoint).
bool overlaps(const std::vector<Span>& spans, const char* begin, const char* end) {
  auto it = std::upper_bound(spans.begin(), spans.end(), begin, [](const char* b, const Span& s) { return b < s.end; });
  return it != spans.end() && it->begin < end;
}

py::object fused_step(const Plan& plan, unsigned mode, py::handle grad, py::str gname, py::handle params,
                      py::handle m32, py::handle m64, py::handle v32, py::handle v64, double lr, double w, double w2,
                      py::handle sumsq, bool check_finite) {
  if (mode >= MODE_LIMIT || !kernels().f32[mode]) throw py::value_error("unknown step mode " + std::to_string(mode));
  const unsigned dir = mode_dir(mode), out = mode_out(mode);
  const bool needs_m = mode_mean(mode) != MOMENT_NONE || dir == DIR_M || dir == DIR_NORM_M;
  const bool needs_v = mode_sq(mode) != MOMENT_NONE || dir == DIR_NORM_G || dir == DIR_NORM_M;
  const bool needs_p = out == OUT_INPLACE || out == OUT_BOTH;
  const bool needs_out = out == OUT_WRITE || out == OUT_BOTH;
  const auto& specs = plan.leaves();
  std::vector<LeafData> data(specs.size());
  // Every array the kernel touches stays referenced here until it returns: other
  // threads run while the GIL is released and may drop the trees' references.
  std::vector<py::object> keep;
  keep.reserve(2 * specs.size() + 1);
  auto hold = [&](PyObject* o) { keep.push_back(py::reinterpret_borrow<py::object>(o)); };
  auto copy_of = [&](PyArrayObject* a) {
    PyObject* c = PyArray_FromAny(reinterpret_cast<PyObject*>(a), PyArray_DescrFromType(PyArray_TYPE(a)), 0, 0,
                                  NPY_ARRAY_CARRAY_RO | NPY_ARRAY_ENSURECOPY, nullptr);
    if (!c) throw py::error_already_set();
    keep.push_back(py::reinterpret_steal<py::object>(c));
    return PyArray_DATA(reinterpret_cast<PyArrayObject*>(c));
  };

  const char* gn = PyUnicode_AsUTF8(gname.ptr());  // cached by Python: no copy per step
  if (!gn) throw py::error_already_set();
  std::vector<PyArrayObject*> garrays(specs.size());
  plan.walk(grad.ptr(), gn, [&](std::size_t l, PyObject* o) {
    PyArrayObject* a = check_leaf(plan, l, o, gn);
    hold(o);
    garrays[l] = a;
    data[l].dtype = specs[l].dtype;
    data[l].g = PyArray_ISCARRAY_RO(a) && PyArray_ISNOTSWAPPED(a) ? PyArray_DATA(a) : copy_of(a);
  });
  std::vector<Span> spans;  // what the step writes, or reads as its own state
  if (needs_p) {
    spans.reserve(specs.size() + 5);
    plan.walk(params.ptr(), "params", [&](std::size_t l, PyObject* o) {
      const LeafSpec& s = specs[l];
      if (PyArray_Check(o) && PyArray_TYPE(reinterpret_cast<PyArrayObject*>(o)) != (s.dtype == F32 ? NPY_FLOAT : NPY_DOUBLE))
        throw py::type_error(where("params", s) + ": dtype " + type_of(o).substr(6) + " does not match the gradient's " +
                             dtype_name(s.dtype));
      PyArrayObject* a = check_leaf(plan, l, o, "params");
      if (!PyArray_ISWRITEABLE(a)) throw py::value_error(where("params", s) + ": the array is read-only; it must be writeable to be stepped in place");
      if (!PyArray_ISCARRAY(a) || !PyArray_ISNOTSWAPPED(a))
        throw py::value_error(where("params", s) + ": the array must be C-contiguous, aligned and in native byte order to be stepped in place");
      hold(o);
      data[l].p = PyArray_DATA(a);
      const char* b = static_cast<const char*>(data[l].p);
      if (s.size > 0) spans.push_back({b, b + s.size * item_size(s.dtype), "params", l});
    });
  }
  void* mbase[2] = {nullptr, nullptr};
  void* vbase[2] = {nullptr, nullptr};
  auto state_span = [&](void* base, Dtype d, std::size_t n, const char* what) {
    if (base && n > 0) spans.push_back({static_cast<const char*>(base), static_cast<const char*>(base) + n * item_size(d), what, kNoLeaf});
  };
  for (Dtype d : {F32, F64}) {
    if (plan.arena_size(d) == 0) continue;
    py::handle ma = d == F32 ? m32 : m64, va = d == F32 ? v32 : v64;
    if (needs_m) {
      mbase[d] = arena_data(ma, d, plan.arena_size(d), "mean");
      hold(ma.ptr());
      state_span(mbase[d], d, plan.arena_size(d), "mean");
    }
    if (needs_v) {
      vbase[d] = arena_data(va, d, plan.arena_size(d), "mean square");
      hold(va.ptr());
      state_span(vbase[d], d, plan.arena_size(d), "mean square");
    }
  }
  double* sums = nullptr;
  if ((mode & SCALE) && !sumsq.is_none()) {
    sums = static_cast<double*>(arena_data(sumsq, F64, specs.size(), "sum of squares"));
    hold(sumsq.ptr());
    state_span(sums, F64, specs.size(), "sum of squares");
  }
  refuse_overlaps(plan, spans);
  // A gradient in memory the step writes is read as it was before the step
  // (numpy's p - lr * g.copy()), whatever the SIMD width or thread count.
  if (!spans.empty())
    for (std::size_t l = 0; l < specs.size(); ++l) {
      const char* b = static_cast<const char*>(data[l].g);
      if (specs[l].size > 0 && overlaps(spans, b, b + specs[l].size * item_size(specs[l].dtype)))
        data[l].g = copy_of(garrays[l]);
    }
  if (check_finite)
    for (std::size_t l = 0; l < specs.size(); ++l)
      if (!leaf_finite(data[l].g, specs[l])) {
        PyErr_SetString(PyExc_FloatingPointError,
                        (where(gn, specs[l]) + " contains NaN or Inf (check_finite=True); nothing was modified").c_str());
        throw py::error_already_set();
      }
  py::object outs[2] = {py::none(), py::none()};
  void* obase[2] = {nullptr, nullptr};
  if (needs_out)
    for (Dtype d : {F32, F64})
      if (plan.uses(d)) {  // even when all its leaves are empty: they still need views
        outs[d] = recycled_empty(plan.arena_size(d), d);
        obase[d] = arena_data(outs[d], d, plan.arena_size(d), "output");
      }
  for (std::size_t l = 0; l < specs.size(); ++l) {
    const LeafSpec& s = specs[l];
    const std::size_t bytes = s.offset * item_size(s.dtype);
    auto at = [&](void* base) { return base ? static_cast<void*>(static_cast<char*>(base) + bytes) : nullptr; };
    data[l].m = at(mbase[s.dtype]);
    data[l].v = at(vbase[s.dtype]);
    data[l].out = at(obase[s.dtype]);
  }
  {
    py::gil_scoped_release nogil;
    run_step(mode, plan.layout(), data, Hyper{lr, w, w2}, sums);
  }
  if (!needs_out) return py::none();
  return plan.views(outs[F32], outs[F64]);
}

// One optimizer's steady-state step with everything but the gradient, the
// parameters and the rate bound once (Optimizer.update's fast path): a call
// with four arguments instead of fourteen costs ~0.3 us less per step, which
// is a third of a small step's time.
class BoundStep {
  static const Plan* as_plan(const py::object& o) {
    if (!py::isinstance<Plan>(o)) throw py::type_error("plan must be a fusedopt._core.Plan");
    return o.cast<const Plan*>();
  }

 public:
  BoundStep(py::object plan, unsigned mode, py::str gname, py::object m32, py::object m64, py::object v32,
            py::object v64, double w, double w2, py::object sumsq)
      : plan_obj_(std::move(plan)), plan_(as_plan(plan_obj_)), mode_(mode), gname_(std::move(gname)),
        m32_(std::move(m32)), m64_(std::move(m64)), v32_(std::move(v32)), v64_(std::move(v64)), w_(w), w2_(w2),
        sumsq_(std::move(sumsq)) {}

  py::object operator()(py::handle grad, py::handle params, double lr, bool check_finite) const {
    return fused_step(*plan_, mode_, grad, gname_, params, m32_, m64_, v32_, v64_, lr, w_, w2_, sumsq_, check_finite);
  }

 private:
  py::object plan_obj_;  // keeps plan_ alive
  const Plan* plan_;
  unsigned mode_;
  py::str gname_;
  py::object m32_, m64_, v32_, v64_;
  double w_, w2_;
  py::object sumsq_;
};

}  // namespace

void register_step(py::module_& m) {
  py::class_<BoundStep>(m, "BoundStep", "step() with all but grad, params, lr and check_finite bound.")
      .def(py::init<py::object, unsigned, py::str, py::object, py::object, py::object, py::object, double, double,
                    py::object>(),
           py::arg("plan"), py::arg("mode"), py::arg("grad_name"), py::arg("m32"), py::arg("m64"), py::arg("v32"),
           py::arg("v64"), py::arg("w"), py::arg("w2"), py::arg("sumsq"))
      .def("__call__", &BoundStep::operator(), py::arg("grad"), py::arg("params"), py::arg("lr"),
           py::arg("check_finite"), "The bound step on this gradient (see step()).");
  m.def("step", &fused_step, py::arg("plan"), py::arg("mode"), py::arg("grad"), py::arg("grad_name"),
        py::arg("params"), py::arg("m32"), py::arg("m64"), py::arg("v32"), py::arg("v64"), py::arg("lr"),
        py::arg("w"), py::arg("w2"), py::arg("sumsq"), py::arg("check_finite"),
        "One fused step over every leaf of `grad` (see fusedopt.optimizers for the modes).");
}

}  // namespace fusedopt
