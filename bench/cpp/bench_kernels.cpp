// Google Benchmark of the element kernels alone: one segment, one thread, for
// each optimizer's in-place step and each SIMD level this CPU runs. Bytes per
// second count the arrays a step must read and write (see bench_common.h).
#include <benchmark/benchmark.h>

#include <string>
#include <vector>

#include "bench_common.h"
#include "common/dispatch.h"
#include "common/isa_tables.h"


namespace fusedopt_bench {
namespace {

struct Level {
  std::string name;
  KernelTable table;
};

// Every level compiled into this binary that the CPU can run.
std::vector<Level> runnable_levels() {
  std::vector<std::pair<std::string, void (*)(KernelTable&)>> compiled = {
#ifdef FUSEDOPT_BENCH_AVX512
      {"avx512", &avx512::fill_table},
#endif
#ifdef FUSEDOPT_BENCH_AVX2
      {"avx2", &avx2::fill_table},
#endif
      {"baseline", &baseline::fill_table},
  };
  const std::vector<std::string> supported = simd_levels_supported();
  std::vector<Level> out;
  for (auto& [name, fill] : compiled) {
    bool ok = false;
    for (const auto& s : supported) ok = ok || s == name;
    if (!ok) continue;
    Level l{name, {}};
    fill(l.table);
    out.push_back(l);
  }
  return out;
}

void kernel_bench(benchmark::State& state, KernelFn<float> fn, std::size_t bytes_per_element,
                  const KernelTable* exact_division) {
  const std::size_t n = static_cast<std::size_t>(state.range(0));
  StepArrays a(n);
  const StepScalars<float> c = default_scalars(exact_division);
  const Segment<float> s{a.g.get(), a.p.get(), a.m.get(), a.v.get(), nullptr, n, a.m.get(), a.v.get()};
  for (auto _ : state) {
    double sumsq = fn(s, c);
    benchmark::DoNotOptimize(sumsq);
    benchmark::ClobberMemory();
  }
  const auto elements = static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(n);
  state.SetItemsProcessed(elements);
  state.SetBytesProcessed(elements * static_cast<int64_t>(bytes_per_element));
}

}  // namespace
}  // namespace fusedopt_bench

int main(int argc, char** argv) {
  using namespace fusedopt_bench;
  static const std::vector<Level> levels = runnable_levels();  // outlives the benchmarks
  // 1K and 16K: L1/L2; 128K floats x 4 arrays = 2 MB: L2/L3; 1M: L3; 16M: memory.
  const std::vector<int64_t> sizes = {1 << 10, 1 << 14, 1 << 17, 1 << 20, 1 << 24};
  for (const auto& step : optimizer_steps())
    for (const auto& level : levels) {
      const KernelFn<float> fn = level.table.f32[step.mode];
      if (!fn) continue;  // not compiled for this mode: nothing to time
      // "/divider": the same kernel dividing by 1 - w and 1 - w2 with the
      // divider, to show what the FMA division (exact_division.h) gains.
      for (bool exact : {true, false}) {
        if (!exact && (!level.table.check_divisor || !(step.mode & UNBIASED))) continue;
        const std::string name = std::string("kernel/") + step.name + "/" + level.name + (exact ? "" : "/divider");
        auto* b = benchmark::RegisterBenchmark(name.c_str(), kernel_bench, fn, step.bytes_f32,
                                               exact ? &level.table : nullptr);
        for (int64_t n : sizes) b->Arg(n);
      }
    }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
