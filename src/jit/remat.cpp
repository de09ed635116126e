// The recompute pass (Note [Recomputing activations]).
//
// Note [Recomputing activations]
// A training step's peak memory is set by the activations that the forward
// writes and the backward reads much later. The pass trades compute for
// that memory on the captured graph: an activation is dropped after its
// last forward use and written again, by a copy of the forward nodes that
// produce it, right before the backward's first use of it. The copies run
// the same kernels on the same inputs (the same random draw too, so
// dropout masks match), so the gradients are bitwise those of the step
// without recomputation: no summation order changes.
//
// A copy is valid when what it reads holds, at the time it runs, what the
// original read: a parameter the optimizer has not written yet, a constant,
// or an intermediate that is still (or, for a checkpoint, kept) alive and
// not written in between. Nodes that write state (BatchNorm's running
// statistics are updated by their own in-place nodes, which are never
// copied), host checks, and the backward's nodes are never copied.
//
// Two policies:
// - Cheap recompute (on by default): an activation whose only producer is
//   an elementwise or normalization kernel whose inputs are alive anyway at
//   the backward's first use is recomputed there (GELU's output from the
//   GEMM output that GELU's backward keeps anyway; LayerNorm's output from
//   its input). GEMM, convolution and attention outputs are kept.
// - Segments (activation checkpointing, Chen et al. 2016): the forward is
//   cut into `segments` runs holding equal numbers of heavy nodes (GEMM,
//   convolution, attention), sqrt(heavy nodes) by default. Buffers that
//   cross a cut are checkpoints and are kept; every other activation of a
//   segment is recomputed, the whole segment at once, when the backward
//   first needs one of them. The last segment is not cut (the backward
//   starts by using it). A memory budget raises the number of segments
//   until the planned arena fits or every heavy node is its own segment.
#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "jit/graph.h"

namespace loom::jit::detail {

namespace {

bool cheap(OpKind op) {
  switch (op) {
    case OpKind::Copy: case OpKind::Neg: case OpKind::Exp: case OpKind::Log: case OpKind::Log1p:
    case OpKind::Sqrt: case OpKind::Rsqrt: case OpKind::Abs: case OpKind::Sign: case OpKind::Sin:
    case OpKind::Cos: case OpKind::Tanh: case OpKind::Erf: case OpKind::Sigmoid: case OpKind::Relu:
    case OpKind::LeakyRelu: case OpKind::Elu: case OpKind::Gelu: case OpKind::GeluTanh: case OpKind::Silu:
    case OpKind::Softplus: case OpKind::Clamp: case OpKind::Add: case OpKind::Sub: case OpKind::Mul:
    case OpKind::Div: case OpKind::Maximum: case OpKind::Minimum: case OpKind::Where:
    case OpKind::LayerNorm: case OpKind::Softmax: case OpKind::LogSoftmax:
      return true;
    default:
      return false;
  }
}

bool heavy(OpKind op) {
  switch (op) {
    case OpKind::Linear: case OpKind::Bmm: case OpKind::Conv2d: case OpKind::ConvTranspose2d:
    case OpKind::Attention: case OpKind::QuantizedLinear:
      return true;
    default:
      return false;
  }
}

struct Rewriter {
  GraphImpl& g;
  int B = 0;  // the first backward node
  std::vector<std::vector<int>> writers;

  explicit Rewriter(GraphImpl& graph) : g(graph) { refresh(); }

  void refresh() {
    compute_liveness(g);
    B = static_cast<int>(g.nodes.size());
    for (size_t k = 0; k < g.nodes.size(); ++k)
      if (g.nodes[k].backward) {
        B = static_cast<int>(k);
        break;
      }
    writers.assign(g.buffers.size(), {});
    for (size_t k = 0; k < g.nodes.size(); ++k)
      for (int b : g.writes(g.nodes[k])) writers[static_cast<size_t>(b)].push_back(static_cast<int>(k));
  }

  bool written_between(int b, int after, int before) const {
    for (int w : writers[static_cast<size_t>(b)])
      if (w > after && w < before) return true;
    return false;
  }

  // Activations: intermediates a forward node writes that a backward node uses.
  // Returns buffer -> the backward's first use.
  std::map<int, int> activations() const {
    std::map<int, int> out;
    for (size_t k = static_cast<size_t>(B); k < g.nodes.size(); ++k) {
      const NodeInfo& n = g.nodes[k];
      auto use = [&](int b) {
        const BufferInfo& info = g.buffers[static_cast<size_t>(b)];
        if (info.kind != BufferKind::Intermediate || info.owned) return;
        const auto& ws = writers[static_cast<size_t>(b)];
        if (ws.empty() || ws.front() >= B) return;
        out.emplace(b, static_cast<int>(k));
      };
      for (int b : g.reads(n)) use(b);
      for (int b : g.writes(n)) use(b);
    }
    return out;
  }

  // The forward nodes that rewrite `want` at node t, or empty when they
  // cannot: `inside(b)` says which intermediates may be recomputed along the
  // way; `keep(b)` which may be read at t even if nothing else reads them
  // then (checkpoints). Anything else must be alive at t anyway.
  template <class Inside, class Keep>
  std::vector<int> closure(const std::set<int>& want, int t, Inside inside, Keep keep) const {
    std::set<int> needed(want.begin(), want.end()), nodes;
    std::vector<int> work(want.begin(), want.end());
    while (!work.empty()) {
      const int b = work.back();
      work.pop_back();
      for (int w : writers[static_cast<size_t>(b)]) {
        if (w >= B) {
          if (w < t) return {};  // the backward rewrote it before t
          continue;
        }
        const NodeInfo& n = g.nodes[static_cast<size_t>(w)];
        if (n.kind != NodeKind::Kernel || n.folded) return {};
        for (int o : g.writes(n))
          if (g.buffers[static_cast<size_t>(o)].kind != BufferKind::Intermediate) return {};
        if (!nodes.insert(w).second) continue;
        for (int o : g.writes(n))
          if (needed.insert(o).second) work.push_back(o);
        for (int y : g.reads(n)) {
          if (needed.count(y)) continue;
          const BufferInfo& info = g.buffers[static_cast<size_t>(y)];
          if (info.kind == BufferKind::Intermediate && !info.owned) {
            if (inside(y)) {
              needed.insert(y);
              work.push_back(y);
              continue;
            }
            if (written_between(y, w, t)) return {};
            if (!(info.last >= t || keep(y))) return {};
          } else if (written_between(y, w, t)) {
            return {};  // state the step has written since (the optimizer runs after the backward)
          }
        }
      }
    }
    return {nodes.begin(), nodes.end()};
  }

  // Copies the forward nodes `nodes` (ascending) to just before node t.
  int insert_copies(const std::vector<int>& nodes, int t) {
    std::vector<NodeInfo> block;
    for (int k : nodes) block.push_back(g.nodes[static_cast<size_t>(k)]);
    return insert_block(std::move(block), t);
  }

  // Puts `block` (nodes that rewrite forward values) just before node t,
  // onto fresh buffers, and points every use at or after t of what they
  // write at the fresh ones. Returns how many nodes were inserted.
  int insert_block(std::vector<NodeInfo> block, int t) {
    std::map<int, int> buf_map;  // original buffer -> its copy
    for (const NodeInfo& n : block)
      for (int b : g.writes(n))
        if (!buf_map.count(b)) {
          BufferInfo copy = g.buffers[static_cast<size_t>(b)];
          copy.captured.reset();
          copy.arena_offset = -1;
          copy.merged_into = -1;
          g.buffers.push_back(std::move(copy));
          buf_map[b] = static_cast<int>(g.buffers.size()) - 1;
        }
    std::map<int, int> val_map;
    auto remap = [&](int v) {
      if (v < 0) return v;
      const auto it = buf_map.find(g.values[static_cast<size_t>(v)].buffer);
      if (it == buf_map.end()) return v;
      auto found = val_map.find(v);
      if (found != val_map.end()) return found->second;
      ValueInfo copy = g.values[static_cast<size_t>(v)];
      copy.buffer = it->second;
      g.values.push_back(std::move(copy));
      const int id = static_cast<int>(g.values.size()) - 1;
      val_map[v] = id;
      return id;
    };
    for (NodeInfo& n : block) {
      for (int& v : n.in) v = remap(v);
      for (int& v : n.out) v = remap(v);
      if (n.workspace >= 0) {
        BufferInfo w = g.buffers[static_cast<size_t>(n.workspace)];
        w.arena_offset = -1;
        g.buffers.push_back(std::move(w));
        n.workspace = static_cast<int>(g.buffers.size()) - 1;
      }
      n.recompute = true;
      n.backward = true;
    }
    for (size_t k = static_cast<size_t>(t); k < g.nodes.size(); ++k) {
      for (int& v : g.nodes[k].in) v = remap(v);
      for (int& v : g.nodes[k].out) v = remap(v);
    }
    const int count = static_cast<int>(block.size());
    g.nodes.insert(g.nodes.begin() + t, std::make_move_iterator(block.begin()), std::make_move_iterator(block.end()));
    refresh();
    return count;
  }
};

}  // namespace

int recompute_cheap(GraphImpl& g) {
  Rewriter r(g);
  int inserted = 0;
  // Latest first use first: inserting copies shifts only later nodes.
  std::map<int, int> acts = r.activations();
  std::vector<std::pair<int, int>> order;  // (first backward use, buffer)
  for (auto [b, t] : acts) order.emplace_back(t, b);
  std::sort(order.rbegin(), order.rend());
  for (auto [t, b] : order) {
    const auto& ws = r.writers[static_cast<size_t>(b)];
    if (ws.size() != 1) continue;
    const NodeInfo& p = g.nodes[static_cast<size_t>(ws[0])];
    if (p.kind != NodeKind::Kernel) continue;
    // A GEMM's activation epilogue: its output is, bit for bit, the
    // activation's own kernel applied to the pre-activation output (ops.def),
    // which the activation's backward keeps anyway.
    if (p.op == OpKind::Linear && p.out.size() == 2 && g.values[static_cast<size_t>(p.out[0])].buffer == b &&
        p.i[0] >= 1 && p.i[0] <= 3) {
      const int pre = p.out[1];
      const BufferInfo& pb = g.buffers[static_cast<size_t>(g.values[static_cast<size_t>(pre)].buffer)];
      if (pb.kind == BufferKind::Intermediate && !pb.owned && pb.last >= t &&
          !r.written_between(g.values[static_cast<size_t>(pre)].buffer, ws[0], t)) {
        NodeInfo act;
        act.kind = NodeKind::Kernel;
        act.op = p.i[0] == 1 ? OpKind::Relu : p.i[0] == 2 ? OpKind::Gelu : OpKind::GeluTanh;
        act.in = {pre};
        act.out = {p.out[0]};
        inserted += r.insert_block({std::move(act)}, t);
      }
      continue;
    }
    if (!cheap(p.op)) continue;
    std::vector<int> nodes = r.closure({b}, t, [](int) { return false; }, [](int) { return false; });
    if (nodes.size() != 1) continue;
    inserted += r.insert_copies(nodes, t);
  }
  return inserted;
}

int recompute_segments(GraphImpl& g, int segments) {
  Rewriter r(g);
  std::vector<int> heavy_nodes;
  for (int k = 0; k < r.B; ++k)
    if (g.nodes[static_cast<size_t>(k)].kind == NodeKind::Kernel && heavy(g.nodes[static_cast<size_t>(k)].op))
      heavy_nodes.push_back(k);
  const int h = static_cast<int>(heavy_nodes.size());
  if (h < 2 || r.B >= static_cast<int>(g.nodes.size())) return 0;
  if (segments <= 0) segments = std::max(2, static_cast<int>(std::lround(std::sqrt(static_cast<double>(h)))));
  segments = std::min(segments, h);
  // Segment s starts at the heavy node number s * h / segments.
  std::vector<int> seg_of(static_cast<size_t>(r.B), 0);
  for (int s = 1; s < segments; ++s) {
    const int start = heavy_nodes[static_cast<size_t>(s * h / segments)];
    for (int k = start; k < r.B; ++k) seg_of[static_cast<size_t>(k)] = s;
  }
  auto segment_of_buffer = [&](int b) {
    const auto& ws = r.writers[static_cast<size_t>(b)];
    return ws.empty() || ws.front() >= r.B ? -1 : seg_of[static_cast<size_t>(ws.front())];
  };
  // Checkpoints: intermediates a later segment's forward reads.
  std::set<int> checkpoints;
  for (int k = 0; k < r.B; ++k)
    for (int b : g.reads(g.nodes[static_cast<size_t>(k)])) {
      const int s = segment_of_buffer(b);
      if (s >= 0 && s < seg_of[static_cast<size_t>(k)]) checkpoints.insert(b);
    }
  const std::map<int, int> acts = r.activations();
  int inserted = 0;
  // The backward reaches the first segment last: its copies go in first, so
  // that inserting them shifts no node a later segment still points at.
  for (int s = 0; s + 1 < segments; ++s) {
    std::set<int> want;
    int t = static_cast<int>(g.nodes.size());
    for (auto [b, first_use] : acts)
      if (segment_of_buffer(b) == s && !checkpoints.count(b)) {
        want.insert(b);
        t = std::min(t, first_use);
      }
    if (want.empty()) continue;
    auto inside = [&](int y) { return segment_of_buffer(y) == s && !checkpoints.count(y); };
    auto keep = [&](int y) { return checkpoints.count(y) > 0; };
    std::vector<int> nodes = r.closure(want, t, inside, keep);
    if (nodes.empty()) continue;
    inserted += r.insert_copies(nodes, t);
  }
  g.plan.segments = segments;
  return inserted;
}

}  // namespace loom::jit::detail
