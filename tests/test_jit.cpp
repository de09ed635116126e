// loom::compile: replay equals eager for every model's training step, the
// guards, host reads refused, the planner never overlaps live buffers, the
// printout and DOT export, and memory stays flat over many replays.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <sstream>

#include "jit/graph.h"
#include "loom/loom.h"
#include "jit_test_util.h"
#include "test_util.h"

using namespace loom;
using loom::test::error_of;
using loom::test::same_bits;
using namespace loom::test;  // the compiled-step helpers (jit_test_util.h)

namespace {

// Runs `steps` steps eagerly on (model_a, step_a) and compiled on
// (model_b, step_b) with the same batches and seeds; after each, the losses
// and every parameter and buffer agree bitwise.
template <class StepFn, class Batch, class Before>
void replay_matches_eager(nn::Module& a, nn::Module& b, StepFn step_a, StepFn step_b, Batch batch, int steps,
                          Before before_step, int64_t min_replays = 1) {
  auto compiled = loom::compile(step_b);
  for (int k = 0; k < steps; ++k) {
    auto [x, y] = batch(k);
    before_step(k);
    manual_seed(1000 + static_cast<uint64_t>(k));
    Tensor la = step_a(x, y);
    manual_seed(1000 + static_cast<uint64_t>(k));
    Tensor lb = compiled(x, y);
    EXPECT_TRUE(same_bits(la.detach(), lb.detach())) << "loss at step " << k;
    expect_same_state(a, b);
  }
  EXPECT_GE(compiled.stats().replays, min_replays);
  ASSERT_NE(compiled.graph(), nullptr);
  EXPECT_GT(compiled.graph()->num_nodes(), 0);
}

}  // namespace

TEST(Compile, MlpSgdMomentumReplayEqualsEager) {
  manual_seed(1);
  nn::Sequential a = models::mlp(20, {32, 16}, 5), b = models::mlp(20, {32, 16}, 5);
  copy_params(*a, *b);
  optim::SGD oa(a->parameters(), optim::SGDOptions(0.1).momentum(0.9));
  optim::SGD ob(b->parameters(), optim::SGDOptions(0.1).momentum(0.9));
  replay_matches_eager(*a, *b, training_step(a, oa, classify), training_step(b, ob, classify),
                       batches({8, 20}, 0, 5, {8}, 0), 6, [](int) {}, 3);
}

// zero_grad(false) zeroes the gradients in place and backward adds to them:
// the graph forwards the zeros (Note [Graph passes]), so each gradient is
// written once, by the Add, and the bits stay eager's (a product can hold
// -0, which the Add of the zeros turns into +0 as eager's accumulation does).
TEST(Compile, GradientsZeroedInPlaceAreWrittenOnceByTheAccumulation) {
  manual_seed(2);
  nn::Sequential a = models::mlp(20, {32, 16}, 5), b = models::mlp(20, {32, 16}, 5);
  copy_params(*a, *b);
  optim::SGD oa(a->parameters(), optim::SGDOptions(0.1).momentum(0.9));
  optim::SGD ob(b->parameters(), optim::SGDOptions(0.1).momentum(0.9));
  replay_matches_eager(*a, *b, training_step(a, oa, classify, 0, false), training_step(b, ob, classify, 0, false),
                       batches({8, 20}, 0, 5, {8}, 3), 6, [](int) {}, 3);
  auto compiled = loom::compile(training_step(b, ob, classify, 0, false));
  Tensor x = randn({8, 20}), y = randint(5, {8});
  for (int k = 0; k < 3; ++k) compiled(x, y);
  std::istringstream lines(compiled.graph()->str());
  int adds_into_state = 0;
  for (std::string line; std::getline(lines, line);) {
    const bool into_state = line.find("  # state") != std::string::npos;
    EXPECT_FALSE(into_state && line.find("= Copy(") != std::string::npos) << line;
    // The Add, or a weight gradient's GEMM with the Add as its epilogue.
    if (into_state && (line.find("= Add(") != std::string::npos || line.find("fused: Bmm Add") != std::string::npos))
      ++adds_into_state;
  }
  EXPECT_EQ(adds_into_state, 6) << compiled.graph()->str();  // 3 weights, 3 biases
}

TEST(Compile, CnnWithBatchNormRunningStats) {
  manual_seed(2);
  nn::Sequential a = models::cnn(1, 10), b = models::cnn(1, 10);
  copy_params(*a, *b);
  optim::Adam oa(a->parameters(), optim::AdamOptions(1e-3));
  optim::Adam ob(b->parameters(), optim::AdamOptions(1e-3));
  replay_matches_eager(*a, *b, training_step(a, oa, classify), training_step(b, ob, classify),
                       batches({4, 1, 28, 28}, 0, 10, {4}, 7), 5, [](int) {}, 2);
}

TEST(Compile, ResNet9) {
  manual_seed(3);
  nn::Sequential a = models::resnet9(1, 10), b = models::resnet9(1, 10);
  copy_params(*a, *b);
  optim::SGD oa(a->parameters(), optim::SGDOptions(0.05).momentum(0.9).weight_decay(1e-4));
  optim::SGD ob(b->parameters(), optim::SGDOptions(0.05).momentum(0.9).weight_decay(1e-4));
  replay_matches_eager(*a, *b, training_step(a, oa, classify), training_step(b, ob, classify),
                       batches({2, 1, 28, 28}, 0, 10, {2}, 11), 4, [](int) {}, 1);
}

TEST(Compile, GptWithDropoutAndChangingLearningRate) {
  manual_seed(4);
  models::GPT a(tiny_gpt(2)), b(tiny_gpt(2));
  copy_params(*a, *b);
  optim::AdamW oa(a->parameters(), optim::AdamWOptions(1e-3));
  optim::AdamW ob(b->parameters(), optim::AdamWOptions(1e-3));
  // A learning rate that changes every step, set outside the step as a
  // scheduler sets it.
  auto set_lr = [&](int k) {
    const double lr = 1e-3 * (1.0 + 0.5 * k);
    oa.param_groups()[0].options().set_lr(lr);
    ob.param_groups()[0].options().set_lr(lr);
  };
  replay_matches_eager(*a, *b, training_step(a, oa, language_model, 1.0), training_step(b, ob, language_model, 1.0),
                       batches({3, 16}, 40, 40, {3, 16}, 13), 7, set_lr, 3);
}

TEST(Compile, LstmLanguageModel) {
  const models::LSTMLMConfig cfg = tiny_lstm();
  manual_seed(5);
  models::LSTMLM a(cfg), b(cfg);
  copy_params(*a, *b);
  optim::Adam oa(a->parameters(), optim::AdamOptions(2e-3));
  optim::Adam ob(b->parameters(), optim::AdamOptions(2e-3));
  replay_matches_eager(*a, *b, training_step(a, oa, language_model), training_step(b, ob, language_model),
                       batches({2, 10}, 30, 30, {2, 10}, 17), 6, [](int) {}, 2);
}

TEST(Compile, NewShapeRecordsANewGraphAndWrongDtypeIsAnError) {
  manual_seed(6);
  nn::Linear lin(8, 3);
  auto f = loom::compile([&](const Tensor& x) {
    NoGradGuard ng;
    return relu(lin->forward(x));
  });
  Tensor x4 = randn({4, 8}), x2 = randn({2, 8});
  for (int k = 0; k < 3; ++k) {
    EXPECT_TRUE(same_bits(f(x4), relu(lin->forward(x4)).detach()));
    EXPECT_TRUE(same_bits(f(x2), relu(lin->forward(x2)).detach()));
  }
  EXPECT_EQ(f.stats().graphs, 2);
  EXPECT_EQ(f.stats().recordings, 2);
  EXPECT_EQ(f.stats().replays, 4);
  EXPECT_ERROR_HAS(f(randn({4, 8}, kFloat64)), "argument 0 is float64");
}

TEST(Compile, HostReadsInsideTheStepAreRefused) {
  nn::Linear lin(4, 2);
  auto f = loom::compile([&](const Tensor& x) {
    Tensor y = lin->forward(x).sum();
    if (y.item<double>() > 0) return y * 2.0;  // data-dependent branching
    return y;
  });
  EXPECT_ERROR_HAS(f(randn({3, 4})), "compile: item reads or writes a tensor's value on the host");
  auto g = loom::compile([&](const Tensor& x) {
    Tensor y = x * 2.0;
    std::ostringstream os;
    os << y;
    return y;
  });
  EXPECT_ERROR_HAS(g(randn({3})), "compile: print");
}

TEST(Compile, UnfusedOptimizerIsRefused) {
  nn::Linear lin(4, 2);
  optim::RMSprop opt(lin->parameters(), optim::RMSpropOptions(0.01));
  auto step = loom::compile([&](const Tensor& x) {
    opt.zero_grad();
    Tensor loss = lin->forward(x).pow(2).mean();
    loss.backward();
    opt.step();
    return loss;
  });
  EXPECT_ERROR_HAS(step(randn({3, 4})), "compile: RMSprop its per-parameter update");
}

TEST(Compile, InferenceGraphFoldsConstantsAndMatchesEager) {
  manual_seed(7);
  nn::Sequential m = models::mlp(6, {12}, 4);
  m->eval();
  auto f = loom::compile([&](const Tensor& x) {
    NoGradGuard ng;
    // A constant built on the host and an op on it alone: folded.
    Tensor scale = tensor({1.0, 2.0, 3.0, 4.0}).to(kFloat32) * 0.5;
    return m->forward(x) * scale;
  });
  Tensor x = randn({5, 6});
  Tensor expect;
  {
    NoGradGuard ng;
    expect = m->forward(x) * (tensor({1.0, 2.0, 3.0, 4.0}).to(kFloat32) * 0.5);
  }
  for (int k = 0; k < 3; ++k) EXPECT_TRUE(same_bits(f(x), expect));
  const auto ops = f.graph()->ops();
  EXPECT_NE(std::find(ops.begin(), ops.end(), "Linear"), ops.end());
  const std::string text = f.graph()->str();
  EXPECT_NE(text.find("folded"), std::string::npos) << text;
  // Writing a frozen parameter outside the step refolds.
  {
    NoGradGuard ng;
    m->parameters()[0].mul_(2.0);
    expect = m->forward(x) * (tensor({1.0, 2.0, 3.0, 4.0}).to(kFloat32) * 0.5);
  }
  EXPECT_TRUE(same_bits(f(x), expect));
}

TEST(Compile, PrintoutAndDot) {
  nn::Linear lin(8, 3);
  auto f = loom::compile([&](const Tensor& x) {
    NoGradGuard ng;
    return relu(lin->forward(x)) + 1.0;
  });
  Tensor x = randn({4, 8});
  f(x);
  f(x);
  const auto g = f.graph();
  const std::string text = g->str();
  EXPECT_NE(text.find("= arg 0"), std::string::npos) << text;
  EXPECT_NE(text.find("f32[4,3] = Linear(%0"), std::string::npos) << text;
  EXPECT_NE(text.find("= Fused(%"), std::string::npos) << text;  // the relu and the add, one kernel
  EXPECT_NE(text.find("fused: Relu Add"), std::string::npos) << text;
  EXPECT_NE(text.find("return (%"), std::string::npos) << text;
  const std::string dot = g->to_dot();
  EXPECT_EQ(dot.rfind("digraph loom {", 0), 0u);
  EXPECT_NE(dot.find("label=\"Linear\""), std::string::npos) << dot;
  EXPECT_NE(dot.find("label=\"Fused\\nRelu Add\""), std::string::npos) << dot;
  EXPECT_NE(dot.find("output 0"), std::string::npos) << dot;
  EXPECT_EQ(dot.back(), '\n');
}

TEST(Compile, ThousandReplaysKeepMemoryFlat) {
  manual_seed(8);
  nn::Sequential m = models::mlp(16, {32}, 4);
  optim::SGD opt(m->parameters(), optim::SGDOptions(0.01));
  auto step = loom::compile([&](const Tensor& x, const Tensor& y) {
    opt.zero_grad();
    Tensor loss = nn::functional::cross_entropy(m->forward(x), y);
    loss.backward();
    opt.step();
    return loss;
  });
  Tensor x = randn({8, 16}), y = randint(0, 4, {8});
  for (int k = 0; k < 5; ++k) step(x, y);
  const size_t before = cpu_allocator_stats().bytes_in_use;
  for (int k = 0; k < 1000; ++k) step(x, y);
  EXPECT_EQ(cpu_allocator_stats().bytes_in_use, before);
  EXPECT_GE(step.stats().replays, 1000);
  const jit::MemoryPlan plan = step.graph()->memory_plan();
  EXPECT_GE(plan.arena_bytes, plan.lower_bound_bytes);
  EXPECT_GT(plan.arena_bytes, 0u);
}

TEST(Compile, RandomDrawsMatchEagerAfterTheSameSeed) {
  auto f = loom::compile([](const Tensor& x) {
    NoGradGuard ng;
    return nn::functional::dropout(x, 0.5, true) + rand({4});
  });
  Tensor x = ones({4});
  for (int k = 0; k < 4; ++k) {
    manual_seed(50 + static_cast<uint64_t>(k));
    Tensor got = f(x);
    const RngState after = get_rng_state();
    manual_seed(50 + static_cast<uint64_t>(k));
    Tensor want;
    {
      NoGradGuard ng;
      want = nn::functional::dropout(x, 0.5, true) + rand({4});
    }
    EXPECT_TRUE(same_bits(got, want)) << "call " << k;
    EXPECT_EQ(get_rng_state().offset, after.offset);
  }
}

// The planner's offsets, on random interval sets: two buffers live at the
// same node never overlap, and the arena is at least the lower bound.
TEST(Planner, NeverOverlapsLiveBuffersOnRandomGraphs) {
  std::mt19937 rng(42);
  for (int trial = 0; trial < 300; ++trial) {
    const int nodes = 1 + static_cast<int>(rng() % 40), count = static_cast<int>(rng() % 60);
    std::vector<jit::detail::Interval> iv;
    for (int k = 0; k < count; ++k) {
      const int a = static_cast<int>(rng() % static_cast<unsigned>(nodes));
      const int b = a + static_cast<int>(rng() % static_cast<unsigned>(nodes - a));
      iv.push_back({a, b, static_cast<size_t>(rng() % 5000)});
    }
    std::vector<int64_t> off;
    const size_t arena = jit::detail::assign_offsets(iv, off);
    const size_t bound = jit::detail::liveness_lower_bound(iv);
    EXPECT_GE(arena, bound);
    for (int p = 0; p < count; ++p) {
      const auto up = static_cast<size_t>(p);
      const size_t pe = static_cast<size_t>(off[up]) + std::max<size_t>(iv[up].bytes, 1);
      EXPECT_LE(pe, arena);
      EXPECT_EQ(off[up] % 64, 0);
      for (int q = p + 1; q < count; ++q) {
        const auto uq = static_cast<size_t>(q);
        if (iv[up].last < iv[uq].first || iv[uq].last < iv[up].first) continue;
        const size_t qe = static_cast<size_t>(off[uq]) + std::max<size_t>(iv[uq].bytes, 1);
        EXPECT_TRUE(pe <= static_cast<size_t>(off[uq]) || qe <= static_cast<size_t>(off[up]))
            << "trial " << trial << ": buffers " << p << " and " << q << " overlap";
      }
    }
  }
}

// Recomputation (cheap ops by default, segments when asked) keeps the
// step's results bitwise and shrinks the arena.
TEST(Compile, RecomputedActivationsGiveTheSameStepAndASmallerArena) {
  const models::GPTConfig cfg = tiny_gpt(3);
  auto batch = batches({4, 16}, 40, 40, {4, 16}, 19);
  size_t arena[3] = {};
  int64_t copies[3] = {};
  const int segment_options[3] = {0, 0, -1};
  const bool cheap_options[3] = {false, true, true};
  for (int variant = 0; variant < 3; ++variant) {
    manual_seed(4);
    models::GPT a(cfg), b(cfg);
    copy_params(*a, *b);
    optim::AdamW oa(a->parameters(), optim::AdamWOptions(1e-3));
    optim::AdamW ob(b->parameters(), optim::AdamWOptions(1e-3));
    jit::CompileOptions o;
    o.recompute_cheap = cheap_options[variant];
    o.checkpoint_segments = segment_options[variant];
    auto compiled = loom::compile(training_step(b, ob, language_model), o);
    Step eager = training_step(a, oa, language_model);
    for (int k = 0; k < 5; ++k) {
      auto [x, y] = batch(k);
      manual_seed(77 + static_cast<uint64_t>(k));
      Tensor la = eager(x, y);
      manual_seed(77 + static_cast<uint64_t>(k));
      Tensor lb = compiled(x, y);
      EXPECT_TRUE(same_bits(la.detach(), lb.detach())) << "variant " << variant << " step " << k;
      expect_same_state(*a, *b);
    }
    EXPECT_GE(compiled.stats().replays, 2);
    const jit::MemoryPlan plan = compiled.graph()->memory_plan();
    // The serial order's plan (a parallel schedule may lay it out wider).
    arena[variant] = plan.serial_arena_bytes > 0 ? plan.serial_arena_bytes : plan.arena_bytes;
    copies[variant] = plan.recomputed_nodes;
  }
  EXPECT_EQ(copies[0], 0);
  EXPECT_GT(copies[1], 0);
  EXPECT_GT(copies[2], copies[1]);
  EXPECT_LT(arena[1], arena[0]);
  EXPECT_LT(arena[2], arena[1]);
}

// Gradients dropped outside the step (zero_grad() between calls): the state
// the graph writes is gone, so the step records again, and stays right.
TEST(Compile, StateDroppedOutsideTheStepRecordsAgain) {
  manual_seed(9);
  nn::Sequential a = models::mlp(6, {8}, 3), b = models::mlp(6, {8}, 3);
  copy_params(*a, *b);
  optim::SGD oa(a->parameters(), optim::SGDOptions(0.1)), ob(b->parameters(), optim::SGDOptions(0.1));
  // zero_grad is outside the step here.
  auto make_step = [](nn::Sequential m, optim::SGD& opt) {
    return [m, &opt](const Tensor& x, const Tensor& y) {
      Tensor loss = classify(m, x, y);
      loss.backward();
      opt.step();
      return loss;
    };
  };
  auto eager = make_step(a, oa);
  auto compiled = loom::compile(make_step(b, ob));
  Tensor x = randn({4, 6}), y = randint(0, 3, {4});
  for (int k = 0; k < 8; ++k) {
    // The gradients are freed between steps (set_to_none), outside the step.
    oa.zero_grad();
    ob.zero_grad();
    EXPECT_TRUE(same_bits(eager(x, y).detach(), compiled(x, y).detach())) << k;
    expect_same_state(*a, *b);
  }
  // Every call finds its gradients gone: nothing is replayed, nothing is wrong.
  EXPECT_EQ(compiled.stats().replays, 0);
}

// A step that makes new persistent state at every call cannot settle.
TEST(Compile, StateCreatedAtEveryCallIsAnError) {
  std::vector<Tensor> kept;
  auto f = loom::compile([&](const Tensor& x) {
    kept.push_back(x * 2.0);  // a new tensor outlives every call
    return x + 1.0;
  });
  Tensor x = randn({3});
  EXPECT_ERROR_HAS(
      {
        for (int k = 0; k < 6; ++k) f(x);
      },
      "compile: the step allocates persistent state mid-step");
}

// A step that returns a view of a result (matmul squeezes its Bmm's output,
// and autograd's view tracking keeps the Bmm's output impl as the view's
// root) replays like any other: the root is the output's, not host state.
TEST(Compile, ReturningAProductReplays) {
  const Tensor a = randn({4, 5}), b = randn({5, 3});
  auto f = loom::compile([](const Tensor& x, const Tensor& y) { return matmul(x, y); });
  for (int k = 0; k < 4; ++k) EXPECT_TRUE(same_bits(f(a, b), matmul(a, b)));
  EXPECT_GE(f.stats().replays, 2);
}
