// CPU kernels of clusiam::assign_pool and its backward.
//
// Forward: one parallel pass over rows (Gumbel softmax, first argmax, 1/||z||),
// then one pass over z adding each normalised row into its cluster's sum,
// parallel over columns so each sum is accumulated in row order whatever the
// thread count (deterministic). O(M K + M D); no one-hot matrix.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "../checks.h"

namespace clusiam {
namespace {

constexpr int64_t kLanes = 16;  // independent partial sums: lets the compiler vectorise
// Floor of Exp(1) draws, so that g = -log(E) stays finite (the reference does the same).
constexpr float kTiny = std::numeric_limits<float>::min();

template <typename scalar_t>
float row_sumsq(const scalar_t* row, int64_t n) {
  float acc[kLanes] = {0};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t j = 0; j < kLanes; ++j) {
      float v = static_cast<float>(row[i + j]);
      acc[j] += v * v;
    }
  float total = 0;
  for (; i < n; ++i) {
    float v = static_cast<float>(row[i]);
    total += v * v;
  }
  for (int64_t j = 0; j < kLanes; ++j) total += acc[j];
  return total;
}

// y = softmax((logits + noise) / tau); returns the first index of the maximum of y.
template <typename scalar_t>
int64_t softmax_argmax(const scalar_t* logits, const float* noise, bool noise_is_exponential,
                       float tau, int64_t K, float* y) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t k = 0; k < K; ++k) {
    float g = noise == nullptr ? 0.f : (noise_is_exponential ? -std::log(std::max(noise[k], kTiny)) : noise[k]);
    float x = (static_cast<float>(logits[k]) + g) / tau;
    y[k] = x;
    mx = std::max(mx, x);
  }
  float sum = 0;
  for (int64_t k = 0; k < K; ++k) {
    y[k] = std::exp(y[k] - mx);
    sum += y[k];
  }
  int64_t best = 0;
  float best_value = -1.f;
  for (int64_t k = 0; k < K; ++k) {
    y[k] = y[k] / sum;
    if (y[k] > best_value) {
      best_value = y[k];
      best = k;
    }
  }
  return best;
}

// Pass 1, over rows: y, idx.
template <typename logit_t>
void assign_rows(const at::Tensor& logits, const float* noise, bool noise_is_exponential, float tau,
                 at::Tensor& y, at::Tensor& idx) {
  const int64_t M = logits.size(0), K = logits.size(1);
  const logit_t* lp = logits.data_ptr<logit_t>();
  float* yp = y.data_ptr<float>();
  int64_t* ip = idx.data_ptr<int64_t>();
  at::parallel_for(0, M, 16, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m)
      ip[m] = softmax_argmax(lp + m * K, noise ? noise + m * K : nullptr, noise_is_exponential, tau,
                             K, yp + m * K);
  });
}

// Pass 2, over z: inv_norm, then the cluster sums and counts.
template <typename z_t>
void pool_rows(const at::Tensor& z, const at::Tensor& idx, float eps, at::Tensor& inv_norm,
               at::Tensor& sums, at::Tensor& counts) {
  const int64_t M = z.size(0), D = z.size(1);
  const z_t* zp = z.data_ptr<z_t>();
  const int64_t* ip = idx.data_ptr<int64_t>();
  float* np = inv_norm.data_ptr<float>();
  float* sp = sums.data_ptr<float>();
  float* cp = counts.data_ptr<float>();
  at::parallel_for(0, M, 16, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m)
      np[m] = 1.f / std::max(std::sqrt(row_sumsq(zp + m * D, D)), eps);
  });
  for (int64_t m = 0; m < M; ++m) cp[ip[m]] += 1.f;
  at::parallel_for(0, D, 64, [&](int64_t d0, int64_t d1) {
    for (int64_t m = 0; m < M; ++m) {
      const z_t* zr = zp + m * D;
      float* out = sp + ip[m] * D;
      const float s = np[m];
      for (int64_t d = d0; d < d1; ++d) out[d] += static_cast<float>(zr[d]) * s;
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> assign_pool_cpu(
    const at::Tensor& z_in, const at::Tensor& logits_in, const std::optional<at::Tensor>& gumbel,
    double tau, double eps) {
  check_assign_inputs(z_in, logits_in, gumbel, tau);
  const at::Tensor z = z_in.contiguous();
  const at::Tensor logits = logits_in.contiguous();
  const int64_t M = z.size(0), D = z.size(1), K = logits.size(1);
  const auto f32 = z.options().dtype(at::kFloat);

  // Without noise given, draw E ~ Exp(1) from torch's CPU generator; g = -log(E).
  at::Tensor noise = gumbel.has_value() ? gumbel->to(at::kFloat).contiguous()
                                        : at::empty({M, K}, f32).exponential_();
  at::Tensor y = at::empty({M, K}, f32);
  at::Tensor idx = at::empty({M}, z.options().dtype(at::kLong));
  at::Tensor inv_norm = at::empty({M}, f32);
  at::Tensor sums = at::zeros({K, D}, f32);
  at::Tensor counts = at::zeros({K}, f32);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "assign_rows", [&] {
    assign_rows<scalar_t>(logits, noise.data_ptr<float>(), !gumbel.has_value(), static_cast<float>(tau),
                          y, idx);
  });
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "pool_rows", [&] {
    pool_rows<scalar_t>(z, idx, static_cast<float>(eps), inv_norm, sums, counts);
  });
  return {y, idx, inv_norm, sums, counts};
}

at::Tensor assign_pool_backward_cpu(const at::Tensor& grad_sums, const at::Tensor& z,
                                    const at::Tensor& y_in, const at::Tensor& inv_norm_in, double tau,
                                    at::ScalarType dtype) {
  const int64_t M = y_in.size(0), K = y_in.size(1);
  // The one O(M K D) product: a[m, k] = z[m] . grad_sums[k], through BLAS.
  const at::Tensor a = at::mm(z.to(at::kFloat), grad_sums.to(at::kFloat).t()).contiguous();
  const at::Tensor y = y_in.contiguous();
  const at::Tensor inv_norm = inv_norm_in.contiguous();
  at::Tensor out = at::empty({M, K}, y.options().dtype(dtype));
  const float* ap = a.data_ptr<float>();
  const float* yp = y.data_ptr<float>();
  const float* np = inv_norm.data_ptr<float>();
  const float inv_tau = 1.f / static_cast<float>(tau);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "assign_pool_backward_cpu", [&] {
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, M, 64, [&](int64_t begin, int64_t end) {
      for (int64_t m = begin; m < end; ++m) {
        const float* ar = ap + m * K;
        const float* yr = yp + m * K;
        float dot = 0;
        for (int64_t k = 0; k < K; ++k) dot += yr[k] * ar[k];
        const float scale = np[m] * inv_tau;
        for (int64_t k = 0; k < K; ++k)
          op[m * K + k] = static_cast<scalar_t>(yr[k] * (ar[k] - dot) * scale);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(clusiam, CPU, m) {
  m.impl("assign_pool", &assign_pool_cpu);
  m.impl("assign_pool_backward", &assign_pool_backward_cpu);
}

}  // namespace clusiam
