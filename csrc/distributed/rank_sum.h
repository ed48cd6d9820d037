// The data-parallel average of fusedopt.distributed: each rank receives the
// same shard of every rank's gradient and reduces them itself, so the sum
// has one order, (((g0 + g1) + g2) + ...), whatever MPI's algorithms are.
#pragma once
#include <cstddef>

namespace fusedopt {

// out[i] = (((rows[0][i] + rows[1][i]) + ...) + rows[k-1][i]) / divisor,
// every operation rounded to T. The rows are separate pointers, so a rank's
// own row can be read where it lies instead of being copied beside the
// received ones; out may be rows[0]. Threads over fixed chunks (each
// element's order never changes). Call without the GIL.
void rank_average_f32(const float* const* rows, std::size_t k, std::size_t n, float divisor, float* out);
void rank_average_f64(const double* const* rows, std::size_t k, std::size_t n, double divisor, double* out);

// Copies `count` byte ranges (src[i] -> dst[i], bytes[i]), large ones
// spread over the thread team.
void copy_ranges(const void* const* src, void* const* dst, const std::size_t* bytes, std::size_t count);

}  // namespace fusedopt
