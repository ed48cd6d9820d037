// Runs one fused step over every leaf of a tree: the total element range is
// cut into fixed chunks that threads share; per-leaf sums come back in a
// fixed order, so results are the same bits for every thread count.
#pragma once
#include <cstddef>
#include <vector>
#include "common/dtype.h"
#include "paysage/kernel_modes.h"
#include "common/threads.h"

namespace fusedopt {

// Elements per chunk: a multiple of 16 floats, so chunk starts inside a leaf
// stay on 64-byte boundaries of its (64-byte aligned) arena.
constexpr std::size_t kChunk = 2048;
// Where each leaf's chunks lie; depends only on the leaves' sizes, so it is
// computed once per tree structure.
class ChunkLayout {
 public:
  struct Piece {
    std::size_t leaf, begin, end;  // element range inside the leaf
  };
  explicit ChunkLayout(const std::vector<std::size_t>& leaf_sizes);
  std::size_t num_chunks() const { return chunk_first_.size() - 1; }
  std::size_t total() const { return total_; }
  const std::vector<Piece>& pieces() const { return pieces_; }
  // Pieces of chunk c are pieces()[chunk_first(c) .. chunk_first(c+1)).
  std::size_t chunk_first(std::size_t c) const { return chunk_first_[c]; }

 private:
  std::vector<Piece> pieces_;
  std::vector<std::size_t> chunk_first_;
  std::size_t total_ = 0;
};

// Pointers of one leaf for this step; null where the mode does not use them.
// m_out, v_out: where the new moments go (null: over m, v). With rows, the
// gradient is not read from g: it is the average of n_rows rows (one per rank,
// each pointing at this leaf's first element), computed chunk by chunk into a
// buffer that stays in the core's cache (fusedopt.distributed).
struct LeafData {
  Dtype dtype;
  const void* g;
  void* p;
  void* m;
  void* v;
  void* out;
  void* m_out = nullptr;
  void* v_out = nullptr;
  const void* const* rows = nullptr;
  std::size_t n_rows = 0;
};

// Runs visit(k, piece) for every piece k of the layout, chunk by chunk on the
// thread team (a layout below kSerialBelow on the calling thread); `adaptive`
// as for for_each_chunk. Every kernel family steps and reduces through it.
template <class Visit>
void for_each_piece(const ChunkLayout& layout, bool adaptive, Visit&& visit) {
  auto body = [&](std::size_t c) {
    for (std::size_t k = layout.chunk_first(c); k < layout.chunk_first(c + 1); ++k) visit(k, layout.pieces()[k]);
  };
  for_each_chunk(layout.num_chunks(), layout.total() >= kSerialBelow, adaptive, body);
}

// per_leaf[l] = the sum of per_piece over leaf l's pieces, added in piece
// order: the same bits whichever thread computed which piece.
inline void sum_by_leaf(const ChunkLayout& layout, const std::vector<double>& per_piece, double* per_leaf,
                        std::size_t num_leaves) {
  for (std::size_t l = 0; l < num_leaves; ++l) per_leaf[l] = 0.0;
  const auto& pieces = layout.pieces();
  for (std::size_t k = 0; k < pieces.size(); ++k) per_leaf[pieces[k].leaf] += per_piece[k];
}

struct Hyper {
  double lr, w, w2;
  double rank_divisor = 1.0;  // what leaves with rows divide their row sum by
};

// Runs `mode` over all leaves; writes sum(d*d) of each leaf into sumsq (when
// not null and the mode scales by lr). Call without the GIL.
void run_step(unsigned mode, const ChunkLayout& layout, const std::vector<LeafData>& leaves,
              const Hyper& hyper, double* sumsq);

// Seconds for one pass of the bandwidth probe over n floats per array, with
// the same chunking and threads as run_step.
double run_probe(float* g, float* p, float* m, float* v, std::size_t n);

}  // namespace fusedopt
