// The textbook optimizers (fusedopt.optim, docs/optim.md) as named rules: one
// enum of rules, their weight-decay modes and phases, and ONE table of the
// (rule, decay, phase) combinations. The table is the list of what every
// instruction set compiles (optim/kernels_isa.cpp) and what the driver dispatches
// on: a combination missing from it fails the build (lookup below), never a user.
#pragma once
#include <array>
#include <cstddef>
#include <utility>

namespace fusedopt {

// One rule per torch.optim update; a variant that changes the element math
// (or the state it keeps) is a rule of its own.
enum class TextbookRule : unsigned {
  SGD,                         // p += -lr * g
  SGD_MOMENTUM,                // heavy ball: buf = momentum*buf + (1-dampening)*g
  SGD_NESTEROV,                // d = g + momentum*buf
  ADAM,                        // Adam / AdamW
  ADAM_AMSGRAD,                // with the running maximum of exp_avg_sq
  RMSPROP,
  RMSPROP_CENTERED,            // subtracts grad_avg**2 under the root
  RMSPROP_MOMENTUM,            // momentum buffer of g / avg
  RMSPROP_CENTERED_MOMENTUM,
  ADAGRAD,
  LION,                        // Chen et al. 2023
};

// How weight decay enters: not at all (weight_decay == 0, or the leaf is
// masked out), L2 (g += wd * p, torch's Adam, SGD, RMSprop, Adagrad) or
// decoupled (p *= 1 - lr*wd, AdamW and Lion).
enum class Decay : unsigned { NONE, L2, DECOUPLED };

// FIRST: the step that creates SGD's momentum buffer (buf = g, as torch's
// clone of the gradient); every other rule starts its state at a constant.
enum class TextbookPhase : unsigned { FIRST, STEADY };

struct RuleEntry {
  TextbookRule rule;
  Decay decay;
  TextbookPhase phase;
};

// Every compiled combination (per dtype, per instruction set).
constexpr std::array<RuleEntry, 28> kRuleTable = {{
    {TextbookRule::SGD, Decay::NONE, TextbookPhase::STEADY},
    {TextbookRule::SGD, Decay::L2, TextbookPhase::STEADY},
    {TextbookRule::SGD_MOMENTUM, Decay::NONE, TextbookPhase::FIRST},
    {TextbookRule::SGD_MOMENTUM, Decay::L2, TextbookPhase::FIRST},
    {TextbookRule::SGD_MOMENTUM, Decay::NONE, TextbookPhase::STEADY},
    {TextbookRule::SGD_MOMENTUM, Decay::L2, TextbookPhase::STEADY},
    {TextbookRule::SGD_NESTEROV, Decay::NONE, TextbookPhase::FIRST},
    {TextbookRule::SGD_NESTEROV, Decay::L2, TextbookPhase::FIRST},
    {TextbookRule::SGD_NESTEROV, Decay::NONE, TextbookPhase::STEADY},
    {TextbookRule::SGD_NESTEROV, Decay::L2, TextbookPhase::STEADY},
    {TextbookRule::ADAM, Decay::NONE, TextbookPhase::STEADY},
    {TextbookRule::ADAM, Decay::L2, TextbookPhase::STEADY},
    {TextbookRule::ADAM, Decay::DECOUPLED, TextbookPhase::STEADY},
    {TextbookRule::ADAM_AMSGRAD, Decay::NONE, TextbookPhase::STEADY},
    {TextbookRule::ADAM_AMSGRAD, Decay::L2, TextbookPhase::STEADY},
    {TextbookRule::ADAM_AMSGRAD, Decay::DECOUPLED, TextbookPhase::STEADY},
    {TextbookRule::RMSPROP, Decay::NONE, TextbookPhase::STEADY},
    {TextbookRule::RMSPROP, Decay::L2, TextbookPhase::STEADY},
    {TextbookRule::RMSPROP_CENTERED, Decay::NONE, TextbookPhase::STEADY},
    {TextbookRule::RMSPROP_CENTERED, Decay::L2, TextbookPhase::STEADY},
    {TextbookRule::RMSPROP_MOMENTUM, Decay::NONE, TextbookPhase::STEADY},
    {TextbookRule::RMSPROP_MOMENTUM, Decay::L2, TextbookPhase::STEADY},
    {TextbookRule::RMSPROP_CENTERED_MOMENTUM, Decay::NONE, TextbookPhase::STEADY},
    {TextbookRule::RMSPROP_CENTERED_MOMENTUM, Decay::L2, TextbookPhase::STEADY},
    {TextbookRule::ADAGRAD, Decay::NONE, TextbookPhase::STEADY},
    {TextbookRule::ADAGRAD, Decay::L2, TextbookPhase::STEADY},
    {TextbookRule::LION, Decay::NONE, TextbookPhase::STEADY},
    {TextbookRule::LION, Decay::DECOUPLED, TextbookPhase::STEADY},
}};

// Index of a combination in kRuleTable, or kRuleTable.size() when not compiled.
constexpr std::size_t rule_index(TextbookRule r, Decay d, TextbookPhase p) {
  for (std::size_t i = 0; i < kRuleTable.size(); ++i)
    if (kRuleTable[i].rule == r && kRuleTable[i].decay == d && kRuleTable[i].phase == p) return i;
  return kRuleTable.size();
}

// The names Python sees (fusedopt._core.TextbookRule), one per rule.
constexpr std::array<std::pair<TextbookRule, const char*>, 11> kRuleNames = {{
    {TextbookRule::SGD, "SGD"}, {TextbookRule::SGD_MOMENTUM, "SGD_MOMENTUM"}, {TextbookRule::SGD_NESTEROV, "SGD_NESTEROV"},
    {TextbookRule::ADAM, "ADAM"}, {TextbookRule::ADAM_AMSGRAD, "ADAM_AMSGRAD"}, {TextbookRule::RMSPROP, "RMSPROP"},
    {TextbookRule::RMSPROP_CENTERED, "RMSPROP_CENTERED"}, {TextbookRule::RMSPROP_MOMENTUM, "RMSPROP_MOMENTUM"},
    {TextbookRule::RMSPROP_CENTERED_MOMENTUM, "RMSPROP_CENTERED_MOMENTUM"}, {TextbookRule::ADAGRAD, "ADAGRAD"}, {TextbookRule::LION, "LION"},
}};

// Whether rule r has a FIRST phase of its own (else it is its STEADY kernel).
constexpr bool has_first_phase(TextbookRule r) { return r == TextbookRule::SGD_MOMENTUM || r == TextbookRule::SGD_NESTEROV; }

// The decay mode of a rule's optimizer class when weight_decay != 0.
constexpr Decay decay_of(TextbookRule r, bool decoupled) {
  return r == TextbookRule::LION || decoupled ? Decay::DECOUPLED : Decay::L2;
}

// State slots: up to three arrays per leaf, named as torch.optim names them;
// "" is an unused slot. Fixed positions per rule, so the math reads s0..s2.
constexpr std::size_t kSlots = 3;
constexpr std::array<const char*, kSlots> slot_names(TextbookRule r) {
  switch (r) {
    case TextbookRule::SGD: return {"", "", ""};
    case TextbookRule::SGD_MOMENTUM:
    case TextbookRule::SGD_NESTEROV: return {"momentum_buffer", "", ""};
    case TextbookRule::ADAM: return {"exp_avg", "exp_avg_sq", ""};
    case TextbookRule::ADAM_AMSGRAD: return {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"};
    case TextbookRule::RMSPROP: return {"square_avg", "", ""};
    case TextbookRule::RMSPROP_CENTERED: return {"square_avg", "grad_avg", ""};
    case TextbookRule::RMSPROP_MOMENTUM: return {"square_avg", "", "momentum_buffer"};
    case TextbookRule::RMSPROP_CENTERED_MOMENTUM: return {"square_avg", "grad_avg", "momentum_buffer"};
    case TextbookRule::ADAGRAD: return {"sum", "", ""};
    case TextbookRule::LION: return {"exp_avg", "", ""};
  }
  return {"", "", ""};
}
constexpr bool uses_slot(TextbookRule r, std::size_t k) { return slot_names(r)[k][0] != '\0'; }

// Every rule of the table, with a FIRST phase where it has one, has every
// decay mode its classes use: checked at compile time.
constexpr bool table_complete() {
  for (const RuleEntry& e : kRuleTable) {
    const TextbookRule r = e.rule;
    const bool adam = r == TextbookRule::ADAM || r == TextbookRule::ADAM_AMSGRAD;
    for (Decay d : {Decay::NONE, decay_of(r, false), decay_of(r, adam)}) {
      if (rule_index(r, d, TextbookPhase::STEADY) == kRuleTable.size()) return false;
      if (has_first_phase(r) && rule_index(r, d, TextbookPhase::FIRST) == kRuleTable.size()) return false;
    }
  }
  return true;
}
static_assert(table_complete(), "kRuleTable lacks a (rule, decay, phase) that the optimizers use");

// Scalars of one step, computed once per step by the driver (optim/step.cpp)
// in double as torch computes them in Python, then rounded to the leaf's dtype.
template <class T>
struct TextbookScalars {
  T gscale;        // g = g * gscale: the clip scale, negated for maximize
  T wd;            // L2: g = g + wd * p
  T decay;         // decoupled: p = p * (1 - lr*wd)
  T neg_lr;        // -lr (SGD, RMSprop, Lion), -step_size (Adam), -clr (Adagrad)
  T b1, omb1;      // Lion: beta1, 1 - beta1
  T b2, omb2;      // beta2 / alpha, 1 - beta2 / 1 - alpha: v = v*b2 + (omb2*g)*g; Lion's beta2
  T lerp_w, lerp_omw;  // torch's lerp weight (1 - beta1, 1 - alpha) and 1 - it
  bool lerp_small;     // |lerp_w| < 0.5: start + w*(end - start), else end - (end - start)*(1 - w)
  T bc2_sqrt;      // Adam: sqrt(1 - beta2**t)
  T eps;
  T momentum, omd;  // momentum, 1 - dampening
};

// Pointers of one contiguous piece of one leaf; unused slots are null.
template <class T>
struct TextbookSegment {
  const T* g;
  T* p;
  T* s[kSlots];
  std::size_t n;
};

template <class T>
using TextbookFn = void (*)(const TextbookSegment<T>&, const TextbookScalars<T>&);
// sum(g*g) over n elements, in double, in the same order at every level.
template <class T>
using SumSquaresFn = double (*)(const T* g, std::size_t n);

// One instruction set's kernels, index for index with kRuleTable.
struct TextbookTable {
  std::array<TextbookFn<float>, kRuleTable.size()> f32;
  std::array<TextbookFn<double>, kRuleTable.size()> f64;
  SumSquaresFn<float> sumsq32;
  SumSquaresFn<double> sumsq64;
};

}  // namespace fusedopt
