// Adafactor's step (torch.optim.Adafactor, torch 2.13, its single-tensor
// implementation) over every parameter of a tree in one call: the factored
// second moment (row_var, col_var over the last two dimensions) for
// parameters of 2 or more dimensions, the full one (variance) for the rest.
//
// Every sum is in double and in a fixed order that no thread count or SIMD
// level changes (docs/optim.md, "Adafactor"):
// - a row (the last dimension of a factored leaf; a run of kChunk elements of
//   an unfactored one) is summed in the 16-lane order of flat_sum.h;
// - a leaf's sum is its rows' sums added in row order;
// - a column sum adds the rows of a block of block_rows(cols) rows in row
//   order, then the blocks' sums in block order.
// The threads run blocks of rows; each block's results land in its own slots.
#pragma once
#include <cstddef>
#include <vector>

#include "common/dtype.h"

namespace fusedopt {
namespace adafactor {

struct Leaf {
  Dtype dtype;
  void* param;
  const void* grad;
  // Old state (nullptr: zeros, torch's start) and the new state written by
  // the step (the caller commits it): row_var/col_var when factored, else variance.
  const void* old_row = nullptr;
  const void* old_col = nullptr;
  const void* old_var = nullptr;
  void* new_row = nullptr;
  void* new_col = nullptr;
  void* new_var = nullptr;
  bool factored = false;
  std::size_t batch = 1, rows = 1, cols = 1;  // factored: batch x rows x cols
  std::size_t n = 0;                          // elements
  // The step count after this step, and the group's hyper-parameters (eps1 resolved).
  double step = 1, lr = 0, beta2_decay = 0, eps1 = 0, eps2 = 0, d = 1, weight_decay = 0;
  bool maximize = false;
};

// Rows per block of the column sums: at least 64 (the partial sums take at
// most an eighth of the leaf's elements) and at least a chunk's worth.
std::size_t block_rows(std::size_t cols);

// One step of every leaf; parameters written in place, new state written.
void step(const std::vector<Leaf>& leaves);

}  // namespace adafactor
}  // namespace fusedopt
