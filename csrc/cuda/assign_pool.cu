// CUDA kernels of clusiam::assign_pool and its backward (CPU: cpu/assign_pool.cpp).
//
// Forward:
// 1. rows:   one block per row: Gumbel softmax (noise drawn in-kernel with
//            Philox when none is given), first argmax. Like the CPU kernel:
//            x = (logits + g) * (1 / tau), y = exp(x - max) * (1 / sum).
// 2. norms:  one block per row: 1 / max(||z[m]||, eps).
// 3. sort:   stable counting sort of the rows by cluster: per-tile counts,
//            one scan over (cluster, tile), scatter in row order per tile.
// 4. pool:   sorted rows cut into chunks of kChunk rows; each chunk sums its
//            clusters' rows in order. Clusters spanning chunks add the chunk
//            partials in order, by groups of kGroup chunks for long clusters.
// Deterministic, no float atomics, no host sync.
//
// Backward: a = z @ grad_sums^T (one cuBLAS product), then one block per row
// for the softmax backward dlogits = y * (a' - sum_j y_j a'_j) / tau with
// a' = a / ||z[m]||.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/cuda/PhiloxUtils.cuh>
#include <ATen/ops/abs.h>
#include <ATen/ops/amax.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <curand_kernel.h>
#include <torch/library.h>

#include <cfloat>
#include <cmath>
#include <mutex>

#include "../checks.h"
#include "common.cuh"

namespace clusiam {
namespace {

constexpr int kChunk = 32;             // rows per pooling chunk
constexpr int kGroup = 64;             // chunks per group in the sums of long clusters
constexpr int kColumns = 256;          // columns per pooling block
constexpr int64_t kTileRows = 1024;    // rows per sort tile (more when K * tiles is large)
constexpr int64_t kMaxTileBins = int64_t{1} << 24;
constexpr int kSortWarps = 4;          // sort tiles per block, one warp each

template <typename logit_t>
__global__ void assign_rows_kernel(const logit_t* __restrict__ logits, const float* __restrict__ gumbel,
                                   at::PhiloxCudaState philox, float inv_tau, int64_t K,
                                   float* __restrict__ y, int64_t* __restrict__ idx) {
  const int64_t m = blockIdx.x;
  const logit_t* lrow = logits + m * K;
  float* yrow = y + m * K;
  curandStatePhilox4_32_10_t state;
  if (gumbel == nullptr) {
    auto seeds = at::cuda::philox::unpack(philox);
    curand_init(std::get<0>(seeds), m * blockDim.x + threadIdx.x, std::get<1>(seeds), &state);
  }
  float mx = -INFINITY;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    float g;
    if (gumbel != nullptr) {
      g = gumbel[m * K + k];
    } else {  // E ~ Exp(1) = -log(U), g = -log(E); U in (0, 1], U near 1 as torch's exponential_
      const float u = curand_uniform(&state);
      g = -logf(u >= 1.f - FLT_EPSILON / 2 ? FLT_EPSILON / 2 : -logf(u));
    }
    const float x = (static_cast<float>(lrow[k]) + g) * inv_tau;
    yrow[k] = x;
    mx = fmaxf(mx, x);
  }
  mx = block_max(mx);
  float sum = 0.f;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    const float e = expf(yrow[k] - mx);
    yrow[k] = e;
    sum += e;
  }
  const float inv_sum = 1.f / block_sum(sum);
  float best = -INFINITY;
  int64_t best_k = INT64_MAX;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    const float v = yrow[k] * inv_sum;
    yrow[k] = v;
    if (v > best) best = v, best_k = k;  // k increases: the first maximum of this thread
  }
  best_k = block_argmax(best, best_k);
  if (threadIdx.x == 0) idx[m] = best_k == INT64_MAX ? 0 : best_k;  // all-NaN row: cluster 0
}

template <typename z_t>
__global__ void inv_norm_kernel(const z_t* __restrict__ z, int64_t D, float eps, float* __restrict__ inv_norm) {
  const z_t* row = z + static_cast<int64_t>(blockIdx.x) * D;
  float ss = 0.f;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    const float v = static_cast<float>(row[d]);
    ss += v * v;
  }
  ss = block_sum(ss);
  if (threadIdx.x == 0) inv_norm[blockIdx.x] = 1.f / fmaxf(sqrtf(ss), eps);
}

// Stable counting sort by cluster, one warp per tile of tile_rows rows, walked
// 32 rows at a time. count[k * tiles + t] is the number of rows of cluster k in
// tile t. kScatter = false counts them (count zeroed first). kScatter = true
// puts each row at end[k * tiles + t] - count[k * tiles + t] plus its rank
// among the earlier lanes of its cluster, then counts the placed rows down;
// end is the inclusive scan of count in (cluster, tile) order. Only tile t's
// warp touches count[. * tiles + t], so no atomics.
template <bool kScatter>
__global__ void sort_tiles_kernel(const int64_t* __restrict__ idx, int64_t M, int64_t tiles, int64_t tile_rows,
                                  int* count, const int* __restrict__ end, int* __restrict__ keys,
                                  int* __restrict__ perm) {
  const int64_t t = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kWarp;
  if (t >= tiles) return;  // whole warps
  const int lane = threadIdx.x % kWarp;
  const int64_t lo = t * tile_rows, hi = min(lo + tile_rows, M);
  for (int64_t base = lo; base < hi; base += kWarp) {
    const int64_t r = base + lane;
    const unsigned active = __ballot_sync(0xffffffffu, r < hi);
    if (r < hi) {
      const int k = static_cast<int>(idx[r]);
      const unsigned peers = __match_any_sync(active, k);  // the lanes of cluster k
      const bool last = (peers >> lane) == 1u;             // the highest of them
      volatile int* c = count + k * tiles + t;
      if constexpr (kScatter) {
        const int pos = end[k * tiles + t] - *c + __popc(peers & ((1u << lane) - 1u));
        keys[pos] = k;
        perm[pos] = static_cast<int>(r);
        __syncwarp(active);  // every lane has read its *c
        if (last) *c = *c - __popc(peers);
      } else {
        if (last) *c = *c + __popc(peers);
      }
    }
    __syncwarp();
  }
}

// start[k] = first sorted position of cluster k (start[K] = M).
__global__ void cluster_starts_kernel(const int* __restrict__ end, int64_t K, int64_t tiles,
                                      int* __restrict__ start) {
  const int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (k <= K) start[k] = k == 0 ? 0 : end[k * tiles - 1];
}

// Chunk j of the sorted rows: clusters inside it go to sums; the partial sum of
// its first cluster, when that spans chunks, to head[j], of its last to tail[j].
template <typename z_t>
__global__ void pool_chunks_kernel(const z_t* __restrict__ z, const float* __restrict__ inv_norm,
                                   const int* __restrict__ keys, const int* __restrict__ perm,
                                   const int* __restrict__ start, int64_t M, int64_t D,
                                   float* __restrict__ sums, float* __restrict__ head, float* __restrict__ tail) {
  const int64_t d = blockIdx.y * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t j = blockIdx.x, lo = j * kChunk, hi = min(lo + kChunk, M);
  if (d >= D) return;
  const int first = keys[lo];
  auto flush = [&](int k, float acc) {
    if (start[k] >= lo && start[k + 1] <= hi) sums[k * D + d] = acc;  // cluster inside this chunk
    else if (k == first) head[j * D + d] = acc;
    else tail[j * D + d] = acc;
  };
  int cur = first;
  float acc = 0.f;
  for (int64_t p = lo; p < hi; ++p) {
    const int k = keys[p];
    if (k != cur) {
      flush(cur, acc);
      cur = k;
      acc = 0.f;
    }
    const int64_t m = perm[p];
    acc += static_cast<float>(z[m * D + d]) * inv_norm[m];
  }
  flush(cur, acc);
}

// Group g (chunks g * kGroup ...): when its first chunk starts with a cluster
// spanning chunks, the sum in chunk order of that cluster's heads in the group.
__global__ void group_sums_kernel(const int* __restrict__ keys, const int* __restrict__ start,
                                  const float* __restrict__ head, int64_t D, float* __restrict__ group) {
  const int64_t g = blockIdx.x;
  const int64_t d = blockIdx.y * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (d >= D) return;
  const int64_t j0 = g * kGroup;
  const int k = keys[j0 * kChunk];
  const int64_t js = start[k] / kChunk, je = (start[k + 1] - 1) / kChunk;
  if (js == je) return;  // inside one chunk: never read
  const int64_t j1 = min(je, j0 + kGroup - 1);
  float acc = 0.f;
  for (int64_t j = j0; j <= j1; ++j) acc += head[j * D + d];
  group[g * D + d] = acc;
}

// Clusters spanning several chunks (and empty ones); also writes the counts.
// The partials are added in chunk order, a whole group's sum at a time where
// the cluster covers the group's first chunk: at most kGroup + chunks / kGroup
// steps per cluster.
__global__ void pool_spans_kernel(const int* __restrict__ keys, const int* __restrict__ start,
                                  const float* __restrict__ head, const float* __restrict__ tail,
                                  const float* __restrict__ group, int64_t D, float* __restrict__ sums,
                                  float* __restrict__ counts) {
  const int k = blockIdx.x;
  const int64_t d = blockIdx.y * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t s = start[k], e = start[k + 1];
  if (d == 0) counts[k] = static_cast<float>(e - s);
  if (d >= D) return;
  if (e == s) {
    sums[k * D + d] = 0.f;
    return;
  }
  const int64_t js = s / kChunk, je = (e - 1) / kChunk;
  if (js == je) return;  // pool_chunks_kernel wrote it
  float acc = 0.f;
  for (int64_t j = js; j <= je;) {
    const bool first = keys[j * kChunk] == k;
    if (first && j % kGroup == 0) {
      acc += group[(j / kGroup) * D + d];
      j = min(je, j + kGroup - 1) + 1;
    } else {
      acc += first ? head[j * D + d] : tail[j * D + d];
      ++j;
    }
  }
  sums[k * D + d] = acc;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> assign_pool_cuda(
    const at::Tensor& z_in, const at::Tensor& logits_in, const std::optional<at::Tensor>& gumbel_in,
    double tau, double eps) {
  check_assign_inputs(z_in, logits_in, gumbel_in, tau);
  const c10::cuda::CUDAGuard guard(z_in.device());
  const at::Tensor z = z_in.contiguous();
  const at::Tensor logits = logits_in.contiguous();
  const int64_t M = z.size(0), D = z.size(1), K = logits.size(1);
  TORCH_CHECK(M <= INT32_MAX && K <= INT32_MAX && D <= 65535LL * kColumns,
              "clusiam::assign_pool: shape too large for the CUDA kernels: M=", M, " K=", K, " D=", D);
  const auto f32 = z.options().dtype(at::kFloat);
  const auto i32 = z.options().dtype(at::kInt);
  auto stream = c10::cuda::getCurrentCUDAStream();

  at::Tensor gumbel;
  at::PhiloxCudaState philox;
  const int row_threads = threads_for(K);
  if (gumbel_in.has_value()) {
    gumbel = gumbel_in->to(at::kFloat).contiguous();
  } else {
    auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(
        std::nullopt, at::cuda::detail::getDefaultCUDAGenerator());
    const uint64_t per_thread = (K + row_threads - 1) / row_threads;
    std::lock_guard<std::mutex> lock(gen->mutex_);
    philox = gen->philox_cuda_state(((per_thread + 3) / 4) * 4);
  }

  at::Tensor y = at::empty({M, K}, f32);
  at::Tensor idx = at::empty({M}, z.options().dtype(at::kLong));
  at::Tensor inv_norm = at::empty({M}, f32);
  const float inv_tau = 1.f / static_cast<float>(tau);  // as the CPU kernel
  CLUSIAM_DISPATCH_FLOAT_TYPES(logits.scalar_type(), "assign_rows", [&] {
    assign_rows_kernel<scalar_t><<<M, row_threads, 0, stream>>>(
        logits.data_ptr<scalar_t>(), gumbel.defined() ? gumbel.data_ptr<float>() : nullptr, philox, inv_tau, K,
        y.data_ptr<float>(), idx.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  CLUSIAM_DISPATCH_FLOAT_TYPES(z.scalar_type(), "inv_norm", [&] {
    inv_norm_kernel<scalar_t><<<M, threads_for(D), 0, stream>>>(z.data_ptr<scalar_t>(), D,
                                                                static_cast<float>(eps),
                                                                inv_norm.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });

  // Counting sort: tiles of at least kTileRows rows, at most kMaxTileBins (cluster, tile) counts.
  int64_t tile_rows = kTileRows;
  while (tile_rows < M && (M + tile_rows - 1) / tile_rows * K > kMaxTileBins) tile_rows *= 2;
  const int64_t tiles = (M + tile_rows - 1) / tile_rows;
  const int64_t sort_blocks = (tiles + kSortWarps - 1) / kSortWarps;
  at::Tensor count = at::zeros({K * tiles}, i32);
  at::Tensor keys = at::empty({M}, i32), perm = at::empty({M}, i32), start = at::empty({K + 1}, i32);
  sort_tiles_kernel<false><<<sort_blocks, kSortWarps * kWarp, 0, stream>>>(
      idx.data_ptr<int64_t>(), M, tiles, tile_rows, count.data_ptr<int>(), nullptr, nullptr, nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const at::Tensor ends = at::cumsum(count, 0, at::kInt);
  cluster_starts_kernel<<<(K + 256) / 256, 256, 0, stream>>>(ends.data_ptr<int>(), K, tiles, start.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  sort_tiles_kernel<true><<<sort_blocks, kSortWarps * kWarp, 0, stream>>>(
      idx.data_ptr<int64_t>(), M, tiles, tile_rows, count.data_ptr<int>(), ends.data_ptr<int>(),
      keys.data_ptr<int>(), perm.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const int64_t chunks = (M + kChunk - 1) / kChunk, groups = (chunks + kGroup - 1) / kGroup;
  const int64_t column_blocks = (D + kColumns - 1) / kColumns;
  at::Tensor sums = at::empty({K, D}, f32);
  at::Tensor counts = at::empty({K}, f32);
  at::Tensor head = at::empty({chunks, D}, f32);
  at::Tensor tail = at::empty({chunks, D}, f32);
  at::Tensor group = at::empty({groups, D}, f32);
  CLUSIAM_DISPATCH_FLOAT_TYPES(z.scalar_type(), "pool_chunks", [&] {
    pool_chunks_kernel<scalar_t><<<dim3(chunks, column_blocks), kColumns, 0, stream>>>(
        z.data_ptr<scalar_t>(), inv_norm.data_ptr<float>(), keys.data_ptr<int>(), perm.data_ptr<int>(),
        start.data_ptr<int>(), M, D, sums.data_ptr<float>(), head.data_ptr<float>(), tail.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  group_sums_kernel<<<dim3(groups, column_blocks), kColumns, 0, stream>>>(
      keys.data_ptr<int>(), start.data_ptr<int>(), head.data_ptr<float>(), D, group.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  pool_spans_kernel<<<dim3(K, column_blocks), kColumns, 0, stream>>>(
      keys.data_ptr<int>(), start.data_ptr<int>(), head.data_ptr<float>(), tail.data_ptr<float>(),
      group.data_ptr<float>(), D, sums.data_ptr<float>(), counts.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {y, idx, inv_norm, sums, counts};
}

// Backward. For float16/bfloat16 z the product runs in z's type with float32
// accumulation and output, without a float32 copy of z: grad_sums g is scaled
// by a power of two s (max |s g| in [0.5, 1): no float16 underflow) and split
// in z's type, hi = low(s g), lo = low(s g - hi); hi + lo is s g to within
// 2^-16 (bf16) or 2^-22 (fp16) of max |s g|. Then a = (z hi^T + z lo^T) / s
// from one (M, 2K) float32 product: exact products, float32 sums.

// The exponent e of max |g| (max |g| = f 2^e, f in [0.5, 1)); 0 for 0, inf, NaN.
__device__ __forceinline__ int scale_exponent(float amax) {
  int e = 0;
  if (isfinite(amax) && amax > 0.f) frexpf(amax, &e);
  return max(-125, min(125, e));
}

template <typename low_t>
__global__ void split_grad_kernel(const float* __restrict__ g, const float* __restrict__ amax, int64_t n,
                                  low_t* __restrict__ hi, low_t* __restrict__ lo) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const float v = g[i] * ldexpf(1.f, -scale_exponent(amax[0]));
  const low_t h = static_cast<low_t>(v);
  hi[i] = h;
  lo[i] = static_cast<low_t>(v - static_cast<float>(h));  // the difference is exact in float32
}

// a is (M, K), or (M, 2K) holding the hi and lo products when amax is given.
template <typename out_t>
__global__ void softmax_backward_kernel(const float* __restrict__ a, const float* __restrict__ amax,
                                        const float* __restrict__ y, const float* __restrict__ inv_norm,
                                        float inv_tau, int64_t K, out_t* __restrict__ out) {
  const int64_t m = blockIdx.x;
  const bool split = amax != nullptr;
  const float* ar = a + m * (split ? 2 * K : K);
  const float* yr = y + m * K;
  const float unscale = split ? ldexpf(1.f, scale_exponent(amax[0])) : 1.f;
  auto a_at = [&](int64_t k) { return split ? (ar[k] + ar[K + k]) * unscale : ar[k]; };
  float dot = 0.f;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) dot += yr[k] * a_at(k);
  dot = block_sum(dot);
  const float scale = inv_norm[m] * inv_tau;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x)
    out[m * K + k] = static_cast<out_t>(yr[k] * (a_at(k) - dot) * scale);
}

at::Tensor assign_pool_backward_cuda(const at::Tensor& grad_sums_in, const at::Tensor& z, const at::Tensor& y_in,
                                     const at::Tensor& inv_norm_in, double tau, at::ScalarType dtype) {
  check_assign_backward(grad_sums_in, z, y_in, inv_norm_in);
  const c10::cuda::CUDAGuard guard(z.device());
  const int64_t M = y_in.size(0), K = y_in.size(1), D = z.size(1);
  TORCH_CHECK(M <= INT32_MAX, "clusiam::assign_pool_backward: too many rows for the CUDA kernel");
  const at::Tensor grad_sums = grad_sums_in.to(at::kFloat).contiguous();
  const at::Tensor y = y_in.contiguous();
  const at::Tensor inv_norm = inv_norm_in.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  const at::ScalarType zt = z.scalar_type();
  at::Tensor a, amax;
  if (zt == at::kHalf || zt == at::kBFloat16) {
    amax = at::amax(at::abs(grad_sums));
    at::Tensor parts = at::empty({2 * K, D}, grad_sums.options().dtype(zt));  // rows: hi, then lo
    CLUSIAM_DISPATCH_LOW_TYPES(zt, "split_grad", [&] {
      split_grad_kernel<scalar_t><<<(K * D + 255) / 256, 256, 0, stream>>>(
          grad_sums.data_ptr<float>(), amax.data_ptr<float>(), K * D, parts.data_ptr<scalar_t>(),
          parts.data_ptr<scalar_t>() + K * D);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    a = at::mm(z, parts.t(), at::kFloat).contiguous();
  } else {
    a = at::mm(z.to(at::kFloat), grad_sums.t()).contiguous();
  }
  // Other output types (direct calls only): computed in float32 and converted, as on the CPU.
  const bool native = dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16;
  at::Tensor out = at::empty({M, K}, y.options().dtype(native ? dtype : at::kFloat));
  const float inv_tau = 1.f / static_cast<float>(tau);  // as the CPU kernel
  CLUSIAM_DISPATCH_FLOAT_TYPES(out.scalar_type(), "softmax_backward", [&] {
    softmax_backward_kernel<scalar_t><<<M, threads_for(K), 0, stream>>>(
        a.data_ptr<float>(), amax.defined() ? amax.data_ptr<float>() : nullptr, y.data_ptr<float>(),
        inv_norm.data_ptr<float>(), inv_tau, K, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return native ? out : out.to(dtype);
}

}  // namespace

TORCH_LIBRARY_IMPL(clusiam, CUDA, m) {
  m.impl("assign_pool", &assign_pool_cuda);
  m.impl("assign_pool_backward", &assign_pool_backward_cuda);
}

}  // namespace clusiam
