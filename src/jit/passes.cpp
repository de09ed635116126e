// Graph passes (Note [Graph passes]).
//
// Note [Graph passes]
// The passes work on buffers, the unit that aliasing is explicit in (Note
// [The graph IR]), and keep the nodes in their recorded order, which stays
// a valid schedule:
// - Dead code: a node that writes only intermediates that no later node
//   reads is dropped (a forward value nobody used; grads of inputs that
//   need none). Host checks and writes to inputs, state and outputs are
//   always kept. A dropped random node's draw is still reserved at replay,
//   so the generator advances as eager execution advances it.
// - No-op copies: a Copy of a value onto itself is dropped; a Copy into a
//   fresh intermediate from an intermediate that dies at the copy (same
//   dtype, whole contiguous buffers) is dropped by letting the output take
//   over the input's buffer; and a Copy that overwrites state whole from
//   such an intermediate (the gradient backward assigns to a parameter whose
//   .grad was set to none) is dropped by letting the intermediate's only
//   writer write the state directly.
// - Constant folding: a node that reads only constants and state that the
//   graph never writes (the frozen parameters of an inference graph), and
//   writes only intermediates that nothing else writes, is run once when
//   the graph is instantiated instead of at each replay; what it writes
//   becomes a constant. The versions of the frozen state are checked at
//   each replay, and the folded nodes run again if host code wrote it.
#include <algorithm>
#include <set>

#include "jit/graph.h"

namespace loom::jit::detail {

namespace {

bool whole_contiguous(const GraphImpl& g, int v) {
  const ValueInfo& x = g.values[static_cast<size_t>(v)];
  const BufferInfo& b = g.buffers[static_cast<size_t>(x.buffer)];
  if (x.offset != 0) return false;
  int64_t expect = 1;
  for (int64_t d = static_cast<int64_t>(x.sizes.size()) - 1; d >= 0; --d) {
    const auto ud = static_cast<size_t>(d);
    if (x.sizes[ud] != 1 && x.strides[ud] != expect) return false;
    expect *= x.sizes[ud];
  }
  return static_cast<size_t>(shape_numel(x.sizes)) * element_size(x.dtype) == b.nbytes;
}

// Every value on buffer `from` moves to buffer `to` (same bytes, same layout).
void rename_buffer(GraphImpl& g, int from, int to) {
  for (ValueInfo& v : g.values)
    if (v.buffer == from) v.buffer = to;
  g.buffers[static_cast<size_t>(from)].merged_into = to;
  g.buffers[static_cast<size_t>(from)].first = g.buffers[static_cast<size_t>(from)].last = -1;
}

bool is_scratch(BufferKind k) { return k == BufferKind::Intermediate || k == BufferKind::Workspace; }

}  // namespace

int eliminate_dead_code(GraphImpl& g) {
  std::vector<bool> needed(g.buffers.size(), false);
  std::vector<bool> keep(g.nodes.size(), false);
  for (size_t r = g.nodes.size(); r-- > 0;) {
    const NodeInfo& n = g.nodes[r];
    bool live = n.kind == NodeKind::HostCheck;
    for (int b : g.writes(n)) live = live || !is_scratch(g.buffers[static_cast<size_t>(b)].kind) || needed[static_cast<size_t>(b)];
    if (!live) continue;
    keep[r] = true;
    for (int b : g.reads(n)) needed[static_cast<size_t>(b)] = true;
  }
  std::vector<NodeInfo> kept;
  int removed = 0;
  for (size_t k = 0; k < g.nodes.size(); ++k) {
    if (keep[k]) kept.push_back(std::move(g.nodes[k]));
    else ++removed;
  }
  g.nodes = std::move(kept);
  compute_liveness(g);
  return removed;
}

int remove_noop_copies(GraphImpl& g) {
  compute_liveness(g);
  std::vector<bool> drop(g.nodes.size(), false);
  auto uses = [&](const NodeInfo& n, int b) {
    for (int r : g.reads(n)) if (r == b) return true;
    for (int w : g.writes(n)) if (w == b) return true;
    return n.workspace == b;
  };
  for (size_t k = 0; k < g.nodes.size(); ++k) {
    const NodeInfo& n = g.nodes[k];
    if (n.kind != NodeKind::Kernel || n.op != OpKind::Copy) continue;
    const int src = n.in[0], dst = n.out[0];
    if (src == dst) {
      drop[k] = true;
      continue;
    }
    const ValueInfo& s = g.values[static_cast<size_t>(src)];
    const ValueInfo& d = g.values[static_cast<size_t>(dst)];
    const int sbuf = s.buffer, dbuf = d.buffer;
    const BufferInfo& sb = g.buffers[static_cast<size_t>(sbuf)];
    const BufferInfo& db = g.buffers[static_cast<size_t>(dbuf)];
    const int ki = static_cast<int>(k);
    if (sbuf == dbuf || sb.kind != BufferKind::Intermediate || sb.owned || sb.last != ki || s.dtype != d.dtype ||
        s.sizes != d.sizes || !whole_contiguous(g, src) || !whole_contiguous(g, dst))
      continue;
    if (db.kind == BufferKind::Intermediate && db.first == ki) {
      // Into a fresh intermediate: the output takes over the input's buffer.
      rename_buffer(g, dbuf, sbuf);
      drop[k] = true;
    } else if ((db.kind == BufferKind::State || db.kind == BufferKind::NewState) && !db.owned) {
      // Into state it overwrites whole (a gradient backward assigns): the
      // node that wrote the input writes the state instead, when that is
      // the input's only writer and nothing touches the state in between.
      int writer = -1, writers = 0;
      for (int j = sb.first; j < ki; ++j)
        for (int w : g.writes(g.nodes[static_cast<size_t>(j)]))
          if (w == sbuf) {
            writer = j;
            ++writers;
          }
      if (writers != 1 || writer != sb.first || g.nodes[static_cast<size_t>(writer)].folded) continue;
      bool touched = false;
      for (int j = writer; j < ki && !touched; ++j) touched = uses(g.nodes[static_cast<size_t>(j)], dbuf);
      if (touched) continue;
      rename_buffer(g, sbuf, dbuf);
      drop[k] = true;
    } else {
      continue;
    }
    compute_liveness(g);
  }
  std::vector<NodeInfo> kept;
  int removed = 0;
  for (size_t k = 0; k < g.nodes.size(); ++k) {
    if (drop[k]) ++removed;
    else kept.push_back(std::move(g.nodes[k]));
  }
  g.nodes = std::move(kept);
  compute_liveness(g);
  return removed;
}

int fold_constants(GraphImpl& g) {
  // Buffers some node writes, and how many nodes write each.
  std::vector<int> writers(g.buffers.size(), 0);
  for (const NodeInfo& n : g.nodes)
    for (int b : g.writes(n)) ++writers[static_cast<size_t>(b)];
  std::vector<bool> frozen(g.buffers.size(), false);
  for (size_t b = 0; b < g.buffers.size(); ++b) {
    const BufferInfo& info = g.buffers[b];
    frozen[b] = (info.kind == BufferKind::Constant) || (info.kind == BufferKind::State && writers[b] == 0);
  }
  std::set<int> state_read;
  int folded = 0;
  for (NodeInfo& n : g.nodes) {
    if (n.kind != NodeKind::Kernel || n.rng >= 0 || n.hyper) continue;
    bool ok = !n.out.empty();
    for (int b : g.reads(n)) ok = ok && frozen[static_cast<size_t>(b)];
    for (int b : g.writes(n))
      ok = ok && g.buffers[static_cast<size_t>(b)].kind == BufferKind::Intermediate && writers[static_cast<size_t>(b)] == 1;
    if (!ok) continue;
    n.folded = true;
    ++folded;
    for (int b : g.reads(n))
      if (g.buffers[static_cast<size_t>(b)].kind == BufferKind::State) state_read.insert(b);
    for (int b : g.writes(n)) {
      g.buffers[static_cast<size_t>(b)].kind = BufferKind::Constant;
      frozen[static_cast<size_t>(b)] = true;
    }
  }
  g.frozen.assign(state_read.begin(), state_read.end());
  compute_liveness(g);
  return folded;
}

}  // namespace loom::jit::detail
