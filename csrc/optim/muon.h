// Muon's element passes (torch.optim.Muon, torch 2.13). Its Newton-Schulz
// iteration runs in bfloat16 in torch; here the matrices are float32 arrays
// holding bfloat16 values: the products go through the caller's BLAS in
// float32 (exact products of bfloat16 values, summed in the BLAS's order),
// and every result is rounded to bfloat16 (nearest, ties to even) by these
// passes, as torch rounds each bfloat16 operation's float result.
#pragma once
#include <cstddef>
#include <vector>

namespace fusedopt {
namespace muon {

// x rounded to the nearest bfloat16 (ties to even; NaN to the quiet NaN torch gives).
float round_bf16(float x);

// For each leaf (rows[l] x cols[l], parameter dtype T):
//   buf = lerp(buf, g, T(1 - mu))
//   u = lerp(g, buf, T(mu)) if nesterov, else buf
// with torch's lerp(a, b, w) = a + w * (b - a) for |w| < 0.5, else
// b - (b - a) * (1 - w), each operation rounded in T;
//   x = bf16(float(u)), stored transposed (cols x rows) where transposed[l]
// and sumsq[l] = the sum of x*x in the fixed order of flat_sum.h.
template <class T>
void momentum(const std::vector<const T*>& g, const std::vector<T*>& buf, const std::vector<float*>& x,
              const std::vector<std::size_t>& rows, const std::vector<std::size_t>& cols,
              const std::vector<bool>& transposed, double mu, bool nesterov, double* sumsq);

// x = bf16(x), over n elements (a BLAS product's result).
void round(float* x, std::size_t n);
// x = bf16(x / norm), over n elements.
void scale(float* x, float norm, std::size_t n);
// out = bf16(beta * c + alpha * prod), over n elements (torch's addmm in bfloat16).
void combine(float* out, const float* c, const float* prod, float beta, float alpha, std::size_t n);

// For each leaf (rows[l] x cols[l]): p = p * decay; p = p + neg_lr[l] * o,
// with o read transposed (o is cols x rows) where transposed[l].
template <class T>
void update(const std::vector<T*>& p, const std::vector<const float*>& o, const std::vector<std::size_t>& rows,
            const std::vector<std::size_t>& cols, const std::vector<bool>& transposed, T decay,
            const std::vector<T>& neg_lr);

}  // namespace muon
}  // namespace fusedopt
