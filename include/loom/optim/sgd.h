// optim::SGD: stochastic gradient descent with momentum, dampening, Nesterov
// momentum and L2 weight decay (torch.optim.SGD).
#pragma once

#include "loom/optim/optimizer.h"

namespace loom::optim {

// SGDOptions(lr) with chainable setters: SGDOptions(0.1).momentum(0.9).nesterov(true).
//   lr            learning rate (required, >= 0)
//   momentum      momentum factor (>= 0; 0 turns momentum off)
//   dampening     dampening of the momentum (not applied on the first step)
//   weight_decay  L2 penalty added to the gradient (>= 0)
//   nesterov      Nesterov momentum (needs momentum > 0 and dampening 0)
//   maximize      ascend instead of descend
struct SGDOptions : OptimizerOptions {
  SGDOptions(double lr);  // NOLINT: implicit as libtorch's, SGD(params, 0.1)
  std::unique_ptr<OptimizerOptions> clone() const override { return std::make_unique<SGDOptions>(*this); }
  const char* optimizer_name() const override { return "SGD"; }
  void validate() const override;
  double get_lr() const override { return lr_; }
  void set_lr(double lr) override { lr_ = lr; }

  LOOM_OPTIM_ARG(double, lr, 0.0);
  LOOM_OPTIM_ARG(double, momentum, 0.0);
  LOOM_OPTIM_ARG(double, dampening, 0.0);
  LOOM_OPTIM_ARG(double, weight_decay, 0.0);
  LOOM_OPTIM_ARG(bool, nesterov, false);
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

// Per step, for each parameter p with gradient g (PyTorch's algorithm):
//   g = maximize ? -g : g;  if weight_decay: g += weight_decay * p
//   if momentum: buf = first step ? g : momentum * buf + (1 - dampening) * g
//                g = nesterov ? g + momentum * buf : buf
//   p -= lr * g
// State: "momentum_buffer" (only with momentum, from the first step on).
class SGD : public Optimizer {
 public:
  SGD(std::vector<Tensor> params, const SGDOptions& defaults);
  SGD(std::vector<ParamGroup> param_groups, const SGDOptions& defaults);

 protected:
  void update(Tensor& param, const Tensor& grad, const OptimizerOptions& options, ParamState& state) override;
  bool update_group(ParamGroup& group) override;
  std::vector<std::string> state_names(const OptimizerOptions& options) const override;
};

}  // namespace loom::optim
