// What both C++ micro-benchmarks share: the optimizer steps they time (their
// kernel modes and the bytes each element must move) and aligned arrays.
#pragma once
#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>
#include <vector>

#include "paysage/rules.h"

namespace fusedopt_bench {

using namespace fusedopt;

// The steady-state (running-average) in-place step of each optimizer, as the
// Python layer asks for it, and the bytes one element moves: arrays read +
// arrays written, 4 bytes each in float32.
struct OptimizerStep {
  const char* name;
  unsigned mode;
  std::size_t bytes_f32;
};

// The kernel of a steady in-place step of `rule`, from the one rule table.
constexpr unsigned steady_in_place(Rule rule) {
  return kKernels[static_cast<std::size_t>(kernel_index(rule, Phase::STEADY, Output::IN_PLACE))].mode;
}

inline const std::vector<OptimizerStep>& optimizer_steps() {
  static const std::vector<OptimizerStep> steps = {
      {"ADAM", steady_in_place(Rule::ADAM), 28},          // read g, p, m, v; write p, m, v
      {"RMSProp", steady_in_place(Rule::RMSPROP), 20},    // read g, p, v; write p, v
      {"Momentum", steady_in_place(Rule::MOMENTUM), 20},  // read g, p, m; write p, m
      {"Gradient", steady_in_place(Rule::GRADIENT), 12},  // read g, p; write p
  };
  return steps;
}

struct FreeDeleter {
  void operator()(float* p) const { std::free(p); }
};
using Floats = std::unique_ptr<float[], FreeDeleter>;

// n floats on a 64-byte boundary (as fusedopt's arenas are), filled with a
// fixed pattern in (lo, lo + span) so every run computes the same thing. The
// half-step offset keeps g away from 0: v then never decays into subnormals,
// which would time a slow path no training sees.
inline Floats aligned_floats(std::size_t n, float lo, float span) {
  const std::size_t bytes = ((n * sizeof(float) + 63) / 64) * 64;
  float* p = static_cast<float*>(std::aligned_alloc(64, bytes ? bytes : 64));
  if (!p) throw std::bad_alloc();
  for (std::size_t i = 0; i < n; ++i) p[i] = lo + span * (static_cast<float>((i * 2654435761u) % 1000u) + 0.5f) / 1000.0f;
  return Floats(p);
}

// The four arrays of a step: g in [-1, 1), p in [-1, 1), m in [-0.1, 0.1),
// v in [0.5, 1.5) (a mean square: positive).
struct StepArrays {
  Floats g, p, m, v;
  explicit StepArrays(std::size_t n)
      : g(aligned_floats(n, -1.0f, 2.0f)), p(aligned_floats(n, -1.0f, 2.0f)),
        m(aligned_floats(n, -0.1f, 0.2f)), v(aligned_floats(n, 0.5f, 1.0f)) {}
};

// ADAM's defaults and a small rate: values stay finite over any number of
// steps. With `table`, its FMA division by 1 - w and 1 - w2 is used where that
// divisor passes the table's check (as run_step does); without, the divider.
inline StepScalars<float> default_scalars(const KernelTable* table = nullptr) {
  StepScalars<float> c;
  c.lr = 0.001f;
  c.w = 0.9f;
  c.one_minus_w = 1.0f - c.w;
  c.w2 = 0.999f;
  c.one_minus_w2 = 1.0f - c.w2;
  c.eps = 1.0f / 8388608.0f;
  if (table && table->check_divisor) {
    if (table->check_divisor(c.one_minus_w, 1.0f / c.one_minus_w)) c.inv_one_minus_w = 1.0f / c.one_minus_w;
    if (table->check_divisor(c.one_minus_w2, 1.0f / c.one_minus_w2)) c.inv_one_minus_w2 = 1.0f / c.one_minus_w2;
  }
  return c;
}

}  // namespace fusedopt_bench
