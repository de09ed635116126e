// A dependency engine for replaying captured graphs (Note [Scheduling]).
//
// Note [Scheduling]
// A replay may run a graph's nodes in any order that respects their
// dependencies, and since every loom kernel gives the same bits on any
// number of threads (a kernel called inside a parallel region runs on one),
// every such order gives the bits of the recorded one. The scheduler finds
// the dependencies, decides where running nodes side by side pays, and runs
// them so (MXNet's dependency engine does the same with read and write
// tags per variable).
//
// Dependencies. Each node reads buffers (its inputs) and writes buffers
// (its outputs and its workspace); an edge orders two nodes that touch the
// same memory when one of them writes it: read after write, write after
// read, write after write. What "the same memory" is depends on where a
// buffer lives at replay. Arguments, state, outputs and constants are their
// own storages: two of them conflict when they are the same buffer
// (arguments that alias were merged into one buffer by the capture). Arena
// buffers (intermediates, workspaces) conflict when their planned byte
// ranges [arena_offset, arena_offset + nbytes) overlap, which is how the
// memory plan's reuse becomes ordering: a buffer placed over a dead one's
// bytes waits for that one's last writer and last readers (write after
// read), so the plan stays valid under any order the edges allow. The
// construction is linear in the accesses: per buffer the last writer and
// the readers since it, and per arena byte run the buffer that last took it
// (an interval map), consulted once, when a buffer is first touched.
// Two more kinds of edges keep errors as they are in the serial order. A
// HostCheck counts as writing what it checks, so the kernels recorded after
// it that read those values (cross-entropy's targets, which it indexes by)
// wait for it; and a node that writes a persistent buffer (state, an
// argument) waits for the last HostCheck before it, so a failed check
// leaves the parameters as the serial order would. Folded nodes do not run
// at replay and are left out, unless the executor gives them host bytes to
// restore (extra_writes).
//
// The arena's layout. The plan packs the intermediates for the serial
// order: a temporary takes the bytes of the one that died just before it,
// and all kernels' workspaces share one range, so built on the plan the
// edges chain nodes that have nothing else in common (eight independent
// products each wait for the one before, whose workspace and output bytes
// they reuse). So the schedule is built in two passes. The first finds
// the data dependencies alone, as if every arena buffer had bytes of its
// own and every workspace were the running thread's, and chooses the
// segments on them (below). The second lays the arena out for those
// segments (lay_out_arena) with the planner's own assign_offsets: a
// buffer whose planned interval meets a parallel segment is widened over
// that segment (every one it meets), but by at most kWindow nodes each
// way, and the others keep their planned intervals. So buffers used within
// a window of each other in a parallel segment never share bytes, reuse
// beyond that stays (widening over whole segments, hundreds of nodes in
// the LSTM step, kept 2.6 times the plan's arena live), and the serial
// stretches reuse as the plan does; and workspaces leave
// the arena, each team id (slot) getting one scratch block of the largest
// workspace, which its node's kernel uses, so workspaces add no edges. The
// edges are then built again on this layout: reuse still orders nodes
// (write after read), within a parallel segment only nodes a window apart,
// else across segments, which run one after another anyway; and since
// edges go from lower to higher node ids no segment waits on a later one. The executor runs with exactly this
// layout, so it is respected as the plan is in the serial order. The cost
// in memory is the widened buffers of the parallel segments; with no
// parallel segment the plan's layout stays (relaid false), and with
// CompileOptions::memory_budget_bytes set the executor keeps it in any
// case (relayout off: one pass, its segments chosen on the plan's edges).
// A relaid arena more than kMaxRelayoutGrowth times the plan's is refused
// the same way (under the automatic policy; a forced one is for tests): the checkpointed GPT step's recomputations sit between
// the nodes of one long segment, and widening them kept 4.5 times the
// plan's bytes live for an estimated 4% of overlap.
//
// Which nodes run side by side. loom's kernels already split their work
// over the pool, so a parallel segment wins only where one kernel uses the
// threads worse than several kernels on one thread each: kernels too small
// to fork (elementwise ops under the grain, a small GEMM), or a GEMM that
// scales below the thread count. A cost model estimates each node's time on
// one thread (multiply-adds for Linear, Bmm, convolutions and attention,
// bytes for the rest, plus the dispatch) and on all of them (the same over
// the threads it would use, with an efficiency below one, plus a fork).
// Memory-bound kernels large enough to split over the pool share the
// memory's bandwidth, so the model gives them no gain from running side by
// side (their one-thread time is their all-thread time times the threads).
// The recorded order is cut into windows of kWindow nodes; for each, the
// serial estimate is the sum of its nodes' all-thread times, the parallel
// one a list-scheduling simulation of its nodes on `threads` single-thread
// workers plus a per-node cost and, when the window before was serial, the
// fork of a team. Windows where the parallel estimate is below kMinGain of
// the serial one become parallel; neighbours of one kind merge into
// segments. A chain (nothing to overlap) simulates to the sum of its nodes'
// one-thread times, never below the serial estimate, so it stays serial
// and runs the plain loop. The decisions read only the graph and the thread
// count: the same graph gets the same schedule.
//
// Running a parallel segment. One parallel_team call of `threads` ids; each
// id takes ready nodes from a shared heap (highest priority first: the
// longest estimated path to the end of the graph, so the critical chain
// goes first and the rest fills in beside it), runs one, then, under the
// same lock, releases its successors and takes the next. An id with nothing
// ready waits for a release (a short spin, then a futex) while another id
// runs a node, and returns once every node of the segment is taken. ids
// wait only for nodes already running elsewhere, never for an id that has
// not started, so the pool may run some ids inline, one after the other
// (the first then runs everything). Segments run one after another.
#include "jit/scheduler.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <limits>
#include <map>
#include <mutex>
#include <queue>
#include <sstream>

#include "core/tensor_impl.h"
#include "jit/graph.h"
#include "loom/error.h"
#include "loom/threads.h"

namespace loom::jit::detail {

namespace {

// The cost model (Note [Scheduling]); times in microseconds, rough by
// design: only the ratio of a window's parallel to serial estimate matters.
constexpr double kDispatchUs = 0.4;       // run_kernel's own cost per node
constexpr double kTaskUs = 0.3;           // a parallel segment's take and release per node
constexpr double kForkUs = 15;            // waking a team for a segment and joining it
constexpr double kKernelForkUs = 3;       // a kernel splitting itself over the pool
constexpr double kMacsPerUs = 20e3;       // one thread's GEMM rate (AVX2 here: 14-17 GMAC/s measured)
constexpr double kBytesPerUs = 8e3;       // one thread's rate on a streaming kernel
constexpr double kGemmEfficiency = 0.9;   // of a GEMM split over the threads
constexpr double kStreamEfficiency = 0.7; // of a memory-bound kernel split over the threads
constexpr double kGemmForkMacs = 1 << 20; // the GEMM runs on one thread below this (cpu_gemm.cpp)
constexpr int64_t kGrain = 32768;         // elementwise kernels split above this (cpu_dispatch.h)
constexpr int kWindow = 48;               // nodes per decision
constexpr double kMinGain = 0.95;         // parallel when estimated below this share of serial
constexpr double kMaxRelayoutGrowth = 1.1; // a relaid arena (and scratch) may exceed the plan's by this much

// The policy Executors use: LOOM_SCHEDULE=parallel|serial|auto (read once)
// unless a test set one.
SchedulePolicy policy_from_environment() {
  const char* v = std::getenv("LOOM_SCHEDULE");
  const std::string s = v == nullptr ? "" : v;
  if (s == "parallel") return SchedulePolicy::Parallel;
  if (s == "serial") return SchedulePolicy::Serial;
  return SchedulePolicy::Auto;
}
std::atomic<SchedulePolicy> g_policy{policy_from_environment()};

int64_t numel_of(const GraphImpl& g, int v) { return v < 0 ? 0 : shape_numel(g.values[static_cast<size_t>(v)].sizes); }
double bytes_of(const GraphImpl& g, int v) {
  if (v < 0) return 0;
  const ValueInfo& x = g.values[static_cast<size_t>(v)];
  return static_cast<double>(shape_numel(x.sizes)) * static_cast<double>(element_size(x.dtype));
}
int64_t dim_of(const GraphImpl& g, int v, int d) {
  const Shape& s = g.values[static_cast<size_t>(v)].sizes;
  const int n = static_cast<int>(s.size());
  if (d < 0) d += n;
  return d >= 0 && d < n ? s[static_cast<size_t>(d)] : 1;
}

// Multiply-adds of the GEMM-like ops (0 for the rest).
double macs_of(const GraphImpl& g, const NodeInfo& n) {
  auto in = [&](size_t k) { return k < n.in.size() ? n.in[k] : -1; };
  auto out = [&](size_t k) { return k < n.out.size() ? n.out[k] : -1; };
  switch (n.op) {
    case OpKind::Linear:  // (M, K) @ (N, K)^T
    case OpKind::QuantizedLinear:
      if (in(0) < 0 || in(1) < 0) return 0;
      return static_cast<double>(numel_of(g, in(0))) * static_cast<double>(dim_of(g, in(1), 0));
    case OpKind::Bmm:  // (B, M, K) @ (B, K, N)
      if (in(0) < 0 || in(1) < 0) return 0;
      return static_cast<double>(numel_of(g, in(0))) * static_cast<double>(dim_of(g, in(1), -1));
    case OpKind::Conv2d:  // out (N, O, OH, OW), each over C/groups * KH * KW
      if (in(1) < 0 || out(0) < 0) return 0;
      return static_cast<double>(numel_of(g, out(0))) * static_cast<double>(numel_of(g, in(1))) /
             static_cast<double>(std::max<int64_t>(1, dim_of(g, in(1), 0)));
    case OpKind::ConvTranspose2d:  // g (N, O, OH, OW) against w (O, C/groups, KH, KW)
      if (in(0) < 0 || in(1) < 0) return 0;
      return static_cast<double>(numel_of(g, in(0))) * static_cast<double>(numel_of(g, in(1))) /
             static_cast<double>(std::max<int64_t>(1, dim_of(g, in(1), 0)));
    case OpKind::Conv2dWeight:  // g (N, O, OH, OW) against x into w (O, C/groups, KH, KW)
      if (in(1) < 0 || out(0) < 0) return 0;
      return static_cast<double>(numel_of(g, in(1))) * static_cast<double>(numel_of(g, out(0))) /
             static_cast<double>(std::max<int64_t>(1, dim_of(g, out(0), 0)));
    case OpKind::Attention:  // q k^T and weights v: 2 (B, H, Tq, D) x Tk
      if (in(0) < 0 || in(1) < 0) return 0;
      return 2.0 * static_cast<double>(numel_of(g, in(0))) * static_cast<double>(dim_of(g, in(1), -2));
    case OpKind::AttentionBackward:  // about 2.5 times the forward
      if (in(1) < 0 || in(2) < 0) return 0;
      return 5.0 * static_cast<double>(numel_of(g, in(1))) * static_cast<double>(dim_of(g, in(2), -2));
    default:
      return 0;
  }
}

// Unary ops that evaluate a transcendental function per element: a few
// times the cost of streaming the bytes.
bool transcendental(OpKind op) {
  switch (op) {
    case OpKind::Exp: case OpKind::Log: case OpKind::Log1p: case OpKind::Sin: case OpKind::Cos:
    case OpKind::Tanh: case OpKind::Erf: case OpKind::Sigmoid: case OpKind::Elu: case OpKind::Gelu:
    case OpKind::GeluTanh: case OpKind::Silu: case OpKind::Softplus: case OpKind::Pow: case OpKind::GeluBackward:
    case OpKind::Softmax: case OpKind::LogSoftmax: case OpKind::CrossEntropy: case OpKind::CrossEntropyBackward:
      return true;
    default:
      return false;
  }
}

struct NodeCost {
  double one = 0;   // alone on one thread
  double wide = 0;  // alone on `threads` threads (the serial order)
};

NodeCost cost_of(const GraphImpl& g, const NodeInfo& n, int threads) {
  double bytes = 0;
  int64_t widest = 0;
  for (int v : n.in) bytes += bytes_of(g, v);
  for (int v : n.out) {
    bytes += bytes_of(g, v);
    widest = std::max(widest, numel_of(g, v));
  }
  for (int v : n.in) widest = std::max(widest, numel_of(g, v));
  if (n.kind == NodeKind::HostCheck) return {kDispatchUs + bytes / kBytesPerUs, kDispatchUs + bytes / kBytesPerUs};
  const double macs = macs_of(g, n);
  NodeCost c;
  if (macs > 0) {
    const double work = macs / kMacsPerUs + bytes / kBytesPerUs;
    c.one = kDispatchUs + work;
    c.wide = macs < kGemmForkMacs || threads <= 1
                 ? c.one
                 : kDispatchUs + kKernelForkUs + work / (threads * kGemmEfficiency);
    return c;
  }
  const double work = bytes / kBytesPerUs * (transcendental(n.op) ? 3.0 : 1.0);
  c.one = kDispatchUs + work;
  const int64_t chunks = std::min<int64_t>(threads, (widest + kGrain - 1) / kGrain);
  c.wide = chunks <= 1 ? c.one : kDispatchUs + kKernelForkUs + work / (static_cast<double>(chunks) * kStreamEfficiency);
  // A kernel large enough to split streams at the memory's pace: two of
  // them side by side share that bandwidth, so on one thread each they
  // take as long as one after another on all threads.
  if (chunks > 1) c.one = std::max(c.one, c.wide * static_cast<double>(chunks));
  return c;
}

// Which buffer last took each byte of the arena: disjoint runs [lo, hi).
class ArenaOccupants {
 public:
  // Calls seen(buffer) for every buffer that took bytes of [lo, hi) before,
  // then gives the whole range to `b`.
  template <class Seen>
  void take(int64_t lo, int64_t hi, int b, Seen seen) {
    if (hi <= lo) return;
    auto it = runs_.upper_bound(lo);
    if (it != runs_.begin() && std::prev(it)->second.hi > lo) --it;
    while (it != runs_.end() && it->first < hi) {
      const int64_t run_lo = it->first;
      const Run run = it->second;
      seen(run.buffer);
      it = runs_.erase(it);
      if (run_lo < lo) runs_.emplace(run_lo, Run{lo, run.buffer});
      if (run.hi > hi) runs_.emplace(hi, Run{run.hi, run.buffer});
    }
    runs_.emplace(lo, Run{hi, b});
  }

 private:
  struct Run {
    int64_t hi;
    int buffer;
  };
  std::map<int64_t, Run> runs_;  // by lo
};

bool in_arena(const BufferInfo& b) {
  return b.arena_offset >= 0 && (b.kind == BufferKind::Intermediate || b.kind == BufferKind::Workspace);
}

// The plan's layout: per buffer its planned offset (-1: not in the arena).
std::vector<int64_t> planned_offsets(const GraphImpl& g) {
  std::vector<int64_t> at(g.buffers.size(), -1);
  for (size_t b = 0; b < g.buffers.size(); ++b)
    if (in_arena(g.buffers[b]) && g.buffers[b].first >= 0) at[b] = g.buffers[b].arena_offset;
  return at;
}

// The arena the segments run with (Note [Scheduling]). No parallel segment:
// the plan's. Else the planner's offsets again, on the planned intervals
// with each one that meets a parallel segment widened over it by up to
// kWindow nodes each way, and no workspaces (each thread brings its own
// scratch).
void lay_out_arena(const GraphImpl& g, Schedule& s) {
  if (s.serial()) {
    s.arena_offsets = planned_offsets(g);
    s.arena_bytes = g.plan.arena_bytes;
    return;
  }
  std::vector<std::pair<int, int>> spans;  // the parallel segments' first and last node ids
  for (const Schedule::Segment& seg : s.segments)
    if (seg.parallel)
      spans.emplace_back(s.order[static_cast<size_t>(seg.begin)], s.order[static_cast<size_t>(seg.end) - 1]);
  s.arena_offsets.assign(g.buffers.size(), -1);
  std::vector<Interval> intervals;
  std::vector<int> ids;
  for (size_t b = 0; b < g.buffers.size(); ++b) {
    const BufferInfo& info = g.buffers[b];
    if (!in_arena(info) || info.first < 0) continue;
    if (info.kind == BufferKind::Workspace) {
      s.scratch_bytes = std::max(s.scratch_bytes, info.nbytes);
      continue;
    }
    Interval it{info.first, info.last, info.nbytes};
    for (const auto& [lo, hi] : spans)
      if (lo <= info.last && info.first <= hi) {
        it.first = std::min(it.first, std::max(lo, info.first - kWindow));
        it.last = std::max(it.last, std::min(hi, info.last + kWindow));
      }
    intervals.push_back(it);
    ids.push_back(static_cast<int>(b));
  }
  std::vector<int64_t> offsets;
  s.arena_bytes = assign_offsets(intervals, offsets);
  for (size_t k = 0; k < ids.size(); ++k) s.arena_offsets[static_cast<size_t>(ids[k])] = offsets[k];
  s.relaid = true;
}

bool persistent(const BufferInfo& b) {
  return b.kind == BufferKind::State || b.kind == BufferKind::NewState || b.kind == BufferKind::Input;
}

// The edges (Note [Scheduling]) on the layout `arena_offsets` (per buffer,
// -1: bytes of its own), with workspaces in it or (per_thread_workspaces)
// the running thread's: fills s.pred_start / s.preds for the nodes in
// s.order (other nodes get none).
void build_edges(const GraphImpl& g, const ScheduleOptions& o, const std::vector<int64_t>& arena_offsets,
                 bool per_thread_workspaces, Schedule& s) {
  const size_t nodes = g.nodes.size();
  std::vector<int> last_writer(g.buffers.size(), -1);
  std::vector<std::vector<int>> readers(g.buffers.size());
  std::vector<char> touched(g.buffers.size(), 0);
  ArenaOccupants arena;
  std::vector<std::vector<int>> preds(nodes);
  int last_check = -1;
  std::vector<int> reads, writes;
  for (int k : s.order) {
    const NodeInfo& n = g.nodes[static_cast<size_t>(k)];
    std::vector<int>& p = preds[static_cast<size_t>(k)];
    reads = g.reads(n);
    writes = g.writes(n);
    if (n.workspace >= 0 && !per_thread_workspaces) writes.push_back(n.workspace);
    if (!o.extra_writes.empty())
      for (int b : o.extra_writes[static_cast<size_t>(k)]) writes.push_back(b);
    if (n.kind == NodeKind::HostCheck) {  // orders the kernels that use what it checks after it
      writes.insert(writes.end(), reads.begin(), reads.end());
      reads.clear();
    }
    // A buffer's first touch waits for the final accessors of the arena
    // buffers whose bytes it takes over.
    for (const std::vector<int>* list : {&reads, &writes})
      for (int b : *list) {
        const BufferInfo& info = g.buffers[static_cast<size_t>(b)];
        if (touched[static_cast<size_t>(b)]) continue;
        touched[static_cast<size_t>(b)] = 1;
        const int64_t at = arena_offsets[static_cast<size_t>(b)];
        if (at < 0) continue;
        arena.take(at, at + static_cast<int64_t>(info.nbytes), b, [&](int old) {
          if (old == b) return;
          if (last_writer[static_cast<size_t>(old)] >= 0) p.push_back(last_writer[static_cast<size_t>(old)]);
          p.insert(p.end(), readers[static_cast<size_t>(old)].begin(), readers[static_cast<size_t>(old)].end());
        });
      }
    for (int b : reads) {
      if (last_writer[static_cast<size_t>(b)] >= 0) p.push_back(last_writer[static_cast<size_t>(b)]);
      readers[static_cast<size_t>(b)].push_back(k);
    }
    bool writes_persistent = false;
    for (int b : writes) {
      if (last_writer[static_cast<size_t>(b)] >= 0) p.push_back(last_writer[static_cast<size_t>(b)]);
      std::vector<int>& r = readers[static_cast<size_t>(b)];
      p.insert(p.end(), r.begin(), r.end());
      r.clear();
      last_writer[static_cast<size_t>(b)] = k;
      writes_persistent = writes_persistent || persistent(g.buffers[static_cast<size_t>(b)]);
    }
    if (writes_persistent && last_check >= 0) p.push_back(last_check);
    if (n.kind == NodeKind::HostCheck) last_check = k;
    std::sort(p.begin(), p.end());
    p.erase(std::unique(p.begin(), p.end()), p.end());
    if (!p.empty() && p.back() == k) p.pop_back();  // a node reading what it writes
  }
  s.pred_start.assign(nodes + 1, 0);
  for (size_t k = 0; k < nodes; ++k) s.pred_start[k + 1] = s.pred_start[k] + static_cast<int>(preds[k].size());
  s.preds.clear();
  s.preds.reserve(static_cast<size_t>(s.pred_start[nodes]));
  for (size_t k = 0; k < nodes; ++k) s.preds.insert(s.preds.end(), preds[k].begin(), preds[k].end());
}

// The estimated time of order[a, b) on `threads` one-thread workers, list
// scheduled by priority; edges from outside the window count as met.
double simulate(const Schedule& s, const std::vector<std::vector<int>>& succ, const std::vector<int>& pos, int a,
                int b, int threads) {
  const int n = b - a;
  std::vector<int> waits(static_cast<size_t>(n), 0);
  for (int i = a; i < b; ++i) {
    const int k = s.order[static_cast<size_t>(i)];
    for (int q = s.pred_start[static_cast<size_t>(k)]; q < s.pred_start[static_cast<size_t>(k) + 1]; ++q) {
      const int at = pos[static_cast<size_t>(s.preds[static_cast<size_t>(q)])];
      if (at >= a && at < b) ++waits[static_cast<size_t>(i - a)];
    }
  }
  auto lower = [&](int x, int y) {  // heap order: highest priority, then earliest node first
    const double px = s.priority[static_cast<size_t>(x)], py = s.priority[static_cast<size_t>(y)];
    return px != py ? px < py : x > y;
  };
  std::priority_queue<int, std::vector<int>, decltype(lower)> ready(lower);
  for (int i = a; i < b; ++i)
    if (waits[static_cast<size_t>(i - a)] == 0) ready.push(s.order[static_cast<size_t>(i)]);
  using Event = std::pair<double, int>;  // finish time, node
  std::priority_queue<Event, std::vector<Event>, std::greater<>> running;
  double now = 0;
  int free = threads, done = 0;
  while (done < n) {
    while (free > 0 && !ready.empty()) {
      const int k = ready.top();
      ready.pop();
      running.emplace(now + s.cost_us[static_cast<size_t>(k)] + kTaskUs, k);
      --free;
    }
    LOOM_ASSERT(!running.empty(), "build_schedule: a window's nodes wait on each other in a cycle");
    const auto [t, k] = running.top();
    running.pop();
    now = t;
    ++free;
    ++done;
    for (int x : succ[static_cast<size_t>(k)]) {
      const int at = pos[static_cast<size_t>(x)];
      if (at >= a && at < b && --waits[static_cast<size_t>(at - a)] == 0) ready.push(x);
    }
  }
  return now;
}

}  // namespace

bool Schedule::serial() const {
  return std::none_of(segments.begin(), segments.end(), [](const Segment& g) { return g.parallel; });
}

int64_t Schedule::parallel_nodes() const {
  int64_t n = 0;
  for (const Segment& g : segments)
    if (g.parallel) n += g.end - g.begin;
  return n;
}

std::string Schedule::summary() const {
  std::ostringstream os;
  int parallel = 0;
  for (const Segment& g : segments) parallel += g.parallel ? 1 : 0;
  os << "schedule: " << order.size() << " nodes, " << preds.size() << " edges, " << threads << " threads, "
     << segments.size() << " segments (" << parallel << " parallel, " << parallel_nodes()
     << " nodes in them); estimated " << serial_us << " us serial, " << scheduled_us << " us scheduled; arena "
     << arena_bytes << " bytes (planned " << planned_arena_bytes << "), scratch " << scratch_bytes << " bytes per thread";
  return os.str();
}

Schedule build_schedule(const GraphImpl& g, const ScheduleOptions& o) {
  LOOM_ASSERT(o.extra_writes.empty() || o.extra_writes.size() == g.nodes.size(),
              "build_schedule: extra_writes has ", o.extra_writes.size(), " entries for ", g.nodes.size(), " nodes");
  Schedule s;
  s.threads = std::max(1, o.threads);
  s.planned_arena_bytes = g.plan.arena_bytes;
  const size_t nodes = g.nodes.size();
  for (size_t k = 0; k < nodes; ++k) {
    const bool restores = !o.extra_writes.empty() && !o.extra_writes[k].empty();
    if (!g.nodes[k].folded || restores) s.order.push_back(static_cast<int>(k));
  }
  // The segments are chosen on the data dependencies alone (every arena
  // buffer in bytes of its own, workspaces per thread), or without
  // relayout on the plan's layout, which the schedule then keeps.
  if (o.relayout) {
    build_edges(g, o, std::vector<int64_t>(g.buffers.size(), -1), true, s);
  } else {
    s.arena_offsets = planned_offsets(g);
    s.arena_bytes = g.plan.arena_bytes;
    build_edges(g, o, s.arena_offsets, false, s);
  }

  // Costs, successors, priorities (the longest one-thread path to the end).
  s.cost_us.assign(nodes, 0);
  std::vector<double> wide(nodes, 0);
  for (int k : s.order) {
    const NodeCost c = cost_of(g, g.nodes[static_cast<size_t>(k)], s.threads);
    s.cost_us[static_cast<size_t>(k)] = c.one;
    wide[static_cast<size_t>(k)] = c.wide;
  }
  std::vector<std::vector<int>> succ(nodes);
  auto link = [&] {
    for (std::vector<int>& x : succ) x.clear();
    for (int k : s.order)
      for (int q = s.pred_start[static_cast<size_t>(k)]; q < s.pred_start[static_cast<size_t>(k) + 1]; ++q)
        succ[static_cast<size_t>(s.preds[static_cast<size_t>(q)])].push_back(k);
    s.priority.assign(nodes, 0);
    for (auto it = s.order.rbegin(); it != s.order.rend(); ++it) {
      double longest = 0;
      for (int x : succ[static_cast<size_t>(*it)]) longest = std::max(longest, s.priority[static_cast<size_t>(x)]);
      s.priority[static_cast<size_t>(*it)] = s.cost_us[static_cast<size_t>(*it)] + longest;
    }
  };
  link();
  std::vector<int> pos(nodes, -1);
  for (size_t i = 0; i < s.order.size(); ++i) pos[static_cast<size_t>(s.order[i])] = static_cast<int>(i);

  // Segments: a decision per window, neighbours of one kind merged.
  const int count = static_cast<int>(s.order.size());
  auto add = [&](bool parallel, int a, int b) {
    if (a == b) return;
    if (!s.segments.empty() && s.segments.back().parallel == parallel) s.segments.back().end = b;
    else s.segments.push_back({parallel, a, b});
  };
  for (int k : s.order) s.serial_us += wide[static_cast<size_t>(k)];
  if (o.policy != SchedulePolicy::Auto || s.threads == 1) {
    add(o.policy == SchedulePolicy::Parallel && s.threads > 1, 0, count);
    s.scheduled_us = s.serial_us;
  } else {
    bool previous = false;
    for (int a = 0; a < count; a += kWindow) {
      const int b = std::min(count, a + kWindow);
      double serial = 0;
      for (int i = a; i < b; ++i) serial += wide[static_cast<size_t>(s.order[static_cast<size_t>(i)])];
      const double parallel = simulate(s, succ, pos, a, b, s.threads) + (previous ? 0 : kForkUs);
      previous = parallel < kMinGain * serial;
      add(previous, a, b);
      s.scheduled_us += std::min(serial, parallel);
    }
  }

  // The layout the segments need, and the edges again on it: its reuse of
  // bytes orders nodes too (edges go from lower to higher node ids, so no
  // segment waits on a later one).
  if (o.relayout) {
    lay_out_arena(g, s);
    // Memory is what the plan is for: a layout that keeps much more live
    // than the plan's arena is not worth a few percent of overlap. Then
    // the segments are chosen again on the plan's own layout.
    const double relaid = static_cast<double>(s.arena_bytes + static_cast<size_t>(s.threads) * s.scratch_bytes);
    if (o.policy == SchedulePolicy::Auto && s.relaid &&
        relaid > kMaxRelayoutGrowth * static_cast<double>(g.plan.arena_bytes)) {
      ScheduleOptions kept = o;
      kept.relayout = false;
      return build_schedule(g, kept);
    }
    build_edges(g, o, s.arena_offsets, s.relaid, s);
    link();
  }

  // Within parallel segments: successors there and how many to wait for.
  std::vector<int> segment_of(nodes, -1);
  for (size_t q = 0; q < s.segments.size(); ++q)
    for (int i = s.segments[q].begin; i < s.segments[q].end; ++i)
      segment_of[static_cast<size_t>(s.order[static_cast<size_t>(i)])] = static_cast<int>(q);
  s.waits_for.assign(nodes, 0);
  s.succ_start.assign(nodes + 1, 0);
  for (size_t k = 0; k < nodes; ++k) {
    const int seg = segment_of[k];
    int n = 0;
    if (seg >= 0 && s.segments[static_cast<size_t>(seg)].parallel)
      for (int x : succ[k])
        if (segment_of[static_cast<size_t>(x)] == seg) {
          s.succs.push_back(x);
          ++s.waits_for[static_cast<size_t>(x)];
          ++n;
        }
    s.succ_start[k + 1] = s.succ_start[k] + n;
  }
  return s;
}

namespace {

// One parallel segment in flight: a heap of ready nodes under a small
// lock, and a futex word the idle ids sleep on.
class SegmentRun {
 public:
  SegmentRun(const Schedule& s, const Schedule::Segment& seg, const std::function<void(int, int)>& run_node,
             std::vector<int>& waiting, std::vector<char>& ran, std::vector<int>& heap)
      : s_(s), run_node_(run_node), waiting_(waiting), ran_(ran), heap_(heap), size_(seg.end - seg.begin) {
    heap_.clear();
    for (int i = seg.begin; i < seg.end; ++i) {
      const int k = s.order[static_cast<size_t>(i)];
      waiting_[static_cast<size_t>(k)] = s.waits_for[static_cast<size_t>(k)];
      ran_[static_cast<size_t>(k)] = 0;
      if (waiting_[static_cast<size_t>(k)] == 0) push(k);
    }
  }

  // One team id: take, run, release, until every node is taken.
  void work(int slot) {
    int k = take();
    while (k >= 0) {
      try {
        run_node_(k, slot);
        ran_[static_cast<size_t>(k)] = 1;
      } catch (...) {
        fail(k, std::current_exception());
        return;
      }
      k = release_and_take(k);
    }
  }

  // After the team: the first failure, if any, and the node it came from.
  std::exception_ptr error() const { return error_; }
  int error_node() const { return error_node_; }

 private:
  // The heap's order: the top is the highest priority, then the earliest node.
  bool lower_priority(int x, int y) const {
    const double px = s_.priority[static_cast<size_t>(x)], py = s_.priority[static_cast<size_t>(y)];
    return px != py ? px < py : x > y;
  }
  void push(int k) {
    heap_.push_back(k);
    std::push_heap(heap_.begin(), heap_.end(), [this](int x, int y) { return lower_priority(x, y); });
  }
  int pop() {
    std::pop_heap(heap_.begin(), heap_.end(), [this](int x, int y) { return lower_priority(x, y); });
    const int k = heap_.back();
    heap_.pop_back();
    ++taken_;
    return k;
  }
  void lock() {
    while (lock_.exchange(true, std::memory_order_acquire))
      while (lock_.load(std::memory_order_relaxed)) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
      }
  }
  void unlock() { lock_.store(false, std::memory_order_release); }
  void wake() {
    signal_.fetch_add(1, std::memory_order_acq_rel);
    if (sleepers_.load(std::memory_order_acquire) > 0) signal_.notify_all();
  }

  // The next ready node, waiting while others run; -1 when every node is
  // taken or a node failed.
  int take() {
    for (;;) {
      const uint32_t seen = signal_.load(std::memory_order_acquire);
      lock();
      if (failed_ || taken_ == size_) {
        unlock();
        return -1;
      }
      if (!heap_.empty()) {
        const int k = pop();
        const bool more = !heap_.empty() || taken_ == size_;
        unlock();
        if (more) wake();
        return k;
      }
      unlock();
      // Nothing ready: other ids run nodes whose release will wake us.
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(20);
      bool changed = false;
      for (int spin = 0; !changed; ++spin) {
        changed = signal_.load(std::memory_order_acquire) != seen;
        if ((spin & 63) == 63 && std::chrono::steady_clock::now() > deadline) break;
#if defined(__x86_64__) || defined(__i386__)
        if (!changed) __builtin_ia32_pause();
#endif
      }
      if (changed) continue;
      sleepers_.fetch_add(1, std::memory_order_acq_rel);
      signal_.wait(seen, std::memory_order_acquire);
      sleepers_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  int release_and_take(int done) {
    lock();
    for (int q = s_.succ_start[static_cast<size_t>(done)]; q < s_.succ_start[static_cast<size_t>(done) + 1]; ++q) {
      const int x = s_.succs[static_cast<size_t>(q)];
      if (--waiting_[static_cast<size_t>(x)] == 0) push(x);
    }
    if (failed_ || heap_.empty()) {
      unlock();
      return take();
    }
    const int k = pop();
    const bool more = !heap_.empty() || taken_ == size_;
    unlock();
    if (more) wake();
    return k;
  }

  void fail(int k, std::exception_ptr e) {
    lock();
    if (!error_ || k < error_node_) {
      error_ = std::move(e);
      error_node_ = k;
    }
    failed_ = true;
    unlock();
    wake();
  }

  const Schedule& s_;
  const std::function<void(int, int)>& run_node_;
  std::vector<int>& waiting_;  // per node: predecessors not yet done (under lock_)
  std::vector<char>& ran_;     // per node: finished (read after the team joined)
  std::vector<int>& heap_;     // ready nodes (under lock_)
  const int size_;
  int taken_ = 0;              // under lock_
  bool failed_ = false;        // under lock_
  std::exception_ptr error_;   // under lock_
  int error_node_ = std::numeric_limits<int>::max();
  std::atomic<bool> lock_{false};
  std::atomic<uint32_t> signal_{0};  // moves on every release; idle ids sleep on it
  std::atomic<int> sleepers_{0};
};

}  // namespace

void run_scheduled(const Schedule& s, const std::function<void(int node, int slot)>& run_node) {
  // Scratch reused from run to run on this thread (a replay allocates nothing).
  thread_local std::vector<int> waiting, heap;
  thread_local std::vector<char> ran;
  const size_t nodes = s.waits_for.size();
  if (waiting.size() < nodes) {
    waiting.resize(nodes);
    ran.resize(nodes);
  }
  if (heap.capacity() < s.order.size()) heap.reserve(s.order.size());
  for (const Schedule::Segment& seg : s.segments) {
    if (!seg.parallel || s.threads <= 1) {
      for (int i = seg.begin; i < seg.end; ++i) run_node(s.order[static_cast<size_t>(i)], 0);
      continue;
    }
    SegmentRun run(s, seg, run_node, waiting, ran, heap);
    parallel_team(s.threads, [&](int id, int) { run.work(id); });
    if (std::exception_ptr e = run.error()) {
      // Everything recorded before the failing node runs, as serially.
      for (int i = seg.begin; i < seg.end; ++i) {
        const int k = s.order[static_cast<size_t>(i)];
        if (k >= run.error_node()) break;
        if (!ran[static_cast<size_t>(k)]) run_node(k, 0);
      }
      std::rethrow_exception(e);
    }
  }
}

void set_schedule_policy_for_testing(SchedulePolicy policy) { g_policy.store(policy, std::memory_order_relaxed); }
SchedulePolicy schedule_policy_for_testing() { return g_policy.load(std::memory_order_relaxed); }

}  // namespace loom::jit::detail
