// neuinv's per-matrix kernels, written once for every device: the whole verified inversion of one "matrix of V"
// (csrc/kernels/arithmetic.h: one matrix for a scalar V, kLanes interleaved matrices for a SIMD pack), as the CPU
// driver (csrc/cpu/invert_cpu.cpp) runs it on packs and on scalars and the CUDA launcher
// (csrc/cuda/neuinv_cuda_invert_small.cu) runs it on one thread per matrix. The semantics are those of
// neuinv/reference.py (invert), the rules those of csrc/neuinv_rules.h (neuinv/rules.py, neuinv/certificate.py).
//
// The exact path, the same wherever this file runs (written also in neuinv/rules.py): Gauss-Jordan elimination with partial
// pivoting on [A | I] (Cholesky of A's lower triangle for positive-definite input; the adjugate closed form for
// float32 n = 2-4, redone by Gauss-Jordan where it is not certified to float32 accuracy) in double precision
// for every input dtype, giving X_w; for float64 input one Newton-Schulz step X_w + X_w (I - A X_w) where
// ||I - A X_w|| lies above eps ||A|| ||X_w|| (and below 1/2); the certificate of X_w, then X = round_T(X_w) with
// the rounding added to the bound (certificate.error_bound(..., rounded_to=T)).
//
// Matrices are row-major, element (i, j) at [i * n + j]; N is n where it is fixed at compile time, else 0. The CPU
// build compiles them without floating-point contraction (-ffp-contract=off), so that a pack's lanes and a scalar
// compute the same bits and the certificate's branches give the same result for A and 2^k A.
#pragma once
#include "arithmetic.h"

namespace neuinv {
namespace kernels {

constexpr int64_t kMaxN = 64;

// Room for an n x n matrix: N * N when N is fixed, else kMaxN * kMaxN.
template <int N>
constexpr int64_t kRoom = (N > 0 ? N : kMaxN) * (N > 0 ? N : kMaxN);

// Row exchanges as lane-wise selects (no data-dependent addressing, so a small matrix stays in registers on a
// CUDA thread and packs can pivot per lane) for fixed n up to this size, as swaps of rows otherwise.
constexpr int kMaskedExchangeMaxN = 8;

// Gauss-Jordan elimination with partial pivoting on [A | I] (Higham, Accuracy and Stability, §14.4), X = A^-1 in
// V's arithmetic. Returns the lanes that met a zero (or NaN) pivot: A singular there, X meaningless.
template <int N, typename V>
NEUINV_HOST_DEVICE typename Arithmetic<V>::mask gauss_jordan(const V* a, V* x, int64_t n_runtime) {
  using Ar = Arithmetic<V>;
  constexpr bool masked = N > 0 && N <= kMaskedExchangeMaxN;
  const int64_t n = N > 0 ? N : n_runtime, w = 2 * n;
  V work[2 * kRoom<N>];
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      work[i * w + j] = a[i * n + j];
      work[i * w + n + j] = Ar::broadcast(i == j ? 1.0 : 0.0);
    }
  }
  typename Ar::mask singular = Ar::negate(Ar::equal(Ar::broadcast(0.0), Ar::broadcast(0.0)));
  for (int64_t k = 0; k < n; ++k) {
    V best = Ar::magnitude(work[k * w + k]);
    V pivot = Ar::broadcast(static_cast<double>(k));
    int64_t pivot_row = k;
    for (int64_t i = k + 1; i < n; ++i) {
      const V value = Ar::magnitude(work[i * w + k]);
      const auto larger = Ar::greater(value, best);
      best = Ar::select(larger, value, best);
      if constexpr (masked) {
        pivot = Ar::select(larger, Ar::broadcast(static_cast<double>(i)), pivot);
      } else {
        if (larger) pivot_row = i;
      }
    }
    singular = Ar::either(singular, Ar::negate(Ar::greater(best, Ar::broadcast(0.0))));
    // Columns < k of A's half hold zeros in rows k and below and are never read again: the exchange, the scaling
    // and the elimination start at column k (rounded down to a multiple of 4 for the row swaps, so that the
    // vector loops over a row keep their alignment).
    const int64_t start = masked ? k : (k & ~int64_t(3));
    if constexpr (masked) {
      for (int64_t i = k + 1; i < n; ++i) {
        const auto exchange = Ar::equal(pivot, Ar::broadcast(static_cast<double>(i)));
        for (int64_t j = start; j < w; ++j) {
          const V top = work[k * w + j], other = work[i * w + j];
          work[k * w + j] = Ar::select(exchange, other, top);
          work[i * w + j] = Ar::select(exchange, top, other);
        }
      }
    } else if (pivot_row != k) {
      for (int64_t j = start; j < w; ++j) {
        const V top = work[k * w + j];
        work[k * w + j] = work[pivot_row * w + j];
        work[pivot_row * w + j] = top;
      }
    }
    V* row_k = work + k * w;
    const V inverse_pivot = Ar::broadcast(1.0) / row_k[k];
    for (int64_t j = start; j < w; ++j) row_k[j] = row_k[j] * inverse_pivot;
    for (int64_t i = 0; i < n; ++i) {
      if (i == k) continue;
      V* row_i = work + i * w;
      const V factor = row_i[k];
      for (int64_t j = start; j < w; ++j) row_i[j] = row_i[j] - factor * row_k[j];
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) x[i * n + j] = work[i * w + n + j];
  }
  return singular;
}

// A^-1 = adj(A) / det(A) for n = 2, 3, 4 (4 x 4: Laplace expansion in the 2 x 2 minors of rows 0-1 and 2-3). Its
// error grows like u cond^(n-1) (against u cond for Gauss-Jordan): in double precision far below float32's
// rounding for any matrix whose float32 inverse is worth having; the caller certifies each result and redoes the
// rest by Gauss-Jordan. A singular matrix gets Inf or NaN.
template <int N, typename V>
NEUINV_HOST_DEVICE void adjugate_inverse(const V* a, V* b) {
#define NEUINV_A(i, j) a[(i) * N + (j)]
  if constexpr (N == 2) {
    const V d = Arithmetic<V>::broadcast(1.0) / (NEUINV_A(0, 0) * NEUINV_A(1, 1) - NEUINV_A(0, 1) * NEUINV_A(1, 0));
    b[0] = NEUINV_A(1, 1) * d;
    b[1] = -NEUINV_A(0, 1) * d;
    b[2] = -NEUINV_A(1, 0) * d;
    b[3] = NEUINV_A(0, 0) * d;
  } else if constexpr (N == 3) {
    const V c00 = NEUINV_A(1, 1) * NEUINV_A(2, 2) - NEUINV_A(1, 2) * NEUINV_A(2, 1);
    const V c10 = NEUINV_A(1, 2) * NEUINV_A(2, 0) - NEUINV_A(1, 0) * NEUINV_A(2, 2);
    const V c20 = NEUINV_A(1, 0) * NEUINV_A(2, 1) - NEUINV_A(1, 1) * NEUINV_A(2, 0);
    const V d = Arithmetic<V>::broadcast(1.0) / (NEUINV_A(0, 0) * c00 + NEUINV_A(0, 1) * c10 + NEUINV_A(0, 2) * c20);
    b[0] = c00 * d;
    b[1] = (NEUINV_A(0, 2) * NEUINV_A(2, 1) - NEUINV_A(0, 1) * NEUINV_A(2, 2)) * d;
    b[2] = (NEUINV_A(0, 1) * NEUINV_A(1, 2) - NEUINV_A(0, 2) * NEUINV_A(1, 1)) * d;
    b[3] = c10 * d;
    b[4] = (NEUINV_A(0, 0) * NEUINV_A(2, 2) - NEUINV_A(0, 2) * NEUINV_A(2, 0)) * d;
    b[5] = (NEUINV_A(0, 2) * NEUINV_A(1, 0) - NEUINV_A(0, 0) * NEUINV_A(1, 2)) * d;
    b[6] = c20 * d;
    b[7] = (NEUINV_A(0, 1) * NEUINV_A(2, 0) - NEUINV_A(0, 0) * NEUINV_A(2, 1)) * d;
    b[8] = (NEUINV_A(0, 0) * NEUINV_A(1, 1) - NEUINV_A(0, 1) * NEUINV_A(1, 0)) * d;
  } else if constexpr (N == 4) {
    const V s0 = NEUINV_A(0, 0) * NEUINV_A(1, 1) - NEUINV_A(1, 0) * NEUINV_A(0, 1);
    const V s1 = NEUINV_A(0, 0) * NEUINV_A(1, 2) - NEUINV_A(1, 0) * NEUINV_A(0, 2);
    const V s2 = NEUINV_A(0, 0) * NEUINV_A(1, 3) - NEUINV_A(1, 0) * NEUINV_A(0, 3);
    const V s3 = NEUINV_A(0, 1) * NEUINV_A(1, 2) - NEUINV_A(1, 1) * NEUINV_A(0, 2);
    const V s4 = NEUINV_A(0, 1) * NEUINV_A(1, 3) - NEUINV_A(1, 1) * NEUINV_A(0, 3);
    const V s5 = NEUINV_A(0, 2) * NEUINV_A(1, 3) - NEUINV_A(1, 2) * NEUINV_A(0, 3);
    const V c5 = NEUINV_A(2, 2) * NEUINV_A(3, 3) - NEUINV_A(3, 2) * NEUINV_A(2, 3);
    const V c4 = NEUINV_A(2, 1) * NEUINV_A(3, 3) - NEUINV_A(3, 1) * NEUINV_A(2, 3);
    const V c3 = NEUINV_A(2, 1) * NEUINV_A(3, 2) - NEUINV_A(3, 1) * NEUINV_A(2, 2);
    const V c2 = NEUINV_A(2, 0) * NEUINV_A(3, 3) - NEUINV_A(3, 0) * NEUINV_A(2, 3);
    const V c1 = NEUINV_A(2, 0) * NEUINV_A(3, 2) - NEUINV_A(3, 0) * NEUINV_A(2, 2);
    const V c0 = NEUINV_A(2, 0) * NEUINV_A(3, 1) - NEUINV_A(3, 0) * NEUINV_A(2, 1);
    const V d = Arithmetic<V>::broadcast(1.0) / (s0 * c5 - s1 * c4 + s2 * c3 + s3 * c2 - s4 * c1 + s5 * c0);
    b[0] = (NEUINV_A(1, 1) * c5 - NEUINV_A(1, 2) * c4 + NEUINV_A(1, 3) * c3) * d;
    b[1] = (-NEUINV_A(0, 1) * c5 + NEUINV_A(0, 2) * c4 - NEUINV_A(0, 3) * c3) * d;
    b[2] = (NEUINV_A(3, 1) * s5 - NEUINV_A(3, 2) * s4 + NEUINV_A(3, 3) * s3) * d;
    b[3] = (-NEUINV_A(2, 1) * s5 + NEUINV_A(2, 2) * s4 - NEUINV_A(2, 3) * s3) * d;
    b[4] = (-NEUINV_A(1, 0) * c5 + NEUINV_A(1, 2) * c2 - NEUINV_A(1, 3) * c1) * d;
    b[5] = (NEUINV_A(0, 0) * c5 - NEUINV_A(0, 2) * c2 + NEUINV_A(0, 3) * c1) * d;
    b[6] = (-NEUINV_A(3, 0) * s5 + NEUINV_A(3, 2) * s2 - NEUINV_A(3, 3) * s1) * d;
    b[7] = (NEUINV_A(2, 0) * s5 - NEUINV_A(2, 2) * s2 + NEUINV_A(2, 3) * s1) * d;
    b[8] = (NEUINV_A(1, 0) * c4 - NEUINV_A(1, 1) * c2 + NEUINV_A(1, 3) * c0) * d;
    b[9] = (-NEUINV_A(0, 0) * c4 + NEUINV_A(0, 1) * c2 - NEUINV_A(0, 3) * c0) * d;
    b[10] = (NEUINV_A(3, 0) * s4 - NEUINV_A(3, 1) * s2 + NEUINV_A(3, 3) * s0) * d;
    b[11] = (-NEUINV_A(2, 0) * s4 + NEUINV_A(2, 1) * s2 - NEUINV_A(2, 3) * s0) * d;
    b[12] = (-NEUINV_A(1, 0) * c3 + NEUINV_A(1, 1) * c1 - NEUINV_A(1, 2) * c0) * d;
    b[13] = (NEUINV_A(0, 0) * c3 - NEUINV_A(0, 1) * c1 + NEUINV_A(0, 2) * c0) * d;
    b[14] = (-NEUINV_A(3, 0) * s3 + NEUINV_A(3, 1) * s1 - NEUINV_A(3, 2) * s0) * d;
    b[15] = (NEUINV_A(2, 0) * s3 - NEUINV_A(2, 1) * s1 + NEUINV_A(2, 2) * s0) * d;
  }
#undef NEUINV_A
}

// The positive-definite exact path (reference.cholesky_inverse): A = L L^T from A's lower triangle
// (right-looking, Golub & Van Loan, Matrix Computations, Alg. 4.2.1), M = L^-1 by forward substitution,
// X = M^T M (Higham, Accuracy and Stability, §10.1 and §14.2). A lane whose pivot rules::cholesky_pivot_accepted
// refuses goes on with pivot 1 (its X is discarded); returns those lanes.
template <int N, typename V>
NEUINV_HOST_DEVICE typename Arithmetic<V>::mask cholesky_inverse(const V* a, V* x, int64_t n_runtime) {
  using Ar = Arithmetic<V>;
  const int64_t n = N > 0 ? N : n_runtime;
  V u[kRoom<N>], inverse[kRoom<N>];  // u = L^T (upper triangle, row-major), inverse = L^-1 (lower triangle)
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j <= i; ++j) u[j * n + i] = a[i * n + j];
  }
  typename Ar::mask refused = Ar::negate(Ar::equal(Ar::broadcast(0.0), Ar::broadcast(0.0)));
  for (int64_t k = 0; k < n; ++k) {
    typename Ar::mask accepted = Ar::equal(Ar::broadcast(0.0), Ar::broadcast(0.0));
    for (int l = 0; l < Ar::kLanes; ++l) {
      Ar::set_mask_lane(accepted, l, rules::cholesky_pivot_accepted(static_cast<double>(Ar::lane(u[k * n + k], l))));
    }
    refused = Ar::either(refused, Ar::negate(accepted));
    const V l_kk = Ar::square_root(Ar::select(accepted, u[k * n + k], Ar::broadcast(1.0)));
    const V scale = Ar::broadcast(1.0) / l_kk;
    u[k * n + k] = l_kk;
    for (int64_t i = k + 1; i < n; ++i) u[k * n + i] = u[k * n + i] * scale;
    for (int64_t j = k + 1; j < n; ++j) {
      const V factor = u[k * n + j];
      for (int64_t i = j; i < n; ++i) u[j * n + i] = u[j * n + i] - factor * u[k * n + i];
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j <= i; ++j) inverse[i * n + j] = Ar::broadcast(i == j ? 1.0 : 0.0);
    for (int64_t k = 0; k < i; ++k) {
      const V factor = u[k * n + i];
      for (int64_t j = 0; j <= k; ++j) inverse[i * n + j] = inverse[i * n + j] - factor * inverse[k * n + j];
    }
    const V scale = Ar::broadcast(1.0) / u[i * n + i];
    for (int64_t j = 0; j <= i; ++j) inverse[i * n + j] = inverse[i * n + j] * scale;
  }
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j <= i; ++j) {
      V sum = Ar::broadcast(0.0);
      for (int64_t k = i; k < n; ++k) sum = sum + inverse[k * n + i] * inverse[k * n + j];
      x[i * n + j] = sum;
      x[j * n + i] = sum;
    }
  }
  return refused;
}

// sum of v_e^2 over `count` entries, in four interleaved partial sums added pairwise (one running sum is a chain
// of dependent additions; the certificate bounds the rounding of a sum in any order).
template <typename V>
NEUINV_HOST_DEVICE V sum_of_squares(const V* v, int64_t count) {
  const V zero = Arithmetic<V>::broadcast(0.0);
  V part[4] = {zero, zero, zero, zero};
  int64_t e = 0;
  for (; e + 4 <= count; e += 4) {
    for (int p = 0; p < 4; ++p) part[p] = part[p] + v[e + p] * v[e + p];
  }
  for (int p = 0; e + p < count; ++p) part[p] = part[p] + v[e + p] * v[e + p];
  return (part[0] + part[2]) + (part[1] + part[3]);
}

// out += sign * left * right (n x n), four rows of out at a time: each row of `right` is loaded once per four
// rows. Every entry sums over k in order.
template <int N, typename V>
NEUINV_HOST_DEVICE void accumulate_product(const V* left, const V* right, V* out, int64_t n_runtime, double sign) {
  const int64_t n = N > 0 ? N : n_runtime;
  const V s = Arithmetic<V>::broadcast(sign);
  int64_t i0 = 0;
  for (; i0 + 4 <= n; i0 += 4) {
    V* o = out + i0 * n;
    for (int64_t k = 0; k < n; ++k) {
      const V* right_row = right + k * n;
      const V l0 = s * left[i0 * n + k], l1 = s * left[(i0 + 1) * n + k], l2 = s * left[(i0 + 2) * n + k],
              l3 = s * left[(i0 + 3) * n + k];
      for (int64_t j = 0; j < n; ++j) {
        const V value = right_row[j];
        o[j] = o[j] + l0 * value;
        o[n + j] = o[n + j] + l1 * value;
        o[2 * n + j] = o[2 * n + j] + l2 * value;
        o[3 * n + j] = o[3 * n + j] + l3 * value;
      }
    }
  }
  for (int64_t i = i0; i < n; ++i) {
    for (int64_t k = 0; k < n; ++k) {
      const V l = s * left[i * n + k];
      for (int64_t j = 0; j < n; ++j) out[i * n + j] = out[i * n + j] + l * right[k * n + j];
    }
  }
}

// R = I - A X in V's arithmetic; returns ||R||_F^2.
template <int N, typename V>
NEUINV_HOST_DEVICE V residual(const V* a, const V* x, V* r, int64_t n_runtime) {
  const int64_t n = N > 0 ? N : n_runtime;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) r[i * n + j] = Arithmetic<V>::broadcast(i == j ? 1.0 : 0.0);
  }
  accumulate_product<N>(a, x, r, n, -1.0);
  return sum_of_squares(r, n * n);
}

// One Newton-Schulz step X <- X + X R (R = I - A X; Higham, Accuracy and Stability, §14.7) where `step`; X is kept
// in the other lanes.
template <int N, typename V>
NEUINV_HOST_DEVICE void newton_schulz_step(const V* r, V* x, V* next, typename Arithmetic<V>::mask step,
                                           int64_t n_runtime) {
  using Ar = Arithmetic<V>;
  const int64_t n = N > 0 ? N : n_runtime;
  for (int64_t e = 0; e < n * n; ++e) next[e] = x[e];
  accumulate_product<N>(x, r, next, n, 1.0);
  for (int64_t e = 0; e < n * n; ++e) x[e] = Ar::select(step, next[e], x[e]);
}

// Lane l of a matrix of V, row-major into `out`.
template <int N, typename V, typename S>
NEUINV_HOST_DEVICE void copy_lane(const V* m, int l, S* out, int64_t n_runtime) {
  const int64_t n = N > 0 ? N : n_runtime;
  for (int64_t e = 0; e < n * n; ++e) out[e] = static_cast<S>(Arithmetic<V>::lane(m[e], l));
}

// Lanes 0..count-1 of a matrix of V from `count` row-major n x n matrices one after another (converted to V's
// type); the lanes beyond count get the identity, which inverts without trouble.
template <int N, typename V, typename S>
NEUINV_HOST_DEVICE void load_lanes(const S* matrices, int count, V* m, int64_t n_runtime) {
  using Ar = Arithmetic<V>;
  const int64_t n = N > 0 ? N : n_runtime;
  const S* sources[Ar::kLanes];
  for (int l = 0; l < count; ++l) sources[l] = matrices + l * n * n;
  S identity[Ar::kLanes > 1 ? kRoom<N> : 1];  // packs only: the pack's lanes beyond count
  if constexpr (Ar::kLanes > 1) {
    for (int64_t e = 0; e < n * n; ++e) identity[e] = static_cast<S>(e % (n + 1) == 0 ? 1 : 0);
    for (int l = count; l < Ar::kLanes; ++l) sources[l] = identity;
  }
  Ar::interleave(sources, n * n, m);
}

// X = round_T(X_w) (X_w's entries given by entry(e)) and its bound; NaN and +inf where the bound is +inf or an
// entry overflows T in the rounding.
template <typename T, typename Entry>
NEUINV_HOST_DEVICE double store_certified(Entry entry, T* x, int64_t count, double bound) {
  bool finite = bound < rules::kInfinity;
  for (int64_t e = 0; e < count && finite; ++e) {
    x[e] = static_cast<T>(entry(e));
    finite = isfinite(x[e]);
  }
  if (finite) return bound;
  for (int64_t e = 0; e < count; ++e) x[e] = static_cast<T>(NAN);
  return rules::kInfinity;
}

// Whether the exact path polishes X_w by one Newton-Schulz step: float64 input whose residual r lies above
// eps ||A||_F ||X_w||_F (Gauss-Jordan lands up to ~8x above LU there at cond 1e4; the step brings it to LU's
// level) and below 1/2 (so that the step converges).
template <typename T>
NEUINV_HOST_DEVICE bool polishes(double r, double norms) {
  return sizeof(T) == sizeof(double) && r > 0x1p-52 * norms && r < 0.5;
}

// The exact path's certificate of one matrix (the contract at the top of this file), given X_w and r_sq =
// ||fl(I - A X_w)||_F^2 in double: polishes X_w where `polishes` says so, then returns the error bound of
// X = round_T(X_w) (certificate.error_bound with rounded_to=T). A is given in double (exactly A for float32 and
// float64 input).
template <typename T, int N>
NEUINV_HOST_DEVICE double certify_exact(const double* a, double* x_w, double r_sq, int64_t n_runtime) {
  const int64_t n = N > 0 ? N : n_runtime;
  double r = sqrt(r_sq);
  double norms = rules::scaled_norm_product(a, x_w, n * n);
  if (polishes<T>(r, norms)) {
    double residual_matrix[kRoom<N>], next[kRoom<N>];
    residual<N>(a, x_w, residual_matrix, n);
    newton_schulz_step<N>(residual_matrix, x_w, next, true, n);
    r = sqrt(residual<N>(a, x_w, residual_matrix, n));
    norms = rules::scaled_norm_product(a, x_w, n * n);
  }
  const double rho = rules::error_bound_from<N>(a, x_w, r, sqrt(static_cast<double>(n)) + norms, n);
  return rules::rounded_error_bound<T>(rho, sqrt(sum_of_squares(x_w, n * n)), n);
}

// Certifies X_w (lanes 0..count-1 of a matrix of VD; A in a) and stores X = round_T(X_w) with its bound, lane l
// at x + l n^2 and bound[l]; +inf and NaN where `refused`. Every lane is certified at once where it takes the
// certificate's common branch (norms summed unscaled, no Dot2, no polish), by certify_exact's formulas; the other
// lanes go through certify_exact one by one. With `keep_accurate_only` a lane whose
// bound is not below eps32 (2^-23) is neither stored nor given a bound (bound[l] = NaN): the closed form's
// results that Gauss-Jordan redoes.
template <typename T, int N, typename VD>
NEUINV_HOST_DEVICE void certify_and_store(const VD* a, VD* x_w, VD* scratch, typename Arithmetic<VD>::mask refused,
                                          T* x, double* bound, int count, int64_t n_runtime,
                                          bool keep_accurate_only) {
  using Ad = Arithmetic<VD>;
  const int64_t n = N > 0 ? N : n_runtime, size = n * n;
  const VD r = Ad::square_root(residual<N>(a, x_w, scratch, n));
  const VD a_squared = sum_of_squares(a, size), x_squared = sum_of_squares(x_w, size);
  const VD x_norm = Ad::square_root(x_squared), norms = Ad::square_root(a_squared) * x_norm;
  const VD g_s = rules::gamma_of(n + 1) * (sqrt(static_cast<double>(n)) + norms);
  const VD common = rules::rounded_error_bound<T>(rules::rho_from(r, g_s, n), x_norm, n);
  auto takes_common_branch = [&](int l) {
    const double r_l = Ad::lane(r, l);
    return rules::plain_norms_suffice(Ad::lane(a_squared, l), Ad::lane(x_squared, l)) &&
           !rules::needs_dot2(r_l, Ad::lane(g_s, l)) && !polishes<T>(r_l, Ad::lane(norms, l));
  };
  bool every_lane_common = count == Ad::kLanes;
  for (int l = 0; l < count && every_lane_common; ++l) {
    every_lane_common = Ad::mask_lane(refused, l) || takes_common_branch(l);
  }
  if (every_lane_common) {  // store_certified for every lane at once: X stored whole, then NaN where refused
    T* targets[Ad::kLanes];
    VD overflow = Ad::broadcast(0.0);  // NaN in the lanes where an entry is not finite once rounded to T
    for (int64_t e = 0; e < size; ++e) overflow = overflow + Ad::template rounded<T>(x_w[e]) * 0.0;
    for (int l = 0; l < count; ++l) targets[l] = x + l * size;
    Ad::deinterleave(x_w, size, targets, count);
    for (int l = 0; l < count; ++l) {
      const double b = Ad::mask_lane(refused, l) ? rules::kInfinity : Ad::lane(common, l);
      if (keep_accurate_only && !(b <= 0x1p-23)) {
        bound[l] = NAN;  // redone by Gauss-Jordan, which overwrites what was stored
      } else if (b < rules::kInfinity && !isnan(Ad::lane(overflow, l))) {
        bound[l] = b;
      } else {
        for (int64_t e = 0; e < size; ++e) targets[l][e] = static_cast<T>(NAN);
        bound[l] = rules::kInfinity;
      }
    }
    return;
  }
  for (int l = 0; l < count; ++l) {
    double b = rules::kInfinity;
    const double r_l = Ad::lane(r, l);
    const bool common_branch = takes_common_branch(l);
    double a_lane[kRoom<N>], x_lane[kRoom<N>];
    if (Ad::mask_lane(refused, l)) {
      b = rules::kInfinity;
    } else if (common_branch) {
      b = Ad::lane(common, l);
    } else {
      copy_lane<N>(a, l, a_lane, n);
      copy_lane<N>(x_w, l, x_lane, n);
      b = certify_exact<T, N>(a_lane, x_lane, r_l * r_l, n);
    }
    if (keep_accurate_only && !(b <= 0x1p-23)) {
      bound[l] = NAN;
      continue;
    }
    if (common_branch || Ad::mask_lane(refused, l)) {
      bound[l] = store_certified([&](int64_t e) { return static_cast<double>(Ad::lane(x_w[e], l)); }, x + l * size,
                                 size, b);
    } else {
      bound[l] = store_certified([&](int64_t e) { return x_lane[e]; }, x + l * size, size, b);
    }
  }
}

// The exact path (the contract at the top of this file) for lanes 0..count-1 of a matrix of double-precision
// lanes VD holding A: X written rounded to T, row-major, lane l at x + l n^2 (NaN where nothing is certified), and
// its error bound at bound[l] (+inf there).
template <typename T, int N, typename VD>
NEUINV_HOST_DEVICE void exact_inverse(const VD* a, T* x, double* bound, int count, int64_t n_runtime,
                                      bool positive_definite) {
  using Ad = Arithmetic<VD>;
  const int64_t n = N > 0 ? N : n_runtime;
  constexpr bool closed_form = N >= 2 && N <= 4 && sizeof(T) == sizeof(float);
  VD x_w[kRoom<N>], scratch[kRoom<N>];
  const typename Ad::mask none = Ad::negate(Ad::equal(Ad::broadcast(0.0), Ad::broadcast(0.0)));
  if (positive_definite) {
    certify_and_store<T, N>(a, x_w, scratch, cholesky_inverse<N>(a, x_w, n), x, bound, count, n, false);
    return;
  }
  if constexpr (closed_form) {
    adjugate_inverse<N>(a, x_w);
    certify_and_store<T, N>(a, x_w, scratch, none, x, bound, count, n, true);
    bool redo = false;
    for (int l = 0; l < count; ++l) redo = redo || isnan(bound[l]);
    if (!redo) return;
    // Gauss-Jordan for the lanes the closed form left; the others keep what is stored.
    T x_redone[Ad::kLanes * kRoom<N>];
    double bound_redone[Ad::kLanes];
    certify_and_store<T, N>(a, x_w, scratch, gauss_jordan<N>(a, x_w, n), x_redone, bound_redone, count, n, false);
    for (int l = 0; l < count; ++l) {
      if (!isnan(bound[l])) continue;
      bound[l] = bound_redone[l];
      for (int64_t e = 0; e < n * n; ++e) x[l * n * n + e] = x_redone[l * n * n + e];
    }
  } else {
    certify_and_store<T, N>(a, x_w, scratch, gauss_jordan<N>(a, x_w, n), x, bound, count, n, false);
  }
}

// X0 = A^T / ||A||_1 / ||A||_inf of one matrix (reference.scaled_transpose_guess), in T.
template <typename T>
NEUINV_HOST_DEVICE void scaled_transpose(const T* a, T* x0, int64_t n) {
  T norm_1 = 0, norm_inf = 0;
  for (int64_t j = 0; j < n; ++j) {
    T column = 0, row = 0;
    for (int64_t i = 0; i < n; ++i) {
      column += fabs(a[i * n + j]);
      row += fabs(a[j * n + i]);
    }
    norm_1 = fmax(norm_1, column);
    norm_inf = fmax(norm_inf, row);
  }
  const T smallest = sizeof(T) == sizeof(float) ? static_cast<T>(0x1p-126) : static_cast<T>(0x1p-1022);
  norm_1 = fmax(norm_1, smallest);
  norm_inf = fmax(norm_inf, smallest);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) x0[i * n + j] = a[j * n + i] / norm_1 / norm_inf;
  }
}

// The Newton-Schulz loop X <- X + X (I - A X) in V's arithmetic on the lanes of `running` (reference.
// newton_schulz_refine, the stopping rule rules::NewtonSchulzRules::stop per lane; the other lanes keep X and
// report 0 steps, not done). ||A||_F ||X||_F is evaluated as ||A / m||_F ||m X||_F, m = max |a_ij|.
template <int N, typename V>
NEUINV_HOST_DEVICE void newton_schulz(const V* a, V* x, typename Arithmetic<V>::mask running, int count,
                                      const rules::NewtonSchulzRules& rules, bool* done, int32_t* steps,
                                      int64_t n_runtime) {
  using Ar = Arithmetic<V>;
  using S = typename Ar::scalar;
  const int64_t n = N > 0 ? N : n_runtime;
  V m = Ar::broadcast(0.0);
  for (int64_t e = 0; e < n * n; ++e) {
    const V magnitude = Ar::magnitude(a[e]);
    m = Ar::select(Ar::greater(magnitude, m), magnitude, m);
  }
  m = Ar::select(Ar::greater(m, Ar::broadcast(0.0)), m, Ar::broadcast(1.0));
  V a_sq = Ar::broadcast(0.0);
  for (int64_t e = 0; e < n * n; ++e) a_sq = a_sq + (a[e] / m) * (a[e] / m);
  const V a_norm = Ar::square_root(a_sq);
  double previous[Ar::kLanes];
  for (int l = 0; l < Ar::kLanes; ++l) {
    previous[l] = rules::kInfinity;
    if (l < count) {
      done[l] = false;
      steps[l] = 0;
    }
  }
  V r[kRoom<N>], next[kRoom<N>];
  for (int64_t step = 0;; ++step) {
    const V r_norm = Ar::square_root(residual<N>(a, x, r, n));
    V x_sq = Ar::broadcast(0.0);
    for (int64_t e = 0; e < n * n; ++e) x_sq = x_sq + (x[e] * m) * (x[e] * m);
    const V x_norm = Ar::square_root(x_sq);
    for (int l = 0; l < Ar::kLanes; ++l) {
      if (l >= count || !Ar::mask_lane(running, l)) {
        Ar::set_mask_lane(running, l, false);
        continue;
      }
      const double r_l = static_cast<S>(Ar::lane(r_norm, l));
      const double norm_product = static_cast<double>(Ar::lane(a_norm, l)) * static_cast<S>(Ar::lane(x_norm, l));
      if (rules.stop(r_l, previous[l], norm_product, step, &done[l])) {
        Ar::set_mask_lane(running, l, false);
        steps[l] = static_cast<int32_t>(step);
      }
      previous[l] = r_l;
    }
    if (!Ar::any(running)) return;
    newton_schulz_step<N>(r, x, next, running, n);
  }
}

// The whole verified inversion (reference.invert, the operator neuinv::invert) of `count` <= lanes matrices: a, x0
// (nullable), x row-major one after another, use_guess (nullable), certified, bound, iterations, fallback per
// matrix. Newton-Schulz where `refine` (from x0 where use_guess, guarded; from the scaled transpose, unguarded,
// without x0), certified as stored; the exact path for every matrix it leaves uncertified; the verdict
// (rules::certified against max_error), X = NaN where not certified. VT: the pack (or scalar) of T, VD of double,
// with the same lanes.
// kernels::invert without refinement for lanes 0..count-1 of VT (A row-major, lane l at a + l n^2): the exact path
// of A read in T and converted to double, X and its bound as exact_inverse writes them; certified wherever the
// bound is finite (the bounds are below 1 or +inf, rules::certified_or_inf).
template <typename T, int N, typename VT, typename VD>
NEUINV_HOST_DEVICE void invert_exactly(const T* a, T* x, double* bound, int count, int64_t n_runtime,
                                       bool positive_definite) {
  using At = Arithmetic<VT>;
  const int64_t n = N > 0 ? N : n_runtime;
  VT a_t[kRoom<N>];
  VD a_d[kRoom<N>];
  load_lanes<N>(a, count, a_t, n);
  for (int64_t e = 0; e < n * n; ++e) a_d[e] = At::template convert<VD>(a_t[e]);
  exact_inverse<T, N>(a_d, x, bound, count, n, positive_definite);
}

template <typename T, int N, typename VT, typename VD>
NEUINV_HOST_DEVICE void invert(const T* a, const T* x0, const bool* use_guess, T* x, bool* certified, double* bound,
                               int32_t* iterations, bool* fallback, int count, int64_t n_runtime, bool refine,
                               rules::NewtonSchulzRules rules, double max_error, bool positive_definite) {
  using At = Arithmetic<VT>;
  using Ad = Arithmetic<VD>;
  const int64_t n = N > 0 ? N : n_runtime, size = n * n;
  typename At::mask refining = At::equal(At::broadcast(0.0), At::broadcast(0.0));
  bool any_refining = false;
  for (int l = 0; l < At::kLanes; ++l) {
    const bool chosen = refine && l < count && (use_guess == nullptr || use_guess[l]);
    At::set_mask_lane(refining, l, chosen);
    any_refining = any_refining || chosen;
    if (l < count) {
      fallback[l] = true;
      iterations[l] = 0;
    }
  }
  VT a_t[kRoom<N>];
  VD a_d[kRoom<N>];
  load_lanes<N>(a, count, a_t, n);
  for (int64_t e = 0; e < size; ++e) a_d[e] = At::template convert<VD>(a_t[e]);
  if (any_refining) {
    VT x_t[kRoom<N>];
    if (x0 != nullptr) {
      load_lanes<N>(x0, count, x_t, n);
    } else {
      T guess[kRoom<N>];
      for (int l = 0; l < count; ++l) {
        scaled_transpose(a + l * size, guess, n);
        for (int64_t e = 0; e < size; ++e) At::set_lane(x_t[e], l, guess[e]);
      }
    }
    rules.guarded = x0 != nullptr;
    bool done[At::kLanes];
    int32_t steps[At::kLanes];
    newton_schulz<N>(a_t, x_t, refining, count, rules, done, steps, n);
    VD x_d[kRoom<N>], r[kRoom<N>];
    for (int64_t e = 0; e < size; ++e) x_d[e] = At::template convert<VD>(x_t[e]);
    // rules::stored_error_bound of X as stored, for every lane at once on its common branch (norms summed
    // unscaled; for float64 no Dot2), lane by lane otherwise.
    const VD r_norm = Ad::square_root(residual<N>(a_d, x_d, r, n));
    const VD a_squared = sum_of_squares(a_d, size), x_squared = sum_of_squares(x_d, size);
    const VD g_s = rules::gamma_of(n + 1) *
                   (sqrt(static_cast<double>(n)) + Ad::square_root(a_squared) * Ad::square_root(x_squared));
    const VD common = rules::certified_or_inf(rules::rho_from(r_norm, g_s, n));
    double x_lane[kRoom<N>];
    for (int l = 0; l < count; ++l) {
      if (!At::mask_lane(refining, l)) continue;
      iterations[l] = steps[l];
      if (!done[l]) continue;
      const double r_l = Ad::lane(r_norm, l);
      double refined_bound = Ad::lane(common, l);
      if (!rules::plain_norms_suffice(Ad::lane(a_squared, l), Ad::lane(x_squared, l)) ||
          (sizeof(T) == sizeof(double) && rules::needs_dot2(r_l, Ad::lane(g_s, l)))) {
        copy_lane<N>(x_d, l, x_lane, n);
        refined_bound = rules::stored_error_bound<N, T>(a + l * size, x_lane, r_l, n);
      }
      if (rules::certified(refined_bound, max_error)) {
        copy_lane<N>(x_t, l, x + l * size, n);
        bound[l] = refined_bound;
        fallback[l] = false;
      }
    }
  }
  int exact_count = 0;
  for (int l = 0; l < count; ++l) exact_count += fallback[l];
  if (exact_count == count) {
    exact_inverse<T, N>(a_d, x, bound, count, n, positive_definite);
  } else if (exact_count > 0) {
    T x_exact[Ad::kLanes * kRoom<N>];
    double exact_bound[Ad::kLanes];
    exact_inverse<T, N>(a_d, x_exact, exact_bound, count, n, positive_definite);
    for (int l = 0; l < count; ++l) {
      if (!fallback[l]) continue;
      for (int64_t e = 0; e < size; ++e) x[l * size + e] = x_exact[l * size + e];
      bound[l] = exact_bound[l];
    }
  }
  for (int l = 0; l < count; ++l) {
    certified[l] = rules::certified(bound[l], max_error);
    if (!certified[l]) {
      for (int64_t e = 0; e < size; ++e) x[l * size + e] = static_cast<T>(NAN);
    }
  }
}

}  // namespace kernels
}  // namespace neuinv
