// The value types the per-matrix kernels (csrc/kernels/per_matrix.h) are written for. A kernel works on "a
// matrix of V": with V a scalar (float, double) that is one matrix, as one CPU thread or one CUDA thread holds
// it; with V a pack of kLanes values (csrc/cpu/simd.h) it is kLanes matrices interleaved element by element, the
// compact layout of Intel MKL's compact batch routines and KokkosBatched's SIMD types, every operation running
// across the matrices. Arithmetic<V> gives what the kernels need beyond + - * /: lane-wise comparison and
// selection, absolute value, square root and access to one lane. No ATen and no std:: calls, so that nvcc
// compiles it for the device.
#pragma once
#include <math.h>
#include <string.h>

#include <cstdint>

#include "../neuinv_rules.h"

namespace neuinv {
namespace kernels {

template <typename V>
struct Arithmetic;

#if defined(__CUDACC__)
#define NEUINV_UNROLL(count) _Pragma("unroll")
#else
#define NEUINV_PRAGMA(text) _Pragma(#text)
#define NEUINV_UNROLL(count) NEUINV_PRAGMA(GCC unroll count)
#endif

// update(j) for j = 0..n-1 across a row: unrolled for packs (a short loop of whole-pack operations), left to the
// loop vectoriser for scalars (one matrix, whose row j runs across).
template <typename V, typename Update>
NEUINV_HOST_DEVICE void for_each_column(int64_t n, Update update) {
  if constexpr (Arithmetic<V>::kLanes > 1) {
    NEUINV_UNROLL(16)
    for (int64_t j = 0; j < n; ++j) update(j);
  } else {
    NEUINV_UNROLL(1)
    for (int64_t j = 0; j < n; ++j) update(j);
  }
}

// One matrix per thread (CPU or CUDA): the only lane is the value itself.
template <typename T>
struct ScalarArithmetic {
  using scalar = T;
  using mask = bool;
  static constexpr int kLanes = 1;
  static NEUINV_HOST_DEVICE T broadcast(double v) { return static_cast<T>(v); }
  static NEUINV_HOST_DEVICE T select(bool m, T a, T b) { return m ? a : b; }
  static NEUINV_HOST_DEVICE T magnitude(T v) { return fabs(v); }
  static NEUINV_HOST_DEVICE T square_root(T v) { return sqrt(v); }
  static NEUINV_HOST_DEVICE T fused_multiply_add(T a, T b, T c) { return fma(a, b, c); }  // a b + c rounded once
  static NEUINV_HOST_DEVICE bool greater(T a, T b) { return a > b; }
  static NEUINV_HOST_DEVICE bool equal(T a, T b) { return a == b; }
  static NEUINV_HOST_DEVICE bool either(bool a, bool b) { return a || b; }
  static NEUINV_HOST_DEVICE bool negate(bool m) { return !m; }
  static NEUINV_HOST_DEVICE bool any(bool m) { return m; }
  static NEUINV_HOST_DEVICE T lane(T v, int) { return v; }
  static NEUINV_HOST_DEVICE void set_lane(T& v, int, T x) { v = x; }
  static NEUINV_HOST_DEVICE bool mask_lane(bool m, int) { return m; }
  static NEUINV_HOST_DEVICE void set_mask_lane(bool& m, int, bool x) { m = x; }
  template <typename To>
  static NEUINV_HOST_DEVICE To convert(T v) { return static_cast<To>(v); }  // to the value type of other lanes
  // 2^floor(log2 v) for normal v > 0 (v with its fraction bits cleared), 0 for 0 and subnormal v, +inf for +inf and
  // NaN.
  static NEUINV_HOST_DEVICE T power_of_two_floor(T v) {
    static_assert(sizeof(T) == sizeof(uint64_t), "double only");
    uint64_t bits;
    memcpy(&bits, &v, sizeof(bits));
    bits &= 0x7FF0000000000000ull;
    memcpy(&v, &bits, sizeof(bits));
    return v;
  }
  // v rounded to S and back (S's value in T's type).
  template <typename S>
  static NEUINV_HOST_DEVICE T rounded(T v) { return static_cast<T>(static_cast<S>(v)); }
  // The compact layout from one row-major block per lane and back: m[e] = sources[0][e] converted, e < size;
  // targets[0][e] = m[e] converted where count is 1 (packs: csrc/cpu/simd.h).
  template <typename S>
  static NEUINV_HOST_DEVICE void interleave(const S* const* sources, int64_t size, T* m) {
    for (int64_t e = 0; e < size; ++e) m[e] = static_cast<T>(sources[0][e]);
  }
  template <typename S>
  static NEUINV_HOST_DEVICE void deinterleave(const T* m, int64_t size, S* const* targets, int count) {
    for (int64_t e = 0; e < size && count > 0; ++e) targets[0][e] = static_cast<S>(m[e]);
  }
};

template <>
struct Arithmetic<float> : ScalarArithmetic<float> {};
template <>
struct Arithmetic<double> : ScalarArithmetic<double> {};

}  // namespace kernels
}  // namespace neuinv
