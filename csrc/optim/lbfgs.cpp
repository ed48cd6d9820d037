#include "optim/lbfgs.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>
#include "common/level_tables.h"
#include "optim/flat_sum.h"
#include "optim/lbfgs_passes.h"

namespace fusedopt {
namespace baseline { void fill_lbfgs_table(LbfgsTable&); }
namespace avx2 { void fill_lbfgs_table(LbfgsTable&); }
namespace avx512 { void fill_lbfgs_table(LbfgsTable&); }

namespace lbfgs {

namespace {

// The passes of the SIMD level in use.
template <class T>
const LbfgsPasses<T>& passes() {
  static const LevelTables<LbfgsTable> tables(baseline::fill_lbfgs_table, FUSEDOPT_IF_AVX2(avx2::fill_lbfgs_table),
                                              FUSEDOPT_IF_AVX512(avx512::fill_lbfgs_table));
  if constexpr (std::is_same_v<T, float>) return tables.current().f32;
  else return tables.current().f64;
}

// max(m, x) that keeps a NaN once seen.
template <class T>
T nan_max(T m, T x) { return (x > m || std::isnan(x)) && !std::isnan(m) ? x : m; }

}  // namespace

template <class T>
double dot(const T* a, const T* b, std::size_t n) {
  const auto f = passes<T>().dot;
  return chunked_sum(n, [&](std::size_t b0, std::size_t e) { return f(a, b, b0, e); });
}

template <class T>
double abs_sum(const T* a, std::size_t n) {
  const auto f = passes<T>().abs_sum;
  return chunked_sum(n, [&](std::size_t b0, std::size_t e) { return f(a, b0, e); });
}

template <class T>
T scaled_abs_max(const T* a, T alpha, std::size_t n) {
  const auto f = passes<T>().scaled_abs_max;
  const std::size_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<T> part(chunks);
  auto body = [&](std::size_t c) { part[c] = f(a, alpha, c * kChunk, std::min(n, (c + 1) * kChunk)); };
  for_each_chunk(chunks, n >= kSerialBelow, true, body);
  T m = T(0);
  for (T x : part) m = nan_max(m, x);
  return m;
}

template <class T>
T abs_max(const T* a, std::size_t n) { return scaled_abs_max(a, T(1), n); }

template <class T>
std::pair<double, double> new_pair(const T* g, T* prev, const T* d, T t, T* y, T* s, std::size_t n) {
  // Two sums in one pass: each chunk returns y*s and keeps y*y in its slot.
  const auto f = passes<T>().new_pair;
  std::vector<double> yy_part((n + kChunk - 1) / kChunk);
  const double ys = chunked_sum(n, [&](std::size_t b0, std::size_t e) {
    return f(g, prev, d, t, y, s, b0, e, &yy_part[b0 / kChunk]);
  });
  double yy = 0.0;
  for (double x : yy_part) yy += x;
  return {ys, yy};
}

template <class T>
double two_loop(T* d, const T* g, const T* const* ys, const T* const* ss, const T* ro, std::size_t m, T h_diag,
                T* al, std::size_t n) {
  const LbfgsPasses<T>& k = passes<T>();
  // q lives in d. Pass 0: q = -g, with dot(s_{m-1}, q).
  const T* next = m ? ss[m - 1] : nullptr;
  double dotv = chunked_sum(n, [&](std::size_t b0, std::size_t e) { return k.negate_dot(d, g, next, b0, e); });
  for (std::size_t i = m; i-- > 0;) {
    al[i] = static_cast<T>(dotv) * ro[i];
    const T alpha = -al[i];
    const T* y = ys[i];
    if (i > 0) {  // q = q + alpha * y_i, with dot(s_{i-1}, q)
      const T* s = ss[i - 1];
      dotv = chunked_sum(n, [&](std::size_t b0, std::size_t e) { return k.axpy_dot(d, alpha, y, s, b0, e); });
    } else {  // the last update of q, then r = q * h_diag, with dot(y_0, r)
      dotv = chunked_sum(n, [&](std::size_t b0, std::size_t e) {
        return k.axpy_scale_dot(d, alpha, y, h_diag, ys[0], b0, e);
      });
    }
  }
  if (m == 0) for_each_element(n, [&](std::size_t i) { d[i] = d[i] * h_diag; });
  // r = r + (al_i - be_i) * s_i, with dot(y_{i+1}, r); the last with dot(g, r).
  for (std::size_t i = 0; i < m; ++i) {
    const T be = static_cast<T>(dotv) * ro[i];
    const T alpha = al[i] - be;
    const T* other = i + 1 < m ? ys[i + 1] : g;
    dotv = chunked_sum(n, [&](std::size_t b0, std::size_t e) { return k.axpy_dot(d, alpha, ss[i], other, b0, e); });
  }
  if (m == 0) dotv = dot(g, d, n);
  return dotv;
}

template <class T>
void gather(const std::vector<const T*>& leaves, const std::vector<std::size_t>& sizes, T* flat) {
  std::size_t off = 0;
  for (std::size_t l = 0; l < leaves.size(); ++l) {
    if (leaves[l]) std::memcpy(flat + off, leaves[l], sizes[l] * sizeof(T));
    else std::fill(flat + off, flat + off + sizes[l], T(0));
    off += sizes[l];
  }
}

template <class T>
void scatter(const T* flat, const std::vector<T*>& leaves, const std::vector<std::size_t>& sizes) {
  std::size_t off = 0;
  for (std::size_t l = 0; l < leaves.size(); ++l) {
    std::memcpy(leaves[l], flat + off, sizes[l] * sizeof(T));
    off += sizes[l];
  }
}

template <class T>
void add(const std::vector<T*>& leaves, const std::vector<std::size_t>& sizes, const T* flat, T t) {
  const ChunkLayout layout(sizes);
  std::vector<std::size_t> start(leaves.size());
  for (std::size_t l = 1; l < leaves.size(); ++l) start[l] = start[l - 1] + sizes[l - 1];
  for_each_piece(layout, true, [&](std::size_t, const ChunkLayout::Piece& pc) {
    T* p = leaves[pc.leaf];
    const T* u = flat + start[pc.leaf];
    for (std::size_t i = pc.begin; i < pc.end; ++i) p[i] = p[i] + t * u[i];
  });
}

#define FUSEDOPT_LBFGS_INSTANTIATE(T)                                                                          \
  template double dot<T>(const T*, const T*, std::size_t);                                                      \
  template double abs_sum<T>(const T*, std::size_t);                                                            \
  template T abs_max<T>(const T*, std::size_t);                                                                 \
  template T scaled_abs_max<T>(const T*, T, std::size_t);                                                       \
  template std::pair<double, double> new_pair<T>(const T*, T*, const T*, T, T*, T*, std::size_t);               \
  template double two_loop<T>(T*, const T*, const T* const*, const T* const*, const T*, std::size_t, T, T*,     \
                              std::size_t);                                                                     \
  template void gather<T>(const std::vector<const T*>&, const std::vector<std::size_t>&, T*);                   \
  template void scatter<T>(const T*, const std::vector<T*>&, const std::vector<std::size_t>&);                  \
  template void add<T>(const std::vector<T*>&, const std::vector<std::size_t>&, const T*, T);
FUSEDOPT_LBFGS_INSTANTIATE(float)
FUSEDOPT_LBFGS_INSTANTIATE(double)
#undef FUSEDOPT_LBFGS_INSTANTIATE

}  // namespace lbfgs
}  // namespace fusedopt
