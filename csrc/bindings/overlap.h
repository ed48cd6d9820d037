// Memory overlap between the arrays of one step, for every family: byte
// ranges compared by their bounds, as numpy.may_share_memory compares them
// (docs/aliasing.md says what each family does with an overlap).
#pragma once
#include <pybind11/pybind11.h>

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "numpy_api.h"
#include "tree.h"

namespace py = pybind11;

namespace fusedopt {

constexpr std::size_t kNoIndex = static_cast<std::size_t>(-1);

// A byte range a step writes or reads, and whose it is: `what` names the
// tree ("params") or the optimizer's arena, `index` the leaf (kNoIndex: an arena).
struct Span {
  const char* begin;
  const char* end;
  const char* what;
  std::size_t index;
};

// Adds [data, data + bytes) to `spans` unless it is empty.
void add_span(std::vector<Span>& spans, const void* data, std::size_t bytes, const char* what, std::size_t index);

// From an array's lowest to one past its highest byte (strided arrays too).
std::pair<const char*, const char*> array_bounds(PyArrayObject* a);

// "params at ['w'][0]": a leaf of a tree, for messages.
std::string where(const std::string& tree, const LeafSpec& s);

// Parameters and the optimizer's state must not share memory: a parameter in
// another's memory would be stepped twice (and raced by threads), one in the
// state would corrupt it. Sorts `spans` (leaves of `plan` and arenas); a
// ValueError names both.
void refuse_overlaps(const Plan& plan, std::vector<Span>& spans);

// Sorts `spans` by start; returns two spans that overlap (the first found),
// or {nullptr, nullptr} when all are disjoint.
std::pair<const Span*, const Span*> first_overlap(std::vector<Span>& spans);

// The span of `spans` (sorted, disjoint) that [begin, end) overlaps, or nullptr.
const Span* overlapping(const std::vector<Span>& spans, const char* begin, const char* end);

// A gradient's data (`bytes` long, of `array`) that overlaps `spans` (sorted,
// disjoint) is read as it was before the step: the data of a C-contiguous copy,
// kept alive in `held`; nullptr when it does not overlap (no copy).
const void* copy_if_overlapping(const std::vector<Span>& spans, const void* data, std::size_t bytes, py::handle array,
                                std::vector<py::object>& held);

// The addresses of the last two steps whose overlap checks passed with nothing
// to copy (two: the paysage path alternates between two moment buffers, a user
// may alternate two parameter buffers). Overlap is a function of addresses and
// sizes alone, so a step whose key (the caller's: plan, state memory, leaves)
// was seen needs no new check; a tree of many leaves would otherwise sort and
// search its spans on every step.
class CheckedAddresses {
 public:
  // The key of the step being checked, filled by the caller.
  std::vector<const void*>& probe() {
    probe_.clear();
    return probe_;
  }
  bool seen() const { return probe_ == keys_[0] || probe_ == keys_[1]; }
  // Remembers the probe (it follows seen() without Python code in between).
  void add() {
    next_ ^= 1;
    keys_[next_] = probe_;
  }
  void clear() {
    for (auto& key : keys_) key.clear();
  }

 private:
  std::vector<const void*> keys_[2], probe_;
  int next_ = 0;
};

// _core.SpanSet: the overlap check of fusedopt.torch's plans, over the memory
// of all its groups at once.
void register_overlap(py::module_& m);

}  // namespace fusedopt
