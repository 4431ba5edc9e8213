// Which instruction set the CPU kernels run with, chosen once at run time: the extension is compiled for
// baseline x86-64 (portable, for the general size only), and each kernel is compiled twice more, for AVX2+FMA
// and for AVX-512, whichever this CPU has. A kernel and everything it calls are always inlined
// (NEUINV_HOST_DEVICE), so each build compiles it whole for its instruction set. Also the floating-point mode every worker thread computes in.
#pragma once
#include <string>

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#endif

namespace neuinv {
namespace cpu {

#if defined(__x86_64__) && defined(__GNUC__)
inline bool cpu_has_avx2_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}

inline bool cpu_has_avx512() {
  static const bool has = cpu_has_avx2_fma() && __builtin_cpu_supports("avx512f") &&
                          __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  return has;
}

template <auto kernel, typename... Args>
__attribute__((target("avx2,fma"))) void run_avx2_fma(Args... args) {
  kernel(args...);
}

template <auto kernel, typename... Args>
__attribute__((target("avx512f,avx512dq,avx512vl,avx2,fma"))) void run_avx512(Args... args) {
  kernel(args...);
}
#endif

// kernel(args...) in the best build for this CPU; on an x86-64 CPU without AVX2 and FMA, baseline(args...).
template <auto kernel, auto baseline, typename... Args>
void run_for_this_cpu(Args... args) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (cpu_has_avx512()) return run_avx512<kernel>(args...);
  if (cpu_has_avx2_fma()) return run_avx2_fma<kernel>(args...);
  baseline(args...);
#else
  kernel(args...);
#endif
}

// The fixed size the baseline build of an x86-64 kernel for size N is compiled with: 0, the general size, so that
// the build for the CPUs without AVX2 (rare since 2013) compiles one kernel instead of one per fixed size. Other
// architectures have one build, with every fixed size.
template <int N>
#if defined(__x86_64__) && defined(__GNUC__)
constexpr int kBaselineN = 0;
#else
constexpr int kBaselineN = N;
#endif

// Which build run_for_this_cpu runs on this CPU (`neuinv info` reports it).
inline std::string kernel_build() {
#if defined(__x86_64__) && defined(__GNUC__)
  if (cpu_has_avx512()) return "x86-64 with AVX-512 (chosen at run time)";
  if (cpu_has_avx2_fma()) return "x86-64 with AVX2+FMA (chosen at run time)";
  return "baseline x86-64 (this CPU lacks AVX2 or FMA)";
#else
  return "baseline build for this CPU";
#endif
}

// Saves the floating-point environment and sets IEEE mode (round to nearest, gradual underflow: no
// flush-to-zero or denormals-are-zero, which torch.set_flush_denormal sets per thread) for the kernels' work;
// restores it at the end of the scope. Every worker thread thus computes the same results, and the
// certificate's subnormal term is 0 (csrc/neuinv_rules.h).
class IeeeMode {
 public:
#if defined(__SSE__) || defined(__x86_64__)
  IeeeMode() : saved_(_mm_getcsr()) { _mm_setcsr(0x1F80); }
  ~IeeeMode() { _mm_setcsr(saved_); }

 private:
  unsigned int saved_;
#endif
};

}  // namespace cpu
}  // namespace neuinv
