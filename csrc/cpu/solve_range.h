// The batch loops of the CPU driver around the per-system kernels of neuinv::solve (csrc/kernels/solve.h): the batch
// split across threads (at::parallel_for), each thread with its own workspace, kLanes systems at a time in packs for
// the sizes compiled with a fixed n up to kCompactMaxN, one system at a time otherwise; each thread's share run in
// the best instruction-set build for this CPU (build_selection.h). Included by one translation unit per dtype
// (solve_float.cpp, solve_double.cpp), which instantiates solve_batch.h's functions for it.
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "simd.h"  // first: its pragma covers the kernels' vector code
#include "../kernels/solve.h"
#include "invert_range.h"
#include "shares.h"
#include "solve_batch.h"

namespace neuinv {
namespace cpu {

// Systems begin..end-1 from a given R, kLanes at a time in packs (V a pack) or one at a time (V = double), in the
// workspace at `work`; always inlined into the instruction-set build that runs it (build_selection.h).
template <typename T, int N, typename V>
NEUINV_HOST_DEVICE void solve_from_inverse_range(void* work, int64_t begin, int64_t end, const T* a, const T* rhs,
                                                 const T* r, const double* eps, SolveStrides strides, T* x,
                                                 double* bound, int64_t n, int64_t k) {
  constexpr int64_t step = kernels::Arithmetic<V>::kLanes;
  const kernels::SystemStrides system_strides{strides.a, strides.b, strides.eps};
  for (int64_t m = begin; m < end; m += step) {
    const int count = static_cast<int>(std::min<int64_t>(step, end - m));
    kernels::solve_from_inverse<T, N, V>(a + m * strides.a, rhs + m * strides.b, r + m * strides.a,
                                         eps + m * strides.eps, system_strides, x + m * n * k, bound + m, count,
                                         static_cast<V*>(work), n, k);
  }
}

// Systems begin..end-1 without R (A at a stride of n * n, B at b_stride): each pack solved in one pass
// (kernels::solve_exact_path: without an inverse where positive_definite, else with the exact-path inverse),
// kLanes systems at a time for a fixed N <= kCompactMaxN (the
// inversion's packs), one at a time otherwise; `work` holds solve_workspace(n, k) values of the pack, then its R.
template <typename T, int N>
NEUINV_HOST_DEVICE void solve_exact_path_range(void* work, int64_t begin, int64_t end, const T* a,
                                                       const T* rhs, int64_t b_stride, T* x, double* bound,
                                                       int64_t n, int64_t k, bool positive_definite) {
  constexpr bool packed = N > 0 && N <= kCompactMaxN;
  using VT = std::conditional_t<packed, typename kernels::PackOf<T>::type, T>;
  using VD = std::conditional_t<packed, kernels::PackDouble, double>;
  constexpr int64_t step = kernels::Arithmetic<VD>::kLanes;
  VD* solve_work = static_cast<VD*>(work);
  T* r = reinterpret_cast<T*>(solve_work + kernels::solve_workspace(n, k));
  for (int64_t m = begin; m < end; m += step) {
    const int count = static_cast<int>(std::min<int64_t>(step, end - m));
    kernels::solve_exact_path<T, N, VT, VD, VD>(a + m * n * n, rhs + m * b_stride, b_stride, x + m * n * k,
                                                bound + m, count, solve_work, r, n, k, positive_definite);
  }
}

// The packs' unit and the parallel grain (about 4096 values of A and B per task) for size N.
template <int N>
constexpr int64_t kSolveUnit = N > 0 && N <= kCompactMaxN ? kernels::kLanes : 1;

inline int64_t solve_grain(int64_t unit, int64_t n, int64_t k) {
  return std::max<int64_t>(1, 4096 / std::max<int64_t>(1, unit * n * (n + k)));
}

template <typename T>
void solve_batch_from_inverse(const T* a, const T* rhs, const T* r, const double* eps, SolveStrides strides, T* x,
                              double* bound, int64_t n, int64_t k, int64_t b) {
  NEUINV_DISPATCH_SIZE(n, [&] {
    using V = std::conditional_t<(kSolveUnit<N> > 1), kernels::PackDouble, double>;
    run_in_shares<solve_from_inverse_range<T, N, V>, solve_from_inverse_range<T, kBaselineN<N>, double>>(
        b, kSolveUnit<N>, solve_grain(kSolveUnit<N>, n, k),
        kernels::solve_workspace(n, k) * sizeof(kernels::PackDouble), a, rhs, r, eps, strides, x, bound, n, k);
  });
}

template <typename T>
void solve_batch_exact_path(const T* a, const T* rhs, int64_t b_stride, T* x, double* bound, int64_t n,
                                    int64_t k, bool positive_definite, int64_t b) {
  NEUINV_DISPATCH_SIZE(n, [&] {
    const int64_t bytes = kernels::solve_workspace(n, k) * sizeof(kernels::PackDouble) +
                          kernels::exact_inverse_workspace<kernels::PackDouble>(n) * sizeof(T);
    run_in_shares<solve_exact_path_range<T, N>, solve_exact_path_range<T, kBaselineN<N>>>(
        b, kSolveUnit<N>, solve_grain(kSolveUnit<N>, n, k), bytes, a, rhs, b_stride, x, bound, n, k,
        positive_definite);
  });
}

}  // namespace cpu
}  // namespace neuinv
