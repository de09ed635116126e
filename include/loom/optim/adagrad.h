// optim::Adagrad (torch.optim.Adagrad).
#pragma once

#include "loom/optim/optimizer.h"

namespace loom::optim {

// AdagradOptions(lr = 1e-2) with chainable setters: AdagradOptions(0.1).lr_decay(1e-4).
//   lr                         learning rate (>= 0)
//   lr_decay                   the step's lr is lr / (1 + (step - 1) * lr_decay) (>= 0)
//   weight_decay               L2 penalty added to the gradient (>= 0)
//   initial_accumulator_value  starting value of the squared-gradient sum (>= 0)
//   eps                        added to the denominator (>= 0)
//   maximize                   ascend instead of descend
struct AdagradOptions : OptimizerOptions {
  AdagradOptions(double lr = 1e-2);  // NOLINT: implicit as libtorch's
  std::unique_ptr<OptimizerOptions> clone() const override { return std::make_unique<AdagradOptions>(*this); }
  const char* optimizer_name() const override { return "Adagrad"; }
  void validate() const override;
  double get_lr() const override { return lr_; }
  void set_lr(double lr) override { lr_ = lr; }

  LOOM_OPTIM_ARG(double, lr, 1e-2);
  LOOM_OPTIM_ARG(double, lr_decay, 0.0);
  LOOM_OPTIM_ARG(double, weight_decay, 0.0);
  LOOM_OPTIM_ARG(double, initial_accumulator_value, 0.0);
  LOOM_OPTIM_ARG(double, eps, 1e-10);
  LOOM_OPTIM_ARG(bool, maximize, false);

 protected:
  std::vector<std::pair<const char*, Field>> fields() override;
};

// Per step t (1, 2, ...), for each parameter p with gradient g (PyTorch's algorithm):
//   g = maximize ? -g : g;  if weight_decay: g += weight_decay * p
//   clr = lr / (1 + (t - 1) * lr_decay)
//   sum += g * g;  p -= clr * g / (sqrt(sum) + eps)
// State: "step" and "sum", created with the optimizer (as PyTorch does):
// sum starts at initial_accumulator_value.
class Adagrad : public Optimizer {
 public:
  Adagrad(std::vector<Tensor> params, const AdagradOptions& defaults = {});
  Adagrad(std::vector<ParamGroup> param_groups, const AdagradOptions& defaults = {});

 protected:
  void update(Tensor& param, const Tensor& grad, const OptimizerOptions& options, ParamState& state) override;
  std::vector<std::string> state_names(const OptimizerOptions& options) const override;
  void init_state(const Tensor& param, const OptimizerOptions& options, ParamState& state) override;
};

}  // namespace loom::optim
