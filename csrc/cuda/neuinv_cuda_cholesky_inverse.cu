// The kernel behind neuinv::invert's positive-definite exact path on CUDA: batched Cholesky inversion.
#include "neuinv_cuda_common.cuh"

namespace neuinv {
namespace cuda_kernels {
namespace {

// A^-1 = L^-T L^-1 from A = L L^T (reference.cholesky_inverse), in double precision for every input dtype, one
// group of W threads per matrix (neuinv_cuda_common.cuh), the matrix in shared memory:
// 1. right-looking Cholesky of A's lower triangle (Golub & Van Loan Alg. 4.2.1): at step k every thread reads the
//    pivot, thread i > k scales l_ik and updates its row of the trailing lower triangle;
// 2. thread j solves L m = e_j for column j of M = L^-1 in registers (fully unrolled, so the column stays in
//    registers), then writes it over L;
// 3. thread i forms row i of X = M^T M (dot products of columns of M).
// info[m] is 0, or the 1-based index of the first pivot rules::cholesky_pivot_accepted refuses (X is then NaN);
// matrices where `needed` is false (when given) are skipped: neither X nor info is written.
template <typename T, int W>
__global__ void cholesky_inverse_kernel(const T* __restrict__ A, T* __restrict__ X, int32_t* __restrict__ info,
                                        const bool* __restrict__ needed, int64_t batch, int n) {
  constexpr int G = groups_per_block<W>();
  __shared__ double s[G][W][W + 1];  // padded against bank conflicts
  const ThreadRow where = thread_row<W>(batch, n);
  const int i = where.i, g = where.g;
  const int64_t m = where.m, offset = where.offset;
  const bool row_active = where.row_active && (needed == nullptr || needed[m]);  // skipped: no row is active
#pragma unroll
  for (int j = 0; j < W; ++j) s[g][i][j] = (row_active && j < n && j <= i) ? static_cast<double>(A[offset + j]) : 0.0;
  group_sync<W>();
  int refused = 0;
  for (int k = 0; k < n; ++k) {
    const double pivot = s[g][k][k];
    const bool accepted = rules::cholesky_pivot_accepted(pivot);
    if (!accepted && refused == 0) refused = k + 1;
    const double l_kk = sqrt(accepted ? pivot : 1.0);
    group_sync<W>();
    if (i == k) s[g][k][k] = l_kk;
    if (i > k && i < n) s[g][i][k] /= l_kk;
    group_sync<W>();
    if (i > k && i < n) {
      const double l_ik = s[g][i][k];
      for (int j = k + 1; j <= i; ++j) s[g][i][j] = fma(-l_ik, s[g][j][k], s[g][i][j]);
    }
    group_sync<W>();
  }
  // Column j = i of M = L^-1: m_r = (delta_rj - sum_{c<r} l_rc m_c) / l_rr for r >= j, 0 above.
  double column[W];
#pragma unroll
  for (int r = 0; r < W; ++r) {
    double sum = (r == i) ? 1.0 : 0.0;
#pragma unroll
    for (int c = 0; c < r; ++c) sum = fma(-s[g][r][c], column[c], sum);
    column[r] = (r >= i && r < n) ? sum / s[g][r][r] : 0.0;
  }
  group_sync<W>();
#pragma unroll
  for (int r = 0; r < W; ++r) s[g][r][i] = column[r];
  group_sync<W>();
  if (row_active) {
    T* out = X + offset;
    const T nan = std::numeric_limits<T>::quiet_NaN();
    for (int j = 0; j < n; ++j) {
      double sum = 0.0;
      for (int r = (i > j ? i : j); r < n; ++r) sum = fma(s[g][r][i], s[g][r][j], sum);
      out[j] = refused ? nan : static_cast<T>(sum);
    }
    if (i == 0) info[m] = refused;
  }
}

}  // namespace

template <typename T>
cudaError_t launch_cholesky_inverse(const T* A, T* X, int32_t* info, const bool* needed, int64_t batch, int n,
                                    cudaStream_t stream) {
  if (batch == 0 || n == 0) return cudaSuccess;
  dispatch_width(n, [&](auto width) {
    constexpr int W = decltype(width)::value;
    cholesky_inverse_kernel<T, W><<<grid_for<W>(batch), dim3(W, groups_per_block<W>()), 0, stream>>>(
        A, X, info, needed, batch, n);
  });
  return cudaGetLastError();
}

template cudaError_t launch_cholesky_inverse<float>(const float*, float*, int32_t*, const bool*, int64_t, int,
                                                     cudaStream_t);
template cudaError_t launch_cholesky_inverse<double>(const double*, double*, int32_t*, const bool*, int64_t, int,
                                                      cudaStream_t);

}  // namespace cuda_kernels
}  // namespace neuinv
