#include "loom/amp.h"

#include <cmath>
#include <string>
#include <vector>

#include "loom/autograd.h"
#include "loom/ops.h"

namespace loom::amp {

namespace {

void check_options(const GradScalerOptions& o) {
  LOOM_CHECK(o.init_scale > 0 && std::isfinite(o.init_scale), "GradScaler: init_scale must be positive and finite, got ",
             o.init_scale);
  LOOM_CHECK(o.growth_factor > 1.0, "GradScaler: growth_factor must be > 1, got ", o.growth_factor);
  LOOM_CHECK(o.backoff_factor > 0.0 && o.backoff_factor < 1.0, "GradScaler: backoff_factor must be in (0, 1), got ",
             o.backoff_factor);
  LOOM_CHECK(o.growth_interval > 0, "GradScaler: growth_interval must be positive, got ", o.growth_interval);
}

}  // namespace

GradScaler::GradScaler(GradScalerOptions options) : options_(options), scale_(options.init_scale) {
  check_options(options_);
}

Tensor GradScaler::scale(const Tensor& loss) const {
  LOOM_CHECK(loss.defined(), "GradScaler::scale: the loss is an undefined tensor");
  if (!options_.enabled) return loss;
  LOOM_CHECK(is_floating_point(loss.dtype()), "GradScaler::scale: expected a floating-point loss, got ",
             dtype_name(loss.dtype()));
  // A float32 factor, as PyTorch's scale tensor: the product promotes a
  // float16 loss to float32, so the scaled loss itself cannot overflow.
  return loss * full({}, scale_, TensorOptions(kFloat32).device(loss.device()));
}

void GradScaler::unscale_(optim::Optimizer& optimizer) {
  if (!options_.enabled) return;
  Record& r = records_[&optimizer];
  LOOM_CHECK(!r.stepped, "GradScaler::unscale_: step() was already called on this optimizer since the last update()");
  LOOM_CHECK(!r.unscaled, "GradScaler::unscale_: already called on this optimizer since the last update()");
  NoGradGuard no_grad;
  // The scale is a power of two while it only grows and backs off by the
  // defaults, so the division is exact; any scale works.
  const double inv = 1.0 / scale_;
  std::vector<Tensor> maxima;
  int64_t index = 0;
  for (const optim::ParamGroup& group : optimizer.param_groups()) {
    for (const Tensor& p : group.params()) {
      Tensor g = p.grad();
      if (g.defined() && g.numel() > 0) {
        LOOM_CHECK(g.dtype() != kFloat16 && g.dtype() != kBFloat16, "GradScaler::unscale_: the gradient of parameter ",
                   index, " is ", dtype_name(g.dtype()),
                   ": keep master weights (and so gradients) in float32 and run the model in low precision "
                   "under autocast");
        g.mul_(inv);
        // amax lets a NaN win, and |inf| is inf: non-finite iff this is.
        maxima.push_back(amax(abs(g)).to(kFloat64));
      }
      ++index;
    }
  }
  r.found_inf = !maxima.empty() && !std::isfinite(amax(stack(maxima)).item<double>());
  r.unscaled = true;
}

bool GradScaler::step(optim::Optimizer& optimizer) {
  if (!options_.enabled) {
    optimizer.step();
    return true;
  }
  Record& r = records_[&optimizer];  // a std::map's references stay valid
  LOOM_CHECK(!r.stepped, "GradScaler::step: already called on this optimizer since the last update()");
  if (!r.unscaled) unscale_(optimizer);
  r.stepped = true;
  if (r.found_inf) return false;
  optimizer.step();
  return true;
}

void GradScaler::update() {
  if (!options_.enabled) return;
  bool any = false, found_inf = false;
  for (const auto& [opt, r] : records_) {
    if (!r.unscaled) continue;
    any = true;
    found_inf = found_inf || r.found_inf;
  }
  records_.clear();
  LOOM_CHECK(any, "GradScaler::update: no inf checks were recorded since the last update() (call step() or "
             "unscale_() first)");
  if (found_inf) {
    scale_ *= options_.backoff_factor;
    growth_tracker_ = 0;
  } else if (++growth_tracker_ == options_.growth_interval) {
    scale_ *= options_.growth_factor;
    growth_tracker_ = 0;
  }
}

void GradScaler::update(double new_scale) {
  LOOM_CHECK(new_scale > 0 && std::isfinite(new_scale), "GradScaler::update: the new scale must be positive and "
             "finite, got ", new_scale);
  records_.clear();
  scale_ = new_scale;
  growth_tracker_ = 0;
}

StateDict GradScaler::state_dict() const {
  if (!options_.enabled) return {};
  auto scalar = [](double v) { return full({}, v, kFloat64); };
  return {{"scale", scalar(scale_)},
          {"growth_factor", scalar(options_.growth_factor)},
          {"backoff_factor", scalar(options_.backoff_factor)},
          {"growth_interval", scalar(static_cast<double>(options_.growth_interval))},
          {"_growth_tracker", scalar(static_cast<double>(growth_tracker_))}};
}

void GradScaler::load_state_dict(const StateDict& state) {
  LOOM_CHECK(!state.empty(), "GradScaler::load_state_dict: the state is empty (saved from a disabled GradScaler?)");
  auto value = [&](const std::string& key) {
    for (const auto& [name, t] : state)
      if (name == key) {
        LOOM_CHECK(t.defined() && t.numel() == 1, "GradScaler::load_state_dict: '", key, "' must hold one value");
        return t.item<double>();
      }
    LOOM_ERROR("GradScaler::load_state_dict: the state has no '", key, "'");
  };
  GradScalerOptions o = options_;
  o.init_scale = value("scale");
  o.growth_factor = value("growth_factor");
  o.backoff_factor = value("backoff_factor");
  o.growth_interval = static_cast<int64_t>(value("growth_interval"));
  check_options(o);
  const double tracker = value("_growth_tracker");
  LOOM_CHECK(tracker >= 0 && tracker < static_cast<double>(o.growth_interval),
             "GradScaler::load_state_dict: '_growth_tracker' ", tracker, " is outside [0, growth_interval)");
  options_ = o;
  scale_ = o.init_scale;
  growth_tracker_ = static_cast<int64_t>(tracker);
  records_.clear();
}

}  // namespace loom::amp
