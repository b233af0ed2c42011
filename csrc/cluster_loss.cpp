// Schemas of the CluSiam cluster-loss ops (namespace `clusiam`).
//
// The loss is split where data parallelism needs it: `assign_pool` makes the
// per-cluster sums of normalised rows (all-reduced across ranks when training
// on several processes), `centroid_loss` turns sums into the loss. Each has a
// backward op; the autograd formulas and fake kernels live in
// clusiam_fast/ops/_registration.py. Kernels, one file per op with its
// backward: cpu/assign_pool.cpp, cpu/centroid_loss.cpp and cuda/assign_pool.cu,
// cuda/centroid_loss.cu.
#include <torch/library.h>

TORCH_LIBRARY(clusiam, m) {
  // z (M, D), logits (M, K), gumbel (M, K) or None (sampled from torch's
  // generator). Returns y = softmax((logits + gumbel) / tau) (M, K) float32,
  // idx = argmax (M) int64, inv_norm = 1 / max(||z[m]||, eps) (M) float32,
  // sums[k] = sum of z[m] * inv_norm[m] over idx[m] == k (K, D) float32 and
  // counts (K) float32.
  m.def(
      "assign_pool(Tensor z, Tensor logits, Tensor? gumbel, float tau, float eps)"
      " -> (Tensor y, Tensor idx, Tensor inv_norm, Tensor sums, Tensor counts)",
      {at::Tag::nondeterministic_seeded});
  // Gradient of the logits from the gradient of `sums` (straight-through):
  // dlogits = y * (a - sum_j y_j a_j) / tau with a = inv_norm * (z @ grad_sums^T).
  m.def(
      "assign_pool_backward(Tensor grad_sums, Tensor z, Tensor y, Tensor inv_norm, float tau,"
      " ScalarType dtype) -> Tensor");
  // loss () float32, chat = sums / ||sums|| (zero rows for empty clusters),
  // inv_snorm (K) and csum = sum of the chat rows (D).
  m.def(
      "centroid_loss(Tensor sums, Tensor counts, float eps)"
      " -> (Tensor loss, Tensor chat, Tensor inv_snorm, Tensor csum)");
  // grad_sums[k] = coef * (C - chat[k] (chat[k] . C)) * inv_snorm[k] for
  // non-empty k, coef = 2 grad / (n (n - 1)), n = number of non-empty clusters.
  m.def(
      "centroid_loss_backward(Tensor grad, Tensor chat, Tensor inv_snorm, Tensor csum,"
      " Tensor counts) -> Tensor");
}
