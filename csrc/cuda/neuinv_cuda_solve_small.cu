// neuinv::solve on CUDA for n <= kSmallMaxN: one thread per system running the per-system kernels of
// csrc/kernels/solve.h (kernels::solve_from_inverse, kernels::solve_exact_path), the same source the CPU
// driver (csrc/cpu/solve_range.h) runs on SIMD packs. The threads stride over the batch, each with its slice of a
// device workspace (so the workspace grows with the threads launched, not with the batch).
#include <cuda_runtime.h>

#include "../kernels/solve.h"
#include "neuinv_cuda_launch.h"

namespace neuinv {
namespace cuda_kernels {
namespace {

constexpr int kThreadsPerBlock = 128;

template <typename T, int N>
__global__ void solve_small_kernel(SolveSmallArguments<T> args, int64_t batch) {
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (thread >= args.threads) return;
  const int64_t k = args.k;
  double* work = args.work + thread * kernels::solve_workspace(N, k);
  T* r_work = args.r_work == nullptr ? nullptr : args.r_work + thread * N * N;
  const kernels::SystemStrides strides{args.a_stride, args.b_stride, args.a_stride == 0 ? 0 : 1};
  for (int64_t m = thread; m < batch; m += args.threads) {
    const T* a = args.a + m * args.a_stride;
    const T* b = args.b + m * args.b_stride;
    T* x = args.x + m * N * k;
    if (args.r == nullptr) {
      kernels::solve_exact_path<T, N, T, double, double>(a, b, args.b_stride, x, args.bound + m, 1, work, r_work, N,
                                                         k, args.positive_definite);
    } else {
      kernels::solve_from_inverse<T, N, double>(a, b, args.r + m * args.a_stride, args.eps + m * strides.eps,
                                                strides, x, args.bound + m, 1, work, N, k);
    }
  }
}

template <typename T, int N>
cudaError_t launch_for_size(const SolveSmallArguments<T>& args, int64_t batch, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((args.threads + kThreadsPerBlock - 1) / kThreadsPerBlock));
  solve_small_kernel<T, N><<<grid, kThreadsPerBlock, 0, stream>>>(args, batch);
  return cudaGetLastError();
}

}  // namespace

int64_t solve_small_workspace(int64_t n, int64_t k) { return kernels::solve_workspace(n, k); }

template <typename T>
cudaError_t launch_solve_small(const SolveSmallArguments<T>& args, int64_t batch, cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  return with_small_size(args.n, [&](auto size) {
    return launch_for_size<T, decltype(size)::value>(args, batch, stream);
  });
}

template cudaError_t launch_solve_small<float>(const SolveSmallArguments<float>&, int64_t, cudaStream_t);
template cudaError_t launch_solve_small<double>(const SolveSmallArguments<double>&, int64_t, cudaStream_t);

}  // namespace cuda_kernels
}  // namespace neuinv
