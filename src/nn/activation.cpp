#include "loom/nn/activation.h"

#include "loom/nn/functional.h"
#include "nn/repr.h"

namespace loom::nn {

Tensor ReLUImpl::forward(const Tensor& input) { return functional::relu(input); }

LeakyReLUImpl::LeakyReLUImpl(double slope) : Module("LeakyReLU"), negative_slope(slope) {}
Tensor LeakyReLUImpl::forward(const Tensor& input) { return functional::leaky_relu(input, negative_slope); }
std::string LeakyReLUImpl::extra_repr() const { return "negative_slope=" + detail::py_float(negative_slope); }

GELUImpl::GELUImpl(std::string approx) : Module("GELU"), approximate(std::move(approx)) {
  LOOM_CHECK(approximate == "none" || approximate == "tanh", "GELU: approximate must be \"none\" or \"tanh\", got \"",
             approximate, "\"");
}
Tensor GELUImpl::forward(const Tensor& input) { return functional::gelu(input, approximate); }
FusionStep GELUImpl::fusion_step() const {
  return FusionStep::pointwise(approximate == "tanh" ? LinearActivation::GeluTanh : LinearActivation::Gelu);
}
std::string GELUImpl::extra_repr() const { return "approximate='" + approximate + "'"; }

Tensor SiLUImpl::forward(const Tensor& input) { return functional::silu(input); }
Tensor TanhImpl::forward(const Tensor& input) { return functional::tanh(input); }
Tensor SigmoidImpl::forward(const Tensor& input) { return functional::sigmoid(input); }

SoftmaxImpl::SoftmaxImpl(int64_t d) : Module("Softmax"), dim(d) {}
Tensor SoftmaxImpl::forward(const Tensor& input) { return functional::softmax(input, dim); }
std::string SoftmaxImpl::extra_repr() const { return "dim=" + std::to_string(dim); }

LogSoftmaxImpl::LogSoftmaxImpl(int64_t d) : Module("LogSoftmax"), dim(d) {}
Tensor LogSoftmaxImpl::forward(const Tensor& input) { return functional::log_softmax(input, dim); }
std::string LogSoftmaxImpl::extra_repr() const { return "dim=" + std::to_string(dim); }

}  // namespace loom::nn
