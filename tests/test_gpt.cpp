// models::GPT: nanoGPT's names and shapes, the forward against an
// independent loom-ops reference, the KV cache against recomputation (the
// logits of every step and the generated tokens), a float64 gradient check,
// a model that learns, and the config's JSON.
#include <gtest/gtest.h>
#include <loom/loom.h>

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

// The `loom train --model gpt|lstm` and `loom generate` code (loom_cli_lib), as test_train.cpp does.
#include "../tools/loom/lm.h"

namespace {

using loom::Tensor;
using loom::models::GPT;
using loom::models::GPTConfig;

GPTConfig small_config() {
  GPTConfig c;
  c.n_layer = 2;
  c.n_embd = 16;
  c.n_head = 2;
  c.block_size = 12;
  c.vocab_size = 11;
  return c;
}

Tensor random_ids(int64_t b, int64_t t, int64_t vocab, uint64_t seed) {
  loom::manual_seed(seed);
  return loom::randint(0, vocab, {b, t});
}

using Shape = std::vector<int64_t>;

// A state dict entry by name.
template <typename SD>
Tensor entry(const SD& sd, const std::string& name) {
  for (const auto& [n, t] : sd)
    if (n == name) return t;
  ADD_FAILURE() << "no entry " << name;
  return {};
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  return loom::max(loom::abs(a.to(loom::kFloat64) - b.to(loom::kFloat64))).item<double>();
}

TEST(GPT, NanoGPTNamesAndShapes) {
  loom::manual_seed(0);
  GPT gpt(small_config());
  std::vector<std::string> want = {"transformer.wte.weight", "transformer.wpe.weight"};
  for (int l = 0; l < 2; ++l)
    for (const char* p : {"ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
                          "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                          "mlp.c_proj.weight", "mlp.c_proj.bias"})
      want.push_back("transformer.h." + std::to_string(l) + "." + p);
  want.push_back("transformer.ln_f.weight");
  want.push_back("transformer.ln_f.bias");
  std::vector<std::string> got;
  for (const auto& [name, t] : gpt->named_parameters()) got.push_back(name);
  EXPECT_EQ(got, want);
  const auto sd = gpt->state_dict();
  EXPECT_EQ(entry(sd, "transformer.h.1.attn.c_attn.weight").sizes(), (Shape{48, 16}));
  EXPECT_EQ(entry(sd, "transformer.h.0.mlp.c_fc.weight").sizes(), (Shape{64, 16}));
  EXPECT_EQ(entry(sd, "transformer.wpe.weight").sizes(), (Shape{12, 16}));
  // 11*16 + 12*16 + 2 * (4*16 + 48*16+48 + 16*16+16 + 64*16+64 + 16*64+16) + 2*16
  EXPECT_EQ(gpt->num_parameters(), 176 + 192 + 2 * (64 + 816 + 272 + 1088 + 1040) + 32);

  GPTConfig untied = small_config();
  untied.tie_weights = false;
  GPT g2(untied);
  EXPECT_EQ(g2->named_parameters().back().first, "lm_head.weight");
  EXPECT_EQ(g2->num_parameters(), gpt->num_parameters() + 11 * 16);

  // nanoGPT's init: N(0, 0.02), the residual projections 0.02 / sqrt(2 n_layer).
  GPTConfig big = small_config();
  big.n_embd = 128;
  big.vocab_size = 500;
  GPT g3(big);
  const auto s3 = g3->state_dict();
  EXPECT_NEAR(loom::std(entry(s3, "transformer.wte.weight")).item<float>(), 0.02, 0.001);
  EXPECT_NEAR(loom::std(entry(s3, "transformer.h.0.mlp.c_proj.weight")).item<float>(), 0.01, 0.0005);
  EXPECT_EQ(loom::sum(loom::abs(entry(s3, "transformer.h.0.attn.c_attn.bias"))).item<float>(), 0.0f);
}

// The same network written out with plain loom ops (explicit softmax
// attention with a causal mask), from the state dict.
Tensor reference_logits(const GPT& gpt, const Tensor& idx) {
  const GPTConfig& c = gpt->config;
  const auto sd = gpt->state_dict();
  const auto p = [&](const std::string& n) { return entry(sd, n); };
  const int64_t b = idx.size(0), t = idx.size(1), hd = c.n_embd / c.n_head;
  Tensor x = loom::index_select(p("transformer.wte.weight"), 0, idx.reshape({-1})).reshape({b, t, c.n_embd}) +
             p("transformer.wpe.weight").narrow(0, 0, t);
  const auto ln = [&](const Tensor& v, const std::string& n) {
    const Tensor mu = loom::mean(v, {-1}, true);
    const Tensor var = loom::mean((v - mu) * (v - mu), {-1}, true);
    return (v - mu) / loom::sqrt(var + 1e-5) * p(n + ".weight") + p(n + ".bias");
  };
  const auto lin = [&](const Tensor& v, const std::string& n) {
    return loom::matmul(v, p(n + ".weight").t()) + p(n + ".bias");
  };
  const Tensor future = loom::triu(loom::ones({t, t}, loom::kBool), 1);
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const std::string pre = "transformer.h." + std::to_string(l) + ".";
    const Tensor qkv = lin(ln(x, pre + "ln_1"), pre + "attn.c_attn");
    const auto split = [&](int64_t i) {
      return qkv.narrow(2, i * c.n_embd, c.n_embd).reshape({b, t, c.n_head, hd}).permute({0, 2, 1, 3});
    };
    Tensor s = loom::matmul(split(0), split(1).transpose(-2, -1)) / std::sqrt(static_cast<double>(hd));
    s = loom::masked_fill(s, future, -INFINITY);
    const Tensor y = loom::matmul(loom::softmax(s, -1), split(2)).permute({0, 2, 1, 3}).reshape({b, t, c.n_embd});
    x = x + lin(y, pre + "attn.c_proj");
    x = x + lin(loom::gelu(lin(ln(x, pre + "ln_2"), pre + "mlp.c_fc")), pre + "mlp.c_proj");
  }
  return loom::matmul(ln(x, "transformer.ln_f"), p("transformer.wte.weight").t());
}

TEST(GPT, ForwardMatchesPlainOps) {
  loom::manual_seed(1);
  GPT gpt(small_config());
  gpt->eval();
  const Tensor idx = random_ids(3, 9, 11, 2);
  const Tensor got = gpt(idx);
  EXPECT_EQ(got.sizes(), (Shape{3, 9, 11}));
  EXPECT_LT(max_abs_diff(got, reference_logits(gpt, idx)), 2e-5);
  // (T) input: one sequence.
  EXPECT_LT(max_abs_diff(gpt(idx.select(0, 1)), got.narrow(0, 1, 1)), 1e-6);
}

// Prefill, a chunk at an offset (the explicit mask), then one token at a
// time: every step's logits equal the full recomputation's.
TEST(GPT, KVCacheGivesTheLogitsOfRecomputation) {
  loom::manual_seed(3);
  GPT gpt(small_config());
  gpt->eval();
  const Tensor idx = random_ids(2, 12, 11, 4);
  const Tensor full = gpt(idx);
  auto cache = gpt->make_cache(2);
  std::vector<std::pair<int64_t, int64_t>> pieces = {{0, 5}, {5, 3}};
  for (int64_t i = 8; i < 12; ++i) pieces.emplace_back(i, 1);
  for (const auto& [start, len] : pieces) {
    const Tensor step = gpt->forward(idx.narrow(1, start, len), cache);
    EXPECT_EQ(cache.length, start + len);
    EXPECT_LT(max_abs_diff(step, full.narrow(1, start, len)), 1e-5) << "positions " << start << "+" << len;
  }
  // Past the context: an error that says what to do.
  try {
    gpt->forward(idx.narrow(1, 0, 1), cache);
    FAIL() << "no error";
  } catch (const loom::Error& e) {
    EXPECT_NE(std::string(e.what()).find("block_size"), std::string::npos) << e.what();
  }
}

TEST(GPT, CachedGenerationEqualsRecomputation) {
  loom::manual_seed(5);
  GPT gpt(small_config());
  const Tensor prompt = random_ids(2, 4, 11, 6);
  for (const loom::models::GenerateOptions base :
       {loom::models::GenerateOptions{.temperature = 0.0}, loom::models::GenerateOptions{.temperature = 0.9, .top_k = 5, .seed = 7},
        loom::models::GenerateOptions{.temperature = 1.3, .seed = 8}}) {
    auto cached = base, plain = base;
    cached.use_cache = true;
    plain.use_cache = false;
    // 20 new tokens from 4: the window slides past block_size 12.
    const Tensor a = gpt->generate(prompt, 20, cached), b = gpt->generate(prompt, 20, plain);
    EXPECT_EQ(a.sizes(), (Shape{2, 24}));
    EXPECT_EQ(a.to_vector<int64_t>(), b.to_vector<int64_t>()) << "temperature " << base.temperature;
    EXPECT_EQ(a.narrow(1, 0, 4).to_vector<int64_t>(), prompt.to_vector<int64_t>());
    // Same seed, same tokens.
    EXPECT_EQ(gpt->generate(prompt, 20, cached).to_vector<int64_t>(), a.to_vector<int64_t>());
  }
  // top_k = 1 is greedy.
  EXPECT_EQ(gpt->generate(prompt, 6, {.temperature = 1.0, .top_k = 1, .seed = 3}).to_vector<int64_t>(),
            gpt->generate(prompt, 6, {.temperature = 0.0}).to_vector<int64_t>());
  EXPECT_TRUE(gpt->is_training());  // generate restores the mode
}

TEST(GPT, Float64Gradcheck) {
  loom::manual_seed(9);
  GPTConfig c = small_config();
  c.n_layer = 1;
  c.n_embd = 8;
  c.block_size = 5;
  GPT gpt(c);
  gpt->to(loom::kFloat64);
  const Tensor idx = random_ids(2, 5, 11, 10), tgt = random_ids(2, 5, 11, 11);
  gpt->zero_grad();
  gpt->loss(idx, tgt).backward();
  int checked = 0;
  for (auto& [name, w] : gpt->named_parameters()) {
    const Tensor g = w.grad();
    ASSERT_TRUE(g.defined()) << name;
    // A few elements of every parameter.
    for (int64_t i = 0; i < w.numel(); i += std::max<int64_t>(1, w.numel() / 4)) {
      double* wp = w.data_ptr<double>();
      const double saved = wp[i];
      double lp, lm;
      {
        loom::NoGradGuard ng;
        wp[i] = saved + 1e-6;
        lp = gpt->loss(idx, tgt).item<double>();
        wp[i] = saved - 1e-6;
        lm = gpt->loss(idx, tgt).item<double>();
        wp[i] = saved;
      }
      const double fd = (lp - lm) / 2e-6, an = g.reshape({-1})[i].item<double>();
      EXPECT_NEAR(an, fd, 1e-6 * (1 + std::abs(fd))) << name << "[" << i << "]";
      ++checked;
    }
  }
  EXPECT_GT(checked, 40);
}

TEST(GPT, LearnsARepeatingSequence) {
  loom::manual_seed(12);
  GPTConfig c = small_config();
  c.n_embd = 32;
  c.n_head = 4;
  GPT gpt(c);
  loom::optim::AdamW opt(gpt->parameters(), loom::optim::AdamWOptions(3e-3));
  // 0 1 2 ... 10 0 1 2 ...: every next token is determined.
  std::vector<int64_t> seq;
  for (int i = 0; i < 13; ++i) seq.push_back(i % 11);
  const Tensor all = loom::tensor(seq, loom::kInt64).reshape({1, 13});
  const Tensor x = all.narrow(1, 0, 12), y = all.narrow(1, 1, 12);
  double first = 0, last = 0;
  for (int step = 0; step < 150; ++step) {
    opt.zero_grad();
    Tensor loss = gpt->loss(x, y);
    loss.backward();
    opt.step();
    (step == 0 ? first : last) = loss.item<double>();
  }
  EXPECT_GT(first, 2.0);  // about log(11) = 2.4 at the start
  EXPECT_LT(last, 0.05);
  // It continues the pattern.
  const Tensor out = gpt->generate(loom::tensor(std::vector<int64_t>{0, 1, 2}, loom::kInt64), 9, {.temperature = 0});
  EXPECT_EQ(out.to_vector<int64_t>(), (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0}));
}

TEST(GPT, ConfigJsonAndErrors) {
  GPTConfig c = small_config();
  c.dropout = 0.1;
  c.tie_weights = false;
  const GPTConfig back = loom::models::gpt_config_from_json(loom::models::gpt_config_to_json(c));
  EXPECT_EQ(back.n_layer, 2);
  EXPECT_EQ(back.vocab_size, 11);
  EXPECT_DOUBLE_EQ(back.dropout, 0.1);
  EXPECT_FALSE(back.tie_weights);
  EXPECT_THROW(loom::models::gpt_config_from_json("{\"n_layer\": 2}"), loom::Error);
  EXPECT_THROW(loom::models::gpt_config_from_json("not json"), loom::Error);
  GPTConfig bad = small_config();
  bad.n_head = 3;
  EXPECT_THROW(GPT{bad}, loom::Error);
  loom::manual_seed(0);
  GPT gpt(small_config());
  EXPECT_THROW(gpt(random_ids(1, 13, 11, 1)), loom::Error);                   // longer than block_size
  EXPECT_THROW(gpt(loom::zeros({1, 3})), loom::Error);                        // float ids
  EXPECT_THROW(gpt->generate(random_ids(1, 2, 11, 1), 3, {.top_k = -1}), loom::Error);
}

// `loom train --model gpt|lstm --dataset text:PATH`, then `loom generate`:
// the loss falls on a small text, the checkpoint rebuilds the model, and
// generation with the KV cache writes what recomputation writes.
// A fresh folder holding corpus.txt: `repeats` copies of one sentence.
static std::filesystem::path corpus_dir(const std::string& prefix, int repeats) {
  const auto dir = std::filesystem::temp_directory_path() / (prefix + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream f(dir / "corpus.txt");
  for (int i = 0; i < repeats; ++i) f << "the cat sat on the mat. ";
  return dir;
}

TEST(LanguageModelCommand, TrainsSavesAndGenerates) {
  const auto dir = corpus_dir("loom_lm_", 300);
  const std::string text_file = (dir / "corpus.txt").string();
  for (const std::string kind : {"gpt", "lstm"}) {
    SCOPED_TRACE(kind);
    loom::cli::LmOptions o;
    o.model = kind;
    o.text = text_file;
    o.layers = kind == "gpt" ? 2 : 1;
    o.d_model = 32;
    o.heads = 2;
    o.context = 16;
    o.batch_size = 8;
    o.max_steps = 120;
    o.eval_every = 40;
    o.eval_batches = 2;
    o.lr = kind == "gpt" ? 3e-3 : 1e-2;
    o.out = (dir / (kind + ".safetensors")).string();
    o.metrics = (dir / (kind + ".csv")).string();
    std::ostringstream log;
    const auto r = loom::cli::train_lm(o, log);
    ASSERT_EQ(r.history.size(), 3u);
    EXPECT_GT(r.history.front().val_loss, r.history.back().val_loss) << log.str();
    EXPECT_LT(r.history.back().val_loss, 1.0) << log.str();  // a 10-character cycle of a repeated sentence
    EXPECT_NE(log.str().find("val loss"), std::string::npos);
    // The metrics file: a header and one row per report.
    std::ifstream m(o.metrics);
    std::string line;
    int lines = 0;
    while (std::getline(m, line)) ++lines;
    EXPECT_EQ(lines, 4);

    const auto loaded = loom::cli::load_lm(o.out);
    EXPECT_EQ(loaded.kind, kind);
    EXPECT_EQ(loaded.step, 120);
    loom::cli::GenerateRequest g;
    g.model_file = o.out;
    g.prompt = "the cat ";
    g.max_new_tokens = 40;  // past the context of 16
    g.temperature = 0.7;
    g.seed = 3;
    const auto a = loom::cli::generate_text(g);
    g.use_cache = false;
    const auto b = loom::cli::generate_text(g);
    EXPECT_EQ(a.text, b.text);
    EXPECT_EQ(a.new_tokens, 40);
    EXPECT_EQ(a.text.rfind("the cat ", 0), 0u) << a.text;
    // Within the context a GPT runs through the serving engine (paged
    // cache), with the same sampler: the same text as recomputing.
    g.max_new_tokens = 8;
    g.use_cache = true;
    const auto paged = loom::cli::generate_text(g);
    g.use_cache = false;
    EXPECT_EQ(paged.text, loom::cli::generate_text(g).text);
    EXPECT_EQ(paged.new_tokens, 8);
    // Greedy continues the sentence.
    g.max_new_tokens = 40;
    g.temperature = 0;
    EXPECT_EQ(loom::cli::generate_text(g).text.substr(0, 20), "the cat sat on the m");
    // A character the tokenizer has never seen.
    g.prompt = "Zebra";
    try {
      loom::cli::generate_text(g);
      ADD_FAILURE() << "no error";
    } catch (const loom::Error& e) {
      EXPECT_NE(std::string(e.what()).find("U+005A"), std::string::npos) << e.what();
    }
  }
  // A checkpoint that is not a language model's.
  loom::nn::Linear lin(2, 2);
  loom::save(lin, (dir / "linear.safetensors").string());
  try {
    loom::cli::load_lm((dir / "linear.safetensors").string());
    ADD_FAILURE() << "no error";
  } catch (const loom::Error& e) {
    EXPECT_NE(std::string(e.what()).find("loom.lm"), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir);
}

}  // namespace

// `loom train --compile` (and --checkpoint-activations, eager and compiled)
// ends with the weights of eager training, for both language models, with
// dropout and the cosine schedule's learning rate changing every step.
TEST(LanguageModelCommand, CompiledAndCheckpointedTrainingGiveTheEagerWeights) {
  const auto dir = corpus_dir("loom_lmc_", 100);
  const std::string text_file = (dir / "corpus.txt").string();
  for (const std::string kind : {"gpt", "lstm"}) {
    SCOPED_TRACE(kind);
    loom::cli::LmOptions o;
    o.model = kind;
    o.text = text_file;
    o.layers = 2;
    o.d_model = 32;
    o.heads = 2;
    o.context = 16;
    o.batch_size = 4;
    o.max_steps = 12;
    o.eval_every = 6;
    o.eval_batches = 1;
    o.dropout = 0.1;
    o.out = "";
    std::vector<loom::nn::StateDict> states;
    for (int mode = 0; mode < 4; ++mode) {
      o.graph.compile = mode == 1 || mode == 3;
      o.graph.checkpoint_activations = mode >= 2;
      std::ostringstream log;
      const auto r = loom::cli::train_lm(o, log);
      states.push_back(r.model->state_dict());
      if (o.graph.compile) {
        EXPECT_NE(log.str().find("compiled step:"), std::string::npos) << log.str();
      }
    }
    for (int mode = 1; mode < 4; ++mode) {
      ASSERT_EQ(states[0].size(), states[static_cast<size_t>(mode)].size());
      for (size_t k = 0; k < states[0].size(); ++k)
        EXPECT_TRUE(states[0][k].second.equal(states[static_cast<size_t>(mode)][k].second))
            << "mode " << mode << ": " << states[0][k].first;
    }
  }
  std::filesystem::remove_all(dir);
}
