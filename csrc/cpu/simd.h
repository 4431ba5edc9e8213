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
};

template <>
struct Arithmetic<PackFloat> : PackArithmetic<float> {};
template <>
struct Arithmetic<PackDouble> : PackArithmetic<double> {};

}  // namespace kernels
}  // namespace neuinv
