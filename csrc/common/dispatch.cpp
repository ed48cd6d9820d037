#include "common/dispatch.h"
#include "common/isa_tables.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

namespace fusedopt {

namespace {

struct Level {
  const char* name;
  SimdLevel id;
  void (*fill)(KernelTable&);
  void (*fill_optim)(OptimTable&);
  bool (*cpu_has)();
};

bool always() { return true; }
#if defined(__x86_64__) || defined(__i386__)
bool has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
bool has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("fma");
}
#endif

// Best first.
const std::vector<Level>& levels() {
  static const std::vector<Level> all = {
#ifdef FUSEDOPT_HAVE_AVX512
      {"avx512", SimdLevel::AVX512, &avx512::fill_table, &avx512::fill_optim_table, &has_avx512},
#endif
#ifdef FUSEDOPT_HAVE_AVX2
      {"avx2", SimdLevel::AVX2, &avx2::fill_table, &avx2::fill_optim_table, &has_avx2},
#endif
      {"baseline", SimdLevel::BASELINE, &baseline::fill_table, &baseline::fill_optim_table, &always},
  };
  return all;
}

struct Tables {
  std::vector<KernelTable> by_level;  // same order as levels()
  std::vector<OptimTable> optim_by_level;
  // Switched by set_simd_level while other threads may be running steps.
  std::atomic<std::size_t> current{0};
  Tables() : by_level(levels().size()), optim_by_level(levels().size()) {
    for (std::size_t i = 0; i < levels().size(); ++i) {
      levels()[i].fill(by_level[i]);
      levels()[i].fill_optim(optim_by_level[i]);
    }
    std::size_t best = levels().size() - 1;
    for (std::size_t i = 0; i < levels().size(); ++i)
      if (levels()[i].cpu_has()) { best = i; break; }
    std::size_t chosen = best;
    // The environment may only lower the level (a higher one could crash).
    if (const char* forced = std::getenv("FUSEDOPT_SIMD")) {
      const std::string want(forced);
      bool known = false;
      for (std::size_t i = 0; i < levels().size(); ++i)
        if (want == levels()[i].name) {
          known = true;
          if (i >= best) chosen = i;
        }
      if (!known && want != "avx512" && want != "avx2")
        throw std::invalid_argument("FUSEDOPT_SIMD must be avx512, avx2 or baseline, not '" + want + "'");
    }
    current.store(chosen, std::memory_order_release);
  }
};

Tables& tables() {
  static Tables t;
  return t;
}

}  // namespace

const KernelTable& kernels() { return tables().by_level[tables().current.load(std::memory_order_acquire)]; }

const OptimTable& optim_kernels() {
  return tables().optim_by_level[tables().current.load(std::memory_order_acquire)];
}

std::string simd_level() { return levels()[tables().current.load(std::memory_order_acquire)].name; }

SimdLevel simd_level_id() { return levels()[tables().current.load(std::memory_order_acquire)].id; }

std::vector<std::string> simd_levels_compiled() {
  std::vector<std::string> out;
  for (const auto& l : levels()) out.emplace_back(l.name);
  return out;
}

std::vector<std::string> simd_levels_supported() {
  std::vector<std::string> out;
  for (const auto& l : levels())
    if (l.cpu_has()) out.emplace_back(l.name);
  return out;
}

void set_simd_level(const std::string& level) {
  for (std::size_t i = 0; i < levels().size(); ++i)
    if (level == levels()[i].name) {
      if (!levels()[i].cpu_has()) throw std::invalid_argument("this CPU cannot run SIMD level '" + level + "'");
      tables().current.store(i, std::memory_order_release);
      return;
    }
  throw std::invalid_argument("SIMD level '" + level + "' is not compiled into this build");
}

}  // namespace fusedopt
