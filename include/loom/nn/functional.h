// loom::nn::functional: the stateless forms of the modules and the losses,
// named as torch.nn.functional. Examples alias it as PyTorch users do:
//
//   namespace F = loom::nn::functional;
//   Tensor loss = F::cross_entropy(logits, labels, {.label_smoothing = 0.1});
//
// Every loss takes (input, target) and then one small options struct whose
// fields carry PyTorch's keyword arguments and defaults; designated
// initializers name the ones that differ: `{.reduction = "sum"}`.
// `reduction` is "mean" (the default), "sum" or "none" everywhere
// (kl_div also accepts "batchmean"). Losses are written with loom ops, so they
// differentiate through autograd (including to second order).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "loom/ops.h"
#include "loom/tensor.h"

namespace loom::nn::functional {

// ---- layers ----

// y = input @ weight^T + bias. input (*, in), weight (out, in), bias (out) or undefined.
Tensor linear(const Tensor& input, const Tensor& weight, const Tensor& bias = {});
// In training, zeroes each element with probability p (drawn from
// `generator`, or the global one when left out, so manual_seed fixes the
// mask) and scales the rest by 1/(1-p); the identity otherwise.
Tensor dropout(const Tensor& input, double p = 0.5, bool training = true,
               std::optional<Generator> generator = std::nullopt);
// Channel dropout: in training, zeroes whole channels of an (N, C, H, W) or
// unbatched (C, H, W) input with probability p (one draw per (n, c) from
// `generator`, or the global one) and scales the rest by 1/(1-p); the
// identity otherwise.
Tensor dropout2d(const Tensor& input, double p = 0.5, bool training = true,
                 std::optional<Generator> generator = std::nullopt);
// Resizes the spatial dims of (N, C, *) input (torch.nn.functional.interpolate).
// Give either `size` or `scale_factor` (one value for every spatial dim, or
// one per dim); without `size` the output size is floor(in * scale_factor).
// Modes: "nearest" (input (N, C, L), (N, C, H, W) or (N, C, D, H, W); source
// index floor(dst * scale), scale = 1 / scale_factor when given, else
// in / out, as PyTorch) and "bilinear" (input (N, C, H, W); align_corners
// false (the default) maps pixel centres, true maps the corner pixels onto
// each other). Written with index_select and elementwise ops, so it
// differentiates through autograd.
struct InterpolateOptions {
  std::vector<int64_t> size = {};          // output spatial size, or empty
  std::vector<double> scale_factor = {};   // or the scale of each spatial dim
  std::string mode = "nearest";            // "nearest" or "bilinear"
  std::optional<bool> align_corners = {};  // bilinear only (false when unset)
};
Tensor interpolate(const Tensor& input, const InterpolateOptions& options);
// Normalizes over the trailing dims `normalized_shape` (mean and biased
// variance), then applies weight and bias (each of shape normalized_shape, or
// undefined).
Tensor layer_norm(const Tensor& input, IntArrayRef normalized_shape, const Tensor& weight = {},
                  const Tensor& bias = {}, double eps = 1e-5);
// x / sqrt(mean(x^2 over normalized_shape) + eps) * weight. eps defaults to
// the machine epsilon of input's dtype, as PyTorch.
Tensor rms_norm(const Tensor& input, IntArrayRef normalized_shape, const Tensor& weight = {},
                std::optional<double> eps = std::nullopt);
// input (N, C) or (N, C, L). In training (or without running stats) it
// normalizes with the batch statistics over every dim but 1, and, when
// running_mean / running_var are defined, updates them in place:
// running = (1 - momentum) * running + momentum * batch (unbiased variance).
// Otherwise it normalizes with the running statistics.
Tensor batch_norm(const Tensor& input, const Tensor& running_mean, const Tensor& running_var,
                  const Tensor& weight = {}, const Tensor& bias = {}, bool training = false,
                  double momentum = 0.1, double eps = 1e-5);
// Rows of weight (num_embeddings, dim) picked by integer input (*) -> (*, dim).
// Entries equal to padding_idx get no gradient.
Tensor embedding(const Tensor& input, const Tensor& weight, std::optional<int64_t> padding_idx = std::nullopt);

// ---- activations (the loom ops, under their torch.nn.functional names) ----

Tensor relu(const Tensor& x);
Tensor leaky_relu(const Tensor& x, double negative_slope = 0.01);
Tensor elu(const Tensor& x, double alpha = 1.0);
Tensor gelu(const Tensor& x, const std::string& approximate = "none");
Tensor silu(const Tensor& x);
Tensor softplus(const Tensor& x, double beta = 1.0, double threshold = 20.0);
Tensor tanh(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor softmax(const Tensor& x, int64_t dim);
Tensor log_softmax(const Tensor& x, int64_t dim);

// ---- losses ----

// input: logits (N, C), (C) or (N, C, d1, ...). target: either class indices,
// int64 of shape (N), () or (N, d1, ...), or class probabilities, float of
// input's shape.
struct CrossEntropyOptions {
  Tensor weight = {};              // (C): a rescaling weight per class, or undefined
  int64_t ignore_index = -100;     // class-index targets equal to this count for nothing
  std::string reduction = "mean";  // "mean": sum over targets / sum of their weights
  double label_smoothing = 0.0;    // in [0, 1]: mix the target with the uniform distribution
};
Tensor cross_entropy(const Tensor& input, const Tensor& target, const CrossEntropyOptions& options = {});

// input: log-probabilities (N, C), (C) or (N, C, d1, ...); target: int64
// class indices (N), () or (N, d1, ...). loss = -weight[t] * input[n, t].
struct NLLLossOptions {
  Tensor weight = {};
  int64_t ignore_index = -100;
  std::string reduction = "mean";
};
Tensor nll_loss(const Tensor& input, const Tensor& target, const NLLLossOptions& options = {});

// Elementwise losses: input and target have the same shape.
struct MSELossOptions {
  std::string reduction = "mean";
};
Tensor mse_loss(const Tensor& input, const Tensor& target, const MSELossOptions& options = {});

struct L1LossOptions {
  std::string reduction = "mean";
};
Tensor l1_loss(const Tensor& input, const Tensor& target, const L1LossOptions& options = {});

// 0.5 d^2 / beta where |d| < beta, |d| - 0.5 beta elsewhere (d = input - target).
struct SmoothL1LossOptions {
  std::string reduction = "mean";
  double beta = 1.0;  // >= 0; 0 gives l1_loss
};
Tensor smooth_l1_loss(const Tensor& input, const Tensor& target, const SmoothL1LossOptions& options = {});

// input: probabilities in [0, 1]. loss = -weight (t log x + (1 - t) log(1 - x)),
// each log clamped to >= -100 as PyTorch.
struct BCELossOptions {
  Tensor weight = {};  // broadcastable to input's shape, or undefined
  std::string reduction = "mean";
};
Tensor binary_cross_entropy(const Tensor& input, const Tensor& target, const BCELossOptions& options = {});

// input: logits. loss = -weight (pos_weight t log s(x) + (1 - t) log(1 - s(x))),
// computed as softplus(-x) without forming s(x), so large logits give finite losses.
struct BCEWithLogitsLossOptions {
  Tensor weight = {};      // broadcastable to input's shape, or undefined
  std::string reduction = "mean";
  Tensor pos_weight = {};  // weight of positive examples, broadcast along the last dim (C), or undefined
};
Tensor binary_cross_entropy_with_logits(const Tensor& input, const Tensor& target,
                                        const BCEWithLogitsLossOptions& options = {});

// input: log-probabilities. loss = target (log target - input), or with
// log_target: exp(target) (target - input). "batchmean" divides the sum by
// input.size(0), which is the true KL divergence per sample.
struct KLDivLossOptions {
  std::string reduction = "mean";
  bool log_target = false;
};
Tensor kl_div(const Tensor& input, const Tensor& target, const KLDivLossOptions& options = {});

}  // namespace loom::nn::functional
