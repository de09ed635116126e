// paged_attention, attention over a paged KV cache (Note [Paged attention] in
// src/backend/cpu/cpu_paged_attention.cpp): against scaled_dot_product_attention
// on the same keys and values laid out contiguously, bit-for-bit batch
// invariance (a token's row does not depend on the rest of the batch or the
// thread count), the index checks, and odd head sizes. This suite includes
// internal headers (src/ is on the tests' include path) to switch the fast
// path off and to run the kernel in a workspace of its reported size.
#include <gtest/gtest.h>
#include <loom/loom.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/testing.h"
#include "test_util.h"

namespace {

using namespace loom;
using loom::test::error_of;
using loom::test::same_bits;

// A paged KV cache holding several sequences, each sequence's keys and
// values also kept contiguous in float64 (already rounded to the cache's
// dtype) for the reference.
struct PagedCache {
  int64_t bs = 16, h = 1, d = 1, dv = 1, nb = 0, mb = 0;
  std::vector<int64_t> lens;
  Tensor key_cache, value_cache, block_tables;  // (NB, B, H, D), (NB, B, H, Dv), (S, MB)
  std::vector<Tensor> keys, values;             // per sequence (L, H, D), (L, H, Dv), float64
};

// Sequences of lens[s] tokens scattered over a shuffled set of blocks. The
// pool's spare blocks hold NaN and the table's entries past a sequence's last
// block are -1: a read outside the sequence's blocks would show.
PagedCache make_cache(const std::vector<int64_t>& lens, int64_t bs, int64_t h, int64_t d, int64_t dv, DType dtype,
                      DType index_dtype, uint64_t seed) {
  manual_seed(seed);
  std::mt19937_64 rng(seed);
  PagedCache c;
  c.bs = bs, c.h = h, c.d = d, c.dv = dv, c.lens = lens;
  const int64_t s_count = static_cast<int64_t>(lens.size());
  std::vector<int64_t> nblocks;
  int64_t used = 0;
  for (int64_t len : lens) {
    nblocks.push_back((len + bs - 1) / bs);
    used += nblocks.back();
    c.mb = std::max(c.mb, nblocks.back());
  }
  c.mb += 1;  // a spare column of -1
  c.nb = used + 2;
  std::vector<int64_t> ids(static_cast<size_t>(c.nb));
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  std::vector<double> kh(static_cast<size_t>(c.nb * bs * h * d), nan), vh(static_cast<size_t>(c.nb * bs * h * dv), nan);
  std::vector<int64_t> table(static_cast<size_t>(s_count * c.mb), -1);
  size_t next = 0;
  for (int64_t s = 0; s < s_count; ++s) {
    const int64_t len = lens[static_cast<size_t>(s)];
    Tensor k = randn({len, h, d}).to(dtype).to(kFloat64).contiguous();
    Tensor v = randn({len, h, dv}).to(dtype).to(kFloat64).contiguous();
    c.keys.push_back(k);
    c.values.push_back(v);
    for (int64_t b = 0; b < nblocks[static_cast<size_t>(s)]; ++b)
      table[static_cast<size_t>(s * c.mb + b)] = ids[next++];
    const double *kp = k.data_ptr<double>(), *vp = v.data_ptr<double>();
    for (int64_t p = 0; p < len; ++p) {
      const int64_t row = table[static_cast<size_t>(s * c.mb + p / bs)] * bs + p % bs;
      std::copy(kp + p * h * d, kp + (p + 1) * h * d, kh.begin() + row * h * d);
      std::copy(vp + p * h * dv, vp + (p + 1) * h * dv, vh.begin() + row * h * dv);
    }
  }
  c.key_cache = tensor(kh, kFloat64).reshape({c.nb, bs, h, d}).to(dtype);
  c.value_cache = tensor(vh, kFloat64).reshape({c.nb, bs, h, dv}).to(dtype);
  c.block_tables = tensor(table, kInt64).reshape({s_count, c.mb}).to(index_dtype);
  return c;
}

struct Token {
  int64_t seq, pos;
};

// A flattened batch: one query row (H, D) per token.
struct Batch {
  std::vector<Token> tokens;
  Tensor query, seq_index, positions;
};

Batch make_batch(const PagedCache& c, const std::vector<Token>& tokens, DType dtype) {
  Batch b;
  b.tokens = tokens;
  std::vector<int64_t> seqs, pos;
  for (const Token& t : tokens) {
    seqs.push_back(t.seq);
    pos.push_back(t.pos);
  }
  b.query = randn({static_cast<int64_t>(tokens.size()), c.h, c.d}).to(dtype);
  b.seq_index = tensor(seqs, kInt64);
  b.positions = tensor(pos, kInt64);
  return b;
}

Tensor run(const PagedCache& c, const Batch& b) {
  return paged_attention(b.query, c.key_cache, c.value_cache, c.block_tables, b.seq_index, b.positions);
}

// The reference: per sequence, scaled_dot_product_attention in float64 of
// its tokens' queries over its contiguous keys and values, each query i
// masked to the keys j <= positions[i] (causal at the token's offset).
// (T, H, Dv) float64.
Tensor reference(const PagedCache& c, const Batch& b) {
  const int64_t t_count = static_cast<int64_t>(b.tokens.size());
  const Tensor q64 = b.query.to(kFloat64);
  std::vector<Tensor> rows(static_cast<size_t>(t_count));
  for (int64_t s = 0; s < static_cast<int64_t>(c.lens.size()); ++s) {
    std::vector<int64_t> mine;
    int64_t last = 0;
    for (int64_t t = 0; t < t_count; ++t)
      if (b.tokens[static_cast<size_t>(t)].seq == s) {
        mine.push_back(t);
        last = std::max(last, b.tokens[static_cast<size_t>(t)].pos);
      }
    if (mine.empty()) continue;
    const int64_t n = static_cast<int64_t>(mine.size()), keys = last + 1;
    const double masked = -std::numeric_limits<double>::infinity();
    std::vector<double> mask;
    for (int64_t t : mine)
      for (int64_t j = 0; j < keys; ++j) mask.push_back(j <= b.tokens[static_cast<size_t>(t)].pos ? 0.0 : masked);
    const Tensor q = q64.index_select(0, tensor(mine, kInt64)).permute({1, 0, 2});              // (H, n, D)
    const Tensor k = c.keys[static_cast<size_t>(s)].narrow(0, 0, keys).permute({1, 0, 2});    // (H, keys, D)
    const Tensor v = c.values[static_cast<size_t>(s)].narrow(0, 0, keys).permute({1, 0, 2});  // (H, keys, Dv)
    const Tensor o = scaled_dot_product_attention(q, k, v, tensor(mask, kFloat64).reshape({n, keys}));
    for (int64_t i = 0; i < n; ++i) rows[static_cast<size_t>(mine[static_cast<size_t>(i)])] = o.select(1, i);
  }
  return stack(rows, 0);
}

// The largest |a - b| over the largest |b|.
double relative_error(const Tensor& a, const Tensor& b) {
  const Tensor a64 = a.to(kFloat64), b64 = b.to(kFloat64);
  const double den = b64.abs().max().item<double>();
  return (a64 - b64).abs().max().item<double>() / (den > 0 ? den : 1.0);
}

double tolerance(DType dtype) {
  if (dtype == kFloat64) return 1e-12;
  if (dtype == kFloat32) return 1e-5;
  return 2e-2;  // float16 / bfloat16: inputs and output rounded to 8 or 11 bits
}

const std::vector<int64_t> kLens = {1, 5, 16, 17, 40};

// One decode token per sequence, at its last position (in reverse order).
std::vector<Token> decode_tokens(const std::vector<int64_t>& lens) {
  std::vector<Token> out;
  for (int64_t s = static_cast<int64_t>(lens.size()) - 1; s >= 0; --s)
    out.push_back({s, lens[static_cast<size_t>(s)] - 1});
  return out;
}

// A prefill chunk per sequence, positions max(0, len - chunk) .. len - 1, the
// tokens of all the chunks shuffled together.
std::vector<Token> prefill_tokens(const std::vector<int64_t>& lens, int64_t chunk, uint64_t seed) {
  std::vector<Token> out;
  for (int64_t s = 0; s < static_cast<int64_t>(lens.size()); ++s) {
    const int64_t len = lens[static_cast<size_t>(s)];
    for (int64_t p = std::max<int64_t>(0, len - chunk); p < len; ++p) out.push_back({s, p});
  }
  std::mt19937_64 rng(seed);
  std::shuffle(out.begin(), out.end(), rng);
  return out;
}

// Restores the thread count and the fast paths when a test ends.
struct KernelSettings {
  int threads = get_num_threads();
  ~KernelSettings() {
    set_num_threads(threads);
    cpu::testing::set_vec_enabled(true);
  }
};

TEST(PagedAttention, MatchesSdpaOnContiguousKeysAndValues) {
  for (int64_t bs : {16, 4}) {
    const DType index_dtype = bs == 16 ? kInt64 : kInt32;
    for (DType dtype : {kFloat32, kFloat64}) {
      SCOPED_TRACE(std::string("B = ") + std::to_string(bs) + ", " + dtype_name(dtype));
      const PagedCache c = make_cache(kLens, bs, 2, 16, 12, dtype, index_dtype, 7 + static_cast<uint64_t>(bs));
      const Batch decode = make_batch(c, decode_tokens(kLens), dtype);
      const Tensor od = run(c, decode);
      EXPECT_EQ(od.sizes(), (Shape{5, 2, 12}));
      EXPECT_EQ(od.dtype(), dtype);
      EXPECT_LE(relative_error(od, reference(c, decode)), tolerance(dtype));
      // Prefill chunks of up to 6 tokens, and one of 30 (positions 10..39).
      std::vector<Token> tokens = prefill_tokens(kLens, 6, 3);
      for (int64_t p = 10; p < 34; ++p) tokens.push_back({4, p});
      const Batch prefill = make_batch(c, tokens, dtype);
      EXPECT_LE(relative_error(run(c, prefill), reference(c, prefill)), tolerance(dtype));
    }
  }
}

TEST(PagedAttention, ScaleAndLowPrecisionAndTheReferencePath) {
  KernelSettings restore;
  const PagedCache c = make_cache(kLens, 4, 3, 24, 24, kFloat32, kInt64, 11);
  const Batch b = make_batch(c, prefill_tokens(kLens, 9, 5), kFloat32);
  // An explicit scale: the same as scaling the query.
  const Tensor scaled =
      paged_attention(b.query, c.key_cache, c.value_cache, c.block_tables, b.seq_index, b.positions, 0.5);
  Batch b2 = b;
  b2.query = b.query * (0.5 * std::sqrt(24.0));
  EXPECT_LE(relative_error(scaled, reference(c, b2)), 1e-5);
  // The float32 fast path against the float64 reference kernel.
  const Tensor fast = run(c, b);
  cpu::testing::set_vec_enabled(false);
  const Tensor ref = run(c, b);
  cpu::testing::set_vec_enabled(true);
  EXPECT_LE(relative_error(fast, ref), 1e-5);
  EXPECT_LE(relative_error(ref, reference(c, b)), 1e-6);
  // float16 and bfloat16 caches compute in double and round once.
  for (DType dtype : {kFloat16, kBFloat16}) {
    SCOPED_TRACE(dtype_name(dtype));
    const PagedCache cl = make_cache(kLens, 16, 2, 8, 8, dtype, kInt32, 13);
    const Batch bl = make_batch(cl, prefill_tokens(kLens, 4, 9), dtype);
    const Tensor o = run(cl, bl);
    EXPECT_EQ(o.dtype(), dtype);
    EXPECT_LE(relative_error(o, reference(cl, bl)), tolerance(dtype));
  }
}

TEST(PagedAttention, OddHeadSizesAndHeadCounts) {
  for (int64_t h : {1, 3})
    for (int64_t d : {1, 7, 64, 80})
      for (DType dtype : {kFloat32, kFloat64}) {
        SCOPED_TRACE("H = " + std::to_string(h) + ", D = " + std::to_string(d) + ", " + dtype_name(dtype));
        const int64_t dv = d == 7 ? 5 : d;
        const PagedCache c = make_cache(kLens, 16, h, d, dv, dtype, kInt64, 17 + static_cast<uint64_t>(d));
        std::vector<Token> tokens = decode_tokens(kLens);
        for (const Token& t : prefill_tokens(kLens, 3, 1)) tokens.push_back(t);
        const Batch b = make_batch(c, tokens, dtype);
        const Tensor o = run(c, b);
        EXPECT_EQ(o.sizes(), (Shape{static_cast<int64_t>(tokens.size()), h, dv}));
        EXPECT_LE(relative_error(o, reference(c, b)), tolerance(dtype));
      }
}

// Note [Paged attention]: continuous batching gives the bits of serving each
// sequence alone, on any thread count, on the fast path and the reference.
TEST(PagedAttention, BatchInvariantBitForBit) {
  KernelSettings restore;
  const std::vector<int64_t> lens = {1, 5, 16, 17, 40, 33};
  for (bool fast : {true, false})
    for (DType dtype : {kFloat32, kFloat64})
      for (int64_t d : {32, 20}) {
        SCOPED_TRACE(std::string(fast ? "fast, " : "reference, ") + dtype_name(dtype) + ", D = " + std::to_string(d));
        cpu::testing::set_vec_enabled(fast);
        const PagedCache c = make_cache(lens, 16, 4, d, d, dtype, kInt32, 23);
        // Decode steps for sequences 0, 2, 4; prefill chunks for the others.
        std::vector<Token> tokens;
        for (int64_t s : {0, 2, 4}) tokens.push_back({s, lens[static_cast<size_t>(s)] - 1});
        for (int64_t s : {1, 3, 5}) {
          const int64_t len = lens[static_cast<size_t>(s)];
          for (int64_t p = len / 3; p < len; ++p) tokens.push_back({s, p});
        }
        std::mt19937_64 rng(29);
        std::shuffle(tokens.begin(), tokens.end(), rng);
        const Batch b = make_batch(c, tokens, dtype);
        Tensor batched[2];
        for (int threads : {1, 2}) {
          set_num_threads(threads);
          const Tensor out = run(c, b);
          batched[threads - 1] = out;
          EXPECT_LE(relative_error(out, reference(c, b)), tolerance(dtype));
          // Each sequence alone: its tokens, in their batch order.
          for (int64_t s = 0; s < static_cast<int64_t>(lens.size()); ++s) {
            std::vector<int64_t> mine;
            for (size_t t = 0; t < tokens.size(); ++t)
              if (tokens[t].seq == s) mine.push_back(static_cast<int64_t>(t));
            const Tensor idx = tensor(mine, kInt64);
            const Tensor alone = paged_attention(b.query.index_select(0, idx), c.key_cache, c.value_cache,
                                                 c.block_tables, b.seq_index.index_select(0, idx),
                                                 b.positions.index_select(0, idx));
            EXPECT_TRUE(same_bits(alone, out.index_select(0, idx))) << "sequence " << s << ", threads " << threads;
            // And one token at a time.
            const Tensor first = idx.narrow(0, 0, 1);
            const Tensor one = paged_attention(b.query.index_select(0, first), c.key_cache, c.value_cache,
                                               c.block_tables, b.seq_index.index_select(0, first),
                                               b.positions.index_select(0, first));
            EXPECT_TRUE(same_bits(one, out.index_select(0, first))) << "sequence " << s << ", threads " << threads;
          }
        }
        EXPECT_TRUE(same_bits(batched[0], batched[1]));
      }
}

// The pool read where it is: a cache that is a view (the key half of a
// combined (NB, 2, B, H, D) pool) and a strided query give the same bits.
TEST(PagedAttention, CachesAreReadThroughTheirStrides) {
  const PagedCache c = make_cache(kLens, 4, 2, 8, 8, kFloat32, kInt64, 31);
  const Batch b = make_batch(c, prefill_tokens(kLens, 5, 2), kFloat32);
  const Tensor expected = run(c, b);
  const Tensor pool = stack({c.key_cache, c.value_cache}, 1);  // (NB, 2, B, H, D)
  const Tensor kview = pool.select(1, 0), vview = pool.select(1, 1);
  ASSERT_FALSE(kview.is_contiguous());
  const Tensor qt = b.query.transpose(0, 1).contiguous().transpose(0, 1);  // (T, H, D), not contiguous
  ASSERT_FALSE(qt.is_contiguous());
  EXPECT_TRUE(same_bits(paged_attention(qt, kview, vview, c.block_tables, b.seq_index, b.positions), expected));
  // Positions and seq ids as strided views too.
  const Tensor pos2 = stack({b.positions, b.positions}, 1).select(1, 0);
  EXPECT_TRUE(same_bits(paged_attention(b.query, c.key_cache, c.value_cache, c.block_tables, b.seq_index, pos2),
                        expected));
}

TEST(PagedAttention, EmptyBatch) {
  const PagedCache c = make_cache(kLens, 16, 2, 8, 6, kFloat32, kInt64, 37);
  const Tensor none = empty({0}, kInt64);
  const Tensor o = paged_attention(empty({0, 2, 8}), c.key_cache, c.value_cache, c.block_tables, none, none);
  EXPECT_EQ(o.sizes(), (Shape{0, 2, 6}));
}

// A workspace of exactly the reported size (Note [Kernel workspaces]) is
// enough, on one thread slot and on several.
TEST(PagedAttention, RunsInItsReportedWorkspace) {
  KernelSettings restore;
  for (bool fast : {true, false}) {
    cpu::testing::set_vec_enabled(fast);
    const PagedCache c = make_cache(kLens, 16, 4, 16, 16, kFloat32, kInt64, 41);
    const Batch b = make_batch(c, prefill_tokens(kLens, 8, 4), kFloat32);
    for (int threads : {1, 2}) {
      set_num_threads(threads);
      const Tensor expected = run(c, b);
      const Tensor out = empty(expected.sizes(), kFloat32);
      KernelCall call;
      call.op = OpKind::PagedAttention;
      for (const Tensor* t : {&b.query, &c.key_cache, &c.value_cache, &c.block_tables, &b.seq_index, &b.positions})
        call.in.push_back(t->unsafe_impl());
      call.out.push_back(out.unsafe_impl());
      call.f[0] = 1.0 / 4.0;
      const size_t need = kernel_workspace_bytes(call);
      std::vector<unsigned char> ws(need + 64, 0xff);
      call.workspace = {ws.data(), need};
      run_kernel(call);
      EXPECT_TRUE(same_bits(out, expected)) << (fast ? "fast" : "reference") << ", " << threads << " threads";
    }
  }
}

TEST(PagedAttention, IndexErrorsNameTheTokenAndTheValue) {
  const PagedCache c = make_cache({5, 17}, 4, 2, 8, 8, kFloat32, kInt64, 43);  // 2 + 5 blocks, NB = 9, MB = 6
  const Batch b = make_batch(c, {{0, 4}, {1, 16}, {1, 3}}, kFloat32);
  const Tensor out = run(c, b);
  const auto call = [&](const Tensor& tables, const Tensor& seqs, const Tensor& pos) {
    return paged_attention(b.query, c.key_cache, c.value_cache, tables, seqs, pos);
  };
  // A block id outside [0, NB) in a block the token reads.
  Tensor bad = c.block_tables.clone();
  bad.index_put_({1, 2}, scalar_tensor(9, kInt64));
  EXPECT_ERROR_HAS(call(bad, b.seq_index, b.positions),
                   "paged_attention: token 1 (sequence 1, position 16): block id 9 at block_tables[1][2] is out of "
                   "range for a cache of 9 blocks");
  bad.index_put_({1, 2}, scalar_tensor(-1, kInt64));
  EXPECT_ERROR_HAS(call(bad, b.seq_index, b.positions), "block id -1 at block_tables[1][2]");
  // Token 2 (position 3) reads block 0 only: a bad id in block 2 is not its business.
  const Batch early = make_batch(c, {{1, 3}}, kFloat32);
  EXPECT_NO_THROW(paged_attention(early.query, c.key_cache, c.value_cache, bad, early.seq_index, early.positions));
  bad.index_put_({1, 0}, scalar_tensor(100, kInt64));
  EXPECT_ERROR_HAS(paged_attention(early.query, c.key_cache, c.value_cache, bad, early.seq_index, early.positions),
                   "token 0 (sequence 1, position 3): block id 100 at block_tables[1][0]");
  // int32 tables are checked alike.
  Tensor bad32 = c.block_tables.to(kInt32);
  bad32.index_put_({0, 1}, scalar_tensor(12, kInt32));
  EXPECT_ERROR_HAS(call(bad32, b.seq_index, b.positions), "token 0 (sequence 0, position 4): block id 12");
  // A position beyond the table (MB = 6 blocks of 4: positions up to 23).
  EXPECT_ERROR_HAS(call(c.block_tables, b.seq_index, tensor(std::vector<int64_t>{4, 24, 3}, kInt64)),
                   "paged_attention: token 1 (sequence 1): position 24 is beyond the block table: it is in block 6 "
                   "(block size 4) but block_tables has 6 blocks per sequence");
  EXPECT_ERROR_HAS(call(c.block_tables, b.seq_index, tensor(std::vector<int64_t>{4, 16, -2}, kInt64)),
                   "paged_attention: token 2 (sequence 1): position -2 is negative");
  EXPECT_ERROR_HAS(call(c.block_tables, tensor(std::vector<int64_t>{0, 2, 1}, kInt64), b.positions),
                   "paged_attention: token 1: seq_index 2 is out of range for block_tables of 2 sequences");
  EXPECT_ERROR_HAS(call(c.block_tables, tensor(std::vector<int64_t>{-1, 1, 1}, kInt64), b.positions),
                   "token 0: seq_index -1 is out of range");
  // A failed call writes nothing and leaves the op usable.
  EXPECT_TRUE(same_bits(run(c, b), out));
}

TEST(PagedAttention, ShapeDtypeAndAutogradErrors) {
  const PagedCache c = make_cache({5, 17}, 4, 2, 8, 6, kFloat32, kInt64, 47);
  const Batch b = make_batch(c, {{0, 4}, {1, 16}}, kFloat32);
  const Tensor &q = b.query, &kc = c.key_cache, &vc = c.value_cache, &bt = c.block_tables, &si = b.seq_index,
               &pos = b.positions;
  EXPECT_ERROR_HAS(paged_attention(q.reshape({2, 16}), kc, vc, bt, si, pos),
                   "paged_attention: expected query of shape (T, H, D), got shape [2, 16]");
  EXPECT_ERROR_HAS(paged_attention(q, kc.reshape({-1, 2, 8}), vc, bt, si, pos),
                   "paged_attention: expected key_cache of shape (NB, B, H, D)");
  EXPECT_ERROR_HAS(paged_attention(q, kc, vc, bt.reshape({-1}), si, pos),
                   "paged_attention: expected block_tables of shape (S, MB)");
  EXPECT_ERROR_HAS(paged_attention(q, kc, vc, bt, si.reshape({2, 1}), pos),
                   "paged_attention: expected seq_index of shape (T)");
  // Heads and head size of query and caches.
  EXPECT_ERROR_HAS(paged_attention(q.narrow(2, 0, 4), kc, vc, bt, si, pos),
                   "paged_attention: key_cache must have query's heads H and head size D, got query [2, 2, 4], "
                   "key_cache [9, 4, 2, 8], value_cache [9, 4, 2, 6]");
  EXPECT_ERROR_HAS(paged_attention(q.narrow(1, 0, 1), kc, vc, bt, si, pos), "must have query's heads H");
  EXPECT_ERROR_HAS(paged_attention(q, kc, vc.narrow(2, 0, 1), bt, si, pos),
                   "key_cache and value_cache must have the same blocks, block size and heads");
  EXPECT_ERROR_HAS(paged_attention(q, kc, vc.narrow(0, 0, 3), bt, si, pos),
                   "key_cache and value_cache must have the same blocks");
  // dtypes.
  EXPECT_ERROR_HAS(paged_attention(q.to(kFloat64), kc, vc, bt, si, pos),
                   "paged_attention: expected query, key_cache and value_cache of one dtype, got float64, float32 and "
                   "float32");
  EXPECT_ERROR_HAS(paged_attention(q.to(kInt64), kc.to(kInt64), vc.to(kInt64), bt, si, pos),
                   "paged_attention: expected a floating point query, got int64");
  EXPECT_ERROR_HAS(paged_attention(q, kc, vc, bt.to(kFloat32), si, pos),
                   "paged_attention: expected block_tables of dtype int32 or int64, got float32");
  EXPECT_ERROR_HAS(paged_attention(q, kc, vc, bt, si.to(kInt32), pos),
                   "paged_attention: expected seq_index and positions of dtype int64, got int32 and int64");
  EXPECT_ERROR_HAS(paged_attention(q, kc, vc, bt, si, pos.to(kFloat32)), "got int64 and float32");
  // One seq_index and one position per query token.
  EXPECT_ERROR_HAS(paged_attention(q, kc, vc, bt, si.narrow(0, 0, 1), pos),
                   "paged_attention: expected seq_index and positions of shape [2] (one per query token), got [1] "
                   "and [2]");
  EXPECT_ERROR_HAS(paged_attention(q, kc, vc, bt, si, pos.narrow(0, 0, 1)), "got [2] and [1]");
  EXPECT_ERROR_HAS(paged_attention(q, kc.narrow(1, 0, 0), vc.narrow(1, 0, 0), bt, si, pos),
                   "the block size B (key_cache dim 1) must be at least 1");
  EXPECT_ERROR_HAS(paged_attention(Tensor(), kc, vc, bt, si, pos), "paged_attention: query is an undefined tensor");
  // No autograd: inputs that want a gradient are refused while grad mode is on.
  const Tensor qg = q.clone().requires_grad_();
  EXPECT_ERROR_HAS(paged_attention(qg, kc, vc, bt, si, pos),
                   "paged_attention is inference only (no autograd), but an input requires grad");
  const Tensor kg = kc.clone().requires_grad_();
  EXPECT_ERROR_HAS(paged_attention(q, kg, vc, bt, si, pos), "inference only");
  NoGradGuard no_grad;
  const Tensor o = paged_attention(qg, kg, vc, bt, si, pos);
  EXPECT_FALSE(o.requires_grad());
  EXPECT_TRUE(same_bits(o, paged_attention(q, kc, vc, bt, si, pos)));
}

}  // namespace
