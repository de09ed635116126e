// Optimizers, parameter groups, state dicts, learning-rate schedulers and
// gradient clipping.
//
// Each optimizer runs several steps on small float64 parameters with fixed
// gradients and is compared, after every step, with a plain-loop
// implementation of PyTorch's documented algorithm written below (Ref*), and
// after the last step with the numbers PyTorch 1.13 itself gave for the same
// run (kTorchFinal). Scheduler sequences are PyTorch's, pasted, and checked
// against the closed forms too.
#include <gtest/gtest.h>
#include <loom/loom.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "test_util.h"

namespace {

using namespace loom;
using V = std::vector<double>;

// ---- helpers ----

V vals(const Tensor& t) { return t.to_vector<double>(); }

Tensor make_param(const V& v, IntArrayRef shape) {
  Tensor t = empty({static_cast<int64_t>(v.size())}, kFloat64);
  std::copy(v.begin(), v.end(), t.data_ptr<double>());
  return t.reshape(shape).clone().requires_grad_(true);
}

Tensor make_tensor(const V& v) {
  Tensor t = empty({static_cast<int64_t>(v.size())}, kFloat64);
  std::copy(v.begin(), v.end(), t.data_ptr<double>());
  return t;
}

void expect_near(const V& got, const V& want, double tol, const std::string& what = "") {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], tol) << what << " at " << i;
}

using loom::test::error_of;

// The fixed problem every optimizer test runs: two parameters (a 2x3 matrix
// and a 4-vector) and, at step k, the gradient
//   g[j][k][i] = sin(1.3 i + 0.7 k + j) * (1.5 + cos(0.9 k)),
// whose magnitude rises and falls (so AMSGrad's running maximum matters).
const V kP0a = {0.5, -1.25, 2.0, 0.0, 0.75, -0.3};
const V kP0b = {1.0, -2.0, 0.25, 3.5};
constexpr int kSteps = 6;

V grad_at(int j, int k, size_t n) {
  V g(n);
  for (size_t i = 0; i < n; ++i) g[i] = std::sin(1.3 * i + 0.7 * k + j) * (1.5 + std::cos(0.9 * k));
  return g;
}

std::vector<Tensor> fresh_params() { return {make_param(kP0a, {2, 3}), make_param(kP0b, {4})}; }

void set_grads(std::vector<Tensor>& ps, int k) {
  for (size_t j = 0; j < ps.size(); ++j) {
    V g = grad_at(static_cast<int>(j), k, static_cast<size_t>(ps[j].numel()));
    ps[j].set_grad(make_tensor(g).reshape(ps[j].sizes()));
  }
}

// ---- reference implementations: PyTorch's algorithms, one element at a time ----

struct RefSGD {
  double lr, momentum = 0, dampening = 0, weight_decay = 0;
  bool nesterov = false, maximize = false;
  V buf = {};
  void step(V& p, V g) {
    const bool first = buf.empty();
    if (first) buf.assign(p.size(), 0.0);
    for (size_t i = 0; i < p.size(); ++i) {
      if (maximize) g[i] = -g[i];
      g[i] += weight_decay * p[i];
      if (momentum != 0) {
        // The first step's buffer is the gradient itself (no dampening).
        buf[i] = first ? g[i] : momentum * buf[i] + (1 - dampening) * g[i];
        g[i] = nesterov ? g[i] + momentum * buf[i] : buf[i];
      }
      p[i] -= lr * g[i];
    }
  }
};

// Adam and AdamW. The AMSGrad maximum is taken over the raw second moments,
// as PyTorch's implementation does.
struct RefAdam {
  double lr, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;
  bool amsgrad = false, maximize = false, decoupled = false;
  V m = {}, v = {}, vmax = {};
  int t = 0;
  void step(V& p, V g) {
    if (m.empty()) m = v = vmax = V(p.size(), 0.0);
    ++t;
    for (size_t i = 0; i < p.size(); ++i) {
      if (maximize) g[i] = -g[i];
      if (decoupled) p[i] *= 1 - lr * weight_decay;
      else g[i] += weight_decay * p[i];
      m[i] = beta1 * m[i] + (1 - beta1) * g[i];
      v[i] = beta2 * v[i] + (1 - beta2) * g[i] * g[i];
      const double m_hat = m[i] / (1 - std::pow(beta1, t));
      vmax[i] = std::max(vmax[i], v[i]);
      const double v_hat = (amsgrad ? vmax[i] : v[i]) / (1 - std::pow(beta2, t));
      p[i] -= lr * m_hat / (std::sqrt(v_hat) + eps);
    }
  }
};

struct RefRMSprop {
  double lr, alpha = 0.99, eps = 1e-8, weight_decay = 0, momentum = 0;
  bool centered = false, maximize = false;
  V sq = {}, ga = {}, buf = {};
  void step(V& p, V g) {
    if (sq.empty()) sq = ga = buf = V(p.size(), 0.0);
    for (size_t i = 0; i < p.size(); ++i) {
      if (maximize) g[i] = -g[i];
      g[i] += weight_decay * p[i];
      sq[i] = alpha * sq[i] + (1 - alpha) * g[i] * g[i];
      double var = sq[i];
      if (centered) {
        ga[i] = alpha * ga[i] + (1 - alpha) * g[i];
        var -= ga[i] * ga[i];
      }
      const double avg = std::sqrt(var) + eps;
      if (momentum > 0) {
        buf[i] = momentum * buf[i] + g[i] / avg;
        p[i] -= lr * buf[i];
      } else {
        p[i] -= lr * g[i] / avg;
      }
    }
  }
};

struct RefAdagrad {
  double lr, lr_decay = 0, weight_decay = 0, initial_accumulator_value = 0, eps = 1e-10;
  V sum = {};
  int t = 0;
  void step(V& p, V g) {
    if (sum.empty()) sum.assign(p.size(), initial_accumulator_value);
    ++t;
    const double clr = lr / (1 + (t - 1) * lr_decay);
    for (size_t i = 0; i < p.size(); ++i) {
      g[i] += weight_decay * p[i];
      sum[i] += g[i] * g[i];
      p[i] -= clr * g[i] / (std::sqrt(sum[i]) + eps);
    }
  }
};

// PyTorch 1.13's parameters (a then b, flattened) after kSteps steps of the
// fixed problem, from torch.optim with the same options.
const std::map<std::string, V> kTorchFinal = {
    {"sgd_plain", {0.21146849004651383, -1.545187572466813, 2.130606850234671, 0.36506193136305537,
                   0.8147004277954233, -0.6304473540694844, 0.6537223451513731, -1.9764747133972407,
                   0.6088636280672183, 3.668465913685142}},
    {"sgd_momentum", {-0.009009186150134543, -2.1228731643855245, 2.015897981063653, 0.9005067527662944,
                      1.1931974564568164, -0.9576154071355991, 0.0656314325264984, -2.226094244146403,
                      1.0442804707809292, 4.1397677907738375}},
    {"sgd_nesterov", {-0.05174486700022513, -1.8272182245905575, 1.9619918644909091, 0.7625758360858473,
                      0.952168128827969, -0.8922433619966966, 0.1548515544232839, -1.9120386524955815,
                      0.9365156854709976, 3.6581905168414663}},
    {"sgd_maximize", {1.0751010930676714, -0.5290955962508788, 1.8105810740387216, -0.82224308537706,
                      0.4995208015952182, 0.3882373010408504, 1.805944201608758, -1.9443196176203,
                      -0.5261553274808801, 3.0290783357565636}},
    {"adam_plain", {0.46298851828320664, -1.291989397742231, 1.996175025763088, 0.047222884428632275,
                    0.7786998375926619, -0.34953947547362585, 0.9548918322386816, -2.0203094610105774,
                    0.299213064429523, 3.5354518778917248}},
    {"adam_amsgrad", {0.4050074128628599, -1.3204956273793278, 1.9788667389921937, 0.08727915592819617,
                      0.792835323399034, -0.3940227332788466, 0.9145937815241877, -2.0136641372596173,
                      0.34177091826825823, 3.5424833956939894}},
    {"adam_maximize", {0.5370114817167932, -1.208010602257769, 2.0038249742369123, -0.047222884428632275,
                       0.7213001624073381, -0.25046052452637413, 1.0451081677613185, -1.9796905389894224,
                       0.20078693557047705, 3.4645481221082752}},
    {"adamw_plain", {0.46269655342897975, -1.2912262072788436, 1.9949810273818913, 0.04720876667465817,
                     0.7782389185294065, -0.349345529358346, 0.9543058286763538, -2.0191003919894217,
                     0.2990488443156343, 3.5333401280605012}},
    {"adamw_amsgrad", {0.3985835471584623, -1.2541575917316543, 1.8802885744756297, 0.08836262616674477,
                       0.7566964192988181, -0.37713409969744116, 0.8576885122533272, -1.9171261313476953,
                       0.328447188448324, 3.3591503705251036}},
    {"rmsprop_plain", {0.3178435188125618, -1.3712500969712944, 2.057921915374542, 0.17405971787697894,
                       0.7888376616836494, -0.5465976869357843, 0.850546758338055, -2.0008175592464608,
                       0.4603264285842782, 3.575848056857337}},
    {"rmsprop_centered", {0.22526925345394966, -1.3919656121175359, 2.0018539014490635, 0.19503304446691247,
                          0.815398599343921, -0.5504823321404252, 0.8223866094236294, -2.016566720157989,
                          0.47403062525319134, 3.5841879008639803}},
    {"rmsprop_momentum", {0.13930143051075852, -1.5306209385454286, 2.075226634034362, 0.3757644502461755,
                          0.8748737194601598, -0.8007117021685883, 0.6681601740802693, -2.049104430361801,
                          0.689181784074908, 3.6960565411694026}},
    {"adagrad_plain", {0.31797577886815587, -1.3719856938131403, 2.056475688663032, 0.17442541339296874,
                       0.7902064765967375, -0.5466380915701683, 0.8500215864197634, -2.002361340378472,
                       0.46050624189506495, 3.5769491965323494}},
    {"adagrad_decay", {0.33683826864264194, -1.3717845116613456, 2.029067685349051, 0.16871586163909577,
                       0.7982688650503897, -0.502544222426596, 0.8489549442873467, -2.007432126702649,
                       0.44317582928472415, 3.574106109853111}},
};

using MakeOptimizer = std::function<std::unique_ptr<optim::Optimizer>(std::vector<Tensor>)>;

// Runs the fixed problem with loom and with `Ref` (one copy per parameter),
// comparing after every step, then compares with PyTorch's final values.
template <typename Ref>
void check_optimizer(const std::string& name, const MakeOptimizer& make, const Ref& proto) {
  SCOPED_TRACE(name);
  std::vector<Tensor> ps = fresh_params();
  const std::vector<TensorImpl*> impls = {ps[0].unsafe_impl(), ps[1].unsafe_impl()};
  auto opt = make(ps);
  std::vector<V> ref_p = {kP0a, kP0b};
  std::vector<Ref> refs(2, proto);
  for (int k = 0; k < kSteps; ++k) {
    set_grads(ps, k);
    opt->step();
    for (size_t j = 0; j < 2; ++j) {
      refs[j].step(ref_p[j], grad_at(static_cast<int>(j), k, ref_p[j].size()));
      expect_near(vals(ps[j]), ref_p[j], 1e-13, "param " + std::to_string(j) + " step " + std::to_string(k));
    }
  }
  // The update wrote into the same tensors: the handles are still the parameters.
  EXPECT_EQ(ps[0].unsafe_impl(), impls[0]);
  EXPECT_EQ(opt->parameters()[1].unsafe_impl(), impls[1]);
  EXPECT_TRUE(ps[0].requires_grad());
  EXPECT_TRUE(ps[0].is_leaf());
  V got = vals(ps[0]);
  V b = vals(ps[1]);
  got.insert(got.end(), b.begin(), b.end());
  expect_near(got, kTorchFinal.at(name), 1e-14, "vs PyTorch");
}

// ---- optimizers against the references ----

TEST(SGD, Plain) {
  check_optimizer(
      "sgd_plain", [](auto ps) { return std::make_unique<optim::SGD>(ps, optim::SGDOptions(0.1)); },
      RefSGD{.lr = 0.1});
}

TEST(SGD, MomentumDampeningWeightDecay) {
  check_optimizer(
      "sgd_momentum",
      [](auto ps) {
        return std::make_unique<optim::SGD>(ps, optim::SGDOptions(0.05).momentum(0.9).dampening(0.1).weight_decay(0.01));
      },
      RefSGD{.lr = 0.05, .momentum = 0.9, .dampening = 0.1, .weight_decay = 0.01});
}

TEST(SGD, Nesterov) {
  check_optimizer(
      "sgd_nesterov",
      [](auto ps) {
        return std::make_unique<optim::SGD>(ps, optim::SGDOptions(0.05).momentum(0.8).nesterov(true).weight_decay(0.1));
      },
      RefSGD{.lr = 0.05, .momentum = 0.8, .weight_decay = 0.1, .nesterov = true});
}

TEST(SGD, Maximize) {
  check_optimizer(
      "sgd_maximize",
      [](auto ps) { return std::make_unique<optim::SGD>(ps, optim::SGDOptions(0.1).momentum(0.5).maximize(true)); },
      RefSGD{.lr = 0.1, .momentum = 0.5, .maximize = true});
}

TEST(SGD, MomentumBufferStartsAsTheGradient) {
  Tensor p = make_param({1.0, 2.0}, {2});
  optim::SGD opt({p}, optim::SGDOptions(0.1).momentum(0.9).dampening(0.5));
  EXPECT_EQ(opt.state_of(p), nullptr);
  p.set_grad(make_tensor({1.0, -2.0}));
  opt.step();
  // First step: buf = g (no dampening), p = p - lr * g.
  expect_near(vals(opt.state_of(p)->at("momentum_buffer")), {1.0, -2.0}, 0);
  expect_near(vals(p), {0.9, 2.2}, 1e-15);
  // Second: buf = 0.9 * buf + 0.5 * g.
  opt.step();
  expect_near(vals(opt.state_of(p)->at("momentum_buffer")), {1.4, -2.8}, 1e-15);
  expect_near(vals(p), {0.76, 2.48}, 1e-15);
}

TEST(Adam, Plain) {
  check_optimizer(
      "adam_plain", [](auto ps) { return std::make_unique<optim::Adam>(ps, optim::AdamOptions(0.01)); },
      RefAdam{.lr = 0.01});
}

TEST(Adam, AmsgradWeightDecayBetasEps) {
  check_optimizer(
      "adam_amsgrad",
      [](auto ps) {
        return std::make_unique<optim::Adam>(
            ps, optim::AdamOptions(0.02).betas({0.8, 0.95}).eps(1e-6).weight_decay(0.1).amsgrad(true));
      },
      RefAdam{.lr = 0.02, .beta1 = 0.8, .beta2 = 0.95, .eps = 1e-6, .weight_decay = 0.1, .amsgrad = true});
}

TEST(Adam, Maximize) {
  check_optimizer(
      "adam_maximize",
      [](auto ps) { return std::make_unique<optim::Adam>(ps, optim::AdamOptions(0.01).maximize(true)); },
      RefAdam{.lr = 0.01, .maximize = true});
}

TEST(Adam, FirstStepMovesEachWeightByAboutLr) {
  // With bias correction the first step is lr * g / (|g| + eps'), i.e. lr * sign(g).
  Tensor p = make_param({1.0, -1.0, 3.0}, {3});
  optim::Adam opt({p}, optim::AdamOptions(0.1));
  p.set_grad(make_tensor({0.5, -4.0, 1e-3}));
  opt.step();
  expect_near(vals(p), {0.9, -0.9, 2.9}, 1e-6);
  const optim::ParamState* s = opt.state_of(p);
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->at("step").dim(), 0);
  EXPECT_EQ(s->at("step").dtype(), kFloat64);
  EXPECT_EQ(s->at("step").item<double>(), 1.0);
  expect_near(vals(s->at("exp_avg")), {0.05, -0.4, 1e-4}, 1e-15);
  EXPECT_FALSE(s->contains("max_exp_avg_sq"));
}

TEST(AdamW, DefaultWeightDecay) {
  check_optimizer(
      "adamw_plain", [](auto ps) { return std::make_unique<optim::AdamW>(ps, optim::AdamWOptions(0.01)); },
      RefAdam{.lr = 0.01, .weight_decay = 1e-2, .decoupled = true});
}

TEST(AdamW, Amsgrad) {
  check_optimizer(
      "adamw_amsgrad",
      [](auto ps) {
        return std::make_unique<optim::AdamW>(
            ps, optim::AdamWOptions(0.02).betas({0.85, 0.99}).weight_decay(0.5).amsgrad(true));
      },
      RefAdam{.lr = 0.02, .beta1 = 0.85, .beta2 = 0.99, .weight_decay = 0.5, .amsgrad = true, .decoupled = true});
}

TEST(AdamW, DecaysBeforeTheAdamStep) {
  // A zero gradient leaves only the decay: p *= 1 - lr * wd (the Adam part is 0 / (0 + eps) = 0).
  Tensor p = make_param({2.0, -4.0}, {2});
  optim::AdamW opt({p}, optim::AdamWOptions(0.1).weight_decay(0.5));
  p.set_grad(zeros({2}, kFloat64));
  opt.step();
  expect_near(vals(p), {1.9, -3.8}, 1e-15);
}

TEST(RMSprop, Plain) {
  check_optimizer(
      "rmsprop_plain", [](auto ps) { return std::make_unique<optim::RMSprop>(ps, optim::RMSpropOptions(0.01)); },
      RefRMSprop{.lr = 0.01});
}

TEST(RMSprop, CenteredMomentumWeightDecay) {
  check_optimizer(
      "rmsprop_centered",
      [](auto ps) {
        return std::make_unique<optim::RMSprop>(
            ps, optim::RMSpropOptions(0.01).alpha(0.9).eps(1e-6).weight_decay(0.05).momentum(0.7).centered(true));
      },
      RefRMSprop{.lr = 0.01, .alpha = 0.9, .eps = 1e-6, .weight_decay = 0.05, .momentum = 0.7, .centered = true});
}

TEST(RMSprop, Momentum) {
  check_optimizer(
      "rmsprop_momentum",
      [](auto ps) { return std::make_unique<optim::RMSprop>(ps, optim::RMSpropOptions(0.01).momentum(0.5)); },
      RefRMSprop{.lr = 0.01, .momentum = 0.5});
}

TEST(Adagrad, Plain) {
  check_optimizer(
      "adagrad_plain", [](auto ps) { return std::make_unique<optim::Adagrad>(ps, optim::AdagradOptions(0.1)); },
      RefAdagrad{.lr = 0.1});
}

TEST(Adagrad, LrDecayWeightDecayInitialAccumulator) {
  check_optimizer(
      "adagrad_decay",
      [](auto ps) {
        return std::make_unique<optim::Adagrad>(
            ps, optim::AdagradOptions(0.1).lr_decay(0.05).weight_decay(0.02).initial_accumulator_value(0.3).eps(1e-6));
      },
      RefAdagrad{.lr = 0.1, .lr_decay = 0.05, .weight_decay = 0.02, .initial_accumulator_value = 0.3, .eps = 1e-6});
}

TEST(Adagrad, StateExistsBeforeTheFirstStep) {
  // As PyTorch's: the accumulator is created with the optimizer.
  Tensor p = make_param({1.0, 2.0}, {2});
  optim::Adagrad opt({p}, optim::AdagradOptions(0.1).initial_accumulator_value(0.25));
  ASSERT_NE(opt.state_of(p), nullptr);
  expect_near(vals(opt.state_of(p)->at("sum")), {0.25, 0.25}, 0);
  EXPECT_EQ(opt.state_of(p)->at("step").item<double>(), 0.0);
}

// ---- the Optimizer base ----

TEST(Optimizer, DefaultsMatchPyTorch) {
  optim::AdamOptions adam;
  EXPECT_EQ(adam.lr(), 1e-3);
  EXPECT_EQ(std::get<0>(adam.betas()), 0.9);
  EXPECT_EQ(std::get<1>(adam.betas()), 0.999);
  EXPECT_EQ(adam.eps(), 1e-8);
  EXPECT_EQ(adam.weight_decay(), 0.0);
  EXPECT_FALSE(adam.amsgrad());
  EXPECT_EQ(optim::AdamWOptions().weight_decay(), 1e-2);
  optim::RMSpropOptions rms;
  EXPECT_EQ(rms.lr(), 1e-2);
  EXPECT_EQ(rms.alpha(), 0.99);
  EXPECT_EQ(rms.eps(), 1e-8);
  optim::AdagradOptions ada;
  EXPECT_EQ(ada.lr(), 1e-2);
  EXPECT_EQ(ada.eps(), 1e-10);
  optim::SGDOptions sgd(0.5);
  EXPECT_EQ(sgd.momentum(), 0.0);
  EXPECT_FALSE(sgd.nesterov());
}

TEST(Optimizer, SkipsParametersWithoutGradient) {
  Tensor a = make_param({1.0, 2.0}, {2});
  Tensor b = make_param({3.0}, {1});
  optim::Adam opt({a, b}, optim::AdamOptions(0.1));
  a.set_grad(make_tensor({1.0, 1.0}));
  const uint64_t version_b = b._version();
  opt.step();
  expect_near(vals(b), {3.0}, 0);
  EXPECT_EQ(b._version(), version_b);
  EXPECT_EQ(opt.state_of(b), nullptr);
  EXPECT_NE(opt.state_of(a), nullptr);
}

TEST(Optimizer, StepWithClosureReturnsTheLoss) {
  // loss = sum((p - 3)^2): the closure computes it and its gradient.
  Tensor p = make_param({1.0, 5.0}, {2});
  optim::SGD opt({p}, 0.25);
  Tensor loss = opt.step([&] {
    opt.zero_grad();
    Tensor l = (p - 3.0).pow(2).sum();
    l.backward();
    return l;
  });
  EXPECT_DOUBLE_EQ(loss.item<double>(), 8.0);
  // p -= 0.25 * 2 (p - 3)
  expect_near(vals(p), {2.0, 4.0}, 1e-15);
}

TEST(Optimizer, TrainsWithBackward) {
  // Fit w on y = 2 x with real gradients from autograd.
  Tensor w = make_param({0.0}, {1});
  Tensor x = make_tensor({1.0, 2.0, 3.0});
  Tensor y = x * 2.0;
  optim::Adam opt({w}, optim::AdamOptions(0.1));
  for (int i = 0; i < 300; ++i) {
    opt.zero_grad();
    ((x * w - y).pow(2).mean()).backward();
    opt.step();
  }
  EXPECT_NEAR(w.item<double>(), 2.0, 1e-3);
}

// A model's parameters, as a training loop hands them over.
struct TinyNet : nn::Module {
  Tensor w, b;
  TinyNet() : nn::Module("TinyNet") {
    w = register_parameter("w", make_tensor({0.5, -0.5}).reshape({2, 1}));
    b = register_parameter("b", zeros({1}, kFloat64));
  }
};

TEST(Optimizer, OptimizesAModule) {
  // y = x0 - 2 x1 + 0.5, fitted with AdamW from the module's parameters(),
  // its lr annealed so that it settles instead of hovering.
  auto net = std::make_shared<TinyNet>();
  optim::AdamW opt(net->parameters(), optim::AdamWOptions(0.2).weight_decay(0.0));
  optim::CosineAnnealingLR sched(opt, 300);
  Tensor x = make_tensor({1, 0, 0, 1, 1, 1, 2, -1}).reshape({4, 2});
  Tensor y = make_tensor({1.5, -1.5, -0.5, 4.5}).reshape({4, 1});
  double loss = 0;
  for (int i = 0; i < 300; ++i) {
    opt.zero_grad();
    Tensor l = (x.matmul(net->w) + net->b - y).pow(2).mean();
    l.backward();
    opt.step();
    sched.step();
    loss = l.item<double>();
  }
  EXPECT_LT(loss, 1e-8);
  expect_near(vals(net->w), {1.0, -2.0}, 1e-4);
  expect_near(vals(net->b), {0.5}, 1e-4);
  // PyTorch 1.13 (AdamW(lr=0.2, weight_decay=0), CosineAnnealingLR(T_max=300),
  // the same data and start) ends at these values.
  expect_near(vals(net->w), {0.9999571260252017, -2.0000349791647167}, 1e-12, "vs PyTorch");
  expect_near(vals(net->b), {0.500053370828757}, 1e-12, "vs PyTorch");
  // The module still holds the very tensors the optimizer updated.
  EXPECT_TRUE(net->named_parameters()[0].second.is_same(net->w));
  EXPECT_TRUE(opt.parameters()[0].is_same(net->w));
}

TEST(Optimizer, ZeroGrad) {
  Tensor p = make_param({1.0, 2.0}, {2});
  optim::SGD opt({p}, 0.1);
  p.set_grad(make_tensor({3.0, 4.0}));
  Tensor g = p.grad();
  opt.zero_grad(false);
  ASSERT_TRUE(p.grad().defined());
  EXPECT_TRUE(p.grad().is_same(g));  // zeroed in place
  expect_near(vals(g), {0.0, 0.0}, 0);
  opt.zero_grad();
  EXPECT_FALSE(p.grad().defined());

  // A gradient with history (create_graph) is detached before zeroing.
  Tensor l = (p * p).sum();
  l.backward(Tensor(), false, /*create_graph=*/true);
  ASSERT_TRUE(p.grad().requires_grad());
  opt.zero_grad(false);
  EXPECT_FALSE(p.grad().requires_grad());
  EXPECT_EQ(p.grad().grad_fn(), nullptr);
  expect_near(vals(p.grad()), {0.0, 0.0}, 0);
}

TEST(Optimizer, ParamGroupsWithTheirOwnOptions) {
  Tensor a = make_param({1.0, 1.0}, {2});
  Tensor b = make_param({1.0}, {1});
  std::vector<optim::ParamGroup> groups;
  groups.emplace_back(std::vector<Tensor>{a});
  groups.emplace_back(std::vector<Tensor>{b}, optim::SGDOptions(0.5));
  optim::SGD opt(std::move(groups), optim::SGDOptions(0.1).momentum(0.9));
  ASSERT_EQ(opt.param_groups().size(), 2u);
  EXPECT_EQ(opt.param_groups()[0].options().get_lr(), 0.1);
  EXPECT_EQ(opt.param_groups()[0].options_as<optim::SGDOptions>().momentum(), 0.9);  // the defaults
  EXPECT_EQ(opt.param_groups()[1].options().get_lr(), 0.5);
  EXPECT_EQ(opt.param_groups()[1].options_as<optim::SGDOptions>().momentum(), 0.0);  // its own options

  a.set_grad(make_tensor({1.0, -1.0}));
  b.set_grad(make_tensor({2.0}));
  opt.step();
  expect_near(vals(a), {0.9, 1.1}, 1e-15);
  expect_near(vals(b), {0.0}, 1e-15);

  // Options are reachable and mutable per group, as schedulers need.
  opt.param_groups()[1].options().set_lr(0.25);
  opt.param_groups()[0].options_as<optim::SGDOptions>().momentum(0.0);
  opt.step();
  expect_near(vals(a), {0.8, 1.2}, 1e-15);  // buffer ignored with momentum 0: plain step
  expect_near(vals(b), {-0.5}, 1e-15);
  EXPECT_ERROR_HAS(opt.param_groups()[0].options_as<optim::AdamOptions>(), "SGD options");
}

TEST(Optimizer, AddParamGroup) {
  Tensor a = make_param({1.0}, {1});
  Tensor b = make_param({1.0}, {1});
  optim::Adam opt({a}, optim::AdamOptions(0.1));
  opt.add_param_group(optim::ParamGroup({b}, optim::AdamOptions(0.2)));
  ASSERT_EQ(opt.param_groups().size(), 2u);
  EXPECT_EQ(opt.param_groups()[1].options().get_lr(), 0.2);
  EXPECT_EQ(opt.parameters().size(), 2u);
  b.set_grad(make_tensor({1.0}));
  opt.step();
  EXPECT_NEAR(b.item<double>(), 0.8, 1e-7);
  EXPECT_ERROR_HAS(opt.add_param_group(optim::ParamGroup({a})), "some parameters appear more than once");
  EXPECT_ERROR_HAS(opt.add_param_group(optim::ParamGroup({make_param({1.0}, {1})}, optim::SGDOptions(0.1))),
                   "Adam: parameter group 2 has SGD options; expected Adam options");
  EXPECT_ERROR_HAS(opt.add_param_group(optim::ParamGroup({make_param({1.0}, {1})}, optim::AdamOptions(-1.0))),
                   "Adam: Invalid learning rate: -1");
  EXPECT_EQ(opt.param_groups().size(), 2u);
}

TEST(Optimizer, Errors) {
  Tensor p = make_param({1.0}, {1});
  EXPECT_ERROR_HAS(optim::SGD({p}, optim::SGDOptions(-0.1)), "SGD: Invalid learning rate: -0.1");
  EXPECT_ERROR_HAS(optim::SGD({p}, optim::SGDOptions(0.1).momentum(-1)), "SGD: Invalid momentum value: -1");
  EXPECT_ERROR_HAS(optim::SGD({p}, optim::SGDOptions(0.1).nesterov(true)),
                   "Nesterov momentum requires a momentum and zero dampening");
  EXPECT_ERROR_HAS(optim::SGD({p}, optim::SGDOptions(0.1).momentum(0.9).dampening(0.1).nesterov(true)),
                   "Nesterov momentum requires a momentum and zero dampening");
  EXPECT_ERROR_HAS(optim::SGD({p}, optim::SGDOptions(std::nan(""))), "SGD: Invalid learning rate: nan");
  EXPECT_ERROR_HAS(optim::Adam({p}, optim::AdamOptions(-1e-3)), "Adam: Invalid learning rate: -0.001");
  EXPECT_ERROR_HAS(optim::Adam({p}, optim::AdamOptions().eps(-1)), "Adam: Invalid epsilon value: -1");
  EXPECT_ERROR_HAS(optim::Adam({p}, optim::AdamOptions().betas({1.0, 0.9})),
                   "Adam: Invalid beta parameter at index 0: 1");
  EXPECT_ERROR_HAS(optim::AdamW({p}, optim::AdamWOptions().betas({0.9, -0.1})),
                   "AdamW: Invalid beta parameter at index 1: -0.1");
  EXPECT_ERROR_HAS(optim::AdamW({p}, optim::AdamWOptions().weight_decay(-1)), "AdamW: Invalid weight_decay value");
  EXPECT_ERROR_HAS(optim::RMSprop({p}, optim::RMSpropOptions().alpha(-0.5)), "RMSprop: Invalid alpha value: -0.5");
  EXPECT_ERROR_HAS(optim::RMSprop({p}, optim::RMSpropOptions().eps(-1)), "RMSprop: Invalid epsilon value");
  EXPECT_ERROR_HAS(optim::Adagrad({p}, optim::AdagradOptions().lr_decay(-1)), "Adagrad: Invalid lr_decay value");
  EXPECT_ERROR_HAS(optim::Adagrad({p}, optim::AdagradOptions().initial_accumulator_value(-1)),
                   "Adagrad: Invalid initial_accumulator_value value");
  EXPECT_ERROR_HAS(optim::Adam(std::vector<Tensor>{}), "Adam: optimizer got an empty parameter list");
  EXPECT_ERROR_HAS(optim::Adam({p * 2.0}), "can't optimize a non-leaf Tensor");
  EXPECT_ERROR_HAS(optim::Adam({p, p}), "some parameters appear more than once");
  EXPECT_ERROR_HAS(optim::Adam({Tensor()}), "undefined tensor");
  EXPECT_ERROR_HAS(optim::Adam({zeros({2}, kInt64)}), "can only optimize floating point tensors");
}

TEST(Optimizer, HyperparametersByName) {
  optim::AdamOptions o(0.01);
  auto hp = o.hyperparameters();
  std::vector<std::string> names;
  for (auto& [n, v] : hp) names.push_back(n);
  EXPECT_EQ(names, (std::vector<std::string>{"lr", "betas0", "betas1", "eps", "weight_decay", "amsgrad", "maximize"}));
  o.set_hyperparameter("betas0", 0.8);
  o.set_hyperparameter("amsgrad", 1);
  EXPECT_EQ(std::get<0>(o.betas()), 0.8);
  EXPECT_TRUE(o.amsgrad());
  EXPECT_TRUE(o.has_hyperparameter("eps"));
  EXPECT_FALSE(o.has_hyperparameter("momentum"));
  EXPECT_ERROR_HAS(o.set_hyperparameter("momentum", 0.9), "Adam: no hyperparameter named \"momentum\"");
  EXPECT_ERROR_HAS(o.set_hyperparameter("amsgrad", 0.5), "takes 0 or 1");
}

// ---- state dicts ----

const Tensor* find_key(const nn::StateDict& sd, const std::string& key) {
  for (auto& [k, t] : sd)
    if (k == key) return &t;
  return nullptr;
}

TEST(OptimizerStateDict, Format) {
  Tensor a = make_param({1.0, 2.0}, {2});
  Tensor b = make_param({1.0, 2.0, 3.0}, {3});
  Tensor c = make_param({5.0}, {1});
  std::vector<optim::ParamGroup> groups;
  groups.emplace_back(std::vector<Tensor>{a, b});
  groups.emplace_back(std::vector<Tensor>{c}, optim::AdamOptions(0.5).betas({0.8, 0.9}).amsgrad(true));
  optim::Adam opt(std::move(groups), optim::AdamOptions(0.01));
  a.set_grad(make_tensor({1.0, 1.0}));
  c.set_grad(make_tensor({1.0}));
  opt.step();
  opt.step();
  nn::StateDict sd = opt.state_dict();
  std::vector<std::string> keys;
  for (auto& [k, t] : sd) keys.push_back(k);
  const std::vector<std::string> want = {
      "param_groups.0.lr",       "param_groups.0.betas0",   "param_groups.0.betas1",
      "param_groups.0.eps",      "param_groups.0.weight_decay", "param_groups.0.amsgrad",
      "param_groups.0.maximize", "param_groups.0.params",   "param_groups.1.lr",
      "param_groups.1.betas0",   "param_groups.1.betas1",   "param_groups.1.eps",
      "param_groups.1.weight_decay", "param_groups.1.amsgrad", "param_groups.1.maximize",
      "param_groups.1.params",   "state.0.step",            "state.0.exp_avg",
      "state.0.exp_avg_sq",      "state.2.step",            "state.2.exp_avg",
      "state.2.exp_avg_sq",      "state.2.max_exp_avg_sq"};
  EXPECT_EQ(keys, want);
  const Tensor& lr1 = *find_key(sd, "param_groups.1.lr");
  EXPECT_EQ(lr1.dim(), 0);
  EXPECT_EQ(lr1.dtype(), kFloat64);
  EXPECT_EQ(lr1.item<double>(), 0.5);
  EXPECT_EQ(find_key(sd, "param_groups.1.betas0")->item<double>(), 0.8);
  EXPECT_EQ(find_key(sd, "param_groups.1.amsgrad")->item<double>(), 1.0);
  const Tensor& ids0 = *find_key(sd, "param_groups.0.params");
  EXPECT_EQ(ids0.dtype(), kInt64);
  EXPECT_EQ(ids0.to_vector<int64_t>(), (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(find_key(sd, "param_groups.1.params")->to_vector<int64_t>(), (std::vector<int64_t>{2}));
  const Tensor& step = *find_key(sd, "state.2.step");
  EXPECT_EQ(step.dim(), 0);
  EXPECT_EQ(step.dtype(), kFloat64);
  EXPECT_EQ(step.item<double>(), 2.0);
  EXPECT_EQ(find_key(sd, "state.0.exp_avg")->sizes(), (std::vector<int64_t>{2}));
}

// Steps `opt_a` 3 times, loads its state into `opt_b` (over copies of the
// same parameters), then steps both 3 more times: every value must be equal.
void check_round_trip(const std::function<std::unique_ptr<optim::Optimizer>(std::vector<Tensor>)>& make) {
  std::vector<Tensor> pa = fresh_params();
  auto opt_a = make(pa);
  for (int k = 0; k < 3; ++k) {
    set_grads(pa, k);
    opt_a->step();
  }
  std::vector<Tensor> pb = {pa[0].detach().clone().requires_grad_(true), pa[1].detach().clone().requires_grad_(true)};
  auto opt_b = make(pb);
  // opt_b's own hyperparameters differ until the load restores them.
  opt_b->param_groups()[0].options().set_lr(123.0);
  // state_dict() hands out opt_a's own state tensors; the load must copy
  // them, or the steps below would update one buffer twice.
  opt_b->load_state_dict(opt_a->state_dict());
  EXPECT_EQ(opt_b->param_groups()[0].options().get_lr(), opt_a->param_groups()[0].options().get_lr());
  for (auto& [name, t] : opt_a->state_of(pa[0])->entries())
    EXPECT_NE(t.raw_data_ptr(), opt_b->state_of(pb[0])->at(name).raw_data_ptr()) << name;
  for (int k = 3; k < 6; ++k) {
    set_grads(pa, k);
    set_grads(pb, k);
    opt_a->step();
    opt_b->step();
    for (size_t j = 0; j < 2; ++j) EXPECT_TRUE(equal(pa[j].detach(), pb[j].detach())) << "step " << k << " param " << j;
  }
}

TEST(OptimizerStateDict, RoundTripGivesIdenticalSteps) {
  {
    SCOPED_TRACE("SGD");
    check_round_trip([](auto ps) {
      return std::make_unique<optim::SGD>(ps, optim::SGDOptions(0.05).momentum(0.8).nesterov(true).weight_decay(0.1));
    });
  }
  {
    SCOPED_TRACE("Adam");
    check_round_trip([](auto ps) {
      return std::make_unique<optim::Adam>(ps, optim::AdamOptions(0.02).weight_decay(0.1).amsgrad(true));
    });
  }
  {
    SCOPED_TRACE("AdamW");
    check_round_trip([](auto ps) { return std::make_unique<optim::AdamW>(ps, optim::AdamWOptions(0.02)); });
  }
  {
    SCOPED_TRACE("RMSprop");
    check_round_trip([](auto ps) {
      return std::make_unique<optim::RMSprop>(ps, optim::RMSpropOptions(0.01).momentum(0.7).centered(true));
    });
  }
  {
    SCOPED_TRACE("Adagrad");
    check_round_trip([](auto ps) {
      return std::make_unique<optim::Adagrad>(ps, optim::AdagradOptions(0.1).lr_decay(0.05));
    });
  }
}

TEST(OptimizerStateDict, LoadCastsStateToTheParameterDtype) {
  // A float64 checkpoint resumes a float32 run: the state follows the parameter.
  Tensor p64 = make_param({1.0, 2.0}, {2});
  optim::Adam a({p64}, optim::AdamOptions(0.1));
  p64.set_grad(make_tensor({1.0, -1.0}));
  a.step();
  Tensor p32 = p64.detach().to(kFloat32).requires_grad_(true);
  optim::Adam b({p32}, optim::AdamOptions(0.1));
  b.load_state_dict(a.state_dict());
  EXPECT_EQ(b.state_of(p32)->at("exp_avg").dtype(), kFloat32);
  EXPECT_EQ(b.state_of(p32)->at("step").dtype(), kFloat64);
}

TEST(OptimizerStateDict, LoadErrors) {
  auto make = [](std::vector<Tensor> ps) { return optim::Adam(ps, optim::AdamOptions(0.1)); };
  std::vector<Tensor> ps = fresh_params();
  optim::Adam a = make(ps);
  set_grads(ps, 0);
  a.step();
  const nn::StateDict good = a.state_dict();

  // Different shapes: the error names the key and both shapes.
  {
    optim::Adam b = make({make_param(kP0a, {3, 2}), make_param(kP0b, {4})});
    EXPECT_ERROR_HAS(b.load_state_dict(good), "\"state.0.exp_avg\" has shape [2, 3] but parameter 0 has shape [3, 2]");
  }
  // A different number of parameters in the group.
  {
    optim::Adam b = make({make_param(kP0a, {2, 3})});
    EXPECT_ERROR_HAS(b.load_state_dict(good), "doesn't match the size of optimizer's group");
  }
  // A different number of groups.
  {
    std::vector<optim::ParamGroup> groups;
    groups.emplace_back(std::vector<Tensor>{make_param(kP0a, {2, 3})});
    groups.emplace_back(std::vector<Tensor>{make_param(kP0b, {4})});
    optim::Adam b(std::move(groups), optim::AdamOptions(0.1));
    EXPECT_ERROR_HAS(b.load_state_dict(good), "different number of parameter groups");
  }
  // Missing, unexpected and malformed keys; nothing changes on failure.
  std::vector<Tensor> qs = fresh_params();
  optim::Adam b = make(qs);
  auto without = [&](const std::string& key) {
    nn::StateDict sd;
    for (auto& kv : good)
      if (kv.first != key) sd.push_back(kv);
    return sd;
  };
  auto with = [&](const std::string& key, Tensor t) {
    nn::StateDict sd = good;
    for (auto& kv : sd)
      if (kv.first == key) kv.second = t;
    if (!find_key(sd, key)) sd.emplace_back(key, t);
    return sd;
  };
  EXPECT_ERROR_HAS(b.load_state_dict(without("param_groups.0.eps")), "missing key \"param_groups.0.eps\"");
  EXPECT_ERROR_HAS(b.load_state_dict(without("state.1.exp_avg_sq")), "parameter 1");
  EXPECT_ERROR_HAS(b.load_state_dict(with("param_groups.0.momentum", scalar_tensor(0.9, kFloat64))),
                   "unexpected key \"param_groups.0.momentum\"");
  EXPECT_ERROR_HAS(b.load_state_dict(with("model.weight", zeros({1}))), "unexpected key \"model.weight\"");
  EXPECT_ERROR_HAS(b.load_state_dict(with("state.7.exp_avg", zeros({4}))), "which no parameter group lists");
  EXPECT_ERROR_HAS(b.load_state_dict(with("param_groups.0.lr", zeros({2}, kFloat64))),
                   "\"param_groups.0.lr\" should hold one number, got shape [2]");
  EXPECT_ERROR_HAS(b.load_state_dict(with("param_groups.0.lr", scalar_tensor(-1.0, kFloat64))),
                   "Invalid learning rate: -1");
  EXPECT_ERROR_HAS(b.load_state_dict(with("param_groups.0.params", make_tensor({0, 1}))),
                   "should be a 1-D integer tensor");
  EXPECT_EQ(b.state_of(qs[0]), nullptr);
  EXPECT_EQ(b.param_groups()[0].options().get_lr(), 0.1);
}

// ---- schedulers ----

// PyTorch 1.13's lr (group 0, and group 1 where given) before each of the
// steps, from torch.optim.lr_scheduler over SGD(momentum=0.9) with group
// lrs 0.1 and 0.2 (one group unless a second list is given).
const V kTorchStepLR = {0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025, 0.0125,
                        0.0125, 0.0125, 0.00625, 0.00625, 0.00625, 0.003125, 0.003125, 0.003125, 0.0015625,
                        0.0015625};
const V kTorchMultiStepLR = {
    0.1, 0.1, 0.03, 0.03, 0.03, 0.0026999999999999997, 0.0026999999999999997, 0.0026999999999999997,
    0.0026999999999999997, 0.0026999999999999997, 0.0026999999999999997, 0.0008099999999999998,
    0.0008099999999999998, 0.0008099999999999998, 0.0008099999999999998, 0.0008099999999999998,
    0.0008099999999999998, 0.0008099999999999998, 0.0008099999999999998, 0.0008099999999999998};
const V kTorchExponentialLR = {
    0.1, 0.09000000000000001, 0.08100000000000002, 0.07290000000000002, 0.06561000000000002,
    0.05904900000000002, 0.05314410000000002, 0.04782969000000002, 0.043046721000000024, 0.03874204890000002,
    0.03486784401000002, 0.03138105960900001, 0.028242953648100012, 0.025418658283290013, 0.022876792454961013,
    0.020589113209464913, 0.01853020188851842, 0.01667718169966658, 0.015009463529699923, 0.013508517176729932};
const V kTorchCosine0 = {
    0.1, 0.09554359905560886, 0.08305704108364301, 0.06501344202803415, 0.04498655797196586,
    0.026942958916356993, 0.014456400944391143, 0.01, 0.01445640094439114, 0.026942958916356986,
    0.04498655797196585, 0.06501344202803411, 0.083057041083643, 0.09554359905560887, 0.1,
    0.09554359905560889, 0.08305704108364304, 0.06501344202803414, 0.04498655797196587, 0.026942958916357007,
    0.01445640094439115, 0.01, 0.01445640094439114, 0.026942958916357132};
const V kTorchCosine1 = {
    0.2, 0.19059204245072983, 0.1642315311765797, 0.12613948872584987, 0.08386051127415015,
    0.045768468823420325, 0.019407957549270192, 0.01, 0.01940795754927018, 0.0457684688234203,
    0.0838605112741501, 0.12613948872584976, 0.16423153117657965, 0.19059204245072983, 0.19999999999999998,
    0.19059204245072983, 0.1642315311765797, 0.12613948872584982, 0.08386051127415016, 0.045768468823420345,
    0.019407957549270202, 0.01, 0.01940795754927018, 0.04576846882342061};
const V kTorchLinearLR = {0.025, 0.037500000000000006, 0.05, 0.0625, 0.075, 0.08750000000000001, 0.1,
                          0.1,   0.1,                  0.1,  0.1,    0.1,   0.1,                 0.1,
                          0.1,   0.1,                  0.1,  0.1,    0.1,   0.1};
const V kTorchOneCycleCos = {
    0.040000000000000036, 0.1316718427000253, 0.3716718427000253, 0.6683281572999747, 0.9083281572999747, 1.0,
    0.9874640062350873, 0.9504846320134737, 0.89091617757105, 0.8117456539497631, 0.7169430017913008,
    0.6112620219362893, 0.500002, 0.38874197806371075, 0.28306099820869923, 0.18825834605023697,
    0.10908782242895004, 0.049519367986526286, 0.012539993764912554, 4e-06, 0.012539993764912554};
const V kTorchOneCycleCosMomentum = {
    0.95, 0.9404508497187474, 0.9154508497187474, 0.8845491502812526, 0.8595491502812526, 0.85,
    0.8512536043909088, 0.854951556604879, 0.8609084258765984, 0.8688255099070633, 0.878305813044122,
    0.8888739533021842, 0.8999999999999999, 0.9111260466978157, 0.9216941869558779, 0.9311744900929366,
    0.9390915741234015, 0.945048443395121, 0.9487463956090911, 0.95, 0.9487463956090911};
const V kTorchOneCycleLinear0 = {
    0.1, 0.325, 0.55, 0.775, 1.0, 0.9334, 0.8668, 0.8002, 0.7336, 0.667, 0.6004, 0.5338, 0.46720000000000006,
    0.40060000000000007, 0.3340000000000001, 0.2674000000000001, 0.20079999999999998, 0.13419999999999999,
    0.0676, 0.0010000000000000009, -0.06559999999999988};
const V kTorchOneCycleLinear1 = {
    0.2, 0.65, 1.1, 1.55, 2.0, 1.8668, 1.7336, 1.6004, 1.4672, 1.334, 1.2008, 1.0676, 0.9344000000000001,
    0.8012000000000001, 0.6680000000000001, 0.5348000000000002, 0.40159999999999996, 0.26839999999999997,
    0.1352, 0.0020000000000000018, -0.13119999999999976};
const V kTorchOneCycleLinearBeta1 = {
    0.95, 0.9249999999999999, 0.8999999999999999, 0.875, 0.85, 0.8566666666666667, 0.8633333333333333, 0.87,
    0.8766666666666666, 0.8833333333333333, 0.89, 0.8966666666666666, 0.9033333333333333, 0.9099999999999999,
    0.9166666666666666, 0.9233333333333333, 0.9299999999999999, 0.9366666666666666, 0.9433333333333332, 0.95,
    0.9566666666666667};
const V kTorchOneCycle3 = {
    0.020000000000000018, 0.08707481753581114, 0.2508073439143915, 0.41967816803973573, 0.4992957922840977,
    0.44515740315726626, 0.28752402209561606, 0.11450590136800678, 0.022812698292716326, 0.019485415883029506,
    0.01748535897096284, 0.014287496921469139, 0.010403619135154042, 0.0064553057344616865, 0.003074449189257516,
    0.0008021255428554166, 2e-06, 0.0008021255428554166};
const V kTorchOneCycle3Momentum = {
    0.95, 0.9360260796800393, 0.9019151366845017, 0.8667337149917217, 0.850146709940813, 0.8614255410089029,
    0.89426582873008, 0.9303112705483318, 0.9494140211890174, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95,
    0.95};
const V kTorchSequential0 = {
    0.010000000000000002, 0.03250000000000001, 0.055000000000000014, 0.07750000000000003, 0.1,
    0.0962320368593087, 0.0855017856687341, 0.06944282990207196, 0.0505, 0.03155717009792806,
    0.0154982143312659, 0.004767963140691306, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.0125, 0.0125};
const V kTorchSequential1 = {
    0.020000000000000004, 0.06500000000000002, 0.11000000000000003, 0.15500000000000005, 0.2,
    0.19242601348487304, 0.17085712472806147, 0.13857700152032645, 0.1005, 0.06242299847967358,
    0.03014287527193853, 0.008573986515126971, 0.2, 0.2, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025};

// An SGD (momentum 0.9) or Adam optimizer with `groups` groups of one
// parameter each, group g at lr 0.1 * (g + 1).
struct SchedFixture {
  std::vector<Tensor> ps;
  std::unique_ptr<optim::Optimizer> opt;
  explicit SchedFixture(int groups = 1, bool adam = false) {
    std::vector<optim::ParamGroup> gs;
    for (int g = 0; g < groups; ++g) {
      ps.push_back(make_param({0.0, 0.0}, {2}));
      if (adam) gs.emplace_back(std::vector<Tensor>{ps.back()}, optim::AdamOptions(0.1 * (g + 1)));
      else gs.emplace_back(std::vector<Tensor>{ps.back()}, optim::SGDOptions(0.1 * (g + 1)).momentum(0.9));
    }
    if (adam) opt = std::make_unique<optim::Adam>(std::move(gs), optim::AdamOptions(0.1));
    else opt = std::make_unique<optim::SGD>(std::move(gs), optim::SGDOptions(0.1).momentum(0.9));
  }
  double lr(size_t g = 0) const { return opt->param_groups()[g].options().get_lr(); }
};

// Records the group lrs before each of n steps (the optimizer's view and
// get_last_lr must agree), stepping the scheduler in between.
std::vector<V> run_schedule(SchedFixture& f, optim::LRScheduler& s, size_t n, V* momentum = nullptr,
                            const std::string& momentum_name = "") {
  std::vector<V> lrs(f.opt->param_groups().size());
  for (size_t i = 0; i < n; ++i) {
    for (size_t g = 0; g < lrs.size(); ++g) {
      lrs[g].push_back(f.lr(g));
      EXPECT_EQ(s.get_last_lr()[g], f.lr(g)) << "step " << i;
    }
    if (momentum) momentum->push_back(f.opt->param_groups()[0].options().hyperparameter(momentum_name));
    if (i + 1 < n) {
      f.opt->step();
      s.step();
    }
  }
  return lrs;
}

// Exactly PyTorch's doubles: the schedules repeat its arithmetic.
void expect_same(const V& got, const V& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i], want[i]) << what << " at step " << i;
}

TEST(LRScheduler, StepLR) {
  SchedFixture f;
  optim::StepLR s(*f.opt, 3, 0.5);
  auto lrs = run_schedule(f, s, 20);
  expect_same(lrs[0], kTorchStepLR, "StepLR");
  for (size_t e = 0; e < 20; ++e) EXPECT_NEAR(lrs[0][e], 0.1 * std::pow(0.5, e / 3), 1e-17);
  EXPECT_EQ(s.last_epoch(), 19);
}

TEST(LRScheduler, MultiStepLR) {
  SchedFixture f;
  optim::MultiStepLR s(*f.opt, {2, 5, 5, 11}, 0.3);  // 5 twice: decays twice there
  auto lrs = run_schedule(f, s, 20);
  expect_same(lrs[0], kTorchMultiStepLR, "MultiStepLR");
}

TEST(LRScheduler, ExponentialLR) {
  SchedFixture f;
  optim::ExponentialLR s(*f.opt, 0.9);
  auto lrs = run_schedule(f, s, 20);
  expect_same(lrs[0], kTorchExponentialLR, "ExponentialLR");
  for (size_t e = 0; e < 20; ++e) EXPECT_NEAR(lrs[0][e], 0.1 * std::pow(0.9, e), 1e-15);
}

TEST(LRScheduler, CosineAnnealingLR) {
  SchedFixture f(2);
  optim::CosineAnnealingLR s(*f.opt, 7, 0.01);
  auto lrs = run_schedule(f, s, 24);  // past T_max: back up and down again
  expect_same(lrs[0], kTorchCosine0, "CosineAnnealingLR group 0");
  expect_same(lrs[1], kTorchCosine1, "CosineAnnealingLR group 1");
  const double pi = std::acos(-1.0);
  for (size_t e = 0; e < 24; ++e) {
    const double closed = 0.01 + (0.2 - 0.01) * (1 + std::cos(pi * e / 7)) / 2;
    EXPECT_NEAR(lrs[1][e], closed, 1e-15) << e;
  }
}

TEST(LRScheduler, LinearLR) {
  SchedFixture f;
  optim::LinearLR s(*f.opt, 0.25, 1.0, 6);
  auto lrs = run_schedule(f, s, 20);
  expect_same(lrs[0], kTorchLinearLR, "LinearLR");
  for (size_t e = 0; e < 20; ++e)
    EXPECT_NEAR(lrs[0][e], 0.1 * (0.25 + 0.75 * std::min<double>(e, 6) / 6), 1e-16);
}

TEST(LRScheduler, OneCycleCosineCyclesMomentum) {
  SchedFixture f;
  optim::OneCycleLR s(*f.opt, 1.0, 20);
  V momentum;
  auto lrs = run_schedule(f, s, 21, &momentum, "momentum");
  expect_same(lrs[0], kTorchOneCycleCos, "OneCycleLR lr");
  expect_same(momentum, kTorchOneCycleCosMomentum, "OneCycleLR momentum");
  // Stepping past total_steps is an error, as in PyTorch.
  f.opt->step();
  EXPECT_ERROR_HAS(s.step(), "OneCycleLR: Tried to step 22 times. The specified number of total steps is 20");
}

TEST(LRScheduler, OneCycleLinearPerGroupCyclesBeta1) {
  SchedFixture f(2, /*adam=*/true);
  optim::OneCycleLR s(*f.opt, V{1.0, 2.0}, 20,
                      optim::OneCycleLROptions().pct_start(0.25).anneal_strategy("linear").div_factor(10).final_div_factor(100));
  V beta1;
  auto lrs = run_schedule(f, s, 21, &beta1, "betas0");
  expect_same(lrs[0], kTorchOneCycleLinear0, "OneCycleLR group 0");
  expect_same(lrs[1], kTorchOneCycleLinear1, "OneCycleLR group 1");
  expect_same(beta1, kTorchOneCycleLinearBeta1, "OneCycleLR beta1");
}

TEST(LRScheduler, OneCycleThreePhase) {
  SchedFixture f;
  optim::OneCycleLR s(*f.opt, 0.5, 17, optim::OneCycleLROptions().three_phase(true));
  V momentum;
  auto lrs = run_schedule(f, s, 18, &momentum, "momentum");
  expect_same(lrs[0], kTorchOneCycle3, "OneCycleLR three-phase lr");
  expect_same(momentum, kTorchOneCycle3Momentum, "OneCycleLR three-phase momentum");
}

TEST(LRScheduler, OneCycleFormulas) {
  // The two-phase cosine schedule from PyTorch's formulas, written out.
  SchedFixture f;
  const double max_lr = 0.8, total = 50, pct = 0.3;
  optim::OneCycleLR s(*f.opt, max_lr, 50, optim::OneCycleLROptions().cycle_momentum(false));
  const double initial = max_lr / 25, min_lr = initial / 1e4, up_end = pct * total - 1;
  const double pi = std::acos(-1.0);
  auto cos_anneal = [&](double a, double b, double t) { return b + (a - b) / 2 * (std::cos(pi * t) + 1); };
  auto lrs = run_schedule(f, s, 51);
  for (int i = 0; i <= 50; ++i) {
    const double want = i <= up_end ? cos_anneal(initial, max_lr, i / up_end)
                                    : cos_anneal(max_lr, min_lr, (i - up_end) / (total - 1 - up_end));
    EXPECT_NEAR(lrs[0][i], want, 1e-15) << i;
  }
  EXPECT_EQ(f.opt->param_groups()[0].options_as<optim::SGDOptions>().momentum(), 0.9);  // not cycled
}

TEST(LRScheduler, SequentialWarmupCosineStep) {
  SchedFixture f(2);
  auto warmup = std::make_shared<optim::LinearLR>(*f.opt, 0.1, 1.0, 4);
  auto cosine = std::make_shared<optim::CosineAnnealingLR>(*f.opt, 8, 0.001);
  auto step = std::make_shared<optim::StepLR>(*f.opt, 2, 0.5);
  optim::SequentialLR s(*f.opt, {warmup, cosine, step}, {4, 12});
  auto lrs = run_schedule(f, s, 20);
  expect_same(lrs[0], kTorchSequential0, "SequentialLR group 0");
  expect_same(lrs[1], kTorchSequential1, "SequentialLR group 1");
}

TEST(LRScheduler, Errors) {
  SchedFixture f;
  EXPECT_ERROR_HAS(optim::StepLR(*f.opt, 0), "StepLR: step_size must be a positive integer");
  EXPECT_ERROR_HAS(optim::CosineAnnealingLR(*f.opt, 0), "T_max must be a positive integer");
  EXPECT_ERROR_HAS(optim::LinearLR(*f.opt, 0.0), "Starting multiplicative factor");
  EXPECT_ERROR_HAS(optim::LinearLR(*f.opt, 0.5, 1.5), "Ending multiplicative factor");
  EXPECT_ERROR_HAS(optim::OneCycleLR(*f.opt, 1.0, 0), "Expected positive integer total_steps, but got 0");
  EXPECT_ERROR_HAS(optim::OneCycleLR(*f.opt, 1.0, 10, optim::OneCycleLROptions().pct_start(1.5)),
                   "Expected float between 0 and 1 pct_start");
  EXPECT_ERROR_HAS(optim::OneCycleLR(*f.opt, 1.0, 10, optim::OneCycleLROptions().anneal_strategy("exp")),
                   "anneal_strategy must be one of 'cos' or 'linear', instead got exp");
  EXPECT_ERROR_HAS(optim::OneCycleLR(*f.opt, V{1.0, 2.0}, 10), "expected 1 values for max_lr");
  Tensor p = make_param({1.0}, {1});
  optim::Adagrad adagrad({p});
  EXPECT_ERROR_HAS(optim::OneCycleLR(adagrad, 1.0, 10), "optimizer must support momentum");
  SchedFixture other;
  auto foreign = std::make_shared<optim::StepLR>(*other.opt, 2);
  auto mine = std::make_shared<optim::StepLR>(*f.opt, 2);
  EXPECT_ERROR_HAS(optim::SequentialLR(*f.opt, {mine, foreign}, {3}), "to belong to the same optimizer");
  EXPECT_ERROR_HAS(optim::SequentialLR(*f.opt, {mine}, {3}), "one more than the number of milestone points");
  // A group added after the scheduler was built.
  optim::StepLR s(*f.opt, 2);
  f.opt->add_param_group(optim::ParamGroup({make_param({1.0}, {1})}));
  EXPECT_ERROR_HAS(s.step(), "StepLR: the optimizer has 2 parameter groups but the scheduler was built for 1");
}

// Interrupt a schedule after `cut` steps, save optimizer and scheduler, build
// both afresh, load, finish: the lrs must equal an uninterrupted run's.
template <typename MakeSched>
void check_scheduler_resume(const MakeSched& make_sched, size_t total, size_t cut, int groups = 1) {
  SchedFixture full_f(groups);
  auto full = make_sched(*full_f.opt);
  std::vector<V> want = run_schedule(full_f, *full, total);

  SchedFixture a(groups);
  auto sa = make_sched(*a.opt);
  run_schedule(a, *sa, cut + 1);  // cut steps taken
  const nn::StateDict opt_sd = a.opt->state_dict();
  const nn::StateDict sched_sd = sa->state_dict();

  SchedFixture b(groups);
  auto sb = make_sched(*b.opt);
  b.opt->load_state_dict(opt_sd);
  sb->load_state_dict(sched_sd);
  EXPECT_EQ(sb->last_epoch(), static_cast<int64_t>(cut));
  std::vector<V> rest = run_schedule(b, *sb, total - cut);
  for (size_t g = 0; g < want.size(); ++g)
    for (size_t i = 0; i < rest[g].size(); ++i) EXPECT_EQ(rest[g][i], want[g][cut + i]) << "step " << cut + i;
  EXPECT_EQ(b.opt->param_groups()[0].options_as<optim::SGDOptions>().momentum(),
            full_f.opt->param_groups()[0].options_as<optim::SGDOptions>().momentum());
}

TEST(LRScheduler, StateDictResumes) {
  {
    SCOPED_TRACE("CosineAnnealingLR");
    check_scheduler_resume([](optim::Optimizer& o) { return std::make_unique<optim::CosineAnnealingLR>(o, 7, 0.01); },
                           24, 9, 2);
  }
  {
    SCOPED_TRACE("OneCycleLR");
    check_scheduler_resume([](optim::Optimizer& o) { return std::make_unique<optim::OneCycleLR>(o, 1.0, 20); }, 21,
                           7);
  }
  {
    SCOPED_TRACE("SequentialLR");
    check_scheduler_resume(
        [](optim::Optimizer& o) {
          auto warmup = std::make_shared<optim::LinearLR>(o, 0.1, 1.0, 4);
          auto cosine = std::make_shared<optim::CosineAnnealingLR>(o, 8, 0.001);
          auto step = std::make_shared<optim::StepLR>(o, 2, 0.5);
          return std::make_unique<optim::SequentialLR>(o, std::vector<std::shared_ptr<optim::LRScheduler>>{warmup, cosine, step},
                                                       std::vector<int64_t>{4, 12});
        },
        20, 6, 2);
  }
}

TEST(LRScheduler, StateDictFormatAndErrors) {
  SchedFixture f(2);
  optim::ExponentialLR s(*f.opt, 0.5);
  f.opt->step();
  s.step();
  nn::StateDict sd = s.state_dict();
  ASSERT_EQ(sd.size(), 4u);
  EXPECT_EQ(sd[0].first, "last_epoch");
  EXPECT_EQ(sd[0].second.dtype(), kInt64);
  EXPECT_EQ(sd[0].second.item<int64_t>(), 1);
  EXPECT_EQ(sd[2].first, "base_lrs");
  expect_near(vals(sd[2].second), {0.1, 0.2}, 0);
  EXPECT_EQ(sd[3].first, "last_lr");
  expect_near(vals(sd[3].second), {0.05, 0.1}, 1e-17);

  SchedFixture one(1);
  optim::ExponentialLR t(*one.opt, 0.5);
  EXPECT_ERROR_HAS(t.load_state_dict(sd), "\"base_lrs\" should be a 1-D float tensor of shape [1]");
  nn::StateDict partial(sd.begin(), sd.begin() + 2);
  EXPECT_ERROR_HAS(s.load_state_dict(partial), "missing key \"base_lrs\"");
  sd.emplace_back("gamma", scalar_tensor(0.5, kFloat64));
  EXPECT_ERROR_HAS(s.load_state_dict(sd), "unexpected key \"gamma\"");
}

// ---- gradient clipping ----

TEST(ClipGrad, NormScalesWhenAbove) {
  Tensor a = make_param({0, 0}, {2});
  Tensor b = make_param({0, 0, 0}, {3});
  Tensor c = make_param({0}, {1});  // no gradient: ignored
  a.set_grad(make_tensor({3.0, 0.0}));
  b.set_grad(make_tensor({0.0, 4.0, 12.0}));
  const double total = nn::utils::clip_grad_norm_({a, b, c}, 6.5);
  EXPECT_DOUBLE_EQ(total, 13.0);
  const double coef = 6.5 / (13.0 + 1e-6);
  expect_near(vals(a.grad()), {3.0 * coef, 0.0}, 1e-14);
  expect_near(vals(b.grad()), {0.0, 4.0 * coef, 12.0 * coef}, 1e-14);
  EXPECT_FALSE(c.grad().defined());
}

TEST(ClipGrad, NormLeavesSmallGradients) {
  Tensor a = make_param({0, 0}, {2});
  a.set_grad(make_tensor({0.3, -0.4}));
  EXPECT_DOUBLE_EQ(nn::utils::clip_grad_norm_(a, 1.0), 0.5);
  expect_near(vals(a.grad()), {0.3, -0.4}, 0);
  EXPECT_EQ(nn::utils::clip_grad_norm_(std::vector<Tensor>{make_param({1}, {1})}, 1.0), 0.0);  // no gradients
}

TEST(ClipGrad, OtherNorms) {
  Tensor a = make_param({0, 0}, {2});
  Tensor b = make_param({0}, {1});
  auto reset = [&] {
    a.set_grad(make_tensor({1.0, -5.0}));
    b.set_grad(make_tensor({2.0}));
  };
  reset();
  EXPECT_DOUBLE_EQ(nn::utils::clip_grad_norm_({a, b}, 1.0, INFINITY), 5.0);
  const double inf_coef = 1.0 / (5.0 + 1e-6);
  expect_near(vals(a.grad()), {inf_coef, -5.0 * inf_coef}, 1e-15);
  reset();
  EXPECT_DOUBLE_EQ(nn::utils::clip_grad_norm_({a, b}, 100.0, 1.0), 8.0);
  expect_near(vals(a.grad()), {1.0, -5.0}, 0);
  reset();
  EXPECT_NEAR(nn::utils::clip_grad_norm_({a, b}, 100.0, 3.0), std::cbrt(1.0 + 125.0 + 8.0), 1e-13);
}

TEST(ClipGrad, NonFinite) {
  Tensor a = make_param({0, 0}, {2});
  a.set_grad(make_tensor({1.0, INFINITY}));
  EXPECT_ERROR_HAS(nn::utils::clip_grad_norm_(a, 1.0, 2.0, true), "is non-finite, so it cannot be clipped");
  EXPECT_EQ(vals(a.grad()), (V{1.0, INFINITY}));  // untouched
  EXPECT_TRUE(std::isinf(nn::utils::clip_grad_norm_(a, 1.0)));
  EXPECT_ERROR_HAS(nn::utils::clip_grad_norm_(a, 1.0, -1.0), "norm_type must be positive or inf");
}

TEST(ClipGrad, Value) {
  Tensor a = make_param({0, 0, 0}, {3});
  Tensor b = make_param({0}, {1});
  a.set_grad(make_tensor({-3.0, 0.5, 2.0}));
  b.set_grad(make_tensor({-0.25}));
  Tensor g = a.grad();
  nn::utils::clip_grad_value_({a, b}, 1.0);
  EXPECT_TRUE(a.grad().is_same(g));  // in place
  expect_near(vals(a.grad()), {-1.0, 0.5, 1.0}, 0);
  expect_near(vals(b.grad()), {-0.25}, 0);
}

TEST(ClipGrad, WorksOnAModelsParameters) {
  // A float32 model: clip, then step.
  Tensor w = zeros({2, 2}, TensorOptions().requires_grad(true));
  Tensor x = ones({1, 2});
  (x.matmul(w) * 100.0).sum().backward();
  const double total = nn::utils::clip_grad_norm_({w}, 1.0);
  EXPECT_NEAR(total, 200.0, 1e-4);
  EXPECT_NEAR(w.grad().norm().item<double>(), 1.0, 1e-5);
  optim::SGD opt({w}, 0.5);
  opt.step();
  EXPECT_NEAR(w.sum().item<double>(), -0.5 * 2.0, 1e-5);  // each of 4 entries moves by 0.5 * 0.5
}


// ---- fused multi-tensor steps (Note [Fused optimizer steps]) ----
//
// The fused kernels must give bitwise the per-tensor path's numbers. Each
// case runs the same float32 problem through an optimizer forced onto the
// per-tensor path (fused(false)) and one forced onto the fused path
// (fused(true), which throws rather than fall back), and compares every
// parameter and state tensor bit for bit after every step. Parameters have
// odd sizes (1 .. 1000) and one gets NaN, inf and -0 gradients.
namespace fused {

const std::vector<std::vector<int64_t>> kShapes = {{1}, {3}, {7}, {17}, {33}, {257}, {1000}, {17, 33}};

std::vector<Tensor> make_params() {
  manual_seed(7);
  std::vector<Tensor> ps;
  for (const auto& s : kShapes) ps.push_back(randn(s).requires_grad_(true));
  return ps;
}

std::vector<Tensor> clone_params(const std::vector<Tensor>& ps) {
  std::vector<Tensor> out;
  for (const Tensor& p : ps) out.push_back(p.detach().clone().requires_grad_(true));
  return out;
}

// Step k's gradient of parameter j (identical for both runs).
Tensor grad_for(size_t j, int k, const std::vector<int64_t>& shape) {
  manual_seed(1000 + 31 * static_cast<uint64_t>(k) + j);
  Tensor g = randn(shape) * (1.0 + 0.5 * std::cos(0.9 * k));
  if (j == 1) {
    float* d = g.data_ptr<float>();
    d[0] = std::nanf("");
    d[1] = k % 2 ? INFINITY : -INFINITY;
    d[2] = -0.0f;
  }
  return g;
}

// Bit for bit, except that any NaN equals any NaN: IEEE 754 leaves the sign
// and payload of a NaN result unspecified, and the compiler may rewrite
// -g + x as x - g (exact for every number, but it keeps g's NaN sign).
bool same_bits(const Tensor& a, const Tensor& b) {
  if (a.sizes() != b.sizes() || a.dtype() != b.dtype()) return false;
  Tensor x = a.detach().contiguous(), y = b.detach().contiguous();
  if (a.dtype() != kFloat32) return std::memcmp(x.raw_data_ptr(), y.raw_data_ptr(), x.nbytes()) == 0;
  const float *px = x.data_ptr<float>(), *py = y.data_ptr<float>();
  for (int64_t i = 0; i < x.numel(); ++i) {
    if (std::isnan(px[i]) && std::isnan(py[i])) continue;
    if (std::memcmp(px + i, py + i, sizeof(float)) != 0) return false;
  }
  return true;
}

using MakeOpt = std::function<std::unique_ptr<optim::Optimizer>(std::vector<Tensor>, bool fused)>;

struct RunOptions {
  int steps = 5;
  bool scheduler = false;   // StepLR(step_size 2, gamma 0.5) on both
  bool skip_grads = false;  // parameter 3 has no gradient on steps 0 and 2
};

void expect_fused_matches(const MakeOpt& make, RunOptions r = {}) {
  std::vector<Tensor> pa = make_params(), pb = clone_params(pa);
  auto oa = make(pa, false), ob = make(pb, true);
  std::unique_ptr<optim::StepLR> sa, sb;
  if (r.scheduler) {
    sa = std::make_unique<optim::StepLR>(*oa, 2, 0.5);
    sb = std::make_unique<optim::StepLR>(*ob, 2, 0.5);
  }
  for (int k = 0; k < r.steps; ++k) {
    for (size_t j = 0; j < pa.size(); ++j) {
      const bool skip = r.skip_grads && j == 3 && (k == 0 || k == 2);
      Tensor g = skip ? Tensor() : grad_for(j, k, kShapes[j]);
      pa[j].set_grad(g.defined() ? g.clone() : Tensor());
      pb[j].set_grad(g);
    }
    oa->step();
    ob->step();
    if (sa) {
      sa->step();
      sb->step();
    }
    for (size_t j = 0; j < pa.size(); ++j) {
      EXPECT_TRUE(same_bits(pa[j], pb[j])) << "parameter " << j << " after step " << k;
      const optim::ParamState* s0 = oa->state_of(pa[j]);
      const optim::ParamState* s1 = ob->state_of(pb[j]);
      ASSERT_EQ(s0 == nullptr, s1 == nullptr) << "parameter " << j;
      if (!s0) continue;
      ASSERT_EQ(s0->entries().size(), s1->entries().size());
      for (const auto& [name, t] : s0->entries())
        EXPECT_TRUE(same_bits(t, s1->at(name))) << name << " of parameter " << j << " after step " << k;
    }
  }
}

}  // namespace fused

TEST(FusedOptim, AdamMatchesThePerTensorPath) {
  fused::expect_fused_matches([](std::vector<Tensor> ps, bool f) {
    return std::make_unique<optim::Adam>(ps, optim::AdamOptions(0.01).fused(f));
  });
}

TEST(FusedOptim, AdamAmsgradWeightDecayMaximizeAndScheduler) {
  fused::expect_fused_matches(
      [](std::vector<Tensor> ps, bool f) {
        return std::make_unique<optim::Adam>(
            ps, optim::AdamOptions(0.02).betas({0.8, 0.95}).eps(1e-6).weight_decay(0.1).amsgrad(true).maximize(true).fused(f));
      },
      {.steps = 6, .scheduler = true, .skip_grads = true});
}

TEST(FusedOptim, AdamWMatchesThePerTensorPath) {
  fused::expect_fused_matches(
      [](std::vector<Tensor> ps, bool f) {
        return std::make_unique<optim::AdamW>(ps, optim::AdamWOptions(0.01).weight_decay(0.05).fused(f));
      },
      {.steps = 6, .scheduler = true});
}

TEST(FusedOptim, AdamWAmsgradZeroBeta1) {
  fused::expect_fused_matches(
      [](std::vector<Tensor> ps, bool f) {
        return std::make_unique<optim::AdamW>(
            ps, optim::AdamWOptions(0.03).betas({0.0, 0.99}).weight_decay(0.5).amsgrad(true).fused(f));
      },
      {.steps = 5, .skip_grads = true});
}

TEST(FusedOptim, SgdPlainAndWithMomentum) {
  fused::expect_fused_matches([](std::vector<Tensor> ps, bool f) {
    return std::make_unique<optim::SGD>(ps, optim::SGDOptions(0.1).fused(f));
  });
  fused::expect_fused_matches(
      [](std::vector<Tensor> ps, bool f) {
        return std::make_unique<optim::SGD>(
            ps, optim::SGDOptions(0.05).momentum(0.9).dampening(0.1).weight_decay(0.01).fused(f));
      },
      {.steps = 6, .scheduler = true, .skip_grads = true});
}

TEST(FusedOptim, SgdNesterovMaximize) {
  fused::expect_fused_matches(
      [](std::vector<Tensor> ps, bool f) {
        return std::make_unique<optim::SGD>(
            ps, optim::SGDOptions(0.05).momentum(0.8).nesterov(true).weight_decay(0.1).maximize(true).fused(f));
      },
      {.steps = 5, .skip_grads = true});
}

TEST(FusedOptim, ParamGroupsWithTheirOwnOptions) {
  fused::expect_fused_matches([](std::vector<Tensor> ps, bool f) {
    std::vector<optim::ParamGroup> groups;
    groups.emplace_back(std::vector<Tensor>(ps.begin(), ps.begin() + 4));
    groups.emplace_back(std::vector<Tensor>(ps.begin() + 4, ps.end()),
                        optim::AdamWOptions(0.1).weight_decay(0.2).amsgrad(true).fused(f));
    return std::make_unique<optim::AdamW>(std::move(groups), optim::AdamWOptions(0.01).fused(f));
  });
}

TEST(FusedOptim, ResultsDoNotDependOnTheThreadCount) {
  // 3 * 40000 elements: several chunks, split over threads.
  auto run = [](int threads) {
    set_num_threads(threads);
    manual_seed(3);
    std::vector<Tensor> ps = {randn({40000}).requires_grad_(true), randn({200, 200}).requires_grad_(true),
                              randn({40000}).requires_grad_(true)};
    optim::Adam opt(ps, optim::AdamOptions(0.01).amsgrad(true).weight_decay(0.01).fused(true));
    for (int k = 0; k < 3; ++k) {
      for (Tensor& p : ps) p.set_grad(randn(p.sizes()));
      opt.step();
    }
    return ps;
  };
  const int saved = get_num_threads();
  std::vector<Tensor> one = run(1), many = run(std::max(2, saved));
  set_num_threads(saved);
  for (size_t j = 0; j < one.size(); ++j) EXPECT_TRUE(fused::same_bits(one[j], many[j])) << j;
}

TEST(FusedOptim, ResumeFromStateDictIsBitwise) {
  auto make = [](std::vector<Tensor> ps) {
    return std::make_unique<optim::Adam>(ps, optim::AdamOptions(0.01).amsgrad(true));
  };
  std::vector<Tensor> pa = fused::make_params();
  std::vector<Tensor> pb = fused::clone_params(pa);
  auto oa = make(pa);
  auto ob = make(pb);
  auto step = [](optim::Optimizer& o, std::vector<Tensor>& ps, int k) {
    for (size_t j = 0; j < ps.size(); ++j) ps[j].set_grad(fused::grad_for(j, k, fused::kShapes[j]));
    o.step();
  };
  for (int k = 0; k < 3; ++k) {
    step(*oa, pa, k);
    step(*ob, pb, k);
  }
  // b resumes into a fresh optimizer over copies of its parameters.
  std::vector<Tensor> pc = fused::clone_params(pb);
  auto oc = make(pc);
  oc->load_state_dict(ob->state_dict());
  for (int k = 3; k < 6; ++k) {
    step(*oa, pa, k);
    step(*oc, pc, k);
  }
  for (size_t j = 0; j < pa.size(); ++j) EXPECT_TRUE(fused::same_bits(pa[j], pc[j])) << j;
}

TEST(FusedOptim, FallsBackOrExplainsWhenATensorDoesNotQualify) {
  // A transposed (non-contiguous) parameter: the default quietly takes the
  // per-tensor path, fused(true) says why it cannot.
  Tensor base = randn({3, 5});
  Tensor p = base.t().detach().requires_grad_(true);
  Tensor q = p.detach().clone().requires_grad_(true);
  p.set_grad(ones({5, 3}));
  q.set_grad(ones({5, 3}));
  optim::Adam by_default({p}, optim::AdamOptions(0.1));
  by_default.step();
  optim::Adam per_tensor({q}, optim::AdamOptions(0.1).fused(false));
  per_tensor.step();
  EXPECT_TRUE(fused::same_bits(p, q));
  Tensor d = randn({4}, kFloat64).requires_grad_(true);
  d.set_grad(ones({4}, kFloat64));
  optim::SGD forced({d}, optim::SGDOptions(0.1).fused(true));
  EXPECT_ERROR_HAS(forced.step(), "SGD: fused=true needs contiguous float32 cpu");
}

TEST(FusedOptim, OpChecksItsInputsAndBumpsVersions) {
  NoGradGuard no_grad;
  Tensor p = zeros({4}), g = ones({4}), m = zeros({4}), v = zeros({4});
  Tensor step = scalar_tensor(1.0, kFloat64);
  EXPECT_ERROR_HAS(_fused_adam_({p}, {g, g}, {m}, {v}, {}, {step}, 0.1, 0.9, 0.999, 0, 1e-8, false, false),
                   "_fused_adam_: expected 1 tensors in grads");
  EXPECT_ERROR_HAS(_fused_adam_({p}, {ones({5})}, {m}, {v}, {}, {step}, 0.1, 0.9, 0.999, 0, 1e-8, false, false),
                   "grads[0] has shape [5] but params[0] has shape [4]");
  EXPECT_ERROR_HAS(_fused_sgd_({p.to(kFloat64)}, {g}, {}, 0, 0, 0.1, 0, false, false, false),
                   "params[0] has dtype float64");
  EXPECT_ERROR_HAS(_fused_adam_({p}, {g}, {p}, {v}, {}, {step}, 0.1, 0.9, 0.999, 0, 1e-8, false, false),
                   "must not share memory");
  const uint64_t before = p._version();
  _fused_adam_({p}, {g}, {m}, {v}, {}, {step}, 0.1, 0.9, 0.999, 0, 1e-8, false, false);
  EXPECT_GT(p._version(), before);
  // First Adam step with g = 1: each weight moves by lr.
  for (float x : p.to_vector<float>()) EXPECT_NEAR(x, -0.1f, 1e-6f);
  {
    AutoGradMode on(true);
    Tensor leaf = zeros({4}).requires_grad_(true);
    EXPECT_ERROR_HAS(_fused_sgd_({leaf}, {g}, {}, 0, 0, 0.1, 0, false, false, false), "call it under NoGradGuard");
  }
}

}  // namespace
