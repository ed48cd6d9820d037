// The optim family's kernels for bfloat16 and float16 leaves, of one
// instruction set (compiled once per level like optim/kernels_isa.cpp): every
// entry of kOptimKernels, per format, rounded to nearest or stochastically.
// Each lane is widened to float32, runs the rule's float32 math (optim/math.h)
// and is narrowed again, parameter and slots alike; with master weights (M)
// the math runs on the float32 master and slots as the float32 kernel's
// optim_at does, and only the parameter is narrowed.
#include <cstring>
#include <utility>
#include "optim/lowp.h"
#include "optim/math.h"

namespace fusedopt {
namespace FUSEDOPT_ISA {

namespace {

template <LowFormat F, bool Stochastic>
FUSEDOPT_INLINE VH rounded(VF x, std::uint64_t key, std::uint64_t index) {
  if constexpr (Stochastic) return narrow<F, true>(x, random_bits(key, index) & kNoiseMask<F>);
  else return narrow<F, false>(x, VU{});
}

// A value of the state: its float32 copy with master weights, else widened.
template <LowFormat F, bool M>
FUSEDOPT_INLINE VF read(const std::uint16_t* h, const float* f, std::size_t i) {
  if constexpr (M) return load<VF>(f + i);
  else return widen<F>(load<VH>(h + i));
}

template <LowFormat F, bool S, bool M>
FUSEDOPT_INLINE void write(std::uint16_t* h, float* f, std::size_t i, VF x, std::uint64_t key, std::uint64_t index) {
  if constexpr (M) store(f + i, x);
  else store(h + i, rounded<F, S>(x, key, index));
}

template <LowFormat F, bool S, bool M, OptimRule R, OptimDecay D, OptimPhase P>
FUSEDOPT_INLINE void low_at(const LowSegment& s, std::size_t i, std::uint64_t index, const OptimScalars<float>& c,
                            const LowKeys& k) {
  OptimLanes<VF> x{};
  x.g = widen<F>(load<VH>(s.g + i));
  x.p = read<F, M>(s.p, s.m, i);
  if constexpr (reads_slot<R, P>(0)) x.s0 = read<F, M>(s.s[0], s.ms[0], i);
  if constexpr (reads_slot<R, P>(1)) x.s1 = read<F, M>(s.s[1], s.ms[1], i);
  if constexpr (reads_slot<R, P>(2)) x.s2 = read<F, M>(s.s[2], s.ms[2], i);
  if (s.gout) store(s.gout + i, rounded<F, false>(x.g * c.unscale, 0, 0));  // torch's fused step: .grad unscaled
  optim_math<R, D, P>(x, c);
  if constexpr (M) store(s.m + i, x.p);
  store(s.p + i, rounded<F, S>(x.p, k.key[0], index));
  if constexpr (uses_slot(R, 0)) write<F, S, M>(s.s[0], s.ms[0], i, x.s0, k.key[1], index);
  if constexpr (uses_slot(R, 1)) write<F, S, M>(s.s[1], s.ms[1], i, x.s1, k.key[2], index);
  if constexpr (uses_slot(R, 2)) write<F, S, M>(s.s[2], s.ms[2], i, x.s2, k.key[3], index);
}

// n 16-bit values widened to float32 (exact): a master's start from its parameter.
template <LowFormat F>
void widen_run(const std::uint16_t* h, float* f, std::size_t n) {
  constexpr std::size_t L = LowLanes::lanes;
  std::size_t i = 0;
  for (; i + L <= n; i += L) store(f + i, widen<F>(load<VH>(h + i)));
  if (i == n) return;
  std::uint16_t hb[L] = {};
  float fb[L];
  std::memcpy(hb, h + i, (n - i) * sizeof(std::uint16_t));
  store(fb, widen<F>(load<VH>(hb)));
  std::memcpy(f + i, fb, (n - i) * sizeof(float));
}

// Whole vectors, then the tail through the same vector code on a zero-padded
// copy: every element takes the same operations wherever it lies.
template <LowFormat F, bool S, bool M, OptimRule R, OptimDecay D, OptimPhase P>
void run_low_segment(const LowSegment& seg, const OptimScalars<float>& scalars, const LowKeys& keys) {
  const LowSegment s = seg;  // local copies: stores cannot alias them
  const OptimScalars<float> c = scalars;
  const LowKeys k = keys;
  constexpr std::size_t L = LowLanes::lanes;
  if constexpr (M)
    if (s.fresh) widen_run<F>(s.p, s.m, s.n);
  std::size_t i = 0;
  for (; i + 4 * L <= s.n; i += 4 * L) {
#pragma GCC unroll 4
    for (std::size_t j = 0; j < 4; ++j) low_at<F, S, M, R, D, P>(s, i + j * L, s.index + i + j * L, c, k);
  }
  for (; i + L <= s.n; i += L) low_at<F, S, M, R, D, P>(s, i, s.index + i, c, k);
  if (i == s.n) return;
  const std::size_t rest = s.n - i, bytes = rest * sizeof(std::uint16_t), wide = rest * sizeof(float);
  std::uint16_t g[L] = {}, p[L] = {}, st[kSlots][L] = {}, gout[L] = {};
  float m[L] = {}, ms[kSlots][L] = {};
  LowSegment tail{g, p, {st[0], st[1], st[2]}, L, 0, m, {ms[0], ms[1], ms[2]}, false, s.gout ? gout : nullptr};
  std::memcpy(g, s.g + i, bytes);
  if constexpr (M) std::memcpy(m, s.m + i, wide);
  else std::memcpy(p, s.p + i, bytes);
  for (std::size_t q = 0; q < kSlots; ++q)
    if (uses_slot(R, q)) M ? std::memcpy(ms[q], s.ms[q] + i, wide) : std::memcpy(st[q], s.s[q] + i, bytes);
  low_at<F, S, M, R, D, P>(tail, 0, s.index + i, c, k);
  std::memcpy(s.p + i, p, bytes);
  if (s.gout) std::memcpy(s.gout + i, gout, bytes);
  if constexpr (M) std::memcpy(s.m + i, m, wide);
  for (std::size_t q = 0; q < kSlots; ++q)
    if (uses_slot(R, q)) M ? std::memcpy(s.ms[q] + i, ms[q], wide) : std::memcpy(s.s[q] + i, st[q], bytes);
}

// sum(g*g) in double, element i into accumulator i mod 16 as optim/math.h's
// sum_squares (the zeros that pad the last block add nothing).
template <LowFormat F>
double low_sum_squares(const std::uint16_t* g, std::size_t n) {
  constexpr std::size_t K = 16, L = LowLanes::lanes;
  static_assert(K % L == 0, "a block is whole vectors");
  double acc[K] = {};
  for (std::size_t i = 0; i < n; i += K) {
    std::uint16_t h[K] = {};
    float f[K];
    std::memcpy(h, g + i, (n - i < K ? n - i : K) * sizeof(std::uint16_t));
    for (std::size_t j = 0; j < K; j += L) store(f + j, widen<F>(load<VH>(h + j)));
    for (std::size_t j = 0; j < K; ++j) acc[j] += static_cast<double>(f[j]) * static_cast<double>(f[j]);
  }
  double total = 0.0;
  for (std::size_t j = 0; j < K; ++j) total += acc[j];
  return total;
}

template <LowFormat F, bool S, std::size_t... I>
void fill_kernels(LowpTable& t, std::index_sequence<I...>) {
  ((t.fn[static_cast<unsigned>(F)][S][I] =
        &run_low_segment<F, S, false, kOptimKernels[I].rule, kOptimKernels[I].decay, kOptimKernels[I].phase>),
   ...);
  ((t.master[static_cast<unsigned>(F)][S][I] =
        &run_low_segment<F, S, true, kOptimKernels[I].rule, kOptimKernels[I].decay, kOptimKernels[I].phase>),
   ...);
}

}  // namespace

void fill_lowp_table(LowpTable& t) {
  constexpr auto all = std::make_index_sequence<kOptimKernels.size()>{};
  fill_kernels<LowFormat::BF16, false>(t, all);
  fill_kernels<LowFormat::BF16, true>(t, all);
  fill_kernels<LowFormat::F16, false>(t, all);
  fill_kernels<LowFormat::F16, true>(t, all);
  t.sumsq[static_cast<unsigned>(LowFormat::BF16)] = &low_sum_squares<LowFormat::BF16>;
  t.sumsq[static_cast<unsigned>(LowFormat::F16)] = &low_sum_squares<LowFormat::F16>;
}

}  // namespace FUSEDOPT_ISA
}  // namespace fusedopt
