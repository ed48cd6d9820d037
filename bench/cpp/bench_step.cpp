// Google Benchmark of a whole fused step as the extension runs it: the tree's
// chunk layout, the OpenMP threads and the dispatched kernel table (run_step),
// for one large leaf and for many-leaf trees, next to the bandwidth probe
// (ADAM's traffic: read 4 float32 arrays, write 3) at the same sizes.
#include <benchmark/benchmark.h>

#include <string>
#include <vector>

#include "bench_common.h"
#include "common/dispatch.h"
#include "common/multi_tensor.h"
#include "common/threads.h"

namespace fusedopt_bench {
namespace {

// A tree of `leaves` float32 leaves of `size` elements each, with its layout.
struct Tree {
  std::vector<StepArrays> arrays;
  std::vector<LeafData> leaves;
  ChunkLayout layout;
  Tree(std::size_t count, std::size_t size)
      : layout(std::vector<std::size_t>(count, size)) {
    arrays.reserve(count);
    for (std::size_t i = 0; i < count; ++i) {
      arrays.emplace_back(size);
      auto& a = arrays.back();
      leaves.push_back({F32, a.g.get(), a.p.get(), a.m.get(), a.v.get(), nullptr});
    }
  }
};

// Arguments: leaves, elements per leaf, threads. The level is fixed per benchmark.
void step_bench(benchmark::State& state, std::string level, unsigned mode, std::size_t bytes_per_element) {
  set_simd_level(level);
  if (!kernels().f32[mode]) {
    state.SkipWithError("this step mode is not compiled");
    return;
  }
  set_num_threads(static_cast<int>(state.range(2)));
  Tree tree(static_cast<std::size_t>(state.range(0)), static_cast<std::size_t>(state.range(1)));
  std::vector<double> sumsq(tree.leaves.size());
  const Hyper hyper{0.001, 0.9, 0.999};
  for (auto _ : state) {
    run_step(mode, tree.layout, tree.leaves, hyper, sumsq.data());
    benchmark::ClobberMemory();
  }
  const auto elements = static_cast<int64_t>(state.iterations()) * state.range(0) * state.range(1);
  state.SetItemsProcessed(elements);
  state.SetBytesProcessed(elements * static_cast<int64_t>(bytes_per_element));
}

// Arguments: elements, threads. Times itself (run_probe returns seconds).
void probe_bench(benchmark::State& state) {
  set_num_threads(static_cast<int>(state.range(1)));
  const std::size_t n = static_cast<std::size_t>(state.range(0));
  StepArrays a(n);
  for (auto _ : state) state.SetIterationTime(run_probe(a.g.get(), a.p.get(), a.m.get(), a.v.get(), n));
  const auto elements = static_cast<int64_t>(state.iterations()) * state.range(0);
  state.SetItemsProcessed(elements);
  state.SetBytesProcessed(elements * 28);
}

}  // namespace
}  // namespace fusedopt_bench

int main(int argc, char** argv) {
  using namespace fusedopt_bench;
  // {leaves, elements per leaf}: the sizes of bench/bench_step.py (1e7 and
  // 6.4e7 left to it: the C++ one stays quick), and its trees.
  const std::vector<std::pair<int64_t, int64_t>> shapes = {
      {1, 1000}, {1, 100000}, {1, 1000000}, {1, 16 << 20}, {200, 4096}, {1000, 100}};
  const std::vector<int64_t> threads = {1, 2};
  for (const auto& step : optimizer_steps())
    for (const auto& level : simd_levels_supported()) {
      auto* b = benchmark::RegisterBenchmark((std::string("run_step/") + step.name + "/" + level).c_str(),
                                             step_bench, level, step.mode, step.bytes_f32);
      b->ArgNames({"leaves", "size", "threads"})->UseRealTime();
      for (const auto& [count, size] : shapes)
        for (int64_t t : threads) b->Args({count, size, t});
    }
  auto* p = benchmark::RegisterBenchmark("probe", probe_bench);
  p->ArgNames({"size", "threads"})->UseManualTime();
  for (int64_t n : {int64_t{1000}, int64_t{100000}, int64_t{1000000}, int64_t{16 << 20}})
    for (int64_t t : threads) p->Args({n, t});
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
