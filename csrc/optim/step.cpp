#include "optim/step.h"

#include <algorithm>
#include <cmath>
#include "common/dispatch.h"
#include "common/threads.h"
#include "optim/lowp_types.h"

namespace fusedopt {

namespace {

template <class T>
OptimScalars<T> rounded(const StepValues& v) {
  OptimScalars<T> c{};
#define FUSEDOPT_ROUND(name) c.name = static_cast<T>(v.name);
  FUSEDOPT_OPTIM_SCALARS(FUSEDOPT_ROUND)
#undef FUSEDOPT_ROUND
  c.lerp_omw = T(1) - c.lerp_w;  // torch: opmath(1) - weight, in the tensor's precision
  c.lerp_small = std::fabs(c.lerp_w) < T(0.5);
  c.branch = v.branch;
  return c;
}

template <class T>
T* at(void* base, std::size_t offset) {
  return base ? static_cast<T*>(base) + offset : nullptr;
}

template <class T>
OptimSegment<T> segment(const OptimLeaf& d, std::size_t b, std::size_t e) {
  return {static_cast<const T*>(d.g) + b, static_cast<T*>(d.p) + b, {at<T>(d.s[0], b), at<T>(d.s[1], b), at<T>(d.s[2], b)},
          e - b, at<T>(d.gout, b)};
}

LowSegment low_segment(const OptimLeaf& d, std::size_t b, std::size_t e, std::uint64_t leaf_index, bool fresh) {
  auto at16 = [&](void* base) { return base ? static_cast<std::uint16_t*>(base) + b : nullptr; };
  const std::uint16_t* g = static_cast<const std::uint16_t*>(d.g) + b;
  if (!d.master)
    return {g, at16(d.p), {at16(d.s[0]), at16(d.s[1]), at16(d.s[2])}, e - b, leaf_index + b, nullptr, {}, false,
            at16(d.gout)};
  return {g, at16(d.p), {}, e - b, leaf_index + b, d.master + b,
          {at<float>(d.s[0], b), at<float>(d.s[1], b), at<float>(d.s[2], b)}, fresh, at16(d.gout)};
}

unsigned format_of(Dtype d) { return static_cast<unsigned>(d == BF16 ? LowFormat::BF16 : LowFormat::F16); }

// sqrt of the sum of every gradient element's square, in double: pieces in
// parallel, then summed per leaf and over leaves in a fixed order.
double global_norm(const ChunkLayout& layout, const std::vector<OptimLeaf>& leaves, const OptimTable& t,
                   const LowpTable* low) {
  std::vector<double> partial(layout.pieces().size());
  for_each_piece(layout, false, [&](std::size_t k, const ChunkLayout::Piece& pc) {
    const OptimLeaf& d = leaves[pc.leaf];
    const std::size_t n = pc.end - pc.begin;
    if (d.dtype == F32)
      partial[k] = t.sumsq32(static_cast<const float*>(d.g) + pc.begin, n);
    else if (d.dtype == F64)
      partial[k] = t.sumsq64(static_cast<const double*>(d.g) + pc.begin, n);
    else
      partial[k] = low->sumsq[format_of(d.dtype)](static_cast<const std::uint16_t*>(d.g) + pc.begin, n);
  });
  std::vector<double> per_leaf(leaves.size());
  sum_by_leaf(layout, partial, per_leaf.data(), leaves.size());
  double total = 0.0;
  for (double s : per_leaf) total += s;
  return std::sqrt(total);
}

}  // namespace

double run_optim_step(OptimRule rule, const ChunkLayout& layout, const std::vector<OptimLeaf>& leaves,
                      const OptimHyper& hyper, double lr, long long t, ScalarState& state,
                      const LowRounding& low) {
  const OptimTable& table = optim_kernels();
  // The 16-bit table, each element's index and the random keys only for a tree with such leaves.
  const bool any_low = std::any_of(leaves.begin(), leaves.end(), [](const OptimLeaf& d) { return is_low(d.dtype); });
  const LowpTable* lowp = any_low ? &lowp_kernels() : nullptr;
  const OptimPhase phase = has_phase(rule, OptimPhase::FIRST) && t == 1 ? OptimPhase::FIRST : OptimPhase::STEADY;
  const OptimDecay decays =
      hyper.weight_decay != 0.0 ? decay_of(rule, hyper.decoupled_weight_decay != 0.0) : OptimDecay::NONE;
  const std::size_t plain = kernel_of(rule, OptimDecay::NONE, phase), decayed = kernel_of(rule, decays, phase);
  double norm = -1.0, clip = 1.0;
  if (hyper.max_grad_norm > 0.0) {
    norm = global_norm(layout, leaves, table, lowp);
    // torch.nn.utils.clip_grad_norm_: max_norm / (norm + 1e-6), at most 1.
    clip = std::min(hyper.max_grad_norm / (norm + 1e-6), 1.0);
  }
  // GradScaler's unscale in the kernel's g * gscale: 1/scale, exactly g / scale for the
  // powers of two GradScaler uses (refused together with clipping, by Python and OptimState).
  if (hyper.grad_scale > 0.0) clip = 1.0 / hyper.grad_scale;
  const StepValues values = table.values[static_cast<unsigned>(rule)]({hyper, lr, static_cast<double>(t), clip},
                                                                      state.data());
  const OptimScalars<float> c32 = rounded<float>(values);
  const OptimScalars<double> c64 = rounded<double>(values);
  // 16-bit leaves: each element's index in the whole tree and the step's keys
  // (docs/lowbit.md), so the random bits do not depend on the chunking.
  std::vector<std::uint64_t> first;
  LowKeys keys{};
  if (any_low) {
    first.resize(leaves.size());
    std::uint64_t total = 0;
    for (std::size_t l = 0; l < leaves.size(); ++l) first[l] = total, total += leaves[l].size;
    // Streams: 0 the parameter, 1, 2, ... the rule's slots in their order.
    std::uint64_t stream = 0;
    keys.key[0] = low_key(low.seed, stream++, static_cast<std::uint64_t>(t));
    for (std::size_t k = 0; k < kSlots; ++k)
      if (uses_slot(rule, k)) keys.key[1 + k] = low_key(low.seed, stream++, static_cast<std::uint64_t>(t));
  }
  for_each_piece(layout, true, [&](std::size_t, const ChunkLayout::Piece& pc) {
    const OptimLeaf& d = leaves[pc.leaf];
    const std::size_t fn = d.decay ? decayed : plain;
    if (d.dtype == F32)
      table.f32[fn](segment<float>(d, pc.begin, pc.end), c32);
    else if (d.dtype == F64)
      table.f64[fn](segment<double>(d, pc.begin, pc.end), c64);
    else
      (d.master ? lowp->master[format_of(d.dtype)][low.stochastic]
                : lowp->fn[format_of(d.dtype)][low.stochastic][low.stochastic_state])[fn](
          low_segment(d, pc.begin, pc.end, first[pc.leaf], low.fresh_master), c32, keys);
  });
  return norm;
}

OptimScalars<float> stateless_scalars32(OptimRule rule, const OptimHyper& hyper, double lr, long long t) {
  ScalarState none{};
  // GradScaler's unscale as the float32 step takes it: g * (1/scale) through the clip factor
  const double clip = hyper.grad_scale > 0.0 ? 1.0 / hyper.grad_scale : 1.0;
  return rounded<float>(optim_kernels().values[static_cast<unsigned>(rule)]({hyper, lr, static_cast<double>(t), clip},
                                                                            none.data()));
}

}  // namespace fusedopt
