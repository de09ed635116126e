// Quantized inference above the kernels: nn::Linear::quantize and
// nn::quantize_dynamic, quantized models (CNN, GPT with its KV cache), and
// `loom quantize` with the commands that load its files (eval, predict,
// generate). The kernels themselves: test_quant_kernels.cpp.
#include <gtest/gtest.h>
#include <loom/loom.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <sstream>
#include <string>

#include "../tools/loom/checkpoint.h"
#include "../tools/loom/lm.h"
#include "../tools/loom/quantize.h"
#include "../tools/loom/train.h"
#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using namespace loom;
using loom::test::error_of;
using Shape = std::vector<int64_t>;

// The largest |a - b| over the largest |b|.
double relative_error(const Tensor& a, const Tensor& b) {
  const double den = b.abs().max().item<double>();
  return (a - b).abs().max().item<double>() / (den > 0 ? den : 1.0);
}

using TempDir = loom::test::TempDir;

TEST(QuantizedLinear, ForwardIsCloseToFloatAndEqualsTheOp) {
  manual_seed(1);
  for (QuantScheme scheme : {QuantScheme::Int8, QuantScheme::Int4}) {
    SCOPED_TRACE(quant_scheme_name(scheme));
    nn::Linear lin(200, 37);
    const Tensor w = lin->weight.detach().clone();
    const Tensor x = randn({5, 3, 200});
    Tensor y_float;
    {
      NoGradGuard ng;
      y_float = lin(x);
    }
    lin->quantize(scheme);
    EXPECT_EQ(lin->quantization(), scheme);
    EXPECT_EQ(lin->weight.dtype(), scheme == QuantScheme::Int8 ? kInt8 : kUInt8);
    EXPECT_FALSE(lin->weight.requires_grad());
    // No parameter but the bias is left; the codes and scales are buffers.
    EXPECT_EQ(lin->parameters().size(), 1u);
    NoGradGuard ng;
    const Tensor y = lin(x);
    EXPECT_EQ(y.sizes(), (Shape{5, 3, 37}));
    EXPECT_LT(relative_error(y, y_float), scheme == QuantScheme::Int8 ? 0.02 : 0.15);
    EXPECT_TRUE(y.equal(quantized_linear(x, lin->weight, lin->weight_scale, lin->bias, scheme)));
    // The codes stand for the weight: dequantized, each element within half a
    // step (int8: amax / 254), or one step for int4, whose -8..7 range clamps
    // an element opposite the group's largest (amax / 8).
    const Tensor back = dequantize_weight(lin->weight, lin->weight_scale, scheme, 200);
    EXPECT_LE(relative_error(back, w), scheme == QuantScheme::Int8 ? 1.0 / 254 + 1e-6 : 1.0 / 8 + 1e-6);
    EXPECT_NE(lin->extra_repr().find(std::string("quantization=") + quant_scheme_name(scheme)), std::string::npos);
    EXPECT_NE(error_of([&] { lin->quantize(scheme); }).find("already quantized"), std::string::npos);
  }
}

TEST(QuantizedLinear, StateDictRoundTripsIntoAFreshQuantizedLayer) {
  manual_seed(2);
  nn::Linear a(70, 9), b(70, 9);
  a->quantize(QuantScheme::Int4);
  b->quantize(QuantScheme::Int4);
  const StateDict sd = a->state_dict();
  ASSERT_EQ(sd.size(), 3u);
  std::map<std::string, Tensor> by_name(sd.begin(), sd.end());
  EXPECT_EQ(by_name.at("weight").sizes(), (Shape{9, 3 * 16}));  // ceil(70 / 32) = 3 groups of 16 bytes
  EXPECT_EQ(by_name.at("weight_scale").sizes(), (Shape{9, 3}));
  b->load_state_dict(sd);
  NoGradGuard ng;
  const Tensor x = randn({4, 70});
  EXPECT_TRUE(a(x).equal(b(x)));
  // A float checkpoint does not load into a quantized layer: the codes' shape or dtype differs.
  nn::Linear f(70, 9);
  EXPECT_FALSE(error_of([&] { b->load_state_dict(f->state_dict()); }).empty());
}

TEST(QuantizedLinear, IsInferenceOnlyAndFusesWithTheNextActivation) {
  manual_seed(3);
  nn::Linear lin(16, 8);
  lin->quantize(QuantScheme::Int8);
  const Tensor x = randn({2, 16}).requires_grad_();
  EXPECT_NE(error_of([&] { lin(x); }).find("inference-only"), std::string::npos);
  // A Sequential runs Linear + ReLU / GELU fused; quantized, it gives the two modules one after the other.
  nn::Sequential seq(nn::Linear(16, 8), nn::ReLU(), nn::Linear(8, 4), nn::GELU());
  EXPECT_EQ(nn::quantize_dynamic(*seq, QuantScheme::Int8), 2);
  EXPECT_EQ(nn::quantize_dynamic(*seq, QuantScheme::Int8), 0);  // already quantized
  NoGradGuard ng;
  const Tensor in = randn({3, 16});
  auto* l0 = dynamic_cast<nn::LinearImpl*>(seq->children()[0].get());
  auto* l2 = dynamic_cast<nn::LinearImpl*>(seq->children()[2].get());
  const Tensor step = gelu(l2->forward(relu(l0->forward(in))));
  EXPECT_TRUE(seq(in).equal(step));
}

TEST(QuantizedGpt, KVCacheGivesTheLogitsOfRecomputation) {
  manual_seed(4);
  models::GPTConfig cfg{.n_layer = 2, .n_embd = 64, .n_head = 4, .block_size = 32, .vocab_size = 40};
  models::GPT gpt(cfg);
  gpt->eval();
  const Tensor idx = randint(0, 40, {2, 12});
  Tensor full_float;
  {
    NoGradGuard ng;
    full_float = gpt(idx);
  }
  // c_attn, attn.c_proj, c_fc, mlp.c_proj per block; the tied head stays float.
  EXPECT_EQ(nn::quantize_dynamic(*gpt, QuantScheme::Int4), 8);
  NoGradGuard ng;
  const Tensor full = gpt(idx);
  EXPECT_LT(relative_error(full, full_float), 0.1);
  models::KVCache cache = gpt->make_cache(2);
  const Tensor first = gpt->forward(idx.narrow(1, 0, 7), cache);
  const Tensor rest = gpt->forward(idx.narrow(1, 7, 5), cache);
  EXPECT_LT((cat({first, rest}, 1) - full).abs().max().item<double>(), 1e-4);
}

// ---- `loom quantize` and the commands that read its files ----

bool have_fashion_mnist() {
  return fs::exists(fs::path(cli::kFashionMnistDir) / "train-images-idx3-ubyte.gz") &&
         fs::exists(fs::path(cli::kFashionMnistDir) / "t10k-labels-idx1-ubyte.gz");
}

// The bound: int8 CNN accuracy within 0.5 points of float32's, on
// the whole test set.
TEST(QuantizeCommand, Int8CnnKeepsItsAccuracyWithinHalfAPoint) {
  if (!have_fashion_mnist()) GTEST_SKIP() << "Fashion-MNIST is not in " << cli::kFashionMnistDir;
  TempDir dir;
  cli::TrainOptions o;
  o.model.name = "cnn";
  o.epochs = 1;
  o.lr = 2e-3;
  o.train_limit = 4000;
  o.test_limit = 500;
  o.out = dir.file("cnn.safetensors");
  std::ostringstream log;
  cli::train(o, log, /*interactive=*/false);

  const cli::QuantizeResult q = cli::quantize_checkpoint(o.out, QuantScheme::Int8, dir.file("cnn_int8.safetensors"));
  EXPECT_EQ(q.kind, "cnn");
  EXPECT_EQ(q.layers, 2);  // the two Linear layers of the head; convolutions stay float32
  EXPECT_LT(q.bytes_after, q.bytes_before);
  const auto f = io::load_safetensors(dir.file("cnn_int8.safetensors"));
  EXPECT_EQ(f.metadata.at(cli::kQuantizationKey), "int8");
  for (const auto& [name, t] : f.tensors) EXPECT_EQ(name.rfind("optimizer.", 0), std::string::npos) << name;

  std::ostringstream elog;
  const cli::EvalResult fp = cli::evaluate_checkpoint(o.out, cli::kFashionMnistDir, 1000, elog);
  const cli::EvalResult i8 = cli::evaluate_checkpoint(dir.file("cnn_int8.safetensors"), cli::kFashionMnistDir, 1000, elog);
  EXPECT_EQ(fp.count, 10000);
  EXPECT_GT(fp.accuracy, 0.6);
  EXPECT_LE(std::abs(i8.accuracy - fp.accuracy), 0.005) << "float32 " << fp.accuracy << ", int8 " << i8.accuracy;
  const cli::Prediction p = cli::predict_checkpoint(dir.file("cnn_int8.safetensors"), cli::kFashionMnistDir, 0);
  EXPECT_GT(p.probability, 0.0);
  // A quantized file is not quantized again.
  EXPECT_NE(error_of([&] {
              cli::quantize_checkpoint(dir.file("cnn_int8.safetensors"), QuantScheme::Int4, dir.file("x.safetensors"));
            }).find("already quantized"),
            std::string::npos);
}

// The bound: int4 GPT validation loss within 0.05 nats of float32's.
TEST(QuantizeCommand, Int4GptValidationLossWithinFiveHundredthsOfANat) {
  if (!fs::exists(data::kFortunesDir)) GTEST_SKIP() << "no fortunes in " << data::kFortunesDir;
  TempDir dir;
  cli::LmOptions o;
  o.layers = 2;
  o.d_model = 64;
  o.heads = 4;
  o.context = 64;
  o.batch_size = 16;
  o.max_steps = 300;
  o.eval_every = 300;
  o.eval_batches = 2;
  o.lr = 3e-3;
  o.out = dir.file("gpt.safetensors");
  std::ostringstream log;
  cli::train_lm(o, log);

  for (QuantScheme scheme : {QuantScheme::Int8, QuantScheme::Int4}) {
    SCOPED_TRACE(quant_scheme_name(scheme));
    const std::string qfile = dir.file(std::string("gpt_") + quant_scheme_name(scheme) + ".safetensors");
    const cli::QuantizeResult q = cli::quantize_checkpoint(o.out, scheme, qfile);
    EXPECT_EQ(q.layers, 8);
    const cli::LmEvalResult fp = cli::evaluate_lm_checkpoint(o.out, data::kFortunesDir, 32, 128);
    const cli::LmEvalResult qe = cli::evaluate_lm_checkpoint(qfile, data::kFortunesDir, 32, 128);
    EXPECT_LT(fp.loss, 3.0) << log.str();  // it learned something (uniform over ~100 characters: 4.6 nats)
    EXPECT_LE(std::abs(qe.loss - fp.loss), 0.05) << "float32 " << fp.loss << ", quantized " << qe.loss;
    // generate reads the file too; greedy, with and without the cache, gives one text.
    cli::GenerateRequest g;
    g.model_file = qfile;
    g.prompt = "The ";
    g.max_new_tokens = 30;
    g.temperature = 0;
    const auto a = cli::generate_text(g);
    g.use_cache = false;
    const auto b = cli::generate_text(g);
    EXPECT_EQ(a.new_tokens, 30);
    EXPECT_EQ(a.text, b.text);
  }
}

}  // namespace
