// Shared pieces of neuinv's CUDA kernels (csrc/cuda/*.cu, one kernel family per file so they compile in
// parallel): the kernels behind the CUDA implementations (csrc/cuda/neuinv_cuda_ops.cpp) of the operators that
// csrc/neuinv_ops.cpp defines, with the rules of csrc/neuinv_rules.h and the semantics of neuinv/reference.py.
//
// Layout (the design of MAGMA's batched small-size kernels and Ginkgo's block-Jacobi inversion): a group
// of W threads works on one matrix, thread i holding row i in registers (W >= n, a power of two up to
// 64, fixed by template so the row loops unroll); a block holds several groups, threadIdx.x = row,
// threadIdx.y = matrix within the block. Rows other threads need are exchanged through shared memory,
// per-matrix sums and pivot searches through warp shuffles.
#pragma once
// No ATen here: the .cu files hold kernels and their launchers only; argument checks, allocation and
// every error thrown live in host-compiled code (neuinv_cuda_ops.cpp).
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "neuinv_cuda_launch.h"

namespace neuinv {
namespace cuda_kernels {

constexpr unsigned kFullMask = 0xffffffffu;

// Groups per block: 128 threads in all (64 threads, one group, for W = 64).
template <int W>
constexpr int groups_per_block() { return W >= 64 ? 1 : 128 / W; }

// Where a thread works: row i of matrix m, group g of its block; row_active when both exist, offset of that
// row in the batch (0 for inactive threads, so that every address stays valid).
struct ThreadRow {
  int i, g;
  int64_t m;
  bool row_active;
  int64_t offset;
};

template <int W>
__device__ __forceinline__ ThreadRow thread_row(int64_t batch, int n) {
  const int i = threadIdx.x, g = threadIdx.y;
  const int64_t m = static_cast<int64_t>(blockIdx.x) * groups_per_block<W>() + g;
  const bool row_active = m < batch && i < n;
  return {i, g, m, row_active, row_active ? m * n * n + static_cast<int64_t>(i) * n : 0};
}

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

// sum_j (row[j] * scale)^2, or (row[j] / scale)^2 with `divide`: the scaled norms of reference.norm_product.
template <int W, typename T>
__device__ __forceinline__ T row_sum_of_scaled_squares(const T (&row)[W], T scale, bool divide) {
  T sum = T(0);
#pragma unroll
  for (int j = 0; j < W; ++j) {
    const T v = divide ? row[j] / scale : row[j] * scale;
    sum = fma(v, v, sum);
  }
  return sum;
}

// The largest |entry| of a matrix held one row per thread of a group of W threads (every thread gets it).
template <int W, typename T>
__device__ __forceinline__ T group_max_abs(const T (&row)[W], T* scratch) {
  T v = T(0);
#pragma unroll
  for (int j = 0; j < W; ++j) v = fmax(v, fabs(row[j]));
  constexpr int width = W < 32 ? W : 32;
#pragma unroll
  for (int offset = width / 2; offset > 0; offset /= 2) v = fmax(v, __shfl_xor_sync(kFullMask, v, offset, width));
  if constexpr (W > 32) {
    const int warp = threadIdx.x / 32;
    if (threadIdx.x % 32 == 0) scratch[warp] = v;
    __syncthreads();
    v = fmax(scratch[0], scratch[1]);
    __syncthreads();
  }
  return v;
}

template <int W, typename T>
__device__ __forceinline__ void share_row(T* rows, int i, const T (&row)[W]) {
#pragma unroll
  for (int j = 0; j < W; ++j) rows[i * (W + 1) + j] = row[j];
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

}  // namespace cuda_kernels
}  // namespace neuinv
