// serve::LlmEngine: continuous batching over the paged KV cache (Note
// [Continuous batching] in src/serve/engine.cpp).
#include <gtest/gtest.h>
#include <loom/loom.h>
#include <loom/serve/engine.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "../test_util.h"

namespace {

using namespace loom;
using loom::test::error_of;
using serve::FinishReason;
using serve::LlmEngine;
using serve::SamplingParams;
using serve::TokenEvent;

models::GPT small_gpt(uint64_t seed = 1) {
  manual_seed(seed);
  return models::GPT(loom::test::tiny_gpt_config());
}

// What one request produced, as its sink heard it.
struct Output {
  std::vector<int64_t> tokens;
  std::vector<double> logprobs;
  FinishReason finish = FinishReason::None;
  int events = 0;
  int64_t prompt_tokens = 0, generated_tokens = 0;
};

struct Collector {
  std::mutex mu;
  std::condition_variable done_cv;
  std::map<uint64_t, Output> out;
  int finished = 0;
  serve::TokenSink sink(uint64_t key) {
    return [this, key](const TokenEvent& e) {
      std::lock_guard<std::mutex> lock(mu);
      Output& o = out[key];
      o.tokens.insert(o.tokens.end(), e.tokens.begin(), e.tokens.end());
      o.logprobs.insert(o.logprobs.end(), e.logprobs.begin(), e.logprobs.end());
      ++o.events;
      o.prompt_tokens = e.prompt_tokens;
      o.generated_tokens = e.generated_tokens;
      if (e.finish != FinishReason::None) {
        EXPECT_EQ(o.finish, FinishReason::None) << "finished twice";
        o.finish = e.finish;
        ++finished;
        done_cv.notify_all();
      }
    };
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
  EXPECT_EQ(e.stats().waiting, 0);
}

}  // namespace
