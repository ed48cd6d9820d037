// The thread team that runs a step's chunks, and the rule that keeps a step
// on the calling thread when the team does not help. Kernels of every family
// go through for_each_chunk, so threads are set up and judged in one place.
#pragma once
#include <cstddef>
#include <string>

namespace fusedopt {

// Below this many elements a step runs on the calling thread only.
constexpr std::size_t kSerialBelow = 32768;

using ChunkFn = void (*)(void* ctx, std::size_t chunk);

// Runs fn(ctx, c) for every chunk c in [0, chunks), on the calling thread or
// on the OpenMP team (`parallel`); `adaptive`: judge the step and give up the
// team for a while when it did not help. Which thread runs a chunk must not
// change any result: callers keep per-chunk results and combine them in order.
void for_each_chunk_fn(std::size_t chunks, bool parallel, bool adaptive, ChunkFn fn, void* ctx);

template <class Body>
void for_each_chunk(std::size_t chunks, bool parallel, bool adaptive, Body& body) {
  for_each_chunk_fn(chunks, parallel, adaptive,
                    [](void* ctx, std::size_t c) { (*static_cast<Body*>(ctx))(c); }, &body);
}

// Threads a parallel step uses. 1 in a process forked after this one had run
// a thread team (libgomp cannot start another one there).
int get_num_threads();
// Throws std::invalid_argument outside 1..max_threads().
void set_num_threads(long long n);
bool have_openmp();
// The largest thread count set_num_threads accepts: kThreadsPerCpu per CPU,
// at least kMinThreadBound.
constexpr int kThreadsPerCpu = 4, kMinThreadBound = 256;
int max_threads();
// Chooses the thread count of a fresh process from OMP_NUM_THREADS (else the
// CPUs); returns why OMP_NUM_THREADS was not used (empty when it was), for a
// warning. Call once, with the GIL, before any step.
std::string init_num_threads();

// For tests: judge a parallel step of `chunks` chunks of which the calling
// thread ran `by_caller`, working `worked` seconds and then waiting `waited`;
// returns the serial steps now ahead. reset_parallel_judge() forgets every
// judgement (the state of a fresh process).
int judge_parallel_step_for_test(std::size_t chunks, std::size_t by_caller, int threads, double worked, double waited);
void reset_parallel_judge();

}  // namespace fusedopt
