// nn::functional layers and activations, written with loom ops (they have no
// backward of their own: autograd differentiates through the ops they call).
#include "core/autocast.h"
#include "loom/nn/functional.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "loom/autograd.h"

namespace loom::nn::functional {

namespace {

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

Tensor dropout(const Tensor& input, double p, bool training, std::optional<Generator> generator) {
  check_defined("dropout", "input", input);
  LOOM_CHECK(p >= 0 && p <= 1, "dropout: probability has to be between 0 and 1, but got ", p);
  if (!training || p == 0) return input;
  check_floating("dropout", "input", input);
  if (p == 1) return input * 0.0;  // keeps the graph: the gradient is zero everywhere
  // keep ~ Bernoulli(1 - p), scaled so that E[output] = input.
  Tensor scale = bernoulli(input, 1 - p, std::move(generator)).mul_(1.0 / (1.0 - p));
  return input * scale;
}

Tensor dropout2d(const Tensor& input, double p, bool training, std::optional<Generator> generator) {
  check_defined("dropout2d", "input", input);
  LOOM_CHECK(p >= 0 && p <= 1, "dropout2d: probability has to be between 0 and 1, but got ", p);
  LOOM_CHECK(input.dim() == 3 || input.dim() == 4,
             "dropout2d: expected a 3D (C, H, W) or 4D (N, C, H, W) input, got shape ", shape_str(input.sizes()));
  if (!training || p == 0) return input;
  check_floating("dropout2d", "input", input);
  if (p == 1) return input * 0.0;  // keeps the graph: the gradient is zero everywhere
  // One keep ~ Bernoulli(1 - p) per channel: a (N, C, 1, 1) or (C, 1, 1) scale broadcast over H and W.
  std::vector<int64_t> mask_shape = input.sizes();
  mask_shape[mask_shape.size() - 1] = 1;
  mask_shape[mask_shape.size() - 2] = 1;
  Tensor scale = bernoulli(loom::empty(mask_shape, input.options()), 1 - p, std::move(generator)).mul_(1.0 / (1.0 - p));
  return input * scale;
}

namespace {

// PyTorch's nearest source index (UpSample.h, nearest_idx), in float as there:
// the same index for equal sizes, dst / 2 for a doubled size, else
// min(floor(dst * scale), in - 1) with scale = 1 / scale_factor when given,
// else in / out.
int64_t nearest_source(int64_t dst, int64_t in, int64_t out, std::optional<double> scale_factor) {
  if (out == in) return dst;
  if (out == 2 * in) return dst >> 1;
  const float scale = scale_factor && *scale_factor > 0 ? static_cast<float>(1.0 / *scale_factor)
                                                        : static_cast<float>(in) / static_cast<float>(out);
  return std::min(static_cast<int64_t>(std::floor(static_cast<float>(dst) * scale)), in - 1);
}

// PyTorch's linear interpolation taps (area_pixel_compute_scale /
// area_pixel_compute_source_index / guard_index_and_lambda), computed in S
// (float for float32 input, double for float64, as PyTorch's opmath type).
struct LinearTaps {
  std::vector<int64_t> i0, i1;
  std::vector<double> l0, l1;
};

template <typename S>
LinearTaps linear_taps(int64_t in, int64_t out, bool align_corners, std::optional<double> scale_factor) {
  S scale;
  if (align_corners) scale = out > 1 ? static_cast<S>(in - 1) / static_cast<S>(out - 1) : S(0);
  else scale = scale_factor && *scale_factor > 0 ? static_cast<S>(1.0 / *scale_factor)
                                                 : static_cast<S>(in) / static_cast<S>(out);
  LinearTaps t;
  for (int64_t o = 0; o < out; ++o) {
    S src = align_corners ? scale * static_cast<S>(o) : scale * (static_cast<S>(o) + S(0.5)) - S(0.5);
    if (!align_corners && src < S(0)) src = S(0);
    const int64_t i = std::min(static_cast<int64_t>(std::floor(src)), in - 1);
    const S lambda = std::min(std::max(src - static_cast<S>(i), S(0)), S(1));
    t.i0.push_back(i);
    t.i1.push_back(i + (i < in - 1 ? 1 : 0));
    t.l0.push_back(static_cast<double>(S(1) - lambda));
    t.l1.push_back(static_cast<double>(lambda));
  }
  return t;
}

}  // namespace

Tensor interpolate(const Tensor& input, const InterpolateOptions& o) {
  const char* op = "interpolate";
  check_floating(op, "input", input);
  LOOM_CHECK(o.mode == "nearest" || o.mode == "bilinear", op, ": mode must be \"nearest\" or \"bilinear\", got \"",
             o.mode, "\"");
  const bool bilinear = o.mode == "bilinear";
  LOOM_CHECK(input.dim() >= 3 && input.dim() <= 5, op, ": expected input of shape (N, C, L), (N, C, H, W) or (N, C, D, "
             "H, W), got shape ", shape_str(input.sizes()));
  LOOM_CHECK(!bilinear || input.dim() == 4, op, ": got ", input.dim(), "D input of shape ", shape_str(input.sizes()),
             ", but bilinear mode needs 4D input (N, C, H, W)");
  LOOM_CHECK(bilinear || !o.align_corners, op,
             ": align_corners option can only be set with the interpolating modes: linear | bilinear | bicubic | "
             "trilinear");
  LOOM_CHECK(!o.size.empty() || !o.scale_factor.empty(), op, ": either size or scale_factor should be defined");
  LOOM_CHECK(o.size.empty() || o.scale_factor.empty(), op, ": only one of size or scale_factor should be defined");
  const int64_t spatial = input.dim() - 2;
  const size_t given = o.size.empty() ? o.scale_factor.size() : o.size.size();
  LOOM_CHECK(given == 1 || given == static_cast<size_t>(spatial), op, ": ",
             o.size.empty() ? "scale_factor" : "size", " must have 1 or ", spatial, " values for input of shape ",
             shape_str(input.sizes()), ", got ", given);
  std::vector<int64_t> out_size(static_cast<size_t>(spatial));
  std::vector<std::optional<double>> scales(static_cast<size_t>(spatial));
  for (int64_t k = 0; k < spatial; ++k) {
    const size_t j = given == 1 ? 0 : static_cast<size_t>(k);
    const int64_t in = input.sizes()[2 + k];
    if (!o.size.empty()) {
      out_size[k] = o.size[j];
    } else {
      const double s = o.scale_factor[j];
      LOOM_CHECK(s > 0 && std::isfinite(s), op, ": scale_factor must be positive and finite, got ", s);
      scales[k] = s;
      out_size[k] = static_cast<int64_t>(std::floor(static_cast<double>(in) * s));
    }
    LOOM_CHECK(in > 0 && out_size[k] > 0, op, ": input and output sizes should be greater than 0, but got input ",
               shape_str(input.sizes()), " and output size ", shape_str(out_size));
  }
  const bool align_corners = o.align_corners.value_or(false);
  const TensorOptions index_options = TensorOptions(kInt64).device(input.device());
  Tensor y = input;
  // The last spatial dim first: bilinear then blends each row's two taps,
  // then the two rows, as PyTorch's kernel does.
  for (int64_t k = spatial - 1; k >= 0; --k) {
    const int64_t d = 2 + k, in = input.sizes()[d], out = out_size[k];
    if (!bilinear) {
      std::vector<int64_t> idx(static_cast<size_t>(out));
      for (int64_t i = 0; i < out; ++i) idx[i] = nearest_source(i, in, out, scales[k]);
      y = y.index_select(d, tensor(idx, index_options));
      continue;
    }
    const LinearTaps t = input.dtype() == kFloat64 ? linear_taps<double>(in, out, align_corners, scales[k])
                                                   : linear_taps<float>(in, out, align_corners, scales[k]);
    // The weights broadcast along dim d: shape (out, 1, ..., 1).
    std::vector<int64_t> wshape(static_cast<size_t>(input.dim() - d), 1);
    wshape[0] = out;
    const TensorOptions wopt = TensorOptions(kFloat64).device(input.device());
    Tensor l0 = tensor(t.l0, wopt).to(y.dtype()).view(wshape), l1 = tensor(t.l1, wopt).to(y.dtype()).view(wshape);
    y = y.index_select(d, tensor(t.i0, index_options)) * l0 + y.index_select(d, tensor(t.i1, index_options)) * l1;
  }
  return y;
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
  if (autocast::Region r{input, autocast::Policy::Float32})
    return rms_norm(r.cast(input), normalized_shape, r.cast(weight), eps);
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
  if (autocast::Region r{input, autocast::Policy::Float32})
    return batch_norm(r.cast(input), running_mean, running_var, r.cast(weight), r.cast(bias), training, momentum, eps);
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

  if (training || !running_mean.defined()) {
    // Batch statistics over every dim but the channel dim.
    const int64_t n = channels == 0 ? 0 : input.numel() / channels;
    LOOM_CHECK(n > 1, "batch_norm: expected more than 1 value per channel when training, got input of shape ",
               shape_str(input.sizes()));
    // One fused primitive (src/ops/batch_norm.cpp) normalizes, scales and
    // shifts, and hands back the batch statistics (no gradient) for the update.
    auto [y, mean, var] = loom::batch_norm_with_stats(input, weight, bias, eps);
    if (training && running_mean.defined()) {
      NoGradGuard ng;
      // The running variance is the unbiased estimate, as PyTorch.
      const double unbias = static_cast<double>(n) / static_cast<double>(n - 1);
      Tensor rm = running_mean, rv = running_var;  // handles: the writes land in the caller's buffers
      rm.mul_(1 - momentum).add_((mean * momentum).to(rm.dtype()));
      rv.mul_(1 - momentum).add_((var * (momentum * unbias)).to(rv.dtype()));
    }
    return y;
  }
  // Eval: y = x * scale + shift, with the running statistics and the affine
  // parameters folded per channel first (scale = weight / sqrt(var + eps),
  // shift = bias - mean * scale), as PyTorch's CPU inference kernel does:
  // two passes over the activation instead of four. (C) reshaped to
  // (1, C, 1, ...) to broadcast.
  std::vector<int64_t> bshape(static_cast<size_t>(input.dim()), 1);
  bshape[1] = channels;
  Tensor x = input.to(compute_dtype(input.dtype()));
  Tensor scale = (running_var.to(x.dtype()) + eps).rsqrt();  // (C)
  if (weight.defined()) scale = scale * weight.to(x.dtype());
  Tensor shift = -(running_mean.to(x.dtype()) * scale);
  if (bias.defined()) shift = shift + bias.to(x.dtype());
  Tensor y = x * scale.view(bshape) + shift.view(bshape);
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
