// `loom train --distributed`: what the training loops (train.cpp, lm.cpp)
// share to run as one rank of an mpirun job.
//
// Note [Distributed loom train]
// Every rank runs the same loop on its share of each global batch
// (--batch-size is the global batch; rank r takes the r-th of N equal
// parts). The model is replicated: DistributedDataParallel averages the
// gradients during backward, or, with --zero, ZeroRedundancyOptimizer
// reduce-scatters them and each rank updates its shard. Rank 0 alone prints,
// evaluates, writes metrics and checkpoints; the state it saves is every
// rank's (replicas are identical, and ZeRO's state dict is gathered from
// all ranks), so `--resume` loads on any number of ranks. Any error on a
// rank ends the whole job (distributed::abort_job, in main.cpp) with a
// message that names the rank, so no rank waits for a dead one; a rank that
// dies is caught by mpirun, and a rank that hangs by --timeout.
#pragma once

#include <memory>
#include <ostream>

#include <loom/loom.h>

namespace loom::cli {

struct DistributedOptions {
  bool enabled = false;    // --distributed
  bool zero = false;       // --zero: ZeRO-1 instead of DDP's gradient all-reduce
  double timeout_s = 300;  // --timeout: how long a collective may wait for the other ranks
};

// Starts the process group for --distributed ("mpi" under mpirun, else
// "local"); does nothing without it.
void start_distributed(const DistributedOptions& o);
void stop_distributed();

// This rank's view of the job (rank 0 of 1 without --distributed).
struct Replica {
  int rank = 0;
  int world = 1;
  bool writer() const { return rank == 0; }
  // The part of a global batch of `global` examples this rank takes; an
  // error naming `flag` when it does not split evenly.
  int64_t local_batch(int64_t global, const char* flag) const;
  // Rows [rank*B/N, (rank+1)*B/N) of a global batch.
  Tensor slice(const Tensor& global) const;
  // The mean over ranks of a per-rank number (one all-reduce).
  double mean(double local) const;
};
Replica replica();

// The model as the training step calls it: DDP's forward, or the module's
// own (with --zero, after broadcasting rank 0's weights).
class DataParallelModel {
 public:
  DataParallelModel(std::shared_ptr<nn::Module> model, const DistributedOptions& o);
  Tensor forward(const Tensor& x);
  // Before a forward that does not go through forward() (a language model's loss).
  void before_forward();

 private:
  std::shared_ptr<nn::Module> model_;
  std::unique_ptr<nn::DistributedDataParallel> ddp_;
};

// The optimizer a MakeLocal builds, sharded by ZeRO-1 with --zero.
std::unique_ptr<optim::Optimizer> distributed_optimizer(const DistributedOptions& o, std::vector<Tensor> params,
                                                        const optim::ZeroRedundancyOptimizer::MakeLocal& make);

// An ostream that discards everything (the log of ranks other than 0).
std::ostream& null_stream();

}  // namespace loom::cli
