// Compiles vec_loops.inc twice (AVX2+FMA and baseline) and picks one at run time.
#include "vec_ops.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace clusiam {

#define CLUSIAM_OPS_TABLE                                                                 \
  VecOps {                                                                                \
    &sum_squares, &dot, &add_scaled, &scale_into, &project_out, &softmax_argmax, &softmax_backward \
  }

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define CLUSIAM_ISA avx2
#include "vec_loops.inc"
#undef CLUSIAM_ISA
#pragma GCC pop_options
#define CLUSIAM_HAVE_AVX2 1
#endif

#define CLUSIAM_ISA baseline
#include "vec_loops.inc"
#undef CLUSIAM_ISA

namespace {

bool use_avx2() {
#ifdef CLUSIAM_HAVE_AVX2
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

}  // namespace

const VecOps& vec_ops() {
  static const VecOps ops = [] {
#ifdef CLUSIAM_HAVE_AVX2
    if (use_avx2()) {
      using namespace avx2;
      return CLUSIAM_OPS_TABLE;
    }
#endif
    using namespace baseline;
    return CLUSIAM_OPS_TABLE;
  }();
  return ops;
}

const char* vec_isa_compiled() {
#ifdef CLUSIAM_HAVE_AVX2
  return "avx2+fma,baseline";
#else
  return "baseline";
#endif
}

const char* vec_isa_selected() { return use_avx2() ? "avx2+fma" : "baseline"; }

}  // namespace clusiam
