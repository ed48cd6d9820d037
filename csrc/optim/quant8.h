// Adam and AdamW with 8-bit blockwise states (docs/lowbit.md): the element
// pass of one step over every leaf of a tree.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>
#include "optim/quant8_map.h"

namespace fusedopt {

// Per-step scalars, rounded to float32 from torch's double values.
struct Quant8Scalars {
  float gscale, wd, decay, neg_lr, b2, omb2, lerp_w, lerp_omw, bc2_sqrt, eps;
  bool lerp_small;
};

enum class Quant8Decay : int { NONE = 0, L2 = 1, DECOUPLED = 2 };

// One leaf: either codes and block absmax (mc, vc, ma, va) or float32 moments (m, v).
struct Quant8Leaf {
  const float* g;
  float* p;
  std::uint8_t *mc = nullptr, *vc = nullptr;
  float *ma = nullptr, *va = nullptr;
  float *m = nullptr, *v = nullptr;
  std::size_t n = 0;
  Quant8Decay decay = Quant8Decay::NONE;
  float* gout = nullptr;  // g itself, to take g * (1/grad_scale) after the step (unscale_in_place), or null
};

// Elements [begin, end) of a leaf (block-aligned for quantized leaves).
struct Quant8Span {
  Quant8Leaf leaf;
  std::size_t begin, end;
};

using Quant8Fn = void (*)(const Quant8Span&, std::size_t block, const Quant8Scalars&);

struct Quant8Hyper {
  double beta1, beta2, eps, weight_decay;
  bool maximize, decoupled;
  double grad_scale = 0.0;  // GradScaler's scale, divided out in the step (0: none)
};

// Step t (1 for the first) over all leaves, on the thread team. Call without the GIL.
void run_quant8_step(const std::vector<Quant8Leaf>& leaves, std::size_t block, const Quant8Hyper& h, double lr,
                     long long t);

// Blockwise quantization of n float32 values (the step's own encoder) and back.
void quant8_encode(const float* x, std::size_t n, std::size_t block, bool is_signed, std::uint8_t* codes, float* absmax);
void quant8_decode(const std::uint8_t* codes, const float* absmax, std::size_t n, std::size_t block, bool is_signed,
                   float* out);

}  // namespace fusedopt
