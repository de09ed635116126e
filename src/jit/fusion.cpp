// The fusion pass (Note [Fusion]).
//
// Note [Fusion]
// The pass groups kernel nodes of a captured graph into Fused kernels
// (Note [Fused programs] in src/backend/fused_program.h) whose intermediates
// live in registers and cache instead of arena buffers:
// - chains of elementwise ops (unary, binary with broadcasting, Where,
//   comparisons and logical ops, casts between float32 and bool, relu's and
//   gelu's backward forms), over float32 and bool values;
// - with at most one row reduction (Sum, Amax, Amin over trailing dims) per
//   group, tinygrad's rule: the elementwise ops that feed it (Pre), the ops
//   on its per-row result (Row: a norm's sqrt, a mean's scale), and the
//   full-size ops after it that read the row's result broadcast (Post:
//   softmax's division).
//
// Walking the nodes in their recorded order, a node joins an open group when
// it reads a value the group computes, with the very layout the group wrote
// it in (or, after the reduction, its result broadcast along the row), and
// its shape is the group's domain (or the domain's rows, after the
// reduction). Several groups may be open at once, so interleaved chains (an
// LSTM cell's gates) each grow. A group runs where its last member ran, so a
// group closes (its members are final) when another node would see the
// move: a node that reads what an open group wrote, writes what it read or
// wrote, or reads one of its values with another layout. LOOM_LOG_COMPILE=1
// prints each fused group and each reason a group closed.
//
// Inside a group, a value is a register unless something outside the group
// reads it (another node, the step's outputs) or it is not a whole
// intermediate buffer: those are stored. Loads come before stores in each
// phase, so an output may take over a dying input's bytes (the planner's
// in-place reuse) in a group without a reduction.
//
// Bits. The CPU interpreter gives each instruction the bits of its
// primitive's own vectorized kernel, which the unfused kernels take on
// contiguous operands. Ops whose vector and reference code round differently
// (the polynomial exp, tanh, sigmoid, gelu and their users) therefore join
// only when their operands are contiguous, exactly when the unfused kernel
// would also take the vector path; a reduction joins only when its input is
// laid out for the Sum kernel's row path. So a fused graph computes the bits
// of the unfused one, and test_jit's compiled-equals-eager checks hold with
// fusion on.
#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <map>
#include <set>
#include <sstream>

#include "jit/graph.h"

namespace loom::jit::detail {

namespace {

enum class Cls { None, Elementwise, Reduce, Product };

bool loggable() {
  static const bool on = [] {
    const char* e = std::getenv("LOOM_LOG_COMPILE");
    return e != nullptr && *e != '\0' && std::string(e) != "0";
  }();
  return on;
}

// Unary ops whose vector code (polynomial approximations) and reference
// code (std::) give different bits: fused only where the unfused kernel
// takes the vector path too (unary_vector_path).
bool vector_rounded(OpKind op) {
  switch (op) {
    case OpKind::Exp: case OpKind::Log: case OpKind::Tanh: case OpKind::Sigmoid: case OpKind::Gelu:
    case OpKind::GeluTanh: case OpKind::Silu:
      return true;
    default:
      return false;
  }
}

// The elementwise kernels, comparisons, logical ops and casts.
bool elementwise_op(OpKind op) {
  switch (op) {
    case OpKind::Copy: case OpKind::LogicalNot: case OpKind::IsNan: case OpKind::Eq: case OpKind::Ne:
    case OpKind::Lt: case OpKind::Le: case OpKind::Gt: case OpKind::Ge: case OpKind::LogicalAnd:
    case OpKind::LogicalOr:
      return true;
    default:
      return elementwise_kernel(op);
  }
}

bool reads_bool_as_truth(OpKind op) {
  switch (op) {
    case OpKind::Copy: case OpKind::LogicalNot: case OpKind::LogicalAnd: case OpKind::LogicalOr:
    case OpKind::Eq: case OpKind::Ne:
      return true;
    default:
      return false;
  }
}

bool dense(const ValueInfo& x) {
  int64_t expect = 1;
  for (size_t d = x.sizes.size(); d-- > 0;) {
    if (x.sizes[d] != 1 && x.strides[d] != expect) return false;
    expect *= x.sizes[d];
  }
  return true;
}

// Would the unary kernel take its vector path for in -> out (cpu_unary.cpp,
// vec_unary)? Its loop merges dims as make_loop does; the innermost merged
// dim must be contiguous in both, and at least 16 long unless it is the
// only one.
bool unary_vector_path(const ValueInfo& in, const ValueInfo& out) {
  std::vector<int64_t> sizes, si, so;  // merged, innermost first
  for (size_t d = out.sizes.size(); d-- > 0;) {
    if (out.sizes[d] == 1) continue;
    if (!sizes.empty() && in.strides[d] == si.back() * sizes.back() && out.strides[d] == so.back() * sizes.back()) {
      sizes.back() *= out.sizes[d];
    } else {
      sizes.push_back(out.sizes[d]);
      si.push_back(in.strides[d]);
      so.push_back(out.strides[d]);
    }
  }
  if (sizes.empty()) return true;
  return si.front() == 1 && so.front() == 1 && (sizes.size() == 1 || sizes.front() >= 16);
}

bool same_view(const ValueInfo& a, const ValueInfo& b) {
  return a.buffer == b.buffer && a.dtype == b.dtype && a.sizes == b.sizes && a.strides == b.strides &&
         a.offset == b.offset;
}

// The dims of size other than 1 (a reshape that only adds or drops 1s
// keeps the elements where they are).
Shape squeezed(const Shape& s) {
  Shape out;
  for (int64_t d : s)
    if (d != 1) out.push_back(d);
  return out;
}

// Do a and b view the same elements of one buffer the same way, up to dims
// of size 1 ([1,16,256] and [16,256] of one contiguous block)?
bool equivalent_view(const ValueInfo& a, const ValueInfo& b) {
  if (a.buffer != b.buffer || a.dtype != b.dtype || a.offset != b.offset || squeezed(a.sizes) != squeezed(b.sizes))
    return false;
  Shape sa, sb;
  for (size_t d = 0; d < a.sizes.size(); ++d)
    if (a.sizes[d] != 1) sa.push_back(a.strides[d]);
  for (size_t d = 0; d < b.sizes.size(); ++d)
    if (b.sizes[d] != 1) sb.push_back(b.strides[d]);
  return sa == sb;
}

// Does `x` lay its trailing k dims out as one contiguous run (the Sum
// kernel's row path)?
bool rows_layout(const ValueInfo& x, int k) {
  int64_t expect = 1;
  for (size_t d = x.sizes.size(); d-- > x.sizes.size() - static_cast<size_t>(k);) {
    if (x.sizes[d] != 1 && x.strides[d] != expect) return false;
    expect *= x.sizes[d];
  }
  return true;
}

using Phase = FusedInstr::Phase;

struct Produced {
  int value = -1;  // the value the member wrote
  Phase phase = Phase::Pre;
};

struct Group {
  int id = 0;
  std::vector<int> members;
  std::vector<Phase> phases;  // per member; a reduction is Pre (it ends the Pre phase)
  Shape domain;
  int k = 0;  // reduce dims, 0 until a reduction joins
  int reduce = -1;  // the member that reduces
  int product = -1;  // the Bmm whose epilogue the group is
  std::map<int, Produced> produced;  // buffer -> what a member wrote there
  std::set<int> reads;              // buffers read from outside the group
  Shape rows() const { return Shape(domain.begin(), domain.end() - k); }
};

class Fuser {
 public:
  Fuser(GraphImpl& g, bool gemm_epilogues)
      : g_(g), gemm_epilogues_(gemm_epilogues), readers_(g.buffers.size()), writers_(g.buffers.size()), first_write_(g.buffers.size(), -1),
        last_read_(g.buffers.size(), -1) {
    for (size_t n = 0; n < g.nodes.size(); ++n) {
      const int k = static_cast<int>(n);
      for (int b : g.reads(g.nodes[n])) {
        readers_[static_cast<size_t>(b)].push_back(k);
        last_read_[static_cast<size_t>(b)] = k;
      }
      for (int b : g.writes(g.nodes[n])) {
        writers_[static_cast<size_t>(b)].push_back(k);
        if (first_write_[static_cast<size_t>(b)] < 0) first_write_[static_cast<size_t>(b)] = k;
      }
    }
    for (int v : g.outputs) returned_.insert(g.values[static_cast<size_t>(v)].buffer);
  }

  int run() {
    for (size_t n = 0; n < g_.nodes.size(); ++n) visit(static_cast<int>(n));
    while (!open_.empty()) close(0, "end of the graph");
    if (fused_ == 0) return 0;
    std::vector<NodeInfo> nodes;
    for (size_t n = 0; n < g_.nodes.size(); ++n) {
      auto it = replacement_.find(static_cast<int>(n));
      if (it != replacement_.end()) nodes.push_back(std::move(it->second));
      else if (!removed_.count(static_cast<int>(n))) nodes.push_back(std::move(g_.nodes[n]));
    }
    g_.nodes = std::move(nodes);
    compute_liveness(g_);
    return fused_;
  }

 private:
  const ValueInfo& val(int v) const { return g_.values[static_cast<size_t>(v)]; }
  const NodeInfo& node(int n) const { return g_.nodes[static_cast<size_t>(n)]; }

  // Bool values only where the op reads them as truth values (a Where's
  // condition is its first operand).
  bool bool_operands_ok(const NodeInfo& n) const {
    for (size_t s = 0; s < n.in.size(); ++s)
      if (val(n.in[s]).dtype == kBool && !reads_bool_as_truth(n.op) && !(n.op == OpKind::Where && s == 0))
        return false;
    return true;
  }

  Cls classify(const NodeInfo& n) const {
    if (n.kind != NodeKind::Kernel || n.folded || n.rng >= 0 || n.hyper || n.out.size() != 1) return Cls::None;
    auto ok_dtype = [](DType d) { return d == kFloat32 || d == kBool; };
    const ValueInfo& o = val(n.out[0]);
    // A Copy may write any view (a stacked or concatenated result's slice).
    if (!ok_dtype(o.dtype) || (!dense(o) && n.op != OpKind::Copy)) return Cls::None;
    for (int v : n.in)
      if (v < 0 || !ok_dtype(val(v).dtype)) return Cls::None;
    if (elementwise_op(n.op)) {
      for (int v : n.in)
        if (val(v).sizes != o.sizes) return Cls::None;
      // Registers hold floats: bool values enter only ops that read them
      // as truth values (logical ops, a Where's condition, casts,
      // comparisons), never arithmetic, whose bool kernels saturate.
      if (!bool_operands_ok(n)) return Cls::None;
      if (vector_rounded(n.op) && !unary_vector_path(val(n.in[0]), o)) return Cls::None;
      return Cls::Elementwise;
    }
    if (n.op == OpKind::Bmm && gemm_epilogues_) {  // a GEMM whose epilogue the group becomes
      for (int v : n.in)
        if (val(v).dtype != kFloat32) return Cls::None;
      return o.dtype == kFloat32 && dense(o) && shape_numel(o.sizes) > 0 ? Cls::Product : Cls::None;
    }
    if (n.op == OpKind::Sum || n.op == OpKind::Amax || n.op == OpKind::Amin) {
      const ValueInfo& x = val(n.in[0]);
      const int k = static_cast<int>(n.i[0]);
      if (x.dtype != kFloat32 || o.dtype != kFloat32 || k < 1 || k > static_cast<int>(x.sizes.size()) ||
          shape_numel(x.sizes) == 0 || !rows_layout(x, k))
        return Cls::None;
      return Cls::Reduce;
    }
    return Cls::None;
  }

  // Can node n join group G? Sets the member's phase; else says why not.
  bool joins(const Group& G, int n, Cls c, Phase& phase, std::string& why) const {
    const NodeInfo& nd = node(n);
    bool connected = false;
    for (int v : nd.in)
      if (G.produced.count(val(v).buffer)) connected = true;
    if (!connected) return false;
    const ValueInfo& o = val(nd.out[0]);
    if (c == Cls::Product) return false;  // a product only starts a group
    if (c == Cls::Reduce) {
      if (G.k > 0 || G.product >= 0) {
        why = G.k > 0 ? "a second reduction" : "a reduction after a product";
        return false;
      }
      const ValueInfo& x = val(nd.in[0]);
      if (x.sizes != G.domain) {
        why = "a reduction of another shape";
        return false;
      }
      phase = Phase::Pre;
    } else if (G.k == 0) {
      if (squeezed(o.sizes) != squeezed(G.domain)) {
        why = "another shape " + dims(o.sizes) + " than the group's " + dims(G.domain);
        return false;
      }
      phase = Phase::Pre;
    } else if (o.sizes == G.rows()) {
      phase = Phase::Row;
    } else if (o.sizes == G.domain) {
      phase = Phase::Post;
    } else {
      why = "another shape " + dims(o.sizes) + " than the group's " + dims(G.domain);
      return false;
    }
    for (int v : nd.in) {
      auto it = G.produced.find(val(v).buffer);
      if (it == G.produced.end()) continue;
      const Produced& p = it->second;
      if (same_view(val(v), val(p.value)) || (G.k == 0 && equivalent_view(val(v), val(p.value)))) {
        // Pre feeds Pre, the reduction and Post; Row feeds Row.
        const bool fits = p.phase == Phase::Row ? phase == Phase::Row : phase != Phase::Row;
        if (fits && (c != Cls::Reduce || p.phase == Phase::Pre)) continue;
      } else if (phase == Phase::Post && p.phase == Phase::Row && broadcast_of(val(v), val(p.value), G.k)) {
        continue;
      }
      why = "it reads " + g_.value_str(v) + " in a layout the group did not write";
      return false;
    }
    if (G.produced.count(val(nd.out[0]).buffer) || G.reads.count(val(nd.out[0]).buffer)) {
      why = "it writes a buffer the group uses";
      return false;
    }
    // The group runs where its last member runs, so what its members read
    // lives until then. An intermediate made after the group began and read
    // for the last time by a member so far would live longer: a chain that
    // accumulates values made one after another (a gradient summed over
    // time steps) would keep every one of them. Such a node starts a new group.
    for (int b : G.reads) {
      const BufferInfo& info = g_.buffers[static_cast<size_t>(b)];
      if (info.kind == BufferKind::Intermediate && first_write_[static_cast<size_t>(b)] > G.members.front() &&
          last_read_[static_cast<size_t>(b)] < n) {
        why = "joining would keep %" + std::to_string(b) + " (a buffer made inside the group's span) alive longer";
        return false;
      }
    }
    return true;
  }

  // Is x the row value r broadcast along the k trailing dims?
  static bool broadcast_of(const ValueInfo& x, const ValueInfo& r, int k) {
    if (x.buffer != r.buffer || x.offset != r.offset || x.sizes.size() != r.sizes.size() + static_cast<size_t>(k))
      return false;
    for (size_t d = 0; d < r.sizes.size(); ++d)
      if (x.sizes[d] != r.sizes[d] || (r.sizes[d] != 1 && x.strides[d] != r.strides[d])) return false;
    for (size_t d = r.sizes.size(); d < x.sizes.size(); ++d)
      if (x.strides[d] != 0 && x.sizes[d] != 1) return false;
    return true;
  }

  // Does node n touch group G in a way that fixes G's members (n must see
  // G's writes, or G must not see n's)?
  bool conflicts(const Group& G, int n) const {
    const NodeInfo& nd = node(n);
    for (int b : g_.reads(nd))
      if (G.produced.count(b)) return true;
    for (int b : g_.writes(nd))
      if (G.produced.count(b) || G.reads.count(b)) return true;
    return false;
  }

  void add(Group& G, int n, Phase phase, Cls c) {
    const NodeInfo& nd = node(n);
    G.members.push_back(n);
    G.phases.push_back(phase);
    if (c == Cls::Reduce) {
      G.k = static_cast<int>(nd.i[0]);
      G.reduce = n;
    }
    if (c == Cls::Product) G.product = n;
    for (int v : nd.in)
      if (!G.produced.count(val(v).buffer)) G.reads.insert(val(v).buffer);
    G.produced[val(nd.out[0]).buffer] = {nd.out[0], c == Cls::Reduce ? Phase::Row : phase};
  }

  // Does node n read a value group G computes?
  bool reads_from(const Group& G, int n) const {
    for (int v : node(n).in)
      if (G.produced.count(val(v).buffer)) return true;
    return false;
  }

  // The open groups `which` as one group (a node that reads values of
  // several joins them all: the two operands of a product, each its own
  // chain so far). They must share a domain and hold at most one reduction;
  // they run where the node runs, after every member of each.
  bool merge(const std::vector<size_t>& which, Group& m, std::string& why) const {
    m = open_[which.back()];
    for (size_t w = 0; w + 1 < which.size(); ++w) {
      const Group& G = open_[which[w]];
      const bool same_domain = G.k == 0 && m.k == 0 ? squeezed(G.domain) == squeezed(m.domain) : G.domain == m.domain;
      if (!same_domain || (G.k > 0 && m.k > 0) || (G.product >= 0 && m.product >= 0) ||
          (G.product >= 0 && m.k > 0) || (m.product >= 0 && G.k > 0)) {
        why = "it reads values of groups that cannot merge (domains " + dims(G.domain) + " and " + dims(m.domain) + ")";
        return false;
      }
      if (G.k > 0) {
        m.k = G.k;
        m.reduce = G.reduce;
      }
      if (G.product >= 0) {
        m.product = G.product;
        m.domain = G.domain;  // the product's (batch, M, N)
      }
      m.members.insert(m.members.end(), G.members.begin(), G.members.end());
      m.phases.insert(m.phases.end(), G.phases.begin(), G.phases.end());
      m.produced.insert(G.produced.begin(), G.produced.end());
      m.reads.insert(G.reads.begin(), G.reads.end());
    }
    // A group that runs later than it would alone keeps what it reads
    // alive until then: refused when that would outlive its last reader
    // (the running sum of a chain of products keeping each product). Only
    // the group that runs last moves nowhere.
    int latest = -1;
    for (size_t w : which) latest = std::max(latest, open_[w].members.back());
    for (size_t w : which) {
      const Group& G = open_[w];
      if (G.members.back() == latest) continue;
      for (int b : G.reads) {
        const BufferInfo& info = g_.buffers[static_cast<size_t>(b)];
        if (info.kind == BufferKind::Intermediate && last_read_[static_cast<size_t>(b)] <= G.members.back()) {
          why = "merging would keep %" + std::to_string(b) + " alive past its last reader";
          return false;
        }
      }
    }
    // Members in node order, which is a valid order of their instructions.
    std::vector<size_t> order(m.members.size());
    for (size_t k = 0; k < order.size(); ++k) order[k] = k;
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return m.members[a] < m.members[b]; });
    std::vector<int> members;
    std::vector<Phase> phases;
    for (size_t k : order) {
      members.push_back(m.members[k]);
      phases.push_back(m.phases[k]);
    }
    m.members = std::move(members);
    m.phases = std::move(phases);
    return true;
  }

  void visit(int n) {
    const Cls c = classify(node(n));
    if (c != Cls::None) {
      std::vector<size_t> touched;
      for (size_t j = 0; j < open_.size(); ++j)
        if (reads_from(open_[j], n)) touched.push_back(j);
      Group m;
      Phase phase{};
      std::string why;
      if (!touched.empty() && merge(touched, m, why) && joins(m, n, c, phase, why)) {
        for (size_t w = touched.size(); w-- > 0;) open_.erase(open_.begin() + static_cast<std::ptrdiff_t>(touched[w]));
        // Other open groups it touches (it overwrites what they read) are fixed first.
        for (size_t q = open_.size(); q-- > 0;)
          if (conflicts(open_[q], n)) close(q, reason(n, "writes what the group reads"));
        add(m, n, phase, c);
        open_.push_back(std::move(m));
        return;
      }
      for (size_t w = touched.size(); w-- > 0;) close(touched[w], reason(n, why));
    }
    for (size_t q = open_.size(); q-- > 0;)
      if (conflicts(open_[q], n)) close(q, reason(n, "uses a value of it"));
    if (c == Cls::None) return;
    Group G;
    G.id = next_id_++;
    const NodeInfo& nd = node(n);
    G.domain = c == Cls::Reduce ? val(nd.in[0]).sizes : val(nd.out[0]).sizes;  // a product's: (batch, M, N)
    add(G, n, Phase::Pre, c);
    open_.push_back(std::move(G));
    if (open_.size() > kMaxOpen) close(0, "too many chains open at once");
  }

  std::string reason(int n, const std::string& why) const {
    return "node " + std::to_string(n) + " (" + node(n).name() + "): " + why;
  }

  // Is buffer b's value needed outside group G (or not a whole intermediate)?
  bool escapes(const Group& G, int b, const Produced& p) const {
    const BufferInfo& info = g_.buffers[static_cast<size_t>(b)];
    if (info.kind != BufferKind::Intermediate || info.owned || returned_.count(b)) return true;
    const ValueInfo& x = val(p.value);
    if (x.offset != 0 || !dense(x) ||
        static_cast<size_t>(shape_numel(x.sizes)) * element_size(x.dtype) != info.nbytes)
      return true;
    std::set<int> members(G.members.begin(), G.members.end());
    for (int r : readers_[static_cast<size_t>(b)])
      if (!members.count(r)) return true;
    for (int w : writers_[static_cast<size_t>(b)])
      if (!members.count(w)) return true;
    return false;
  }

  void close(size_t j, const std::string& why) {
    Group G = std::move(open_[j]);
    open_.erase(open_.begin() + static_cast<std::ptrdiff_t>(j));
    if (G.members.size() < 2) return;
    if (emit(G) && loggable()) std::cerr << "loom compile: group " << G.id << " closed at " << why << "\n";
  }

  bool emit(const Group& G) {
    auto program = std::make_shared<FusedProgram>();
    program->domain = G.domain;
    program->reduce_dims = G.k;
    std::map<int, int16_t> reg_of_buffer;  // produced buffer -> register
    std::map<int, int16_t> reg_of_load;    // external value -> register
    std::vector<int> inputs, outputs;
    int16_t next = 0;
    std::vector<FusedInstr> loads[3], ops[3], stores[3];
    auto at = [](Phase p) { return static_cast<size_t>(p); };
    program->product = G.product >= 0;
    if (program->product) {  // the GEMM's operands are in0 and in1
      inputs.push_back(node(G.product).in[0]);
      inputs.push_back(node(G.product).in[1]);
    }
    // Full-size operands are addressed with the domain's shape (a view
    // that differs only by dims of size 1 is re-viewed).
    auto full = [&](int v, Phase phase) { return phase == Phase::Row ? v : as_domain(v, G.domain); };
    auto operand = [&](int v, Phase phase) -> int16_t {
      auto it = G.produced.find(val(v).buffer);
      if (it != G.produced.end()) return reg_of_buffer.at(val(v).buffer);
      auto l = reg_of_load.find(v);
      if (l != reg_of_load.end()) return l->second;
      FusedInstr x;
      x.kind = FusedInstr::Kind::Load;
      x.phase = phase;
      x.dst = next++;
      x.a = static_cast<int16_t>(inputs.size());
      inputs.push_back(full(v, phase));
      loads[at(phase)].push_back(x);
      reg_of_load[v] = x.dst;
      return x.dst;
    };
    std::ostringstream names;
    for (size_t m = 0; m < G.members.size(); ++m) {
      const NodeInfo& nd = node(G.members[m]);
      const Phase phase = G.phases[m];
      FusedInstr x;
      x.kind = G.members[m] == G.reduce    ? FusedInstr::Kind::Reduce
               : G.members[m] == G.product ? FusedInstr::Kind::Product
                                           : FusedInstr::Kind::Op;
      x.phase = x.kind == FusedInstr::Kind::Reduce ? Phase::Row : phase;
      x.op = nd.op;
      int16_t* slots[3] = {&x.a, &x.b, &x.c};
      if (x.kind != FusedInstr::Kind::Product)
        for (size_t s = 0; s < nd.in.size() && s < 3; ++s) *slots[s] = operand(nd.in[s], phase);
      x.f[0] = nd.f[0];
      x.f[1] = nd.f[1];
      x.i[0] = nd.i[0];
      x.i[1] = nd.i[1];
      if (nd.op == OpKind::Copy) x.i[0] = static_cast<int64_t>(val(nd.out[0]).dtype);  // the cast's target
      x.dst = next++;
      const int b = val(nd.out[0]).buffer;
      reg_of_buffer[b] = x.dst;
      // The reduction opens the Row phase: the first Row instruction.
      ops[at(x.phase)].push_back(x);
      names << (m ? " " : "") << op_name(nd.op);
      const Produced& p = G.produced.at(b);
      if (escapes(G, b, p)) {
        FusedInstr s;
        s.kind = FusedInstr::Kind::Store;
        s.phase = x.phase;
        s.a = x.dst;
        s.dst = static_cast<int16_t>(outputs.size());
        outputs.push_back(full(nd.out[0], s.phase));
        stores[at(s.phase)].push_back(s);
      }
    }
    if (outputs.empty()) return false;
    if (program->product && !place_product(G, inputs, outputs, stores[at(Phase::Pre)], reg_of_buffer)) return false;
    for (size_t p = 0; p < 3; ++p)
      for (auto* list : {&loads[p], &ops[p], &stores[p]})
        program->code.insert(program->code.end(), list->begin(), list->end());
    program->registers = next;

    NodeInfo f;
    f.kind = NodeKind::Kernel;
    f.op = OpKind::Fused;
    f.in = inputs;
    f.out = outputs;
    f.params = FusedParams{program};
    f.backward = node(G.members.back()).backward;
    f.recompute = std::all_of(G.members.begin(), G.members.end(), [&](int n) { return node(n).recompute; });
    f.workspace_bytes = workspace_bytes(f);
    if (f.workspace_bytes > 0) {
      BufferInfo w;
      w.kind = BufferKind::Workspace;
      w.nbytes = f.workspace_bytes;
      w.device = g_.buffers[static_cast<size_t>(val(outputs[0]).buffer)].device;
      w.alloc_node = G.members.back();
      g_.buffers.push_back(std::move(w));
      f.workspace = static_cast<int>(g_.buffers.size()) - 1;
    }
    for (int n : G.members) removed_.insert(n);
    replacement_[G.members.back()] = std::move(f);
    ++fused_;
    if (loggable())
      std::cerr << "loom compile: fused " << G.members.size() << " nodes into group " << G.id << " (" << names.str()
                << "), domain " << dims(G.domain) << (G.k ? ", reducing " + std::to_string(G.k) + " dims" : "")
                << ", " << inputs.size() << " inputs, " << outputs.size() << " outputs\n";
    return true;
  }

  // `v` viewed with the shape `domain` (they differ only by dims of size 1).
  int as_domain(int v, const Shape& domain) {
    if (val(v).sizes == domain) return v;
    auto key = std::make_pair(v, domain);
    if (auto it = reshaped_.find(key); it != reshaped_.end()) return it->second;
    ValueInfo x = val(v);
    const Shape contiguous = contiguous_strides(domain);
    Shape strides;
    size_t src = 0;
    for (size_t d = 0; d < domain.size(); ++d) {
      while (src < x.sizes.size() && x.sizes[src] == 1) ++src;
      if (domain[d] == 1) {
        strides.push_back(contiguous[d]);
      } else {
        strides.push_back(x.strides[src]);
        ++src;
      }
    }
    x.sizes = domain;
    x.strides = std::move(strides);
    g_.values.push_back(std::move(x));
    const int id = static_cast<int>(g_.values.size()) - 1;
    reshaped_[key] = id;
    return id;
  }

  // A GEMM epilogue accumulates the product in out0 (Note [Fused
  // programs]): the product itself when it leaves the group, else an output
  // of the group's that is dense float32 of the domain's size and in no
  // input's buffer (the product is overwritten there by the result); without
  // one, the product is stored too. Renumbers the Stores so it is out0.
  bool place_product(const Group& G, const std::vector<int>& inputs, std::vector<int>& outputs,
                     std::vector<FusedInstr>& pre_stores, const std::map<int, int16_t>& reg_of_buffer) {
    const int product_out = node(G.product).out[0];
    const int product_buffer = val(product_out).buffer;
    auto usable = [&](int v) {
      const ValueInfo& x = val(v);
      if (x.dtype != kFloat32 || !dense(x) || x.sizes != G.domain) return false;
      for (int in : inputs)
        if (val(in).buffer == x.buffer) return false;
      return true;
    };
    int chosen = -1;
    for (size_t o = 0; o < outputs.size() && chosen < 0; ++o)
      if (val(outputs[o]).buffer == product_buffer && usable(outputs[o])) chosen = static_cast<int>(o);
    for (size_t o = 0; o < outputs.size() && chosen < 0; ++o)
      if (usable(outputs[o])) chosen = static_cast<int>(o);
    if (chosen < 0) {
      const int v = as_domain(product_out, G.domain);
      if (!usable(v)) return false;
      FusedInstr s;
      s.kind = FusedInstr::Kind::Store;
      s.phase = Phase::Pre;
      s.a = reg_of_buffer.at(product_buffer);
      s.dst = static_cast<int16_t>(outputs.size());
      outputs.push_back(v);
      pre_stores.push_back(s);
      chosen = static_cast<int>(outputs.size()) - 1;
    }
    std::swap(outputs[0], outputs[static_cast<size_t>(chosen)]);
    for (FusedInstr& s : pre_stores) {
      if (s.dst == 0) s.dst = static_cast<int16_t>(chosen);
      else if (s.dst == chosen) s.dst = 0;
    }
    return true;
  }

  // The kernel's scratch for this call, asked of the backend on tensors
  // with the values' geometry (no data).
  size_t workspace_bytes(const NodeInfo& f) const {
    std::vector<std::shared_ptr<TensorImpl>> impls;
    KernelCall call;
    call.op = f.op;
    auto make = [&](int v) {
      auto s = std::make_shared<Storage>();
      s->device = g_.buffers[static_cast<size_t>(val(v).buffer)].device;
      auto impl = std::make_shared<TensorImpl>();
      impl->storage = s;
      impl->sizes = val(v).sizes;
      impl->strides = val(v).strides;
      impl->offset = val(v).offset;
      impl->dtype = val(v).dtype;
      impls.push_back(impl);
      return impl.get();
    };
    for (int v : f.in) call.in.push_back(make(v));
    for (int v : f.out) call.out.push_back(make(v));
    call.params = f.params;
    return kernel_workspace_bytes(call);
  }

  static constexpr size_t kMaxOpen = 8;
  GraphImpl& g_;
  bool gemm_epilogues_;
  std::vector<std::vector<int>> readers_, writers_;
  std::vector<int> first_write_, last_read_;  // per buffer: its first writer, its last reader
  std::set<int> returned_;
  std::vector<Group> open_;
  std::set<int> removed_;
  std::map<int, NodeInfo> replacement_;
  std::map<std::pair<int, Shape>, int> reshaped_;  // (value, shape) -> its view with that shape
  int fused_ = 0;
  int next_id_ = 0;
};

}  // namespace

int fuse(GraphImpl& g, bool gemm_epilogues) { return Fuser(g, gemm_epilogues).run(); }

}  // namespace loom::jit::detail
