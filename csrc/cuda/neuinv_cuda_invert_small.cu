// neuinv::invert on CUDA for n <= kSmallMaxN: one thread per matrix running the per-matrix kernel kernels::invert
// (csrc/kernels/per_matrix.h), the same source the CPU driver runs on SIMD packs (the design of cuSolverDx's
// one-thread-per-matrix mode). Every decision per matrix is made in its thread; nothing waits for the host.
#include <cuda_runtime.h>

#include "../kernels/per_matrix.h"
#include "neuinv_cuda_launch.h"

namespace neuinv {
namespace cuda_kernels {
namespace {

constexpr int kThreadsPerBlock = 128;

template <typename T, int N>
__global__ void invert_small_kernel(const T* __restrict__ A, const T* __restrict__ X0,
                                    const bool* __restrict__ use_guess, T* __restrict__ X,
                                    bool* __restrict__ certified, double* __restrict__ bound,
                                    int32_t* __restrict__ iterations, bool* __restrict__ fallback, int64_t batch,
                                    bool refine, rules::NewtonSchulzRules rules, double max_error,
                                    bool positive_definite) {
  const int64_t m = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (m >= batch) return;
  constexpr int64_t size = N * N;
  kernels::invert<T, N, T, double>(A + m * size, X0 == nullptr ? X0 : X0 + m * size,
                                   use_guess == nullptr ? use_guess : use_guess + m, X + m * size, certified + m,
                                   bound + m, iterations + m, fallback + m, 1, N, refine, rules, max_error,
                                   positive_definite);
}

template <typename T, int N>
cudaError_t launch_for_size(const kernels::InvertArguments<T>& args, int64_t batch, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((batch + kThreadsPerBlock - 1) / kThreadsPerBlock));
  invert_small_kernel<T, N><<<grid, kThreadsPerBlock, 0, stream>>>(
      args.a, args.x0, args.use_guess, args.x, args.certified, args.bound, args.iterations, args.fallback, batch,
      args.refine, args.rules, args.max_error, args.positive_definite);
  return cudaGetLastError();
}

}  // namespace

template <typename T>
cudaError_t launch_invert_small(const kernels::InvertArguments<T>& args, int64_t batch, cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  return with_small_size(args.n, [&](auto size) {
    return launch_for_size<T, decltype(size)::value>(args, batch, stream);
  });
}

template cudaError_t launch_invert_small<float>(const kernels::InvertArguments<float>&, int64_t, cudaStream_t);
template cudaError_t launch_invert_small<double>(const kernels::InvertArguments<double>&, int64_t, cudaStream_t);

}  // namespace cuda_kernels
}  // namespace neuinv
