// Dropout and Dropout2d: random zeroing in training mode, the identity in eval mode.
#pragma once

#include <string>

#include "loom/nn/module.h"

namespace loom::nn {

// In training, zeroes each element with probability p and scales the others
// by 1 / (1 - p), so the expected output equals the input; the identity
// after eval(). The mask comes from the global generator (manual_seed).
class DropoutImpl : public Module {
 public:
  explicit DropoutImpl(double p = 0.5);
  Tensor forward(const Tensor& input) override;
  std::string extra_repr() const override;

  double p;
};
LOOM_MODULE(Dropout);

// Channel dropout for (N, C, H, W) or (C, H, W) input: in training, zeroes
// each whole channel with probability p and scales the others by 1 / (1 - p);
// the identity after eval(). The mask comes from the global generator.
class Dropout2dImpl : public Module {
 public:
  explicit Dropout2dImpl(double p = 0.5);
  Tensor forward(const Tensor& input) override;
  std::string extra_repr() const override;

  double p;
};
LOOM_MODULE(Dropout2d);

}  // namespace loom::nn
