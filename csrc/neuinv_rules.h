// The rules of a verified inversion, shared by the CPU and CUDA kernels (__host__ __device__): the
// Newton-Schulz stopping rule and guard (neuinv/rules.py), the certificate (neuinv/certificate.py) and the
// verdict. The Python modules are the readable specification; tests/test_conformance.py checks that every
// backend follows them. No ATen and no std:: calls here, so that nvcc compiles it for the device too.
#pragma once
#include <math.h>  // the C functions in the global namespace, as CUDA device code has them
#include <string.h>

#include <cstdint>
#include <type_traits>

#if defined(__CUDACC__)
#define NEUINV_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define NEUINV_HOST_DEVICE inline __attribute__((always_inline))
#endif

namespace neuinv {
namespace rules {

constexpr double kFloorStart = 0.5;       // rules.FLOOR_START
constexpr double kFloorRatio = 0.5;       // rules.FLOOR_RATIO
constexpr double kUnit = 0x1p-53;         // u of double
constexpr double kDot2Threshold = 0x1p-26;  // certificate.DOT2_THRESHOLD
constexpr double kTightThreshold = 0x1p-40;  // certificate.TIGHT_THRESHOLD
constexpr double kDoubleMin = 0x1p-1022;  // smallest normal double
constexpr double kInfinity = __builtin_huge_val();
constexpr double kCertifiedBelow = 1.0;  // rules.CERTIFIED_BELOW

// The parameters of the Newton-Schulz loop: rules.NewtonSchulzRules, same fields.
struct NewtonSchulzRules {
  double tol, accept;
  int64_t max_iter;
  bool guarded;
  double guard;

  // rules.converged: r <= min(tol ||A||_F ||X||_F, accept).
  NEUINV_HOST_DEVICE bool converged(double r, double norm_product) const {
    return r <= fmin(tol * norm_product, accept);
  }

  // rules.NewtonSchulzRules.stop: whether the current X (residual r, previous residual `previous`, +inf at step
  // 0) stops at `step`, and whether it is then done.
  NEUINV_HOST_DEVICE bool stop(double r, double previous, double norm_product, int64_t step, bool* done) const {
    const bool at_floor = previous < kFloorStart && r > previous * kFloorRatio;
    *done = converged(r, norm_product) || (at_floor && r <= accept);
    return *done || at_floor || !isfinite(r) || (guarded && step == 0 && r >= guard) || step == max_iter;
  }
};

// rules.certified: the verdict on an error bound (max_error = rules.CERTIFIED_BELOW without one).
NEUINV_HOST_DEVICE bool certified(double error_bound, double max_error) { return error_bound <= max_error; }

// rules.cholesky_pivot_accepted: the positive-definite exact path goes on only while each Cholesky pivot
// d_k = a_kk - sum_j l_kj^2 is positive and finite (NaN refused); a matrix that meets another is not certified.
NEUINV_HOST_DEVICE bool cholesky_pivot_accepted(double pivot) { return pivot > 0 && pivot < kInfinity; }

// rules.POSITIVE_DEFINITE_SOLVE_WITHOUT_INVERSE_ABOVE: positive-definite solves without R take
// kernels::solve_positive_definite for n above this, the Cholesky inverse at or below.
constexpr int kPositiveDefiniteSolveWithoutInverseAbove = 8;

// rules.POSITIVE_DEFINITE_SHIFTS: the shifts sigma = s mu tried in turn by the certificate of a positive-definite
// solve without an inverse (kernels::smallest_singular_value_bound).
constexpr int kPositiveDefiniteShiftCount = 3;
NEUINV_HOST_DEVICE double positive_definite_shift(int attempt) {
  return attempt == 0 ? 0.75 : attempt == 1 ? 0.25 : 0x1p-5;
}

// gamma_k = k u / (1 - k u) in double (Higham, Accuracy and Stability, Lemma 3.1).
NEUINV_HOST_DEVICE double gamma_of(int64_t k) { return k * kUnit / (1 - k * kUnit); }

// certificate.residual_bound's final step: rho >= ||I - A X||_F from r = ||fl(I - A X)||_F and the rounding
// term g s, (r + g s)(1 + c_n u) + eta_n (the kernels run without flush-to-zero: no subnormal term).
// D: double, or a pack of doubles (csrc/cpu/simd.h) that evaluates this for several matrices at once.
template <typename D>
NEUINV_HOST_DEVICE D rho_from(D r, D rounding, int64_t n) {
  const double c = 4.0 * (n * n + n + 4);
  const double eta = 4.0 * n * (n + 2) * kDoubleMin + 2.0 * n * 0x1p-511;
  return (r + rounding) * (1 + c * kUnit) + eta;
}

// s + e = a + b exactly (Knuth's TwoSum); D: double or a pack of doubles (csrc/cpu/simd.h), lane by lane.
template <typename D>
NEUINV_HOST_DEVICE void two_sum(D a, D b, D& s, D& e) {
  s = a + b;
  const D z = s - a;
  e = (a - (s - z)) + (b - z);
}

// ||fl(I - A X)||_F with each entry by Dot2 (Ogita, Rump & Oishi 2005), products split exactly by FMA; the
// terms are added in the order of certificate._dot2_residual. Row-major n x n matrices (N: n if fixed, else 0);
// the entries of fl(I - A X) are written to `entries` (n x n, row-major).
template <int N, typename Ta, typename Tx>
NEUINV_HOST_DEVICE double compensated_residual_norm(const Ta* a, const Tx* x, int64_t n_runtime, double* entries) {
  const int64_t n = N > 0 ? N : n_runtime;
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double total = i == j ? 1.0 : 0.0, correction = 0.0;
      for (int64_t k = 0; k < n; ++k) {
        const double left = -static_cast<double>(a[i * n + k]), right = static_cast<double>(x[k * n + j]);
        const double product = left * right, product_error = fma(left, right, -product);
        double sum_error;
        two_sum(total, product, total, sum_error);
        correction += sum_error + product_error;
      }
      const double entry = total + correction;
      entries[i * n + j] = entry;
      sum += entry * entry;
    }
  }
  return sqrt(sum);
}

// ||fl(I - A X)||_F evaluated in double (plain dot products, any order: the certificate bounds their rounding).
template <int N, typename Ta, typename Tx>
NEUINV_HOST_DEVICE double residual_norm_in_double(const Ta* a, const Tx* x, int64_t n_runtime) {
  const int64_t n = N > 0 ? N : n_runtime;
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double entry = i == j ? 1.0 : 0.0;
      for (int64_t k = 0; k < n; ++k) entry -= static_cast<double>(a[i * n + k]) * static_cast<double>(x[k * n + j]);
      sum += entry * entry;
    }
  }
  return sqrt(sum);
}

// Whether the certificate re-evaluates r by Dot2: the a-priori term g s dominates r and is not small.
NEUINV_HOST_DEVICE bool needs_dot2(double r, double g_s) { return g_s > r && r + g_s > kDot2Threshold; }

// Whether the float64 exact path re-evaluates r by the split residual (kernels::certify_double): the a-priori term
// g s dominates r and the bound would exceed kTightThreshold.
NEUINV_HOST_DEVICE bool needs_split(double r, double g_s) { return g_s > r && r + g_s > kTightThreshold; }

// certificate.certified_or_inf: a bound below 1, else +inf (NaN included).
template <typename D>
NEUINV_HOST_DEVICE D certified_or_inf(D bound) {
  const D infinity = D{} + kInfinity;
  return bound < 1.0 ? bound : infinity;
}

// certificate.error_bound(..., rounded_to=T) for X = round_T(X_w): rho + delta (1 + rho), delta = u_T +
// n (smallest subnormal of T) / ||X_w||_F; rho alone when T is double.
template <typename T, typename D>
NEUINV_HOST_DEVICE D rounded_error_bound(D rho, D x_w_norm, int64_t n) {
  if constexpr (std::is_same_v<T, double>) {
    return certified_or_inf(rho);
  } else {
    const D delta = 0x1p-24 + n * 0x1p-149 / x_w_norm;
    return certified_or_inf(rho + delta * (1.0 + rho));
  }
}

// sum_e (v_e f_1 f_2)^2 in double (f_1, f_2 powers of two: exact scaling barring underflow), in four interleaved
// partial sums (entry e to sum e % 4) added pairwise: one running sum is a chain of dependent additions (the
// certificate's c_n u covers the rounding of a sum in any order). Scaled or not, the same order.
template <typename T>
NEUINV_HOST_DEVICE double scaled_sum_of_squares(const T* v, int64_t count, double f_1, double f_2) {
  double part[4] = {};
  int64_t e = 0;
  for (; e + 4 <= count; e += 4) {
    for (int p = 0; p < 4; ++p) {
      const double scaled = static_cast<double>(v[e + p]) * f_1 * f_2;
      part[p] += scaled * scaled;
    }
  }
  for (int p = 0; e + p < count; ++p) {
    const double scaled = static_cast<double>(v[e + p]) * f_1 * f_2;
    part[p] += scaled * scaled;
  }
  return (part[0] + part[2]) + (part[1] + part[3]);
}

// 2^p as a double from its bits: a normal number for -1022 <= p <= 1023, a subnormal one down to 2^-1074, 0
// below, +inf above.
NEUINV_HOST_DEVICE double power_of_two(int p) {
  if (p > 1023) return rules::kInfinity;
  if (p < -1074) return 0.0;
  const uint64_t bits = p >= -1022 ? static_cast<uint64_t>(p + 1023) << 52 : uint64_t(1) << (p + 1074);
  double value;
  memcpy(&value, &bits, sizeof(value));
  return value;
}

// The exponent e of frexp (x = f 2^e, 0.5 <= |f| < 1) of x >= 0, read from its bits; 0 for 0, and for Inf and
// NaN (the certificate then refuses: the residual is not finite).
NEUINV_HOST_DEVICE int frexp_exponent(double x) {
  if (!(x > 0.0 && x < rules::kInfinity)) return 0;
  int offset = 0;
  if (x < rules::kDoubleMin) {  // subnormal: scaled by 2^64 first, exactly
    x *= 0x1p64;
    offset = 64;
  }
  uint64_t bits;
  memcpy(&bits, &x, sizeof(bits));
  return static_cast<int>((bits >> 52) & 0x7FF) - 1022 - offset;
}

// The two factors of a multiplication by 2^p as certificate.power_of_two_scaled does it: 2^floor(p/2), then
// 2^(p - floor(p/2)) (neither overflows where the result can be finite); exact wherever the result is normal.
struct PowerOfTwoScale {
  double first, second;
  NEUINV_HOST_DEVICE explicit PowerOfTwoScale(int p) {
    const int half = p >= 0 ? p / 2 : -((-p + 1) / 2);
    first = power_of_two(half);
    second = power_of_two(p - half);
  }
};

// Whether ||A||_F^2 and ||X||_F^2 summed unscaled give ||A||_F ||X||_F as scaled_norm_product does: nothing can
// overflow or lose accuracy to underflow, so ||2^-e A|| = 2^-e ||A|| exactly and the product is the same.
NEUINV_HOST_DEVICE bool plain_norms_suffice(double a_squared, double x_squared) {
  constexpr double kSafeLow = 0x1p-900, kSafeHigh = 0x1p+900;
  return a_squared > kSafeLow && a_squared < kSafeHigh && x_squared > kSafeLow && x_squared < kSafeHigh;
}

// ||A||_F ||X||_F as ||2^-e A||_F ||2^e X||_F in double, 2^e the power of two nearest max |a_ij|
// (as certificate._evaluated_residual: exact scaling, so no overflow and the same result for A and 2^k A).
template <typename Ta, typename Tx>
NEUINV_HOST_DEVICE double scaled_norm_product(const Ta* a, const Tx* x, int64_t count) {
  const double a_plain = scaled_sum_of_squares(a, count, 1.0, 1.0);
  const double x_plain = scaled_sum_of_squares(x, count, 1.0, 1.0);
  if (plain_norms_suffice(a_plain, x_plain)) return sqrt(a_plain) * sqrt(x_plain);
  double m = 0.0;
  for (int64_t e = 0; e < count; ++e) m = fmax(m, fabs(static_cast<double>(a[e])));
  const int exponent = frexp_exponent(m);  // 0 for a zero matrix (and for Inf/NaN, which the residual reports)
  const PowerOfTwoScale down(-exponent), up(exponent);
  return sqrt(scaled_sum_of_squares(a, count, down.first, down.second)) *
         sqrt(scaled_sum_of_squares(x, count, up.first, up.second));
}

// certificate.product_error_bound where R^ is Dot2's (entries r_hat, accurate to u |R| + g_k^2 (I + |A||X|)
// entrywise): e = ||X R||_F / (1 - rho) with ||X R||_F <= ||fl(X R^)||_F + g ||X||_F ||R^||_F + ||X||_F spread,
// the bound e / (||X||_F - e) on ||X - A^-1||_F / ||A^-1||_F; +inf where it cannot be evaluated.
// X is taken as 2^e X, 2^e the power of two nearest A's largest entry (exact barring underflow; the relative
// error is unchanged), as certificate.product_error_bound does, so that the bound does not depend on A's scale.
template <int N, typename Ta, typename Tx>
NEUINV_HOST_DEVICE double product_error_bound(const Ta* a, const Tx* x, const double* r_hat, double rho,
                                              double spread, int64_t n_runtime) {
  const int64_t n = N > 0 ? N : n_runtime;
  const double c = 4.0 * (n * n + n + 4), g = gamma_of(n + 1);
  double m = 0.0;
  for (int64_t e = 0; e < n * n; ++e) m = fmax(m, fabs(static_cast<double>(a[e])));
  const PowerOfTwoScale up(frexp_exponent(m));
  double product_sum = 0.0, x_sum = 0.0, r_sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double entry = 0.0;
      for (int64_t k = 0; k < n; ++k) {
        entry += static_cast<double>(x[i * n + k]) * up.first * up.second * r_hat[k * n + j];
      }
      const double x_entry = static_cast<double>(x[i * n + j]) * up.first * up.second;
      product_sum += entry * entry;
      x_sum += x_entry * x_entry;
      r_sum += r_hat[i * n + j] * r_hat[i * n + j];
    }
  }
  const double x_norm = sqrt(x_sum);
  const double xr = (sqrt(product_sum) + g * x_norm * sqrt(r_sum)) * (1 + c * kUnit) +
                    x_norm * (1 + c * kUnit) * spread + n * n * kDoubleMin;
  const double e = xr / (1 - rho), x_low = x_norm * (1 - c * kUnit) - 2.0 * n * 0x1p-511;
  return rho < 1 && e < x_low ? e / (x_low - e) : kInfinity;
}

// A bound on ||X - A^-1||_F / ||A^-1||_F (certificate.product_error_bound): rho >= ||I - A X||_F
// (certificate.residual_bound) from the plain r = ||fl(I - A X)||_F in double and s >= ||I + |A||X|||_F; where
// the a-priori term dominates and is not small, r is re-evaluated by Dot2 and the product form, tight there, is
// kept where it is the smaller.
template <int N, typename Ta, typename Tx>
NEUINV_HOST_DEVICE double error_bound_from(const Ta* a, const Tx* x, double r, double s, int64_t n) {
  const double g = gamma_of(n + 1);
  if (needs_dot2(r, g * s)) {
    double r_hat[N > 0 ? N * N : 64 * 64];
    const double r_dot2 = compensated_residual_norm<N>(a, x, n, r_hat) / (1 - kUnit);
    const double rounding = sqrt(2.0) * g * g * s, rho = rho_from(r_dot2, rounding, n);
    const double spread = kUnit * rho + rho_from(0.0, rounding, n);
    const double product = product_error_bound<N>(a, x, r_hat, rho, spread, n);
    return product < rho ? product : rho;
  }
  return rho_from(r, g * s, n);
}

// certificate.error_bound of X as stored in T (a Newton-Schulz result, or any X), given r = ||fl(I - A X)||_F
// evaluated in double: float32 products are exact in double, so the plain bound holds with g = gamma_{n+1};
// float64 escalates to Dot2 where that term dominates.
template <int N, typename T, typename Tx>
NEUINV_HOST_DEVICE double stored_error_bound(const T* a, const Tx* x, double r, int64_t n) {
  const double s = sqrt(static_cast<double>(n)) + scaled_norm_product(a, x, n * n);
  const double rho = std::is_same_v<T, double> ? error_bound_from<N>(a, x, r, s, n)
                                               : rho_from(r, gamma_of(n + 1) * s, n);
  return certified_or_inf(rho);
}

}  // namespace rules
}  // namespace neuinv
