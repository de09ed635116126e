// The backend-independent half of loom::distributed: Work, the default
// group, the free collectives and the argument checks every backend uses.
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>

#include "core/capture.h"
#include "distributed/backends.h"
#include "loom/distributed.h"
#include "loom/error.h"
#include "loom/ops.h"

namespace loom::distributed {

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return "sum";
    case ReduceOp::Avg: return "avg";
    case ReduceOp::Max: return "max";
    case ReduceOp::Min: return "min";
    case ReduceOp::Product: return "product";
  }
  return "?";
}

// ---- Work ----

// Note [Waiting on a Work]
// A collective of a few bytes takes a microsecond or two in shared memory;
// a sleeping waiter takes longer than that to wake. wait() therefore polls
// the completion flag for a short while (kSpin) before it sleeps on the
// condition variable, so a synchronous small collective costs little more
// than MPI itself, and a long one costs no CPU while it runs.
struct Work::State {
  std::atomic<bool> done{false};
  std::atomic<int> waiters{0};
  std::chrono::steady_clock::time_point started, finished;
  std::mutex m;
  std::condition_variable cv;
  std::exception_ptr error;
};

namespace {
constexpr auto kSpin = std::chrono::microseconds(50);
}

Work::Work(std::string description, std::chrono::milliseconds timeout)
    : description_(std::move(description)), timeout_(timeout), state_(std::make_shared<State>()) {}

bool Work::is_completed() const { return state_->done.load(std::memory_order_acquire); }

bool Work::is_success() const {
  if (!is_completed()) return false;
  std::lock_guard<std::mutex> lock(state_->m);
  return state_->error == nullptr;
}

std::exception_ptr Work::exception() const {
  if (!is_completed()) return nullptr;
  std::lock_guard<std::mutex> lock(state_->m);
  return state_->error;
}

void Work::mark_started() {
  std::lock_guard<std::mutex> lock(state_->m);
  state_->started = std::chrono::steady_clock::now();
}

std::chrono::steady_clock::time_point Work::started_at() const {
  std::lock_guard<std::mutex> lock(state_->m);
  return state_->started;
}

std::chrono::steady_clock::time_point Work::finished_at() const {
  std::lock_guard<std::mutex> lock(state_->m);
  return state_->finished;
}

void Work::finish(std::exception_ptr error) {
  {
    std::lock_guard<std::mutex> lock(state_->m);
    state_->finished = std::chrono::steady_clock::now();
    if (state_->started == std::chrono::steady_clock::time_point{}) state_->started = state_->finished;
    state_->error = std::move(error);
    state_->done.store(true, std::memory_order_release);
  }
  state_->cv.notify_all();
}

bool Work::has_waiter() const { return state_->waiters.load(std::memory_order_relaxed) > 0; }

void Work::wait(std::chrono::milliseconds timeout) {
  if (timeout.count() < 0) timeout = timeout_;
  if (!is_completed()) {
    struct Waiting {
      std::atomic<int>& n;
      explicit Waiting(std::atomic<int>& c) : n(c) { ++n; }
      ~Waiting() { --n; }
    } waiting(state_->waiters);
    const auto start = std::chrono::steady_clock::now();
    while (!is_completed() && std::chrono::steady_clock::now() - start < kSpin) std::this_thread::yield();
    if (!is_completed()) {
      std::unique_lock<std::mutex> lock(state_->m);
      const bool done = state_->cv.wait_for(lock, timeout, [&] { return state_->done.load(); });
      LOOM_CHECK(done, "distributed: ", description_, " on rank ", get_rank(), " of ", get_world_size(),
                 " did not complete within ", timeout.count() / 1000.0,
                 " s: another rank died, hangs, or calls collectives in another order");
    }
  }
  std::exception_ptr error = exception();
  if (error) std::rethrow_exception(error);
}

// ---- ProcessGroup ----

ProcessGroup::ProcessGroup(std::string backend, int rank, int size, Options options)
    : backend_(std::move(backend)), rank_(rank), size_(size), options_(options) {}

WorkPtr ProcessGroup::all_gather_into_tensor(Tensor& output, const Tensor& input) {
  const char* op = "all_gather_into_tensor";
  detail::check_tensor(op, output, "output");
  detail::check_tensor(op, input, "input");
  LOOM_CHECK(output.dtype() == input.dtype(), "distributed::", op, ": output is ", output.dtype(), " but input is ",
             input.dtype());
  const std::vector<int64_t> sizes = detail::split_sizes(output.numel(), size());
  LOOM_CHECK(input.numel() == sizes[static_cast<size_t>(rank())], "distributed::", op, ": rank ", rank(),
             "'s piece of an output of ", output.numel(), " elements over ", size(), " ranks has ",
             sizes[static_cast<size_t>(rank())], " elements, but the input ", detail::geometry(input), " has ",
             input.numel());
  Tensor flat = output.view({output.numel()});
  std::vector<Tensor> outputs = loom::split(flat, sizes, 0);
  return all_gather(outputs, input.view({input.numel()}));
}

WorkPtr ProcessGroup::reduce_scatter_tensor(Tensor& output, const Tensor& input, ReduceOp op) {
  const char* name = "reduce_scatter_tensor";
  detail::check_tensor(name, output, "output");
  detail::check_tensor(name, input, "input");
  LOOM_CHECK(output.dtype() == input.dtype(), "distributed::", name, ": output is ", output.dtype(),
             " but input is ", input.dtype());
  const std::vector<int64_t> sizes = detail::split_sizes(input.numel(), size());
  LOOM_CHECK(output.numel() == sizes[static_cast<size_t>(rank())], "distributed::", name, ": rank ", rank(),
             "'s piece of an input of ", input.numel(), " elements over ", size(), " ranks has ",
             sizes[static_cast<size_t>(rank())], " elements, but the output ", detail::geometry(output), " has ",
             output.numel());
  std::vector<Tensor> inputs = loom::split(input.view({input.numel()}), sizes, 0);
  Tensor out = output.view({output.numel()});
  return reduce_scatter(out, inputs, op);
}

// ---- the default group ----

namespace {

struct Registry {
  std::mutex m;
  std::shared_ptr<ProcessGroup> world;
  bool mpi_finalized = false;
};

Registry& registry() {
  static Registry r;
  return r;
}

ProcessGroup& group_or_default(ProcessGroup* g) { return g ? *g : default_group(); }

// Starts a call; unless async_op, waits for it, letting the backend run it
// on this thread (detail::CallerWaits).
template <typename Start>
WorkPtr call(bool async_op, Start&& start) {
  if (async_op) return start();
  detail::CallerWaits waits;
  WorkPtr w = start();
  w->wait();
  return w;
}

}  // namespace

bool is_mpi_available() {
#if defined(LOOM_HAVE_MPI)
  return true;
#else
  return false;
#endif
}

bool is_nccl_available() {
#if defined(LOOM_HAVE_NCCL)
  return true;
#else
  return false;
#endif
}

bool launched_by_mpi() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS", "SLURM_NTASKS"}) {
    if (std::getenv(var) != nullptr) {
      // srun sets SLURM_NTASKS in a batch allocation too; only a task (with
      // SLURM_PROCID) was started by it.
      if (std::string(var) == "SLURM_NTASKS" && std::getenv("SLURM_PROCID") == nullptr) continue;
      return true;
    }
  }
  return false;
}

void init_process_group(const std::string& backend, const Options& options) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.m);
  LOOM_CHECK(r.world == nullptr, "distributed::init_process_group: the default group is already initialized (",
             r.world ? r.world->backend() : "", "); call destroy_process_group() first");
  LOOM_CHECK(options.timeout.count() > 0, "distributed::init_process_group: the timeout must be positive, got ",
             options.timeout.count(), " ms");
  std::string b = backend;
  if (b == "auto") b = launched_by_mpi() && is_mpi_available() ? "mpi" : "local";
  if (b == "local") {
    r.world = detail::make_local_group(options);
  } else if (b == "mpi" || b == "nccl") {
    LOOM_CHECK(is_mpi_available(), "distributed::init_process_group(\"", b,
               "\"): loom was built without MPI (install libopenmpi-dev and rebuild); "
               "use \"local\" for one process");
    LOOM_CHECK(!r.mpi_finalized, "distributed::init_process_group(\"", b,
               "\"): MPI was finalized by destroy_process_group() and cannot start again in this process");
    if (b == "mpi") {
      r.world = detail::make_mpi_world(options);
    } else {
#if defined(LOOM_HAVE_NCCL)
      r.world = detail::make_nccl_world(options);
#else
      LOOM_ERROR("distributed::init_process_group(\"nccl\"): loom was built without NCCL (the CUDA toolkit "
                 "and NCCL were not found at build time)");
#endif
    }
  } else {
    LOOM_ERROR("distributed::init_process_group: unknown backend '", backend, "' (known: mpi, nccl, local, auto)");
  }
}

bool is_initialized() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.m);
  return r.world != nullptr;
}

int get_rank() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.m);
  return r.world ? r.world->rank() : 0;
}

int get_world_size() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.m);
  return r.world ? r.world->size() : 1;
}

ProcessGroup& default_group() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.m);
  LOOM_CHECK(r.world != nullptr,
             "distributed: the default process group is not initialized; call init_process_group() first");
  return *r.world;
}

std::shared_ptr<ProcessGroup> new_group(std::vector<int> ranks) {
  ProcessGroup& world = default_group();
  LOOM_CHECK(!ranks.empty(), "distributed::new_group: the group needs at least one rank");
  std::vector<bool> seen(static_cast<size_t>(world.size()), false);
  for (int r : ranks) {
    LOOM_CHECK(r >= 0 && r < world.size(), "distributed::new_group: rank ", r, " is not in the world of ",
               world.size(), " ranks");
    LOOM_CHECK(!seen[static_cast<size_t>(r)], "distributed::new_group: rank ", r, " is listed twice");
    seen[static_cast<size_t>(r)] = true;
  }
  if (world.backend() == "local") return seen[0] ? detail::make_local_group(world.options()) : nullptr;
  if (world.backend() == "mpi") return detail::make_mpi_subgroup(world, ranks);
#if defined(LOOM_HAVE_NCCL)
  if (world.backend() == "nccl") return detail::make_nccl_subgroup(world, ranks);
#endif
  LOOM_ERROR("distributed::new_group: backend ", world.backend(), " has no subgroups");
}

void destroy_process_group() {
  Registry& r = registry();
  std::shared_ptr<ProcessGroup> world;
  {
    std::lock_guard<std::mutex> lock(r.m);
    world = std::move(r.world);
    r.world = nullptr;
  }
  if (world && world->backend() != "local") {
    world.reset();
    detail::shutdown_mpi();
    std::lock_guard<std::mutex> lock(r.m);
    r.mpi_finalized = true;
  }
}

WorkPtr all_reduce(Tensor& tensor, ReduceOp op, ProcessGroup* group, bool async_op) {
  return call(async_op, [&] { return group_or_default(group).all_reduce(tensor, op); });
}
WorkPtr broadcast(Tensor& tensor, int root, ProcessGroup* group, bool async_op) {
  return call(async_op, [&] { return group_or_default(group).broadcast(tensor, root); });
}
WorkPtr all_gather(std::vector<Tensor>& outputs, const Tensor& input, ProcessGroup* group, bool async_op) {
  return call(async_op, [&] { return group_or_default(group).all_gather(outputs, input); });
}
WorkPtr reduce_scatter(Tensor& output, const std::vector<Tensor>& inputs, ReduceOp op, ProcessGroup* group,
                       bool async_op) {
  return call(async_op, [&] { return group_or_default(group).reduce_scatter(output, inputs, op); });
}
WorkPtr gather(std::vector<Tensor>& outputs, const Tensor& input, int root, ProcessGroup* group, bool async_op) {
  return call(async_op, [&] { return group_or_default(group).gather(outputs, input, root); });
}
WorkPtr scatter(Tensor& output, const std::vector<Tensor>& inputs, int root, ProcessGroup* group, bool async_op) {
  return call(async_op, [&] { return group_or_default(group).scatter(output, inputs, root); });
}
WorkPtr send(const Tensor& tensor, int dst, int tag, ProcessGroup* group) {
  return call(false, [&] { return group_or_default(group).send(tensor, dst, tag); });
}
WorkPtr recv(Tensor& tensor, int src, int tag, ProcessGroup* group) {
  return call(false, [&] { return group_or_default(group).recv(tensor, src, tag); });
}
void barrier(ProcessGroup* group) {
  call(false, [&] { return group_or_default(group).barrier(); });
}

void abort_job(const std::string& message, int code) {
  const int rank = get_rank(), world = get_world_size();
  if (world > 1)
    std::fprintf(stderr, "loom: rank %d of %d: %s\n", rank, world, message.c_str());
  else
    std::fprintf(stderr, "loom: %s\n", message.c_str());
  std::fflush(stderr);
  std::fflush(stdout);
  detail::mpi_abort(code);
  std::_Exit(code);
}

// ---- checks shared by the backends ----

namespace detail {

namespace {
thread_local bool t_caller_waits = false;
}

bool caller_waits() { return t_caller_waits; }
CallerWaits::CallerWaits() : previous_(t_caller_waits) { t_caller_waits = true; }
CallerWaits::~CallerWaits() { t_caller_waits = previous_; }

void check_tensor(const char* op, const Tensor& t, const char* what) {
  if (capture::Recorder* r = capture::active())
    r->refuse(op, "a collective exchanges data with other processes, which a replay cannot repeat; "
                  "call it outside the compiled function");
  LOOM_CHECK(t.defined(), "distributed::", op, ": the ", what, " is an undefined tensor");
  LOOM_CHECK(t.device().is_cpu(), "distributed::", op, ": the ", what, " is on ", t.device().str(),
             "; loom's collectives take CPU tensors");
  LOOM_CHECK(t.is_contiguous(), "distributed::", op, ": the ", what, " ", geometry(t),
             " is not contiguous; call .contiguous() first");
}

void check_rank(const char* op, const char* what, int r, int size) {
  LOOM_CHECK(r >= 0 && r < size, "distributed::", op, ": ", what, " ", r, " is not a rank of this group of ",
             size);
}

void check_list(const char* op, const char* what, const std::vector<Tensor>& list, int size) {
  LOOM_CHECK(static_cast<int>(list.size()) == size, "distributed::", op, ": ", what, " has ", list.size(),
             " tensors; the group has ", size, " ranks");
  for (const Tensor& t : list) check_tensor(op, t, what);
}

void check_reduce(const char* op, ReduceOp r, const Tensor& t) {
  LOOM_CHECK(r != ReduceOp::Avg || is_floating_point(t.dtype()), "distributed::", op,
             ": avg needs a floating-point tensor, got ", geometry(t));
}

std::string geometry(const Tensor& t) {
  std::string s = dtype_name(t.dtype());
  s += shape_str(t.sizes());
  return s;
}

uint64_t signature(const std::string& description) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : description) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

namespace {

// Tags are 0..32767 (MPI's least upper bound).
void check_tag(const char* op, int tag) {
  LOOM_CHECK(tag >= 0 && tag <= 32767, "distributed::", op, ": tag ", tag, " is outside 0..32767");
}

void check_piece(const char* op, const char* what, const std::vector<Tensor>& list, const Tensor& mine, int rank) {
  for (const Tensor& t : list)
    LOOM_CHECK(t.dtype() == mine.dtype(), "distributed::", op, ": ", what, " holds ", geometry(t), " but rank ", rank,
               "'s tensor is ", geometry(mine));
  const Tensor& own = list[static_cast<size_t>(rank)];
  LOOM_CHECK(own.numel() == mine.numel(), "distributed::", op, ": ", what, "[", rank, "] is ", geometry(own),
             " but rank ", rank, "'s tensor is ", geometry(mine));
}

void same_piece(const char* op, const char* what, const Tensor& t, const Tensor& mine) {
  LOOM_CHECK(t.dtype() == mine.dtype() && t.numel() == mine.numel(), "distributed::", op, ": ", what, " holds ",
             geometry(t), " but every rank's piece is ", geometry(mine));
}

// " [3] [2]": a list's shapes.
std::string shapes(const std::vector<Tensor>& list) {
  std::string s;
  for (const Tensor& t : list) s += " " + shape_str(t.sizes());
  return s;
}

}  // namespace

std::string check_all_reduce(const ProcessGroup& g, const Tensor& t, ReduceOp op) {
  (void)g;
  check_tensor("all_reduce", t);
  check_reduce("all_reduce", op, t);
  return "all_reduce(" + geometry(t) + ", " + reduce_op_name(op) + ")";
}

std::string check_broadcast(const ProcessGroup& g, const Tensor& t, int root) {
  check_tensor("broadcast", t);
  check_rank("broadcast", "root", root, g.size());
  return "broadcast(" + geometry(t) + ", root " + std::to_string(root) + ")";
}

std::string check_all_gather(const ProcessGroup& g, const std::vector<Tensor>& outputs, const Tensor& input) {
  check_tensor("all_gather", input, "input");
  check_list("all_gather", "outputs", outputs, g.size());
  check_piece("all_gather", "outputs", outputs, input, g.rank());
  return "all_gather(" + std::string(dtype_name(input.dtype())) + ", outputs" + shapes(outputs) + ")";
}

std::string check_reduce_scatter(const ProcessGroup& g, const Tensor& output, const std::vector<Tensor>& inputs,
                                 ReduceOp op) {
  check_tensor("reduce_scatter", output, "output");
  check_list("reduce_scatter", "inputs", inputs, g.size());
  check_piece("reduce_scatter", "inputs", inputs, output, g.rank());
  check_reduce("reduce_scatter", op, output);
  return "reduce_scatter(" + std::string(dtype_name(output.dtype())) + ", inputs" + shapes(inputs) + ", " +
         reduce_op_name(op) + ")";
}

std::string check_gather(const ProcessGroup& g, const std::vector<Tensor>& outputs, const Tensor& input, int root) {
  check_tensor("gather", input, "input");
  check_rank("gather", "root", root, g.size());
  if (g.rank() == root) {
    check_list("gather", "outputs", outputs, g.size());
    for (const Tensor& o : outputs) same_piece("gather", "outputs", o, input);
  }
  return "gather(" + geometry(input) + ", root " + std::to_string(root) + ")";
}

std::string check_scatter(const ProcessGroup& g, const Tensor& output, const std::vector<Tensor>& inputs, int root) {
  check_tensor("scatter", output, "output");
  check_rank("scatter", "root", root, g.size());
  if (g.rank() == root) {
    check_list("scatter", "inputs", inputs, g.size());
    for (const Tensor& i : inputs) same_piece("scatter", "inputs", i, output);
  }
  return "scatter(" + geometry(output) + ", root " + std::to_string(root) + ")";
}

std::string check_send(const ProcessGroup& g, const Tensor& t, int dst, int tag) {
  check_tensor("send", t);
  check_rank("send", "destination", dst, g.size());
  LOOM_CHECK(dst != g.rank(), "distributed::send: rank ", g.rank(), " cannot send to itself");
  check_tag("send", tag);
  return "send(" + geometry(t) + ", to rank " + std::to_string(dst) + ", tag " + std::to_string(tag) + ")";
}

std::string check_recv(const ProcessGroup& g, const Tensor& t, int src, int tag) {
  check_tensor("recv", t);
  check_rank("recv", "source", src, g.size());
  LOOM_CHECK(src != g.rank(), "distributed::recv: rank ", g.rank(), " cannot receive from itself");
  check_tag("recv", tag);
  return "recv(" + geometry(t) + ", from rank " + std::to_string(src) + ", tag " + std::to_string(tag) + ")";
}

std::vector<int64_t> split_sizes(int64_t n, int size) {
  std::vector<int64_t> sizes(static_cast<size_t>(size), n / size);
  for (int64_t i = 0; i < n % size; ++i) sizes[static_cast<size_t>(i)] += 1;
  return sizes;
}

namespace {
template <typename T>
void divide(void* p, int64_t n, int d) {
  T* x = static_cast<T*>(p);
  for (int64_t i = 0; i < n; ++i) x[i] = static_cast<T>(static_cast<float>(x[i]) / static_cast<float>(d));
}
}  // namespace

void divide_in_place(Tensor& t, int d) {
  void* p = t.raw_data_ptr();
  const int64_t n = t.numel();
  switch (t.dtype()) {
    case DType::Float32: {
      float* x = static_cast<float*>(p);
      for (int64_t i = 0; i < n; ++i) x[i] /= static_cast<float>(d);
      break;
    }
    case DType::Float64: {
      double* x = static_cast<double*>(p);
      for (int64_t i = 0; i < n; ++i) x[i] /= d;
      break;
    }
    case DType::Float16: divide<Half>(p, n, d); break;
    case DType::BFloat16: divide<BFloat16>(p, n, d); break;
    default: LOOM_ERROR("distributed: avg needs a floating-point tensor, got ", t.dtype());
  }
}

}  // namespace detail
}  // namespace loom::distributed
