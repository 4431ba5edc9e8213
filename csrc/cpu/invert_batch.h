// The CPU driver's interface between the operator (csrc/cpu/invert_cpu.cpp) and the batch loops around the
// per-matrix kernel (csrc/cpu/invert_range.h), which are compiled in one translation unit per dtype
// (invert_float.cpp, invert_double.cpp) so that a build on several cores compiles them in parallel.
#pragma once
#include <cstdint>

#include "../kernels/invert_arguments.h"

namespace neuinv {
namespace cpu {

// All b matrices of the batch, split across threads, in the best instruction-set build for this CPU.
template <typename T>
void invert_batch(const kernels::InvertArguments<T>& batch, int64_t b);

extern template void invert_batch<float>(const kernels::InvertArguments<float>&, int64_t);
extern template void invert_batch<double>(const kernels::InvertArguments<double>&, int64_t);

}  // namespace cpu
}  // namespace neuinv
