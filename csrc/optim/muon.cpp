#include "optim/muon.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include "optim/flat_sum.h"

namespace fusedopt {
namespace muon {

float round_bf16(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  // A select rather than a branch, so that the passes' loops vectorise.
  const std::uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
  u = x != x ? 0x7FC00000u : rounded;
  float out;
  std::memcpy(&out, &u, sizeof out);
  return out;
}

namespace {

// torch's lerp(self, end, weight) for one element, in T, its formula chosen
// by the weight once: both are computed and one selected, so loops vectorise.
template <class T>
struct Lerp {
  T weight, rest;
  bool small;
  explicit Lerp(T w) : weight(w), rest(T(1) - w), small(std::fabs(w) < T(0.5)) {}
  T operator()(T self, T end) const {
    const T d = end - self;
    const T from_self = self + weight * d, from_end = end - d * rest;
    return small ? from_self : from_end;
  }
};

}  // namespace

template <class T>
void momentum(const std::vector<const T*>& g, const std::vector<T*>& buf, const std::vector<float*>& x,
              const std::vector<std::size_t>& rows, const std::vector<std::size_t>& cols,
              const std::vector<bool>& transposed, double mu, bool nesterov, double* sumsq) {
  // torch passes 1 - mu (computed in double) and mu as lerp weights.
  const Lerp<T> to_grad(static_cast<T>(1.0 - mu)), to_buf(static_cast<T>(mu));
  for (std::size_t l = 0; l < g.size(); ++l) {
    const T* gl = g[l];
    T* bl = buf[l];
    float* xl = x[l];
    const std::size_t r = rows[l], c = cols[l];
    auto element = [&](std::size_t i, std::size_t to) {
      const T b = to_grad(bl[i], gl[i]);
      bl[i] = b;
      const T u = nesterov ? to_buf(gl[i], b) : b;
      const float xi = round_bf16(static_cast<float>(u));
      xl[to] = xi;
      return static_cast<double>(xi) * static_cast<double>(xi);
    };
    // Two loops, so that the untransposed one has no index arithmetic.
    sumsq[l] = transposed[l] ? fixed_sum(r * c, [&](std::size_t i) { return element(i, (i % c) * r + i / c); })
                             : fixed_sum(r * c, [&](std::size_t i) { return element(i, i); });
  }
}

void round(float* x, std::size_t n) {
  for_each_element(n, [&](std::size_t i) { x[i] = round_bf16(x[i]); });
}

void scale(float* x, float norm, std::size_t n) {
  for_each_element(n, [&](std::size_t i) { x[i] = round_bf16(x[i] / norm); });
}

void combine(float* out, const float* c, const float* prod, float beta, float alpha, std::size_t n) {
  for_each_element(n, [&](std::size_t i) { out[i] = round_bf16(beta * c[i] + alpha * prod[i]); });
}

template <class T>
void update(const std::vector<T*>& p, const std::vector<const float*>& o, const std::vector<std::size_t>& rows,
            const std::vector<std::size_t>& cols, const std::vector<bool>& transposed, T decay,
            const std::vector<T>& neg_lr) {
  for (std::size_t l = 0; l < p.size(); ++l) {
    T* pl = p[l];
    const float* ol = o[l];
    const std::size_t r = rows[l], c = cols[l];
    const bool tr = transposed[l];
    const T a = neg_lr[l];
    for_each_element(r * c, [&](std::size_t i) {
      const float oi = tr ? ol[(i % c) * r + i / c] : ol[i];
      const T q = pl[i] * decay;
      pl[i] = q + a * static_cast<T>(oi);
    });
  }
}

template void momentum<float>(const std::vector<const float*>&, const std::vector<float*>&, const std::vector<float*>&,
                              const std::vector<std::size_t>&, const std::vector<std::size_t>&,
                              const std::vector<bool>&, double, bool, double*);
template void momentum<double>(const std::vector<const double*>&, const std::vector<double*>&,
                               const std::vector<float*>&, const std::vector<std::size_t>&,
                               const std::vector<std::size_t>&, const std::vector<bool>&, double, bool, double*);
template void update<float>(const std::vector<float*>&, const std::vector<const float*>&,
                            const std::vector<std::size_t>&, const std::vector<std::size_t>&,
                            const std::vector<bool>&, float, const std::vector<float>&);
template void update<double>(const std::vector<double*>&, const std::vector<const float*>&,
                             const std::vector<std::size_t>&, const std::vector<std::size_t>&,
                             const std::vector<bool>&, double, const std::vector<double>&);

}  // namespace muon
}  // namespace fusedopt
