#include "paysage/exact_divisors.h"

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include "common/dispatch.h"

namespace fusedopt {

namespace {

// FUSEDOPT_FMA_DIVISION=0 (or "off") in the environment turns it off.
bool enabled_by_environment() {
  const char* v = std::getenv("FUSEDOPT_FMA_DIVISION");
  return !(v && (std::strcmp(v, "0") == 0 || std::strcmp(v, "off") == 0));
}

std::atomic<bool> g_enabled{enabled_by_environment()};
// Constants checked so far, filled from the front and read without a lock on
// every step (a mutex here cost ~5% of a 1000-element step): each entry is
// bits of c << 2 | passed << 1 | 1, 0 when empty. Training uses one or two
// constants; the bound only keeps a program that keeps changing its weights
// from growing it (the table then starts over).
constexpr std::size_t kMaxRemembered = 64;
std::atomic<std::uint64_t> g_checked[kMaxRemembered];
std::size_t g_count = 0;  // entries in use, under g_mutex
std::mutex g_mutex;       // one check and one insertion at a time

// 1: c passed the check, 0: it failed, -1: not checked yet.
int remembered(std::uint32_t bits) {
  for (const auto& e : g_checked) {
    const std::uint64_t v = e.load(std::memory_order_relaxed);
    if (v == 0) break;
    if ((v >> 2) == bits) return static_cast<int>((v >> 1) & 1u);
  }
  return -1;
}

}  // namespace

float exact_reciprocal(float c) {
  if (!g_enabled.load(std::memory_order_relaxed)) return 0.0f;
  bool (*check)(float, float) = kernels().check_divisor;
  if (!check) return 0.0f;  // not AVX-512: its kernels ignore the reciprocal
  std::uint32_t bits;
  std::memcpy(&bits, &c, sizeof bits);
  int ok = remembered(bits);
  if (ok < 0) {
    std::lock_guard<std::mutex> lock(g_mutex);
    ok = remembered(bits);  // another thread may have checked it meanwhile
    if (ok < 0) {
      // The result does not depend on the level: FMA and division are
      // correctly rounded IEEE operations on every level that has them.
      ok = check(c, 1.0f / c) ? 1 : 0;
      if (g_count == kMaxRemembered) {
        for (auto& e : g_checked) e.store(0, std::memory_order_relaxed);
        g_count = 0;
      }
      const std::uint64_t entry = (std::uint64_t{bits} << 2) | (static_cast<std::uint64_t>(ok) << 1) | 1u;
      g_checked[g_count++].store(entry, std::memory_order_relaxed);
    }
  }
  return ok ? 1.0f / c : 0.0f;
}

void set_exact_division(bool on) { g_enabled.store(on, std::memory_order_relaxed); }
bool exact_division() { return g_enabled.load(std::memory_order_relaxed); }
bool exact_division_active() { return exact_division() && kernels().check_divisor != nullptr; }

}  // namespace fusedopt
