// CUDA kernel of clusiam::assign_pool_backward: one cuBLAS product
// a = z @ grad_sums^T, then one block per row for the softmax backward
// dlogits = y * (a' - sum_j y_j a'_j) / tau with a' = a / ||z[m]||.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../checks.h"
#include "common.cuh"

namespace clusiam {
namespace {

template <typename out_t>
__global__ void softmax_backward_kernel(const float* __restrict__ a, const float* __restrict__ y,
                                        const float* __restrict__ inv_norm, float inv_tau, int64_t K,
                                        out_t* __restrict__ out) {
  const int64_t m = blockIdx.x;
  const float* ar = a + m * K;
  const float* yr = y + m * K;
  float dot = 0.f;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) dot += yr[k] * ar[k];
  dot = block_sum(dot);
  const float scale = inv_norm[m] * inv_tau;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x)
    out[m * K + k] = static_cast<out_t>(yr[k] * (ar[k] - dot) * scale);
}

at::Tensor assign_pool_backward_cuda(const at::Tensor& grad_sums, const at::Tensor& z, const at::Tensor& y_in,
                                     const at::Tensor& inv_norm_in, double tau, at::ScalarType dtype) {
  check_assign_backward(grad_sums, z, y_in, inv_norm_in);
  const c10::cuda::CUDAGuard guard(z.device());
  const int64_t M = y_in.size(0), K = y_in.size(1);
  TORCH_CHECK(M <= INT32_MAX, "clusiam::assign_pool_backward: too many rows for the CUDA kernel");
  const at::Tensor a = at::mm(z.to(at::kFloat), grad_sums.to(at::kFloat).t()).contiguous();
  const at::Tensor y = y_in.contiguous();
  const at::Tensor inv_norm = inv_norm_in.contiguous();
  at::Tensor out = at::empty({M, K}, y.options().dtype(dtype));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "softmax_backward", [&] {
    softmax_backward_kernel<scalar_t><<<M, threads_for(K), 0, stream>>>(
        a.data_ptr<float>(), y.data_ptr<float>(), inv_norm.data_ptr<float>(), static_cast<float>(1.0 / tau), K,
        out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(clusiam, CUDA, m) { m.impl("assign_pool_backward", &assign_pool_backward_cuda); }

}  // namespace clusiam
