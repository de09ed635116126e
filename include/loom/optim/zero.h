// optim::ZeroRedundancyOptimizer: ZeRO stage 1 (optimizer state sharding),
// as llm.c and DeepSpeed do it, behind the torch.distributed.optim name.
//
//   distributed::init_process_group("mpi");
//   optim::ZeroRedundancyOptimizer opt(model->parameters(), optim::AdamWOptions(3e-4).weight_decay(0.1));
//   loss.backward();   // this rank's part of the global batch; NO gradient all-reduce
//   opt.step();        // reduce-scatter grads, step this rank's shard, all-gather params
//   opt.zero_grad();
//
// Any elementwise optimizer can be the local one:
//
//   optim::ZeroRedundancyOptimizer opt(params, [](std::vector<optim::ParamGroup> groups) {
//     return std::make_unique<optim::SGD>(std::move(groups), optim::SGDOptions(0.1).momentum(0.9));
//   });
//
// Note [ZeRO-1]
// Each parameter group's parameters, flattened in order, form one vector of
// P elements, padded with zeros to a multiple of the world size W. Rank r
// owns elements [r*S, (r+1)*S) with S = ceil(P / W): a flat shard of the
// parameters (a leaf tensor) over which the local optimizer (made by
// make_local, one group per original group, with that group's options) keeps
// its state, so each rank holds 1/W of the optimizer state. step():
//   1. every group's gradients are copied into a flat buffer of P (padded)
//      elements;
//   2. reduce_scatter_tensor(Avg) leaves this rank's shard of the gradient
//      averaged over the ranks (then clipped, with set_max_grad_norm);
//   then per group:
//   3. the shard is re-read from the parameters and the local optimizer
//      steps it, with the group's current options (an LR scheduler's set_lr
//      reaches it);
//   4. all_gather_into_tensor assembles the full flat parameters, which are
//      copied back into the parameters in place (their handles stay valid).
// Step 2 is the data-parallel gradient average: a caller must NOT also
// all-reduce the gradients (no DDP gradient sync): an Avg all-reduce first
// only wastes its communication, a Sum one scales the gradients by W.
// Every rank ends with the same bytes (step 4), so replicas stay bitwise
// identical. For an elementwise optimizer (SGD, Adam, AdamW, RMSprop,
// Adagrad) the flat shard gives the same numbers as per-parameter updates,
// so ZeRO-1 matches the plain optimizer on the averaged gradients (up to the
// summation order of the average).
//
// A parameter without a gradient counts as a zero gradient: it still decays
// (weight_decay) and moves with its momentum, and its step count advances
// with the group's. PyTorch's optimizers skip such a parameter instead; a
// shard cannot, as ranks do not know whether another rank's parameters had
// gradients without another collective (DDP, too, reduces zeros for unused
// parameters).
//
// step() and state_dict() are collectives and load_state_dict() keeps each
// rank's shard: every rank of the group calls them, in the same order, with
// parameters of the same shapes in the same groups. Each group's parameters
// must share one dtype and device (collectives take CPU tensors).
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "loom/distributed.h"
#include "loom/optim/adamw.h"
#include "loom/optim/optimizer.h"

namespace loom::optim {

class ZeroRedundancyOptimizer : public Optimizer {
 public:
  // Makes the local optimizer over the flat shards (one ParamGroup each).
  using MakeLocal = std::function<std::unique_ptr<Optimizer>(std::vector<ParamGroup>)>;

  // group: the process group the parameters are replicated over (null: the
  // default group, which must be initialized).
  ZeroRedundancyOptimizer(std::vector<ParamGroup> param_groups, const MakeLocal& make_local,
                          distributed::ProcessGroup* group = nullptr);
  ZeroRedundancyOptimizer(std::vector<Tensor> params, const MakeLocal& make_local,
                          distributed::ProcessGroup* group = nullptr);
  // AdamW as the local optimizer: the usual case.
  ZeroRedundancyOptimizer(std::vector<ParamGroup> param_groups, const AdamWOptions& defaults,
                          distributed::ProcessGroup* group = nullptr);
  ZeroRedundancyOptimizer(std::vector<Tensor> params, const AdamWOptions& defaults,
                          distributed::ProcessGroup* group = nullptr);

  // The same group as Optimizer::add_param_group, flattened and sharded at
  // once (a group added through Optimizer& is sharded at the next step).
  void add_param_group(const ParamGroup& group);

  // Clips the averaged gradient inside step() to a total 2-norm of at most
  // max_norm (0, the default: off), as nn::utils::clip_grad_norm_ on the
  // averaged gradients would. Clipping the gradients before step() would
  // clip each rank's own, unaveraged ones: with ZeRO, clip here instead.
  void set_max_grad_norm(double max_norm);
  double max_grad_norm() const { return max_grad_norm_; }

  // The full, unsharded state dict, in exactly the plain local optimizer's
  // format (Note [Optimizer state dict]: "state.{i}.exp_avg" with parameter
  // i's shape), gathered from every rank; every rank gets it. The state
  // tensors are copies. Every rank must call it.
  StateDict state_dict() const override;
  // Loads a full state dict (of this class or of the plain optimizer over
  // the same parameters): each rank keeps its shard. Checked as
  // Optimizer::load_state_dict checks, plus: within a group every parameter
  // has the same state entries and the same step (a group shares one shard).
  void load_state_dict(const StateDict& state_dict) override;

  // The optimizer that steps this rank's shards: its group g holds the flat
  // shard of group g (its options are synced from param_groups() at each step).
  const Optimizer& local_optimizer() const { return *local_; }
  // This rank's shard of group g's flat parameters, (S,).
  const Tensor& shard(size_t g) const;
  distributed::ProcessGroup& process_group() const { return *process_group_; }

 protected:
  bool update_group(ParamGroup& group) override;
  // Never called: update_group() steps every group.
  void update(Tensor& param, const Tensor& grad, const OptimizerOptions& options, ParamState& state) override;
  // Reached only from the base Optimizer::load_state_dict, called by name: throws.
  std::vector<std::string> state_names(const OptimizerOptions& options) const override;

 private:
  // One group's flat layout and this rank's shard of it (Note [ZeRO-1]).
  struct FlatGroup {
    std::vector<int64_t> numels;  // each parameter's element count, in group order
    int64_t numel = 0;            // P, their sum
    int64_t shard_numel = 0;      // S = ceil(P / W)
    Tensor shard;                 // (S,): flat elements [rank*S, (rank+1)*S)
    Tensor grad;                  // (S,): the averaged gradient's shard, during step()
  };
  // What the base class needs before it is built: the local optimizer's defaults.
  struct Setup;
  static Setup make_setup(std::vector<ParamGroup> param_groups, const MakeLocal& make_local,
                          distributed::ProcessGroup* group);
  explicit ZeroRedundancyOptimizer(Setup setup);
  static FlatGroup flatten_group(const ParamGroup& group, size_t g, const distributed::ProcessGroup& pg);
  // Shards the groups added since the last call (add_param_group through Optimizer&).
  void shard_new_groups();
  // Checks that group g still has the parameters it was flattened with.
  void check_layout(size_t g) const;
  // Step 2 of Note [ZeRO-1] for every group (and the clipping): fills each FlatGroup::grad.
  void reduce_gradients();

  distributed::ProcessGroup* process_group_;
  std::vector<FlatGroup> flat_;
  std::unique_ptr<Optimizer> local_;
  double max_grad_norm_ = 0;
};

}  // namespace loom::optim
