// Input checks shared by the CPU and CUDA kernels. The Python wrapper checks
// the same things first with friendlier messages; these guard direct op calls.
#pragma once
#include <ATen/core/Tensor.h>
#include <optional>

namespace clusiam {

inline bool is_supported_float(const at::Tensor& t) {
  auto s = t.scalar_type();
  return s == at::kFloat || s == at::kHalf || s == at::kBFloat16;
}

inline void check_assign_inputs(const at::Tensor& z, const at::Tensor& logits,
                                const std::optional<at::Tensor>& gumbel, double tau) {
  TORCH_CHECK(z.dim() == 2, "clusiam::assign_pool: z must be 2-D (M, D), got ", z.dim(), "-D");
  TORCH_CHECK(logits.dim() == 2, "clusiam::assign_pool: logits must be 2-D (M, K), got ",
              logits.dim(), "-D");
  TORCH_CHECK(z.size(0) == logits.size(0), "clusiam::assign_pool: z has ", z.size(0),
              " rows but logits has ", logits.size(0));
  TORCH_CHECK(z.size(0) > 0 && z.size(1) > 0 && logits.size(1) > 0,
              "clusiam::assign_pool: empty input (M, D and K must be positive)");
  TORCH_CHECK(is_supported_float(z) && is_supported_float(logits),
              "clusiam::assign_pool: z and logits must be float32, float16 or bfloat16");
  TORCH_CHECK(z.device() == logits.device(), "clusiam::assign_pool: z and logits on different devices");
  TORCH_CHECK(tau > 0, "clusiam::assign_pool: tau must be > 0, got ", tau);
  if (gumbel.has_value()) {
    TORCH_CHECK(gumbel->sizes() == logits.sizes(), "clusiam::assign_pool: gumbel must have the shape of logits");
    TORCH_CHECK(gumbel->is_floating_point(), "clusiam::assign_pool: gumbel must be floating point");
    TORCH_CHECK(gumbel->device() == logits.device(), "clusiam::assign_pool: gumbel on another device");
  }
}

inline void check_sums(const at::Tensor& sums, const at::Tensor& counts) {
  TORCH_CHECK(sums.dim() == 2 && sums.scalar_type() == at::kFloat,
              "clusiam::centroid_loss: sums must be a float32 (K, D) tensor");
  TORCH_CHECK(counts.dim() == 1 && counts.size(0) == sums.size(0) && counts.scalar_type() == at::kFloat,
              "clusiam::centroid_loss: counts must be a float32 (K,) tensor");
  TORCH_CHECK(sums.device() == counts.device(), "clusiam::centroid_loss: sums and counts on different devices");
  TORCH_CHECK(sums.size(0) > 0 && sums.size(1) > 0, "clusiam::centroid_loss: empty sums");
}

inline void check_assign_backward(const at::Tensor& grad_sums, const at::Tensor& z, const at::Tensor& y,
                                  const at::Tensor& inv_norm) {
  TORCH_CHECK(z.dim() == 2 && y.dim() == 2 && z.size(0) == y.size(0) && z.size(0) > 0,
              "clusiam::assign_pool_backward: z (M, D) and y (M, K) must have the same positive M");
  TORCH_CHECK(grad_sums.dim() == 2 && grad_sums.size(0) == y.size(1) && grad_sums.size(1) == z.size(1),
              "clusiam::assign_pool_backward: grad_sums must be (K, D) = (", y.size(1), ", ", z.size(1), ")");
  TORCH_CHECK(inv_norm.dim() == 1 && inv_norm.size(0) == z.size(0), "clusiam::assign_pool_backward: inv_norm must be (M,)");
  TORCH_CHECK(y.scalar_type() == at::kFloat && inv_norm.scalar_type() == at::kFloat,
              "clusiam::assign_pool_backward: y and inv_norm must be float32");
  TORCH_CHECK(grad_sums.device() == z.device() && y.device() == z.device() && inv_norm.device() == z.device(),
              "clusiam::assign_pool_backward: all inputs must be on one device");
}

inline void check_centroid_backward(const at::Tensor& grad, const at::Tensor& chat, const at::Tensor& inv_snorm,
                                    const at::Tensor& csum, const at::Tensor& counts) {
  TORCH_CHECK(grad.numel() == 1, "clusiam::centroid_loss_backward: grad must hold one value");
  TORCH_CHECK(chat.dim() == 2 && chat.size(0) > 0 && chat.size(1) > 0 && chat.scalar_type() == at::kFloat,
              "clusiam::centroid_loss_backward: chat must be a non-empty float32 (K, D) tensor");
  const int64_t K = chat.size(0), D = chat.size(1);
  TORCH_CHECK(inv_snorm.numel() == K && counts.numel() == K && csum.numel() == D,
              "clusiam::centroid_loss_backward: inv_snorm, counts must be (K,) and csum (D,)");
  TORCH_CHECK(inv_snorm.scalar_type() == at::kFloat && counts.scalar_type() == at::kFloat &&
                  csum.scalar_type() == at::kFloat,
              "clusiam::centroid_loss_backward: inv_snorm, counts and csum must be float32");
  TORCH_CHECK(grad.device() == chat.device() && inv_snorm.device() == chat.device() &&
                  csum.device() == chat.device() && counts.device() == chat.device(),
              "clusiam::centroid_loss_backward: all inputs must be on one device");
}

}  // namespace clusiam
