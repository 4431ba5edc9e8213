// Argument checks shared by the CPU and CUDA operators; defined once, in neuinv_cpu.cpp (compiled by the
// host C++ compiler, so every error is thrown from host-compiled code).
#pragma once
#include <ATen/ATen.h>

namespace neuinv {

// A must be a (b, n, n) float32 or float64 batch with n <= 64 on a `device` device; throws naming `name`.
void check_batch(const at::Tensor& A, const char* name, c10::DeviceType device);

// X (named `name`) must have A's shape and dtype.
void check_like(const at::Tensor& A, const at::Tensor& X, const char* name);

}  // namespace neuinv
