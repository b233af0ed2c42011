// CUDA kernels of clusiam::assign_pool.
//
// 1. rows:   one block per row: Gumbel softmax (noise drawn in-kernel with
//            Philox when none is given), first argmax.
// 2. norms:  one block per row: 1 / max(||z[m]||, eps).
// 3. pool:   rows sorted by cluster (stable), cut into chunks of kChunk rows;
//            each chunk sums its clusters' rows in order, clusters that span
//            chunks are finished by a second kernel adding the chunk partials
//            in order. Deterministic, no atomics, no host sync.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/cuda/PhiloxUtils.cuh>
#include <ATen/ops/empty.h>
#include <ATen/ops/sort.h>
#include <c10/cuda/CUDAGuard.h>
#include <curand_kernel.h>
#include <torch/library.h>

#include <mutex>

#include "../checks.h"
#include "common.cuh"

namespace clusiam {
namespace {

constexpr int kChunk = 32;       // rows per pooling chunk
constexpr int kColumns = 256;    // columns per pooling block

template <typename logit_t>
__global__ void assign_rows_kernel(const logit_t* __restrict__ logits, const float* __restrict__ gumbel,
                                   at::PhiloxCudaState philox, float tau, int64_t K,
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
    const float x = (static_cast<float>(lrow[k]) + g) / tau;
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
  sum = block_sum(sum);
  float best = -INFINITY;
  int64_t best_k = INT64_MAX;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    const float v = yrow[k] / sum;
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

// start[k] = first sorted position of cluster k (start[K] = M).
__global__ void cluster_starts_kernel(const int64_t* __restrict__ keys, int64_t M, int64_t K,
                                      int64_t* __restrict__ start) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i > M) return;
  const int64_t prev = i == 0 ? -1 : keys[i - 1];
  const int64_t cur = i == M ? K : keys[i];
  for (int64_t k = prev + 1; k <= cur; ++k) start[k] = i;
}

template <typename z_t>
__global__ void pool_chunks_kernel(const z_t* __restrict__ z, const float* __restrict__ inv_norm,
                                   const int64_t* __restrict__ keys, const int64_t* __restrict__ perm,
                                   const int64_t* __restrict__ start, int64_t M, int64_t D,
                                   float* __restrict__ sums, float* __restrict__ head, float* __restrict__ tail) {
  const int64_t d = blockIdx.y * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t j = blockIdx.x, lo = j * kChunk, hi = min(lo + kChunk, M);
  if (d >= D) return;
  const int64_t first = keys[lo];
  auto flush = [&](int64_t k, float acc) {
    if (start[k] >= lo && start[k + 1] <= hi) sums[k * D + d] = acc;  // cluster inside this chunk
    else if (k == first) head[j * D + d] = acc;
    else tail[j * D + d] = acc;
  };
  int64_t cur = first;
  float acc = 0.f;
  for (int64_t p = lo; p < hi; ++p) {
    const int64_t k = keys[p];
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

// Clusters spanning several chunks (and empty ones); also writes the counts.
__global__ void pool_spans_kernel(const int64_t* __restrict__ keys, const int64_t* __restrict__ start,
                                  const float* __restrict__ head, const float* __restrict__ tail, int64_t D,
                                  float* __restrict__ sums, float* __restrict__ counts) {
  const int64_t k = blockIdx.x;
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
  for (int64_t j = js; j <= je; ++j) acc += keys[j * kChunk] == k ? head[j * D + d] : tail[j * D + d];
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "assign_rows", [&] {
    assign_rows_kernel<scalar_t><<<M, row_threads, 0, stream>>>(
        logits.data_ptr<scalar_t>(), gumbel.defined() ? gumbel.data_ptr<float>() : nullptr, philox,
        static_cast<float>(tau), K, y.data_ptr<float>(), idx.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "inv_norm", [&] {
    inv_norm_kernel<scalar_t><<<M, threads_for(D), 0, stream>>>(z.data_ptr<scalar_t>(), D,
                                                                static_cast<float>(eps),
                                                                inv_norm.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });

  auto [keys, perm] = at::sort(idx, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  at::Tensor start = at::empty({K + 1}, idx.options());
  cluster_starts_kernel<<<(M + 256) / 256, 256, 0, stream>>>(keys.data_ptr<int64_t>(), M, K,
                                                            start.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const int64_t chunks = (M + kChunk - 1) / kChunk;
  at::Tensor sums = at::empty({K, D}, f32);
  at::Tensor counts = at::empty({K}, f32);
  at::Tensor head = at::empty({chunks, D}, f32);
  at::Tensor tail = at::empty({chunks, D}, f32);
  const dim3 grid_chunks(chunks, (D + kColumns - 1) / kColumns);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "pool_chunks", [&] {
    pool_chunks_kernel<scalar_t><<<grid_chunks, kColumns, 0, stream>>>(
        z.data_ptr<scalar_t>(), inv_norm.data_ptr<float>(), keys.data_ptr<int64_t>(),
        perm.data_ptr<int64_t>(), start.data_ptr<int64_t>(), M, D, sums.data_ptr<float>(),
        head.data_ptr<float>(), tail.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const dim3 grid_spans(K, (D + kColumns - 1) / kColumns);
  pool_spans_kernel<<<grid_spans, kColumns, 0, stream>>>(keys.data_ptr<int64_t>(), start.data_ptr<int64_t>(),
                                                        head.data_ptr<float>(), tail.data_ptr<float>(), D,
                                                        sums.data_ptr<float>(), counts.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {y, idx, inv_norm, sums, counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(clusiam, CUDA, m) { m.impl("assign_pool", &assign_pool_cuda); }

}  // namespace clusiam
