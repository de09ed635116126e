// Continuous batching for language models (issue 22): the engine behind
// `loom serve`'s completion endpoints, over a GPT with a paged KV cache.
//
//   serve::LlmEngine engine(gpt, {.slots = 8, .kv_cache_mb = 64});
//   engine.start();                                  // steps on its own thread
//   engine.submit(prompt_ids, {.max_tokens = 50, .temperature = 0},
//                 [](const serve::TokenEvent& e) { ... });   // called on the engine's thread
//
// Up to `slots` sequences decode together, one batched forward per step;
// new requests join at step boundaries; prompts are prefilled in chunks of
// at most `prefill_chunk` tokens a step, so a long prompt does not stall the
// streams already running; when the KV pool is full the newest sequence is
// preempted and recomputed later (Note [Continuous batching] in
// src/serve/engine.cpp). A sequence's tokens do not depend on what else is
// in the batch: greedy decoding gives the same tokens served alone or with
// others, bit for bit. Not included by loom/loom.h: link loom_serve.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "loom/models/gpt.h"

namespace loom::serve {

enum class FinishReason { None, Stop, Length, Cancelled };
// OpenAI's names: "stop", "length"; "cancelled" for a dropped request.
const char* finish_reason_name(FinishReason r);

struct SamplingParams {
  int64_t max_tokens = 16;
  double temperature = 1.0;  // 0: greedy (the first largest logit)
  double top_p = 1.0;        // the smallest set of tokens whose probability reaches top_p
  int64_t top_k = 0;         // 0: every token
  uint64_t seed = 0;         // each request draws from its own splitmix64 stream
  // Token sequences that end the generation; the matched tokens are not
  // part of the output, and tokens that may start one are held back until
  // they cannot.
  std::vector<std::vector<int64_t>> stop;
  bool logprobs = false;  // report each token's log-probability under the model
};

// What a request's sink hears: new tokens (and their log-probabilities when
// asked), then once an event with finish set.
struct TokenEvent {
  std::vector<int64_t> tokens;
  std::vector<double> logprobs;
  FinishReason finish = FinishReason::None;
  int64_t prompt_tokens = 0;
  int64_t generated_tokens = 0;  // so far, stop tokens excluded
};
using TokenSink = std::function<void(const TokenEvent&)>;

struct EngineOptions {
  int64_t slots = 8;          // sequences decoding together
  double kv_cache_mb = 64;    // the paged KV pool's budget
  int64_t block_size = 16;    // positions per KV block
  int64_t prefill_chunk = 64; // prompt tokens prefilled per step, over all sequences
};

struct EngineStats {
  int64_t running = 0, waiting = 0;
  int64_t kv_blocks_used = 0, kv_blocks_total = 0;
  int64_t kv_positions = 0;  // positions the running sequences hold in the cache
  int64_t prompt_tokens = 0, generated_tokens = 0;
  int64_t steps = 0, preemptions = 0;
};

class LlmEngine {
 public:
  // The model is put in eval mode; the engine owns its paged cache.
  explicit LlmEngine(models::GPT model, EngineOptions options = {});
  ~LlmEngine();
  LlmEngine(const LlmEngine&) = delete;
  LlmEngine& operator=(const LlmEngine&) = delete;

  // Queues a request (checked here: a bad one is an Error, nothing queued)
  // and returns its id. The sink is called from the thread that steps.
  uint64_t submit(std::vector<int64_t> prompt, SamplingParams params, TokenSink sink);
  // Ends a request at the next step boundary (its sink hears Cancelled);
  // an unknown or finished id is ignored.
  void cancel(uint64_t id);
  // One step on the calling thread: admits, prefills or decodes, samples.
  // False when there was nothing to do.
  bool step();
  // Steps on a thread of its own until stop() (or destruction).
  void start();
  void stop();

  EngineStats stats() const;
  const models::GPTConfig& config() const { return model_->config; }

 private:
  struct Sequence;
  void admit();
  void finish(Sequence& s, FinishReason reason);
  void sample_and_emit(Sequence& s, const float* logits);

  models::GPT model_;
  EngineOptions options_;
  models::PagedKVCache cache_;

  mutable std::mutex mu_;  // guards incoming_, cancelled_, stats_ and stop_
  std::condition_variable wake_;
  std::deque<std::unique_ptr<Sequence>> incoming_;
  std::vector<uint64_t> cancelled_;
  EngineStats stats_;
  uint64_t next_id_ = 1;
  bool stop_ = false;
  std::thread thread_;

  // Owned by the stepping thread.
  std::deque<std::unique_ptr<Sequence>> waiting_;  // preempted ones at the front
  std::vector<std::unique_ptr<Sequence>> running_;  // in admission order
};

}  // namespace loom::serve
