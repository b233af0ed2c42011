// CPU kernels of clusiam::centroid_loss and its backward (CUDA: cuda/centroid_loss.cu):
// O(K D), no K x K matrix.
//
// With chat[k] = sums[k] / ||sums[k]|| over the n non-empty clusters and
// C = sum of chat, the mean off-diagonal cosine is
//   (||C||^2 - sum_k ||chat[k]||^2) / (n (n - 1))      (1.0 when n < 2).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "../checks.h"
#include "vec_ops.h"

namespace clusiam {
namespace {

int64_t count_active(const float* counts, int64_t K) {
  int64_t n = 0;
  for (int64_t k = 0; k < K; ++k) n += counts[k] > 0.f;
  return n;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> centroid_loss_cpu(const at::Tensor& sums_in,
                                                                             const at::Tensor& counts_in, double eps) {
  check_sums(sums_in, counts_in);
  const at::Tensor sums = sums_in.contiguous();
  const at::Tensor counts = counts_in.contiguous();
  const int64_t K = sums.size(0), D = sums.size(1);
  const auto f32 = sums.options();
  at::Tensor chat = at::empty({K, D}, f32);
  at::Tensor inv_snorm = at::empty({K}, f32);
  at::Tensor csum = at::empty({D}, f32);
  at::Tensor sqnorm = at::empty({K}, f32);
  const float* sp = sums.data_ptr<float>();
  const float* cp = counts.data_ptr<float>();
  float* hp = chat.data_ptr<float>();
  float* ip = inv_snorm.data_ptr<float>();
  float* qp = sqnorm.data_ptr<float>();
  float* Cp = csum.data_ptr<float>();
  const VecOps& ops = vec_ops();

  at::parallel_for(0, K, 4, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const float norm = std::sqrt(ops.sum_squares(sp + k * D, D));
      ip[k] = cp[k] > 0.f ? 1.f / std::max(norm, static_cast<float>(eps)) : 0.f;
      ops.scale_into(hp + k * D, sp + k * D, ip[k], D);
      qp[k] = ops.sum_squares(hp + k * D, D);
    }
  });
  // C = sum of the chat rows, in k order for every column.
  at::parallel_for(0, D, 256, [&](int64_t d0, int64_t d1) {
    ops.scale_into(Cp + d0, hp + d0, 1.f, d1 - d0);
    for (int64_t k = 1; k < K; ++k) ops.add_scaled(Cp + d0, hp + k * D + d0, 1.f, d1 - d0);
  });

  const int64_t n = count_active(cp, K);
  double total = 1.0;
  if (n >= 2) {
    double diag = 0;
    for (int64_t k = 0; k < K; ++k) diag += qp[k];
    total = (static_cast<double>(ops.sum_squares(Cp, D)) - diag) / (double(n) * double(n - 1));
  }
  at::Tensor loss = at::empty({}, f32);
  loss.fill_(total);
  return {loss, chat, inv_snorm, csum};
}

at::Tensor centroid_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& chat_in,
                                      const at::Tensor& inv_snorm_in, const at::Tensor& csum_in,
                                      const at::Tensor& counts_in) {
  check_centroid_backward(grad, chat_in, inv_snorm_in, csum_in, counts_in);
  const at::Tensor chat = chat_in.contiguous();
  const at::Tensor inv_snorm = inv_snorm_in.contiguous();
  const at::Tensor csum = csum_in.contiguous();
  const at::Tensor counts = counts_in.contiguous();
  const int64_t K = chat.size(0), D = chat.size(1);
  const int64_t n = count_active(counts.data_ptr<float>(), K);
  if (n < 2) return at::zeros({K, D}, chat.options());  // the loss is the constant 1.0
  at::Tensor out = at::empty({K, D}, chat.options());
  const float coef = 2.f * grad.item<float>() / (float(n) * float(n - 1));
  const float* hp = chat.data_ptr<float>();
  const float* ip = inv_snorm.data_ptr<float>();
  const float* Cp = csum.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const VecOps& ops = vec_ops();
  at::parallel_for(0, K, 4, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      if (ip[k] == 0.f) {  // empty cluster: no gradient
        std::fill(op + k * D, op + (k + 1) * D, 0.f);
        continue;
      }
      const float* h = hp + k * D;
      ops.project_out(op + k * D, Cp, h, ops.dot(h, Cp, D), coef * ip[k], D);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(clusiam, CPU, m) {
  m.impl("centroid_loss", &centroid_loss_cpu);
  m.impl("centroid_loss_backward", &centroid_loss_backward_cpu);
}

}  // namespace clusiam
