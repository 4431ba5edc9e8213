// The CPU operator neuinv::solve_from_inverse (schema in csrc/neuinv_ops.cpp): checks the arguments, allocates
// the outputs and runs the per-system kernel kernels::solve_from_inverse (csrc/kernels/solve.h) on the batch,
// split across threads (at::parallel_for), each with its own workspace, in the best instruction-set build for
// this CPU.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "simd.h"  // first: its pragma covers the kernels' vector code
#include "../kernels/solve.h"
#include "../neuinv_checks.h"
#include "build_selection.h"

namespace neuinv {
namespace {

// Systems begin..end-1, kLanes at a time in packs (V a pack) or one at a time (V = double), in the workspace at
// `work`; always inlined into the instruction-set build that runs it (build_selection.h).
template <typename T, int N, typename V>
NEUINV_HOST_DEVICE void solve_range(const T* a, const T* rhs, const T* r, const double* eps,
                                    kernels::SystemStrides strides, T* x, double* bound, void* work, int64_t n,
                                    int64_t k, int64_t begin, int64_t end) {
  constexpr int64_t step = kernels::Arithmetic<V>::kLanes;
  for (int64_t m = begin; m < end; m += step) {
    const int count = static_cast<int>(std::min<int64_t>(step, end - m));
    kernels::solve_from_inverse<T, N, V>(a + m * strides.a, rhs + m * strides.b, r + m * strides.a,
                                         eps + m * strides.eps, strides, x + m * n * k, bound + m, count,
                                         static_cast<V*>(work), n, k);
  }
}

// solve_range with a workspace of this thread's own: packs of kLanes systems with n fixed at compile time for
// N > 0 (n <= 8), one system at a time (general n) for N = 0 and in the baseline x86-64 build.
template <typename T, int N>
void solve_range_with_workspace(const T* a, const T* rhs, const T* r, const double* eps,
                                kernels::SystemStrides strides, T* x, double* bound, int64_t n, int64_t k,
                                int64_t begin, int64_t end) {
  using V = std::conditional_t<(N > 0), kernels::PackDouble, double>;
  constexpr int64_t kAlignment = 64;  // a pack's (aligned loads and stores)
  std::vector<char> storage(kernels::solve_workspace(n, k) * sizeof(kernels::PackDouble) + kAlignment);
  void* work = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(storage.data()) + kAlignment - 1) &
                                       ~(kAlignment - 1));
  cpu::run_for_this_cpu<solve_range<T, N, V>, solve_range<T, 0, double>>(
      a, rhs, r, eps, strides, x, bound, work, n, k, begin, end);
}

// solve_range_with_workspace with n fixed at compile time for n <= 8 (packs), general otherwise.
template <typename T>
void solve_range_for_size(const T* a, const T* rhs, const T* r, const double* eps, kernels::SystemStrides strides,
                          T* x, double* bound, int64_t n, int64_t k, int64_t begin, int64_t end) {
  switch (n) {
#define NEUINV_SOLVE_SIZE(N)                                                                          \
  case N:                                                                                             \
    return solve_range_with_workspace<T, N>(a, rhs, r, eps, strides, x, bound, n, k, begin, end);
    NEUINV_SOLVE_SIZE(1) NEUINV_SOLVE_SIZE(2) NEUINV_SOLVE_SIZE(3) NEUINV_SOLVE_SIZE(4)
    NEUINV_SOLVE_SIZE(5) NEUINV_SOLVE_SIZE(6) NEUINV_SOLVE_SIZE(7) NEUINV_SOLVE_SIZE(8)
#undef NEUINV_SOLVE_SIZE
    default:
      return solve_range_with_workspace<T, 0>(a, rhs, r, eps, strides, x, bound, n, k, begin, end);
  }
}

std::tuple<at::Tensor, at::Tensor> solve_from_inverse_cpu(const at::Tensor& A_in, const at::Tensor& B_in,
                                                          const at::Tensor& R_in, const at::Tensor& bound_in) {
  check_solve_from_inverse_arguments(A_in, B_in, R_in, bound_in, at::kCPU);
  const at::Tensor A = A_in.contiguous(), B = B_in.contiguous(), R = R_in.contiguous();
  const at::Tensor inverse_bound = bound_in.contiguous();
  const int64_t b = A.size(0) == 1 ? B.size(0) : A.size(0), n = A.size(1), k = B.size(2);  // broadcast
  const kernels::SystemStrides strides{A.size(0) == b ? n * n : 0, B.size(0) == b ? n * k : 0, A.size(0) == b ? 1 : 0};
  at::Tensor X = at::empty({b, n, k}, B.options());
  at::Tensor bound = at::empty({b}, A.options().dtype(at::kDouble));
  if (b == 0) return {X, bound};
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, n * (n + k)));
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "neuinv_solve_from_inverse", [&] {
    const scalar_t* a = A.data_ptr<scalar_t>();
    const scalar_t* rhs = B.data_ptr<scalar_t>();
    const scalar_t* r = R.data_ptr<scalar_t>();
    const double* eps = inverse_bound.data_ptr<double>();
    scalar_t* x = X.data_ptr<scalar_t>();
    double* out_bound = bound.data_ptr<double>();
    at::parallel_for(0, b, grain, [&](int64_t begin, int64_t end) {
      cpu::IeeeMode ieee;
      solve_range_for_size<scalar_t>(a, rhs, r, eps, strides, x, out_bound, n, k, begin, end);
    });
  });
  return {X, bound};
}

}  // namespace

TORCH_LIBRARY_IMPL(neuinv, CPU, m) {
  m.impl("solve_from_inverse", &solve_from_inverse_cpu);
}

}  // namespace neuinv
