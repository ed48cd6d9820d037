// One step of an optim-family rule over every leaf of a tree: the per-step
// scalars once, an optional read-only pass for the gradient's global norm,
// then the rule's kernel over the same chunks as every other family.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>
#include "common/multi_tensor.h"
#include "optim/rules.h"

namespace fusedopt {

struct OptimLeaf {
  Dtype dtype;
  const void* g;
  void* p;
  void* s[kSlots];
  bool decay;  // weight decay applies to this leaf (weight_decay_mask)
  std::size_t size;  // elements
  // A 16-bit leaf with master weights: its float32 master (and float32 slots
  // in s); the float32 kernel steps the master, then p is narrowed from it.
  float* master = nullptr;
  // GradScaler's unscale written back (unscale_in_place): g itself, writeable; else null.
  void* gout = nullptr;
};

using ScalarState = std::array<double, kMaxScalarState>;

// How bfloat16/float16 leaves round their parameters and their 16-bit slots:
// to nearest even, or stochastically with the bits of the generator keyed by seed.
struct LowRounding {
  bool stochastic = false;        // the parameters
  bool stochastic_state = false;  // the 16-bit slots (not float32 ones of master weights)
  std::uint64_t seed = 0;
  bool fresh_master = false;  // this step first widens each master from its parameter
};

// Step number t (1 for the first step) of `rule` with learning rate lr;
// `state` is the rule's scalar state before the step and is advanced in
// place. Returns the global L2 norm of the gradient when clipping (else -1).
// Call without the GIL.
double run_optim_step(OptimRule rule, const ChunkLayout& layout, const std::vector<OptimLeaf>& leaves,
                      const OptimHyper& hyper, double lr, long long t, ScalarState& state,
                      const LowRounding& low = {});

// The float32 scalars of step t of a rule that keeps no scalar state, unclipped:
// what run_optim_step hands a float32 kernel (the 8-bit optimizers' step, optim/quant8.h).
OptimScalars<float> stateless_scalars32(OptimRule rule, const OptimHyper& hyper, double lr, long long t);

}  // namespace fusedopt
