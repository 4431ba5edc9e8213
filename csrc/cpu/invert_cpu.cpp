// The CPU operator neuinv::invert and its out variant (schemas in csrc/neuinv_ops.cpp): checks the arguments,
// allocates the outputs (or checks the caller's) and runs the CPU driver (csrc/cpu/invert_range.h) on the batch.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <c10/util/accumulate.h>

#include <cstdint>
#include <string>
#include <utility>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "../neuinv_checks.h"
#include "build_selection.h"
#include "invert_batch.h"

namespace neuinv {
namespace {

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

// The CPU driver on A into the outputs X, certified, bound, iterations, fallback (checked, contiguous).
void invert_into(const at::Tensor& A_in, const c10::optional<at::Tensor>& X0_in,
                 const c10::optional<at::Tensor>& use_guess_in, bool refine, double tol, double accept,
                 int64_t max_iter, double guard, double max_error, bool positive_definite, at::Tensor& X,
                 at::Tensor& certified, at::Tensor& bound, at::Tensor& iterations, at::Tensor& fallback) {
  const at::Tensor A = A_in.contiguous();
  const at::Tensor X0 = X0_in.has_value() ? X0_in->contiguous() : at::Tensor();
  const at::Tensor use_guess = use_guess_in.has_value() ? use_guess_in->contiguous() : at::Tensor();
  const int64_t b = c10::multiply_integers(A.sizes().slice(0, A.dim() - 2)), n = A.size(-1);
  const rules::NewtonSchulzRules rules{tol, accept, max_iter, X0.defined(), guard};
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "neuinv_invert", [&] {
    const kernels::InvertArguments<scalar_t> batch{A.data_ptr<scalar_t>(),
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
    cpu::invert_batch(batch, b);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> invert_cpu(
    const at::Tensor& A, const c10::optional<at::Tensor>& X0, const c10::optional<at::Tensor>& use_guess,
    bool refine, double tol, double accept, int64_t max_iter, double guard, double max_error,
    bool positive_definite) {
  check_invert_arguments(A, X0, use_guess, refine, tol, accept, max_iter, guard, max_error, at::kCPU);
  const auto batch_shape = A.sizes().slice(0, A.dim() - 2);
  at::Tensor X = empty_output_like(A);
  at::Tensor certified = at::empty(batch_shape, A.options().dtype(at::kBool));
  at::Tensor bound = at::empty(batch_shape, A.options().dtype(at::kDouble));
  at::Tensor iterations = at::empty(batch_shape, A.options().dtype(at::kInt));
  at::Tensor fallback = at::empty(batch_shape, A.options().dtype(at::kBool));
  invert_into(A, X0, use_guess, refine, tol, accept, max_iter, guard, max_error, positive_definite, X, certified,
              bound, iterations, fallback);
  return {X, certified, bound, iterations, fallback};
}

void invert_out_cpu(const at::Tensor& A, const c10::optional<at::Tensor>& X0,
                    const c10::optional<at::Tensor>& use_guess, bool refine, double tol, double accept,
                    int64_t max_iter, double guard, double max_error, bool positive_definite, at::Tensor& X,
                    at::Tensor& certified, at::Tensor& bound, at::Tensor& iterations, at::Tensor& fallback) {
  check_invert_arguments(A, X0, use_guess, refine, tol, accept, max_iter, guard, max_error, at::kCPU);
  prepare_invert_outputs(A, X0, X, certified, bound, iterations, fallback);
  invert_into(A, X0, use_guess, refine, tol, accept, max_iter, guard, max_error, positive_definite, X, certified,
              bound, iterations, fallback);
}

// invert.out where one of its tensors is a negative or conjugate view (a real tensor can carry the negative bit:
// c.conj().imag), reached before torch's math-bit fallback, which cannot write through such a view: an output with
// a bit is refused by name; inputs with one are read as their values and the call dispatched again.
void invert_out_math_bits(const at::Tensor& A, const c10::optional<at::Tensor>& X0,
                          const c10::optional<at::Tensor>& use_guess, bool refine, double tol, double accept,
                          int64_t max_iter, double guard, double max_error, bool positive_definite, at::Tensor& X,
                          at::Tensor& certified, at::Tensor& bound, at::Tensor& iterations, at::Tensor& fallback) {
  const std::pair<const at::Tensor*, const char*> outputs[] = {
      {&X, "X"}, {&certified, "certified"}, {&bound, "error_bound"}, {&iterations, "iterations"},
      {&fallback, "fallback"}};
  for (const auto& [output, name] : outputs) {
    TORCH_CHECK(!output->is_conj() && !output->is_neg(), "invert.out: ", name,
                " must not have the conjugate or negative bit");
  }
  const auto values = [](const at::Tensor& t) { return t.resolve_conj().resolve_neg(); };
  static const auto invert_out = c10::Dispatcher::singleton().findSchemaOrThrow("neuinv::invert", "out").typed<
      void(const at::Tensor&, const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&, bool, double,
           double, int64_t, double, double, bool, at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&)>();
  invert_out.call(values(A), X0.has_value() ? c10::optional<at::Tensor>(values(*X0)) : c10::nullopt, use_guess,
                  refine, tol, accept, max_iter, guard, max_error, positive_definite, X, certified, bound, iterations,
                  fallback);
}

}  // namespace

TORCH_LIBRARY_IMPL(neuinv, Negative, m) {
  m.impl("invert.out", &invert_out_math_bits);
}

TORCH_LIBRARY_IMPL(neuinv, Conjugate, m) {
  m.impl("invert.out", &invert_out_math_bits);
}

TORCH_LIBRARY_FRAGMENT(neuinv, m) {
  m.def("cpu_kernel_build() -> str", &cpu::kernel_build);
}

TORCH_LIBRARY_IMPL(neuinv, CPU, m) {
  m.impl("invert", &invert_cpu);
  m.impl("invert.out", &invert_out_cpu);
}

}  // namespace neuinv
