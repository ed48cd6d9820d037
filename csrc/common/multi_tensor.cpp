#include "common/multi_tensor.h"

#include <algorithm>
#include <chrono>
#include <stdexcept>
#include <type_traits>
#include "common/dispatch.h"
#include "paysage/exact_divisors.h"
#include "common/threads.h"

namespace fusedopt {

ChunkLayout::ChunkLayout(const std::vector<std::size_t>& leaf_sizes) {
  // Leaves are laid end to end, each starting on a multiple of 16 elements.
  std::vector<std::size_t> start(leaf_sizes.size());
  std::size_t pos = 0;
  for (std::size_t l = 0; l < leaf_sizes.size(); ++l) {
    start[l] = pos;
    pos += (leaf_sizes[l] + 15) / 16 * 16;
  }
  total_ = pos;
  const std::size_t chunks = (pos + kChunk - 1) / kChunk;
  chunk_first_.reserve(chunks + 1);
  std::size_t l = 0;
  for (std::size_t c = 0; c < chunks; ++c) {
    chunk_first_.push_back(pieces_.size());
    const std::size_t lo = c * kChunk, hi = lo + kChunk;
    while (l < leaf_sizes.size() && start[l] + leaf_sizes[l] <= lo) ++l;
    for (std::size_t k = l; k < leaf_sizes.size() && start[k] < hi; ++k) {
      const std::size_t b = lo > start[k] ? lo - start[k] : 0;
      const std::size_t e = std::min(hi - start[k], leaf_sizes[k]);
      if (e > b) pieces_.push_back({k, b, e});
    }
  }
  chunk_first_.push_back(pieces_.size());
}

namespace {

template <class T>
StepScalars<T> scalars(const Hyper& h, unsigned mode) {
  StepScalars<T> c{};
  c.lr = static_cast<T>(h.lr);
  c.w = static_cast<T>(h.w);
  c.one_minus_w = T(1) - c.w;
  c.w2 = static_cast<T>(h.w2);
  c.one_minus_w2 = T(1) - c.w2;
  c.eps = static_cast<T>(1.0 / 8388608.0);  // float32 machine epsilon, 2**-23
  if constexpr (std::is_same_v<T, float>) {  // float64 has no exhaustive check: the divider
    if (mode & MEAN_DIV) c.inv_one_minus_w = exact_reciprocal(c.one_minus_w);
    if (mode & UNBIASED) c.inv_one_minus_w2 = exact_reciprocal(c.one_minus_w2);
  }
  return c;
}

template <class T>
T* at(void* base, std::size_t offset) {
  return base ? static_cast<T*>(base) + offset : nullptr;
}

template <class T>
double run_piece(KernelFn<T> fn, const LeafData& d, std::size_t b, std::size_t e, const StepScalars<T>& c,
                 AverageFn<T> average_rows = nullptr, T rank_divisor = T(1)) {
  Segment<T> s{at<T>(const_cast<void*>(d.g), b), at<T>(d.p, b), at<T>(d.m, b), at<T>(d.v, b), at<T>(d.out, b), e - b,
               at<T>(d.m_out ? d.m_out : d.m, b), at<T>(d.v_out ? d.v_out : d.v, b)};
  if (!d.rows) return fn(s, c);
  // A piece is at most one chunk: its average fits the core's first-level cache, so the
  // kernel reads it from there and the average never goes through memory. Page-aligned:
  // the arrays the kernel stores to start 16 or 64 bytes into a page, and a buffer at
  // another small offset would make the kernel's loads from it wait on those stores
  // (4K aliasing): about twice the fused average's cost, measured.
  alignas(4096) T avg[kChunk];
  average_rows(reinterpret_cast<const T* const*>(d.rows), d.n_rows, b, e - b, rank_divisor, avg);
  s.g = avg;
  return fn(s, c);
}

}  // namespace

void run_step(unsigned mode, const ChunkLayout& layout, const std::vector<LeafData>& leaves,
              const Hyper& hyper, double* sumsq) {
  if (mode >= MODE_LIMIT) throw std::invalid_argument("unknown step mode");
  const KernelTable& t = kernels();
  const KernelFn<float> f32 = t.f32[mode];
  const KernelFn<double> f64 = t.f64[mode];
  if (!f32 || !f64) throw std::invalid_argument("step mode " + std::to_string(mode) + " is not compiled");
  bool any32 = false, any64 = false;
  for (const auto& d : leaves) (d.dtype == F32 ? any32 : any64) = true;
  // Only a dtype the tree has pays for its divisors' lookup.
  const StepScalars<float> c32 = scalars<float>(hyper, any32 ? mode : 0u);
  const StepScalars<double> c64 = scalars<double>(hyper, any64 ? mode : 0u);
  std::vector<double> partial(layout.pieces().size());
  for_each_piece(layout, true, [&](std::size_t k, const ChunkLayout::Piece& pc) {
    const LeafData& d = leaves[pc.leaf];
    partial[k] = d.dtype == F32
                     ? run_piece(f32, d, pc.begin, pc.end, c32, t.average32, static_cast<float>(hyper.rank_divisor))
                     : run_piece(f64, d, pc.begin, pc.end, c64, t.average64, hyper.rank_divisor);
  });
  if (sumsq && (mode & SCALE)) sum_by_leaf(layout, partial, sumsq, leaves.size());
}

double run_probe(float* g, float* p, float* m, float* v, std::size_t n) {
  const ChunkLayout layout({n});
  const KernelFn<float> fn = kernels().probe;
  const StepScalars<float> none{};
  const LeafData d{F32, g, p, m, v, nullptr, m, v};
  const auto t0 = std::chrono::steady_clock::now();
  auto body = [&](std::size_t c) {
    for (std::size_t k = layout.chunk_first(c); k < layout.chunk_first(c + 1); ++k) {
      const auto& pc = layout.pieces()[k];
      run_piece(fn, d, pc.begin, pc.end, none);
    }
  };
  for_each_chunk(layout.num_chunks(), n >= kSerialBelow, false, body);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace fusedopt
