// Helpers shared by the CUDA kernels: dtype dispatch, deterministic block reductions.
#pragma once
#include <ATen/Dispatch.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

// The types checks.h allows for z and logits (no float64 instantiations).
#define CLUSIAM_DISPATCH_FLOAT_TYPES(TYPE, NAME, ...)                                        \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)                   \
                                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)                \
                                         AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))
#define CLUSIAM_DISPATCH_LOW_TYPES(TYPE, NAME, ...) \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__) AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

namespace clusiam {

constexpr int kWarp = 32;

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v = max(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024), returned to
// every thread. A fixed reduction tree: the same inputs give the same bits.
template <typename T>
__device__ T block_sum(T v) {
  __shared__ T partial[kWarp];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  v = warp_sum(v);
  __syncthreads();  // partial may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int warps = blockDim.x / kWarp;
  v = lane < warps ? partial[lane] : T(0);
  return warp_sum(v);
}

__device__ inline float block_max(float v) {
  __shared__ float partial[kWarp];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int warps = blockDim.x / kWarp;
  v = lane < warps ? partial[lane] : -INFINITY;
  return warp_max(v);
}

// Index of the maximum over the block; the smallest index wins ties (like torch.argmax).
__device__ inline int64_t block_argmax(float v, int64_t i) {
  __shared__ float pv[kWarp];
  __shared__ int64_t pi[kWarp];
  auto better = [](float a, int64_t ia, float b, int64_t ib) { return b > a || (b == a && ib < ia); };
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    float ov = __shfl_xor_sync(0xffffffffu, v, offset);
    int64_t oi = __shfl_xor_sync(0xffffffffu, i, offset);
    if (better(v, i, ov, oi)) v = ov, i = oi;
  }
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  __syncthreads();
  if (lane == 0) pv[warp] = v, pi[warp] = i;
  __syncthreads();
  const int warps = blockDim.x / kWarp;
  v = lane < warps ? pv[lane] : -INFINITY;
  i = lane < warps ? pi[lane] : INT64_MAX;
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    float ov = __shfl_xor_sync(0xffffffffu, v, offset);
    int64_t oi = __shfl_xor_sync(0xffffffffu, i, offset);
    if (better(v, i, ov, oi)) v = ov, i = oi;
  }
  return i;
}

inline int threads_for(int64_t n, int most = 256) {
  int t = kWarp;
  while (t < n && t < most) t *= 2;
  return t;
}

}  // namespace clusiam
