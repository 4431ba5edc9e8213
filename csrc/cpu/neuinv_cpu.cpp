// neuinv's CPU kernels: the CPU implementations of the operators defined in csrc/neuinv_ops.cpp
// (neuinv::invert, the whole verified inversion of a batch, and its building blocks neuinv::exact_inverse,
// neuinv::residual_norm, neuinv::inverse_and_error_bound, neuinv::error_bound, neuinv::newton_schulz). The rules
// they follow are in csrc/neuinv_rules.h; the Python reference implementations in neuinv/reference.py. The
// batch is split across threads by at::parallel_for; small fixed sizes work on 8 matrices at once interleaved
// per SIMD lane (the "compact" layout), the others one matrix at a time in a local buffer. The hot kernels also
// have an AVX2+FMA build, chosen at run time.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <c10/util/accumulate.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>

#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#endif

#include "../neuinv_checks.h"
#include "../neuinv_rules.h"

namespace neuinv {

namespace {

using rules::NewtonSchulzRules;

constexpr int64_t kMaxN = 64;

// The small building blocks below are always inlined, so that each kernel that calls them is compiled
// whole for the instruction set it was built for (the AVX2+FMA builds chosen at run time further down).
#define NEUINV_INLINE inline __attribute__((always_inline))

// kernel(args...) built for AVX2+FMA where the CPU has them (asked once, at run time), else as the extension
// is built (baseline x86-64, for portability). `kernel` and everything it calls are NEUINV_INLINE, so each
// build compiles it whole for its instruction set (1.45-1.6x faster here for the kernels that use it).
#if defined(__x86_64__) && defined(__GNUC__)
bool cpu_has_avx2_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}

template <auto kernel, typename... Args>
__attribute__((target("avx2,fma"))) void run_avx2_fma(Args... args) {
  kernel(args...);
}
#endif

template <auto kernel, typename... Args>
void run_for_this_cpu(Args... args) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (cpu_has_avx2_fma()) return run_avx2_fma<kernel>(args...);
#endif
  kernel(args...);
}

// Which build of the kernels run_for_this_cpu runs on this CPU (`neuinv info` reports it).
std::string cpu_kernel_build() {
#if defined(__x86_64__) && defined(__GNUC__)
  if (cpu_has_avx2_fma()) return "x86-64 with AVX2+FMA (chosen at run time)";
  return "baseline x86-64 (this CPU lacks AVX2 or FMA)";
#else
  return "baseline build for this CPU";
#endif
}

// A fresh tensor like A for a kernel's output X. On Linux one of 2 MB or more is advised to use transparent
// huge pages before it is first written (numpy does the same for its large arrays; torch does it only under
// THP_MEM_ALLOC_ENABLE=1): first-touch page faults otherwise cost as much as the small-n kernels themselves
// (filling a fresh 64 MB tensor took 20 ms with 4 kB pages and 5 ms with huge pages on the 2-core
// development VM). The advice is a hint: where the kernel declines it nothing changes.
at::Tensor empty_output_like(const at::Tensor& A) {
  at::Tensor X = at::empty_like(A, at::MemoryFormat::Contiguous);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t(1) << 21, kPage = 4096;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(X.data_ptr());
  const uintptr_t start = (begin + kPage - 1) & ~(kPage - 1), end = (begin + X.nbytes()) & ~(kPage - 1);
  if (end > start && end - start >= kHugePage) madvise(reinterpret_cast<void*>(start), end - start, MADV_HUGEPAGE);
#endif
  return X;
}

// Sizes compiled with a fixed n (loops fully known to the compiler); other n take the N = 0 path.
#define NEUINV_DISPATCH_SIZE(n, ...)                         \
  switch (n) {                                               \
    case 1: { constexpr int N = 1; __VA_ARGS__(); break; }   \
    case 2: { constexpr int N = 2; __VA_ARGS__(); break; }   \
    case 3: { constexpr int N = 3; __VA_ARGS__(); break; }   \
    case 4: { constexpr int N = 4; __VA_ARGS__(); break; }   \
    case 5: { constexpr int N = 5; __VA_ARGS__(); break; }   \
    case 6: { constexpr int N = 6; __VA_ARGS__(); break; }   \
    case 8: { constexpr int N = 8; __VA_ARGS__(); break; }   \
    case 16: { constexpr int N = 16; __VA_ARGS__(); break; } \
    default: { constexpr int N = 0; __VA_ARGS__(); break; }  \
  }

// Gauss-Jordan elimination with partial pivoting on [A | I], in double precision for every input
// dtype, writing X_w in double (float32 inverses then carry only their final rounding, which the certificate
// accounts for). Returns 0, or the 1-based column of the first zero pivot (A singular), as getrf reports it.
template <typename T, int N>
NEUINV_INLINE int64_t gauss_jordan(const T* a, double* x, int64_t n_runtime) {
  const int64_t n = N > 0 ? N : n_runtime;
  const int64_t w = 2 * n;
  alignas(64) double work[(N > 0 ? N : kMaxN) * 2 * (N > 0 ? N : kMaxN)];
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      work[i * w + j] = a[i * n + j];
      work[i * w + n + j] = (i == j) ? 1.0 : 0.0;
    }
  }
  for (int64_t k = 0; k < n; ++k) {
    int64_t pivot = k;
    double best = std::abs(work[k * w + k]);
    for (int64_t i = k + 1; i < n; ++i) {
      const double value = std::abs(work[i * w + k]);
      if (value > best) { best = value; pivot = i; }
    }
    if (!(best > 0.0)) {
      return k + 1;
    }
    // Columns < k of A's half hold zeros in rows k and below, are left unchanged in the others by this step,
    // and are never read again: the exchange, the scaling and the elimination start at column k, rounded down
    // to a multiple of 4 so that the vector loops keep their alignment (a quarter fewer operations in all).
    const int64_t start = k & ~int64_t(3);
    if (pivot != k) {
      for (int64_t j = start; j < w; ++j) std::swap(work[k * w + j], work[pivot * w + j]);
    }
    double* row_k = work + k * w;
    const double inverse_pivot = 1.0 / row_k[k];
    for (int64_t j = start; j < w; ++j) row_k[j] *= inverse_pivot;
    for (int64_t i = 0; i < n; ++i) {
      if (i == k) continue;
      double* row_i = work + i * w;
      const double factor = row_i[k];
      for (int64_t j = start; j < w; ++j) row_i[j] -= factor * row_k[j];
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) x[i * n + j] = work[i * w + n + j];
  }
  return 0;
}

// Gauss-Jordan on one matrix; a singular one gets an all-NaN X. Returns its first zero pivot (0 if none).
template <typename T, int N>
NEUINV_INLINE int32_t invert_or_nan(const T* a, T* x, int64_t n) {
  alignas(64) double x_w[(N > 0 ? N : kMaxN) * (N > 0 ? N : kMaxN)];
  const int64_t zero_pivot = gauss_jordan<T, N>(a, x_w, n);
  for (int64_t e = 0; e < n * n; ++e) x[e] = zero_pivot ? std::numeric_limits<T>::quiet_NaN() : static_cast<T>(x_w[e]);
  return static_cast<int32_t>(zero_pivot);
}

// out += sign * left * right for n x n row-major matrices, in Acc arithmetic (left and right are read as T
// and converted). Four rows of out at a time: each row of `right` is loaded once per four rows, where the
// row-by-row loop was bound by loads (3x slower at n = 16). Every entry still sums over k in order.
template <typename Acc, int N, typename T, typename TR = T>
NEUINV_INLINE void accumulate_product(const T* __restrict__ left, const TR* __restrict__ right, Acc* __restrict__ out,
                        int64_t n_runtime, Acc sign) {
  const int64_t n = N > 0 ? N : n_runtime;
  constexpr int64_t kRows = 4;
  int64_t i0 = 0;
  for (; i0 + kRows <= n; i0 += kRows) {
    Acc* o = out + i0 * n;
    for (int64_t k = 0; k < n; ++k) {
      const TR* right_row = right + k * n;
      const Acc l0 = sign * static_cast<Acc>(left[i0 * n + k]), l1 = sign * static_cast<Acc>(left[(i0 + 1) * n + k]),
                l2 = sign * static_cast<Acc>(left[(i0 + 2) * n + k]), l3 = sign * static_cast<Acc>(left[(i0 + 3) * n + k]);
      for (int64_t j = 0; j < n; ++j) {
        const Acc value = static_cast<Acc>(right_row[j]);
        o[j] += l0 * value;
        o[n + j] += l1 * value;
        o[2 * n + j] += l2 * value;
        o[3 * n + j] += l3 * value;
      }
    }
  }
  if constexpr (N == 0 || N % kRows != 0) {
    for (int64_t i = i0; i < n; ++i) {
      for (int64_t k = 0; k < n; ++k) {
        const Acc l = sign * static_cast<Acc>(left[i * n + k]);
        for (int64_t j = 0; j < n; ++j) out[i * n + j] += l * static_cast<Acc>(right[k * n + j]);
      }
    }
  }
}

// The sum of v[i]^2 over `count` entries in Acc arithmetic, in kSums interleaved partial sums (entry i goes to
// sum i % kSums) added pairwise at the end. One running sum is a chain of dependent additions (256 per norm at
// n = 16); the partial sums are one vector register. Exact path, one thread: 16x16 float64 17% faster (8 sums
// measured slower than 4 at n = 12 and 32 in float32).
template <typename Acc, typename T>
NEUINV_INLINE Acc sum_of_squares(const T* v, int64_t count) {
  constexpr int kSums = 4;
  Acc partial[kSums] = {};
  int64_t i = 0;
  for (; i + kSums <= count; i += kSums) {
    for (int s = 0; s < kSums; ++s) partial[s] += static_cast<Acc>(v[i + s]) * static_cast<Acc>(v[i + s]);
  }
  for (int s = 0; i + s < count; ++s) partial[s] += static_cast<Acc>(v[i + s]) * static_cast<Acc>(v[i + s]);
  for (int width = kSums / 2; width > 0; width /= 2) {
    for (int s = 0; s < width; ++s) partial[s] += partial[s + width];
  }
  return partial[0];
}

// R = I - A X in Acc arithmetic (n x n, row-major); returns ||R||_F.
template <typename Acc, int N, typename T, typename TX = T>
NEUINV_INLINE Acc residual_into(const T* a, const TX* x, Acc* r, int64_t n_runtime) {
  const int64_t n = N > 0 ? N : n_runtime;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) r[i * n + j] = (i == j) ? Acc(1) : Acc(0);
  }
  accumulate_product<Acc, N>(a, x, r, n, Acc(-1));
  return std::sqrt(sum_of_squares<Acc>(r, n * n));
}

// The kernels run in IEEE mode (IeeeMode below: round to nearest, no flush-to-zero or denormals-are-zero), so
// the certificate's subnormal term is 0 here (csrc/neuinv_rules.h).
// r = ||fl(I - A X)||_F in double for one matrix (X in double), and s = sqrt(n) + ||A||_F ||X||_F, the
// bound on ||I + |A||X|||_F the certificate uses.
template <typename Ta, int N>
NEUINV_INLINE void residual_and_scale(const Ta* a, const double* x, int64_t n_runtime, double& r, double& s) {
  const int64_t n = N > 0 ? N : n_runtime;
  constexpr int64_t M = N > 0 ? N : kMaxN;
  alignas(64) double R[M * M];
  r = residual_into<double, N>(a, x, R, n);
  s = std::sqrt(static_cast<double>(n)) + rules::scaled_norm_product(a, x, n * n);
}

// The exact path's certificate for X_w (double) of one matrix, after one Newton-Schulz step
// X_w <- X_w + X_w (I - A X_w) when the input is float64 and r lies above eps ||A||_F ||X_w||_F (Gauss-Jordan
// lands up to ~8x above LU there at cond 1e4; the step, taken only while r < 0.5 so that it converges, brings
// it to LU's level). Float32 results are certified before their rounding. Returns the error bound of
// X = round_T(X_w).
template <typename T, int N>
NEUINV_INLINE double certify_exact(const T* a, double* x_w, int64_t n_runtime) {
  const int64_t n = N > 0 ? N : n_runtime;
  double r, s;
  residual_and_scale<T, N>(a, x_w, n, r, s);
  if constexpr (std::is_same_v<T, double>) {
    if (r > std::numeric_limits<double>::epsilon() * (s - std::sqrt(static_cast<double>(n))) && r < 0.5) {
      constexpr int64_t M = N > 0 ? N : kMaxN;
      alignas(64) double residual_matrix[M * M], next[M * M];
      residual_into<double, N>(a, x_w, residual_matrix, n);
      std::copy(x_w, x_w + n * n, next);
      accumulate_product<double, N>(x_w, residual_matrix, next, n, 1.0);
      std::copy(next, next + n * n, x_w);
      residual_and_scale<T, N>(a, x_w, n, r, s);
    }
  }
  const double rho = rules::residual_bound_from<N>(a, x_w, r, s, n);
  return rules::rounded_error_bound<T>(rho, std::sqrt(sum_of_squares<double>(x_w, n * n)), n);
}

// Saves the floating-point environment and sets IEEE mode (round to nearest, gradual underflow: no
// flush-to-zero or denormals-are-zero, which torch.set_flush_denormal sets per thread) for the kernels' work;
// restores it at the end of the scope. Every worker thread thus computes the same results.
class IeeeMode {
 public:
#if defined(__SSE__) || defined(__x86_64__)
  IeeeMode() : saved_(_mm_getcsr()) { _mm_setcsr(0x1F80); }
  ~IeeeMode() { _mm_setcsr(saved_); }
 private:
  unsigned int saved_;
#endif
};

// The largest |a_ij| of an n x n matrix, 1 for a zero matrix: the m of reference.norm_product.
template <typename T>
NEUINV_INLINE T largest_entry(const T* a, int64_t count) {
  T m = 0;
  for (int64_t e = 0; e < count; ++e) m = std::max(m, std::abs(a[e]));
  return m > 0 ? m : T(1);
}

// ||v * scale||_F (or ||v / divisor||_F) in T arithmetic, for reference.norm_product.
template <typename T>
NEUINV_INLINE T scaled_frobenius(const T* v, int64_t count, T scale, bool divide) {
  T sum = 0;
  for (int64_t e = 0; e < count; ++e) {
    const T scaled = divide ? v[e] / scale : v[e] * scale;
    sum += scaled * scaled;
  }
  return std::sqrt(sum);
}

std::tuple<at::Tensor, at::Tensor> exact_inverse_cpu(const at::Tensor& A_in) {
  check_batch(A_in, "A", at::kCPU);
  const at::Tensor A = A_in.contiguous();
  const int64_t b = A.size(0), n = A.size(1);
  at::Tensor X = empty_output_like(A);
  at::Tensor info = at::zeros({b}, A.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "neuinv_exact_inverse", [&] {
    const scalar_t* a = A.data_ptr<scalar_t>();
    scalar_t* x = X.data_ptr<scalar_t>();
    int32_t* pivots = info.data_ptr<int32_t>();
    NEUINV_DISPATCH_SIZE(n, [&] {
      at::parallel_for(0, b, 64, [&](int64_t begin, int64_t end) {
        IeeeMode ieee;
        for (int64_t m = begin; m < end; ++m) pivots[m] = invert_or_nan<scalar_t, N>(a + m * n * n, x + m * n * n, n);
      });
    });
  });
  return {X, info};
}

// The "compact" layout (as in Intel MKL's compact batch routines): kLanes matrices interleaved so that
// element (i, j) of all of them is contiguous, w[i][j][0..kLanes), and every innermost loop runs across
// matrices, where the compiler vectorises it. Pivoting differs per matrix, so row exchanges are masked
// selects. Used for the sizes compiled with a fixed N.
constexpr int kLanes = 8;
constexpr int kCompactMaxN = 8;  // above, one matrix at a time measured faster (the working set leaves L1)

// Part of element (i, j) across the lanes as a 32-byte GCC vector (one AVX2 register: 4 lanes in double, all 8
// in float). The compact products are written with these rather than left to the auto-vectoriser, which did
// poorly with them (the Newton-Schulz loop, one thread: 2.4x faster at n = 4 float32, 1.5x at n = 8 float64).
// Lanes<T>::mask selects lanes in `mask ? a : b`.
template <typename T>
struct Lanes {
  static constexpr int kWidth = 32 / sizeof(T), kParts = kLanes / kWidth;
  typedef T type __attribute__((vector_size(32)));
  typedef std::conditional_t<sizeof(T) == 8, int64_t, int32_t> mask_element;
  typedef mask_element mask __attribute__((vector_size(32)));
};

// GCC notes that a 32-byte vector returned without AVX changes the calling convention; these helpers are always
// inlined into the kernels (anonymous namespace), so no vector crosses a call.
#pragma GCC diagnostic ignored "-Wpsabi"
template <typename T>
NEUINV_INLINE typename Lanes<T>::type load_part(const T (&element)[kLanes], int part) {
  typename Lanes<T>::type v;
  std::memcpy(&v, element + part * Lanes<T>::kWidth, sizeof v);
  return v;
}

template <typename T>
NEUINV_INLINE void store_part(T (&element)[kLanes], int part, typename Lanes<T>::type v) {
  std::memcpy(element + part * Lanes<T>::kWidth, &v, sizeof v);
}

// R = I - A X for the kLanes matrices of a compact block, in Acc arithmetic; r_sq and x_sq get each lane's
// ||R||_F^2 and ||m X||_F^2 (m: `scale`, per lane), summed over (i, j) in row-major order (the lanes make these
// sums vector instructions).
template <typename Acc, int N>
NEUINV_INLINE void compact_residual(const Acc (&a)[N][N][kLanes], const Acc (&x)[N][N][kLanes],
                                    const Acc (&scale)[kLanes], Acc (&R)[N][N][kLanes], Acc (&r_sq)[kLanes],
                                    Acc (&x_sq)[kLanes]) {
  using V = typename Lanes<Acc>::type;
  for (int part = 0; part < Lanes<Acc>::kParts; ++part) {
    V r_sum = {}, x_sum = {};
    const V m = load_part(scale, part);
    for (int i = 0; i < N; ++i) {
      for (int j = 0; j < N; ++j) {
        V entry = V{} + (i == j ? Acc(1) : Acc(0));
        for (int k = 0; k < N; ++k) entry -= load_part(a[i][k], part) * load_part(x[k][j], part);
        store_part(R[i][j], part, entry);
        const V x_ij = load_part(x[i][j], part) * m;
        r_sum += entry * entry;
        x_sum += x_ij * x_ij;
      }
    }
    store_part(r_sq, part, r_sum);
    store_part(x_sq, part, x_sum);
  }
}

// r_sq gets each lane's ||fl(I - A X)||_F^2 (double, compact layout), the residual of the certificate.
template <int N>
NEUINV_INLINE void compact_residual_norms(const double (&a)[N][N][kLanes], const double (&x)[N][N][kLanes],
                                          double (&r_sq)[kLanes]) {
  using V = typename Lanes<double>::type;
  for (int part = 0; part < Lanes<double>::kParts; ++part) {
    V r_sum = {};
    for (int i = 0; i < N; ++i) {
      for (int j = 0; j < N; ++j) {
        V entry = V{} + (i == j ? 1.0 : 0.0);
        for (int k = 0; k < N; ++k) entry -= load_part(a[i][k], part) * load_part(x[k][j], part);
        r_sum += entry * entry;
      }
    }
    store_part(r_sq, part, r_sum);
  }
}

// X = round_T(X_w) and its bound; NaN and +inf where the bound is +inf or an entry overflows T in the rounding.
template <typename T>
NEUINV_INLINE double store_certified(const double* x_w, T* x, int64_t count, double bound) {
  bool finite = !std::isinf(bound);
  for (int64_t e = 0; e < count && finite; ++e) {
    x[e] = static_cast<T>(x_w[e]);
    finite = std::isfinite(x[e]);
  }
  if (finite) return bound;
  std::fill(x, x + count, std::numeric_limits<T>::quiet_NaN());
  return std::numeric_limits<double>::infinity();
}

// The exact-path certificate of lane l of a compact block (certify_exact), from its compact r; X_w is
// written row-major to x_w (polished in place where certify_exact does so). Returns the error bound.
template <typename T, int N>
NEUINV_INLINE double certify_lane(const T* a_l, const double (&x)[N][N][kLanes], int l, double r, double* x_w) {
  for (int i = 0; i < N; ++i) {
    for (int j = 0; j < N; ++j) x_w[i * N + j] = x[i][j][l];
  }
  const double norms = rules::scaled_norm_product(a_l, x_w, N * N), s = std::sqrt(double(N)) + norms;
  if constexpr (std::is_same_v<T, double>) {
    if (r > std::numeric_limits<double>::epsilon() * norms) return certify_exact<T, N>(a_l, x_w, N);
  }
  const double rho = rules::residual_bound_from<N>(a_l, x_w, r, s, N);
  return rules::rounded_error_bound<T>(rho, std::sqrt(sum_of_squares<double>(x_w, N * N)), N);
}

// Certifies the compact X_w of `count` <= kLanes matrices (certify_lane; +inf where `rejected` is not 0: a zero
// or refused pivot) and stores X rounded to T (NaN where nothing is certified) with its error bound.
template <typename T, int N>
NEUINV_INLINE void certify_compact(const T* a, const double (&original)[N][N][kLanes],
                                   const double (&x_w)[N][N][kLanes], const int32_t (&rejected)[kLanes], T* x,
                                   double* error_bound, int count) {
  double r_sq[kLanes];
  compact_residual_norms<N>(original, x_w, r_sq);
  for (int l = 0; l < count; ++l) {
    alignas(64) double lane[N * N];
    const double bound = rejected[l] ? std::numeric_limits<double>::infinity()
                                     : certify_lane<T, N>(a + l * N * N, x_w, l, std::sqrt(r_sq[l]), lane);
    error_bound[l] = store_certified<T>(lane, x + l * N * N, N * N, bound);
  }
}

// Inverts `count` <= kLanes matrices (a, row-major, one after another) by Gauss-Jordan elimination on
// [A | I] with partial pivoting, in double precision, and writes X (rounded to T; NaN where nothing is
// certified) and its error bound (certify_exact; +inf for a zero pivot).
template <typename T, int N>
void invert_compact(const T* a, T* x, double* error_bound, int count) {
  constexpr int L = kLanes, W = 2 * N;
  alignas(64) double w[N][W][L];
  alignas(64) double original[N][N][L];
  for (int l = 0; l < L; ++l) {
    for (int i = 0; i < N; ++i) {
      for (int j = 0; j < N; ++j) {
        // Lanes beyond count hold the identity, which inverts without trouble.
        const double value = l < count ? static_cast<double>(a[l * N * N + i * N + j]) : (i == j ? 1.0 : 0.0);
        original[i][j][l] = value;
        w[i][j][l] = value;
        w[i][N + j][l] = i == j ? 1.0 : 0.0;
      }
    }
  }
  int32_t first_zero[L] = {};
  for (int k = 0; k < N; ++k) {
    double best[L];
    int pivot[L];
    for (int l = 0; l < L; ++l) {
      best[l] = std::abs(w[k][k][l]);
      pivot[l] = k;
    }
    for (int i = k + 1; i < N; ++i) {
      for (int l = 0; l < L; ++l) {
        const double value = std::abs(w[i][k][l]);
        const bool larger = value > best[l];
        best[l] = larger ? value : best[l];
        pivot[l] = larger ? i : pivot[l];
      }
    }
    for (int l = 0; l < L; ++l) {
      if (!(best[l] > 0.0) && first_zero[l] == 0) first_zero[l] = k + 1;
    }
    // Rows i >= k are zero in columns < k, so the exchange and the elimination start at column k.
    for (int i = k + 1; i < N; ++i) {
      for (int j = k; j < W; ++j) {
        for (int l = 0; l < L; ++l) {
          const bool exchange = pivot[l] == i;
          const double top = w[k][j][l], other = w[i][j][l];
          w[k][j][l] = exchange ? other : top;
          w[i][j][l] = exchange ? top : other;
        }
      }
    }
    double scale[L];
    for (int l = 0; l < L; ++l) scale[l] = 1.0 / w[k][k][l];
    for (int j = k; j < W; ++j) {
      for (int l = 0; l < L; ++l) w[k][j][l] *= scale[l];
    }
    for (int i = 0; i < N; ++i) {
      if (i == k) continue;
      double factor[L];
      for (int l = 0; l < L; ++l) factor[l] = w[i][k][l];
      for (int j = k; j < W; ++j) {
        for (int l = 0; l < L; ++l) w[i][j][l] -= factor[l] * w[k][j][l];
      }
    }
  }
  alignas(64) double x_w[N][N][L];
  for (int i = 0; i < N; ++i) {
    for (int j = 0; j < N; ++j) {
      for (int l = 0; l < L; ++l) x_w[i][j][l] = w[i][N + j][l];
    }
  }
  certify_compact<T, N>(a, original, x_w, first_zero, x, error_bound, count);
}

// Closed forms A^-1 = adj(A) / det(A) for n = 2, 3, 4 on the compact layout (4x4: Laplace expansion in
// the 2x2 minors of rows 0-1 and 2-3), lane by lane; a singular lane gets Inf/NaN. Only for float32 input,
// in double precision: the closed form's error grows like eps64 cond^(n-1) (against eps cond for LU), far
// below float32 rounding for any matrix whose float32 inverse is worth having; the caller re-checks each
// result and sends the rest to Gauss-Jordan.
constexpr int kClosedFormMaxN = 4;

template <int N>
NEUINV_INLINE void adjugate_inverse(const double (&a)[N][N][kLanes],
                                                             double (&b)[N][N][kLanes]) {
  for (int l = 0; l < kLanes; ++l) {
    if constexpr (N == 2) {
      const double d = 1.0 / (a[0][0][l] * a[1][1][l] - a[0][1][l] * a[1][0][l]);
      b[0][0][l] = a[1][1][l] * d;
      b[0][1][l] = -a[0][1][l] * d;
      b[1][0][l] = -a[1][0][l] * d;
      b[1][1][l] = a[0][0][l] * d;
    } else if constexpr (N == 3) {
      const double c00 = a[1][1][l] * a[2][2][l] - a[1][2][l] * a[2][1][l];
      const double c10 = a[1][2][l] * a[2][0][l] - a[1][0][l] * a[2][2][l];
      const double c20 = a[1][0][l] * a[2][1][l] - a[1][1][l] * a[2][0][l];
      const double d = 1.0 / (a[0][0][l] * c00 + a[0][1][l] * c10 + a[0][2][l] * c20);
      b[0][0][l] = c00 * d;
      b[0][1][l] = (a[0][2][l] * a[2][1][l] - a[0][1][l] * a[2][2][l]) * d;
      b[0][2][l] = (a[0][1][l] * a[1][2][l] - a[0][2][l] * a[1][1][l]) * d;
      b[1][0][l] = c10 * d;
      b[1][1][l] = (a[0][0][l] * a[2][2][l] - a[0][2][l] * a[2][0][l]) * d;
      b[1][2][l] = (a[0][2][l] * a[1][0][l] - a[0][0][l] * a[1][2][l]) * d;
      b[2][0][l] = c20 * d;
      b[2][1][l] = (a[0][1][l] * a[2][0][l] - a[0][0][l] * a[2][1][l]) * d;
      b[2][2][l] = (a[0][0][l] * a[1][1][l] - a[0][1][l] * a[1][0][l]) * d;
    } else if constexpr (N == 4) {
      const double s0 = a[0][0][l] * a[1][1][l] - a[1][0][l] * a[0][1][l];
      const double s1 = a[0][0][l] * a[1][2][l] - a[1][0][l] * a[0][2][l];
      const double s2 = a[0][0][l] * a[1][3][l] - a[1][0][l] * a[0][3][l];
      const double s3 = a[0][1][l] * a[1][2][l] - a[1][1][l] * a[0][2][l];
      const double s4 = a[0][1][l] * a[1][3][l] - a[1][1][l] * a[0][3][l];
      const double s5 = a[0][2][l] * a[1][3][l] - a[1][2][l] * a[0][3][l];
      const double c5 = a[2][2][l] * a[3][3][l] - a[3][2][l] * a[2][3][l];
      const double c4 = a[2][1][l] * a[3][3][l] - a[3][1][l] * a[2][3][l];
      const double c3 = a[2][1][l] * a[3][2][l] - a[3][1][l] * a[2][2][l];
      const double c2 = a[2][0][l] * a[3][3][l] - a[3][0][l] * a[2][3][l];
      const double c1 = a[2][0][l] * a[3][2][l] - a[3][0][l] * a[2][2][l];
      const double c0 = a[2][0][l] * a[3][1][l] - a[3][0][l] * a[2][1][l];
      const double d = 1.0 / (s0 * c5 - s1 * c4 + s2 * c3 + s3 * c2 - s4 * c1 + s5 * c0);
      b[0][0][l] = (a[1][1][l] * c5 - a[1][2][l] * c4 + a[1][3][l] * c3) * d;
      b[0][1][l] = (-a[0][1][l] * c5 + a[0][2][l] * c4 - a[0][3][l] * c3) * d;
      b[0][2][l] = (a[3][1][l] * s5 - a[3][2][l] * s4 + a[3][3][l] * s3) * d;
      b[0][3][l] = (-a[2][1][l] * s5 + a[2][2][l] * s4 - a[2][3][l] * s3) * d;
      b[1][0][l] = (-a[1][0][l] * c5 + a[1][2][l] * c2 - a[1][3][l] * c1) * d;
      b[1][1][l] = (a[0][0][l] * c5 - a[0][2][l] * c2 + a[0][3][l] * c1) * d;
      b[1][2][l] = (-a[3][0][l] * s5 + a[3][2][l] * s2 - a[3][3][l] * s1) * d;
      b[1][3][l] = (a[2][0][l] * s5 - a[2][2][l] * s2 + a[2][3][l] * s1) * d;
      b[2][0][l] = (a[1][0][l] * c4 - a[1][1][l] * c2 + a[1][3][l] * c0) * d;
      b[2][1][l] = (-a[0][0][l] * c4 + a[0][1][l] * c2 - a[0][3][l] * c0) * d;
      b[2][2][l] = (a[3][0][l] * s4 - a[3][1][l] * s2 + a[3][3][l] * s0) * d;
      b[2][3][l] = (-a[2][0][l] * s4 + a[2][1][l] * s2 - a[2][3][l] * s0) * d;
      b[3][0][l] = (-a[1][0][l] * c3 + a[1][1][l] * c1 - a[1][2][l] * c0) * d;
      b[3][1][l] = (a[0][0][l] * c3 - a[0][1][l] * c1 + a[0][2][l] * c0) * d;
      b[3][2][l] = (-a[3][0][l] * s3 + a[3][1][l] * s1 - a[3][2][l] * s0) * d;
      b[3][3][l] = (a[2][0][l] * s3 - a[2][1][l] * s1 + a[2][2][l] * s0) * d;
    }
  }
}

// The exact path for `count` <= kLanes float32 matrices by the closed form: X_w in double, certified
// (certify_lane) and rounded to float32. A matrix whose X_w is not certified to float32 accuracy
// (rho_w > eps32 / 2: the closed form lost accuracy, or A is singular) is redone by Gauss-Jordan.
template <typename T, int N>
NEUINV_INLINE void invert_closed_form(const T* a_in, T* x, double* error_bound, int count) {
  constexpr int L = kLanes;
  alignas(64) double a[N][N][L], b[N][N][L];
  for (int l = 0; l < L; ++l) {
    for (int i = 0; i < N; ++i) {
      for (int j = 0; j < N; ++j) {
        a[i][j][l] = l < count ? static_cast<double>(a_in[l * N * N + i * N + j]) : (i == j ? 1.0 : 0.0);
      }
    }
  }
  adjugate_inverse<N>(a, b);
  double r_sq[L];
  compact_residual_norms<N>(a, b, r_sq);
  const double accurate = std::numeric_limits<T>::epsilon() / 2;
  for (int l = 0; l < count; ++l) {
    const T* a_l = a_in + l * N * N;
    alignas(64) double x_w[N * N];
    double bound = certify_lane<T, N>(a_l, b, l, std::sqrt(r_sq[l]), x_w);
    if (!(bound <= 2 * accurate)) {  // rho_w > eps/2 (or NaN): Gauss-Jordan
      bound = gauss_jordan<T, N>(a_l, x_w, N) ? std::numeric_limits<double>::infinity()
                                              : certify_exact<T, N>(a_l, x_w, N);
    }
    error_bound[l] = store_certified<T>(x_w, x + l * N * N, N * N, bound);
  }
}

// The positive-definite exact path (reference.cholesky_inverse), in double precision for every input dtype:
// A = L L^T from A's lower triangle (right-looking, Golub & Van Loan Alg. 4.2.1), M = L^-1 by forward
// substitution row by row, X_w = M^T M (its lower triangle, mirrored): n^3/6 multiply-adds each, against
// Gauss-Jordan's n^3 (Higham, Accuracy and Stability, §10.1 and §14.2). The factorisation stops at the first
// pivot that rules::cholesky_pivot_accepted refuses. Returns 0, or the 1-based index of that pivot.
// Four doubles (one AVX2 register) of a row, for the triangular loops of cholesky_inverse.
typedef double Double4 __attribute__((vector_size(32)));

NEUINV_INLINE Double4 load4(const double* p) {
  Double4 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

NEUINV_INLINE void store4(double* p, Double4 v) { std::memcpy(p, &v, sizeof v); }

template <typename T, int N>
NEUINV_INLINE int64_t cholesky_inverse(const T* a, double* x, int64_t n_runtime) {
  const int64_t n = N > 0 ? N : n_runtime;
  constexpr int64_t kMaxStride = ((N > 0 ? N : kMaxN) + 3) / 4 * 4;
  // Rows padded with zeros to a multiple of 4 (stride w); the triangular loops run over whole groups of 4 from
  // the group holding their first entry, touching entries that are zero or never read again.
  const int64_t w = (n + 3) / 4 * 4, groups = w / 4;
  // u = L^T, row-major (upper triangle; below it entries never read): the trailing update and the substitutions
  // then run along rows.
  alignas(64) double u[(N > 0 ? N : kMaxN) * kMaxStride], inverse[(N > 0 ? N : kMaxN) * kMaxStride];
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t i = 0; i < w; ++i) u[j * w + i] = i >= j && i < n ? static_cast<double>(a[i * n + j]) : 0.0;
  }
  for (int64_t k = 0; k < n; ++k) {
    double* row_k = u + k * w;
    const double pivot = row_k[k];
    if (!rules::cholesky_pivot_accepted(pivot)) return k + 1;
    const double l_kk = std::sqrt(pivot), scale = 1.0 / l_kk;
    for (int64_t g = (k + 1) / 4; g < groups; ++g) store4(row_k + 4 * g, load4(row_k + 4 * g) * scale);
    row_k[k] = l_kk;
    for (int64_t j = k + 1; j < n; ++j) {
      const double factor = row_k[j];
      double* row_j = u + j * w;
      for (int64_t g = j / 4; g < groups; ++g) store4(row_j + 4 * g, load4(row_j + 4 * g) - factor * load4(row_k + 4 * g));
    }
  }
  // M = L^-1 row by row, row i = (e_i - sum_{k<i} l_ik M_k) / l_ii (l_ik = u[k][i]), right-looking: once row k is
  // final it is subtracted from every later row, so that consecutive updates of one row are independent. M_k is
  // zero right of k.
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < w; ++j) inverse[i * w + j] = i == j ? 1.0 : 0.0;
  }
  for (int64_t k = 0; k < n; ++k) {
    double* row_k = inverse + k * w;
    const double scale = 1.0 / u[k * w + k];
    for (int64_t g = 0; g <= k / 4; ++g) store4(row_k + 4 * g, load4(row_k + 4 * g) * scale);
    for (int64_t i = k + 1; i < n; ++i) {
      const double factor = u[k * w + i];
      double* row = inverse + i * w;
      for (int64_t g = 0; g <= k / 4; ++g) store4(row + 4 * g, load4(row + 4 * g) - factor * load4(row_k + 4 * g));
    }
  }
  // X = M^T M: row i, entries 0..i, is the sum over k >= i of m_ki M_k; accumulated into u (no longer needed) for
  // k = 0, 1, ... in turn, each M_k into the rows i <= k. X is that lower triangle and its mirror image.
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < w; ++j) u[i * w + j] = 0.0;
  }
  for (int64_t k = 0; k < n; ++k) {
    const double* row_k = inverse + k * w;
    for (int64_t i = 0; i <= k; ++i) {
      const double factor = row_k[i];
      double* row = u + i * w;
      for (int64_t g = 0; g <= i / 4; ++g) store4(row + 4 * g, load4(row + 4 * g) + factor * load4(row_k + 4 * g));
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) x[i * n + j] = j <= i ? u[i * w + j] : u[j * w + i];
  }
  return 0;
}

// The same for `count` <= kLanes matrices in the compact layout, each step across the lanes; a lane whose pivot
// is refused records it and goes on with pivot 1 (its result is discarded). Writes X (rounded to T, NaN where
// not certified) and its error bound, as invert_compact does.
template <typename T, int N>
NEUINV_INLINE void cholesky_compact(const T* a, T* x, double* error_bound, int count) {
  constexpr int L = kLanes;
  alignas(64) double original[N][N][L], u[N][N][L], inverse[N][N][L], x_w[N][N][L];
  for (int l = 0; l < L; ++l) {
    for (int i = 0; i < N; ++i) {
      for (int j = 0; j < N; ++j) {
        // Lanes beyond count hold the identity.
        original[i][j][l] = l < count ? static_cast<double>(a[l * N * N + i * N + j]) : (i == j ? 1.0 : 0.0);
      }
    }
  }
  for (int i = 0; i < N; ++i) {
    for (int j = 0; j <= i; ++j) {
      for (int l = 0; l < L; ++l) u[j][i][l] = original[i][j][l];
    }
  }
  int32_t refused[L] = {};
  for (int k = 0; k < N; ++k) {
    double scale[L];
    for (int l = 0; l < L; ++l) {
      const bool accepted = rules::cholesky_pivot_accepted(u[k][k][l]);
      if (!accepted && refused[l] == 0) refused[l] = k + 1;
      const double l_kk = std::sqrt(accepted ? u[k][k][l] : 1.0);
      u[k][k][l] = l_kk;
      scale[l] = 1.0 / l_kk;
    }
    for (int i = k + 1; i < N; ++i) {
      for (int l = 0; l < L; ++l) u[k][i][l] *= scale[l];
    }
    for (int j = k + 1; j < N; ++j) {
      for (int i = j; i < N; ++i) {
        for (int l = 0; l < L; ++l) u[j][i][l] -= u[k][j][l] * u[k][i][l];
      }
    }
  }
  for (int i = 0; i < N; ++i) {
    for (int j = 0; j <= i; ++j) {
      for (int l = 0; l < L; ++l) inverse[i][j][l] = i == j ? 1.0 : 0.0;
    }
    for (int k = 0; k < i; ++k) {
      for (int j = 0; j <= k; ++j) {
        for (int l = 0; l < L; ++l) inverse[i][j][l] -= u[k][i][l] * inverse[k][j][l];
      }
    }
    double scale[L];
    for (int l = 0; l < L; ++l) scale[l] = 1.0 / u[i][i][l];
    for (int j = 0; j <= i; ++j) {
      for (int l = 0; l < L; ++l) inverse[i][j][l] *= scale[l];
    }
  }
  for (int i = 0; i < N; ++i) {
    for (int j = 0; j <= i; ++j) {
      double sum[L] = {};
      for (int k = i; k < N; ++k) {
        for (int l = 0; l < L; ++l) sum[l] += inverse[k][i][l] * inverse[k][j][l];
      }
      for (int l = 0; l < L; ++l) {
        x_w[i][j][l] = sum[l];
        x_w[j][i][l] = sum[l];
      }
    }
  }
  certify_compact<T, N>(a, original, x_w, refused, x, error_bound, count);
}

// The exact path for matrices begin..end-1 one at a time: Gauss-Jordan (Cholesky when positive_definite) in
// double, the certificate (and the
// float64 polish), X rounded to T.
template <typename T, int N>
NEUINV_INLINE void invert_one_by_one(const T* a, T* x, double* error_bound, int64_t begin, int64_t end, int64_t n,
                                     bool positive_definite) {
  alignas(64) double x_w[(N > 0 ? N : kMaxN) * (N > 0 ? N : kMaxN)];
  for (int64_t m = begin; m < end; ++m) {
    const T* a_m = a + m * n * n;
    const int64_t refused = positive_definite ? cholesky_inverse<T, N>(a_m, x_w, n) : gauss_jordan<T, N>(a_m, x_w, n);
    const double bound = refused ? std::numeric_limits<double>::infinity() : certify_exact<T, N>(a_m, x_w, n);
    error_bound[m] = store_certified<T>(x_w, x + m * n * n, n * n, bound);
  }
}

// The exact path over a batch of b matrices of size n (N = n when compiled for that size, else 0). A
// template, so that only the branch taken for (T, N) is instantiated.
template <typename T, int N>
void inverse_and_error_bound_batch(const T* a, T* x, double* error_bound, int64_t b, int64_t n) {
  if constexpr ((N >= 2 && N <= kClosedFormMaxN && std::is_same_v<T, float>) || (N > 0 && N <= kCompactMaxN)) {
    const int64_t blocks = (b + kLanes - 1) / kLanes;
    at::parallel_for(0, blocks, 16, [&](int64_t begin, int64_t end) {
      IeeeMode ieee;
      for (int64_t block = begin; block < end; ++block) {
        const int64_t m = block * kLanes;
        const int count = static_cast<int>(std::min<int64_t>(kLanes, b - m));
        if constexpr (N >= 2 && N <= kClosedFormMaxN && std::is_same_v<T, float>) {
          run_for_this_cpu<invert_closed_form<T, N>>(a + m * N * N, x + m * N * N, error_bound + m, count);
        } else {
          invert_compact<T, N>(a + m * N * N, x + m * N * N, error_bound + m, count);
        }
      }
    });
  } else {
    at::parallel_for(0, b, 16, [&](int64_t begin, int64_t end) {
      IeeeMode ieee;
      run_for_this_cpu<invert_one_by_one<T, N>>(a, x, error_bound, begin, end, n, false);
    });
  }
}

// Inverse and error bound (neuinv/certificate.py) of each matrix: neuinv's exact path in one pass over memory.
// Float32 n = 2-4 use the closed forms, other fixed sizes up to kCompactMaxN the compact Gauss-Jordan kernel,
// the rest Gauss-Jordan one matrix at a time; all in double precision, certified before the rounding to A's
// dtype. X is NaN where the bound is +inf.
std::tuple<at::Tensor, at::Tensor> inverse_and_error_bound_cpu(const at::Tensor& A_in) {
  check_batch(A_in, "A", at::kCPU);
  const at::Tensor A = A_in.contiguous();
  const int64_t b = A.size(0), n = A.size(1);
  at::Tensor X = empty_output_like(A);
  at::Tensor bound = at::empty({b}, A.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "neuinv_inverse_and_error_bound", [&] {
    const scalar_t* a = A.data_ptr<scalar_t>();
    scalar_t* x = X.data_ptr<scalar_t>();
    double* out = bound.data_ptr<double>();
    NEUINV_DISPATCH_SIZE(n, [&] { inverse_and_error_bound_batch<scalar_t, N>(a, x, out, b, n); });
  });
  return {X, bound};
}

// certificate.error_bound of X as stored (the Newton-Schulz results), in double, one matrix at a time.
template <typename T, int N>
NEUINV_INLINE void error_bound_one_by_one(const T* a, const T* x, double* out, int64_t begin, int64_t end,
                                          int64_t n) {
  constexpr int64_t M = N > 0 ? N : kMaxN;
  alignas(64) double x_w[M * M], R[M * M];
  for (int64_t m = begin; m < end; ++m) {
    const T* a_m = a + m * n * n;
    for (int64_t e = 0; e < n * n; ++e) x_w[e] = static_cast<double>(x[m * n * n + e]);
    out[m] = rules::stored_error_bound<N>(a_m, x_w, residual_into<double, N>(a_m, x_w, R, n), n);
  }
}

// The same for `count` <= kLanes matrices in the compact layout (the residuals across the lanes).
template <typename T, int N>
NEUINV_INLINE void error_bound_compact(const T* a_in, const T* x_in, double* out, int count) {
  constexpr int L = kLanes;
  alignas(64) double a[N][N][L], x[N][N][L];
  for (int l = 0; l < L; ++l) {
    for (int i = 0; i < N; ++i) {
      for (int j = 0; j < N; ++j) {
        a[i][j][l] = l < count ? static_cast<double>(a_in[l * N * N + i * N + j]) : (i == j ? 1.0 : 0.0);
        x[i][j][l] = l < count ? static_cast<double>(x_in[l * N * N + i * N + j]) : (i == j ? 1.0 : 0.0);
      }
    }
  }
  double r_sq[L];
  compact_residual_norms<N>(a, x, r_sq);
  for (int l = 0; l < count; ++l) {
    alignas(64) double x_w[N * N];
    for (int e = 0; e < N * N; ++e) x_w[e] = static_cast<double>(x_in[l * N * N + e]);
    out[l] = rules::stored_error_bound<N>(a_in + l * N * N, x_w, std::sqrt(r_sq[l]), N);
  }
}

// error_bound over a batch: kLanes matrices at a time in the compact layout for the sizes compiled with a fixed
// N <= kCompactMaxN, one at a time otherwise.
template <typename T, int N>
void error_bound_batch(const T* a, const T* x, double* out, int64_t b, int64_t n) {
  if constexpr (N > 0 && N <= kCompactMaxN) {
    at::parallel_for(0, (b + kLanes - 1) / kLanes, 16, [&](int64_t begin, int64_t end) {
      IeeeMode ieee;
      for (int64_t block = begin; block < end; ++block) {
        const int64_t m = block * kLanes;
        const int count = static_cast<int>(std::min<int64_t>(kLanes, b - m));
        run_for_this_cpu<error_bound_compact<T, N>>(a + m * N * N, x + m * N * N, out + m, count);
      }
    });
  } else {
    at::parallel_for(0, b, 16, [&](int64_t begin, int64_t end) {
      IeeeMode ieee;
      run_for_this_cpu<error_bound_one_by_one<T, N>>(a, x, out, begin, end, n);
    });
  }
}

at::Tensor error_bound_cpu(const at::Tensor& A_in, const at::Tensor& X_in) {
  check_batch(A_in, "A", at::kCPU);
  check_batch(X_in, "X", at::kCPU);
  check_like(A_in, X_in, "X");
  const at::Tensor A = A_in.contiguous(), X = X_in.contiguous();
  const int64_t b = A.size(0), n = A.size(1);
  at::Tensor bound = at::empty({b}, A.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "neuinv_error_bound", [&] {
    const scalar_t* a = A.data_ptr<scalar_t>();
    const scalar_t* x = X.data_ptr<scalar_t>();
    double* out = bound.data_ptr<double>();
    NEUINV_DISPATCH_SIZE(n, [&] { error_bound_batch<scalar_t, N>(a, x, out, b, n); });
  });
  return bound;
}

at::Tensor residual_norm_cpu(const at::Tensor& A_in, const at::Tensor& X_in) {
  check_batch(A_in, "A", at::kCPU);
  check_batch(X_in, "X", at::kCPU);
  check_like(A_in, X_in, "X");
  const at::Tensor A = A_in.contiguous(), X = X_in.contiguous();
  const int64_t b = A.size(0), n = A.size(1);
  at::Tensor r = at::empty({b}, A.options());
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "neuinv_residual_norm", [&] {
    const scalar_t* a = A.data_ptr<scalar_t>();
    const scalar_t* x = X.data_ptr<scalar_t>();
    scalar_t* out = r.data_ptr<scalar_t>();
    NEUINV_DISPATCH_SIZE(n, [&] {
      at::parallel_for(0, b, 64, [&](int64_t begin, int64_t end) {
        IeeeMode ieee;
        alignas(64) scalar_t R[(N > 0 ? N : kMaxN) * (N > 0 ? N : kMaxN)];
        for (int64_t m = begin; m < end; ++m) out[m] = residual_into<scalar_t, N>(a + m * n * n, x + m * n * n, R, n);
      });
    });
  });
  return r;
}

// The whole Newton-Schulz loop X <- X + X (I - A X) for one matrix, in working precision.
template <typename T, int N>
NEUINV_INLINE void newton_schulz_one(const T* a, const T* x0, T* x_out, T* r_out, bool* done_out, int32_t* steps_out,
                       int64_t n_runtime, const NewtonSchulzRules& rules) {
  const int64_t n = N > 0 ? N : n_runtime;
  constexpr int64_t M = N > 0 ? N : kMaxN;
  alignas(64) T x[M * M], R[M * M], next[M * M];
  std::copy(x0, x0 + n * n, x);
  const T m = largest_entry(a, n * n);
  const double a_norm = scaled_frobenius(a, n * n, m, true);
  double previous = std::numeric_limits<double>::infinity(), r = 0.0;
  bool done = false;
  int64_t step = 0;
  for (;; ++step) {
    r = residual_into<T, N>(a, x, R, n);
    if (rules.stop(r, previous, a_norm * scaled_frobenius(x, n * n, m, false), step, &done)) break;
    std::copy(x, x + n * n, next);  // next = X + X R
    accumulate_product<T, N>(x, R, next, n, T(1));
    std::copy(next, next + n * n, x);
    previous = r;
  }
  std::copy(x, x + n * n, x_out);
  *r_out = static_cast<T>(r);
  *done_out = done;
  *steps_out = static_cast<int32_t>(step);
}

// The same loop for `count` <= kLanes matrices at once in the compact layout (see invert_compact), every
// product across the lanes; a lane that stops keeps its X while the others go on. Each entry is computed as in
// newton_schulz_one; the norms are summed in row-major order per lane.
template <typename T, int N>
NEUINV_INLINE void newton_schulz_compact(
    const T* a_in, const T* x0_in, T* x_out, T* r_out, bool* done_out, int32_t* steps_out, int count,
    const NewtonSchulzRules& rules) {
  constexpr int L = kLanes;
  using V = typename Lanes<T>::type;
  alignas(64) T a[N][N][L], x[N][N][L], R[N][N][L];
  for (int l = 0; l < L; ++l) {  // lanes beyond count: A = X = I, stopped from the start
    const bool used = l < count;
    for (int i = 0; i < N; ++i) {
      for (int j = 0; j < N; ++j) {
        a[i][j][l] = used ? a_in[l * N * N + i * N + j] : T(i == j);
        x[i][j][l] = used ? x0_in[l * N * N + i * N + j] : T(i == j);
      }
    }
  }
  // ||A / m||_F with m = max |a_ij| per lane (reference.norm_product), across the lanes, each lane summed in
  // row-major order.
  T m[L], a_norm[L] = {};
  for (int l = 0; l < L; ++l) m[l] = 0;
  for (int i = 0; i < N; ++i) {
    for (int j = 0; j < N; ++j) {
      for (int l = 0; l < L; ++l) m[l] = std::max(m[l], std::abs(a[i][j][l]));
    }
  }
  for (int l = 0; l < L; ++l) m[l] = m[l] > 0 ? m[l] : T(1);
  for (int i = 0; i < N; ++i) {
    for (int j = 0; j < N; ++j) {
      for (int l = 0; l < L; ++l) a_norm[l] += (a[i][j][l] / m[l]) * (a[i][j][l] / m[l]);
    }
  }
  for (int l = 0; l < L; ++l) a_norm[l] = std::sqrt(a_norm[l]);
  bool done[L] = {};
  typename Lanes<T>::mask_element stopped[L];  // all bits set in the lanes that have stopped (their X is kept)
  double previous[L], r_final[L] = {};
  int32_t steps[L] = {};
  for (int l = 0; l < L; ++l) {
    stopped[l] = l >= count ? -1 : 0;
    previous[l] = std::numeric_limits<double>::infinity();
  }
  for (int64_t step = 0;; ++step) {
    T r[L], x_norm[L];
    compact_residual<T, N>(a, x, m, R, r, x_norm);
    for (int l = 0; l < L; ++l) {
      r[l] = std::sqrt(r[l]);
      x_norm[l] = std::sqrt(x_norm[l]);
    }
    bool running = false;
    for (int l = 0; l < L; ++l) {
      if (stopped[l]) continue;
      if (rules.stop(r[l], previous[l], double(a_norm[l]) * x_norm[l], step, &done[l])) {
        stopped[l] = -1;
        r_final[l] = r[l];
        steps[l] = static_cast<int32_t>(step);
      } else {
        running = true;
      }
      previous[l] = r[l];
    }
    if (!running) break;
    // X <- X + X R on the running lanes. Row i of the update needs only row i of X, so X is updated in place
    // row by row, the old row held in registers.
    for (int part = 0; part < Lanes<T>::kParts; ++part) {
      typename Lanes<T>::mask keep;
      std::memcpy(&keep, stopped + part * Lanes<T>::kWidth, sizeof keep);
      for (int i = 0; i < N; ++i) {
        V x_row[N];
        for (int k = 0; k < N; ++k) x_row[k] = load_part(x[i][k], part);
        for (int j = 0; j < N; ++j) {
          V entry = x_row[j];
          for (int k = 0; k < N; ++k) entry += x_row[k] * load_part(R[k][j], part);
          store_part(x[i][j], part, keep ? x_row[j] : entry);
        }
      }
    }
  }
  for (int l = 0; l < count; ++l) {
    for (int i = 0; i < N; ++i) {
      for (int j = 0; j < N; ++j) x_out[l * N * N + i * N + j] = x[i][j][l];
    }
    r_out[l] = static_cast<T>(r_final[l]);
    done_out[l] = done[l];
    steps_out[l] = steps[l];
  }
}

// newton_schulz_one for matrices begin..end-1.
template <typename T, int N>
NEUINV_INLINE void newton_schulz_one_by_one(const T* a, const T* x0, T* x, T* r, bool* done, int32_t* steps,
                                            int64_t begin, int64_t end, int64_t n, const NewtonSchulzRules& rules) {
  for (int64_t m = begin; m < end; ++m) {
    newton_schulz_one<T, N>(a + m * n * n, x0 + m * n * n, x + m * n * n, r + m, done + m, steps + m, n, rules);
  }
}

// Every matrix of the batch: kLanes at a time in the compact layout for the sizes compiled with a fixed
// N <= kCompactMaxN, one at a time otherwise.
template <typename T, int N>
void newton_schulz_batch(const T* a, const T* x0, T* x, T* r, bool* done, int32_t* steps, int64_t b, int64_t n,
                         const NewtonSchulzRules& rules) {
  if constexpr (N > 0 && N <= kCompactMaxN) {
    const int64_t blocks = (b + kLanes - 1) / kLanes;
    at::parallel_for(0, blocks, 16, [&](int64_t begin, int64_t end) {
      IeeeMode ieee;
      for (int64_t block = begin; block < end; ++block) {
        const int64_t m = block * kLanes;
        const int count = static_cast<int>(std::min<int64_t>(kLanes, b - m));
        run_for_this_cpu<newton_schulz_compact<T, N>>(a + m * N * N, x0 + m * N * N, x + m * N * N, r + m, done + m,
                                                     steps + m, count, rules);
      }
    });
  } else {
    at::parallel_for(0, b, 64, [&](int64_t begin, int64_t end) {
      IeeeMode ieee;
      run_for_this_cpu<newton_schulz_one_by_one<T, N>>(a, x0, x, r, done, steps, begin, end, n, rules);
    });
  }
}

// Newton-Schulz refinement of every matrix from X0, with the stopping rules of
// neuinv/reference.py: newton_schulz_refine (tolerance, rounding floor, guard, max_iter).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> newton_schulz_cpu(
    const at::Tensor& A_in, const at::Tensor& X0_in, double tol, double accept, int64_t max_iter,
    bool guarded, double guard) {
  check_batch(A_in, "A", at::kCPU);
  check_batch(X0_in, "X0", at::kCPU);
  check_like(A_in, X0_in, "X0");
  const at::Tensor A = A_in.contiguous(), X0 = X0_in.contiguous();
  const int64_t b = A.size(0), n = A.size(1);
  at::Tensor X = empty_output_like(A);
  at::Tensor r = at::empty({b}, A.options());
  at::Tensor done = at::empty({b}, A.options().dtype(at::kBool));
  at::Tensor steps = at::empty({b}, A.options().dtype(at::kInt));
  const NewtonSchulzRules rules{tol, accept, max_iter, guarded, guard};
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "neuinv_newton_schulz", [&] {
    NEUINV_DISPATCH_SIZE(n, [&] {
      newton_schulz_batch<scalar_t, N>(A.data_ptr<scalar_t>(), X0.data_ptr<scalar_t>(), X.data_ptr<scalar_t>(),
                                       r.data_ptr<scalar_t>(), done.data_ptr<bool>(), steps.data_ptr<int32_t>(), b, n,
                                       rules);
    });
  });
  return {X, r, done, steps};
}

// ---------------------------------------------------------------------------------------------------------------
// neuinv::invert: the whole verified inversion (neuinv/reference.py: invert) in one call. Per matrix: Newton-Schulz
// from X0 where use_guess (guarded) or from the scaled transpose (unguarded) when refine is set, the certificate of
// a result that stopped done, the exact path for every other matrix, the verdict, X = NaN where not certified.

// X0 = A^T / ||A||_1 / ||A||_inf of one n x n matrix (reference.scaled_transpose_guess).
template <typename T>
NEUINV_INLINE void scaled_transpose(const T* a, T* x0, int64_t n) {
  T norm_1 = 0, norm_inf = 0;
  for (int64_t j = 0; j < n; ++j) {
    T column = 0, row = 0;
    for (int64_t i = 0; i < n; ++i) {
      column += std::abs(a[i * n + j]);
      row += std::abs(a[j * n + i]);
    }
    norm_1 = std::max(norm_1, column);
    norm_inf = std::max(norm_inf, row);
  }
  norm_1 = std::max(norm_1, std::numeric_limits<T>::min());
  norm_inf = std::max(norm_inf, std::numeric_limits<T>::min());
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) x0[i * n + j] = a[j * n + i] / norm_1 / norm_inf;
  }
}

// The exact path for `count` <= kLanes matrices of a fixed size N <= kCompactMaxN: the compact Cholesky kernel
// when positive_definite, else closed forms (float32, N <= 4) or the compact Gauss-Jordan kernel.
template <typename T, int N>
NEUINV_INLINE void exact_block(const T* a, T* x, double* error_bound, int count, bool positive_definite) {
  if (positive_definite) {
    cholesky_compact<T, N>(a, x, error_bound, count);
  } else if constexpr (N >= 2 && N <= kClosedFormMaxN && std::is_same_v<T, float>) {
    invert_closed_form<T, N>(a, x, error_bound, count);
  } else {
    invert_compact<T, N>(a, x, error_bound, count);
  }
}

// The verdict (rules::certified) of `count` matrices, X = NaN where it is not certified.
template <typename T>
NEUINV_INLINE void give_verdict(T* x, const double* bound, bool* certified, int64_t count, int64_t size,
                                double max_error) {
  for (int64_t l = 0; l < count; ++l) {
    certified[l] = rules::certified(bound[l], max_error);
    if (!certified[l]) std::fill(x + l * size, x + (l + 1) * size, std::numeric_limits<T>::quiet_NaN());
  }
}

// neuinv::invert for `count` <= kLanes matrices of a fixed size N <= kCompactMaxN in the compact layout. The
// matrices that take a path are gathered into local buffers, unless all of them do (then no copy is made).
template <typename T, int N>
NEUINV_INLINE void invert_compact_block(const T* a, const T* x0, const bool* use_guess, T* x, bool* certified,
                                        double* bound, int32_t* iterations, bool* fallback, int count, bool refine,
                                        NewtonSchulzRules rules, double max_error, bool positive_definite) {
  constexpr int L = kLanes, S = N * N;
  bool exact[L];
  for (int l = 0; l < count; ++l) {
    exact[l] = true;
    iterations[l] = 0;
  }
  alignas(64) T a_buffer[L * S], x_buffer[L * S];
  int chosen[L], k = 0;
  if (refine) {
    for (int l = 0; l < count; ++l) {
      if (!use_guess || use_guess[l]) chosen[k++] = l;
    }
  }
  if (k > 0) {
    const bool whole = k == count;
    alignas(64) T guess[L * S];
    double kept_bound[L], refined_bound[L];
    T r[L];
    bool done[L];
    int32_t steps[L];
    if (!whole) {
      for (int q = 0; q < k; ++q) std::copy(a + chosen[q] * S, a + (chosen[q] + 1) * S, a_buffer + q * S);
    }
    const T* a_used = whole ? a : a_buffer;
    const T* start = x0 != nullptr && whole ? x0 : guess;  // the caller's guesses as they are, else gathered
    if (start == guess) {
      for (int q = 0; q < k; ++q) {
        if (x0 != nullptr) {
          std::copy(x0 + chosen[q] * S, x0 + (chosen[q] + 1) * S, guess + q * S);
        } else {
          scaled_transpose(a_used + q * S, guess + q * S, N);
        }
      }
    }
    rules.guarded = x0 != nullptr;
    newton_schulz_compact<T, N>(a_used, start, x_buffer, r, done, steps, k, rules);
    error_bound_compact<T, N>(a_used, x_buffer, refined_bound, k);
    for (int q = 0; q < k; ++q) {
      const int l = chosen[q];
      iterations[l] = steps[q];
      kept_bound[q] = done[q] ? refined_bound[q] : rules::kInfinity;
      if (rules::certified(kept_bound[q], max_error)) {
        std::copy(x_buffer + q * S, x_buffer + (q + 1) * S, x + l * S);
        bound[l] = kept_bound[q];
        exact[l] = false;
      }
    }
  }
  k = 0;
  for (int l = 0; l < count; ++l) {
    if (exact[l]) chosen[k++] = l;
    fallback[l] = exact[l];
  }
  if (k == count) {
    exact_block<T, N>(a, x, bound, count, positive_definite);
  } else if (k > 0) {
    double exact_bound[L];
    for (int q = 0; q < k; ++q) std::copy(a + chosen[q] * S, a + (chosen[q] + 1) * S, a_buffer + q * S);
    exact_block<T, N>(a_buffer, x_buffer, exact_bound, k, positive_definite);
    for (int q = 0; q < k; ++q) {
      std::copy(x_buffer + q * S, x_buffer + (q + 1) * S, x + chosen[q] * S);
      bound[chosen[q]] = exact_bound[q];
    }
  }
  give_verdict(x, bound, certified, count, S, max_error);
}

// neuinv::invert for matrices begin..end-1, one at a time (the sizes without a compact kernel).
template <typename T, int N>
NEUINV_INLINE void invert_one_by_one_verified(const T* a, const T* x0, const bool* use_guess, T* x, bool* certified,
                                              double* bound, int32_t* iterations, bool* fallback, int64_t begin,
                                              int64_t end, int64_t n, bool refine, NewtonSchulzRules rules,
                                              double max_error, bool positive_definite) {
  constexpr int64_t M = N > 0 ? N : kMaxN;
  alignas(64) T guess[M * M];
  rules.guarded = x0 != nullptr;
  for (int64_t m = begin; m < end; ++m) {
    const T* a_m = a + m * n * n;
    T* x_m = x + m * n * n;
    iterations[m] = 0;
    fallback[m] = true;
    if (refine && (!use_guess || use_guess[m])) {
      const T* start = x0 != nullptr ? x0 + m * n * n : guess;
      if (x0 == nullptr) scaled_transpose(a_m, guess, n);
      T r;
      bool done;
      newton_schulz_one<T, N>(a_m, start, x_m, &r, &done, iterations + m, n, rules);
      if (done) {
        error_bound_one_by_one<T, N>(a_m, x_m, bound + m, 0, 1, n);
        fallback[m] = !rules::certified(bound[m], max_error);
      }
    }
    if (fallback[m]) invert_one_by_one<T, N>(a_m, x_m, bound + m, 0, 1, n, positive_definite);
    give_verdict(x_m, bound + m, certified + m, 1, n * n, max_error);
  }
}

template <typename T, int N>
void invert_batch(const T* a, const T* x0, const bool* use_guess, T* x, bool* certified, double* bound,
                  int32_t* iterations, bool* fallback, int64_t b, int64_t n, bool refine,
                  const NewtonSchulzRules& rules, double max_error, bool positive_definite) {
  if constexpr (N > 0 && N <= kCompactMaxN) {
    const int64_t blocks = (b + kLanes - 1) / kLanes;
    at::parallel_for(0, blocks, 16, [&](int64_t begin, int64_t end) {
      IeeeMode ieee;
      for (int64_t block = begin; block < end; ++block) {
        const int64_t m = block * kLanes;
        const int count = static_cast<int>(std::min<int64_t>(kLanes, b - m));
        run_for_this_cpu<invert_compact_block<T, N>>(
            a + m * N * N, x0 ? x0 + m * N * N : x0, use_guess ? use_guess + m : use_guess, x + m * N * N,
            certified + m, bound + m, iterations + m, fallback + m, count, refine, rules, max_error,
            positive_definite);
      }
    });
  } else {
    at::parallel_for(0, b, 16, [&](int64_t begin, int64_t end) {
      IeeeMode ieee;
      run_for_this_cpu<invert_one_by_one_verified<T, N>>(a, x0, use_guess, x, certified, bound, iterations,
                                                          fallback, begin, end, n, refine, rules, max_error,
                                                          positive_definite);
    });
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> invert_cpu(
    const at::Tensor& A_in, const c10::optional<at::Tensor>& X0_in, const c10::optional<at::Tensor>& use_guess_in,
    bool refine, double tol, double accept, int64_t max_iter, double guard, double max_error,
    bool positive_definite) {
  check_invert_arguments(A_in, X0_in, use_guess_in, refine, tol, accept, max_iter, guard, max_error, at::kCPU);
  const at::Tensor A = A_in.contiguous();
  const at::Tensor X0 = X0_in.has_value() ? X0_in->contiguous() : at::Tensor();
  const at::Tensor use_guess = use_guess_in.has_value() ? use_guess_in->contiguous() : at::Tensor();
  const auto batch = A.sizes().slice(0, A.dim() - 2);
  const int64_t b = c10::multiply_integers(batch), n = A.size(-1);
  at::Tensor X = empty_output_like(A);
  at::Tensor certified = at::empty(batch, A.options().dtype(at::kBool));
  at::Tensor bound = at::empty(batch, A.options().dtype(at::kDouble));
  at::Tensor iterations = at::empty(batch, A.options().dtype(at::kInt));
  at::Tensor fallback = at::empty(batch, A.options().dtype(at::kBool));
  const NewtonSchulzRules rules{tol, accept, max_iter, X0.defined(), guard};
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "neuinv_invert", [&] {
    const scalar_t* x0 = X0.defined() ? X0.data_ptr<scalar_t>() : nullptr;
    const bool* use = use_guess.defined() ? use_guess.data_ptr<bool>() : nullptr;
    NEUINV_DISPATCH_SIZE(n, [&] {
      invert_batch<scalar_t, N>(A.data_ptr<scalar_t>(), x0, use, X.data_ptr<scalar_t>(), certified.data_ptr<bool>(),
                                bound.data_ptr<double>(), iterations.data_ptr<int32_t>(), fallback.data_ptr<bool>(), b,
                                n, refine, rules, max_error, positive_definite);
    });
  });
  return {X, certified, bound, iterations, fallback};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(neuinv, m) {
  m.def("cpu_kernel_build() -> str", &cpu_kernel_build);
}

TORCH_LIBRARY_IMPL(neuinv, CPU, m) {
  m.impl("invert", &invert_cpu);
  m.impl("exact_inverse", &exact_inverse_cpu);
  m.impl("residual_norm", &residual_norm_cpu);
  m.impl("inverse_and_error_bound", &inverse_and_error_bound_cpu);
  m.impl("error_bound", &error_bound_cpu);
  m.impl("newton_schulz", &newton_schulz_cpu);
}

}  // namespace neuinv
