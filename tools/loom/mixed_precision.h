// `loom train --amp bf16|fp16`: mixed precision for every model's step.
//
// The forward pass and the loss run under loom::AutocastGuard (Note
// [Autocast op policy] in src/core/autocast.h): the matrix products in the
// chosen dtype, softmax, norms and the loss in float32. The parameters, the
// gradients and the optimizer state stay float32. fp16 adds amp::GradScaler:
// the loss is scaled before backward, the gradients unscaled before
// clipping, and a step whose gradients hold inf or NaN is skipped. bf16
// needs no scaler (its exponent is float32's), as in PyTorch.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include <loom/loom.h>

namespace loom::cli {

class MixedPrecision {
 public:
  // amp: "" or "off" (float32), "bf16" or "fp16". `compiled`: the step is
  // captured by loom::compile, which a GradScaler's host read cannot be;
  // `zero`: ZeRO-1 averages gradients inside step(), after unscaling would
  // look for inf on one rank only. Both are refused with fp16.
  MixedPrecision(const std::string& amp, bool compiled, bool zero);

  // forward() under autocast (when on): the loss.
  Tensor forward(const std::function<Tensor()>& forward) const;
  // Backward on the loss (scaled with fp16), then clip (when given) on the
  // true gradients, then the optimizer's step (skipped on inf or NaN with
  // fp16) and the scale's update.
  void backward_and_step(const Tensor& loss, optim::Optimizer& optimizer, const std::function<void()>& clip = {});

  // "float32", "bfloat16 autocast" or "float16 autocast, loss scale 65536".
  std::string describe() const;

 private:
  std::optional<DType> dtype_;
  std::unique_ptr<amp::GradScaler> scaler_;
};

}  // namespace loom::cli
