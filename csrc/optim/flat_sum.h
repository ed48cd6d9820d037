// Passes over one flat vector with a sum in a fixed order (see lbfgs.h): the
// chunks of kChunk elements run on the thread team, each chunk's elements add
// to 16 double lanes by index mod 16, and the totals combine in chunk order.
// Shared by LBFGS's and Muon's passes.
#pragma once
#include <algorithm>
#include <cstddef>
#include <vector>
#include "common/multi_tensor.h"
#include "common/threads.h"

namespace fusedopt {

constexpr std::size_t kLanes = 16;

// The sum of f(i) over [b, e) in the lane order: i adds to lane (i - b) mod
// 16, then the lanes in order. f may also write element i (fused passes).
// Always inlined: the SIMD levels' copies of LBFGS's passes (lbfgs_isa.cpp) call it,
// and an out-of-line copy would be shared between levels.
template <class F>
inline __attribute__((always_inline)) double lane_sum(std::size_t b, std::size_t e, F&& f) {
  double acc[kLanes] = {};
  std::size_t i = b;
  for (; i + kLanes <= e; i += kLanes)
    for (std::size_t j = 0; j < kLanes; ++j) acc[j] += f(i + j);
  for (std::size_t j = 0; i + j < e; ++j) acc[j] += f(i + j);
  double total = 0.0;
  for (std::size_t j = 0; j < kLanes; ++j) total += acc[j];
  return total;
}

// Runs chunk(b, e) -> double for every chunk of [0, n) and adds the results
// in chunk order. Adaptive: LBFGS runs dozens of short passes per iteration,
// and a team that does not help (a busy machine) is given up for a while.
template <class Chunk>
inline double chunked_sum(std::size_t n, Chunk&& chunk) {
  const std::size_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> part(chunks);
  auto body = [&](std::size_t c) { part[c] = chunk(c * kChunk, std::min(n, (c + 1) * kChunk)); };
  for_each_chunk(chunks, n >= kSerialBelow, true, body);
  double total = 0.0;
  for (double x : part) total += x;
  return total;
}

// A pass that sums: f(i) -> double over [0, n) in the fixed order.
template <class F>
inline double fixed_sum(std::size_t n, F&& f) {
  return chunked_sum(n, [&](std::size_t b, std::size_t e) { return lane_sum(b, e, f); });
}

// A pass that only writes: f(i) over [0, n), chunk by chunk on the team.
template <class F>
inline void for_each_element(std::size_t n, F&& f) {
  chunked_sum(n, [&](std::size_t b, std::size_t e) {
    for (std::size_t i = b; i < e; ++i) f(i);
    return 0.0;
  });
}

}  // namespace fusedopt
