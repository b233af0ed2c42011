// CPU kernels of clusiam::assign_pool and its backward (CUDA: cuda/assign_pool.cu).
//
// Forward: one parallel pass over the rows of logits (Gumbel softmax, first
// argmax), then one over z (norms and cluster sums, see norm_and_pool).
// O(M K + M D); no one-hot matrix; deterministic whatever the thread count.
// Half inputs are upcast to float32 first.
//
// Backward: one BLAS product restricted to the non-empty clusters (the other
// rows of grad_sums are zero), then the softmax backward row by row.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cmath>
#include <algorithm>
#include <limits>
#include <vector>

#include "../checks.h"
#include "vec_ops.h"

namespace clusiam {
namespace {

// Gumbel(0, 1) noise g = -log(E), E ~ Exp(1) from torch's CPU generator, E
// floored at the smallest normal float (as clusiam_fast.noise.sample_gumbel).
at::Tensor sample_gumbel(int64_t M, int64_t K, const at::TensorOptions& options) {
  return at::empty({M, K}, options).exponential_().clamp_min_(std::numeric_limits<float>::min()).log_().neg_();
}

// One pass over z: inv_norm[m] = 1 / max(||z[m]||, eps), sums[k] = sum of
// z[m] * inv_norm[m] over the rows of cluster k, counts[k] = their number.
// Rows are ordered by cluster (stable counting sort) and cut into pieces of at
// most kPiece rows; each piece is summed in row order into its cluster's row
// of sums (or a partial row when the cluster has several pieces, added up in
// piece order afterwards). Each row of z is read once (its second use, the
// scaled add, hits L1). The order of every sum is fixed: deterministic.
void norm_and_pool(const float* zp, const int64_t* ip, float eps, int64_t M, int64_t D, int64_t K, float* np,
                   float* sp, float* cp) {
  constexpr int64_t kPiece = 64;
  std::vector<int64_t> start(K + 1, 0), rows(M), piece_start(K + 1, 0);
  for (int64_t m = 0; m < M; ++m) ++start[ip[m] + 1];
  for (int64_t k = 0; k < K; ++k) {
    start[k + 1] += start[k];
    const int64_t n = start[k + 1] - start[k];
    cp[k] = static_cast<float>(n);
    piece_start[k + 1] = piece_start[k] + (n + kPiece - 1) / kPiece;
  }
  std::vector<int64_t> next(start.begin(), start.end() - 1);
  for (int64_t m = 0; m < M; ++m) rows[next[ip[m]]++] = m;  // stable: row order within a cluster
  std::vector<int64_t> piece_cluster(piece_start[K]);
  for (int64_t k = 0; k < K; ++k)
    std::fill(piece_cluster.begin() + piece_start[k], piece_cluster.begin() + piece_start[k + 1], k);
  const bool split = piece_start[K] > 0 && piece_start[K] > K - std::count(cp, cp + K, 0.f);
  std::vector<float> partial(split ? piece_start[K] * D : 0);
  const VecOps& ops = vec_ops();

  at::parallel_for(0, piece_start[K], 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t k = piece_cluster[p], j = p - piece_start[k];
      const bool alone = piece_start[k + 1] - piece_start[k] == 1;
      float* out = alone ? sp + k * D : partial.data() + p * D;
      const int64_t lo = start[k] + j * kPiece, hi = std::min(lo + kPiece, start[k + 1]);
      for (int64_t r = lo; r < hi; ++r) {
        const int64_t m = rows[r];
        const float* zr = zp + m * D;
        np[m] = 1.f / std::max(std::sqrt(ops.sum_squares(zr, D)), eps);
        (r == lo ? ops.scale_into : ops.add_scaled)(out, zr, np[m], D);
      }
    }
  });
  at::parallel_for(0, K, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      float* out = sp + k * D;
      const int64_t p0 = piece_start[k], p1 = piece_start[k + 1];
      if (p1 == p0) {
        std::fill(out, out + D, 0.f);  // empty cluster
      } else if (p1 - p0 > 1) {
        ops.scale_into(out, partial.data() + p0 * D, 1.f, D);
        for (int64_t p = p0 + 1; p < p1; ++p) ops.add_scaled(out, partial.data() + p * D, 1.f, D);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> assign_pool_cpu(
    const at::Tensor& z_in, const at::Tensor& logits_in, const std::optional<at::Tensor>& gumbel, double tau,
    double eps) {
  check_assign_inputs(z_in, logits_in, gumbel, tau);
  const at::Tensor z = z_in.to(at::kFloat).contiguous();
  const at::Tensor logits = logits_in.to(at::kFloat).contiguous();
  const int64_t M = z.size(0), D = z.size(1), K = logits.size(1);
  const auto f32 = z.options();
  const at::Tensor noise = gumbel.has_value() ? gumbel->to(at::kFloat).contiguous() : sample_gumbel(M, K, f32);

  at::Tensor y = at::empty({M, K}, f32);
  at::Tensor idx = at::empty({M}, f32.dtype(at::kLong));
  at::Tensor inv_norm = at::empty({M}, f32);
  at::Tensor sums = at::empty({K, D}, f32);
  at::Tensor counts = at::empty({K}, f32);
  const float* zp = z.data_ptr<float>();
  const float* lp = logits.data_ptr<float>();
  const float* gp = noise.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  int64_t* ip = idx.data_ptr<int64_t>();
  float* np = inv_norm.data_ptr<float>();
  float* sp = sums.data_ptr<float>();
  float* cp = counts.data_ptr<float>();
  const VecOps& ops = vec_ops();
  const float tau_f = static_cast<float>(tau), eps_f = static_cast<float>(eps);

  at::parallel_for(0, M, 8, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) ip[m] = ops.softmax_argmax(lp + m * K, gp + m * K, tau_f, K, yp + m * K);
  });
  norm_and_pool(zp, ip, eps_f, M, D, K, np, sp, cp);
  return {y, idx, inv_norm, sums, counts};
}

// a = z @ grad_sums^T, computing only the columns of non-empty clusters (rows of
// grad_sums that are not all zero); the others are zero.
at::Tensor cluster_products(const at::Tensor& z, const at::Tensor& grad_sums) {
  const int64_t K = grad_sums.size(0), D = grad_sums.size(1);
  const float* gp = grad_sums.data_ptr<float>();
  std::vector<int64_t> active;
  for (int64_t k = 0; k < K; ++k) {
    const float* row = gp + k * D;
    if (std::any_of(row, row + D, [](float v) { return v != 0.f; })) active.push_back(k);
  }
  if (static_cast<double>(active.size()) > 0.9 * K) return at::mm(z, grad_sums.t()).contiguous();
  at::Tensor a = at::zeros({z.size(0), K}, z.options());
  if (active.empty()) return a;
  const at::Tensor index = at::empty({static_cast<int64_t>(active.size())}, z.options().dtype(at::kLong));
  std::copy(active.begin(), active.end(), index.data_ptr<int64_t>());
  a.index_copy_(1, index, at::mm(z, grad_sums.index_select(0, index).t()));
  return a;
}

at::Tensor assign_pool_backward_cpu(const at::Tensor& grad_sums_in, const at::Tensor& z_in, const at::Tensor& y_in,
                                    const at::Tensor& inv_norm_in, double tau, at::ScalarType dtype) {
  check_assign_backward(grad_sums_in, z_in, y_in, inv_norm_in);
  const at::Tensor z = z_in.to(at::kFloat).contiguous();
  const at::Tensor grad_sums = grad_sums_in.to(at::kFloat).contiguous();
  const at::Tensor y = y_in.contiguous();
  const at::Tensor inv_norm = inv_norm_in.contiguous();
  const int64_t M = y.size(0), K = y.size(1);
  at::Tensor a = cluster_products(z, grad_sums);  // a fresh (M, K) buffer: the result is written in place
  const float* ap = a.data_ptr<float>();
  const float* yp = y.data_ptr<float>();
  const float* np = inv_norm.data_ptr<float>();
  float* op = a.data_ptr<float>();
  const float inv_tau = 1.f / static_cast<float>(tau);
  const VecOps& ops = vec_ops();
  at::parallel_for(0, M, 16, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) ops.softmax_backward(ap + m * K, yp + m * K, np[m] * inv_tau, K, op + m * K);
  });
  return dtype == at::kFloat ? a : a.to(dtype);
}

}  // namespace

TORCH_LIBRARY_IMPL(clusiam, CPU, m) {
  m.impl("assign_pool", &assign_pool_cpu);
  m.impl("assign_pool_backward", &assign_pool_backward_cpu);
}

}  // namespace clusiam
