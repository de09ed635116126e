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
// context) and give "logits", FP32 [-1, -1, vocab].
#pragma once

#include <memory>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include <loom/serve.h>

namespace loom::cli {

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
};

// The serve::Model of a `loom train` checkpoint (the ModelLoader of `loom serve`).
std::shared_ptr<serve::Model> load_served_model(const std::string& file);

// The library's options from the command line's ("NAME=FILE" split and checked).
serve::ServerOptions server_options(const ServeOptions& o);

// Runs the server until SIGINT or SIGTERM, then drains the requests in flight
// and returns (exit code 0). Prints "loom serve: listening on
// http://HOST:PORT" to `log` once the port is bound (--port 0: a free one).
void serve(const ServeOptions& o, std::ostream& log);

}  // namespace loom::cli
