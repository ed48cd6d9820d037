#include "exact_divisors.h"

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <utility>
#include <vector>
#include "dispatch.h"

namespace fusedopt {

namespace {

// FUSEDOPT_FMA_DIVISION=0 (or "off") in the environment turns it off.
bool enabled_by_environment() {
  const char* v = std::getenv("FUSEDOPT_FMA_DIVISION");
  return !(v && (std::strcmp(v, "0") == 0 || std::strcmp(v, "off") == 0));
}

std::atomic<bool> g_enabled{enabled_by_environment()};
std::mutex g_mutex;
// (bits of c, passed the check). Training uses one or two constants; the
// bound only keeps a program that keeps changing its weights from growing it.
std::vector<std::pair<std::uint32_t, bool>> g_checked;
constexpr std::size_t kMaxRemembered = 64;

}  // namespace

float exact_reciprocal(float c) {
  if (!g_enabled.load(std::memory_order_relaxed)) return 0.0f;
  bool (*check)(float, float) = kernels().check_divisor;
  if (!check) return 0.0f;  // not AVX-512: its kernels ignore the reciprocal
  std::uint32_t bits;
  std::memcpy(&bits, &c, sizeof bits);
  std::lock_guard<std::mutex> lock(g_mutex);
  for (const auto& [b, ok] : g_checked)
    if (b == bits) return ok ? 1.0f / c : 0.0f;
  // The result does not depend on the level: FMA and division are correctly
  // rounded IEEE operations on every level that has them.
  const bool ok = check(c, 1.0f / c);
  if (g_checked.size() >= kMaxRemembered) g_checked.clear();
  g_checked.emplace_back(bits, ok);
  return ok ? 1.0f / c : 0.0f;
}

void set_exact_division(bool on) { g_enabled.store(on, std::memory_order_relaxed); }
bool exact_division() { return g_enabled.load(std::memory_order_relaxed); }
bool exact_division_active() { return exact_division() && kernels().check_divisor != nullptr; }

}  // namespace fusedopt
