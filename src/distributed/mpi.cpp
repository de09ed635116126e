// The "mpi" backend: Open MPI (or any MPI 3) on CPU tensors.
//
// Note [One MPI thread]
// MPI is initialized with MPI_THREAD_SERIALIZED, and after MPI_Init_thread
// every MPI call of the process is made by one worker thread (as PyTorch's
// ProcessGroupMPI). Every group's operations go into one queue, in the order
// the program issues them, so collectives on several groups keep the same
// relative order on every rank and never run concurrently. A caller gets a
// Work at once and goes on computing (DDP's gradient buckets reduce while
// backward runs); wait() blocks with the group's timeout.
//
// A synchronous collective (the free functions: distributed::all_reduce
// without async_op) skips the hop when the queue is empty and the worker is
// idle: the calling thread makes the MPI call itself, under the same mutex
// the worker holds for each of its calls, so calls stay serialized and in
// program order. Handing a 8-byte all-reduce to another thread and back
// costs more than the all-reduce (tens of microseconds on two busy cores,
// where the waiting thread and the worker compete for a core). Meanwhile the
// idle worker is the watchdog: a call still running after the group's
// timeout ends the job (abort_job) with an error naming the call and the
// rank, as PyTorch's NCCL watchdog does; it cannot throw in a thread that is
// inside MPI.
//
// The all-reduces of an asynchronous call (DDP's buckets, and the collective
// check before it) are MPI_Iallreduce, which the worker tests now and then:
// while nobody
// waits for the Work, the worker sleeps between tests, so a bucket whose
// peers are still computing their backward costs this rank's backward no
// CPU (a blocking call would poll a core the whole time, and on a machine
// with a core per rank that core is the backward's); once a thread waits in
// Work::wait, the worker tests without sleeping. A synchronous call uses
// the blocking forms, wherever it runs. The choice follows the call, not the
// thread: MPI matches a blocking collective only with blocking ones, and
// whether a call runs inline depends on each rank's own queue.
//
// Collectives block the worker until they finish. Point-to-point messages do
// not: send and recv start MPI_Isend/MPI_Irecv and the worker tests them
// between queued operations, so an exchange where both ranks send, then
// receive, asynchronously completes as it would with plain MPI.
//
// Before each collective the worker checks that every rank is in the same
// call with the same dtype, shapes and root (Note [Collective signatures]).
#if defined(LOOM_HAVE_MPI)

#include <mpi.h>

#include <atomic>
#include <climits>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <list>
#include <mutex>
#include <thread>

#include "distributed/backends.h"
#include "loom/autograd.h"
#include "loom/error.h"
#include "loom/ops.h"

namespace loom::distributed::detail {

namespace {

void check_mpi(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  LOOM_ERROR("distributed: ", call, " failed: ", std::string(msg, static_cast<size_t>(len)));
}

// ---- float16 and bfloat16: MPI has neither, so each is a 2-byte type of
// loom's own with reductions that compute in float and round per step (as
// NCCL's reductions on half do).
MPI_Datatype g_half = MPI_DATATYPE_NULL, g_bf16 = MPI_DATATYPE_NULL;
MPI_Op g_half_ops[4] = {MPI_OP_NULL, MPI_OP_NULL, MPI_OP_NULL, MPI_OP_NULL};  // sum max min product

template <typename T, typename F>
void combine(void* in, void* inout, int n, F f) {
  const T* a = static_cast<const T*>(in);
  T* b = static_cast<T*>(inout);
  for (int i = 0; i < n; ++i) b[i] = T(f(static_cast<float>(a[i]), static_cast<float>(b[i])));
}

template <typename F>
void combine_half(void* in, void* inout, const int* len, MPI_Datatype* type, F f) {
  if (*type == g_half)
    combine<Half>(in, inout, *len, f);
  else
    combine<BFloat16>(in, inout, *len, f);
}

void half_sum(void* a, void* b, int* n, MPI_Datatype* t) {
  combine_half(a, b, n, t, [](float x, float y) { return x + y; });
}
void half_max(void* a, void* b, int* n, MPI_Datatype* t) {
  combine_half(a, b, n, t, [](float x, float y) { return x > y || x != x ? x : y; });
}
void half_min(void* a, void* b, int* n, MPI_Datatype* t) {
  combine_half(a, b, n, t, [](float x, float y) { return x < y || x != x ? x : y; });
}
void half_prod(void* a, void* b, int* n, MPI_Datatype* t) {
  combine_half(a, b, n, t, [](float x, float y) { return x * y; });
}

MPI_Datatype mpi_type(DType t) {
  switch (t) {
    case DType::Float32: return MPI_FLOAT;
    case DType::Float64: return MPI_DOUBLE;
    case DType::Float16: return g_half;
    case DType::BFloat16: return g_bf16;
    case DType::Int32: return MPI_INT32_T;
    case DType::Int64: return MPI_INT64_T;
    case DType::UInt8: return MPI_UINT8_T;
    case DType::Int8: return MPI_INT8_T;
    case DType::Bool: return MPI_C_BOOL;
  }
  return MPI_DATATYPE_NULL;
}

// The MPI reduction for op on dtype t (Avg reduces as Sum, then divides).
MPI_Op mpi_op(ReduceOp op, DType t) {
  if (t == DType::Bool) return op == ReduceOp::Sum || op == ReduceOp::Max ? MPI_LOR : MPI_LAND;
  const bool half = t == DType::Float16 || t == DType::BFloat16;
  switch (op) {
    case ReduceOp::Sum:
    case ReduceOp::Avg: return half ? g_half_ops[0] : MPI_SUM;
    case ReduceOp::Max: return half ? g_half_ops[1] : MPI_MAX;
    case ReduceOp::Min: return half ? g_half_ops[2] : MPI_MIN;
    case ReduceOp::Product: return half ? g_half_ops[3] : MPI_PROD;
  }
  return MPI_OP_NULL;
}

int count_of(const char* op, int64_t n) {
  LOOM_CHECK(n <= INT_MAX, "distributed::", op, ": ", n, " elements is more than one MPI call carries (", INT_MAX,
             ")");
  return static_cast<int>(n);
}

// ---- the worker (Note [One MPI thread]) ----

// The asynchronous call's Work the worker is running now (null on any other
// thread, and for a synchronous call).
thread_local const Work* t_task = nullptr;

// Tests a started nonblocking operation until it completes (Note [One MPI
// thread]): sleeping between tests while nobody waits for the Work.
void await_request(MPI_Request& request, const Work& work, const char* call) {
  for (;;) {
    int done = 0;
    check_mpi(MPI_Test(&request, &done, MPI_STATUS_IGNORE), call);
    if (done) return;
    if (work.has_waiter())
      std::this_thread::yield();
    else
      std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

// MPI_Allreduce; on the worker, MPI_Iallreduce awaited as above.
void allreduce(const void* in, void* out, int n, MPI_Datatype type, MPI_Op op, MPI_Comm comm, const char* call) {
  if (t_task == nullptr) {
    check_mpi(MPI_Allreduce(in, out, n, type, op, comm), call);
    return;
  }
  MPI_Request request = MPI_REQUEST_NULL;
  check_mpi(MPI_Iallreduce(in, out, n, type, op, comm, &request), call);
  await_request(request, *t_task, call);
}

struct Pending {  // a started point-to-point operation
  MPI_Request request;
  WorkPtr work;
  int64_t expected_bytes;  // for a recv: the byte count the message must have
  std::string what;
  Tensor keep;  // the buffer stays alive until MPI is done with it
};

struct Runtime {
  std::mutex mpi;  // held around every MPI call after init (MPI_THREAD_SERIALIZED)
  std::mutex m;    // the queue and the flags below
  std::condition_variable cv;
  std::deque<std::function<void()>> queue;
  std::atomic<int64_t> queued{0};
  bool stop = false;
  bool busy = false;  // the worker is running a task
  // A collective run on its caller's thread, for the watchdog.
  std::atomic<bool> inline_active{false};
  std::chrono::steady_clock::time_point inline_deadline;
  std::string inline_what;
  std::thread worker;
  bool started = false;   // MPI initialized by loom (or found initialized)
  bool owns_mpi = false;  // loom called MPI_Init_thread, so it finalizes
  bool finalized = false;
  std::list<Pending> pending;  // worker thread only
};

Runtime& runtime() {
  static Runtime* r = new Runtime;  // never destroyed: the atexit hook may run late
  return *r;
}

void poll_pending(Runtime& r) {
  for (auto it = r.pending.begin(); it != r.pending.end();) {
    int flag = 0;
    MPI_Status status;
    std::exception_ptr error;
    try {
      check_mpi(MPI_Test(&it->request, &flag, &status), "MPI_Test");
      if (flag && it->expected_bytes >= 0) {
        int bytes = 0;
        check_mpi(MPI_Get_count(&status, MPI_BYTE, &bytes), "MPI_Get_count");
        LOOM_CHECK(bytes == it->expected_bytes, "expected a message of ", it->expected_bytes, " bytes but rank ",
                   status.MPI_SOURCE, " sent ", bytes);
      }
    } catch (const std::exception& e) {
      flag = 1;
      error = std::make_exception_ptr(Error(::loom::detail::str_cat("distributed::", it->what, ": ", e.what())));
    }
    if (flag) {
      it->work->finish(error);
      it = r.pending.erase(it);
    } else {
      ++it;
    }
  }
}

void worker_loop() {
  Runtime& r = runtime();
  for (;;) {
    std::function<void()> task;
    // Poll briefly before sleeping (Note [Waiting on a Work]); keep polling
    // while point-to-point messages are in flight.
    auto idle_since = std::chrono::steady_clock::now();
    for (;;) {
      if (r.queued.load(std::memory_order_acquire) > 0) break;
      if (!r.pending.empty()) {
        {
          std::lock_guard<std::mutex> mpi(r.mpi);
          poll_pending(r);
        }
        std::this_thread::yield();
        continue;
      }
      if (r.inline_active.load(std::memory_order_relaxed)) break;  // leave the core to the caller
      if (std::chrono::steady_clock::now() - idle_since > std::chrono::microseconds(50)) break;
      std::this_thread::yield();
    }
    {
      std::unique_lock<std::mutex> lock(r.m);
      // Sleep until there is work; wake now and then to watch a collective
      // running on its caller's thread.
      while (!r.stop && r.queue.empty()) {
        r.cv.wait_for(lock, std::chrono::milliseconds(100));
        if (r.inline_active.load() && std::chrono::steady_clock::now() > r.inline_deadline) {
          const std::string what = r.inline_what;
          lock.unlock();
          abort_job(what);
        }
      }
      if (r.queue.empty()) return;  // stop, and nothing left to run
      task = std::move(r.queue.front());
      r.queue.pop_front();
      r.queued.fetch_sub(1, std::memory_order_release);
      r.busy = true;
    }
    {
      std::lock_guard<std::mutex> mpi(r.mpi);
      task();
      if (!r.pending.empty()) poll_pending(r);
    }
    std::lock_guard<std::mutex> lock(r.m);
    r.busy = false;
  }
}

void enqueue(std::function<void()> task) {
  Runtime& r = runtime();
  {
    std::lock_guard<std::mutex> lock(r.m);
    LOOM_CHECK(!r.stop, "distributed: MPI has been shut down (destroy_process_group)");
    r.queue.push_back(std::move(task));
    r.queued.fetch_add(1, std::memory_order_release);
  }
  r.cv.notify_one();
}

// Runs fn on the worker and waits (setup calls: communicator creation).
void run_on_worker(const std::function<void()>& fn) {
  auto w = std::make_shared<Work>("MPI setup", std::chrono::minutes(5));
  enqueue([&fn, w] {
    try {
      fn();
      w->finish();
    } catch (...) {
      w->finish(std::current_exception());
    }
  });
  w->wait();
}

void shutdown_at_exit() { shutdown_mpi(); }

// ---- the group ----

class MpiGroup final : public ProcessGroup, public std::enable_shared_from_this<MpiGroup> {
 public:
  MpiGroup(MPI_Comm comm, int rank, int size, const Options& o)
      : ProcessGroup("mpi", rank, size, o), comm_(comm) {}
  ~MpiGroup() override {
    if (comm_ != MPI_COMM_NULL && !runtime().finalized && !runtime().stop) {
      MPI_Comm c = comm_;
      try {
        enqueue([c]() mutable { MPI_Comm_free(&c); });
      } catch (...) {
      }
    }
  }

  MPI_Comm comm() const { return comm_; }

  WorkPtr all_reduce(Tensor& t, ReduceOp op) override {
    std::string desc = check_all_reduce(*this, t, op);
    const int n = count_of("all_reduce", t.numel());
    return submit(std::move(desc), [this, t, op, n]() mutable {
      allreduce(MPI_IN_PLACE, t.raw_data_ptr(), n, mpi_type(t.dtype()), mpi_op(op, t.dtype()), comm_,
                "MPI_Allreduce");
      if (op == ReduceOp::Avg) divide_in_place(t, size());
    });
  }

  WorkPtr broadcast(Tensor& t, int root) override {
    std::string desc = check_broadcast(*this, t, root);
    const int n = count_of("broadcast", t.numel());
    return submit(std::move(desc), [this, t, root, n] {
      check_mpi(MPI_Bcast(t.raw_data_ptr(), n, mpi_type(t.dtype()), root, comm_), "MPI_Bcast");
    });
  }

  WorkPtr all_gather(std::vector<Tensor>& outputs, const Tensor& input) override {
    std::string desc = check_all_gather(*this, outputs, input);
    std::vector<int> counts, displs;
    const bool direct = layout("all_gather", outputs, counts, displs);
    return submit(std::move(desc), [this, outputs, input, counts, displs, direct] {
      const DType dt = input.dtype();
      const int64_t total = displs.back() + counts.back();
      Tensor buffer = direct ? Tensor() : empty({total}, TensorOptions().dtype(dt));
      char* base = static_cast<char*>(direct ? outputs[0].raw_data_ptr() : buffer.raw_data_ptr());
      const bool in_place = base + static_cast<size_t>(displs[static_cast<size_t>(rank())]) * element_size(dt) ==
                            static_cast<const char*>(input.raw_data_ptr());
      check_mpi(MPI_Allgatherv(in_place ? MPI_IN_PLACE : input.raw_data_ptr(), counts[static_cast<size_t>(rank())],
                               mpi_type(dt), base, counts.data(), displs.data(), mpi_type(dt), comm_),
                "MPI_Allgatherv");
      if (!direct) unpack(base, outputs, displs);
    });
  }

  WorkPtr reduce_scatter(Tensor& output, const std::vector<Tensor>& inputs, ReduceOp op) override {
    std::string desc = check_reduce_scatter(*this, output, inputs, op);
    std::vector<int> counts, displs;
    const bool direct = layout("reduce_scatter", inputs, counts, displs);
    return submit(std::move(desc), [this, output, inputs, op, counts, displs, direct]() mutable {
      const DType dt = output.dtype();
      const int64_t total = displs.back() + counts.back();
      Tensor buffer = direct ? Tensor() : empty({total}, TensorOptions().dtype(dt));
      char* base = static_cast<char*>(direct ? inputs[0].raw_data_ptr() : buffer.raw_data_ptr());
      if (!direct) pack(inputs, base, displs);
      // MPI_Reduce_scatter may not write the send buffer, and the output
      // may be one of the inputs: reduce from a separate copy then.
      const char* out = static_cast<const char*>(output.raw_data_ptr());
      const size_t bytes = static_cast<size_t>(total) * element_size(dt);
      if (direct && out >= base && out < base + bytes) {
        buffer = empty({total}, TensorOptions().dtype(dt));
        std::memcpy(buffer.raw_data_ptr(), base, bytes);
        base = static_cast<char*>(buffer.raw_data_ptr());
      }
      check_mpi(MPI_Reduce_scatter(base, output.raw_data_ptr(), counts.data(), mpi_type(dt), mpi_op(op, dt), comm_),
                "MPI_Reduce_scatter");
      if (op == ReduceOp::Avg) divide_in_place(output, size());
    });
  }

  WorkPtr gather(std::vector<Tensor>& outputs, const Tensor& input, int root) override {
    std::string desc = check_gather(*this, outputs, input, root);
    const int n = count_of("gather", input.numel());
    return submit(std::move(desc), [this, outputs, input, root, n] {
      const DType dt = input.dtype();
      const bool is_root = rank() == root;
      Tensor buffer = is_root ? empty({input.numel() * size()}, TensorOptions().dtype(dt)) : Tensor();
      check_mpi(MPI_Gather(input.raw_data_ptr(), n, mpi_type(dt), is_root ? buffer.raw_data_ptr() : nullptr, n,
                           mpi_type(dt), root, comm_),
                "MPI_Gather");
      if (is_root) unpack(static_cast<char*>(buffer.raw_data_ptr()), outputs, even_displs(n));
    });
  }

  WorkPtr scatter(Tensor& output, const std::vector<Tensor>& inputs, int root) override {
    std::string desc = check_scatter(*this, output, inputs, root);
    const int n = count_of("scatter", output.numel());
    return submit(std::move(desc), [this, output, inputs, root, n] {
      const DType dt = output.dtype();
      const bool is_root = rank() == root;
      Tensor buffer = is_root ? empty({output.numel() * size()}, TensorOptions().dtype(dt)) : Tensor();
      if (is_root) pack(inputs, static_cast<char*>(buffer.raw_data_ptr()), even_displs(n));
      check_mpi(MPI_Scatter(is_root ? buffer.raw_data_ptr() : nullptr, n, mpi_type(dt), output.raw_data_ptr(), n,
                            mpi_type(dt), root, comm_),
                "MPI_Scatter");
    });
  }

  WorkPtr send(const Tensor& t, int dst, int tag) override {
    std::string desc = check_send(*this, t, dst, tag);
    return start_p2p(std::move(desc), t, dst, tag, /*is_send=*/true);
  }

  WorkPtr recv(Tensor& t, int src, int tag) override {
    std::string desc = check_recv(*this, t, src, tag);
    return start_p2p(std::move(desc), t, src, tag, /*is_send=*/false);
  }

  WorkPtr barrier() override {
    return submit("barrier()", [this] { check_mpi(MPI_Barrier(comm_), "MPI_Barrier"); });
  }

 private:
  MPI_Comm comm_;

  std::vector<int> even_displs(int n) const {
    std::vector<int> d(static_cast<size_t>(size()));
    for (int r = 0; r < size(); ++r) d[static_cast<size_t>(r)] = r * n;
    return d;
  }
  // Counts and displacements of a list, in elements; true when the list is
  // already one contiguous run of memory in rank order (no packing needed).
  static bool layout(const char* op, const std::vector<Tensor>& list, std::vector<int>& counts,
                     std::vector<int>& displs) {
    int64_t at = 0;
    bool direct = true;
    const char* base = static_cast<const char*>(list[0].raw_data_ptr());
    const size_t es = element_size(list[0].dtype());
    for (const Tensor& t : list) {
      counts.push_back(count_of(op, t.numel()));
      displs.push_back(count_of(op, at));
      if (t.numel() > 0 && static_cast<const char*>(t.raw_data_ptr()) != base + static_cast<size_t>(at) * es)
        direct = false;
      at += t.numel();
    }
    count_of(op, at);
    return direct;
  }
  static void unpack(const char* base, const std::vector<Tensor>& list, const std::vector<int>& displs) {
    const size_t es = element_size(list[0].dtype());
    for (size_t r = 0; r < list.size(); ++r)
      if (list[r].numel() > 0)
        std::memcpy(list[r].raw_data_ptr(), base + static_cast<size_t>(displs[r]) * es, list[r].nbytes());
  }
  static void pack(const std::vector<Tensor>& list, char* base, const std::vector<int>& displs) {
    const size_t es = element_size(list[0].dtype());
    for (size_t r = 0; r < list.size(); ++r)
      if (list[r].numel() > 0)
        std::memcpy(base + static_cast<size_t>(displs[r]) * es, list[r].raw_data_ptr(), list[r].nbytes());
  }

  // Note [Collective signatures]
  // Each rank hashes the text that describes its call ("all_reduce(float32
  // [1000], sum)"), and one all-reduce of (h, ~h) with MAX gives every rank
  // the largest and the smallest hash. When they differ, the ranks are not
  // in the same call: every rank gathers every rank's text and throws the
  // same error, which lists them. Ranks in different collectives (an
  // ordering bug) are caught the same way, since the check is itself the
  // same call everywhere.
  void verify(const std::string& desc) {
    if (!options().check || size() == 1) return;
    const auto h = static_cast<int64_t>(signature(desc));
    int64_t in[2] = {h, ~h}, out[2] = {0, 0};
    allreduce(in, out, 2, MPI_INT64_T, MPI_MAX, comm_, "MPI_Allreduce (collective check)");
    if (out[0] == h && ~out[1] == h) return;
    constexpr int kText = 240;
    std::vector<char> mine(kText, 0), all(static_cast<size_t>(kText) * static_cast<size_t>(size()), 0);
    std::memcpy(mine.data(), desc.data(), std::min<size_t>(desc.size(), kText - 1));
    check_mpi(MPI_Allgather(mine.data(), kText, MPI_CHAR, all.data(), kText, MPI_CHAR, comm_),
              "MPI_Allgather (collective check)");
    std::string msg = "distributed: the ranks called different collectives:";
    for (int r = 0; r < size(); ++r)
      msg += std::string(r ? ";" : "") + " rank " + std::to_string(r) + " " +
             std::string(all.data() + static_cast<size_t>(r) * kText);
    LOOM_ERROR(msg);
  }

  WorkPtr submit(std::string desc, std::function<void()> fn) {
    auto work = std::make_shared<Work>(desc, options().timeout);
    const bool sync = caller_waits();
    if (sync && run_inline(desc, fn, *work)) return work;
    // The task keeps the group alive: fn uses its communicator.
    enqueue([self = shared_from_this(), work, sync, desc = std::move(desc), fn = std::move(fn)] {
      t_task = sync ? nullptr : work.get();
      try {
        work->mark_started();
        self->verify(desc);
        fn();
        t_task = nullptr;
        work->finish();
      } catch (...) {
        t_task = nullptr;
        work->finish(std::current_exception());
      }
    });
    return work;
  }

  // Runs a collective on the calling thread when nothing is queued or
  // running (Note [One MPI thread]); false when it must be queued.
  bool run_inline(const std::string& desc, const std::function<void()>& fn, Work& work) {
    Runtime& r = runtime();
    {
      std::lock_guard<std::mutex> lock(r.m);
      if (r.stop || r.busy || !r.queue.empty()) return false;
      r.inline_deadline = std::chrono::steady_clock::now() + options().timeout;
      r.inline_what = ::loom::detail::str_cat("distributed: ", desc, " on rank ", rank(), " of ", size(),
                                              " did not complete within ", options().timeout.count() / 1000.0,
                                              " s: another rank died, hangs, or calls collectives in another order");
      r.inline_active.store(true);
    }
    std::exception_ptr error;
    {
      std::lock_guard<std::mutex> mpi(r.mpi);
      try {
        work.mark_started();
        verify(desc);
        fn();
      } catch (...) {
        error = std::current_exception();
      }
    }
    r.inline_active.store(false);
    work.finish(error);
    return true;
  }

  WorkPtr start_p2p(std::string desc, Tensor t, int peer, int tag, bool is_send) {
    auto work = std::make_shared<Work>(desc, options().timeout);
    enqueue([self = shared_from_this(), work, desc = std::move(desc), t, peer, tag, is_send] {
      try {
        const int bytes = count_of(is_send ? "send" : "recv", static_cast<int64_t>(t.nbytes()));
        Pending p{MPI_REQUEST_NULL, work, is_send ? -1 : bytes, desc, t};
        if (is_send)
          check_mpi(MPI_Isend(t.raw_data_ptr(), bytes, MPI_BYTE, peer, tag, self->comm_, &p.request), "MPI_Isend");
        else
          check_mpi(MPI_Irecv(t.raw_data_ptr(), bytes, MPI_BYTE, peer, tag, self->comm_, &p.request), "MPI_Irecv");
        runtime().pending.push_back(std::move(p));
      } catch (...) {
        work->finish(std::current_exception());
      }
    });
    return work;
  }
};

}  // namespace

std::shared_ptr<ProcessGroup> make_mpi_world(const Options& options) {
  Runtime& r = runtime();
  LOOM_CHECK(!r.finalized, "distributed: MPI was finalized and cannot start again in this process");
  if (!r.started) {
    int initialized = 0;
    check_mpi(MPI_Initialized(&initialized), "MPI_Initialized");
    if (!initialized) {
      int provided = 0;
      check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided), "MPI_Init_thread");
      LOOM_CHECK(provided >= MPI_THREAD_SERIALIZED,
                 "distributed: this MPI library does not support MPI_THREAD_SERIALIZED (it provides level ", provided,
                 ")");
      r.owns_mpi = true;
    } else {
      int provided = 0;
      check_mpi(MPI_Query_thread(&provided), "MPI_Query_thread");
      LOOM_CHECK(provided >= MPI_THREAD_SERIALIZED, "distributed: MPI was initialized by the program with thread "
                                                    "level ", provided, "; loom needs MPI_THREAD_SERIALIZED");
    }
    check_mpi(MPI_Type_contiguous(2, MPI_BYTE, &g_half), "MPI_Type_contiguous");
    check_mpi(MPI_Type_commit(&g_half), "MPI_Type_commit");
    check_mpi(MPI_Type_contiguous(2, MPI_BYTE, &g_bf16), "MPI_Type_contiguous");
    check_mpi(MPI_Type_commit(&g_bf16), "MPI_Type_commit");
    MPI_User_function* fns[4] = {half_sum, half_max, half_min, half_prod};
    for (int i = 0; i < 4; ++i) check_mpi(MPI_Op_create(fns[i], 1, &g_half_ops[i]), "MPI_Op_create");
    r.started = true;
    r.stop = false;
    r.worker = std::thread(worker_loop);
    std::atexit(shutdown_at_exit);
  }
  MPI_Comm comm = MPI_COMM_NULL;
  int rank = 0, size = 1;
  run_on_worker([&] {
    check_mpi(MPI_Comm_dup(MPI_COMM_WORLD, &comm), "MPI_Comm_dup");
    check_mpi(MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    check_mpi(MPI_Comm_rank(comm, &rank), "MPI_Comm_rank");
    check_mpi(MPI_Comm_size(comm, &size), "MPI_Comm_size");
  });
  return std::make_shared<MpiGroup>(comm, rank, size, options);
}

std::shared_ptr<ProcessGroup> make_mpi_subgroup(ProcessGroup& world, const std::vector<int>& ranks) {
  auto* parent = dynamic_cast<MpiGroup*>(&world);
  LOOM_ASSERT(parent != nullptr);
  MPI_Comm comm = MPI_COMM_NULL;
  int rank = 0, size = 0;
  run_on_worker([&] {
    MPI_Group all = MPI_GROUP_NULL, sub = MPI_GROUP_NULL;
    check_mpi(MPI_Comm_group(parent->comm(), &all), "MPI_Comm_group");
    check_mpi(MPI_Group_incl(all, static_cast<int>(ranks.size()), ranks.data(), &sub), "MPI_Group_incl");
    const int rc = MPI_Comm_create(parent->comm(), sub, &comm);
    MPI_Group_free(&sub);
    MPI_Group_free(&all);
    check_mpi(rc, "MPI_Comm_create");
    if (comm != MPI_COMM_NULL) {
      check_mpi(MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
      check_mpi(MPI_Comm_rank(comm, &rank), "MPI_Comm_rank");
      check_mpi(MPI_Comm_size(comm, &size), "MPI_Comm_size");
    }
  });
  if (comm == MPI_COMM_NULL) return nullptr;
  return std::make_shared<MpiGroup>(comm, rank, size, world.options());
}

void shutdown_mpi() {
  Runtime& r = runtime();
  if (!r.started || r.finalized) return;
  {
    std::lock_guard<std::mutex> lock(r.m);
    r.stop = true;
  }
  r.cv.notify_one();
  if (r.worker.joinable()) r.worker.join();
  for (MPI_Op& op : g_half_ops)
    if (op != MPI_OP_NULL) MPI_Op_free(&op);
  if (g_half != MPI_DATATYPE_NULL) MPI_Type_free(&g_half);
  if (g_bf16 != MPI_DATATYPE_NULL) MPI_Type_free(&g_bf16);
  r.finalized = true;
  if (r.owns_mpi) MPI_Finalize();
}

void mpi_abort(int code) {
  Runtime& r = runtime();
  if (r.started && !r.finalized) MPI_Abort(MPI_COMM_WORLD, code);
}

}  // namespace loom::distributed::detail

#else  // !LOOM_HAVE_MPI

#include "distributed/backends.h"
#include "loom/error.h"

namespace loom::distributed::detail {

std::shared_ptr<ProcessGroup> make_mpi_world(const Options&) {
  LOOM_ERROR("distributed: loom was built without MPI (install libopenmpi-dev and rebuild)");
}
std::shared_ptr<ProcessGroup> make_mpi_subgroup(ProcessGroup&, const std::vector<int>&) {
  LOOM_ERROR("distributed: loom was built without MPI (install libopenmpi-dev and rebuild)");
}
void shutdown_mpi() {}
void mpi_abort(int) {}

}  // namespace loom::distributed::detail

#endif
