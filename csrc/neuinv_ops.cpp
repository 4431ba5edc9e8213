// neuinv's operators: their schemas (one TORCH_LIBRARY for every device) and the argument checks that the CPU
// (csrc/cpu) and CUDA (csrc/cuda) implementations share. Compiled by the host compiler, so that every error is
// thrown from host-compiled code. The Python reference of each operator is in neuinv/reference.py.
#include <torch/library.h>
#include <ATen/ATen.h>

#include "neuinv_checks.h"

namespace neuinv {

void check_batch(const at::Tensor& A, const char* name, c10::DeviceType device) {
  TORCH_CHECK(A.dim() == 3 && A.size(1) == A.size(2), name, " must have shape (b, n, n), got ", A.sizes());
  TORCH_CHECK(A.scalar_type() == at::kFloat || A.scalar_type() == at::kDouble, name,
              " must be float32 or float64, got ", A.scalar_type());
  TORCH_CHECK(A.device().type() == device, name, " must be on ", c10::DeviceTypeName(device), ", got ", A.device());
  TORCH_CHECK(A.size(1) <= 64, name, " holds ", A.size(1), "x", A.size(1), " matrices; the kernels take n <= 64");
}

void check_like(const at::Tensor& A, const at::Tensor& X, const char* name) {
  TORCH_CHECK(A.sizes() == X.sizes() && A.scalar_type() == X.scalar_type(), "A and ", name,
              " must have the same shape and dtype, got ", A.sizes(), " ", A.scalar_type(), " and ", X.sizes(), " ",
              X.scalar_type());
  TORCH_CHECK(A.device() == X.device(), "A and ", name, " must be on the same device, got ", A.device(), " and ",
              X.device());
}

void check_invert_arguments(const at::Tensor& A, const c10::optional<at::Tensor>& X0,
                            const c10::optional<at::Tensor>& use_guess, bool refine, c10::DeviceType device) {
  check_batch(A, "A", device);
  TORCH_CHECK(refine || !X0.has_value(), "invert: X0 is given but refine is false (the exact path uses no guess)");
  if (X0.has_value()) check_like(A, *X0, "X0");
  if (use_guess.has_value()) {
    TORCH_CHECK(X0.has_value(), "invert: use_guess is given without X0");
    TORCH_CHECK(use_guess->dim() == 1 && use_guess->size(0) == A.size(0) &&
                    use_guess->scalar_type() == at::kBool && use_guess->device() == A.device(),
                "invert: use_guess must be a bool tensor of shape (", A.size(0), ") on ", A.device(), ", got ",
                use_guess->scalar_type(), " ", use_guess->sizes(), " on ", use_guess->device());
  }
}

TORCH_LIBRARY(neuinv, m) {
  m.def("invert(Tensor A, Tensor? X0, Tensor? use_guess, bool refine, float tol, float accept, int max_iter,"
        " float guard, float max_error) -> (Tensor X, Tensor certified, Tensor error_bound, Tensor iterations,"
        " Tensor fallback)");
  m.def("exact_inverse(Tensor A) -> (Tensor, Tensor)");
  m.def("residual_norm(Tensor A, Tensor X) -> Tensor");
  m.def("inverse_and_error_bound(Tensor A) -> (Tensor, Tensor)");
  m.def("error_bound(Tensor A, Tensor X) -> Tensor");
  m.def("newton_schulz(Tensor A, Tensor X0, float tol, float accept, int max_iter, bool guarded, float guard)"
        " -> (Tensor, Tensor, Tensor, Tensor)");
}

}  // namespace neuinv
