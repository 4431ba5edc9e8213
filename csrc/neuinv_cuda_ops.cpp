// The CUDA implementations of neuinv's operators (defined in csrc/neuinv_cpu.cpp): argument checks, device
// guard, allocation, and the launch of the kernels in csrc/neuinv_cuda_*.cu. Compiled by the host compiler,
// so that every error is thrown from host-compiled frames.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "neuinv_checks.h"
#include "neuinv_cuda_launch.h"

namespace neuinv {
namespace {

std::tuple<at::Tensor, at::Tensor> exact_inverse_cuda(const at::Tensor& A_in) {
  check_batch(A_in, "A", at::kCUDA);
  const c10::cuda::CUDAGuard device_guard(A_in.device());
  const at::Tensor A = A_in.contiguous();
  const int64_t b = A.size(0), n = A.size(1);
  at::Tensor X = at::empty_like(A);
  at::Tensor info = at::zeros({b}, A.options().dtype(at::kInt));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "neuinv_exact_inverse_cuda", [&] {
    C10_CUDA_CHECK(cuda_kernels::launch_exact_inverse<scalar_t>(
        A.data_ptr<scalar_t>(), X.data_ptr<scalar_t>(), info.data_ptr<int32_t>(), b, static_cast<int>(n), stream));
  });
  return {X, info};
}

at::Tensor residual_norm_cuda(const at::Tensor& A_in, const at::Tensor& X_in) {
  check_batch(A_in, "A", at::kCUDA);
  check_batch(X_in, "X", at::kCUDA);
  check_like(A_in, X_in, "X");
  const c10::cuda::CUDAGuard device_guard(A_in.device());
  const at::Tensor A = A_in.contiguous(), X = X_in.contiguous();
  const int64_t b = A.size(0), n = A.size(1);
  at::Tensor r = at::zeros({b}, A.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "neuinv_residual_norm_cuda", [&] {
    C10_CUDA_CHECK(cuda_kernels::launch_residual_norm<scalar_t>(
        A.data_ptr<scalar_t>(), X.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(), b, static_cast<int>(n), stream));
  });
  return r;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> newton_schulz_cuda(
    const at::Tensor& A_in, const at::Tensor& X0_in, double tol, double accept, int64_t max_iter,
    bool guarded, double guard) {
  check_batch(A_in, "A", at::kCUDA);
  check_batch(X0_in, "X0", at::kCUDA);
  check_like(A_in, X0_in, "X0");
  const c10::cuda::CUDAGuard device_guard(A_in.device());
  const at::Tensor A = A_in.contiguous(), X0 = X0_in.contiguous();
  const int64_t b = A.size(0), n = A.size(1);
  at::Tensor X = at::empty_like(A);
  at::Tensor residual = at::zeros({b}, A.options());
  at::Tensor done = at::zeros({b}, A.options().dtype(at::kBool));
  at::Tensor steps = at::zeros({b}, A.options().dtype(at::kInt));
  const cuda_kernels::NewtonSchulzSettings settings{tol, accept, max_iter, guarded, guard};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "neuinv_newton_schulz_cuda", [&] {
    C10_CUDA_CHECK(cuda_kernels::launch_newton_schulz<scalar_t>(
        A.data_ptr<scalar_t>(), X0.data_ptr<scalar_t>(), X.data_ptr<scalar_t>(), residual.data_ptr<scalar_t>(),
        done.data_ptr<bool>(), steps.data_ptr<int32_t>(), b, static_cast<int>(n), settings, stream));
  });
  return {X, residual, done, steps};
}

}  // namespace

TORCH_LIBRARY_IMPL(neuinv, CUDA, m) {
  m.impl("exact_inverse", &exact_inverse_cuda);
  m.impl("residual_norm", &residual_norm_cuda);
  m.impl("newton_schulz", &newton_schulz_cuda);
}

}  // namespace neuinv
