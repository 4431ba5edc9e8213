// neuinv::residual_norm on CUDA: ||I - A X||_F per matrix.
#include "neuinv_cuda_common.cuh"

namespace neuinv {
namespace cuda_kernels {
namespace {

template <typename T, int W>
__global__ void residual_norm_kernel(const T* __restrict__ A, const T* __restrict__ X, T* __restrict__ out,
                                     int64_t batch, int n) {
  constexpr int G = groups_per_block<W>();
  __shared__ T x_rows[G][W * (W + 1)];
  __shared__ T scratch[2];
  const int i = threadIdx.x, g = threadIdx.y;
  const int64_t m = static_cast<int64_t>(blockIdx.x) * G + g;
  const bool row_active = m < batch && i < n;
  const int64_t offset = row_active ? m * n * n + static_cast<int64_t>(i) * n : 0;
  T a[W], x[W], r[W];
  load_row<W>(A + offset, row_active, n, a);
  load_row<W>(X + offset, row_active, n, x);
  share_row<W>(x_rows[g], i, x);
  group_sync<W>();
  residual_row<W>(a, x_rows[g], i, row_active, r);
  const T sum = group_sum<W>(row_sum_of_squares<W>(r), scratch);
  if (m < batch && i == 0) out[m] = sqrt(sum);
}

at::Tensor residual_norm_cuda(const at::Tensor& A_in, const at::Tensor& X_in) {
  check_batch(A_in, "A", at::kCUDA);
  check_batch(X_in, "X", at::kCUDA);
  check_like(A_in, X_in, "X");
  const c10::cuda::CUDAGuard device_guard(A_in.device());
  const at::Tensor A = A_in.contiguous(), X = X_in.contiguous();
  const int64_t b = A.size(0), n = A.size(1);
  at::Tensor r = at::zeros({b}, A.options());
  if (b == 0 || n == 0) return r;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "neuinv_residual_norm_cuda", [&] {
    dispatch_width(n, [&](auto width) {
      constexpr int W = decltype(width)::value;
      residual_norm_kernel<scalar_t, W><<<grid_for<W>(b), dim3(W, groups_per_block<W>()), 0, stream>>>(
          A.data_ptr<scalar_t>(), X.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(), b, static_cast<int>(n));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return r;
}

}  // namespace
}  // namespace cuda_kernels

TORCH_LIBRARY_IMPL(neuinv, CUDA, m) {
  m.impl("residual_norm", &cuda_kernels::residual_norm_cuda);
}

}  // namespace neuinv
