// The argument checks of neuinv::invert and neuinv::solve, and the solve of empty matrices, shared by their CPU and
// CUDA implementations; defined in csrc/neuinv_checks.cpp.
#pragma once
#include <ATen/ATen.h>

namespace neuinv {

// Most Newton-Schulz steps neuinv::invert takes (from r0 < 1 the residual is below 2^-(2^k) after k steps; the
// scaled transpose needs about 2 log2(cond A) + 6).
constexpr int64_t kMaxIterations = 10000;

// The arguments of neuinv::invert (see its schema in csrc/neuinv_ops.cpp): A (*, n, n), X0 like A, use_guess of
// A's batch shape, and the scalars in their ranges; throws naming the argument.
void check_invert_arguments(const at::Tensor& A, const c10::optional<at::Tensor>& X0,
                            const c10::optional<at::Tensor>& use_guess, bool refine, double tol, double accept,
                            int64_t max_iter, double guard, double max_error, c10::DeviceType device);

// The outputs of neuinv::invert.out for A: X with A's shape and dtype, certified and fallback bool, error_bound
// float64, iterations int32 of A's batch shape, all contiguous, on A's device, not requiring grad (in grad mode),
// none sharing memory with A, X0 or another output (throws naming the output); then their version counters are
// bumped, as torch's in-place operations do (an inference tensor outside InferenceMode is refused there).
void prepare_invert_outputs(const at::Tensor& A, const c10::optional<at::Tensor>& X0, const at::Tensor& X,
                            const at::Tensor& certified, const at::Tensor& error_bound, const at::Tensor& iterations,
                            const at::Tensor& fallback);

// The arguments of neuinv::solve: A (b, n, n) and B (b, n, k), float32 or float64 (either with 1 in place of b),
// and R like A with inverse_bound (b,) float64, both given or both None (then n <= 64: the exact path's), all on
// `device`; throws naming the argument.
void check_solve_arguments(const at::Tensor& A, const at::Tensor& B, const c10::optional<at::Tensor>& R,
                           const c10::optional<at::Tensor>& inverse_bound, c10::DeviceType device);

// neuinv::solve's bound (b,) for 0 x 0 matrices, whose inverse and solution (b, 0, k) are exact: 0, or with a
// given R 0 where its inverse_bound says it is usable (in [0, 1)) and +inf elsewhere.
at::Tensor empty_matrix_solve_bound(const c10::optional<at::Tensor>& inverse_bound, int64_t b,
                                    const at::TensorOptions& bound_options);

}  // namespace neuinv
