// nn::functional layers and activations, written with loom ops (they have no
// backward of their own: autograd differentiates through the ops they call).
#include "loom/nn/functional.h"

#include <cmath>
#include <limits>

#include "loom/autograd.h"

namespace loom::nn::functional {

namespace {

// float16 / bfloat16 are storage types: statistics are taken in float32.
DType compute_dtype(DType t) { return t == kFloat16 || t == kBFloat16 ? kFloat32 : t; }

void check_defined(const char* op, const char* what, const Tensor& t) {
  LOOM_CHECK(t.defined(), op, ": ", what, " is an undefined tensor");
}

void check_floating(const char* op, const char* what, const Tensor& t) {
  check_defined(op, what, t);
  LOOM_CHECK(t.is_floating_point(), op, ": expected a floating point ", what, ", got ", dtype_name(t.dtype()),
             " (shape ", shape_str(t.sizes()), ")");
}

// The trailing dims of `input` must equal `normalized_shape`; returns the
// dims to reduce over (-k .. -1).
std::vector<int64_t> normalized_dims(const char* op, const Tensor& input, const std::vector<int64_t>& shape) {
  const int64_t k = static_cast<int64_t>(shape.size());
  LOOM_CHECK(k >= 1, op, ": normalized_shape must have at least one dim");
  bool fits = input.dim() >= k;
  for (int64_t i = 0; fits && i < k; ++i) fits = input.sizes()[input.dim() - k + i] == shape[i];
  LOOM_CHECK(fits, op, ": given normalized_shape=", shape_str(shape), ", expected input with shape [*, ",
             shape_str(shape).substr(1), ", but got input of shape ", shape_str(input.sizes()));
  std::vector<int64_t> dims;
  for (int64_t i = -k; i < 0; ++i) dims.push_back(i);
  return dims;
}

void check_affine(const char* op, const char* what, const Tensor& t, const std::vector<int64_t>& shape) {
  if (!t.defined()) return;
  LOOM_CHECK(t.sizes() == shape, op, ": expected ", what, " of shape ", shape_str(shape), ", got ",
             shape_str(t.sizes()));
}

// Machine epsilon of a floating dtype (torch.finfo(dtype).eps).
double dtype_eps(DType t) {
  switch (t) {
    case kFloat64: return std::numeric_limits<double>::epsilon();
    case kFloat16: return 0.0009765625;  // 2^-10
    case kBFloat16: return 0.0078125;    // 2^-7
    default: return std::numeric_limits<float>::epsilon();
  }
}

}  // namespace

// One fused Linear op (loom::linear, src/ops/linalg.cpp): (*, in) @ (in, out)^T + bias.
Tensor linear(const Tensor& input, const Tensor& weight, const Tensor& bias) {
  return loom::linear(input, weight, bias);
}

Tensor dropout(const Tensor& input, double p, bool training) {
  check_defined("dropout", "input", input);
  LOOM_CHECK(p >= 0 && p <= 1, "dropout: probability has to be between 0 and 1, but got ", p);
  if (!training || p == 0) return input;
  check_floating("dropout", "input", input);
  if (p == 1) return input * 0.0;  // keeps the graph: the gradient is zero everywhere
  // keep ~ Bernoulli(1 - p), scaled so that E[output] = input.
  Tensor scale = bernoulli(input, 1 - p).mul_(1.0 / (1.0 - p));
  return input * scale;
}

Tensor layer_norm(const Tensor& input, IntArrayRef normalized_shape, const Tensor& weight, const Tensor& bias,
                  double eps) {
  check_floating("layer_norm", "input", input);
  const std::vector<int64_t>& shape = normalized_shape.vec();
  normalized_dims("layer_norm", input, shape);  // checks the shapes
  check_affine("layer_norm", "weight", weight, shape);
  check_affine("layer_norm", "bias", bias, shape);
  // The fused LayerNorm primitive (src/ops/fused.cpp).
  return loom::layer_norm(input, shape, weight, bias, eps);
}

Tensor rms_norm(const Tensor& input, IntArrayRef normalized_shape, const Tensor& weight, std::optional<double> eps) {
  check_floating("rms_norm", "input", input);
  const std::vector<int64_t>& shape = normalized_shape.vec();
  std::vector<int64_t> dims = normalized_dims("rms_norm", input, shape);
  check_affine("rms_norm", "weight", weight, shape);
  const double e = eps.value_or(dtype_eps(input.dtype()));
  Tensor x = input.to(compute_dtype(input.dtype()));
  Tensor y = x * ((x * x).mean(dims, true) + e).rsqrt();
  if (weight.defined()) y = y * weight;
  return y.to(input.dtype());
}

Tensor batch_norm(const Tensor& input, const Tensor& running_mean, const Tensor& running_var, const Tensor& weight,
                  const Tensor& bias, bool training, double momentum, double eps) {
  check_floating("batch_norm", "input", input);
  LOOM_CHECK(input.dim() >= 2, "batch_norm: expected input of shape (N, C) or (N, C, *), got shape ",
             shape_str(input.sizes()));
  const int64_t channels = input.sizes()[1];
  const std::vector<int64_t> cshape{channels};
  check_affine("batch_norm", "weight", weight, cshape);
  check_affine("batch_norm", "bias", bias, cshape);
  check_affine("batch_norm", "running_mean", running_mean, cshape);
  check_affine("batch_norm", "running_var", running_var, cshape);
  LOOM_CHECK(running_mean.defined() == running_var.defined(),
             "batch_norm: running_mean and running_var must be both defined or both undefined");

  // Statistics over every dim but the channel dim; (C) reshaped to (1, C, 1, ...) to broadcast.
  std::vector<int64_t> dims{0}, bshape(static_cast<size_t>(input.dim()), 1);
  for (int64_t d = 2; d < input.dim(); ++d) dims.push_back(d);
  bshape[1] = channels;
  Tensor x = input.to(compute_dtype(input.dtype()));
  const bool use_batch_stats = training || !running_mean.defined();
  Tensor y;
  if (use_batch_stats) {
    const int64_t n = channels == 0 ? 0 : input.numel() / channels;
    LOOM_CHECK(n > 1, "batch_norm: expected more than 1 value per channel when training, got input of shape ",
               shape_str(input.sizes()));
    Tensor mean = x.mean(dims);                                // (C)
    Tensor centered = x - mean.view(bshape);
    Tensor var = (centered * centered).mean(dims);             // (C), biased
    y = centered * (var + eps).rsqrt().view(bshape);
    if (training && running_mean.defined()) {
      NoGradGuard ng;
      // The running variance is the unbiased estimate, as PyTorch.
      const double unbias = static_cast<double>(n) / static_cast<double>(n - 1);
      Tensor rm = running_mean, rv = running_var;  // handles: the writes land in the caller's buffers
      rm.mul_(1 - momentum).add_(mean.detach() * momentum);
      rv.mul_(1 - momentum).add_(var.detach() * (momentum * unbias));
    }
  } else {
    Tensor mean = running_mean.to(x.dtype()).view(bshape);
    Tensor var = running_var.to(x.dtype()).view(bshape);
    y = (x - mean) * (var + eps).rsqrt();
  }
  if (weight.defined()) y = y * weight.view(bshape);
  if (bias.defined()) y = y + bias.view(bshape);
  return y.to(input.dtype());
}

Tensor embedding(const Tensor& input, const Tensor& weight, std::optional<int64_t> padding_idx) {
  check_defined("embedding", "input", input);
  check_floating("embedding", "weight", weight);
  LOOM_CHECK(weight.dim() == 2, "embedding: expected a 2-D weight (num_embeddings, embedding_dim), got shape ",
             shape_str(weight.sizes()));
  Tensor out = loom::embedding(weight, input);
  if (!padding_idx) return out;
  const int64_t n = weight.sizes()[0];
  int64_t pad = *padding_idx;
  LOOM_CHECK(pad >= -n && pad < n, "embedding: padding_idx ", pad, " is out of range for ", n, " embeddings");
  if (pad < 0) pad += n;
  if (!is_grad_enabled() || !weight.requires_grad()) return out;
  // Same values, but positions holding padding_idx read a detached weight, so
  // the padding row gets no gradient. (*, 1) broadcasts over (*, dim).
  Tensor keep = (input != Scalar(pad)).unsqueeze(-1);
  return where(keep, out, loom::embedding(weight.detach(), input));
}

Tensor relu(const Tensor& x) { return loom::relu(x); }
Tensor leaky_relu(const Tensor& x, double negative_slope) { return loom::leaky_relu(x, negative_slope); }
Tensor elu(const Tensor& x, double alpha) { return loom::elu(x, alpha); }
Tensor gelu(const Tensor& x, const std::string& approximate) { return loom::gelu(x, approximate); }
Tensor silu(const Tensor& x) { return loom::silu(x); }
Tensor softplus(const Tensor& x, double beta, double threshold) { return loom::softplus(x, beta, threshold); }
Tensor tanh(const Tensor& x) { return loom::tanh(x); }
Tensor sigmoid(const Tensor& x) { return loom::sigmoid(x); }
Tensor softmax(const Tensor& x, int64_t dim) { return loom::softmax(x, dim); }
Tensor log_softmax(const Tensor& x, int64_t dim) { return loom::log_softmax(x, dim); }

}  // namespace loom::nn::functional
