// The CPU driver's interface between the operator neuinv::solve (csrc/cpu/solve_cpu.cpp) and the batch loops around
// the per-system kernels (csrc/cpu/solve_range.h), which are compiled in one translation unit per dtype
// (solve_float.cpp, solve_double.cpp) so that a build on several cores compiles them in parallel.
#pragma once
#include <cstdint>

namespace neuinv {
namespace cpu {

// Where system m's operands begin: A (and R) at m * a, B at m * b, R's bound at m * eps (0: one broadcast to all).
struct SolveStrides {
  int64_t a, b, eps;
};

// All b systems from a given R (n x n each, certified to eps), split across threads, in the best instruction-set
// build for this CPU: X (b, n, k) and its bound (b,).
template <typename T>
void solve_batch_from_inverse(const T* a, const T* rhs, const T* r, const double* eps, SolveStrides strides, T* x,
                              double* bound, int64_t n, int64_t k, int64_t b);

// All b systems (A at a stride of n * n, B at b_stride) without R: each pack's exact-path inverse and solve in one
// pass, split across threads, in the best instruction-set build for this CPU.
template <typename T>
void solve_batch_exact_path(const T* a, const T* rhs, int64_t b_stride, T* x, double* bound, int64_t n,
                                    int64_t k, bool positive_definite, int64_t b);

#define NEUINV_DECLARE_SOLVE_BATCH(T)                                                                            \
  extern template void solve_batch_from_inverse<T>(const T*, const T*, const T*, const double*, SolveStrides, T*, \
                                                   double*, int64_t, int64_t, int64_t);                           \
  extern template void solve_batch_exact_path<T>(const T*, const T*, int64_t, T*, double*, int64_t,       \
                                                         int64_t, bool, int64_t);
NEUINV_DECLARE_SOLVE_BATCH(float)
NEUINV_DECLARE_SOLVE_BATCH(double)
#undef NEUINV_DECLARE_SOLVE_BATCH

}  // namespace cpu
}  // namespace neuinv
