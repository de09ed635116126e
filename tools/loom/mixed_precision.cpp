#include "mixed_precision.h"

#include <sstream>

namespace loom::cli {

MixedPrecision::MixedPrecision(const std::string& amp, bool compiled, bool zero) {
  if (amp.empty() || amp == "off") return;
  LOOM_CHECK(amp == "bf16" || amp == "fp16", "train: --amp must be bf16, fp16 or off, got '", amp, "'");
  dtype_ = amp == "bf16" ? kBFloat16 : kFloat16;
  if (amp == "bf16") return;
  LOOM_CHECK(!compiled, "train: --amp fp16 cannot be combined with --compile: its loss scaler reads on the host "
             "whether a gradient holds inf or NaN, which a captured step cannot replay (use --amp bf16)");
  LOOM_CHECK(!zero, "train: --amp fp16 cannot be combined with --zero: ZeRO-1 averages the gradients inside its step, "
             "so each rank would look for inf or NaN in its own gradients only (use --amp bf16)");
  scaler_ = std::make_unique<amp::GradScaler>();
}

Tensor MixedPrecision::forward(const std::function<Tensor()>& forward) const {
  if (!dtype_) return forward();
  AutocastGuard autocast(Device::cpu(), *dtype_);
  return forward();
}

void MixedPrecision::backward_and_step(const Tensor& loss, optim::Optimizer& optimizer,
                                       const std::function<void()>& clip) {
  if (!scaler_) {
    loss.backward();
    if (clip) clip();
    optimizer.step();
    return;
  }
  scaler_->scale(loss).backward();
  scaler_->unscale_(optimizer);
  if (clip) clip();
  scaler_->step(optimizer);
  scaler_->update();
}

std::string MixedPrecision::describe() const {
  if (!dtype_) return "float32";
  std::ostringstream s;
  s << dtype_name(*dtype_) << " autocast";
  if (scaler_) s << ", dynamic loss scale from " << scaler_->get_scale();
  return s.str();
}

}  // namespace loom::cli
