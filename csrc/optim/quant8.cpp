// The driver of Adam8bit/AdamW8bit: the step's scalars once (in double, as
// torch.optim computes them in Python), the kernel of the
// selected SIMD level, and the spans of blocks handed to the thread team.
#include "optim/quant8.h"

#include <cmath>
#include <string>
#include "common/dispatch.h"
#include "common/threads.h"

namespace fusedopt {
namespace baseline { void fill_quant8(Quant8Fn*); }
#if defined(FUSEDOPT_HAVE_AVX2)
namespace avx2 { void fill_quant8(Quant8Fn*); }
#endif
#if defined(FUSEDOPT_HAVE_AVX512)
namespace avx512 { void fill_quant8(Quant8Fn*); }
#endif

namespace {

const Quant8Fn* kernels_of_level() {
  static Quant8Fn base[3], a2[3], a512[3];
  static const bool filled = [] {
    baseline::fill_quant8(base);
#if defined(FUSEDOPT_HAVE_AVX2)
    avx2::fill_quant8(a2);
#endif
#if defined(FUSEDOPT_HAVE_AVX512)
    avx512::fill_quant8(a512);
#endif
    return true;
  }();
  (void)filled;
  const std::string level = simd_level();
  return level == "avx512" ? a512 : level == "avx2" ? a2 : base;
}

double unscale_of(const Quant8Hyper& h) { return h.grad_scale > 0.0 ? 1.0 / h.grad_scale : 1.0; }

Quant8Scalars scalars(const Quant8Hyper& h, double lr, long long t) {
  const double step = static_cast<double>(t);
  Quant8Scalars c{};
  // 1/scale: exactly g / scale for GradScaler's powers of two, as the float32 optimizers unscale
  c.gscale = static_cast<float>((h.maximize ? -1.0 : 1.0) * unscale_of(h));
  c.wd = static_cast<float>(h.weight_decay);
  c.decay = static_cast<float>(1.0 - lr * h.weight_decay);
  c.neg_lr = static_cast<float>(-(lr / (1.0 - std::pow(h.beta1, step))));
  c.b2 = static_cast<float>(h.beta2);
  c.omb2 = static_cast<float>(1.0 - h.beta2);
  c.lerp_w = static_cast<float>(1.0 - h.beta1);
  c.lerp_omw = 1.0f - c.lerp_w;
  c.lerp_small = std::fabs(c.lerp_w) < 0.5f;
  c.bc2_sqrt = static_cast<float>(std::pow(1.0 - std::pow(h.beta2, step), 0.5));
  c.eps = static_cast<float>(h.eps);
  return c;
}

// Elements per span handed to one thread at a time (a whole number of blocks).
constexpr std::size_t kSpanElements = 8192;

}  // namespace

void run_quant8_step(const std::vector<Quant8Leaf>& leaves, std::size_t block, const Quant8Hyper& h, double lr,
                     long long t) {
  const Quant8Fn* fns = kernels_of_level();
  Quant8Scalars c = scalars(h, lr, t);
  std::vector<Quant8Span> spans;
  std::size_t total = 0;
  const std::size_t per = (kSpanElements / block > 0 ? kSpanElements / block : 1) * block;
  for (const Quant8Leaf& l : leaves) {
    for (std::size_t b = 0; b < l.n; b += per) spans.push_back({l, b, b + per < l.n ? b + per : l.n});
    total += l.n;
  }
  const float unscale = static_cast<float>(unscale_of(h));
  auto body = [&](std::size_t k) {
    const Quant8Span& s = spans[k];
    fns[static_cast<int>(s.leaf.decay)](s, block, c);
    // the span's gradient unscaled in place once the kernel has read it (torch's fused step leaves .grad so)
    if (s.leaf.gout)
      for (std::size_t i = s.begin; i < s.end; ++i) s.leaf.gout[i] = s.leaf.g[i] * unscale;
  };
  for_each_chunk(spans.size(), total >= kSerialBelow, true, body);
}

void quant8_encode(const float* x, std::size_t n, std::size_t block, bool is_signed, std::uint8_t* codes, float* absmax) {
  for (std::size_t b0 = 0, blk = 0; b0 < n; b0 += block, ++blk) {
    const std::size_t e = b0 + block < n ? b0 + block : n;
    float a = 0.0f;
    for (std::size_t i = b0; i < e; ++i) a = quant8_max(a, std::fabs(x[i]));
    const Quant8Scale scale(a);
    for (std::size_t i = b0; i < e; ++i) codes[i] = is_signed ? quant8_signed(scale(x[i])) : quant8_unsigned(scale(x[i]));
    absmax[blk] = a;
  }
}

void quant8_decode(const std::uint8_t* codes, const float* absmax, std::size_t n, std::size_t block, bool is_signed,
                   float* out) {
  for (std::size_t b0 = 0, blk = 0; b0 < n; b0 += block, ++blk) {
    const std::size_t e = b0 + block < n ? b0 + block : n;
    for (std::size_t i = b0; i < e; ++i)
      out[i] = (is_signed ? quant8_signed_value(codes[i]) : quant8_unsigned_value(codes[i])) * absmax[blk];
  }
}

}  // namespace fusedopt
