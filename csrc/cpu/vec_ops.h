// The vectorised float32 loops used by the CPU kernels (see vec_loops.inc),
// compiled for AVX2+FMA and for the baseline ISA; vec_ops() picks at run time.
#pragma once
#include <cstdint>

namespace clusiam {

struct VecOps {
  float (*sum_squares)(const float* x, int64_t n);
  float (*dot)(const float* a, const float* b, int64_t n);
  void (*add_scaled)(float* out, const float* x, float s, int64_t n);
  void (*scale_into)(float* out, const float* x, float s, int64_t n);
  void (*project_out)(float* out, const float* c, const float* h, float t, float s, int64_t n);
  int64_t (*softmax_argmax)(const float* logits, const float* noise, float tau, int64_t K, float* y);
  // out may be a itself (in place)
  void (*softmax_backward)(const float* a, const float* y, float scale, int64_t K, float* out);
};

const VecOps& vec_ops();

// The instruction sets vec_loops.inc was compiled for ("avx2+fma,baseline" on x86-64 with
// GCC or Clang) and the one vec_ops() picked on this CPU.
const char* vec_isa_compiled();
const char* vec_isa_selected();

}  // namespace clusiam
