// loom::compile: capture, settle, plan, replay.
//
// Note [Capture and replay]
// A compiled function's first call runs the function eagerly with a
// Recorder installed (Note [Capture hooks] in src/core/capture.h): every
// kernel call, allocation, random draw and host check of the step lands in
// a GraphImpl (Note [The graph IR]). A replay runs the recorded kernel calls
// again, on the new arguments, and nothing else: no autograd, no module
// code, no allocation except the returned tensors.
//
// Settling. The first steps of training create state (the optimizer's
// moments, gradients after zero_grad(set_to_none)), and the kernels that
// initialize it must not run at every step. A recording whose step created
// tensors that outlive it (NewState) is replayed only once the next call's
// recording has the same structure (ops, shapes, buffer kinds): the step
// has settled, and its NewState buffers are steady (the gradients that
// backward rewrites every step). A step that never settles within
// max_recordings calls creates persistent state at every call: an error.
//
// Guards at each replay: the arguments' dtypes and devices (an error when
// they differ from the first capture's), shapes and strides (a new shape
// signature records a new graph, up to cache_size of them), the thread
// count (workspaces were sized for it), and every state tensor still alive
// (a model that was destroyed, or gradients dropped by zero_grad outside the
// step, record the step again).
//
// Under AddressSanitizer (the test_jit_asan build), a replay poisons the
// whole arena and unpoisons each planned buffer for exactly the nodes it is
// live at, so a kernel that touches bytes the plan gave to another buffer
// (or a liveness interval that ends too early) is a report, not a silent
// overwrite (Note [Static memory planning]).
//
// LOOM_PROFILE_REPLAY=1 times each node of the serial replays and prints
// the time per op when the graph is destroyed.
//
// Per replay, before the kernels: each random draw reserves fresh counters
// from its generator (the same generator, the same count as eager
// execution), and fused optimizer calls read their hyperparameters.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <list>
#include <map>
#include <mutex>
#include <sstream>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define LOOM_ARENA_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define LOOM_ARENA_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define LOOM_ARENA_POISON(p, n) ((void)(p), (void)(n))
#define LOOM_ARENA_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#include "core/allocator.h"
#include "jit/graph.h"
#include "jit/recorder.h"
#include "jit/scheduler.h"
#include "loom/allocator.h"
#include "loom/io/file.h"
#include "loom/jit.h"
#include "loom/threads.h"

namespace loom::jit {
namespace detail {

namespace {

// A storage over bytes the graph owns (arena slices): no deleter.
std::shared_ptr<Storage> view_storage(void* data, size_t nbytes, Device device) {
  auto s = std::make_shared<Storage>();
  s->data = data;
  s->nbytes = nbytes;
  s->device = device;
  return s;
}

}  // namespace

// A graph made runnable: an impl per value, a KernelCall per node, the
// arena, and the bindings that change per replay.
class Executor {
 public:
  Executor(std::shared_ptr<GraphImpl> g, const CompileOptions& options)
      : g_(std::move(g)), plan_(options.plan_memory) {
    GraphImpl& g_ref = *g_;
    if (plan_ && g_ref.plan.arena_bytes > 0) arena_ = allocate_storage(g_ref.plan.arena_bytes, Device::cpu());
    storages_.resize(g_ref.buffers.size());
    for (size_t b = 0; b < g_ref.buffers.size(); ++b) {
      BufferInfo& info = g_ref.buffers[b];
      if (info.first < 0) continue;
      switch (info.kind) {
        case BufferKind::Intermediate:
        case BufferKind::Workspace:
          if (plan_) {
            storages_[b] = view_storage(static_cast<char*>(arena_->data) + info.arena_offset, info.nbytes, info.device);
          } else {
            dynamic_.push_back(static_cast<int>(b));  // allocated at each replay
          }
          if (info.owned) restore_.push_back(static_cast<int>(b));
          break;
        case BufferKind::Constant:
          if (!info.owned) info.owned = allocate_storage(info.nbytes, info.device);  // a folded node's output
          storages_[b] = info.owned;
          break;
        case BufferKind::State:
        case BufferKind::NewState:
        case BufferKind::Input:
        case BufferKind::Output:
          dynamic_.push_back(static_cast<int>(b));
          if (info.owned) restore_.push_back(static_cast<int>(b));
          break;
      }
    }
    impls_.resize(g_ref.values.size());
    for (size_t v = 0; v < g_ref.values.size(); ++v) {
      const ValueInfo& x = g_ref.values[v];
      auto impl = std::make_shared<TensorImpl>();
      impl->sizes = x.sizes;
      impl->strides = x.strides;
      impl->offset = x.offset;
      impl->dtype = x.dtype;
      impl->storage = storages_[static_cast<size_t>(x.buffer)];
      impls_[v] = std::move(impl);
      by_buffer_.resize(g_ref.buffers.size());
      by_buffer_[static_cast<size_t>(x.buffer)].push_back(static_cast<int>(v));
    }
    calls_.resize(g_ref.nodes.size());
    check_of_.assign(g_ref.nodes.size(), -1);
    for (size_t k = 0; k < g_ref.nodes.size(); ++k) {
      const NodeInfo& n = g_ref.nodes[k];
      if (n.kind == NodeKind::HostCheck) {
        std::vector<Tensor> vs;
        for (int v : n.in) vs.emplace_back(impls_[static_cast<size_t>(v)]);
        check_of_[k] = static_cast<int>(check_args_.size());
        check_args_.push_back(std::move(vs));
        continue;
      }
      KernelCall& c = calls_[k];
      c.op = n.op;
      for (int v : n.in) c.in.push_back(v < 0 ? nullptr : impls_[static_cast<size_t>(v)].get());
      for (int v : n.out) c.out.push_back(impls_[static_cast<size_t>(v)].get());
      std::copy(std::begin(n.f), std::end(n.f), c.f);
      std::copy(std::begin(n.i), std::end(n.i), c.i);
      c.params = n.params;
      if (n.workspace >= 0 && plan_) {
        const BufferInfo& w = g_ref.buffers[static_cast<size_t>(n.workspace)];
        c.workspace = {static_cast<char*>(arena_->data) + w.arena_offset, w.nbytes};
      }
    }
    // Host-filled bytes go back into their buffer before its first node.
    restore_at_.resize(g_ref.nodes.size());
    for (int b : restore_) restore_at_[static_cast<size_t>(g_ref.buffers[static_cast<size_t>(b)].first)].push_back(b);
    // The planned buffers that become live at / die after each node.
    live_from_.resize(g_ref.nodes.size());
    live_to_.resize(g_ref.nodes.size());
    if (plan_)
      for (size_t b = 0; b < g_ref.buffers.size(); ++b) {
        const BufferInfo& info = g_ref.buffers[b];
        if (info.first < 0 || info.arena_offset < 0) continue;
        live_from_[static_cast<size_t>(info.first)].push_back(static_cast<int>(b));
        live_to_[static_cast<size_t>(info.last)].push_back(static_cast<int>(b));
      }
    for (int b : g_ref.frozen) {
      auto s = g_ref.buffers[static_cast<size_t>(b)].captured.lock();
      frozen_versions_.push_back(s ? s->version.load() : 0);
    }
    folded_run_ = false;
    if (const char* p = std::getenv("LOOM_PROFILE_REPLAY"); p != nullptr && *p != '\0' && *p != '0')
      profile_.assign(g_ref.nodes.size(), 0.0);
    // Independent nodes side by side (Note [Scheduling]), with a planned
    // arena; never under AddressSanitizer, whose per-node poisoning assumes
    // the serial order.
    bool parallel = options.parallel && plan_ && g_ref.threads > 1;
#if defined(__SANITIZE_ADDRESS__)
    parallel = false;
#endif
    if (parallel) {
      ScheduleOptions o;
      o.threads = g_ref.threads;
      o.policy = schedule_policy_for_testing();
      o.relayout = options.memory_budget_bytes == 0;  // a budget holds the plan's arena
      o.extra_writes = restore_at_;
      auto s = std::make_unique<Schedule>(build_schedule(g_ref, o));
      if (const char* log = std::getenv("LOOM_LOG_SCHEDULE"); log != nullptr && *log != '\0' && *log != '0')
      {
        std::fprintf(stderr, "loom::compile: %s\n",
                     s->serial() ? "no overlap worth a team: the serial order" : s->summary().c_str());
        if (std::string(log) == "2")  // each parallel segment's nodes and estimated one-thread costs
          for (const Schedule::Segment& seg : s->segments) {
            if (!seg.parallel) continue;
            std::fprintf(stderr, "  parallel segment [%d, %d):", seg.begin, seg.end);
            for (int i = seg.begin; i < seg.end; ++i) {
              const int k = s->order[static_cast<size_t>(i)];
              std::fprintf(stderr, " %s %.0fus", g_ref.nodes[static_cast<size_t>(k)].name().c_str(),
                           s->cost_us[static_cast<size_t>(k)]);
            }
            std::fprintf(stderr, "\n");
          }
      }
      if (!s->serial()) use_schedule(std::move(s));
    }
  }

  // LOOM_PROFILE_REPLAY=1: the serial replays' time per op, printed when
  // the graph goes (Note [Capture and replay]).
  ~Executor() {
    if (profiled_ == 0) return;
    std::map<std::string, std::pair<double, int>> by_op;
    double total = 0;
    for (size_t k = 0; k < profile_.size(); ++k) {
      auto& [us, n] = by_op[g_->nodes[k].name()];
      us += profile_[k] / static_cast<double>(profiled_);
      ++n;
      total += profile_[k] / static_cast<double>(profiled_);
    }
    std::vector<std::pair<double, std::string>> rows;
    for (const auto& [op, t] : by_op) rows.emplace_back(t.first, op);
    std::sort(rows.rbegin(), rows.rend());
    std::fprintf(stderr, "loom::compile replay profile: %d replays, %.0f us per replay, %zu nodes\n", profiled_, total,
                 profile_.size());
    for (const auto& [us, op] : rows)
      std::fprintf(stderr, "  %-22s %5d nodes %10.0f us %5.1f%%\n", op.c_str(), by_op[op].second, us, 100 * us / total);
  }

  // False when a state tensor the graph writes or reads has died.
  bool state_alive() const {
    for (int b : dynamic_) {  // the buffers bound per replay, state among them
      const BufferInfo& info = g_->buffers[static_cast<size_t>(b)];
      if ((info.kind == BufferKind::State || info.kind == BufferKind::NewState) && info.captured.expired()) return false;
    }
    return true;
  }

  // Do `args` bind the way the captured ones did (shared storages)?
  bool aliasing_matches(const std::vector<Tensor>& args) const {
    for (size_t a = 0; a < args.size(); ++a) {
      const int buf = g_->values[static_cast<size_t>(g_->args[a])].buffer;
      const int owner = g_->buffers[static_cast<size_t>(buf)].arg;
      if (owner != static_cast<int>(a) &&
          args[a].unsafe_impl()->storage != args[static_cast<size_t>(owner)].unsafe_impl()->storage)
        return false;
      for (size_t b = 0; b < a; ++b)
        if (args[a].unsafe_impl()->storage == args[b].unsafe_impl()->storage &&
            g_->values[static_cast<size_t>(g_->args[b])].buffer != buf)
          return false;
    }
    return true;
  }

  std::vector<Tensor> run(const std::vector<Tensor>& args) {
    GraphImpl& g = *g_;
    // Bind: state (alive: checked by the caller), arguments, fresh outputs.
    for (int b : dynamic_) {
      const BufferInfo& info = g.buffers[static_cast<size_t>(b)];
      std::shared_ptr<Storage> s;
      int64_t shift = 0;
      switch (info.kind) {
        case BufferKind::Input: {
          const TensorImpl* a = args[static_cast<size_t>(info.arg)].unsafe_impl();
          s = a->storage;
          shift = a->offset - info.arg_offset;
          break;
        }
        case BufferKind::Output:
        case BufferKind::Intermediate:
        case BufferKind::Workspace:
          s = allocate_storage(info.nbytes, info.device);
          break;
        default:
          s = info.captured.lock();
          LOOM_ASSERT(s != nullptr, "compile: replay of a graph whose state died");
          break;
      }
      for (int v : by_buffer_[static_cast<size_t>(b)]) {
        TensorImpl& impl = *impls_[static_cast<size_t>(v)];
        impl.storage = s;
        impl.offset = g.values[static_cast<size_t>(v)].offset + shift;
      }
      if (!plan_ && info.kind == BufferKind::Workspace)
        for (size_t k = 0; k < g.nodes.size(); ++k)
          if (g.nodes[k].workspace == b) calls_[k].workspace = {s->data, info.nbytes};
    }
    if (!folded_run_ || frozen_changed()) run_folded();
    // Values that change between steps: random draws, hyperparameters.
    for (size_t d = 0; d < g.draws.size(); ++d) {
      RngDraw& r = g.draws[d];
      const RngState st = r.generator.philox_reserve(r.n);
      r.seed = st.seed;
      r.offset = st.offset;
    }
    for (size_t k = 0; k < g.nodes.size(); ++k) {
      const NodeInfo& n = g.nodes[k];
      if (n.folded) continue;
      if (n.kind == NodeKind::HostCheck) continue;
      KernelCall& c = calls_[k];
      if (n.rng >= 0) {
        const RngDraw& r = g.draws[static_cast<size_t>(n.rng)];
        c.i[n.rng_slot] = static_cast<int64_t>(r.seed);
        c.i[n.rng_slot + 1] = static_cast<int64_t>(r.offset);
      }
      if (n.hyper) refresh(c, n.hyper());
    }
    if (schedule_) {
      run_scheduled(*schedule_, [this](int k, int slot) { run_node(static_cast<size_t>(k), slot); });
    } else {
      if (arena_) LOOM_ARENA_POISON(arena_->data, arena_->nbytes);
      for (size_t k = 0; k < g.nodes.size(); ++k) {
        for (int b : live_from_[k]) LOOM_ARENA_UNPOISON(storages_[static_cast<size_t>(b)]->data, g.buffers[static_cast<size_t>(b)].nbytes);
        if (profile_.empty()) {
          run_node(k, 0);
        } else {
          const auto t0 = std::chrono::steady_clock::now();
          run_node(k, 0);
          profile_[k] += std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
        }
        for (int b : live_to_[k]) LOOM_ARENA_POISON(storages_[static_cast<size_t>(b)]->data, g.buffers[static_cast<size_t>(b)].nbytes);
      }
      if (!profile_.empty()) ++profiled_;
      if (arena_) LOOM_ARENA_UNPOISON(arena_->data, arena_->nbytes);
    }
    // Written state sees its version move, as an in-place op would move it.
    for (int b : dynamic_) {
      const BufferInfo& info = g.buffers[static_cast<size_t>(b)];
      if (info.written && info.kind != BufferKind::Output)
        impls_[static_cast<size_t>(by_buffer_[static_cast<size_t>(b)][0])]->storage->bump_version();
    }
    std::vector<Tensor> out;
    out.reserve(g.outputs.size());
    for (int v : g.outputs) {
      const TensorImpl& src = *impls_[static_cast<size_t>(v)];
      auto impl = std::make_shared<TensorImpl>();
      impl->storage = src.storage;
      impl->sizes = src.sizes;
      impl->strides = src.strides;
      impl->offset = src.offset;
      impl->dtype = src.dtype;
      out.emplace_back(std::move(impl));
    }
    // Let go of the caller's tensors and the state.
    for (int b : dynamic_)
      for (int v : by_buffer_[static_cast<size_t>(b)]) impls_[static_cast<size_t>(v)]->storage.reset();
    return out;
  }

 private:
  static void refresh(KernelCall& c, const capture::Hyperparameters& h) {
    if (auto* p = std::get_if<AdamParams>(&c.params)) {
      p->lr = h.lr;
      p->beta1 = h.beta1;
      p->beta2 = h.beta2;
      p->eps = h.eps;
      p->weight_decay = h.weight_decay;
    } else if (auto* s = std::get_if<SgdParams>(&c.params)) {
      LOOM_CHECK((s->momentum != 0) == (h.momentum != 0), "compile: SGD's momentum changed from ", s->momentum, " to ",
                 h.momentum, " since the step was captured; momentum buffers exist only with momentum, so a step "
                 "captured with one cannot run with the other");
      s->lr = h.lr;
      s->momentum = h.momentum;
      s->dampening = h.dampening;
      s->weight_decay = h.weight_decay;
    }
  }

  // Node k of a replay: its restored bytes, then its kernel (with the
  // running thread's scratch as workspace, under a relaid schedule) or
  // check; a folded node only restores. Safe on any thread once k's
  // predecessors ran.
  void run_node(size_t k, int slot) {
    const NodeInfo& n = g_->nodes[k];
    if (n.workspace >= 0 && !scratch_.empty())
      calls_[k].workspace = {scratch_[static_cast<size_t>(slot)]->data, schedule_->scratch_bytes};
    for (int b : restore_at_[k]) restore(b);
    if (n.kind == NodeKind::HostCheck) n.check(check_args_[static_cast<size_t>(check_of_[k])]);
    else if (!n.folded) run_kernel(calls_[k]);
  }

  // Runs with `s`: its arena layout replaces the plan's (arena buffers move
  // to its offsets; workspaces become per-thread scratch) when it made one.
  void use_schedule(std::unique_ptr<Schedule> s) {
    GraphImpl& g = *g_;
    if (s->relaid) {
      arena_ = s->arena_bytes > 0 ? allocate_storage(s->arena_bytes, Device::cpu()) : nullptr;
      for (size_t b = 0; b < g.buffers.size(); ++b) {
        const BufferInfo& info = g.buffers[b];
        if (info.first < 0 || (info.kind != BufferKind::Intermediate && info.kind != BufferKind::Workspace)) continue;
        const int64_t at = s->arena_offsets[b];
        storages_[b] = at < 0 ? nullptr : view_storage(static_cast<char*>(arena_->data) + at, info.nbytes, info.device);
        for (int v : by_buffer_[b]) impls_[static_cast<size_t>(v)]->storage = storages_[b];
      }
      for (KernelCall& c : calls_) c.workspace = {};
      for (int t = 0; t < s->threads && s->scratch_bytes > 0; ++t)
        scratch_.push_back(allocate_storage(s->scratch_bytes, Device::cpu()));
      g.plan.serial_arena_bytes = g.plan.arena_bytes;
      g.plan.arena_bytes = s->arena_bytes + static_cast<size_t>(s->threads) * s->scratch_bytes;
    }
    schedule_ = std::move(s);
  }

  void restore(int b) {
    const BufferInfo& info = g_->buffers[static_cast<size_t>(b)];
    const TensorImpl& impl = *impls_[static_cast<size_t>(by_buffer_[static_cast<size_t>(b)][0])];
    if (info.nbytes > 0) std::memcpy(impl.storage->data, info.owned->data, info.nbytes);
  }

  bool frozen_changed() const {
    for (size_t k = 0; k < g_->frozen.size(); ++k) {
      auto s = g_->buffers[static_cast<size_t>(g_->frozen[k])].captured.lock();
      if (!s || s->version.load() != frozen_versions_[k]) return true;
    }
    return false;
  }

  void run_folded() {
    GraphImpl& g = *g_;
    for (size_t k = 0; k < g.nodes.size(); ++k)
      if (g.nodes[k].folded) run_kernel(calls_[k]);
    for (size_t k = 0; k < g.frozen.size(); ++k) {
      auto s = g.buffers[static_cast<size_t>(g.frozen[k])].captured.lock();
      frozen_versions_[k] = s ? s->version.load() : 0;
    }
    folded_run_ = true;
  }

  std::shared_ptr<GraphImpl> g_;
  bool plan_;
  std::shared_ptr<Storage> arena_;
  std::vector<std::shared_ptr<Storage>> storages_;
  std::vector<std::shared_ptr<TensorImpl>> impls_;
  std::vector<std::vector<int>> by_buffer_;
  std::vector<int> dynamic_;  // buffers bound at each replay
  std::vector<int> restore_;  // buffers whose host-filled bytes are restored before first use
  std::vector<KernelCall> calls_;
  std::vector<std::vector<Tensor>> check_args_;
  std::vector<int> check_of_;  // per node: its entry in check_args_ (HostCheck nodes)
  std::vector<uint64_t> frozen_versions_;
  std::vector<std::vector<int>> live_from_, live_to_;  // arena buffers by first / last node
  std::vector<std::vector<int>> restore_at_;          // restore_ by first node
  bool folded_run_ = false;
  std::unique_ptr<Schedule> schedule_;  // null: the serial order
  std::vector<double> profile_;         // LOOM_PROFILE_REPLAY: microseconds per node, summed
  int profiled_ = 0;                    // replays summed into profile_
  std::vector<std::shared_ptr<Storage>> scratch_;  // per team id: its workspace (use_schedule)
};

namespace {

struct ArgShapes {
  std::vector<Shape> sizes, strides;
};

// Do `args` have the shapes and strides of `key`? (No copy on the replay path.)
bool matches(const ArgShapes& key, const std::vector<Tensor>& args) {
  if (key.sizes.size() != args.size()) return false;
  for (size_t a = 0; a < args.size(); ++a)
    if (key.sizes[a] != args[a].sizes() || key.strides[a] != args[a].strides()) return false;
  return true;
}

ArgShapes signature_of(const std::vector<Tensor>& args) {
  ArgShapes s;
  for (const Tensor& a : args) {
    s.sizes.push_back(a.sizes());
    s.strides.push_back(a.strides());
  }
  return s;
}

}  // namespace

// The recompute pass (with a budget: more segments until the arena fits),
// then the memory plan.
std::shared_ptr<GraphImpl> recompute_and_plan(std::shared_ptr<GraphImpl> g, const CompileOptions& o) {
  auto attempt = [&](int segments) {
    auto c = std::make_shared<GraphImpl>(*g);
    int64_t copies = 0;
    if (segments != 0) copies += recompute_segments(*c, segments);
    if (o.recompute_cheap) copies += recompute_cheap(*c);
    if (o.fuse) fuse(*c, o.fuse_gemm_epilogues);
    plan_memory(*c, o.plan_memory);
    c->plan.recomputed_nodes = copies;
    return c;
  };
  std::shared_ptr<GraphImpl> best = attempt(o.checkpoint_segments);
  if (o.checkpoint_segments < 0 && best->plan.segments > 0) {
    // Automatic: sqrt(heavy nodes) segments and a few counts around it,
    // and every heavy node its own segment; the smallest arena wins.
    const double root = best->plan.segments;
    for (double f : {0.5, 0.7, 1.4, 2.0, 1e9}) {
      const int s = std::max(2, static_cast<int>(std::lround(std::min(root * f, 1e6))));
      std::shared_ptr<GraphImpl> c = attempt(s);
      if (c->plan.arena_bytes < best->plan.arena_bytes) best = c;
    }
  }
  if (o.checkpoint_segments == 0 || o.memory_budget_bytes == 0) return best;
  for (int s = std::max(2, best->plan.segments + 1); best->plan.arena_bytes > o.memory_budget_bytes; ++s) {
    std::shared_ptr<GraphImpl> next = attempt(s);
    if (next->plan.segments < s) break;  // every heavy node is its own segment already
    best = next;
  }
  return best;
}

struct Compiler::State {
  struct Entry {
    ArgShapes key;
    std::shared_ptr<GraphImpl> graph;
    std::unique_ptr<Executor> exec;
    size_t last_hash = 0;
    bool has_last = false;
    int recordings = 0;
    std::vector<std::weak_ptr<Storage>> last_new_state;  // what the previous recording created and kept
    std::shared_ptr<const Graph> view;  // graph's public handle, made once
  };
  Fn fn;
  CompileOptions options;
  std::list<Entry> cache;  // most recently used first
  std::vector<std::pair<DType, Device>> first;  // the first capture's argument dtypes and devices
  CompileStats stats;
  std::shared_ptr<const Graph> last_graph;
  std::mutex mu;
};

Compiler::Compiler(Fn fn, CompileOptions options) : state_(std::make_unique<State>()) {
  LOOM_CHECK(options.cache_size >= 1, "compile: cache_size must be at least 1, got ", options.cache_size);
  LOOM_CHECK(options.max_recordings >= 1, "compile: max_recordings must be at least 1, got ", options.max_recordings);
  state_->fn = std::move(fn);
  state_->options = options;
}

Compiler::~Compiler() = default;

std::vector<Tensor> Compiler::call(const std::vector<Tensor>& args) {
  State& st = *state_;
  // Inside another capture: run inline, so the outer recording sees the kernels.
  if (capture::active() != nullptr) return st.fn(args);
  std::lock_guard<std::mutex> lock(st.mu);
  ++st.stats.calls;
  for (size_t a = 0; a < args.size(); ++a) LOOM_CHECK(args[a].defined(), "compile: argument ", a, " is an undefined tensor");
  if (st.first.empty()) {
    for (const Tensor& a : args) st.first.emplace_back(a.dtype(), a.device());
  } else {
    for (size_t a = 0; a < args.size(); ++a)
      LOOM_CHECK(args[a].dtype() == st.first[a].first && args[a].device() == st.first[a].second, "compile: argument ",
                 a, " is ", dtype_name(args[a].dtype()), " on ", args[a].device().str(), " but the function was captured with ",
                 dtype_name(st.first[a].first), " on ", st.first[a].second.str(),
                 "; a compiled function records a new graph for new shapes, not for new dtypes or devices");
  }
  auto it = std::find_if(st.cache.begin(), st.cache.end(), [&](const State::Entry& e) { return matches(e.key, args); });
  if (it == st.cache.end()) {
    if (static_cast<int>(st.cache.size()) >= st.options.cache_size) st.cache.pop_back();
    st.cache.push_front(State::Entry{signature_of(args), nullptr, nullptr, 0, false, 0, {}, nullptr});
    it = st.cache.begin();
  } else if (it != st.cache.begin()) {
    st.cache.splice(st.cache.begin(), st.cache, it);
    it = st.cache.begin();
  }
  State::Entry& e = *it;
  if (e.exec && e.exec->state_alive() && e.exec->aliasing_matches(args) && e.graph->threads == get_num_threads()) {
    ++st.stats.replays;
    st.last_graph = e.view;
    return e.exec->run(args);
  }
  e.exec.reset();

  // Record: run the step eagerly under a recorder.
  const CpuAllocatorStats before = cpu_allocator_stats();
  cpu_reset_peak_stats();
  Recorder rec(args);
  std::vector<Tensor> outs;
  {
    capture::ActiveGuard guard(&rec);
    outs = st.fn(args);
  }
  const size_t eager_peak = cpu_allocator_stats().peak_bytes_in_use - before.bytes_in_use;
  std::shared_ptr<GraphImpl> g = rec.finish(outs);
  ++st.stats.recordings;
  ++e.recordings;
  const size_t hash = g->structure_hash();
  const bool new_state = std::any_of(g->buffers.begin(), g->buffers.end(), [](const BufferInfo& b) {
    return b.kind == BufferKind::NewState && b.first >= 0;
  });
  const bool settled = !new_state || (e.has_last && e.last_hash == hash);
  if (settled && new_state) {
    // A steady step replaces what it keeps (backward's new gradients
    // replace those zero_grad dropped): the previous recording's new state
    // must be gone. Still alive, it piles up, call after call.
    size_t alive = 0, bytes = 0;
    for (const auto& w : e.last_new_state)
      if (auto s = w.lock()) {
        ++alive;
        bytes += s->nbytes;
      }
    LOOM_CHECK(alive == 0, "compile: the step allocates persistent state mid-step: each call creates ", alive,
               " tensors (", bytes, " bytes) that outlive it and are kept, so a replay, which allocates nothing, "
               "cannot repeat it. Create such state before the compiled call, or return it as an output");
  }
  e.last_new_state.clear();
  for (const BufferInfo& b : g->buffers)
    if (b.kind == BufferKind::NewState && b.first >= 0) e.last_new_state.push_back(b.captured);
  e.last_hash = hash;
  e.has_last = true;
  if (!settled) {
    LOOM_CHECK(e.recordings < st.options.max_recordings, "compile: the step did not settle: each of its first ",
               e.recordings, " calls created tensors that outlive it (new persistent state) or ran different "
               "kernels; a replay cannot allocate persistent state mid-step. Create state before compiling, or "
               "keep the step the same from call to call");
    // Shown until a graph settles (the last settled one stays the answer).
    if (!st.last_graph) st.last_graph = std::make_shared<Graph>(g);
    return outs;
  }
  if (st.options.optimize) {
    eliminate_dead_code(*g);
    forward_zero_fills(*g);
    remove_noop_copies(*g);
    fold_constants(*g);
  }
  compute_liveness(*g);
  g = recompute_and_plan(g, st.options);
  g->plan.eager_peak_bytes = eager_peak;
  e.graph = g;
  e.exec = std::make_unique<Executor>(g, st.options);
  // The eager recordings freed their intermediates into the CPU cache; the
  // replays use the arena instead, so give those blocks back to the system.
  cpu_empty_cache();
  st.stats.graphs = static_cast<int64_t>(st.cache.size());
  e.view = std::make_shared<Graph>(g);
  st.last_graph = e.view;
  return outs;
}

std::shared_ptr<const Graph> Compiler::graph() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->last_graph;
}

CompileStats Compiler::stats() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  CompileStats s = state_->stats;
  s.graphs = static_cast<int64_t>(std::count_if(state_->cache.begin(), state_->cache.end(),
                                                [](const State::Entry& e) { return e.exec != nullptr; }));
  return s;
}

}  // namespace detail

Graph::Graph(std::shared_ptr<detail::GraphImpl> impl) : impl_(std::move(impl)) {}
int64_t Graph::num_nodes() const { return static_cast<int64_t>(impl_->nodes.size()); }
int64_t Graph::num_values() const { return static_cast<int64_t>(impl_->values.size()); }
std::vector<std::string> Graph::ops() const {
  std::vector<std::string> out;
  for (const auto& n : impl_->nodes) out.push_back(n.name());
  return out;
}
MemoryPlan Graph::memory_plan() const { return impl_->plan; }
std::string Graph::str() const { return impl_->str(); }
void Graph::print(std::ostream& os) const { os << impl_->str(); }
void Graph::print() const { print(std::cout); }
std::string Graph::to_dot() const { return impl_->dot(); }
void Graph::save_dot(const std::string& path) const {
  const std::string dot = impl_->dot();
  io::write_file_atomic(path, dot.data(), dot.size());
}

}  // namespace loom::jit
