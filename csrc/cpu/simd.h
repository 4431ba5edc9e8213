// SIMD packs for the CPU driver: kLanes values of T in one GCC vector (64 bytes for double: one AVX-512
// register, two AVX2 registers; 32 bytes for float), and their Arithmetic (csrc/kernels/arithmetic.h), so that
// the per-matrix kernels run on kLanes matrices at once in the compact layout. Comparisons give lane masks of
// all-ones or zeros; `m ? a : b` selects lane by lane.
#pragma once
// GCC notes that a vector wider than the baseline's registers changes the calling convention; every function
// that passes one is inlined into the kernels (always_inline), so no vector crosses a call. Set before the
// includes, so that it covers their templates instantiated on packs too (csrc/neuinv_rules.h).
#pragma GCC diagnostic ignored "-Wpsabi"
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../kernels/arithmetic.h"

namespace neuinv {
namespace kernels {

constexpr int kLanes = 8;  // matrices per pack

template <typename T>
struct PackOf {
  typedef T type __attribute__((vector_size(kLanes * sizeof(T))));
  typedef std::conditional_t<sizeof(T) == 8, int64_t, int32_t> mask_element;
  typedef mask_element mask __attribute__((vector_size(kLanes * sizeof(T))));
};

using PackFloat = PackOf<float>::type;
using PackDouble = PackOf<double>::type;

template <typename T>
struct PackArithmetic {
  using V = typename PackOf<T>::type;
  using scalar = T;
  using mask = typename PackOf<T>::mask;
  static constexpr int kLanes = ::neuinv::kernels::kLanes;
  static NEUINV_HOST_DEVICE V broadcast(double v) {
    V out = {};
    return out + static_cast<T>(v);
  }
  static NEUINV_HOST_DEVICE V select(mask m, V a, V b) { return m ? a : b; }
  static NEUINV_HOST_DEVICE V magnitude(V v) { return v < 0 ? -v : v; }
  static NEUINV_HOST_DEVICE V square_root(V v) {
    for (int l = 0; l < kLanes; ++l) v[l] = std::sqrt(v[l]);
    return v;
  }
  static NEUINV_HOST_DEVICE V fused_multiply_add(V a, V b, V c) {  // a b + c rounded once, lane by lane
    for (int l = 0; l < kLanes; ++l) c[l] = std::fma(a[l], b[l], c[l]);  // fmaf for float: rounded once in T
    return c;
  }
  static NEUINV_HOST_DEVICE mask greater(V a, V b) { return a > b; }
  static NEUINV_HOST_DEVICE mask equal(V a, V b) { return a == b; }
  static NEUINV_HOST_DEVICE mask either(mask a, mask b) { return a | b; }
  static NEUINV_HOST_DEVICE mask negate(mask m) { return ~m; }
  static NEUINV_HOST_DEVICE bool any(mask m) {
    for (int l = 0; l < kLanes; ++l) {
      if (m[l]) return true;
    }
    return false;
  }
  static NEUINV_HOST_DEVICE T lane(V v, int l) { return v[l]; }
  static NEUINV_HOST_DEVICE void set_lane(V& v, int l, T x) { v[l] = x; }
  static NEUINV_HOST_DEVICE bool mask_lane(mask m, int l) { return m[l] != 0; }
  static NEUINV_HOST_DEVICE void set_mask_lane(mask& m, int l, bool x) { m[l] = x ? -1 : 0; }
  template <typename To>
  static NEUINV_HOST_DEVICE To convert(V v) { return __builtin_convertvector(v, To); }
  static NEUINV_HOST_DEVICE V power_of_two_floor(V v) {  // as ScalarArithmetic's, lane by lane
    static_assert(sizeof(T) == sizeof(int64_t), "double only");
    return (V)((mask)v & static_cast<int64_t>(0x7FF0000000000000ull));
  }
  template <typename S>
  static NEUINV_HOST_DEVICE V rounded(V v) {
    return __builtin_convertvector(__builtin_convertvector(v, typename PackOf<S>::type), V);
  }
  // rows[j] lane l becomes rows[l] lane j (an 8 x 8 transpose): pairs, then quads, then halves exchanged.
  static NEUINV_HOST_DEVICE void transpose(V* rows) {
    static_assert(kLanes == 8, "the shuffles below are for 8 lanes");
    V pairs[kLanes], quads[kLanes];
    for (int i = 0; i < kLanes; i += 2) {
      pairs[i] = __builtin_shufflevector(rows[i], rows[i + 1], 0, 8, 2, 10, 4, 12, 6, 14);
      pairs[i + 1] = __builtin_shufflevector(rows[i], rows[i + 1], 1, 9, 3, 11, 5, 13, 7, 15);
    }
    for (int i = 0; i < kLanes; i += 4) {
      for (int j = i; j < i + 2; ++j) {
        quads[j] = __builtin_shufflevector(pairs[j], pairs[j + 2], 0, 1, 8, 9, 4, 5, 12, 13);
        quads[j + 2] = __builtin_shufflevector(pairs[j], pairs[j + 2], 2, 3, 10, 11, 6, 7, 14, 15);
      }
    }
    for (int j = 0; j < kLanes / 2; ++j) {
      rows[j] = __builtin_shufflevector(quads[j], quads[j + 4], 0, 1, 2, 3, 8, 9, 10, 11);
      rows[j + 4] = __builtin_shufflevector(quads[j], quads[j + 4], 4, 5, 6, 7, 12, 13, 14, 15);
    }
  }
  // The compact layout from one row-major block per lane (lane l from sources[l], converted to T): m[e] lane l =
  // sources[l][e], e < size; kLanes entries of every block at a time, by vector loads and a transpose.
  template <typename S>
  static NEUINV_HOST_DEVICE void interleave(const S* const* sources, int64_t size, V* m) {
    using SV = typename PackOf<S>::type;
    int64_t e = 0;
    for (; e + kLanes <= size; e += kLanes) {
      for (int l = 0; l < kLanes; ++l) {
        SV block;
        memcpy(&block, sources[l] + e, sizeof(SV));
        m[e + l] = __builtin_convertvector(block, V);
      }
      transpose(m + e);
    }
    for (; e < size; ++e) {
      for (int l = 0; l < kLanes; ++l) m[e][l] = static_cast<T>(sources[l][e]);
    }
  }
  // And back, for lanes 0..count-1: targets[l][e] = m[e] lane l converted to S (by vector stores where every
  // lane is stored).
  template <typename S>
  static NEUINV_HOST_DEVICE void deinterleave(const V* m, int64_t size, S* const* targets, int count) {
    using SV = typename PackOf<S>::type;
    int64_t e = 0;
    for (; count == kLanes && e + kLanes <= size; e += kLanes) {
      SV rows[kLanes];
      for (int j = 0; j < kLanes; ++j) rows[j] = __builtin_convertvector(m[e + j], SV);
      PackArithmetic<S>::transpose(rows);
      for (int l = 0; l < kLanes; ++l) memcpy(targets[l] + e, &rows[l], sizeof(SV));
    }
    for (; e < size; ++e) {
      for (int l = 0; l < count; ++l) targets[l][e] = static_cast<S>(m[e][l]);
    }
  }
};

template <>
struct Arithmetic<PackFloat> : PackArithmetic<float> {};
template <>
struct Arithmetic<PackDouble> : PackArithmetic<double> {};

}  // namespace kernels
}  // namespace neuinv
