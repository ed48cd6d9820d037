#include "threads.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <stdexcept>
#include <string>

#ifdef FUSEDOPT_OPENMP
#include <omp.h>
#endif

namespace fusedopt {

namespace {

int g_threads = 0;  // 0: not chosen yet

// When the team does not help, steps run on the calling thread for a while.
// Each parallel step is judged when it ends by r = its time / the time one
// thread would have taken, estimated from the calling thread's own chunks
// (worked * chunks / chunks it ran): about 1/threads when the team helps,
// above 1 when a helper never came (asleep, or no core free) or was
// descheduled mid-chunk (another process; or another library's spinning
// threads, as OpenBLAS's for ~0.1 s after each matrix product in a paysage
// training loop). A running mean of r (weight 1/8, starting at 1/threads)
// above 1 sends the next `window` steps of up to 4x this size to the calling
// thread alone: one step at 4.5x the serial time does it at once, while the
// odd slow step of a noisy virtual machine does not (that took 64 serial
// steps per stall before, ~45% of the steps of a 1e6 loop on a noisy day).
// The window doubles, up to 4096 steps, while the retries keep failing, and
// is back at 64 after a parallel step that keeps the mean at or below 1.
constexpr int kFirstSerialWindow = 64, kLastSerialWindow = 4096;
constexpr double kRatioWeight = 1.0 / 8;
std::atomic<int> g_serial_steps{0};
std::atomic<int> g_serial_window{kFirstSerialWindow};
std::atomic<std::size_t> g_bad_chunks{0};
std::atomic<double> g_mean_ratio{-1.0};  // < 0: start from 1/threads

using Clock = std::chrono::steady_clock;
double seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

void judge_parallel_step(std::size_t chunks, std::size_t by_caller, int threads, double worked, double waited) {
  if (by_caller == 0 || !(worked > 0.0)) return;  // nothing to estimate the serial time from
  const double r = (worked + waited) / (worked * static_cast<double>(chunks) / static_cast<double>(by_caller));
  double mean = g_mean_ratio.load(std::memory_order_relaxed);
  if (mean < 0.0) mean = 1.0 / threads;
  mean += kRatioWeight * (r - mean);
  if (mean <= 1.0) {
    g_mean_ratio.store(mean, std::memory_order_relaxed);
    g_serial_window.store(kFirstSerialWindow, std::memory_order_relaxed);
    return;
  }
  const int window = g_serial_window.load(std::memory_order_relaxed);
  g_bad_chunks.store(chunks, std::memory_order_relaxed);
  g_serial_steps.store(window, std::memory_order_relaxed);
  g_serial_window.store(std::min(2 * window, kLastSerialWindow), std::memory_order_relaxed);
  g_mean_ratio.store(-1.0, std::memory_order_relaxed);  // the retry starts a new mean
}

// Runs body(c) for every chunk c, on the calling thread or on the OpenMP team.
// `adaptive`: give up the team for a while when it did not help (see above).
}  // namespace

void for_each_chunk_fn(std::size_t chunks, bool parallel, bool adaptive, ChunkFn fn, void* ctx) {
#ifdef FUSEDOPT_OPENMP
  bool team = parallel && get_num_threads() > 1;
  if (team && adaptive && g_serial_steps.load(std::memory_order_relaxed) > 0 &&
      chunks <= 4 * g_bad_chunks.load(std::memory_order_relaxed)) {
    g_serial_steps.fetch_sub(1, std::memory_order_relaxed);
    team = false;
  }
  if (team) {
    const long long n = static_cast<long long>(chunks);
    const int threads = get_num_threads();
    std::atomic<long long> by_helpers{0};
    const Clock::time_point start = Clock::now();
    Clock::time_point caller_done = start;
    // Guided: big runs of chunks first (long streams for the prefetchers on
    // large steps), smaller ones at the end, so a thread that starts late
    // (woken from sleep, or descheduled on a busy machine) takes fewer chunks
    // instead of holding the step back. Results do not depend on which thread
    // runs a chunk: sums go by piece.
#pragma omp parallel num_threads(threads)
    {
      long long mine = 0;
#pragma omp for schedule(guided, 4) nowait
      for (long long c = 0; c < n; ++c) {
        fn(ctx, static_cast<std::size_t>(c));
        ++mine;
      }
      if (omp_get_thread_num() != 0)
        by_helpers.fetch_add(mine, std::memory_order_relaxed);
      else
        caller_done = Clock::now();
    }
    if (adaptive && n >= 8)
      judge_parallel_step(chunks, chunks - static_cast<std::size_t>(by_helpers.load()), threads,
                          seconds(start, caller_done), seconds(caller_done, Clock::now()));
    return;
  }
#else
  (void)parallel;
  (void)adaptive;
#endif
  for (std::size_t c = 0; c < chunks; ++c) fn(ctx, c);
}


int judge_parallel_step_for_test(std::size_t chunks, std::size_t by_caller, int threads, double worked,
                                 double waited) {
  judge_parallel_step(chunks, by_caller, threads, worked, waited);
  return g_serial_steps.load(std::memory_order_relaxed);
}

void reset_parallel_judge() {
  g_serial_steps.store(0, std::memory_order_relaxed);
  g_serial_window.store(kFirstSerialWindow, std::memory_order_relaxed);
  g_bad_chunks.store(0, std::memory_order_relaxed);
  g_mean_ratio.store(-1.0, std::memory_order_relaxed);
}

int get_num_threads() {
  if (g_threads == 0) {
#ifdef FUSEDOPT_OPENMP
    g_threads = omp_get_max_threads();  // honours OMP_NUM_THREADS, else the cores
#else
    g_threads = 1;
#endif
  }
  return g_threads;
}

void set_num_threads(int n) {
  if (n < 1) throw std::invalid_argument("set_num_threads needs n >= 1, got " + std::to_string(n));
#ifdef FUSEDOPT_OPENMP
  g_threads = n;
#else
  g_threads = 1;
#endif
}

bool have_openmp() {
#ifdef FUSEDOPT_OPENMP
  return true;
#else
  return false;
#endif
}

}  // namespace fusedopt
