#include "common/threads.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <stdexcept>
#include <cstdlib>
#include <string>
#include <thread>

#include <pthread.h>

#ifdef FUSEDOPT_OPENMP
#include <omp.h>
#endif

namespace fusedopt {

namespace {

// Written by set_num_threads while other threads run steps without the GIL.
std::atomic<int> g_threads{0};  // 0: not chosen yet

// libgomp's thread team does not survive fork(): a child that enters a parallel
// region after the parent had one waits forever for threads that do not exist.
// So a child forked after the first team runs every step on its calling thread.
std::atomic<bool> g_team_started{false};
std::atomic<bool> g_team_lost{false};
void after_fork_in_child() {
  if (g_team_started.load(std::memory_order_relaxed)) g_team_lost.store(true, std::memory_order_relaxed);
}
[[maybe_unused]] const bool g_atfork_registered = pthread_atfork(nullptr, nullptr, &after_fork_in_child) == 0;

// When the team does not help, steps run on the calling thread for a while.
// Each parallel step is judged when it ends by r = its time / the time one
// thread would have taken, estimated from the calling thread's own chunks
// (worked * chunks / chunks it ran): about 1/threads when the team helps,
// above 1 when a helper never came (asleep, or no core free) or was
// descheduled mid-chunk (another process; or another library's spinning
// threads, as OpenBLAS's for ~0.1 s after each matrix product in a paysage
// training loop). A running mean of r (weight 1/8, starting at 1/threads)
// above 1 sends the next kSerialSteps steps of up to 4x this size to the
// calling thread alone: one step at 4.5x the serial time does it at once,
// while the odd slow step of a noisy virtual machine does not. Then the team
// is tried again with a fresh mean.
constexpr int kSerialSteps = 64;
constexpr double kRatioWeight = 1.0 / 8;
// The judge's state: shared by every thread that steps, hence atomics (a
// judgement racing another only misjudges one step, never a result).
struct JudgeState {
  std::atomic<int> serial_steps{0};        // steps still to run serially
  std::atomic<std::size_t> bad_chunks{0};  // size of the step judged bad
  std::atomic<double> mean_ratio{-1.0};    // running mean of r; < 0: start from 1/threads
  void reset() {
    serial_steps.store(0, std::memory_order_relaxed);
    bad_chunks.store(0, std::memory_order_relaxed);
    mean_ratio.store(-1.0, std::memory_order_relaxed);
  }
};
JudgeState g_judge;

using Clock = std::chrono::steady_clock;
double seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

void judge_parallel_step(std::size_t chunks, std::size_t by_caller, int threads, double worked, double waited) {
  if (by_caller == 0 || !(worked > 0.0)) return;  // nothing to estimate the serial time from
  const double r = (worked + waited) / (worked * static_cast<double>(chunks) / static_cast<double>(by_caller));
  double mean = g_judge.mean_ratio.load(std::memory_order_relaxed);
  if (mean < 0.0) mean = 1.0 / threads;
  mean += kRatioWeight * (r - mean);
  if (mean <= 1.0) {
    g_judge.mean_ratio.store(mean, std::memory_order_relaxed);
    return;
  }
  g_judge.bad_chunks.store(chunks, std::memory_order_relaxed);
  g_judge.serial_steps.store(kSerialSteps, std::memory_order_relaxed);
  g_judge.mean_ratio.store(-1.0, std::memory_order_relaxed);  // the retry starts a new mean
}

// Runs body(c) for every chunk c, on the calling thread or on the OpenMP team.
// `adaptive`: give up the team for a while when it did not help (see above).
}  // namespace

void for_each_chunk_fn(std::size_t chunks, bool parallel, bool adaptive, ChunkFn fn, void* ctx) {
#ifdef FUSEDOPT_OPENMP
  bool team = parallel && get_num_threads() > 1;
  if (team && adaptive && g_judge.serial_steps.load(std::memory_order_relaxed) > 0 &&
      chunks <= 4 * g_judge.bad_chunks.load(std::memory_order_relaxed)) {
    g_judge.serial_steps.fetch_sub(1, std::memory_order_relaxed);
    team = false;
  }
  if (team) {
    const long long n = static_cast<long long>(chunks);
    const int threads = get_num_threads();
    g_team_started.store(true, std::memory_order_relaxed);
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
  return g_judge.serial_steps.load(std::memory_order_relaxed);
}

void reset_parallel_judge() { g_judge.reset(); }

int max_threads() {
  static const int bound = [] {
    const unsigned cpus = std::thread::hardware_concurrency();
    return std::max(kMinThreadBound, static_cast<int>(std::min(cpus, 1u << 20)) * kThreadsPerCpu);
  }();
  return bound;
}

namespace {
// The thread count of a fresh process, and why OMP_NUM_THREADS was not used
// (empty when it was, or is not set).
int default_threads(std::string& problem) {
#ifdef FUSEDOPT_OPENMP
  const int cpus = std::max(1, std::min(omp_get_num_procs(), max_threads()));  // the CPUs this process may use
  const char* env = std::getenv("OMP_NUM_THREADS");
  if (env == nullptr || *env == '\0') return std::min(omp_get_max_threads(), max_threads());
  // Its first entry sets the outer team (the rest are nested levels, unused here).
  const std::string first = std::string(env).substr(0, std::string(env).find(','));
  char* end = nullptr;
  errno = 0;
  const long long n = std::strtoll(first.c_str(), &end, 10);
  const bool number = !first.empty() && end && *end == '\0' && errno == 0;
  if (number && n >= 1 && n <= max_threads()) return static_cast<int>(n);
  problem = "OMP_NUM_THREADS=" + std::string(env) + " is not a thread count in 1.." + std::to_string(max_threads()) +
            " (4 per CPU at most, see fusedopt.set_num_threads); fusedopt uses " + std::to_string(cpus) +
            " threads, one per CPU this process may run on";
  return cpus;
#else
  (void)problem;
  return 1;
#endif
}
}  // namespace

std::string init_num_threads() {
  std::string problem;
  const int n = default_threads(problem);
  int unset = 0;
  g_threads.compare_exchange_strong(unset, n);
  return problem;
}

int get_num_threads() {
  if (g_team_lost.load(std::memory_order_relaxed)) return 1;
  int n = g_threads.load(std::memory_order_relaxed);
  if (n == 0) {
    init_num_threads();
    n = g_threads.load(std::memory_order_relaxed);
  }
  return n;
}

void set_num_threads(long long n) {
  if (n < 1) throw std::invalid_argument("set_num_threads needs n >= 1, got " + std::to_string(n));
  if (n > max_threads())
    throw std::invalid_argument("set_num_threads: n must be at most " + std::to_string(max_threads()) + ", got " +
                                std::to_string(n) + " (4 threads per CPU, at least 256: more threads only share the " +
                                "same cores, and each costs a stack and a place in every step's barrier)");
#ifdef FUSEDOPT_OPENMP
  g_threads.store(static_cast<int>(n), std::memory_order_relaxed);
#else
  g_threads.store(1, std::memory_order_relaxed);
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
