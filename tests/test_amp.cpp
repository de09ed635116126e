// amp::GradScaler: scaling, unscaling, skipped steps and the scale's
// updates, against what PyTorch's GradScaler does.
#include <gtest/gtest.h>
#include <loom/loom.h>

#include <cmath>
#include <limits>
#include <string>

#include "test_util.h"

namespace {

using namespace loom;
using loom::test::error_of;
using loom::test::same_bits;

struct Toy {
  nn::Linear model{nullptr};
  Tensor x, y;
};

Toy make_toy(uint64_t seed) {
  manual_seed(seed);
  Toy s;
  s.model = nn::Linear(6, 3);
  s.x = randn({8, 6});
  s.y = randn({8, 3});
  return s;
}

Tensor loss_of(Toy& s) { return nn::functional::mse_loss(s.model(s.x), s.y); }

TEST(GradScaler, UnscaledGradientsAndStepsEqualPlainTraining) {
  Toy a = make_toy(1), b = make_toy(1);
  optim::SGD opt_a(a.model->parameters(), optim::SGDOptions(0.1));
  optim::SGD opt_b(b.model->parameters(), optim::SGDOptions(0.1));
  amp::GradScaler scaler;
  EXPECT_EQ(scaler.get_scale(), 65536.0);
  for (int step = 0; step < 3; ++step) {
    opt_a.zero_grad();
    loss_of(a).backward();
    opt_a.step();

    opt_b.zero_grad();
    Tensor scaled = scaler.scale(loss_of(b));
    EXPECT_EQ(scaled.dtype(), kFloat32);
    scaled.backward();
    EXPECT_GT(b.model->weight.grad().abs().max().item<double>(),
              1000 * a.model->weight.grad().abs().max().item<double>());  // scaled up
    scaler.unscale_(opt_b);
    // A power-of-two scale: unscaled gradients are the plain ones, bit for bit.
    EXPECT_TRUE(same_bits(b.model->weight.grad(), a.model->weight.grad()));
    EXPECT_TRUE(scaler.step(opt_b));
    scaler.update();
  }
  EXPECT_TRUE(same_bits(a.model->weight, b.model->weight));
  EXPECT_TRUE(same_bits(a.model->bias, b.model->bias));
  EXPECT_EQ(scaler.growth_tracker(), 3);
}

TEST(GradScaler, SkipsStepsWithInfOrNanAndBacksOff) {
  for (double bad : {std::numeric_limits<double>::infinity(), std::numeric_limits<double>::quiet_NaN()}) {
    SCOPED_TRACE(std::to_string(bad));
    Toy s = make_toy(2);
    optim::Adam opt(s.model->parameters(), optim::AdamOptions(0.01));
    amp::GradScaler scaler({.init_scale = 1024.0, .growth_interval = 100});
    // One good step first: the tracker counts it.
    opt.zero_grad();
    scaler.scale(loss_of(s)).backward();
    EXPECT_TRUE(scaler.step(opt));
    scaler.update();
    EXPECT_EQ(scaler.growth_tracker(), 1);

    const Tensor before_w = s.model->weight.detach().clone(), before_b = s.model->bias.detach().clone();
    opt.zero_grad();
    scaler.scale(loss_of(s)).backward();
    {
      NoGradGuard ng;
      s.model->bias.grad()[1].fill_(bad);  // one element of one gradient
    }
    EXPECT_FALSE(scaler.step(opt));
    EXPECT_TRUE(same_bits(s.model->weight, before_w));  // the optimizer did not run
    EXPECT_TRUE(same_bits(s.model->bias, before_b));
    scaler.update();
    EXPECT_EQ(scaler.get_scale(), 512.0);
    EXPECT_EQ(scaler.growth_tracker(), 0);
  }
}

TEST(GradScaler, GrowsAfterGrowthIntervalGoodSteps) {
  Toy s = make_toy(3);
  optim::SGD opt(s.model->parameters(), optim::SGDOptions(0.01));
  amp::GradScaler scaler({.init_scale = 8.0, .growth_factor = 2.0, .growth_interval = 3});
  const double want[] = {8, 8, 16, 16, 16, 32};
  for (double w : want) {
    opt.zero_grad();
    scaler.scale(loss_of(s)).backward();
    scaler.step(opt);
    scaler.update();
    EXPECT_EQ(scaler.get_scale(), w);
  }
  scaler.update(3.0);  // set outright
  EXPECT_EQ(scaler.get_scale(), 3.0);
  EXPECT_EQ(scaler.growth_tracker(), 0);
}

TEST(GradScaler, EachOptimizerSkipsOnItsOwnInfButTheScaleSeesAll) {
  manual_seed(4);
  nn::Linear a(4, 2), b(4, 2);
  optim::SGD opt_a(a->parameters(), optim::SGDOptions(0.1)), opt_b(b->parameters(), optim::SGDOptions(0.1));
  amp::GradScaler scaler({.init_scale = 64.0});
  const Tensor x = randn({5, 4});
  scaler.scale((a(x).sum() + b(x).sum())).backward();
  {
    NoGradGuard ng;
    b->weight.grad()[0][0].fill_(std::numeric_limits<double>::infinity());
  }
  const Tensor a_before = a->weight.detach().clone(), b_before = b->weight.detach().clone();
  EXPECT_TRUE(scaler.step(opt_a));
  EXPECT_FALSE(scaler.step(opt_b));
  EXPECT_FALSE(same_bits(a->weight, a_before));
  EXPECT_TRUE(same_bits(b->weight, b_before));
  scaler.update();
  EXPECT_EQ(scaler.get_scale(), 32.0);
}

TEST(GradScaler, MisuseIsAnErrorThatSaysWhat) {
  Toy s = make_toy(5);
  optim::SGD opt(s.model->parameters(), optim::SGDOptions(0.1));
  amp::GradScaler scaler;
  EXPECT_NE(error_of([&] { scaler.update(); }).find("no inf checks"), std::string::npos);
  scaler.scale(loss_of(s)).backward();
  scaler.unscale_(opt);
  EXPECT_NE(error_of([&] { scaler.unscale_(opt); }).find("already called"), std::string::npos);
  scaler.step(opt);
  EXPECT_NE(error_of([&] { scaler.step(opt); }).find("already called"), std::string::npos);
  EXPECT_NE(error_of([&] { scaler.unscale_(opt); }).find("step() was already called"), std::string::npos);
  scaler.update();
  EXPECT_NE(error_of([] { amp::GradScaler bad({.backoff_factor = 1.5}); }).find("backoff_factor"), std::string::npos);
  EXPECT_NE(error_of([&] { scaler.scale(tensor(std::vector<int64_t>{1})); }).find("floating-point"), std::string::npos);
  // Master weights stay float32: a float16 gradient is refused.
  nn::Linear half(3, 2);
  half->to(kFloat16);
  optim::SGD opt_h(half->parameters(), optim::SGDOptions(0.1));
  half(randn({2, 3}).to(kFloat16)).to(kFloat32).sum().backward();
  EXPECT_NE(error_of([&] { scaler.unscale_(opt_h); }).find("float32"), std::string::npos);
}

TEST(GradScaler, StateDictRoundTripsAndDisabledPassesThrough) {
  Toy s = make_toy(6);
  optim::SGD opt(s.model->parameters(), optim::SGDOptions(0.1));
  amp::GradScaler scaler({.init_scale = 256.0, .growth_interval = 10});
  for (int i = 0; i < 4; ++i) {
    scaler.scale(loss_of(s)).backward();
    scaler.step(opt);
    scaler.update();
    opt.zero_grad();
  }
  amp::GradScaler other;
  other.load_state_dict(scaler.state_dict());
  EXPECT_EQ(other.get_scale(), 256.0);
  EXPECT_EQ(other.growth_tracker(), 4);
  EXPECT_EQ(other.options().growth_interval, 10);

  amp::GradScaler off({.enabled = false});
  const Tensor loss = loss_of(s);
  EXPECT_TRUE(same_bits(off.scale(loss), loss));
  loss.backward();
  const Tensor w = s.model->weight.detach().clone();
  EXPECT_TRUE(off.step(opt));
  EXPECT_FALSE(same_bits(s.model->weight, w));
  off.update();
  EXPECT_EQ(off.get_scale(), 1.0);
  EXPECT_TRUE(off.state_dict().empty());
}

}  // namespace
