// The driver of the 8-bit optimizers: the step's scalars once (the optim
// family's, optim/step.h), the kernel of the selected SIMD level, and the
// spans of blocks handed to the thread team.
#include "optim/quant8.h"

#include <cmath>
#include <string>
#include "common/dispatch.h"
#include "common/threads.h"
#include "common/level_tables.h"
#include "optim/step.h"

namespace fusedopt {
namespace baseline { void fill_quant8(Quant8Table&); }
namespace avx2 { void fill_quant8(Quant8Table&); }
namespace avx512 { void fill_quant8(Quant8Table&); }

namespace {

const Quant8Table& kernels_of_level() {
  static const LevelTables<Quant8Table> tables(baseline::fill_quant8, FUSEDOPT_IF_AVX2(avx2::fill_quant8),
                                               FUSEDOPT_IF_AVX512(avx512::fill_quant8));
  return tables.current();
}

// Elements per span handed to one thread at a time (a whole number of blocks).
constexpr std::size_t kSpanElements = 8192;

}  // namespace

void run_quant8_step(OptimRule rule, const std::vector<Quant8Leaf>& leaves, std::size_t block, const OptimHyper& h,
                     double lr, long long t) {
  const auto& fns = kernels_of_level().step[quant8_rule_index(rule)];
  const OptimScalars<float> c = stateless_scalars32(rule, h, lr, t);
  const OptimDecay decays = h.weight_decay != 0.0 ? decay_of(rule, h.decoupled_weight_decay != 0.0) : OptimDecay::NONE;
  const Quant8Fn plain = fns[static_cast<unsigned>(OptimDecay::NONE)], decayed = fns[static_cast<unsigned>(decays)];
  std::vector<Quant8Span> spans;
  std::size_t total = 0;
  const std::size_t per = (kSpanElements / block > 0 ? kSpanElements / block : 1) * block;
  for (const Quant8Leaf& l : leaves) {
    for (std::size_t b = 0; b < l.n; b += per) spans.push_back({l, b, b + per < l.n ? b + per : l.n});
    total += l.n;
  }
  auto body = [&](std::size_t k) {
    const Quant8Span& s = spans[k];
    (s.leaf.decay ? decayed : plain)(s, block, c);
  };
  for_each_chunk(spans.size(), total >= kSerialBelow, true, body);
}

void quant8_encode(const float* x, std::size_t n, std::size_t block, bool is_signed, std::uint8_t* codes, float* absmax) {
  kernels_of_level().encode(x, n, block, is_signed, codes, absmax);
}

void quant8_decode(const std::uint8_t* codes, const float* absmax, std::size_t n, std::size_t block, bool is_signed,
                   float* out) {
  kernels_of_level().decode(codes, absmax, n, block, is_signed, out);
}

}  // namespace fusedopt
