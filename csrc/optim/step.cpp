#include "optim/step.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include "common/dispatch.h"
#include "common/threads.h"

namespace fusedopt {

namespace {

// The step's scalars in double, as torch.optim computes them in Python
// (docs/optim.md); rounded to each dtype below.
struct StepValues {
  double gscale, wd, decay, neg_lr, b1, omb1, b2, omb2, lerp_w, bc2_sqrt, eps, momentum, omd;
};

StepValues step_values(TextbookRule r, const TextbookHyper& h, double lr, long long t, double clip) {
  StepValues v{};
  v.gscale = h.maximize ? -clip : clip;
  v.wd = h.weight_decay;
  v.decay = 1.0 - lr * h.weight_decay;
  v.neg_lr = -lr;
  v.b1 = h.beta1;
  v.omb1 = 1.0 - h.beta1;
  v.b2 = h.beta2;
  v.omb2 = 1.0 - h.beta2;
  v.lerp_w = 1.0 - h.beta1;
  v.eps = h.eps;
  v.momentum = h.momentum;
  v.omd = 1.0 - h.dampening;
  const double step = static_cast<double>(t);
  if (r == TextbookRule::ADAM || r == TextbookRule::ADAM_AMSGRAD) {
    v.neg_lr = -(lr / (1.0 - std::pow(h.beta1, step)));
    v.bc2_sqrt = std::pow(1.0 - std::pow(h.beta2, step), 0.5);  // Python's ** 0.5, not sqrt
  } else if (r == TextbookRule::RMSPROP || r == TextbookRule::RMSPROP_CENTERED || r == TextbookRule::RMSPROP_MOMENTUM ||
             r == TextbookRule::RMSPROP_CENTERED_MOMENTUM) {
    v.lerp_w = 1.0 - h.beta2;  // grad_avg.lerp_(g, 1 - alpha)
  } else if (r == TextbookRule::ADAGRAD) {
    v.neg_lr = -(lr / (1.0 + (step - 1.0) * h.lr_decay));
  }
  return v;
}

template <class T>
TextbookScalars<T> rounded(const StepValues& v) {
  TextbookScalars<T> c{};
  c.gscale = static_cast<T>(v.gscale);
  c.wd = static_cast<T>(v.wd);
  c.decay = static_cast<T>(v.decay);
  c.neg_lr = static_cast<T>(v.neg_lr);
  c.b1 = static_cast<T>(v.b1);
  c.omb1 = static_cast<T>(v.omb1);
  c.b2 = static_cast<T>(v.b2);
  c.omb2 = static_cast<T>(v.omb2);
  c.lerp_w = static_cast<T>(v.lerp_w);
  c.lerp_omw = T(1) - c.lerp_w;  // torch: opmath(1) - weight, in the tensor's precision
  c.lerp_small = std::fabs(c.lerp_w) < T(0.5);
  c.bc2_sqrt = static_cast<T>(v.bc2_sqrt);
  c.eps = static_cast<T>(v.eps);
  c.momentum = static_cast<T>(v.momentum);
  c.omd = static_cast<T>(v.omd);
  return c;
}

template <class T>
T* at(void* base, std::size_t offset) {
  return base ? static_cast<T*>(base) + offset : nullptr;
}

template <class T>
TextbookSegment<T> segment(const TextbookLeaf& d, std::size_t b, std::size_t e) {
  return {static_cast<const T*>(d.g) + b, static_cast<T*>(d.p) + b, {at<T>(d.s[0], b), at<T>(d.s[1], b), at<T>(d.s[2], b)},
          e - b};
}

// sqrt of the sum of every gradient element's square, in double: pieces in
// parallel, then summed per leaf and over leaves in a fixed order.
double global_norm(const ChunkLayout& layout, const std::vector<TextbookLeaf>& leaves, const TextbookTable& t) {
  std::vector<double> partial(layout.pieces().size());
  for_each_piece(layout, false, [&](std::size_t k, const ChunkLayout::Piece& pc) {
    const TextbookLeaf& d = leaves[pc.leaf];
    partial[k] = d.dtype == F32 ? t.sumsq32(static_cast<const float*>(d.g) + pc.begin, pc.end - pc.begin)
                                : t.sumsq64(static_cast<const double*>(d.g) + pc.begin, pc.end - pc.begin);
  });
  std::vector<double> per_leaf(leaves.size());
  sum_by_leaf(layout, partial, per_leaf.data(), leaves.size());
  double total = 0.0;
  for (double s : per_leaf) total += s;
  return std::sqrt(total);
}

}  // namespace

double run_textbook_step(TextbookRule rule, const ChunkLayout& layout, const std::vector<TextbookLeaf>& leaves,
                         const TextbookHyper& hyper, double lr, long long t) {
  const TextbookTable& table = textbook_kernels();
  const TextbookPhase phase = has_first_phase(rule) && t == 1 ? TextbookPhase::FIRST : TextbookPhase::STEADY;
  const Decay decays = hyper.weight_decay != 0.0 ? decay_of(rule, hyper.decoupled) : Decay::NONE;
  const std::size_t plain = rule_index(rule, Decay::NONE, phase), decayed = rule_index(rule, decays, phase);
  if (plain == kRuleTable.size() || decayed == kRuleTable.size())
    throw std::invalid_argument("textbook rule not compiled");  // table_complete() rules this out
  double norm = -1.0, clip = 1.0;
  if (hyper.max_grad_norm > 0.0) {
    norm = global_norm(layout, leaves, table);
    // torch.nn.utils.clip_grad_norm_: max_norm / (norm + 1e-6), at most 1.
    clip = std::min(hyper.max_grad_norm / (norm + 1e-6), 1.0);
  }
  const StepValues values = step_values(rule, hyper, lr, t, clip);
  const TextbookScalars<float> c32 = rounded<float>(values);
  const TextbookScalars<double> c64 = rounded<double>(values);
  for_each_piece(layout, true, [&](std::size_t, const ChunkLayout::Piece& pc) {
    const TextbookLeaf& d = leaves[pc.leaf];
    const std::size_t fn = d.decay ? decayed : plain;
    if (d.dtype == F32)
      table.f32[fn](segment<float>(d, pc.begin, pc.end), c32);
    else
      table.f64[fn](segment<double>(d, pc.begin, pc.end), c64);
  });
  return norm;
}

}  // namespace fusedopt
