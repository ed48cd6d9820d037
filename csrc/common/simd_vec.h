// Native-width vectors of float or double (GCC/Clang vector extensions): the
// widest registers the translation unit's flags allow (zmm, ymm or xmm).
// Lane arithmetic is the same IEEE operation as on scalars, so vector and
// scalar code give the same bits.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstring>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

// The element math must be inlined into the segment loop: a vector returned
// from an out-of-line call would pass through memory.
#define FUSEDOPT_INLINE inline __attribute__((always_inline))

#ifndef FUSEDOPT_ISA
#error "include only from a translation unit compiled for one instruction set (kernels_isa.cpp)"
#endif

// Everything here lives in the namespace of the instruction set being
// compiled: the same template compiled with other flags in another
// translation unit must stay a different function, or the linker would keep
// one copy for all levels (and could run AVX-512 code on the baseline path).
namespace fusedopt {
namespace FUSEDOPT_ISA {

#if defined(__AVX512F__)
constexpr std::size_t kVecBytes = 64;
#elif defined(__AVX__)
constexpr std::size_t kVecBytes = 32;
#else
constexpr std::size_t kVecBytes = 16;
#endif

template <class T>
struct Vec {
  typedef T type __attribute__((vector_size(kVecBytes)));
  static constexpr std::size_t lanes = kVecBytes / sizeof(T);
};

template <class V, class T>
FUSEDOPT_INLINE V load(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <class V, class T>
FUSEDOPT_INLINE void store(T* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

// Correctly rounded square root, for scalars and native vectors.
FUSEDOPT_INLINE float vsqrt(float x) { return std::sqrt(x); }
FUSEDOPT_INLINE double vsqrt(double x) { return std::sqrt(x); }

FUSEDOPT_INLINE Vec<float>::type vsqrt(Vec<float>::type x) {
#if defined(__AVX512F__)
  return (Vec<float>::type)_mm512_sqrt_ps((__m512)x);
#elif defined(__AVX__)
  return (Vec<float>::type)_mm256_sqrt_ps((__m256)x);
#elif defined(__SSE2__)
  return (Vec<float>::type)_mm_sqrt_ps((__m128)x);
#else
  for (std::size_t k = 0; k < Vec<float>::lanes; ++k) x[k] = std::sqrt(x[k]);
  return x;
#endif
}

FUSEDOPT_INLINE Vec<double>::type vsqrt(Vec<double>::type x) {
#if defined(__AVX512F__)
  return (Vec<double>::type)_mm512_sqrt_pd((__m512d)x);
#elif defined(__AVX__)
  return (Vec<double>::type)_mm256_sqrt_pd((__m256d)x);
#elif defined(__SSE2__)
  return (Vec<double>::type)_mm_sqrt_pd((__m128d)x);
#else
  for (std::size_t k = 0; k < Vec<double>::lanes; ++k) x[k] = std::sqrt(x[k]);
  return x;
#endif
}

}  // namespace FUSEDOPT_ISA
}  // namespace fusedopt
