// The named rules of the paysage family and the one table that maps
// (rule, phase, output) to its kernel. The table is also the list of kernels
// compiled (kernels_isa.cpp instantiates exactly its entries), and it is
// generated from kRuleSpecs below, so a rule's every valid phase and output is
// compiled by construction; the static_asserts check the table against the
// rules at build time. The element math of each rule: docs/semantics.md.
#pragma once
#include <array>
#include <cstddef>
#include "common/combinations.h"
#include "paysage/kernel_modes.h"

namespace fusedopt {

enum class Rule : unsigned {
  GRADIENT,                 // d = lr * g
  MOMENTUM,                 // m = w*m + (1-w)*g; d = lr * m
  RMSPROP,                  // v = w2*v + ((1-w2)*g)*g; d = lr * g / sqrt(EPS + v/(1-w2))
  ADAM,                     // both moments; d = lr * (m/(1-w)) / sqrt(EPS + v/(1-w2))
  UPDATE_MEAN,              // GradientMemory.update_mean (and update with w2 == 0)
  UPDATE_MEAN_SQUARE,       // GradientMemory.update_mean_square (and update with w == 0)
  UPDATE_BOTH,              // GradientMemory.update with both weights
  NORMALIZE,                // GradientMemory.normalize(g): g / sqrt(EPS + v)
  NORMALIZE_UNBIASED,       // normalize(g, unbiased=True) with w == 0
  NORMALIZE_UNBIASED_MEAN,  // normalize(g, unbiased=True): (g/(1-w)) / sqrt(EPS + v/(1-w2))
};
constexpr unsigned kNumRules = 10;

// Which of the rule's moments start on this step (m = g, v = g*g) instead of
// being averaged: FIRST starts all of them, FIRST_MEAN / FIRST_MEAN_SQUARE
// one of two (a state that holds only the other moment).
enum class Phase : unsigned { STEADY, FIRST, FIRST_MEAN, FIRST_MEAN_SQUARE };
constexpr unsigned kNumPhases = 4;

// Where the step's result goes: nowhere (memory updates), a new delta tree,
// p -= d in place, or both.
enum class Output : unsigned { NONE, DELTA, IN_PLACE, BOTH };
constexpr unsigned kNumOutputs = 4;

struct RuleSpec {
  Rule rule;
  const char* name;
  bool mean, sq;  // the moments it updates
  unsigned dir, flags;
  bool steps;     // an optimizer step (DELTA, IN_PLACE, BOTH) or a memory op
};

constexpr RuleSpec kRuleSpecs[kNumRules] = {
    {Rule::GRADIENT, "GRADIENT", false, false, DIR_G, SCALE, true},
    {Rule::MOMENTUM, "MOMENTUM", true, false, DIR_M, SCALE, true},
    {Rule::RMSPROP, "RMSPROP", false, true, DIR_NORM_G, SCALE | UNBIASED, true},
    {Rule::ADAM, "ADAM", true, true, DIR_NORM_M, SCALE | UNBIASED | MEAN_DIV, true},
    {Rule::UPDATE_MEAN, "UPDATE_MEAN", true, false, DIR_NONE, 0, false},
    {Rule::UPDATE_MEAN_SQUARE, "UPDATE_MEAN_SQUARE", false, true, DIR_NONE, 0, false},
    {Rule::UPDATE_BOTH, "UPDATE_BOTH", true, true, DIR_NONE, 0, false},
    {Rule::NORMALIZE, "NORMALIZE", false, false, DIR_NORM_G, 0, false},
    {Rule::NORMALIZE_UNBIASED, "NORMALIZE_UNBIASED", false, false, DIR_NORM_G, UNBIASED, false},
    {Rule::NORMALIZE_UNBIASED_MEAN, "NORMALIZE_UNBIASED_MEAN", false, false, DIR_NORM_G, UNBIASED | MEAN_DIV, false},
};

constexpr const RuleSpec& spec_of(Rule r) { return kRuleSpecs[static_cast<unsigned>(r)]; }

// Whether (rule, phase, output) is a step the rule has.
constexpr bool valid(Rule r, Phase ph, Output out) {
  const RuleSpec& s = spec_of(r);
  const bool phase_ok = ph == Phase::STEADY || (ph == Phase::FIRST && (s.mean || s.sq)) ||
                        ((ph == Phase::FIRST_MEAN || ph == Phase::FIRST_MEAN_SQUARE) && s.mean && s.sq);
  const bool out_ok = s.steps ? out != Output::NONE
                              : out == (s.dir == DIR_NONE ? Output::NONE : Output::DELTA);
  return phase_ok && out_ok;
}

// The kernel mode of a valid (rule, phase, output).
constexpr unsigned mode_of(Rule r, Phase ph, Output out) {
  const RuleSpec& s = spec_of(r);
  const bool first_m = ph == Phase::FIRST || ph == Phase::FIRST_MEAN;
  const bool first_v = ph == Phase::FIRST || ph == Phase::FIRST_MEAN_SQUARE;
  const unsigned mean = s.mean ? (first_m ? MOMENT_INIT : MOMENT_EMA) : MOMENT_NONE;
  const unsigned sq = s.sq ? (first_v ? MOMENT_INIT : MOMENT_EMA) : MOMENT_NONE;
  const unsigned o = out == Output::DELTA ? OUT_WRITE : out == Output::IN_PLACE ? OUT_INPLACE
                     : out == Output::BOTH ? OUT_BOTH : OUT_NONE;
  return make_mode(mean, sq, s.dir, o, s.flags);
}

struct KernelEntry {
  Rule rule;
  Phase phase;
  Output output;
  unsigned mode;
};

constexpr auto kernel_valid = [](unsigned r, unsigned ph, unsigned o) { return valid(Rule(r), Phase(ph), Output(o)); };

// The table: every valid (rule, phase, output), in enum order.
constexpr auto kKernels =
    valid_combinations<KernelEntry, count_valid<kNumRules, kNumPhases, kNumOutputs>(kernel_valid), kNumRules,
                       kNumPhases, kNumOutputs>(kernel_valid, [](unsigned r, unsigned ph, unsigned o) {
      return KernelEntry{Rule(r), Phase(ph), Output(o), mode_of(Rule(r), Phase(ph), Output(o))};
    });

// Build-time checks: the rule specs are in enum order, and no two entries of
// the table share a kernel (a typo in a spec would make two rules one).
constexpr bool specs_in_order() {
  for (unsigned r = 0; r < kNumRules; ++r)
    if (static_cast<unsigned>(kRuleSpecs[r].rule) != r) return false;
  return true;
}
constexpr bool modes_distinct() {
  for (std::size_t i = 0; i < kKernels.size(); ++i) {
    if (kKernels[i].mode >= MODE_LIMIT) return false;
    for (std::size_t j = 0; j < i; ++j)
      if (kKernels[i].mode == kKernels[j].mode) return false;
  }
  return true;
}
static_assert(specs_in_order(), "kRuleSpecs must list the rules in the order of enum Rule");
static_assert(modes_distinct(), "two (rule, phase, output) entries map to the same kernel");

// Index of (rule, phase, output) in kKernels, or -1 when the rule has no such step.
constexpr auto kKernelIndex = combination_index<kNumRules, kNumPhases, kNumOutputs>(kKernels, [](const KernelEntry& k) {
  return std::array<unsigned, 3>{static_cast<unsigned>(k.rule), static_cast<unsigned>(k.phase),
                                 static_cast<unsigned>(k.output)};
});
constexpr int kernel_index(Rule r, Phase ph, Output out) {
  const unsigned ri = static_cast<unsigned>(r), pi = static_cast<unsigned>(ph), oi = static_cast<unsigned>(out);
  if (ri >= kNumRules || pi >= kNumPhases || oi >= kNumOutputs) return -1;
  return kKernelIndex[(ri * kNumPhases + pi) * kNumOutputs + oi];
}

}  // namespace fusedopt
