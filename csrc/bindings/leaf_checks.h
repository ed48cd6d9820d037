// Checks shared by the native states of fusedopt.optim (OptimState, Quant8State).
#pragma once
#include <pybind11/pybind11.h>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "tree.h"

namespace py = pybind11;

namespace fusedopt {

// One flag per leaf from the decay mask, or a ValueError when the counts differ.
inline std::vector<char> decay_flags(const std::vector<bool>& mask, std::size_t leaves) {
  if (mask.size() != leaves)
    throw py::value_error("decay_mask has " + std::to_string(mask.size()) + " entries, the tree has " +
                          std::to_string(leaves) + " leaves");
  return std::vector<char>(mask.begin(), mask.end());
}

// Two parameter leaves sharing memory would be stepped twice (and raced by
// threads): a ValueError naming both. params[l] is leaf l's data.
inline void check_disjoint_params(const std::vector<LeafSpec>& specs, const std::vector<const void*>& params) {
  const auto at = [](const LeafSpec& s) { return s.path.empty() ? std::string("params") : "params at " + s.path; };
  std::vector<std::pair<const char*, std::size_t>> spans;
  for (std::size_t l = 0; l < specs.size(); ++l)
    if (specs[l].size > 0) spans.emplace_back(static_cast<const char*>(params[l]), l);
  std::sort(spans.begin(), spans.end());
  for (std::size_t k = 1; k < spans.size(); ++k) {
    const LeafSpec& prev = specs[spans[k - 1].second];
    if (spans[k - 1].first + prev.size * item_size(prev.dtype) > spans[k].first)
      throw py::value_error(at(specs[spans[k].second]) + ": shares memory with " + at(prev) +
                            "; each parameter must be its own array");
  }
}

}  // namespace fusedopt
