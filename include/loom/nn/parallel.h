// nn::DistributedDataParallel: data-parallel training over a process group
// (PyTorch's torch.nn.parallel.DistributedDataParallel).
//
//   distributed::init_process_group("mpi");
//   auto model = std::make_shared<MyNet>();
//   nn::DistributedDataParallel ddp(model);            // rank 0's weights everywhere
//   optim::AdamW opt(model->parameters(), ...);
//   for (auto& b : loader) {                           // each rank: its own share of the batch
//     Tensor loss = F::cross_entropy(ddp.forward(b.data), b.target);
//     opt.zero_grad();
//     loss.backward();                                  // gradients averaged over ranks on return
//     opt.step();
//   }
//
// Note [Gradient buckets]
// Parameters are grouped, in reverse registration order (roughly the order
// backward produces their gradients), into buckets of up to bucket_cap_mb
// (25 MiB by default) of one dtype. Each parameter has a hook that runs when
// its gradient has been accumulated: it copies the gradient into its
// bucket's flat buffer, and when a bucket is complete its asynchronous
// all-reduce (average) starts on the process group's worker thread while
// backward goes on. Buckets are started strictly in index order on every
// rank (a later bucket that completes first waits for the earlier ones), so
// every rank issues the same collectives in the same order. When backward
// ends (autograd::queue_callback) the remaining buckets start, DDP waits for
// all of them and writes the averages back into each parameter's .grad().
//
// Unused parameters. A parameter that gets no gradient in a backward pass
// would keep its bucket from ever being complete. With
// find_unused_parameters the end of backward marks such parameters ready
// (they contribute zeros) and all-reduces a map of which parameters each
// rank used: one used by no rank keeps its .grad() as it was (undefined when
// zero_grad set it to none), exactly as without DDP; one used by some ranks
// gets the average. Without the option, a parameter without a gradient is a
// loom::Error naming it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "loom/distributed.h"
#include "loom/nn/module.h"

namespace loom::nn {

struct DistributedDataParallelOptions {
  // A bucket holds up to this many MiB of gradients; the first one (the last
  // layers' gradients, ready first) up to first_bucket_mb, so that
  // communication starts early in backward (PyTorch's 1 MiB first bucket).
  double bucket_cap_mb = 25;
  double first_bucket_mb = 1;
  // Allow parameters that get no gradient in a backward pass (see above).
  bool find_unused_parameters = false;
  // Broadcast rank 0's buffers (BatchNorm running statistics) at every forward.
  bool broadcast_buffers = true;
  // Start each bucket's all-reduce during backward (true), or all of them
  // after it (false: the no-overlap baseline `make bench` compares with).
  bool overlap = true;
  // The group to average over; null is the default group.
  distributed::ProcessGroup* process_group = nullptr;
};

// What the last synchronized backward pass did (for benchmarks and logs).
struct DistributedDataParallelStats {
  int64_t buckets = 0;
  int64_t bytes = 0;             // gradient bytes all-reduced
  double wait_seconds = 0;       // time backward's end waited for the all-reduces
  double comm_seconds = 0;       // the buckets' all-reduces, start to finish, summed
  double overlapped_seconds = 0; // the part of comm_seconds before backward's end
  int64_t unused_parameters = 0;
};

class DistributedDataParallel {
 public:
  // Broadcasts rank 0's parameters and buffers to every rank, then installs
  // the gradient hooks.
  explicit DistributedDataParallel(std::shared_ptr<Module> module, DistributedDataParallelOptions options = {});
  template <typename Holder, typename = decltype(std::declval<Holder>().ptr())>
  explicit DistributedDataParallel(const Holder& holder, DistributedDataParallelOptions options = {})
      : DistributedDataParallel(std::static_pointer_cast<Module>(holder.ptr()), std::move(options)) {}
  ~DistributedDataParallel();
  DistributedDataParallel(const DistributedDataParallel&) = delete;
  DistributedDataParallel& operator=(const DistributedDataParallel&) = delete;

  // module->forward(input), after broadcasting buffers (broadcast_buffers).
  Tensor forward(const Tensor& input);
  Tensor operator()(const Tensor& input) { return forward(input); }
  // What forward does before the module runs: call it before a forward with
  // another signature (a language model's forward(tokens, state)).
  void sync_buffers();

  const std::shared_ptr<Module>& module() const { return module_; }
  distributed::ProcessGroup& process_group() const { return *group_; }
  const DistributedDataParallelOptions& options() const { return options_; }
  // The buckets as parameter indices (into module()->parameters()), in the
  // order they are reduced.
  std::vector<std::vector<int64_t>> bucket_assignment() const;
  const DistributedDataParallelStats& last_stats() const { return stats_; }

  // Inside the guard's scope backward accumulates gradients locally and
  // communicates nothing; the first backward after it averages the sum
  // (gradient accumulation, PyTorch's no_sync()).
  class NoSyncGuard {
   public:
    explicit NoSyncGuard(DistributedDataParallel& ddp);
    ~NoSyncGuard();
    NoSyncGuard(const NoSyncGuard&) = delete;
    NoSyncGuard& operator=(const NoSyncGuard&) = delete;

   private:
    DistributedDataParallel& ddp_;
    bool previous_;
  };
  [[nodiscard]] NoSyncGuard no_sync() { return NoSyncGuard(*this); }

 private:
  struct Bucket;
  struct Reducer;
  // Runs when a synchronized backward pass ends (autograd::queue_callback).
  void finish_backward();
  std::shared_ptr<Module> module_;
  DistributedDataParallelOptions options_;
  distributed::ProcessGroup* group_;
  std::vector<Tensor> params_;
  std::vector<int64_t> hook_handles_;
  std::shared_ptr<Reducer> reducer_;
  DistributedDataParallelStats stats_;
  bool sync_ = true;
};

// Makes every rank's parameters and buffers rank root's (what DDP's
// constructor does; for training without DDP, as with ZeRO).
void broadcast_module_state(Module& module, int root = 0, distributed::ProcessGroup* group = nullptr);

}  // namespace loom::nn
