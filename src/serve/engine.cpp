// Continuous batching over a paged KV cache (include/loom/serve/engine.h).
//
// Note [Continuous batching]
// A step builds one flattened batch (models::PagedBatchBuilder) from the
// running sequences, oldest first:
//  - a sequence whose tokens are all in the cache but the last (decoding)
//    brings that one token;
//  - a sequence still prefilling brings its next chunk, while the step's
//    prefill budget (prefill_chunk tokens) lasts; decodes take no budget, so
//    a long prompt costs the running streams at most one chunk a step;
//  - each sequence first reserves the blocks its new positions need. When
//    the pool is short, the newest running sequence not yet in the batch
//    (possibly this one) is preempted: its blocks go back to the pool and it
//    waits at the front of the queue, to be prefilled again from its prompt
//    and the tokens it has generated (vLLM's recompute preemption). Its
//    output is unchanged: rows do not depend on the batch (Note [Paged KV
//    cache]), so the recomputed cache holds the same bits.
// Waiting requests join, first come first served, while a slot is free.
// After the forward pass, every sequence whose chunk reached its last token
// samples the next from that token's logits, with its own splitmix64
// stream, so sampling does not depend on the batch either.
#include "loom/serve/engine.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "loom/error.h"
#include "loom/splitmix64.h"

namespace loom::serve {

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::Stop: return "stop";
    case FinishReason::Length: return "length";
    case FinishReason::Cancelled: return "cancelled";
    case FinishReason::None: break;
  }
  return "none";
}

struct LlmEngine::Sequence {
  uint64_t id = 0;
  std::vector<int64_t> tokens;  // the prompt, then what was generated
  int64_t prompt_len = 0;
  int64_t cached = 0;  // positions whose keys and values are in the cache
  std::vector<int64_t> table;
  SamplingParams params;
  TokenSink sink;
  uint64_t rng = 0;
  int64_t emitted = 0;           // generated tokens sent to the sink
  std::vector<double> logprobs;  // of each generated token
  bool done = false;             // finished: its sink heard the end
  int64_t generated() const { return static_cast<int64_t>(tokens.size()) - prompt_len; }
};

namespace {

// log softmax(logits)[token], in double.
double log_prob(const float* logits, int64_t v, int64_t token) {
  const double mx = *std::max_element(logits, logits + v);
  double sum = 0;
  for (int64_t i = 0; i < v; ++i) sum += std::exp(static_cast<double>(logits[i]) - mx);
  return static_cast<double>(logits[token]) - mx - std::log(sum);
}

// One token from a row of logits: the first largest at temperature 0,
// else a draw from softmax(logits / temperature) restricted to the top_k
// largest, then to the smallest set (by decreasing probability, ties by
// index) whose probability reaches top_p.
int64_t sample(const float* logits, int64_t v, const SamplingParams& p, uint64_t& state) {
  if (p.temperature <= 0) return static_cast<int64_t>(std::max_element(logits, logits + v) - logits);
  std::vector<int64_t> order(static_cast<size_t>(v));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return logits[a] > logits[b]; });
  size_t keep = p.top_k > 0 && p.top_k < v ? static_cast<size_t>(p.top_k) : order.size();
  const double mx = logits[order[0]] / p.temperature;
  std::vector<double> w(keep);
  double sum = 0;
  for (size_t i = 0; i < keep; ++i) sum += (w[i] = std::exp(logits[order[i]] / p.temperature - mx));
  if (p.top_p < 1) {
    double acc = 0;
    size_t n = 0;
    while (n < keep && acc < p.top_p * sum) acc += w[n++];
    keep = std::max<size_t>(n, 1);
    sum = std::accumulate(w.begin(), w.begin() + static_cast<std::ptrdiff_t>(keep), 0.0);
  }
  const double u = static_cast<double>(splitmix64_next(state) >> 11) * 0x1.0p-53 * sum;
  double acc = 0;
  for (size_t i = 0; i < keep; ++i) {
    acc += w[i];
    if (u < acc) return order[i];
  }
  return order[keep - 1];
}

// How many trailing tokens of `out` could still start a stop sequence (a
// proper prefix of one), and whether `out` ends with one (its length).
struct StopMatch {
  int64_t held = 0;
  int64_t matched = 0;
};
StopMatch match_stop(const std::vector<int64_t>& out, size_t from, const std::vector<std::vector<int64_t>>& stops) {
  StopMatch m;
  const size_t n = out.size() - from;
  for (const auto& s : stops) {
    if (s.size() <= n && std::equal(s.begin(), s.end(), out.end() - static_cast<std::ptrdiff_t>(s.size()))) {
      m.matched = static_cast<int64_t>(s.size());
      return m;
    }
    for (size_t len = std::min(s.size() - 1, n); len > static_cast<size_t>(m.held); --len)
      if (std::equal(s.begin(), s.begin() + static_cast<std::ptrdiff_t>(len),
                     out.end() - static_cast<std::ptrdiff_t>(len))) {
        m.held = static_cast<int64_t>(len);
        break;
      }
  }
  return m;
}

}  // namespace

LlmEngine::LlmEngine(models::GPT model, EngineOptions options) : model_(std::move(model)), options_(options) {
  LOOM_CHECK(options_.slots > 0 && options_.block_size > 0 && options_.prefill_chunk > 0 && options_.kv_cache_mb > 0,
             "LlmEngine: slots, block_size, prefill_chunk and kv_cache_mb must be positive, got ", options_.slots, ", ",
             options_.block_size, ", ", options_.prefill_chunk, ", ", options_.kv_cache_mb);
  model_->eval();
  const int64_t block_bytes = model_->paged_block_bytes(options_.block_size);
  const auto blocks = static_cast<int64_t>(options_.kv_cache_mb * 1024 * 1024 / static_cast<double>(block_bytes));
  const int64_t context_blocks = (model_->config.block_size + options_.block_size - 1) / options_.block_size;
  LOOM_CHECK(blocks >= context_blocks, "LlmEngine: --kv-cache-mb ", options_.kv_cache_mb, " holds ", blocks,
             " blocks of ", options_.block_size, " positions (", block_bytes, " bytes each); one full context of ",
             model_->config.block_size, " positions needs ", context_blocks);
  cache_ = model_->make_paged_cache(blocks, options_.block_size);
  stats_.kv_blocks_total = blocks;
}

LlmEngine::~LlmEngine() { stop(); }

uint64_t LlmEngine::submit(std::vector<int64_t> prompt, SamplingParams params, TokenSink sink) {
  const models::GPTConfig& c = model_->config;
  LOOM_CHECK(!prompt.empty(), "LlmEngine: the prompt is empty");
  LOOM_CHECK(static_cast<int64_t>(prompt.size()) < c.block_size, "LlmEngine: the prompt has ", prompt.size(),
             " tokens; the model's context is ", c.block_size, " (at most ", c.block_size - 1, " for a prompt)");
  for (int64_t t : prompt)
    LOOM_CHECK(t >= 0 && t < c.vocab_size, "LlmEngine: token ", t, " is outside the vocabulary of ", c.vocab_size);
  LOOM_CHECK(params.max_tokens >= 1, "LlmEngine: max_tokens must be >= 1, got ", params.max_tokens);
  LOOM_CHECK(params.temperature >= 0 && std::isfinite(params.temperature),
             "LlmEngine: temperature must be >= 0, got ", params.temperature);
  LOOM_CHECK(params.top_p > 0 && params.top_p <= 1, "LlmEngine: top_p must be in (0, 1], got ", params.top_p);
  LOOM_CHECK(params.top_k >= 0, "LlmEngine: top_k must be >= 0, got ", params.top_k);
  for (const auto& s : params.stop) LOOM_CHECK(!s.empty(), "LlmEngine: a stop sequence is empty");
  LOOM_CHECK(sink != nullptr, "LlmEngine: no sink for the request's tokens");
  auto s = std::make_unique<Sequence>();
  s->prompt_len = static_cast<int64_t>(prompt.size());
  s->tokens = std::move(prompt);
  s->params = std::move(params);
  s->sink = std::move(sink);
  s->rng = s->params.seed;
  std::lock_guard<std::mutex> lock(mu_);
  s->id = next_id_++;
  const uint64_t id = s->id;
  stats_.prompt_tokens += s->prompt_len;
  incoming_.push_back(std::move(s));
  ++stats_.waiting;
  wake_.notify_one();
  return id;
}

void LlmEngine::cancel(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  cancelled_.push_back(id);
  wake_.notify_one();
}

void LlmEngine::finish(Sequence& s, FinishReason reason) {
  cache_.release(s.table);
  s.cached = 0;
  s.done = true;
  TokenEvent e;
  // Tokens held back for a stop sequence that never came are output too.
  const int64_t end = s.generated();
  for (int64_t i = s.emitted; i < end && reason != FinishReason::Stop; ++i) {
    e.tokens.push_back(s.tokens[static_cast<size_t>(s.prompt_len + i)]);
    if (s.params.logprobs) e.logprobs.push_back(s.logprobs[static_cast<size_t>(i)]);
  }
  s.emitted = end;
  e.finish = reason;
  e.prompt_tokens = s.prompt_len;
  e.generated_tokens = s.emitted;
  s.sink(e);
}

void LlmEngine::sample_and_emit(Sequence& s, const float* logits) {
  const int64_t v = model_->config.vocab_size;
  const int64_t token = sample(logits, v, s.params, s.rng);
  s.tokens.push_back(token);
  if (s.params.logprobs) s.logprobs.push_back(log_prob(logits, v, token));
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.generated_tokens;
  }
  std::vector<int64_t> out(s.tokens.begin() + s.prompt_len, s.tokens.end());
  const StopMatch m = match_stop(out, static_cast<size_t>(s.emitted), s.params.stop);
  if (m.matched > 0) {
    // Send what precedes the stop sequence, then finish without it.
    s.tokens.resize(s.tokens.size() - static_cast<size_t>(m.matched));
    if (s.params.logprobs) s.logprobs.resize(static_cast<size_t>(s.generated()));
    TokenEvent e;
    for (int64_t i = s.emitted; i < s.generated(); ++i) {
      e.tokens.push_back(s.tokens[static_cast<size_t>(s.prompt_len + i)]);
      if (s.params.logprobs) e.logprobs.push_back(s.logprobs[static_cast<size_t>(i)]);
    }
    s.emitted = s.generated();
    if (!e.tokens.empty()) {
      e.prompt_tokens = s.prompt_len;
      e.generated_tokens = s.emitted;
      s.sink(e);
    }
    finish(s, FinishReason::Stop);
    return;
  }
  const bool at_limit = s.generated() >= s.params.max_tokens ||
                        static_cast<int64_t>(s.tokens.size()) >= model_->config.block_size;
  if (at_limit) {
    finish(s, FinishReason::Length);
    return;
  }
  const int64_t ready = s.generated() - m.held;
  if (ready <= s.emitted) return;
  TokenEvent e;
  for (int64_t i = s.emitted; i < ready; ++i) {
    e.tokens.push_back(s.tokens[static_cast<size_t>(s.prompt_len + i)]);
    if (s.params.logprobs) e.logprobs.push_back(s.logprobs[static_cast<size_t>(i)]);
  }
  s.emitted = ready;
  e.prompt_tokens = s.prompt_len;
  e.generated_tokens = s.emitted;
  s.sink(e);
}

bool LlmEngine::step() {
  std::vector<uint64_t> cancelled;
  {
    std::lock_guard<std::mutex> lock(mu_);
    while (!incoming_.empty()) {
      waiting_.push_back(std::move(incoming_.front()));
      incoming_.pop_front();
    }
    cancelled.swap(cancelled_);
  }
  // Cancellations first: a dropped client's slot is free for this step.
  for (uint64_t id : cancelled) {
    auto is = [id](const std::unique_ptr<Sequence>& s) { return s->id == id; };
    if (auto it = std::find_if(running_.begin(), running_.end(), is); it != running_.end()) {
      finish(**it, FinishReason::Cancelled);
      running_.erase(it);
    } else if (auto w = std::find_if(waiting_.begin(), waiting_.end(), is); w != waiting_.end()) {
      finish(**w, FinishReason::Cancelled);
      waiting_.erase(w);
    }
  }
  while (static_cast<int64_t>(running_.size()) < options_.slots && !waiting_.empty()) {
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }

  models::PagedBatchBuilder builder(options_.block_size);
  struct Planned {
    Sequence* seq;
    int64_t n;    // positions this step
    int64_t row;  // the batch row of its last token
  };
  std::vector<Planned> planned;
  int64_t budget = options_.prefill_chunk;
  int64_t preemptions = 0;
  for (size_t i = 0; i < running_.size(); ++i) {
    Sequence& s = *running_[i];
    const int64_t pending = static_cast<int64_t>(s.tokens.size()) - s.cached;
    const bool decoding = pending == 1;
    const int64_t n = decoding ? 1 : std::min(pending, budget);
    if (n == 0) continue;
    // Blocks for the new positions; preempt the newest sequences not yet in
    // the batch (this one last) until they fit.
    bool fits = cache_.reserve(s.table, s.cached + n);
    while (!fits && running_.size() > i + 1) {
      std::unique_ptr<Sequence> victim = std::move(running_.back());
      running_.pop_back();
      cache_.release(victim->table);
      victim->cached = 0;
      waiting_.push_front(std::move(victim));
      ++preemptions;
      fits = cache_.reserve(s.table, s.cached + n);
    }
    if (!fits) {
      std::unique_ptr<Sequence> self = std::move(running_[i]);
      running_.erase(running_.begin() + static_cast<std::ptrdiff_t>(i));
      cache_.release(self->table);
      self->cached = 0;
      waiting_.push_front(std::move(self));
      ++preemptions;
      break;
    }
    if (!decoding) budget -= n;
    const int64_t row = builder.add(
        s.table, s.cached,
        std::vector<int64_t>(s.tokens.begin() + s.cached, s.tokens.begin() + s.cached + n));
    planned.push_back({&s, n, row});
  }

  if (!planned.empty()) {
    const auto [tokens, batch] = builder.build();
    const Tensor logits = model_->forward(tokens, batch, cache_).contiguous();
    const float* rows = logits.data_ptr<float>();
    const int64_t v = model_->config.vocab_size;
    for (const Planned& p : planned) {
      p.seq->cached += p.n;
      if (p.seq->cached == static_cast<int64_t>(p.seq->tokens.size())) sample_and_emit(*p.seq, rows + p.row * v);
    }
    // Finished sequences released their blocks in finish(): drop them.
    running_.erase(std::remove_if(running_.begin(), running_.end(),
                                  [](const std::unique_ptr<Sequence>& s) { return s->done; }),
                   running_.end());
  }
  int64_t positions = 0;
  for (const auto& r : running_) positions += r->cached;
  std::lock_guard<std::mutex> lock(mu_);
  stats_.steps += planned.empty() ? 0 : 1;
  stats_.preemptions += preemptions;
  stats_.running = static_cast<int64_t>(running_.size());
  stats_.waiting = static_cast<int64_t>(waiting_.size() + incoming_.size());
  stats_.kv_blocks_used = cache_.blocks.num_blocks() - cache_.blocks.num_free();
  stats_.kv_positions = positions;
  return !planned.empty() || !cancelled.empty() || preemptions > 0;
}

void LlmEngine::start() {
  std::lock_guard<std::mutex> lock(mu_);
  LOOM_CHECK(!thread_.joinable(), "LlmEngine::start: already started");
  stop_ = false;
  thread_ = std::thread([this] {
    while (true) {
      if (step()) continue;
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock, [this] { return stop_ || !incoming_.empty() || !cancelled_.empty(); });
      if (stop_) return;
    }
  });
}

void LlmEngine::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    wake_.notify_all();
  }
  if (thread_.joinable()) thread_.join();
}

EngineStats LlmEngine::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

}  // namespace loom::serve
