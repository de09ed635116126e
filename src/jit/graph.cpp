#include "jit/graph.h"

#include <algorithm>
#include <map>
#include <sstream>


namespace loom::jit::detail {

namespace {

const char* dtype_short(DType d) {
  switch (d) {
    case kFloat32: return "f32";
    case kFloat64: return "f64";
    case kFloat16: return "f16";
    case kBFloat16: return "bf16";
    case kInt64: return "i64";
    case kInt32: return "i32";
    case kBool: return "b8";
    case kInt8: return "i8";
    default: return dtype_name(d);
  }
}


template <class T>
void mix(size_t& h, const T& v) {
  h ^= std::hash<T>()(v) + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
}

std::string escape_dot(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

// "Mul Add Exp | Sum(row) | Sqrt Div": the ops a Fused node stands for, by
// phase ("Bmm Add ...": a GEMM with its epilogue).
std::string fused_summary(const FusedProgram& p) {
  std::string out;
  FusedInstr::Phase phase = FusedInstr::Phase::Pre;
  for (const FusedInstr& x : p.code) {
    if (x.kind != FusedInstr::Kind::Op && x.kind != FusedInstr::Kind::Reduce && x.kind != FusedInstr::Kind::Product)
      continue;
    if (!out.empty()) out += x.phase != phase || x.kind == FusedInstr::Kind::Reduce ? " | " : " ";
    phase = x.phase;
    out += op_name(x.op);
    if (x.kind == FusedInstr::Kind::Reduce) out += "(row)";
  }
  return out;
}

}  // namespace

std::string dims(const Shape& s) {
  std::string out = "[";
  for (size_t k = 0; k < s.size(); ++k) {
    if (k) out += ',';
    out += std::to_string(s[k]);
  }
  return out + "]";
}

const char* buffer_kind_name(BufferKind k) {
  switch (k) {
    case BufferKind::Input: return "input";
    case BufferKind::State: return "state";
    case BufferKind::NewState: return "new-state";
    case BufferKind::Output: return "output";
    case BufferKind::Intermediate: return "intermediate";
    case BufferKind::Constant: return "constant";
    case BufferKind::Workspace: return "workspace";
  }
  return "?";
}

std::string NodeInfo::name() const { return kind == NodeKind::HostCheck ? "HostCheck" : op_name(op); }

std::vector<int> GraphImpl::reads(const NodeInfo& n) const {
  std::vector<int> out;
  for (int v : n.in)
    if (v >= 0) out.push_back(values[static_cast<size_t>(v)].buffer);
  return out;
}

std::vector<int> GraphImpl::writes(const NodeInfo& n) const {
  std::vector<int> out;
  for (int v : n.out) out.push_back(values[static_cast<size_t>(v)].buffer);
  return out;
}

std::string GraphImpl::value_str(int v) const {
  if (v < 0) return "None";
  const ValueInfo& x = values[static_cast<size_t>(v)];
  return "%" + std::to_string(v) + " " + dtype_short(x.dtype) + dims(x.sizes);
}

std::string GraphImpl::str() const {
  std::ostringstream os;
  os << "graph(" << nodes.size() << " nodes, " << values.size() << " values, " << buffers.size() << " buffers):\n";
  // The step's boundary: arguments, then the state it reads or writes.
  for (size_t a = 0; a < args.size(); ++a) os << "  " << value_str(args[a]) << " = arg " << a << "\n";
  for (size_t v = 0; v < values.size(); ++v) {
    const BufferInfo& b = buffers[static_cast<size_t>(values[v].buffer)];
    if (b.kind == BufferKind::State || b.kind == BufferKind::NewState || b.kind == BufferKind::Constant)
      os << "  " << value_str(static_cast<int>(v)) << " = " << buffer_kind_name(b.kind) << "\n";
  }
  for (size_t k = 0; k < nodes.size(); ++k) {
    const NodeInfo& n = nodes[k];
    os << "  ";
    for (size_t o = 0; o < n.out.size(); ++o) os << (o ? ", " : "") << value_str(n.out[o]);
    if (!n.out.empty()) os << " = ";
    os << n.name() << "(";
    for (size_t i = 0; i < n.in.size(); ++i) os << (i ? ", " : "") << (n.in[i] < 0 ? "None" : "%" + std::to_string(n.in[i]));
    os << ")";
    std::vector<std::string> notes;
    for (int v : n.out) {
      const BufferInfo& b = buffers[static_cast<size_t>(values[static_cast<size_t>(v)].buffer)];
      if (b.kind != BufferKind::Intermediate) notes.push_back(buffer_kind_name(b.kind));
      else if (b.arena_offset >= 0) notes.push_back("arena+" + std::to_string(b.arena_offset));
    }
    if (n.workspace >= 0) notes.push_back("workspace " + std::to_string(n.workspace_bytes) + "B");
    if (n.rng >= 0) notes.push_back("rng draw " + std::to_string(n.rng));
    if (n.hyper) notes.push_back("hyperparameters read at replay");
    if (n.folded) notes.push_back("folded");
    if (const auto* f = std::get_if<FusedParams>(&n.params)) notes.push_back("fused: " + fused_summary(*f->program));
    if (!notes.empty()) {
      os << "  #";
      for (const std::string& s : notes) os << " " << s;
    }
    os << "\n";
  }
  os << "  return (";
  for (size_t o = 0; o < outputs.size(); ++o) os << (o ? ", " : "") << "%" << outputs[o];
  os << ")\n";
  os << peak_str();
  return os.str();
}

std::string GraphImpl::dot() const {
  std::ostringstream os;
  os << "digraph loom {\n  rankdir=TB;\n  node [fontname=\"monospace\", fontsize=10];\n";
  // Values with no producer in the graph (arguments, state, constants) are
  // ellipses; nodes are boxes; an edge carries the value's shape.
  std::vector<int> producer(values.size(), -1);
  for (size_t k = 0; k < nodes.size(); ++k)
    for (int v : nodes[k].out) producer[static_cast<size_t>(v)] = static_cast<int>(k);
  std::vector<bool> drawn(values.size(), false);
  for (size_t k = 0; k < nodes.size(); ++k) {
    const NodeInfo& n = nodes[k];
    std::string label = escape_dot(n.name());
    if (const auto* f = std::get_if<FusedParams>(&n.params)) label += "\\n" + escape_dot(fused_summary(*f->program));
    os << "  n" << k << " [shape=box, label=\"" << label << "\"";
    if (n.folded) os << ", style=dashed";
    os << "];\n";
    for (int v : n.in) {
      if (v < 0) continue;
      const auto uv = static_cast<size_t>(v);
      // The latest writer before k produces what k reads.
      int from = -1;
      for (int j = static_cast<int>(k) - 1; j >= 0 && from < 0; --j)
        for (int o : nodes[static_cast<size_t>(j)].out)
          if (values[static_cast<size_t>(o)].buffer == values[uv].buffer) from = j;
      const std::string label = escape_dot(value_str(v));
      if (from >= 0) {
        os << "  n" << from << " -> n" << k << " [label=\"" << label << "\"];\n";
      } else {
        if (!drawn[uv]) {
          const BufferInfo& b = buffers[static_cast<size_t>(values[uv].buffer)];
          os << "  v" << v << " [shape=ellipse, label=\"" << label << "\\n" << buffer_kind_name(b.kind) << "\"];\n";
          drawn[uv] = true;
        }
        os << "  v" << v << " -> n" << k << ";\n";
      }
    }
  }
  for (size_t o = 0; o < outputs.size(); ++o) {
    os << "  out" << o << " [shape=ellipse, style=bold, label=\"output " << o << "\\n"
       << escape_dot(value_str(outputs[o])) << "\"];\n";
    int from = -1;
    const int buf = values[static_cast<size_t>(outputs[o])].buffer;
    for (int j = static_cast<int>(nodes.size()) - 1; j >= 0 && from < 0; --j)
      for (int w : writes(nodes[static_cast<size_t>(j)]))
        if (w == buf) from = j;
    if (from >= 0) os << "  n" << from << " -> out" << o << ";\n";
  }
  os << "}\n";
  return os.str();
}

std::string GraphImpl::peak_str() const {
  // The node where the most intermediate bytes are live, and what they are.
  std::vector<int64_t> live(nodes.size() + 1, 0);
  for (const BufferInfo& b : buffers) {
    if (b.first < 0 || (b.kind != BufferKind::Intermediate && b.kind != BufferKind::Workspace)) continue;
    live[static_cast<size_t>(b.first)] += static_cast<int64_t>(b.nbytes);
    live[static_cast<size_t>(b.last) + 1] -= static_cast<int64_t>(b.nbytes);
  }
  int64_t run = 0, peak = 0;
  int at = -1;
  for (size_t k = 0; k < nodes.size(); ++k) {
    run += live[k];
    if (run > peak) {
      peak = run;
      at = static_cast<int>(k);
    }
  }
  if (at < 0) return "";
  // The op that first wrote each buffer live there.
  std::vector<std::pair<size_t, std::string>> held;
  for (size_t b = 0; b < buffers.size(); ++b) {
    const BufferInfo& info = buffers[b];
    if (info.first < 0 || info.first > at || info.last < at) continue;
    if (info.kind != BufferKind::Intermediate && info.kind != BufferKind::Workspace) continue;
    std::string who = info.kind == BufferKind::Workspace ? "workspace" : "?";
    for (int k = info.first; k <= info.last && who == "?"; ++k)
      for (int w : writes(nodes[static_cast<size_t>(k)]))
        if (w == static_cast<int>(b)) who = nodes[static_cast<size_t>(k)].name() + (nodes[static_cast<size_t>(k)].backward ? " (backward)" : "");
    held.emplace_back(info.nbytes, who);
  }
  std::map<std::string, std::pair<size_t, int>> by_op;
  for (const auto& [bytes, who] : held) {
    by_op[who].first += bytes;
    ++by_op[who].second;
  }
  std::vector<std::pair<size_t, std::string>> rows;
  for (const auto& [who, v] : by_op) rows.emplace_back(v.first, who + " x" + std::to_string(v.second));
  std::sort(rows.rbegin(), rows.rend());
  std::ostringstream os;
  os << "  # peak: " << peak << " intermediate bytes live at node " << at << " (" << nodes[static_cast<size_t>(at)].name()
     << "), written by:";
  for (const auto& [bytes, what] : rows) os << " " << what << " " << bytes << "B;";
  os << "\n";
  // The largest of them, with the node that needs each next.
  std::vector<std::pair<size_t, int>> big;
  for (size_t b = 0; b < buffers.size(); ++b) {
    const BufferInfo& info = buffers[b];
    if (info.first < 0 || info.first > at || info.last < at || info.kind != BufferKind::Intermediate) continue;
    big.emplace_back(info.nbytes, static_cast<int>(b));
  }
  std::sort(big.rbegin(), big.rend());
  if (big.size() > 8) big.resize(8);
  for (const auto& [bytes, b] : big) {
    int next = -1;
    for (size_t k = static_cast<size_t>(at) + 1; k < nodes.size() && next < 0; ++k) {
      for (int r : reads(nodes[k])) next = r == b ? static_cast<int>(k) : next;
      for (int w : writes(nodes[k])) next = w == b ? static_cast<int>(k) : next;
    }
    os << "  #   " << bytes << "B buffer " << b << ", live nodes " << buffers[static_cast<size_t>(b)].first << ".."
       << buffers[static_cast<size_t>(b)].last;
    if (next >= 0) os << ", next used by node " << next << " (" << nodes[static_cast<size_t>(next)].name() << ")";
    os << "\n";
  }
  return os.str();
}

size_t GraphImpl::structure_hash() const {
  size_t h = nodes.size();
  auto value = [&](int v) {
    mix(h, v);
    if (v < 0) return;
    const ValueInfo& x = values[static_cast<size_t>(v)];
    mix(h, static_cast<int>(x.dtype));
    for (int64_t d : x.sizes) mix(h, d);
    for (int64_t d : x.strides) mix(h, d);
    mix(h, x.offset);
    mix(h, static_cast<int>(buffers[static_cast<size_t>(x.buffer)].kind));
  };
  for (const NodeInfo& n : nodes) {
    mix(h, static_cast<int>(n.kind));
    mix(h, static_cast<int>(n.op));
    for (int v : n.in) value(v);
    for (int v : n.out) value(v);
    if (const auto* s = std::get_if<SgdParams>(&n.params)) mix(h, s->first_step);
  }
  for (int v : outputs) value(v);
  return h;
}

void compute_liveness(GraphImpl& g) {
  for (BufferInfo& b : g.buffers) b.first = b.last = -1;
  auto touch = [&](int b, int k) {
    BufferInfo& info = g.buffers[static_cast<size_t>(b)];
    if (info.first < 0) info.first = k;
    info.last = k;
  };
  for (size_t k = 0; k < g.nodes.size(); ++k) {
    const NodeInfo& n = g.nodes[k];
    const int ki = static_cast<int>(k);
    for (int b : g.reads(n)) touch(b, ki);
    for (int b : g.writes(n)) touch(b, ki);
    if (n.workspace >= 0) touch(n.workspace, ki);
  }
}

}  // namespace loom::jit::detail
