// The optim family's kernels for bfloat16 and float16 leaves, of one
// instruction set (compiled once per level like optim/kernels_isa.cpp): every
// entry of kOptimKernels, per format, each of parameter and slots rounded to
// nearest or stochastically.
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

// The random bits of one vector of elements: the parameter's and each slot's.
struct LowNoise {
  VU p, s[kSlots];
};

template <LowFormat F, bool Stochastic>
FUSEDOPT_INLINE VH rounded(VF x, VU noise) {
  if constexpr (Stochastic) return narrow<F, true>(x, noise & kNoiseMask<F>);
  else return narrow<F, false>(x, VU{});
}

// A value of the state: its float32 copy with master weights, else widened.
template <LowFormat F, bool M>
FUSEDOPT_INLINE VF read(const std::uint16_t* h, const float* f, std::size_t i) {
  if constexpr (M) return load<VF>(f + i);
  else return widen<F>(load<VH>(h + i));
}

template <LowFormat F, bool S, bool M>
FUSEDOPT_INLINE void write(std::uint16_t* h, float* f, std::size_t i, VF x, VU noise) {
  if constexpr (M) store(f + i, x);
  else store(h + i, rounded<F, S>(x, noise));
}

// SP: the parameter rounds stochastically; SS: the 16-bit slots do (never with M).
template <LowFormat F, bool SP, bool SS, bool M, OptimRule R, OptimDecay D, OptimPhase P>
FUSEDOPT_INLINE void low_at(const LowSegment& s, std::size_t i, const OptimScalars<float>& c, const LowNoise& nz) {
  OptimLanes<VF> x{};
  x.g = widen<F>(load<VH>(s.g + i));
  x.p = read<F, M>(s.p, s.m, i);
  if constexpr (reads_slot<R, P>(0)) x.s0 = read<F, M>(s.s[0], s.ms[0], i);
  if constexpr (reads_slot<R, P>(1)) x.s1 = read<F, M>(s.s[1], s.ms[1], i);
  if constexpr (reads_slot<R, P>(2)) x.s2 = read<F, M>(s.s[2], s.ms[2], i);
  if (s.gout) store(s.gout + i, rounded<F, false>(x.g * c.unscale, VU{}));  // torch's fused step: .grad unscaled
  optim_math<R, D, P>(x, c);
  if constexpr (M) store(s.m + i, x.p);
  store(s.p + i, rounded<F, SP>(x.p, nz.p));
  if constexpr (uses_slot(R, 0)) write<F, SS, M>(s.s[0], s.ms[0], i, x.s0, nz.s[0]);
  if constexpr (uses_slot(R, 1)) write<F, SS, M>(s.s[1], s.ms[1], i, x.s1, nz.s[1]);
  if constexpr (uses_slot(R, 2)) write<F, SS, M>(s.s[2], s.ms[2], i, x.s2, nz.s[2]);
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

// Elements [i, i + count) (count <= L) through the same vector code on a
// zero-padded copy, their random bits taken element by element.
template <LowFormat F, bool SP, bool SS, bool M, OptimRule R, OptimDecay D, OptimPhase P>
void run_padded(const LowSegment& s, std::size_t i, std::size_t count, const OptimScalars<float>& c,
                const LowKeys& k) {
  constexpr std::size_t L = LowLanes::lanes;
  const std::size_t bytes = count * sizeof(std::uint16_t), wide = count * sizeof(float);
  std::uint16_t g[L] = {}, p[L] = {}, st[kSlots][L] = {}, gout[L] = {};
  float m[L] = {}, ms[kSlots][L] = {};
  LowSegment tail{g, p, {st[0], st[1], st[2]}, L, 0, m, {ms[0], ms[1], ms[2]}, false, s.gout ? gout : nullptr};
  LowNoise nz{};
  for (std::size_t j = 0; j < count; ++j) {
    const std::uint64_t index = s.index + i + j;
    if constexpr (SP) nz.p[j] = random_bits16(k.key[0], index);
    for (std::size_t q = 0; q < kSlots; ++q)
      if (SS && uses_slot(R, q)) nz.s[q][j] = random_bits16(k.key[1 + q], index);
  }
  std::memcpy(g, s.g + i, bytes);
  if constexpr (M) std::memcpy(m, s.m + i, wide);
  else std::memcpy(p, s.p + i, bytes);
  for (std::size_t q = 0; q < kSlots; ++q)
    if (uses_slot(R, q)) M ? std::memcpy(ms[q], s.ms[q] + i, wide) : std::memcpy(st[q], s.s[q] + i, bytes);
  low_at<F, SP, SS, M, R, D, P>(tail, 0, c, nz);
  std::memcpy(s.p + i, p, bytes);
  if (s.gout) std::memcpy(s.gout + i, gout, bytes);
  if constexpr (M) std::memcpy(s.m + i, m, wide);
  for (std::size_t q = 0; q < kSlots; ++q)
    if (uses_slot(R, q)) M ? std::memcpy(s.ms[q] + i, ms[q], wide) : std::memcpy(s.s[q] + i, st[q], bytes);
}

// Whole vectors, then the rest through the padded copy: every element takes the
// same operations wherever it lies. Stochastically, the vectors go two at a
// time from an even element index, one hash per pair of elements and stream.
template <LowFormat F, bool SP, bool SS, bool M, OptimRule R, OptimDecay D, OptimPhase P>
void run_low_segment(const LowSegment& seg, const OptimScalars<float>& scalars, const LowKeys& keys) {
  static_assert(!(SS && M), "with master weights the slots are float32");
  const LowSegment s = seg;  // local copies: stores cannot alias them
  const OptimScalars<float> c = scalars;
  const LowKeys k = keys;
  constexpr std::size_t L = LowLanes::lanes;
  if constexpr (M)
    if (s.fresh) widen_run<F>(s.p, s.m, s.n);
  std::size_t i = 0;
  if constexpr (SP || SS) {
    if ((s.index & 1u) && s.n) run_padded<F, SP, SS, M, R, D, P>(s, 0, 1, c, k), i = 1;
    for (; i + 2 * L <= s.n; i += 2 * L) {
      LowNoise a{}, b{};
      const std::uint64_t pair = (s.index + i) >> 1;
      if constexpr (SP) random_pairs(k.key[0], pair, a.p, b.p);
      if constexpr (SS)
        for (std::size_t q = 0; q < kSlots; ++q)
          if (uses_slot(R, q)) random_pairs(k.key[1 + q], pair, a.s[q], b.s[q]);
      low_at<F, SP, SS, M, R, D, P>(s, i, c, a);
      low_at<F, SP, SS, M, R, D, P>(s, i + L, c, b);
    }
  } else {
    const LowNoise none{};
    for (; i + 4 * L <= s.n; i += 4 * L) {
#pragma GCC unroll 4
      for (std::size_t j = 0; j < 4; ++j) low_at<F, false, false, M, R, D, P>(s, i + j * L, c, none);
    }
    for (; i + L <= s.n; i += L) low_at<F, false, false, M, R, D, P>(s, i, c, none);
  }
  for (; i < s.n; i += L) run_padded<F, SP, SS, M, R, D, P>(s, i, s.n - i < L ? s.n - i : L, c, k);
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

template <LowFormat F, bool SP, bool SS, std::size_t... I>
void fill_kernels(LowpTable& t, std::index_sequence<I...>) {
  constexpr unsigned f = static_cast<unsigned>(F);
  ((t.fn[f][SP][SS][I] =
        &run_low_segment<F, SP, SS, false, kOptimKernels[I].rule, kOptimKernels[I].decay, kOptimKernels[I].phase>),
   ...);
  if constexpr (!SS)
    ((t.master[f][SP][I] =
          &run_low_segment<F, SP, false, true, kOptimKernels[I].rule, kOptimKernels[I].decay, kOptimKernels[I].phase>),
     ...);
}

template <LowFormat F>
void fill_format(LowpTable& t) {
  constexpr auto all = std::make_index_sequence<kOptimKernels.size()>{};
  fill_kernels<F, false, false>(t, all);
  fill_kernels<F, false, true>(t, all);
  fill_kernels<F, true, false>(t, all);
  fill_kernels<F, true, true>(t, all);
  t.sumsq[static_cast<unsigned>(F)] = &low_sum_squares<F>;
}

}  // namespace

void fill_lowp_table(LowpTable& t) {
  fill_format<LowFormat::BF16>(t);
  fill_format<LowFormat::F16>(t);
}

}  // namespace FUSEDOPT_ISA
}  // namespace fusedopt
