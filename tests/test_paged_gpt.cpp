// The GPT over a paged KV cache (Note [Paged KV cache] in src/models/gpt.cpp):
// the block allocator, the batch builder, logits equal to the contiguous
// cache's, and every sequence's rows independent of the rest of the batch.
#include <gtest/gtest.h>
#include <loom/loom.h>

#include <algorithm>
#include <string>
#include <vector>

#include "test_util.h"

namespace {

using namespace loom;
using loom::test::error_of;
using models::BlockAllocator;
using models::PagedBatchBuilder;

TEST(BlockAllocator, HandsOutTheLowestFreeBlockAndCountsReferences) {
  BlockAllocator a(3);
  EXPECT_EQ(a.allocate(), 0);
  EXPECT_EQ(a.allocate(), 1);
  EXPECT_EQ(a.allocate(), 2);
  EXPECT_FALSE(a.allocate().has_value());
  EXPECT_EQ(a.num_free(), 0);
  a.retain(1);
  EXPECT_EQ(a.ref_count(1), 2);
  a.release(1);
  EXPECT_EQ(a.num_free(), 0);  // still referenced once
  a.release(2);
  a.release(1);
  EXPECT_EQ(a.num_free(), 2);
  EXPECT_EQ(a.allocate(), 1);  // the lowest free id first
  EXPECT_NE(error_of([&] { a.release(2); }).find("BlockAllocator::release: block 2 is free"), std::string::npos);
  EXPECT_NE(error_of([&] { a.retain(7); }).find("block 7 is out of range for 3 blocks"), std::string::npos);
}

std::vector<int64_t> random_tokens(int64_t n, int64_t vocab) {
  return randint(0, vocab, {n}).to_vector<int64_t>();
}

// The contiguous cache's logits of each position of `tokens`: (len, vocab).
Tensor contiguous_logits(models::GPT& gpt, const std::vector<int64_t>& tokens) {
  NoGradGuard g;
  return gpt(tensor(tokens, kInt64).unsqueeze(0)).squeeze(0);
}

TEST(PagedGpt, LogitsEqualTheContiguousCachesOverPrefillChunksAndDecodeSteps) {
  manual_seed(1);
  models::GPT gpt(loom::test::tiny_gpt_config());
  gpt->eval();
  const std::vector<int64_t> lengths{1, 5, 16, 17, 40};
  std::vector<std::vector<int64_t>> seqs;
  for (int64_t n : lengths) seqs.push_back(random_tokens(n, 23));
  for (int64_t block_size : {16, 4}) {
    SCOPED_TRACE("block size " + std::to_string(block_size));
    models::PagedKVCache cache = gpt->make_paged_cache(64, block_size);
    std::vector<std::vector<int64_t>> tables(seqs.size());
    std::vector<int64_t> done(seqs.size(), 0);
    std::vector<std::vector<Tensor>> rows(seqs.size());
    // Steps of a flattened batch: each unfinished sequence brings a chunk of
    // up to 7 tokens (a prefill chunk, or one token once 7 remain), and its
    // blocks are taken as it grows, so the tables interleave in the pool.
    while (true) {
      PagedBatchBuilder builder(block_size);
      std::vector<std::pair<size_t, int64_t>> chunks;  // sequence, tokens
      for (size_t s = 0; s < seqs.size(); ++s) {
        const int64_t left = static_cast<int64_t>(seqs[s].size()) - done[s];
        if (left == 0) continue;
        const int64_t n = left > 7 ? 7 : 1;
        ASSERT_TRUE(cache.reserve(tables[s], done[s] + n));
        builder.add(tables[s], done[s], std::vector<int64_t>(seqs[s].begin() + done[s], seqs[s].begin() + done[s] + n));
        chunks.emplace_back(s, n);
      }
      if (chunks.empty()) break;
      const auto [tokens, batch] = builder.build();
      const Tensor logits = gpt->forward(tokens, batch, cache);
      ASSERT_EQ(logits.sizes(), std::vector<int64_t>({builder.num_tokens(), 23}));
      int64_t row = 0;
      for (const auto& [s, n] : chunks) {
        for (int64_t i = 0; i < n; ++i) rows[s].push_back(logits[row + i]);
        row += n;
        done[s] += n;
      }
    }
    for (size_t s = 0; s < seqs.size(); ++s) {
      const Tensor want = contiguous_logits(gpt, seqs[s]);
      const Tensor got = stack(rows[s]);
      EXPECT_TRUE(allclose(got, want, 1e-4, 1e-5)) << "sequence " << s << ": max difference "
                                                     << (got - want).abs().max().item<double>();
    }
    EXPECT_EQ(cache.blocks.num_free(), 64 - [&] {
      int64_t used = 0;
      for (const auto& t : tables) used += static_cast<int64_t>(t.size());
      return used;
    }());
    for (auto& t : tables) cache.release(t);
    EXPECT_EQ(cache.blocks.num_free(), 64);
  }
}

// Row t of a batch depends on its own sequence alone: the logits of each
// sequence's decode step in a batch of five equal, bit for bit, those of the
// same step run alone, at 1 and 2 threads.
TEST(PagedGpt, EachSequencesRowsAreTheBitsOfRunningItAlone) {
  manual_seed(2);
  models::GPT gpt(loom::test::tiny_gpt_config());
  gpt->eval();
  const int saved_threads = get_num_threads();
  std::vector<std::vector<int64_t>> seqs;
  for (int64_t n : {3, 9, 16, 20, 33}) seqs.push_back(random_tokens(n, 23));
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    // Prefill every prompt but its last token (one sequence at a time), then
    // decode that token for all of them in one batch, or for each alone.
    models::PagedKVCache cache = gpt->make_paged_cache(32, 16);
    std::vector<std::vector<int64_t>> tables(seqs.size());
    for (size_t s = 0; s < seqs.size(); ++s) {
      const int64_t n = static_cast<int64_t>(seqs[s].size()) - 1;
      ASSERT_TRUE(cache.reserve(tables[s], n + 1));
      PagedBatchBuilder b(16);
      b.add(tables[s], 0, std::vector<int64_t>(seqs[s].begin(), seqs[s].end() - 1));
      const auto [tokens, batch] = b.build();
      gpt->forward(tokens, batch, cache);
    }
    PagedBatchBuilder all(16);
    for (size_t s = 0; s < seqs.size(); ++s)
      all.add(tables[s], static_cast<int64_t>(seqs[s].size()) - 1, {seqs[s].back()});
    const auto [tokens, batch] = all.build();
    const Tensor together = gpt->forward(tokens, batch, cache);
    for (size_t s = 0; s < seqs.size(); ++s) {
      PagedBatchBuilder one(16);
      one.add(tables[s], static_cast<int64_t>(seqs[s].size()) - 1, {seqs[s].back()});
      const auto [t1, b1] = one.build();
      EXPECT_TRUE(equal(gpt->forward(t1, b1, cache)[0], together[static_cast<int64_t>(s)]))
          << "sequence " << s << " at " << threads << " threads";
    }
  }
  set_num_threads(saved_threads);
}

TEST(PagedGpt, CopyBlockCopiesEveryLayerAndBadBatchesAreRefused) {
  manual_seed(3);
  models::GPT gpt(loom::test::tiny_gpt_config());
  models::PagedKVCache cache = gpt->make_paged_cache(4, 16);
  EXPECT_EQ(gpt->paged_block_bytes(16), 2 * 2 * 16 * 32 * 4);
  cache.k[1][2].copy_(randn({16, 4, 8}));
  cache.copy_block(2, 3);
  EXPECT_TRUE(equal(cache.k[1][3], cache.k[1][2]));
  EXPECT_TRUE(equal(cache.v[0][3], cache.v[0][2]));
  EXPECT_NE(error_of([&] { cache.copy_block(2, 4); }).find("copy_block: blocks 2 -> 4 out of range for 4 blocks"),
            std::string::npos);

  std::vector<int64_t> table;
  ASSERT_TRUE(cache.reserve(table, 20));
  EXPECT_EQ(table.size(), 2u);
  std::vector<int64_t> big;
  EXPECT_FALSE(cache.reserve(big, 65));  // 5 blocks of 4
  EXPECT_TRUE(big.empty());
  PagedBatchBuilder b(16);
  EXPECT_NE(error_of([&] { b.add(table, 30, {1, 2, 3}); }).find("positions [30, 33) need 3 blocks; the table has 2"),
            std::string::npos);
  b.add(table, 0, {1, 2});
  auto [tokens, batch] = b.build();
  batch.slots = tensor(std::vector<int64_t>{0, 64}, kInt64);
  EXPECT_NE(error_of([&] { gpt->forward(tokens, batch, cache); }).find("slots must be in [0, 64)"), std::string::npos);
  batch.positions = tensor(std::vector<int64_t>{0}, kInt64);
  EXPECT_NE(error_of([&] { gpt->forward(tokens, batch, cache); }).find("positions must be int64 of shape [2]"),
            std::string::npos);
}

}  // namespace
