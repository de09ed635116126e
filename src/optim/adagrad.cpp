#include "loom/optim/adagrad.h"

#include "loom/ops.h"

namespace loom::optim {

AdagradOptions::AdagradOptions(double lr) : lr_(lr) {}

void AdagradOptions::validate() const {
  // Written as x >= 0 so that NaN is rejected too.
  LOOM_CHECK(lr_ >= 0.0, "Adagrad: Invalid learning rate: ", lr_);
  LOOM_CHECK(lr_decay_ >= 0.0, "Adagrad: Invalid lr_decay value: ", lr_decay_);
  LOOM_CHECK(weight_decay_ >= 0.0, "Adagrad: Invalid weight_decay value: ", weight_decay_);
  LOOM_CHECK(initial_accumulator_value_ >= 0.0, "Adagrad: Invalid initial_accumulator_value value: ",
             initial_accumulator_value_);
  LOOM_CHECK(eps_ >= 0.0, "Adagrad: Invalid epsilon value: ", eps_);
}

std::vector<std::pair<const char*, OptimizerOptions::Field>> AdagradOptions::fields() {
  return {{"lr", &lr_},
          {"lr_decay", &lr_decay_},
          {"weight_decay", &weight_decay_},
          {"initial_accumulator_value", &initial_accumulator_value_},
          {"eps", &eps_},
          {"maximize", &maximize_}};
}

Adagrad::Adagrad(std::vector<Tensor> params, const AdagradOptions& defaults)
    : Adagrad(std::vector<ParamGroup>{ParamGroup(std::move(params))}, defaults) {}

Adagrad::Adagrad(std::vector<ParamGroup> param_groups, const AdagradOptions& defaults)
    : Optimizer(std::move(param_groups), defaults.clone()) {
  init_all_state();
}

std::vector<std::string> Adagrad::state_names(const OptimizerOptions&) const { return {"step", "sum"}; }

void Adagrad::init_state(const Tensor& param, const OptimizerOptions& options, ParamState& state) {
  const auto& o = static_cast<const AdagradOptions&>(options);
  if (!state.contains("step")) state.set("step", scalar_tensor(0.0, kFloat64));
  if (!state.contains("sum")) state.set("sum", full_like(param, o.initial_accumulator_value()));
}

// PyTorch's _single_tensor_adagrad; products grouped as its addcmul / addcdiv
// kernels group them ((value * a) * b and (value * a) / b). See Note
// [Optimizer updates]: the sum is rebuilt, the parameter written in place.
void Adagrad::update(Tensor& param, const Tensor& grad_in, const OptimizerOptions& options, ParamState& state) {
  const auto& o = static_cast<const AdagradOptions&>(options);
  init_state(param, options, state);
  const double step = increment_step(state);
  Tensor grad = o.maximize() ? -grad_in : grad_in;
  if (o.weight_decay() != 0.0) grad = grad.add(param, o.weight_decay());
  const double clr = o.lr() / (1.0 + (step - 1.0) * o.lr_decay());
  Tensor& sum = state.at("sum");
  sum = sum + grad * grad;
  Tensor denom = sum.sqrt() + o.eps();
  param.add_(grad * -clr / denom);
}

}  // namespace loom::optim
