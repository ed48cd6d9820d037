// The step variants that the Python layer asks for; only these are compiled.
#pragma once
#include <array>
#include "kernel_modes.h"

namespace fusedopt {

constexpr std::array<unsigned, 38> kModes = [] {
  std::array<unsigned, 38> a{};
  std::size_t k = 0;
  const unsigned inits[2] = {MOMENT_INIT, MOMENT_EMA};
  // Optimizer steps: d = lr * direction, written out and/or subtracted in place.
  for (unsigned out : {OUT_WRITE, OUT_INPLACE, OUT_BOTH}) {
    a[k++] = make_mode(0, 0, DIR_G, out, SCALE);                                         // Gradient
    for (unsigned mean : inits) a[k++] = make_mode(mean, 0, DIR_M, out, SCALE);          // Momentum
    for (unsigned sq : inits) a[k++] = make_mode(0, sq, DIR_NORM_G, out, SCALE | UNBIASED);  // RMSProp
    for (unsigned mean : inits)
      for (unsigned sq : inits)
        a[k++] = make_mode(mean, sq, DIR_NORM_M, out, SCALE | UNBIASED | MEAN_DIV);     // ADAM
  }
  // GradientMemory.update / update_mean / update_mean_square.
  for (unsigned mean : {MOMENT_NONE, MOMENT_INIT, MOMENT_EMA})
    for (unsigned sq : {MOMENT_NONE, MOMENT_INIT, MOMENT_EMA})
      if (mean || sq) a[k++] = make_mode(mean, sq, DIR_NONE, OUT_NONE, 0);
  // GradientMemory.normalize(x, unbiased).
  a[k++] = make_mode(0, 0, DIR_NORM_G, OUT_WRITE, 0);
  a[k++] = make_mode(0, 0, DIR_NORM_G, OUT_WRITE, UNBIASED);
  a[k++] = make_mode(0, 0, DIR_NORM_G, OUT_WRITE, UNBIASED | MEAN_DIV);
  return a;
}();

}  // namespace fusedopt

namespace fusedopt {
static_assert(kModes.back() != 0, "kModes has unfilled entries: fix its size");
}  // namespace fusedopt
