// The per-system kernel of neuinv::solve_from_inverse (schema in csrc/neuinv_ops.cpp), written once for the CPU
// driver (csrc/cpu/solve_cpu.cpp) and any device: the solution of A X = B from a certified approximate inverse R
// and its certificate. The semantics are those of neuinv/reference.py (solve_from_inverse), the bound that of
// neuinv/certificate.py (solve_error_bound, real input), term by term.
//
// Matrices are row-major: A and R n x n, B and X n x k. Everything is evaluated in double; the kernels run without
// flush-to-zero or denormals-are-zero (csrc/cpu/build_selection.h, IeeeMode), so no stored entry is read as zero
// and solve_error_bound's test for that is not needed.
#pragma once
#include "../neuinv_rules.h"

namespace neuinv {
namespace kernels {

// The doubles of workspace solve_from_inverse needs for one system.
NEUINV_HOST_DEVICE int64_t solve_workspace(int64_t n, int64_t k) { return 2 * n * n + 2 * n * k; }

// frexp's exponent e of the largest |entry| (largest = f 2^e, 0.5 <= f < 1); 0 for a zero matrix, and where an
// entry is Inf (the certificate then refuses: the residual is not finite). NaN entries are skipped by fmax and
// refused the same way.
template <typename T>
NEUINV_HOST_DEVICE int exponent_of_largest(const T* m, int64_t count) {
  double largest = 0.0;
  for (int64_t e = 0; e < count; ++e) largest = fmax(largest, fabs(static_cast<double>(m[e])));
  int exponent = 0;
  if (largest > 0.0 && largest < rules::kInfinity) frexp(largest, &exponent);
  return exponent;
}

NEUINV_HOST_DEVICE double sum_of_squares_in_double(const double* v, int64_t count) {
  double part[4] = {0.0, 0.0, 0.0, 0.0};
  for (int64_t e = 0; e < count; ++e) part[e % 4] += v[e] * v[e];
  return (part[0] + part[2]) + (part[1] + part[3]);
}

// certificate.solve_error_bound for real A, B, X (as stored) and R with R's certified bound eps: the
// relative Frobenius error bound of X, +inf where nothing is certified. work: 2 n^2 + 2 n k doubles.
template <typename T>
NEUINV_HOST_DEVICE double solve_error_bound(const T* a, const T* b, const T* x, const T* r, double eps,
                                            double* work, int64_t n, int64_t k) {
  const double u = rules::kUnit, tiny = rules::kDoubleMin;
  const double g = rules::gamma_of(n + 1);
  const double c = 4.0 * (n * (n > k ? n : k) + n + 4);
  const double entries = sqrt(static_cast<double>(n * k));
  const double lost_squares = entries * 0x1p-511;
  const double eta = 4.0 * n * (entries + 2) * tiny + 2 * lost_squares + n * 0x1p-511;
  bool zero = eps < 1;
  for (int64_t e = 0; e < n * k && zero; ++e) zero = b[e] == 0 && x[e] == 0;
  if (zero) return 0.0;

  // A' = A 2^-e, B' = B 2^-f, X' = X 2^(e-f), R' = R 2^e: exact where normal, so the bound is scale-free.
  const int e_a = exponent_of_largest(a, n * n), f_b = exponent_of_largest(b, n * k);
  double* a_s = work;
  double* r_s = a_s + n * n;
  double* x_s = r_s + n * n;
  double* residual = x_s + n * k;
  for (int64_t e = 0; e < n * n; ++e) {
    a_s[e] = ldexp(static_cast<double>(a[e]), -e_a);
    r_s[e] = ldexp(static_cast<double>(r[e]), e_a);
  }
  for (int64_t e = 0; e < n * k; ++e) x_s[e] = ldexp(static_cast<double>(x[e]), e_a - f_b);
  double b_squared = 0.0;
  for (int64_t e = 0; e < n * k; ++e) {
    const double b_s = ldexp(static_cast<double>(b[e]), -f_b);
    b_squared += b_s * b_s;
    residual[e] = b_s;
  }
  for (int64_t i = 0; i < n; ++i) {  // fl(B' - A' X')
    for (int64_t l = 0; l < n; ++l) {
      const double a_il = a_s[i * n + l];
      for (int64_t j = 0; j < k; ++j) residual[i * k + j] -= a_il * x_s[l * k + j];
    }
  }
  double r_hat = sqrt(sum_of_squares_in_double(residual, n * k));
  const double x_hat = sqrt(sum_of_squares_in_double(x_s, n * k));
  const double r_inverse_hat = sqrt(sum_of_squares_in_double(r_s, n * n));
  const double a_up = sqrt(sum_of_squares_in_double(a_s, n * n)) + n * 0x1p-511;
  const double s = sqrt(b_squared) + lost_squares + a_up * (x_hat + lost_squares);
  double t = g * s;  // >= ||fl(r') - r'||_F
  if (sizeof(T) == sizeof(double) && t > r_hat && t * r_inverse_hat > rules::kDot2Threshold * x_hat) {
    // The residual again by Dot2 (Ogita, Rump & Oishi 2005), products split exactly by FMA.
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < k; ++j) {
        double total = ldexp(static_cast<double>(b[i * k + j]), -f_b), correction = 0.0;
        for (int64_t l = 0; l < n; ++l) {
          const double left = -a_s[i * n + l], right = x_s[l * k + j];
          const double product = left * right, product_error = fma(left, right, -product);
          double sum_error;
          rules::two_sum(total, product, total, sum_error);
          correction += sum_error + product_error;
        }
        residual[i * k + j] = total + correction;
      }
    }
    r_hat = sqrt(sum_of_squares_in_double(residual, n * k)) / (1 - u);
    t = sqrt(2.0) * g * g * s + 4.0 * n * (n + 2) * tiny * x_hat;
  }
  const double sq2 = sqrt(2.0) * entries;
  t += sq2 * tiny * (n * (2 * x_hat + 2 * lost_squares) + n + 1);
  const double r_norm = (r_hat + t) * (1 + c * u) + eta;                   // >= ||r'||_F
  const double r_inverse_norm = r_inverse_hat * (1 + c * u) + n * 0x1p-511;  // >= ||R'||_F
  double y_squared = 0.0;                                                  // ||fl(R' fl(r'))||_F^2
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < k; ++j) {
      double y = 0.0;
      for (int64_t l = 0; l < n; ++l) y += r_s[i * n + l] * residual[l * k + j];
      y_squared += y * y;
    }
  }
  const double y_flush = sq2 * n * tiny * (2 * r_hat + 2 * lost_squares + 2 * r_inverse_norm);
  const double y_norm =
      (sqrt(y_squared) + g * r_inverse_norm * (r_hat + lost_squares) + y_flush) * (1 + c * u) + eta;
  const double error = (y_norm + r_inverse_norm * t + eps / (1 - eps) * r_inverse_norm * r_norm) * (1 + c * u);
  const double x_norm = x_hat * (1 - c * u) - lost_squares;  // <= ||X'||_F
  if (!(x_norm > error && eps < 1)) return rules::kInfinity;
  return rules::certified_or_inf(error / (x_norm - error) * (1 + c * u));
}

// One system: X = round_T(X_w + R (B - A X_w)), X_w = R B, in double (reference.solve_from_inverse), written to
// x; returns its error bound (solve_error_bound). work: solve_workspace(n, k) doubles.
template <typename T>
NEUINV_HOST_DEVICE double solve_from_inverse(const T* a, const T* b, const T* r, double eps, T* x, double* work,
                                             int64_t n, int64_t k) {
  double* x_w = work;
  double* residual = work + n * k;
  for (int64_t e = 0; e < n * k; ++e) x_w[e] = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t l = 0; l < n; ++l) {
      const double r_il = static_cast<double>(r[i * n + l]);
      for (int64_t j = 0; j < k; ++j) x_w[i * k + j] += r_il * static_cast<double>(b[l * k + j]);
    }
  }
  for (int64_t e = 0; e < n * k; ++e) residual[e] = static_cast<double>(b[e]);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t l = 0; l < n; ++l) {
      const double a_il = static_cast<double>(a[i * n + l]);
      for (int64_t j = 0; j < k; ++j) residual[i * k + j] -= a_il * x_w[l * k + j];
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t l = 0; l < n; ++l) {
      const double r_il = static_cast<double>(r[i * n + l]);
      for (int64_t j = 0; j < k; ++j) x_w[i * k + j] += r_il * residual[l * k + j];
    }
  }
  for (int64_t e = 0; e < n * k; ++e) x[e] = static_cast<T>(x_w[e]);
  return solve_error_bound(a, b, x, r, eps, work, n, k);
}

}  // namespace kernels
}  // namespace neuinv
