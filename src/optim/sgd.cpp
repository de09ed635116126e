#include "loom/optim/sgd.h"

#include "core/capture.h"
#include "loom/ops.h"
#include "optim/fused.h"

namespace loom::optim {

SGDOptions::SGDOptions(double lr) : lr_(lr) {}

void SGDOptions::validate() const {
  // Written as !(x >= 0) so that NaN is rejected too.
  LOOM_CHECK(lr_ >= 0.0, "SGD: Invalid learning rate: ", lr_);
  LOOM_CHECK(momentum_ >= 0.0, "SGD: Invalid momentum value: ", momentum_);
  LOOM_CHECK(weight_decay_ >= 0.0, "SGD: Invalid weight_decay value: ", weight_decay_);
  LOOM_CHECK(!nesterov_ || (momentum_ > 0.0 && dampening_ == 0.0),
             "SGD: Nesterov momentum requires a momentum and zero dampening (momentum=", momentum_,
             ", dampening=", dampening_, ")");
}

std::vector<std::pair<const char*, OptimizerOptions::Field>> SGDOptions::fields() {
  return {{"lr", &lr_},           {"momentum", &momentum_}, {"dampening", &dampening_},
          {"weight_decay", &weight_decay_}, {"nesterov", &nesterov_}, {"maximize", &maximize_}};
}

SGD::SGD(std::vector<Tensor> params, const SGDOptions& defaults)
    : SGD(std::vector<ParamGroup>{ParamGroup(std::move(params))}, defaults) {}

SGD::SGD(std::vector<ParamGroup> param_groups, const SGDOptions& defaults)
    : Optimizer(std::move(param_groups), defaults.clone()) {}

std::vector<std::string> SGD::state_names(const OptimizerOptions& options) const {
  const auto& o = static_cast<const SGDOptions&>(options);
  if (o.momentum() != 0.0) return {"momentum_buffer"};
  return {};
}

// See Note [Optimizer updates]: the buffer is rebuilt, the parameter written in place.
void SGD::update(Tensor& param, const Tensor& grad, const OptimizerOptions& options, ParamState& state) {
  const auto& o = static_cast<const SGDOptions&>(options);
  Tensor d_p = o.maximize() ? -grad : grad;
  if (o.weight_decay() != 0.0) d_p = d_p.add(param, o.weight_decay());
  if (o.momentum() != 0.0) {
    if (!state.contains("momentum_buffer")) {
      // The first step takes the gradient as it is: no dampening.
      state.set("momentum_buffer", d_p.clone());
    } else {
      Tensor& buf = state.at("momentum_buffer");
      buf = add(buf * o.momentum(), d_p, 1.0 - o.dampening());
    }
    const Tensor& buf = state.at("momentum_buffer");
    d_p = o.nesterov() ? d_p.add(buf, o.momentum()) : buf;
  }
  param.add_(d_p, -o.lr());
}

// The fused path (Note [Fused optimizer steps]). Parameters whose momentum
// buffer does not exist yet take their first step in a second launch, which
// writes buf = d_p; in a steady loop every parameter is in the first one.
bool SGD::update_group(ParamGroup& group) {
  const auto& o = static_cast<const SGDOptions&>(group.options());
  if (o.fused() == false) return false;
  const bool momentum = o.momentum() != 0.0;
  std::vector<Tensor> params, grads;
  auto state_ok = [&](const Tensor& p) {
    const ParamState& st = state_for(p);
    return !momentum || !st.contains("momentum_buffer") || fusable(st.at("momentum_buffer"));
  };
  if (!collect_fusable("SGD", o.fused(), group, params, grads, state_ok)) return false;
  if (params.empty()) return true;
  // A replay reads the hyperparameters again: a scheduler sets the lr.
  auto bind = [&o] {
    if (capture::Recorder* r = capture::active())
      r->bind_hyperparameters([opts = &o] {
        capture::Hyperparameters h;
        h.lr = opts->lr();
        h.weight_decay = opts->weight_decay();
        h.momentum = opts->momentum();
        h.dampening = opts->dampening();
        return h;
      });
  };
  if (!momentum) {
    bind();
    _fused_sgd_(params, grads, {}, o.weight_decay(), 0.0, o.lr(), o.dampening(), o.nesterov(), o.maximize(), false);
    return true;
  }
  std::vector<Tensor> ps[2], gs[2], bufs[2];  // [0]: buffer exists, [1]: first step
  for (size_t j = 0; j < params.size(); ++j) {
    ParamState& st = state_for(params[j]);
    const int first = st.contains("momentum_buffer") ? 0 : 1;
    if (first) st.set("momentum_buffer", empty_like(params[j]));
    ps[first].push_back(params[j]);
    gs[first].push_back(grads[j]);
    bufs[first].push_back(st.at("momentum_buffer"));
  }
  for (int first = 0; first < 2; ++first)
    if (!ps[first].empty()) {
      bind();
      _fused_sgd_(ps[first], gs[first], bufs[first], o.weight_decay(), o.momentum(), o.lr(), o.dampening(),
                  o.nesterov(), o.maximize(), first == 1);
    }
  return true;
}

}  // namespace loom::optim
