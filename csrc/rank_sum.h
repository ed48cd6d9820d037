// The data-parallel average of fusedopt.distributed: each rank receives the
// same shard of every rank's gradient and reduces them itself, so the sum
// has one order, (((g0 + g1) + g2) + ...), whatever MPI's algorithms are.
#pragma once
#include <cstddef>

namespace fusedopt {

// out[i] = (((in[0][i] + in[1][i]) + ...) + in[k-1][i]) / divisor, every
// operation rounded to T; in[r] = first + r * stride (in elements). Threads
// over fixed chunks (each element's order never changes). Call without the GIL.
void rank_average_f32(const float* first, std::size_t stride, std::size_t k, std::size_t n, float divisor, float* out);
void rank_average_f64(const double* first, std::size_t stride, std::size_t k, std::size_t n, double divisor,
                      double* out);

// Copies `count` byte ranges (src[i] -> dst[i], bytes[i]), large ones
// spread over the thread team.
void copy_ranges(const void* const* src, void* const* dst, const std::size_t* bytes, std::size_t count);

}  // namespace fusedopt
