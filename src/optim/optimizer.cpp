#include "core/capture.h"
#include "loom/optim/optimizer.h"

#include <algorithm>
#include <charconv>
#include <map>
#include <set>
#include <typeinfo>

#include "loom/autograd.h"
#include "loom/ops.h"

namespace loom::optim {

// ---- OptimizerOptions ----

std::vector<std::pair<std::string, double>> OptimizerOptions::hyperparameters() const {
  // fields() hands out pointers for writing too; here they are only read.
  auto fs = const_cast<OptimizerOptions*>(this)->fields();
  std::vector<std::pair<std::string, double>> out;
  for (auto& [name, field] : fs) {
    if (auto* d = std::get_if<double*>(&field)) out.emplace_back(name, **d);
    else out.emplace_back(name, *std::get<bool*>(field) ? 1.0 : 0.0);
  }
  return out;
}

bool OptimizerOptions::has_hyperparameter(const std::string& name) const {
  for (auto& [n, v] : hyperparameters())
    if (n == name) return true;
  return false;
}

double OptimizerOptions::hyperparameter(const std::string& name) const {
  for (auto& [n, v] : hyperparameters())
    if (n == name) return v;
  LOOM_ERROR(optimizer_name(), ": no hyperparameter named \"", name, "\"");
}

void OptimizerOptions::set_hyperparameter(const std::string& name, double value) {
  for (auto& [n, field] : fields()) {
    if (name != n) continue;
    if (auto* d = std::get_if<double*>(&field)) {
      **d = value;
    } else {
      LOOM_CHECK(value == 0.0 || value == 1.0, optimizer_name(), ": hyperparameter \"", name,
                 "\" is a boolean and takes 0 or 1, got ", value);
      *std::get<bool*>(field) = value != 0.0;
    }
    return;
  }
  LOOM_ERROR(optimizer_name(), ": no hyperparameter named \"", name, "\"");
}

// ---- ParamState ----

bool ParamState::contains(const std::string& name) const {
  return std::any_of(entries_.begin(), entries_.end(), [&](const auto& e) { return e.first == name; });
}

const Tensor& ParamState::at(const std::string& name) const {
  for (const auto& [n, t] : entries_)
    if (n == name) return t;
  LOOM_ERROR("optimizer state: no entry \"", name, "\"");
}

Tensor& ParamState::at(const std::string& name) {
  return const_cast<Tensor&>(static_cast<const ParamState*>(this)->at(name));
}

void ParamState::set(const std::string& name, Tensor value) {
  for (auto& [n, t] : entries_)
    if (n == name) {
      t = std::move(value);
      return;
    }
  entries_.emplace_back(name, std::move(value));
}

// ---- ParamGroup ----

ParamGroup::ParamGroup(std::vector<Tensor> params) : params_(std::move(params)) {}

ParamGroup::ParamGroup(std::vector<Tensor> params, const OptimizerOptions& options)
    : params_(std::move(params)), options_(options.clone()) {}

ParamGroup::ParamGroup(const ParamGroup& other)
    : params_(other.params_), options_(other.options_ ? other.options_->clone() : nullptr),
      initial_lr_(other.initial_lr_) {}

ParamGroup& ParamGroup::operator=(const ParamGroup& other) {
  if (this != &other) {
    params_ = other.params_;
    options_ = other.options_ ? other.options_->clone() : nullptr;
    initial_lr_ = other.initial_lr_;
  }
  return *this;
}

OptimizerOptions& ParamGroup::options() {
  LOOM_CHECK(options_ != nullptr, "ParamGroup: this group has no options yet (an optimizer gives it its defaults)");
  return *options_;
}

const OptimizerOptions& ParamGroup::options() const {
  LOOM_CHECK(options_ != nullptr, "ParamGroup: this group has no options yet (an optimizer gives it its defaults)");
  return *options_;
}

// ---- Optimizer ----

Optimizer::Optimizer(std::vector<ParamGroup> param_groups, std::unique_ptr<OptimizerOptions> defaults)
    : defaults_(std::move(defaults)) {
  LOOM_ASSERT(defaults_ != nullptr);
  defaults_->validate();
  LOOM_CHECK(!param_groups.empty(), name(), ": optimizer got an empty parameter list");
  for (auto& g : param_groups) check_and_add_group(std::move(g));
  LOOM_CHECK(!parameters().empty(), name(), ": optimizer got an empty parameter list");
}

void Optimizer::check_and_add_group(ParamGroup group) {
  const size_t g = param_groups_.size();
  if (!group.has_options()) {
    group.set_options(defaults_->clone());
  } else {
    const OptimizerOptions& o = group.options();
    LOOM_CHECK(typeid(o) == typeid(*defaults_), name(), ": parameter group ", g, " has ", o.optimizer_name(),
               " options; expected ", name(), " options");
    o.validate();
  }
  std::set<const TensorImpl*> seen;
  for (const auto& other : param_groups_)
    for (const Tensor& p : other.params()) seen.insert(p.unsafe_impl());
  for (size_t k = 0; k < group.params().size(); ++k) {
    const Tensor& p = group.params()[k];
    LOOM_CHECK(p.defined(), name(), ": parameter ", k, " of group ", g, " is an undefined tensor");
    LOOM_CHECK(p.is_floating_point(), name(), ": can only optimize floating point tensors, but parameter ", k,
               " of group ", g, " has dtype ", p.dtype());
    LOOM_CHECK(p.is_leaf(), name(), ": can't optimize a non-leaf Tensor (parameter ", k, " of group ", g,
               ", shape ", shape_str(p.sizes()), ")");
    LOOM_CHECK(seen.insert(p.unsafe_impl()).second, name(), ": some parameters appear more than once ",
               "(parameter ", k, " of group ", g, ", shape ", shape_str(p.sizes()),
               "); each parameter may be in one group, once");
  }
  param_groups_.push_back(std::move(group));
}

void Optimizer::add_param_group(const ParamGroup& group) {
  check_and_add_group(group);
  ParamGroup& added = param_groups_.back();
  for (const Tensor& p : added.params()) init_state(p, added.options(), state_[p.unsafe_impl()]);
}

void Optimizer::init_all_state() {
  for (ParamGroup& g : param_groups_)
    for (const Tensor& p : g.params()) init_state(p, g.options(), state_[p.unsafe_impl()]);
}

void Optimizer::init_state(const Tensor&, const OptimizerOptions&, ParamState&) {}

std::vector<Tensor> Optimizer::parameters() const {
  std::vector<Tensor> out;
  for (const auto& g : param_groups_) out.insert(out.end(), g.params().begin(), g.params().end());
  return out;
}

const ParamState* Optimizer::state_of(const Tensor& param) const {
  auto it = state_.find(param.unsafe_impl());
  return it == state_.end() || it->second.empty() ? nullptr : &it->second;
}

void Optimizer::advance_step(ParamState& state) {
  if (!state.contains("step")) state.set("step", scalar_tensor(0.0, kFloat64));
  // The count lives on the CPU (as PyTorch's step), but is advanced by a
  // kernel, so that a captured step (loom::compile) counts at every replay.
  state.at("step").add_(1.0);
}

double Optimizer::increment_step(ParamState& state) {
  advance_step(state);
  return state.at("step").item<double>();
}

Tensor Optimizer::step(const LossClosure& closure) {
  Tensor loss;
  if (closure) {
    AutoGradMode enable(true);
    loss = closure();
  }
  NoGradGuard no_grad;
  for (ParamGroup& group : param_groups_) {
    const OptimizerOptions& options = group.options();
    for (Tensor& p : group.params()) {
      const Tensor& grad = p.grad();
      if (!grad.defined()) continue;
      LOOM_CHECK(grad.sizes() == p.sizes(), name(), ": a parameter of shape ", shape_str(p.sizes()),
                 " has a gradient of shape ", shape_str(grad.sizes()));
    }
    if (update_group(group)) continue;
    // The per-parameter formulas compute with host numbers (the step count,
    // bias corrections, the learning rate) that a replay would freeze.
    if (capture::Recorder* r = capture::active())
      r->refuse(name(), "its per-parameter update computes with host values (step count, learning rate) "
                "that a replay would freeze; a compiled step needs the fused update (SGD, Adam or AdamW on "
                "contiguous float32 parameters, gradients and state)");
    for (Tensor& p : group.params()) {
      const Tensor& grad = p.grad();
      if (grad.defined()) update(p, grad, options, state_[p.unsafe_impl()]);
    }
  }
  return loss;
}

bool Optimizer::update_group(ParamGroup&) { return false; }

void Optimizer::zero_grad(bool set_to_none) {
  for (ParamGroup& group : param_groups_)
    for (Tensor& p : group.params()) {
      if (!p.grad().defined()) continue;
      if (set_to_none) {
        p.set_grad(Tensor());
      } else {
        // As PyTorch: a gradient built with create_graph leaves its graph
        // behind before it is zeroed in place.
        NoGradGuard no_grad;
        Tensor& g = p.mutable_grad();
        if (g.grad_fn()) g.detach_();
        else g.requires_grad_(false);
        g.zero_();
      }
    }
}

StateDict Optimizer::state_dict() const {
  StateDict out;
  int64_t index = 0;
  for (size_t g = 0; g < param_groups_.size(); ++g) {
    const ParamGroup& group = param_groups_[g];
    const std::string prefix = "param_groups." + std::to_string(g) + ".";
    for (auto& [n, v] : group.options().hyperparameters()) out.emplace_back(prefix + n, scalar_tensor(v, kFloat64));
    const auto count = static_cast<int64_t>(group.params().size());
    out.emplace_back(prefix + "params", count == 0 ? zeros({0}, kInt64) : arange(index, index + count));
    index += count;
  }
  index = 0;
  for (const ParamGroup& group : param_groups_)
    for (const Tensor& p : group.params()) {
      if (const ParamState* s = state_of(p))
        for (const auto& [n, t] : s->entries()) out.emplace_back("state." + std::to_string(index) + "." + n, t);
      ++index;
    }
  return out;
}

namespace {

// Parses a non-negative decimal index (no sign, no leading '+', no spaces).
std::optional<int64_t> parse_index(const std::string& s) {
  if (s.empty() || s.size() > 18) return std::nullopt;
  int64_t v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || ptr != s.data() + s.size() || v < 0) return std::nullopt;
  return v;
}

// "param_groups.3.lr" -> (3, "lr"); "state.7.exp_avg" -> (7, "exp_avg").
std::optional<std::pair<int64_t, std::string>> split_key(const std::string& key, const std::string& head) {
  if (key.rfind(head, 0) != 0) return std::nullopt;
  const size_t dot = key.find('.', head.size());
  if (dot == std::string::npos || dot + 1 >= key.size()) return std::nullopt;
  auto idx = parse_index(key.substr(head.size(), dot - head.size()));
  if (!idx) return std::nullopt;
  return std::make_pair(*idx, key.substr(dot + 1));
}

}  // namespace

void Optimizer::load_state_dict(const StateDict& sd) {
  // Sort the keys into groups and per-parameter state; nothing is changed
  // until every check has passed.
  std::map<int64_t, std::map<std::string, Tensor>> groups_in;
  std::map<int64_t, std::map<std::string, Tensor>> state_in;
  for (const auto& [key, t] : sd) {
    LOOM_CHECK(t.defined(), name(), ": load_state_dict: \"", key, "\" is an undefined tensor");
    auto g = split_key(key, "param_groups.");
    auto s = g ? std::nullopt : split_key(key, "state.");
    LOOM_CHECK(g || s, name(), ": load_state_dict: unexpected key \"", key,
               "\" (an optimizer state dict holds param_groups.{g}.{name} and state.{i}.{name})");
    auto& slot = g ? groups_in[g->first] : state_in[s->first];
    const std::string& field = g ? g->second : s->second;
    LOOM_CHECK(slot.emplace(field, t).second, name(), ": load_state_dict: duplicate key \"", key, "\"");
  }

  const auto n_groups = static_cast<int64_t>(param_groups_.size());
  const auto loaded_groups = groups_in.empty() ? 0 : groups_in.rbegin()->first + 1;
  LOOM_CHECK(loaded_groups == n_groups && static_cast<int64_t>(groups_in.size()) == n_groups, name(),
             ": loaded state dict has a different number of parameter groups (", groups_in.size(),
             " groups, highest index ", loaded_groups - 1, ") than the optimizer (", n_groups, ")");

  auto scalar_of = [&](const std::string& key, const Tensor& t) {
    LOOM_CHECK(t.numel() == 1 && t.dim() <= 1, name(), ": load_state_dict: \"", key,
               "\" should hold one number, got shape ", shape_str(t.sizes()));
    return t.item<double>();
  };

  // Saved parameter index -> (group, position) in this optimizer.
  std::map<int64_t, std::pair<size_t, size_t>> where;
  std::vector<std::unique_ptr<OptimizerOptions>> new_options;
  for (int64_t g = 0; g < n_groups; ++g) {
    const ParamGroup& group = param_groups_[g];
    auto& fields = groups_in[g];
    const std::string prefix = "param_groups." + std::to_string(g) + ".";
    auto options = group.options().clone();
    for (auto& [hp, v] : group.options().hyperparameters()) {
      auto it = fields.find(hp);
      LOOM_CHECK(it != fields.end(), name(), ": load_state_dict: missing key \"", prefix, hp, "\"");
      options->set_hyperparameter(hp, scalar_of(prefix + hp, it->second));
      fields.erase(it);
    }
    options->validate();
    auto it = fields.find("params");
    LOOM_CHECK(it != fields.end(), name(), ": load_state_dict: missing key \"", prefix, "params\"");
    const Tensor ids = it->second;
    LOOM_CHECK(ids.dim() == 1 && is_integral(ids.dtype(), false), name(), ": load_state_dict: \"", prefix,
               "params\" should be a 1-D integer tensor, got shape ", shape_str(ids.sizes()), " and dtype ",
               ids.dtype());
    LOOM_CHECK(ids.numel() == static_cast<int64_t>(group.params().size()), name(),
               ": loaded state dict contains a parameter group that doesn't match the size of optimizer's group (",
               "group ", g, ": ", ids.numel(), " parameters saved, ", group.params().size(), " in the optimizer)");
    std::vector<int64_t> idv = ids.to_vector<int64_t>();
    for (size_t k = 0; k < idv.size(); ++k) {
      LOOM_CHECK(idv[k] >= 0 && where.emplace(idv[k], std::make_pair(static_cast<size_t>(g), k)).second, name(),
                 ": load_state_dict: \"", prefix, "params\" holds an invalid or repeated parameter index ", idv[k]);
    }
    fields.erase(it);
    LOOM_CHECK(fields.empty(), name(), ": load_state_dict: unexpected key \"", prefix, fields.begin()->first,
               "\" (not a hyperparameter of ", name(), ")");
    new_options.push_back(std::move(options));
  }

  std::unordered_map<const TensorImpl*, ParamState> new_state;
  for (auto& [i, entries] : state_in) {
    auto w = where.find(i);
    LOOM_CHECK(w != where.end(), name(), ": load_state_dict: \"state.", i, ".", entries.begin()->first,
               "\" belongs to parameter ", i, ", which no parameter group lists");
    const auto [g, k] = w->second;
    const Tensor& p = param_groups_[g].params()[k];
    std::vector<std::string> want = state_names(*new_options[g]);
    std::vector<std::string> got;
    for (auto& [n, t] : entries) got.push_back(n);
    std::sort(want.begin(), want.end());
    LOOM_CHECK(want == got, name(), ": load_state_dict: parameter ", i, " (group ", g, ", shape ",
               shape_str(p.sizes()), ") has state entries {", [&] {
                 std::string s;
                 for (auto& n : got) s += (s.empty() ? "" : ", ") + n;
                 return s;
               }(), "} but ", name(), " with these options keeps {", [&] {
                 std::string s;
                 for (auto& n : want) s += (s.empty() ? "" : ", ") + n;
                 return s;
               }(), "}");
    ParamState st;
    for (auto& [n, t] : entries) {
      const std::string key = "state." + std::to_string(i) + "." + n;
      if (n == "step") {
        st.set(n, scalar_tensor(scalar_of(key, t), kFloat64));
        continue;
      }
      LOOM_CHECK(t.sizes() == p.sizes(), name(), ": load_state_dict: \"", key, "\" has shape ",
                 shape_str(t.sizes()), " but parameter ", i, " has shape ", shape_str(p.sizes()));
      LOOM_CHECK(t.is_floating_point(), name(), ": load_state_dict: \"", key, "\" has dtype ", t.dtype(),
                 "; expected a floating point tensor");
      // A copy in the parameter's dtype and device: the loaded dict may be
      // reused or freed, and a float64 checkpoint can resume a float32 run.
      Tensor copy = empty_like(p);
      {
        NoGradGuard no_grad;
        copy.copy_(t.detach());
      }
      st.set(n, copy);
    }
    new_state[p.unsafe_impl()] = std::move(st);
  }

  for (int64_t g = 0; g < n_groups; ++g) param_groups_[g].set_options(std::move(new_options[g]));
  state_ = std::move(new_state);
}

}  // namespace loom::optim
