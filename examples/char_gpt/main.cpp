// A character-level GPT on the fortune cookies of the Debian package
// `fortunes` (nanoGPT's shakespeare_char, in loom): it reads the corpus,
// builds a character tokenizer, trains models::GPT on random next-character
// windows (data::TextDataset::random_batch) with AdamW, reports the validation loss as it goes, and then
// writes new fortunes with the KV cache.
//
//   build/example_char_gpt                          (1000 steps, about 2 minutes on 4 cores)
//   build/example_char_gpt --steps 200 --layers 2   (a quick look)
//   build/example_char_gpt --text my.txt --prompt "Once"
#include <CLI/CLI.hpp>
#include <loom/loom.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

using loom::Tensor;

namespace {

// Mean loss over `batches` fixed validation batches: the same windows every
// time (the batches of seed 1234, steps 1..batches).
double val_loss(loom::models::GPT& gpt, const loom::data::TextDataset& val, int64_t batch, int64_t batches) {
  loom::NoGradGuard no_grad;
  gpt->eval();
  double sum = 0;
  for (int64_t i = 1; i <= batches; ++i) {
    loom::data::Batch b = val.random_batch(batch, /*seed=*/1234, /*step=*/i);
    sum += gpt->loss(b.data, b.target).item<double>();
  }
  gpt->train();
  return sum / static_cast<double>(batches);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Train a character-level GPT on a text corpus and sample from it"};
  std::string text = loom::data::kFortunesDir, prompt = "\n";
  int64_t steps = 1000, layers = 4, d_model = 256, heads = 4, context = 128, batch = 16, new_tokens = 400;
  double lr = 1e-3, temperature = 0.8;
  app.add_option("--text", text, "A text file, or a folder of fortune files")->capture_default_str();
  app.add_option("--steps", steps, "Training steps")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--layers", layers, "Transformer blocks")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--d-model", d_model, "Model width")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--heads", heads, "Attention heads")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--context", context, "Context length")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--batch-size", batch, "Windows per step")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--lr", lr, "AdamW learning rate")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--prompt", prompt, "Text to continue at the end");
  app.add_option("--new-tokens", new_tokens, "Characters to generate")->capture_default_str();
  app.add_option("--temperature", temperature, "Sampling temperature")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  try {
    // The corpus: one character tokenizer over the whole text, 90% to train.
    loom::data::TextCorpus corpus = loom::data::load_text_corpus(text, context, "char", 0.1);
    const int64_t vocab = corpus.tokenizer->vocab_size();
    std::printf("%s: %lld characters, %lld distinct\n", text.c_str(),
                static_cast<long long>(corpus.train_ids.numel() + corpus.val_ids.numel()),
                static_cast<long long>(vocab));

    loom::manual_seed(0);
    loom::models::GPT gpt(loom::models::GPTConfig{.n_layer = layers, .n_embd = d_model, .n_head = heads, .block_size = context,
                           .vocab_size = vocab, .dropout = 0.0});
    loom::optim::AdamW opt(gpt->parameters(), loom::optim::AdamWOptions(lr).weight_decay(0.1));
    loom::optim::CosineAnnealingLR schedule(opt, steps);
    std::printf("GPT: %lld parameters\n", static_cast<long long>(gpt->num_parameters()));

    // Step s trains on `batch` random windows keyed by (seed 0, s), as `loom train --model gpt`.
    const loom::data::TextDataset train(corpus.train_ids, context), val(corpus.val_ids, context);
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t step = 1; step <= steps; ++step) {
      loom::data::Batch b = train.random_batch(batch, /*seed=*/0, step);  // (B, T) inputs and next tokens
      Tensor loss = gpt->loss(b.data, b.target);
      opt.zero_grad();
      loss.backward();
      loom::nn::utils::clip_grad_norm_(gpt->parameters(), 1.0);
      opt.step();
      schedule.step();
      if (step % 100 == 0 || step == steps) {
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::printf("step %5lld  train loss %.4f  val loss %.4f  (%.0f ms/step)\n", static_cast<long long>(step),
                    loss.item<double>(), val_loss(gpt, val, batch, 10),
                    1000 * secs / static_cast<double>(step));
        std::fflush(stdout);
      }
    }

    const Tensor start = corpus.tokenizer->encode_tensor(prompt);
    const Tensor out = gpt->generate(start, new_tokens, {.temperature = temperature, .top_k = 0, .seed = 42});
    std::cout << "---\n" << corpus.tokenizer->decode(out) << "\n---\n";
  } catch (const std::exception& e) {
    std::cerr << "example_char_gpt: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
