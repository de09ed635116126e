// optim::ZeroRedundancyOptimizer: see Note [ZeRO-1] in loom/optim/zero.h.
#include "loom/optim/zero.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>

#include "loom/autograd.h"
#include "loom/ops.h"

namespace loom::optim {

namespace {

constexpr const char* kName = "ZeroRedundancyOptimizer";

distributed::ProcessGroup* resolve_group(distributed::ProcessGroup* group) {
  if (group != nullptr) return group;
  LOOM_CHECK(distributed::is_initialized(), kName,
             ": no process group given and the default group is not initialized "
             "(call distributed::init_process_group first)");
  return &distributed::default_group();
}

TensorOptions options_of(const Tensor& t) { return TensorOptions(t.dtype()).device(t.device()); }

// Copies elements [begin, begin + shard.numel()) of the concatenation of
// `pieces` (each read flat, numels[k] elements) into shard; positions past
// the end (the padding) are left as they are.
void copy_range_into(Tensor& shard, int64_t begin, const std::vector<Tensor>& pieces,
                     const std::vector<int64_t>& numels) {
  const int64_t end = begin + shard.numel();
  int64_t offset = 0;
  for (size_t k = 0; k < pieces.size(); ++k) {
    const int64_t lo = std::max(begin, offset), hi = std::min(end, offset + numels[k]);
    if (lo < hi)
      shard.narrow(0, lo - begin, hi - lo).copy_(pieces[k].reshape({numels[k]}).narrow(0, lo - offset, hi - lo));
    offset += numels[k];
  }
}

// "state.7.exp_avg" -> (7, "exp_avg"), as Optimizer::load_state_dict reads keys.
std::optional<std::pair<int64_t, std::string>> split_key(const std::string& key, const std::string& head) {
  if (key.rfind(head, 0) != 0) return std::nullopt;
  const size_t dot = key.find('.', head.size());
  if (dot == std::string::npos || dot == head.size() || dot + 1 >= key.size() || dot - head.size() > 18)
    return std::nullopt;
  int64_t index = 0;
  const char* first = key.data() + head.size();
  const char* last = key.data() + dot;
  auto [ptr, ec] = std::from_chars(first, last, index);
  if (ec != std::errc() || ptr != last || index < 0) return std::nullopt;
  return std::make_pair(index, key.substr(dot + 1));
}

std::string names_of(const std::map<std::string, Tensor>& entries) {
  std::string s;
  for (const auto& [n, t] : entries) s += (s.empty() ? "" : ", ") + n;
  return "{" + s + "}";
}

}  // namespace

struct ZeroRedundancyOptimizer::Setup {
  std::vector<ParamGroup> groups;
  distributed::ProcessGroup* process_group = nullptr;
  std::vector<FlatGroup> flat;
  std::unique_ptr<Optimizer> local;
};

ZeroRedundancyOptimizer::FlatGroup ZeroRedundancyOptimizer::flatten_group(const ParamGroup& group, size_t g,
                                                                         const distributed::ProcessGroup& pg) {
  const std::vector<Tensor>& params = group.params();
  FlatGroup f;
  for (size_t k = 0; k < params.size(); ++k) {
    const Tensor& p = params[k];
    LOOM_CHECK(p.defined(), kName, ": parameter ", k, " of group ", g, " is an undefined tensor");
    LOOM_CHECK(p.is_floating_point(), kName, ": can only optimize floating point tensors, but parameter ", k,
               " of group ", g, " has dtype ", p.dtype());
    LOOM_CHECK(p.dtype() == params[0].dtype() && p.device() == params[0].device(), kName, ": parameter ", k,
               " of group ", g, " (shape ", shape_str(p.sizes()), ") is ", p.dtype(), " on ", p.device().str(),
               " but parameter 0 is ", params[0].dtype(), " on ", params[0].device().str(),
               "; a group is flattened into one tensor, so its parameters must share a dtype and device "
               "(put the others in a group of their own)");
    f.numels.push_back(p.numel());
    f.numel += p.numel();
  }
  const int64_t world = pg.size();
  f.shard_numel = (f.numel + world - 1) / world;
  f.shard = zeros({f.shard_numel}, params.empty() ? TensorOptions() : options_of(params[0]));
  {
    NoGradGuard no_grad;
    copy_range_into(f.shard, pg.rank() * f.shard_numel, params, f.numels);
  }
  f.shard.requires_grad_(true);
  return f;
}

ZeroRedundancyOptimizer::Setup ZeroRedundancyOptimizer::make_setup(std::vector<ParamGroup> param_groups,
                                                                   const MakeLocal& make_local,
                                                                   distributed::ProcessGroup* group) {
  LOOM_CHECK(make_local != nullptr, kName, ": make_local is empty");
  Setup s;
  s.process_group = resolve_group(group);
  std::vector<ParamGroup> local_groups;
  for (size_t g = 0; g < param_groups.size(); ++g) {
    s.flat.push_back(flatten_group(param_groups[g], g, *s.process_group));
    std::vector<Tensor> shard{s.flat.back().shard};
    // A group without options takes the local optimizer's defaults, as this
    // optimizer's group does (its defaults are the local one's).
    if (param_groups[g].has_options()) local_groups.emplace_back(std::move(shard), param_groups[g].options());
    else local_groups.emplace_back(std::move(shard));
  }
  s.local = make_local(std::move(local_groups));
  LOOM_CHECK(s.local != nullptr, kName, ": make_local returned no optimizer");
  const std::vector<ParamGroup>& built = s.local->param_groups();
  bool as_given = built.size() == s.flat.size();
  for (size_t g = 0; as_given && g < built.size(); ++g)
    as_given = built[g].params().size() == 1 && built[g].params()[0].is_same(s.flat[g].shard);
  LOOM_CHECK(as_given, kName, ": make_local must return an optimizer over exactly the parameter groups it is ",
             "given (one flat shard each, in order)");
  s.groups = std::move(param_groups);
  return s;
}

ZeroRedundancyOptimizer::ZeroRedundancyOptimizer(Setup setup)
    : Optimizer(std::move(setup.groups), setup.local->defaults().clone()),
      process_group_(setup.process_group),
      flat_(std::move(setup.flat)),
      local_(std::move(setup.local)) {}

ZeroRedundancyOptimizer::ZeroRedundancyOptimizer(std::vector<ParamGroup> param_groups, const MakeLocal& make_local,
                                                 distributed::ProcessGroup* group)
    : ZeroRedundancyOptimizer(make_setup(std::move(param_groups), make_local, group)) {}

ZeroRedundancyOptimizer::ZeroRedundancyOptimizer(std::vector<Tensor> params, const MakeLocal& make_local,
                                                 distributed::ProcessGroup* group)
    : ZeroRedundancyOptimizer(std::vector<ParamGroup>{ParamGroup(std::move(params))}, make_local, group) {}

namespace {
ZeroRedundancyOptimizer::MakeLocal make_adamw(const AdamWOptions& defaults) {
  return [defaults](std::vector<ParamGroup> groups) -> std::unique_ptr<Optimizer> {
    return std::make_unique<AdamW>(std::move(groups), defaults);
  };
}
}  // namespace

ZeroRedundancyOptimizer::ZeroRedundancyOptimizer(std::vector<ParamGroup> param_groups, const AdamWOptions& defaults,
                                                 distributed::ProcessGroup* group)
    : ZeroRedundancyOptimizer(std::move(param_groups), make_adamw(defaults), group) {}

ZeroRedundancyOptimizer::ZeroRedundancyOptimizer(std::vector<Tensor> params, const AdamWOptions& defaults,
                                                 distributed::ProcessGroup* group)
    : ZeroRedundancyOptimizer(std::move(params), make_adamw(defaults), group) {}

const Tensor& ZeroRedundancyOptimizer::shard(size_t g) const {
  LOOM_CHECK(g < flat_.size(), kName, ": shard(", g, "): there are ", flat_.size(), " sharded groups");
  return flat_[g].shard;
}

void ZeroRedundancyOptimizer::add_param_group(const ParamGroup& group) {
  shard_new_groups();
  // Flattening checks the group's dtypes before anything changes.
  FlatGroup f = flatten_group(group, param_groups().size(), *process_group_);
  Optimizer::add_param_group(group);
  local_->add_param_group(ParamGroup(std::vector<Tensor>{f.shard}, param_groups().back().options()));
  flat_.push_back(std::move(f));
}

void ZeroRedundancyOptimizer::shard_new_groups() {
  while (flat_.size() < param_groups().size()) {
    const ParamGroup& group = param_groups()[flat_.size()];
    FlatGroup f = flatten_group(group, flat_.size(), *process_group_);
    local_->add_param_group(ParamGroup(std::vector<Tensor>{f.shard}, group.options()));
    flat_.push_back(std::move(f));
  }
}

void ZeroRedundancyOptimizer::check_layout(size_t g) const {
  LOOM_ASSERT(g < flat_.size());
  const std::vector<Tensor>& params = param_groups()[g].params();
  const FlatGroup& f = flat_[g];
  bool same = params.size() == f.numels.size();
  for (size_t k = 0; same && k < params.size(); ++k)
    same = params[k].numel() == f.numels[k] && params[k].dtype() == f.shard.dtype();
  LOOM_CHECK(same, kName, ": the parameters of group ", g, " changed after the optimizer flattened them (",
             f.numels.size(), " parameters of ", f.numel, " elements then, ", params.size(),
             " now); build a new optimizer, or add a parameter group instead");
}

void ZeroRedundancyOptimizer::set_max_grad_norm(double max_norm) {
  LOOM_CHECK(max_norm >= 0 && std::isfinite(max_norm), kName, ": max_grad_norm must be >= 0 (0: off), got ",
             max_norm);
  max_grad_norm_ = max_norm;
}

void ZeroRedundancyOptimizer::reduce_gradients() {
  shard_new_groups();
  distributed::ProcessGroup& pg = *process_group_;
  std::vector<std::pair<distributed::WorkPtr, Tensor>> pending;  // (work, its flat gradient)
  for (size_t g = 0; g < flat_.size(); ++g) {
    check_layout(g);
    FlatGroup& f = flat_[g];
    const TensorOptions options = options_of(f.shard);
    // The flat gradient, (padded,). A parameter without a gradient counts as
    // zeros, and so does the padding (Note [ZeRO-1]).
    Tensor flat_grad = zeros({f.shard_numel * pg.size()}, options);
    int64_t offset = 0;
    const std::vector<Tensor>& params = param_groups()[g].params();
    for (size_t k = 0; k < params.size(); ++k) {
      const Tensor& grad = params[k].grad();
      if (grad.defined()) flat_grad.narrow(0, offset, f.numels[k]).copy_(grad.reshape({f.numels[k]}));
      offset += f.numels[k];
    }
    // This rank's shard of the gradient averaged over the ranks, (S,); the
    // next group's gradient is copied while this one's is reduced.
    f.grad = empty({f.shard_numel}, options);
    pending.emplace_back(pg.reduce_scatter_tensor(f.grad, flat_grad, distributed::ReduceOp::Avg), flat_grad);
  }
  for (auto& [work, buffer] : pending) work->wait();
  if (max_grad_norm_ <= 0) return;
  // The total 2-norm of the averaged gradient: the shards' sums of squares
  // (in float64; the padding is zeros) summed over the ranks.
  Tensor sum_sq = zeros({1}, kFloat64);
  for (const FlatGroup& f : flat_) sum_sq.add_(f.grad.to(kFloat64).square().sum().reshape({1}));
  pg.all_reduce(sum_sq, distributed::ReduceOp::Sum)->wait();
  const double total_norm = std::sqrt(sum_sq.item<double>());
  // As nn::utils::clip_grad_norm_: scale by max_norm / (total + 1e-6) when below 1.
  const double scale = max_grad_norm_ / (total_norm + 1e-6);
  if (scale < 1)
    for (FlatGroup& f : flat_) f.grad.mul_(scale);
}

bool ZeroRedundancyOptimizer::update_group(ParamGroup& group) {
  // Optimizer::step calls this once per group, in order, under NoGradGuard.
  // The first call reduces every group's gradient: clipping needs the total
  // norm before any group steps.
  const auto g = static_cast<size_t>(&group - param_groups().data());
  if (g == 0) reduce_gradients();
  LOOM_ASSERT(g < flat_.size() && flat_[g].grad.defined(), "group ", g, " stepped without its reduced gradient");
  FlatGroup& f = flat_[g];
  distributed::ProcessGroup& pg = *process_group_;
  std::vector<Tensor>& params = group.params();

  // The local step. The shard is re-read from the parameters (a model loaded
  // after the optimizer was built is what gets stepped), and the group's
  // options as they are now (a scheduler's lr) go to the local group.
  copy_range_into(f.shard, pg.rank() * f.shard_numel, params, f.numels);
  group.options().validate();
  local_->param_groups()[g].set_options(group.options().clone());
  f.shard.set_grad(f.grad);
  f.grad = Tensor();
  local_->step();  // steps the one shard with a gradient
  f.shard.set_grad(Tensor());

  // The full parameters from every rank's shard, copied back in place.
  Tensor flat_params = empty({f.shard_numel * pg.size()}, options_of(f.shard));
  pg.all_gather_into_tensor(flat_params, f.shard)->wait();
  int64_t offset = 0;
  for (size_t k = 0; k < params.size(); ++k) {
    params[k].copy_(flat_params.narrow(0, offset, f.numels[k]).view(params[k].sizes()));
    offset += f.numels[k];
  }
  return true;
}

void ZeroRedundancyOptimizer::update(Tensor&, const Tensor&, const OptimizerOptions&, ParamState&) {
  LOOM_ASSERT(false, "ZeroRedundancyOptimizer::update_group steps every group");
}

std::vector<std::string> ZeroRedundancyOptimizer::state_names(const OptimizerOptions&) const {
  LOOM_ERROR(kName, ": the base Optimizer::load_state_dict cannot restore state into the flat shards; ",
             "call ZeroRedundancyOptimizer::load_state_dict");
}

StateDict ZeroRedundancyOptimizer::state_dict() const {
  // The base holds no per-parameter state, so its dict is the param_groups
  // entries alone; the state is gathered from the shards.
  StateDict out = Optimizer::state_dict();
  int64_t index = 0;  // the parameter's global index
  for (size_t g = 0; g < param_groups().size(); ++g) {
    const std::vector<Tensor>& params = param_groups()[g].params();
    // Every rank stepped (or loaded) its shard of group g alike, so every
    // rank takes the same branch and runs the same gathers.
    const ParamState* shard_state = g < flat_.size() ? local_->state_of(flat_[g].shard) : nullptr;
    if (shard_state == nullptr) {
      index += static_cast<int64_t>(params.size());
      continue;
    }
    check_layout(g);
    const FlatGroup& f = flat_[g];
    // Each entry over the whole flat group, (padded,); "step" (0-dim) is the
    // same on every rank and belongs to every parameter of the group.
    StateDict full;
    for (const auto& [name, t] : shard_state->entries()) {
      if (name == "step") {
        full.emplace_back(name, t);
        continue;
      }
      LOOM_ASSERT(t.dim() == 1 && t.numel() == f.shard_numel, "state \"", name, "\" of a flat shard has shape ",
                  shape_str(t.sizes()));
      Tensor gathered = empty({f.shard_numel * process_group_->size()}, options_of(t));
      process_group_->all_gather_into_tensor(gathered, t.contiguous())->wait();
      full.emplace_back(name, gathered);
    }
    int64_t offset = 0;
    for (size_t k = 0; k < params.size(); ++k) {
      for (const auto& [name, t] : full) {
        Tensor value = name == "step" ? t.clone() : t.narrow(0, offset, f.numels[k]).view(params[k].sizes()).clone();
        out.emplace_back("state." + std::to_string(index) + "." + name, std::move(value));
      }
      offset += f.numels[k];
      ++index;
    }
  }
  return out;
}

void ZeroRedundancyOptimizer::load_state_dict(const StateDict& sd) {
  shard_new_groups();
  const auto n_groups = static_cast<int64_t>(param_groups().size());

  // The local optimizer's dict: group g's fields as saved, except "params",
  // which becomes [g] (its group g holds one parameter, the shard); state
  // entries become the shards' (below). It checks the hyperparameters.
  StateDict local_sd;
  std::map<int64_t, std::map<std::string, Tensor>> state_in;       // saved index -> entries
  std::map<int64_t, std::pair<size_t, size_t>> where;              // saved index -> (group, position)
  std::set<int64_t> groups_in;
  for (const auto& [key, t] : sd) {
    LOOM_CHECK(t.defined(), kName, ": load_state_dict: \"", key, "\" is an undefined tensor");
    if (auto gk = split_key(key, "param_groups.")) {
      const auto& [g, field] = *gk;
      LOOM_CHECK(g < n_groups, kName, ": loaded state dict has a different number of parameter groups than the ",
                 "optimizer (", n_groups, "): it holds \"", key, "\"");
      groups_in.insert(g);
      if (field != "params") {
        local_sd.emplace_back(key, t);
        continue;
      }
      const std::vector<Tensor>& params = param_groups()[static_cast<size_t>(g)].params();
      LOOM_CHECK(t.dim() == 1 && is_integral(t.dtype(), false), kName, ": load_state_dict: \"", key,
                 "\" should be a 1-D integer tensor, got shape ", shape_str(t.sizes()), " and dtype ", t.dtype());
      LOOM_CHECK(t.numel() == static_cast<int64_t>(params.size()), kName,
                 ": loaded state dict contains a parameter group that doesn't match the size of optimizer's group ",
                 "(group ", g, ": ", t.numel(), " parameters saved, ", params.size(), " in the optimizer)");
      const std::vector<int64_t> ids = t.to(kInt64).contiguous().to_vector<int64_t>();
      for (size_t k = 0; k < ids.size(); ++k)
        LOOM_CHECK(ids[k] >= 0 && where.emplace(ids[k], std::make_pair(static_cast<size_t>(g), k)).second, kName,
                   ": load_state_dict: \"", key, "\" holds an invalid or repeated parameter index ", ids[k]);
      local_sd.emplace_back(key, full({1}, g, kInt64));
    } else if (auto sk = split_key(key, "state.")) {
      LOOM_CHECK(state_in[sk->first].emplace(sk->second, t).second, kName, ": load_state_dict: duplicate key \"",
                 key, "\"");
    } else {
      LOOM_ERROR(kName, ": load_state_dict: unexpected key \"", key,
                 "\" (an optimizer state dict holds param_groups.{g}.{name} and state.{i}.{name})");
    }
  }
  LOOM_CHECK(static_cast<int64_t>(groups_in.size()) == n_groups, kName,
             ": loaded state dict has a different number of parameter groups (", groups_in.size(),
             ") than the optimizer (", n_groups, ")");

  // Each group's parameters' state, by position: all present or all absent.
  std::vector<std::vector<std::pair<int64_t, const std::map<std::string, Tensor>*>>> by_group(
      static_cast<size_t>(n_groups));
  for (int64_t g = 0; g < n_groups; ++g)
    by_group[static_cast<size_t>(g)].assign(param_groups()[static_cast<size_t>(g)].params().size(), {-1, nullptr});
  for (const auto& [i, entries] : state_in) {
    auto w = where.find(i);
    LOOM_CHECK(w != where.end(), kName, ": load_state_dict: \"state.", i, ".", entries.begin()->first,
               "\" belongs to parameter ", i, ", which no parameter group lists");
    by_group[w->second.first][w->second.second] = {i, &entries};
  }

  for (size_t g = 0; g < by_group.size(); ++g) {
    const auto& states = by_group[g];
    const std::vector<Tensor>& params = param_groups()[g].params();
    const auto first = std::find_if(states.begin(), states.end(), [](const auto& s) { return s.second != nullptr; });
    if (first == states.end()) continue;  // group g was never stepped
    const int64_t i0 = first->first;
    const std::map<std::string, Tensor>& names = *first->second;
    for (size_t k = 0; k < states.size(); ++k) {
      const auto& [i, entries] = states[k];
      // A group shares one flat state and one step count (Note [ZeRO-1]).
      LOOM_CHECK(entries != nullptr, kName, ": load_state_dict: parameter ", i0, " of group ", g,
                 " has state but the group's parameter at position ", k,
                 " has none; a ZeroRedundancyOptimizer keeps one state for all of a group's parameters");
      bool same_names = entries->size() == names.size();
      for (auto a = entries->begin(), b = names.begin(); same_names && a != entries->end(); ++a, ++b)
        same_names = a->first == b->first;
      LOOM_CHECK(same_names, kName, ": load_state_dict: parameter ", i, " has state entries ", names_of(*entries),
                 " but parameter ", i0, " of the same group has ", names_of(names));
      for (const auto& [n, t] : *entries) {
        const std::string key = "state." + std::to_string(i) + "." + n;
        if (n == "step") {
          LOOM_CHECK(t.numel() == 1 && t.dim() <= 1, kName, ": load_state_dict: \"", key,
                     "\" should hold one number, got shape ", shape_str(t.sizes()));
          const double step = t.item<double>(), step0 = names.at(n).item<double>();
          LOOM_CHECK(step == step0, kName, ": load_state_dict: \"", key, "\" is ", step, " but \"state.", i0,
                     ".step\" of the same group is ", step0,
                     "; a ZeroRedundancyOptimizer steps all of a group's parameters together");
          continue;
        }
        LOOM_CHECK(t.sizes() == params[k].sizes(), kName, ": load_state_dict: \"", key, "\" has shape ",
                   shape_str(t.sizes()), " but parameter ", i, " has shape ", shape_str(params[k].sizes()));
        LOOM_CHECK(t.is_floating_point(), kName, ": load_state_dict: \"", key, "\" has dtype ", t.dtype(),
                   "; expected a floating point tensor");
      }
    }
    // This rank's shard of each entry.
    const FlatGroup& f = flat_[g];
    for (const auto& [n, t0] : names) {
      const std::string key = "state." + std::to_string(g) + "." + n;
      if (n == "step") {
        local_sd.emplace_back(key, t0);
        continue;
      }
      std::vector<Tensor> pieces;
      for (const auto& s : states) pieces.push_back(s.second->at(n).detach());
      Tensor shard = zeros({f.shard_numel}, options_of(f.shard));
      copy_range_into(shard, process_group_->rank() * f.shard_numel, pieces, f.numels);
      local_sd.emplace_back(key, std::move(shard));
    }
  }

  // The local optimizer checks the hyperparameters and the state names
  // before it changes anything; then this optimizer's groups take the
  // loaded hyperparameters.
  try {
    local_->load_state_dict(local_sd);
  } catch (const Error& e) {
    LOOM_ERROR(kName, ": load_state_dict (of the flat shards, where state.{g} is group g's shard): ", e.what());
  }
  for (size_t g = 0; g < param_groups().size(); ++g) {
    OptimizerOptions& options = param_groups()[g].options();
    for (const auto& [hp, v] : local_->param_groups()[g].options().hyperparameters())
      options.set_hyperparameter(hp, v);
  }
}

}  // namespace loom::optim
