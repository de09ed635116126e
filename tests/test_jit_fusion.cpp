// The fusion pass (Note [Fusion] in src/jit/fusion.cpp): which nodes fuse
// into one kernel, that a fused graph gives the bits of the unfused one on
// every ISA the machine runs (elementwise chains, broadcasting, bool values,
// reductions with their Pre, Row and Post phases), that a fused group keeps
// no value alive longer than the unfused graph would, and that a group
// closes where a node in between would see its members move.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>

#include "ops/fast_paths.h"
#include "loom/loom.h"
#include "test_util.h"

using namespace loom;
using loom::test::same_bits;
using loom_test::GemmIsa;
using loom_test::IsaGuard;
using loom_test::runnable_isas;

namespace {

using Fn = std::function<std::vector<Tensor>(const std::vector<Tensor>&)>;

int64_t count(const jit::Graph& g, const std::string& op) {
  const std::vector<std::string> ops = g.ops();
  return std::count(ops.begin(), ops.end(), op);
}

// The serial order's arena (a parallel schedule may lay it out wider).
size_t planned_arena(const jit::Graph& g) {
  const jit::MemoryPlan p = g.memory_plan();
  return p.serial_arena_bytes > 0 ? p.serial_arena_bytes : p.arena_bytes;
}

Tensor randn_(const std::vector<int64_t>& shape, uint64_t seed) {
  return randn(shape, {}, Generator(seed));
}

// Runs fn eagerly, compiled with fusion and compiled without, over a few
// calls (the third replays), and checks that all three agree bit for bit.
// Returns the fused graph.
std::shared_ptr<const jit::Graph> check(const Fn& fn, const std::vector<Tensor>& args, bool gemm_epilogues = false) {
  jit::CompileOptions plain, all;
  plain.fuse = false;
  all.fuse_gemm_epilogues = gemm_epilogues;
  jit::detail::Compiler fused(fn, all), unfused(fn, plain);
  const std::vector<Tensor> want = fn(args);
  for (int call = 0; call < 3; ++call) {
    const std::vector<Tensor> a = fused.call(args), b = unfused.call(args);
    EXPECT_EQ(a.size(), want.size());
    for (size_t k = 0; k < want.size() && k < a.size(); ++k) {
      EXPECT_TRUE(same_bits(a[k], want[k])) << "fused output " << k << ", call " << call;
      EXPECT_TRUE(same_bits(b[k], want[k])) << "unfused output " << k << ", call " << call;
    }
  }
  EXPECT_GE(fused.stats().replays, 1);
  return fused.graph();
}

Tensor softmax_of_primitives(const Tensor& x) {
  Tensor e = exp(x - amax(x, {-1}, true));
  return e / e.sum({-1}, true);
}

Tensor layer_norm_of_primitives(const Tensor& x) {
  const double n = static_cast<double>(x.size(-1));
  Tensor xc = x - x.sum({-1}, true) / n;
  Tensor var = (xc * xc).sum({-1}, true) / n;
  return xc * rsqrt(var + 1e-5);
}

}  // namespace

TEST(Fusion, ElementwiseChainIsOneKernel) {
  for (GemmIsa isa : runnable_isas()) {
    IsaGuard guard(isa);
    SCOPED_TRACE(loom::cpu::gemm_isa_name(isa));
    const Tensor x = randn_({37, 129}, 1), b = randn_({129}, 2);
    auto g = check([](const std::vector<Tensor>& a) { return std::vector<Tensor>{relu(a[0] * 2.0 + a[1]) * a[1] - 1.0}; },
                   {x, b});
    EXPECT_EQ(count(*g, "Fused"), 1) << g->str();
    EXPECT_EQ(count(*g, "Mul") + count(*g, "Add") + count(*g, "Relu") + count(*g, "Sub"), 0) << g->str();
    EXPECT_NE(g->str().find("fused: Mul Add Relu Mul Sub"), std::string::npos) << g->str();
  }
}

TEST(Fusion, TranscendentalsGiveTheVectorKernelsBits) {
  for (GemmIsa isa : runnable_isas()) {
    IsaGuard guard(isa);
    SCOPED_TRACE(loom::cpu::gemm_isa_name(isa));
    for (int64_t n : {1, 7, 17, 1000, 4099}) {
      const Tensor x = randn_({n}, 3), y = randn_({n}, 4);
      auto g = check(
          [](const std::vector<Tensor>& a) {
            const Tensor& p = a[0];
            const Tensor& q = a[1];
            Tensor t = tanh(p) + sigmoid(q) * exp(p * 0.5) - silu(q);
            return std::vector<Tensor>{gelu(t) + log(abs(q) + 1.0) + sqrt(abs(p)) / (1.0 + erf(q)) + sin(p) * cos(q)};
          },
          {x, y});
      EXPECT_EQ(count(*g, "Fused"), 1) << g->str();
    }
  }
}

TEST(Fusion, StridedOperandsAndBroadcasts) {
  for (GemmIsa isa : runnable_isas()) {
    IsaGuard guard(isa);
    SCOPED_TRACE(loom::cpu::gemm_isa_name(isa));
    // A transposed operand, a column and a scalar broadcast, a gate slice
    // (rows of a wider tensor, as an LSTM's chunks).
    const Tensor x = randn_({23, 64}, 5), w = randn_({64, 23}, 6), col = randn_({23, 1}, 7), gates = randn_({23, 256}, 8);
    auto g = check(
        [](const std::vector<Tensor>& a) {
          Tensor s = a[0] + a[1].t();
          Tensor h = sigmoid(a[3].narrow(1, 64, 64)) * tanh(a[3].narrow(1, 128, 64));
          return std::vector<Tensor>{(s * a[2] + h) * 3.0};
        },
        {x, w, col, gates});
    EXPECT_EQ(count(*g, "Fused"), 1) << g->str();
  }
}

TEST(Fusion, BoolValuesWhereAndCasts) {
  for (GemmIsa isa : runnable_isas()) {
    IsaGuard guard(isa);
    SCOPED_TRACE(loom::cpu::gemm_isa_name(isa));
    Tensor x = randn_({19, 33}, 9), y = randn_({19, 33}, 10);
    x.index_put_({0, 0}, std::numeric_limits<float>::quiet_NaN());
    auto g = check(
        [](const std::vector<Tensor>& a) {
          Tensor pos = a[0] > 0.0;
          Tensor keep = logical_and(pos, logical_not(isnan(a[1])));
          Tensor z = where(keep, a[0], a[1] * 0.5) + pos.to(kFloat32) * a[1];
          return std::vector<Tensor>{z, logical_or(pos, a[1] < 0.0)};
        },
        {x, y});
    EXPECT_EQ(count(*g, "Fused"), 1) << g->str();
  }
}

TEST(Fusion, ReductionsWithRowAndPostPhases) {
  for (GemmIsa isa : runnable_isas()) {
    IsaGuard guard(isa);
    SCOPED_TRACE(loom::cpu::gemm_isa_name(isa));
    for (int64_t n : {1, 7, 1000}) {
      const Tensor x = randn_({13, n}, 11);
      // Softmax: max, then exp(x - max) feeding the sum, then the division.
      auto g = check([](const std::vector<Tensor>& a) { return std::vector<Tensor>{softmax_of_primitives(a[0])}; }, {x});
      EXPECT_EQ(count(*g, "Fused"), 2) << g->str();
      EXPECT_EQ(count(*g, "Exp") + count(*g, "Sum") + count(*g, "Amax") + count(*g, "Div"), 0) << g->str();
      g = check([](const std::vector<Tensor>& a) { return std::vector<Tensor>{layer_norm_of_primitives(a[0])}; }, {x});
      EXPECT_EQ(count(*g, "Fused"), 2) << g->str();
    }
    // A norm: the Row phase computes the sqrt; a row longer than the Sum
    // kernel's block, summed in its blocks' order.
    for (int64_t n : {5, 70001}) {
      const Tensor v = randn_({n}, 12);
      auto g = check([](const std::vector<Tensor>& a) { return std::vector<Tensor>{sqrt((a[0] * a[0]).sum())}; }, {v});
      EXPECT_EQ(count(*g, "Fused"), 1) << g->str();
    }
    // A sum over a leading dim reads its input across rows: not the row
    // path, so the Sum runs alone and the bits stay the column kernel's.
    const Tensor m = randn_({40, 24}, 13);
    auto g = check([](const std::vector<Tensor>& a) { return std::vector<Tensor>{(a[0] * 2.0).sum({0})}; }, {m});
    EXPECT_EQ(count(*g, "Sum"), 1) << g->str();
  }
}

TEST(Fusion, GroupsCloseWhereANodeInBetweenWouldSeeThemMove) {
  // b is fused with a, but a is written in place before c reads both: the
  // group must run before the in-place write.
  const Tensor x = randn_({8, 16}, 14);
  auto g = check(
      [](const std::vector<Tensor>& a) {
        Tensor p = a[0] * 2.0;
        Tensor q = p + 1.0;
        Tensor r = q * 3.0;
        p.mul_(5.0);
        return std::vector<Tensor>{r + p, q};
      },
      {x});
  EXPECT_GE(count(*g, "Fused"), 1) << g->str();
  // A matmul between members that reads a member's value.
  const Tensor w = randn_({16, 16}, 15);
  g = check(
      [](const std::vector<Tensor>& a) {
        Tensor p = relu(a[0] * 2.0);
        Tensor q = matmul(p, a[1]);
        return std::vector<Tensor>{tanh(q) + p};
      },
      {x, w});
  EXPECT_EQ(count(*g, "Bmm"), 1) << g->str();
  EXPECT_EQ(count(*g, "Fused"), 2) << g->str();  // the relu's group closed before the product
}

TEST(Fusion, AccumulationChainsKeepNothingAliveLonger) {
  // acc += x @ w_k over many k: each product dies at its add. A group that
  // swallowed the whole chain would keep every product until its end.
  // (Products large beside the fused kernels' register blocks, which their
  // workspaces add.)
  const Tensor x = randn_({256, 256}, 16);
  std::vector<Tensor> ws;
  for (int k = 0; k < 12; ++k) ws.push_back(randn_({256, 256}, 100 + static_cast<uint64_t>(k)));
  auto fn = [ws](const std::vector<Tensor>& a) {
    Tensor acc = matmul(a[0], ws[0]);
    for (size_t k = 1; k < ws.size(); ++k) acc = acc + matmul(a[0], ws[k]) * 0.5;
    return std::vector<Tensor>{acc};
  };
  auto g = check(fn, {x});
  jit::CompileOptions plain;
  plain.fuse = false;
  jit::detail::Compiler unfused(fn, plain);
  for (int k = 0; k < 2; ++k) unfused.call({x});
  EXPECT_GE(count(*g, "Fused"), 1) << g->str();
  // The fused kernels' register blocks add a little workspace, never a product's bytes.
  const size_t product_bytes = 256 * 256 * sizeof(float);
  EXPECT_LT(planned_arena(*g), planned_arena(*unfused.graph()) + product_bytes);
}

TEST(Fusion, TrainingStepsMatchEagerAndFuse) {
  // An LSTM language model: its cells are elementwise chains over gate
  // slices; the compiled step equals eager (test_jit checks every model's
  // step bit for bit with the default options, fusion on) and fuses them.
  manual_seed(3);
  models::LSTMLMConfig cfg;
  cfg.vocab_size = 11;
  cfg.hidden = 32;
  cfg.layers = 1;
  models::LSTMLM model(cfg);
  optim::Adam opt(model->parameters(), optim::AdamOptions(1e-3));
  auto step = [&](const Tensor& x, const Tensor& y) {
    opt.zero_grad();
    Tensor loss = model->loss(x, y);
    loss.backward();
    opt.step();
    return loss;
  };
  auto compiled = loom::compile(step);
  const Tensor x = randint(0, cfg.vocab_size, {4, 9}), y = randint(0, cfg.vocab_size, {4, 9});
  for (int k = 0; k < 4; ++k) compiled(x, y);
  EXPECT_GT(count(*compiled.graph(), "Fused"), 9) << compiled.graph()->str();
  EXPECT_EQ(count(*compiled.graph(), "Sigmoid"), 0);
}

TEST(Fusion, OffByOption) {
  const Tensor x = randn_({5, 5}, 17);
  jit::CompileOptions o;
  o.fuse = false;
  auto f = loom::compile([](const Tensor& a) { return relu(a * 2.0 + 1.0); }, o);
  for (int k = 0; k < 3; ++k) f(x);
  EXPECT_EQ(count(*f.graph(), "Fused"), 0);
  EXPECT_EQ(count(*f.graph(), "Relu"), 1);
}

TEST(Fusion, GemmEpiloguesGiveTheUnfusedBits) {
  for (GemmIsa isa : runnable_isas()) {
    IsaGuard guard(isa);
    SCOPED_TRACE(loom::cpu::gemm_isa_name(isa));
    // Odd sizes; a transposed operand; the epilogue reads a residual, a
    // broadcast row and a relu mask (the backward form), and the product is
    // also returned (so it is stored beside the result).
    for (int64_t m : {1, 5, 37}) {
      const Tensor a = randn_({m, 33}, 20), b = randn_({19, 33}, 21), r = randn_({m, 19}, 22), bias = randn_({19}, 23);
      auto g = check(
          [](const std::vector<Tensor>& t) {
            Tensor p = matmul(t[0], t[1].t());
            return std::vector<Tensor>{threshold_backward(p * 0.5 + t[3], t[2], 0.0) + t[2]};
          },
          {a, b, r, bias}, true);
      EXPECT_EQ(count(*g, "Fused"), 1) << g->str();
      EXPECT_EQ(count(*g, "Bmm"), 0) << g->str();
      EXPECT_NE(g->str().find("fused: Bmm Mul Add"), std::string::npos) << g->str();
      g = check(
          [](const std::vector<Tensor>& t) {
            Tensor p = matmul(t[0], t[1].t());
            return std::vector<Tensor>{tanh(p) + t[2], p};
          },
          {a, b, r}, true);
      EXPECT_EQ(count(*g, "Fused"), 1) << g->str();
    }
    // A batched product whose result feeds a chain.
    const Tensor x = randn_({3, 7, 16}, 24), w = randn_({3, 16, 9}, 25);
    auto g = check([](const std::vector<Tensor>& t) { return std::vector<Tensor>{gelu(bmm(t[0], t[1])) * 2.0}; },
                   {x, w}, true);
    EXPECT_EQ(count(*g, "Fused"), 1) << g->str();
  }
}

// A training step whose backward has relu masks after its products: with
// GEMM epilogues on, the compiled step still gives eager's bits.
TEST(Fusion, GemmEpiloguesInATrainingStep) {
  manual_seed(6);
  nn::Sequential a = models::mlp(20, {32, 16}, 5), b = models::mlp(20, {32, 16}, 5);
  b->load_state_dict(a->state_dict());
  optim::AdamW oa(a->parameters(), optim::AdamWOptions(1e-3)), ob(b->parameters(), optim::AdamWOptions(1e-3));
  auto step = [](nn::Sequential& m, optim::AdamW& opt) {
    return [&m, &opt](const Tensor& x, const Tensor& y) {
      opt.zero_grad();
      Tensor loss = nn::functional::cross_entropy(m->forward(x), y);
      loss.backward();
      opt.step();
      return loss;
    };
  };
  jit::CompileOptions o;
  o.fuse_gemm_epilogues = true;
  auto compiled = loom::compile(step(b, ob), o);
  auto eager = step(a, oa);
  for (int k = 0; k < 5; ++k) {
    const Tensor x = randn_({8, 20}, 200 + static_cast<uint64_t>(k)), y = randint(5, {8});
    EXPECT_TRUE(same_bits(eager(x, y).detach(), compiled(x, y).detach())) << "step " << k;
    for (size_t p = 0; p < a->parameters().size(); ++p)
      EXPECT_TRUE(same_bits(a->parameters()[p], b->parameters()[p])) << "parameter " << p << ", step " << k;
  }
  EXPECT_NE(compiled.graph()->str().find("fused: Bmm ThresholdBackward"), std::string::npos) << compiled.graph()->str();
}
