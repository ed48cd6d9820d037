// The 8-bit dynamic maps of Adam8bit/AdamW8bit (docs/lowbit.md): a value
// x = moment / block absmax, |x| <= 1, is stored as the index of its nearest
// code. Magnitudes: 0, 1.0, and in binade k (values in [2^-(k+1), 2^-k)) a
// grid of 2^bits(k) codes, bits(k) = max(0, M - k/4); M = 4 for the signed
// map (m: a sign bit and 7 magnitude bits), M = 5 for the unsigned map (v).
// The code is computed from the float's bits: exponent -> binade, then the
// fraction rounded to the binade's bits (ties toward zero); a carry out of the
// fraction lands on the next binade's first code, so no table is searched.
#pragma once
#include <cstdint>
#include <cstring>

namespace fusedopt {

constexpr int kQuant8SignedBits = 4, kQuant8UnsignedBits = 5;
// Binades with codes (4 per precision step, then 6 of one code each).
constexpr int quant8_binades(int M) { return 4 * M + 6; }
// Index of the magnitude 1.0, the largest.
constexpr std::uint32_t quant8_top(int M) { return (1u << (M + 3)) - 1u; }

// Magnitude index (0 .. quant8_top(M)) of the code nearest |x| for |x| <= 1,
// from x's bits u; NaN and |x| > 1 give the top index. U and I are uint32_t
// and int32_t, or vectors of them (GCC vector extensions: the ISA kernels run
// it on whole vectors), so every level computes the same integers.
template <class U, class I>
inline U quant8_index_of_bits(U u, int M) {
  u &= 0x7fffffffu;
  const I K = I{} + quant8_binades(M);
  const I k = (I{} + 126) - (I)(u >> 23);  // x in [2^-(k+1), 2^-k)
  const U frac = u & 0x7fffffu;
  const I kc = k < 0 ? I{} : (k > K - 1 ? K - 1 : k);
  const I g = kc >> 2, j = kc & 3;
  const I bits = g < M ? (I{} + M) - g : I{};
  const U base = g < M ? ((U)((I{} + 7) - j) << (U)bits) - 1u : (U)(K - kc);
  const U s = (U)((I{} + 23) - bits);
  const U idx = base + ((frac + ((U{} + 1u) << (s - 1u)) - 1u) >> s);  // ties toward zero
  const U top = U{} + quant8_top(M);
  const U below = (k == K) & (frac != 0u) ? U{} + 1u : U{};  // 0 or the smallest code 2^-K (tie: 0)
  return k >= K ? below : (k < 0 ? top : idx);
}

inline std::uint32_t quant8_index(float x, int M) {
  std::uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return quant8_index_of_bits<std::uint32_t, std::int32_t>(u, M);
}

// The signed code of x: sign bit 7 (never set on the code 0), magnitude below.
inline std::uint8_t quant8_signed(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  const std::uint32_t i = quant8_index(x, kQuant8SignedBits);
  return static_cast<std::uint8_t>(i == 0 ? 0u : i | ((u >> 31) << 7));
}
inline std::uint8_t quant8_unsigned(float x) { return static_cast<std::uint8_t>(quant8_index(x, kQuant8UnsignedBits)); }

// The magnitude of index i (the inverse of quant8_index), computed from i's
// bits: w = i + 1 lies in [2^(M-g+2), 2^(M-g+3)) for the codes of group g,
// whose binade is 4g + 7 - (w >> (M-g)) and fraction w mod 2^(M-g).
inline float quant8_magnitude(std::uint32_t i, int M) {
  const std::int32_t K = quant8_binades(M);
  const std::uint32_t w = i + 1u;
  const float wf = static_cast<float>(static_cast<std::int32_t>(w));
  std::uint32_t wb;
  std::memcpy(&wb, &wf, sizeof wb);
  const std::int32_t g = M + 2 - (static_cast<std::int32_t>(wb >> 23) - 127);
  const std::int32_t gc = g < 0 ? 0 : (g > M - 1 ? M - 1 : g);
  const std::uint32_t b = static_cast<std::uint32_t>(M - gc);
  const std::int32_t k_fine = 4 * gc + 7 - static_cast<std::int32_t>(w >> b);
  const bool tail = i <= 6u;  // one code per binade: 2^-(K-i+1)
  const std::int32_t k = tail ? K - static_cast<std::int32_t>(i) : k_fine;
  const std::uint32_t mant = tail ? 0u : (w & ((1u << b) - 1u)) << (23u - b);
  std::uint32_t bits = (static_cast<std::uint32_t>(126 - k) << 23) | mant;
  bits = i == 0u ? 0u : bits;
  bits = i >= quant8_top(M) ? 0x3f800000u : bits;
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}
inline float quant8_signed_value(std::uint8_t code) {
  const std::uint32_t i = code & 127u;
  const float m = quant8_magnitude(i, kQuant8SignedBits);
  return (code & 128u) && i != 0u ? -m : m;
}
inline float quant8_unsigned_value(std::uint8_t code) { return quant8_magnitude(code, kQuant8UnsignedBits); }

// How a block's values are scaled before encoding: multiplied by the float32
// reciprocal of the absmax (bitsandbytes' scaling), or divided by the absmax
// where that reciprocal overflows (an absmax below 2^-128: 0 * inf would be NaN,
// the top code). An absmax of 0 (or NaN) scales by 1: the values stay as they are.
struct Quant8Scale {
  float by;     // the factor, or the divisor where divide is set
  bool divide;
  explicit Quant8Scale(float absmax) {
    const float a = absmax > 0.0f ? absmax : 1.0f;
    const float r = 1.0f / a;
    divide = r > 3.402823466e38f;  // +inf
    by = divide ? a : r;
  }
  template <class V>
  V operator()(V x) const { return divide ? x / by : x * by; }
};

// NaN-propagating maximum (torch.max): a block's absmax.
inline float quant8_max(float a, float b) { return a != a ? a : (b != b ? b : (a > b ? a : b)); }

}  // namespace fusedopt
