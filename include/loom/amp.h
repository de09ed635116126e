// Mixed-precision training: amp::GradScaler, PyTorch's GradScaler
// (torch.cuda.amp.GradScaler / torch.amp.GradScaler), the dynamic loss scale
// that float16 training needs so small gradients do not flush to zero.
//
//   amp::GradScaler scaler;                 // scale 2^16, x2 every 2000 good steps, x0.5 after a bad one
//   Tensor loss = model->loss(x, y);
//   scaler.scale(loss).backward();          // the gradients of loss * scale
//   scaler.unscale_(optimizer);             // optional: true gradients before clipping them
//   nn::utils::clip_grad_norm_(model->parameters(), 1.0);
//   scaler.step(optimizer);                 // skipped when a gradient holds inf or NaN
//   scaler.update();                        // the next step's scale
//
// Master weights stay float32: unscaling a float16 gradient is an Error, as
// in PyTorch. Finding inf or NaN reads one value on the host per unscale,
// so a step with a GradScaler cannot be captured by loom::compile (the
// capture says so).
#pragma once

#include <cstdint>
#include <map>

#include "loom/optim/optimizer.h"
#include "loom/state_dict.h"
#include "loom/tensor.h"

namespace loom::amp {

struct GradScalerOptions {
  double init_scale = 65536.0;  // 2^16
  double growth_factor = 2.0;   // after growth_interval steps in a row without inf or NaN
  double backoff_factor = 0.5;  // after a step with inf or NaN (which is skipped)
  int64_t growth_interval = 2000;
  bool enabled = true;  // false: every method passes through (scale 1, steps always taken)
};

class GradScaler {
 public:
  explicit GradScaler(GradScalerOptions options = {});

  // loss * scale, as a float32 0-dim factor (the loss keeps its dtype).
  Tensor scale(const Tensor& loss) const;
  // Divides every gradient of `optimizer`'s parameters by the scale, in
  // place, and records whether any holds inf or NaN. Once per optimizer
  // between updates; an Error after step() or a second call.
  void unscale_(optim::Optimizer& optimizer);
  // unscale_ (unless done), then optimizer.step() unless a gradient holds
  // inf or NaN. Returns whether the step was taken. Once per optimizer
  // between updates.
  bool step(optim::Optimizer& optimizer);
  // The scale for the next iteration: times backoff_factor if any optimizer
  // unscaled since the last update found inf or NaN (and the count of good
  // steps restarts), else one more good step, and times growth_factor once
  // there are growth_interval of them in a row. Clears the per-optimizer
  // records. An Error when nothing was unscaled since the last update.
  void update();
  // Sets the scale outright (PyTorch's update(new_scale)); the count of
  // good steps restarts.
  void update(double new_scale);

  double get_scale() const { return options_.enabled ? scale_ : 1.0; }
  int64_t growth_tracker() const { return growth_tracker_; }
  bool is_enabled() const { return options_.enabled; }
  const GradScalerOptions& options() const { return options_; }

  // "scale", "growth_factor", "backoff_factor", "growth_interval",
  // "_growth_tracker": 0-dim float64 tensors (PyTorch's keys).
  StateDict state_dict() const;
  void load_state_dict(const StateDict& state);

 private:
  struct Record {
    bool unscaled = false, stepped = false, found_inf = false;
  };
  GradScalerOptions options_;
  double scale_;
  int64_t growth_tracker_ = 0;
  std::map<const optim::Optimizer*, Record> records_;
};

}  // namespace loom::amp
