// The Fused kernel: runs a fused program (Note [Fused programs] in
// src/backend/fused_program.h) over its domain.
//
// Note [Fused kernel]
// An interpreter, not a compiler: the program is checked and resolved once
// per call into a Plan (each instruction's operand tensors, how its op
// computes), then run over blocks of kBlock elements. A register is a block
// of floats in the calling thread's workspace; each instruction runs over the
// whole block before the next one starts, so the per-instruction dispatch (a
// switch and one call) is paid once per kBlock elements, and the block's
// registers stay in L1.
//
// Bits. An Op instruction calls the code its primitive's own kernel runs on
// contiguous float32: the VecKernels table's unary_f32 / binary_f32 /
// gelu_backward_f32 (the same functions, compiled once per ISA and chosen by
// gemm_isa(), so FMA contraction inside vexp or vgelu is the same too) for
// the ops with a vector path; for the others one loop per op below, built
// with the default flags as the reference kernels are, with the reference's
// formula (same std:: function, float intermediates, NaN rules). A Reduce
// feeds each block to fold_piece_f32, which resumes reduce_f32's accumulators
// where the previous block left them (blocks are multiples of kVecFoldStep),
// and combines the partials of every kReduceBlock elements in order with
// fold_partials: the bits of the Sum / Amax / Amin rows path on the
// materialized float32 row, which never exists here.
//
// Registers may be scalars: a Const, a Load whose block reads one element (a
// stride-0 broadcast), a Row value seen from the Post phase, and any op on
// scalars only, hold one float; binary ops pass them in the vector kernels'
// ScalarA / ScalarB modes, as the unfused kernels do with a broadcast
// operand; the other ops spread a scalar beside a block over its lanes. A
// Load whose block is one contiguous float32 run points its register at the
// tensor itself (no copy) unless some output overlaps that input; otherwise
// it copies (converting bool to 0 / 1).
//
// Geometry. Each Load / Store tensor merges its own dims (make_loop): the
// row dims domain[:-k] give a row's offset, the dims along a row a block's
// runs (one contiguous, stride-0 or strided run in the common cases;
// for_each_run when a block crosses an inner dim). Elementwise programs are
// one row of the whole domain, split over threads in equal spans
// (parallel_slots, kGrain); reduction programs split rows over threads, and
// each row runs its Pre instructions over its blocks (Pre stores and the
// fold), the Row instructions once, then, when there are Post instructions,
// a second pass over the blocks re-running only the Pre instructions the
// Post ones need (no Pre store, no fold) before them. Every element is
// computed by one thread in a fixed order, so results do not depend on the
// thread count.
//
// Large outputs (kStreamBytes and up) are written with streaming stores, so
// a fused chain over tensors far larger than the caches moves each byte
// once: its inputs read, its outputs written, no read-for-ownership of the
// output lines (an ordinary store's write-allocate) in between.
//
// Checks beyond the contract (LOOM_CHECK, naming Fused): a register is
// written in the Row phase (a Reduce's result included) or in the Pre / Post
// phases, never both, so Row values survive the second pass; an output
// written before the second pass (a Pre or Row Store) may not overlap an
// input that pass reads again.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#if defined(__SSE__)
#include <immintrin.h>
#endif

#include "backend/cpu/cpu_dispatch.h"
#include "backend/cpu/cpu_gemm.h"
#include "backend/cpu/cpu_kernels.h"
#include "backend/cpu/cpu_scratch.h"
#include "backend/cpu/cpu_vec.h"
#include "backend/fused_program.h"
#include "backend/workspace.h"

namespace loom::cpu {
namespace {

using Kind = FusedInstr::Kind;
using Phase = FusedInstr::Phase;

// Floats per register block (2 KiB: a program's live registers stay in L1):
// a whole number of fold steps and a divisor of kReduceBlock, so no block
// straddles two fold blocks.
constexpr int64_t kBlock = 512;

// Outputs of at least this many bytes are written with streaming stores: a
// tensor that large leaves the caches before anything reads it, and an
// ordinary store first reads each line it writes (write-allocate), a third
// memory pass on top of the input's read and the output's write.
constexpr int64_t kStreamBytes = int64_t{8} << 20;
static_assert(kBlock % kVecFoldStep == 0 && kReduceBlock % kBlock == 0);

// ---- ops ----

// How an Op instruction computes: a vector kernel of the VecKernels table, or
// a loop over lanes (lane_op).
enum class Exec : uint8_t { VecUnary, VecBinary, VecGeluBackward, Lanes };

struct OpInfo {
  Exec exec;
  int arity;
  VecUnary unary{};
  VecBinary binary{};
};

std::optional<OpInfo> op_info(OpKind op) {
  const auto vec_unary = [](VecUnary u) { return OpInfo{Exec::VecUnary, 1, u, {}}; };
  const auto vec_binary = [](VecBinary b) { return OpInfo{Exec::VecBinary, 2, {}, b}; };
  switch (op) {
    case OpKind::Neg: return vec_unary(VecUnary::Neg);
    case OpKind::Abs: return vec_unary(VecUnary::Abs);
    case OpKind::Exp: return vec_unary(VecUnary::Exp);
    case OpKind::Log: return vec_unary(VecUnary::Log);
    case OpKind::Sqrt: return vec_unary(VecUnary::Sqrt);
    case OpKind::Rsqrt: return vec_unary(VecUnary::Rsqrt);
    case OpKind::Tanh: return vec_unary(VecUnary::Tanh);
    case OpKind::Sigmoid: return vec_unary(VecUnary::Sigmoid);
    case OpKind::Relu: return vec_unary(VecUnary::Relu);
    case OpKind::Gelu: return vec_unary(VecUnary::Gelu);
    case OpKind::GeluTanh: return vec_unary(VecUnary::GeluTanh);
    case OpKind::Silu: return vec_unary(VecUnary::Silu);
    case OpKind::Add: return vec_binary(VecBinary::Add);
    case OpKind::Sub: return vec_binary(VecBinary::Sub);
    case OpKind::Mul: return vec_binary(VecBinary::Mul);
    case OpKind::Div: return vec_binary(VecBinary::Div);
    case OpKind::Maximum: return vec_binary(VecBinary::Max);
    case OpKind::Minimum: return vec_binary(VecBinary::Min);
    case OpKind::GeluBackward: return OpInfo{Exec::VecGeluBackward, 2};
    case OpKind::Copy:
    case OpKind::Log1p:
    case OpKind::Sign:
    case OpKind::Sin:
    case OpKind::Cos:
    case OpKind::Erf:
    case OpKind::LeakyRelu:
    case OpKind::Elu:
    case OpKind::Softplus:
    case OpKind::Clamp:
    case OpKind::LogicalNot:
    case OpKind::IsNan:
      return OpInfo{Exec::Lanes, 1};
    case OpKind::Pow:
    case OpKind::Eq:
    case OpKind::Ne:
    case OpKind::Lt:
    case OpKind::Le:
    case OpKind::Gt:
    case OpKind::Ge:
    case OpKind::LogicalAnd:
    case OpKind::LogicalOr:
    case OpKind::ThresholdBackward:
      return OpInfo{Exec::Lanes, 2};
    case OpKind::Where:
      return OpInfo{Exec::Lanes, 3};
    default:
      return std::nullopt;
  }
}

std::optional<VecReduce> reduce_op(OpKind op) {
  switch (op) {
    case OpKind::Sum: return VecReduce::Sum;
    case OpKind::Amax: return VecReduce::Max;
    case OpKind::Amin: return VecReduce::Min;
    default: return std::nullopt;
  }
}

// Bool values are 1 or 0 (Note [Fused programs]).
inline float from_bool(bool b) { return b ? 1.0f : 0.0f; }

template <class F>
void lanes(const float* a, float* y, int64_t n, F f) {
  for (int64_t i = 0; i < n; ++i) y[i] = f(a[i]);
}
template <class F>
void lanes(const float* a, const float* b, float* y, int64_t n, F f) {
  for (int64_t i = 0; i < n; ++i) y[i] = f(a[i], b[i]);
}

// y = op(a, b, c) over n lanes for the ops without a vector path, each lane
// as the op's reference kernel computes it on float32 (cpu_unary.cpp,
// cpu_binary.cpp, cpu_copy.cpp): the same formula in float, the same std::
// function, the scalar parameters converted as there.
void lane_op(const FusedInstr& x, const float* a, const float* b, const float* c, float* y, int64_t n) {
  switch (x.op) {
    case OpKind::Copy:  // a cast: to bool when i[0] names Bool, else the value itself
      if (x.i[0] == static_cast<int64_t>(DType::Bool)) return lanes(a, y, n, [](float v) { return from_bool(v != 0); });
      return lanes(a, y, n, [](float v) { return v; });
    case OpKind::Log1p: return lanes(a, y, n, [](float v) { return std::log1p(v); });
    case OpKind::Sin: return lanes(a, y, n, [](float v) { return std::sin(v); });
    case OpKind::Cos: return lanes(a, y, n, [](float v) { return std::cos(v); });
    case OpKind::Erf: return lanes(a, y, n, [](float v) { return std::erf(v); });
    case OpKind::Sign:
      return lanes(a, y, n, [](float v) {
        if (std::isnan(v)) return v;
        return static_cast<float>(static_cast<int>(v > 0.0f) - static_cast<int>(v < 0.0f));
      });
    case OpKind::LeakyRelu: {
      const float slope = static_cast<float>(x.f[0]);
      return lanes(a, y, n, [slope](float v) { return v > 0.0f ? v : v * slope; });
    }
    case OpKind::Elu: {
      const float alpha = static_cast<float>(x.f[0]);
      return lanes(a, y, n, [alpha](float v) { return v > 0.0f ? v : alpha * std::expm1(v); });
    }
    case OpKind::Softplus: {
      const float beta = static_cast<float>(x.f[0]), threshold = static_cast<float>(x.f[1]);
      return lanes(a, y, n, [beta, threshold](float v) {
        const float bv = beta * v;
        return bv > threshold ? v : std::log1p(std::exp(bv)) / beta;
      });
    }
    case OpKind::Clamp: {
      const bool has_lo = x.i[0] != 0, has_hi = x.i[1] != 0;
      const float lo = static_cast<float>(x.f[0]), hi = static_cast<float>(x.f[1]);
      return lanes(a, y, n, [=](float v) {
        if (std::isnan(v)) return v;
        if (has_lo && v < lo) v = lo;
        if (has_hi && v > hi) v = hi;
        return v;
      });
    }
    case OpKind::LogicalNot: return lanes(a, y, n, [](float v) { return from_bool(!(v != 0)); });
    case OpKind::IsNan: return lanes(a, y, n, [](float v) { return from_bool(std::isnan(v)); });
    case OpKind::Pow: return lanes(a, b, y, n, [](float u, float v) { return std::pow(u, v); });
    case OpKind::Eq: return lanes(a, b, y, n, [](float u, float v) { return from_bool(u == v); });
    case OpKind::Ne: return lanes(a, b, y, n, [](float u, float v) { return from_bool(u != v); });
    case OpKind::Lt: return lanes(a, b, y, n, [](float u, float v) { return from_bool(u < v); });
    case OpKind::Le: return lanes(a, b, y, n, [](float u, float v) { return from_bool(u <= v); });
    case OpKind::Gt: return lanes(a, b, y, n, [](float u, float v) { return from_bool(u > v); });
    case OpKind::Ge: return lanes(a, b, y, n, [](float u, float v) { return from_bool(u >= v); });
    case OpKind::LogicalAnd: return lanes(a, b, y, n, [](float u, float v) { return from_bool(u != 0 && v != 0); });
    case OpKind::LogicalOr: return lanes(a, b, y, n, [](float u, float v) { return from_bool(u != 0 || v != 0); });
    case OpKind::ThresholdBackward: {  // a: the gradient, b: the forward's value
      const float t = static_cast<float>(x.f[0]);
      return lanes(a, b, y, n, [t](float g, float v) { return v > t ? g : 0.0f; });
    }
    case OpKind::Where:
      for (int64_t i = 0; i < n; ++i) y[i] = a[i] != 0 ? b[i] : c[i];
      return;
    default: LOOM_ASSERT(false, "Fused: ", op_name(x.op), " has no lane loop");
  }
}

// ---- the plan ----

// A Load's or Store's tensor as the interpreter walks it.
struct Operand {
  char* data = nullptr;
  bool is_bool = false;
  bool borrow = false;  // a float32 input no output overlaps: a Load may point its register at it
  bool stream = false;  // a large float32 output: contiguous runs bypass the cache (stream_floats)
  LoopShape<1> rows;    // the row dims (domain[:-k]), merged: a row's element offset
  LoopShape<1> row;     // the dims along a row (domain[-k:]), merged; none for a Row Load / Store
};

// One instruction, resolved.
struct Step {
  const FusedInstr* x;
  OpInfo info{Exec::Lanes, 0};  // Op
  int operand = -1;             // Load / Store: index into Plan::operands
};

struct Plan {
  const VecKernels* vk = nullptr;
  int registers = 0;
  std::vector<Operand> operands;
  // A row's first pass over its blocks (every Pre instruction, the Reduce
  // included), the Row instructions, and the second pass (the Pre
  // instructions the Post ones need, then the Post ones; empty without Post).
  std::vector<Step> first, row, second;
  bool reduces = false;
  bool streams = false;  // some output is written with streaming stores (an sfence ends each slot)
  bool product = false;  // a GEMM epilogue: in[0] @ in[1] into out[0], the program on each finished block
  VecReduce reduce{};
  int reduce_dst = -1;
  int64_t rows = 1, length = 0;  // rows, and elements per row
};

// How a program's work splits over threads: elementwise programs by
// element, reduction programs by row. The workspace size function and the
// kernel both ask, so they agree on the slots.
struct Split {
  bool reduces = false;
  int64_t k = 0, rows = 1, length = 1;  // row dims, rows, elements per row
  int64_t items() const { return reduces ? rows : rows * length; }
  int64_t grain() const { return reduces ? std::max<int64_t>(1, kGrain / std::max<int64_t>(length, 1)) : kGrain; }
};

Split split_of(const FusedProgram& pg) {
  Split s;
  for (const FusedInstr& x : pg.code) s.reduces = s.reduces || x.kind == Kind::Reduce;
  const int64_t rank = static_cast<int64_t>(pg.domain.size());
  s.k = s.reduces ? std::clamp<int64_t>(pg.reduce_dims, 0, rank) : rank;
  for (int64_t d = 0; d < rank; ++d) (d < rank - s.k ? s.rows : s.length) *= pg.domain[d];
  return s;
}

int64_t count_operands(const FusedProgram& pg) {
  return std::count_if(pg.code.begin(), pg.code.end(),
                       [](const FusedInstr& x) {
                         return x.kind == Kind::Load || x.kind == Kind::Store || x.kind == Kind::Product;
                       });
}

// The bytes [lo, hi) a tensor's elements span (empty for no elements).
struct Span {
  uintptr_t lo = 0, hi = 0;
  bool overlaps(const Span& o) const { return lo < hi && o.lo < o.hi && lo < o.hi && o.lo < hi; }
};
Span span_of(const TensorImpl* t) {
  if (t->numel() == 0) return {};
  const int64_t size = static_cast<int64_t>(element_size(t->dtype));
  int64_t lo = 0, hi = 0;
  for (int64_t d = 0; d < t->dim(); ++d) {
    const int64_t reach = (t->sizes[d] - 1) * t->strides[d];
    (reach < 0 ? lo : hi) += reach;
  }
  const auto base = reinterpret_cast<uintptr_t>(t->data());
  return {base + static_cast<uintptr_t>(lo * size), base + static_cast<uintptr_t>((hi + 1) * size)};
}

const char* phase_name(Phase p) {
  switch (p) {
    case Phase::Pre: return "Pre";
    case Phase::Row: return "Row";
    case Phase::Post: return "Post";
  }
  return "?";
}

// Checks the program against the call (Note [Fused programs]) and resolves
// it. Every malformed program is a loom::Error naming Fused.
class Planner {
 public:
  Planner(const KernelCall& c, const FusedProgram& pg) : c_(c), pg_(pg), written_(std::max(pg.registers, 0), kNone) {}

  Plan plan() {
    const int64_t rank = static_cast<int64_t>(pg_.domain.size());
    LOOM_CHECK(pg_.registers >= 0, "Fused: ", pg_.registers, " registers");
    LOOM_CHECK(pg_.reduce_dims >= 0 && pg_.reduce_dims <= rank, "Fused: reduce_dims ", pg_.reduce_dims,
               " for a domain of rank ", rank);
    for (int64_t s : pg_.domain) LOOM_CHECK(s >= 0, "Fused: domain ", shape_str(pg_.domain));
    const int64_t reductions = std::count_if(pg_.code.begin(), pg_.code.end(),
                                             [](const FusedInstr& x) { return x.kind == Kind::Reduce; });
    LOOM_CHECK(reductions <= 1, "Fused: ", reductions, " Reduce instructions (at most one per program)");
    LOOM_CHECK(pg_.reduce_dims == 0 || reductions == 1, "Fused: reduce_dims is ", pg_.reduce_dims,
               " but the program has no Reduce instruction");
    split_ = split_of(pg_);
    p_.vk = &vec();
    p_.product = pg_.product;
    if (pg_.product) check_product();
    p_.registers = pg_.registers;
    p_.reduces = split_.reduces;
    p_.rows = split_.rows;
    p_.length = split_.length;
    const Shape row_shape(pg_.domain.begin(), pg_.domain.end() - split_.k);

    std::vector<Step> post;
    for (size_t i = 0; i < pg_.code.size(); ++i) {
      at_ = static_cast<int64_t>(i);
      const FusedInstr& x = pg_.code[i];
      Step s{&x};
      const Phase ph = x.phase;
      LOOM_CHECK(ph == Phase::Pre || ph == Phase::Row || ph == Phase::Post, where(), "unknown phase");
      LOOM_CHECK(p_.reduces || ph == Phase::Pre, where(), phase_name(ph),
                 " instruction in a program without a reduction");
      if (x.kind != Kind::Reduce) {
        LOOM_CHECK(ph >= last_phase_, where(), phase_name(ph), " instruction after a ", phase_name(last_phase_),
                   " one (phases go Pre, Row, Post)");
        last_phase_ = ph;
      }
      const Shape& shape = ph == Phase::Row ? row_shape : pg_.domain;
      switch (x.kind) {
        case Kind::Load:
          LOOM_CHECK(!pg_.product || x.a >= 2, where(), "in", x.a, " is an operand of the product, not a Load's");
          s.operand = operand(x.a, /*input=*/true, shape, ph == Phase::Row);
          write(x.dst, ph);
          break;
        case Kind::Const:
          write(x.dst, ph);
          break;
        case Kind::Op: {
          const std::optional<OpInfo> info = op_info(x.op);
          LOOM_CHECK(info.has_value(), where(), op_name(x.op), " is not an elementwise op fused programs run");
          s.info = *info;
          const int16_t regs[3] = {x.a, x.b, x.c};
          for (int k = 0; k < 3; ++k) {
            if (k < info->arity) read(regs[k], ph);
            else LOOM_CHECK(regs[k] == -1, where(), op_name(x.op), " takes ", info->arity, " operands, got r",
                            regs[k]);
          }
          write(x.dst, ph);
          break;
        }
        case Kind::Reduce: {
          const std::optional<VecReduce> op = reduce_op(x.op);
          LOOM_CHECK(op.has_value(), where(), "Reduce by ", op_name(x.op), " (Sum, Amax or Amin)");
          p_.reduce = *op;
          p_.reduce_dst = x.dst;
          read(x.a, Phase::Pre);
          write(x.dst, Phase::Row);
          break;
        }
        case Kind::Store:
          s.operand = operand(x.dst, /*input=*/false, shape, ph == Phase::Row);
          read(x.a, ph);
          break;
        case Kind::Product:
          LOOM_CHECK(pg_.product && ph == Phase::Pre, where(), "Product in a program without a product");
          s.operand = operand(0, /*input=*/false, shape, false);  // the product is accumulated in out[0]
          write(x.dst, ph);
          break;
        default: LOOM_CHECK(false, where(), "unknown instruction kind ", static_cast<int>(x.kind));
      }
      if (x.kind == Kind::Reduce || ph == Phase::Pre) p_.first.push_back(s);
      else if (ph == Phase::Row) p_.row.push_back(s);
      else post.push_back(s);
    }
    p_.second = second_pass(post);
    check_overlaps();
    return std::move(p_);
  }

 private:
  static constexpr int8_t kNone = -1;

  // "Fused: instruction 3 (Row): ", the start of an error about the current instruction.
  std::string where() const {
    const FusedInstr& x = pg_.code[at_];
    return detail::str_cat("Fused: instruction ", at_, " (", x.kind == Kind::Reduce ? "Reduce" : phase_name(x.phase),
                           "): ");
  }

  void in_range(int16_t r) const {
    LOOM_CHECK(r >= 0 && r < pg_.registers, where(), "register r", r, " out of range (", pg_.registers,
               " registers)");
  }
  void read(int16_t r, Phase reader) const {
    in_range(r);
    const int8_t w = written_[r];
    LOOM_CHECK(w != kNone, where(), "reads r", r, " before any instruction writes it");
    const Phase writer = static_cast<Phase>(w);
    LOOM_CHECK(reader == Phase::Post || writer == reader, where(), "a ", phase_name(reader),
               " instruction reads r", r, ", a ", phase_name(writer), " register");
  }
  void write(int16_t r, Phase writer) {
    in_range(r);
    const int8_t w = written_[r];
    LOOM_CHECK(w == kNone || (static_cast<Phase>(w) == Phase::Row) == (writer == Phase::Row), where(), "r", r,
               " is written in the Row phase and in another");
    written_[r] = static_cast<int8_t>(writer);
  }

  // The Operand of input or output slot `slot`, which must have `shape`.
  int operand(int16_t slot, bool input, const Shape& shape, bool row) {
    const char* what = input ? "in" : "out";
    const int64_t n = input ? static_cast<int64_t>(c_.in.size()) : static_cast<int64_t>(c_.out.size());
    LOOM_CHECK(slot >= 0 && slot < n, where(), what, slot, " out of range (", n, " slots)");
    const TensorImpl* t = input ? c_.in[slot] : c_.out[slot];
    LOOM_CHECK(t != nullptr, where(), what, slot, " is absent");
    LOOM_CHECK(t->dtype == kFloat32 || t->dtype == kBool, where(), what, slot, " has dtype ", dtype_name(t->dtype),
               " (fused programs read and write float32 and bool)");
    LOOM_CHECK(t->dim() == static_cast<int64_t>(shape.size()), where(), what, slot, " has rank ", t->dim(),
               ", expected ", shape.size(), " (shape ", shape_str(shape), ")");
    LOOM_CHECK(t->sizes == shape, where(), what, slot, " has shape ", shape_str(t->sizes), ", expected ",
               shape_str(shape));
    Operand o;
    o.data = t->data();
    o.is_bool = t->dtype == kBool;
    // (Not in a GEMM epilogue: the block it writes was just computed and is in cache.)
    o.stream = !input && !o.is_bool && !pg_.product && t->numel() * static_cast<int64_t>(sizeof(float)) >= kStreamBytes;
    p_.streams = p_.streams || o.stream;
    const int64_t k = row ? 0 : split_.k;
    const Shape rows_sizes(t->sizes.begin(), t->sizes.end() - k);
    const Shape rows_strides(t->strides.begin(), t->strides.end() - k);
    const Shape row_sizes(t->sizes.end() - k, t->sizes.end()), row_strides(t->strides.end() - k, t->strides.end());
    o.rows = make_loop<1>(rows_sizes, {&rows_strides});
    o.row = make_loop<1>(row_sizes, {&row_strides});
    p_.operands.push_back(std::move(o));
    tensors_.push_back({t, input, slot});
    return static_cast<int>(p_.operands.size()) - 1;
  }

  // A GEMM epilogue's call (Note [Fused programs]): in[0] (B, M, K) and
  // in[1] (B, K, N) float32, the domain (B, M, N), out[0] dense float32 of
  // that shape overlapping no input, no reduction.
  void check_product() const {
    LOOM_CHECK(c_.in.size() >= 2 && c_.in[0] != nullptr && c_.in[1] != nullptr && !c_.out.empty() &&
                   c_.out[0] != nullptr,
               "Fused: a product needs in0, in1 and out0");
    const TensorImpl *a = c_.in[0], *b = c_.in[1], *y = c_.out[0];
    LOOM_CHECK(a->dtype == kFloat32 && b->dtype == kFloat32 && y->dtype == kFloat32, "Fused: the product's operands ",
               dtype_name(a->dtype), " @ ", dtype_name(b->dtype), " -> ", dtype_name(y->dtype), " (float32 only)");
    LOOM_CHECK(a->dim() == 3 && b->dim() == 3 && a->sizes[0] == b->sizes[0] && a->sizes[2] == b->sizes[1] &&
                   pg_.domain == Shape({a->sizes[0], a->sizes[1], b->sizes[2]}) && y->sizes == pg_.domain,
               "Fused: product ", shape_str(a->sizes), " @ ", shape_str(b->sizes), " into ", shape_str(y->sizes),
               " over the domain ", shape_str(pg_.domain));
    LOOM_CHECK(y->is_contiguous(), "Fused: the product's out0 must be contiguous, got strides ", shape_str(y->strides));
    LOOM_CHECK(pg_.reduce_dims == 0, "Fused: a product's program has no reduction");
    const Span out = span_of(y);
    for (int k = 0; k < c_.in.size(); ++k)
      LOOM_CHECK(c_.in[k] == nullptr || !out.overlaps(span_of(c_.in[k])), "Fused: out0, where the product is "
                 "accumulated, overlaps in", k);
  }

  // The Pre instructions the Post ones read, found by liveness backwards
  // from the Post instructions, then those.
  std::vector<Step> second_pass(const std::vector<Step>& post) const {
    if (post.empty()) return {};
    std::vector<bool> live(std::max(pg_.registers, 0), false);
    const auto uses = [&](const FusedInstr& x) {
      if (x.kind == Kind::Op) {
        for (int16_t r : {x.a, x.b, x.c})
          if (r >= 0) live[r] = true;
      } else if (x.kind == Kind::Store) {
        live[x.a] = true;
      }
    };
    for (auto it = post.rbegin(); it != post.rend(); ++it) {
      if (it->x->kind != Kind::Store) live[it->x->dst] = false;
      uses(*it->x);
    }
    std::vector<Step> steps;
    for (auto it = p_.first.rbegin(); it != p_.first.rend(); ++it) {
      const FusedInstr& x = *it->x;
      if (x.kind == Kind::Store || x.kind == Kind::Reduce || !live[x.dst]) continue;
      live[x.dst] = false;
      uses(x);
      steps.push_back(*it);
    }
    std::reverse(steps.begin(), steps.end());
    steps.insert(steps.end(), post.begin(), post.end());
    return steps;
  }

  void check_overlaps() {
    std::vector<Span> spans;
    for (const TensorRef& r : tensors_) spans.push_back(span_of(r.t));
    for (size_t i = 0; i < tensors_.size(); ++i) {
      if (!tensors_[i].input) continue;
      bool overlapped = false;
      for (size_t j = 0; j < tensors_.size(); ++j)
        overlapped = overlapped || (!tensors_[j].input && spans[i].overlaps(spans[j]));
      p_.operands[i].borrow = !p_.operands[i].is_bool && !overlapped;
    }
    // An output written before the second pass must not change what it reads.
    for (const std::vector<Step>* steps : {&p_.first, &p_.row})
      for (const Step& st : *steps) {
        if (st.x->kind != Kind::Store) continue;
        for (const Step& ld : p_.second)
          if (ld.x->kind == Kind::Load)
            LOOM_CHECK(!spans[st.operand].overlaps(spans[ld.operand]), "Fused: out", st.x->dst,
                       " is stored before the reduction completes and overlaps in", ld.x->a,
                       ", which the Post phase reads again");
      }
  }

  struct TensorRef {
    const TensorImpl* t;
    bool input;
    int slot;
  };
  const KernelCall& c_;
  const FusedProgram& pg_;
  Plan p_;
  Split split_;
  std::vector<int8_t> written_;  // each register's last writer's phase, or kNone
  std::vector<TensorRef> tensors_;
  Phase last_phase_ = Phase::Pre;
  int64_t at_ = 0;
};

// ---- running ----

struct Reg {
  const float* p = nullptr;
  bool scalar = false;  // one value for every lane, at p[0]
};

// One thread slot's registers and buffers, from the workspace.
struct Frame {
  float* blocks;   // registers x kBlock floats
  Reg* reg;        // registers
  float* spill;    // 3 x kBlock floats: scalar operands spread over lanes
  int64_t* base;   // per operand: the current row's element offset
  VecFoldState fold;
  double acc = 0;  // the current row's fold over its finished fold blocks
  float* block(int r) const { return blocks + static_cast<int64_t>(r) * kBlock; }
};

Frame take_frame(WorkspaceLayout& ws, int64_t registers, int64_t operands) {
  Frame f{};
  f.blocks = ws.take<float>(registers * kBlock);
  f.reg = ws.take<Reg>(registers);
  f.spill = ws.take<float>(3 * kBlock);
  f.base = ws.take<int64_t>(operands);
  return f;
}

int64_t offset_of(const LoopShape<1>& l, int64_t flat) {
  int64_t off = 0;
  for (int64_t d = static_cast<int64_t>(l.sizes.size()) - 1; d >= 0; --d) {
    off += flat % l.sizes[d] * l.strides[0][d];
    flat /= l.sizes[d];
  }
  return off;
}

const float* spread(float v, float* buf, int64_t n) {
  std::fill(buf, buf + n, v);
  return buf;
}

// len elements of o from element offset `off`, `stride` apart, as floats.
void read_run(const Operand& o, int64_t off, int64_t stride, int64_t len, float* dst) {
  if (o.is_bool) {
    const uint8_t* x = reinterpret_cast<const uint8_t*>(o.data) + off;
    for (int64_t i = 0; i < len; ++i) dst[i] = from_bool(x[i * stride] != 0);
    return;
  }
  const float* x = reinterpret_cast<const float*>(o.data) + off;
  if (stride == 1) std::memcpy(dst, x, static_cast<size_t>(len) * sizeof(float));
  else for (int64_t i = 0; i < len; ++i) dst[i] = x[i * stride];
}

// y[0..n) = src[0..n) with non-temporal stores where the CPU has them
// (SSE, every x86-64), ordinary ones for the unaligned head and the tail.
void stream_floats(float* y, const float* src, int64_t n) {
  int64_t i = 0;
#if defined(__SSE__)
  for (; i < n && reinterpret_cast<uintptr_t>(y + i) % 16 != 0; ++i) y[i] = src[i];
  for (; i + 4 <= n; i += 4) _mm_stream_ps(y + i, _mm_loadu_ps(src + i));
#endif
  for (; i < n; ++i) y[i] = src[i];
}

// The values src[0], src[step], ... into len elements of o, `stride` apart.
void write_run(const Operand& o, int64_t off, int64_t stride, int64_t len, const float* src, int64_t step) {
  if (o.is_bool) {
    uint8_t* y = reinterpret_cast<uint8_t*>(o.data) + off;
    for (int64_t i = 0; i < len; ++i) y[i * stride] = src[i * step] != 0;
    return;
  }
  float* y = reinterpret_cast<float*>(o.data) + off;
  if (stride == 1 && step == 1 && o.stream) stream_floats(y, src, len);
  else if (stride == 1 && step == 1) std::memcpy(y, src, static_cast<size_t>(len) * sizeof(float));
  else for (int64_t i = 0; i < len; ++i) y[i * stride] = src[i * step];
}

// Calls run(lane, offset, stride, n) for the runs of elements [p, p + len)
// along a row of o that starts at element offset `base`.
template <class Run>
void for_each_block_run(const Operand& o, int64_t base, int64_t p, int64_t len, Run&& run) {
  const LoopShape<1>& l = o.row;
  if (l.sizes.empty()) return run(int64_t{0}, base, int64_t{0}, len);
  const int64_t inner = l.sizes.back(), stride = l.strides[0].back();
  if (l.sizes.size() == 1) return run(int64_t{0}, base + p * stride, stride, len);
  if (p % inner + len <= inner) return run(int64_t{0}, base + offset_of(l, p), stride, len);
  struct Ctx {
    Run& run;
    int64_t base, stride, lane;
  } ctx{run, base, stride, 0};
  for_each_run(l.sizes, l.strides.data(), 1, p, p + len,
               {&ctx, [](void* q, const int64_t* off, int64_t n) {
                  Ctx& c = *static_cast<Ctx*>(q);
                  c.run(c.lane, c.base + off[0], c.stride, n);
                  c.lane += n;
                }});
}

// Points r at lanes [p, p + len) of o's current row: at one element when
// they all read it (stride 0), at the tensor itself when they are one
// contiguous run of a borrowable input, else at `buf` holding them as floats.
void load(const Operand& o, int64_t base, int64_t p, int64_t len, float* buf, Reg& r) {
  r = {buf, false};
  for_each_block_run(o, base, p, len, [&](int64_t lane, int64_t off, int64_t stride, int64_t n) {
    if (n == len && stride == 0) {
      read_run(o, off, 0, 1, buf);
      r.scalar = true;
    } else if (n == len && stride == 1 && o.borrow) {
      r.p = reinterpret_cast<const float*>(o.data) + off;
    } else {
      read_run(o, off, stride, n, buf + lane);
    }
  });
}

void store(const Operand& o, int64_t base, int64_t p, int64_t len, const Reg& r) {
  for_each_block_run(o, base, p, len, [&](int64_t lane, int64_t off, int64_t stride, int64_t n) {
    write_run(o, off, stride, n, r.scalar ? r.p : r.p + lane, r.scalar ? 0 : 1);
  });
}

void run_op(const Plan& pl, const Step& s, Frame& f, int64_t len) {
  const FusedInstr& x = *s.x;
  float* y = f.block(x.dst);
  const Reg a = f.reg[x.a];
  switch (s.info.exec) {
    case Exec::VecUnary:
      pl.vk->unary_f32(s.info.unary, a.p, y, a.scalar ? 1 : len);
      f.reg[x.dst] = {y, a.scalar};
      return;
    case Exec::VecBinary: {
      const Reg b = f.reg[x.b];
      const bool scalar = a.scalar && b.scalar;
      const VecOperands mode = scalar     ? VecOperands::Both
                               : a.scalar ? VecOperands::ScalarA
                               : b.scalar ? VecOperands::ScalarB
                                          : VecOperands::Both;
      pl.vk->binary_f32(s.info.binary, mode, a.p, b.p, y, scalar ? 1 : len);
      f.reg[x.dst] = {y, scalar};
      return;
    }
    case Exec::VecGeluBackward: {  // a: the gradient, b: the forward's input
      const Reg b = f.reg[x.b];
      const bool scalar = a.scalar && b.scalar;
      const float* g = a.scalar && !scalar ? spread(a.p[0], f.spill, len) : a.p;
      const float* v = b.scalar && !scalar ? spread(b.p[0], f.spill + kBlock, len) : b.p;
      pl.vk->gelu_backward_f32(g, v, y, scalar ? 1 : len, x.i[0] != 0);
      f.reg[x.dst] = {y, scalar};
      return;
    }
    case Exec::Lanes: {
      const Reg in[3] = {a, x.b >= 0 ? f.reg[x.b] : a, x.c >= 0 ? f.reg[x.c] : a};
      bool scalar = true;
      for (int k = 0; k < s.info.arity; ++k) scalar = scalar && in[k].scalar;
      const float* v[3] = {a.p, a.p, a.p};
      for (int k = 0; k < s.info.arity; ++k)
        v[k] = in[k].scalar && !scalar ? spread(in[k].p[0], f.spill + k * kBlock, len) : in[k].p;
      lane_op(x, v[0], v[1], v[2], y, scalar ? 1 : len);
      f.reg[x.dst] = {y, scalar};
      return;
    }
  }
}

// Feeds lanes [p, p + len) of the row to the fold (Note [Fused kernel]).
void fold(const Plan& pl, Frame& f, const Reg& a, int64_t p, int64_t len) {
  const float* v = a.scalar ? spread(a.p[0], f.spill, len) : a.p;
  if (p % kReduceBlock == 0) pl.vk->fold_start_f32(pl.reduce, &f.fold);
  const bool last = p + len == std::min(pl.length, (p / kReduceBlock + 1) * kReduceBlock);
  const double partial = pl.vk->fold_piece_f32(pl.reduce, &f.fold, v, len, last);
  if (last) f.acc = p < kReduceBlock ? partial : fold_partials(pl.reduce, f.acc, partial);
}

// Runs `steps` over lanes [p, p + len) of the current row.
void run_steps(const Plan& pl, const std::vector<Step>& steps, Frame& f, int64_t p, int64_t len) {
  for (const Step& s : steps) {
    const FusedInstr& x = *s.x;
    switch (x.kind) {
      case Kind::Load:
        load(pl.operands[s.operand], f.base[s.operand], p, len, f.block(x.dst), f.reg[x.dst]);
        break;
      case Kind::Const:
        f.block(x.dst)[0] = x.imm;
        f.reg[x.dst] = {f.block(x.dst), true};
        break;
      case Kind::Op: run_op(pl, s, f, len); break;
      case Kind::Reduce: fold(pl, f, f.reg[x.a], p, len); break;
      case Kind::Store: store(pl.operands[s.operand], f.base[s.operand], p, len, f.reg[x.a]); break;
      case Kind::Product: {
        // A copy, not a pointer into out0: a Store to out0 may come before another reads the product.
        float* buf = f.block(x.dst);
        read_run(pl.operands[s.operand], p, 1, len, buf);
        f.reg[x.dst] = {buf, false};
        break;
      }
    }
  }
}

void run_span(const Plan& pl, const std::vector<Step>& steps, Frame& f, int64_t begin, int64_t end) {
  for (int64_t p = begin; p < end; p += kBlock) run_steps(pl, steps, f, p, std::min(kBlock, end - p));
}

// Rows [lo, hi) of a reduction program.
void run_rows(const Plan& pl, Frame& f, int64_t lo, int64_t hi) {
  for (int64_t r = lo; r < hi; ++r) {
    for (size_t o = 0; o < pl.operands.size(); ++o) f.base[o] = offset_of(pl.operands[o].rows, r);
    run_span(pl, pl.first, f, 0, pl.length);
    // An empty row folds to the reference's identity.
    constexpr double kInf = std::numeric_limits<double>::infinity();
    if (pl.length == 0) f.acc = pl.reduce == VecReduce::Sum ? 0.0 : pl.reduce == VecReduce::Max ? -kInf : kInf;
    float* reduced = f.block(pl.reduce_dst);
    reduced[0] = static_cast<float>(f.acc);
    f.reg[pl.reduce_dst] = {reduced, true};
    run_steps(pl, pl.row, f, 0, 1);
    if (!pl.second.empty()) run_span(pl, pl.second, f, 0, pl.length);
  }
}

// ---- GEMM epilogues ----

// The threads sgemm may run its blocks on, each needing a frame.
int64_t product_frames() { return in_parallel_region() ? 1 : get_num_threads(); }

int64_t product_pack_floats(const KernelCall& c) {
  const TensorImpl *a = c.in[0], *b = c.in[1];
  return sgemm_workspace_floats(gemm_isa(), a->sizes[0], a->sizes[1], b->sizes[2], a->sizes[2]);
}

// The workspace of a product program: the GEMM's packing space, then one
// frame per thread sgemm may call the epilogue on.
struct ProductLayout {
  int64_t pack, frames, registers, operands;
  float* operator()(WorkspaceLayout& ws, std::vector<Frame>* out = nullptr) const {
    float* p = ws.take<float>(pack);
    for (int64_t t = 0; t < frames; ++t) {
      Frame f = take_frame(ws, registers, operands);
      if (out != nullptr) out->push_back(f);
    }
    return p;
  }
};

// The epilogue sgemm calls on each finished block of out0: the program over
// each of the block's rows, on a frame no other thread holds.
struct ProductPost {
  const Plan* pl;
  const float* base;  // out0's first element: a block's flat domain index is its offset from here
  std::vector<Frame>* frames;
  std::mutex mu;
  std::vector<int64_t> free;  // frames not in use
};

void product_post(void* ctx, float* c, int64_t rs, int64_t cs, int64_t rows, int64_t cols) {
  auto& post = *static_cast<ProductPost*>(ctx);
  int64_t id;
  {
    std::lock_guard<std::mutex> lock(post.mu);
    LOOM_ASSERT(!post.free.empty(), "Fused: more GEMM threads than frames");
    id = post.free.back();
    post.free.pop_back();
  }
  Frame& f = (*post.frames)[static_cast<size_t>(id)];
  std::fill(f.base, f.base + post.pl->operands.size(), int64_t{0});
  LOOM_ASSERT(cs == 1, "Fused: a product block with column stride ", cs);
  if (rs == cols) {  // whole rows: one run (the interpreter's dispatch is per block, not per row)
    const int64_t at = c - post.base;
    run_span(*post.pl, post.pl->first, f, at, at + rows * cols);
  } else {
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t at = c + r * rs - post.base;
      run_span(*post.pl, post.pl->first, f, at, at + cols);
    }
  }
#if defined(__SSE__)
  if (post.pl->streams) _mm_sfence();
#endif
  std::lock_guard<std::mutex> lock(post.mu);
  post.free.push_back(id);
}

void run_product(const KernelCall& c, const Plan& pl) {
  const TensorImpl *a = c.in[0], *b = c.in[1];
  TensorImpl* y = c.out[0];
  const ProductLayout layout{product_pack_floats(c), product_frames(), pl.registers,
                             static_cast<int64_t>(pl.operands.size())};
  WorkspaceLayout ws = carve(c);
  std::vector<Frame> frames;
  float* pack = layout(ws, &frames);
  ProductPost post{&pl, data_ptr<float>(y), &frames, {}, {}};
  for (int64_t t = layout.frames; t-- > 0;) post.free.push_back(t);
  SgemmEpilogue ep{nullptr, 0, false, &product_post, &post};
  sgemm(gemm_isa(), a->sizes[0], a->sizes[1], b->sizes[2], a->sizes[2],
        {data_ptr<float>(a), a->strides[0], a->strides[1], a->strides[2]},
        {data_ptr<float>(b), b->strides[0], b->strides[1], b->strides[2]},
        {data_ptr<float>(y), y->strides[0], y->strides[1], y->strides[2]}, &ep, GemmWorkspace{pack, layout.pack});
}

// The per-slot workspace layout (Note [Kernel workspaces]).
struct SlotLayout {
  int64_t registers, operands;
  void operator()(WorkspaceLayout& ws) const { take_frame(ws, registers, operands); }
};

const FusedProgram& program_of(const KernelCall& c) {
  const auto* params = std::get_if<FusedParams>(&c.params);
  LOOM_CHECK(params != nullptr && params->program != nullptr, "Fused: kernel call without a program");
  return *params->program;
}

}  // namespace

namespace kernel {

void Fused(const KernelCall& c) {
  const FusedProgram& pg = program_of(c);
  const Plan pl = Planner(c, pg).plan();
  if (pl.product) return run_product(c, pl);
  const Split split = split_of(pg);
  const SlotLayout layout{pl.registers, static_cast<int64_t>(pl.operands.size())};
  parallel_slots(split.items(), split.grain(), [&](int64_t slot, int64_t lo, int64_t hi) {
    WorkspaceLayout ws = slot_workspace(c, slot, layout);
    Frame f = take_frame(ws, layout.registers, layout.operands);
    if (pl.reduces) {
      run_rows(pl, f, lo, hi);
    } else {
      std::fill(f.base, f.base + layout.operands, int64_t{0});
      run_span(pl, pl.first, f, lo, hi);
    }
#if defined(__SSE__)
    if (pl.streams) _mm_sfence();  // this thread's streaming stores land before the slot reports done
#endif
  });
}

}  // namespace kernel

namespace workspace {

size_t Fused(const KernelCall& c) {
  const auto* params = std::get_if<FusedParams>(&c.params);
  if (params == nullptr || params->program == nullptr) return 0;  // the kernel says what is wrong
  const FusedProgram& pg = *params->program;
  if (pg.product) {
    if (c.in.size() < 2 || c.in[0] == nullptr || c.in[1] == nullptr || c.in[0]->dim() != 3 || c.in[1]->dim() != 3)
      return 0;  // the kernel says what is wrong
    WorkspaceLayout ws;
    ProductLayout{product_pack_floats(c), product_frames(), std::max(pg.registers, 0), count_operands(pg)}(ws);
    return ws.bytes();
  }
  const Split split = split_of(pg);
  const SlotLayout layout{std::max(pg.registers, 0), count_operands(pg)};
  return slots_workspace_bytes(slot_count(split.items(), split.grain()), layout);
}

}  // namespace workspace
}  // namespace loom::cpu
