// The CPU driver instantiated for float32 (csrc/cpu/invert_range.h).
#include "invert_range.h"

template void neuinv::cpu::invert_batch<float>(const neuinv::kernels::InvertArguments<float>&, int64_t);
