// Learning-rate schedulers (torch.optim.lr_scheduler): StepLR, MultiStepLR,
// ExponentialLR, CosineAnnealingLR, LinearLR, OneCycleLR, SequentialLR.
//
//   optim::SGD opt(model->parameters(), optim::SGDOptions(0.1).momentum(0.9));
//   optim::StepLR sched(opt, /*step_size=*/30, /*gamma=*/0.1);
//   for (int epoch = 0; epoch < 90; ++epoch) { train(opt); sched.step(); }
//
// Semantics are PyTorch's, value for value:
// - Constructing a scheduler takes its first step (epoch 0) at once, so the
//   optimizer's lr is the schedule's first value before training starts.
// - step() advances last_epoch by one and sets every group's lr. Call it once
//   per epoch or once per batch, as the schedule is meant (OneCycleLR: per batch).
// - The schedules are PyTorch's chainable (recursive) forms: each step
//   rescales the group's current lr, so several schedulers may act on one
//   optimizer, and the values are exactly PyTorch's, rounding included.
// - The base learning rates are each group's initial_lr (ParamGroup::initial_lr),
//   set from its lr by the first scheduler built on the optimizer.
// - A scheduler refers to its optimizer: the optimizer must outlive it.
//
// Resuming: build the optimizer and the scheduler as for a fresh run, then
// load the optimizer's state dict (which restores each group's lr and
// momentum) and the scheduler's (which restores last_epoch and the rest).
// Note [Scheduler state dict]: a scheduler's state dict holds
//   "last_epoch" (0-dim int64), "step_count" (0-dim int64),
//   "base_lrs" and "last_lr" (1-D float64, one per parameter group);
// SequentialLR adds "schedulers.{k}.{key}" for each scheduler it holds.
// Constructor arguments (gamma, milestones, ...) are not part of it.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "loom/optim/optimizer.h"
#include "loom/state_dict.h"

namespace loom::optim {

class LRScheduler {
 public:
  virtual ~LRScheduler() = default;
  LRScheduler(const LRScheduler&) = delete;
  LRScheduler& operator=(const LRScheduler&) = delete;

  // Advances the schedule by one epoch (or batch) and sets each group's lr.
  virtual void step();
  // The lr of each group as set by the latest step.
  const std::vector<double>& get_last_lr() const { return last_lr_; }
  // The index of the latest step: 0 right after construction.
  int64_t last_epoch() const { return last_epoch_; }
  const std::vector<double>& base_lrs() const { return base_lrs_; }
  Optimizer& optimizer() const { return *optimizer_; }
  // The scheduler's name ("StepLR"), for error messages.
  virtual const char* name() const = 0;

  // See Note [Scheduler state dict].
  virtual StateDict state_dict() const;
  // Checks every key and shape (an Error names the key) before changing anything.
  virtual void load_state_dict(const StateDict& state_dict);

 protected:
  // Records the base lrs (each group's initial_lr, set to its lr when the
  // group has none). Derived constructors finish with initial_step().
  explicit LRScheduler(Optimizer& optimizer);

  // The chainable form: the groups' lrs for last_epoch_, computed from the
  // groups' current lrs (and base_lrs_).
  virtual std::vector<double> get_lr() = 0;
  // The closed form for last_epoch_, where the schedule has one. Used when
  // SequentialLR restarts this scheduler at epoch 0 (PyTorch's step(0)).
  virtual std::optional<std::vector<double>> closed_form_lr() const { return std::nullopt; }

  // PyTorch's _initial_step: resets the step count and takes step 0.
  void initial_step();
  // PyTorch's step(epoch): jumps to `epoch`, with the closed form if any.
  void step_to(int64_t epoch);
  // The groups' current lrs.
  std::vector<double> group_lrs() const;
  // Sets the groups' lrs and last_lr_.
  void apply(const std::vector<double>& lrs);
  // An Error unless the optimizer still has as many groups as base_lrs_.
  void check_group_count() const;

  Optimizer* optimizer_;
  std::vector<double> base_lrs_;
  int64_t last_epoch_ = -1;
  int64_t step_count_ = 0;
  std::vector<double> last_lr_;

  friend class SequentialLR;
};

// Multiplies the lr by gamma every step_size epochs:
// lr = base_lr * gamma^floor(epoch / step_size).
class StepLR : public LRScheduler {
 public:
  StepLR(Optimizer& optimizer, int64_t step_size, double gamma = 0.1);
  const char* name() const override { return "StepLR"; }

 protected:
  std::vector<double> get_lr() override;
  std::optional<std::vector<double>> closed_form_lr() const override;

 private:
  int64_t step_size_;
  double gamma_;
};

// Multiplies the lr by gamma at each milestone epoch (a milestone listed
// twice multiplies twice): lr = base_lr * gamma^(milestones <= epoch).
class MultiStepLR : public LRScheduler {
 public:
  MultiStepLR(Optimizer& optimizer, std::vector<int64_t> milestones, double gamma = 0.1);
  const char* name() const override { return "MultiStepLR"; }

 protected:
  std::vector<double> get_lr() override;
  std::optional<std::vector<double>> closed_form_lr() const override;

 private:
  std::vector<int64_t> milestones_;  // sorted
  double gamma_;
};

// Multiplies the lr by gamma every epoch: lr = base_lr * gamma^epoch.
class ExponentialLR : public LRScheduler {
 public:
  ExponentialLR(Optimizer& optimizer, double gamma);
  const char* name() const override { return "ExponentialLR"; }

 protected:
  std::vector<double> get_lr() override;
  std::optional<std::vector<double>> closed_form_lr() const override;

 private:
  double gamma_;
};

// Cosine annealing from base_lr to eta_min over T_max epochs (and back up
// over the next T_max, as PyTorch's):
// lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2,
// computed in PyTorch's recursive form.
class CosineAnnealingLR : public LRScheduler {
 public:
  CosineAnnealingLR(Optimizer& optimizer, int64_t T_max, double eta_min = 0.0);
  const char* name() const override { return "CosineAnnealingLR"; }

 protected:
  std::vector<double> get_lr() override;
  std::optional<std::vector<double>> closed_form_lr() const override;

 private:
  int64_t T_max_;
  double eta_min_;
};

// Scales the lr by a factor going linearly from start_factor to end_factor
// over total_iters epochs, then stays (a warmup when start_factor < 1):
// lr = base_lr * (start + (end - start) * min(epoch, total_iters) / total_iters).
class LinearLR : public LRScheduler {
 public:
  LinearLR(Optimizer& optimizer, double start_factor = 1.0 / 3, double end_factor = 1.0, int64_t total_iters = 5);
  const char* name() const override { return "LinearLR"; }

 protected:
  std::vector<double> get_lr() override;
  std::optional<std::vector<double>> closed_form_lr() const override;

 private:
  double start_factor_;
  double end_factor_;
  int64_t total_iters_;
};

// OneCycleLR's options, with chainable setters:
// OneCycleLROptions().pct_start(0.25).anneal_strategy("linear").
//   pct_start         fraction of the cycle spent raising the lr
//   anneal_strategy   "cos" or "linear"
//   cycle_momentum    cycle the momentum (SGD, RMSprop) or beta1 (Adam, AdamW)
//                     inversely to the lr, between base_momentum and max_momentum
//   div_factor        initial lr = max_lr / div_factor
//   final_div_factor  minimum lr = initial lr / final_div_factor
//   three_phase       PyTorch's three-phase schedule (up, down to the initial
//                     lr, then down to the minimum) instead of two phases
struct OneCycleLROptions {
  LOOM_OPTIM_ARG(double, pct_start, 0.3);
  LOOM_OPTIM_ARG(std::string, anneal_strategy, "cos");
  LOOM_OPTIM_ARG(bool, cycle_momentum, true);
  LOOM_OPTIM_ARG(double, base_momentum, 0.85);
  LOOM_OPTIM_ARG(double, max_momentum, 0.95);
  LOOM_OPTIM_ARG(double, div_factor, 25.0);
  LOOM_OPTIM_ARG(double, final_div_factor, 1e4);
  LOOM_OPTIM_ARG(bool, three_phase, false);
};

// The 1cycle policy: the lr rises from max_lr / div_factor to max_lr over
// pct_start of total_steps, then anneals to the minimum. Step it once per
// batch; stepping more than total_steps times is an error. Not chainable:
// each value is computed from the step index alone.
class OneCycleLR : public LRScheduler {
 public:
  OneCycleLR(Optimizer& optimizer, double max_lr, int64_t total_steps, const OneCycleLROptions& options = {});
  // One max_lr per parameter group.
  OneCycleLR(Optimizer& optimizer, std::vector<double> max_lrs, int64_t total_steps,
             const OneCycleLROptions& options = {});
  const char* name() const override { return "OneCycleLR"; }

 protected:
  std::vector<double> get_lr() override;

 private:
  struct Phase {
    double end_step;
    // Which per-group value each end takes: 0 initial, 1 max, 2 min (lr);
    // 0 max, 1 base (momentum).
    int start_lr, end_lr, start_momentum, end_momentum;
  };
  double anneal(double start, double end, double pct) const;

  int64_t total_steps_;
  OneCycleLROptions options_;
  std::vector<Phase> phases_;
  std::vector<double> initial_lrs_, max_lrs_, min_lrs_;
  // "betas0" (Adam, AdamW) or "momentum" (SGD, RMSprop); empty without cycling.
  std::string momentum_name_;
};

// Runs schedulers one after another: schedulers[k] drives epochs
// [milestones[k-1], milestones[k]), restarting at epoch 0 when it takes over.
// All of them must be built on `optimizer`; milestones has one entry fewer
// than schedulers and is sorted.
class SequentialLR : public LRScheduler {
 public:
  SequentialLR(Optimizer& optimizer, std::vector<std::shared_ptr<LRScheduler>> schedulers,
               std::vector<int64_t> milestones);
  const char* name() const override { return "SequentialLR"; }
  void step() override;
  const std::vector<std::shared_ptr<LRScheduler>>& schedulers() const { return schedulers_; }

  StateDict state_dict() const override;
  void load_state_dict(const StateDict& state_dict) override;

 protected:
  // Not used: step() hands each epoch to one of the schedulers.
  std::vector<double> get_lr() override { return group_lrs(); }

 private:
  std::vector<std::shared_ptr<LRScheduler>> schedulers_;
  std::vector<int64_t> milestones_;
};

}  // namespace loom::optim
