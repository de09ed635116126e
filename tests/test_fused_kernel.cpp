// The Fused kernel (Note [Fused kernel] in src/backend/cpu/cpu_fused.cpp)
// against the unfused primitives it stands for.
//
// Each check writes a program by hand, runs it through run_kernel, and runs
// the primitives of the same computation one by one through run_kernel on
// contiguous float32 (or bool) tensors, the intermediates materialized: the
// results must be bitwise equal (memcmp), on every ISA path this CPU runs
// (LOOM_CPU_ISA + the reload hook), on odd sizes (1, 7, 17, 1000 and a row
// longer than kReduceBlock), on non-contiguous inputs (transposed views,
// scalar, row and column broadcasts), with NaN, +-inf, -0 and denormals.
// This suite includes internal headers (src/ is on the tests' include path).
#include <gtest/gtest.h>
#include <loom/loom.h>

#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/fused_program.h"
#include "ops/fast_paths.h"
#include "test_util.h"

namespace {

using loom::DType;
using loom::FusedInstr;
using loom::FusedProgram;
using loom::KernelCall;
using loom::OpKind;
using loom::Tensor;
using loom::test::error_of;
using Phase = FusedInstr::Phase;
using Kind = FusedInstr::Kind;
using Shape = std::vector<int64_t>;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();
// A row longer than kReduceBlock (2^16), so reductions fold two blocks.
constexpr int64_t kLong = 65537 + 3;
const std::vector<int64_t> kSizes = {1, 7, 17, 1000, kLong};

// ---- programs ----

FusedInstr load(int dst, int slot, Phase ph = Phase::Pre) {
  FusedInstr x;
  x.kind = Kind::Load, x.phase = ph, x.dst = static_cast<int16_t>(dst), x.a = static_cast<int16_t>(slot);
  return x;
}
FusedInstr constant(int dst, float v, Phase ph = Phase::Pre) {
  FusedInstr x;
  x.kind = Kind::Const, x.phase = ph, x.dst = static_cast<int16_t>(dst), x.imm = v;
  return x;
}
struct Params {
  double f0 = 0, f1 = 0;
  int64_t i0 = 0, i1 = 0;
};
FusedInstr op(OpKind k, int dst, int a, int b = -1, int c = -1, Phase ph = Phase::Pre, Params p = {}) {
  FusedInstr x;
  x.kind = Kind::Op, x.phase = ph, x.op = k, x.dst = static_cast<int16_t>(dst);
  x.a = static_cast<int16_t>(a), x.b = static_cast<int16_t>(b), x.c = static_cast<int16_t>(c);
  x.f[0] = p.f0, x.f[1] = p.f1, x.i[0] = p.i0, x.i[1] = p.i1;
  return x;
}
FusedInstr reduce(OpKind k, int dst, int a) {
  FusedInstr x;
  x.kind = Kind::Reduce, x.phase = Phase::Pre, x.op = k;
  x.dst = static_cast<int16_t>(dst), x.a = static_cast<int16_t>(a);
  return x;
}
FusedInstr store(int slot, int a, Phase ph = Phase::Pre) {
  FusedInstr x;
  x.kind = Kind::Store, x.phase = ph, x.dst = static_cast<int16_t>(slot), x.a = static_cast<int16_t>(a);
  return x;
}

FusedProgram program(Shape domain, int reduce_dims, std::vector<FusedInstr> code) {
  FusedProgram p;
  p.domain = std::move(domain);
  p.reduce_dims = reduce_dims;
  for (const FusedInstr& x : code)
    for (int16_t r : {x.kind == Kind::Store ? int16_t(-1) : x.dst, x.kind == Kind::Load ? int16_t(-1) : x.a, x.b, x.c})
      p.registers = std::max(p.registers, r + 1);
  p.code = std::move(code);
  return p;
}

KernelCall call(OpKind k, const std::vector<Tensor>& in, const std::vector<Tensor>& out) {
  KernelCall c;
  c.op = k;
  for (const Tensor& t : in) c.in.push_back(t.unsafe_impl());
  for (const Tensor& t : out) c.out.push_back(t.unsafe_impl());
  return c;
}

void run_fused(const FusedProgram& p, const std::vector<Tensor>& in, const std::vector<Tensor>& out) {
  KernelCall c = call(OpKind::Fused, in, out);
  c.params = loom::FusedParams{std::make_shared<const FusedProgram>(p)};
  loom::run_kernel(c);
}

// ---- the unfused reference: one primitive at a time on contiguous tensors ----

// op(ins...) into a fresh contiguous tensor of `shape` (ins[0]'s by default).
Tensor prim(OpKind k, std::vector<Tensor> ins, DType out_dtype = loom::kFloat32, Params p = {},
            std::optional<Shape> shape = std::nullopt) {
  for (Tensor& t : ins) t = t.contiguous();
  Tensor out = loom::empty(shape ? *shape : ins[0].sizes(), loom::TensorOptions().dtype(out_dtype));
  KernelCall c = call(k, ins, {out});
  c.f[0] = p.f0, c.f[1] = p.f1, c.i[0] = p.i0, c.i[1] = p.i1;
  loom::run_kernel(c);
  return out;
}
// A reduction of the k trailing dims.
Tensor prim_reduce(OpKind k, const Tensor& x, int64_t dims) {
  const Shape s = x.sizes();
  return prim(k, {x}, loom::kFloat32, {0, 0, dims, 0}, Shape(s.begin(), s.end() - dims));
}

// ---- values and comparison ----

// Normal values (scale 3) with NaN, +-inf, +-0, denormals and large values
// sprinkled in.
Tensor values(const Shape& shape, uint32_t seed, bool specials = true) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  const float special[] = {kNaN, kInf, -kInf, 0.0f, -0.0f, 1e-40f, -1e-41f, 90.0f, -110.0f, 1e30f, 1.0f, 0.5f};
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) {
    x = normal(gen);
    if (specials && gen() % 6 == 0) x = special[gen() % std::size(special)];
  }
  return loom::tensor(v).reshape(shape);
}
Tensor bools(const Shape& shape, uint32_t seed) { return values(shape, seed, false).gt(loom::scalar_tensor(0.0)); }

void expect_same_bits(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  ASSERT_EQ(got.dtype(), want.dtype()) << what;
  const Tensor g = got.contiguous(), w = want.contiguous();
  const size_t bytes = static_cast<size_t>(g.numel()) * loom::element_size(g.dtype());
  if (std::memcmp(g.unsafe_impl()->data(), w.unsafe_impl()->data(), bytes) == 0) return;
  const Tensor gf = g.to(loom::kFloat32), wf = w.to(loom::kFloat32);
  const float* a = gf.data_ptr<float>();
  const float* b = wf.data_ptr<float>();
  for (int64_t i = 0; i < g.numel(); ++i)
    if (std::memcmp(a + i, b + i, sizeof(float)) != 0) {
      ADD_FAILURE() << what << ": first difference at " << i << ": got " << a[i] << ", want " << b[i];
      return;
    }
  ADD_FAILURE() << what << ": bytes differ";
}

// f() on every ISA path this machine runs, reference included.
template <class F>
void on_every_isa(F f) {
  for (loom_test::GemmIsa isa : loom_test::runnable_isas()) {
    loom_test::IsaGuard guard(isa);
    SCOPED_TRACE(std::string("isa ") + loom::cpu::gemm_isa_name(isa));
    f();
  }
}

std::string label(const char* what, int64_t n) { return std::string(what) + " n=" + std::to_string(n); }

// ---- elementwise ----

struct UnaryCase {
  OpKind op;
  Params p = {};
  DType out = loom::kFloat32;
};
const UnaryCase kUnary[] = {
    {OpKind::Neg},        {OpKind::Abs},       {OpKind::Exp},     {OpKind::Log},      {OpKind::Sqrt},
    {OpKind::Rsqrt},      {OpKind::Tanh},      {OpKind::Sigmoid}, {OpKind::Relu},     {OpKind::Gelu},
    {OpKind::GeluTanh},   {OpKind::Silu},      {OpKind::Log1p},   {OpKind::Sign},     {OpKind::Sin},
    {OpKind::Cos},        {OpKind::Erf},       {OpKind::LeakyRelu, {0.01}},           {OpKind::Elu, {1.3}},
    {OpKind::Softplus, {2.0, 20.0}},           {OpKind::Clamp, {-1.0, 2.5, 1, 1}},    {OpKind::Clamp, {0, 0.7, 0, 1}},
    {OpKind::Clamp, {3.0, -1.0, 1, 1}},        {OpKind::IsNan, {}, loom::kBool},
    {OpKind::LogicalNot, {}, loom::kBool},
};

TEST(FusedKernel, UnaryOpsMatchTheirKernels) {
  on_every_isa([] {
    for (int64_t n : kSizes) {
      const Tensor x = values({n}, 1);
      for (const UnaryCase& u : kUnary) {
        // Once on the loaded value, once on an intermediate register (x * 1.5).
        const Tensor y = loom::empty({n}, loom::TensorOptions().dtype(u.out));
        run_fused(program({n}, 0, {load(0, 0), op(u.op, 1, 0, -1, -1, Phase::Pre, u.p), store(0, 1)}), {x}, {y});
        expect_same_bits(y, prim(u.op, {x}, u.out, u.p), label(loom::op_name(u.op), n));
        const Tensor y2 = loom::empty({n}, loom::TensorOptions().dtype(u.out));
        run_fused(program({n}, 0,
                          {load(0, 0), constant(1, 1.5f), op(OpKind::Mul, 2, 0, 1),
                           op(u.op, 3, 2, -1, -1, Phase::Pre, u.p), store(0, 3)}),
                  {x}, {y2});
        const Tensor scaled = prim(OpKind::Mul, {x, loom::full({n}, 1.5)});
        expect_same_bits(y2, prim(u.op, {scaled}, u.out, u.p), label(loom::op_name(u.op), n) + " of an intermediate");
      }
    }
  });
}

struct BinaryCase {
  OpKind op;
  Params p = {};
  DType out = loom::kFloat32;
};
const BinaryCase kBinary[] = {
    {OpKind::Add},  {OpKind::Sub},  {OpKind::Mul},  {OpKind::Div},  {OpKind::Pow},
    {OpKind::Maximum}, {OpKind::Minimum}, {OpKind::ThresholdBackward, {0.5}}, {OpKind::GeluBackward, {0, 0, 0}},
    {OpKind::GeluBackward, {0, 0, 1}}, {OpKind::Eq, {}, loom::kBool}, {OpKind::Ne, {}, loom::kBool},
    {OpKind::Lt, {}, loom::kBool}, {OpKind::Le, {}, loom::kBool}, {OpKind::Gt, {}, loom::kBool},
    {OpKind::Ge, {}, loom::kBool}, {OpKind::LogicalAnd, {}, loom::kBool}, {OpKind::LogicalOr, {}, loom::kBool},
};

// Operand layouts of a binary op over (m, n): b contiguous, a scalar, a row
// (bias), a column, a transposed view.
struct Layout {
  const char* name;
  std::function<Tensor(int64_t m, int64_t n, uint32_t seed)> make;
};
const std::vector<Layout>& layouts() {
  static const std::vector<Layout> all = {
      {"contiguous", [](int64_t m, int64_t n, uint32_t s) { return values({m, n}, s); }},
      {"scalar", [](int64_t m, int64_t n, uint32_t s) { return values({}, s).expand({m, n}); }},
      {"row", [](int64_t m, int64_t n, uint32_t s) { return values({n}, s).expand({m, n}); }},
      {"column", [](int64_t m, int64_t n, uint32_t s) { return values({m, 1}, s).expand({m, n}); }},
      {"transposed", [](int64_t m, int64_t n, uint32_t s) { return values({n, m}, s).t(); }},
  };
  return all;
}

TEST(FusedKernel, BinaryOpsMatchTheirKernelsOnEveryLayout) {
  on_every_isa([] {
    for (const Shape& mn : std::vector<Shape>{{1, 1}, {3, 7}, {5, 17}, {2, 1000}, {40, 33}}) {
      const int64_t m = mn[0], n = mn[1];
      for (const Layout& la : layouts())
        for (const Layout& lb : layouts()) {
          const Tensor a = la.make(m, n, 3), b = lb.make(m, n, 4);
          for (const BinaryCase& bc : kBinary) {
            const Tensor y = loom::empty({m, n}, loom::TensorOptions().dtype(bc.out));
            run_fused(
                program({m, n}, 0, {load(0, 0), load(1, 1), op(bc.op, 2, 0, 1, -1, Phase::Pre, bc.p), store(0, 2)}),
                {a, b}, {y});
            expect_same_bits(y, prim(bc.op, {a, b}, bc.out, bc.p),
                             std::string(loom::op_name(bc.op)) + " " + la.name + " x " + lb.name + " " +
                                 std::to_string(m) + "x" + std::to_string(n));
          }
        }
    }
  });
}

TEST(FusedKernel, BoolOperandsWhereAndCasts) {
  on_every_isa([] {
    for (int64_t n : kSizes) {
      const int64_t m = 3;
      const Tensor x = values({m, n}, 5), z = values({n}, 6).expand({m, n});
      const Tensor cond = bools({n, m}, 7).t();  // a strided bool input
      // Where on a loaded bool condition, then on a computed one (x > z).
      Tensor y = loom::empty({m, n});
      run_fused(program({m, n}, 0, {load(0, 0), load(1, 1), load(2, 2), op(OpKind::Where, 3, 0, 1, 2), store(0, 3)}),
                {cond, x, z}, {y});
      expect_same_bits(y, prim(OpKind::Where, {cond, x, z}), label("Where(bool input)", n));
      Tensor y2 = loom::empty({m, n}), gt = loom::empty({m, n}, loom::kBool);
      run_fused(program({m, n}, 0,
                        {load(0, 0), load(1, 1), op(OpKind::Gt, 2, 0, 1), op(OpKind::Where, 3, 2, 0, 1), store(0, 3),
                         store(1, 2)}),
                {x, z}, {y2, gt});
      const Tensor want_gt = prim(OpKind::Gt, {x, z}, loom::kBool);
      expect_same_bits(gt, want_gt, label("Gt to a bool output", n));
      expect_same_bits(y2, prim(OpKind::Where, {want_gt, x, z}), label("Where(x > z, x, z)", n));
      // Casts: float -> bool (NaN counts as true) -> float, times z; and
      // bool logic on a bool input.
      Tensor y3 = loom::empty({m, n}), y4 = loom::empty({m, n}, loom::kBool);
      run_fused(program({m, n}, 0,
                        {load(0, 0), load(1, 1), load(2, 2),
                         op(OpKind::Copy, 3, 0, -1, -1, Phase::Pre, {0, 0, static_cast<int64_t>(DType::Bool)}),
                         op(OpKind::Copy, 4, 3, -1, -1, Phase::Pre, {0, 0, static_cast<int64_t>(DType::Float32)}),
                         op(OpKind::Mul, 5, 4, 1), store(0, 5), op(OpKind::LogicalAnd, 6, 3, 2),
                         op(OpKind::LogicalNot, 7, 6), store(1, 7)}),
                {x, z, cond}, {y3, y4});
      const Tensor xb = prim(OpKind::Copy, {x}, loom::kBool);
      expect_same_bits(y3, prim(OpKind::Mul, {prim(OpKind::Copy, {xb}), z}), label("cast to bool and back", n));
      expect_same_bits(y4, prim(OpKind::LogicalNot, {prim(OpKind::LogicalAnd, {xb, cond}, loom::kBool)}, loom::kBool),
                       label("bool logic", n));
    }
  });
}

// mul by a scalar, add, relu-like threshold, mul: the benchmark's chain.
FusedProgram chain(const Shape& domain) {
  return program(domain, 0,
                 {load(0, 0), load(1, 1), constant(2, 0.75f), op(OpKind::Mul, 3, 0, 2), op(OpKind::Add, 4, 3, 1),
                  op(OpKind::Relu, 5, 4), op(OpKind::Mul, 6, 5, 1), store(0, 6)});
}
Tensor chain_reference(const Tensor& x, const Tensor& b) {
  const Tensor s = prim(OpKind::Mul, {x, loom::full(x.sizes(), 0.75)});
  return prim(OpKind::Mul, {prim(OpKind::Relu, {prim(OpKind::Add, {s, b})}), b});
}

TEST(FusedKernel, ChainsOnStridedInputsAndInPlace) {
  on_every_isa([] {
    for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{1000}, int64_t{40000}}) {
      for (const Layout& lx : layouts()) {
        const Tensor x = lx.make(3, n, 8), b = values({3, n}, 9);
        Tensor y = loom::empty({3, n});
        run_fused(chain({3, n}), {x, b}, {y});
        expect_same_bits(y, chain_reference(x, b), label(lx.name, n));
      }
      // In place: the output is the input (same storage, offset and strides), also transposed.
      for (bool transposed : {false, true}) {
        Tensor x = transposed ? values({n, 3}, 10).t() : values({3, n}, 10);
        const Tensor b = values({3, n}, 11), want = chain_reference(x, b);
        run_fused(chain({3, n}), {x, b}, {x});
        expect_same_bits(x, want, label(transposed ? "in place, transposed" : "in place", n));
      }
    }
    // Large enough to split over threads; the result does not depend on the thread count.
    const Tensor x = values({1 << 20}, 12), b = values({1 << 20}, 13);
    const Tensor want = chain_reference(x, b);
    for (int threads : {1, 2, 3}) {
      loom_test::ThreadsGuard g(threads);
      Tensor y = loom::empty({1 << 20});
      run_fused(chain({1 << 20}), {x, b}, {y});
      expect_same_bits(y, want, "chain on " + std::to_string(threads) + " threads");
    }
  });
}

TEST(FusedKernel, ZeroDimAndEmptyDomains) {
  on_every_isa([] {
    const Tensor x = values({}, 14), b = values({}, 15);
    Tensor y = loom::empty({});
    run_fused(chain({}), {x, b}, {y});
    expect_same_bits(y, chain_reference(x, b), "0-dim");
    const Tensor e = loom::empty({0, 5});
    Tensor ye = loom::empty({0, 5});
    run_fused(chain({0, 5}), {e, e}, {ye});  // nothing to do, nothing to fail
  });
}

// ---- reductions ----

const OpKind kReductions[] = {OpKind::Sum, OpKind::Amax, OpKind::Amin};

TEST(FusedKernel, ReductionsMatchTheRowsPath) {
  on_every_isa([] {
    for (int64_t n : kSizes)
      for (OpKind r : kReductions) {
        const int64_t rows = n == kLong ? 2 : 5;
        const Tensor x = values({rows, n}, 16), z = values({rows, n}, 17, false);
        // A plain reduction of the loaded row, with its input also stored
        // (a Pre store) as exp(x).
        Tensor y = loom::empty({rows}), ex = loom::empty({rows, n});
        run_fused(program({rows, n}, 1,
                          {load(0, 0), reduce(r, 1, 0), op(OpKind::Exp, 2, 0), store(1, 2), store(0, 1, Phase::Row)}),
                  {x}, {y, ex});
        expect_same_bits(y, prim_reduce(r, x, 1), label(loom::op_name(r), n));
        expect_same_bits(ex, prim(OpKind::Exp, {x}), label("Pre store beside a reduction", n));
        // The reduction of an intermediate, on a transposed input: the fold
        // sees the materialized row's values.
        const Tensor xt = values({n, rows}, 18).t();
        Tensor y2 = loom::empty({rows});
        run_fused(program({rows, n}, 1,
                          {load(0, 0), load(1, 1), op(OpKind::Mul, 2, 0, 1), reduce(r, 3, 2), store(0, 3, Phase::Row)}),
                  {xt, z}, {y2});
        expect_same_bits(y2, prim_reduce(r, prim(OpKind::Mul, {xt, z}), 1), label("reduce of x * z", n));
      }
  });
}

TEST(FusedKernel, NormWithARowSqrt) {
  on_every_isa([] {
    for (int64_t n : kSizes) {
      const Tensor x = values({3, n}, 19, false);
      Tensor y = loom::empty({3});
      run_fused(program({3, n}, 1,
                        {load(0, 0), op(OpKind::Mul, 1, 0, 0), reduce(OpKind::Sum, 2, 1),
                         op(OpKind::Sqrt, 3, 2, -1, -1, Phase::Row), store(0, 3, Phase::Row)}),
                {x}, {y});
      expect_same_bits(y, prim(OpKind::Sqrt, {prim_reduce(OpKind::Sum, prim(OpKind::Mul, {x, x}), 1)}),
                       label("sqrt(sum(x * x))", n));
    }
  });
}

// Softmax as the fusion pass writes it: the row max (program 1), then exp(x -
// max), its sum, and exp / sum after the reduction (program 2).
TEST(FusedKernel, SoftmaxInTwoPrograms) {
  on_every_isa([] {
    for (int64_t n : kSizes) {
      const int64_t rows = n == kLong ? 2 : 4;
      for (bool transposed : {false, true}) {
        const Tensor x = transposed ? values({n, rows}, 20, false).t() : values({rows, n}, 20, false);
        Tensor mx = loom::empty({rows});
        run_fused(program({rows, n}, 1, {load(0, 0), reduce(OpKind::Amax, 1, 0), store(0, 1, Phase::Row)}), {x}, {mx});
        Tensor y = loom::empty({rows, n}), sum = loom::empty({rows});
        run_fused(program({rows, n}, 1,
                          {load(0, 0), load(1, 1), op(OpKind::Sub, 2, 0, 1), op(OpKind::Exp, 3, 2),
                           reduce(OpKind::Sum, 4, 3), store(1, 4, Phase::Row),
                           op(OpKind::Div, 5, 3, 4, -1, Phase::Post), store(0, 5, Phase::Post)}),
                  {x, mx.unsqueeze(1).expand({rows, n})}, {y, sum});
        const Tensor want_mx = prim_reduce(OpKind::Amax, x, 1);
        const Tensor e = prim(OpKind::Exp, {prim(OpKind::Sub, {x, want_mx.unsqueeze(1).expand({rows, n})})});
        const Tensor want_sum = prim_reduce(OpKind::Sum, e, 1);
        const std::string what = label(transposed ? "softmax, transposed" : "softmax", n);
        expect_same_bits(mx, want_mx, what + " max");
        expect_same_bits(sum, want_sum, what + " sum");
        expect_same_bits(y, prim(OpKind::Div, {e, want_sum.unsqueeze(1).expand({rows, n})}), what);
      }
    }
  });
}

TEST(FusedKernel, RowPhaseLoadsConstantsAndFullReductions) {
  on_every_isa([] {
    for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{1000}}) {
      // mean + bias over the two trailing dims of (2, 3, n), the bias a Row
      // Load, the scale a Row Const; Post: x - that.
      const Tensor x = values({2, 3, n}, 21), bias = values({2}, 22);
      Tensor y = loom::empty({2}), centered = loom::empty({2, 3, n});
      const float scale = 1.0f / static_cast<float>(3 * n);
      run_fused(program({2, 3, n}, 2,
                        {load(0, 0), reduce(OpKind::Sum, 1, 0), constant(2, scale, Phase::Row),
                         op(OpKind::Mul, 3, 1, 2, -1, Phase::Row), load(4, 1, Phase::Row),
                         op(OpKind::Add, 5, 3, 4, -1, Phase::Row), store(0, 5, Phase::Row),
                         op(OpKind::Sub, 6, 0, 5, -1, Phase::Post), store(1, 6, Phase::Post)}),
                {x, bias}, {y, centered});
      const Tensor mean = prim(OpKind::Mul, {prim_reduce(OpKind::Sum, x, 2), loom::full({2}, scale)});
      const Tensor want = prim(OpKind::Add, {mean, bias});
      expect_same_bits(y, want, label("mean + bias", n));
      expect_same_bits(centered, prim(OpKind::Sub, {x, want.view({2, 1, 1}).expand({2, 3, n})}), label("x - mean", n));
      // Full reductions to a 0-dim result, of rank 1 and 2, and a 0-dim input.
      for (OpKind r : kReductions) {
        const Tensor v = values({n}, 23), w = values({3, n}, 24);
        Tensor a = loom::empty({}), b = loom::empty({});
        run_fused(program({n}, 1, {load(0, 0), reduce(r, 1, 0), store(0, 1, Phase::Row)}), {v}, {a});
        run_fused(program({3, n}, 2, {load(0, 0), reduce(r, 1, 0), store(0, 1, Phase::Row)}), {w}, {b});
        expect_same_bits(a, prim_reduce(r, v, 1), label("full reduction, rank 1", n));
        expect_same_bits(b, prim_reduce(r, w, 2), label("full reduction, rank 2", n));
        const Tensor s = values({}, 25);
        Tensor c = loom::empty({});
        run_fused(program({}, 0, {load(0, 0), reduce(r, 1, 0), store(0, 1, Phase::Row)}), {s}, {c});
        expect_same_bits(c, prim_reduce(r, s, 0), "reduction of a 0-dim tensor");
      }
    }
    // Empty rows fold to the identity; an empty set of rows does nothing.
    for (OpKind r : kReductions) {
      const Tensor x = loom::empty({3, 0});
      Tensor y = loom::empty({3});
      run_fused(program({3, 0}, 1, {load(0, 0), reduce(r, 1, 0), store(0, 1, Phase::Row)}), {x}, {y});
      expect_same_bits(y, prim_reduce(r, x, 1), "empty rows");
      Tensor none = loom::empty({0});
      run_fused(program({0, 4}, 1, {load(0, 0), reduce(r, 1, 0), store(0, 1, Phase::Row)}), {loom::empty({0, 4})},
                {none});
    }
  });
}

TEST(FusedKernel, ReductionsDoNotDependOnTheThreadCount) {
  const Tensor x = values({64, 3000}, 26, false);
  const FusedProgram p = program({64, 3000}, 1,
                                 {load(0, 0), op(OpKind::Exp, 1, 0), reduce(OpKind::Sum, 2, 1),
                                  op(OpKind::Div, 3, 1, 2, -1, Phase::Post), store(0, 3, Phase::Post)});
  Tensor want = loom::empty({64, 3000});
  {
    loom_test::ThreadsGuard g(1);
    run_fused(p, {x}, {want});
  }
  for (int threads : {2, 3}) {
    loom_test::ThreadsGuard g(threads);
    Tensor y = loom::empty({64, 3000});
    run_fused(p, {x}, {y});
    expect_same_bits(y, want, std::to_string(threads) + " threads");
  }
}

// ---- errors ----

TEST(FusedKernel, MalformedProgramsAreErrors) {
  const Tensor x = values({4, 5}, 27), i64 = loom::zeros({4, 5}, loom::kInt64);
  Tensor y = loom::empty({4, 5}), r = loom::empty({4});
  const auto fails = [](const FusedProgram& p, const std::vector<Tensor>& in, const std::vector<Tensor>& out) {
    return error_of([&] { run_fused(p, in, out); });
  };
  const auto expect_has = [](const std::string& msg, const std::string& part) {
    EXPECT_NE(msg.find("Fused"), std::string::npos) << msg;
    EXPECT_NE(msg.find(part), std::string::npos) << msg;
  };
  FusedProgram bad = program({4, 5}, 0, {load(0, 0), op(OpKind::Exp, 1, 0), store(0, 1)});
  bad.registers = 1;
  expect_has(fails(bad, {x}, {y}), "register r1 out of range");
  expect_has(fails(program({4, 5}, 0, {load(0, 0), op(OpKind::Exp, 1, 3), store(0, 1)}), {x}, {y}),
             "reads r3 before any instruction writes it");
  expect_has(fails(program({4, 5}, 1,
                           {load(0, 0), reduce(OpKind::Sum, 1, 0), op(OpKind::Add, 2, 1, 0, -1, Phase::Row),
                            store(0, 2, Phase::Row)}),
                   {x}, {r}),
             "a Row instruction reads r0, a Pre register");
  expect_has(fails(program({4, 5}, 1, {load(0, 0), op(OpKind::Exp, 1, 0), store(0, 1)}), {x}, {y}),
             "no Reduce instruction");
  expect_has(fails(program({4, 5}, 1, {load(0, 0), reduce(OpKind::Prod, 1, 0), store(0, 1, Phase::Row)}), {x}, {r}),
             "Reduce by Prod");
  expect_has(fails(program({4, 5}, 0, {load(0, 0), op(OpKind::Exp, 1, 0, -1, -1, Phase::Post), store(0, 1)}), {x}, {y}),
             "without a reduction");
  expect_has(fails(program({4, 5}, 0, {load(0, 0), op(OpKind::Softmax, 1, 0), store(0, 1)}), {x}, {y}),
             "Softmax is not an elementwise op");
  expect_has(fails(program({4, 5}, 0, {load(0, 0), op(OpKind::Exp, 1, 0, 0), store(0, 1)}), {x}, {y}),
             "Exp takes 1 operands");
  expect_has(fails(program({4, 5}, 0, {load(0, 0), op(OpKind::Exp, 1, 0), store(0, 1)}), {x.view({20})}, {y}),
             "in0 has rank 1, expected 2");
  expect_has(fails(program({4, 5}, 0, {load(0, 0), op(OpKind::Exp, 1, 0), store(0, 1)}), {x.t()}, {y}),
             "in0 has shape");
  expect_has(fails(program({4, 5}, 0, {load(0, 0), op(OpKind::Exp, 1, 0), store(0, 1)}), {i64}, {y}),
             "in0 has dtype int64");
  expect_has(fails(program({4, 5}, 0, {load(0, 2), op(OpKind::Exp, 1, 0), store(0, 1)}), {x}, {y}), "in2 out of range");
  expect_has(fails(program({4, 5}, 1, {load(0, 0), reduce(OpKind::Sum, 1, 0), store(0, 1, Phase::Row)}), {x}, {y}),
             "out0 has rank 2, expected 1");
  expect_has(fails(program({4, 5}, 3, {load(0, 0), reduce(OpKind::Sum, 1, 0), store(0, 1, Phase::Row)}), {x}, {r}),
             "reduce_dims 3 for a domain of rank 2");
  // A Pre store in place of an input the Post phase reads again.
  Tensor inplace = values({4, 5}, 28);
  expect_has(fails(program({4, 5}, 1,
                           {load(0, 0), op(OpKind::Exp, 1, 0), store(0, 1), reduce(OpKind::Sum, 2, 1),
                            op(OpKind::Div, 3, 0, 2, -1, Phase::Post), store(1, 3, Phase::Post)}),
                   {inplace}, {inplace, y}),
             "which the Post phase reads again");
  KernelCall no_program = call(OpKind::Fused, {x}, {y});
  expect_has(error_of([&] { loom::run_kernel(no_program); }), "without a program");
}

}  // namespace
