#include "loom/optim/rmsprop.h"

#include "loom/ops.h"

namespace loom::optim {

RMSpropOptions::RMSpropOptions(double lr) : lr_(lr) {}

void RMSpropOptions::validate() const {
  // Written as x >= 0 so that NaN is rejected too.
  LOOM_CHECK(lr_ >= 0.0, "RMSprop: Invalid learning rate: ", lr_);
  LOOM_CHECK(eps_ >= 0.0, "RMSprop: Invalid epsilon value: ", eps_);
  LOOM_CHECK(momentum_ >= 0.0, "RMSprop: Invalid momentum value: ", momentum_);
  LOOM_CHECK(weight_decay_ >= 0.0, "RMSprop: Invalid weight_decay value: ", weight_decay_);
  LOOM_CHECK(alpha_ >= 0.0, "RMSprop: Invalid alpha value: ", alpha_);
}

std::vector<std::pair<const char*, OptimizerOptions::Field>> RMSpropOptions::fields() {
  return {{"lr", &lr_},
          {"alpha", &alpha_},
          {"eps", &eps_},
          {"weight_decay", &weight_decay_},
          {"momentum", &momentum_},
          {"centered", &centered_},
          {"maximize", &maximize_}};
}

RMSprop::RMSprop(std::vector<Tensor> params, const RMSpropOptions& defaults)
    : RMSprop(std::vector<ParamGroup>{ParamGroup(std::move(params))}, defaults) {}

RMSprop::RMSprop(std::vector<ParamGroup> param_groups, const RMSpropOptions& defaults)
    : Optimizer(std::move(param_groups), defaults.clone()) {}

std::vector<std::string> RMSprop::state_names(const OptimizerOptions& options) const {
  const auto& o = static_cast<const RMSpropOptions&>(options);
  std::vector<std::string> names = {"step", "square_avg"};
  if (o.momentum() > 0.0) names.push_back("momentum_buffer");
  if (o.centered()) names.push_back("grad_avg");
  return names;
}

// PyTorch's _single_tensor_rmsprop; products grouped as its addcmul / addcdiv
// kernels group them ((value * a) * b and (value * a) / b). See Note
// [Optimizer updates]: the averages are rebuilt, the parameter written in place.
void RMSprop::update(Tensor& param, const Tensor& grad_in, const OptimizerOptions& options, ParamState& state) {
  const auto& o = static_cast<const RMSpropOptions&>(options);
  advance_step(state);
  if (!state.contains("square_avg")) state.set("square_avg", zeros_like(param));
  if (o.momentum() > 0.0 && !state.contains("momentum_buffer")) state.set("momentum_buffer", zeros_like(param));
  if (o.centered() && !state.contains("grad_avg")) state.set("grad_avg", zeros_like(param));

  Tensor grad = o.maximize() ? -grad_in : grad_in;
  if (o.weight_decay() != 0.0) grad = grad.add(param, o.weight_decay());
  const double alpha = o.alpha();
  Tensor& square_avg = state.at("square_avg");
  square_avg = square_avg * alpha + grad * (1.0 - alpha) * grad;

  Tensor avg;
  if (o.centered()) {
    Tensor& grad_avg = state.at("grad_avg");
    grad_avg = add(grad_avg * alpha, grad, 1.0 - alpha);
    avg = (square_avg - grad_avg * grad_avg).sqrt() + o.eps();
  } else {
    avg = square_avg.sqrt() + o.eps();
  }

  if (o.momentum() > 0.0) {
    Tensor& buf = state.at("momentum_buffer");
    buf = buf * o.momentum() + grad / avg;
    param.add_(buf, -o.lr());
  } else {
    param.add_(grad * -o.lr() / avg);
  }
}

}  // namespace loom::optim
