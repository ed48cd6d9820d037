#include "optim/adafactor.h"

#include <algorithm>
#include <cmath>

#include <type_traits>

#include "common/level_tables.h"
#include "common/multi_tensor.h"
#include "common/threads.h"
#include "optim/adafactor_passes.h"
#include "optim/flat_sum.h"
#include "optim/torch_lerp.h"

namespace fusedopt {
namespace baseline { void fill_adafactor_table(AdafactorTable&); }
namespace avx2 { void fill_adafactor_table(AdafactorTable&); }
namespace avx512 { void fill_adafactor_table(AdafactorTable&); }

namespace adafactor {

std::size_t block_rows(std::size_t cols) {
  return std::max<std::size_t>(64, (kChunk + cols - 1) / std::max<std::size_t>(cols, 1));
}

namespace {

// What the passes share about one leaf; the rows are a factored leaf's
// batch * rows rows, or an unfactored leaf's runs of kChunk elements.
struct Work {
  std::size_t row_base = 0, nrows = 0, blocks = 1, part_base = 0, batch_base = 0;
  double w = 0, alpha = 0, coef = 0;
};

struct Task {
  std::size_t leaf, first, last, block;  // rows [first, last) of the leaf; its block of column sums
};

struct Sums {
  std::vector<double> rowp, rowu, part, rden;  // per row: sum p*p, sum u*u; column partials; clamped row means
};

// The elements of row r: [begin, end) in the leaf.
inline std::size_t row_begin(const Leaf& L, std::size_t r) { return L.factored ? r * L.cols : r * kChunk; }
inline std::size_t row_end(const Leaf& L, std::size_t r) {
  return L.factored ? (r + 1) * L.cols : std::min(L.n, (r + 1) * kChunk);
}

// The passes of the SIMD level in use.
template <class T>
const AdafactorPasses<T>& passes() {
  static const LevelTables<AdafactorTable> tables(baseline::fill_adafactor_table,
                                                  FUSEDOPT_IF_AVX2(avx2::fill_adafactor_table),
                                                  FUSEDOPT_IF_AVX512(avx512::fill_adafactor_table));
  if constexpr (std::is_same_v<T, float>) return tables.current().f32;
  else return tables.current().f64;
}

// Pass 1: sum p*p per row; the new row_var (and the block's column partials),
// or the new variance.
template <class T>
void first_pass(const Leaf& L, const Work& W, const Task& t, Sums& s) {
  const AdafactorPasses<T>& k = passes<T>();
  const T* p = static_cast<const T*>(L.param);
  const T* g = static_cast<const T*>(L.grad);
  const T w = static_cast<T>(W.w);
  if (L.factored) {
    double* part = s.part.data() + W.part_base + t.block * L.cols;
    std::fill(part, part + L.cols, 0.0);
    const T* old = static_cast<const T*>(L.old_row);
    T* row = static_cast<T*>(L.new_row);
    for (std::size_t r = t.first; r < t.last; ++r) {
      const double sum = k.row_first(p + r * L.cols, g + r * L.cols, L.cols, part, &s.rowp[W.row_base + r]);
      row[r] = torch_lerp(old ? old[r] : T(0), static_cast<T>(sum / static_cast<double>(L.cols)), w);
    }
    return;
  }
  const T* old = static_cast<const T*>(L.old_var);
  T* var = static_cast<T*>(L.new_var);
  for (std::size_t r = t.first; r < t.last; ++r)
    s.rowp[W.row_base + r] = k.var_first(p, g, old, var, row_begin(L, r), row_end(L, r), w);
}

// Between the passes, per leaf: alpha from the parameter's RMS; the new
// col_var and each matrix's clamped row_var mean.
template <class T>
void after_first(const Leaf& L, Work& W, Sums& s) {
  double psum = 0.0;
  for (std::size_t r = 0; r < W.nrows; ++r) psum += s.rowp[W.row_base + r];
  const double rms = static_cast<double>(static_cast<T>(std::sqrt(psum))) / std::pow(static_cast<double>(L.n), 0.5);
  const double rho_cap = 1.0 / std::pow(L.step, 0.5);
  const double rho = rho_cap < L.lr ? rho_cap : L.lr;
  W.alpha = (rms > L.eps2 ? rms : L.eps2) * rho;
  if (!L.factored) return;
  const T w = static_cast<T>(W.w), eps1 = static_cast<T>(L.eps1);
  const T* old_col = static_cast<const T*>(L.old_col);
  T* col = static_cast<T*>(L.new_col);
  const T* row = static_cast<const T*>(L.new_row);
  std::vector<double> acc(L.cols);
  for (std::size_t b = 0; b < L.batch; ++b) {
    std::fill(acc.begin(), acc.end(), 0.0);
    for (std::size_t k = 0; k < W.blocks; ++k) {
      const double* part = s.part.data() + W.part_base + (b * W.blocks + k) * L.cols;
      for (std::size_t j = 0; j < L.cols; ++j) acc[j] += part[j];
    }
    for (std::size_t j = 0; j < L.cols; ++j) {
      const std::size_t at = b * L.cols + j;
      col[at] = torch_lerp(old_col ? old_col[at] : T(0), static_cast<T>(acc[j] / static_cast<double>(L.rows)), w);
    }
    double rsum = 0.0;
    for (std::size_t i = 0; i < L.rows; ++i) rsum += static_cast<double>(row[b * L.rows + i]);
    const T mean = static_cast<T>(rsum / static_cast<double>(L.rows));
    s.rden[W.batch_base + b] = static_cast<double>(mean < eps1 ? eps1 : mean);
  }
}

// What the update of row r reads (torch's order: row_var * col_var / clamped
// mean, clamped below at eps1**2, rsqrt, times g): the factored row's values
// and columns, or the variance.
template <class T>
struct RowUpdate {
  const T* g;
  const T* c = nullptr;
  T ri = 0, den = 0, floor;
  std::size_t b, e;
};

template <class T>
RowUpdate<T> row_update(const Leaf& L, const Work& W, const Sums& s, std::size_t r) {
  RowUpdate<T> u{static_cast<const T*>(L.grad), nullptr, 0, 0, static_cast<T>(L.eps1 * L.eps1), row_begin(L, r),
                 row_end(L, r)};
  if (L.factored) {
    const std::size_t m = r / L.rows;
    u.g += u.b;
    u.ri = static_cast<const T*>(L.new_row)[r];
    u.den = static_cast<T>(s.rden[W.batch_base + m]);
    u.c = static_cast<const T*>(L.new_col) + m * L.cols;
  }
  return u;
}

// Pass 2: sum u*u per row, in the lane order.
template <class T>
void second_pass(const Leaf& L, const Work& W, const Task& t, Sums& s) {
  const AdafactorPasses<T>& k = passes<T>();
  const T* var = static_cast<const T*>(L.new_var);
  for (std::size_t r = t.first; r < t.last; ++r) {
    const RowUpdate<T> u = row_update<T>(L, W, s, r);
    s.rowu[W.row_base + r] = L.factored ? k.row_update_sq(u.g, u.c, u.ri, u.den, u.floor, L.maximize, L.cols)
                                        : k.var_update_sq(u.g, var, u.floor, L.maximize, u.b, u.e);
  }
}

template <class T>
void after_second(const Leaf& L, Work& W, const Sums& s) {
  double usum = 0.0;
  for (std::size_t r = 0; r < W.nrows; ++r) usum += s.rowu[W.row_base + r];
  const double ratio =
      static_cast<double>(static_cast<T>(std::sqrt(usum))) / (std::pow(static_cast<double>(L.n), 0.5) * L.d);
  W.coef = -W.alpha / (ratio > 1.0 ? ratio : 1.0);
}

// Pass 3: p = p * (1 - lr * weight_decay) (when weight_decay != 0); p = p + coef * u.
template <class T>
void third_pass(const Leaf& L, const Work& W, const Task& t, const Sums& s) {
  const AdafactorPasses<T>& k = passes<T>();
  T* p = static_cast<T*>(L.param);
  const T* var = static_cast<const T*>(L.new_var);
  const T coef = static_cast<T>(W.coef), decay = static_cast<T>(1.0 - L.lr * L.weight_decay);
  const bool decays = L.weight_decay != 0.0;
  for (std::size_t r = t.first; r < t.last; ++r) {
    const RowUpdate<T> u = row_update<T>(L, W, s, r);
    if (L.factored)
      k.row_apply(p + u.b, u.g, u.c, u.ri, u.den, u.floor, L.maximize, coef, decay, decays, L.cols);
    else
      k.var_apply(p, u.g, var, u.floor, L.maximize, coef, decay, decays, u.b, u.e);
  }
}

template <class F>
void by_dtype(const Leaf& L, F&& f) {
  if (L.dtype == F64) f(double{});
  else f(float{});
}

}  // namespace

void step(const std::vector<Leaf>& leaves) {
  std::vector<Work> work(leaves.size());
  std::vector<Task> tasks;
  std::size_t rows_total = 0, part_total = 0, batch_total = 0, n_total = 0;
  for (std::size_t l = 0; l < leaves.size(); ++l) {
    const Leaf& L = leaves[l];
    Work& W = work[l];
    W.row_base = rows_total;
    W.part_base = part_total;
    W.batch_base = batch_total;
    W.w = std::pow(L.step, L.beta2_decay);
    n_total += L.n;
    if (L.factored) {
      const std::size_t per = block_rows(L.cols);
      W.nrows = L.batch * L.rows;
      W.blocks = (L.rows + per - 1) / per;
      for (std::size_t b = 0; b < L.batch; ++b)
        for (std::size_t k = 0; k < W.blocks; ++k)
          tasks.push_back({l, b * L.rows + k * per, b * L.rows + std::min(L.rows, (k + 1) * per), b * W.blocks + k});
      part_total += L.batch * W.blocks * L.cols;
      batch_total += L.batch;
    } else {
      W.nrows = (L.n + kChunk - 1) / kChunk;
      for (std::size_t r = 0; r < W.nrows; ++r) tasks.push_back({l, r, r + 1, 0});
    }
    rows_total += W.nrows;
  }
  Sums s;
  s.rowp.resize(rows_total);
  s.rowu.resize(rows_total);
  s.part.resize(part_total);
  s.rden.resize(batch_total);
  const bool parallel = n_total >= kSerialBelow;
  auto run = [&](auto pass) {
    auto body = [&](std::size_t c) { pass(tasks[c]); };
    for_each_chunk(tasks.size(), parallel, true, body);
  };
  run([&](const Task& t) {
    by_dtype(leaves[t.leaf], [&](auto z) { first_pass<decltype(z)>(leaves[t.leaf], work[t.leaf], t, s); });
  });
  for (std::size_t l = 0; l < leaves.size(); ++l)
    by_dtype(leaves[l], [&](auto z) { after_first<decltype(z)>(leaves[l], work[l], s); });
  run([&](const Task& t) {
    by_dtype(leaves[t.leaf], [&](auto z) { second_pass<decltype(z)>(leaves[t.leaf], work[t.leaf], t, s); });
  });
  for (std::size_t l = 0; l < leaves.size(); ++l)
    by_dtype(leaves[l], [&](auto z) { after_second<decltype(z)>(leaves[l], work[l], s); });
  run([&](const Task& t) {
    by_dtype(leaves[t.leaf], [&](auto z) { third_pass<decltype(z)>(leaves[t.leaf], work[t.leaf], t, s); });
  });
}

}  // namespace adafactor
}  // namespace fusedopt
