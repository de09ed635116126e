#include "loom/nn/linear.h"

#include <cmath>

#include "loom/nn/functional.h"
#include "loom/nn/init.h"
#include "loom/ops.h"
#include "nn/repr.h"

namespace loom::nn {

LinearImpl::LinearImpl(int64_t in, int64_t out, bool with_bias)
    : Module("Linear"), in_features(in), out_features(out) {
  LOOM_CHECK(in >= 0 && out >= 0, "Linear: in_features and out_features must be non-negative, got ", in, " and ",
             out);
  weight = register_parameter("weight", loom::empty({out, in}));
  if (with_bias) bias = register_parameter("bias", loom::empty({out}));
  reset_parameters();
}

void LinearImpl::reset_parameters() {
  // kaiming_uniform_ with a = sqrt(5) gives gain sqrt(1/3), so the bound
  // sqrt(3) * gain / sqrt(fan_in) is 1 / sqrt(fan_in): the same range as the bias.
  init::kaiming_uniform_(weight, std::sqrt(5.0));
  if (bias.defined()) {
    const double bound = in_features > 0 ? 1.0 / std::sqrt(static_cast<double>(in_features)) : 0.0;
    init::uniform_(bias, -bound, bound);
  }
}

Tensor LinearImpl::forward(const Tensor& input) { return forward_fused(input, LinearActivation::None); }

Tensor LinearImpl::forward_fused(const Tensor& input, LinearActivation activation) {
  LOOM_CHECK(input.defined() && input.dim() >= 1 && input.sizes().back() == in_features,
             "Linear: expected input of shape (*, ", in_features, ") (in_features=", in_features, "), got ",
             input.defined() ? shape_str(input.sizes()) : std::string("an undefined tensor"));
  if (!quantization_) return loom::linear(input, weight, bias, activation);
  // The activation module's own op after the product: what the two modules
  // give one after the other.
  const Tensor y = loom::quantized_linear(input, weight, weight_scale, bias, *quantization_);
  switch (activation) {
    case LinearActivation::None: return y;
    case LinearActivation::Relu: return loom::relu(y);
    case LinearActivation::Gelu: return loom::gelu(y);
    case LinearActivation::GeluTanh: return loom::gelu(y, "tanh");
  }
  return y;
}

void LinearImpl::quantize(QuantScheme scheme) {
  LOOM_CHECK(!quantization_, "Linear: already quantized (", quant_scheme_name(*quantization_), ")");
  auto [codes, scales] = loom::quantize_weight(weight.detach(), scheme);
  remove_parameter("weight");
  weight = register_buffer("weight", codes);
  weight_scale = register_buffer("weight_scale", scales);
  if (bias.defined()) bias.requires_grad_(false);
  quantization_ = scheme;
}

std::string LinearImpl::extra_repr() const {
  std::string s = "in_features=" + std::to_string(in_features) + ", out_features=" + std::to_string(out_features) +
                  ", bias=" + detail::py_bool(bias.defined());
  if (quantization_) s += std::string(", quantization=") + quant_scheme_name(*quantization_);
  return s;
}

int64_t quantize_dynamic(Module& model, QuantScheme scheme) {
  int64_t count = 0;
  for (const auto& m : model.modules())
    if (auto* linear = dynamic_cast<LinearImpl*>(m.get()); linear != nullptr && !linear->quantization()) {
      linear->quantize(scheme);
      ++count;
    }
  return count;
}

FlattenImpl::FlattenImpl(int64_t start, int64_t end) : Module("Flatten"), start_dim(start), end_dim(end) {}

Tensor FlattenImpl::forward(const Tensor& input) { return input.flatten(start_dim, end_dim); }

std::string FlattenImpl::extra_repr() const {
  return "start_dim=" + std::to_string(start_dim) + ", end_dim=" + std::to_string(end_dim);
}

UnflattenImpl::UnflattenImpl(int64_t d, std::vector<int64_t> sizes)
    : Module("Unflatten"), dim(d), unflattened_size(std::move(sizes)) {
  LOOM_CHECK(!unflattened_size.empty(), "Unflatten: unflattened_size must be non-empty");
}

Tensor UnflattenImpl::forward(const Tensor& input) { return input.unflatten(dim, unflattened_size); }

std::string UnflattenImpl::extra_repr() const {
  return "dim=" + std::to_string(dim) + ", unflattened_size=" + detail::py_tuple(unflattened_size);
}

}  // namespace loom::nn
