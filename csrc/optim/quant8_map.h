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

// The same encoder as a lookup by binade, for vectors: with |x|'s bits clamped to
// [2^-31, 1.0] (NaN and |x| > 1 to 1.0, anything below 2^-31 is far below the
// smallest codes), the index is (bits + add[e & 31]) >> shift[e & 31] for the
// exponent field e in 96 .. 127. In a binade with codes, add holds the rounding
// half (2^(shift-1) - 1: ties toward zero), the binade's first index (shifted up
// by shift) and minus its exponent field, so the sum is the rounded fraction on
// the first index; a carry out of the fraction is the next binade's first code,
// as above. Binade K (the half of the smallest code and above gives it) rounds
// with 2^23 - 1; binades below K give 0 (shift 31 of a sum below 2^31); 1.0 gives
// the top index. quant8_index_of_bits is the definition; tests compare the two.
struct Quant8Encoding {
  std::uint32_t add[32], shift[32];
};
constexpr std::uint32_t kQuant8ClampLow = 96u << 23, kQuant8ClampHigh = 127u << 23;  // 2^-31, 1.0

constexpr Quant8Encoding quant8_encoding(int M) {
  Quant8Encoding t{};
  const int K = quant8_binades(M);
  for (int e = 96; e <= 127; ++e) {
    const int k = 126 - e;  // |x| in [2^-(k+1), 2^-k)
    std::uint32_t add = 0, shift = 31, base = 0;
    if (k < 0) {  // exactly 1.0 after the clamp
      shift = 23, base = quant8_top(M);
    } else if (k == K) {
      shift = 23, add = (1u << 23) - 1u;
    } else if (k < K) {
      const int bits = k / 4 < M ? M - k / 4 : 0;
      shift = static_cast<std::uint32_t>(23 - bits);
      base = k / 4 < M ? ((7u - static_cast<std::uint32_t>(k % 4)) << bits) - 1u : static_cast<std::uint32_t>(K - k);
      add = (1u << (shift - 1)) - 1u;
    }
    if (k <= K) add += (base << shift) - (static_cast<std::uint32_t>(e) << 23);
    t.add[e & 31] = add;
    t.shift[e & 31] = shift;
  }
  return t;
}
constexpr Quant8Encoding kQuant8SignedEncoding = quant8_encoding(kQuant8SignedBits);
constexpr Quant8Encoding kQuant8UnsignedEncoding = quant8_encoding(kQuant8UnsignedBits);

// The decoder for vectors: in a group of codes with b >= 1 fraction bits the
// value's bits are linear in i, (w << (23 - b)) + ((119 - 4g) << 23) with
// w = i + 1 and g = M - b, and w << (23 - b) is float(w)'s bits shifted left
// by 2 plus a constant that cancels the group's: value bits =
// (bits of float(w)) * 4 + quant8_decode_bias(M) (mod 2^32) for every i >= 7,
// the top (1.0) included. Indices 1 .. 6 are one code per binade,
// ((126 - K + i) << 23); index 0 is 0.
constexpr std::uint32_t quant8_decode_bias(int M) {
  // group g = 0 (b = M, w in [2^(M+2), 2^(M+3))): 2^25 + (119 << 23) - ((127 + M + 2) << 25)
  return (1u << 25) + (119u << 23) - (static_cast<std::uint32_t>(129 + M) << 25);
}
constexpr std::uint32_t kQuant8TailCodes = 6;

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
