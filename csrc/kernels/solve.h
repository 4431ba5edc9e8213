// The per-system kernels of neuinv::solve (schema in csrc/neuinv_ops.cpp), written once for the CPU driver
// (csrc/cpu/solve_cpu.cpp) and any device: the solution of A X = B from a certified approximate inverse R (given,
// or the exact path's, computed in the same pass) and its certificate. The semantics are those of
// neuinv/reference.py (solve), the bound that of neuinv/certificate.py (solve_error_bound, real
// input), term by term.
//
// Matrices are row-major: A and R n x n, B and X n x k. The kernels work on "systems of V" (csrc/kernels/
// arithmetic.h): V = double is one system (one CPU or CUDA thread), a pack of doubles kLanes systems at once, lane
// by lane. Everything is evaluated in double; the kernels run without flush-to-zero or denormals-are-zero
// (csrc/cpu/build_selection.h, IeeeMode), so no stored entry is read as zero and solve_error_bound's test for that
// is not needed.
#pragma once
#include "per_matrix.h"

namespace neuinv {
namespace kernels {

// Workspace, in values of V, that the solve kernels below need for one system of V (solve_from_inverse 2 n^2 +
// 3 n k of it, solve_positive_definite all).
NEUINV_HOST_DEVICE int64_t solve_workspace(int64_t n, int64_t k) { return 2 * n * n + 4 * n * k + n; }

// V from kLanes doubles (lane l from values[l]) and back: through memory, one vector load or store (setting lanes
// one by one costs a round trip each).
template <typename V>
NEUINV_HOST_DEVICE V from_lanes(const double* values) {
  V v;
  memcpy(&v, values, sizeof(V));
  return v;
}

template <typename V>
NEUINV_HOST_DEVICE void to_lanes(V v, double* values) {
  memcpy(values, &v, sizeof(V));
}

// Lanes 0..count-1 of V from `count` row-major blocks of `size` entries, block l at blocks + l * stride (stride
// 0: one block broadcast to every lane), as doubles; the lanes beyond count repeat block 0 (their results are
// never stored).
template <typename V, typename T>
NEUINV_HOST_DEVICE void load_blocks(const T* blocks, int count, int64_t size, int64_t stride, V* out) {
  const T* sources[Arithmetic<V>::kLanes];
  for (int l = 0; l < Arithmetic<V>::kLanes; ++l) sources[l] = blocks + (l < count ? l : 0) * stride;
  Arithmetic<V>::interleave(sources, size, out);
}

// Elements between consecutive systems' A (and R), B and inverse bound: n^2, n k and 1, or 0 where one is broadcast
// to every system.
struct SystemStrides {
  int64_t a, b, eps;
};

// out = start + sign M W for M n x n (N: n if fixed at compile time, else 0) and W n x k (start and out n x k, and may be the same array; start null: 0):
// each entry a dot product in four interleaved partial sums (independent chains; the certificate bounds the
// rounding of a dot product of n + 1 terms in any order, gamma_{n+1}).
template <int N, typename V>
NEUINV_HOST_DEVICE void multiply_add(const V* m, const V* w, double sign, const V* start, V* out, int64_t n_runtime,
                                     int64_t k) {
  using Ar = Arithmetic<V>;
  const int64_t n = N > 0 ? N : n_runtime;
  const V zero = Ar::broadcast(0.0), s = Ar::broadcast(sign);
  for (int64_t i = 0; i < n; ++i) {
    const V* row = m + i * n;
    for (int64_t j = 0; j < k; ++j) {
      V part[4] = {zero, zero, zero, zero};
      int64_t l = 0;
      for (; l + 4 <= n; l += 4) {
        for (int p = 0; p < 4; ++p) part[p] = part[p] + row[l + p] * w[(l + p) * k + j];
      }
      for (int p = 0; l + p < n; ++p) part[p] = part[p] + row[l + p] * w[(l + p) * k + j];
      const V dot = (part[0] + part[2]) + (part[1] + part[3]);
      out[i * k + j] = (start == nullptr ? zero : start[i * k + j]) + s * dot;
    }
  }
}

// Entry (i, j) of fl(B' - A' X') by Dot2 (Ogita, Rump & Oishi 2005), products split exactly by fused multiply-adds,
// lane by lane (b_s: B', a_s: A', x_s: X').
template <typename V>
NEUINV_HOST_DEVICE V dot2_residual_entry(const V* a_s, const V* x_s, const V* b_s, int64_t i, int64_t j, int64_t n,
                                         int64_t k) {
  using Ar = Arithmetic<V>;
  V total = b_s[i * k + j], correction = Ar::broadcast(0.0);
  for (int64_t l = 0; l < n; ++l) {
    const V left = -a_s[i * n + l], right = x_s[l * k + j];
    const V product = left * right, product_error = Ar::fused_multiply_add(left, right, -product);
    V sum_error;
    rules::two_sum(total, product, total, sum_error);
    correction = correction + (sum_error + product_error);
  }
  return total + correction;
}

// Lane by lane: whether every one of `count` values of V is zero.
template <typename V>
NEUINV_HOST_DEVICE typename Arithmetic<V>::mask all_zero(const V* m, int64_t count) {
  using Ar = Arithmetic<V>;
  const V zero = Ar::broadcast(0.0);
  typename Ar::mask nonzero = Ar::negate(Ar::equal(zero, zero));
  for (int64_t e = 0; e < count; ++e) nonzero = Ar::either(nonzero, Ar::negate(Ar::equal(m[e], zero)));
  return Ar::negate(nonzero);
}

// certificate.solve_error_bound of systems of V given as doubles: A (a_v), B (b_v), X as stored (x_v) and R (r_v),
// which it scales in place, with R's certified bounds eps[l]: bound[l] for lanes 0..count-1, the relative
// Frobenius error bound of X, +inf where nothing is certified. The float64 lanes whose residual the a-priori term
// dominates and would put the bound above rules::kTightThreshold get the residual by Dot2 (all lanes at once).
// work: n k values of V.
template <typename T, int N, typename V>
NEUINV_HOST_DEVICE void certify_solution(V* a_v, V* b_v, V* x_v, V* r_v, const double* eps, double* bound,
                                         int count, V* work, int64_t n_runtime, int64_t k) {
  using Ar = Arithmetic<V>;
  const int64_t n = N > 0 ? N : n_runtime;
  constexpr int kLanes = Ar::kLanes;
  const double u = rules::kUnit, tiny = rules::kDoubleMin;
  const double g = rules::gamma_of(n + 1);
  const double c = 4.0 * (n * (n > k ? n : k) + n + 4);
  const double entries = sqrt(static_cast<double>(n * k));
  const double lost_squares = entries * 0x1p-511;
  const double eta = 4.0 * n * (entries + 2) * tiny + 2 * lost_squares + n * 0x1p-511;

  // A' = A 2^-e, B' = B 2^-f, X' = X 2^(e-f), R' = R 2^e (e, f per system): exact where normal, so that the bound
  // does not depend on the scale of A or B. X* = 0 (B = 0) with X = 0 gets the bound 0.
  const V largest_a = largest_magnitude(a_v, n * n), largest_b = largest_magnitude(b_v, n * k);
  const auto nonzero_solution = Ar::either(Ar::negate(all_zero(b_v, n * k)), Ar::negate(all_zero(x_v, n * k)));
  double largest_a_l[kLanes], largest_b_l[kLanes], factors[9][kLanes];
  to_lanes(largest_a, largest_a_l);
  to_lanes(largest_b, largest_b_l);
  for (int l = 0; l < kLanes; ++l) {
    const int e_a = rules::frexp_exponent(largest_a_l[l]), f_b = rules::frexp_exponent(largest_b_l[l]);
    const rules::PowerOfTwoScale to_a(-e_a), to_r(e_a), to_x(e_a - f_b), to_b(-f_b);
    factors[0][l] = to_a.first;
    factors[1][l] = to_a.second;
    factors[2][l] = to_r.first;
    factors[3][l] = to_r.second;
    factors[4][l] = to_x.first;
    factors[5][l] = to_x.second;
    factors[6][l] = to_b.first;
    factors[7][l] = to_b.second;
    factors[8][l] = eps[l < count ? l : 0];
  }
  const V a_first = from_lanes<V>(factors[0]), a_second = from_lanes<V>(factors[1]);
  const V r_first = from_lanes<V>(factors[2]), r_second = from_lanes<V>(factors[3]);
  const V x_first = from_lanes<V>(factors[4]), x_second = from_lanes<V>(factors[5]);
  const V b_first = from_lanes<V>(factors[6]), b_second = from_lanes<V>(factors[7]), eps_v = from_lanes<V>(factors[8]);
  for (int64_t e = 0; e < n * n; ++e) {
    a_v[e] = a_v[e] * a_first * a_second;
    r_v[e] = r_v[e] * r_first * r_second;
  }
  for (int64_t e = 0; e < n * k; ++e) {
    x_v[e] = x_v[e] * x_first * x_second;
    b_v[e] = b_v[e] * b_first * b_second;
  }
  V* residual = work;
  multiply_add<N>(a_v, x_v, -1.0, b_v, residual, n, k);  // fl(B' - A' X')
  V r_hat = Ar::square_root(sum_of_squares(residual, n * k));
  const V x_hat = Ar::square_root(sum_of_squares(x_v, n * k));
  const V r_inverse_hat = Ar::square_root(sum_of_squares(r_v, n * n));
  const V a_up = Ar::square_root(sum_of_squares(a_v, n * n)) + n * 0x1p-511;
  const V s = Ar::square_root(sum_of_squares(b_v, n * k)) + lost_squares + a_up * (x_hat + lost_squares);
  V t = g * s;  // >= ||fl(r') - r'||_F
  if constexpr (sizeof(T) == sizeof(double)) {
    const auto dot2 = Ar::negate(Ar::either(Ar::negate(Ar::greater(t, r_hat)),
                                            Ar::negate(Ar::greater(t * r_inverse_hat, rules::kTightThreshold * x_hat))));
    if (Ar::any(dot2)) {
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < k; ++j) {
          residual[i * k + j] = Ar::select(dot2, dot2_residual_entry(a_v, x_v, b_v, i, j, n, k), residual[i * k + j]);
        }
      }
      r_hat = Ar::select(dot2, Ar::square_root(sum_of_squares(residual, n * k)) / (1 - u), r_hat);
      t = Ar::select(dot2, sqrt(2.0) * g * g * s + 4.0 * n * (n + 2) * tiny * x_hat, t);
    }
  }
  const double sq2 = sqrt(2.0) * entries;
  t = t + sq2 * tiny * (static_cast<double>(n) * (2.0 * x_hat + 2.0 * lost_squares) + (n + 1.0));
  const V r_norm = (r_hat + t) * (1 + c * u) + eta;                     // >= ||r'||_F
  const V r_inverse_norm = r_inverse_hat * (1 + c * u) + n * 0x1p-511;  // >= ||R'||_F
  multiply_add<N, V>(r_v, residual, 1.0, nullptr, x_v, n, k);           // fl(R' fl(r')), over X'
  const V y_hat = Ar::square_root(sum_of_squares(x_v, n * k));
  const V y_flush = sq2 * n * tiny * (2.0 * r_hat + 2.0 * lost_squares + 2.0 * r_inverse_norm);
  const V y_norm = (y_hat + g * r_inverse_norm * (r_hat + lost_squares) + y_flush) * (1 + c * u) + eta;
  const V error = (y_norm + r_inverse_norm * t + eps_v / (1.0 - eps_v) * r_inverse_norm * r_norm) * (1 + c * u);
  const V x_norm = x_hat * (1 - c * u) - lost_squares;  // <= ||X'||_F
  const V infinity = Ar::broadcast(rules::kInfinity);
  const V value = Ar::select(Ar::greater(x_norm, error), rules::certified_or_inf(error / (x_norm - error) * (1 + c * u)),
                             infinity);
  double value_l[kLanes];
  to_lanes(value, value_l);
  for (int l = 0; l < count; ++l) {
    const bool usable = eps[l] >= 0 && eps[l] < 1;  // NaN and negative bounds certify nothing
    const bool solution_zero = !Ar::mask_lane(nonzero_solution, l) && usable;
    bound[l] = solution_zero ? 0.0 : usable ? value_l[l] : rules::kInfinity;
  }
}

// Systems 0..count-1 of V (A, B, R and eps at the strides given; eps R's certified bound; N: n if fixed at compile
// time, else 0): X = round_T(X_w +
// R (B - A X_w)), X_w = R B, in double (reference.solve with R), written to x (system l at x + l n k), and
// its bound (certificate.solve_error_bound, certify_solution) to bound[l]. work: solve_workspace(n, k) values of V.
template <typename T, int N, typename V>
NEUINV_HOST_DEVICE void solve_from_inverse(const T* a, const T* b, const T* r, const double* eps,
                                           SystemStrides strides, T* x, double* bound, int count, V* work,
                                           int64_t n_runtime, int64_t k) {
  using Ar = Arithmetic<V>;
  const int64_t n = N > 0 ? N : n_runtime;
  V* a_v = work;
  V* r_v = a_v + n * n;
  V* b_v = r_v + n * n;
  V* x_w = b_v + n * k;
  V* residual = x_w + n * k;
  load_blocks(a, count, n * n, strides.a, a_v);
  load_blocks(r, count, n * n, strides.a, r_v);
  load_blocks(b, count, n * k, strides.b, b_v);
  multiply_add<N, V>(r_v, b_v, 1.0, nullptr, x_w, n, k);  // X_w = R B
  multiply_add<N>(a_v, x_w, -1.0, b_v, residual, n, k);    // B - A X_w
  multiply_add<N>(r_v, residual, 1.0, x_w, x_w, n, k);     // X_w + R (B - A X_w)
  T* targets[Ar::kLanes];  // X = round_T(X_w), stored; x_w keeps X's values as doubles
  for (int l = 0; l < count; ++l) targets[l] = x + l * n * k;
  for (int64_t e = 0; e < n * k; ++e) x_w[e] = Ar::template rounded<T>(x_w[e]);
  Ar::deinterleave(x_w, n * k, targets, count);
  double eps_lanes[Ar::kLanes];
  for (int l = 0; l < count; ++l) eps_lanes[l] = eps[l * strides.eps];
  certify_solution<T, N, V>(a_v, b_v, x_w, r_v, eps_lanes, bound, count, residual, n, k);
}

// Storage, in values of T, for the R that solve_with_exact_inverse computes for one system of V.
template <typename V>
NEUINV_HOST_DEVICE int64_t exact_inverse_workspace(int64_t n) { return Arithmetic<V>::kLanes * n * n; }

// Systems 0..count-1 of V (A at a stride of n * n, B at strides.b): R = the exact path's inverse of each A and its
// bound eps (kernels::invert_exactly: kernels::invert without refinement, NaN where not certified; the inverse
// batched_solve's pipeline computes first), written to r (exact_inverse_workspace(n) values), then
// solve_from_inverse with it (reference.solve without R). VT and VD: the pack types of kernels::invert for T and
// double (T and double for one system); work: solve_workspace(n, k) values of V.
template <typename T, int N, typename VT, typename VD, typename V>
NEUINV_HOST_DEVICE void solve_with_exact_inverse(const T* a, const T* b, int64_t b_stride, T* x, double* bound,
                                                 int count, V* work, T* r, int64_t n_runtime, int64_t k,
                                                 bool positive_definite) {
  static_assert(Arithmetic<VT>::kLanes == Arithmetic<V>::kLanes, "one system per lane in both kernels");
  const int64_t n = N > 0 ? N : n_runtime;
  double eps[Arithmetic<V>::kLanes];
  invert_exactly<T, N, VT, VD>(a, r, eps, count, n, positive_definite);
  solve_from_inverse<T, N, V>(a, b, r, eps, SystemStrides{n * n, b_stride, 1}, x, bound, count, work, n, k);
}

// x <- (L L^T)^-1 x for x n x k, u = L^T as cholesky_factor leaves it: forward then back substitution.
template <int N, typename V>
NEUINV_HOST_DEVICE void cholesky_solve(const V* u, V* x, int64_t n_runtime, int64_t k) {
  const int64_t n = N > 0 ? N : n_runtime;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < k; ++j) {
      V sum = x[i * k + j];
      for (int64_t l = 0; l < i; ++l) sum = sum - u[l * n + i] * x[l * k + j];
      x[i * k + j] = sum / u[i * n + i];
    }
  }
  for (int64_t i = n - 1; i >= 0; --i) {
    for (int64_t j = 0; j < k; ++j) {
      V sum = x[i * k + j];
      for (int64_t l = i + 1; l < n; ++l) sum = sum - u[i * n + l] * x[l * k + j];
      x[i * k + j] = sum / u[i * n + i];
    }
  }
}

// reference._length: ||v||_2 taken of v / p, p = 2^floor(log2 max |v_i|) (1 where that is 0 or subnormal).
template <typename V>
NEUINV_HOST_DEVICE V vector_length(const V* v, int64_t n) {
  using Ar = Arithmetic<V>;
  V p = Ar::power_of_two_floor(largest_magnitude(v, n));
  p = Ar::select(Ar::equal(p, Ar::broadcast(0.0)), Ar::broadcast(1.0), p);
  V squares = Ar::broadcast(0.0);
  for (int64_t i = 0; i < n; ++i) squares = squares + (v[i] / p) * (v[i] / p);
  return p * Ar::square_root(squares);
}

// reference.smallest_eigenvalue_estimate: mu >= lambda_min(L L^T), two steps of inverse iteration with u = L^T
// from v_i = 2 + ((7919 i mod 13) - 6) / 6, normalised. v: n values of V.
template <int N, typename V>
NEUINV_HOST_DEVICE V smallest_eigenvalue_estimate(const V* u, V* v, int64_t n_runtime) {
  using Ar = Arithmetic<V>;
  const int64_t n = N > 0 ? N : n_runtime;
  double start_squares = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double start = 2.0 + (static_cast<double>((7919 * i) % 13) - 6.0) / 6.0;
    start_squares += start * start;
  }
  for (int64_t i = 0; i < n; ++i) {
    v[i] = Ar::broadcast((2.0 + (static_cast<double>((7919 * i) % 13) - 6.0) / 6.0) / sqrt(start_squares));
  }
  cholesky_solve<N>(u, v, n, 1);
  const V length = vector_length(v, n);
  for (int64_t i = 0; i < n; ++i) v[i] = v[i] / length;
  cholesky_solve<N>(u, v, n, 1);
  return Ar::broadcast(1.0) / vector_length(v, n);
}

// certificate.smallest_singular_value_bound: lambda with sigma_min(A') >= lambda where lambda > 0 (0 elsewhere),
// for A' (a_s, |a'_ij| <= 1) and the estimate mu_s, by the Cholesky of S' - s mu_s I, s from
// rules::positive_definite_shift in turn, lane by lane. u: n^2 values of V.
template <int N, typename V>
NEUINV_HOST_DEVICE V smallest_singular_value_bound(const V* a_s, V mu_s, V* u, int64_t n_runtime) {
  using Ar = Arithmetic<V>;
  const int64_t n = N > 0 ? N : n_runtime;
  const double unit = rules::kUnit, tiny = rules::kDoubleMin;
  const double c = 4.0 * (n * n + n + 4), g = rules::gamma_of(n + 2);
  V asymmetry_squares = Ar::broadcast(0.0);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < i; ++j) {
      const V difference = a_s[j * n + i] - a_s[i * n + j];
      asymmetry_squares = asymmetry_squares + difference * difference;
    }
  }
  const V asymmetry = Ar::square_root(asymmetry_squares) * (1 + c * unit) + (n * 0x1p-511 + n * tiny);
  const V zero = Ar::broadcast(0.0);
  V lam = zero;
  for (int attempt = 0; attempt < rules::kPositiveDefiniteShiftCount; ++attempt) {
    const auto open = Ar::negate(Ar::greater(lam, zero));
    if (!Ar::any(open)) break;
    const V sigma = rules::positive_definite_shift(attempt) * mu_s;
    const auto refused = cholesky_factor<N>(a_s, sigma, u, n);
    V factor_squares = zero, largest_diagonal = zero;
    for (int64_t i = 0; i < n; ++i) {
      const V shifted = Ar::magnitude(a_s[i * n + i] - sigma);
      largest_diagonal = Ar::select(Ar::greater(shifted, largest_diagonal), shifted, largest_diagonal);
      for (int64_t j = i; j < n; ++j) factor_squares = factor_squares + u[i * n + j] * u[i * n + j];
    }
    factor_squares = factor_squares * (1 + c * unit) + n * n * tiny;  // squares below tiny lost
    const V margin = (unit * largest_diagonal + g * factor_squares + n * (n + 4) * tiny) * (1 + c * unit);
    const V proven = (sigma - (margin + asymmetry + n * tiny) * (1 + c * unit)) * (1 - c * unit);
    const auto usable = Ar::negate(Ar::either(refused, Ar::negate(Ar::greater(proven, zero))));
    lam = Ar::select(Ar::negate(Ar::either(Ar::negate(open), Ar::negate(usable))), proven, lam);
  }
  return lam;
}

// certificate.positive_definite_solve_error_bound for systems of V given as doubles: A (a_v), B (b_v), X as
// stored (x_v), W the solution before rounding (w_v), all scaled in place, and mu: bound[l] for lanes
// 0..count-1. Residuals of float64 lanes by Dot2 where the a-priori term dominates and would put the bound above
// rules::kTightThreshold (as certify_solution). u: n^2 values of V, residual: n k.
template <typename T, int N, typename V>
NEUINV_HOST_DEVICE void certify_positive_definite_solution(V* a_v, V* b_v, V* x_v, V* w_v, V mu, double* bound,
                                                           int count, V* u, V* residual, int64_t n_runtime,
                                                           int64_t k) {
  using Ar = Arithmetic<V>;
  const int64_t n = N > 0 ? N : n_runtime;
  constexpr int kLanes = Ar::kLanes;
  const double unit = rules::kUnit, tiny = rules::kDoubleMin;
  const double g = rules::gamma_of(n + 1);
  const double c = 4.0 * (n * (n > k ? n : k) + n + 4);
  const double entries = sqrt(static_cast<double>(n * k));
  const double lost_squares = entries * 0x1p-511;
  const double eta = 4.0 * n * (entries + 2) * tiny + 2 * lost_squares + n * 0x1p-511;

  const V largest_a = largest_magnitude(a_v, n * n), largest_b = largest_magnitude(b_v, n * k);
  const auto nonzero_solution = Ar::either(Ar::negate(all_zero(b_v, n * k)), Ar::negate(all_zero(x_v, n * k)));
  double largest_a_l[kLanes], largest_b_l[kLanes], factors[6][kLanes];
  to_lanes(largest_a, largest_a_l);
  to_lanes(largest_b, largest_b_l);
  for (int l = 0; l < kLanes; ++l) {
    const int e_a = rules::frexp_exponent(largest_a_l[l]), f_b = rules::frexp_exponent(largest_b_l[l]);
    const rules::PowerOfTwoScale to_a(-e_a), to_x(e_a - f_b), to_b(-f_b);
    factors[0][l] = to_a.first;
    factors[1][l] = to_a.second;
    factors[2][l] = to_x.first;
    factors[3][l] = to_x.second;
    factors[4][l] = to_b.first;
    factors[5][l] = to_b.second;
  }
  const V a_first = from_lanes<V>(factors[0]), a_second = from_lanes<V>(factors[1]);
  const V x_first = from_lanes<V>(factors[2]), x_second = from_lanes<V>(factors[3]);
  const V b_first = from_lanes<V>(factors[4]), b_second = from_lanes<V>(factors[5]);
  for (int64_t e = 0; e < n * n; ++e) a_v[e] = a_v[e] * a_first * a_second;
  for (int64_t e = 0; e < n * k; ++e) {
    x_v[e] = x_v[e] * x_first * x_second;
    w_v[e] = w_v[e] * x_first * x_second;
    b_v[e] = b_v[e] * b_first * b_second;
  }
  const V lam = smallest_singular_value_bound<N>(a_v, mu * a_first * a_second, u, n);
  multiply_add<N>(a_v, w_v, -1.0, b_v, residual, n, k);  // fl(B' - A' W')
  V r_hat = Ar::square_root(sum_of_squares(residual, n * k));
  const V w_hat = Ar::square_root(sum_of_squares(w_v, n * k));
  const V a_up = Ar::square_root(sum_of_squares(a_v, n * n)) + n * 0x1p-511;
  const V s = Ar::square_root(sum_of_squares(b_v, n * k)) + lost_squares + a_up * (w_hat + lost_squares);
  V t = g * s;  // >= ||fl(r') - r'||_F
  if constexpr (sizeof(T) == sizeof(double)) {
    const auto dot2 = Ar::negate(Ar::either(Ar::negate(Ar::greater(t, r_hat)),
                                            Ar::negate(Ar::greater(t, rules::kTightThreshold * lam * w_hat))));
    if (Ar::any(dot2)) {
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < k; ++j) {
          residual[i * k + j] = Ar::select(dot2, dot2_residual_entry(a_v, w_v, b_v, i, j, n, k), residual[i * k + j]);
        }
      }
      r_hat = Ar::select(dot2, Ar::square_root(sum_of_squares(residual, n * k)) / (1 - unit), r_hat);
      t = Ar::select(dot2, sqrt(2.0) * g * g * s + 4.0 * n * (n + 2) * tiny * w_hat, t);
    }
  }
  const double sq2 = sqrt(2.0) * entries;
  t = t + sq2 * tiny * (static_cast<double>(n) * (2.0 * w_hat + 2.0 * lost_squares) + (n + 1.0));
  const V r_norm = (r_hat + t) * (1 + c * unit) + eta;  // >= ||r'||_F
  for (int64_t e = 0; e < n * k; ++e) residual[e] = x_v[e] - w_v[e];
  const V apart = Ar::square_root(sum_of_squares(residual, n * k)) * (1 + c * unit) + (lost_squares + 2 * sq2 * tiny);
  const V error = (r_norm / lam * (1 + c * unit) + apart) * (1 + c * unit);  // >= ||X' - X'*||_F
  const V x_norm = Ar::square_root(sum_of_squares(x_v, n * k)) * (1 - c * unit) - lost_squares;  // <= ||X'||_F
  const V zero = Ar::broadcast(0.0), infinity = Ar::broadcast(rules::kInfinity);
  const auto proven = Ar::greater(lam, zero);
  const auto usable = Ar::negate(Ar::either(Ar::negate(proven), Ar::negate(Ar::greater(x_norm, error))));
  const V value = Ar::select(usable, rules::certified_or_inf(error / (x_norm - error) * (1 + c * unit)), infinity);
  double value_l[kLanes];
  to_lanes(value, value_l);
  for (int l = 0; l < count; ++l) {
    const bool solution_zero = !Ar::mask_lane(nonzero_solution, l) && Ar::mask_lane(proven, l);
    bound[l] = solution_zero ? 0.0 : value_l[l];
  }
}

// Systems 0..count-1 of V (A at a stride of n * n, B at b_stride) with A symmetric positive definite, without an
// inverse (reference.positive_definite_solve): A = L L^T from A's lower triangle in double, W = (L L^T)^-1 B
// refined once with the full A, X = round_T(W) written to x, certified by certify_positive_definite_solution
// (+inf where the factorisation fails). work: solve_workspace(n, k) values of V.
template <typename T, int N, typename V>
NEUINV_HOST_DEVICE void solve_positive_definite(const T* a, const T* b, int64_t b_stride, T* x, double* bound,
                                                int count, V* work, int64_t n_runtime, int64_t k) {
  using Ar = Arithmetic<V>;
  const int64_t n = N > 0 ? N : n_runtime;
  V* a_v = work;
  V* u = a_v + n * n;
  V* b_v = u + n * n;
  V* w_v = b_v + n * k;
  V* x_v = w_v + n * k;
  V* correction = x_v + n * k;
  V* v = correction + n * k;
  load_blocks(a, count, n * n, n * n, a_v);
  load_blocks(b, count, n * k, b_stride, b_v);
  const auto refused = cholesky_factor<N>(a_v, Ar::broadcast(0.0), u, n);
  for (int64_t e = 0; e < n * k; ++e) w_v[e] = b_v[e];
  cholesky_solve<N>(u, w_v, n, k);
  multiply_add<N>(a_v, w_v, -1.0, b_v, correction, n, k);  // B - A W
  cholesky_solve<N>(u, correction, n, k);
  for (int64_t e = 0; e < n * k; ++e) {
    w_v[e] = w_v[e] + correction[e];
    x_v[e] = Ar::template rounded<T>(w_v[e]);
  }
  T* targets[Ar::kLanes];
  for (int l = 0; l < count; ++l) targets[l] = x + l * n * k;
  Ar::deinterleave(x_v, n * k, targets, count);
  const V mu = smallest_eigenvalue_estimate<N>(u, v, n);
  // the factor and the correction are not needed any more: the certificate's shifted factor and residual
  certify_positive_definite_solution<T, N, V>(a_v, b_v, x_v, w_v, mu, bound, count, u, correction, n, k);
  for (int l = 0; l < count; ++l) {
    if (Ar::mask_lane(refused, l)) bound[l] = rules::kInfinity;
  }
}

// The exact path of neuinv::solve without R for systems 0..count-1 of V (A at a stride of n * n, B at b_stride):
// where positive_definite and n > rules::kPositiveDefiniteSolveWithoutInverseAbove, solve_positive_definite, then
// each system it leaves uncertified solved again from the Cholesky inverse (solve_with_exact_inverse, one system
// per call), as TorchBackend.solve does; otherwise solve_with_exact_inverse for all. One call site of solve_with_exact_inverse: every kernel here is inlined, and
// a second copy would double the compile time. work: solve_workspace(n, k) values of V; r:
// exact_inverse_workspace(n) values of T.
template <typename T, int N, typename VT, typename VD, typename V>
NEUINV_HOST_DEVICE void solve_exact_path(const T* a, const T* b, int64_t b_stride, T* x, double* bound, int count,
                                         V* work, T* r, int64_t n_runtime, int64_t k, bool positive_definite) {
  const int64_t n = N > 0 ? N : n_runtime;
  int first[Arithmetic<V>::kLanes], systems[Arithmetic<V>::kLanes];  // the calls of solve_with_exact_inverse
  int calls = 0;
  bool without_inverse = false;
  if constexpr (N == 0 || N > rules::kPositiveDefiniteSolveWithoutInverseAbove) {  // compiled only where it may run
    without_inverse = positive_definite && n > rules::kPositiveDefiniteSolveWithoutInverseAbove;
    if (without_inverse) {
      solve_positive_definite<T, N, V>(a, b, b_stride, x, bound, count, work, n, k);
      for (int l = 0; l < count; ++l) {
        if (!(bound[l] < rules::kInfinity)) {
          first[calls] = l;
          systems[calls++] = 1;
        }
      }
    }
  }
  if (!without_inverse) {
    first[0] = 0;
    systems[calls++] = count;
  }
  for (int call = 0; call < calls; ++call) {
    const int l = first[call];
    solve_with_exact_inverse<T, N, VT, VD, V>(a + l * n * n, b + l * b_stride, b_stride, x + l * n * k, bound + l,
                                              systems[call], work, r, n, k, positive_definite);
  }
}

}  // namespace kernels
}  // namespace neuinv
