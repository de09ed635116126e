// Adam and AdamW share one update (adam_update); AdamW decays the weights
// before it instead of adding an L2 term to the gradient.
#include "loom/optim/adam.h"

#include <cmath>

#include "core/capture.h"
#include "loom/ops.h"
#include "loom/optim/adamw.h"
#include "optim/fused.h"

namespace loom::optim {

namespace {

void validate_adam(const char* name, double lr, double eps, const std::tuple<double, double>& betas,
                   double weight_decay) {
  const auto [b0, b1] = betas;
  // Written as x >= 0 so that NaN is rejected too.
  LOOM_CHECK(lr >= 0.0, name, ": Invalid learning rate: ", lr);
  LOOM_CHECK(eps >= 0.0, name, ": Invalid epsilon value: ", eps);
  LOOM_CHECK(b0 >= 0.0 && b0 < 1.0, name, ": Invalid beta parameter at index 0: ", b0);
  LOOM_CHECK(b1 >= 0.0 && b1 < 1.0, name, ": Invalid beta parameter at index 1: ", b1);
  LOOM_CHECK(weight_decay >= 0.0, name, ": Invalid weight_decay value: ", weight_decay);
}

std::vector<std::string> adam_state_names(bool amsgrad) {
  if (amsgrad) return {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"};
  return {"step", "exp_avg", "exp_avg_sq"};
}

// Creates the moments on a parameter's first step (the caller creates "step").
void adam_init_state(const Tensor& param, bool amsgrad, ParamState& state) {
  if (!state.contains("exp_avg")) state.set("exp_avg", zeros_like(param));
  if (!state.contains("exp_avg_sq")) state.set("exp_avg_sq", zeros_like(param));
  if (amsgrad && !state.contains("max_exp_avg_sq")) state.set("max_exp_avg_sq", zeros_like(param));
}

// PyTorch's _single_tensor_adam after its step count has reached `step`.
// `grad` already carries maximize and the L2 term; `decay` is AdamW's
// weight shrink factor (1 for Adam). The elementwise products are grouped as
// PyTorch's addcmul / addcdiv kernels group them ((value * a) * b and
// (value * a) / b). See Note [Optimizer updates] for why the moments are
// rebuilt while the parameter is written in place.
void adam_update(Tensor& param, const Tensor& grad, double step, double lr, double beta1, double beta2,
                 double eps, bool amsgrad, double decay, ParamState& state) {
  Tensor& exp_avg = state.at("exp_avg");
  Tensor& exp_avg_sq = state.at("exp_avg_sq");
  exp_avg = add(exp_avg * beta1, grad, 1.0 - beta1);
  exp_avg_sq = exp_avg_sq * beta2 + grad * (1.0 - beta2) * grad;

  const double bias_correction1 = 1.0 - std::pow(beta1, step);
  const double bias_correction2 = 1.0 - std::pow(beta2, step);
  const double step_size = lr / bias_correction1;
  const double bias_correction2_sqrt = std::sqrt(bias_correction2);

  Tensor* second_moment = &exp_avg_sq;
  if (amsgrad) {
    Tensor& max_sq = state.at("max_exp_avg_sq");
    max_sq = maximum(max_sq, exp_avg_sq);
    second_moment = &max_sq;
  }
  Tensor denom = second_moment->sqrt() / bias_correction2_sqrt + eps;
  Tensor update = exp_avg * (-step_size) / denom;
  if (decay != 1.0) param.copy_(param * decay + update);
  else param.add_(update);
}

bool state_fusable(const ParamState& state) {
  for (const auto& [n, t] : state.entries())
    if (n != "step" && !fusable(t)) return false;
  return true;
}

// The fused path of Adam and AdamW (Note [Fused optimizer steps]): the state
// is created and counted as update() does it, then one kernel launch runs
// the group. `state_for` and `increment_step` are the optimizer's.
template <typename Options, typename StateFor, typename Increment>
bool adam_group_step(const char* name, ParamGroup& group, const Options& o, bool decoupled, StateFor state_for,
                     Increment increment_step) {
  if (o.fused() == false) return false;
  std::vector<Tensor> params, grads;
  if (!collect_fusable(name, o.fused(), group, params, grads,
                       [&](const Tensor& p) { return state_fusable(state_for(p)); }))
    return false;
  if (params.empty()) return true;
  std::vector<Tensor> exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps;
  for (const Tensor& p : params) {
    ParamState& state = state_for(p);
    increment_step(state);
    adam_init_state(p, o.amsgrad(), state);
    exp_avgs.push_back(state.at("exp_avg"));
    exp_avg_sqs.push_back(state.at("exp_avg_sq"));
    if (o.amsgrad()) max_exp_avg_sqs.push_back(state.at("max_exp_avg_sq"));
    steps.push_back(state.at("step"));
  }
  if (capture::Recorder* r = capture::active()) {
    // A replay reads the hyperparameters again: a scheduler sets the lr.
    const Options* opts = &o;
    r->bind_hyperparameters([opts] {
      capture::Hyperparameters h;
      h.lr = opts->lr();
      h.beta1 = std::get<0>(opts->betas());
      h.beta2 = std::get<1>(opts->betas());
      h.eps = opts->eps();
      h.weight_decay = opts->weight_decay();
      return h;
    });
  }
  auto fn = decoupled ? &_fused_adamw_ : &_fused_adam_;
  fn(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, o.lr(), std::get<0>(o.betas()),
     std::get<1>(o.betas()), o.weight_decay(), o.eps(), o.amsgrad(), o.maximize());
  return true;
}

}  // namespace

AdamOptions::AdamOptions(double lr) : lr_(lr) {}

void AdamOptions::validate() const { validate_adam("Adam", lr_, eps_, betas_, weight_decay_); }

std::vector<std::pair<const char*, OptimizerOptions::Field>> AdamOptions::fields() {
  return {{"lr", &lr_},   {"betas0", &std::get<0>(betas_)},   {"betas1", &std::get<1>(betas_)},
          {"eps", &eps_}, {"weight_decay", &weight_decay_}, {"amsgrad", &amsgrad_},
          {"maximize", &maximize_}};
}

Adam::Adam(std::vector<Tensor> params, const AdamOptions& defaults)
    : Adam(std::vector<ParamGroup>{ParamGroup(std::move(params))}, defaults) {}

Adam::Adam(std::vector<ParamGroup> param_groups, const AdamOptions& defaults)
    : Optimizer(std::move(param_groups), defaults.clone()) {}

std::vector<std::string> Adam::state_names(const OptimizerOptions& options) const {
  return adam_state_names(static_cast<const AdamOptions&>(options).amsgrad());
}

void Adam::update(Tensor& param, const Tensor& grad_in, const OptimizerOptions& options, ParamState& state) {
  const auto& o = static_cast<const AdamOptions&>(options);
  Tensor grad = o.maximize() ? -grad_in : grad_in;
  if (o.weight_decay() != 0.0) grad = grad.add(param, o.weight_decay());
  const double step = increment_step(state);
  adam_init_state(param, o.amsgrad(), state);
  adam_update(param, grad, step, o.lr(), std::get<0>(o.betas()), std::get<1>(o.betas()), o.eps(), o.amsgrad(),
              1.0, state);
}

bool Adam::update_group(ParamGroup& group) {
  return adam_group_step(
      "Adam", group, static_cast<const AdamOptions&>(group.options()), false,
      [this](const Tensor& p) -> ParamState& { return state_for(p); }, &Adam::advance_step);
}

AdamWOptions::AdamWOptions(double lr) : lr_(lr) {}

void AdamWOptions::validate() const { validate_adam("AdamW", lr_, eps_, betas_, weight_decay_); }

std::vector<std::pair<const char*, OptimizerOptions::Field>> AdamWOptions::fields() {
  return {{"lr", &lr_},   {"betas0", &std::get<0>(betas_)},   {"betas1", &std::get<1>(betas_)},
          {"eps", &eps_}, {"weight_decay", &weight_decay_}, {"amsgrad", &amsgrad_},
          {"maximize", &maximize_}};
}

AdamW::AdamW(std::vector<Tensor> params, const AdamWOptions& defaults)
    : AdamW(std::vector<ParamGroup>{ParamGroup(std::move(params))}, defaults) {}

AdamW::AdamW(std::vector<ParamGroup> param_groups, const AdamWOptions& defaults)
    : Optimizer(std::move(param_groups), defaults.clone()) {}

std::vector<std::string> AdamW::state_names(const OptimizerOptions& options) const {
  return adam_state_names(static_cast<const AdamWOptions&>(options).amsgrad());
}

void AdamW::update(Tensor& param, const Tensor& grad_in, const OptimizerOptions& options, ParamState& state) {
  const auto& o = static_cast<const AdamWOptions&>(options);
  const Tensor grad = o.maximize() ? -grad_in : grad_in;
  const double step = increment_step(state);
  adam_init_state(param, o.amsgrad(), state);
  // Decoupled weight decay: the weights shrink by 1 - lr * wd, then take Adam's step.
  adam_update(param, grad, step, o.lr(), std::get<0>(o.betas()), std::get<1>(o.betas()), o.eps(), o.amsgrad(),
              1.0 - o.lr() * o.weight_decay(), state);
}

bool AdamW::update_group(ParamGroup& group) {
  return adam_group_step(
      "AdamW", group, static_cast<const AdamWOptions&>(group.options()), true,
      [this](const Tensor& p) -> ParamState& { return state_for(p); }, &AdamW::advance_step);
}

}  // namespace loom::optim
