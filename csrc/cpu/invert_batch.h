// The CPU driver's interface between the operator (csrc/cpu/invert_cpu.cpp) and the batch loops around the
// per-matrix kernel (csrc/cpu/invert_range.h), which are compiled in one translation unit per dtype
// (invert_float.cpp, invert_double.cpp) so that a build on several cores compiles them in parallel.
#pragma once
#include <cstdint>

#include "../neuinv_rules.h"

namespace neuinv {
namespace cpu {

// The arguments of the per-matrix kernel for a batch; null pointers where an input is absent.
template <typename T>
struct Batch {
  const T* a;
  const T* x0;
  const bool* use_guess;
  T* x;
  bool* certified;
  double* bound;
  int32_t* iterations;
  bool* fallback;
  int64_t n;
  bool refine;
  rules::NewtonSchulzRules rules;
  double max_error;
  bool positive_definite;
};

// All b matrices of the batch, split across threads, in the best instruction-set build for this CPU.
template <typename T>
void invert_batch(const Batch<T>& batch, int64_t b);

extern template void invert_batch<float>(const Batch<float>&, int64_t);
extern template void invert_batch<double>(const Batch<double>&, int64_t);

}  // namespace cpu
}  // namespace neuinv
