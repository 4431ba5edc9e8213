// The CPU operator neuinv::solve_from_inverse (schema in csrc/neuinv_ops.cpp): checks the arguments, allocates
// the outputs and runs the per-system kernel kernels::solve_from_inverse (csrc/kernels/solve.h) on the batch,
// split across threads (at::parallel_for), each with its own workspace.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../kernels/solve.h"
#include "../neuinv_checks.h"
#include "build_selection.h"

namespace neuinv {
namespace {

std::tuple<at::Tensor, at::Tensor> solve_from_inverse_cpu(const at::Tensor& A_in, const at::Tensor& B_in,
                                                          const at::Tensor& R_in, const at::Tensor& bound_in) {
  check_solve_from_inverse_arguments(A_in, B_in, R_in, bound_in, at::kCPU);
  const at::Tensor A = A_in.contiguous(), B = B_in.contiguous(), R = R_in.contiguous();
  const at::Tensor inverse_bound = bound_in.contiguous();
  const int64_t b = A.size(0), n = A.size(1), k = B.size(2);
  at::Tensor X = at::empty_like(B, at::MemoryFormat::Contiguous);
  at::Tensor bound = at::empty({b}, A.options().dtype(at::kDouble));
  if (b == 0) return {X, bound};
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, n * (n + k)));
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "neuinv_solve_from_inverse", [&] {
    const scalar_t* a = A.data_ptr<scalar_t>();
    const scalar_t* rhs = B.data_ptr<scalar_t>();
    const scalar_t* r = R.data_ptr<scalar_t>();
    const double* eps = inverse_bound.data_ptr<double>();
    scalar_t* x = X.data_ptr<scalar_t>();
    double* out_bound = bound.data_ptr<double>();
    at::parallel_for(0, b, grain, [&](int64_t begin, int64_t end) {
      cpu::IeeeMode ieee;
      std::vector<double> work(kernels::solve_workspace(n, k));
      for (int64_t m = begin; m < end; ++m) {
        out_bound[m] = kernels::solve_from_inverse(a + m * n * n, rhs + m * n * k, r + m * n * n, eps[m],
                                                   x + m * n * k, work.data(), n, k);
      }
    });
  });
  return {X, bound};
}

}  // namespace

TORCH_LIBRARY_IMPL(neuinv, CPU, m) {
  m.impl("solve_from_inverse", &solve_from_inverse_cpu);
}

}  // namespace neuinv
