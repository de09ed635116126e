// Continuous batching over a paged KV cache (include/loom/serve/engine.h).
//
// Note [Continuous batching]
// A step builds one flattened batch (models::PagedBatchBuilder) from the
// running sequences, oldest first:
//  - a sequence that has generated and whose tokens are all in the cache
//    but the last (decoding) brings that one token (with a draft model,
//    that token and its drafts: Note [Speculative decoding]);
//  - a sequence still prefilling brings its next chunk, while the step's
//    prefill budget (prefill_chunk tokens) lasts; decodes take no budget, so
//    a long prompt costs the running streams at most one chunk a step. A
//    prompt is prefilled to its end, whose row gives the first token; a
//    preempted sequence is prefilled again up to its last token, which it
//    then decodes as it would have had it not been preempted, so where
//    speculation starts does not depend on chunks or preemption;
//  - each sequence first reserves the blocks its new positions need. When
//    the pool is short, the newest running sequence not yet in the batch
//    (possibly this one) is preempted: its blocks go back to the pool and it
//    waits at the front of the queue, to be prefilled again from its prompt
//    and the tokens it has generated (vLLM's recompute preemption). Its
//    output is unchanged: rows do not depend on the batch (Note [Paged KV
//    cache]), so the recomputed cache holds the same bits.
// Before the batch is planned, requests end early: cancel(), a deadline
// passed or a client gone (RequestControl) finish every choice of theirs,
// so their slots and blocks serve this very step. Waiting requests then
// join, first come first served, while their slots are free; the first
// in line is never passed, so none starves.
// After the forward pass, every sequence whose chunk reached its last token
// samples the next from that token's logits, with its own splitmix64
// stream, so sampling does not depend on the batch either.
//
// n > 1 choices (vLLM's parallel sampling) share the prompt's cache. A
// request enters as one sequence holding n slots; its prompt is prefilled
// once, and the step that completes it forks n - 1 siblings that take a
// reference to every block of its table (BlockAllocator::retain) and sample
// their first tokens from the same row of logits, choice i from the stream
// of seed + i. A sequence about to write a position into a block that
// another table also holds (ref_count > 1) first copies the block into a
// fresh one and swaps it into its table (copy-on-write, reserve_for_write):
// only the prompt's last, partial block is ever copied, by every choice but
// the last to write it, and full prompt blocks stay shared until the last
// choice ends. A preempted choice drops its references and is recomputed
// from its own tokens, in blocks of its own; a request preempted before its
// prompt was forked still needs its n slots to come back.
//
// Note [Speculative decoding]
// With a draft model (Leviathan et al., 2023; Chen et al., 2023), a
// decoding sequence of length L gains up to K + 1 tokens from one forward
// pass of the model:
//  - the draft proposes k = min(K, tokens left before max_tokens - 1,
//    context left - 1) tokens by k batched forwards over every speculating
//    sequence (propose), drawing each from its warped distribution q
//    (temperature, top_k, top_p, as the plain sampler) with the sequence's
//    stream. The first forward also catches the draft up on tokens it has
//    not seen (the last step's bonus token) and carries the step's prefill
//    chunks, so the draft's cache follows the model's through the prompt;
//  - the model runs the sequence's last token and the k drafts (positions
//    L - 1 .. L - 1 + k) in the step's one batch, giving p_1..p_{k+1}
//    (verify);
//  - draft j is kept with probability min(1, p_j(x) / q_j(x)); the first
//    rejected one is replaced by a draw from normalize(max(0, p_j - q_j));
//    when all are kept, a bonus token is drawn from p_{k+1}. Every token is
//    then distributed as the model alone samples it (speculative_accept,
//    tested on its statistics); the draws come from the same stream, so a
//    sampled output is reproducible and batch-independent, but not the
//    tokens of decoding without a draft. At temperature 0 a draft is kept
//    iff it is the model's argmax, and a rejected one becomes that argmax:
//    the output is the bits of decoding without a draft, since a row of the
//    paged forward depends on its sequence alone, however its positions are
//    chunked (Note [Paged KV cache]).
// The model keeps L + (drafts kept) positions cached, the draft as many at
// most; the keys and values past them are stale and are overwritten before
// anything reads them. Tokens go through the same stop-sequence and limit
// checks one at a time (append), with log-probabilities from the model's
// rows, then out in one event.
// The draft's pool mirrors the model's block for block: a sequence's one
// table indexes both, so reserving, sharing, copy-on-write and preemption
// cover the draft without bookkeeping of its own, and the draft, whose
// positions never run ahead of the model's, is never short of blocks.
// kv_cache_mb pays for both.
#include "loom/serve/engine.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "loom/error.h"
#include "loom/splitmix64.h"

namespace loom::serve {

using Clock = std::chrono::steady_clock;

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::Stop: return "stop";
    case FinishReason::Length: return "length";
    case FinishReason::Cancelled: return "cancelled";
    case FinishReason::Timeout: return "timeout";
    case FinishReason::None: break;
  }
  return "none";
}

void Histogram::observe(double seconds) {
  const size_t b = static_cast<size_t>(std::lower_bound(bounds.begin(), bounds.end(), seconds) - bounds.begin());
  ++counts[b];
  sum += seconds;
  ++count;
}

Histogram latency_histogram() {
  Histogram h;
  h.bounds = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
  h.counts.assign(h.bounds.size() + 1, 0);
  return h;
}

// What the choices of one request share.
struct LlmEngine::Request {
  uint64_t id = 0;
  SamplingParams params;
  TokenSink sink;
  RequestControl control;
  Clock::time_point submitted;
  int64_t prompt_len = 0;
  int64_t live = 0;  // choices that have not ended
};

// One choice of a request (before its prompt is forked: all of them).
struct LlmEngine::Sequence {
  std::shared_ptr<Request> req;
  int64_t index = 0;            // which choice
  int64_t forks = 0;            // siblings to fork when the prompt's prefill completes (n - 1, then 0)
  std::vector<int64_t> tokens;  // the prompt, then what was generated
  int64_t cached = 0;           // positions whose keys and values are in the model's pool
  int64_t draft_cached = 0;     // and in the draft's
  std::vector<int64_t> table;   // block ids, of both pools
  uint64_t rng = 0;
  int64_t emitted = 0;           // generated tokens sent to the sink
  int64_t held = 0;              // generated tokens held back: they may start a stop sequence
  std::vector<double> logprobs;  // of each generated token
  std::vector<std::vector<std::pair<int64_t, double>>> top_logprobs;
  bool sent = false;             // whether it sent any token
  Clock::time_point last_sent;   // when it last did
  bool done = false;             // finished: its sink heard the end
  const SamplingParams& params() const { return req->params; }
  int64_t prompt_len() const { return req->prompt_len; }
  int64_t generated() const { return static_cast<int64_t>(tokens.size()) - prompt_len(); }
  int64_t slots() const { return 1 + forks; }
};

// A sequence's rows in the step's batch, other than speculation's.
struct LlmEngine::Planned {
  Sequence* seq;
  int64_t n;     // positions this step
  bool draft;    // the draft runs them too (it has seen everything before them)
  int64_t row;   // the batch row of its last token
};

// A decoding sequence that speculates this step.
struct LlmEngine::Speculation {
  Sequence* seq;
  int64_t k;                           // draft tokens
  std::vector<int64_t> drafts;         // (k)
  std::vector<std::vector<double>> q;  // the draft's distribution of each, over the vocabulary (temperature > 0)
  int64_t row = 0;                     // the model's batch row of the last draft
};

namespace {

double uniform(uint64_t& state) { return static_cast<double>(splitmix64_next(state) >> 11) * 0x1.0p-53; }

int64_t argmax(const float* logits, int64_t v) {  // the first largest
  return static_cast<int64_t>(std::max_element(logits, logits + v) - logits);
}

std::vector<int64_t> slice(const std::vector<int64_t>& v, int64_t from, int64_t to) {
  return {v.begin() + static_cast<std::ptrdiff_t>(from), v.begin() + static_cast<std::ptrdiff_t>(to)};
}

// log softmax of a row of logits, in double: (logit - max) - log sum exp(logits - max).
struct LogSoftmax {
  double max = 0, log_sum = 0;
  LogSoftmax(const float* logits, int64_t v) {
    max = *std::max_element(logits, logits + v);
    double sum = 0;
    for (int64_t i = 0; i < v; ++i) sum += std::exp(static_cast<double>(logits[i]) - max);
    log_sum = std::log(sum);
  }
  double operator()(float logit) const { return static_cast<double>(logit) - max - log_sum; }
};

// The n most likely tokens of a row and their log-probabilities, most
// likely first, ties by lower id.
std::vector<std::pair<int64_t, double>> top_log_probs(const float* logits, int64_t v, int64_t n,
                                                      const LogSoftmax& log_softmax) {
  std::vector<int64_t> ids(static_cast<size_t>(v));
  std::iota(ids.begin(), ids.end(), 0);
  std::partial_sort(ids.begin(), ids.begin() + n, ids.end(),
                    [&](int64_t a, int64_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
  std::vector<std::pair<int64_t, double>> top;
  for (auto it = ids.begin(); it != ids.begin() + n; ++it) top.emplace_back(*it, log_softmax(logits[*it]));
  return top;
}

// The sampler of `loom generate` and GPT::generate (models::sample_token),
// with a request's parameters.
models::GenerateOptions generate_options(const SamplingParams& p) {
  models::GenerateOptions o;
  o.temperature = p.temperature;
  o.top_k = p.top_k;
  o.top_p = p.top_p;
  return o;
}

// How many trailing tokens of `out` could still start a stop sequence (a
// proper prefix of one), and whether `out` ends with one (its length). Only
// out[from:] is searched: what was sent cannot be taken back.
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

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

SpeculativeDraw speculative_accept(const std::vector<double>& p, const std::vector<double>& q, int64_t draft,
                                   uint64_t& state) {
  LOOM_CHECK(p.size() == q.size() && draft >= 0 && draft < static_cast<int64_t>(p.size()),
             "speculative_accept: p and q must cover one vocabulary (", p.size(), " and ", q.size(),
             " tokens) that holds the draft ", draft);
  const auto x = static_cast<size_t>(draft);
  // u < p(x) / q(x), without dividing.
  if (uniform(state) * q[x] < p[x]) return {draft, true};
  double sum = 0;
  for (size_t i = 0; i < p.size(); ++i) sum += std::max(0.0, p[i] - q[i]);
  // sum is 0 only when p == q, where nothing is rejected; rounding aside,
  // draw from p then.
  const bool residual = sum > 0;
  const double u = uniform(state) * (residual ? sum : std::accumulate(p.begin(), p.end(), 0.0));
  double acc = 0;
  int64_t last = draft;
  for (size_t i = 0; i < p.size(); ++i) {
    const double w = residual ? std::max(0.0, p[i] - q[i]) : p[i];
    if (w <= 0) continue;
    last = static_cast<int64_t>(i);
    acc += w;
    if (u < acc) break;
  }
  return {last, false};
}

LlmEngine::LlmEngine(models::GPT model, EngineOptions options)
    : model_(std::move(model)), options_(std::move(options)) {
  LOOM_CHECK(options_.slots > 0 && options_.block_size > 0 && options_.prefill_chunk > 0 && options_.kv_cache_mb > 0,
             "LlmEngine: slots, block_size, prefill_chunk and kv_cache_mb must be positive, got ", options_.slots, ", ",
             options_.block_size, ", ", options_.prefill_chunk, ", ", options_.kv_cache_mb);
  model_->eval();
  const models::GPTConfig& c = model_->config;
  int64_t block_bytes = model_->paged_block_bytes(options_.block_size);
  const bool draft = !options_.draft.is_empty();
  if (draft) {
    const models::GPTConfig& d = options_.draft->config;
    LOOM_CHECK(d.vocab_size == c.vocab_size, "LlmEngine: the draft model's vocab_size is ", d.vocab_size,
               "; the model's is ", c.vocab_size, " (speculation needs one vocabulary)");
    LOOM_CHECK(d.block_size >= c.block_size, "LlmEngine: the draft model's context (block_size ", d.block_size,
               ") is shorter than the model's, ", c.block_size);
    LOOM_CHECK(options_.draft_tokens >= 1 && options_.draft_tokens <= 16,
               "LlmEngine: draft_tokens must be in [1, 16], got ", options_.draft_tokens);
    options_.draft->eval();
    block_bytes += options_.draft->paged_block_bytes(options_.block_size);
  }
  const auto blocks = static_cast<int64_t>(options_.kv_cache_mb * 1024 * 1024 / static_cast<double>(block_bytes));
  const int64_t context_blocks = (c.block_size + options_.block_size - 1) / options_.block_size;
  LOOM_CHECK(blocks >= context_blocks, "LlmEngine: --kv-cache-mb ", options_.kv_cache_mb, " holds ", blocks,
             " blocks of ", options_.block_size, " positions (", block_bytes, " bytes each",
             draft ? ", the draft model's included" : "", "); one full context of ", c.block_size, " positions needs ",
             context_blocks);
  cache_ = model_->make_paged_cache(blocks, options_.block_size);
  if (draft) draft_cache_ = options_.draft->make_paged_cache(blocks, options_.block_size);
  stats_.kv_blocks_total = blocks;
}

LlmEngine::~LlmEngine() { stop(); }

uint64_t LlmEngine::submit(std::vector<int64_t> prompt, SamplingParams params, TokenSink sink,
                           RequestControl control) {
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
  LOOM_CHECK(params.top_logprobs >= 0 && params.top_logprobs <= 20, "LlmEngine: top_logprobs must be in [0, 20], got ",
             params.top_logprobs);
  LOOM_CHECK(params.top_logprobs <= c.vocab_size, "LlmEngine: top_logprobs ", params.top_logprobs,
             " exceeds the vocabulary of ", c.vocab_size);
  LOOM_CHECK(params.n >= 1 && params.n <= options_.slots, "LlmEngine: n must be in [1, ", options_.slots,
             "] (the engine's slots), got ", params.n);
  for (const auto& s : params.stop) LOOM_CHECK(!s.empty(), "LlmEngine: a stop sequence is empty");
  LOOM_CHECK(sink != nullptr, "LlmEngine: no sink for the request's tokens");
  auto r = std::make_shared<Request>();
  r->prompt_len = static_cast<int64_t>(prompt.size());
  r->params = std::move(params);
  r->sink = std::move(sink);
  r->control = std::move(control);
  r->submitted = Clock::now();
  r->live = r->params.n;
  auto s = std::make_unique<Sequence>();
  s->req = r;
  s->forks = r->params.n - 1;
  s->tokens = std::move(prompt);
  s->rng = r->params.seed;
  std::lock_guard<std::mutex> lock(mu_);
  r->id = next_id_++;
  stats_.prompt_tokens += r->prompt_len;
  incoming_.push_back(std::move(s));
  ++stats_.waiting;
  wake_.notify_one();
  return r->id;
}

void LlmEngine::cancel(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  cancelled_.push_back(id);
  wake_.notify_one();
}

void LlmEngine::send(Sequence& s, int64_t upto, FinishReason reason) {
  if (upto <= s.emitted && reason == FinishReason::None) return;
  const SamplingParams& p = s.params();
  TokenEvent e;
  e.index = s.index;
  for (int64_t i = s.emitted; i < upto; ++i) {
    const auto at = static_cast<size_t>(i);
    e.tokens.push_back(s.tokens[static_cast<size_t>(s.prompt_len()) + at]);
    if (p.logprobs) e.logprobs.push_back(s.logprobs[at]);
    if (p.logprobs && p.top_logprobs > 0) e.top_logprobs.push_back(s.top_logprobs[at]);
  }
  s.emitted = std::max(s.emitted, upto);
  e.finish = reason;
  e.prompt_tokens = s.prompt_len();
  e.generated_tokens = s.emitted;
  if (!e.tokens.empty()) {
    const Clock::time_point now = Clock::now();
    auto rest = static_cast<int64_t>(e.tokens.size());
    std::lock_guard<std::mutex> lock(mu_);
    if (!s.sent) {
      stats_.time_to_first_token.observe(seconds(now - s.req->submitted));
      --rest;
    }
    const double each = s.sent ? seconds(now - s.last_sent) / static_cast<double>(rest) : 0.0;
    for (int64_t i = 0; i < rest; ++i) stats_.inter_token_latency.observe(each);
    s.sent = true;
    s.last_sent = now;
  }
  s.req->sink(e);  // without the lock: it may cancel
}

void LlmEngine::finish(Sequence& s, FinishReason reason) {
  cache_.release(s.table);
  s.cached = s.draft_cached = 0;
  s.done = true;
  // Tokens held back for a stop sequence that never came go out too.
  send(s, s.generated(), reason);
  // Choices not yet forked end with it (their request ended before its
  // prompt was prefilled).
  for (int64_t i = 1; i <= s.forks; ++i) {
    TokenEvent e;
    e.index = s.index + i;
    e.finish = reason;
    e.prompt_tokens = s.prompt_len();
    s.req->sink(e);
  }
  Request& r = *s.req;
  r.live -= s.slots();
  s.forks = 0;
  if (r.live > 0) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (reason == FinishReason::Cancelled) {
    ++stats_.cancelled;
  } else if (reason == FinishReason::Timeout) {
    ++stats_.timed_out;
  } else {
    ++stats_.finished;
  }
}

bool LlmEngine::append(Sequence& s, int64_t token, const float* logits) {
  const int64_t v = model_->config.vocab_size;
  const SamplingParams& p = s.params();
  s.tokens.push_back(token);
  if (p.logprobs) {
    const LogSoftmax log_softmax(logits, v);
    s.logprobs.push_back(log_softmax(logits[token]));
    if (p.top_logprobs > 0) s.top_logprobs.push_back(top_log_probs(logits, v, p.top_logprobs, log_softmax));
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.generated_tokens;
  }
  const StopMatch m = match_stop(s.tokens, static_cast<size_t>(s.prompt_len() + s.emitted), p.stop);
  if (m.matched > 0) {
    // The output ends before the stop sequence.
    s.tokens.resize(s.tokens.size() - static_cast<size_t>(m.matched));
    const auto kept = static_cast<size_t>(s.generated());
    s.logprobs.resize(std::min(s.logprobs.size(), kept));
    s.top_logprobs.resize(std::min(s.top_logprobs.size(), kept));
    finish(s, FinishReason::Stop);
    return true;
  }
  if (s.generated() >= p.max_tokens || static_cast<int64_t>(s.tokens.size()) >= model_->config.block_size) {
    finish(s, FinishReason::Length);
    return true;
  }
  s.held = m.held;
  return false;
}

void LlmEngine::sample_and_emit(Sequence& s, const float* logits) {
  if (!append(s, models::sample_token(logits, model_->config.vocab_size, generate_options(s.params()), s.rng), logits))
    send(s, s.generated() - s.held, FinishReason::None);
}

std::vector<std::unique_ptr<LlmEngine::Sequence>> LlmEngine::fork(Sequence& s) {
  LOOM_ASSERT(s.forks == 0 || s.generated() == 0, "LlmEngine: a sequence forks once, from its prompt");
  std::vector<std::unique_ptr<Sequence>> siblings;
  for (int64_t i = 1; i <= s.forks; ++i) {
    auto f = std::make_unique<Sequence>();
    f->req = s.req;
    f->index = s.index + i;
    f->tokens = s.tokens;
    f->cached = s.cached;
    f->draft_cached = s.draft_cached;
    f->table = s.table;
    for (int64_t b : f->table) cache_.blocks.retain(b);
    f->rng = s.params().seed + static_cast<uint64_t>(f->index);
    siblings.push_back(std::move(f));
  }
  s.forks = 0;
  return siblings;
}

bool LlmEngine::reserve_for_write(Sequence& s, int64_t from, int64_t to) {
  models::BlockAllocator& blocks = cache_.blocks;
  const int64_t bs = options_.block_size;
  const auto held = static_cast<int64_t>(s.table.size());
  const int64_t needed = (to + bs - 1) / bs;
  std::vector<size_t> shared;
  for (int64_t b = from / bs; b < std::min(held, needed); ++b)
    if (blocks.ref_count(s.table[static_cast<size_t>(b)]) > 1) shared.push_back(static_cast<size_t>(b));
  if (static_cast<int64_t>(shared.size()) + std::max<int64_t>(0, needed - held) > blocks.num_free()) return false;
  for (size_t b : shared) {
    const int64_t copy = *blocks.allocate();
    cache_.copy_block(s.table[b], copy);
    if (!options_.draft.is_empty()) draft_cache_.copy_block(s.table[b], copy);
    blocks.release(s.table[b]);
    s.table[b] = copy;
  }
  const bool reserved = cache_.reserve(s.table, to);
  LOOM_ASSERT(reserved, "LlmEngine: blocks counted free were not");
  return true;
}

void LlmEngine::preempt(std::unique_ptr<Sequence> s) {
  cache_.release(s->table);
  s->cached = s->draft_cached = 0;
  waiting_.push_front(std::move(s));
}

int64_t LlmEngine::speculation_length(const Sequence& s) const {
  if (options_.draft.is_empty()) return 0;
  // k drafts and the token after them: within max_tokens and the context.
  const auto len = static_cast<int64_t>(s.tokens.size());
  return std::max<int64_t>(0, std::min({options_.draft_tokens, s.params().max_tokens - s.generated() - 1,
                                        model_->config.block_size - len - 1}));
}

int64_t LlmEngine::end_early(const std::vector<uint64_t>& cancelled) {
  const Clock::time_point now = Clock::now();
  // One verdict per request: its client is asked once a step.
  std::vector<std::pair<const Request*, FinishReason>> verdicts;
  auto verdict = [&](const Request& r) {
    for (const auto& [seen, reason] : verdicts)
      if (seen == &r) return reason;
    FinishReason reason = FinishReason::None;
    if (std::find(cancelled.begin(), cancelled.end(), r.id) != cancelled.end()) {
      reason = FinishReason::Cancelled;
    } else if (now >= r.control.deadline) {
      reason = FinishReason::Timeout;
    } else if (r.control.disconnected && r.control.disconnected()) {
      reason = FinishReason::Cancelled;
    }
    verdicts.emplace_back(&r, reason);
    return reason;
  };
  int64_t ended = 0;
  auto sweep = [&](auto& list) {
    for (auto it = list.begin(); it != list.end();) {
      const FinishReason reason = verdict(*(*it)->req);
      if (reason == FinishReason::None) {
        ++it;
        continue;
      }
      finish(**it, reason);
      ++ended;
      it = list.erase(it);
    }
  };
  sweep(running_);
  sweep(waiting_);
  return ended;
}

void LlmEngine::admit() {
  int64_t used = 0;
  for (const auto& s : running_) used += s->slots();
  while (!waiting_.empty() && used + waiting_.front()->slots() <= options_.slots) {
    used += waiting_.front()->slots();
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }
}

void LlmEngine::propose(const std::vector<Planned>& planned, std::vector<Speculation>& specs) {
  const int64_t v = model_->config.vocab_size;
  for (int64_t j = 0;; ++j) {
    models::PagedBatchBuilder builder(options_.block_size);
    std::vector<std::pair<Speculation*, int64_t>> rows;  // and their batch row
    if (j == 0)
      for (const Planned& p : planned)
        if (p.draft) builder.add(p.seq->table, p.seq->cached, slice(p.seq->tokens, p.seq->cached, p.seq->cached + p.n));
    for (Speculation& sp : specs) {
      if (j >= sp.k) continue;
      Sequence& s = *sp.seq;
      // First what the draft has not seen, up to the last token; then the last draft.
      const std::vector<int64_t> t = j == 0 ? slice(s.tokens, s.draft_cached, static_cast<int64_t>(s.tokens.size()))
                                            : std::vector<int64_t>{sp.drafts.back()};
      rows.emplace_back(&sp, builder.add(s.table, s.draft_cached, t));
      s.draft_cached += static_cast<int64_t>(t.size());
    }
    if (builder.num_tokens() == 0) return;
    const auto [tokens, batch] = builder.build();
    const Tensor logits = options_.draft->forward(tokens, batch, draft_cache_).contiguous();
    const float* out = logits.data_ptr<float>();
    if (j == 0)
      for (const Planned& p : planned)
        if (p.draft) p.seq->draft_cached += p.n;
    for (auto [sp, row] : rows) {
      Sequence& s = *sp->seq;
      const float* r = out + row * v;
      if (s.params().temperature <= 0) {
        sp->drafts.push_back(argmax(r, v));
      } else {
        const models::SamplingDistribution q = models::sampling_distribution(r, v, generate_options(s.params()));
        sp->drafts.push_back(q.draw(s.rng));
        sp->q.push_back(q.probabilities(v));
      }
    }
  }
}

void LlmEngine::verify(Speculation& sp, const float* rows) {
  Sequence& s = *sp.seq;
  const SamplingParams& p = s.params();
  const int64_t v = model_->config.vocab_size;
  const float* first = rows + (sp.row - sp.k) * v;  // predicts the token after the sequence's last
  int64_t kept = 0;
  int64_t next = -1;  // the token after the kept drafts
  for (; kept < sp.k; ++kept) {
    const float* row = first + kept * v;
    const int64_t d = sp.drafts[static_cast<size_t>(kept)];
    if (p.temperature <= 0) {
      if (const int64_t best = argmax(row, v); best != d) {
        next = best;
        break;
      }
    } else {
      const SpeculativeDraw r =
          speculative_accept(models::sampling_distribution(row, v, generate_options(p)).probabilities(v), sp.q[static_cast<size_t>(kept)], d, s.rng);
      if (!r.accepted) {
        next = r.token;
        break;
      }
    }
  }
  if (kept == sp.k) next = models::sample_token(first + sp.k * v, v, generate_options(p), s.rng);  // all kept: the bonus token
  s.cached = static_cast<int64_t>(s.tokens.size()) + kept;
  s.draft_cached = std::min(s.draft_cached, s.cached);
  {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.draft_proposed += sp.k;
    stats_.draft_accepted += kept;
  }
  for (int64_t j = 0; j <= kept; ++j)
    if (append(s, j < kept ? sp.drafts[static_cast<size_t>(j)] : next, first + j * v)) return;
  send(s, s.generated() - s.held, FinishReason::None);
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
  const int64_t ended = end_early(cancelled);
  admit();

  std::vector<Planned> planned;
  std::vector<Speculation> specs;
  int64_t budget = options_.prefill_chunk;
  int64_t preemptions = 0;
  const bool has_draft = !options_.draft.is_empty();
  for (size_t i = 0; i < running_.size(); ++i) {
    Sequence& s = *running_[i];
    const auto len = static_cast<int64_t>(s.tokens.size());
    const bool decoding = s.generated() > 0 && s.cached == len - 1;
    const int64_t k = decoding ? speculation_length(s) : 0;
    const int64_t n = decoding ? 1 + k : std::min((s.generated() > 0 ? len - 1 : len) - s.cached, budget);
    if (n == 0) continue;
    // The draft writes from where it stopped when speculating, else the
    // model's positions when it has seen all before them.
    const int64_t from = k > 0 ? std::min(s.cached, s.draft_cached) : s.cached;
    // Blocks for the new positions; preempt the newest sequences not yet in
    // the batch (this one last) until they fit.
    bool fits = reserve_for_write(s, from, s.cached + n);
    while (!fits && running_.size() > i + 1) {
      preempt(std::move(running_.back()));
      running_.pop_back();
      ++preemptions;
      fits = reserve_for_write(s, from, s.cached + n);
    }
    if (!fits) {
      std::unique_ptr<Sequence> self = std::move(running_[i]);
      running_.erase(running_.begin() + static_cast<std::ptrdiff_t>(i));
      preempt(std::move(self));
      ++preemptions;
      break;
    }
    if (k > 0) {
      specs.push_back({&s, k, {}, {}});
      continue;
    }
    if (!decoding) budget -= n;
    planned.push_back({&s, n, has_draft && s.draft_cached == s.cached, 0});
  }

  const bool forward = !planned.empty() || !specs.empty();
  if (forward) {
    if (has_draft) propose(planned, specs);
    models::PagedBatchBuilder builder(options_.block_size);
    for (Planned& p : planned)
      p.row = builder.add(p.seq->table, p.seq->cached, slice(p.seq->tokens, p.seq->cached, p.seq->cached + p.n));
    for (Speculation& sp : specs) {
      std::vector<int64_t> t{sp.seq->tokens.back()};
      t.insert(t.end(), sp.drafts.begin(), sp.drafts.end());
      sp.row = builder.add(sp.seq->table, sp.seq->cached, t);
    }
    const auto [tokens, batch] = builder.build();
    const Tensor logits = model_->forward(tokens, batch, cache_).contiguous();
    const float* rows = logits.data_ptr<float>();
    const int64_t v = model_->config.vocab_size;
    for (const Planned& p : planned) {
      Sequence& s = *p.seq;
      s.cached += p.n;
      if (s.cached < static_cast<int64_t>(s.tokens.size())) continue;
      // The prompt's prefill completed: its other choices start here, from
      // the same row.
      const float* row = rows + p.row * v;
      std::vector<std::unique_ptr<Sequence>> siblings = fork(s);
      sample_and_emit(s, row);
      for (auto& f : siblings) {
        sample_and_emit(*f, row);
        running_.push_back(std::move(f));
      }
    }
    for (Speculation& sp : specs) verify(sp, rows);
    // Finished sequences released their blocks in finish(): drop them.
    running_.erase(std::remove_if(running_.begin(), running_.end(),
                                  [](const std::unique_ptr<Sequence>& s) { return s->done; }),
                   running_.end());
  }
  int64_t positions = 0;
  for (const auto& r : running_) positions += r->cached;
  std::lock_guard<std::mutex> lock(mu_);
  stats_.steps += forward ? 1 : 0;
  stats_.preemptions += preemptions;
  stats_.running = static_cast<int64_t>(running_.size());
  stats_.waiting = static_cast<int64_t>(waiting_.size() + incoming_.size());
  stats_.kv_blocks_used = cache_.blocks.num_blocks() - cache_.blocks.num_free();
  stats_.kv_positions = positions;
  return forward || ended > 0 || preemptions > 0;
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
