// Autograd: backward, accumulation, retain_graph, higher-order gradients,
// grad mode, detach, hooks, retain_grad, autograd::grad, in-place rules and a
// long training loop whose memory stays flat.
#include <gtest/gtest.h>
#include <loom/loom.h>

#include <cmath>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unistd.h>
#include <vector>

#include "test_util.h"

namespace {

using namespace loom;
using V = std::vector<double>;

V vals(const Tensor& t) { return t.to_vector<double>(); }

Tensor leaf(const V& v) {
  Tensor t = empty({static_cast<int64_t>(v.size())}, kFloat64);
  std::copy(v.begin(), v.end(), t.data_ptr<double>());
  return t.requires_grad_(true);
}

void expect_near(const V& got, const V& want, double tol = 1e-12) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], tol) << "at " << i;
}

using loom::test::error_of;

TEST(Backward, ScalarWithoutGradient) {
  Tensor x = leaf({1, 2, 3});
  Tensor y = (x * x).sum();
  EXPECT_FALSE(y.is_leaf());
  EXPECT_TRUE(y.requires_grad());
  EXPECT_NE(y.grad_fn(), nullptr);
  y.backward();
  expect_near(vals(x.grad()), {2, 4, 6});
  EXPECT_FALSE(x.grad().requires_grad());
}

TEST(Backward, WithExplicitGradient) {
  Tensor x = leaf({1, 2, 3});
  Tensor y = x * 3;
  y.backward(tensor({1.0, 0.5, 2.0}, kFloat64));
  expect_near(vals(x.grad()), {3, 1.5, 6});
}

TEST(Backward, AccumulatesAcrossCalls) {
  Tensor x = leaf({1, 2});
  (x * x).sum().backward();
  (x * 3).sum().backward();
  expect_near(vals(x.grad()), {2 + 3, 4 + 3});
  // The same graph twice with retain_graph: gradients add up.
  Tensor z = leaf({0.5});
  Tensor y = z.exp().sum();
  y.backward(Tensor(), /*retain_graph=*/true);
  y.backward();
  expect_near(vals(z.grad()), {2 * std::exp(0.5)});
}

TEST(Backward, SecondBackwardWithoutRetainGraphErrors) {
  Tensor x = leaf({0.5, 1.0});
  Tensor y = (x.exp() * x).sum();
  y.backward();
  std::string msg = error_of([&] { y.backward(); });
  EXPECT_NE(msg.find("second time"), std::string::npos) << msg;
  EXPECT_NE(msg.find("retain_graph"), std::string::npos) << msg;
}

TEST(Backward, SharedSubexpressionsSumTheirGradients) {
  Tensor x = leaf({0.3, -0.7});
  Tensor a = x * 2;
  Tensor y = (a.exp() + a.sin() + x).sum();  // a diamond plus a direct use
  y.backward();
  V xv = {0.3, -0.7}, want;
  for (double v : xv) want.push_back(2 * std::exp(2 * v) + 2 * std::cos(2 * v) + 1);
  expect_near(vals(x.grad()), want);
}

TEST(Backward, SavedTensorsAreReleasedAfterBackward) {
  // x's memory is ours (from_blob with a deleter), so we see when the last
  // reference to it, the one saved by mul for w's gradient, goes away.
  auto make_x = [](bool& freed) {
    auto* buf = new double[3]{4, 5, 6};
    return from_blob(buf, {3}, kFloat64, [&freed](void* p) {
      delete[] static_cast<double*>(p);
      freed = true;
    });
  };
  Tensor w = leaf({1, 2, 3});
  bool freed = false;
  Tensor loss = (make_x(freed) * w).sum();
  EXPECT_FALSE(freed);  // the graph holds x
  loss.backward();
  expect_near(vals(w.grad()), {4, 5, 6});
  EXPECT_TRUE(freed);  // released by backward although loss and its graph live on

  bool kept = false;
  Tensor loss2 = (make_x(kept) * w).sum();
  loss2.backward(Tensor(), /*retain_graph=*/true);
  EXPECT_FALSE(kept);  // retained for a second backward
  loss2 = Tensor();
  EXPECT_TRUE(kept);  // and freed with the graph
}

TEST(Backward, MultipleRoots) {
  Tensor x = leaf({1, 2});
  autograd::backward({(x * 2).sum(), (x * x).sum()});
  expect_near(vals(x.grad()), {2 + 2, 2 + 4});
}

TEST(Backward, DeepChain) {
  // A long chain must not recurse once per node (engine or destructors).
  Tensor x = leaf({1.0});
  Tensor y = x;
  for (int i = 0; i < 10000; ++i) y = y * 1.0 + 0.0;
  y.sum().backward();
  expect_near(vals(x.grad()), {1});
}

TEST(Backward, ToDtypeIsDifferentiable) {
  Tensor x = ones({3}, TensorOptions().dtype(kFloat32).requires_grad(true));
  Tensor y = x.to(kFloat64) * 2;
  EXPECT_EQ(y.dtype(), kFloat64);
  y.sum().backward();
  EXPECT_EQ(x.grad().dtype(), kFloat32);
  expect_near(vals(x.grad()), {2, 2, 2});
}

TEST(Backward, IntegerOutputsDoNotRequireGrad) {
  Tensor x = leaf({1, 3, 2});
  EXPECT_FALSE(x.argmax().requires_grad());
  EXPECT_FALSE((x > 1.5).requires_grad());
  auto [v, i] = x.max(0);
  EXPECT_TRUE(v.requires_grad());
  EXPECT_FALSE(i.requires_grad());
}

// ---------------------------------------------------------------- higher order

TEST(HigherOrder, SecondDerivativeOfTanh) {
  V xs = {-1.5, -0.2, 0.0, 0.7, 2.0};
  Tensor x = leaf(xs);
  Tensor y = tanh(x).sum();
  Tensor g = autograd::grad({y}, {x}, {}, std::nullopt, /*create_graph=*/true)[0];
  EXPECT_TRUE(g.requires_grad());
  Tensor g2 = autograd::grad({g.sum()}, {x})[0];
  V d1, d2;
  for (double v : xs) {
    double t = std::tanh(v);
    d1.push_back(1 - t * t);
    d2.push_back(-2 * t * (1 - t * t));
  }
  expect_near(vals(g), d1);
  expect_near(vals(g2), d2);
}

TEST(HigherOrder, DerivativesOfCube) {
  V xs = {-2, -0.5, 1, 3};
  Tensor x = leaf(xs);
  Tensor y = (x * x * x).sum();
  Tensor g1 = autograd::grad({y}, {x}, {}, std::nullopt, true)[0];
  Tensor g2 = autograd::grad({g1.sum()}, {x}, {}, std::nullopt, true)[0];
  Tensor g3 = autograd::grad({g2.sum()}, {x})[0];
  V d1, d2;
  for (double v : xs) {
    d1.push_back(3 * v * v);
    d2.push_back(6 * v);
  }
  expect_near(vals(g1), d1);
  expect_near(vals(g2), d2);
  expect_near(vals(g3), V(xs.size(), 6.0));
  // pow(x, 3) gives the same.
  Tensor p = pow(x, 3).sum();
  Tensor q1 = autograd::grad({p}, {x}, {}, std::nullopt, true)[0];
  expect_near(vals(autograd::grad({q1.sum()}, {x})[0]), d2, 1e-10);
}

TEST(HigherOrder, BackwardWithCreateGraph) {
  Tensor x = leaf({0.5, -1.0});
  Tensor y = (x * x * x).sum();
  y.backward(Tensor(), false, /*create_graph=*/true);
  Tensor g = x.grad();
  EXPECT_TRUE(g.requires_grad());
  expect_near(vals(g), {0.75, 3.0});
  Tensor h = autograd::grad({g.sum()}, {x})[0];
  expect_near(vals(h), {3.0, -6.0});
  // backward(create_graph) makes a cycle x -> grad -> its graph -> x (as in
  // PyTorch, which recommends autograd::grad here); clearing .grad breaks it.
  x.set_grad(Tensor());
}

// A gradient penalty: loss = |d out / d x|^2 trained w.r.t. the weights.
TEST(HigherOrder, GradientPenalty) {
  V xs = {0.3, -0.8, 1.1}, ws = {0.9, -0.4, 0.6};
  auto penalty = [&](const V& w) {
    double l = 0;
    for (size_t i = 0; i < xs.size(); ++i) {
      double t = std::tanh(xs[i] * w[i]);
      double g = w[i] * (1 - t * t);  // d/dx tanh(x w)
      l += g * g;
    }
    return l;
  };
  Tensor x = leaf(xs), w = leaf(ws);
  Tensor out = tanh(x * w).sum();
  Tensor gx = autograd::grad({out}, {x}, {}, std::nullopt, /*create_graph=*/true)[0];
  Tensor loss = (gx * gx).sum();
  EXPECT_NEAR(loss.item<double>(), penalty(ws), 1e-12);
  loss.backward();
  ASSERT_TRUE(w.grad().defined());
  V num;
  for (size_t i = 0; i < ws.size(); ++i) {
    V p = ws, m = ws;
    p[i] += 1e-6;
    m[i] -= 1e-6;
    num.push_back((penalty(p) - penalty(m)) / 2e-6);
  }
  expect_near(vals(w.grad()), num, 1e-6);
  // x also gets the penalty's gradient (second derivative path).
  EXPECT_TRUE(x.grad().defined());
}

// ---------------------------------------------------------------- grad mode

TEST(GradMode, NoGradGuard) {
  Tensor x = leaf({1, 2});
  EXPECT_TRUE(is_grad_enabled());
  {
    NoGradGuard guard;
    EXPECT_FALSE(is_grad_enabled());
    Tensor y = x * 2;
    EXPECT_FALSE(y.requires_grad());
    EXPECT_EQ(y.grad_fn(), nullptr);
    {
      NoGradGuard nested;
      EXPECT_FALSE(is_grad_enabled());
    }
    EXPECT_FALSE(is_grad_enabled());
    {
      AutoGradMode on(true);
      EXPECT_TRUE((x * 2).requires_grad());
    }
    EXPECT_FALSE(is_grad_enabled());
    // In-place updates of leaves are allowed here (the optimizer step).
    x.sub_(ones({2}, kFloat64));
  }
  EXPECT_TRUE(is_grad_enabled());
  expect_near(vals(x), {0, 1});
  EXPECT_TRUE(x.is_leaf());
  EXPECT_TRUE((x * 2).requires_grad());
  set_grad_enabled(false);
  EXPECT_FALSE((x * 2).requires_grad());
  set_grad_enabled(true);
}

TEST(GradMode, Detach) {
  Tensor x = leaf({1, 2});
  Tensor d = x.detach();
  EXPECT_FALSE(d.requires_grad());
  EXPECT_TRUE(d.is_leaf());
  EXPECT_EQ(d.raw_data_ptr(), x.raw_data_ptr());  // shares storage
  (x * d).sum().backward();
  expect_near(vals(x.grad()), {1, 2});  // d is a constant, not 2x
  Tensor y = x * 3;
  Tensor yd = y.detach();
  EXPECT_EQ(yd.grad_fn(), nullptr);
  Tensor z = x * 1;
  z.detach_();
  EXPECT_FALSE(z.requires_grad());
}

TEST(GradMode, RequiresGradPropagation) {
  Tensor a = zeros({2}, kFloat64);
  Tensor b = leaf({1, 1});
  EXPECT_FALSE((a + a).requires_grad());
  EXPECT_TRUE((a + b).requires_grad());
  EXPECT_TRUE(b.is_leaf());
  EXPECT_FALSE((a + b).is_leaf());
  a.requires_grad_();
  EXPECT_TRUE(a.requires_grad());
  a.requires_grad_(false);
  EXPECT_FALSE(a.requires_grad());
}

// ---------------------------------------------------------------- hooks

TEST(Hooks, LeafHookReplacesGradient) {
  Tensor x = leaf({1, 2});
  x.register_hook([](const Tensor& g) { return g * 2; });
  (x * 3).sum().backward();
  expect_near(vals(x.grad()), {6, 6});
}

TEST(Hooks, NonLeafHookChangesUpstreamGradient) {
  Tensor x = leaf({1, 2});
  Tensor y = x * 3;
  Tensor seen;
  y.register_hook([&seen](const Tensor& g) {
    seen = g.clone();
    return Tensor();  // observe only
  });
  y.register_hook([](const Tensor& g) { return g * 10; });
  (y * y).sum().backward();
  expect_near(vals(seen), {6, 12});  // 2y
  expect_near(vals(x.grad()), {180, 360});  // 3 * 10 * 2y
}

TEST(Hooks, RunOnceOnTheSummedGradient) {
  Tensor x = leaf({1});
  int leaf_calls = 0, mid_calls = 0;
  double leaf_seen = 0, mid_seen = 0;
  x.register_hook([&](const Tensor& g) {
    ++leaf_calls;
    leaf_seen = g.item<double>();
    return Tensor();
  });
  Tensor m = x * 1;
  m.register_hook([&](const Tensor& g) {
    ++mid_calls;
    mid_seen = g.item<double>();
    return Tensor();
  });
  (m * 2 + m * 3 + x).sum().backward();
  EXPECT_EQ(mid_calls, 1);
  EXPECT_DOUBLE_EQ(mid_seen, 5);
  EXPECT_EQ(leaf_calls, 1);
  EXPECT_DOUBLE_EQ(leaf_seen, 6);
}

TEST(Hooks, RemoveHook) {
  Tensor x = leaf({1});
  int64_t h = x.register_hook([](const Tensor& g) { return g * 100; });
  x.remove_hook(h);
  (x * 2).sum().backward();
  expect_near(vals(x.grad()), {2});
}

TEST(Hooks, RetainGrad) {
  Tensor x = leaf({1, -2});
  Tensor y = x * 2;
  EXPECT_FALSE(y.retains_grad());
  y.retain_grad();
  EXPECT_TRUE(y.retains_grad());
  Tensor z = x * 5;
  (y * y + z).sum().backward();
  ASSERT_TRUE(y.grad().defined());
  expect_near(vals(y.grad()), {4, -8});  // 2y
  EXPECT_FALSE(z.grad().defined());      // non-leaf without retain_grad
  expect_near(vals(x.grad()), {8 + 5, -16 + 5});
}

// ---------------------------------------------------------------- autograd::grad

TEST(Grad, DoesNotAccumulateAndHandlesUnused) {
  Tensor x = leaf({1, 2}), z = leaf({3});
  Tensor y = (x * x).sum();
  std::vector<Tensor> g = autograd::grad({y}, {x, z}, {}, true, false, /*allow_unused=*/true);
  ASSERT_EQ(g.size(), 2u);
  expect_near(vals(g[0]), {2, 4});
  EXPECT_FALSE(g[1].defined());
  EXPECT_FALSE(x.grad().defined());  // nothing accumulated
  std::string msg = error_of([&] { autograd::grad({y}, {x, z}); });
  EXPECT_NE(msg.find("autograd::grad"), std::string::npos) << msg;
  // With explicit grad_outputs on a non-scalar output.
  Tensor w = x * x;
  expect_near(vals(autograd::grad({w}, {x}, {tensor({1.0, -1.0}, kFloat64)})[0]), {2, -4});
}

// ---------------------------------------------------------------- in-place

TEST(InPlace, ModifyingASavedTensorErrorsOnBackward) {
  Tensor x = leaf({1, 2});
  Tensor a = x.clone();
  Tensor y = a * a;  // saves a
  a.add_(1);
  std::string msg = error_of([&] { y.sum().backward(); });
  EXPECT_NE(msg.find("modified by an inplace operation"), std::string::npos) << msg;
  // A saved output modified in place is caught too.
  Tensor s = (x * 1).exp();  // exp saves its output
  s.mul_(2);
  msg = error_of([&] { s.sum().backward(); });
  EXPECT_NE(msg.find("modified by an inplace operation"), std::string::npos) << msg;
}

TEST(InPlace, LeafRequiringGradErrors) {
  Tensor x = leaf({1, 2});
  std::string msg = error_of([&] { x.add_(1); });
  EXPECT_NE(msg.find("add_"), std::string::npos) << msg;
  EXPECT_NE(msg.find("leaf"), std::string::npos) << msg;
  msg = error_of([&] { x.narrow(0, 0, 1).mul_(2); });
  EXPECT_NE(msg.find("leaf"), std::string::npos) << msg;
  expect_near(vals(x), {1, 2});  // nothing was written
}

TEST(InPlace, ThroughAViewOfANonLeaf) {
  Tensor x = leaf({1, 2, 3, 4});
  Tensor y = x * 1;
  y.narrow(0, 1, 2).mul_(3);
  expect_near(vals(y), {1, 6, 9, 4});
  y.sum().backward();
  expect_near(vals(x.grad()), {1, 3, 3, 1});

  Tensor p = leaf({1, 2, 3, 4});
  Tensor m = p.view({2, 2}) * 1;
  Tensor col = m.t()[1];  // column 1 of m, a strided view
  col.mul_(col.clone());  // squares it in place (a clone: mul_ saves its other operand)
  (m * m).sum().backward();
  // m = [[1, 4], [3, 16]]; d/dp of sum(m^2): 2p for column 0, 4 p^3 for column 1.
  expect_near(vals(p.grad()), {2, 32, 6, 256});
}

TEST(InPlace, VersionCounterAndZeroGrad) {
  Tensor x = zeros({3}, kFloat64);
  uint64_t v = x._version();
  x.add_(1);
  x.mul_(2);
  EXPECT_EQ(x._version(), v + 2);
  Tensor w = leaf({1, 2});
  (w * w).sum().backward();
  w.mutable_grad().zero_();
  expect_near(vals(w.grad()), {0, 0});
  (w * 2).sum().backward();
  expect_near(vals(w.grad()), {2, 2});
  w.set_grad(Tensor());
  EXPECT_FALSE(w.grad().defined());
}

// ---------------------------------------------------------------- long loop

// Resident set size in bytes, from /proc/self/statm.
int64_t rss_bytes() {
  std::ifstream f("/proc/self/statm");
  int64_t size = 0, resident = 0;
  f >> size >> resident;
  return resident * static_cast<int64_t>(sysconf(_SC_PAGESIZE));
}

// ---- unbind / split / chunk: one node for all pieces (Note [Multi-output views]) ----

// Every piece used differently, flattened into one tensor; with skip_some
// every third piece is left out, so its gradient is the zeros the engine fills.
Tensor combine_pieces(const std::vector<Tensor>& ps, bool skip_some) {
  std::vector<Tensor> parts;
  for (size_t i = 0; i < ps.size(); ++i) {
    if (skip_some && i % 3 == 1) continue;
    parts.push_back((ps[i] * ps[i] * static_cast<double>(i + 1)).reshape({-1}));
  }
  return cat(parts);
}

using PieceFn = std::function<std::vector<Tensor>(const Tensor&)>;
// x: (4, 5, 3). Negative dims, uneven splits, an empty piece.
const std::vector<std::pair<std::string, PieceFn>>& piece_cases() {
  static const std::vector<std::pair<std::string, PieceFn>> cases = {
      {"unbind(0)", [](const Tensor& t) { return t.unbind(0); }},
      {"unbind(1)", [](const Tensor& t) { return t.unbind(1); }},
      {"unbind(-1)", [](const Tensor& t) { return t.unbind(-1); }},
      {"split(2, 1)", [](const Tensor& t) { return t.split(2, 1); }},  // 2, 2, 1
      {"split({1, 3, 1}, -2)", [](const Tensor& t) { return t.split(std::vector<int64_t>{1, 3, 1}, -2); }},
      {"split({0, 4}, 0)", [](const Tensor& t) { return split(t, std::vector<int64_t>{0, 4}, 0); }},
      {"chunk(2, -1)", [](const Tensor& t) { return t.chunk(2, -1); }},  // 2, 1
      {"chunk(3, 0)", [](const Tensor& t) { return chunk(t, 3, 0); }},   // 2, 2
  };
  return cases;
}

TEST(MultiOutputViews, Gradcheck) {
  manual_seed(3);
  Tensor x = randn({4, 5, 3}, kFloat64).requires_grad_(true);
  for (const auto& [name, pieces] : piece_cases())
    for (bool skip : {false, true}) {
      SCOPED_TRACE(name + (skip ? " skipping pieces" : ""));
      loom::test::gradcheck([&, &pieces = pieces] { return combine_pieces(pieces(x), skip); }, {x});
    }
}

TEST(MultiOutputViews, DoubleBackward) {
  manual_seed(4);
  Tensor x = randn({4, 5, 3}, kFloat64).requires_grad_(true);
  for (const auto& [name, pieces] : piece_cases()) {
    SCOPED_TRACE(name);
    // The gradient of sum(combine^2) is cubic in x: its own gradcheck needs
    // the stack / cat backward to be recorded.
    loom::test::gradcheck(
        [&, &pieces = pieces] {
          Tensor y = combine_pieces(pieces(x), true);
          return autograd::grad({(y * y).sum()}, {x}, {}, std::nullopt, /*create_graph=*/true)[0];
        },
        {x});
  }
}

TEST(MultiOutputViews, OneNodeForAllPieces) {
  Tensor x = randn({1000, 2}, kFloat64).requires_grad_(true);
  Tensor y = x * 2;
  for (const std::vector<Tensor>& ps : {y.unbind(0), y.split(1, 0), y.chunk(1000, 0), y.split(3, -2)}) {
    ASSERT_GE(ps.size(), 334u);
    for (const Tensor& p : ps) EXPECT_EQ(p.grad_fn(), ps[0].grad_fn());  // one node, not one per piece
    EXPECT_NE(ps[0].grad_fn(), y.grad_fn());
  }
  // Backward through all 1000 pieces is one stack into x's gradient.
  std::vector<Tensor> ps = y.unbind(0);
  Tensor total = zeros({2}, kFloat64);
  for (size_t i = 0; i < ps.size(); ++i) total = total + ps[i] * static_cast<double>(i);
  total.sum().backward();
  const V g = vals(x.grad());
  for (size_t i = 0; i < 1000; ++i) {
    EXPECT_EQ(g[2 * i], 2.0 * static_cast<double>(i));
    EXPECT_EQ(g[2 * i + 1], 2.0 * static_cast<double>(i));
  }
  // Without grad mode, plain aliases and no node.
  NoGradGuard ng;
  for (const Tensor& p : y.unbind(1)) EXPECT_FALSE(p.grad_fn());
}

TEST(MultiOutputViews, PiecesAreViews) {
  Tensor x = arange(12, kFloat64).reshape({3, 4});
  std::vector<Tensor> ps = x.split(std::vector<int64_t>{1, 3}, 1);
  ASSERT_EQ(ps.size(), 2u);
  EXPECT_EQ(ps[1].sizes(), (std::vector<int64_t>{3, 3}));
  ps[1].fill_(-1);  // writes through to x
  expect_near(vals(x), {0, -1, -1, -1, 4, -1, -1, -1, 8, -1, -1, -1});
  EXPECT_EQ(x.unbind(0).size(), 3u);
  EXPECT_TRUE(zeros({0, 2}).unbind(0).empty());  // no pieces, no node
}

// Writing into one piece in place while recording: the written piece's
// gradient goes through the in-place op, the others' through the one node,
// as if each piece had been taken on its own (Note [Multi-output views]).
TEST(MultiOutputViews, InPlaceOnOnePieceKeepsGradientsRight) {
  Tensor a = leaf({1, 2, 3, 4, 5, 6});
  Tensor x = a.view({3, 2}) * 2;  // rows: 2a0..
  std::vector<Tensor> ps = x.unbind(0);
  ps[1].mul_(3);
  expect_near(vals(x), {2, 4, 18, 24, 10, 12});  // the write reached x
  Tensor loss = (ps[0] * ps[0]).sum() + ps[1].sum() + (ps[2] * 5).sum();
  loss.backward();
  // row 0: d(4 a^2)/da = 8a; row 1: 3 * 2; row 2: 5 * 2.
  expect_near(vals(a.grad()), {8, 16, 6, 6, 10, 10});

  // x itself after the write: its gradient flows through CopySlices.
  Tensor b = leaf({1, 2, 3, 4});
  Tensor y = b.view({2, 2}) * 1;
  std::vector<Tensor> qs = y.split(1, 1);
  qs[0].add_(qs[1]);  // column 0 += column 1
  (y * y).sum().backward();
  // y = [[b0 + b1, b1], [b2 + b3, b3]]: d/db0 = 2 y00, d/db1 = 2 y00 + 2 y01, ...
  expect_near(vals(b.grad()), {6, 10, 14, 22});
}

TEST(TrainingLoop, ThousandStepsMemoryFlatAndLossDecreases) {
  manual_seed(0);
  Tensor X = randn({128, 8});
  Tensor w_true = randn({8, 1});
  Tensor y = X.matmul(w_true) + 0.5;
  Tensor w = zeros({8, 1}, TensorOptions().requires_grad(true));
  Tensor b = zeros({1}, TensorOptions().requires_grad(true));
  const double lr = 0.1;
  double first_loss = 0, last_loss = 0;
  int64_t rss_100 = 0;
  std::weak_ptr<autograd::Node> old_graph;
  for (int step = 1; step <= 1000; ++step) {
    Tensor pred = X.matmul(w) + b;
    Tensor loss = (pred - y).pow(2).mean();
    loss.backward();
    {
      NoGradGuard no_grad;
      w.sub_(w.grad() * lr);
      b.sub_(b.grad() * lr);
      w.set_grad(Tensor());
      b.mutable_grad().zero_();
    }
    double l = loss.item<double>();
    if (step == 1) first_loss = l;
    last_loss = l;
    if (step == 100) rss_100 = rss_bytes();
    if (step == 500) old_graph = loss.grad_fn();
  }
  // The graph of step 500 is gone: nothing keeps old graphs alive.
  EXPECT_TRUE(old_graph.expired());
#if !defined(__SANITIZE_ADDRESS__)  // AddressSanitizer's quarantine keeps freed memory resident
  int64_t growth = rss_bytes() - rss_100;
  EXPECT_LT(growth, int64_t{1} << 20) << "resident memory grew by " << growth << " bytes over 900 steps";
#else
  (void)rss_100;
#endif
  EXPECT_LT(last_loss, first_loss * 1e-3) << "first " << first_loss << " last " << last_loss;
  EXPECT_TRUE(w.allclose(w_true, 1e-3, 1e-3));
  EXPECT_NEAR(b.item<double>(), 0.5, 1e-3);
}

TEST(Hooks, PostAccumulateGradHookSeesTheAccumulatedGradient) {
  Tensor w = ones({3}).requires_grad_();
  std::vector<float> seen;
  int calls = 0;
  const int64_t h = w.register_post_accumulate_grad_hook([&](const Tensor& p) {
    ++calls;
    seen = p.grad().to_vector<float>();
  });
  (w * 2).sum().backward();
  (w * 3).sum().backward();  // accumulates: the hook sees 2 + 3
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(seen, std::vector<float>({5, 5, 5}));
  w.remove_hook(h);
  (w * 1).sum().backward();
  EXPECT_EQ(calls, 2);
  Tensor y = w * 2;  // not a leaf
  EXPECT_THROW(y.register_post_accumulate_grad_hook([](const Tensor&) {}), Error);
}

TEST(Hooks, QueuedCallbackRunsOnceAfterEveryGradientIsAccumulated) {
  Tensor a = ones({2}).requires_grad_(), b = ones({2}).requires_grad_();
  std::vector<std::string> events;
  int queued = 0;
  auto hook = [&](const char* name) {
    return [&, name](const Tensor&) {
      events.push_back(name);
      if (queued++ == 0)
        autograd::queue_callback([&] {
          events.push_back("callback");
          EXPECT_TRUE(a.grad().defined() && b.grad().defined());
        });
    };
  };
  a.register_post_accumulate_grad_hook(hook("a"));
  b.register_post_accumulate_grad_hook(hook("b"));
  ((a * b).sum() * 2).backward();
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events.back(), "callback");
  EXPECT_THROW(autograd::queue_callback([] {}), Error);  // no backward running
}

// custom_function (loom/autograd_function.h): a caller-written backward,
// what the Python package's loom.autograd.Function runs on.
TEST(CustomFunction, BackwardGetsSavedTensorsAndGradsPerOutput) {
  Tensor x = tensor({1.0, 2.0, 3.0}, kFloat64).requires_grad_();
  Tensor y, aux;
  {
    NoGradGuard ng;
    y = x * x * x;
    aux = x.gt(1.5);
  }
  int calls = 0;
  auto outs = autograd::custom_function(
      "CubeBackward", {x}, {y, aux}, {x, y},
      [&calls](const std::vector<Tensor>& saved, const std::vector<Tensor>& grads) {
        ++calls;
        EXPECT_EQ(saved.size(), 2u);
        EXPECT_EQ(grads.size(), 2u);
        return std::vector<Tensor>{grads[0] * 3 * saved[1] / saved[0]};  // 3 x^2 from x and x^3
      },
      {1});
  ASSERT_EQ(outs.size(), 2u);
  EXPECT_EQ(autograd::node_name(*outs[0].grad_fn()), "CubeBackward");
  EXPECT_FALSE(outs[1].requires_grad());
  EXPECT_FALSE(y.requires_grad());  // the caller's tensors keep no history
  outs[0].sum().backward();
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(x.grad().to_vector<double>(), (std::vector<double>{3, 12, 27}));
  auto next = autograd::next_functions(*outs[0].grad_fn());
  ASSERT_EQ(next.size(), 1u);
  EXPECT_EQ(autograd::node_name(*next[0].first), "AccumulateGrad");
}

TEST(CustomFunction, WrongGradientShapeOrCountIsAnError) {
  Tensor x = tensor({1.0, 2.0}, kFloat64).requires_grad_();
  Tensor y;
  {
    NoGradGuard ng;
    y = x * 2;
  }
  auto bad_shape = autograd::custom_function("BadBackward", {x}, {y}, {}, [](auto&, auto&) {
    return std::vector<Tensor>{ones({5}, kFloat64)};
  });
  EXPECT_TRUE(test::throws_with([&] { bad_shape[0].sum().backward(); },
                          {"BadBackward: backward returned an invalid gradient at index 0: got [5] but "
                           "expected shape [2]"}));
  auto bad_count = autograd::custom_function("TwoBackward", {x}, {y}, {}, [](auto&, auto&) {
    return std::vector<Tensor>{};
  });
  EXPECT_TRUE(test::throws_with([&] { bad_count[0].sum().backward(); },
                          {"TwoBackward: backward returned 0 gradients; expected 1"}));
}

TEST(CustomFunction, SavedInputWrittenInPlaceIsAnError) {
  Tensor x = tensor({1.0, 2.0}, kFloat64).requires_grad_();
  Tensor w = tensor({3.0, 4.0}, kFloat64);
  Tensor y;
  {
    NoGradGuard ng;
    y = x * w;
  }
  auto out = autograd::custom_function("MulBackward", {x}, {y}, {w}, [](const std::vector<Tensor>& s, auto& g) {
    return std::vector<Tensor>{g[0] * s[0]};
  });
  w.add_(1);
  EXPECT_TRUE(test::throws_with([&] { out[0].sum().backward(); }, {"modified by an inplace operation"}));
}

}  // namespace
