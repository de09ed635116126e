// Mixed precision: the bfloat16 / float16 GEMM against a float64 reference
// (Note [Low-precision GEMM]), autocast's op policy (Note [Autocast op
// policy]), and training with `loom train --amp`.
#include <gtest/gtest.h>
#include <loom/loom.h>

#include <cmath>
#include <filesystem>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "../tools/loom/lm.h"
#include "../tools/loom/train.h"
#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using namespace loom;
namespace F = loom::nn::functional;
using loom::test::error_of;
using loom::test::TempDir;

// ---- the GEMM ----

// The unit roundoff of a storage format: the bound of one rounding to it.
double unit_roundoff(DType t) { return t == kBFloat16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -11); }

// Random values of `dtype` (exactly representable in it), as float64 too.
Tensor random_lowp(std::vector<int64_t> shape, DType dtype) { return randn(shape).to(dtype); }

// |got - ref| <= u |ref| + (k + 2) 2^-24 sum_p |a_ip b_pj| elementwise:
// one rounding to the format after a float32 chain of k products of exact
// inputs. `absprod` is sum_p |a_ip||b_pj| in float64. Each of
// `earlier_roundings` (roundings to the format before the last one) adds
// u * absprod.
void expect_within_bound(const Tensor& got, const Tensor& ref, const Tensor& absprod, DType dtype, int64_t k,
                         int earlier_roundings = 0) {
  ASSERT_EQ(got.dtype(), dtype);
  ASSERT_EQ(got.sizes(), ref.sizes());
  const Tensor g = got.to(kFloat64).contiguous(), r = ref.contiguous(), s = absprod.contiguous();
  const double* pg = g.data_ptr<double>();
  const double* pr = r.data_ptr<double>();
  const double* ps = s.data_ptr<double>();
  const double u = unit_roundoff(dtype), e32 = std::ldexp(1.0, -24);
  int bad = 0;
  for (int64_t i = 0; i < g.numel(); ++i) {
    // The float32 result, then its rounding to the format.
    const double bound = u * (std::abs(pr[i]) + (static_cast<double>(k) + 2) * e32 * ps[i]) +
                         (static_cast<double>(k) + 2) * e32 * ps[i] + earlier_roundings * u * ps[i];
    if (std::abs(pg[i] - pr[i]) > bound && ++bad <= 5)
      ADD_FAILURE() << "element " << i << ": got " << pg[i] << ", reference " << pr[i] << ", bound " << bound;
  }
  EXPECT_EQ(bad, 0);
}

class LowpGemm : public ::testing::TestWithParam<DType> {};

TEST_P(LowpGemm, MatmulOnOddSizesAndStridesIsWithinTheFormatsBound) {
  const DType dt = GetParam();
  manual_seed(3);
  struct Case {
    int64_t batch, m, k, n;
  };
  for (const Case c : {Case{1, 1, 1, 1}, Case{1, 7, 13, 5}, Case{3, 33, 65, 17}, Case{2, 130, 257, 70},
                       Case{1, 1, 300, 129}}) {
    SCOPED_TRACE(std::to_string(c.batch) + "x" + std::to_string(c.m) + "x" + std::to_string(c.k) + "x" +
                 std::to_string(c.n));
    const Tensor a = random_lowp({c.batch, c.m, c.k}, dt);
    // b transposed in memory, and a row-strided view of a.
    const Tensor b = random_lowp({c.batch, c.n, c.k}, dt).transpose(1, 2);
    const Tensor a_wide = random_lowp({c.batch, c.m, 2 * c.k}, dt);
    const Tensor a_strided = a_wide.narrow(2, 0, c.k);
    for (const Tensor& lhs : {a, a_strided}) {
      const Tensor got = matmul(lhs, b);
      const Tensor ref = matmul(lhs.to(kFloat64), b.to(kFloat64));
      const Tensor absprod = matmul(lhs.to(kFloat64).abs(), b.to(kFloat64).abs());
      expect_within_bound(got, ref, absprod, dt, c.k);
    }
    // A weight broadcast over the batch (stride 0).
    const Tensor w = random_lowp({c.k, c.n}, dt);
    expect_within_bound(matmul(a, w), matmul(a.to(kFloat64), w.to(kFloat64)),
                        matmul(a.to(kFloat64).abs(), w.to(kFloat64).abs()), dt, c.k);
  }
}

TEST_P(LowpGemm, LinearWithBiasAndActivationIsWithinTheFormatsBound) {
  const DType dt = GetParam();
  manual_seed(4);
  for (const auto act : {LinearActivation::None, LinearActivation::Relu, LinearActivation::Gelu}) {
    for (const int64_t m : {1, 5, 67}) {
      const int64_t k = 91, n = 37;
      SCOPED_TRACE("m " + std::to_string(m) + ", activation " + std::to_string(static_cast<int>(act)));
      const Tensor x = random_lowp({m, k}, dt), w = random_lowp({n, k}, dt), bias = random_lowp({n}, dt);
      const Tensor got = linear(x, w, bias, act);
      // The fused op gives the bits of the unfused ones (test_gemm): the
      // product, the bias and the activation each rounded to the format, so
      // two roundings come before the last. An activation moves an error by
      // at most 1.13 times (ReLU and GELU are 1.13-Lipschitz at most), so
      // the bound grows by that factor.
      const Tensor pre = linear(x.to(kFloat64), w.to(kFloat64), bias.to(kFloat64));
      Tensor ref = pre;
      if (act == LinearActivation::Relu) ref = relu(pre);
      if (act == LinearActivation::Gelu) ref = gelu(pre);
      const Tensor absprod = (matmul(x.to(kFloat64).abs(), w.to(kFloat64).abs().t()) + bias.to(kFloat64).abs()) * 1.13;
      expect_within_bound(got, ref, absprod, dt, k + 1, /*earlier_roundings=*/2);
    }
  }
}

TEST_P(LowpGemm, GradientsOfALowPrecisionMatmulFlowInItsDtype) {
  const DType dt = GetParam();
  manual_seed(5);
  const Tensor a = random_lowp({6, 9}, dt).requires_grad_(true), b = random_lowp({9, 4}, dt).requires_grad_(true);
  matmul(a, b).sum().backward();
  ASSERT_EQ(a.grad().dtype(), dt);
  const Tensor ga = ones({6, 4}, TensorOptions().dtype(kFloat64)).matmul(b.to(kFloat64).t());
  EXPECT_TRUE(allclose(a.grad().to(kFloat64), ga, 2 * unit_roundoff(dt), 1e-6));
}

INSTANTIATE_TEST_SUITE_P(Formats, LowpGemm, ::testing::Values(kBFloat16, kFloat16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

// ---- the op policy ----

TEST(Autocast, GuardSetsAndRestoresTheThreadsState) {
  EXPECT_FALSE(is_autocast_enabled());
  {
    AutocastGuard a(Device::cpu(), kBFloat16);
    EXPECT_TRUE(is_autocast_enabled());
    EXPECT_EQ(autocast_dtype(), kBFloat16);
    {
      AutocastGuard b(Device::cpu(), kFloat16);
      EXPECT_EQ(autocast_dtype(), kFloat16);
      {
        AutocastGuard off(Device::cpu(), kBFloat16, /*enabled=*/false);
        EXPECT_FALSE(is_autocast_enabled());
        EXPECT_EQ(matmul(ones({2, 2}), ones({2, 2})).dtype(), kFloat32);
      }
      EXPECT_TRUE(is_autocast_enabled());
    }
    EXPECT_EQ(autocast_dtype(), kBFloat16);
    EXPECT_FALSE(is_autocast_enabled(DeviceType::CUDA));
  }
  EXPECT_FALSE(is_autocast_enabled());
  EXPECT_NE(error_of([] { AutocastGuard g(Device::cpu(), kFloat64); }).find("must be bfloat16 or float16, got float64"), std::string::npos);
}

TEST(Autocast, LowPrecisionOpsRunInTheAutocastDtype) {
  manual_seed(6);
  const Tensor x = randn({4, 8}), w = randn({5, 8}), b = randn({5});
  const Tensor img = randn({2, 3, 6, 6}), filt = randn({4, 3, 3, 3}), seq = randn({2, 3, 10}), filt1 = randn({4, 3, 3});
  const Tensor q = randn({1, 2, 5, 4}), k = randn({1, 2, 5, 4}), v = randn({1, 2, 5, 4});
  for (const DType dt : {kBFloat16, kFloat16}) {
    SCOPED_TRACE(dtype_name(dt));
    AutocastGuard autocast(Device::cpu(), dt);
    EXPECT_EQ(matmul(x, w.t()).dtype(), dt);
    EXPECT_EQ(mm(x, w.t()).dtype(), dt);
    EXPECT_EQ(bmm(x.unsqueeze(0), w.t().unsqueeze(0)).dtype(), dt);
    EXPECT_EQ(linear(x, w, b).dtype(), dt);
    EXPECT_EQ(F::linear(x, w, b).dtype(), dt);
    EXPECT_EQ(conv2d(img, filt, Tensor(), {1, 1}, {1, 1}).dtype(), dt);
    EXPECT_EQ(conv1d(seq, filt1).dtype(), dt);
    EXPECT_EQ(conv_transpose2d(img, filt.transpose(0, 1).contiguous(), Tensor(), {1, 1}, {0, 0}).dtype(), dt);
    EXPECT_EQ(scaled_dot_product_attention(q, k, v, {}, 0.0, true).dtype(), dt);
    // The values are those of the op on the cast inputs.
    EXPECT_TRUE(equal(matmul(x, w.t()), matmul(x.to(dt), w.t().to(dt))));
    // float64 is never cast.
    EXPECT_EQ(matmul(x.to(kFloat64), w.t().to(kFloat64)).dtype(), kFloat64);
  }
}

TEST(Autocast, Float32OpsWidenLowPrecisionInputs) {
  manual_seed(7);
  const Tensor h = randn({4, 10}).to(kBFloat16);
  const Tensor target = randint(0, 10, {4});
  AutocastGuard autocast(Device::cpu(), kBFloat16);
  for (const Tensor& y : {softmax(h, 1), log_softmax(h, 1), logsumexp(h, {1}), sum(h, {1}), mean(h, {1}),
                          h.sum(), var(h, {1}), loom::std(h, {1}), norm(h, 2.0, {1}), cumsum(h, 1), exp(h), log(h.abs()),
                          pow(h, 2.0), rsqrt(h.abs()), softplus(h), layer_norm(h, {10}),
                          F::layer_norm(h, {10}, ones({10}), zeros({10})), F::rms_norm(h, {10}),
                          F::batch_norm(h, Tensor(), Tensor(), Tensor(), Tensor(), true, 0.1, 1e-5),
                          F::cross_entropy(h, target), F::nll_loss(log_softmax(h, 1), target),
                          F::mse_loss(h, h.detach() * 0.5), F::l1_loss(h, zeros({4, 10})),
                          F::binary_cross_entropy_with_logits(h, ones({4, 10}))})
    EXPECT_EQ(y.dtype(), kFloat32);
  // The values are those of the float32 op on the widened input.
  EXPECT_TRUE(equal(softmax(h, 1), softmax(h.to(kFloat32), 1)));
  // Ops outside the policy keep their dtype, and mixed operands promote.
  EXPECT_EQ(relu(h).dtype(), kBFloat16);
  EXPECT_EQ(gelu(h).dtype(), kBFloat16);
  EXPECT_EQ((h + h).dtype(), kBFloat16);
  EXPECT_EQ((h + ones({4, 10})).dtype(), kFloat32);
  // Integer inputs are not cast.
  EXPECT_EQ(sum(target, {0}).dtype(), kInt64);
}

TEST(Autocast, OnlyTheGuardsDeviceTypeAndThreadAreAffected) {
  const Tensor x = randn({3, 3});
  AutocastGuard autocast(Device::cuda(), kFloat16);  // no CPU autocast
  EXPECT_EQ(matmul(x, x).dtype(), kFloat32);
  AutocastGuard cpu(Device::cpu(), kBFloat16);
  Tensor other;
  std::thread t([&] { other = matmul(x, x); });
  t.join();
  EXPECT_EQ(other.dtype(), kFloat32);
  EXPECT_EQ(matmul(x, x).dtype(), kBFloat16);
}

// A small MLP: Linear, ReLU, LayerNorm, Linear, cross entropy.
struct Mlp {
  nn::Linear fc1{nullptr}, fc2{nullptr};
  nn::LayerNorm ln{nullptr};
  explicit Mlp(uint64_t seed) {
    manual_seed(seed);
    fc1 = nn::Linear(12, 32);
    ln = nn::LayerNorm(std::vector<int64_t>{32});
    fc2 = nn::Linear(32, 5);
  }
  Tensor loss(const Tensor& x, const Tensor& y) { return F::cross_entropy(fc2(ln(relu(fc1(x)))), y); }
  std::vector<Tensor> parameters() {
    std::vector<Tensor> p;
    for (auto* m : std::vector<nn::Module*>{fc1.get(), ln.get(), fc2.get()})
      for (const Tensor& t : m->parameters()) p.push_back(t);
    return p;
  }
};

TEST(Autocast, MasterWeightsStayFloat32AndGetFloat32GradientsCloseToFloat32s) {
  manual_seed(8);
  const Tensor x = randn({16, 12}), y = randint(0, 5, {16});
  Mlp exact(9), mixed(9);
  exact.loss(x, y).backward();
  Tensor loss;
  {
    AutocastGuard autocast(Device::cpu(), kBFloat16);
    loss = mixed.loss(x, y);
    EXPECT_EQ(loss.dtype(), kFloat32);
    loss.backward();  // inside the guard: backward runs with autocast off
  }
  const auto pe = exact.parameters(), pm = mixed.parameters();
  for (size_t i = 0; i < pe.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(pm[i].dtype(), kFloat32);
    ASSERT_TRUE(pm[i].grad().defined());
    EXPECT_EQ(pm[i].grad().dtype(), kFloat32);
    // bfloat16 keeps 8 bits: the gradients agree to a few percent of their scale.
    const double scale = pe[i].grad().abs().max().item<double>();
    EXPECT_LE((pm[i].grad() - pe[i].grad()).abs().max().item<double>(), 0.05 * scale + 1e-6);
  }
}

TEST(Autocast, BackwardOutsideTheGuardGivesTheSameGradients) {
  manual_seed(10);
  const Tensor x = randn({8, 12}), y = randint(0, 5, {8});
  Mlp inside(11), outside(11);
  {
    AutocastGuard autocast(Device::cpu(), kBFloat16);
    inside.loss(x, y).backward();
  }
  Tensor loss;
  {
    AutocastGuard autocast(Device::cpu(), kBFloat16);
    loss = outside.loss(x, y);
  }
  loss.backward();
  const auto a = inside.parameters(), b = outside.parameters();
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(equal(a[i].grad(), b[i].grad())) << i;
}

// A checkpointed region recomputes under the autocast state of its forward
// pass, so its gradients are those without checkpointing, bit for bit.
TEST(Autocast, CheckpointedGptRecomputesInTheForwardsPrecision) {
  models::GPTConfig cfg;
  cfg.n_layer = 2;
  cfg.n_embd = 32;
  cfg.n_head = 2;
  cfg.block_size = 16;
  cfg.vocab_size = 20;
  manual_seed(12);
  models::GPT plain(cfg);
  manual_seed(12);
  models::GPT checkpointed(cfg);
  checkpointed->set_checkpoint_activations(true);
  const Tensor idx = randint(0, 20, {3, 16}), targets = randint(0, 20, {3, 16});
  for (models::GPT* m : {&plain, &checkpointed}) {
    Tensor loss;
    {
      AutocastGuard autocast(Device::cpu(), kBFloat16);
      loss = (*m)->loss(idx, targets);
    }
    loss.backward();
  }
  const auto a = plain->named_parameters(), b = checkpointed->named_parameters();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_TRUE(b[i].second.grad().defined()) << a[i].first;
    EXPECT_TRUE(equal(a[i].second.grad(), b[i].second.grad())) << a[i].first;
  }
}

TEST(Autocast, CompiledStepReplaysTheAutocastStep) {
  Mlp eager(13), compiled_model(13);
  optim::SGD opt_e(eager.parameters(), optim::SGDOptions(0.1));
  optim::SGD opt_c(compiled_model.parameters(), optim::SGDOptions(0.1));
  auto step_of = [](Mlp& m, optim::SGD& opt) {
    return [&m, &opt](const Tensor& x, const Tensor& y) {
      Tensor loss;
      {
        AutocastGuard autocast(Device::cpu(), kBFloat16);
        loss = m.loss(x, y);
      }
      opt.zero_grad();
      loss.backward();
      opt.step();
      return loss;
    };
  };
  auto compiled = loom::compile(step_of(compiled_model, opt_c));
  auto eager_step = step_of(eager, opt_e);
  manual_seed(14);
  for (int i = 0; i < 4; ++i) {
    const Tensor x = randn({8, 12}), y = randint(0, 5, {8});
    EXPECT_TRUE(equal(eager_step(x, y), compiled(x, y))) << "step " << i;
  }
  const auto a = eager.parameters(), b = compiled_model.parameters();
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(equal(a[i], b[i])) << i;
}

// ---- training ----

// The bound: a GPT trained with bfloat16 autocast follows float32's
// validation-loss curve within 0.02 nats over 300 steps (same initial
// weights, same batches; `make gpt-parity`'s comparison).
TEST(AmpTraining, Bf16GptFollowsFloat32sLossCurveWithinTwoHundredthsOfANat) {
  if (!fs::exists(data::kFortunesDir)) GTEST_SKIP() << "no fortunes in " << data::kFortunesDir;
  TempDir dir;
  std::vector<cli::LmResult> runs;
  std::ostringstream log;
  for (const std::string amp : {"", "bf16"}) {
    cli::LmOptions o;
    o.layers = 2;
    o.d_model = 64;
    o.heads = 4;
    o.context = 64;
    o.batch_size = 16;
    o.max_steps = 300;
    o.eval_every = 100;
    o.eval_batches = 8;
    o.lr = 3e-3;
    o.amp = amp;
    o.out = dir.file("gpt" + amp + ".safetensors");
    runs.push_back(cli::train_lm(o, log));
  }
  ASSERT_EQ(runs[0].history.size(), 3u);
  ASSERT_EQ(runs[1].history.size(), 3u);
  EXPECT_NE(log.str().find("bfloat16 autocast"), std::string::npos) << log.str();
  for (size_t i = 0; i < 3; ++i) {
    const double fp32 = runs[0].history[i].val_loss, bf16 = runs[1].history[i].val_loss;
    EXPECT_LE(std::abs(bf16 - fp32), 0.02) << "step " << runs[0].history[i].step << ": float32 " << fp32
                                           << ", bf16 autocast " << bf16;
  }
  EXPECT_LT(runs[1].history.back().val_loss, 3.0) << log.str();  // it learned (uniform: ~4.6 nats)
}

TEST(AmpTraining, Fp16WithLossScalingTrainsEveryLanguageModel) {
  if (!fs::exists(data::kFortunesDir)) GTEST_SKIP() << "no fortunes in " << data::kFortunesDir;
  TempDir dir;
  for (const std::string kind : {"gpt", "lstm"}) {
    SCOPED_TRACE(kind);
    cli::LmOptions o;
    o.model = kind;
    o.layers = 1;
    o.d_model = 32;
    o.heads = 2;
    o.context = 32;
    o.batch_size = 8;
    o.max_steps = 60;
    o.eval_every = 30;
    o.eval_batches = 2;
    o.lr = 3e-3;
    o.amp = "fp16";
    o.out = dir.file(kind + ".safetensors");
    std::ostringstream log;
    const cli::LmResult r = cli::train_lm(o, log);
    ASSERT_EQ(r.history.size(), 2u);
    EXPECT_NE(log.str().find("float16 autocast, dynamic loss scale from 65536"), std::string::npos) << log.str();
    EXPECT_TRUE(std::isfinite(r.history.back().val_loss));
    EXPECT_LT(r.history.back().val_loss, r.history.front().val_loss + 0.05) << log.str();
  }
}

TEST(AmpTraining, ImageModelsTrainWithBf16AndFp16) {
  if (!fs::exists(fs::path(cli::kFashionMnistDir) / "train-images-idx3-ubyte.gz"))
    GTEST_SKIP() << "Fashion-MNIST is not in " << cli::kFashionMnistDir;
  TempDir dir;
  for (const std::string model : {"mlp", "cnn"}) {
    for (const std::string amp : {"bf16", "fp16"}) {
      SCOPED_TRACE(model + " " + amp);
      cli::TrainOptions o;
      o.model.name = model;
      o.epochs = 1;
      o.train_limit = 1024;
      o.test_limit = 500;
      o.lr = 2e-3;
      o.amp = amp;
      o.out = dir.file(model + amp + ".safetensors");
      std::ostringstream log;
      const cli::TrainResult r = cli::train(o, log, /*interactive=*/false);
      ASSERT_EQ(r.history.size(), 1u);
      EXPECT_GE(r.history.back().test_acc, 0.5) << log.str();  // chance: 0.1
      for (const Tensor& p : r.model->parameters()) EXPECT_EQ(p.dtype(), kFloat32);
    }
  }
}

TEST(AmpTraining, RefusesFp16WithACapturedStepOrZeroAndUnknownModes) {
  cli::LmOptions o;
  o.amp = "fp16";
  o.graph.compile = true;
  std::ostringstream log;
  EXPECT_NE(error_of([&] { cli::train_lm(o, log); }).find("--amp fp16 cannot be combined with --compile"),
            std::string::npos);
  o.graph.compile = false;
  o.amp = "fp8";
  EXPECT_NE(error_of([&] { cli::train_lm(o, log); }).find("--amp must be bf16, fp16 or off, got 'fp8'"),
            std::string::npos);
}

}  // namespace
