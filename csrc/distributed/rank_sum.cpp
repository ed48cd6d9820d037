#include "distributed/rank_sum.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "common/dispatch.h"
#include "common/threads.h"

namespace fusedopt {

namespace {

// Elements per chunk of the average: big enough that a chunk's k input rows
// stream from memory, small enough to spread a 1e5 shard over two threads.
constexpr std::size_t kAverageChunk = 8192;

template <class T>
void rank_average(AverageFn<T> average_rows, const T* const* rows, std::size_t k, std::size_t n, T divisor, T* out) {
  const std::size_t chunks = (n + kAverageChunk - 1) / kAverageChunk;
  auto body = [&](std::size_t c) {
    const std::size_t lo = c * kAverageChunk, hi = std::min(n, lo + kAverageChunk);
    average_rows(rows, k, lo, hi - lo, divisor, out + lo);
  };
  for_each_chunk(chunks, n * k >= kSerialBelow, false, body);
}

// Copies of at least this many bytes are split into pieces threads share.
constexpr std::size_t kCopyPiece = std::size_t(1) << 18;

}  // namespace

void rank_average_f32(const float* const* rows, std::size_t k, std::size_t n, float divisor, float* out) {
  rank_average(kernels().average32, rows, k, n, divisor, out);
}

void rank_average_f64(const double* const* rows, std::size_t k, std::size_t n, double divisor, double* out) {
  rank_average(kernels().average64, rows, k, n, divisor, out);
}

void copy_ranges(const void* const* src, void* const* dst, const std::size_t* bytes, std::size_t count) {
  struct Job {
    const char* s;
    char* d;
    std::size_t n;
  };
  std::vector<Job> jobs;
  std::size_t total = 0;
  for (std::size_t i = 0; i < count; ++i) {
    const char* s = static_cast<const char*>(src[i]);
    char* d = static_cast<char*>(dst[i]);
    total += bytes[i];
    for (std::size_t off = 0; off < bytes[i]; off += kCopyPiece)
      jobs.push_back({s + off, d + off, std::min(kCopyPiece, bytes[i] - off)});
  }
  auto body = [&](std::size_t j) { std::memcpy(jobs[j].d, jobs[j].s, jobs[j].n); };
  for_each_chunk(jobs.size(), total >= 4 * kCopyPiece, false, body);
}

}  // namespace fusedopt
