// The CPU operator neuinv::solve (schema in csrc/neuinv_ops.cpp): checks the arguments, allocates the outputs and
// runs the CPU driver (csrc/cpu/solve_range.h) on the batch. Without R each pack of systems computes its exact-path
// inverse and solves with it in one pass; one A broadcast to every system is inverted once (the inversion's driver,
// csrc/cpu/invert_batch.h) and used as a given R.
#include <torch/library.h>
#include <ATen/ATen.h>

#include <cstdint>
#include <tuple>

#include "../neuinv_checks.h"
#include "../neuinv_rules.h"
#include "invert_batch.h"
#include "solve_batch.h"

namespace neuinv {
namespace {

// R and its bound for the one matrix of A (1, n, n): the inversion's exact path (rules::kCertifiedBelow, R NaN where
// not certified), as kernels::solve_with_exact_inverse computes it for each system.
template <typename T>
std::tuple<at::Tensor, at::Tensor> exact_inverse_of_one(const at::Tensor& A, bool positive_definite) {
  at::Tensor R = at::empty_like(A), bound = at::empty({1}, A.options().dtype(at::kDouble));
  bool certified = false, fallback = false;
  int32_t iterations = 0;
  const kernels::InvertArguments<T> batch{A.data_ptr<T>(), nullptr, nullptr, R.data_ptr<T>(), &certified,
                            bound.data_ptr<double>(), &iterations, &fallback, A.size(1), false,
                            rules::NewtonSchulzRules{0.0, 0.0, 0, false, 0.0}, rules::kCertifiedBelow,
                            positive_definite};
  cpu::invert_batch(batch, 1);
  return {R, bound};
}

std::tuple<at::Tensor, at::Tensor> solve_cpu(const at::Tensor& A_in, const at::Tensor& B_in,
                                             const c10::optional<at::Tensor>& R_in,
                                             const c10::optional<at::Tensor>& bound_in, bool positive_definite) {
  check_solve_arguments(A_in, B_in, R_in, bound_in, at::kCPU);
  const at::Tensor A = A_in.contiguous(), B = B_in.contiguous();
  const int64_t b = A.size(0) == 1 ? B.size(0) : A.size(0), n = A.size(1), k = B.size(2);  // broadcast
  at::Tensor X = at::empty({b, n, k}, B.options());
  at::Tensor bound = at::empty({b}, A.options().dtype(at::kDouble));
  if (b == 0) return {X, bound};
  if (n == 0) return {X, empty_matrix_solve_bound(bound_in, b, bound.options())};
  const int64_t b_stride = B.size(0) == b ? n * k : 0;
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "neuinv_solve", [&] {
    scalar_t* x = X.data_ptr<scalar_t>();
    double* out_bound = bound.data_ptr<double>();
    if (!R_in.has_value() && A.size(0) == b) {
      cpu::solve_batch_exact_path(A.data_ptr<scalar_t>(), B.data_ptr<scalar_t>(), b_stride, x, out_bound,
                                          n, k, positive_definite, b);
      return;
    }
    at::Tensor R, inverse_bound;
    if (R_in.has_value()) {
      R = R_in->contiguous();
      inverse_bound = bound_in->contiguous();
    } else {
      std::tie(R, inverse_bound) = exact_inverse_of_one<scalar_t>(A, positive_definite);
    }
    const bool broadcast_a = A.size(0) != b;
    const cpu::SolveStrides strides{broadcast_a ? 0 : n * n, b_stride, broadcast_a ? 0 : 1};
    cpu::solve_batch_from_inverse(A.data_ptr<scalar_t>(), B.data_ptr<scalar_t>(), R.data_ptr<scalar_t>(),
                                  inverse_bound.data_ptr<double>(), strides, x, out_bound, n, k, b);
  });
  return {X, bound};
}

}  // namespace

TORCH_LIBRARY_IMPL(neuinv, CPU, m) {
  m.impl("solve", &solve_cpu);
}

}  // namespace neuinv
