// The CPU driver of neuinv::solve instantiated for float (csrc/cpu/solve_range.h).
#include "solve_range.h"

namespace neuinv {
namespace cpu {

template void solve_batch_from_inverse<float>(const float*, const float*, const float*, const double*, SolveStrides,
                                              float*, double*, int64_t, int64_t, int64_t);
template void solve_batch_exact_path<float>(const float*, const float*, int64_t, float*, double*, int64_t,
                                                    int64_t, bool, int64_t);

}  // namespace cpu
}  // namespace neuinv
