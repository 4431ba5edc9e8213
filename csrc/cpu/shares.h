// The one skeleton of the CPU driver's batch loops (invert_range.h, solve_range.h): the batch split across threads
// (at::parallel_for) in whole units (a pack's kLanes systems, or one), each thread's share computed in IEEE mode
// in the best instruction-set build for this CPU (build_selection.h), with a workspace of its own.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "build_selection.h"

namespace neuinv {
namespace cpu {

// A thread's workspace: `bytes` bytes aligned for a pack's aligned loads and stores.
class Workspace {
 public:
  explicit Workspace(int64_t bytes) : storage_(bytes + kAlignment) {}
  void* data() {
    return reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(storage_.data()) + kAlignment - 1) &
                                   ~(kAlignment - 1));
  }

 private:
  static constexpr int64_t kAlignment = 64;
  std::vector<char> storage_;
};

// kernel(work, begin, end, args...) for items begin..end-1 of b, over shares of whole units of `unit` items (at
// least `grain` units each), with `workspace_bytes` of workspace per share; baseline(...) on x86-64 CPUs without
// AVX2 (run_for_this_cpu).
template <auto kernel, auto baseline, typename... Args>
void run_in_shares(int64_t b, int64_t unit, int64_t grain, int64_t workspace_bytes, Args... args) {
  at::parallel_for(0, (b + unit - 1) / unit, grain, [&](int64_t begin, int64_t end) {
    IeeeMode ieee;
    Workspace work(workspace_bytes);
    run_for_this_cpu<kernel, baseline>(work.data(), begin * unit, std::min(end * unit, b), args...);
  });
}

}  // namespace cpu
}  // namespace neuinv
