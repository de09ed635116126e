// Activation modules: thin wrappers over the loom ops of the same names.
#pragma once

#include <cstdint>
#include <string>

#include "loom/nn/module.h"

namespace loom::nn {

class ReLUImpl : public Module {
 public:
  ReLUImpl() : Module("ReLU") {}
  // final, as Linear's: Sequential may fuse this module into a Linear before it.
  Tensor forward(const Tensor& input) final;
  FusionStep fusion_step() const final { return FusionStep::pointwise(LinearActivation::Relu); }
};
LOOM_MODULE(ReLU);

// x for x >= 0, negative_slope * x otherwise.
class LeakyReLUImpl : public Module {
 public:
  explicit LeakyReLUImpl(double negative_slope = 0.01);
  Tensor forward(const Tensor& input) override;
  std::string extra_repr() const override;

  double negative_slope;
};
LOOM_MODULE(LeakyReLU);

// x * Phi(x); approximate = "tanh" uses the tanh approximation.
class GELUImpl : public Module {
 public:
  explicit GELUImpl(std::string approximate = "none");
  // final, as Linear's: Sequential may fuse this module into a Linear before it.
  Tensor forward(const Tensor& input) final;
  FusionStep fusion_step() const final;
  std::string extra_repr() const override;

  std::string approximate;
};
LOOM_MODULE(GELU);

// x * sigmoid(x) (a.k.a. swish).
class SiLUImpl : public Module {
 public:
  SiLUImpl() : Module("SiLU") {}
  Tensor forward(const Tensor& input) override;
};
LOOM_MODULE(SiLU);

class TanhImpl : public Module {
 public:
  TanhImpl() : Module("Tanh") {}
  Tensor forward(const Tensor& input) override;
};
LOOM_MODULE(Tanh);

class SigmoidImpl : public Module {
 public:
  SigmoidImpl() : Module("Sigmoid") {}
  Tensor forward(const Tensor& input) override;
};
LOOM_MODULE(Sigmoid);

class SoftmaxImpl : public Module {
 public:
  explicit SoftmaxImpl(int64_t dim);
  Tensor forward(const Tensor& input) override;
  std::string extra_repr() const override;

  int64_t dim;
};
LOOM_MODULE(Softmax);

class LogSoftmaxImpl : public Module {
 public:
  explicit LogSoftmaxImpl(int64_t dim);
  Tensor forward(const Tensor& input) override;
  std::string extra_repr() const override;

  int64_t dim;
};
LOOM_MODULE(LogSoftmax);

}  // namespace loom::nn
