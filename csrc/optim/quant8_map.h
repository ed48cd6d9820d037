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

// Magnitude index (0 .. quant8_top(M)) of the code nearest |x| for |x| <= 1;
// NaN and |x| > 1 give the top index.
inline std::uint32_t quant8_index(float x, int M) {
  std::uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  u &= 0x7fffffffu;
  const int k = 126 - static_cast<int>(u >> 23);  // x in [2^-(k+1), 2^-k)
  const int K = quant8_binades(M);
  const std::uint32_t frac = u & 0x7fffffu;
  if (k < 0) return quant8_top(M);
  if (k >= K) return (k == K && frac != 0) ? 1u : 0u;  // 0 or the smallest code 2^-K (tie: 0)
  const int g = k >> 2, j = k & 3;
  const int bits = g < M ? M - g : 0;
  const std::uint32_t base = g < M ? (static_cast<std::uint32_t>(7 - j) << (M - g)) - 1u : static_cast<std::uint32_t>(K - k);
  const int s = 23 - bits;
  return base + ((frac + (1u << (s - 1)) - 1u) >> s);
}

// The signed code of x: sign bit 7 (never set on the code 0), magnitude below.
inline std::uint8_t quant8_signed(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  const std::uint32_t i = quant8_index(x, kQuant8SignedBits);
  return static_cast<std::uint8_t>(i == 0 ? 0u : i | ((u >> 31) << 7));
}
inline std::uint8_t quant8_unsigned(float x) { return static_cast<std::uint8_t>(quant8_index(x, kQuant8UnsignedBits)); }

// NaN-propagating maximum (torch.max): a block's absmax.
inline float quant8_max(float a, float b) { return a != a ? a : (b != b ? b : (a > b ? a : b)); }

// The value of every code: decode tables of the two maps.
struct Quant8Maps {
  float signed_values[256];
  float unsigned_values[256];
};
const Quant8Maps& quant8_maps();

}  // namespace fusedopt
