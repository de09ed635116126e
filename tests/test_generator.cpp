// loom::Generator: private random streams handed to the random ops, and the
// global stream behind default_generator() and manual_seed.
#include <gtest/gtest.h>
#include <loom/loom.h>

#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace loom;
namespace F = loom::nn::functional;
namespace init = loom::nn::init;

// Restores the global stream a test moved.
struct RngStateGuard {
  RngState saved = get_rng_state();
  ~RngStateGuard() { set_rng_state(saved); }
};

bool same(const RngState& a, const RngState& b) { return a.seed == b.seed && a.offset == b.offset; }

TEST(Generator, NewGeneratorsStartFromPyTorchsDefaultSeed) {
  Generator g;
  EXPECT_EQ(g.initial_seed(), 67280421310721ULL);
  EXPECT_EQ(g.get_state().offset, 0u);
  EXPECT_EQ(Generator(5).initial_seed(), 5u);
  // manual_seed returns the generator, as torch.Generator().manual_seed(7).
  Generator h = Generator().manual_seed(7);
  EXPECT_EQ(h.initial_seed(), 7u);
}

TEST(Generator, SameSeedGivesTheSameDraws) {
  Generator a(42), b(42), c(43);
  const Tensor x = rand({257}, {}, a);
  EXPECT_TRUE(equal(x, rand({257}, {}, b)));
  EXPECT_FALSE(equal(x, rand({257}, {}, c)));
  // The next draws go on from the same place in both streams.
  EXPECT_TRUE(equal(randn({3, 5}, {}, a), randn({3, 5}, {}, b)));
  EXPECT_FALSE(equal(rand({257}, {}, a), x));
}

TEST(Generator, CopiesShareOneStream) {
  Generator g(9);
  Generator h = g;
  EXPECT_TRUE(g == h);
  EXPECT_FALSE(g == Generator(9));
  rand({10}, {}, h);
  EXPECT_EQ(g.get_state().offset, 12u);  // 10 counters, rounded up to a multiple of 4
  g.manual_seed(3);
  EXPECT_EQ(h.initial_seed(), 3u);
  EXPECT_EQ(h.get_state().offset, 0u);
}

TEST(Generator, StateRoundTrips) {
  Generator g(1234);
  rand({7}, {}, g);
  const RngState s = g.get_state();
  EXPECT_EQ(s.seed, 1234u);
  EXPECT_EQ(s.offset, 8u);
  const Tensor x = randn({33}, {}, g);
  g.set_state(s);
  EXPECT_TRUE(equal(randn({33}, {}, g), x));
  // A state moves between generators: another stream resumes from it.
  Generator other;
  other.set_state(s);
  EXPECT_TRUE(equal(randn({33}, {}, other), x));
}

TEST(Generator, PhiloxReserveHandsOutDisjointCounters) {
  Generator g(77);
  const RngState first = g.philox_reserve(5);
  const RngState second = g.philox_reserve(1);
  EXPECT_EQ(first.seed, 77u);
  EXPECT_EQ(first.offset, 0u);
  EXPECT_EQ(second.offset, 8u);
  EXPECT_EQ(g.get_state().offset, 12u);
}

TEST(Generator, PrivateDrawsLeaveTheGlobalStreamAlone) {
  RngStateGuard guard;
  manual_seed(5);
  const RngState before = get_rng_state();
  Generator g(5);
  const Tensor mine = rand({100}, {}, g);
  randn({4, 4}, {}, g);
  randperm(50, kInt64, g);
  EXPECT_TRUE(same(get_rng_state(), before));
  // The global stream's first draw is what the private one drew first.
  EXPECT_TRUE(equal(rand({100}), mine));
}

TEST(Generator, DefaultGeneratorIsTheGlobalStream) {
  RngStateGuard guard;
  EXPECT_TRUE(default_generator() == default_generator());
  manual_seed(11);
  EXPECT_EQ(default_generator().initial_seed(), 11u);
  default_generator().manual_seed(12);
  EXPECT_EQ(initial_seed(), 12u);
  rand({5});
  EXPECT_TRUE(same(default_generator().get_state(), get_rng_state()));
  EXPECT_EQ(get_rng_state().offset, 8u);
  // Handing the default generator in is the same as leaving it out.
  manual_seed(13);
  const Tensor implicit = randn({40});
  manual_seed(13);
  EXPECT_TRUE(equal(randn({40}, {}, default_generator()), implicit));
}

// The global stream keeps its arithmetic: a draw of n values takes counters
// [offset, offset + n) and moves the offset to the next multiple of 4, so a
// stream restored at offset 8 gives what follows an 8-value draw.
TEST(Generator, GlobalStreamArithmetic) {
  RngStateGuard guard;
  manual_seed(21);
  rand({6});
  EXPECT_EQ(get_rng_state().offset, 8u);
  const Tensor after = rand({9});
  EXPECT_EQ(get_rng_state().offset, 20u);
  set_rng_state({21, 8});
  EXPECT_TRUE(equal(rand({9}), after));
  Generator g(21);
  g.set_state({21, 8});
  EXPECT_TRUE(equal(rand({9}, {}, g), after));
}

// One random op, drawn through the generator it is handed (or, given
// nullopt, through the global stream).
using Draw = std::function<Tensor(std::optional<Generator>)>;

struct NamedDraw {
  std::string name;
  Draw draw;
};

std::vector<NamedDraw> every_random_op() {
  const Tensor probs = rand({6, 7});
  const Tensor like = zeros({5, 6}, kFloat64);
  const Tensor x = ones({4, 3, 5, 5});
  const Tensor q = randn({2, 2, 6, 4}), k = randn({2, 2, 7, 4}), v = randn({2, 2, 7, 3});
  auto fresh = [] { return empty({8, 6}); };
  return {
      {"rand", [](auto g) { return rand({3, 9}, {}, g); }},
      {"randn", [](auto g) { return randn({3, 9}, kFloat64, g); }},
      {"randint", [](auto g) { return randint(-50, 50, {40}, kInt64, g); }},
      {"randint(high)", [](auto g) { return randint(1000, {40}, kInt32, g); }},
      {"randperm", [](auto g) { return randperm(60, kInt64, g); }},
      {"bernoulli(p)", [probs](auto g) { return bernoulli(probs, g); }},
      {"bernoulli(like, p)", [like](auto g) { return bernoulli(like, 0.3, g); }},
      {"rand_like", [like](auto g) { return rand_like(like, std::nullopt, g); }},
      {"randn_like", [like](auto g) { return randn_like(like, std::nullopt, g); }},
      {"randint_like", [like](auto g) { return randint_like(like, 0, 9, std::nullopt, g); }},
      {"Tensor::uniform_", [fresh](auto g) { return fresh().uniform_(-2, 3, g); }},
      {"Tensor::normal_", [fresh](auto g) { return fresh().normal_(1, 2, g); }},
      {"init::uniform_", [fresh](auto g) { return init::uniform_(fresh(), -1, 1, g); }},
      {"init::normal_", [fresh](auto g) { return init::normal_(fresh(), 0, 0.5, g); }},
      {"init::xavier_uniform_", [fresh](auto g) { return init::xavier_uniform_(fresh(), 1.0, g); }},
      {"init::xavier_normal_", [fresh](auto g) { return init::xavier_normal_(fresh(), 1.0, g); }},
      {"init::kaiming_uniform_",
       [fresh](auto g) { return init::kaiming_uniform_(fresh(), 0.0, "fan_in", "leaky_relu", g); }},
      {"init::kaiming_normal_",
       [fresh](auto g) { return init::kaiming_normal_(fresh(), 0.0, "fan_out", "relu", g); }},
      {"init::orthogonal_", [fresh](auto g) { return init::orthogonal_(fresh(), 1.0, g); }},
      {"dropout", [x](auto g) { return F::dropout(x, 0.4, true, g); }},
      {"dropout2d", [x](auto g) { return F::dropout2d(x, 0.5, true, g); }},
      {"scaled_dot_product_attention",
       [q, k, v](auto g) { return scaled_dot_product_attention(q, k, v, {}, 0.3, false, std::nullopt, g); }},
  };
}

TEST(Generator, EveryRandomOpHonoursItsGenerator) {
  RngStateGuard guard;
  manual_seed(99);
  for (const NamedDraw& op : every_random_op()) {
    SCOPED_TRACE(op.name);
    const RngState global_before = get_rng_state();
    Generator a(2024), b(2024), c(2025);
    const Tensor from_a = op.draw(a);
    // The op drew from `a` only.
    EXPECT_GT(a.get_state().offset, 0u);
    EXPECT_TRUE(same(get_rng_state(), global_before));
    // The same seed gives the same values, another seed others.
    EXPECT_TRUE(equal(op.draw(b), from_a));
    EXPECT_FALSE(equal(op.draw(c), from_a));
    // Left out, the op draws from the global stream: with the same seed and
    // offset it gives what the private stream gave.
    set_rng_state({2024, 0});
    EXPECT_TRUE(equal(op.draw(std::nullopt), from_a));
    EXPECT_TRUE(same(get_rng_state(), a.get_state()));
  }
}

TEST(Generator, AttentionDropoutBackwardUsesTheSameMask) {
  // The backward rebuilds the forward's mask from the reserved counters, so
  // a private generator gives the same gradients as the global stream with
  // its seed.
  RngStateGuard guard;
  auto grads = [](std::optional<Generator> g) {
    manual_seed(1);
    Tensor q = randn({1, 2, 5, 4}).requires_grad_(), k = randn({1, 2, 5, 4}).requires_grad_(),
           v = randn({1, 2, 5, 4}).requires_grad_();
    if (!g) manual_seed(31);
    scaled_dot_product_attention(q, k, v, {}, 0.5, false, std::nullopt, g).sum().backward();
    return std::vector<Tensor>{q.grad(), k.grad(), v.grad()};
  };
  const auto global = grads(std::nullopt), mine = grads(Generator(31));
  for (size_t i = 0; i < global.size(); ++i) EXPECT_TRUE(equal(global[i], mine[i])) << i;
}

TEST(Generator, ConcurrentThreadsWithTheirOwnGeneratorsAreDeterministic) {
  RngStateGuard guard;
  constexpr int kThreads = 4, kDraws = 30;
  auto run = [](int t) {
    Generator g(1000 + static_cast<uint64_t>(t));
    std::vector<Tensor> out;
    for (int d = 0; d < kDraws; ++d) {
      out.push_back(randn({1 << 14}, {}, g));  // big enough to use the thread pool
      out.push_back(F::dropout(ones({64}), 0.5, true, g));
    }
    return out;
  };
  std::vector<std::vector<Tensor>> expect;
  for (int t = 0; t < kThreads; ++t) expect.push_back(run(t));
  const RngState global_before = get_rng_state();
  std::vector<std::vector<Tensor>> got(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) threads.emplace_back([&, t] { got[static_cast<size_t>(t)] = run(t); });
  for (auto& th : threads) th.join();
  EXPECT_TRUE(same(get_rng_state(), global_before));
  for (int t = 0; t < kThreads; ++t)
    for (size_t d = 0; d < expect[static_cast<size_t>(t)].size(); ++d)
      ASSERT_TRUE(equal(got[static_cast<size_t>(t)][d], expect[static_cast<size_t>(t)][d]))
          << "thread " << t << " draw " << d;
}

TEST(Generator, ConcurrentDrawsFromOneGeneratorTakeDisjointCounters) {
  // Threads sharing one generator each get whole reservations: every draw
  // is some block of the stream, and the offsets add up.
  Generator g(8);
  constexpr int kThreads = 4, kDraws = 100;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&] {
      for (int d = 0; d < kDraws; ++d) rand({6}, {}, g);
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(g.get_state().offset, uint64_t{kThreads} * kDraws * 8);
}

}  // namespace
