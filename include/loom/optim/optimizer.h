// optim::Optimizer, the base of every optimizer, with its parameter groups,
// per-parameter state and state dict (libtorch's torch::optim::Optimizer).
//
//   optim::AdamW opt(model->parameters(), optim::AdamWOptions(1e-3).weight_decay(0.01));
//   loss.backward(); opt.step(); opt.zero_grad();
//
// Parameter groups carry their own options:
//
//   std::vector<optim::ParamGroup> groups;
//   groups.emplace_back(body->parameters());                              // the defaults
//   groups.emplace_back(head->parameters(), optim::SGDOptions(0.1));      // its own options
//   optim::SGD opt(std::move(groups), optim::SGDOptions(0.01).momentum(0.9));
//
// A group's options are a complete options object of the optimizer's type
// (as in libtorch): a group built without options gets a copy of the
// optimizer's defaults.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include "loom/state_dict.h"
#include "loom/tensor.h"

// Declares an option with a chainable setter and a getter, as libtorch's
// TORCH_ARG: `AdamOptions(1e-3).eps(1e-6)` sets, `options.eps()` reads.
#define LOOM_OPTIM_ARG(T, name, default_value)  \
 public:                                        \
  auto& name(const T& value) {                  \
    name##_ = value;                            \
    return *this;                               \
  }                                             \
  const T& name() const { return name##_; }     \
                                                \
 private:                                       \
  T name##_ = default_value

namespace loom::optim {

// The options every optimizer's options derive from. Hyperparameters are
// also reachable by name, which is how schedulers (OneCycleLR cycles
// "momentum" or "betas0") and state dicts reach them without knowing the
// concrete type. Names are PyTorch's, with tuple members numbered:
// "lr", "momentum", "weight_decay", "betas0", "betas1", "eps", ...
class OptimizerOptions {
 public:
  virtual ~OptimizerOptions() = default;
  virtual std::unique_ptr<OptimizerOptions> clone() const = 0;
  // The optimizer these options belong to ("Adam"), for error messages.
  virtual const char* optimizer_name() const = 0;
  // Throws loom::Error worded as PyTorch's ValueError ("Invalid learning rate: -1").
  virtual void validate() const = 0;
  virtual double get_lr() const = 0;
  virtual void set_lr(double lr) = 0;

  // Every hyperparameter in a fixed order; booleans as 0 or 1.
  std::vector<std::pair<std::string, double>> hyperparameters() const;
  bool has_hyperparameter(const std::string& name) const;
  double hyperparameter(const std::string& name) const;
  // Sets by name (a boolean takes 0 or 1). Unknown names are an error. The
  // value is checked by the optimizer's next validate(), not here.
  void set_hyperparameter(const std::string& name, double value);

 protected:
  using Field = std::variant<double*, bool*>;
  // The hyperparameters as (name, pointer to the member), in a fixed order.
  virtual std::vector<std::pair<const char*, Field>> fields() = 0;
};

// A parameter's optimizer state: named tensors ("step", "exp_avg", ...).
// "step" is a 0-dim float64 tensor on the CPU; the others have the
// parameter's shape, dtype and device.
//
// Note [Optimizer updates]
// A step writes each parameter in place (its handle, held by the model, must
// stay valid) but rebuilds the optimizer's own state tensors from
// out-of-place results and swaps them in. The arithmetic is the same either
// way; an in-place op costs an extra pass (loom computes the result, then
// copies it in), and the state is most of an update's work. So a state entry
// is a new tensor after every step: read it through the optimizer
// (state_of, state_dict) rather than keeping a handle across steps. The
// fused multi-tensor steps of Adam, AdamW and SGD (their `fused` option)
// instead update the state in place in the same single pass that writes the
// parameters; the numbers are the same.
class ParamState {
 public:
  bool empty() const { return entries_.empty(); }
  bool contains(const std::string& name) const;
  // The entry `name`; an Error naming it when it is absent.
  const Tensor& at(const std::string& name) const;
  Tensor& at(const std::string& name);
  // Adds or replaces an entry.
  void set(const std::string& name, Tensor value);
  const StateDict& entries() const { return entries_; }

 private:
  StateDict entries_;
};

// Parameters optimized with the same options.
class ParamGroup {
 public:
  // Takes the optimizer's default options.
  explicit ParamGroup(std::vector<Tensor> params);
  // Uses `options`, which must be of the optimizer's options type.
  ParamGroup(std::vector<Tensor> params, const OptimizerOptions& options);
  ParamGroup(const ParamGroup& other);
  ParamGroup& operator=(const ParamGroup& other);
  ParamGroup(ParamGroup&&) noexcept = default;
  ParamGroup& operator=(ParamGroup&&) noexcept = default;

  std::vector<Tensor>& params() { return params_; }
  const std::vector<Tensor>& params() const { return params_; }
  bool has_options() const { return options_ != nullptr; }
  OptimizerOptions& options();
  const OptimizerOptions& options() const;
  // The options as their concrete type: group.options_as<AdamOptions>().betas().
  template <typename Options>
  Options& options_as() {
    auto* o = dynamic_cast<Options*>(&options());
    LOOM_CHECK(o != nullptr, "ParamGroup: options_as: the group's options are ", options().optimizer_name(),
               " options, not the type asked for");
    return *o;
  }
  void set_options(std::unique_ptr<OptimizerOptions> options) { options_ = std::move(options); }

  // The schedule's base learning rate (PyTorch's group["initial_lr"]): set by
  // the first scheduler attached to the optimizer (OneCycleLR sets it to
  // max_lr / div_factor) and read by the schedulers built after it, so that
  // several schedulers on one optimizer share one base.
  std::optional<double> initial_lr() const { return initial_lr_; }
  void set_initial_lr(double lr) { initial_lr_ = lr; }

 private:
  std::vector<Tensor> params_;
  std::unique_ptr<OptimizerOptions> options_;
  std::optional<double> initial_lr_;
};

class Optimizer {
 public:
  // Optional closure that recomputes the loss (runs with grad mode on).
  using LossClosure = std::function<Tensor()>;

  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // One update of every parameter whose gradient is defined, under
  // NoGradGuard and in place (parameter handles stay valid). Returns the
  // closure's loss, or an undefined Tensor without a closure.
  Tensor step(const LossClosure& closure = nullptr);
  // Clears every parameter's gradient (set_to_none) or zeroes it in place.
  void zero_grad(bool set_to_none = true);

  std::vector<ParamGroup>& param_groups() { return param_groups_; }
  const std::vector<ParamGroup>& param_groups() const { return param_groups_; }
  // Appends a group (its options are checked; a parameter already in the
  // optimizer is an error).
  void add_param_group(const ParamGroup& group);
  // Every parameter, in group order: the index here is the parameter's
  // global index in the state dict.
  std::vector<Tensor> parameters() const;

  const OptimizerOptions& defaults() const { return *defaults_; }
  OptimizerOptions& defaults() { return *defaults_; }
  // "SGD", "Adam", ...
  const char* name() const { return defaults_->optimizer_name(); }

  // The state of `param`, or nullptr when it has none (not stepped yet).
  const ParamState* state_of(const Tensor& param) const;

  // Note [Optimizer state dict]
  // A flat set of named tensors, so a checkpoint stores it as it stores a
  // module's state dict:
  //   "param_groups.{g}.{hyperparameter}"  0-dim float64 (booleans as 0/1):
  //                                        lr, momentum, betas0, betas1, eps, ...
  //   "param_groups.{g}.params"            1-D int64: the group's global
  //                                        parameter indices
  //   "state.{i}.{name}"                   per-parameter state of parameter i
  //                                        (global index, group order): "step"
  //                                        (0-dim float64), "exp_avg", ...
  // The state tensors are the optimizer's own (not copies), as PyTorch's.
  virtual StateDict state_dict() const;
  // Restores hyperparameters and state (copied, cast to each parameter's
  // dtype and device) from a state_dict() of an optimizer of the same kind
  // over parameters of the same shapes in the same groups. Everything is
  // checked before anything changes: the group count, each group's size,
  // every key, every state shape; an Error names the key and the shapes.
  virtual void load_state_dict(const StateDict& state_dict);

 protected:
  Optimizer(std::vector<ParamGroup> param_groups, std::unique_ptr<OptimizerOptions> defaults);

  // One parameter's update: `grad` is param's gradient (defined, same shape),
  // `state` its state (empty before its first step). Runs under NoGradGuard.
  virtual void update(Tensor& param, const Tensor& grad, const OptimizerOptions& options,
                      ParamState& state) = 0;
  // The whole group's update at once (the fused multi-tensor steps). Returns
  // false to let step() call update() per parameter instead. Every gradient
  // in the group has been checked against its parameter's shape. Runs under
  // NoGradGuard.
  virtual bool update_group(ParamGroup& group);
  // The state of `param` (created empty on first use).
  ParamState& state_for(const Tensor& param) { return state_[param.unsafe_impl()]; }
  // The state entries a stepped parameter holds under `options`
  // (load_state_dict checks a loaded parameter's state against them).
  virtual std::vector<std::string> state_names(const OptimizerOptions& options) const = 0;
  // Called for each new group's parameters: optimizers that create state
  // before the first step (Adagrad's accumulator) do it here.
  virtual void init_state(const Tensor& param, const OptimizerOptions& options, ParamState& state);

  // Adds 1 to the 0-dim float64 "step" entry (creating it at 0 if absent)
  // and returns the new count.
  static double increment_step(ParamState& state);
  // The same without reading the count back (the fused paths, which a
  // capture records: the count is a kernel's, never a host read).
  static void advance_step(ParamState& state);

  // Runs init_state over every parameter: derived constructors call it, as
  // virtual calls do not reach them from the base constructor.
  void init_all_state();

 private:
  void check_and_add_group(ParamGroup group);

  std::unique_ptr<OptimizerOptions> defaults_;
  std::vector<ParamGroup> param_groups_;
  std::unordered_map<const TensorImpl*, ParamState> state_;
};

}  // namespace loom::optim
