// C++ test of the CPU kernels, built and run by CMake/ctest: the fused ops
// (through the dispatcher, as any libtorch user would call them) against the
// published computation written with libtorch ops and autograd.
#include <torch/torch.h>

#include <cstdio>
#include <tuple>

namespace {

int failures = 0;

void expect_close(const char* what, const torch::Tensor& actual, const torch::Tensor& expected, double tol) {
  const double err = (actual - expected).abs().max().item<double>();
  const double scale = expected.abs().max().item<double>() + 1e-12;
  const bool ok = err <= tol * scale + 1e-7;
  std::printf("%-40s max error %.3g (scale %.3g) %s\n", what, err, scale, ok ? "ok" : "FAILED");
  failures += !ok;
}

// loss and d loss / d logits of the published code (dense one-hot, Gram matrix).
std::tuple<torch::Tensor, torch::Tensor> reference(const torch::Tensor& z, const torch::Tensor& logits_in,
                                                   const torch::Tensor& gumbel, double tau) {
  auto logits = logits_in.detach().clone().requires_grad_(true);
  auto reps = torch::nn::functional::normalize(z, torch::nn::functional::NormalizeFuncOptions().dim(1).eps(1e-8));
  auto soft = torch::softmax((logits + gumbel) / tau, 1);
  auto index = std::get<1>(soft.max(-1, true));
  auto hard = torch::zeros_like(soft).scatter_(-1, index, 1.0) - soft.detach() + soft;
  auto centers = hard.t().mm(reps) / hard.sum(0).unsqueeze(1).clamp_min(1.0);
  centers = torch::nn::functional::normalize(centers, torch::nn::functional::NormalizeFuncOptions().dim(1).eps(1e-8));
  auto gram = torch::triu(centers.mm(centers.t()), 1).flatten();
  auto loss = torch::nan_to_num(gram.index({torch::nonzero(gram)}).mean(), 1.0);
  loss.backward();
  return {loss.detach(), logits.grad()};
}

void check(int64_t M, int64_t K, int64_t D, double tau, double upstream) {
  torch::manual_seed(M + K + D);
  auto z = torch::randn({M, D});
  auto logits = torch::randn({M, K});
  auto gumbel = -torch::empty({M, K}).exponential_().log();
  auto [ref_loss, ref_grad] = reference(z, logits, gumbel, tau);

  auto assign = c10::Dispatcher::singleton()
                    .findSchemaOrThrow("clusiam::assign_pool", "")
                    .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
                        const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, double, double)>();
  auto centroid = c10::Dispatcher::singleton()
                      .findSchemaOrThrow("clusiam::centroid_loss", "")
                      .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&,
                                                                                         const at::Tensor&, double)>();
  auto centroid_bwd = c10::Dispatcher::singleton()
                          .findSchemaOrThrow("clusiam::centroid_loss_backward", "")
                          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                            const at::Tensor&, const at::Tensor&)>();
  auto assign_bwd = c10::Dispatcher::singleton()
                        .findSchemaOrThrow("clusiam::assign_pool_backward", "")
                        .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                          const at::Tensor&, double, at::ScalarType)>();

  auto [y, idx, inv_norm, sums, counts] = assign.call(z, logits, gumbel, tau, 1e-8);
  auto [loss, chat, inv_snorm, csum] = centroid.call(sums, counts, 1e-8);
  auto grad_sums = centroid_bwd.call(torch::tensor(upstream), chat, inv_snorm, csum, counts);
  auto grad = assign_bwd.call(grad_sums, z, y, inv_norm, tau, at::kFloat);

  char name[96];
  std::snprintf(name, sizeof(name), "loss M=%lld K=%lld D=%lld", (long long)M, (long long)K, (long long)D);
  expect_close(name, loss, ref_loss, 1e-4);
  std::snprintf(name, sizeof(name), "grad M=%lld K=%lld D=%lld", (long long)M, (long long)K, (long long)D);
  expect_close(name, grad, ref_grad * upstream, 2e-4);
}

}  // namespace

int main() {
  check(1, 3, 5, 1.0, 1.0);
  check(64, 10, 33, 0.5, 1.0);
  check(500, 100, 129, 2.0, -0.7);
  check(1000, 1, 16, 1.0, 1.0);
  check(2000, 300, 31, 1.0, 2.5);
  std::printf("%s\n", failures ? "FAILED" : "all passed");
  return failures ? 1 : 0;
}
