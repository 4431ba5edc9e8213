// The arguments of the per-matrix kernel kernels::invert (csrc/kernels/per_matrix.h) for a batch: contiguous
// pointers (matrix m at m n^2, its per-matrix fields at m; null where an input is absent), the size and the call's
// options. What each device's driver hands its loops: the CPU's (csrc/cpu/invert_range.h) and the CUDA launcher
// for small n (csrc/cuda/neuinv_cuda_invert_small.cu).
#pragma once
#include <cstdint>

#include "../neuinv_rules.h"

namespace neuinv {
namespace kernels {

template <typename T>
struct InvertArguments {
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

}  // namespace kernels
}  // namespace neuinv
