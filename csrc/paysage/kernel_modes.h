// What one fused step does, encoded as a small integer so that every variant
// is a compile-time template argument of the same kernel (no copied loops).
#pragma once
#include <cstddef>

namespace fusedopt {

// Moment update: none, first call (m = g / v = g*g), or running average.
enum MomentOp : unsigned { MOMENT_NONE = 0, MOMENT_INIT = 1, MOMENT_EMA = 2 };
// Direction of the step: none (memory update only), g, m,
// x / sqrt(EPS + v) with x = g (RMSProp, normalize) or x = m (ADAM).
enum DirOp : unsigned { DIR_NONE = 0, DIR_G = 1, DIR_M = 2, DIR_NORM_G = 3, DIR_NORM_M = 4 };
// Where the result goes: nowhere, an output array, p -= d in place, or both.
enum OutOp : unsigned { OUT_NONE = 0, OUT_WRITE = 1, OUT_INPLACE = 2, OUT_BOTH = 3 };

constexpr unsigned MEAN_SHIFT = 0;   // 2 bits
constexpr unsigned SQ_SHIFT = 2;     // 2 bits
constexpr unsigned DIR_SHIFT = 4;    // 3 bits
constexpr unsigned OUT_SHIFT = 7;    // 2 bits
constexpr unsigned UNBIASED = 1u << 9;   // v / (1 - w2) before the sqrt
constexpr unsigned MEAN_DIV = 1u << 10;  // x / (1 - w) (exact no-op when w == 0, so skipped then)
constexpr unsigned SCALE = 1u << 11;     // d = lr * d, and sum(d*d) is accumulated
constexpr unsigned MODE_LIMIT = 1u << 12;

constexpr unsigned make_mode(unsigned mean, unsigned sq, unsigned dir, unsigned out, unsigned flags) {
  return (mean << MEAN_SHIFT) | (sq << SQ_SHIFT) | (dir << DIR_SHIFT) | (out << OUT_SHIFT) | flags;
}
constexpr unsigned mode_mean(unsigned m) { return (m >> MEAN_SHIFT) & 3u; }
constexpr unsigned mode_sq(unsigned m) { return (m >> SQ_SHIFT) & 3u; }
constexpr unsigned mode_dir(unsigned m) { return (m >> DIR_SHIFT) & 7u; }
constexpr unsigned mode_out(unsigned m) { return (m >> OUT_SHIFT) & 3u; }

// What a mode reads and writes, used by the kernels (step_math.h) and by the
// binding that checks and passes the arrays (register_step.cpp) alike.
constexpr bool updates_m(unsigned m) { return mode_mean(m) != MOMENT_NONE; }
constexpr bool updates_v(unsigned m) { return mode_sq(m) != MOMENT_NONE; }
constexpr bool dir_uses_m(unsigned m) { return mode_dir(m) == DIR_M || mode_dir(m) == DIR_NORM_M; }
constexpr bool dir_uses_v(unsigned m) { return mode_dir(m) == DIR_NORM_G || mode_dir(m) == DIR_NORM_M; }
// Loads the old moment: a running average, or a direction made of a moment not updated here.
constexpr bool reads_m(unsigned m) { return mode_mean(m) == MOMENT_EMA || (!updates_m(m) && dir_uses_m(m)); }
constexpr bool reads_v(unsigned m) { return mode_sq(m) == MOMENT_EMA || (!updates_v(m) && dir_uses_v(m)); }
// Needs the moment arena at all.
constexpr bool uses_m(unsigned m) { return updates_m(m) || dir_uses_m(m); }
constexpr bool uses_v(unsigned m) { return updates_v(m) || dir_uses_v(m); }
constexpr bool steps_p(unsigned m) { return mode_out(m) == OUT_INPLACE || mode_out(m) == OUT_BOTH; }
constexpr bool writes_out(unsigned m) { return mode_out(m) == OUT_WRITE || mode_out(m) == OUT_BOTH; }

// Scalars of one step, already rounded to the leaf's dtype by the caller.
// inv_one_minus_w(2) is 1 / one_minus_w(2) when that divisor passed the
// table's check_divisor (exact_division.h), else 0: divide with the divider.
template <class T>
struct StepScalars {
  T lr, w, one_minus_w, w2, one_minus_w2, eps;
  T inv_one_minus_w = 0, inv_one_minus_w2 = 0;
};

// Pointers of one segment (a contiguous piece of one leaf); unused ones are
// null. Moments are read from m, v and written to m_out, v_out: the same
// arrays when the step commits in place, a second buffer when its caller
// commits only after the model took the delta (see docs/threads.md).
template <class T>
struct Segment {
  const T* g;
  T* p;
  const T* m;
  const T* v;
  T* out;
  std::size_t n;
  T* m_out;
  T* v_out;
};

// A kernel runs one segment and returns sum(d*d) over it (0 when !SCALE).
template <class T>
using KernelFn = double (*)(const Segment<T>&, const StepScalars<T>&);

// The data-parallel average of k rows over [lo, lo + len) into out (step_math.h).
template <class T>
using AverageFn = void (*)(const T* const* rows, std::size_t k, std::size_t lo, std::size_t len, T divisor, T* out);

struct KernelTable {
  KernelFn<float> f32[MODE_LIMIT];
  KernelFn<double> f64[MODE_LIMIT];
  AverageFn<float> average32;
  AverageFn<double> average64;
  KernelFn<float> probe;  // bandwidth probe, see step_math.h
  bool (*check_divisor)(float c, float r);  // see exact_division.h; null below AVX-512
  const char* name;
};

}  // namespace fusedopt
