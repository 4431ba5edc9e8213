// The kernel behind neuinv::error_bound on CUDA (and the certificate inside neuinv::invert): the certificate of
// neuinv/certificate.py for X as stored, by the shared functions of csrc/neuinv_rules.h, one thread per matrix.
#include "neuinv_cuda_common.cuh"

namespace neuinv {
namespace cuda_kernels {
namespace {

constexpr int kThreads = 128;

template <typename T>
__global__ void error_bound_kernel(const T* __restrict__ A, const T* __restrict__ X, const bool* __restrict__ todo,
                                   double* __restrict__ bound, int64_t batch, int n) {
  const int64_t m = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (m >= batch || (todo != nullptr && !todo[m])) return;
  const T* a = A + m * n * n;
  const T* x = X + m * n * n;
  bound[m] = rules::stored_error_bound<0>(a, x, rules::residual_norm_in_double<0>(a, x, n), n);
}

}  // namespace

template <typename T>
cudaError_t launch_error_bound(const T* A, const T* X, const bool* todo, double* bound, int64_t batch, int n,
                               cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>((batch + kThreads - 1) / kThreads));
  error_bound_kernel<T><<<grid, kThreads, 0, stream>>>(A, X, todo, bound, batch, n);
  return cudaGetLastError();
}

template cudaError_t launch_error_bound<float>(const float*, const float*, const bool*, double*, int64_t, int,
                                               cudaStream_t);
template cudaError_t launch_error_bound<double>(const double*, const double*, const bool*, double*, int64_t, int,
                                                cudaStream_t);

}  // namespace cuda_kernels
}  // namespace neuinv
