// The CPU driver of neuinv::invert (schema in csrc/neuinv_ops.cpp): splits the batch across threads
// (at::parallel_for) and runs the per-matrix kernel kernels::invert (csrc/kernels/per_matrix.h) on packs of
// kLanes matrices in the compact layout for the sizes compiled with a fixed n up to kCompactMaxN, one matrix at a
// time otherwise, in the best instruction-set build for this CPU (csrc/cpu/build_selection.h).
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/accumulate.h>

#include <algorithm>
#include <cstdint>
#include <string>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "simd.h"  // first: its pragma covers the kernels' vector code
#include "../kernels/per_matrix.h"
#include "../neuinv_checks.h"
#include "build_selection.h"

namespace neuinv {
namespace {

using kernels::kLanes;

constexpr int kCompactMaxN = 8;  // above, one matrix at a time (a pack's working set leaves L1)

// A fresh tensor like A for the output X. On Linux one of 2 MB or more is advised to use transparent huge pages
// before it is first written (numpy does the same for its large arrays): first-touch page faults otherwise cost as
// much as the small-n kernels themselves. The advice is a hint: where the kernel declines it nothing changes.
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

// The arguments of the per-matrix kernel for the matrices of one task.
template <typename T>
struct Batch {
  const T* a;
  const T* x0;
  const bool* use_guess;
  T* x;
  bool* certified;
  double* bound;
  int32_t* iterations;
  bool* fallback;
  int64_t n;
  bool refine;
  rules::NewtonSchulzRules rules;
  double max_error;
  bool positive_definite;
};

// Matrices begin..end-1 of the batch, kLanes at a time in packs (fixed N <= kCompactMaxN) or one at a time.
// Always inlined, like everything it calls, into the instruction-set build that runs it (build_selection.h).
template <typename T, int N>
NEUINV_HOST_DEVICE void invert_range(Batch<T> batch, int64_t begin, int64_t end) {
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

// The batch of b matrices split across threads in whole packs.
template <typename T, int N>
void invert_batch(const Batch<T>& batch, int64_t b) {
  constexpr int64_t unit = N > 0 && N <= kCompactMaxN ? kLanes : 1;
  at::parallel_for(0, (b + unit - 1) / unit, 16, [&](int64_t begin, int64_t end) {
    cpu::IeeeMode ieee;
    cpu::run_for_this_cpu<invert_range<T, N>>(batch, begin * unit, std::min(end * unit, b));
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> invert_cpu(
    const at::Tensor& A_in, const c10::optional<at::Tensor>& X0_in, const c10::optional<at::Tensor>& use_guess_in,
    bool refine, double tol, double accept, int64_t max_iter, double guard, double max_error,
    bool positive_definite) {
  check_invert_arguments(A_in, X0_in, use_guess_in, refine, tol, accept, max_iter, guard, max_error, at::kCPU);
  const at::Tensor A = A_in.contiguous();
  const at::Tensor X0 = X0_in.has_value() ? X0_in->contiguous() : at::Tensor();
  const at::Tensor use_guess = use_guess_in.has_value() ? use_guess_in->contiguous() : at::Tensor();
  const auto batch_shape = A.sizes().slice(0, A.dim() - 2);
  const int64_t b = c10::multiply_integers(batch_shape), n = A.size(-1);
  at::Tensor X = empty_output_like(A);
  at::Tensor certified = at::empty(batch_shape, A.options().dtype(at::kBool));
  at::Tensor bound = at::empty(batch_shape, A.options().dtype(at::kDouble));
  at::Tensor iterations = at::empty(batch_shape, A.options().dtype(at::kInt));
  at::Tensor fallback = at::empty(batch_shape, A.options().dtype(at::kBool));
  const rules::NewtonSchulzRules rules{tol, accept, max_iter, X0.defined(), guard};
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "neuinv_invert", [&] {
    const Batch<scalar_t> batch{A.data_ptr<scalar_t>(),
                                X0.defined() ? X0.data_ptr<scalar_t>() : nullptr,
                                use_guess.defined() ? use_guess.data_ptr<bool>() : nullptr,
                                X.data_ptr<scalar_t>(),
                                certified.data_ptr<bool>(),
                                bound.data_ptr<double>(),
                                iterations.data_ptr<int32_t>(),
                                fallback.data_ptr<bool>(),
                                n,
                                refine,
                                rules,
                                max_error,
                                positive_definite};
    NEUINV_DISPATCH_SIZE(n, [&] { invert_batch<scalar_t, N>(batch, b); });
  });
  return {X, certified, bound, iterations, fallback};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(neuinv, m) {
  m.def("cpu_kernel_build() -> str", &cpu::kernel_build);
}

TORCH_LIBRARY_IMPL(neuinv, CPU, m) {
  m.impl("invert", &invert_cpu);
}

}  // namespace neuinv
