// Static memory planning (Note [Static memory planning]).
//
// Note [Static memory planning]
// Every intermediate buffer of a captured step (and every kernel's
// workspace) gets an offset in one arena, allocated once when the graph is
// instantiated; a replay allocates nothing but the tensors it returns.
// A buffer is live over the nodes from its first use to its last (an
// inclusive interval, so an output never shares bytes with an input of the
// same node unless it is reused in place on purpose). Two steps:
// 1. In-place reuse. The output of an elementwise node (a whole, contiguous,
//    fresh intermediate) takes over the buffer of an input that dies at that
//    node and has its dtype, size and layout: the kernels compute element k
//    from element k of each input, so they may write over what they read
//    (the in-place ops add_, mul_ ... rely on the same). The optimizer's
//    updates are in place already (FusedAdam, FusedSgd write the state).
// 2. Offsets. Buffers are placed largest first; each goes into the
//    smallest gap (best fit) between the buffers already placed that are
//    live at the same time as it, or above all of them. This is the
//    "greedy by size" planner of TFLite and XLA's heap simulator. The lower
//    bound no plan can beat is the largest sum of live bytes at one node;
//    the plan reports both, and make bench the ratio.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <numeric>

#include "jit/graph.h"

namespace loom::jit::detail {

namespace {

constexpr size_t kAlign = 64;
size_t aligned(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// A fused group without a reduction computes element k from element k too,
// and loads a block before it stores it (Note [Fused programs]); not a GEMM
// epilogue, whose product fills out0 before the program reads the inputs.
bool elementwise(const NodeInfo& n) {
  if (const auto* f = std::get_if<FusedParams>(&n.params)) return f->program->reduce_dims == 0 && !f->program->product;
  return elementwise_kernel(n.op);
}

bool whole(const GraphImpl& g, int v) {
  const ValueInfo& x = g.values[static_cast<size_t>(v)];
  if (x.offset != 0 || x.strides != contiguous_strides(x.sizes)) return false;
  return static_cast<size_t>(shape_numel(x.sizes)) * element_size(x.dtype) ==
         g.buffers[static_cast<size_t>(x.buffer)].nbytes;
}

int reuse_in_place(GraphImpl& g) {
  compute_liveness(g);
  int merged = 0;
  for (size_t k = 0; k < g.nodes.size(); ++k) {
    const NodeInfo& n = g.nodes[k];
    if (n.kind != NodeKind::Kernel || n.folded || !elementwise(n) || n.out.size() != 1) continue;
    const int o = n.out[0];
    const ValueInfo& ov = g.values[static_cast<size_t>(o)];
    BufferInfo& ob = g.buffers[static_cast<size_t>(ov.buffer)];
    const int ki = static_cast<int>(k);
    if (ob.kind != BufferKind::Intermediate || ob.owned || ob.first != ki || !whole(g, o)) continue;
    for (int x : n.in) {
      if (x < 0 || x == o) continue;
      const ValueInfo& xv = g.values[static_cast<size_t>(x)];
      BufferInfo& xb = g.buffers[static_cast<size_t>(xv.buffer)];
      if (xv.buffer == ov.buffer || xb.kind != BufferKind::Intermediate || xb.owned || xb.last != ki ||
          xv.dtype != ov.dtype || xv.sizes != ov.sizes || xb.nbytes != ob.nbytes || !whole(g, x))
        continue;
      // Another input of this node on the dying buffer but with another
      // layout would be read after being overwritten: not in place then.
      bool clash = false;
      for (int y : n.in)
        if (y >= 0 && y != x && g.values[static_cast<size_t>(y)].buffer == xv.buffer) clash = true;
      if (clash) continue;
      const int from = ov.buffer, to = xv.buffer;
      for (ValueInfo& v : g.values)
        if (v.buffer == from) v.buffer = to;
      g.buffers[static_cast<size_t>(to)].last = g.buffers[static_cast<size_t>(from)].last;
      g.buffers[static_cast<size_t>(from)].merged_into = to;
      g.buffers[static_cast<size_t>(from)].first = g.buffers[static_cast<size_t>(from)].last = -1;
      ++merged;
      break;
    }
  }
  compute_liveness(g);
  return merged;
}

// LOOM_LOG_PLAN=1: the node where the live bytes peak, and the buffers
// live there by size, each with the node that first touches it and the
// node that last does.
void log_peak(const GraphImpl& g, const std::vector<Interval>& intervals, const std::vector<int>& ids) {
  int peak_node = 0;
  size_t peak = 0;
  for (int k = 0; k < static_cast<int>(g.nodes.size()); ++k) {
    size_t live = 0;
    for (const Interval& it : intervals)
      if (it.first <= k && k <= it.last) live += aligned(std::max<size_t>(it.bytes, 1));
    if (live > peak) {
      peak = live;
      peak_node = k;
    }
  }
  std::fprintf(stderr, "loom::compile plan: arena %zu bytes, lower bound %zu, %zu nodes; peak %zu bytes at node %d (%s)\n",
               g.plan.arena_bytes, g.plan.lower_bound_bytes, g.nodes.size(), peak, peak_node,
               g.nodes[static_cast<size_t>(peak_node)].name().c_str());
  std::vector<size_t> live;
  for (size_t q = 0; q < intervals.size(); ++q)
    if (intervals[q].first <= peak_node && peak_node <= intervals[q].last) live.push_back(q);
  std::sort(live.begin(), live.end(), [&](size_t a, size_t b) { return intervals[a].bytes > intervals[b].bytes; });
  for (size_t q : live) {
    const Interval& it = intervals[q];
    const BufferInfo& b = g.buffers[static_cast<size_t>(ids[q])];
    std::fprintf(stderr, "  buffer %d %s %zu bytes: nodes %d (%s) .. %d (%s)\n", ids[q],
                 b.kind == BufferKind::Workspace ? "workspace" : "intermediate", it.bytes, it.first,
                 g.nodes[static_cast<size_t>(it.first)].name().c_str(), it.last,
                 g.nodes[static_cast<size_t>(it.last)].name().c_str());
  }
}

}  // namespace

// Unary and binary arithmetic, Where and the backward masks: element k of
// the output from element k of each input, one dtype throughout.
bool elementwise_kernel(OpKind op) {
  switch (op) {
    case OpKind::Neg: case OpKind::Exp: case OpKind::Log: case OpKind::Log1p: case OpKind::Sqrt:
    case OpKind::Rsqrt: case OpKind::Abs: case OpKind::Sign: case OpKind::Sin: case OpKind::Cos:
    case OpKind::Tanh: case OpKind::Erf: case OpKind::Sigmoid: case OpKind::Relu: case OpKind::LeakyRelu:
    case OpKind::Elu: case OpKind::Gelu: case OpKind::GeluTanh: case OpKind::Silu: case OpKind::Softplus:
    case OpKind::Clamp: case OpKind::Add: case OpKind::Sub: case OpKind::Mul: case OpKind::Div:
    case OpKind::Pow: case OpKind::Maximum: case OpKind::Minimum: case OpKind::Where:
    case OpKind::ThresholdBackward: case OpKind::GeluBackward:
      return true;
    default:
      return false;
  }
}

size_t assign_offsets(const std::vector<Interval>& intervals, std::vector<int64_t>& offsets) {
  const size_t n = intervals.size();
  offsets.assign(n, -1);
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (intervals[a].bytes != intervals[b].bytes) return intervals[a].bytes > intervals[b].bytes;
    return intervals[a].first < intervals[b].first;
  });
  std::vector<size_t> placed;
  size_t arena = 0;
  std::vector<std::pair<size_t, size_t>> busy;  // [begin, end) of placed buffers live at the same time
  for (size_t idx : order) {
    const Interval& it = intervals[idx];
    const size_t need = aligned(std::max<size_t>(it.bytes, 1));
    busy.clear();
    for (size_t p : placed) {
      const Interval& q = intervals[p];
      if (q.last < it.first || it.last < q.first) continue;
      const auto at = static_cast<size_t>(offsets[p]);
      busy.emplace_back(at, at + aligned(std::max<size_t>(q.bytes, 1)));
    }
    std::sort(busy.begin(), busy.end());
    // Best fit: the smallest gap that holds it; else above everything live.
    size_t best = SIZE_MAX, best_gap = SIZE_MAX, cursor = 0;
    for (const auto& [b, e] : busy) {
      if (b > cursor && b - cursor >= need && b - cursor < best_gap) {
        best = cursor;
        best_gap = b - cursor;
      }
      cursor = std::max(cursor, e);
    }
    if (best == SIZE_MAX) best = cursor;
    offsets[idx] = static_cast<int64_t>(best);
    arena = std::max(arena, best + need);
    placed.push_back(idx);
  }
  return arena;
}

size_t liveness_lower_bound(const std::vector<Interval>& intervals) {
  int last = -1;
  for (const Interval& it : intervals) last = std::max(last, it.last);
  std::vector<int64_t> delta(static_cast<size_t>(last + 2), 0);
  for (const Interval& it : intervals) {
    const auto b = static_cast<int64_t>(aligned(std::max<size_t>(it.bytes, 1)));
    delta[static_cast<size_t>(it.first)] += b;
    delta[static_cast<size_t>(it.last + 1)] -= b;
  }
  int64_t live = 0, peak = 0;
  for (int64_t d : delta) {
    live += d;
    peak = std::max(peak, live);
  }
  return static_cast<size_t>(peak);
}

void plan_memory(GraphImpl& g, bool in_place) {
  g.plan.buffers_in_place = in_place ? reuse_in_place(g) : 0;
  compute_liveness(g);
  std::vector<Interval> intervals;
  std::vector<int> ids;
  size_t persistent = 0, inputs = 0, outputs = 0;
  for (size_t b = 0; b < g.buffers.size(); ++b) {
    BufferInfo& info = g.buffers[b];
    info.arena_offset = -1;
    if (info.first < 0) continue;
    switch (info.kind) {
      case BufferKind::Intermediate:
      case BufferKind::Workspace:
        intervals.push_back({info.first, info.last, info.nbytes});
        ids.push_back(static_cast<int>(b));
        break;
      case BufferKind::Input: inputs += info.nbytes; break;
      case BufferKind::Output: outputs += info.nbytes; break;
      default: persistent += info.nbytes; break;
    }
  }
  std::vector<int64_t> offsets;
  g.plan.arena_bytes = assign_offsets(intervals, offsets);
  g.plan.lower_bound_bytes = liveness_lower_bound(intervals);
  for (size_t k = 0; k < ids.size(); ++k) g.buffers[static_cast<size_t>(ids[k])].arena_offset = offsets[k];
  g.plan.buffers_in_arena = static_cast<int64_t>(ids.size());
  g.plan.persistent_bytes = persistent;
  g.plan.input_bytes = inputs;
  g.plan.output_bytes = outputs;
  if (const char* log = std::getenv("LOOM_LOG_PLAN"); log != nullptr && *log != '\0' && *log != '0')
    log_peak(g, intervals, ids);
}

}  // namespace loom::jit::detail
