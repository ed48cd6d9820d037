// One step of a textbook optimizer over every leaf of a tree: the per-step
// scalars once, an optional read-only pass for the gradient's global norm,
// then the rule's kernel over the same chunks as every other family.
#pragma once
#include <cstddef>
#include <vector>
#include "common/multi_tensor.h"
#include "optim/rules.h"

namespace fusedopt {

// The hyper-parameters of every textbook rule (each rule reads its own).
struct TextbookHyper {
  double beta1 = 0.9, beta2 = 0.999;  // RMSprop's alpha is beta2
  double eps = 1e-8;
  double weight_decay = 0.0;
  double momentum = 0.0, dampening = 0.0;
  double lr_decay = 0.0;
  double initial_accumulator_value = 0.0;
  double max_grad_norm = 0.0;  // <= 0: no clipping
  bool maximize = false;
  bool decoupled = false;      // Adam rules: AdamW's decay
};

struct TextbookLeaf {
  Dtype dtype;
  const void* g;
  void* p;
  void* s[kSlots];
  bool decay;  // weight decay applies to this leaf (weight_decay_mask)
};

// Step number t (1 for the first step) of rule `rule` with learning rate lr;
// returns the global L2 norm of the gradient when clipping (else -1).
// Call without the GIL.
double run_textbook_step(TextbookRule rule, const ChunkLayout& layout, const std::vector<TextbookLeaf>& leaves,
                         const TextbookHyper& hyper, double lr, long long t);

}  // namespace fusedopt
