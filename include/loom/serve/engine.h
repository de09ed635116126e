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
// others, bit for bit, and with or without a draft model (Note [Speculative
// decoding]). Not included by loom/loom.h: link loom_serve.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "loom/models/gpt.h"

namespace loom::serve {

enum class FinishReason { None, Stop, Length, Cancelled, Timeout };
// OpenAI's names: "stop", "length"; "cancelled" for a dropped request,
// "timeout" for one past its deadline.
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
  std::vector<std::vector<int64_t>> stop = {};
  bool logprobs = false;    // report each token's log-probability under the model
  // With logprobs: also the N most likely tokens at each position, N in
  // [0, 20] (ignored without logprobs).
  int64_t top_logprobs = 0;
  // Choices generated from one prompt (OpenAI's n), in [1, slots]. The
  // prompt is prefilled once and its KV blocks shared, copy-on-write;
  // choice i draws from the stream of seed + i, so choice 0 is the n = 1
  // output. A request waits until n slots are free.
  int64_t n = 1;
};

// How a request may end early, checked at every step boundary on the
// engine's thread: past the deadline it finishes with Timeout; when
// `disconnected` returns true (its client hung up) with Cancelled. Either
// frees its slot and KV blocks in that step. `disconnected` is called once
// a step per request while it runs or waits, on the engine's thread,
// without the engine's lock held.
struct RequestControl {
  std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();
  std::function<bool()> disconnected = {};
};

// What a request's sink hears: new tokens (and their log-probabilities when
// asked), then once an event with finish set, per choice. The events of a
// request's choices interleave; every choice, including those of a request
// that ended before its prompt was prefilled, hears exactly one finish
// event, and the request is over when all n have. A finish event may carry
// tokens too (the last ones, held back for a stop sequence that never came).
struct TokenEvent {
  int64_t index = 0;  // which of the request's n choices
  std::vector<int64_t> tokens;
  std::vector<double> logprobs;
  // With top_logprobs N: per token, the N most likely (token, log-probability)
  // pairs, most likely first.
  std::vector<std::vector<std::pair<int64_t, double>>> top_logprobs;
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
  // Speculative decoding (Leviathan et al. 2023, Note [Speculative
  // decoding] in src/serve/engine.cpp): a smaller GPT with the same
  // vocabulary and at least the model's context proposes up to
  // draft_tokens tokens (in [1, 16]) per sequence and step; the model
  // verifies them in one forward pass. Null: none. The draft's keys and
  // values live in a pool of their own that mirrors the model's block for
  // block, and kv_cache_mb covers both: a block then costs the two models'
  // bytes together.
  models::GPT draft{nullptr};
  int64_t draft_tokens = 4;
};

// A latency histogram (seconds) with Prometheus's cumulative buckets.
struct Histogram {
  std::vector<double> bounds;   // upper bounds, increasing; +Inf is implied
  std::vector<int64_t> counts;  // per bucket (bounds.size() + 1), not cumulative
  double sum = 0;
  int64_t count = 0;
  void observe(double seconds);
};
// 1 ms to 10 s, roughly x2.5 apart.
Histogram latency_histogram();

struct EngineStats {
  int64_t running = 0, waiting = 0;
  int64_t kv_blocks_used = 0, kv_blocks_total = 0;
  int64_t kv_positions = 0;  // positions the running sequences hold in the cache
  int64_t prompt_tokens = 0, generated_tokens = 0;
  int64_t steps = 0, preemptions = 0;
  // Requests that ended, counted once when their last choice ends, by that
  // choice's reason: finished (stop or length), cancelled (cancel() or
  // disconnected), timed_out (past the deadline). Disjoint.
  int64_t finished = 0, cancelled = 0, timed_out = 0;
  // Speculative decoding: draft tokens proposed, and how many the model kept.
  int64_t draft_proposed = 0, draft_accepted = 0;
  // Submit to a choice's first token sent to the sink, once per choice that
  // sends any.
  Histogram time_to_first_token = latency_histogram();
  // Once per token sent after a choice's first: the time since the
  // choice's previous event, divided evenly among the event's tokens (a
  // speculative step sends several at once; those sent with the first
  // token count 0).
  Histogram inter_token_latency = latency_histogram();
};

// Speculative sampling's acceptance rule (Note [Speculative decoding]),
// public for its statistical test. p is the model's distribution at a
// position and q the draft's, over the vocabulary, each summing to 1;
// `draft` was drawn from q. The draft is kept with probability
// min(1, p(draft) / q(draft)); otherwise the token is drawn from
// normalize(max(0, p - q)). Either way it is distributed as p. Uses one
// or two draws of the splitmix64 stream `state`.
struct SpeculativeDraw {
  int64_t token = 0;
  bool accepted = false;
};
SpeculativeDraw speculative_accept(const std::vector<double>& p, const std::vector<double>& q, int64_t draft,
                                   uint64_t& state);

class LlmEngine {
 public:
  // The model is put in eval mode; the engine owns its paged cache.
  explicit LlmEngine(models::GPT model, EngineOptions options = {});
  ~LlmEngine();
  LlmEngine(const LlmEngine&) = delete;
  LlmEngine& operator=(const LlmEngine&) = delete;

  // Queues a request (checked here: a bad one is an Error, nothing queued)
  // and returns its id. The sink is called from the thread that steps, never
  // with the engine's lock held (it may call cancel()).
  uint64_t submit(std::vector<int64_t> prompt, SamplingParams params, TokenSink sink, RequestControl control = {});
  // Ends a request (all its choices) at the next step boundary (its sink
  // hears Cancelled); an unknown or finished id is ignored.
  void cancel(uint64_t id);
  // One step on the calling thread: admits, prefills or decodes, samples.
  // False when there was nothing to do.
  bool step();
  // Steps on a thread of its own until stop() (or destruction). While idle
  // it sleeps until a submit or cancel.
  void start();
  void stop();

  EngineStats stats() const;
  const models::GPTConfig& config() const { return model_->config; }
  const EngineOptions& options() const { return options_; }

 private:
  struct Request;
  struct Sequence;
  struct Planned;
  struct Speculation;
  // Finishes the running and waiting choices of requests cancelled, past
  // their deadline or disconnected; returns how many.
  int64_t end_early(const std::vector<uint64_t>& cancelled);
  void admit();
  // Releases a sequence's blocks; it waits at the front of the queue.
  void preempt(std::unique_ptr<Sequence> s);
  // Makes positions [from, to) writable: appends blocks, copies shared ones
  // (copy-on-write, in both pools). False, nothing changed, when short.
  bool reserve_for_write(Sequence& s, int64_t from, int64_t to);
  int64_t speculation_length(const Sequence& s) const;  // drafts this step (0: none)
  // The draft's forwards of a step, and its proposals.
  void propose(const std::vector<Planned>& planned, std::vector<Speculation>& specs);
  // Keeps drafts by the acceptance rule and appends the tokens.
  void verify(Speculation& spec, const float* rows);
  // The other choices of a request whose prompt was just prefilled.
  std::vector<std::unique_ptr<Sequence>> fork(Sequence& s);
  void sample_and_emit(Sequence& s, const float* logits);
  // Appends one generated token (log-probabilities from the row that
  // predicted it); ends the sequence on a stop sequence or a limit and then
  // returns true.
  bool append(Sequence& s, int64_t token, const float* logits);
  // Sends output tokens [emitted, upto) and the end when reason is set.
  void send(Sequence& s, int64_t upto, FinishReason reason);
  // Releases the blocks and sends the end (with any held-back tokens).
  void finish(Sequence& s, FinishReason reason);

  models::GPT model_;
  EngineOptions options_;
  models::PagedKVCache cache_;
  // The draft's keys and values (Note [Speculative decoding]): the same
  // block ids as cache_, which alone allocates them.
  models::PagedKVCache draft_cache_;

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
