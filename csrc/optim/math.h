// The element math of the optim family's rules (docs/optim.md gives the same
// order in words), written once for scalars and native vectors alike, in the
// operation order of torch.optim 2.13's single-tensor updates, and each rule's
// per-step scalars. Compiled with -ffp-contract=off: every operation rounds on
// its own, as NumPy's do.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include "common/simd_vec.h"
#include "optim/rules.h"

#ifndef FUSEDOPT_ISA
#error "include only from a translation unit compiled for one instruction set (optim/kernels_isa.cpp)"
#endif

namespace fusedopt {
namespace FUSEDOPT_ISA {

template <class V>
struct OptimLanes {
  V g, p, s0, s1, s2;
};

// torch's lerp(start, end, w): the form depends on |w| < 0.5, a per-step scalar.
template <class V, class T>
FUSEDOPT_INLINE V lerp(V start, V end, const OptimScalars<T>& c) {
  const V diff = end - start;
  return c.lerp_small ? start + c.lerp_w * diff : end - diff * c.lerp_omw;
}

// NaN-propagating maximum (torch.maximum, np.maximum).
template <class V>
FUSEDOPT_INLINE V vmax(V a, V b) {
  const V m = a > b ? a : b;
  return a != a ? a : m;
}

// |x|, NaN for NaN (a -0 stays -0: every use adds eps >= 0 next, which gives +0 alike).
template <class V, class T>
FUSEDOPT_INLINE V vabs(V x) {
  return x < (V{} + T(0)) ? -x : x;
}

// NaN-propagating minimum (torch.minimum, np.minimum).
template <class V>
FUSEDOPT_INLINE V vmin(V a, V b) {
  const V m = a < b ? a : b;
  return a != a ? a : m;
}

// -1, 0 or 1, 0 for NaN: torch.sign's on CPU, (0 < x) - (x < 0) (Rprop).
template <class V, class T>
FUSEDOPT_INLINE V vsign_torch(V x) {
  const V zero = V{} + T(0), one = zero + T(1);
  const V s = x > zero ? one : zero;
  return x < zero ? -one : s;
}

// -1, 0 or 1, NaN for NaN (np.sign; Lion's, after the paper).
template <class V, class T>
FUSEDOPT_INLINE V vsign(V x) {
  const V zero = V{} + T(0), one = zero + T(1);
  V s = x > zero ? one : zero;
  s = x < zero ? -one : s;
  return x != x ? x : s;
}

// A value entering or leaving a rule's scalar state: float32's rounding of it
// when torch would keep that state in float32 (float32_scalars), else itself.
inline double scalar_state_value(const OptimHyper& h, double x) {
  return h.float32_scalars != 0.0 ? static_cast<double>(static_cast<float>(x)) : x;
}

// The step's scalars in double, as torch.optim computes them in Python
// (docs/optim.md): what every rule shares, then what the rule's math changes.
// Compiled per instruction set next to the kernels, with the same float flags:
// plain double arithmetic and std::pow, so the same bits at every level.
template <OptimRule R>
StepValues step_values(const StepInput& in, double* state) {
  constexpr const OptimRuleSpec& S = spec_of(R);
  const OptimHyper& h = in.h;
  StepValues v{};
  v.gscale = h.maximize != 0.0 ? -in.clip : in.clip;
  v.unscale = in.clip;
  v.wd = h.weight_decay;
  v.decay = 1.0 - in.lr * h.weight_decay;
  v.neg_lr = -in.lr;
  v.b1 = h.beta1;
  v.omb1 = 1.0 - h.beta1;
  v.b2 = h.beta2;
  v.omb2 = 1.0 - h.beta2;
  v.lerp_w = 1.0 - h.beta1;
  v.eps = h.eps;
  v.momentum = h.momentum;
  v.omd = 1.0 - h.dampening;
  if constexpr (S.math == Math::ADAM || S.math == Math::ADAMAX) {
    v.neg_lr = -(in.lr / (1.0 - std::pow(h.beta1, in.t)));
    v.bc2 = std::pow(1.0 - std::pow(h.beta2, in.t), 0.5);  // Python's ** 0.5, not sqrt
  } else if constexpr (S.math == Math::RMSPROP) {
    v.b2 = h.alpha;
    v.omb2 = 1.0 - h.alpha;
    v.lerp_w = 1.0 - h.alpha;  // grad_avg.lerp_(g, 1 - alpha)
  } else if constexpr (S.math == Math::ASGD) {
    double& eta = state[0];
    double& mu = state[1];
    if (eta < 0.0) eta = scalar_state_value(h, in.lr);  // not made yet: torch makes eta = lr (and mu = 1)
    v.shrink = 1.0 - h.lambd * eta;
    v.neg_lr = -eta;
    v.mu = mu;
    v.branch = mu != 1.0;  // torch: ax = ax + (p - ax) * mu, else ax = p
    // the next step's, as torch computes them after the update
    eta = scalar_state_value(h, in.lr / std::pow(1.0 + h.lambd * in.lr * in.t, h.power));
    mu = scalar_state_value(h, 1.0 / std::max(1.0, in.t - h.t0));
  } else if constexpr (S.math == Math::RPROP) {
    v.lr = in.lr;
    v.etaminus = h.etaminus;
    v.etaplus = h.etaplus;
    v.step_min = h.step_size_min;
    v.step_max = h.step_size_max;
  } else if constexpr (S.math == Math::ADADELTA) {
    v.b2 = h.rho;
    v.omb2 = 1.0 - h.rho;
  } else if constexpr (S.math == Math::ADAGRAD) {
    v.neg_lr = -(in.lr / (1.0 + (in.t - 1.0) * h.lr_decay));
  } else if constexpr (S.math == Math::NADAM) {
    v.bc2 = 1.0 - std::pow(h.beta2, in.t);
    const double mu = h.beta1 * (1.0 - 0.5 * std::pow(0.96, in.t * h.momentum_decay));
    const double mu_next = h.beta1 * (1.0 - 0.5 * std::pow(0.96, (in.t + 1.0) * h.momentum_decay));
    double& mu_product = state[0];
    mu_product = scalar_state_value(h, mu_product * scalar_state_value(h, mu));  // torch: mu_product *= mu
    v.neg_lr = (-in.lr * (1.0 - mu)) / (1.0 - mu_product);
    v.neg_lr_m = (-in.lr * mu_next) / (1.0 - mu_product * mu_next);
  } else if constexpr (S.math == Math::RADAM) {
    const double bc2 = 1.0 - std::pow(h.beta2, in.t);
    const double rho_inf = 2.0 / (1.0 - h.beta2) - 1.0;
    const double rho_t = rho_inf - 2.0 * in.t * std::pow(h.beta2, in.t) / bc2;
    v.bc1 = 1.0 - std::pow(h.beta1, in.t);
    v.lr = in.lr;
    v.branch = rho_t > 5.0;  // torch's test, per step: rectify once the variance is tractable
    if (v.branch) {
      v.bc2 = std::pow(bc2, 0.5);
      v.rect = std::pow((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t), 0.5);
    }
  }
  (void)state;
  return v;
}

template <OptimRule R, OptimDecay D, OptimPhase P, class V, class T>
FUSEDOPT_INLINE void optim_math(OptimLanes<V>& x, const OptimScalars<T>& c) {
  constexpr const OptimRuleSpec& S = spec_of(R);
  x.g = x.g * c.gscale;
  if constexpr (D == OptimDecay::L2) x.g = x.g + c.wd * x.p;
  if constexpr (D == OptimDecay::DECOUPLED) x.p = x.p * c.decay;
  if constexpr (S.math == Math::SGD) {
    V d = x.g;
    if constexpr ((S.flags & WITH_MOMENTUM) != 0) {
      if constexpr (P == OptimPhase::FIRST) x.s0 = x.g;
      else x.s0 = (x.s0 * c.momentum) + (c.omd * x.g);
      d = (S.flags & NESTEROV) != 0 ? x.g + c.momentum * x.s0 : x.s0;
    }
    x.p = x.p + c.neg_lr * d;
  } else if constexpr (S.math == Math::ADAM) {
    x.s0 = lerp(x.s0, x.g, c);
    x.s1 = (x.s1 * c.b2) + ((c.omb2 * x.g) * x.g);
    V den = x.s1;
    if constexpr ((S.flags & AMSGRAD) != 0) {
      x.s2 = vmax(x.s2, x.s1);
      den = x.s2;
    }
    den = (vsqrt(den) / c.bc2) + c.eps;
    x.p = x.p + (c.neg_lr * x.s0) / den;
  } else if constexpr (S.math == Math::RMSPROP) {
    x.s0 = (x.s0 * c.b2) + ((c.omb2 * x.g) * x.g);
    V avg = x.s0;
    if constexpr ((S.flags & CENTERED) != 0) {
      x.s1 = lerp(x.s1, x.g, c);
      avg = avg - x.s1 * x.s1;  // torch's addcmul(value=-1): avg + (-1*ga)*ga, the same bits
    }
    avg = vsqrt(avg) + c.eps;
    if constexpr ((S.flags & WITH_MOMENTUM) != 0) {
      x.s2 = (x.s2 * c.momentum) + x.g / avg;
      x.p = x.p + c.neg_lr * x.s2;
    } else {
      x.p = x.p + (c.neg_lr * x.g) / avg;
    }
  } else if constexpr (S.math == Math::ADAGRAD) {
    x.s0 = x.s0 + x.g * x.g;
    x.p = x.p + (c.neg_lr * x.g) / (vsqrt(x.s0) + c.eps);
  } else if constexpr (S.math == Math::LION) {
    const V u = (c.b1 * x.s0) + (c.omb1 * x.g);
    x.p = x.p + c.neg_lr * vsign<V, T>(u);  // p - lr*sign(u): the same bits
    x.s0 = (c.b2 * x.s0) + (c.omb2 * x.g);
  } else if constexpr (S.math == Math::NADAM) {
    x.s0 = lerp(x.s0, x.g, c);
    x.s1 = (x.s1 * c.b2) + ((c.omb2 * x.g) * x.g);
    const V den = vsqrt(x.s1 / c.bc2) + c.eps;
    x.p = x.p + (c.neg_lr * x.g) / den;  // torch's two addcdiv_, in its order
    x.p = x.p + (c.neg_lr_m * x.s0) / den;
  } else if constexpr (S.math == Math::ASGD) {
    x.p = x.p * c.shrink;
    x.p = x.p + c.neg_lr * x.g;
    if (c.branch) {
      x.s0 = x.s0 + (x.p - x.s0) * c.mu;
    } else {
      x.s0 = x.p;
    }
  } else if constexpr (S.math == Math::RPROP) {
    if constexpr (P == OptimPhase::FIRST) x.s0 = V{} + c.lr;  // torch: step_size = full_like(p, lr)
    const V zero = V{} + T(0);
    const V s = vsign_torch<V, T>(x.g * x.s1);  // 0 where g * prev is NaN
    V f = s > zero ? V{} + c.etaplus : V{} + T(1);
    f = s < zero ? V{} + c.etaminus : f;
    x.s0 = vmin(vmax(x.s0 * f, V{} + c.step_min), V{} + c.step_max);  // clamp_, NaN-propagating
    x.g = s < zero ? zero : x.g;                 // torch: grad[sign.eq(etaminus)] = 0 (exactly where s < 0)
    x.p = x.p - vsign_torch<V, T>(x.g) * x.s0;   // addcmul(sign(g), step_size, value=-1): the same bits
    x.s1 = x.g;
  } else if constexpr (S.math == Math::ADADELTA) {
    x.s0 = (x.s0 * c.b2) + ((c.omb2 * x.g) * x.g);
    const V delta = (vsqrt(x.s1 + c.eps) / vsqrt(x.s0 + c.eps)) * x.g;
    x.s1 = (x.s1 * c.b2) + ((c.omb2 * delta) * delta);
    x.p = x.p + c.neg_lr * delta;
  } else if constexpr (S.math == Math::ADAMAX) {
    x.s0 = lerp(x.s0, x.g, c);
    x.s1 = vmax(x.s1 * c.b2, vabs<V, T>(x.g) + c.eps);  // torch.maximum: NaN from either side
    x.p = x.p + (c.neg_lr * x.s0) / x.s1;
  } else if constexpr (S.math == Math::RADAM) {
    x.s0 = lerp(x.s0, x.g, c);
    x.s1 = (x.s1 * c.b2) + ((c.omb2 * x.g) * x.g);
    const V m = (x.s0 / c.bc1) * c.lr;
    if (c.branch) {
      const V adaptive = ((V{} + T(1)) / (vsqrt(x.s1) + c.eps)) * c.bc2;  // torch: reciprocal(den) * sqrt(bc2)
      x.p = x.p - (m * adaptive) * c.rect;
    } else {
      x.p = x.p - m;
    }
  }
}

// Which slots the kernel of (R, P) reads: FIRST writes slot 0 unread.
template <OptimRule R, OptimPhase P>
constexpr bool reads_slot(std::size_t k) { return uses_slot(R, k) && !(P == OptimPhase::FIRST && k == 0); }

// Gout: the segment writes the unscaled gradient back (s.gout set), chosen once per
// segment so that the element loop tests nothing.
template <OptimRule R, OptimDecay D, OptimPhase P, bool Gout, class V, class T>
FUSEDOPT_INLINE void optim_at(const OptimSegment<T>& s, const OptimScalars<T>& c, std::size_t i) {
  OptimLanes<V> x{};
  x.g = load<V>(s.g + i);
  x.p = load<V>(s.p + i);
  if constexpr (reads_slot<R, P>(0)) x.s0 = load<V>(s.s[0] + i);
  if constexpr (reads_slot<R, P>(1)) x.s1 = load<V>(s.s[1] + i);
  if constexpr (reads_slot<R, P>(2)) x.s2 = load<V>(s.s[2] + i);
  if constexpr (Gout) store(s.gout + i, x.g * c.unscale);  // GradScaler's unscale written back, as torch's fused step
  optim_math<R, D, P>(x, c);
  store(s.p + i, x.p);
  if constexpr (uses_slot(R, 0)) store(s.s[0] + i, x.s0);
  if constexpr (uses_slot(R, 1)) store(s.s[1] + i, x.s1);
  if constexpr (uses_slot(R, 2)) store(s.s[2] + i, x.s2);
}

// One segment: four native vectors at a time, then one, then scalars. Every
// element goes through the same operations whichever path takes it, so the
// bits do not depend on the vector width or where a segment starts.
template <class T, OptimRule R, OptimDecay D, OptimPhase P, bool Gout>
FUSEDOPT_INLINE void optim_lanes(const OptimSegment<T>& s, const OptimScalars<T>& c) {
  using V = typename Vec<T>::type;
  constexpr std::size_t L = Vec<T>::lanes;
  std::size_t i = 0;
  for (; i + 4 * L <= s.n; i += 4 * L) {
#pragma GCC unroll 4
    for (std::size_t k = 0; k < 4; ++k) optim_at<R, D, P, Gout, V>(s, c, i + k * L);
  }
  for (; i + L <= s.n; i += L) optim_at<R, D, P, Gout, V>(s, c, i);
  for (; i < s.n; ++i) optim_at<R, D, P, Gout, T>(s, c, i);
}

template <class T, OptimRule R, OptimDecay D, OptimPhase P>
void run_optim_segment(const OptimSegment<T>& seg, const OptimScalars<T>& scalars) {
  const OptimSegment<T> s = seg;  // local copies: stores cannot alias them
  const OptimScalars<T> c = scalars;
  if (s.gout)
    optim_lanes<T, R, D, P, true>(s, c);
  else
    optim_lanes<T, R, D, P, false>(s, c);
}

// sum(g*g) in double: element i adds to accumulator i mod 16 (the same at
// every level: each accumulator sees the same additions), then the 16 in order.
template <class T>
double sum_squares(const T* g, std::size_t n) {
  constexpr std::size_t K = 16;
  double acc[K] = {};
  std::size_t i = 0;
  for (; i + K <= n; i += K)
    for (std::size_t j = 0; j < K; ++j) acc[j] += static_cast<double>(g[i + j]) * static_cast<double>(g[i + j]);
  for (std::size_t j = 0; i + j < n; ++j) acc[j] += static_cast<double>(g[i + j]) * static_cast<double>(g[i + j]);
  double total = 0.0;
  for (std::size_t j = 0; j < K; ++j) total += acc[j];
  return total;
}

}  // namespace FUSEDOPT_ISA
}  // namespace fusedopt
