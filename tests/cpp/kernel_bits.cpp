// Bit test of the C++ core without Python: every compiled SIMD level's fused
// steps (through run_step: chunk layout, threads, dispatch) against a scalar
// reference written here in the operation order of docs/semantics.md, compared
// bit for bit, for float32 and float64, several steps, leaf sizes with SIMD
// tails, and 1 and 3 threads; and the 8-bit maps' vector encoder and decoder against
// their scalar definitions (optim/quant8_map.h). tools/check_aarch64.sh cross-compiles it for
// aarch64 and runs it under qemu-user; it builds natively as well.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "common/dispatch.h"
#include "paysage/kernel_modes.h"
#include "common/multi_tensor.h"
#include "common/threads.h"
#include "optim/quant8.h"

namespace {

using namespace fusedopt;

// The four optimizers of the paysage family (named here, apart from the
// kernels' own rule enums).
enum Opt { GRADIENT, MOMENTUM, RMSPROP, ADAM };
const char* const kOptimizerNames[] = {"Gradient", "Momentum", "RMSProp", "ADAM"};

// The kernel mode of an optimizer's step: first (moments initialised) or steady step.
unsigned kernel_mode(Opt rule, bool first, unsigned out) {
  const unsigned phase = first ? MOMENT_INIT : MOMENT_EMA;
  switch (rule) {
    case GRADIENT: return make_mode(0, 0, DIR_G, out, SCALE);
    case MOMENTUM: return make_mode(phase, 0, DIR_M, out, SCALE);
    case RMSPROP: return make_mode(0, phase, DIR_NORM_G, out, SCALE | UNBIASED);
    case ADAM: return make_mode(phase, phase, DIR_NORM_M, out, SCALE | UNBIASED | MEAN_DIV);
  }
  return 0;
}

// Weights as the Python layer passes them: float32 values, widened.
struct Weights {
  double w, w2;
};
Weights weights_of(Opt rule) {
  switch (rule) {
    case GRADIENT: return {0.0, 0.0};
    case MOMENTUM: return {double(0.9f), 0.0};
    case RMSPROP: return {0.0, double(0.9f)};
    case ADAM: return {double(0.9f), double(0.999f)};
  }
  return {0.0, 0.0};
}

// docs/semantics.md, one element, each operation rounded to T.
template <class T>
void reference(Opt rule, bool first, T lr, const Weights& wt, T g, T& p, T& m, T& v, T& out) {
  const T w = T(wt.w), w2 = T(wt.w2), omw = T(1) - w, omw2 = T(1) - w2;
  const T eps = T(1.0 / 8388608.0);
  T d = g;
  if (rule == MOMENTUM || rule == ADAM) m = first ? g : (w * m) + (omw * g);
  if (rule == RMSPROP || rule == ADAM) v = first ? g * g : (w2 * v) + ((omw2 * g) * g);
  if (rule == MOMENTUM) d = m;
  if (rule == RMSPROP) d = g / std::sqrt(eps + (v / omw2));
  if (rule == ADAM) d = (m / omw) / std::sqrt(eps + (v / omw2));
  d = lr * d;
  p = p - d;
  out = d;
}

// A deterministic generator of gradients of both signs over several decades.
struct Lcg {
  std::uint64_t s;
  double next() {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    const double u = double(s >> 11) / 9007199254740992.0;   // [0, 1)
    const double mag = std::pow(10.0, 4.0 * u - 3.0);         // 1e-3 .. 10
    return (s >> 7) & 1 ? mag : -mag;
  }
};

template <class T>
T* aligned(std::size_t n) {
  void* q = std::aligned_alloc(64, ((n * sizeof(T) + 63) / 64) * 64 + 64);
  std::memset(q, 0, ((n * sizeof(T) + 63) / 64) * 64 + 64);
  return static_cast<T*>(q);
}

template <class T>
struct Leaf {
  std::size_t n;
  T *g, *p, *m, *v, *out;           // what the kernels touch
  std::vector<T> rp, rm, rv, rout;  // the reference's copies
};

int failures = 0;

template <class T>
bool same_bits(const T* a, const T* b, std::size_t n, const std::string& what) {
  if (n == 0 || std::memcmp(a, b, n * sizeof(T)) == 0) return true;
  for (std::size_t i = 0; i < n; ++i) {
    if (std::memcmp(&a[i], &b[i], sizeof(T)) != 0) {
      std::printf("FAIL %s: element %zu of %zu: kernel %.17g, reference %.17g\n", what.c_str(), i, n,
                  double(a[i]), double(b[i]));
      break;
    }
  }
  ++failures;
  return false;
}

// Runs `steps` steps of a rule on a tree of leaves; returns the last step's per-leaf sums.
template <class T>
std::vector<double> run_case(Opt rule, unsigned out, const std::vector<std::size_t>& sizes, int steps,
                             const std::string& label) {
  const Dtype dt = sizeof(T) == 4 ? F32 : F64;
  const Weights wt = weights_of(rule);
  const T lr = T(0.01f);
  Lcg rng{0x9E3779B97F4A7C15ULL + sizes.size()};
  std::vector<Leaf<T>> leaves;
  for (std::size_t n : sizes) {
    Leaf<T> l{n, aligned<T>(n), aligned<T>(n), aligned<T>(n), aligned<T>(n), aligned<T>(n), {}, {}, {}, {}};
    for (std::size_t i = 0; i < n; ++i) l.p[i] = T(rng.next());
    l.rp.assign(l.p, l.p + n);
    l.rm.assign(n, T(0));
    l.rv.assign(n, T(0));
    l.rout.assign(n, T(0));
    leaves.push_back(std::move(l));
  }
  const ChunkLayout layout(sizes);
  std::vector<double> sums(sizes.size());
  const bool inplace = out == OUT_INPLACE || out == OUT_BOTH, writes = out == OUT_WRITE || out == OUT_BOTH;
  for (int s = 0; s < steps; ++s) {
    const bool first = s == 0;
    std::vector<LeafData> data;
    for (auto& l : leaves) {
      for (std::size_t i = 0; i < l.n; ++i) l.g[i] = T(rng.next());
      data.push_back({dt, l.g, inplace ? l.p : nullptr, l.m, l.v, writes ? l.out : nullptr});
      for (std::size_t i = 0; i < l.n; ++i) {
        T p = l.rp[i], o = 0;
        reference<T>(rule, first, lr, wt, l.g[i], p, l.rm[i], l.rv[i], o);
        if (inplace) l.rp[i] = p;
        l.rout[i] = o;
      }
    }
    run_step(kernel_mode(rule, first, out), layout, data, Hyper{double(lr), wt.w, wt.w2}, sums.data());
  }
  for (std::size_t k = 0; k < leaves.size(); ++k) {
    auto& l = leaves[k];
    const std::string where = label + " leaf " + std::to_string(k) + " (" + std::to_string(l.n) + ")";
    same_bits(l.p, l.rp.data(), l.n, where + " p");
    if (rule == MOMENTUM || rule == ADAM) same_bits(l.m, l.rm.data(), l.n, where + " m");
    if (rule == RMSPROP || rule == ADAM) same_bits(l.v, l.rv.data(), l.n, where + " v");
    if (writes) same_bits(l.out, l.rout.data(), l.n, where + " delta");
    // The sum of delta**2 is accumulated in lanes, so only its value is
    // checked here (float32 lanes: relative 1e-4); its bits are checked
    // across thread counts by the caller.
    double expect = 0.0;
    for (std::size_t i = 0; i < l.n; ++i) {
      expect += double(T(l.rout[i] * l.rout[i]));
    }
    if (std::fabs(sums[k] - expect) > (sizeof(T) == 4 ? 1e-4 : 1e-12) * expect) {
      std::printf("FAIL %s sum(delta**2): kernel %.17g, reference %.17g\n", where.c_str(), sums[k], expect);
      ++failures;
    }
    for (T* q : {l.g, l.p, l.m, l.v, l.out}) std::free(q);
  }
  return sums;
}

// The 8-bit maps (docs/lowbit.md): the level's blockwise encoder and decoder (the step's
// vector code) against quant8_map.h's scalar definitions, for every code and, with a 1.0
// starting each block (absmax 1), every exponent up to 1.0 with its top 9 fraction bits
// and low bits 0, 1, 0x1FFF and 0x3FFF (the rounding sits at 2^17 and above), both signs.
void check_quant8(const std::string& level) {
  std::vector<float> x;
  for (std::uint32_t e = 0; e <= 127; ++e)
    for (std::uint32_t top = 0; top < (e == 127 ? 1u : 512u); ++top)
      for (std::uint32_t low : {0u, 1u, 0x1FFFu, 0x3FFFu}) {
        const std::uint32_t bits = (e << 23) | (top << 14) | (e == 127 ? 0u : low);
        for (std::uint32_t sign : {0u, 0x80000000u}) {
          if (x.size() % 4096 == 0) x.push_back(1.0f);
          float v;
          const std::uint32_t b = bits | sign;
          std::memcpy(&v, &b, sizeof v);
          x.push_back(v);
        }
      }
  const std::size_t blocks = (x.size() + 4095) / 4096;
  std::vector<std::uint8_t> codes(x.size()), want(x.size());
  std::vector<float> absmax(blocks);
  for (bool is_signed : {true, false}) {
    const std::string what = level + (is_signed ? " quant8 signed" : " quant8 unsigned");
    quant8_encode(x.data(), x.size(), 4096, is_signed, codes.data(), absmax.data());
    for (std::size_t i = 0; i < x.size(); ++i) want[i] = is_signed ? quant8_signed(x[i]) : quant8_unsigned(x[i]);
    const std::vector<float> ones(blocks, 1.0f);
    same_bits(absmax.data(), ones.data(), blocks, what + " absmax");
    same_bits(codes.data(), want.data(), x.size(), what + " codes");
    std::uint8_t all[256];
    float got[256], value[256];
    for (unsigned c = 0; c < 256; ++c) {
      all[c] = static_cast<std::uint8_t>(c);
      value[c] = (is_signed ? quant8_signed_value(all[c]) : quant8_unsigned_value(all[c])) * 3.5f;
    }
    const float a = 3.5f;
    quant8_decode(all, &a, 256, 256, is_signed, got);
    same_bits(got, value, 256, what + " values");
  }
}

}  // namespace

int main() {
  // Sizes around the vector widths (4, 8, 16 lanes; blocks of 64), a chunk
  // boundary (2048), and a tree large enough to run on threads (>= 32768).
  const std::vector<std::vector<std::size_t>> trees = {
      {0, 1, 7, 15, 16, 17, 63, 64, 65, 1000, 2049}, {40000, 3, 5000}};
  const unsigned outs[] = {OUT_WRITE, OUT_INPLACE, OUT_BOTH};
  int cases = 0, failed_cases = 0;
  for (const std::string& level : simd_levels_supported()) {
    set_simd_level(level);
    for (Opt rule : {GRADIENT, MOMENTUM, RMSPROP, ADAM}) {
      for (unsigned out : outs) {
        for (std::size_t t = 0; t < trees.size(); ++t) {
          for (int threads : {1, 3}) {
            set_num_threads(threads);
            const std::string label = level + " " + kOptimizerNames[rule] + " out=" + std::to_string(out) +
                                      " tree " + std::to_string(t) + " threads " + std::to_string(threads);
            const int before = failures;
            const auto s32 = run_case<float>(rule, out, trees[t], 4, label + " float32");
            const auto s64 = run_case<double>(rule, out, trees[t], 4, label + " float64");
            static std::vector<double> one32, one64;
            if (threads == 1) {
              one32 = s32;
              one64 = s64;
            } else if (std::memcmp(one32.data(), s32.data(), s32.size() * sizeof(double)) != 0 ||
                       std::memcmp(one64.data(), s64.data(), s64.size() * sizeof(double)) != 0) {
              std::printf("FAIL %s: sum(delta**2) differs from 1 thread's\n", label.c_str());
              ++failures;
            }
            cases += 1;
            failed_cases += failures != before;
          }
        }
      }
    }
    check_quant8(level);
    std::printf("level %s: checked\n", level.c_str());
  }
  std::printf("kernel_bits: %d passed, %d failed\n", cases - failed_cases, failed_cases);
  return failures == 0 ? 0 : 1;
}
