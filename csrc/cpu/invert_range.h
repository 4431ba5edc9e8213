// The batch loops of the CPU driver around the per-matrix kernel kernels::invert (csrc/kernels/per_matrix.h):
// the batch split across threads (at::parallel_for) in whole packs; kLanes matrices at a time in the compact
// layout for the sizes compiled with a fixed n up to kCompactMaxN, one matrix at a time otherwise; each thread's
// share run in the best instruction-set build for this CPU (build_selection.h). Included by one translation
// unit per dtype (invert_float.cpp, invert_double.cpp), which instantiates invert_batch for it.
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "simd.h"  // first: its pragma covers the kernels' vector code
#include "../kernels/per_matrix.h"
#include "invert_batch.h"
#include "shares.h"

namespace neuinv {
namespace cpu {

using kernels::kLanes;

constexpr int kCompactMaxN = 8;  // above, one matrix at a time (a pack's working set leaves L1)

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

// Matrices begin..end-1 of the batch, kLanes at a time in packs (fixed N <= kCompactMaxN) or one at a time.
// Always inlined, like everything it calls, into the instruction-set build that runs it (build_selection.h).
template <typename T, int N>
NEUINV_HOST_DEVICE void invert_range(void*, int64_t begin, int64_t end, kernels::InvertArguments<T> batch) {
  constexpr bool packed = N > 0 && N <= kCompactMaxN;
  constexpr int64_t step = packed ? kLanes : 1;
  const int64_t size = batch.n * batch.n;
  for (int64_t m = begin; m < end; m += step) {
    const int count = static_cast<int>(std::min<int64_t>(step, end - m));
    auto at = [&](auto* pointer, int64_t stride) { return pointer == nullptr ? pointer : pointer + m * stride; };
    using VT = std::conditional_t<packed, typename kernels::PackOf<T>::type, T>;
    using VD = std::conditional_t<packed, kernels::PackDouble, double>;
    kernels::invert<T, N, VT, VD>(at(batch.a, size), at(batch.x0, size), at(batch.use_guess, 1), at(batch.x, size),
                                  at(batch.certified, 1), at(batch.bound, 1), at(batch.iterations, 1),
                                  at(batch.fallback, 1), count, batch.n, batch.refine, batch.rules, batch.max_error,
                                  batch.positive_definite);
  }
}

// The batch split across threads in whole packs (shares.h). The baseline build (CPUs without AVX2,
// build_selection.h) takes the general N = 0 path for every n.
template <typename T, int N>
void invert_sized_batch(const kernels::InvertArguments<T>& batch, int64_t b) {
  constexpr int64_t unit = N > 0 && N <= kCompactMaxN ? kLanes : 1;
  run_in_shares<invert_range<T, N>, invert_range<T, kBaselineN<N>>>(b, unit, 16, 0, batch);
}

template <typename T>
void invert_batch(const kernels::InvertArguments<T>& batch, int64_t b) {
  NEUINV_DISPATCH_SIZE(batch.n, [&] { invert_sized_batch<T, N>(batch, b); });
}

}  // namespace cpu
}  // namespace neuinv
