// nn::SyncBatchNorm and functional::sync_batch_norm: batch normalization
// over the batch of every rank of a process group.
//
// Note [SyncBatchNorm is BatchNorm over the group's batch]
// The statistics are sums over ranks of sums over each rank's slice, so the
// forward is written with loom ops and one differentiable primitive, a sum
// over ranks (all_reduce_sum below): count = sum over ranks of N*S,
// mean = all_reduce_sum(x.sum(non-channel dims)) / count, then
// var = all_reduce_sum(((x - mean)^2).sum(...)) / count (two passes, as
// BatchNorm's kernels, so var does not cancel). Autograd differentiates the
// composite, and the adjoint of a sum over ranks is a sum over ranks of the
// gradients, so each rank gets exactly the gradient of BatchNorm over the
// global batch for its slice (and its share of weight's and bias's, which
// DistributedDataParallel then sums). It costs three all-reduces of C values
// (and the count) in forward and two in backward; every rank must run both.
#include "loom/nn/sync_batch_norm.h"

#include <string>
#include <tuple>
#include <typeinfo>
#include <unordered_map>
#include <utility>
#include <vector>

#include "autograd/node.h"
#include "loom/autograd.h"
#include "loom/checkpoint.h"
#include "loom/nn/container.h"
#include "loom/ops.h"

namespace loom::nn {

namespace {

using distributed::ProcessGroup;

// x summed over the ranks of `group` (the default group when null; looked up
// at each call, backward's included). Forward and backward are both this sum:
// y = sum_r x_r gives dL/dx_r = sum_s dL_s/dy, each rank's loss L_s
// depending on its own copy of y. Recorded with the same op, so
// create_graph gives higher-order gradients.
Tensor all_reduce_sum(const Tensor& x, const std::shared_ptr<ProcessGroup>& group) {
  Tensor y = x.detach().clone();  // contiguous, and x is left as it was
  distributed::all_reduce(y, distributed::ReduceOp::Sum, group.get());
  auto node = autograd::make_node("AllReduceSumBackward", {x},
                                  [group](autograd::FunctionNode&, const autograd::TensorList& g) {
                                    return autograd::TensorList{all_reduce_sum(g[0], group)};
                                  });
  if (node) autograd::set_history(y, node);
  return y;
}

void check_channel_tensor(const char* what, const Tensor& t, const Tensor& input) {
  if (!t.defined()) return;
  const int64_t channels = input.sizes()[1];
  LOOM_CHECK(t.dim() == 1 && t.sizes()[0] == channels, "sync_batch_norm: expected ", what, " of shape [",
             channels, "] for input of shape ", shape_str(input.sizes()), ", got shape ", shape_str(t.sizes()));
}

}  // namespace

namespace functional {

Tensor sync_batch_norm(const Tensor& input, const Tensor& running_mean, const Tensor& running_var,
                       const Tensor& weight, const Tensor& bias, double momentum, double eps,
                       const std::shared_ptr<distributed::ProcessGroup>& group) {
  LOOM_CHECK(input.defined(), "sync_batch_norm: input is an undefined tensor");
  LOOM_CHECK(is_floating_point(input.dtype()), "sync_batch_norm: expected a floating point input, got ",
             dtype_name(input.dtype()), " (shape ", shape_str(input.sizes()), ")");
  LOOM_CHECK(input.dim() >= 2, "sync_batch_norm: expected input of shape (N, C) or (N, C, *), got shape ",
             shape_str(input.sizes()));
  check_channel_tensor("weight", weight, input);
  check_channel_tensor("bias", bias, input);
  check_channel_tensor("running_mean", running_mean, input);
  check_channel_tensor("running_var", running_var, input);
  LOOM_CHECK(running_mean.defined() == running_var.defined(),
             "sync_batch_norm: running_mean and running_var must be both defined or both undefined");
  ProcessGroup& pg = group ? *group : distributed::default_group();

  // x: (N, C, *); statistics over dims {0, 2, ...}; (C) broadcasts as (1, C, 1, ...).
  std::vector<int64_t> dims{0}, bshape(static_cast<size_t>(input.dim()), 1);
  for (int64_t d = 2; d < input.dim(); ++d) dims.push_back(d);
  bshape[1] = input.sizes()[1];
  int64_t local_count = input.sizes()[0];  // values per channel on this rank
  for (int64_t d = 2; d < input.dim(); ++d) local_count *= input.sizes()[d];
  Tensor count = full({1}, local_count, kInt64);
  distributed::all_reduce(count, distributed::ReduceOp::Sum, &pg);
  const int64_t total = count.item<int64_t>();
  LOOM_CHECK(total > 1, "sync_batch_norm: expected more than 1 value per channel over the ", pg.size(),
             " ranks of the group when training, got ", total, " (input of shape ", shape_str(input.sizes()),
             " on rank ", pg.rank(), ")");
  const double n = static_cast<double>(total);

  // Note [SyncBatchNorm is BatchNorm over the group's batch].
  Tensor x = input.to(compute_dtype(input.dtype()));
  Tensor mean = all_reduce_sum(x.sum(dims), group) / n;                           // (C)
  Tensor centered = x - mean.view(bshape);                                        // (N, C, *)
  Tensor var = all_reduce_sum(centered.square().sum(dims), group) / n;            // (C), biased
  Tensor y = centered * (var + eps).rsqrt().view(bshape);
  if (weight.defined()) y = y * weight.view(bshape);
  if (bias.defined()) y = y + bias.view(bshape);

  if (running_mean.defined()) {
    NoGradGuard ng;
    // As batch_norm: the running variance is the unbiased estimate.
    const double unbias = n / (n - 1);
    Tensor rm = running_mean, rv = running_var;  // handles: the writes land in the caller's buffers
    rm.mul_(1 - momentum).add_((mean * momentum).to(rm.dtype()));
    rv.mul_(1 - momentum).add_((var * (momentum * unbias)).to(rv.dtype()));
  }
  return y.to(input.dtype());
}

}  // namespace functional

// ---- SyncBatchNorm ----

SyncBatchNormImpl::SyncBatchNormImpl(int64_t features, double epsilon, std::optional<double> momentum_factor,
                                     bool with_affine, bool track, std::shared_ptr<distributed::ProcessGroup> group)
    : BatchNormImplBase("SyncBatchNorm", features, epsilon, momentum_factor, with_affine, track),
      process_group(std::move(group)) {}

// The base registers nothing (no affine, no running stats); bn's tensors are
// registered instead, under the same names and in the same order.
SyncBatchNormImpl::SyncBatchNormImpl(const BatchNormImplBase& bn, std::shared_ptr<distributed::ProcessGroup> group)
    : BatchNormImplBase("SyncBatchNorm", bn.num_features, bn.eps, bn.momentum, /*affine=*/false,
                        /*track_running_stats=*/false),
      process_group(std::move(group)) {
  affine = bn.affine;
  track_running_stats = bn.track_running_stats;
  if (affine) {
    // requires_grad = false: leave the tensors' own flags (a frozen BatchNorm stays frozen).
    weight = register_parameter("weight", bn.weight, /*requires_grad=*/false);
    bias = register_parameter("bias", bn.bias, /*requires_grad=*/false);
  }
  if (track_running_stats) {
    running_mean = register_buffer("running_mean", bn.running_mean);
    running_var = register_buffer("running_var", bn.running_var);
    num_batches_tracked = register_buffer("num_batches_tracked", bn.num_batches_tracked);
  }
  training_ = bn.is_training();
}

Tensor SyncBatchNormImpl::forward(const Tensor& input) {
  LOOM_CHECK(input.defined(), type_name(), ": input is an undefined tensor");
  check_input_dim(input);
  LOOM_CHECK(input.sizes()[1] == num_features, type_name(), ": expected input with ", num_features,
             " channels at dim 1 (num_features), got shape ", shape_str(input.sizes()));
  ProcessGroup* group = process_group ? process_group.get()
                                      : (distributed::is_initialized() ? &distributed::default_group() : nullptr);
  // As PyTorch: only training with a group of several ranks communicates;
  // otherwise this is BatchNorm (eval without running statistics normalizes
  // with the local batch's).
  if (!is_training() || group == nullptr || group->size() == 1) return BatchNormImplBase::forward(input);
  // As BatchNorm: count the batch and pick the update factor (momentum, or
  // 1/k on the k-th batch), except in a checkpointed region's recomputation,
  // whose forward updated the running statistics already.
  const bool update = track_running_stats && !checkpoint_recomputing();
  double factor = 0.0;
  if (update) {
    {
      NoGradGuard ng;
      num_batches_tracked.add_(1);
    }
    factor = momentum ? *momentum : 1.0 / static_cast<double>(num_batches_tracked.item<int64_t>());
  }
  return functional::sync_batch_norm(input, update ? running_mean : Tensor(), update ? running_var : Tensor(), weight,
                                     bias, factor, eps, process_group);
}

void SyncBatchNormImpl::check_input_dim(const Tensor& input) const {
  LOOM_CHECK(input.dim() >= 2, "SyncBatchNorm: expected input of shape (N, C) or (N, C, *), got ", input.dim(),
             "D input of shape ", shape_str(input.sizes()));
}

// Note [Converting to SyncBatchNorm]
// PyTorch swaps a BatchNorm for a SyncBatchNorm by setting an attribute of
// its parent. A loom module usually calls its children through its own
// members (an nn::BatchNorm2d bn_ holder), which a new object cannot reach:
// replacing a registered child changes what parameters() and state_dict()
// list but not what forward calls. So the conversion only puts a new module
// where the parent finds it:
//   - a Sequential (which runs its own list) is rebuilt with the converted
//     children, names and training flag kept, and that new Sequential
//     goes to its own parent, or is returned at the root;
//   - a ModuleDict takes the SyncBatchNorm in place (insert);
//   - any other parent that holds a BatchNorm, or a Sequential that had to
//     be rebuilt, is a loom::Error naming it, raised before anything
//     changes. Such a module should build nn::SyncBatchNorm itself.
// The SyncBatchNorm registers the BatchNorm's own tensors, so an optimizer
// made before the conversion still holds the model's parameters.
namespace {

struct Converter {
  std::shared_ptr<distributed::ProcessGroup> group;
  // Each module converted once, so a module shared in the tree stays shared.
  std::unordered_map<const Module*, std::shared_ptr<Module>> done;
  // ModuleDict updates, applied once the whole tree is known to convert.
  std::vector<std::tuple<ModuleDictImpl*, std::string, std::shared_ptr<Module>>> dict_inserts;

  static std::string where(const std::string& path) { return path.empty() ? "the root" : "\"" + path + "\""; }

  // What goes where `m` was: m itself, or the module that replaces it.
  std::shared_ptr<Module> convert(const std::shared_ptr<Module>& m, const std::string& path) {
    auto it = done.find(m.get());
    if (it != done.end()) return it->second;
    std::shared_ptr<Module> out = convert_uncached(m, path);
    done.emplace(m.get(), out);
    return out;
  }

  std::shared_ptr<Module> convert_uncached(const std::shared_ptr<Module>& m, const std::string& path) {
    if (dynamic_cast<const SyncBatchNormImpl*>(m.get()) != nullptr) return m;
    if (const auto* bn = dynamic_cast<const BatchNormImplBase*>(m.get()))
      return std::make_shared<SyncBatchNormImpl>(*bn, group);
    std::vector<std::pair<std::string, std::shared_ptr<Module>>> children = m->named_children();
    std::vector<std::string> replaced;
    for (auto& [name, child] : children) {
      std::shared_ptr<Module> converted = convert(child, path.empty() ? name : path + "." + name);
      if (converted == child) continue;
      replaced.push_back(name);
      child = std::move(converted);
    }
    if (replaced.empty()) return m;
    const Module& parent = *m;
    if (typeid(parent) == typeid(SequentialImpl)) {  // not a subclass, which a rebuild would lose
      auto seq = std::make_shared<SequentialImpl>();
      seq->train(m->is_training());  // before the children, whose own flags stay
      for (auto& [name, child] : children) seq->push_back(name, child);
      return seq;
    }
    if (auto* dict = dynamic_cast<ModuleDictImpl*>(m.get())) {
      for (auto& [name, child] : children)
        if (child != dict->at(name)) dict_inserts.emplace_back(dict, name, child);
      return m;
    }
    LOOM_ERROR("SyncBatchNorm::convert_sync_batchnorm: cannot replace the child \"", replaced.front(), "\" of the ",
               m->type_name(), " at ", where(path), ": it would still call the module it holds, since loom swaps ",
               "children only inside a Sequential or a ModuleDict (Note [Converting to SyncBatchNorm]); build ",
               "that module with nn::SyncBatchNorm instead");
  }
};

}  // namespace

std::shared_ptr<Module> SyncBatchNorm::convert_sync_batchnorm(std::shared_ptr<Module> module,
                                                              std::shared_ptr<distributed::ProcessGroup> process_group) {
  LOOM_CHECK(module != nullptr, "SyncBatchNorm::convert_sync_batchnorm: the module is null");
  Converter converter{std::move(process_group), {}, {}};
  std::shared_ptr<Module> out = converter.convert(module, "");
  for (auto& [dict, key, child] : converter.dict_inserts) dict->insert(key, child);
  return out;
}

}  // namespace loom::nn
