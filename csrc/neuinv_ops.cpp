// neuinv's operators: their schemas, one TORCH_LIBRARY for every device, in the CPU library (the CUDA library
// adds its kernels to them). The Python reference of each operator is in neuinv/reference.py.
#include <torch/library.h>

namespace neuinv {

TORCH_LIBRARY(neuinv, m) {
  // The whole verified inversion of A (*, n, n), reference.invert; the outputs have A's shape and batch shape.
  // positive_definite: the exact path is Cholesky of A's lower triangle (rules::cholesky_pivot_accepted).
  m.def("invert(Tensor A, Tensor? X0, Tensor? use_guess, bool refine, float tol, float accept, int max_iter,"
        " float guard, float max_error, bool positive_definite=False) -> (Tensor X, Tensor certified,"
        " Tensor error_bound, Tensor iterations, Tensor fallback)");
  // invert writing into the caller's tensors (torch's out= convention, here returning nothing): X like A,
  // certified and fallback bool, error_bound float64, iterations int32 of A's batch shape, all contiguous on A's
  // device and sharing no memory with A, X0 or one another.
  m.def("invert.out(Tensor A, Tensor? X0, Tensor? use_guess, bool refine, float tol, float accept, int max_iter,"
        " float guard, float max_error, bool positive_definite=False, *, Tensor(a!) X, Tensor(b!) certified,"
        " Tensor(c!) error_bound, Tensor(d!) iterations, Tensor(e!) fallback) -> ()");
  // The solution X (b, n, k) of A X = B (A (b, n, n), B (b, n, k); either with 1 in place of b: broadcast) and its
  // error bound (b,) float64: reference.solve. From R (like A) certified to inverse_bound (A's b,) where given,
  // else from the exact path's inverse of each A (positive_definite: Cholesky), computed in the same pass; refined
  // once, certified.
  m.def("solve(Tensor A, Tensor B, Tensor? R=None, Tensor? inverse_bound=None, bool positive_definite=False)"
        " -> (Tensor X, Tensor error_bound)");
}

}  // namespace neuinv
