// What the process-group backends share (src/distributed/): argument checks
// done on the calling thread, the text that describes a collective (its
// cross-rank check compares these), and the backends' constructors.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "loom/distributed.h"

namespace loom::distributed::detail {

// Throws unless t is a defined, contiguous CPU tensor; refuses inside
// loom::compile capture.
void check_tensor(const char* op, const Tensor& t, const char* what = "tensor");
void check_rank(const char* op, const char* what, int r, int size);
void check_list(const char* op, const char* what, const std::vector<Tensor>& list, int size);
// Avg needs a floating dtype.
void check_reduce(const char* op, ReduceOp r, const Tensor& t);
// "float32[2, 3]"
std::string geometry(const Tensor& t);

// A backend's calls check their arguments on the calling thread with these,
// which return the text that describes the call ("all_reduce(float32[1000],
// sum)"): errors name it, and the cross-rank check compares it.
std::string check_all_reduce(const ProcessGroup& g, const Tensor& t, ReduceOp op);
std::string check_broadcast(const ProcessGroup& g, const Tensor& t, int root);
std::string check_all_gather(const ProcessGroup& g, const std::vector<Tensor>& outputs, const Tensor& input);
std::string check_reduce_scatter(const ProcessGroup& g, const Tensor& output, const std::vector<Tensor>& inputs,
                                 ReduceOp op);
std::string check_gather(const ProcessGroup& g, const std::vector<Tensor>& outputs, const Tensor& input, int root);
std::string check_scatter(const ProcessGroup& g, const Tensor& output, const std::vector<Tensor>& inputs, int root);
std::string check_send(const ProcessGroup& g, const Tensor& t, int dst, int tag);
std::string check_recv(const ProcessGroup& g, const Tensor& t, int src, int tag);
// FNV-1a of a collective's description: equal on every rank when the ranks
// agree on op, dtype, shapes and root.
uint64_t signature(const std::string& description);

// Sizes of the size() pieces that all_gather_into_tensor and
// reduce_scatter_tensor split n elements into (torch.tensor_split: the
// first n % size pieces hold one more).
std::vector<int64_t> split_sizes(int64_t n, int size);

// Set while a synchronous free function (distributed::all_reduce without
// async_op, ...) waits for the call it makes: a backend may then run the call
// on the calling thread (Note [One MPI thread]).
bool caller_waits();
class CallerWaits {
 public:
  CallerWaits();
  ~CallerWaits();
  CallerWaits(const CallerWaits&) = delete;
  CallerWaits& operator=(const CallerWaits&) = delete;

 private:
  bool previous_;
};

// x /= divisor, elementwise, for Avg (floating dtypes only).
void divide_in_place(Tensor& t, int divisor);

// Backends.
std::shared_ptr<ProcessGroup> make_local_group(const Options& options);
// Initializes MPI (MPI_THREAD_SERIALIZED) and its worker thread.
std::shared_ptr<ProcessGroup> make_mpi_world(const Options& options);
std::shared_ptr<ProcessGroup> make_mpi_subgroup(ProcessGroup& world, const std::vector<int>& ranks);
// Waits for queued MPI work and finalizes MPI (a no-op when it never started).
void shutdown_mpi();
// Calls MPI_Abort when MPI is running; returns otherwise.
void mpi_abort(int code);
#if defined(LOOM_HAVE_NCCL)
std::shared_ptr<ProcessGroup> make_nccl_world(const Options& options);
std::shared_ptr<ProcessGroup> make_nccl_subgroup(ProcessGroup& world, const std::vector<int>& ranks);
#endif

}  // namespace loom::distributed::detail
