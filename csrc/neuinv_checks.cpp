// The argument checks declared in csrc/neuinv_checks.h, compiled by the host C++ compiler into both libraries
// (the CPU one and the CUDA one), so that every error is thrown from host-compiled code.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <cmath>
#include <cstdint>
#include <iterator>
#include <limits>
#include <tuple>
#include <utility>

#include "neuinv_checks.h"

namespace neuinv {

namespace {

// X (named `name`) must have A's shape, dtype and device.
void check_like(const at::Tensor& A, const at::Tensor& X, const char* name) {
  TORCH_CHECK(A.sizes() == X.sizes() && A.scalar_type() == X.scalar_type(), "A and ", name,
              " must have the same shape and dtype, got ", A.sizes(), " ", A.scalar_type(), " and ", X.sizes(), " ",
              X.scalar_type());
  TORCH_CHECK(A.device() == X.device(), "A and ", name, " must be on the same device, got ", A.device(), " and ",
              X.device());
}

// Whether the byte ranges a and b address (from their lowest to their highest element) intersect on one device,
// whatever storages hold them (two tensors over one numpy buffer have storages of their own); conservative for
// strided views that interleave, as neuinv.arguments.check_out.
bool share_bytes(const at::Tensor& a, const at::Tensor& b) {
  if (a.device() != b.device() || a.numel() == 0 || b.numel() == 0) return false;
  const auto span = [](const at::Tensor& t) {
    int64_t low = 0, high = 0;
    for (int64_t d = 0; d < t.dim(); ++d) {
      const int64_t step = (t.size(d) - 1) * t.stride(d);
      (step < 0 ? low : high) += step;
    }
    const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
    return std::make_pair(begin + low * t.element_size(), begin + (high + 1) * t.element_size());
  };
  const auto [a0, a1] = span(a);
  const auto [b0, b1] = span(b);
  return a0 < b1 && b0 < a1;
}

}  // namespace

void check_invert_arguments(const at::Tensor& A, const c10::optional<at::Tensor>& X0,
                            const c10::optional<at::Tensor>& use_guess, bool refine, double tol, double accept,
                            int64_t max_iter, double guard, double max_error, c10::DeviceType device) {
  TORCH_CHECK(A.dim() >= 2 && A.size(-1) == A.size(-2), "invert: A must have shape (*, n, n), got ", A.sizes());
  TORCH_CHECK(A.scalar_type() == at::kFloat || A.scalar_type() == at::kDouble,
              "invert: A must be float32 or float64, got ", A.scalar_type());
  TORCH_CHECK(A.device().type() == device, "invert: A must be on ", c10::DeviceTypeName(device), ", got ",
              A.device());
  TORCH_CHECK(A.size(-1) >= 1 && A.size(-1) <= 64, "invert: A holds ", A.size(-1), "x", A.size(-1),
              " matrices; the kernels take 1 <= n <= 64");
  TORCH_CHECK(refine || !X0.has_value(), "invert: X0 is given but refine is false (the exact path uses no guess)");
  if (X0.has_value()) check_like(A, *X0, "X0");
  if (use_guess.has_value()) {
    TORCH_CHECK(X0.has_value(), "invert: use_guess is given without X0");
    const auto batch = A.sizes().slice(0, A.dim() - 2);
    TORCH_CHECK(use_guess->sizes() == batch && use_guess->scalar_type() == at::kBool &&
                    use_guess->device() == A.device(),
                "invert: use_guess must be a bool tensor of shape ", batch, " on ", A.device(), ", got ",
                use_guess->scalar_type(), " ", use_guess->sizes(), " on ", use_guess->device());
  }
  TORCH_CHECK(tol >= 0 && std::isfinite(tol), "invert: tol must be finite and >= 0, got ", tol);
  TORCH_CHECK(accept > 0 && std::isfinite(accept), "invert: accept must be finite and > 0, got ", accept);
  TORCH_CHECK(max_iter >= 0 && max_iter <= kMaxIterations, "invert: max_iter must be in [0, ", kMaxIterations,
              "], got ", max_iter);
  TORCH_CHECK(guard > 0 && std::isfinite(guard), "invert: guard must be finite and > 0, got ", guard);
  TORCH_CHECK(max_error >= 0 && max_error <= 1, "invert: max_error must be in [0, 1], got ", max_error);
}

void prepare_invert_outputs(const at::Tensor& A, const c10::optional<at::Tensor>& X0, const at::Tensor& X,
                            const at::Tensor& certified, const at::Tensor& error_bound, const at::Tensor& iterations,
                            const at::Tensor& fallback) {
  check_like(A, X, "X");
  const auto batch = A.sizes().slice(0, A.dim() - 2);
  const std::tuple<const at::Tensor*, const char*, at::ScalarType> fields[] = {
      {&certified, "certified", at::kBool}, {&error_bound, "error_bound", at::kDouble},
      {&iterations, "iterations", at::kInt}, {&fallback, "fallback", at::kBool}};
  for (const auto& [field, name, dtype] : fields) {
    TORCH_CHECK(field->sizes() == batch && field->scalar_type() == dtype && field->device() == A.device(),
                "invert.out: ", name, " must be a ", dtype, " tensor of A's batch shape ", batch, " on ", A.device(),
                ", got ", field->scalar_type(), " ", field->sizes(), " on ", field->device());
  }
  const std::pair<const at::Tensor*, const char*> outputs[] = {
      {&X, "X"}, {&certified, "certified"}, {&error_bound, "error_bound"}, {&iterations, "iterations"},
      {&fallback, "fallback"}};
  for (size_t i = 0; i < std::size(outputs); ++i) {
    const auto& [output, name] = outputs[i];
    TORCH_CHECK(output->is_contiguous() && !output->is_conj() && !output->is_neg(), "invert.out: ", name,
                " must be contiguous, without conjugate or negative bit");
    TORCH_CHECK(!(output->requires_grad() && at::GradMode::is_enabled()), "invert.out: ", name,
                " requires grad; out= cannot be combined with gradients");
    TORCH_CHECK(!share_bytes(*output, A) && !(X0.has_value() && share_bytes(*output, *X0)), "invert.out: ", name,
                " must not share memory with A or X0");
    for (size_t j = 0; j < i; ++j) {
      TORCH_CHECK(!share_bytes(*output, *outputs[j].first), "invert.out: ", name, " must not share memory with ",
                  outputs[j].second);
    }
  }
  for (const auto& [output, name] : outputs) output->unsafeGetTensorImpl()->bump_version();
}

void check_solve_arguments(const at::Tensor& A, const at::Tensor& B, const c10::optional<at::Tensor>& R,
                           const c10::optional<at::Tensor>& inverse_bound, c10::DeviceType device) {
  TORCH_CHECK(A.dim() == 3 && A.size(1) == A.size(2), "solve: A must have shape (b, n, n), got ", A.sizes());
  TORCH_CHECK(A.scalar_type() == at::kFloat || A.scalar_type() == at::kDouble,
              "solve: A must be float32 or float64, got ", A.scalar_type());
  TORCH_CHECK(A.device().type() == device, "solve: A must be on ", c10::DeviceTypeName(device), ", got ",
              A.device());
  TORCH_CHECK(B.dim() == 3 && B.size(1) == A.size(1) &&
                  (B.size(0) == A.size(0) || B.size(0) == 1 || A.size(0) == 1),
              "solve: B must have shape (b, n, k) with A's n, and A and B the same number of systems b "
              "or one of them 1, got ", B.sizes(), " for A ", A.sizes());
  TORCH_CHECK(B.scalar_type() == A.scalar_type() && B.device() == A.device(),
              "solve: B must have A's dtype and device, got ", B.scalar_type(), " on ", B.device());
  TORCH_CHECK(R.has_value() == inverse_bound.has_value(),
              "solve: R and inverse_bound must be given together or both be None");
  if (!R.has_value()) {
    TORCH_CHECK(A.size(1) <= 64, "solve: A holds ", A.size(1), "x", A.size(1),
                " matrices; without R the kernels take n <= 64");
    return;
  }
  check_like(A, *R, "R");
  TORCH_CHECK(inverse_bound->dim() == 1 && inverse_bound->size(0) == A.size(0) &&
                  inverse_bound->scalar_type() == at::kDouble && inverse_bound->device() == A.device(),
              "solve: inverse_bound must be a float64 tensor of shape (", A.size(0), ",) on ", A.device(),
              ", got ", inverse_bound->scalar_type(), " ", inverse_bound->sizes(), " on ", inverse_bound->device());
}

at::Tensor empty_matrix_solve_bound(const c10::optional<at::Tensor>& inverse_bound, int64_t b,
                                    const at::TensorOptions& bound_options) {
  if (!inverse_bound.has_value()) return at::zeros({b}, bound_options);
  const at::Tensor usable = inverse_bound->ge(0).logical_and(inverse_bound->lt(1)).expand({b});
  return at::where(usable, 0.0, std::numeric_limits<double>::infinity()).to(at::kDouble);
}

}  // namespace neuinv
