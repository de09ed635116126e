// Linear, Identity, Flatten and Unflatten.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "loom/nn/module.h"
#include "loom/ops.h"

namespace loom::nn {

// y = x W^T + b. x: (*, in_features) -> (*, out_features).
class LinearImpl : public Module {
 public:
  LinearImpl(int64_t in_features, int64_t out_features, bool bias = true);
  // final: Sequential may run this module fused with the activation after
  // it, which is only sound while forward is exactly loom::linear.
  Tensor forward(const Tensor& input) final;
  FusionStep fusion_step() const final { return FusionStep::linear(); }
  // activation(forward(input)) as one fused op (loom::linear): what
  // nn::Sequential runs for a Linear child followed by a ReLU or GELU child
  // when plan_fusion says so. Bit for bit the two modules one after the other.
  Tensor forward_fused(const Tensor& input, LinearActivation activation);
  // PyTorch's default: weight ~ kaiming_uniform_(a = sqrt(5)), i.e.
  // U(-1/sqrt(in_features), 1/sqrt(in_features)), and bias from the same range.
  void reset_parameters();
  std::string extra_repr() const override;

  // Quantized inference (loom::quantize_weight): `weight` becomes a buffer
  // of codes (int8 (out, in); int4 packed in uint8) and `weight_scale` a
  // buffer of float32 scales; forward runs loom::quantized_linear, without
  // autograd. Not reversible. The state dict then holds "weight" (the codes)
  // and "weight_scale" beside "bias".
  void quantize(QuantScheme scheme);
  std::optional<QuantScheme> quantization() const { return quantization_; }

  int64_t in_features;
  int64_t out_features;
  Tensor weight;        // (out_features, in_features); the codes once quantized
  Tensor bias;          // (out_features); undefined when built with bias = false
  Tensor weight_scale;  // the scales once quantized, else undefined

 private:
  std::optional<QuantScheme> quantization_;
};
LOOM_MODULE(Linear);

// Quantizes every Linear in `model` (and its descendants) that is not
// quantized yet, as torch.ao.quantization.quantize_dynamic swaps nn.Linear
// for its dynamic quantized form; returns how many it quantized. Other
// layers (convolutions, embeddings, norms) keep their float32 weights.
int64_t quantize_dynamic(Module& model, QuantScheme scheme);

// Returns its input unchanged (a placeholder, e.g. for a removed head).
class IdentityImpl : public Module {
 public:
  IdentityImpl() : Module("Identity") {}
  Tensor forward(const Tensor& input) override { return input; }
};
LOOM_MODULE(Identity);

// Flattens dims start_dim..end_dim into one: (N, 1, 28, 28) -> (N, 784).
class FlattenImpl : public Module {
 public:
  explicit FlattenImpl(int64_t start_dim = 1, int64_t end_dim = -1);
  Tensor forward(const Tensor& input) override;
  std::string extra_repr() const override;

  int64_t start_dim;
  int64_t end_dim;
};
LOOM_MODULE(Flatten);

// Splits dim `dim` into `sizes` (one of them may be -1): (N, 784) -> (N, 1, 28, 28).
class UnflattenImpl : public Module {
 public:
  UnflattenImpl(int64_t dim, std::vector<int64_t> sizes);
  Tensor forward(const Tensor& input) override;
  std::string extra_repr() const override;

  int64_t dim;
  std::vector<int64_t> unflattened_size;
};
// The holder also takes a braced size list: nn::Unflatten(1, {1, 28, 28}).
class Unflatten : public ModuleHolder<UnflattenImpl> {
 public:
  using ModuleHolder<UnflattenImpl>::ModuleHolder;
  Unflatten() = default;
  Unflatten(int64_t dim, std::initializer_list<int64_t> sizes)
      : ModuleHolder(std::make_shared<UnflattenImpl>(dim, std::vector<int64_t>(sizes))) {}
};

}  // namespace loom::nn
