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
}

}  // namespace clusiam
