// The kernel tables of both families are the valid combinations of three
// enums (rule, phase, output; rule, decay, phase), generated at compile time
// from the rule specs: the list of valid combinations in enum order, and the
// index of each combination in that list (-1 where it is not valid).
#pragma once
#include <array>
#include <cstddef>

namespace fusedopt {

template <unsigned A, unsigned B, unsigned C, class Valid>
constexpr std::size_t count_valid(Valid valid) {
  std::size_t n = 0;
  for (unsigned a = 0; a < A; ++a)
    for (unsigned b = 0; b < B; ++b)
      for (unsigned c = 0; c < C; ++c) n += valid(a, b, c) ? 1 : 0;
  return n;
}

// The N valid combinations in enum order, each made into an Entry by make(a, b, c).
template <class Entry, std::size_t N, unsigned A, unsigned B, unsigned C, class Valid, class Make>
constexpr std::array<Entry, N> valid_combinations(Valid valid, Make make) {
  std::array<Entry, N> out{};
  std::size_t k = 0;
  for (unsigned a = 0; a < A; ++a)
    for (unsigned b = 0; b < B; ++b)
      for (unsigned c = 0; c < C; ++c)
        if (valid(a, b, c)) out[k++] = make(a, b, c);
  return out;
}

// Position (a*B + b)*C + c -> index in `list`, whose entries give their (a, b, c) by abc(entry).
template <unsigned A, unsigned B, unsigned C, class Entry, std::size_t N, class Abc>
constexpr std::array<int, A * B * C> combination_index(const std::array<Entry, N>& list, Abc abc) {
  std::array<int, A * B * C> out{};
  for (auto& x : out) x = -1;
  for (std::size_t i = 0; i < N; ++i) {
    const auto [a, b, c] = abc(list[i]);
    out[(a * B + b) * C + c] = static_cast<int>(i);
  }
  return out;
}

}  // namespace fusedopt
