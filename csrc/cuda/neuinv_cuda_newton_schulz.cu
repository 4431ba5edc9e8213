// The kernel behind neuinv::newton_schulz on CUDA: the whole Newton-Schulz refinement per matrix in one launch.
#include "neuinv_cuda_common.cuh"

namespace neuinv {
namespace cuda_kernels {
namespace {

// The whole Newton-Schulz loop X <- X + X (I - A X) per matrix, stopped by rules::NewtonSchulzRules::stop
// (csrc/neuinv_rules.h; ||A||_F ||X||_F scaled as in reference.norm_product). Every thread of a block runs until
// the block's last matrix stops; matrices without use_guess stop at once, not done, X not written.
template <typename T, int W>
__global__ void newton_schulz_kernel(const T* __restrict__ A, const T* __restrict__ X0, T* __restrict__ X,
                                     T* __restrict__ residual_out, bool* __restrict__ done_out,
                                     int32_t* __restrict__ steps_out, const bool* __restrict__ use_guess,
                                     int64_t batch, int n, rules::NewtonSchulzRules rules) {
  constexpr int G = groups_per_block<W>();
  __shared__ T rows[G][W * (W + 1)];
  __shared__ T scratch[2];
  const auto [i, g, m, row_active, offset] = thread_row<W>(batch, n);
  T a[W], x[W], r[W];
  load_row<W>(A + offset, row_active, n, a);
  load_row<W>(X0 + offset, row_active, n, x);
  // ||A||_F ||X||_F as ||A / m||_F ||m X||_F, m = max |a_ij| (reference.norm_product: no overflow, scale-exact).
  const T largest = group_max_abs<W>(a, scratch);
  const T m_scale = largest > T(0) ? largest : T(1);
  const double a_norm = sqrt(static_cast<double>(group_sum<W>(row_sum_of_scaled_squares<W>(a, m_scale, true), scratch)));

  bool stopped = m >= batch || (use_guess != nullptr && !use_guess[m]), done = false;
  double previous = INFINITY, residual = 0.0;
  int64_t steps = 0;
  for (int64_t step = 0;; ++step) {
    share_row<W>(rows[g], i, x);
    group_sync<W>();
    residual_row<W>(a, rows[g], i, row_active, r);
    const double r_norm = sqrt(static_cast<double>(group_sum<W>(row_sum_of_squares<W>(r), scratch)));
    const double x_norm =
        sqrt(static_cast<double>(group_sum<W>(row_sum_of_scaled_squares<W>(x, m_scale, false), scratch)));
    if (!stopped) {
      if (rules.stop(r_norm, previous, a_norm * x_norm, step, &done)) {
        stopped = true;
        residual = r_norm;
        steps = step;
        if (row_active) store_row<W>(X + offset, n, x);
      }
      previous = r_norm;
    }
    if (!__syncthreads_or(!stopped)) break;
    share_row<W>(rows[g], i, r);
    group_sync<W>();
    if (!stopped) {
      T next[W];
#pragma unroll
      for (int j = 0; j < W; ++j) next[j] = x[j];
#pragma unroll
      for (int k = 0; k < W; ++k) {
#pragma unroll
        for (int j = 0; j < W; ++j) next[j] = fma(x[k], rows[g][k * (W + 1) + j], next[j]);
      }
#pragma unroll
      for (int j = 0; j < W; ++j) x[j] = next[j];
    }
    group_sync<W>();
  }
  if (m < batch && i == 0) {
    residual_out[m] = static_cast<T>(residual);
    done_out[m] = done;
    steps_out[m] = static_cast<int32_t>(steps);
  }
}

}  // namespace

template <typename T>
cudaError_t launch_newton_schulz(const T* A, const T* X0, T* X, T* residual, bool* done, int32_t* steps,
                                 const bool* use_guess, int64_t batch, int n, const rules::NewtonSchulzRules& rules,
                                 cudaStream_t stream) {
  if (batch == 0 || n == 0) return cudaSuccess;
  dispatch_width(n, [&](auto width) {
    constexpr int W = decltype(width)::value;
    newton_schulz_kernel<T, W><<<grid_for<W>(batch), dim3(W, groups_per_block<W>()), 0, stream>>>(
        A, X0, X, residual, done, steps, use_guess, batch, n, rules);
  });
  return cudaGetLastError();
}

template cudaError_t launch_newton_schulz<float>(const float*, const float*, float*, float*, bool*, int32_t*,
                                                  const bool*, int64_t, int, const rules::NewtonSchulzRules&,
                                                  cudaStream_t);
template cudaError_t launch_newton_schulz<double>(const double*, const double*, double*, double*, bool*, int32_t*,
                                                   const bool*, int64_t, int, const rules::NewtonSchulzRules&,
                                                   cudaStream_t);

}  // namespace cuda_kernels
}  // namespace neuinv
