// CUDA kernels of clusiam::centroid_loss and its backward, O(K D) (CPU: cpu/centroid_loss.cpp):
//   normalise:  one block per cluster: chat[k] = sums[k] / ||sums[k]||, ||chat[k]||^2
//   csum:       C[d] = sum_k chat[k, d]: blocks of 8 columns (256 blocks at D = 2048),
//               32 row groups each, combined in order
//   loss:       one block: (||C||^2 - sum_k ||chat[k]||^2) / (n (n - 1)), 1.0 when n < 2
// The loss stays on the device (no host sync).
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../checks.h"
#include "common.cuh"

namespace clusiam {
namespace {

constexpr int kCsumColumns = 8;
constexpr int kRowGroups = 32;

__global__ void normalise_kernel(const float* __restrict__ sums, const float* __restrict__ counts, int64_t D,
                                 float eps, float* __restrict__ chat, float* __restrict__ inv_snorm,
                                 float* __restrict__ sqnorm) {
  const int64_t k = blockIdx.x;
  const float* s = sums + k * D;
  float ss = 0.f;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) ss += s[d] * s[d];
  ss = block_sum(ss);
  const float inv = counts[k] > 0.f ? 1.f / fmaxf(sqrtf(ss), eps) : 0.f;
  float hh = 0.f;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    const float h = s[d] * inv;
    chat[k * D + d] = h;
    hh += h * h;
  }
  hh = block_sum(hh);
  if (threadIdx.x == 0) {
    inv_snorm[k] = inv;
    sqnorm[k] = hh;
  }
}

__global__ void csum_kernel(const float* __restrict__ chat, int64_t K, int64_t D, float* __restrict__ csum) {
  __shared__ float partial[kRowGroups][kCsumColumns];
  const int64_t d = blockIdx.x * static_cast<int64_t>(kCsumColumns) + threadIdx.x;
  float acc = 0.f;
  if (d < D)
    for (int64_t k = threadIdx.y; k < K; k += kRowGroups) acc += chat[k * D + d];
  partial[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && d < D) {
    float total = 0.f;
    for (int g = 0; g < kRowGroups; ++g) total += partial[g][threadIdx.x];
    csum[d] = total;
  }
}

__device__ float active_clusters(const float* counts, int64_t K) {
  float n = 0.f;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) n += counts[k] > 0.f ? 1.f : 0.f;
  return block_sum(n);
}

__global__ void loss_kernel(const float* __restrict__ csum, const float* __restrict__ sqnorm,
                            const float* __restrict__ counts, int64_t K, int64_t D, float* __restrict__ loss) {
  double cc = 0.0, diag = 0.0;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) cc += double(csum[d]) * csum[d];
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) diag += sqnorm[k];
  cc = block_sum(cc);
  diag = block_sum(diag);
  const double n = active_clusters(counts, K);
  if (threadIdx.x == 0) loss[0] = n >= 2.0 ? static_cast<float>((cc - diag) / (n * (n - 1.0))) : 1.f;
}

__global__ void active_count_kernel(const float* __restrict__ counts, int64_t K, float* __restrict__ n) {
  const float total = active_clusters(counts, K);
  if (threadIdx.x == 0) n[0] = total;
}

__global__ void centroid_backward_kernel(const float* __restrict__ grad, const float* __restrict__ chat,
                                         const float* __restrict__ inv_snorm, const float* __restrict__ csum,
                                         const float* __restrict__ active, int64_t D, float* __restrict__ out) {
  const int64_t k = blockIdx.x;
  const float n = active[0];
  const float* h = chat + k * D;
  float* o = out + k * D;
  if (n < 2.f || inv_snorm[k] == 0.f) {  // constant loss, or an empty cluster
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) o[d] = 0.f;
    return;
  }
  float dot = 0.f;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) dot += h[d] * csum[d];
  dot = block_sum(dot);
  const float scale = 2.f * grad[0] / (n * (n - 1.f)) * inv_snorm[k];
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) o[d] = scale * (csum[d] - h[d] * dot);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> centroid_loss_cuda(const at::Tensor& sums_in,
                                                                              const at::Tensor& counts_in,
                                                                              double eps) {
  check_sums(sums_in, counts_in);
  TORCH_CHECK(sums_in.size(0) <= INT32_MAX, "clusiam::centroid_loss: too many clusters for the CUDA kernels");
  const c10::cuda::CUDAGuard guard(sums_in.device());
  const at::Tensor sums = sums_in.contiguous();
  const at::Tensor counts = counts_in.contiguous();
  const int64_t K = sums.size(0), D = sums.size(1);
  const auto f32 = sums.options();
  at::Tensor chat = at::empty({K, D}, f32), inv_snorm = at::empty({K}, f32), sqnorm = at::empty({K}, f32);
  at::Tensor csum = at::empty({D}, f32), loss = at::empty({}, f32);
  auto stream = c10::cuda::getCurrentCUDAStream();
  normalise_kernel<<<K, threads_for(D), 0, stream>>>(sums.data_ptr<float>(), counts.data_ptr<float>(), D,
                                                     static_cast<float>(eps), chat.data_ptr<float>(),
                                                     inv_snorm.data_ptr<float>(), sqnorm.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  csum_kernel<<<(D + kCsumColumns - 1) / kCsumColumns, dim3(kCsumColumns, kRowGroups), 0, stream>>>(
      chat.data_ptr<float>(), K, D, csum.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  loss_kernel<<<1, 256, 0, stream>>>(csum.data_ptr<float>(), sqnorm.data_ptr<float>(), counts.data_ptr<float>(),
                                     K, D, loss.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {loss, chat, inv_snorm, csum};
}

at::Tensor centroid_loss_backward_cuda(const at::Tensor& grad, const at::Tensor& chat_in,
                                       const at::Tensor& inv_snorm_in, const at::Tensor& csum_in,
                                       const at::Tensor& counts_in) {
  check_centroid_backward(grad, chat_in, inv_snorm_in, csum_in, counts_in);
  const c10::cuda::CUDAGuard guard(chat_in.device());
  const at::Tensor chat = chat_in.contiguous(), inv_snorm = inv_snorm_in.contiguous();
  const at::Tensor csum = csum_in.contiguous(), counts = counts_in.contiguous();
  const at::Tensor g = grad.to(at::kFloat).contiguous();
  const int64_t K = chat.size(0), D = chat.size(1);
  at::Tensor out = at::empty({K, D}, chat.options());
  at::Tensor active = at::empty({1}, chat.options());
  auto stream = c10::cuda::getCurrentCUDAStream();
  active_count_kernel<<<1, 256, 0, stream>>>(counts.data_ptr<float>(), K, active.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  centroid_backward_kernel<<<K, threads_for(D), 0, stream>>>(g.data_ptr<float>(), chat.data_ptr<float>(),
                                                             inv_snorm.data_ptr<float>(), csum.data_ptr<float>(),
                                                             active.data_ptr<float>(), D, out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(clusiam, CUDA, m) {
  m.impl("centroid_loss", &centroid_loss_cuda);
  m.impl("centroid_loss_backward", &centroid_loss_backward_cuda);
}

}  // namespace clusiam
