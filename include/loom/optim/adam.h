// optim::Adam (torch.optim.Adam): adaptive moments with bias correction,
// L2 weight decay added to the gradient, optional AMSGrad.
#pragma once

#include <tuple>

#include "loom/optim/optimizer.h"

namespace loom::optim {

// AdamOptions(lr = 1e-3) with chainable setters: AdamOptions(3e-4).betas({0.9, 0.98}).
//   lr            learning rate (>= 0)
//   betas         decay rates of the first and second moment estimates (each in [0, 1))
//   eps           added to the denominator (>= 0)
//   weight_decay  L2 penalty added to the gradient (>= 0)
//   amsgrad       normalize by the running maximum of the second moment
//   maximize      ascend instead of descend
// By name (state dict, schedulers) the betas are "betas0" and "betas1".
struct AdamOptions : OptimizerOptions {
  AdamOptions(double lr = 1e-3);  // NOLINT: implicit as libtorch's
  std::unique_ptr<OptimizerOptions> clone() const override { return std::make_unique<AdamOptions>(*this); }
  const char* optimizer_name() const override { return "Adam"; }
  void validate() const override;
  double get_lr() const override { return lr_; }
  void set_lr(double lr) override { lr_ = lr; }

  using betas_t = std::tuple<double, double>;
  LOOM_OPTIM_ARG(double, lr, 1e-3);
  LOOM_OPTIM_ARG(betas_t, betas, betas_t(0.9, 0.999));
  LOOM_OPTIM_ARG(double, eps, 1e-8);
  LOOM_OPTIM_ARG(double, weight_decay, 0.0);
  LOOM_OPTIM_ARG(bool, amsgrad, false);
  LOOM_OPTIM_ARG(bool, maximize, false);
  // The multi-tensor step (Note [Fused optimizer steps]): one kernel launch
  // per group, same results. Unset (the default): used when every parameter
  // with a gradient, its gradient and its state are contiguous float32 cpu
  // tensors, else the per-tensor path runs. true: required (an Error says
  // which tensor does not qualify). false: never. Not a hyperparameter: the
  // state dict does not hold it.
  LOOM_OPTIM_ARG(std::optional<bool>, fused, std::nullopt);

 protected:
  std::vector<std::pair<const char*, Field>> fields() override;
};

// Per step t (1, 2, ...), for each parameter p with gradient g (PyTorch's
// single-tensor algorithm):
//   g = maximize ? -g : g;  if weight_decay: g += weight_decay * p
//   m = beta1 * m + (1 - beta1) * g;   v = beta2 * v + (1 - beta2) * g * g
//   v_hat = amsgrad ? (v_max = max(v_max, v)) : v
//   denom = sqrt(v_hat) / sqrt(1 - beta2^t) + eps
//   p -= lr / (1 - beta1^t) * m / denom
// State: "step", "exp_avg", "exp_avg_sq", and "max_exp_avg_sq" with amsgrad.
class Adam : public Optimizer {
 public:
  Adam(std::vector<Tensor> params, const AdamOptions& defaults = {});
  Adam(std::vector<ParamGroup> param_groups, const AdamOptions& defaults = {});

 protected:
  void update(Tensor& param, const Tensor& grad, const OptimizerOptions& options, ParamState& state) override;
  bool update_group(ParamGroup& group) override;
  std::vector<std::string> state_names(const OptimizerOptions& options) const override;
};

}  // namespace loom::optim
