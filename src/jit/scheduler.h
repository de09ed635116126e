// Running a captured graph's independent nodes at the same time (Note
// [Scheduling] in src/jit/scheduler.cpp).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace loom::jit::detail {

struct GraphImpl;

// How build_schedule splits the nodes: Auto weighs each stretch of nodes
// (Note [Scheduling]); Parallel runs every node in one concurrent segment
// and Serial none (tests, and measuring the cost model).
enum class SchedulePolicy : uint8_t { Auto, Parallel, Serial };

struct ScheduleOptions {
  int threads = 1;  // the team a parallel segment runs on: get_num_threads() at replay
  SchedulePolicy policy = SchedulePolicy::Auto;
  // Lay the arena out again for the parallel segments (Note [Scheduling]):
  // segments chosen on the data dependencies alone, then the intermediates
  // live in a parallel segment get offsets from intervals widened over it,
  // by up to a window each way (the rest keep the plan's), and each
  // workspace becomes the running thread's own scratch, so nearby nodes of
  // a segment do not wait on each other's reused bytes. No parallel
  // segment: the plan's layout. Off: the edges (and segments) follow the
  // planned offsets and workspaces as they are.
  bool relayout = true;
  // Per node (empty, or one entry per node): buffers it writes beyond its
  // outputs and workspace, such as the host-filled bytes the executor
  // copies back before a buffer's first node. A folded node with such
  // writes is scheduled (to do them); other folded nodes are not.
  std::vector<std::vector<int>> extra_writes;
};

struct Schedule {
  // A stretch of `order`: [begin, end). Serial segments run their nodes one
  // after another, each kernel on every thread; a parallel segment runs its
  // nodes on a team of `threads`, one thread per node, as their
  // dependencies allow.
  struct Segment {
    bool parallel = false;
    int begin = 0, end = 0;
  };
  int threads = 1;
  std::vector<int> order;  // the nodes that run, in the recorded order
  std::vector<Segment> segments;
  // The dependency DAG (edges go from lower to higher node ids): the
  // predecessors of node k are preds[pred_start[k] .. pred_start[k + 1]).
  std::vector<int> pred_start, preds;
  // Within a parallel segment: the successors of node k in its segment,
  // how many predecessors it waits for there, and its priority (the
  // estimated longest path from it to the end of the graph, in us).
  std::vector<int> succ_start, succs;
  std::vector<int> waits_for;
  std::vector<double> priority;
  std::vector<double> cost_us;       // node alone on one thread (the cost model's estimate)
  // The arena the schedule runs with: per buffer its offset (-1: not in
  // the arena), the plan's unless relaid (relayout and a parallel segment:
  // intervals widened only within parallel segments), and then the bytes
  // of one private workspace per thread (0: workspaces stay where the plan
  // put them).
  std::vector<int64_t> arena_offsets;
  size_t arena_bytes = 0, planned_arena_bytes = 0;
  size_t scratch_bytes = 0;
  bool relaid = false;  // arena_offsets are the schedule's own, not the plan's
  double serial_us = 0, scheduled_us = 0;  // the estimates for the graph, serial and as scheduled

  bool serial() const;  // no parallel segment: run `order` one by one
  int64_t parallel_nodes() const;
  int64_t num_edges() const { return static_cast<int64_t>(preds.size()); }
  std::string summary() const;  // one line: nodes, edges, segments, estimates
};

// The dependencies of `g`'s nodes and the segments they run in; built once
// per graph, deterministic (it reads only the graph and the options).
Schedule build_schedule(const GraphImpl& g, const ScheduleOptions& options);

// Runs every node of `s` through run_node(node id, slot), each after its
// predecessors; slot (below s.threads) names the running thread's scratch.
// Parallel segments run on a parallel_team of s.threads (so run_node's
// kernels stay on one thread). Not reentrant for one Schedule
// object's caller state: one run at a time per thread. If run_node throws,
// nodes not yet started are not started, the nodes recorded before the
// failing one that had not run are run in order (so everything before it
// ran, as in the serial order), and the first exception (the lowest node
// id) is rethrown.
void run_scheduled(const Schedule& s, const std::function<void(int node, int slot)>& run_node);

// The policy every Executor built after this call uses (by default Auto, or
// LOOM_SCHEDULE=parallel|serial|auto): tests force the parallel path on
// graphs too small for Auto to choose it.
void set_schedule_policy_for_testing(SchedulePolicy policy);
SchedulePolicy schedule_policy_for_testing();

}  // namespace loom::jit::detail
