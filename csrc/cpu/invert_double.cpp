// The CPU driver instantiated for float64 (csrc/cpu/invert_range.h).
#include "invert_range.h"

template void neuinv::cpu::invert_batch<double>(const neuinv::kernels::InvertArguments<double>&, int64_t);
