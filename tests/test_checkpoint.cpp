// Activation checkpointing: loom::checkpoint and nn::checkpoint_sequential
// give the gradients of plain backward bit for bit (inputs and parameters,
// dropout included), keep less memory, and fail clearly where they cannot work.
#include <gtest/gtest.h>
#include <loom/loom.h>

#include <cmath>
#include <cstring>

#include "test_util.h"

using namespace loom;
using loom::test::error_of;
using loom::test::throws_with;

namespace {

// Same dtype, shape and bytes (stricter than equal(): -0 vs 0, NaN payloads).
::testing::AssertionResult bitwise_equal(const Tensor& a, const Tensor& b) {
  if (!a.defined() || !b.defined())
    return a.defined() == b.defined() ? ::testing::AssertionSuccess()
                                      : ::testing::AssertionFailure() << "one tensor is undefined";
  if (a.dtype() != b.dtype() || a.sizes() != b.sizes())
    return ::testing::AssertionFailure() << "dtype or shape differs";
  Tensor ca = a.contiguous(), cb = b.contiguous();
  const size_t n = static_cast<size_t>(a.numel()) * element_size(a.dtype());
  if (std::memcmp(ca.raw_data_ptr(), cb.raw_data_ptr(), n) != 0)
    return ::testing::AssertionFailure() << "bytes differ, max |a - b| = "
                                         << (ca.to(kFloat64) - cb.to(kFloat64)).abs().max().item<double>();
  return ::testing::AssertionSuccess();
}

// An MLP of Linear/GELU blocks, optionally with dropout after each GELU.
nn::Sequential make_mlp(int64_t width, int64_t depth, double dropout = 0.0) {
  nn::Sequential seq;
  for (int64_t k = 0; k < depth; ++k) {
    seq->push_back(nn::Linear(width, width));
    seq->push_back(nn::GELU());
    if (dropout > 0) seq->push_back(nn::Dropout(dropout));
  }
  return seq;
}

// The gradients one backward leaves: the input's, then every parameter's.
struct Grads {
  std::vector<Tensor> all;
  Tensor out;
};

// Runs forward(x) and backward of a weighted sum from seed `seed`, with the
// module's grads cleared first; returns the input and parameter gradients.
Grads run(nn::Module& m, const std::function<Tensor(const Tensor&)>& forward, const Tensor& x0, uint64_t seed) {
  m.zero_grad();
  manual_seed(seed);
  Tensor x = x0.detach().clone().requires_grad_(true);
  Tensor y = forward(x);
  Tensor w = linspace(-1.0, 1.0, y.numel()).reshape(y.sizes());
  (y * w).sum().backward();
  Grads g;
  g.out = y.detach();
  g.all.push_back(x.grad());
  for (const Tensor& p : m.parameters()) g.all.push_back(p.grad());
  return g;
}

void expect_same_grads(const Grads& plain, const Grads& ckpt) {
  EXPECT_TRUE(bitwise_equal(plain.out, ckpt.out)) << "forward output";
  ASSERT_EQ(plain.all.size(), ckpt.all.size());
  for (size_t k = 0; k < plain.all.size(); ++k) {
    ASSERT_TRUE(plain.all[k].defined()) << "gradient " << k;
    EXPECT_TRUE(bitwise_equal(plain.all[k], ckpt.all[k])) << "gradient " << k << " (0 = input)";
  }
}

}  // namespace

TEST(Checkpoint, MlpGradientsBitwiseEqualPlain) {
  manual_seed(0);
  nn::Sequential mlp = make_mlp(32, 3);
  Tensor x = randn({8, 32});
  Grads plain = run(*mlp, [&](const Tensor& h) { return mlp(h); }, x, 1);
  Grads ckpt = run(*mlp, [&](const Tensor& h) { return checkpoint([&](const Tensor& t) { return mlp(t); }, h); },
                   x, 1);
  expect_same_grads(plain, ckpt);
}

TEST(Checkpoint, DropoutMasksReplayAndStreamContinues) {
  manual_seed(0);
  nn::Sequential mlp = make_mlp(32, 3, 0.3);
  Tensor x = randn({8, 32});
  Grads plain = run(*mlp, [&](const Tensor& h) { return mlp(h); }, x, 7);
  const RngState after_plain = get_rng_state();
  Tensor next_plain = rand({16});
  Grads ckpt = run(*mlp, [&](const Tensor& h) { return checkpoint([&](const Tensor& t) { return mlp(t); }, h); },
                   x, 7);
  const RngState after_ckpt = get_rng_state();
  Tensor next_ckpt = rand({16});
  expect_same_grads(plain, ckpt);
  // Backward's recomputation put the generator back: the stream goes on as
  // without checkpointing.
  EXPECT_EQ(after_plain.seed, after_ckpt.seed);
  EXPECT_EQ(after_plain.offset, after_ckpt.offset);
  EXPECT_TRUE(bitwise_equal(next_plain, next_ckpt));
}

// Dropout on an explicit Generator inside the region: its masks replay too,
// also when the global stream and another generator move in between, and
// the generator goes on as without checkpointing.
TEST(Checkpoint, ExplicitGeneratorReplays) {
  manual_seed(0);
  nn::Linear lin(16, 16);
  Tensor x = randn({4, 16});
  Generator gen(11);
  auto region = [&](const Tensor& h) {
    Tensor a = nn::functional::dropout(lin(h), 0.5, true, gen);
    return nn::functional::dropout(a.relu(), 0.25, true, gen) * 3.0;
  };
  auto grads = [&](bool checkpointed) {
    gen.manual_seed(11);
    return run(*lin, [&](const Tensor& h) { return checkpointed ? checkpoint(region, h) : region(h); }, x, 5);
  };
  Grads plain = grads(false);
  const RngState after_plain = gen.get_state();
  Grads ckpt = grads(true);
  expect_same_grads(plain, ckpt);
  EXPECT_EQ(gen.get_state().offset, after_plain.offset);

  // Draws elsewhere between forward and backward do not reach the region.
  gen.manual_seed(11);
  manual_seed(5);
  lin->zero_grad();
  Tensor xr = x.detach().clone().requires_grad_(true);
  Tensor y = checkpoint(region, xr);
  Tensor noise = rand({8}, {}, gen);
  rand({8});
  Tensor w = linspace(-1.0, 1.0, y.numel()).reshape(y.sizes());
  (y * w).sum().backward();
  EXPECT_TRUE(bitwise_equal(xr.grad(), plain.all[0]));
  EXPECT_TRUE(bitwise_equal(lin->weight.grad(), plain.all[1]));
  EXPECT_EQ(gen.get_state().offset, after_plain.offset + 8);  // the stream is where the noise left it
}

TEST(Checkpoint, SequentialSegmentsBitwiseEqualPlain) {
  for (double p : {0.0, 0.25}) {
    manual_seed(0);
    nn::Sequential mlp = make_mlp(24, 4, p);
    Tensor x = randn({6, 24});
    Grads plain = run(*mlp, [&](const Tensor& h) { return mlp(h); }, x, 3);
    for (int64_t segments : {1, 2, 4}) {
      SCOPED_TRACE("dropout " + std::to_string(p) + ", segments " + std::to_string(segments));
      Grads ckpt = run(*mlp, [&](const Tensor& h) { return nn::checkpoint_sequential(mlp, segments, h); }, x, 3);
      expect_same_grads(plain, ckpt);
    }
  }
}

TEST(Checkpoint, ParameterUsedInsideAndOutsideAccumulatesInPlainOrder) {
  // One Linear used twice inside the region and once after it: three
  // contributions to its .grad, summed in the order plain backward sums them.
  manual_seed(0);
  nn::Linear fc(16, 16);
  Tensor x = randn({5, 16});
  auto body = [&](const Tensor& h) { return gelu(fc(tanh(fc(h)))); };
  auto plain = [&](const Tensor& h) { return fc(body(h)) * 0.5; };
  auto ckpt = [&](const Tensor& h) { return fc(checkpoint(body, h)) * 0.5; };
  expect_same_grads(run(*fc, plain, x, 5), run(*fc, ckpt, x, 5));

  // On top of a .grad an earlier backward left (gradient accumulation).
  auto twice = [&](const std::function<Tensor(const Tensor&)>& forward) {
    fc->zero_grad();
    Tensor x1 = x.detach().clone().requires_grad_(true);
    forward(x1).sum().backward();
    (forward(x1) * 0.25).sum().backward();
    return std::vector<Tensor>{x1.grad(), fc->weight.grad().clone(), fc->bias.grad().clone()};
  };
  std::vector<Tensor> a = twice(plain), b = twice(ckpt);
  for (size_t k = 0; k < a.size(); ++k) EXPECT_TRUE(bitwise_equal(a[k], b[k])) << k;
}

TEST(Checkpoint, SeveralInputsSomeWithoutGrad) {
  manual_seed(0);
  nn::Linear fc(8, 8);
  Tensor a0 = randn({4, 8}), m = randn({4, 8});  // m needs no gradient
  auto f = [&](const Tensor& a, const Tensor& mask) { return sigmoid(fc(a) * mask) + a; };
  auto grads_of = [&](const std::function<Tensor(const Tensor&)>& forward) {
    fc->zero_grad();
    Tensor a = a0.clone().requires_grad_(true);
    forward(a).sum().backward();
    return std::vector<Tensor>{a.grad(), fc->weight.grad(), fc->bias.grad()};
  };
  std::vector<Tensor> plain = grads_of([&](const Tensor& a) { return f(a, m); });
  std::vector<Tensor> variadic = grads_of([&](const Tensor& a) { return checkpoint(f, a, m); });
  std::vector<Tensor> list = grads_of([&](const Tensor& a) {
    return checkpoint([&](const std::vector<Tensor>& xs) { return f(xs[0], xs[1]); }, {a, m});
  });
  for (size_t k = 0; k < plain.size(); ++k) {
    EXPECT_TRUE(bitwise_equal(plain[k], variadic[k])) << k;
    EXPECT_TRUE(bitwise_equal(plain[k], list[k])) << k;
  }
  EXPECT_FALSE(m.grad().defined());
}

TEST(Checkpoint, AutogradGradReachesParametersInside) {
  manual_seed(0);
  nn::Sequential mlp = make_mlp(16, 2);
  Tensor x = randn({4, 16}).requires_grad_(true);
  std::vector<Tensor> wrt = mlp->parameters();
  wrt.push_back(x);
  std::vector<Tensor> plain = autograd::grad({mlp(x).sum()}, wrt);
  std::vector<Tensor> ckpt = autograd::grad({nn::checkpoint_sequential(mlp, 2, x).sum()}, wrt);
  ASSERT_EQ(plain.size(), ckpt.size());
  for (size_t k = 0; k < plain.size(); ++k) EXPECT_TRUE(bitwise_equal(plain[k], ckpt[k])) << k;
  for (const Tensor& p : mlp->parameters()) EXPECT_FALSE(p.grad().defined());  // grad() accumulates nothing
}

TEST(Checkpoint, NoGradJustRunsFn) {
  manual_seed(0);
  nn::Linear fc(4, 4);
  Tensor x = randn({2, 4}).requires_grad_(true);
  int calls = 0;
  Tensor y;
  {
    NoGradGuard no_grad;
    y = checkpoint([&](const Tensor& h) { ++calls; return fc(h); }, x);
  }
  EXPECT_EQ(calls, 1);
  EXPECT_FALSE(y.requires_grad());
  EXPECT_TRUE(bitwise_equal(y, fc(x).detach()));
  // Nothing requires grad: no graph, and fn runs once.
  Tensor z = randn({2, 3});
  Tensor w = checkpoint([&](const Tensor& h) { ++calls; return h.exp(); }, z);
  EXPECT_EQ(calls, 2);
  EXPECT_FALSE(w.requires_grad());
}

TEST(Checkpoint, RecomputesOnceInBackward) {
  manual_seed(0);
  nn::Linear fc(4, 4);
  Tensor x = randn({2, 4}).requires_grad_(true);
  int calls = 0;
  Tensor y = checkpoint([&](const Tensor& h) { ++calls; return gelu(fc(h)).exp(); }, x);
  EXPECT_EQ(calls, 1);
  y.sum().backward();
  EXPECT_EQ(calls, 2);
}

TEST(Checkpoint, SecondBackwardNeedsRetainGraph) {
  manual_seed(0);
  nn::Linear fc(4, 4);
  Tensor x = randn({2, 4}).requires_grad_(true);
  auto f = [&](const Tensor& h) { return gelu(fc(h)); };
  Tensor y = checkpoint(f, x).sum();
  y.backward();
  EXPECT_TRUE(throws_with([&] { y.backward(); }, {"backward through the graph a second time", "retain_graph"}));

  // With retain_graph both backwards run and add up as without checkpointing.
  Tensor xa = x.detach().clone().requires_grad_(true), xb = x.detach().clone().requires_grad_(true);
  Tensor ya = f(xa).sum(), yb = checkpoint(f, xb).sum();
  ya.backward({}, true);
  ya.backward();
  yb.backward({}, true);
  yb.backward();
  EXPECT_TRUE(bitwise_equal(xa.grad(), xb.grad()));
}

TEST(Checkpoint, CreateGraphIsAnError) {
  manual_seed(0);
  Tensor x = randn({3}).requires_grad_(true);
  Tensor y = checkpoint([](const Tensor& h) { return (h * h).tanh(); }, x).sum();
  EXPECT_TRUE(throws_with([&] { autograd::grad({y}, {x}, {}, std::nullopt, /*create_graph=*/true); },
                          {"checkpoint", "create_graph=true"}));
}

TEST(Checkpoint, InputWrittenInPlaceAfterForwardIsAnError) {
  manual_seed(0);
  nn::Linear fc(4, 4);
  Tensor x = randn({2, 4});
  Tensor y = checkpoint([&](const Tensor& h) { return gelu(fc(h)); }, x);
  x.add_(1.0);
  EXPECT_TRUE(throws_with([&] { y.sum().backward(); }, {"checkpoint", "input 0", "inplace"}));
}

TEST(Checkpoint, FnThatChangesBetweenCallsIsAnError) {
  manual_seed(0);
  Tensor x = randn({3}).requires_grad_(true);
  int calls = 0;
  // Fewer saves in the recomputation.
  Tensor y = checkpoint([&](const Tensor& h) { return ++calls == 1 ? h.exp().exp() : h.exp(); }, x);
  EXPECT_TRUE(throws_with([&] { y.sum().backward(); }, {"checkpoint", "saved 2 tensors", "saved 4", "same ops"}));
  // A save of another shape.
  calls = 0;
  Tensor z = checkpoint([&](const Tensor& h) { return ++calls == 1 ? h.exp() : cat({h, h}).exp(); }, x);
  EXPECT_TRUE(throws_with([&] { z.sum().backward(); }, {"checkpoint", "save 0", "[6]", "[3]", "same ops"}));
  // More saves: the recomputation stops at the forward's last one (early
  // stop), so what follows never runs and the gradient is the plain one.
  calls = 0;
  Tensor w = checkpoint([&](const Tensor& h) { return ++calls == 1 ? h.exp() : h.exp().exp(); }, x);
  w.sum().backward();
  EXPECT_TRUE(allclose(x.grad(), x.exp(), 0.0, 0.0));
}

// Launches of kernel `op` in one forward + backward of `forward` (x: 5 x 8),
// counted on the recorded graph of the step (no passes, so it holds every
// launch; the backward's own products are mm/bmm, not Linear).
int64_t launches(const std::string& op, const std::function<Tensor(const Tensor&)>& forward) {
  jit::CompileOptions o;
  o.optimize = false;
  o.recompute_cheap = false;
  auto step = loom::compile(
      [&](const Tensor& x) {
        Tensor y = forward(x);
        y.sum().backward();
        return y;
      },
      o);
  step(randn({5, 8}).requires_grad_(true));
  const std::string text = step.graph()->str(), call = "= " + op + "(";
  int64_t n = 0;
  for (size_t at = text.find(call); at != std::string::npos; at = text.find(call, at + 1)) ++n;
  return n;
}

// Early stop: a region that ends in a Linear recomputes everything up to
// that Linear's saved inputs and skips its GEMM.
TEST(Checkpoint, RecomputationStopsAtItsLastSave) {
  manual_seed(0);
  nn::Linear a(8, 16), b(16, 4);
  auto region = [&](const Tensor& h) { return b(relu(a(h))); };
  EXPECT_EQ(launches("Linear", region), 2);
  EXPECT_EQ(launches("Linear", [&](const Tensor& x) { return checkpoint(region, x); }), 3);  // a, b, then a again

  Tensor x = randn({5, 8}).requires_grad_(true);
  Tensor plain_x = x.detach().requires_grad_(true);
  a->zero_grad();
  b->zero_grad();
  region(plain_x).sum().backward();
  Tensor ga = a->weight.grad().clone(), gb = b->weight.grad().clone();
  a->zero_grad();
  b->zero_grad();
  checkpoint(region, x).sum().backward();
  EXPECT_TRUE(allclose(a->weight.grad(), ga, 0.0, 0.0));
  EXPECT_TRUE(allclose(b->weight.grad(), gb, 0.0, 0.0));
  EXPECT_TRUE(allclose(x.grad(), plain_x.grad(), 0.0, 0.0));
}

// A save that is the region's output (a final ReLU saves its output) is
// kept from the output: a segment of Linear + ReLU layers recomputes all
// but its last layer, and the gradients stay the plain ones.
TEST(Checkpoint, SavesOfTheRegionOutputAreNotRecomputed) {
  manual_seed(0);
  nn::Sequential seq;
  for (int k = 0; k < 4; ++k) {
    seq->push_back(nn::Linear(8, 8));
    seq->push_back(nn::ReLU());
  }
  // Two segments: the first (layers 1-2) is checkpointed, the last runs plainly.
  EXPECT_EQ(launches("Linear", [&](const Tensor& x) { return seq->forward(x); }), 4);
  EXPECT_EQ(launches("Linear", [&](const Tensor& x) { return nn::checkpoint_sequential(seq, 2, x); }), 5);
  // A region whose only saves are of its output recomputes nothing.
  EXPECT_EQ(launches("Relu", [&](const Tensor& x) { return checkpoint([](const Tensor& h) { return relu(h); }, x); }), 1);

  Tensor x = randn({5, 8}).requires_grad_(true);
  Tensor plain_x = x.detach().requires_grad_(true);
  seq->zero_grad();
  seq->forward(plain_x).sum().backward();
  std::vector<Tensor> plain;
  for (const Tensor& p : seq->parameters()) plain.push_back(p.grad().clone());
  seq->zero_grad();
  nn::checkpoint_sequential(seq, 2, x).sum().backward();
  const std::vector<Tensor> params = seq->parameters();
  for (size_t k = 0; k < params.size(); ++k) EXPECT_TRUE(allclose(params[k].grad(), plain[k], 0.0, 0.0)) << k;
  EXPECT_TRUE(allclose(x.grad(), plain_x.grad(), 0.0, 0.0));
}

TEST(Checkpoint, SequentialBadSegmentsAreErrors) {
  nn::Sequential mlp = make_mlp(4, 2);  // 4 children
  Tensor x = randn({2, 4});
  EXPECT_TRUE(throws_with([&] { nn::checkpoint_sequential(mlp, 0, x); },
                          {"checkpoint_sequential", "segments", "[1, 4]", "got 0"}));
  EXPECT_TRUE(throws_with([&] { nn::checkpoint_sequential(mlp, 5, x); }, {"checkpoint_sequential", "got 5"}));
  nn::Sequential empty;
  EXPECT_TRUE(throws_with([&] { nn::checkpoint_sequential(empty, 1, x); }, {"checkpoint_sequential", "[1, 0]"}));
  // Segments that do not divide the children: the last takes the rest.
  Tensor xr = x.clone().requires_grad_(true);
  EXPECT_NO_THROW(nn::checkpoint_sequential(mlp, 3, xr).sum().backward());
  EXPECT_TRUE(xr.grad().defined());
}

// Peak bytes in use over forward + backward of a 32-layer MLP, measured from
// the bytes in use before forward (parameters and their .grad already
// allocated by a warm-up, so only activations and transients count).
size_t peak_activation_bytes(nn::Sequential& mlp, const Tensor& x, int64_t segments) {
  auto step = [&] {
    Tensor y = segments == 0 ? mlp(x) : nn::checkpoint_sequential(mlp, segments, x);
    y.sum().backward();
  };
  step();  // .grad buffers exist from here on
  const size_t before = cpu_allocator_stats().bytes_in_use;
  cpu_reset_peak_stats();
  step();
  return cpu_allocator_stats().peak_bytes_in_use - before;
}

TEST(Checkpoint, SequentialSqrtSegmentsLowerPeakMemory) {
  manual_seed(0);
  nn::Sequential mlp = make_mlp(256, 32);  // 64 children
  Tensor x = randn({64, 256});
  const size_t plain = peak_activation_bytes(mlp, x, 0);
  const size_t ckpt = peak_activation_bytes(mlp, x, 8);  // sqrt(64)
  const double ratio = static_cast<double>(ckpt) / static_cast<double>(plain);
  std::printf("peak above parameters: plain %zu bytes, 8 segments %zu bytes (%.3fx)\n", plain, ckpt, ratio);
  EXPECT_LT(ratio, 0.6);
}

TEST(Checkpoint, ParameterWrittenInPlaceBeforeBackwardIsAnError) {
  // As without checkpointing: a dropped save still watches its tensor's version.
  manual_seed(0);
  nn::Linear fc(4, 4);
  Tensor x = randn({2, 4}).requires_grad_(true);
  Tensor y = checkpoint([&](const Tensor& h) { return gelu(fc(h)); }, x);
  {
    NoGradGuard no_grad;
    fc->weight.mul_(0.5);
  }
  EXPECT_TRUE(throws_with([&] { y.sum().backward(); }, {"modified by an inplace operation", "expected version"}));
}

TEST(Checkpoint, NestedRegionsBitwiseEqualPlain) {
  manual_seed(0);
  nn::Sequential inner = make_mlp(16, 2, 0.2);
  nn::Linear head(16, 16);
  Tensor x = randn({4, 16});
  nn::Sequential all(inner, head);  // one module, so run() collects both
  auto plain = [&](const Tensor& h) { return head(inner(h)).tanh(); };
  auto inner_region = [&](const Tensor& b) { return inner(b); };
  auto outer_region = [&](const Tensor& a) { return head(checkpoint(inner_region, a)).tanh(); };
  auto nested = [&](const Tensor& h) { return checkpoint(outer_region, h); };
  expect_same_grads(run(*all, plain, x, 11), run(*all, nested, x, 11));
}

// BatchNorm inside a region: the recomputation normalizes with the batch's
// statistics again but updates the running ones (and the batch count) only
// once, in the forward; gradients and buffers equal the plain step's.
TEST(Checkpoint, BatchNormRunningStatisticsUpdateOnce) {
  auto make = [] {
    manual_seed(11);
    nn::Sequential s;
    s->push_back(nn::Conv2d(2, 4, 3, {.padding = {1}}));
    s->push_back(nn::BatchNorm2d(4));
    s->push_back(nn::ReLU());
    s->push_back(nn::Conv2d(4, 4, 3, {.padding = {1}}));
    s->push_back(nn::BatchNorm2d(4));
    return s;
  };
  nn::Sequential plain = make(), ckpt = make();
  Tensor x = randn({3, 2, 5, 5});
  for (int step = 0; step < 2; ++step) {
    plain->forward(x).square().sum().backward();
    nn::checkpoint_sequential(ckpt, 2, x).square().sum().backward();
  }
  EXPECT_FALSE(checkpoint_recomputing());
  const StateDict a = plain->state_dict(), b = ckpt->state_dict();
  ASSERT_EQ(a.size(), b.size());
  for (size_t k = 0; k < a.size(); ++k) EXPECT_TRUE(bitwise_equal(a[k].second, b[k].second)) << a[k].first;
  const auto pa = plain->parameters(), pb = ckpt->parameters();
  for (size_t k = 0; k < pa.size(); ++k) EXPECT_TRUE(bitwise_equal(pa[k].grad(), pb[k].grad())) << "grad " << k;
}
