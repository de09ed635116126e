// Language models in the `loom` command: `loom train --model gpt|lstm
// --dataset text:PATH` and `loom generate`. main.cpp parses the flags;
// tests/test_gpt.cpp drives these functions.
//
// Training draws nanoGPT-style batches: each step takes batch_size windows
// of context + 1 tokens at offsets drawn from (seed, step) alone
// (data::TextDataset::random_batch, Note [Next-token batches]), so a run is
// reproducible and independent of anything else. Every eval_every steps
// (and at the end) it reports the mean training loss since the last report
// and the validation loss over a fixed set of windows spread evenly over the
// validation split, both in nats per token (per character with the char
// tokenizer), and writes the checkpoint: the model's state dict, and in the
// metadata "loom.lm" (gpt or lstm), "loom.lm.config" (the model's JSON
// config), "loom.tokenizer" (the tokenizer's JSON) and "loom.lm.step".
#pragma once

#include <cstdint>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include <loom/loom.h>

#include "graph_options.h"
#include "parallel.h"

namespace loom::cli {

struct LmOptions {
  std::string model = "gpt";  // gpt | lstm
  std::string text = data::kFortunesDir;  // a text file, or a folder of fortune files
  std::string tokenizer = "char";         // char | byte
  int64_t layers = 4;
  int64_t d_model = 256;  // GPT width, LSTM hidden size
  int64_t heads = 4;
  int64_t context = 128;
  double dropout = 0.0;
  bool tie_weights = true;
  int64_t batch_size = 16;
  int64_t max_steps = 2000;
  int64_t eval_every = 200;
  int64_t eval_batches = 20;
  double lr = 1e-3;
  std::string schedule = "cosine";  // cosine (to 0 over max_steps) | constant
  double weight_decay = 0.01;
  double grad_clip = 1.0;  // max global gradient norm; 0: off
  double val_fraction = 0.1;
  uint64_t seed = 0;
  int threads = 0;
  std::string device = "cpu";  // --device: cpu, cuda or cuda:N
  std::string out = "runs/gpt.safetensors";  // "" for none; main.cpp's default is runs/<model>.safetensors
  std::string metrics;                 // .csv: step,train_loss,val_loss,seconds
  std::string amp;                     // --amp bf16|fp16 ("" or "off": float32)
  GraphOptions graph;                  // --compile, --checkpoint-activations, ...
  DistributedOptions dist;             // --distributed, --zero, --timeout
};

struct LmPoint {
  int64_t step = 0;
  double train_loss = 0, val_loss = 0;  // nats per token
  double seconds = 0;                   // training time so far
};

struct LmResult {
  std::shared_ptr<nn::Module> model;
  std::shared_ptr<data::Tokenizer> tokenizer;
  std::vector<LmPoint> history;
};

LmResult train_lm(const LmOptions& opts, std::ostream& log);

struct GenerateRequest {
  std::string model_file;
  std::string prompt;
  int64_t max_new_tokens = 200;
  double temperature = 0.8;
  int64_t top_k = 0;
  uint64_t seed = 0;
  bool use_cache = true;
  std::string device = "cpu";  // --device: cpu, cuda or cuda:N
};

struct GenerateResult {
  std::string kind;        // gpt | lstm
  std::string text;        // the prompt and what followed it
  int64_t new_tokens = 0;
  double seconds = 0;      // generation time (loading excluded)
};

// Loads a checkpoint written by train_lm and continues the prompt.
GenerateResult generate_text(const GenerateRequest& request);

// A language-model checkpoint: the model rebuilt from its metadata, with its
// weights, and the tokenizer. Errors name the file and the missing key.
struct LoadedLm {
  std::string kind;  // gpt | lstm
  std::shared_ptr<nn::Module> model;
  std::shared_ptr<data::Tokenizer> tokenizer;
  int64_t step = 0;
};
LoadedLm load_lm(const std::string& path);

// `loom eval` of a language-model checkpoint: the mean loss per token (nats)
// over `windows` windows of the model's context spread evenly over the
// validation split of `text` (the last 10%, as train_lm splits it), which
// must give the checkpoint's own tokenizer.
struct LmEvalResult {
  std::string kind;
  double loss = 0;  // nats per token
  int64_t windows = 0, context = 0;
};
LmEvalResult evaluate_lm_checkpoint(const std::string& path, const std::string& text, int64_t batch_size,
                                    int64_t windows);

}  // namespace loom::cli
