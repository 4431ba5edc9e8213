// The kernel behind neuinv::exact_inverse on CUDA: batched Gauss-Jordan inversion.
#include "neuinv_cuda_common.cuh"

namespace neuinv {
namespace cuda_kernels {
namespace {

// Gauss-Jordan inversion in place with implicit partial pivoting: at step k the unused row p with the
// largest |M[p][k]| becomes the pivot (no rows are swapped); afterwards X[k][p_j] = M[p_k][j]. info[m] is 0,
// or the 1-based column of the first zero pivot (X is then NaN), as LAPACK's getrf reports it. Matrices where
// `needed` is false (when given) are skipped: neither X nor info is written. The arithmetic
// is double precision for every input dtype (a float32 inverse carries only its final rounding), as on the CPU.
template <typename T, int W>
__global__ void exact_inverse_kernel(const T* __restrict__ A, T* __restrict__ X, int32_t* __restrict__ info,
                                     const bool* __restrict__ needed, int64_t batch, int n) {
  constexpr int G = groups_per_block<W>();
  using C = double;
  __shared__ C pivot_rows[G][W];
  __shared__ int pivot_of_step[G][W];
  __shared__ C scratch_value[2];
  __shared__ int scratch_row[2];
  const ThreadRow where = thread_row<W>(batch, n);
  const int i = where.i, g = where.g;
  const int64_t m = where.m, offset = where.offset;
  const bool row_active = where.row_active && (needed == nullptr || needed[m]);  // skipped: no row is active

  C row[W];
#pragma unroll
  for (int j = 0; j < W; ++j) row[j] = (row_active && j < n) ? static_cast<C>(A[offset + j]) : C(0);
  bool used = false;
  int my_step = 0, zero_pivot = 0;
  for (int k = 0; k < n; ++k) {
    const C own = pick<W>(row, k);
    const C size = fabs(own) > C(0) ? fabs(own) : C(0);  // NaN counts as zero
    C best = (row_active && !used) ? size : C(-1);
    int pivot = i;
    group_argmax<W>(best, pivot, scratch_value, scratch_row);
    if (i == pivot) {
      used = true;
      my_step = k;
#pragma unroll
      for (int j = 0; j < W; ++j) pivot_rows[g][j] = row[j];
      pivot_of_step[g][k] = i;
    }
    group_sync<W>();
    if (!(best > C(0)) && zero_pivot == 0) zero_pivot = k + 1;
    const C d = C(1) / pivot_rows[g][k];
    const C c = (i == pivot) ? C(0) : own * d;
#pragma unroll
    for (int j = 0; j < W; ++j) {
      const C p = pivot_rows[g][j];
      row[j] = (i == pivot) ? p * d : fma(-c, p, row[j]);
    }
    const C new_k = (i == pivot) ? d : -c;
#pragma unroll
    for (int j = 0; j < W; ++j) row[j] = (j == k) ? new_k : row[j];
    group_sync<W>();
  }
  if (row_active) {
    T* out = X + m * n * n + static_cast<int64_t>(my_step) * n;
    const T nan = std::numeric_limits<T>::quiet_NaN();
#pragma unroll
    for (int j = 0; j < W; ++j) {
      if (j < n) out[pivot_of_step[g][j]] = zero_pivot ? nan : static_cast<T>(row[j]);
    }
    if (i == 0) info[m] = zero_pivot;
  }
}

}  // namespace

template <typename T>
cudaError_t launch_exact_inverse(const T* A, T* X, int32_t* info, const bool* needed, int64_t batch, int n,
                                 cudaStream_t stream) {
  if (batch == 0 || n == 0) return cudaSuccess;
  dispatch_width(n, [&](auto width) {
    constexpr int W = decltype(width)::value;
    exact_inverse_kernel<T, W><<<grid_for<W>(batch), dim3(W, groups_per_block<W>()), 0, stream>>>(A, X, info, needed,
                                                                                                    batch, n);
  });
  return cudaGetLastError();
}

template cudaError_t launch_exact_inverse<float>(const float*, float*, int32_t*, const bool*, int64_t, int,
                                                  cudaStream_t);
template cudaError_t launch_exact_inverse<double>(const double*, double*, int32_t*, const bool*, int64_t, int,
                                                   cudaStream_t);

}  // namespace cuda_kernels
}  // namespace neuinv
