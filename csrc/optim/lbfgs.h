// LBFGS's vector work over one flat vector of n elements (all parameters end
// to end): dot products, axpys, the two-loop recursion and the copies between
// the flat vector and the parameter leaves.
//
// Every sum is taken in one fixed order: the vector is cut into kChunk-element
// chunks; inside a chunk, element i adds its double product to lane i mod 16;
// a chunk's total is its 16 lanes added in lane order, and the total is the
// chunks' totals added in chunk order from 0.0. Chunks run on the thread team,
// but which thread took a chunk does not change any bit. A chunk's work is
// compiled once per SIMD level (optim/lbfgs_isa.cpp, the level in use runs):
// the same source, vectorised across the 16 lanes, with no contracted
// operation, so the bits do not depend on FUSEDOPT_SIMD.
#pragma once
#include <cstddef>
#include <utility>
#include <vector>

namespace fusedopt {
namespace lbfgs {

template <class T>
double dot(const T* a, const T* b, std::size_t n);
template <class T>
double abs_sum(const T* a, std::size_t n);
// max |a_i|; the quiet NaN if any element is NaN (torch's max gives a NaN); 0 for n == 0.
template <class T>
T abs_max(const T* a, std::size_t n);
// max |alpha * a_i| (torch's d.mul(t).abs().max()), the product rounded in T.
template <class T>
T scaled_abs_max(const T* a, T alpha, std::size_t n);

// y = g - prev; s = d * t; prev = g. Returns (sum y*s, sum y*y).
template <class T>
std::pair<double, double> new_pair(const T* g, T* prev, const T* d, T t, T* y, T* s, std::size_t n);

// The two-loop recursion of torch.optim.LBFGS over m stored pairs (oldest
// first), each pass fused with the next pass's dot product:
//   q = -g
//   for i = m-1 .. 0:  al[i] = T(dot(s_i, q)) * ro[i];  q = q + (-al[i]) * y_i
//   r = q * h_diag
//   for i = 0 .. m-1:  be = T(dot(y_i, r)) * ro[i];  r = r + (al[i] - be) * s_i
//   d = r; returns dot(g, d)
// Scalars are rounded in T as torch's 0-d tensors are; every element
// operation is one IEEE operation in T (no fused multiply-add).
template <class T>
double two_loop(T* d, const T* g, const T* const* ys, const T* const* ss, const T* ro, std::size_t m, T h_diag,
                T* al, std::size_t n);

// The flat vector and the leaves (each `sizes[l]` elements, end to end).
// gather: flat = concat(leaves), a null leaf giving zeros; scatter: leaves =
// their slice of flat; add: leaf = leaf + t * slice.
template <class T>
void gather(const std::vector<const T*>& leaves, const std::vector<std::size_t>& sizes, T* flat);
template <class T>
void scatter(const T* flat, const std::vector<T*>& leaves, const std::vector<std::size_t>& sizes);
template <class T>
void add(const std::vector<T*>& leaves, const std::vector<std::size_t>& sizes, const T* flat, T t);

}  // namespace lbfgs
}  // namespace fusedopt
