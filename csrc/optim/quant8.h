// Adam8bit/AdamW8bit and Lion8bit (docs/lowbit.md): an optim rule's element
// math (optim/math.h, the float32 kernel's) on 8-bit blockwise states, one
// pass over every leaf of a tree.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>
#include "optim/quant8_map.h"
#include "optim/rules.h"

namespace fusedopt {

// The rules with an 8-bit state, in the order of their kernel tables.
constexpr OptimRule kQuant8Rules[] = {rule_named("ADAM"), rule_named("LION")};
constexpr std::size_t kNumQuant8Rules = std::size(kQuant8Rules);
constexpr std::size_t kQuant8Slots = 2;

// Slots of a rule's 8-bit state: the rule's own (codes or float32 values), in its order.
constexpr std::size_t quant8_slots(OptimRule r) {
  std::size_t k = 0;
  while (k < kSlots && uses_slot(r, k)) ++k;
  return k;
}
// Slot 0 (the first moment) has the signed map; slot 1 (Adam's second moment, >= 0) the unsigned one.
constexpr bool quant8_signed_slot(std::size_t k) { return k == 0; }

constexpr bool quant8_rules_fit() {
  for (OptimRule r : kQuant8Rules) {
    if (static_cast<unsigned>(r) >= kNumOptimRules || spec_of(r).first_phase) return false;
    if (quant8_slots(r) == 0 || quant8_slots(r) > kQuant8Slots || spec_of(r).scalar_state[0].name[0]) return false;
  }
  return true;
}
static_assert(quant8_rules_fit(), "kQuant8Rules: a rule missing, with a first phase, scalar state, or too many slots");

// Index of a rule in kQuant8Rules (kNumQuant8Rules: none).
constexpr std::size_t quant8_rule_index(OptimRule r) {
  std::size_t i = 0;
  while (i < kNumQuant8Rules && kQuant8Rules[i] != r) ++i;
  return i;
}

// One leaf: per slot either codes and block absmax, or float32 values (a leaf below
// min_8bit_size: codes null).
struct Quant8Leaf {
  const float* g = nullptr;
  float* p = nullptr;
  std::uint8_t* codes[kQuant8Slots] = {};
  float* absmax[kQuant8Slots] = {};
  float* values[kQuant8Slots] = {};
  std::size_t n = 0;
  bool decay = false;  // weight decay applies (weight_decay_mask)
  float* gout = nullptr;  // g itself, to take g * (1/grad_scale) after the step (unscale_in_place), or null
};

// Elements [begin, end) of a leaf (block-aligned for quantized leaves).
struct Quant8Span {
  Quant8Leaf leaf;
  std::size_t begin, end;
};

using Quant8Fn = void (*)(const Quant8Span&, std::size_t block, const OptimScalars<float>&);
using Quant8EncodeFn = void (*)(const float* x, std::size_t n, std::size_t block, bool is_signed, std::uint8_t* codes,
                                float* absmax);
using Quant8DecodeFn = void (*)(const std::uint8_t* codes, const float* absmax, std::size_t n, std::size_t block,
                                bool is_signed, float* out);
// One instruction set's kernels: the span kernels per rule of kQuant8Rules and decay (null:
// not a mode of the rule), and the blockwise encoder and decoder of the step on their own.
struct Quant8Table {
  Quant8Fn step[kNumQuant8Rules][kNumOptimDecays];
  Quant8EncodeFn encode;
  Quant8DecodeFn decode;
};

// Step t (1 for the first) of `rule` (one of kQuant8Rules) over all leaves, on the
// thread team. Call without the GIL.
void run_quant8_step(OptimRule rule, const std::vector<Quant8Leaf>& leaves, std::size_t block, const OptimHyper& h,
                     double lr, long long t);

// Blockwise quantization of n float32 values (the step's own encoder and decoder, of the
// selected SIMD level) and back.
void quant8_encode(const float* x, std::size_t n, std::size_t block, bool is_signed, std::uint8_t* codes, float* absmax);
void quant8_decode(const std::uint8_t* codes, const float* absmax, std::size_t n, std::size_t block, bool is_signed,
                   float* out);

}  // namespace fusedopt
