// `loom serve`: the checkpoints `loom train` writes, served over the Open
// Inference Protocol by loom::serve::Server (include/loom/serve.h).
//
// Image classifiers (mlp, cnn, resnet9) take "input", FP32 [-1, 1, 28, 28]
// (also FP16, BF16, FP64, or UINT8 pixels 0..255, divided by 255 as the
// dataset loader does), normalized with the checkpoint's "loom.normalize.*"
// metadata as in training, and give "logits" and "probabilities" (softmax),
// FP32 [-1, classes]; the classification extension names the dataset's
// classes. Language models (gpt, lstm) take "input_ids", INT64 [-1, -1] (any
// integer datatype; ids below the vocabulary size, and no longer than a GPT's
// context) and give "logits", FP32 [-1, -1, vocab]. A GPT is also served
// with OpenAI's API (/v1/completions, /v1/chat/completions, /v1/models):
// its tokenizer turns text into tokens and back, and a serve::LlmEngine of
// its own generates with continuous batching over a paged KV cache.
#pragma once

#include <memory>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include <loom/serve.h>

namespace loom::cli {

// The engine of each GPT served at /v1 (serve::EngineOptions).
struct LlmServeOptions {
  int64_t slots = 8;             // sequences decoding together
  double kv_cache_mb = 64;       // the paged KV pool of each model
  int64_t prefill_chunk = 64;    // prompt tokens prefilled per step
  std::string draft_model;       // a smaller GPT with the same tokenizer ("" none)
  int64_t draft_tokens = 4;      // proposed per sequence and step
};

struct ServeOptions {
  std::string model_repository;
  std::vector<std::string> models;  // NAME=FILE
  std::string host = "127.0.0.1";
  int port = 8000;
  int threads = 0;  // loom's kernels; 0: one per core
  int http_threads = 64;
  int64_t max_batch_size = 32;
  int64_t max_queue_delay_us = 0;
  int64_t max_queue_size = 1024;
  int64_t timeout_ms = 0;  // 0: none
  double max_body_mb = 64;
  LlmServeOptions llm;
  double request_timeout_s = 600;  // a /v1 generation ends after this (504); 0: none
};

// The serve::Model of a `loom train` checkpoint (the ModelLoader of `loom
// serve`); a GPT's engine is built with `llm` and started. A draft model
// must be a GPT with the checkpoint's tokenizer.
std::shared_ptr<serve::Model> load_served_model(const std::string& file, const LlmServeOptions& llm = {});

// The library's options from the command line's ("NAME=FILE" split and checked).
serve::ServerOptions server_options(const ServeOptions& o);

// Runs the server until SIGINT or SIGTERM, then drains the requests in flight
// and returns (exit code 0). Prints "loom serve: listening on
// http://HOST:PORT" to `log` once the port is bound (--port 0: a free one).
void serve(const ServeOptions& o, std::ostream& log);

}  // namespace loom::cli
