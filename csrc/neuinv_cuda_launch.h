// Launchers of neuinv's CUDA kernels (defined in csrc/neuinv_cuda_*.cu, for float and double), called by the
// host-compiled operators in csrc/neuinv_cuda_ops.cpp. Raw pointers to contiguous (batch, n, n) data on the
// current device; each returns the launch's cudaError_t instead of throwing, so that every exception is
// raised from host-compiled code.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace neuinv {
namespace cuda_kernels {

struct NewtonSchulzSettings {
  double tol;
  double accept;
  int64_t max_iter;
  bool guarded;
  double guard;
};

template <typename T>
cudaError_t launch_exact_inverse(const T* A, T* X, int32_t* info, int64_t batch, int n, cudaStream_t stream);

template <typename T>
cudaError_t launch_residual_norm(const T* A, const T* X, T* residual, int64_t batch, int n, cudaStream_t stream);

template <typename T>
cudaError_t launch_newton_schulz(const T* A, const T* X0, T* X, T* residual, bool* done, int32_t* steps,
                                int64_t batch, int n, const NewtonSchulzSettings& settings, cudaStream_t stream);

}  // namespace cuda_kernels
}  // namespace neuinv
