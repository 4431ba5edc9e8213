// The CUDA implementations of neuinv's operators (schemas in csrc/neuinv_ops.cpp): argument checks, device
// guard, allocation, and the launches of the kernels in csrc/cuda/*.cu on the current stream. Compiled by the
// host compiler, so that every error is thrown from host-compiled frames. No operator here synchronises
// with the host: every decision per matrix is made on the device, by masks the kernels read.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <c10/util/accumulate.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <limits>
#include <tuple>

#include "../neuinv_checks.h"
#include "neuinv_cuda_launch.h"

namespace neuinv {
namespace {

template <typename T>
const T* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// The exact path where `needed` (undefined: everywhere): Gauss-Jordan, or Cholesky when positive_definite.
void exact_inverse_into(const at::Tensor& A, at::Tensor& X, at::Tensor& info, const at::Tensor& needed,
                        bool positive_definite = false) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "neuinv_exact_inverse_cuda", [&] {
    const auto launch = positive_definite ? cuda_kernels::launch_cholesky_inverse<scalar_t>
                                          : cuda_kernels::launch_exact_inverse<scalar_t>;
    C10_CUDA_CHECK(launch(A.data_ptr<scalar_t>(), X.data_ptr<scalar_t>(), info.data_ptr<int32_t>(),
                          data_or_null<bool>(needed), A.size(0), static_cast<int>(A.size(1)), stream));
  });
}

void error_bound_into(const at::Tensor& A, const at::Tensor& X, const at::Tensor& todo, at::Tensor& bound) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "neuinv_error_bound_cuda", [&] {
    C10_CUDA_CHECK(cuda_kernels::launch_error_bound<scalar_t>(
        A.data_ptr<scalar_t>(), X.data_ptr<scalar_t>(), data_or_null<bool>(todo), bound.data_ptr<double>(),
        A.size(0), static_cast<int>(A.size(1)), stream));
  });
}

void newton_schulz_into(const at::Tensor& A, const at::Tensor& X0, const at::Tensor& use_guess, at::Tensor& X,
                        at::Tensor& residual, at::Tensor& done, at::Tensor& steps,
                        const rules::NewtonSchulzRules& rules) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "neuinv_newton_schulz_cuda", [&] {
    C10_CUDA_CHECK(cuda_kernels::launch_newton_schulz<scalar_t>(
        A.data_ptr<scalar_t>(), X0.data_ptr<scalar_t>(), X.data_ptr<scalar_t>(), residual.data_ptr<scalar_t>(),
        done.data_ptr<bool>(), steps.data_ptr<int32_t>(), data_or_null<bool>(use_guess), A.size(0),
        static_cast<int>(A.size(1)), rules, stream));
  });
}

// X0 = A^T / ||A||_1 / ||A||_inf (reference.scaled_transpose_guess), by ATen operations on the device.
at::Tensor scaled_transpose(const at::Tensor& A) {
  const double tiny = A.scalar_type() == at::kFloat ? std::numeric_limits<float>::min()
                                                      : std::numeric_limits<double>::min();
  const at::Tensor magnitude = A.abs();
  const at::Tensor norm_1 = std::get<0>(magnitude.sum(1).max(1)).clamp_min(tiny).view({-1, 1, 1});
  const at::Tensor norm_inf = std::get<0>(magnitude.sum(2).max(1)).clamp_min(tiny).view({-1, 1, 1});
  return (A.transpose(1, 2) / norm_1 / norm_inf).contiguous();
}

// neuinv::invert for n <= kSmallMaxN on the flat batch A (b, n, n): one launch, one thread per matrix
// (csrc/cuda/neuinv_cuda_invert_small.cu), into the contiguous outputs X (b, n, n) and the four fields (b,).
void invert_small_into(const at::Tensor& A, const c10::optional<at::Tensor>& X0_in,
                       const c10::optional<at::Tensor>& use_guess_in, bool refine, double tol, double accept,
                       int64_t max_iter, double guard, double max_error, bool positive_definite, at::Tensor& X,
                       at::Tensor& certified, at::Tensor& bound, at::Tensor& iterations, at::Tensor& fallback) {
  const int64_t b = A.size(0), n = A.size(1);
  const at::Tensor X0 = X0_in.has_value() ? X0_in->reshape({b, n, n}).contiguous() : at::Tensor();
  const at::Tensor use_guess = use_guess_in.has_value() ? use_guess_in->reshape({b}).contiguous() : at::Tensor();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "neuinv_invert_small_cuda", [&] {
    const kernels::InvertArguments<scalar_t> args{
        A.data_ptr<scalar_t>(), data_or_null<scalar_t>(X0), data_or_null<bool>(use_guess), X.data_ptr<scalar_t>(),
        certified.data_ptr<bool>(), bound.data_ptr<double>(), iterations.data_ptr<int32_t>(),
        fallback.data_ptr<bool>(), n, refine, {tol, accept, max_iter, X0.defined(), guard}, max_error,
        positive_definite};
    C10_CUDA_CHECK(cuda_kernels::launch_invert_small<scalar_t>(args, b, stream));
  });
}

// invert_small_into with fresh outputs, in the shape `shape` (A's before flattening).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> invert_small(
    const at::Tensor& A, const c10::optional<at::Tensor>& X0_in, const c10::optional<at::Tensor>& use_guess_in,
    at::Tensor& X, bool refine, double tol, double accept, int64_t max_iter, double guard, double max_error,
    bool positive_definite, at::IntArrayRef shape) {
  const int64_t b = A.size(0);
  const auto batch = shape.slice(0, shape.size() - 2);
  at::Tensor certified = at::empty({b}, A.options().dtype(at::kBool));
  at::Tensor bound = at::empty({b}, A.options().dtype(at::kDouble));
  at::Tensor iterations = at::empty({b}, A.options().dtype(at::kInt));
  at::Tensor fallback = at::empty({b}, A.options().dtype(at::kBool));
  invert_small_into(A, X0_in, use_guess_in, refine, tol, accept, max_iter, guard, max_error, positive_definite, X,
                    certified, bound, iterations, fallback);
  return {X.view(shape), certified.view(batch), bound.view(batch), iterations.view(batch), fallback.view(batch)};
}

// neuinv::invert (reference.invert, on A of shape (*, n, n)) for n > kSmallMaxN as a sequence of launches on the
// current stream: Newton-Schulz where a guess is used, the certificate of the matrices that stopped done,
// Gauss-Jordan (Cholesky when positive_definite) and its certificate where that one is missing or above max_error,
// the verdict. Per-matrix choices are device masks; nothing waits for the host.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> invert_cuda(
    const at::Tensor& A_in, const c10::optional<at::Tensor>& X0_in, const c10::optional<at::Tensor>& use_guess_in,
    bool refine, double tol, double accept, int64_t max_iter, double guard, double max_error,
    bool positive_definite) {
  check_invert_arguments(A_in, X0_in, use_guess_in, refine, tol, accept, max_iter, guard, max_error, at::kCUDA);
  const c10::cuda::CUDAGuard device_guard(A_in.device());
  const auto batch = A_in.sizes().slice(0, A_in.dim() - 2);
  const int64_t b = c10::multiply_integers(batch), n = A_in.size(-1);
  const at::Tensor A = A_in.reshape({b, n, n}).contiguous();
  at::Tensor X = at::empty_like(A);
  if (n <= cuda_kernels::kSmallMaxN) return invert_small(A, X0_in, use_guess_in, X, refine, tol, accept, max_iter,
                                                          guard, max_error, positive_definite, A_in.sizes());
  at::Tensor bound = at::full({b}, std::numeric_limits<double>::infinity(), A.options().dtype(at::kDouble));
  at::Tensor iterations = at::zeros({b}, A.options().dtype(at::kInt));
  at::Tensor needed;  // undefined: every matrix takes the exact path
  if (refine) {
    const at::Tensor X0 = X0_in.has_value() ? X0_in->reshape({b, n, n}).contiguous() : scaled_transpose(A);
    const at::Tensor use_guess = use_guess_in.has_value() ? use_guess_in->reshape({b}).contiguous() : at::Tensor();
    at::Tensor residual = at::empty({b}, A.options());
    at::Tensor done = at::empty({b}, A.options().dtype(at::kBool));
    newton_schulz_into(A, X0, use_guess, X, residual, done, iterations,
                       {tol, accept, max_iter, X0_in.has_value(), guard});
    error_bound_into(A, X, done, bound);
    needed = bound.le(max_error).logical_not_();
  }
  at::Tensor info = at::empty({b}, A.options().dtype(at::kInt));
  exact_inverse_into(A, X, info, needed, positive_definite);
  error_bound_into(A, X, needed, bound);
  at::Tensor fallback = needed.defined() ? needed : at::ones({b}, A.options().dtype(at::kBool));
  at::Tensor certified = bound.le(max_error);
  X.masked_fill_(certified.logical_not().view({-1, 1, 1}), std::numeric_limits<double>::quiet_NaN());
  return {X.view(A_in.sizes()), certified.view(batch), bound.view(batch), iterations.view(batch),
          fallback.view(batch)};
}

// neuinv::invert.out: for n <= kSmallMaxN the kernel writes into the caller's tensors; above, invert_cuda's
// sequence of launches runs on its own tensors, which are then copied into them.
void invert_out_cuda(const at::Tensor& A_in, const c10::optional<at::Tensor>& X0,
                     const c10::optional<at::Tensor>& use_guess, bool refine, double tol, double accept,
                     int64_t max_iter, double guard, double max_error, bool positive_definite, at::Tensor& X,
                     at::Tensor& certified, at::Tensor& bound, at::Tensor& iterations, at::Tensor& fallback) {
  check_invert_arguments(A_in, X0, use_guess, refine, tol, accept, max_iter, guard, max_error, at::kCUDA);
  prepare_invert_outputs(A_in, X0, X, certified, bound, iterations, fallback);
  const c10::cuda::CUDAGuard device_guard(A_in.device());
  const int64_t b = c10::multiply_integers(A_in.sizes().slice(0, A_in.dim() - 2)), n = A_in.size(-1);
  if (n <= cuda_kernels::kSmallMaxN) {
    at::Tensor X_flat = X.view({b, n, n}), certified_flat = certified.view({b}), bound_flat = bound.view({b});
    at::Tensor iterations_flat = iterations.view({b}), fallback_flat = fallback.view({b});
    invert_small_into(A_in.reshape({b, n, n}).contiguous(), X0, use_guess, refine, tol, accept, max_iter, guard,
                      max_error, positive_definite, X_flat, certified_flat, bound_flat, iterations_flat,
                      fallback_flat);
    return;
  }
  const auto results = invert_cuda(A_in, X0, use_guess, refine, tol, accept, max_iter, guard, max_error,
                                   positive_definite);
  X.copy_(std::get<0>(results));
  certified.copy_(std::get<1>(results));
  bound.copy_(std::get<2>(results));
  iterations.copy_(std::get<3>(results));
  fallback.copy_(std::get<4>(results));
}

// Most threads of one neuinv::solve launch, and the most workspace they hold together (each thread its own,
// csrc/cuda/neuinv_cuda_solve_small.cu): about 39,000 threads for 8 x 8 float64 systems with one right-hand side.
constexpr int64_t kSolveMaxThreads = int64_t(1) << 18;
constexpr int64_t kSolveWorkspaceBytes = int64_t(64) << 20;

// neuinv::solve (reference.solve) for n <= kSmallMaxN: one launch, each thread solving one system at a time
// (csrc/cuda/neuinv_cuda_solve_small.cu); larger n are refused by name (the cuda backend solves them by the
// reference). Without R, one A broadcast to every system is inverted once (the inversion's exact path, R NaN
// where not certified, as each system would compute it) and used as a given R, as on the CPU.
std::tuple<at::Tensor, at::Tensor> solve_cuda(const at::Tensor& A_in, const at::Tensor& B_in,
                                              const c10::optional<at::Tensor>& R_in,
                                              const c10::optional<at::Tensor>& bound_in, bool positive_definite) {
  check_solve_arguments(A_in, B_in, R_in, bound_in, at::kCUDA);
  const c10::cuda::CUDAGuard device_guard(A_in.device());
  const at::Tensor A = A_in.contiguous(), B = B_in.contiguous();
  const int64_t b = A.size(0) == 1 ? B.size(0) : A.size(0), n = A.size(1), k = B.size(2);  // broadcast
  TORCH_CHECK(n <= cuda_kernels::kSmallMaxN, "solve: on CUDA the kernels take n <= ", cuda_kernels::kSmallMaxN,
              ", got n = ", n);
  at::Tensor X = at::empty({b, n, k}, B.options());
  at::Tensor bound = at::empty({b}, A.options().dtype(at::kDouble));
  if (b == 0) return {X, bound};
  if (n == 0) return {X, empty_matrix_solve_bound(bound_in, b, bound.options())};
  at::Tensor R = R_in.has_value() ? R_in->contiguous() : at::Tensor();
  at::Tensor eps = bound_in.has_value() ? bound_in->contiguous() : at::Tensor();
  if (!R.defined() && A.size(0) != b) {
    R = at::empty_like(A);
    eps = std::get<2>(invert_small(A, c10::nullopt, c10::nullopt, R, false, 0.0, 0.0, 0, 0.0, rules::kCertifiedBelow,
                                   positive_definite, A.sizes()));
  }
  const int64_t workspace = cuda_kernels::solve_small_workspace(n, k);  // doubles per thread
  const int64_t per_thread = workspace * static_cast<int64_t>(sizeof(double)) +
                             (R.defined() ? 0 : n * n * static_cast<int64_t>(A.element_size()));
  const int64_t threads = std::min({b, kSolveMaxThreads, std::max<int64_t>(1, kSolveWorkspaceBytes / per_thread)});
  at::Tensor work = at::empty({threads, workspace}, A.options().dtype(at::kDouble));
  at::Tensor r_work = R.defined() ? at::Tensor() : at::empty({threads, n, n}, A.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "neuinv_solve_cuda", [&] {
    const cuda_kernels::SolveSmallArguments<scalar_t> args{
        A.data_ptr<scalar_t>(), B.data_ptr<scalar_t>(), data_or_null<scalar_t>(R), data_or_null<double>(eps),
        X.data_ptr<scalar_t>(), bound.data_ptr<double>(), work.data_ptr<double>(),
        r_work.defined() ? r_work.data_ptr<scalar_t>() : nullptr, A.size(0) == b ? n * n : 0,
        B.size(0) == b ? n * k : 0, n, k, threads, positive_definite};
    C10_CUDA_CHECK(cuda_kernels::launch_solve_small<scalar_t>(args, b, stream));
  });
  return {X, bound};
}

}  // namespace

TORCH_LIBRARY_IMPL(neuinv, CUDA, m) {
  m.impl("invert", &invert_cuda);
  m.impl("invert.out", &invert_out_cuda);
  m.impl("solve", &solve_cuda);
}

}  // namespace neuinv
