#include "optim/lbfgs.h"

#include <cmath>
#include <cstring>
#include "optim/flat_sum.h"

namespace fusedopt {
namespace lbfgs {

namespace {

template <class T>
double prod(T a, T b) { return static_cast<double>(a) * static_cast<double>(b); }

// max(m, x) that keeps a NaN once seen.
template <class T>
T nan_max(T m, T x) { return (x > m || std::isnan(x)) && !std::isnan(m) ? x : m; }

template <class T>
T chunked_max(std::size_t n, T (*chunk)(const T*, T, std::size_t, std::size_t), const T* a, T alpha) {
  const std::size_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<T> part(chunks);
  auto body = [&](std::size_t c) { part[c] = chunk(a, alpha, c * kChunk, std::min(n, (c + 1) * kChunk)); };
  for_each_chunk(chunks, n >= kSerialBelow, true, body);
  T m = T(0);
  for (T x : part) m = nan_max(m, x);
  return m;
}

template <class T>
T abs_max_chunk(const T* a, T alpha, std::size_t b, std::size_t e) {
  T m = T(0);
  for (std::size_t i = b; i < e; ++i) m = nan_max(m, std::fabs(alpha * a[i]));
  return m;
}

}  // namespace

template <class T>
double dot(const T* a, const T* b, std::size_t n) {
  return fixed_sum(n, [&](std::size_t i) { return prod(a[i], b[i]); });
}

template <class T>
double abs_sum(const T* a, std::size_t n) {
  return fixed_sum(n, [&](std::size_t i) { return static_cast<double>(std::fabs(a[i])); });
}

template <class T>
T abs_max(const T* a, std::size_t n) { return chunked_max<T>(n, &abs_max_chunk<T>, a, T(1)); }

template <class T>
T scaled_abs_max(const T* a, T alpha, std::size_t n) { return chunked_max<T>(n, &abs_max_chunk<T>, a, alpha); }

template <class T>
std::pair<double, double> new_pair(const T* g, T* prev, const T* d, T t, T* y, T* s, std::size_t n) {
  // Two sums in one pass: each chunk returns y*s and keeps y*y in its slot.
  const std::size_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> yy_part(chunks);
  const double ys = chunked_sum(n, [&](std::size_t b, std::size_t e) {
    double yy_acc[kLanes] = {};
    const double ys_chunk = lane_sum(b, e, [&](std::size_t i) {
      const T yi = g[i] - prev[i];
      const T si = d[i] * t;
      y[i] = yi;
      s[i] = si;
      prev[i] = g[i];
      yy_acc[(i - b) % kLanes] += prod(yi, yi);
      return prod(yi, si);
    });
    double yy = 0.0;
    for (std::size_t j = 0; j < kLanes; ++j) yy += yy_acc[j];
    yy_part[b / kChunk] = yy;
    return ys_chunk;
  });
  double yy = 0.0;
  for (double x : yy_part) yy += x;
  return {ys, yy};
}

template <class T>
double two_loop(T* d, const T* g, const T* const* ys, const T* const* ss, const T* ro, std::size_t m, T h_diag,
                T* al, std::size_t n) {
  // q lives in d. Pass 0: q = -g, with dot(s_{m-1}, q).
  const T* next = m ? ss[m - 1] : nullptr;
  double dotv = fixed_sum(n, [&](std::size_t i) {
    const T q = -g[i];
    d[i] = q;
    return next ? prod(next[i], q) : 0.0;
  });
  for (std::size_t k = m; k-- > 0;) {
    al[k] = static_cast<T>(dotv) * ro[k];
    const T alpha = -al[k];
    const T* y = ys[k];
    if (k > 0) {  // q = q + alpha * y_k, with dot(s_{k-1}, q)
      const T* s = ss[k - 1];
      dotv = fixed_sum(n, [&](std::size_t i) {
        const T q = d[i] + alpha * y[i];
        d[i] = q;
        return prod(s[i], q);
      });
    } else {  // the last update of q, then r = q * h_diag, with dot(y_0, r)
      const T* y0 = ys[0];
      dotv = fixed_sum(n, [&](std::size_t i) {
        const T r = (d[i] + alpha * y[i]) * h_diag;
        d[i] = r;
        return prod(y0[i], r);
      });
    }
  }
  if (m == 0) for_each_element(n, [&](std::size_t i) { d[i] = d[i] * h_diag; });
  // r = r + (al_i - be_i) * s_i, with dot(y_{i+1}, r); the last with dot(g, r).
  for (std::size_t k = 0; k < m; ++k) {
    const T be = static_cast<T>(dotv) * ro[k];
    const T alpha = al[k] - be;
    const T* s = ss[k];
    const T* other = k + 1 < m ? ys[k + 1] : g;
    dotv = fixed_sum(n, [&](std::size_t i) {
      const T r = d[i] + alpha * s[i];
      d[i] = r;
      return prod(other[i], r);
    });
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
