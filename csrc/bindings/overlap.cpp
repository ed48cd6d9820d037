#include "overlap.h"

#include <algorithm>

namespace fusedopt {

void add_span(std::vector<Span>& spans, const void* data, std::size_t bytes, const char* what, std::size_t index) {
  if (data && bytes > 0) {
    const char* b = static_cast<const char*>(data);
    spans.push_back({b, b + bytes, what, index});
  }
}

std::string where(const std::string& tree, const LeafSpec& s) {
  return s.path.empty() ? tree : tree + " at " + s.path;
}

namespace {
std::string span_name(const Plan& plan, const Span& s) {
  return s.index == kNoIndex ? "the optimizer's " + std::string(s.what) + " arena" : where(s.what, plan.leaves()[s.index]);
}
}  // namespace

void refuse_overlaps(const Plan& plan, std::vector<Span>& spans) {
  const auto [prev, next] = first_overlap(spans);
  if (!prev) return;
  const Span& param = next->index != kNoIndex ? *next : *prev;
  const Span& other = &param == next ? *prev : *next;
  throw py::value_error(span_name(plan, param) + ": shares memory with " + span_name(plan, other) +
                        (other.index == kNoIndex ? " (the optimizer's own state cannot be stepped as parameters)"
                                                 : "; each parameter must be its own array"));
}

std::pair<const char*, const char*> array_bounds(PyArrayObject* a) {
  const char* low = static_cast<const char*>(PyArray_DATA(a));
  const char* high = low;
  if (PyArray_SIZE(a) == 0) return {low, low};
  for (int d = 0; d < PyArray_NDIM(a); ++d) {
    const npy_intp reach = (PyArray_DIM(a, d) - 1) * PyArray_STRIDE(a, d);
    (reach < 0 ? low : high) += reach;
  }
  return {low, high + PyArray_ITEMSIZE(a)};
}

std::pair<const Span*, const Span*> first_overlap(std::vector<Span>& spans) {
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) { return a.begin < b.begin; });
  // If any two overlap, two neighbours do: a later start inside a span lies
  // inside the span just after it too, or starts that one.
  for (std::size_t k = 1; k < spans.size(); ++k)
    if (spans[k].begin < spans[k - 1].end) return {&spans[k - 1], &spans[k]};
  return {nullptr, nullptr};
}

const Span* overlapping(const std::vector<Span>& spans, const char* begin, const char* end) {
  if (begin == end) return nullptr;
  auto it = std::upper_bound(spans.begin(), spans.end(), begin, [](const char* b, const Span& s) { return b < s.end; });
  return it != spans.end() && it->begin < end ? &*it : nullptr;
}

const void* copy_if_overlapping(const std::vector<Span>& spans, const void* data, std::size_t bytes, py::handle array,
                                std::vector<py::object>& held) {
  const char* g = static_cast<const char*>(data);
  if (!overlapping(spans, g, g + bytes)) return nullptr;
  PyObject* c = PyArray_FromAny(array.ptr(), nullptr, 0, 0, NPY_ARRAY_CARRAY_RO | NPY_ARRAY_ENSURECOPY, nullptr);
  if (!c) throw py::error_already_set();
  held.push_back(py::reinterpret_steal<py::object>(c));
  return PyArray_DATA(reinterpret_cast<PyArrayObject*>(c));
}

namespace {

// Spans of a list of arrays, `index` their positions in it.
std::vector<Span> spans_of(py::handle arrays, const char* what) {
  std::vector<Span> spans;
  std::size_t i = 0;
  for (py::handle o : arrays) {
    if (!PyArray_Check(o.ptr())) throw py::type_error(std::string("SpanSet: ") + what + " must hold numpy arrays");
    const auto [b, e] = array_bounds(reinterpret_cast<PyArrayObject*>(o.ptr()));
    if (b != e) spans.push_back({b, e, what, i});
    ++i;
  }
  return spans;
}

// The memory of a list of arrays, sorted once (the addresses only: the caller keeps the arrays).
class SpanSet {
 public:
  explicit SpanSet(py::sequence arrays) : spans_(spans_of(arrays, "arrays")) {
    const auto [a, b] = first_overlap(spans_);
    if (a) overlap_ = py::make_tuple(std::min(a->index, b->index), std::max(a->index, b->index));
  }
  const py::object& overlap() const { return overlap_; }
  py::object first_hit(py::sequence arrays) const {
    if (!overlap_.is_none()) throw py::value_error("SpanSet.first_hit: the set's own arrays overlap");
    for (const Span& r : spans_of(arrays, "arrays"))
      if (const Span* w = overlapping(spans_, r.begin, r.end)) return py::make_tuple(r.index, w->index);
    return py::none();
  }

 private:
  std::vector<Span> spans_;
  py::object overlap_ = py::none();
};

}  // namespace

void register_overlap(py::module_& m) {
  py::class_<SpanSet>(m, "SpanSet",
                      "The memory of a list of arrays, compared by bounds as numpy.may_share_memory compares it "
                      "(fusedopt.torch checks all its groups' memory with one).")
      .def(py::init<py::sequence>(), py::arg("arrays"))
      .def_property_readonly("overlap", &SpanSet::overlap,
                             "(i, j), i < j, when arrays[i] and arrays[j] overlap (the first pair found), else None.")
      .def("first_hit", &SpanSet::first_hit, py::arg("arrays"),
           "(i, j) when arrays[i] overlaps the set's arrays[j] (the first found), else None.");
}

}  // namespace fusedopt
