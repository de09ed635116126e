// optim::RMSprop (torch.optim.RMSprop).
#pragma once

#include "loom/optim/optimizer.h"

namespace loom::optim {

// RMSpropOptions(lr = 1e-2) with chainable setters: RMSpropOptions(1e-3).centered(true).
//   lr            learning rate (>= 0)
//   alpha         smoothing constant of the squared-gradient average (>= 0)
//   eps           added to the denominator (>= 0)
//   weight_decay  L2 penalty added to the gradient (>= 0)
//   momentum      momentum factor (>= 0)
//   centered      normalize by the estimated variance instead of the raw second moment
//   maximize      ascend instead of descend
struct RMSpropOptions : OptimizerOptions {
  RMSpropOptions(double lr = 1e-2);  // NOLINT: implicit as libtorch's
  std::unique_ptr<OptimizerOptions> clone() const override { return std::make_unique<RMSpropOptions>(*this); }
  const char* optimizer_name() const override { return "RMSprop"; }
  void validate() const override;
  double get_lr() const override { return lr_; }
  void set_lr(double lr) override { lr_ = lr; }

  LOOM_OPTIM_ARG(double, lr, 1e-2);
  LOOM_OPTIM_ARG(double, alpha, 0.99);
  LOOM_OPTIM_ARG(double, eps, 1e-8);
  LOOM_OPTIM_ARG(double, weight_decay, 0.0);
  LOOM_OPTIM_ARG(double, momentum, 0.0);
  LOOM_OPTIM_ARG(bool, centered, false);
  LOOM_OPTIM_ARG(bool, maximize, false);

 protected:
  std::vector<std::pair<const char*, Field>> fields() override;
};

// Per step, for each parameter p with gradient g (PyTorch's algorithm):
//   g = maximize ? -g : g;  if weight_decay: g += weight_decay * p
//   v = alpha * v + (1 - alpha) * g * g
//   if centered: ga = alpha * ga + (1 - alpha) * g;  avg = sqrt(v - ga * ga) + eps
//   else:        avg = sqrt(v) + eps
//   if momentum: buf = momentum * buf + g / avg;  p -= lr * buf
//   else:        p -= lr * g / avg
// State: "step", "square_avg", "momentum_buffer" (momentum > 0), "grad_avg" (centered).
class RMSprop : public Optimizer {
 public:
  RMSprop(std::vector<Tensor> params, const RMSpropOptions& defaults = {});
  RMSprop(std::vector<ParamGroup> param_groups, const RMSpropOptions& defaults = {});

 protected:
  void update(Tensor& param, const Tensor& grad, const OptimizerOptions& options, ParamState& state) override;
  std::vector<std::string> state_names(const OptimizerOptions& options) const override;
};

}  // namespace loom::optim
