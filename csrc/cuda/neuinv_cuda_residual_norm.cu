// The kernel behind neuinv::residual_norm on CUDA: ||I - A X||_F per matrix.
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
  const auto [i, g, m, row_active, offset] = thread_row<W>(batch, n);
  T a[W], x[W], r[W];
  load_row<W>(A + offset, row_active, n, a);
  load_row<W>(X + offset, row_active, n, x);
  share_row<W>(x_rows[g], i, x);
  group_sync<W>();
  residual_row<W>(a, x_rows[g], i, row_active, r);
  const T sum = group_sum<W>(row_sum_of_squares<W>(r), scratch);
  if (m < batch && i == 0) out[m] = sqrt(sum);
}

}  // namespace

template <typename T>
cudaError_t launch_residual_norm(const T* A, const T* X, T* residual, int64_t batch, int n, cudaStream_t stream) {
  if (batch == 0 || n == 0) return cudaSuccess;
  dispatch_width(n, [&](auto width) {
    constexpr int W = decltype(width)::value;
    residual_norm_kernel<T, W><<<grid_for<W>(batch), dim3(W, groups_per_block<W>()), 0, stream>>>(A, X, residual, batch,
                                                                                                n);
  });
  return cudaGetLastError();
}

template cudaError_t launch_residual_norm<float>(const float*, const float*, float*, int64_t, int, cudaStream_t);
template cudaError_t launch_residual_norm<double>(const double*, const double*, double*, int64_t, int, cudaStream_t);

}  // namespace cuda_kernels
}  // namespace neuinv
