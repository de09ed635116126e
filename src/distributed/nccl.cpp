// The "nccl" backend: NVIDIA NCCL, one GPU per rank, bootstrapped through
// MPI (rank 0 makes the NCCL id and MPI_Bcast hands it out, as llm.c does).
//
// Note [NCCL host staging]
// loom has no CUDA tensors yet, so an NCCL group takes the contiguous CPU
// tensors an MPI group takes: each operation copies its inputs into a device
// buffer of the group's (grown, never shrunk), runs NCCL on the group's own
// stream and copies the results back. The two copies are host staging only:
// they, and the buffer, go away when loom has CUDA tensors and the
// collectives run on the tensors' own device memory.
//
// Note [One NCCL thread]
// As with MPI (Note [One MPI thread]), one worker thread makes every NCCL
// and CUDA call of every NCCL group of the process, in the order the program
// issues the operations. NCCL operations on different communicators can
// deadlock unless every rank issues them in the same order; one queue keeps
// that order, and the worker waits for each operation's stream before it
// starts the next. While it waits it polls ncclCommGetAsyncError, so that a
// peer that died surfaces as an error rather than a hang; the communicator
// is then unusable, and later operations on the group fail at once. A
// caller gets a Work at once and goes on computing. Destroying a group
// waits for the operations queued before it, then frees the communicator
// (ncclCommAbort instead of ncclCommDestroy once it has failed).
//
// Note [NCCL point-to-point]
// NCCL has no tags and no message sizes: the k-th send from rank a to rank b
// meets the k-th recv on b from a, and both must give the same count. So a
// send and a recv first swap a 24-byte header (send or recv, bytes, tag),
// and both ranks check it: a byte count or tag that differs, or two ranks
// that both send (or both receive) to each other first, is a loom::Error on
// both ranks instead of a hang or a corrupted message. Unlike MPI's, a send
// occupies the worker until the peer's recv arrives, so of two ranks that
// exchange messages one must receive first.
#if defined(LOOM_HAVE_NCCL)

#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <thread>

#include "distributed/backends.h"
#include "loom/error.h"
#include "loom/ops.h"

namespace loom::distributed::detail {

namespace {

std::string nccl_message(ncclResult_t rc, const char* call) {
  std::string msg = std::string("distributed: ") + call + " failed: " + ncclGetErrorString(rc);
  const char* last = ncclGetLastError(nullptr);
  if (last != nullptr && last[0] != '\0') msg += std::string(" (") + last + ")";
  return msg;
}

void check_nccl(ncclResult_t rc, const char* call) {
  if (rc != ncclSuccess) LOOM_ERROR(nccl_message(rc, call));
}

void check_cuda(cudaError_t rc, const char* call) {
  if (rc == cudaSuccess) return;
  cudaGetLastError();  // clear a non-sticky error, so that it names only this call
  LOOM_ERROR("distributed: ", call, " failed: ", cudaGetErrorString(rc));
}

ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::Float32: return ncclFloat32;
    case DType::Float64: return ncclFloat64;
    case DType::Float16: return ncclFloat16;
    case DType::BFloat16: return ncclBfloat16;
    case DType::Int32: return ncclInt32;
    case DType::Int64: return ncclInt64;
    case DType::Int8: return ncclInt8;
    case DType::UInt8:
    case DType::Bool: return ncclUint8;
  }
  LOOM_ASSERT(false, "dtype ", static_cast<int>(t));
  return ncclUint8;
}

// bool is a byte of 0 or 1: or is Max, and is Min.
ncclRedOp_t nccl_op(ReduceOp op, DType t) {
  if (t == DType::Bool) return op == ReduceOp::Sum || op == ReduceOp::Max ? ncclMax : ncclMin;
  switch (op) {
    case ReduceOp::Sum: return ncclSum;
    case ReduceOp::Avg: return ncclAvg;
    case ReduceOp::Max: return ncclMax;
    case ReduceOp::Min: return ncclMin;
    case ReduceOp::Product: return ncclProd;
  }
  LOOM_ASSERT(false, "reduce op ", static_cast<int>(op));
  return ncclSum;
}

size_t count(const Tensor& t) { return static_cast<size_t>(t.numel()); }

// ---- the worker (Note [One NCCL thread]) ----

class Worker {
 public:
  Worker() : thread_([this] { loop(); }) {}
  ~Worker() {
    {
      std::lock_guard<std::mutex> lock(m_);
      stop_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // task must not throw.
  void post(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lock(m_);
      queue_.push_back(std::move(task));
    }
    cv_.notify_one();
  }

  // Runs fn on the worker after everything queued before it, waits for it
  // and rethrows its exception (setup and teardown).
  void call(std::function<void()> fn) {
    auto done = std::make_shared<std::promise<void>>();
    std::future<void> result = done->get_future();
    post([done, fn = std::move(fn)] {
      try {
        fn();
        done->set_value();
      } catch (...) {
        done->set_exception(std::current_exception());
      }
    });
    result.get();
  }

 private:
  void loop() {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lock(m_);
        cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;  // stop, and nothing left to run
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      task();
    }
  }

  std::mutex m_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool stop_ = false;
  std::thread thread_;  // last: starts after the members above exist
};

// ---- the group ----

// Sent ahead of every point-to-point message (Note [NCCL point-to-point]).
struct MessageHeader {
  int64_t is_send;
  int64_t bytes;
  int64_t tag;
};

class NcclGroup final : public ProcessGroup {
 public:
  NcclGroup(std::shared_ptr<ProcessGroup> bootstrap, std::shared_ptr<Worker> worker, ncclComm_t comm,
            cudaStream_t stream, const Options& o)
      : ProcessGroup("nccl", bootstrap->rank(), bootstrap->size(), o),
        bootstrap_(std::move(bootstrap)),
        worker_(std::move(worker)),
        comm_(comm),
        stream_(stream) {}

  // Queued operations run first: the teardown is queued behind them.
  ~NcclGroup() override {
    try {
      worker_->call([this] {
        if (failure_.empty())
          ncclCommDestroy(comm_);
        else
          ncclCommAbort(comm_);
        if (buffer_ != nullptr) cudaFree(buffer_);
        cudaStreamDestroy(stream_);
      });
    } catch (...) {
    }
  }

  ProcessGroup& bootstrap() { return *bootstrap_; }
  const std::shared_ptr<Worker>& worker() const { return worker_; }

  WorkPtr all_reduce(Tensor& t, ReduceOp op) override {
    std::string desc = check_all_reduce(*this, t, op);
    return submit(std::move(desc), /*collective=*/true, [this, t, op] {
      if (t.numel() == 0) return;
      char* d = staging(t.nbytes());
      upload(d, t.raw_data_ptr(), t.nbytes());
      run("ncclAllReduce",
          ncclAllReduce(d, d, count(t), nccl_type(t.dtype()), nccl_op(op, t.dtype()), comm_, stream_));
      download(t.raw_data_ptr(), d, t.nbytes());
      finish_downloads();
    });
  }

  WorkPtr broadcast(Tensor& t, int root) override {
    std::string desc = check_broadcast(*this, t, root);
    return submit(std::move(desc), /*collective=*/true, [this, t, root] {
      if (t.numel() == 0) return;
      char* d = staging(t.nbytes());
      if (rank() == root) upload(d, t.raw_data_ptr(), t.nbytes());
      run("ncclBroadcast", ncclBroadcast(d, d, count(t), nccl_type(t.dtype()), root, comm_, stream_));
      if (rank() != root) download(t.raw_data_ptr(), d, t.nbytes());
      finish_downloads();
    });
  }

  // outputs[r] is staged at displs[r]; equal pieces are one ncclAllGather,
  // uneven ones one ncclBroadcast per rank, fused in a group.
  WorkPtr all_gather(std::vector<Tensor>& outputs, const Tensor& input) override {
    std::string desc = check_all_gather(*this, outputs, input);
    return submit(std::move(desc), /*collective=*/true, [this, outputs, input] {
      const ncclDataType_t type = nccl_type(input.dtype());
      const size_t es = element_size(input.dtype());
      size_t total = 0;
      const std::vector<size_t> displs = displacements(outputs, total);
      if (total == 0) return;
      const auto me = static_cast<size_t>(rank());
      char* d = staging(total * es);
      upload(d + displs[me] * es, input.raw_data_ptr(), input.nbytes());
      if (even(outputs)) {
        run("ncclAllGather", ncclAllGather(d + displs[me] * es, d, count(input), type, comm_, stream_));
      } else {
        run_group("ncclBroadcast", [&] {
          for (int r = 0; r < size(); ++r) {
            const auto i = static_cast<size_t>(r);
            if (outputs[i].numel() == 0) continue;
            char* piece = d + displs[i] * es;
            check_nccl(ncclBroadcast(piece, piece, count(outputs[i]), type, r, comm_, stream_), "ncclBroadcast");
          }
        });
      }
      for (size_t i = 0; i < outputs.size(); ++i)
        download(outputs[i].raw_data_ptr(), d + displs[i] * es, outputs[i].nbytes());
      finish_downloads();
    });
  }

  // inputs[r] is staged at displs[r]; equal pieces are one
  // ncclReduceScatter, uneven ones one ncclReduce per rank into that rank,
  // fused in a group. Every op works in place in the staging buffer.
  WorkPtr reduce_scatter(Tensor& output, const std::vector<Tensor>& inputs, ReduceOp op) override {
    std::string desc = check_reduce_scatter(*this, output, inputs, op);
    return submit(std::move(desc), /*collective=*/true, [this, output, inputs, op] {
      const DType dt = output.dtype();
      const ncclDataType_t type = nccl_type(dt);
      const ncclRedOp_t nop = nccl_op(op, dt);
      const size_t es = element_size(dt);
      size_t total = 0;
      const std::vector<size_t> displs = displacements(inputs, total);
      if (total == 0) return;
      const auto me = static_cast<size_t>(rank());
      char* d = staging(total * es);
      for (size_t i = 0; i < inputs.size(); ++i)
        upload(d + displs[i] * es, inputs[i].raw_data_ptr(), inputs[i].nbytes());
      if (even(inputs)) {
        run("ncclReduceScatter", ncclReduceScatter(d, d + displs[me] * es, count(output), type, nop, comm_, stream_));
      } else {
        run_group("ncclReduce", [&] {
          for (int r = 0; r < size(); ++r) {
            const auto i = static_cast<size_t>(r);
            if (inputs[i].numel() == 0) continue;
            char* piece = d + displs[i] * es;
            check_nccl(ncclReduce(piece, piece, count(inputs[i]), type, nop, r, comm_, stream_), "ncclReduce");
          }
        });
      }
      download(output.raw_data_ptr(), d + displs[me] * es, output.nbytes());
      finish_downloads();
    });
  }

  // Root stages rank r's piece at r * bytes and receives every other one.
  WorkPtr gather(std::vector<Tensor>& outputs, const Tensor& input, int root) override {
    std::string desc = check_gather(*this, outputs, input, root);
    return submit(std::move(desc), /*collective=*/true, [this, outputs, input, root] {
      if (input.numel() == 0) return;
      const ncclDataType_t type = nccl_type(input.dtype());
      const size_t bytes = input.nbytes();
      if (rank() != root) {
        char* d = staging(bytes);
        upload(d, input.raw_data_ptr(), bytes);
        run("ncclSend", ncclSend(d, count(input), type, root, comm_, stream_));
        return;
      }
      char* d = staging(bytes * static_cast<size_t>(size()));
      upload(d + static_cast<size_t>(root) * bytes, input.raw_data_ptr(), bytes);
      run_group("ncclRecv", [&] {
        for (int r = 0; r < size(); ++r)
          if (r != root)
            check_nccl(ncclRecv(d + static_cast<size_t>(r) * bytes, count(input), type, r, comm_, stream_),
                       "ncclRecv");
      });
      for (size_t i = 0; i < outputs.size(); ++i) download(outputs[i].raw_data_ptr(), d + i * bytes, bytes);
      finish_downloads();
    });
  }

  // Root stages inputs[r] at r * bytes and sends every other one.
  WorkPtr scatter(Tensor& output, const std::vector<Tensor>& inputs, int root) override {
    std::string desc = check_scatter(*this, output, inputs, root);
    return submit(std::move(desc), /*collective=*/true, [this, output, inputs, root] {
      if (output.numel() == 0) return;
      const ncclDataType_t type = nccl_type(output.dtype());
      const size_t bytes = output.nbytes();
      if (rank() != root) {
        char* d = staging(bytes);
        run("ncclRecv", ncclRecv(d, count(output), type, root, comm_, stream_));
        download(output.raw_data_ptr(), d, bytes);
        finish_downloads();
        return;
      }
      char* d = staging(bytes * static_cast<size_t>(size()));
      for (size_t i = 0; i < inputs.size(); ++i) upload(d + i * bytes, inputs[i].raw_data_ptr(), bytes);
      run_group("ncclSend", [&] {
        for (int r = 0; r < size(); ++r)
          if (r != root)
            check_nccl(ncclSend(d + static_cast<size_t>(r) * bytes, count(output), type, r, comm_, stream_),
                       "ncclSend");
      });
      download(output.raw_data_ptr(), d + static_cast<size_t>(root) * bytes, bytes);
      finish_downloads();
    });
  }

  WorkPtr send(const Tensor& t, int dst, int tag) override {
    std::string desc = check_send(*this, t, dst, tag);
    return submit(desc, /*collective=*/false, [this, t, dst, tag, desc] {
      exchange_headers(desc, dst, MessageHeader{1, static_cast<int64_t>(t.nbytes()), tag});
      if (t.numel() == 0) return;
      char* d = staging(t.nbytes());
      upload(d, t.raw_data_ptr(), t.nbytes());
      run("ncclSend", ncclSend(d, t.nbytes(), ncclUint8, dst, comm_, stream_));
    });
  }

  WorkPtr recv(Tensor& t, int src, int tag) override {
    std::string desc = check_recv(*this, t, src, tag);
    return submit(desc, /*collective=*/false, [this, t, src, tag, desc] {
      exchange_headers(desc, src, MessageHeader{0, static_cast<int64_t>(t.nbytes()), tag});
      if (t.numel() == 0) return;
      char* d = staging(t.nbytes());
      run("ncclRecv", ncclRecv(d, t.nbytes(), ncclUint8, src, comm_, stream_));
      download(t.raw_data_ptr(), d, t.nbytes());
      finish_downloads();
    });
  }

  // An all-reduce of one float: no rank leaves it before every rank is in it.
  WorkPtr barrier() override {
    return submit("barrier()", /*collective=*/true, [this] {
      char* d = staging(sizeof(float));
      check_cuda(cudaMemsetAsync(d, 0, sizeof(float), stream_), "cudaMemsetAsync");
      run("ncclAllReduce", ncclAllReduce(d, d, 1, ncclFloat32, ncclSum, comm_, stream_));
    });
  }

 private:
  std::shared_ptr<ProcessGroup> bootstrap_;  // the MPI group the NCCL id went over
  std::shared_ptr<Worker> worker_;
  ncclComm_t comm_;
  cudaStream_t stream_;
  // Worker thread only:
  void* buffer_ = nullptr;  // Note [NCCL host staging]
  size_t capacity_ = 0;
  std::string failure_;  // why the communicator broke (Note [One NCCL thread])

  // ---- argument checks: the same as the MPI group's ----


  // ---- layout of a list in the staging buffer, in elements ----

  static std::vector<size_t> displacements(const std::vector<Tensor>& list, size_t& total) {
    std::vector<size_t> displs;
    total = 0;
    for (const Tensor& t : list) {
      displs.push_back(total);
      total += count(t);
    }
    return displs;
  }
  static bool even(const std::vector<Tensor>& list) {
    return std::all_of(list.begin(), list.end(), [&](const Tensor& t) { return t.numel() == list[0].numel(); });
  }

  // ---- the worker's side ----

  WorkPtr submit(std::string desc, bool collective, std::function<void()> fn) {
    auto work = std::make_shared<Work>(desc, options().timeout);
    // `this` outlives the task: the destructor waits for the queue.
    worker_->post([this, work, collective, desc = std::move(desc), fn = std::move(fn)] {
      try {
        work->mark_started();
        LOOM_CHECK(failure_.empty(), "distributed: ", desc, ": this group's NCCL communicator failed earlier (",
                   failure_, ") and cannot run more operations");
        if (collective) verify(desc);
        fn();
        work->finish();
      } catch (...) {
        work->finish(std::current_exception());
      }
    });
    return work;
  }

  // The staging buffer, grown to at least `bytes`. The stream is idle
  // between operations, so the old buffer can go at once.
  char* staging(size_t bytes) {
    if (bytes > capacity_) {
      if (buffer_ != nullptr) check_cuda(cudaFree(buffer_), "cudaFree");
      buffer_ = nullptr;
      capacity_ = 0;
      constexpr size_t kGrain = size_t{1} << 20;
      const size_t want = (bytes + kGrain - 1) / kGrain * kGrain;
      const cudaError_t rc = cudaMalloc(&buffer_, want);
      if (rc != cudaSuccess) {
        buffer_ = nullptr;
        cudaGetLastError();
        LOOM_ERROR("distributed: cudaMalloc of ", want, " bytes for the NCCL staging buffer failed: ",
                   cudaGetErrorString(rc));
      }
      capacity_ = want;
    }
    return static_cast<char*>(buffer_);
  }
  void upload(void* device, const void* host, size_t bytes) {
    if (bytes > 0)
      check_cuda(cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, stream_),
                 "cudaMemcpyAsync (host to device)");
  }
  void download(void* host, const void* device, size_t bytes) {
    if (bytes > 0)
      check_cuda(cudaMemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, stream_),
                 "cudaMemcpyAsync (device to host)");
  }
  void finish_downloads() { check_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize"); }

  // Checks one enqueued NCCL call and waits for the stream.
  void run(const char* call, ncclResult_t rc) {
    check_nccl(rc, call);
    wait_for_stream(call);
  }
  // Enqueues several NCCL calls as one group, and waits for the stream.
  template <typename F>
  void run_group(const char* call, F&& enqueue) {
    check_nccl(ncclGroupStart(), "ncclGroupStart");
    try {
      enqueue();
    } catch (...) {
      ncclGroupEnd();
      throw;
    }
    check_nccl(ncclGroupEnd(), "ncclGroupEnd");
    wait_for_stream(call);
  }

  // Note [One NCCL thread]: poll, so that an asynchronous NCCL error (a
  // peer gone) ends the wait.
  void wait_for_stream(const char* call) {
    for (int polls = 0;; polls = std::min(polls + 1, 1000)) {
      const cudaError_t rc = cudaStreamQuery(stream_);
      if (rc == cudaSuccess) return;
      if (rc != cudaErrorNotReady) check_cuda(rc, call);
      ncclResult_t async = ncclSuccess;
      check_nccl(ncclCommGetAsyncError(comm_, &async), "ncclCommGetAsyncError");
      if (async != ncclSuccess && async != ncclInProgress) {
        failure_ = nccl_message(async, call);
        LOOM_ERROR(failure_);
      }
      if (polls < 1000)
        std::this_thread::yield();
      else
        std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }

  // Note [Collective signatures] (mpi.cpp), over NCCL: an all-reduce of
  // (h, ~h) with max, then on a mismatch an all-gather of every rank's text.
  void verify(const std::string& desc) {
    if (!options().check || size() == 1) return;
    const auto h = static_cast<int64_t>(signature(desc));
    int64_t sig[2] = {h, ~h};
    char* d = staging(sizeof(sig));
    upload(d, sig, sizeof(sig));
    run("ncclAllReduce (collective check)", ncclAllReduce(d, d, 2, ncclInt64, ncclMax, comm_, stream_));
    download(sig, d, sizeof(sig));
    finish_downloads();
    if (sig[0] == h && ~sig[1] == h) return;
    constexpr size_t kText = 240;
    std::vector<char> mine(kText, 0), all(kText * static_cast<size_t>(size()), 0);
    std::memcpy(mine.data(), desc.data(), std::min(desc.size(), kText - 1));
    d = staging(all.size());
    upload(d + static_cast<size_t>(rank()) * kText, mine.data(), kText);
    run("ncclAllGather (collective check)",
        ncclAllGather(d + static_cast<size_t>(rank()) * kText, d, kText, ncclUint8, comm_, stream_));
    download(all.data(), d, all.size());
    finish_downloads();
    std::string msg = "distributed: the ranks called different collectives:";
    for (int r = 0; r < size(); ++r)
      msg += std::string(r ? ";" : "") + " rank " + std::to_string(r) + " " +
             std::string(all.data() + static_cast<size_t>(r) * kText);
    LOOM_ERROR(msg);
  }

  // Note [NCCL point-to-point]: both ranks send their header and receive
  // the peer's, then both check the pair.
  void exchange_headers(const std::string& desc, int peer, const MessageHeader& mine) {
    MessageHeader theirs{};
    char* d = staging(2 * sizeof(MessageHeader));
    upload(d, &mine, sizeof(mine));
    run_group("ncclSend/ncclRecv (message header)", [&] {
      check_nccl(ncclSend(d, sizeof(MessageHeader), ncclUint8, peer, comm_, stream_), "ncclSend");
      check_nccl(ncclRecv(d + sizeof(MessageHeader), sizeof(MessageHeader), ncclUint8, peer, comm_, stream_),
                 "ncclRecv");
    });
    download(&theirs, d + sizeof(MessageHeader), sizeof(theirs));
    finish_downloads();
    const bool sending = mine.is_send != 0;
    const char* op = sending ? "send" : "recv";
    LOOM_CHECK(theirs.is_send != mine.is_send, "distributed::", op, ": ", desc, ": rank ", peer,
               "'s matching call is a ", op, " too; NCCL pairs each send with the peer's next recv, so of two "
               "ranks that exchange messages one must receive first");
    if (sending)
      LOOM_CHECK(theirs.bytes == mine.bytes, "distributed::send: ", desc, ": rank ", peer,
                 " expects a message of ", theirs.bytes, " bytes but this one has ", mine.bytes);
    else
      LOOM_CHECK(theirs.bytes == mine.bytes, "distributed::recv: ", desc, " expected a message of ", mine.bytes,
                 " bytes but rank ", peer, " sent ", theirs.bytes);
    LOOM_CHECK(theirs.tag == mine.tag, "distributed::", op, ": ", desc, ": rank ", peer, "'s matching ",
               sending ? "recv" : "send", " has tag ", theirs.tag,
               "; NCCL delivers the messages between two ranks in order, so their tags must match in order");
  }
};

// ---- setup ----

// The rank on this node: the launcher's, else the MPI rank (one node).
int local_rank(int world_rank) {
  for (const char* var : {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID"}) {
    const char* value = std::getenv(var);
    if (value == nullptr) continue;
    char* end = nullptr;
    const long r = std::strtol(value, &end, 10);
    LOOM_CHECK(end != value && *end == '\0' && r >= 0 && r <= 1 << 20, "distributed: ", var, "='", value,
               "' is not a local rank");
    return static_cast<int>(r);
  }
  return world_rank;
}

// Every rank learns every rank's GPU count, so that ranks without a GPU fail
// together rather than leave the others waiting for them in NCCL.
void check_gpus(ProcessGroup& mpi, int gpus, const std::string& why) {
  Tensor mine = empty({1}, TensorOptions().dtype(DType::Int32));
  mine.data_ptr<int32_t>()[0] = gpus;
  Tensor all = empty({mpi.size()}, TensorOptions().dtype(DType::Int32));
  mpi.all_gather_into_tensor(all, mine)->wait();
  LOOM_CHECK(gpus > 0, "distributed::init_process_group(\"nccl\"): NCCL needs one GPU per rank and none was found "
             "on this rank (rank ", mpi.rank(), " of ", mpi.size(), why.empty() ? "" : "; cudaGetDeviceCount: ",
             why, ")");
  std::string missing;
  for (int r = 0; r < mpi.size(); ++r)
    if (all.data_ptr<int32_t>()[r] <= 0) {
      if (!missing.empty()) missing += ", ";
      missing += std::to_string(r);
    }
  LOOM_CHECK(missing.empty(), "distributed::init_process_group(\"nccl\"): NCCL needs one GPU per rank and none "
             "was found on rank(s) ", missing, " of ", mpi.size());
}

// Rank 0 of `bootstrap` makes the NCCL id and broadcasts it, with one more
// byte that says whether it could (so that a failure there ends the wait).
ncclUniqueId share_unique_id(ProcessGroup& bootstrap) {
  ncclUniqueId id{};
  constexpr int64_t kBytes = static_cast<int64_t>(sizeof(ncclUniqueId));
  Tensor message = zeros({kBytes + 1}, TensorOptions().dtype(DType::UInt8));
  auto* bytes = message.data_ptr<uint8_t>();
  std::string error;
  if (bootstrap.rank() == 0) {
    const ncclResult_t rc = ncclGetUniqueId(&id);
    if (rc == ncclSuccess) {
      std::memcpy(bytes, &id, sizeof(id));
      bytes[kBytes] = 1;
    } else {
      error = nccl_message(rc, "ncclGetUniqueId");
    }
  }
  bootstrap.broadcast(message, 0)->wait();
  if (!error.empty()) LOOM_ERROR(error);
  LOOM_CHECK(bytes[kBytes] == 1, "distributed: rank 0 of the group could not make the NCCL id (its error says why)");
  std::memcpy(&id, bytes, sizeof(id));
  return id;
}

// The NCCL communicator over the ranks of `bootstrap`, and its stream.
std::shared_ptr<ProcessGroup> connect(std::shared_ptr<ProcessGroup> bootstrap, std::shared_ptr<Worker> worker,
                                      const Options& options) {
  const ncclUniqueId id = share_unique_id(*bootstrap);
  const int rank = bootstrap->rank(), size = bootstrap->size();
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  worker->call([&] {
    check_cuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
    const ncclResult_t rc = ncclCommInitRank(&comm, size, id, rank);
    if (rc != ncclSuccess) {
      cudaStreamDestroy(stream);
      check_nccl(rc, "ncclCommInitRank");
    }
  });
  return std::make_shared<NcclGroup>(std::move(bootstrap), std::move(worker), comm, stream, options);
}

}  // namespace

std::shared_ptr<ProcessGroup> make_nccl_world(const Options& options) {
  std::shared_ptr<ProcessGroup> mpi = make_mpi_world(options);
  int gpus = 0;
  std::string why;
  const cudaError_t rc = cudaGetDeviceCount(&gpus);
  if (rc != cudaSuccess) {
    gpus = 0;
    why = cudaGetErrorString(rc);
    cudaGetLastError();
  }
  check_gpus(*mpi, gpus, why);
  const int device = local_rank(mpi->rank()) % gpus;
  auto worker = std::make_shared<Worker>();
  // The device is per thread: the worker, which makes every CUDA call, uses it.
  worker->call([device] {
    const cudaError_t set = cudaSetDevice(device);
    if (set != cudaSuccess) {
      cudaGetLastError();
      LOOM_ERROR("distributed: cudaSetDevice(", device, ") failed: ", cudaGetErrorString(set));
    }
  });
  return connect(std::move(mpi), std::move(worker), options);
}

// Every rank makes the MPI subgroup; its members make a new communicator
// (its first rank makes the id).
std::shared_ptr<ProcessGroup> make_nccl_subgroup(ProcessGroup& world, const std::vector<int>& ranks) {
  auto* parent = dynamic_cast<NcclGroup*>(&world);
  LOOM_ASSERT(parent != nullptr);
  std::shared_ptr<ProcessGroup> bootstrap = make_mpi_subgroup(parent->bootstrap(), ranks);
  if (bootstrap == nullptr) return nullptr;
  return connect(std::move(bootstrap), parent->worker(), world.options());
}

}  // namespace loom::distributed::detail

#endif  // LOOM_HAVE_NCCL
