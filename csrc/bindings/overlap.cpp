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

namespace {

// Spans of a list of arrays, `what` marking the list, `index` the position in it.
void add_arrays(std::vector<Span>& spans, py::handle arrays, const char* what) {
  std::size_t i = 0;
  for (py::handle o : arrays) {
    if (!PyArray_Check(o.ptr())) throw py::type_error(std::string("first_overlap: ") + what + " must hold numpy arrays");
    const auto [b, e] = array_bounds(reinterpret_cast<PyArrayObject*>(o.ptr()));
    if (b != e) spans.push_back({b, e, what, i});
    ++i;
  }
}

// (what, i, j) of the first overlap: ("written", i, j) two written arrays,
// ("read", i, j) read[i] inside written[j]; None when there is none.
py::object first_overlap_of(py::sequence written, py::sequence read) {
  std::vector<Span> spans;
  spans.reserve(py::len(written));
  add_arrays(spans, written, "written");
  const auto [a, b] = first_overlap(spans);
  if (a) return py::make_tuple("written", std::min(a->index, b->index), std::max(a->index, b->index));
  std::vector<Span> reads;
  add_arrays(reads, read, "read");
  for (const Span& r : reads)
    if (const Span* w = overlapping(spans, r.begin, r.end)) return py::make_tuple("read", r.index, w->index);
  return py::none();
}

}  // namespace

void register_overlap(py::module_& m) {
  m.def("first_overlap", &first_overlap_of, py::arg("written"), py::arg("read") = py::list(),
        "Memory overlap by bounds (numpy.may_share_memory's test) in one call: ('written', i, j) when written[i] "
        "and written[j] (i < j) overlap, else ('read', i, j) when read[i] overlaps written[j], else None.");
}

}  // namespace fusedopt
