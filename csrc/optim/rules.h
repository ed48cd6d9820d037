// The optim family (fusedopt.optim, fusedopt.torch; docs/optim.md) as named
// rules, each declared by ONE spec in kOptimRuleSpecs: its name, its state
// slots and their start values, its per-rule scalar state, its weight-decay
// modes, whether it has a first phase, and which element math it runs. The
// kernel table (every (rule, decay, phase) compiled per dtype and instruction
// set, optim/kernels_isa.cpp) is generated from the specs, and static_asserts
// check the specs at build time, so a rule that is declared is compiled and
// dispatched, or the build fails. The hyper-parameters every rule may read
// are declared here too (kHyperSpecs), once each.
#pragma once
#include <array>
#include <cstddef>
#include <iterator>
#include "common/combinations.h"

namespace fusedopt {

// -- hyper-parameters -------------------------------------------------------------------------
// What Python may store in a field; fusedopt.optim validates each value by its
// field's domain (python/fusedopt/optim/_checks.py, DOMAINS). Flags are 0 or 1.
enum class Domain : unsigned { FINITE, NON_NEGATIVE, UNIT_OPEN, UNIT_CLOSED, FLAG };

// X(name, domain): every hyper-parameter of every rule, declared once. The
// native field, its Python name (OptimHyper[name]) and its validation follow.
#define FUSEDOPT_OPTIM_HYPER(X)                                                                        \
  X(beta1, UNIT_OPEN)                    /* Adam, Lion: betas[0] */                                    \
  X(beta2, UNIT_OPEN)                    /* Adam, Lion: betas[1] */                                    \
  X(alpha, UNIT_CLOSED)                  /* RMSprop's smoothing constant */                            \
  X(rho, UNIT_CLOSED)                    /* Adadelta's smoothing constant */                           \
  X(lambd, NON_NEGATIVE)                 /* ASGD: the decay term */                                    \
  X(power, FINITE)                       /* ASGD's alpha: eta = lr / (1 + lambd*lr*t)**alpha */        \
  X(t0, FINITE)                          /* ASGD: the step averaging starts at */                      \
  X(etaminus, FINITE)                    /* Rprop: etas = (etaminus, etaplus), 0 < etaminus < 1 < etaplus */ \
  X(etaplus, FINITE)                                                                                   \
  X(step_size_min, NON_NEGATIVE)         /* Rprop: step_sizes = (min, max) */                          \
  X(step_size_max, NON_NEGATIVE)                                                                       \
  X(eps, NON_NEGATIVE)                                                                                 \
  X(weight_decay, NON_NEGATIVE)                                                                        \
  X(decoupled_weight_decay, FLAG)        /* rules with both decay modes: p *= 1 - lr*wd, not L2 */     \
  X(momentum, NON_NEGATIVE)                                                                            \
  X(dampening, FINITE)                                                                                 \
  X(lr_decay, NON_NEGATIVE)                                                                            \
  X(initial_accumulator_value, NON_NEGATIVE)                                                           \
  X(max_grad_norm, NON_NEGATIVE)         /* 0: no clipping */                                          \
  X(grad_scale, NON_NEGATIVE)            /* 0: none; else g * (1/grad_scale) (GradScaler's unscale) */ \
  X(unscale_in_place, FLAG)              /* with grad_scale: g * (1/grad_scale) also stored into g */  \
  X(momentum_decay, NON_NEGATIVE)        /* NAdam: psi of mu_t = beta1 * (1 - 0.96**(t*psi) / 2) */     \
  X(float32_scalars, FLAG)               /* the scalar state rounded to float32 as updated (torch's */ \
                                         /* 0-d tensors under its default dtype float32) */            \
  X(maximize, FLAG)

struct OptimHyper {
#define FUSEDOPT_HYPER_FIELD(name, domain) double name = 0.0;
  FUSEDOPT_OPTIM_HYPER(FUSEDOPT_HYPER_FIELD)
#undef FUSEDOPT_HYPER_FIELD
};

struct HyperSpec {
  const char* name;
  Domain domain;
  const char* domain_name;  // the enum's name, as Python's checks know it
  double OptimHyper::*field;
};
constexpr HyperSpec kHyperSpecs[] = {
#define FUSEDOPT_HYPER_SPEC(name, domain) {#name, Domain::domain, #domain, &OptimHyper::name},
    FUSEDOPT_OPTIM_HYPER(FUSEDOPT_HYPER_SPEC)
#undef FUSEDOPT_HYPER_SPEC
};
constexpr std::size_t kNumHyper = std::size(kHyperSpecs);
constexpr bool same_name(const char* a, const char* b) {
  while (*a && *a == *b) ++a, ++b;
  return *a == *b;
}
// An index into kHyperSpecs: the hyper-parameter a slot starts at.
constexpr int hyper_index(const char* name) {
  for (std::size_t i = 0; i < kNumHyper; ++i)
    if (same_name(kHyperSpecs[i].name, name)) return static_cast<int>(i);
  return -2;  // no such field: refused by the static_assert below
}

// -- rules ------------------------------------------------------------------------------------
// A rule is its index in kOptimRuleSpecs (Python: fusedopt._core.OptimRule,
// named by the spec). One rule per torch.optim update; a variant that changes
// the element math (or the state it keeps) is a rule of its own.
enum class OptimRule : unsigned {};

// How weight decay enters: not at all (weight_decay == 0, or the leaf is
// masked out), L2 (g += wd * p) or decoupled (p *= 1 - lr*wd).
enum class OptimDecay : unsigned { NONE, L2, DECOUPLED };
constexpr unsigned kNumOptimDecays = 3;
constexpr unsigned decays(OptimDecay d) { return 1u << static_cast<unsigned>(d); }

// FIRST: the step that starts a slot from the gradient itself (SGD's momentum
// buffer, torch's clone of the gradient); every other step is STEADY.
enum class OptimPhase : unsigned { FIRST, STEADY };
constexpr unsigned kNumOptimPhases = 2;

// The element math a rule runs (optim/math.h), with its variant flags.
enum class Math : unsigned { SGD, ADAM, RMSPROP, ADAGRAD, LION, NADAM, RADAM, ADAMAX, ADADELTA, ASGD, RPROP };
enum MathFlag : unsigned { NESTEROV = 1, AMSGRAD = 2, CENTERED = 4, WITH_MOMENTUM = 8 };

// Up to three state arrays per leaf, at fixed positions (the math reads
// s0..s2), named as torch.optim names them; "" is an unused slot. A slot
// starts at 0, or at a hyper-parameter (start = hyper_index(...)).
constexpr std::size_t kSlots = 3;
constexpr int kZero = -1;
struct SlotSpec {
  const char* name = "";
  int start = kZero;
};

// Per-rule scalar state: numbers carried from step to step for the whole
// tree (a running product), saved in state_dict.
constexpr std::size_t kMaxScalarState = 2;
struct ScalarStateSpec {
  const char* name = "";
  double start = 0.0;
};

struct OptimRuleSpec {
  const char* name;   // Python's fusedopt._core.OptimRule name
  Math math;
  unsigned flags;     // MathFlag
  unsigned decay;     // decays(...) the rule has besides NONE
  bool first_phase;   // slot 0 starts from the gradient at step 1 (OptimPhase::FIRST)
  std::array<SlotSpec, kSlots> slots;
  std::array<ScalarStateSpec, kMaxScalarState> scalar_state;
};

constexpr unsigned kL2 = decays(OptimDecay::L2), kDecoupled = decays(OptimDecay::DECOUPLED);

constexpr OptimRuleSpec kOptimRuleSpecs[] = {
    {"SGD", Math::SGD, 0, kL2, false, {}, {}},
    {"SGD_MOMENTUM", Math::SGD, WITH_MOMENTUM, kL2, true, {{{"momentum_buffer"}}}, {}},
    {"SGD_NESTEROV", Math::SGD, WITH_MOMENTUM | NESTEROV, kL2, true,
     {{{"momentum_buffer"}}}, {}},
    {"ADAM", Math::ADAM, 0, kL2 | kDecoupled, false, {{{"exp_avg"}, {"exp_avg_sq"}}}, {}},
    {"ADAM_AMSGRAD", Math::ADAM, AMSGRAD, kL2 | kDecoupled, false,
     {{{"exp_avg"}, {"exp_avg_sq"}, {"max_exp_avg_sq"}}}, {}},
    {"RMSPROP", Math::RMSPROP, 0, kL2, false, {{{"square_avg"}}}, {}},
    {"RMSPROP_CENTERED", Math::RMSPROP, CENTERED, kL2, false,
     {{{"square_avg"}, {"grad_avg"}}}, {}},
    {"RMSPROP_MOMENTUM", Math::RMSPROP, WITH_MOMENTUM, kL2, false,
     {{{"square_avg"}, {}, {"momentum_buffer"}}}, {}},
    {"RMSPROP_CENTERED_MOMENTUM", Math::RMSPROP, CENTERED | WITH_MOMENTUM, kL2,
     false, {{{"square_avg"}, {"grad_avg"}, {"momentum_buffer"}}}, {}},
    {"ADAGRAD", Math::ADAGRAD, 0, kL2, false,
     {{{"sum", hyper_index("initial_accumulator_value")}}}, {}},
    {"LION", Math::LION, 0, kDecoupled, false, {{{"exp_avg"}}}, {}},
    {"NADAM", Math::NADAM, 0, kL2 | kDecoupled, false, {{{"exp_avg"}, {"exp_avg_sq"}}}, {{{"mu_product", 1.0}}}},
    {"RADAM", Math::RADAM, 0, kL2 | kDecoupled, false, {{{"exp_avg"}, {"exp_avg_sq"}}}, {}},
    {"ADAMAX", Math::ADAMAX, 0, kL2, false, {{{"exp_avg"}, {"exp_inf"}}}, {}},
    {"ADADELTA", Math::ADADELTA, 0, kL2, false, {{{"square_avg"}, {"acc_delta"}}}, {}},
    {"ASGD", Math::ASGD, 0, kL2, false, {{{"ax"}}}, {{{"eta", -1.0}, {"mu", 1.0}}}},  // eta < 0: not made yet
    // step_size first, made from lr at the first step (FIRST); prev starts at 0
    {"RPROP", Math::RPROP, 0, 0, true, {{{"step_size"}, {"prev"}}}, {}},
};
constexpr std::size_t kNumOptimRules = std::size(kOptimRuleSpecs);

constexpr const OptimRuleSpec& spec_of(OptimRule r) { return kOptimRuleSpecs[static_cast<unsigned>(r)]; }
// The rule named `name` (kNumOptimRules when there is none: a static_assert's test).
constexpr OptimRule rule_named(const char* name) {
  for (unsigned r = 0; r < kNumOptimRules; ++r)
    if (same_name(kOptimRuleSpecs[r].name, name)) return OptimRule(r);
  return OptimRule(kNumOptimRules);
}
constexpr bool uses_slot(OptimRule r, std::size_t k) { return spec_of(r).slots[k].name[0] != '\0'; }
constexpr bool has_decay(OptimRule r, OptimDecay d) {
  return d == OptimDecay::NONE || (spec_of(r).decay & decays(d)) != 0;
}
constexpr bool has_phase(OptimRule r, OptimPhase p) { return p == OptimPhase::STEADY || spec_of(r).first_phase; }

// The decay mode of a rule when weight_decay != 0: its only one, or the one
// decoupled_weight_decay chooses when it has both.
constexpr OptimDecay decay_of(OptimRule r, bool decoupled) {
  const unsigned d = spec_of(r).decay;
  if (d == kDecoupled || (d == (kL2 | kDecoupled) && decoupled)) return OptimDecay::DECOUPLED;
  return d == 0 ? OptimDecay::NONE : OptimDecay::L2;
}

// -- the kernel table, generated from the specs -----------------------------------------------
struct OptimKernelEntry {
  OptimRule rule;
  OptimDecay decay;
  OptimPhase phase;
};

constexpr auto optim_valid = [](unsigned r, unsigned d, unsigned p) {
  return has_decay(OptimRule(r), OptimDecay(d)) && has_phase(OptimRule(r), OptimPhase(p));
};

// Every compiled combination (per dtype, per instruction set), in enum order.
constexpr auto kOptimKernels =
    valid_combinations<OptimKernelEntry, count_valid<kNumOptimRules, kNumOptimDecays, kNumOptimPhases>(optim_valid),
                       kNumOptimRules, kNumOptimDecays, kNumOptimPhases>(
        optim_valid, [](unsigned r, unsigned d, unsigned p) {
          return OptimKernelEntry{OptimRule(r), OptimDecay(d), OptimPhase(p)};
        });

// Index of (rule, decay, phase) in kOptimKernels; every rule has (NONE, STEADY).
constexpr auto kOptimKernelIndex = combination_index<kNumOptimRules, kNumOptimDecays, kNumOptimPhases>(
    kOptimKernels, [](const OptimKernelEntry& e) {
      return std::array<unsigned, 3>{static_cast<unsigned>(e.rule), static_cast<unsigned>(e.decay),
                                     static_cast<unsigned>(e.phase)};
    });
constexpr std::size_t kernel_of(OptimRule r, OptimDecay d, OptimPhase p) {
  return static_cast<std::size_t>(
      kOptimKernelIndex[(static_cast<unsigned>(r) * kNumOptimDecays + static_cast<unsigned>(d)) * kNumOptimPhases +
                        static_cast<unsigned>(p)]);
}

// -- build-time checks of the specs -----------------------------------------------------------
constexpr bool optim_specs_valid() {
  for (unsigned r = 0; r < kNumOptimRules; ++r) {
    const OptimRuleSpec& s = kOptimRuleSpecs[r];
    if (s.name[0] == '\0') return false;
    for (unsigned q = 0; q < r; ++q)
      if (same_name(kOptimRuleSpecs[q].name, s.name)) return false;
    if ((s.decay & ~(kL2 | kDecoupled)) != 0) return false;
    if (s.first_phase && s.slots[0].name[0] == '\0') return false;  // FIRST starts slot 0
    for (std::size_t k = 0; k < kSlots; ++k) {
      if (s.slots[k].start < kZero || s.slots[k].start >= static_cast<int>(kNumHyper)) return false;
      for (std::size_t j = 0; j < k; ++j)
        if (s.slots[k].name[0] && same_name(s.slots[j].name, s.slots[k].name)) return false;
    }
    for (std::size_t k = 0; k < kMaxScalarState; ++k)
      for (std::size_t j = 0; j < k; ++j)
        if (s.scalar_state[k].name[0] && same_name(s.scalar_state[j].name, s.scalar_state[k].name)) return false;
  }
  return true;
}
static_assert(optim_specs_valid(),
              "kOptimRuleSpecs: a rule unnamed or named twice, an unknown decay mode or start "
              "hyper-parameter, a first phase without slot 0, or a slot named twice");
constexpr bool kernels_complete() {
  for (unsigned r = 0; r < kNumOptimRules; ++r)
    for (bool decoupled : {false, true})
      for (OptimDecay d : {OptimDecay::NONE, decay_of(OptimRule(r), decoupled)})
        for (OptimPhase p : {OptimPhase::FIRST, OptimPhase::STEADY})
          if (has_phase(OptimRule(r), p) && kOptimKernelIndex[(r * kNumOptimDecays + static_cast<unsigned>(d)) * kNumOptimPhases +
                                                               static_cast<unsigned>(p)] < 0)
            return false;
  return true;
}
static_assert(kernels_complete(), "a (rule, decay, phase) that a step may choose is not in kOptimKernels");

// -- per-step scalars -------------------------------------------------------------------------
// X(name): every scalar the element math reads, declared once. The driver
// (optim/step.cpp) computes each in double as torch computes it in Python
// (optim/math.h, step_values), then rounds each to the leaf's dtype.
#define FUSEDOPT_OPTIM_SCALARS(X)                                                                      \
  X(gscale)    /* g = g * gscale: the clip scale, negated for maximize */                              \
  X(unscale)   /* the clip scale, not negated: the gradient stored back (unscale_in_place) */          \
  X(wd)        /* L2: g = g + wd * p */                                                                \
  X(decay)     /* decoupled: p = p * (1 - lr*wd) */                                                    \
  X(neg_lr)    /* -lr (SGD, RMSprop, Lion), -step_size (Adam), -clr (Adagrad, Adamax), g's (NAdam), */ \
               /* -eta (ASGD) */                                                                       \
  X(neg_lr_m)  /* NAdam: the coefficient of m */                                                       \
  X(b1)        /* Lion: beta1 */                                                                       \
  X(omb1)      /* Lion: 1 - beta1 */                                                                   \
  X(b2)        /* beta2 / alpha / rho: v = v*b2 + (omb2*g)*g; Lion's beta2 */                          \
  X(omb2)      /* 1 - beta2 / 1 - alpha / 1 - rho */                                                   \
  X(lerp_w)    /* torch's lerp weight (1 - beta1, 1 - alpha) */                                        \
  X(bc2)       /* Adam, RAdam: sqrt(1 - beta2**t); NAdam: 1 - beta2**t */                              \
  X(bc1)       /* RAdam: 1 - beta1**t */                                                               \
  X(lr)        /* RAdam: lr; Rprop: the step sizes' start */                                           \
  X(rect)      /* RAdam: the variance rectification term */                                            \
  X(shrink)    /* ASGD: 1 - lambd * eta */                                                             \
  X(mu)        /* ASGD: the averaging weight */                                                        \
  X(etaminus)  /* Rprop */                                                                             \
  X(etaplus)   /* Rprop */                                                                             \
  X(step_min)  /* Rprop: step_sizes[0] */                                                              \
  X(step_max)  /* Rprop: step_sizes[1] */                                                              \
  X(eps)                                                                                               \
  X(momentum)                                                                                          \
  X(omd)       /* 1 - dampening */

template <class T>
struct OptimScalars {
#define FUSEDOPT_SCALAR_FIELD(name) T name;
  FUSEDOPT_OPTIM_SCALARS(FUSEDOPT_SCALAR_FIELD)
#undef FUSEDOPT_SCALAR_FIELD
  T lerp_omw;       // 1 - lerp_w in T, as torch computes it (opmath(1) - weight)
  bool lerp_small;  // |lerp_w| < 0.5: start + w*(end - start), else end - (end - start)*(1 - w)
  bool branch;      // a per-step choice between two forms of the update (RAdam: rectified; ASGD: mu != 1)
};
using StepValues = OptimScalars<double>;

// The inputs of a step's scalars (step_values also takes the rule's scalar
// state, which it advances; the driver commits it with the step).
struct StepInput {
  const OptimHyper& h;
  double lr, t, clip;
};

// Pointers of one contiguous piece of one leaf; unused slots are null.
template <class T>
struct OptimSegment {
  const T* g;
  T* p;
  T* s[kSlots];
  std::size_t n;
  T* gout = nullptr;  // where g * unscale is stored (g itself), or null
};

template <class T>
using OptimFn = void (*)(const OptimSegment<T>&, const OptimScalars<T>&);
using StepValuesFn = StepValues (*)(const StepInput&, double* state);
// sum(g*g) over n elements, in double, in the same order at every level.
template <class T>
using SumSquaresFn = double (*)(const T* g, std::size_t n);

// One instruction set's kernels, index for index with kOptimKernels, and each
// rule's per-step scalars (index: the rule).
struct OptimTable {
  std::array<OptimFn<float>, kOptimKernels.size()> f32;
  std::array<OptimFn<double>, kOptimKernels.size()> f64;
  std::array<StepValuesFn, kNumOptimRules> values;
  SumSquaresFn<float> sumsq32;
  SumSquaresFn<double> sumsq64;
};

}  // namespace fusedopt
