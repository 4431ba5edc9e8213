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
// ||I - A X_w|| lies above eps ||A|| ||X_w|| (and below 1/2); the certificate of X_w (for float64 by the split
// residual where its a-priori bound exceeds certificate.TIGHT_THRESHOLD), then X = round_T(X_w) with the rounding
// added to the bound (certificate.error_bound(..., rounded_to=T)).
//
// Matrices are row-major, element (i, j) at [i * n + j]; N is n where it is fixed at compile time, else 0. The CPU
// build compiles them without floating-point contraction (-ffp-contract=off), and fused multiply-adds are written
// out (Arithmetic::fused_multiply_add), so that a pack's lanes and a scalar compute the same bits and the
// certificate's branches give the same result for A and 2^k A.
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
      const V minus_factor = -row_i[k];
      for (int64_t j = start; j < w; ++j) row_i[j] = Ar::fused_multiply_add(minus_factor, row_k[j], row_i[j]);
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

// The Cholesky factor of S - shift I, S the symmetric matrix of a's lower triangle (right-looking, Golub & Van
// Loan, Matrix Computations, Alg. 4.2.1): u = L^T (upper triangle, row-major; the rest untouched). Each entry is
// one inner product (summed in some order) and one square root or one multiplication by a reciprocal: the
// rounding of Higham's Thm. 10.3 with gamma_{n+2}, which certificate.smallest_singular_value_bound relies on. A
// lane whose pivot rules::cholesky_pivot_accepted refuses goes on with pivot 1; returns those lanes.
template <int N, typename V>
NEUINV_HOST_DEVICE typename Arithmetic<V>::mask cholesky_factor(const V* a, V shift, V* u, int64_t n_runtime) {
  using Ar = Arithmetic<V>;
  const int64_t n = N > 0 ? N : n_runtime;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < i; ++j) u[j * n + i] = a[i * n + j];
    u[i * n + i] = a[i * n + i] - shift;
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
  return refused;
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
  const auto refused = cholesky_factor<N>(a, Ar::broadcast(0.0), u, n);
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

// sum of (v_e f_1 f_2)^2 over `count` entries (f_1, f_2 powers of two, 1 by default), in four interleaved partial
// sums added pairwise (one running sum is a chain of dependent additions; the certificate bounds the rounding of a
// sum in any order).
template <typename V>
NEUINV_HOST_DEVICE V sum_of_squares(const V* v, int64_t count, V f_1 = Arithmetic<V>::broadcast(1.0),
                                    V f_2 = Arithmetic<V>::broadcast(1.0)) {
  const V zero = Arithmetic<V>::broadcast(0.0);
  V part[4] = {zero, zero, zero, zero};
  int64_t e = 0;
  for (; e + 4 <= count; e += 4) {
    for (int p = 0; p < 4; ++p) {
      const V scaled = v[e + p] * f_1 * f_2;
      part[p] = part[p] + scaled * scaled;
    }
  }
  for (int p = 0; e + p < count; ++p) {
    const V scaled = v[e + p] * f_1 * f_2;
    part[p] = part[p] + scaled * scaled;
  }
  return (part[0] + part[2]) + (part[1] + part[3]);
}

// out += sign * left * right (n x n), four rows of out at a time: each row of `right` is loaded once per four
// rows. Every entry sums over k in order, by fused multiply-adds (the error of any conventional product bounds it).
template <int N, typename V>
NEUINV_HOST_DEVICE void accumulate_product(const V* left, const V* right, V* out, int64_t n_runtime, double sign) {
  using Ar = Arithmetic<V>;
  const int64_t n = N > 0 ? N : n_runtime;
  const V s = Ar::broadcast(sign);
  int64_t i0 = 0;
  for (; i0 + 4 <= n; i0 += 4) {
    V* o = out + i0 * n;
    for (int64_t k = 0; k < n; ++k) {
      const V* right_row = right + k * n;
      const V l0 = s * left[i0 * n + k], l1 = s * left[(i0 + 1) * n + k], l2 = s * left[(i0 + 2) * n + k],
              l3 = s * left[(i0 + 3) * n + k];
      for_each_column<V>(n, [&](int64_t j) {
        const V value = right_row[j];
        o[j] = Ar::fused_multiply_add(l0, value, o[j]);
        o[n + j] = Ar::fused_multiply_add(l1, value, o[n + j]);
        o[2 * n + j] = Ar::fused_multiply_add(l2, value, o[2 * n + j]);
        o[3 * n + j] = Ar::fused_multiply_add(l3, value, o[3 * n + j]);
      });
    }
  }
  for (int64_t i = i0; i < n; ++i) {
    for (int64_t k = 0; k < n; ++k) {
      const V l = s * left[i * n + k];
      for_each_column<V>(n, [&](int64_t j) { out[i * n + j] = Ar::fused_multiply_add(l, right[k * n + j], out[i * n + j]); });
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

// Whether the float64 exact path polishes X_w by one Newton-Schulz step: its residual r lies above
// eps ||A||_F ||X_w||_F (Gauss-Jordan lands up to ~8x above LU there at cond 1e4; the step brings it to LU's level)
// and below 1/2 (so that the step converges).
NEUINV_HOST_DEVICE bool polishes(double r, double norms) { return r > 0x1p-52 * norms && r < 0.5; }

// The larger of a and b in each lane (b where either is NaN).
template <typename V>
NEUINV_HOST_DEVICE V larger(V a, V b) {
  return Arithmetic<V>::select(Arithmetic<V>::greater(a, b), a, b);
}

// Lane by lane: the largest |entry| of `count` values of V, in eight interleaved partial maxima (NaN skipped: a NaN
// entry is refused through the residual).
template <typename V>
NEUINV_HOST_DEVICE V largest_magnitude(const V* v, int64_t count) {
  V part[8];
  for (int p = 0; p < 8; ++p) part[p] = Arithmetic<V>::broadcast(0.0);
  int64_t e = 0;
  for (; e + 8 <= count; e += 8) {
    for (int p = 0; p < 8; ++p) part[p] = larger(Arithmetic<V>::magnitude(v[e + p]), part[p]);
  }
  for (int p = 0; e + p < count; ++p) part[p] = larger(Arithmetic<V>::magnitude(v[e + p]), part[p]);
  for (int p = 1; p < 8; ++p) part[0] = larger(part[p], part[0]);
  return part[0];
}

// Per lane, the grid of ExtractScalar for entries up to v >= 0: 2^(mu + shift), 2^mu > v >= 2^(mu - 1) (mu the
// exponent of frexp); 0 for 0 and subnormal v, where the split leaves the entries whole (a product with a subnormal
// entry errs by at most its underflow, which the split residual's tiny terms cover).
template <typename V>
NEUINV_HOST_DEVICE V grid_above(V v, int shift) {
  return Arithmetic<V>::power_of_two_floor(v) * rules::power_of_two(shift + 1);
}

// The residual of the float64 exact path, re-evaluated accurately for every matrix: norms of A_s = 2^-e A and
// X_s = 2^e X (2^e per lane nearest A's largest entry), r = ||R^||_F and error >= ||R^ - (I - A X)||_F.
template <typename V>
struct AccurateResidual {
  V a_norm, x_norm, r_norm, error;
};

// The split residual (certificate.split_residual's splitting on one grid per matrix, its error bound taken
// normwise): A_s = A1 + A2 and X_s = X1 + X2 exactly (ExtractScalar, Rump, Ogita & Oishi 2008, with sigma =
// 2^(mu + 53 - beta), 2^mu above the matrix's largest |entry|, beta = floor((53 - ceil(log2 n)) / 2)): A1 and X1 on
// the grids 2^(mu - beta), |A2| <= 2^(mu_A - beta), |X2| <= 2^(mu_X - beta), so that every partial sum of (A1 X1)_ij
// is a multiple of 2^(mu_A + mu_X - 2 beta) below n 2^(mu_A + mu_X) = 2^53 units: exact in any order. Then
//   R^ = fl(T - P),  T = fl(I - A1 X1) (A1 X1 exact),  P = fl(sum_k A_s[i, k] X2[k, j] + A2[i, k] X1[k, j])
//   (2n fused multiply-adds), ||R^ - R||_F <= [u ||T||_F + 2u ||R^||_F + gamma_2n (||A_s||_F ||X2||_F + ||A2||_F
//   ||X1||_F) + 20 n (n + 1) tiny] (1 + c_n u) + 4 n (n + 2) tiny ||X_s||_F,
// with ||X2||_F <= h ||X_s||_F, ||A2||_F <= h ||A_s||_F, ||X1||_F <= (1 + h) ||X_s||_F, h = n 2^(1 - beta) (as
// 2^mu <= 2 max |entry|); the last two terms for products and scaled entries that underflow (module docstring of
// neuinv/certificate.py). R^ goes to r, X_s to x_s; x_low is work space. Three products of n^3 fused
// multiply-adds, vectorised over the lanes or along the rows (Dot2 takes about ten operations per multiply-add).
template <int N, typename V>
NEUINV_HOST_DEVICE AccurateResidual<V> split_residual(const V* a, const V* x, V* r, V* x_s, V* x_low,
                                                      int64_t n_runtime) {
  using Ar = Arithmetic<V>;
  const int64_t n = N > 0 ? N : n_runtime, size = n * n;
  int log2_n = 0;
  while ((int64_t(1) << log2_n) < n) ++log2_n;
  const int beta = (53 - log2_n) / 2;
  const V zero = Ar::broadcast(0.0);
  const V largest = largest_magnitude(a, size);
  // 2^e = 2 p, p = 2^floor(log2 largest): A_s = A (1/2 / p) (exact: a normal or subnormal power of two) and X_s =
  // X p 2, so that A_s's largest entry lies in [1/2, 1); per lane by rules::PowerOfTwoScale where it is subnormal.
  const V p = Ar::power_of_two_floor(largest);
  V down_first = Ar::broadcast(0.5) / p, down_second = Ar::broadcast(1.0), up_first = p, up_second = Ar::broadcast(2.0);
  if (Ar::any(Ar::equal(p, zero))) {
    for (int l = 0; l < Ar::kLanes; ++l) {
      if (Ar::lane(p, l) > 0.0) continue;
      const int exponent = rules::frexp_exponent(static_cast<double>(Ar::lane(largest, l)));
      const rules::PowerOfTwoScale down(-exponent), up(exponent);
      Ar::set_lane(down_first, l, down.first);
      Ar::set_lane(down_second, l, down.second);
      Ar::set_lane(up_first, l, up.first);
      Ar::set_lane(up_second, l, up.second);
    }
  }
  V column_largest[N > 0 ? N : kMaxN];
  for (int64_t j = 0; j < n; ++j) column_largest[j] = zero;
  for (int64_t k = 0; k < n; ++k) {
    for (int64_t j = 0; j < n; ++j) {
      x_s[k * n + j] = x[k * n + j] * up_first * up_second;
      column_largest[j] = larger(Ar::magnitude(x_s[k * n + j]), column_largest[j]);
    }
  }
  V x_largest = zero;
  for (int64_t j = 0; j < n; ++j) x_largest = larger(column_largest[j], x_largest);
  const V x_grid = grid_above(x_largest, 53 - beta);
  const V a_grid = Ar::broadcast(rules::power_of_two(53 - beta));  // 2^mu = 1 above A_s's entries
  for (int64_t e = 0; e < size; ++e) {  // x_s holds X1 until the products are done
    const V high = (x_s[e] + x_grid) - x_grid;
    x_low[e] = x_s[e] - high;
    x_s[e] = high;
  }
  V first_squared = zero;
  for (int64_t i = 0; i < n; ++i) {
    V first[N > 0 ? N : kMaxN], rest[N > 0 ? N : kMaxN];  // row i of -A1 X1 (then fl(I - A1 X1)) and of P
    for (int64_t j = 0; j < n; ++j) {
      first[j] = zero;
      rest[j] = zero;
    }
    for (int64_t k = 0; k < n; ++k) {
      const V scaled = a[i * n + k] * down_first * down_second;
      const V high = (scaled + a_grid) - a_grid, low = scaled - high, minus_high = -high;
      const V* x_high_row = x_s + k * n;
      const V* x_low_row = x_low + k * n;
      for_each_column<V>(n, [&](int64_t j) {
        first[j] = Ar::fused_multiply_add(minus_high, x_high_row[j], first[j]);  // exact
        rest[j] = Ar::fused_multiply_add(scaled, x_low_row[j], rest[j]);
        rest[j] = Ar::fused_multiply_add(low, x_high_row[j], rest[j]);
      });
    }
    first[i] = first[i] + Ar::broadcast(1.0);
    for (int64_t j = 0; j < n; ++j) {
      first_squared = first_squared + first[j] * first[j];
      r[i * n + j] = first[j] - rest[j];
    }
  }
  for (int64_t e = 0; e < size; ++e) x_s[e] = x_s[e] + x_low[e];
  AccurateResidual<V> out;
  out.a_norm = Ar::square_root(sum_of_squares(a, size, down_first, down_second));
  out.x_norm = Ar::square_root(sum_of_squares(x_s, size));
  out.r_norm = Ar::square_root(sum_of_squares(r, size));
  const double u = rules::kUnit, c = 4.0 * (n * n + n + 4), tiny = rules::kDoubleMin;
  const double h = static_cast<double>(n) * rules::power_of_two(1 - beta);
  out.error = (u * Ar::square_root(first_squared) + 2 * u * out.r_norm +
               rules::gamma_of(2 * n) * h * (2 + h) * out.a_norm * out.x_norm +
               20.0 * n * (n + 1) * tiny) * (1 + c * u) +
              4.0 * n * (n + 2) * tiny * out.x_norm;
  return out;
}

// ||fl(L M)||_F of n x n matrices, each entry a sum of n fused multiply-adds over k in order (its error at most
// gamma_n (|L| |M|)_ij, as for any conventional product).
template <int N, typename V>
NEUINV_HOST_DEVICE V product_frobenius_norm(const V* left, const V* right, int64_t n_runtime) {
  using Ar = Arithmetic<V>;
  const int64_t n = N > 0 ? N : n_runtime;
  V squares = Ar::broadcast(0.0);
  for (int64_t i = 0; i < n; ++i) {
    V row[N > 0 ? N : kMaxN];
    for (int64_t j = 0; j < n; ++j) row[j] = Ar::broadcast(0.0);
    for (int64_t k = 0; k < n; ++k) {
      const V l = left[i * n + k];
      for_each_column<V>(n, [&](int64_t j) { row[j] = Ar::fused_multiply_add(l, right[k * n + j], row[j]); });
    }
    for (int64_t j = 0; j < n; ++j) squares = squares + row[j] * row[j];
  }
  return Ar::square_root(squares);
}

// The certificate of the float64 exact path by the split residual, for every lane at once (certificate.
// product_error_bound with the split residual): polishes X_w by one Newton-Schulz step in the lanes of `polish`
// (X_w is kept in the others), then returns the bound on ||X_w - A^-1||_F / ||A^-1||_F, the
// smaller of rho >= ||R||_F and the product form e / (||X_s||_F - e), e = ||X_s R||_F / (1 - rho)
// (rules::certified_or_inf: +inf where nothing is certified). Where the split's own rounding, about 2^-20 of the
// plain rounding term, exceeds the residual (badly scaled matrices, inverses exact to a few u) it is the bound;
// above the second stage's threshold (rules.SCALED_SECOND_STAGE_ABOVE) the equilibrated second stage takes them.
template <int N, typename VD>
NEUINV_HOST_DEVICE VD certify_double(const VD* a, VD* x_w, typename Arithmetic<VD>::mask polish, int64_t n_runtime) {
  using Ad = Arithmetic<VD>;
  const int64_t n = N > 0 ? N : n_runtime;
  VD r[kRoom<N>], x_s[kRoom<N>], x_low[kRoom<N>], rest[kRoom<N>];
  AccurateResidual<VD> residual = split_residual<N>(a, x_w, r, x_s, x_low, n);
  if (Ad::any(polish)) {
    newton_schulz_step<N>(r, x_w, rest, polish, n);
    residual = split_residual<N>(a, x_w, r, x_s, x_low, n);
  }
  const double u = rules::kUnit, c = 4.0 * (n * n + n + 4), g = rules::gamma_of(n + 1);
  const VD rho = rules::rho_from(residual.r_norm, residual.error, n);
  const VD spread = rules::rho_from(Ad::broadcast(0.0), residual.error, n);
  const VD x_norm = residual.x_norm;
  const VD xr = (product_frobenius_norm<N>(x_s, r, n) + g * x_norm * residual.r_norm) * (1 + c * u) +
                x_norm * (1 + c * u) * spread + (n * n * rules::kDoubleMin + 4.0 * n * 0x1p-511);
  const VD e = xr / (1.0 - rho), x_low_bound = x_norm * (1 - c * u) - 2.0 * n * 0x1p-511;
  const auto usable = Ad::negate(Ad::either(Ad::negate(Ad::greater(Ad::broadcast(1.0), rho)),
                                            Ad::negate(Ad::greater(x_low_bound, e))));
  const VD relative = Ad::select(usable, e / (x_low_bound - e), Ad::broadcast(rules::kInfinity));
  return rules::certified_or_inf(Ad::select(Ad::greater(rho, relative), relative, rho));
}

// The certificate of one float32 matrix's X_w (the contract at the top of this file) where the pack's common branch
// does not apply, given r_sq = ||fl(I - A X_w)||_F^2 in double: the error bound of X = round_T(X_w)
// (certificate.error_bound with rounded_to=T). A is given in double (exactly A).
template <typename T, int N>
NEUINV_HOST_DEVICE double certify_exact(const double* a, double* x_w, double r_sq, int64_t n_runtime) {
  const int64_t n = N > 0 ? N : n_runtime;
  const double norms = rules::scaled_norm_product(a, x_w, n * n);
  const double rho = rules::error_bound_from<N>(a, x_w, sqrt(r_sq), sqrt(static_cast<double>(n)) + norms, n);
  return rules::rounded_error_bound<T>(rho, sqrt(sum_of_squares(x_w, n * n)), n);
}

// Stores X = round_T(X_w) (lanes 0..count-1 of a matrix of VD) with its bound (`bounds`, lane by lane), lane l at
// x + l n^2 and bound[l]: X stored whole, then NaN and +inf in the lanes that are `refused`, whose bound is not
// finite or whose X overflows T. With `keep_accurate_only` a lane whose bound is not below eps32 (2^-23) is left
// for Gauss-Jordan to overwrite (bound[l] = NaN): the closed form's results that it redoes.
template <typename T, typename VD>
NEUINV_HOST_DEVICE void store_lanes(const VD* x_w, VD bounds, typename Arithmetic<VD>::mask refused, T* x,
                                    double* bound, int count, int64_t size, bool keep_accurate_only) {
  using Ad = Arithmetic<VD>;
  T* targets[Ad::kLanes];
  VD overflow = Ad::broadcast(0.0);  // NaN in the lanes where an entry is not finite once rounded to T
  for (int64_t e = 0; e < size; ++e) overflow = overflow + Ad::template rounded<T>(x_w[e]) * 0.0;
  for (int l = 0; l < count; ++l) targets[l] = x + l * size;
  Ad::deinterleave(x_w, size, targets, count);
  for (int l = 0; l < count; ++l) {
    const double b = Ad::mask_lane(refused, l) ? rules::kInfinity : Ad::lane(bounds, l);
    if (keep_accurate_only && !(b <= 0x1p-23)) {
      bound[l] = NAN;
    } else if (b < rules::kInfinity && !isnan(Ad::lane(overflow, l))) {
      bound[l] = b;
    } else {
      for (int64_t e = 0; e < size; ++e) targets[l][e] = static_cast<T>(NAN);
      bound[l] = rules::kInfinity;
    }
  }
}

// Certifies X_w (lanes 0..count-1 of a matrix of VD; A in a) and stores X = round_T(X_w) with its bound, lane l
// at x + l n^2 and bound[l]; +inf and NaN where `refused`. float64: certify_double, every lane at once. float32:
// every lane at once where it takes the certificate's common branch (norms summed unscaled, no Dot2), by
// certify_exact's formulas; the other lanes through certify_exact one by one. `keep_accurate_only`: store_lanes.
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
  if constexpr (sizeof(T) == sizeof(double)) {
    // Per lane: ||A||_F ||X_w||_F as rules::scaled_norm_product has it where the plain sums may overflow or
    // underflow (so that A and 2^k A take the same branch), then the split residual where needs_split or polishes.
    VD scaled_norms = norms;
    for (int l = 0; l < count; ++l) {
      if (rules::plain_norms_suffice(Ad::lane(a_squared, l), Ad::lane(x_squared, l))) continue;
      double a_lane[kRoom<N>], x_lane[kRoom<N>];
      copy_lane<N>(a, l, a_lane, n);
      copy_lane<N>(x_w, l, x_lane, n);
      Ad::set_lane(scaled_norms, l, rules::scaled_norm_product(a_lane, x_lane, size));
    }
    const VD scaled_g_s = rules::gamma_of(n + 1) * (sqrt(static_cast<double>(n)) + scaled_norms);
    // (the polish is decided on the plain residual, whose rounding sends more matrices to it than their true
    // residual would: Gauss-Jordan's X then lands at LU's accuracy)
    typename Ad::mask split = Ad::negate(Ad::equal(Ad::broadcast(0.0), Ad::broadcast(0.0))), polish = split;
    bool any_split = false;
    for (int l = 0; l < count; ++l) {
      const double r_l = Ad::lane(r, l);
      const bool polished = !Ad::mask_lane(refused, l) && polishes(r_l, Ad::lane(scaled_norms, l));
      const bool chosen = polished || (!Ad::mask_lane(refused, l) && rules::needs_split(r_l, Ad::lane(scaled_g_s, l)));
      Ad::set_mask_lane(polish, l, polished);
      Ad::set_mask_lane(split, l, chosen);
      any_split = any_split || chosen;
    }
    const VD cheap = rules::certified_or_inf(rules::rho_from(r, scaled_g_s, n));
    if (!any_split) {
      store_lanes<T>(x_w, cheap, refused, x, bound, count, size, keep_accurate_only);
      return;
    }
    const VD bounds = Ad::select(split, certify_double<N>(a, x_w, polish, n), cheap);
    store_lanes<T>(x_w, bounds, refused, x, bound, count, size, keep_accurate_only);
    return;
  }
  auto takes_common_branch = [&](int l) {
    return rules::plain_norms_suffice(Ad::lane(a_squared, l), Ad::lane(x_squared, l)) &&
           !rules::needs_dot2(Ad::lane(r, l), Ad::lane(g_s, l));
  };
  bool every_lane_common = count == Ad::kLanes;
  for (int l = 0; l < count && every_lane_common; ++l) {
    every_lane_common = Ad::mask_lane(refused, l) || takes_common_branch(l);
  }
  if (every_lane_common) {
    store_lanes<T>(x_w, common, refused, x, bound, count, size, keep_accurate_only);
    return;
  }
  for (int l = 0; l < count; ++l) {
    const bool common_branch = takes_common_branch(l);
    double x_lane[kRoom<N>];
    double b = rules::kInfinity;
    if (!Ad::mask_lane(refused, l) && common_branch) {
      b = Ad::lane(common, l);
    } else if (!Ad::mask_lane(refused, l)) {
      double a_lane[kRoom<N>];
      copy_lane<N>(a, l, a_lane, n);
      copy_lane<N>(x_w, l, x_lane, n);
      b = certify_exact<T, N>(a_lane, x_lane, Ad::lane(r, l) * Ad::lane(r, l), n);
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
