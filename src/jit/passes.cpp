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
// - Zero fills forwarded: zero_grad(false) fills a gradient with +0 from a
//   Fill, and backward's accumulation then adds to it. The Add reads the
//   fill's source (the same zeros, broadcast) instead of the gradient, so
//   the fill, now overwritten before anything reads it, is dropped, and the
//   copy of the sum into the gradient goes too (below): the Add writes the
//   gradient. The Add reads the same values, so the bits are eager's.
// - Constant folding: a node that reads only constants and state that the
//   graph never writes (the frozen parameters of an inference graph), and
//   writes only intermediates that nothing else writes, is run once when
//   the graph is instantiated instead of at each replay; what it writes
//   becomes a constant. The versions of the frozen state are checked at
//   each replay, and the folded nodes run again if host code wrote it.
#include <algorithm>
#include <cmath>
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

int forward_zero_fills(GraphImpl& g) {
  std::vector<int> writers(g.buffers.size(), 0), fill(g.buffers.size(), -1);
  for (size_t k = 0; k < g.nodes.size(); ++k)
    for (int b : g.writes(g.nodes[k])) {
      ++writers[static_cast<size_t>(b)];
      if (g.nodes[k].kind == NodeKind::Kernel && g.nodes[k].op == OpKind::Fill) fill[static_cast<size_t>(b)] = static_cast<int>(k);
    }
  // +0.0 in a floating-point buffer that one Fill writes and nothing else.
  auto positive_zero = [&](int v) {
    const ValueInfo& x = g.values[static_cast<size_t>(v)];
    const auto b = static_cast<size_t>(x.buffer);
    if (writers[b] != 1 || fill[b] < 0 || !is_floating_point(x.dtype)) return false;
    const NodeInfo& f = g.nodes[static_cast<size_t>(fill[b])];
    return f.f[0] == 0.0 && !std::signbit(f.f[0]);
  };
  auto on = [&](int v, int buffer) { return v >= 0 && g.values[static_cast<size_t>(v)].buffer == buffer; };
  // The next node after k that reads or writes `buffer` (-1: none).
  auto next_use = [&](size_t k, int buffer) {
    for (size_t j = k + 1; j < g.nodes.size(); ++j) {
      const NodeInfo& n = g.nodes[j];
      for (int v : n.in) if (on(v, buffer)) return static_cast<int>(j);
      for (int v : n.out) if (on(v, buffer)) return static_cast<int>(j);
      if (n.workspace == buffer) return static_cast<int>(j);
    }
    return -1;
  };
  std::vector<bool> drop(g.nodes.size(), false);
  int rewritten = 0;
  for (size_t k = 0; k < g.nodes.size(); ++k) {
    const NodeInfo& fill_copy = g.nodes[k];
    if (fill_copy.kind != NodeKind::Kernel || fill_copy.op != OpKind::Copy) continue;
    const int zeros = fill_copy.in[0], dst = fill_copy.out[0];
    const ValueInfo& d = g.values[static_cast<size_t>(dst)];
    const BufferKind kind = g.buffers[static_cast<size_t>(d.buffer)].kind;
    if ((kind != BufferKind::State && kind != BufferKind::NewState) || !whole_contiguous(g, dst) ||
        !positive_zero(zeros) || g.values[static_cast<size_t>(zeros)].dtype != d.dtype)
      continue;
    const int j = next_use(k, d.buffer);
    if (j < 0) continue;
    NodeInfo& add = g.nodes[static_cast<size_t>(j)];
    if (add.kind != NodeKind::Kernel || add.op != OpKind::Add || on(add.out[0], d.buffer)) continue;
    // The operand that reads the state whole, as the zeros it holds (the
    // Copy's own source, already expanded to the state's shape).
    const int t = on(add.in[0], d.buffer) ? 0 : 1;
    if (on(add.in[1 - t], d.buffer) || !whole_contiguous(g, add.in[static_cast<size_t>(t)]) ||
        g.values[static_cast<size_t>(add.in[static_cast<size_t>(t)])].sizes != d.sizes)
      continue;
    add.in[static_cast<size_t>(t)] = zeros;
    ++rewritten;
    // The zero fill is dead when a Copy next overwrites the state whole.
    const int w = next_use(k, d.buffer);
    if (w < 0) continue;
    const NodeInfo& over = g.nodes[static_cast<size_t>(w)];
    if (over.kind == NodeKind::Kernel && over.op == OpKind::Copy && on(over.out[0], d.buffer) &&
        whole_contiguous(g, over.out[0]) && !on(over.in[0], d.buffer))
      drop[k] = true;
  }
  std::vector<NodeInfo> kept;
  for (size_t k = 0; k < g.nodes.size(); ++k)
    if (!drop[k]) kept.push_back(std::move(g.nodes[k]));
  g.nodes = std::move(kept);
  compute_liveness(g);
  return rewritten;
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
