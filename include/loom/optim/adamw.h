// optim::AdamW (torch.optim.AdamW): Adam with decoupled weight decay.
#pragma once

#include <tuple>

#include "loom/optim/optimizer.h"

namespace loom::optim {

// AdamWOptions(lr = 1e-3) with chainable setters: AdamWOptions(1e-3).weight_decay(0.05).
//   lr            learning rate (>= 0)
//   betas         decay rates of the first and second moment estimates (each in [0, 1))
//   eps           added to the denominator (>= 0)
//   weight_decay  decoupled decay: p *= 1 - lr * weight_decay each step (>= 0; default 1e-2)
//   amsgrad       normalize by the running maximum of the second moment
//   maximize      ascend instead of descend
// By name (state dict, schedulers) the betas are "betas0" and "betas1".
struct AdamWOptions : OptimizerOptions {
  AdamWOptions(double lr = 1e-3);  // NOLINT: implicit as libtorch's
  std::unique_ptr<OptimizerOptions> clone() const override { return std::make_unique<AdamWOptions>(*this); }
  const char* optimizer_name() const override { return "AdamW"; }
  void validate() const override;
  double get_lr() const override { return lr_; }
  void set_lr(double lr) override { lr_ = lr; }

  using betas_t = std::tuple<double, double>;
  LOOM_OPTIM_ARG(double, lr, 1e-3);
  LOOM_OPTIM_ARG(betas_t, betas, betas_t(0.9, 0.999));
  LOOM_OPTIM_ARG(double, eps, 1e-8);
  LOOM_OPTIM_ARG(double, weight_decay, 1e-2);
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

// Per step: p *= 1 - lr * weight_decay, then Adam's update (see adam.h)
// without the L2 term. State: as Adam's.
class AdamW : public Optimizer {
 public:
  AdamW(std::vector<Tensor> params, const AdamWOptions& defaults = {});
  AdamW(std::vector<ParamGroup> param_groups, const AdamWOptions& defaults = {});

 protected:
  void update(Tensor& param, const Tensor& grad, const OptimizerOptions& options, ParamState& state) override;
  bool update_group(ParamGroup& group) override;
  std::vector<std::string> state_names(const OptimizerOptions& options) const override;
};

}  // namespace loom::optim
