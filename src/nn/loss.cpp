#include "loom/nn/loss.h"

namespace loom::nn {

namespace F = functional;

CrossEntropyLossImpl::CrossEntropyLossImpl(F::CrossEntropyOptions o) : Module("CrossEntropyLoss"), options(std::move(o)) {
  if (options.weight.defined()) register_buffer("weight", options.weight);
}
Tensor CrossEntropyLossImpl::forward(const Tensor& input, const Tensor& target) {
  return F::cross_entropy(input, target, options);
}

NLLLossImpl::NLLLossImpl(F::NLLLossOptions o) : Module("NLLLoss"), options(std::move(o)) {
  if (options.weight.defined()) register_buffer("weight", options.weight);
}
Tensor NLLLossImpl::forward(const Tensor& input, const Tensor& target) { return F::nll_loss(input, target, options); }

MSELossImpl::MSELossImpl(F::MSELossOptions o) : Module("MSELoss"), options(std::move(o)) {}
Tensor MSELossImpl::forward(const Tensor& input, const Tensor& target) { return F::mse_loss(input, target, options); }

L1LossImpl::L1LossImpl(F::L1LossOptions o) : Module("L1Loss"), options(std::move(o)) {}
Tensor L1LossImpl::forward(const Tensor& input, const Tensor& target) { return F::l1_loss(input, target, options); }

SmoothL1LossImpl::SmoothL1LossImpl(F::SmoothL1LossOptions o) : Module("SmoothL1Loss"), options(std::move(o)) {}
Tensor SmoothL1LossImpl::forward(const Tensor& input, const Tensor& target) {
  return F::smooth_l1_loss(input, target, options);
}

BCELossImpl::BCELossImpl(F::BCELossOptions o) : Module("BCELoss"), options(std::move(o)) {
  if (options.weight.defined()) register_buffer("weight", options.weight);
}
Tensor BCELossImpl::forward(const Tensor& input, const Tensor& target) {
  return F::binary_cross_entropy(input, target, options);
}

BCEWithLogitsLossImpl::BCEWithLogitsLossImpl(F::BCEWithLogitsLossOptions o)
    : Module("BCEWithLogitsLoss"), options(std::move(o)) {
  if (options.weight.defined()) register_buffer("weight", options.weight);
  if (options.pos_weight.defined()) register_buffer("pos_weight", options.pos_weight);
}
Tensor BCEWithLogitsLossImpl::forward(const Tensor& input, const Tensor& target) {
  return F::binary_cross_entropy_with_logits(input, target, options);
}

KLDivLossImpl::KLDivLossImpl(F::KLDivLossOptions o) : Module("KLDivLoss"), options(std::move(o)) {}
Tensor KLDivLossImpl::forward(const Tensor& input, const Tensor& target) { return F::kl_div(input, target, options); }

}  // namespace loom::nn
