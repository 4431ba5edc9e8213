// The CPU driver of neuinv::solve instantiated for double (csrc/cpu/solve_range.h).
#include "solve_range.h"

namespace neuinv {
namespace cpu {

template void solve_batch_from_inverse<double>(const double*, const double*, const double*, const double*, SolveStrides,
                                              double*, double*, int64_t, int64_t, int64_t);
template void solve_batch_exact_path<double>(const double*, const double*, int64_t, double*, double*, int64_t,
                                                    int64_t, bool, int64_t);

}  // namespace cpu
}  // namespace neuinv
