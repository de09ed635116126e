// The schedules mirror torch/optim/lr_scheduler.py expression for expression
// (same operations in the same order), so the doubles come out identical.
#include "loom/optim/lr_scheduler.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <numbers>

#include "loom/ops.h"

namespace loom::optim {

namespace {

constexpr double kPi = std::numbers::pi;

Tensor vector_tensor(const std::vector<double>& v) {
  Tensor t = empty({static_cast<int64_t>(v.size())}, kFloat64);
  std::copy(v.begin(), v.end(), t.data_ptr<double>());
  return t;
}

}  // namespace

// ---- LRScheduler ----

LRScheduler::LRScheduler(Optimizer& optimizer) : optimizer_(&optimizer) {
  for (ParamGroup& g : optimizer.param_groups()) {
    if (!g.initial_lr()) g.set_initial_lr(g.options().get_lr());
    base_lrs_.push_back(*g.initial_lr());
  }
}

std::vector<double> LRScheduler::group_lrs() const {
  std::vector<double> lrs;
  for (const ParamGroup& g : optimizer_->param_groups()) lrs.push_back(g.options().get_lr());
  return lrs;
}

void LRScheduler::check_group_count() const {
  LOOM_CHECK(optimizer_->param_groups().size() == base_lrs_.size(), name(), ": the optimizer has ",
             optimizer_->param_groups().size(), " parameter groups but the scheduler was built for ",
             base_lrs_.size());
}

void LRScheduler::apply(const std::vector<double>& lrs) {
  auto& groups = optimizer_->param_groups();
  LOOM_ASSERT(lrs.size() == groups.size());
  for (size_t i = 0; i < groups.size(); ++i) groups[i].options().set_lr(lrs[i]);
  last_lr_ = lrs;
}

void LRScheduler::initial_step() {
  step_count_ = 0;
  step();
}

void LRScheduler::step() {
  check_group_count();
  ++step_count_;
  ++last_epoch_;
  apply(get_lr());
}

void LRScheduler::step_to(int64_t epoch) {
  check_group_count();
  ++step_count_;
  last_epoch_ = epoch;
  auto closed = closed_form_lr();
  apply(closed ? *closed : get_lr());
}

StateDict LRScheduler::state_dict() const {
  return {{"last_epoch", scalar_tensor(last_epoch_, kInt64)},
          {"step_count", scalar_tensor(step_count_, kInt64)},
          {"base_lrs", vector_tensor(base_lrs_)},
          {"last_lr", vector_tensor(last_lr_)}};
}

void LRScheduler::load_state_dict(const StateDict& sd) {
  std::map<std::string, Tensor> in;
  for (const auto& [k, t] : sd) {
    LOOM_CHECK(k == "last_epoch" || k == "step_count" || k == "base_lrs" || k == "last_lr", name(),
               ": load_state_dict: unexpected key \"", k, "\"");
    LOOM_CHECK(t.defined(), name(), ": load_state_dict: \"", k, "\" is an undefined tensor");
    LOOM_CHECK(in.emplace(k, t).second, name(), ": load_state_dict: duplicate key \"", k, "\"");
  }
  auto get = [&](const char* key) -> const Tensor& {
    auto it = in.find(key);
    LOOM_CHECK(it != in.end(), name(), ": load_state_dict: missing key \"", key, "\"");
    return it->second;
  };
  auto integer = [&](const char* key) {
    const Tensor& t = get(key);
    LOOM_CHECK(t.dim() == 0 && is_integral(t.dtype(), false), name(), ": load_state_dict: \"", key,
               "\" should be a 0-dim integer tensor, got shape ", shape_str(t.sizes()), " and dtype ", t.dtype());
    return t.item<int64_t>();
  };
  const size_t groups = optimizer_->param_groups().size();
  auto per_group = [&](const char* key) {
    const Tensor& t = get(key);
    LOOM_CHECK(t.dim() == 1 && t.numel() == static_cast<int64_t>(groups) && t.is_floating_point(), name(),
               ": load_state_dict: \"", key, "\" should be a 1-D float tensor of shape [", groups,
               "] (one value per parameter group), got shape ", shape_str(t.sizes()), " and dtype ", t.dtype());
    return t.to_vector<double>();
  };
  const int64_t last_epoch = integer("last_epoch");
  const int64_t step_count = integer("step_count");
  LOOM_CHECK(last_epoch >= -1 && step_count >= 0, name(), ": load_state_dict: invalid last_epoch ", last_epoch,
             " or step_count ", step_count);
  std::vector<double> base_lrs = per_group("base_lrs");
  std::vector<double> last_lr = per_group("last_lr");
  last_epoch_ = last_epoch;
  step_count_ = step_count;
  base_lrs_ = std::move(base_lrs);
  last_lr_ = std::move(last_lr);
}

// ---- StepLR ----

StepLR::StepLR(Optimizer& optimizer, int64_t step_size, double gamma)
    : LRScheduler(optimizer), step_size_(step_size), gamma_(gamma) {
  LOOM_CHECK(step_size > 0, "StepLR: step_size must be a positive integer, got ", step_size);
  initial_step();
}

std::vector<double> StepLR::get_lr() {
  std::vector<double> lrs = group_lrs();
  if (last_epoch_ == 0 || last_epoch_ % step_size_ != 0) return lrs;
  for (double& lr : lrs) lr = lr * gamma_;
  return lrs;
}

std::optional<std::vector<double>> StepLR::closed_form_lr() const {
  std::vector<double> lrs;
  for (double base : base_lrs_)
    lrs.push_back(base * std::pow(gamma_, static_cast<double>(last_epoch_ / step_size_)));
  return lrs;
}

// ---- MultiStepLR ----

MultiStepLR::MultiStepLR(Optimizer& optimizer, std::vector<int64_t> milestones, double gamma)
    : LRScheduler(optimizer), milestones_(std::move(milestones)), gamma_(gamma) {
  std::sort(milestones_.begin(), milestones_.end());
  initial_step();
}

std::vector<double> MultiStepLR::get_lr() {
  std::vector<double> lrs = group_lrs();
  const auto hits = std::count(milestones_.begin(), milestones_.end(), last_epoch_);
  if (hits == 0) return lrs;
  for (double& lr : lrs) lr = lr * std::pow(gamma_, static_cast<double>(hits));
  return lrs;
}

std::optional<std::vector<double>> MultiStepLR::closed_form_lr() const {
  // bisect_right: the number of milestones <= last_epoch.
  const auto passed = std::upper_bound(milestones_.begin(), milestones_.end(), last_epoch_) - milestones_.begin();
  std::vector<double> lrs;
  for (double base : base_lrs_) lrs.push_back(base * std::pow(gamma_, static_cast<double>(passed)));
  return lrs;
}

// ---- ExponentialLR ----

ExponentialLR::ExponentialLR(Optimizer& optimizer, double gamma) : LRScheduler(optimizer), gamma_(gamma) {
  initial_step();
}

std::vector<double> ExponentialLR::get_lr() {
  std::vector<double> lrs = group_lrs();
  if (last_epoch_ == 0) return lrs;
  for (double& lr : lrs) lr = lr * gamma_;
  return lrs;
}

std::optional<std::vector<double>> ExponentialLR::closed_form_lr() const {
  std::vector<double> lrs;
  for (double base : base_lrs_) lrs.push_back(base * std::pow(gamma_, static_cast<double>(last_epoch_)));
  return lrs;
}

// ---- CosineAnnealingLR ----

CosineAnnealingLR::CosineAnnealingLR(Optimizer& optimizer, int64_t T_max, double eta_min)
    : LRScheduler(optimizer), T_max_(T_max), eta_min_(eta_min) {
  LOOM_CHECK(T_max > 0, "CosineAnnealingLR: T_max must be a positive integer, got ", T_max);
  initial_step();
}

std::vector<double> CosineAnnealingLR::get_lr() {
  std::vector<double> lrs = group_lrs();
  if (last_epoch_ == 0) return lrs;
  const auto e = static_cast<double>(last_epoch_);
  const auto T = static_cast<double>(T_max_);
  if ((last_epoch_ - 1 - T_max_) % (2 * T_max_) == 0) {
    // The step out of a minimum (the schedule climbs back after T_max):
    // the recursive ratio below would divide by 1 + cos(pi) = 0.
    for (size_t i = 0; i < lrs.size(); ++i)
      lrs[i] = lrs[i] + (base_lrs_[i] - eta_min_) * (1 - std::cos(kPi / T)) / 2;
    return lrs;
  }
  for (double& lr : lrs)
    lr = (1 + std::cos(kPi * e / T)) / (1 + std::cos(kPi * (e - 1) / T)) * (lr - eta_min_) + eta_min_;
  return lrs;
}

std::optional<std::vector<double>> CosineAnnealingLR::closed_form_lr() const {
  const auto e = static_cast<double>(last_epoch_);
  const auto T = static_cast<double>(T_max_);
  std::vector<double> lrs;
  for (double base : base_lrs_) lrs.push_back(eta_min_ + (base - eta_min_) * (1 + std::cos(kPi * e / T)) / 2);
  return lrs;
}

// ---- LinearLR ----

LinearLR::LinearLR(Optimizer& optimizer, double start_factor, double end_factor, int64_t total_iters)
    : LRScheduler(optimizer), start_factor_(start_factor), end_factor_(end_factor), total_iters_(total_iters) {
  LOOM_CHECK(start_factor > 0 && start_factor <= 1.0,
             "LinearLR: Starting multiplicative factor expected to be greater than 0 and less or equal to 1, got ",
             start_factor);
  LOOM_CHECK(end_factor >= 0 && end_factor <= 1.0,
             "LinearLR: Ending multiplicative factor expected to be between 0 and 1, got ", end_factor);
  LOOM_CHECK(total_iters > 0, "LinearLR: total_iters must be a positive integer, got ", total_iters);
  initial_step();
}

std::vector<double> LinearLR::get_lr() {
  std::vector<double> lrs = group_lrs();
  if (last_epoch_ == 0) {
    for (double& lr : lrs) lr = lr * start_factor_;
    return lrs;
  }
  if (last_epoch_ > total_iters_) return lrs;
  const double d = end_factor_ - start_factor_;
  for (double& lr : lrs)
    lr = lr * (1. + d / (static_cast<double>(total_iters_) * start_factor_ + static_cast<double>(last_epoch_ - 1) * d));
  return lrs;
}

std::optional<std::vector<double>> LinearLR::closed_form_lr() const {
  const auto done = static_cast<double>(std::min(total_iters_, last_epoch_));
  std::vector<double> lrs;
  for (double base : base_lrs_)
    lrs.push_back(base * (start_factor_ + (end_factor_ - start_factor_) * done / static_cast<double>(total_iters_)));
  return lrs;
}

// ---- OneCycleLR ----

OneCycleLR::OneCycleLR(Optimizer& optimizer, double max_lr, int64_t total_steps, const OneCycleLROptions& options)
    : OneCycleLR(optimizer, std::vector<double>(optimizer.param_groups().size(), max_lr), total_steps, options) {}

OneCycleLR::OneCycleLR(Optimizer& optimizer, std::vector<double> max_lrs, int64_t total_steps,
                       const OneCycleLROptions& options)
    : LRScheduler(optimizer), total_steps_(total_steps), options_(options), max_lrs_(std::move(max_lrs)) {
  const OneCycleLROptions& o = options_;
  LOOM_CHECK(total_steps > 0, "OneCycleLR: Expected positive integer total_steps, but got ", total_steps);
  LOOM_CHECK(o.pct_start() >= 0 && o.pct_start() <= 1,
             "OneCycleLR: Expected float between 0 and 1 pct_start, but got ", o.pct_start());
  LOOM_CHECK(o.anneal_strategy() == "cos" || o.anneal_strategy() == "linear",
             "OneCycleLR: anneal_strategy must be one of 'cos' or 'linear', instead got ", o.anneal_strategy());
  auto& groups = optimizer.param_groups();
  LOOM_CHECK(max_lrs_.size() == groups.size(), "OneCycleLR: expected ", groups.size(),
             " values for max_lr (one per parameter group), got ", max_lrs_.size());
  if (o.cycle_momentum()) {
    const OptimizerOptions& d = optimizer.defaults();
    momentum_name_ = d.has_hyperparameter("betas0") ? "betas0" : d.has_hyperparameter("momentum") ? "momentum" : "";
    LOOM_CHECK(!momentum_name_.empty(), "OneCycleLR: optimizer must support momentum with `cycle_momentum` ",
               "option enabled (", optimizer.name(), " has neither momentum nor betas)");
  }

  const double total = static_cast<double>(total_steps);
  // Phase ends as PyTorch computes them (floats, so pct_start * total need
  // not be whole). Lr ends: 0 initial, 1 max, 2 min; momentum ends: 0 max, 1 base.
  if (o.three_phase()) {
    phases_ = {{o.pct_start() * total - 1, 0, 1, 0, 1},
               {2 * o.pct_start() * total - 2, 1, 0, 1, 0},
               {total - 1, 0, 2, 0, 0}};
  } else {
    phases_ = {{o.pct_start() * total - 1, 0, 1, 0, 1}, {total - 1, 1, 2, 1, 0}};
  }

  for (size_t i = 0; i < groups.size(); ++i) {
    initial_lrs_.push_back(max_lrs_[i] / o.div_factor());
    min_lrs_.push_back(initial_lrs_[i] / o.final_div_factor());
    groups[i].set_initial_lr(initial_lrs_[i]);
    if (!momentum_name_.empty()) groups[i].options().set_hyperparameter(momentum_name_, o.max_momentum());
  }
  base_lrs_ = initial_lrs_;
  initial_step();
}

double OneCycleLR::anneal(double start, double end, double pct) const {
  if (options_.anneal_strategy() == "cos") {
    const double cos_out = std::cos(kPi * pct) + 1;
    return end + (start - end) / 2.0 * cos_out;
  }
  return (end - start) * pct + start;
}

std::vector<double> OneCycleLR::get_lr() {
  const int64_t step_num = last_epoch_;
  LOOM_CHECK(step_num <= total_steps_, "OneCycleLR: Tried to step ", step_num + 1,
             " times. The specified number of total steps is ", total_steps_);
  auto& groups = optimizer_->param_groups();
  std::vector<double> lrs;
  for (size_t i = 0; i < groups.size(); ++i) {
    const double lr_at[3] = {initial_lrs_[i], max_lrs_[i], min_lrs_[i]};
    const double momentum_at[2] = {options_.max_momentum(), options_.base_momentum()};
    double start_step = 0;
    for (size_t k = 0; k < phases_.size(); ++k) {
      const Phase& ph = phases_[k];
      if (static_cast<double>(step_num) <= ph.end_step || k + 1 == phases_.size()) {
        const double pct = (static_cast<double>(step_num) - start_step) / (ph.end_step - start_step);
        lrs.push_back(anneal(lr_at[ph.start_lr], lr_at[ph.end_lr], pct));
        if (!momentum_name_.empty())
          groups[i].options().set_hyperparameter(
              momentum_name_, anneal(momentum_at[ph.start_momentum], momentum_at[ph.end_momentum], pct));
        break;
      }
      start_step = ph.end_step;
    }
  }
  return lrs;
}

// ---- SequentialLR ----

SequentialLR::SequentialLR(Optimizer& optimizer, std::vector<std::shared_ptr<LRScheduler>> schedulers,
                           std::vector<int64_t> milestones)
    : LRScheduler(optimizer), schedulers_(std::move(schedulers)), milestones_(std::move(milestones)) {
  LOOM_CHECK(!schedulers_.empty(), "SequentialLR: expects at least one scheduler");
  for (size_t k = 0; k < schedulers_.size(); ++k) {
    LOOM_CHECK(schedulers_[k] != nullptr, "SequentialLR: scheduler ", k, " is null");
    LOOM_CHECK(&schedulers_[k]->optimizer() == &optimizer,
               "SequentialLR: Sequential Schedulers expects all schedulers to belong to the same optimizer, but "
               "got schedulers at index ", k, " to be different than the optimizer passed in.");
  }
  LOOM_CHECK(milestones_.size() + 1 == schedulers_.size(),
             "SequentialLR: Sequential Schedulers expects number of schedulers provided to be one more than the "
             "number of milestone points, but got number of schedulers ", schedulers_.size(),
             " and the number of milestones to be equal to ", milestones_.size());
  LOOM_CHECK(std::is_sorted(milestones_.begin(), milestones_.end()),
             "SequentialLR: milestones must be sorted in increasing order");
  last_epoch_ = 0;
  // Back to the base lrs, undo the first step every scheduler took when it
  // was built, and restart the first one.
  auto& groups = optimizer.param_groups();
  for (ParamGroup& g : groups) g.options().set_lr(*g.initial_lr());
  for (auto& s : schedulers_) s->last_epoch_ -= 1;
  schedulers_[0]->initial_step();
  last_lr_ = schedulers_[0]->get_last_lr();
}

void SequentialLR::step() {
  ++last_epoch_;
  const auto idx =
      static_cast<size_t>(std::upper_bound(milestones_.begin(), milestones_.end(), last_epoch_) - milestones_.begin());
  LRScheduler& s = *schedulers_[idx];
  if (idx > 0 && milestones_[idx - 1] == last_epoch_) s.step_to(0);
  else s.step();
  last_lr_ = s.get_last_lr();
}

StateDict SequentialLR::state_dict() const {
  StateDict out = LRScheduler::state_dict();
  for (size_t k = 0; k < schedulers_.size(); ++k)
    for (auto& [key, t] : schedulers_[k]->state_dict())
      out.emplace_back("schedulers." + std::to_string(k) + "." + key, t);
  return out;
}

void SequentialLR::load_state_dict(const StateDict& sd) {
  StateDict own;
  std::vector<StateDict> parts(schedulers_.size());
  for (const auto& [key, t] : sd) {
    if (key.rfind("schedulers.", 0) != 0) {
      own.emplace_back(key, t);
      continue;
    }
    const size_t dot = key.find('.', 11);
    const std::string idx = dot == std::string::npos ? "" : key.substr(11, dot - 11);
    const bool ok = !idx.empty() && idx.size() < 6 && std::all_of(idx.begin(), idx.end(), [](char c) { return c >= '0' && c <= '9'; }) &&
                    std::stoul(idx) < schedulers_.size();
    LOOM_CHECK(ok, "SequentialLR: load_state_dict: unexpected key \"", key, "\" (this SequentialLR holds ",
               schedulers_.size(), " schedulers)");
    parts[std::stoul(idx)].emplace_back(key.substr(dot + 1), t);
  }
  // All or nothing: a failure in any part puts back what was already loaded.
  StateDict own_before = LRScheduler::state_dict();
  std::vector<StateDict> before;
  for (auto& s : schedulers_) before.push_back(s->state_dict());
  try {
    LRScheduler::load_state_dict(own);
    for (size_t k = 0; k < schedulers_.size(); ++k) schedulers_[k]->load_state_dict(parts[k]);
  } catch (...) {
    LRScheduler::load_state_dict(own_before);
    for (size_t k = 0; k < schedulers_.size(); ++k) schedulers_[k]->load_state_dict(before[k]);
    throw;
  }
}

}  // namespace loom::optim
