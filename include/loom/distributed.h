// loom::distributed: process groups and collectives (torch.distributed).
//
//   distributed::init_process_group("mpi");        // under `mpirun -np N`
//   int rank = distributed::get_rank(), world = distributed::get_world_size();
//   distributed::all_reduce(grad, distributed::ReduceOp::Avg);
//   auto work = distributed::default_group().all_reduce(t);   // asynchronous
//   ... compute ...
//   work->wait();
//   distributed::destroy_process_group();
//
// Backends:
//   "mpi"    Open MPI (CPU tensors). Rank and world size come from the
//            launcher (mpirun, srun with PMI). Collectives run on one worker
//            thread per process (MPI_THREAD_SERIALIZED, as PyTorch's
//            ProcessGroupMPI), so an asynchronous call overlaps computation.
//   "nccl"   NVIDIA NCCL, bootstrapped through MPI (the NCCL id is broadcast
//            with MPI_Bcast, as llm.c does). Compiled when the CUDA toolkit
//            and NCCL are found; one GPU per rank.
//   "local"  one process, world size 1: every collective is the identity, so
//            a program written for N ranks runs unchanged without MPI.
//   "auto"   "mpi" when launched by mpirun/srun (and loom was built with MPI),
//            else "local".
//
// Every collective takes contiguous CPU tensors of any dtype, including
// zero-size ones; ranks (root, src, dst) are ranks within the group. Each
// ProcessGroup method returns a Work at once; the free functions wait for it
// unless async_op is set. A Work that does not complete within the group's
// timeout (Options::timeout, 5 minutes by default) throws a loom::Error from
// wait(): a rank died, hangs, or calls collectives in another order. A
// synchronous call may run on the calling thread (with MPI); past the
// timeout it ends the job with that error (abort_job), since nothing can
// interrupt a thread inside MPI.
//
// Collectives are checked across ranks before they run (Options::check,
// on by default): an all_reduce of float32[1000] on one rank and float32[999]
// on another is a loom::Error on every rank, naming each rank's arguments,
// instead of a hang or a silent wrong answer. Point-to-point receives check
// the byte count of the message that arrives.
#pragma once

#include <chrono>
#include <cstdint>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "loom/tensor.h"

namespace loom::distributed {

enum class ReduceOp { Sum, Avg, Max, Min, Product };
const char* reduce_op_name(ReduceOp op);

struct Options {
  // How long wait() waits for a collective before it throws.
  std::chrono::milliseconds timeout{std::chrono::minutes(5)};
  // Check every collective's op, dtype and shapes across ranks first (one
  // extra 16-byte all-reduce per call).
  bool check = true;
};

// The handle of one (possibly still running) operation.
class Work {
 public:
  Work(std::string description, std::chrono::milliseconds timeout);
  virtual ~Work() = default;
  Work(const Work&) = delete;
  Work& operator=(const Work&) = delete;

  bool is_completed() const;
  // Completed without an exception.
  bool is_success() const;
  // Waits until the operation completes and rethrows its failure. A timeout
  // below zero means the group's; a Work still running after it throws a
  // loom::Error that names the operation and this rank.
  void wait(std::chrono::milliseconds timeout = std::chrono::milliseconds(-1));
  // The exception the operation failed with (null while running or on success).
  std::exception_ptr exception() const;
  const std::string& description() const { return description_; }
  // When the backend began running the operation and when it completed
  // (steady_clock; the epoch before then): how DDP measures the
  // communication its backward pass hides.
  std::chrono::steady_clock::time_point started_at() const;
  std::chrono::steady_clock::time_point finished_at() const;

  // For backends: the operation starts running; is a thread in wait()? (a
  // backend may poll harder then); it is done (with an exception on failure).
  void mark_started();
  bool has_waiter() const;
  void finish(std::exception_ptr error = nullptr);

 private:
  struct State;
  std::string description_;
  std::chrono::milliseconds timeout_;
  std::shared_ptr<State> state_;
};
using WorkPtr = std::shared_ptr<Work>;

class ProcessGroup {
 public:
  virtual ~ProcessGroup() = default;
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  // This process's rank in the group, and the group's size.
  int rank() const { return rank_; }
  int size() const { return size_; }
  // "mpi", "nccl" or "local".
  const std::string& backend() const { return backend_; }
  const Options& options() const { return options_; }

  // In place: every rank ends with op over all ranks' `tensor`. Avg needs a
  // floating-point dtype; bool reduces as logical or (Sum, Max) and and
  // (Product, Min).
  virtual WorkPtr all_reduce(Tensor& tensor, ReduceOp op = ReduceOp::Sum) = 0;
  // Every rank ends with root's `tensor`.
  virtual WorkPtr broadcast(Tensor& tensor, int root) = 0;
  // outputs[r] receives rank r's `input` (outputs.size() == size(); sizes may
  // differ by rank, input must match outputs[rank()]).
  virtual WorkPtr all_gather(std::vector<Tensor>& outputs, const Tensor& input) = 0;
  // `output` (size() times input's elements) is the ranks' inputs concatenated.
  WorkPtr all_gather_into_tensor(Tensor& output, const Tensor& input);
  // output receives op over all ranks' inputs[rank()] (inputs.size() ==
  // size(); sizes may differ by rank).
  virtual WorkPtr reduce_scatter(Tensor& output, const std::vector<Tensor>& inputs,
                                 ReduceOp op = ReduceOp::Sum) = 0;
  // `input` (size() times output's elements) is split in rank order.
  WorkPtr reduce_scatter_tensor(Tensor& output, const Tensor& input, ReduceOp op = ReduceOp::Sum);
  // On root, outputs[r] receives rank r's input; elsewhere outputs is unused.
  virtual WorkPtr gather(std::vector<Tensor>& outputs, const Tensor& input, int root) = 0;
  // Rank r receives root's inputs[r]; inputs is read on root only.
  virtual WorkPtr scatter(Tensor& output, const std::vector<Tensor>& inputs, int root) = 0;
  virtual WorkPtr send(const Tensor& tensor, int dst, int tag = 0) = 0;
  virtual WorkPtr recv(Tensor& tensor, int src, int tag = 0) = 0;
  virtual WorkPtr barrier() = 0;

 protected:
  ProcessGroup(std::string backend, int rank, int size, Options options);

 private:
  std::string backend_;
  int rank_;
  int size_;
  Options options_;
};

// Starts the default group. backend: "mpi", "nccl", "local" or "auto" (see
// above). A second call without destroy_process_group() is an error.
void init_process_group(const std::string& backend = "auto", const Options& options = {});
bool is_initialized();
// Was loom built with MPI (NCCL)? A build without says so at init.
bool is_mpi_available();
bool is_nccl_available();
// True when this process was started by mpirun or srun (its environment says so).
bool launched_by_mpi();
int get_rank();        // 0 when not initialized
int get_world_size();  // 1 when not initialized
ProcessGroup& default_group();
// A group of the given ranks of the default group (every rank must call it,
// in the same order). Ranks outside `ranks` get nullptr.
std::shared_ptr<ProcessGroup> new_group(std::vector<int> ranks);
// Waits for outstanding work, then shuts the backend down. MPI cannot start
// twice in one process: init after destroy is an error for "mpi" and "nccl".
void destroy_process_group();

// The collectives on a group (the default one when group is null); they wait
// unless async_op, and return the Work either way.
WorkPtr all_reduce(Tensor& tensor, ReduceOp op = ReduceOp::Sum, ProcessGroup* group = nullptr,
                   bool async_op = false);
WorkPtr broadcast(Tensor& tensor, int root, ProcessGroup* group = nullptr, bool async_op = false);
WorkPtr all_gather(std::vector<Tensor>& outputs, const Tensor& input, ProcessGroup* group = nullptr,
                   bool async_op = false);
WorkPtr reduce_scatter(Tensor& output, const std::vector<Tensor>& inputs, ReduceOp op = ReduceOp::Sum,
                       ProcessGroup* group = nullptr, bool async_op = false);
WorkPtr gather(std::vector<Tensor>& outputs, const Tensor& input, int root, ProcessGroup* group = nullptr,
               bool async_op = false);
WorkPtr scatter(Tensor& output, const std::vector<Tensor>& inputs, int root, ProcessGroup* group = nullptr,
                bool async_op = false);
WorkPtr send(const Tensor& tensor, int dst, int tag = 0, ProcessGroup* group = nullptr);
WorkPtr recv(Tensor& tensor, int src, int tag = 0, ProcessGroup* group = nullptr);
void barrier(ProcessGroup* group = nullptr);

// Ends this process's whole job with an error: under MPI every rank stops
// (MPI_Abort), naming this rank; without MPI it is std::exit(code). For a
// failure the program cannot recover from (loom train calls it on any
// error), so that the other ranks never wait forever.
[[noreturn]] void abort_job(const std::string& message, int code = 1);

}  // namespace loom::distributed
