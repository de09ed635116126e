// serve::LlmEngine: continuous batching over the paged KV cache (Note
// [Continuous batching] in src/serve/engine.cpp).
#include <gtest/gtest.h>
#include <loom/loom.h>
#include <loom/serve/engine.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <iostream>
#include <map>
#include <mutex>
#include <numeric>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <loom/splitmix64.h>

#include "../test_util.h"

namespace {

using namespace loom;
using loom::test::error_of;
using serve::FinishReason;
using serve::LlmEngine;
using serve::SamplingParams;
using serve::TokenEvent;
using TopLogprobs = std::vector<std::vector<std::pair<int64_t, double>>>;

models::GPT small_gpt(uint64_t seed = 1) {
  manual_seed(seed);
  return models::GPT(loom::test::tiny_gpt_config());
}

// A draft for small_gpt: one layer fewer, other weights.
models::GPT draft_gpt() {
  manual_seed(7);
  models::GPTConfig cfg = loom::test::tiny_gpt_config();
  cfg.n_layer = 1;
  return models::GPT(cfg);
}

// What one choice produced, as its sink heard it.
struct Output {
  std::vector<int64_t> tokens;
  std::vector<double> logprobs;
  TopLogprobs top_logprobs;
  FinishReason finish = FinishReason::None;
  int events = 0;
  int64_t prompt_tokens = 0, generated_tokens = 0;
};

struct Collector {
  std::mutex mu;
  std::condition_variable done_cv;
  std::map<uint64_t, Output> out;                          // choice 0 of each request
  std::map<std::pair<uint64_t, int64_t>, Output> choices;  // every choice, by (request, index)
  int finished = 0;                                        // finish events (one per choice)
  serve::TokenSink sink(uint64_t key) {
    return [this, key](const TokenEvent& e) {
      std::lock_guard<std::mutex> lock(mu);
      EXPECT_EQ(e.logprobs.size(), e.top_logprobs.empty() ? e.logprobs.size() : e.tokens.size());
      record(choices[{key, e.index}], e);
      if (e.index == 0) record(out[key], e);
      if (e.finish != FinishReason::None) {
        ++finished;
        done_cv.notify_all();
      }
    };
  }
  static void record(Output& o, const TokenEvent& e) {
    o.tokens.insert(o.tokens.end(), e.tokens.begin(), e.tokens.end());
    o.logprobs.insert(o.logprobs.end(), e.logprobs.begin(), e.logprobs.end());
    o.top_logprobs.insert(o.top_logprobs.end(), e.top_logprobs.begin(), e.top_logprobs.end());
    ++o.events;
    o.prompt_tokens = e.prompt_tokens;
    o.generated_tokens = e.generated_tokens;
    if (e.finish != FinishReason::None) {
      EXPECT_EQ(o.finish, FinishReason::None) << "finished twice";
      o.finish = e.finish;
    }
  }
};

void run_until_idle(LlmEngine& e) {
  for (int i = 0; i < 10000 && e.step(); ++i) {
  }
}

std::vector<std::vector<int64_t>> prompts() {
  manual_seed(9);
  std::vector<std::vector<int64_t>> p;
  for (int64_t n : {1, 3, 7, 16, 17, 30, 5, 2}) p.push_back(randint(0, 23, {n}).to_vector<int64_t>());
  return p;
}

// Each request alone, through its own engine.
std::vector<Output> served_alone(const std::vector<std::vector<int64_t>>& ps, const SamplingParams& sp) {
  std::vector<Output> outs;
  for (const auto& p : ps) {
    LlmEngine e(small_gpt(), {.slots = 1, .kv_cache_mb = 1});
    Collector c;
    e.submit(p, sp, c.sink(0));
    run_until_idle(e);
    outs.push_back(c.out[0]);
  }
  return outs;
}

TEST(LlmEngine, ContinuousBatchingGivesTheTokensOfServingEachRequestAlone) {
  const auto ps = prompts();
  for (const double temperature : {0.0, 0.8}) {
    SCOPED_TRACE("temperature " + std::to_string(temperature));
    SamplingParams sp{.max_tokens = 20, .temperature = temperature, .top_k = 10, .seed = 5, .logprobs = true};
    const std::vector<Output> alone = served_alone(ps, sp);
    // Three slots for eight requests, a small prefill budget: requests queue,
    // join at step boundaries and prefill in chunks beside running decodes.
    LlmEngine e(small_gpt(), {.slots = 3, .kv_cache_mb = 1, .prefill_chunk = 8});
    Collector c;
    for (size_t i = 0; i < ps.size(); ++i) e.submit(ps[i], sp, c.sink(i));
    run_until_idle(e);
    ASSERT_EQ(c.finished, static_cast<int>(ps.size()));
    for (size_t i = 0; i < ps.size(); ++i) {
      EXPECT_EQ(c.out[i].tokens, alone[i].tokens) << "request " << i;
      EXPECT_EQ(c.out[i].logprobs, alone[i].logprobs) << "request " << i;
      EXPECT_EQ(c.out[i].finish, FinishReason::Length);
      EXPECT_EQ(c.out[i].tokens.size(), 20u);
      EXPECT_EQ(c.out[i].prompt_tokens, static_cast<int64_t>(ps[i].size()));
      EXPECT_EQ(c.out[i].generated_tokens, 20);
    }
    const serve::EngineStats st = e.stats();
    EXPECT_EQ(st.running, 0);
    EXPECT_EQ(st.kv_blocks_used, 0);
    EXPECT_EQ(st.generated_tokens, 20 * static_cast<int64_t>(ps.size()));
  }
}

TEST(LlmEngine, GreedyTokensEqualGenerate) {
  models::GPT gpt = small_gpt();
  const auto ps = prompts();
  LlmEngine e(small_gpt(), {.slots = 4, .kv_cache_mb = 1});
  Collector c;
  for (size_t i = 0; i < ps.size(); ++i) e.submit(ps[i], {.max_tokens = 12, .temperature = 0}, c.sink(i));
  run_until_idle(e);
  for (size_t i = 0; i < ps.size(); ++i) {
    const Tensor want = gpt->generate(tensor(ps[i], kInt64), 12, {.temperature = 0});
    const std::vector<int64_t> all = want.to_vector<int64_t>();
    EXPECT_EQ(c.out[i].tokens, std::vector<int64_t>(all.begin() + static_cast<std::ptrdiff_t>(ps[i].size()), all.end()))
        << "request " << i;
  }
}

TEST(LlmEngine, APoolTooSmallForEveryonePreemptsAndRecomputesWithTheSameTokens) {
  const auto ps = prompts();
  const SamplingParams sp{.max_tokens = 30, .temperature = 0};
  const std::vector<Output> alone = served_alone(ps, sp);
  // Keys and values of 2 layers x 16 positions x 32 floats: 8 KiB a block;
  // 0.035 MB holds 4 blocks, one full context, far less than 8 sequences
  // need.
  LlmEngine e(small_gpt(), {.slots = 8, .kv_cache_mb = 0.035, .prefill_chunk = 64});
  EXPECT_EQ(e.stats().kv_blocks_total, 4);
  Collector c;
  for (size_t i = 0; i < ps.size(); ++i) e.submit(ps[i], sp, c.sink(i));
  run_until_idle(e);
  ASSERT_EQ(c.finished, static_cast<int>(ps.size()));
  EXPECT_GT(e.stats().preemptions, 0);
  for (size_t i = 0; i < ps.size(); ++i) EXPECT_EQ(c.out[i].tokens, alone[i].tokens) << "request " << i;
  EXPECT_EQ(e.stats().kv_blocks_used, 0);
}

TEST(LlmEngine, StopSequencesEndTheOutputWithoutThem) {
  const std::vector<int64_t> prompt{1, 2, 3};
  const SamplingParams plain{.max_tokens = 20, .temperature = 0};
  const std::vector<int64_t> full = served_alone({prompt}, plain)[0].tokens;
  ASSERT_EQ(full.size(), 20u);
  // Stop at the two tokens generated 6th and 7th; a stop sequence that
  // never occurs is held back token by token and then let through.
  SamplingParams sp = plain;
  sp.stop = {{full[5], full[6]}, {99, 98}};
  LlmEngine e(small_gpt(), {.slots = 2, .kv_cache_mb = 1});
  Collector c;
  e.submit(prompt, sp, c.sink(0));
  run_until_idle(e);
  const size_t first = static_cast<size_t>(
      std::search(full.begin(), full.end(), sp.stop[0].begin(), sp.stop[0].end()) - full.begin());
  EXPECT_EQ(c.out[0].tokens, std::vector<int64_t>(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(first)));
  EXPECT_EQ(c.out[0].finish, FinishReason::Stop);
}

TEST(LlmEngine, TheContextLimitEndsWithLength) {
  LlmEngine e(small_gpt(), {.slots = 1, .kv_cache_mb = 1});
  Collector c;
  e.submit(std::vector<int64_t>(60, 4), {.max_tokens = 100, .temperature = 0}, c.sink(0));
  run_until_idle(e);
  EXPECT_EQ(c.out[0].finish, FinishReason::Length);
  EXPECT_EQ(c.out[0].tokens.size(), 4u);  // positions 60..63 of a 64-token context
}

TEST(LlmEngine, CancellingFreesTheSlotAndItsBlocks) {
  LlmEngine e(small_gpt(), {.slots = 1, .kv_cache_mb = 1});
  Collector c;
  std::atomic<int> seen{0};
  uint64_t id = 0;
  id = e.submit({1, 2, 3}, {.max_tokens = 60, .temperature = 0}, [&](const TokenEvent& ev) {
    c.sink(0)(ev);
    if (++seen == 3) e.cancel(id);  // from the engine's thread, as a server's disconnect handler may
  });
  e.submit({4, 5}, {.max_tokens = 5, .temperature = 0}, c.sink(1));  // waits for the one slot
  e.start();
  {
    std::unique_lock<std::mutex> lock(c.mu);
    ASSERT_TRUE(c.done_cv.wait_for(lock, std::chrono::seconds(30), [&] { return c.finished == 2; }));
  }
  e.stop();
  EXPECT_EQ(c.out[0].finish, FinishReason::Cancelled);
  EXPECT_LT(c.out[0].tokens.size(), 10u);
  EXPECT_EQ(c.out[1].finish, FinishReason::Length);
  EXPECT_EQ(c.out[1].tokens.size(), 5u);
  EXPECT_EQ(e.stats().kv_blocks_used, 0);
  EXPECT_EQ(e.stats().running, 0);
}

TEST(LlmEngine, BadRequestsAreRefusedByName) {
  LlmEngine e(small_gpt(), {.slots = 1, .kv_cache_mb = 1});
  auto sink = [](const TokenEvent&) {};
  EXPECT_NE(error_of([&] { e.submit({}, {}, sink); }).find("the prompt is empty"), std::string::npos);
  EXPECT_NE(error_of([&] { e.submit({23}, {}, sink); }).find("token 23 is outside the vocabulary of 23"),
            std::string::npos);
  EXPECT_NE(error_of([&] { e.submit(std::vector<int64_t>(64, 1), {}, sink); }).find("the prompt has 64 tokens"),
            std::string::npos);
  EXPECT_NE(error_of([&] { e.submit({1}, {.max_tokens = 0}, sink); }).find("max_tokens must be >= 1"),
            std::string::npos);
  EXPECT_NE(error_of([&] { e.submit({1}, {.top_p = 0}, sink); }).find("top_p must be in (0, 1]"), std::string::npos);
  EXPECT_NE(error_of([&] { LlmEngine tiny(small_gpt(), {.kv_cache_mb = 0.01}); }).find("one full context of 64"),
            std::string::npos);
  EXPECT_NE(error_of([&] { e.submit({1}, {.n = 0}, sink); }).find("n must be in [1, 1] (the engine's slots), got 0"),
            std::string::npos);
  EXPECT_NE(error_of([&] { e.submit({1}, {.n = 2}, sink); }).find("got 2"), std::string::npos);
  EXPECT_NE(error_of([&] { e.submit({1}, {.logprobs = true, .top_logprobs = 21}, sink); })
                .find("top_logprobs must be in [0, 20], got 21"),
            std::string::npos);
  EXPECT_NE(error_of([&] { e.submit({1}, {.logprobs = true, .top_logprobs = -1}, sink); }).find("got -1"),
            std::string::npos);
  manual_seed(3);
  models::GPTConfig small_vocab = loom::test::tiny_gpt_config();
  small_vocab.vocab_size = 11;
  LlmEngine e11(models::GPT(small_vocab), {.slots = 1, .kv_cache_mb = 1});
  EXPECT_NE(error_of([&] { e11.submit({1}, {.logprobs = true, .top_logprobs = 12}, sink); })
                .find("top_logprobs 12 exceeds the vocabulary of 11"),
            std::string::npos);
  EXPECT_EQ(e.stats().waiting, 0);
}

// ---- RequestControl: deadlines and clients that hang up ----

TEST(LlmEngine, AClientThatHangsUpFreesItsSlotForAWaitingRequestInTheSameStep) {
  LlmEngine e(small_gpt(), {.slots = 1, .kv_cache_mb = 1});
  Collector c;
  bool gone = false;
  int asked = 0;
  e.submit({1, 2, 3}, {.max_tokens = 50, .temperature = 0}, c.sink(0), {.disconnected = [&] {
             ++asked;
             return gone;
           }});
  e.submit({4, 5}, {.max_tokens = 5, .temperature = 0}, c.sink(1));  // waits for the one slot
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(e.step());
  EXPECT_EQ(c.out[0].tokens.size(), 3u);
  EXPECT_EQ(c.out[1].events, 0);
  EXPECT_EQ(e.stats().waiting, 1);
  gone = true;
  ASSERT_TRUE(e.step());
  EXPECT_EQ(c.out[0].finish, FinishReason::Cancelled);
  EXPECT_EQ(c.out[0].tokens.size(), 3u);
  // The waiting request took the slot and its blocks in the same step: its
  // prompt is prefilled and its first token out.
  EXPECT_EQ(c.out[1].tokens.size(), 1u);
  serve::EngineStats st = e.stats();
  EXPECT_EQ(st.running, 1);
  EXPECT_EQ(st.waiting, 0);
  EXPECT_EQ(st.kv_blocks_used, 1);
  EXPECT_EQ(st.cancelled, 1);
  EXPECT_EQ(asked, 4);  // once a step while it lived
  run_until_idle(e);
  EXPECT_EQ(c.out[1].finish, FinishReason::Length);
  EXPECT_EQ(c.out[1].tokens.size(), 5u);
  st = e.stats();
  EXPECT_EQ(st.finished, 1);
  EXPECT_EQ(st.cancelled, 1);
  EXPECT_EQ(st.timed_out, 0);
  EXPECT_EQ(st.kv_blocks_used, 0);
}

TEST(LlmEngine, ADeadlineEndsARequestWithTimeout) {
  using namespace std::chrono_literals;
  LlmEngine e(small_gpt(), {.slots = 2, .kv_cache_mb = 1});
  Collector c;
  const auto now = std::chrono::steady_clock::now();
  // Past its deadline before it runs: no tokens, every choice hears the end.
  e.submit({1, 2, 3}, {.max_tokens = 5, .n = 2}, c.sink(0), {.deadline = now - 1ms});
  // Runs three steps, then its deadline passes.
  const auto deadline = now + 500ms;
  const serve::TokenSink record = c.sink(1);
  e.submit({1, 2, 3}, {.max_tokens = 60, .temperature = 0},
           [&](const TokenEvent& ev) {
             record(ev);
             if (ev.generated_tokens == 3) std::this_thread::sleep_until(deadline + 1ms);
           },
           {.deadline = deadline});
  run_until_idle(e);
  EXPECT_EQ(c.out[0].finish, FinishReason::Timeout);
  EXPECT_EQ(c.out[0].tokens.size(), 0u);
  EXPECT_EQ((c.choices[{0, 1}].finish), FinishReason::Timeout);
  EXPECT_EQ(c.out[1].finish, FinishReason::Timeout);
  EXPECT_EQ(c.out[1].tokens.size(), 3u);
  const serve::EngineStats st = e.stats();
  EXPECT_EQ(st.timed_out, 2);  // requests, not choices
  EXPECT_EQ(st.finished + st.cancelled, 0);
  EXPECT_EQ(st.kv_blocks_used, 0);
  EXPECT_EQ(st.running + st.waiting, 0);
}

// ---- top_logprobs ----

TEST(LlmEngine, TopLogprobsAreTheLikeliestTokensAlignedWithTheOutput) {
  models::GPT gpt = small_gpt();
  const auto ps = prompts();
  for (const double temperature : {0.0, 0.9}) {
    SCOPED_TRACE("temperature " + std::to_string(temperature));
    const SamplingParams sp{
        .max_tokens = 12, .temperature = temperature, .seed = 3, .logprobs = true, .top_logprobs = 5};
    const std::vector<Output> outs = served_alone(ps, sp);
    for (size_t r = 0; r < ps.size(); ++r) {
      const Output& o = outs[r];
      ASSERT_EQ(o.top_logprobs.size(), o.tokens.size());
      ASSERT_EQ(o.logprobs.size(), o.tokens.size());
      // The model's log-probabilities over the whole sequence, unpaged.
      std::vector<int64_t> all = ps[r];
      all.insert(all.end(), o.tokens.begin(), o.tokens.end());
      const Tensor logp = log_softmax(gpt(tensor(all, kInt64).unsqueeze(0)).squeeze(0).to(kFloat64), -1);
      for (size_t i = 0; i < o.tokens.size(); ++i) {
        const auto& top = o.top_logprobs[i];
        ASSERT_EQ(top.size(), 5u);
        for (size_t j = 1; j < top.size(); ++j)
          EXPECT_TRUE(top[j - 1].second > top[j].second ||
                      (top[j - 1].second == top[j].second && top[j - 1].first < top[j].first));
        const std::vector<double> want = logp[static_cast<int64_t>(ps[r].size() + i) - 1].to_vector<double>();
        std::vector<double> sorted = want;
        std::sort(sorted.begin(), sorted.end(), std::greater<double>());
        for (const auto& [token, lp] : top) EXPECT_NEAR(lp, want[static_cast<size_t>(token)], 1e-4);
        EXPECT_LE(sorted[5], top.back().second + 1e-4);  // nothing likelier was left out
        // The token's own log-probability is computed the same way.
        for (const auto& [token, lp] : top)
          if (token == o.tokens[i]) {
            EXPECT_EQ(lp, o.logprobs[i]);
          }
        if (temperature == 0) {
          EXPECT_EQ(top[0].first, o.tokens[i]);
        }
      }
    }
    // Tokens held back for a stop sequence keep their log-probabilities:
    // one stop cuts the output, one that never completes lets it through.
    const Output& full = outs[1];
    SamplingParams cut = sp;
    cut.stop = {{full.tokens[5], full.tokens[6]}, {full.tokens[2], 99}};
    const Output o = served_alone({ps[1]}, cut)[0];
    const auto& stop = cut.stop[0];
    const auto& t = full.tokens;
    const auto first = std::search(t.begin(), t.end(), stop.begin(), stop.end()) - t.begin();
    auto prefix = [first](const auto& v) { return std::decay_t<decltype(v)>(v.begin(), v.begin() + first); };
    EXPECT_EQ(o.finish, FinishReason::Stop);
    EXPECT_EQ(o.tokens, prefix(full.tokens));
    EXPECT_EQ(o.logprobs, prefix(full.logprobs));
    EXPECT_EQ(o.top_logprobs, prefix(full.top_logprobs));
  }
}

// ---- n > 1: choices sharing the prompt's blocks ----

// Runs the requests to the end, step by step; the most KV blocks in use.
int64_t run_watching_blocks(LlmEngine& e) {
  int64_t most = 0;
  for (int i = 0; i < 10000 && e.step(); ++i) most = std::max(most, e.stats().kv_blocks_used);
  return most;
}

TEST(LlmEngine, ChoicesShareThePromptsBlocksAndDrawFromStreamsOfTheirOwn) {
  manual_seed(4);
  const std::vector<int64_t> prompt = randint(0, 23, {40}).to_vector<int64_t>();
  for (const double temperature : {0.0, 0.9}) {
    SCOPED_TRACE("temperature " + std::to_string(temperature));
    SamplingParams sp{.max_tokens = 12, .temperature = temperature, .top_p = 0.9, .seed = 11, .logprobs = true};
    // Each choice alone: choice i is the n = 1 request of seed + i.
    std::vector<Output> alone;
    int64_t blocks_alone = 0;
    for (uint64_t i = 0; i < 3; ++i) {
      LlmEngine e(small_gpt(), {.slots = 3, .kv_cache_mb = 1});
      Collector c;
      SamplingParams one = sp;
      one.seed += i;
      e.submit(prompt, one, c.sink(0));
      blocks_alone = run_watching_blocks(e);
      alone.push_back(c.out[0]);
    }
    EXPECT_EQ(blocks_alone, 4);  // 50 positions before the last step
    LlmEngine e(small_gpt(), {.slots = 3, .kv_cache_mb = 1});
    Collector c;
    sp.n = 3;
    e.submit(prompt, sp, c.sink(0));
    // Two full prompt blocks shared; the partial third copied by the two
    // choices that wrote it first; a fourth block each.
    EXPECT_EQ(run_watching_blocks(e), 2 + 3 + 3);
    EXPECT_LT(2 + 3 + 3, 3 * blocks_alone);
    ASSERT_EQ(c.finished, 3);
    for (int64_t i = 0; i < 3; ++i) {
      const Output& o = c.choices[{0, i}];
      EXPECT_EQ(o.tokens, alone[static_cast<size_t>(i)].tokens) << "choice " << i;
      EXPECT_EQ(o.logprobs, alone[static_cast<size_t>(i)].logprobs) << "choice " << i;
      EXPECT_EQ(o.finish, FinishReason::Length);
      EXPECT_EQ(o.prompt_tokens, 40);
      if (temperature == 0) {
        EXPECT_EQ(o.tokens, alone[0].tokens);
      }
    }
    if (temperature > 0) {
      EXPECT_NE(alone[0].tokens, alone[1].tokens);
    }
    const serve::EngineStats st = e.stats();
    EXPECT_EQ(st.kv_blocks_used, 0);
    EXPECT_EQ(st.finished, 1);  // one request
    EXPECT_EQ(st.prompt_tokens, 40);
    EXPECT_EQ(st.generated_tokens, 36);
  }
}

TEST(LlmEngine, PreemptedChoicesAreRecomputedFromTheirOwnTokens) {
  const auto ps = prompts();
  const SamplingParams sp{.max_tokens = 30, .temperature = 0.8, .seed = 2, .n = 3};
  // 4 blocks: one context; the choices of a request outgrow them together.
  LlmEngine e(small_gpt(), {.slots = 4, .kv_cache_mb = 0.035});
  Collector c;
  for (const size_t r : {size_t{3}, size_t{5}}) e.submit(ps[r], sp, c.sink(r));
  run_until_idle(e);
  ASSERT_EQ(c.finished, 6);
  EXPECT_GT(e.stats().preemptions, 0);
  EXPECT_EQ(e.stats().kv_blocks_used, 0);
  EXPECT_EQ(e.stats().finished, 2);
  for (const size_t r : {size_t{3}, size_t{5}})
    for (int64_t i = 0; i < 3; ++i) {
      SamplingParams one = sp;
      one.n = 1;
      one.seed += static_cast<uint64_t>(i);
      EXPECT_EQ((c.choices[{r, i}].tokens), served_alone({ps[r]}, one)[0].tokens) << "request " << r << " choice " << i;
    }
}

TEST(LlmEngine, CancellingARequestEndsEveryChoice) {
  LlmEngine e(small_gpt(), {.slots = 4, .kv_cache_mb = 1});
  Collector c;
  // Before its prompt is prefilled: the choices never forked hear the end too.
  e.cancel(e.submit({1, 2, 3}, {.max_tokens = 20, .n = 3}, c.sink(0)));
  const uint64_t id = e.submit({1, 2, 3, 4, 5}, {.max_tokens = 40, .n = 4}, c.sink(1));
  ASSERT_TRUE(e.step());
  EXPECT_EQ(c.finished, 3);
  for (int64_t i = 0; i < 3; ++i) EXPECT_EQ((c.choices[{0, i}].finish), FinishReason::Cancelled);
  ASSERT_TRUE(e.step());
  EXPECT_EQ(e.stats().running, 4);
  e.cancel(id);
  ASSERT_TRUE(e.step());
  EXPECT_EQ(c.finished, 7);
  for (int64_t i = 0; i < 4; ++i) {
    EXPECT_EQ((c.choices[{1, i}].finish), FinishReason::Cancelled);
    EXPECT_EQ((c.choices[{1, i}].tokens.size()), 2u);
  }
  const serve::EngineStats st = e.stats();
  EXPECT_EQ(st.cancelled, 2);
  EXPECT_EQ(st.kv_blocks_used, 0);
  EXPECT_EQ(st.running, 0);
}

TEST(LlmEngine, ARequestWaitsUntilAllItsSlotsAreFree) {
  LlmEngine e(small_gpt(), {.slots = 3, .kv_cache_mb = 1});
  Collector c;
  e.submit({1, 2}, {.max_tokens = 4, .temperature = 0}, c.sink(0));
  e.submit({3, 4}, {.max_tokens = 2, .temperature = 0, .n = 3}, c.sink(1));  // needs all three
  e.submit({5}, {.max_tokens = 2, .temperature = 0}, c.sink(2));              // first come, first served
  ASSERT_TRUE(e.step());
  EXPECT_EQ(e.stats().running, 1);
  EXPECT_EQ(e.stats().waiting, 2);
  run_until_idle(e);
  EXPECT_EQ(c.finished, 5);
  EXPECT_EQ(e.stats().finished, 3);
}

// ---- speculative decoding ----

// What a mix of requests (lengths, limits, stop sequences, n) gives.
struct Mix {
  std::vector<std::vector<int64_t>> prompts;
  std::vector<SamplingParams> params;
};
Mix speculation_mix(double temperature) {
  Mix m;
  m.prompts = prompts();
  m.prompts.push_back(std::vector<int64_t>(60, 4));  // reaches the context's end
  const std::vector<int64_t> max_tokens{20, 3, 1, 33, 12, 25, 7, 40, 100};
  for (size_t i = 0; i < m.prompts.size(); ++i)
    m.params.push_back({.max_tokens = max_tokens[i], .temperature = temperature, .top_k = 12, .seed = 100 + i,
                        .logprobs = true, .top_logprobs = 2, .n = i == 4 ? 2 : 1});
  return m;
}

struct MixResult {
  Collector c;
  serve::EngineStats stats;
};
void serve_mix(MixResult& out, const Mix& m, models::GPT gpt, serve::EngineOptions o) {
  LlmEngine e(gpt, std::move(o));
  for (size_t i = 0; i < m.prompts.size(); ++i) e.submit(m.prompts[i], m.params[i], out.c.sink(i));
  run_until_idle(e);
  out.stats = e.stats();
  EXPECT_EQ(out.stats.kv_blocks_used, 0);
  EXPECT_EQ(out.stats.finished, static_cast<int64_t>(m.prompts.size()));
}

// The MB of a pool of `blocks` blocks for the model and the draft.
double pool_mb(models::GPT gpt, models::GPT draft, int64_t blocks) {
  return (static_cast<double>(blocks) + 0.5) *
         static_cast<double>(gpt->paged_block_bytes(16) + draft->paged_block_bytes(16)) / (1 << 20);
}

TEST(LlmEngine, GreedySpeculativeDecodingGivesTheBitsOfDecodingWithoutADraft) {
  Mix m = speculation_mix(0);
  MixResult plain;
  serve_mix(plain, m, small_gpt(), {.slots = 3, .kv_cache_mb = 1, .prefill_chunk = 8});
  // Stop sequences from the output: one that cuts it, one held back and let
  // through, a one-token one.
  const std::vector<int64_t>& t0 = plain.c.out[0].tokens;
  const std::vector<int64_t>& t5 = plain.c.out[5].tokens;
  m.params[0].stop = {{t0[7], t0[8]}, {t0[2], 99}};
  m.params[5].stop = {{t5[10]}};
  m.params[3].stop = {{plain.c.out[3].tokens[4], 99, 98}};
  MixResult want;
  serve_mix(want, m, small_gpt(), {.slots = 3, .kv_cache_mb = 1, .prefill_chunk = 8});
  EXPECT_EQ(want.c.out[0].finish, FinishReason::Stop);
  EXPECT_EQ(want.c.out[5].finish, FinishReason::Stop);
  EXPECT_EQ(want.c.out[8].finish, FinishReason::Length);
  models::GPT gpt = small_gpt();
  struct Case {
    const char* name;
    models::GPT draft;
    serve::EngineOptions options;
  };
  const models::GPT small = draft_gpt();
  const std::vector<Case> cases{
      {"a one-layer draft", small, {.slots = 3, .kv_cache_mb = 1, .prefill_chunk = 8, .draft = small}},
      {"the model as its own draft",
       gpt,
       {.slots = 3, .kv_cache_mb = 1, .prefill_chunk = 8, .draft = gpt, .draft_tokens = 3}},
      {"a one-layer draft, 16 at a time, a pool of one context",
       small,
       {.slots = 4, .kv_cache_mb = pool_mb(gpt, small, 4), .prefill_chunk = 64, .draft = small, .draft_tokens = 16}},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.name);
    MixResult got;
    serve_mix(got, m, gpt, k.options);
    EXPECT_EQ(got.c.choices.size(), want.c.choices.size());
    for (const auto& [key, o] : want.c.choices) {
      const Output& g = got.c.choices[key];
      EXPECT_EQ(g.tokens, o.tokens) << "request " << key.first << " choice " << key.second;
      EXPECT_EQ(g.logprobs, o.logprobs) << "request " << key.first;
      EXPECT_EQ(g.top_logprobs, o.top_logprobs) << "request " << key.first;
      EXPECT_EQ(g.finish, o.finish) << "request " << key.first;
    }
    EXPECT_GT(got.stats.draft_proposed, 0);
    if (k.draft.get() == gpt.get()) {
      EXPECT_EQ(got.stats.draft_accepted, got.stats.draft_proposed);
    }
    std::cout << "[          ] " << k.name << ": " << got.stats.draft_accepted << " of " << got.stats.draft_proposed
              << " drafts kept, " << got.stats.steps << " steps (" << want.stats.steps << " without)"
              << (got.stats.preemptions > 0 ? ", with preemptions" : "") << "\n";
  }
}

TEST(LlmEngine, SampledSpeculativeDecodingIsReproducibleAndBatchIndependent) {
  const Mix m = speculation_mix(0.8);
  const models::GPT gpt = small_gpt(), draft = draft_gpt();
  // Each request alone, its prompt in one chunk.
  std::vector<std::vector<Output>> alone;
  for (size_t i = 0; i < m.prompts.size(); ++i) {
    LlmEngine e(gpt, {.slots = 2, .kv_cache_mb = 1, .draft = draft});
    Collector c;
    e.submit(m.prompts[i], m.params[i], c.sink(0));
    run_until_idle(e);
    alone.emplace_back();
    for (int64_t j = 0; j < m.params[i].n; ++j) alone.back().push_back(c.choices[{0, j}]);
  }
  // Together, in chunks of 8, and in a pool of one context (preempted).
  for (const bool small_pool : {false, true}) {
    SCOPED_TRACE(small_pool ? "a pool of one context" : "chunks of 8");
    MixResult batched;
    serve_mix(batched, m, gpt,
              {.slots = small_pool ? 4 : 3, .kv_cache_mb = small_pool ? pool_mb(gpt, draft, 4) : 1,
               .prefill_chunk = small_pool ? 64 : 8, .draft = draft});
    EXPECT_EQ(batched.stats.preemptions > 0, small_pool);
    for (size_t i = 0; i < m.prompts.size(); ++i)
      for (int64_t j = 0; j < m.params[i].n; ++j) {
        const Output& o = batched.c.choices[{i, j}];
        EXPECT_EQ(o.tokens, alone[i][static_cast<size_t>(j)].tokens) << "request " << i << " choice " << j;
        EXPECT_EQ(o.logprobs, alone[i][static_cast<size_t>(j)].logprobs) << "request " << i << " choice " << j;
        EXPECT_FALSE(o.tokens.empty());
      }
    EXPECT_GT(batched.stats.draft_accepted, 0);
    EXPECT_LT(batched.stats.draft_accepted, batched.stats.draft_proposed);
  }
  // The model as its own draft: p = q, every draft is kept.
  MixResult self;
  serve_mix(self, m, gpt, {.slots = 3, .kv_cache_mb = 1, .draft = gpt});
  EXPECT_EQ(self.stats.draft_accepted, self.stats.draft_proposed);
  EXPECT_GT(self.stats.draft_proposed, 0);
}

// Draws x from q, then speculative_accept: the token must follow p.
TEST(LlmEngine, SpeculativeAcceptanceKeepsTheModelsDistribution) {
  struct Case {
    std::vector<double> p, q;
    double chi2_999;  // the 99.9% quantile of chi-square with (tokens p can give - 1) degrees of freedom
  };
  const std::vector<Case> cases{
      {{0.05, 0.4, 0.25, 0.3, 0.0}, {0.3, 0.1, 0.1, 0.2, 0.3}, 16.27},
      {{0.2, 0.2, 0.6}, {0.2, 0.2, 0.6}, 13.82},  // p = q: every draft kept
      {{0.5, 0.5, 0, 0}, {0, 0, 0.5, 0.5}, 10.83},  // disjoint: every draft rejected
      {{0.7, 0.1, 0.1, 0.1}, {0.1, 0.1, 0.1, 0.7}, 16.27},
  };
  const int draws = 100000;
  for (size_t k = 0; k < cases.size(); ++k) {
    const Case& c = cases[k];
    SCOPED_TRACE("case " + std::to_string(k));
    uint64_t draft_stream = 1000 + k, accept_stream = 2000 + k;
    std::vector<int64_t> counts(c.p.size(), 0);
    int64_t kept = 0;
    for (int i = 0; i < draws; ++i) {
      // x from q by its inverse distribution function.
      const double u = static_cast<double>(splitmix64_next(draft_stream) >> 11) * 0x1.0p-53;
      size_t x = 0;
      for (double acc = c.q[0]; acc <= u && x + 1 < c.q.size();) acc += c.q[++x];
      const serve::SpeculativeDraw d = serve::speculative_accept(c.p, c.q, static_cast<int64_t>(x), accept_stream);
      ++counts[static_cast<size_t>(d.token)];
      if (d.accepted) {
        EXPECT_EQ(d.token, static_cast<int64_t>(x));
        ++kept;
      }
    }
    double chi2 = 0, overlap = 0;
    for (size_t t = 0; t < c.p.size(); ++t) {
      overlap += std::min(c.p[t], c.q[t]);
      if (c.p[t] == 0) {
        EXPECT_EQ(counts[t], 0) << "token " << t << " has no probability under p";
        continue;
      }
      const double want = c.p[t] * draws;
      chi2 += (static_cast<double>(counts[t]) - want) * (static_cast<double>(counts[t]) - want) / want;
    }
    EXPECT_LT(chi2, c.chi2_999);
    // Drafts are kept with probability sum min(p, q).
    EXPECT_NEAR(static_cast<double>(kept) / draws, overlap, 4 * std::sqrt(overlap * (1 - overlap) / draws) + 1e-12);
  }
  uint64_t state = 0;
  EXPECT_NE(error_of([&] { serve::speculative_accept({0.5, 0.5}, {1.0}, 0, state); }).find("one vocabulary"),
            std::string::npos);
}

TEST(LlmEngine, ADraftModelIsCheckedAtConstruction) {
  manual_seed(5);
  models::GPTConfig cfg = loom::test::tiny_gpt_config();
  cfg.vocab_size = 11;
  const models::GPT other_vocab(cfg);
  cfg = loom::test::tiny_gpt_config();
  cfg.block_size = 32;
  const models::GPT short_context(cfg);
  EXPECT_NE(error_of([&] { LlmEngine e(small_gpt(), {.draft = other_vocab}); })
                .find("the draft model's vocab_size is 11; the model's is 23"),
            std::string::npos);
  EXPECT_NE(error_of([&] { LlmEngine e(small_gpt(), {.draft = short_context}); })
                .find("the draft model's context (block_size 32) is shorter than the model's, 64"),
            std::string::npos);
  for (const int64_t k : {0, 17})
    EXPECT_NE(error_of([&] { LlmEngine e(small_gpt(), {.draft = draft_gpt(), .draft_tokens = k}); })
                  .find("draft_tokens must be in [1, 16], got " + std::to_string(k)),
              std::string::npos);
  // The pool pays for both models' keys and values.
  const models::GPT gpt = small_gpt(), draft = draft_gpt();
  EXPECT_EQ(LlmEngine(gpt, {.kv_cache_mb = pool_mb(gpt, draft, 6), .draft = draft}).stats().kv_blocks_total, 6);
}

// ---- latency histograms ----

TEST(LlmEngine, LatencyHistogramsCountEveryChoicesTokens) {
  serve::Histogram h = serve::latency_histogram();
  h.observe(0.001);  // Prometheus's buckets: le, upper bounds included
  h.observe(0.0011);
  h.observe(20);
  EXPECT_EQ(h.counts[0], 1);
  EXPECT_EQ(h.counts[1], 1);
  EXPECT_EQ(h.counts.back(), 1);
  EXPECT_EQ(h.count, 3);
  const Mix m = speculation_mix(0.8);
  const models::GPT gpt = small_gpt();
  for (const bool speculate : {false, true}) {
    SCOPED_TRACE(speculate ? "speculating" : "plain");
    MixResult r;
    serve_mix(r, m, gpt, {.slots = 3, .kv_cache_mb = 1, .draft = speculate ? gpt : models::GPT(nullptr)});
    int64_t tokens = 0, choices = 0;
    for (const auto& [key, o] : r.c.choices) {
      tokens += static_cast<int64_t>(o.tokens.size());
      choices += o.tokens.empty() ? 0 : 1;
    }
    const serve::EngineStats& st = r.stats;
    EXPECT_EQ(st.time_to_first_token.count, choices);
    EXPECT_EQ(st.inter_token_latency.count, tokens - choices);
    for (const serve::Histogram* hist : {&st.time_to_first_token, &st.inter_token_latency}) {
      EXPECT_EQ(std::accumulate(hist->counts.begin(), hist->counts.end(), int64_t{0}), hist->count);
      EXPECT_GE(hist->sum, 0);
    }
    EXPECT_GT(st.time_to_first_token.sum, 0);
  }
}

}  // namespace
