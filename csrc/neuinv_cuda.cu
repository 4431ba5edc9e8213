// neuinv's CUDA kernels: the CUDA implementations of the operators that csrc/neuinv_cpu.cpp defines
// (neuinv::exact_inverse, neuinv::newton_schulz, neuinv::residual_norm), with the same semantics as the
// Python reference in neuinv/reference.py.
//
// Layout (the design of MAGMA's batched small-size kernels and Ginkgo's block-Jacobi inversion): a group
// of W threads works on one matrix, thread i holding row i in registers (W >= n, a power of two up to
// 64, fixed by template so the row loops unroll); a block holds several groups, threadIdx.x = row,
// threadIdx.y = matrix within the block. Rows other threads need are exchanged through shared memory,
// per-matrix sums and pivot searches through warp shuffles.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cuda_runtime.h>

#include <cmath>
#include <limits>

namespace neuinv {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;

// Groups per block: 128 threads in all (64 threads, one group, for W = 64).
template <int W>
constexpr int groups_per_block() { return W >= 64 ? 1 : 128 / W; }

template <int W>
__device__ __forceinline__ void group_sync() {
  if constexpr (W <= 32) {
    __syncwarp();
  } else {
    __syncthreads();
  }
}

// Sum of v over the group. For W = 64 (one group per block) the two warps meet in `scratch`.
template <int W, typename T>
__device__ __forceinline__ T group_sum(T v, T* scratch) {
  constexpr int width = W < 32 ? W : 32;
#pragma unroll
  for (int offset = width / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullMask, v, offset, width);
  if constexpr (W > 32) {
    const int warp = threadIdx.x / 32;
    if (threadIdx.x % 32 == 0) scratch[warp] = v;
    __syncthreads();
    v = scratch[0] + scratch[1];
    __syncthreads();
  }
  return v;
}

// Largest value over the group and the row that holds it (the smaller row on ties).
template <int W, typename T>
__device__ __forceinline__ void group_argmax(T& value, int& row, T* scratch_value, int* scratch_row) {
  constexpr int width = W < 32 ? W : 32;
#pragma unroll
  for (int offset = width / 2; offset > 0; offset /= 2) {
    const T other_value = __shfl_xor_sync(kFullMask, value, offset, width);
    const int other_row = __shfl_xor_sync(kFullMask, row, offset, width);
    if (other_value > value || (other_value == value && other_row < row)) {
      value = other_value;
      row = other_row;
    }
  }
  if constexpr (W > 32) {
    const int warp = threadIdx.x / 32;
    if (threadIdx.x % 32 == 0) {
      scratch_value[warp] = value;
      scratch_row[warp] = row;
    }
    __syncthreads();
    const bool second = scratch_value[1] > scratch_value[0];
    value = scratch_value[second];
    row = scratch_row[second];
    __syncthreads();
  }
}

// row[k] for a run-time k without dynamic register indexing.
template <int W, typename T>
__device__ __forceinline__ T pick(const T (&row)[W], int k) {
  T value = T(0);
#pragma unroll
  for (int j = 0; j < W; ++j) value = (j == k) ? row[j] : value;
  return value;
}

template <int W, typename T>
__device__ __forceinline__ void load_row(const T* __restrict__ source, bool active, int n, T (&row)[W]) {
#pragma unroll
  for (int j = 0; j < W; ++j) row[j] = (active && j < n) ? source[j] : T(0);
}

template <int W, typename T>
__device__ __forceinline__ void store_row(T* __restrict__ target, int n, const T (&row)[W]) {
#pragma unroll
  for (int j = 0; j < W; ++j) {
    if (j < n) target[j] = row[j];
  }
}

// Row i of R = I - A X, with X's rows shared in `x_rows` (W x (W + 1), padded against bank conflicts).
template <int W, typename T>
__device__ __forceinline__ void residual_row(const T (&a)[W], const T* x_rows, int i, bool row_active, T (&r)[W]) {
#pragma unroll
  for (int j = 0; j < W; ++j) r[j] = (row_active && j == i) ? T(1) : T(0);
#pragma unroll
  for (int k = 0; k < W; ++k) {
#pragma unroll
    for (int j = 0; j < W; ++j) r[j] = fma(-a[k], x_rows[k * (W + 1) + j], r[j]);
  }
}

template <int W, typename T>
__device__ __forceinline__ T row_sum_of_squares(const T (&row)[W]) {
  T sum = T(0);
#pragma unroll
  for (int j = 0; j < W; ++j) sum = fma(row[j], row[j], sum);
  return sum;
}

template <int W, typename T>
__device__ __forceinline__ void share_row(T* rows, int i, const T (&row)[W]) {
#pragma unroll
  for (int j = 0; j < W; ++j) rows[i * (W + 1) + j] = row[j];
}

// Gauss-Jordan inversion in place with implicit partial pivoting: at step k the unused row p with the
// largest |M[p][k]| becomes the pivot (no rows are swapped); afterwards X[k][p_j] = M[p_k][j]. info[m] is 0,
// or the 1-based column of the first zero pivot (X is then NaN), as LAPACK's getrf reports it.
template <typename T, int W>
__global__ void exact_inverse_kernel(const T* __restrict__ A, T* __restrict__ X, int32_t* __restrict__ info,
                                     int64_t batch, int n) {
  constexpr int G = groups_per_block<W>();
  __shared__ T pivot_rows[G][W];
  __shared__ int pivot_of_step[G][W];
  __shared__ T scratch_value[2];
  __shared__ int scratch_row[2];
  const int i = threadIdx.x, g = threadIdx.y;
  const int64_t m = static_cast<int64_t>(blockIdx.x) * G + g;
  const bool row_active = m < batch && i < n;
  const int64_t offset = row_active ? m * n * n + static_cast<int64_t>(i) * n : 0;

  T row[W];
  load_row<W>(A + offset, row_active, n, row);
  bool used = false;
  int my_step = 0, zero_pivot = 0;
  for (int k = 0; k < n; ++k) {
    const T own = pick<W>(row, k);
    const T size = fabs(own) > T(0) ? fabs(own) : T(0);  // NaN counts as zero
    T best = (row_active && !used) ? size : T(-1);
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
    if (!(best > T(0)) && zero_pivot == 0) zero_pivot = k + 1;
    const T d = T(1) / pivot_rows[g][k];
    const T c = (i == pivot) ? T(0) : own * d;
#pragma unroll
    for (int j = 0; j < W; ++j) {
      const T p = pivot_rows[g][j];
      row[j] = (i == pivot) ? p * d : fma(-c, p, row[j]);
    }
    const T new_k = (i == pivot) ? d : -c;
#pragma unroll
    for (int j = 0; j < W; ++j) row[j] = (j == k) ? new_k : row[j];
    group_sync<W>();
  }
  if (row_active) {
    T* out = X + m * n * n + static_cast<int64_t>(my_step) * n;
    const T nan = std::numeric_limits<T>::quiet_NaN();
#pragma unroll
    for (int j = 0; j < W; ++j) {
      if (j < n) out[pivot_of_step[g][j]] = zero_pivot ? nan : row[j];
    }
    if (i == 0) info[m] = zero_pivot;
  }
}

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

// The whole Newton-Schulz loop X <- X + X (I - A X) per matrix, with the stopping rules of
// neuinv.reference.newton_schulz_refine: done at r <= min(tol ||A||_F ||X||_F, accept) or at the rounding
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
  const int i = threadIdx.x, g = threadIdx.y;
  const int64_t m = static_cast<int64_t>(blockIdx.x) * G + g;
  const bool row_active = m < batch && i < n;
  const int64_t offset = row_active ? m * n * n + static_cast<int64_t>(i) * n : 0;
  T a[W], x[W], r[W];
  load_row<W>(A + offset, row_active, n, a);
  load_row<W>(X0 + offset, row_active, n, x);
  const double a_norm = sqrt(static_cast<double>(group_sum<W>(row_sum_of_squares<W>(a), scratch)));

  bool stopped = m >= batch, done = false;
  double previous = INFINITY, residual = 0.0;
  int64_t steps = 0;
  for (int64_t step = 0;; ++step) {
    share_row<W>(rows[g], i, x);
    group_sync<W>();
    residual_row<W>(a, rows[g], i, row_active, r);
    const double r_norm = sqrt(static_cast<double>(group_sum<W>(row_sum_of_squares<W>(r), scratch)));
    const double x_norm = sqrt(static_cast<double>(group_sum<W>(row_sum_of_squares<W>(x), scratch)));
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

void check_batch(const at::Tensor& A, const char* name) {
  TORCH_CHECK(A.dim() == 3 && A.size(1) == A.size(2), name, " must have shape (b, n, n), got ", A.sizes());
  TORCH_CHECK(A.scalar_type() == at::kFloat || A.scalar_type() == at::kDouble, name,
              " must be float32 or float64, got ", A.scalar_type());
  TORCH_CHECK(A.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(A.size(1) <= 64, name, " holds ", A.size(1), "x", A.size(1), " matrices; the kernels take n <= 64");
}

// Calls body with the group width W (threads per matrix) for n: the next power of two.
template <typename Body>
void dispatch_width(int64_t n, Body&& body) {
  if (n <= 1) body(std::integral_constant<int, 1>{});
  else if (n <= 2) body(std::integral_constant<int, 2>{});
  else if (n <= 4) body(std::integral_constant<int, 4>{});
  else if (n <= 8) body(std::integral_constant<int, 8>{});
  else if (n <= 16) body(std::integral_constant<int, 16>{});
  else if (n <= 32) body(std::integral_constant<int, 32>{});
  else body(std::integral_constant<int, 64>{});
}

template <int W>
dim3 grid_for(int64_t batch) {
  return dim3(static_cast<unsigned>((batch + groups_per_block<W>() - 1) / groups_per_block<W>()));
}

std::tuple<at::Tensor, at::Tensor> exact_inverse_cuda(const at::Tensor& A_in) {
  check_batch(A_in, "A");
  const c10::cuda::CUDAGuard device_guard(A_in.device());
  const at::Tensor A = A_in.contiguous();
  const int64_t b = A.size(0), n = A.size(1);
  at::Tensor X = at::empty_like(A);
  at::Tensor info = at::zeros({b}, A.options().dtype(at::kInt));
  if (b == 0 || n == 0) return {X, info};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "neuinv_exact_inverse_cuda", [&] {
    dispatch_width(n, [&](auto width) {
      constexpr int W = decltype(width)::value;
      exact_inverse_kernel<scalar_t, W><<<grid_for<W>(b), dim3(W, groups_per_block<W>()), 0, stream>>>(
          A.data_ptr<scalar_t>(), X.data_ptr<scalar_t>(), info.data_ptr<int32_t>(), b, static_cast<int>(n));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {X, info};
}

at::Tensor residual_norm_cuda(const at::Tensor& A_in, const at::Tensor& X_in) {
  check_batch(A_in, "A");
  check_batch(X_in, "X");
  TORCH_CHECK(A_in.sizes() == X_in.sizes() && A_in.scalar_type() == X_in.scalar_type(),
              "A and X must have the same shape and dtype");
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

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> newton_schulz_cuda(
    const at::Tensor& A_in, const at::Tensor& X0_in, double tol, double accept, int64_t max_iter,
    bool guarded, double guard) {
  check_batch(A_in, "A");
  check_batch(X0_in, "X0");
  TORCH_CHECK(A_in.sizes() == X0_in.sizes() && A_in.scalar_type() == X0_in.scalar_type(),
              "A and X0 must have the same shape and dtype");
  const c10::cuda::CUDAGuard device_guard(A_in.device());
  const at::Tensor A = A_in.contiguous(), X0 = X0_in.contiguous();
  const int64_t b = A.size(0), n = A.size(1);
  at::Tensor X = at::empty_like(A);
  at::Tensor residual = at::zeros({b}, A.options());
  at::Tensor done = at::zeros({b}, A.options().dtype(at::kBool));
  at::Tensor steps = at::zeros({b}, A.options().dtype(at::kInt));
  if (b == 0 || n == 0) return {X, residual, done, steps};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "neuinv_newton_schulz_cuda", [&] {
    dispatch_width(n, [&](auto width) {
      constexpr int W = decltype(width)::value;
      newton_schulz_kernel<scalar_t, W><<<grid_for<W>(b), dim3(W, groups_per_block<W>()), 0, stream>>>(
          A.data_ptr<scalar_t>(), X0.data_ptr<scalar_t>(), X.data_ptr<scalar_t>(), residual.data_ptr<scalar_t>(),
          done.data_ptr<bool>(), steps.data_ptr<int32_t>(), b, static_cast<int>(n), tol, accept, max_iter, guarded,
          guard);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
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
