// The kernel behind neuinv::newton_schulz on CUDA: the whole Newton-Schulz refinement per matrix in one launch.
#include "neuinv_cuda_common.cuh"

namespace neuinv {
namespace cuda_kernels {
namespace {

// The whole Newton-Schulz loop X <- X + X (I - A X) per matrix, with the stopping rules of
// neuinv.reference.newton_schulz_refine: done at r <= min(tol ||A||_F ||X||_F, accept) (the norms scaled as in
// reference.norm_product) or at the rounding
// floor (r_prev < 0.5, r > r_prev / 2) with r <= accept; stopped when r is not finite, by the guard at
// step 0, or at max_iter. Every thread of a block runs until the block's last matrix stops.
template <typename T, int W>
__global__ void newton_schulz_kernel(const T* __restrict__ A, const T* __restrict__ X0, T* __restrict__ X,
                                     T* __restrict__ residual_out, bool* __restrict__ done_out,
                                     int32_t* __restrict__ steps_out, int64_t batch, int n, double tol,
                                     double accept, int64_t max_iter, bool guarded, double guard) {
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

  bool stopped = m >= batch, done = false;
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
      const bool at_floor = previous < 0.5 && r_norm > previous / 2;
      const bool converged = r_norm <= fmin(tol * a_norm * x_norm, accept) || (at_floor && r_norm <= accept);
      if (converged || at_floor || !isfinite(r_norm) || (guarded && step == 0 && r_norm >= guard) ||
          step == max_iter) {
        stopped = true;
        done = converged;
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
                                int64_t batch, int n, const NewtonSchulzSettings& settings, cudaStream_t stream) {
  if (batch == 0 || n == 0) return cudaSuccess;
  dispatch_width(n, [&](auto width) {
    constexpr int W = decltype(width)::value;
    newton_schulz_kernel<T, W><<<grid_for<W>(batch), dim3(W, groups_per_block<W>()), 0, stream>>>(
        A, X0, X, residual, done, steps, batch, n, settings.tol, settings.accept, settings.max_iter, settings.guarded,
        settings.guard);
  });
  return cudaGetLastError();
}

template cudaError_t launch_newton_schulz<float>(const float*, const float*, float*, float*, bool*, int32_t*, int64_t,
                                                  int, const NewtonSchulzSettings&, cudaStream_t);
template cudaError_t launch_newton_schulz<double>(const double*, const double*, double*, double*, bool*, int32_t*,
                                                   int64_t, int, const NewtonSchulzSettings&, cudaStream_t);

}  // namespace cuda_kernels
}  // namespace neuinv
