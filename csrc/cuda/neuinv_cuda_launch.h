// Launchers of neuinv's CUDA kernels (defined in csrc/cuda/*.cu, for float and double), called by the
// host-compiled operators in csrc/cuda/neuinv_cuda_ops.cpp. Raw pointers to contiguous (batch, n, n) data on the
// current device; each returns the launch's cudaError_t instead of throwing, so that every exception is
// raised from host-compiled code.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "../kernels/invert_arguments.h"
#include "../neuinv_rules.h"

namespace neuinv {
namespace cuda_kernels {

// Gauss-Jordan inverse of the matrices where `needed` (nullptr: all); info: 0 or the first zero pivot.
template <typename T>
cudaError_t launch_exact_inverse(const T* A, T* X, int32_t* info, const bool* needed, int64_t batch, int n,
                                 cudaStream_t stream);

// Cholesky inverse of the matrices where `needed` (nullptr: all), from A's lower triangle; info: 0 or the first
// pivot rules::cholesky_pivot_accepted refuses (X is then NaN).
template <typename T>
cudaError_t launch_cholesky_inverse(const T* A, T* X, int32_t* info, const bool* needed, int64_t batch, int n,
                                    cudaStream_t stream);

// The Newton-Schulz loop from X0 for the matrices where `use_guess` (nullptr: all); the others stop at step 0,
// not done, with X not written.
template <typename T>
cudaError_t launch_newton_schulz(const T* A, const T* X0, T* X, T* residual, bool* done, int32_t* steps,
                                 const bool* use_guess, int64_t batch, int n, const rules::NewtonSchulzRules& rules,
                                 cudaStream_t stream);

// certificate.error_bound of X as stored, written where `todo` (nullptr: everywhere).
template <typename T>
cudaError_t launch_error_bound(const T* A, const T* X, const bool* todo, double* bound, int64_t batch, int n,
                               cudaStream_t stream);

// The whole of neuinv::invert for n = args.n <= kSmallMaxN, one thread per matrix (csrc/kernels/per_matrix.h), on
// `batch` matrices: the operator's tensors as contiguous device pointers (x0, use_guess nullable).
constexpr int kSmallMaxN = 8;

// launch(std::integral_constant<int, n>{}) for n in 1..kSmallMaxN, the sizes the small-n kernels are compiled for
// (n fixed, so a matrix stays in registers); cudaErrorInvalidValue for any other n.
template <typename Launch>
cudaError_t with_small_size(int64_t n, Launch launch) {
  static_assert(kSmallMaxN == 8, "the cases below are the sizes 1..kSmallMaxN");
  switch (n) {
    case 1: return launch(std::integral_constant<int, 1>{});
    case 2: return launch(std::integral_constant<int, 2>{});
    case 3: return launch(std::integral_constant<int, 3>{});
    case 4: return launch(std::integral_constant<int, 4>{});
    case 5: return launch(std::integral_constant<int, 5>{});
    case 6: return launch(std::integral_constant<int, 6>{});
    case 7: return launch(std::integral_constant<int, 7>{});
    case 8: return launch(std::integral_constant<int, 8>{});
    default: return cudaErrorInvalidValue;
  }
}

template <typename T>
cudaError_t launch_invert_small(const kernels::InvertArguments<T>& args, int64_t batch, cudaStream_t stream);

// The whole of neuinv::solve for n <= kSmallMaxN, one system per thread at a time (csrc/kernels/solve.h), `threads`
// threads striding over the batch: system m reads A at a + m a_stride (a_stride 0: one A broadcast) and B at
// b + m b_stride, writes X (n x k) at x + m n k and its bound. From R (and its bound eps, at R's stride: a_stride,
// and 1 or 0) where r is given, else from each system's exact-path inverse, held in r_work (n^2 values per thread).
// work: solve_small_workspace(n, k) doubles per thread.
template <typename T>
struct SolveSmallArguments {
  const T* a;
  const T* b;
  const T* r;
  const double* eps;
  T* x;
  double* bound;
  double* work;
  T* r_work;
  int64_t a_stride, b_stride, n, k, threads;
  bool positive_definite;
};

int64_t solve_small_workspace(int64_t n, int64_t k);

template <typename T>
cudaError_t launch_solve_small(const SolveSmallArguments<T>& args, int64_t batch, cudaStream_t stream);

}  // namespace cuda_kernels
}  // namespace neuinv
