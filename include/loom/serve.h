// Model serving (loom::serve, library loom_serve): an HTTP server that
// speaks the Open Inference Protocol (KServe v2 REST, as NVIDIA Triton,
// KServe and Seldon MLServer do) and batches concurrent requests to a model
// into one forward pass (Note [Dynamic batching] in src/serve/batcher.cpp).
//
// The server knows nothing of checkpoints: a ModelLoader turns a file into a
// Model (its signature and a batched forward). `loom serve`
// (tools/loom/serve.cpp) gives it the loader for the checkpoints `loom train`
// writes. Not included by loom/loom.h: include <loom/serve.h> and link
// loom_serve.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "loom/serve/engine.h"
#include "loom/tensor.h"

namespace loom::serve {

// One tensor of a model's signature, as the protocol's model metadata shows
// it. datatype is a protocol name ("FP32", "INT64", ...); shape includes the
// batch dimension first, and -1 marks a dimension of any size (always the
// batch one).
struct TensorSpec {
  std::string name;
  std::string datatype;
  std::vector<int64_t> shape;
};

// A language model that the server also serves at /v1, OpenAI's API
// (completions, chat completions, models): its tokenizer, and the engine
// that generates with continuous batching (include/loom/serve/engine.h).
class TextGenerator {
 public:
  virtual ~TextGenerator() = default;
  // Throws loom::Error naming what cannot be encoded (a character outside
  // the vocabulary).
  virtual std::vector<int64_t> encode(const std::string& text) const = 0;
  virtual std::string decode(const std::vector<int64_t>& tokens) const = 0;
  // Started: stepping on its own thread (LlmEngine::start) for as long as
  // the Model lives, since a /v1 handler waits for its requests to end.
  virtual LlmEngine& engine() = 0;
};

// One loaded version of a model. The server calls prepare() on each
// request's thread, then forward() on the model's batching thread, one batch
// at a time (never concurrently for one Model).
class Model {
 public:
  virtual ~Model() = default;

  virtual std::vector<TensorSpec> inputs() const = 0;
  virtual std::vector<TensorSpec> outputs() const = 0;

  // One request's input `name`, decoded from the protocol's datatype into the
  // nearest loom dtype (INT8/INT16/UINT16 -> int32, UINT32/UINT64 -> int64,
  // FP16 -> float16, BF16 -> bfloat16, BOOL -> bool), shape (n, ...) with n
  // its batch. Returns what forward takes: converted (dtype), normalized,
  // checked (value ranges, sizes). Throws loom::Error naming what is wrong;
  // the request is then answered 400 and no other request is affected.
  // Results of requests whose prepared inputs have equal shapes past the
  // batch dimension are concatenated along dim 0 into one batch.
  virtual Tensor prepare(const std::string& name, const Tensor& value) const = 0;

  // Runs one batch: every input by name, (N, ...) as prepare() made it.
  // Returns every output by name, (N, ...). Row i of an output depends on
  // row i of the inputs only, bitwise: results split back per request equal
  // unbatched inference.
  virtual std::map<std::string, Tensor> forward(const std::map<std::string, Tensor>& batch) = 0;

  // Non-null for a language model served at /v1 too; owned by the Model.
  virtual TextGenerator* text_generator() { return nullptr; }

  // Class names for the classification extension on `output` (empty: the
  // class index alone).
  virtual std::vector<std::string> labels(const std::string& output) const {
    (void)output;
    return {};
  }
};

// Builds the Model stored in a file (a Triton repository's
// <repo>/<model>/<version>/model.safetensors, or a --model NAME=FILE).
// Throws loom::Error when the file is unusable.
using ModelLoader = std::function<std::shared_ptr<Model>(const std::string& file)>;

// How requests to one model version are queued and batched (Triton's
// max_batch_size, dynamic_batching.max_queue_delay_microseconds and queue
// policy). A repository model's config.json overrides the server's defaults:
//   {"max_batch_size": 32,
//    "dynamic_batching": {"max_queue_delay_microseconds": 500,
//                         "default_queue_policy": {"max_queue_size": 64,
//                                                  "default_timeout_microseconds": 100000}}}
struct BatchingOptions {
  int64_t max_batch_size = 32;     // rows per forward; 1: every request alone (batch-1 serving)
  int64_t max_queue_delay_us = 0;  // how long the oldest request waits for a fuller batch
  int64_t max_queue_size = 1024;   // queued requests; one more is answered 503 at once
  int64_t timeout_us = 0;          // a request still queued after this is answered 503; 0: none
};

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;                                            // 0: any free port (Server::port() tells)
  std::string model_repository;                               // Triton layout; "" for none
  std::vector<std::pair<std::string, std::string>> models;    // NAME=FILE, served as version 1
  ModelLoader loader;
  BatchingOptions batching;                                   // defaults for every model
  int http_threads = 64;    // connections served at once (each keep-alive connection holds one)
  int64_t max_body_bytes = 64ll << 20;
  std::string server_name = "loom";
  // A /v1 generation still running after this many seconds ends: 504, or an
  // error event in its stream. 0: no limit.
  double generation_timeout_s = 600;
};

// The server: loads every model (all numeric versions of each repository
// model, and every NAME=FILE), then answers on host:port until stop().
class Server {
 public:
  // Loads the models and binds the port; throws loom::Error when a model
  // cannot be loaded or the port cannot be bound.
  explicit Server(ServerOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  int port() const;  // the bound port

  // Serves until stop(); returns after the requests in flight are answered
  // and every model's queue has drained. Throws loom::Error (after the same
  // draining) if the listening socket fails.
  void run();

  // Stops accepting connections and makes run() return once the requests in
  // flight are answered. Safe from any thread (not from a signal handler).
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace loom::serve
