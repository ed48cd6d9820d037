// torch's lerp(self, end, weight) for one element, each operation rounded in
// T (aten's CPU lerp): self + w * (end - self) for |w| < 0.5, else
// end - (end - self) * (1 - w). (Muon's passes keep a vectorising form of it.)
// Always inlined: Adafactor's per-level passes (adafactor_isa.cpp) use it, and
// an out-of-line copy would be shared between levels.
#pragma once
#include <cmath>

namespace fusedopt {

template <class T>
inline __attribute__((always_inline)) T torch_lerp(T self, T end, T weight) {
  return std::fabs(weight) < T(0.5) ? self + weight * (end - self) : end - (end - self) * (T(1) - weight);
}

}  // namespace fusedopt
