// The CUDA paged attention and quantized inference kernels against the CPU
// (src/backend/cuda/cuda_paged.cu, Note [CUDA paged attention];
// src/backend/cuda/cuda_quant.cu, Note [CUDA quantized kernels]). Each test
// runs the public op (paged_attention, quantize_weight, dequantize_weight,
// quantized_linear) on the same inputs on both devices and compares with
// close_to_cpu: paged attention to rounding (the GPU sums in double, the
// CPU's float32 path in float32), and the quantized ops bit for bit (every
// float operation of Note [Quantized Linear] is fixed, every integer sum
// exact). Bad indices must give the CPU's error message.
#include <gtest/gtest.h>
#include <loom/loom.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "cuda_test_util.h"

namespace loom {
namespace {

using test::close_to_cpu;
using test::error_of;

Tensor gpu(const Tensor& t) { return t.to(Device::cuda()); }

// Standard normal values drawn on the CPU, then cast to `dt`.
Tensor randn_cpu(IntArrayRef sizes, uint64_t seed, DType dt = kFloat32) {
  return randn(sizes, kFloat32, Generator(seed)).to(dt);
}

// ---------------------------------------------------------------- paged attention

// A paged cache holding sequences of lens[s] tokens on shuffled blocks, the
// table's entries past a sequence's last block -1, and a batch of query
// tokens from every sequence: its first position, one inside, and its last
// (a decode step), so partially filled last blocks are read.
struct PagedInputs {
  Tensor q, key_cache, value_cache, block_tables, seq_index, positions;  // on the CPU
  int64_t nb = 0, mb = 0;
};

PagedInputs make_paged(const std::vector<int64_t>& lens, int64_t bs, int64_t h, int64_t d, int64_t dv, DType dt,
                       DType index_dt, uint64_t seed) {
  std::mt19937_64 rng(seed);
  PagedInputs p;
  const auto s_count = static_cast<int64_t>(lens.size());
  std::vector<int64_t> nblocks;
  int64_t used = 0;
  for (int64_t len : lens) {
    nblocks.push_back((len + bs - 1) / bs);
    used += nblocks.back();
    p.mb = std::max(p.mb, nblocks.back());
  }
  p.mb += 1;  // a spare column of -1
  p.nb = used + 2;
  std::vector<int64_t> ids(static_cast<size_t>(p.nb));
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  std::vector<int64_t> table(static_cast<size_t>(s_count * p.mb), -1);
  size_t next = 0;
  std::vector<int64_t> seq, pos;
  for (int64_t s = 0; s < s_count; ++s) {
    for (int64_t b = 0; b < nblocks[static_cast<size_t>(s)]; ++b) table[static_cast<size_t>(s * p.mb + b)] = ids[next++];
    const int64_t len = lens[static_cast<size_t>(s)];
    std::vector<int64_t> at{0, len / 2, len - 1};
    at.erase(std::unique(at.begin(), at.end()), at.end());
    for (int64_t x : at) seq.push_back(s), pos.push_back(x);
  }
  const auto t = static_cast<int64_t>(seq.size());
  p.q = randn_cpu({t, h, d}, seed + 1, dt);
  p.key_cache = randn_cpu({p.nb, bs, h, d}, seed + 2, dt);
  p.value_cache = randn_cpu({p.nb, bs, h, dv}, seed + 3, dt);
  p.block_tables = tensor(table, kInt64).reshape({s_count, p.mb}).to(index_dt);
  p.seq_index = tensor(seq, kInt64);
  p.positions = tensor(pos, kInt64);
  return p;
}

Tensor paged_on(const PagedInputs& p, bool cuda) {
  const auto on = [&](const Tensor& x) { return cuda ? gpu(x) : x; };
  return paged_attention(on(p.q), on(p.key_cache), on(p.value_cache), on(p.block_tables), on(p.seq_index),
                         on(p.positions));
}

struct Tol {
  double rtol, atol;
};
// The CPU's float32 path sums in float32, the GPU in double; float16 and
// bfloat16 round once from a double result on both (the GPU through float,
// so an element may differ by a unit in the 16-bit result's last place).
Tol paged_tol(DType dt) {
  switch (dt) {
    case DType::Float64: return {1e-12, 1e-12};
    case DType::Float16: return {2e-3, 2e-3};
    case DType::BFloat16: return {1.6e-2, 1.6e-2};
    default: return {2e-5, 2e-5};
  }
}

TEST(CudaPagedAttention, MatchesCpuAcrossDtypesAndBlockSizes) {
  LOOM_REQUIRE_GPU();
  NoGradGuard no_grad;
  const std::vector<int64_t> lens{1, 5, 17, 33};
  uint64_t seed = 100;
  for (DType dt : {kFloat32, kFloat64, kFloat16, kBFloat16}) {
    for (int64_t bs : {1, 4, 16}) {
      for (DType index_dt : {kInt32, kInt64}) {
        const PagedInputs p = make_paged(lens, bs, /*h=*/3, /*d=*/8, /*dv=*/12, dt, index_dt, seed++);
        const Tol tol = paged_tol(dt);
        EXPECT_TRUE(close_to_cpu(paged_on(p, true), paged_on(p, false), tol.rtol, tol.atol))
            << dtype_name(dt) << " block size " << bs << " table " << dtype_name(index_dt);
      }
    }
  }
}

// Head sizes past one warp's width, Dv past one pass of the accumulators
// (32 * 4), and odd sizes.
TEST(CudaPagedAttention, HeadSizes) {
  LOOM_REQUIRE_GPU();
  NoGradGuard no_grad;
  const std::vector<int64_t> lens{3, 40, 70};
  uint64_t seed = 200;
  for (auto [d, dv] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {64, 64}, {128, 128}, {33, 160}, {7, 300}}) {
    const PagedInputs p = make_paged(lens, /*bs=*/16, /*h=*/2, d, dv, kFloat32, kInt64, seed++);
    EXPECT_TRUE(close_to_cpu(paged_on(p, true), paged_on(p, false), 2e-5, 2e-5)) << "d " << d << " dv " << dv;
  }
}

// The caches as views of one pool (the key and value halves of its last
// dim), read where they are: strides that are not the contiguous ones.
TEST(CudaPagedAttention, StridedCacheViews) {
  LOOM_REQUIRE_GPU();
  NoGradGuard no_grad;
  const PagedInputs p = make_paged({9, 26}, /*bs=*/8, /*h=*/2, /*d=*/16, /*dv=*/16, kFloat32, kInt32, 300);
  const Tensor pool = cat({p.key_cache, p.value_cache}, 3);  // (NB, B, H, 2D)
  const Tensor pool_gpu = gpu(pool);
  const Tensor kg = pool_gpu.narrow(3, 0, 16), vg = pool_gpu.narrow(3, 16, 16);
  ASSERT_FALSE(kg.is_contiguous());
  const Tensor got = paged_attention(gpu(p.q), kg, vg, gpu(p.block_tables), gpu(p.seq_index), gpu(p.positions));
  EXPECT_TRUE(close_to_cpu(got, paged_on(p, false), 2e-5, 2e-5));
}

// A token's row does not depend on the rest of the batch: alone, it gives
// the same bits.
TEST(CudaPagedAttention, BatchInvariant) {
  LOOM_REQUIRE_GPU();
  NoGradGuard no_grad;
  const PagedInputs p = make_paged({4, 21, 50}, /*bs=*/4, /*h=*/2, /*d=*/32, /*dv=*/32, kFloat32, kInt64, 400);
  const Tensor all = paged_on(p, true);
  const Tensor q = gpu(p.q), kc = gpu(p.key_cache), vc = gpu(p.value_cache), tables = gpu(p.block_tables);
  const Tensor seq = gpu(p.seq_index), pos = gpu(p.positions);
  for (int64_t t = 0; t < p.q.size(0); ++t) {
    const Tensor one =
        paged_attention(q.narrow(0, t, 1), kc, vc, tables, seq.narrow(0, t, 1).contiguous(), pos.narrow(0, t, 1));
    EXPECT_TRUE(close_to_cpu(one, all.narrow(0, t, 1).cpu(), 0, 0)) << "token " << t;
  }
}

// Bad indices throw the CPU's message (the first bad token's), and the
// stream stays usable after.
TEST(CudaPagedAttention, BadIndicesGiveTheCpuError) {
  LOOM_REQUIRE_GPU();
  NoGradGuard no_grad;
  for (DType index_dt : {kInt32, kInt64}) {
    const PagedInputs good = make_paged({5, 12}, /*bs=*/4, /*h=*/1, /*d=*/4, /*dv=*/4, kFloat32, index_dt, 500);
    const auto expect_same_error = [&](const PagedInputs& bad, const char* what) {
      const std::string cpu = error_of([&] { paged_on(bad, false); });
      const std::string cuda = error_of([&] { paged_on(bad, true); });
      EXPECT_NE(cpu, "") << what;
      EXPECT_EQ(cuda, cpu) << what;
    };
    // A block id past the pool, and the -1 padding inside a read block.
    for (int64_t id : {good.nb, good.nb + 100, int64_t{-1}}) {
      PagedInputs bad = good;
      Tensor tables = good.block_tables.to(kInt64).clone();
      tables.data_ptr<int64_t>()[1 * good.mb + 1] = id;  // sequence 1, its second block
      bad.block_tables = tables.to(index_dt);
      expect_same_error(bad, "block id");
    }
    {
      PagedInputs bad = good;
      bad.seq_index = good.seq_index.clone();
      bad.seq_index.data_ptr<int64_t>()[2] = 7;
      expect_same_error(bad, "seq_index");
    }
    {
      PagedInputs bad = good;
      bad.positions = good.positions.clone();
      bad.positions.data_ptr<int64_t>()[1] = -3;
      expect_same_error(bad, "negative position");
    }
    {
      PagedInputs bad = good;
      bad.positions = good.positions.clone();
      bad.positions.data_ptr<int64_t>()[3] = good.mb * 4;
      expect_same_error(bad, "position beyond the table");
    }
    {  // two bad tokens: the first is reported
      PagedInputs bad = good;
      bad.positions = good.positions.clone();
      bad.positions.data_ptr<int64_t>()[4] = -1;
      bad.positions.data_ptr<int64_t>()[2] = -2;
      expect_same_error(bad, "first bad token");
    }
    EXPECT_TRUE(close_to_cpu(paged_on(good, true), paged_on(good, false), 2e-5, 2e-5));
  }
}

// ---------------------------------------------------------------- quantization

// A weight (n, k) with the cases the rounding rules single out: a zero row,
// ties for the largest magnitude (int4 takes the first), and values that
// round to a tie (x.5 codes).
Tensor special_weight(int64_t n, int64_t k, uint64_t seed) {
  Tensor w = randn_cpu({n, k}, seed).contiguous();
  float* p = w.data_ptr<float>();
  if (n > 1)
    for (int64_t i = 0; i < k; ++i) p[1 * k + i] = 0.0f;
  if (n > 2 && k > 3) p[2 * k + 0] = 2.0f, p[2 * k + 3] = -2.0f, p[2 * k + 1] = 0.5f;
  if (n > 3 && k > 2) p[3 * k + 0] = -4.0f, p[3 * k + 1] = 0.25f, p[3 * k + 2] = 4.0f;
  return w;
}

TEST(CudaQuant, QuantizeDequantizeBitForBit) {
  LOOM_REQUIRE_GPU();
  NoGradGuard no_grad;
  for (QuantScheme scheme : {QuantScheme::Int8, QuantScheme::Int4}) {
    for (auto [n, k] : std::vector<std::pair<int64_t, int64_t>>{{6, 70}, {5, 32}, {4, 1}, {3, 300}}) {
      const Tensor w = special_weight(n, k, 600 + static_cast<uint64_t>(n * k));
      const auto [cc, sc] = quantize_weight(w, scheme);
      const auto [cg, sg] = quantize_weight(gpu(w), scheme);
      const std::string what = std::string(quant_scheme_name(scheme)) + " " + std::to_string(n) + "x" +
                               std::to_string(k);
      EXPECT_TRUE(close_to_cpu(cg, cc, 0, 0)) << what << " codes";
      EXPECT_TRUE(close_to_cpu(sg, sc, 0, 0)) << what << " scales";
      EXPECT_TRUE(close_to_cpu(dequantize_weight(cg, sg, scheme, k), dequantize_weight(cc, sc, scheme, k), 0, 0))
          << what << " dequantized";
      // A strided weight (a transpose) quantizes as its contiguous copy does.
      const Tensor wt = gpu(w.t().contiguous()).t();
      if (n > 1 && k > 1) {
        ASSERT_FALSE(wt.is_contiguous());
      }
      const auto [ct, st] = quantize_weight(wt, scheme);
      EXPECT_TRUE(close_to_cpu(ct, cc, 0, 0)) << what << " strided codes";
      EXPECT_TRUE(close_to_cpu(st, sc, 0, 0)) << what << " strided scales";
    }
  }
}

TEST(CudaQuant, QuantizedLinearBitForBit) {
  LOOM_REQUIRE_GPU();
  NoGradGuard no_grad;
  uint64_t seed = 700;
  for (QuantScheme scheme : {QuantScheme::Int8, QuantScheme::Int4}) {
    for (auto [m, k, n] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
             {1, 70, 5}, {7, 256, 9}, {33, 33, 40}, {3, 1, 4}, {2, 1000, 3}}) {
      const Tensor w = special_weight(n, k, seed++);
      const auto [codes, scales] = quantize_weight(w, scheme);
      const Tensor cg = gpu(codes), sg = gpu(scales);
      const Tensor x = randn_cpu({m, k}, seed++);
      const Tensor bias = randn_cpu({n}, seed++);
      const std::string what = std::string(quant_scheme_name(scheme)) + " m " + std::to_string(m) + " k " +
                               std::to_string(k) + " n " + std::to_string(n);
      EXPECT_TRUE(close_to_cpu(quantized_linear(gpu(x), cg, sg, Tensor(), scheme),
                               quantized_linear(x, codes, scales, Tensor(), scheme), 0, 0))
          << what;
      EXPECT_TRUE(close_to_cpu(quantized_linear(gpu(x), cg, sg, gpu(bias), scheme),
                               quantized_linear(x, codes, scales, bias, scheme), 0, 0))
          << what << " with bias";
      // x strided (a transpose), a strided bias, and a leading batch dim.
      const Tensor xt = gpu(x.t().contiguous()).t();
      const Tensor bias2 = randn_cpu({n, 2}, seed++);
      EXPECT_TRUE(close_to_cpu(quantized_linear(xt, cg, sg, gpu(bias2).select(1, 1), scheme),
                               quantized_linear(x, codes, scales, bias2.select(1, 1), scheme), 0, 0))
          << what << " strided";
      const Tensor x3 = randn_cpu({2, m, k}, seed++);
      EXPECT_TRUE(close_to_cpu(quantized_linear(gpu(x3), cg, sg, gpu(bias), scheme),
                               quantized_linear(x3, codes, scales, bias, scheme), 0, 0))
          << what << " batched";
    }
  }
}

// int8 codes as a file may hold them: -128 included (QuantizeWeight never
// writes it), multiplied exactly on both devices.
TEST(CudaQuant, Int8CodesFromAFile) {
  LOOM_REQUIRE_GPU();
  NoGradGuard no_grad;
  const int64_t m = 5, k = 200, n = 6;
  const Tensor codes = randint(-128, 128, {n, k}, kInt8, Generator(800));
  const Tensor scales = rand({n}, kFloat32, Generator(801));
  const Tensor x = randn_cpu({m, k}, 802);
  EXPECT_TRUE(close_to_cpu(quantized_linear(gpu(x), gpu(codes), gpu(scales), Tensor(), QuantScheme::Int8),
                           quantized_linear(x, codes, scales, Tensor(), QuantScheme::Int8), 0, 0));
  EXPECT_TRUE(close_to_cpu(dequantize_weight(gpu(codes), gpu(scales), QuantScheme::Int8, k),
                           dequantize_weight(codes, scales, QuantScheme::Int8, k), 0, 0));
  const Tensor codes4 = randint(0, 256, {n, 4 * 16}, kUInt8, Generator(803));
  const Tensor scales4 = randn_cpu({n, 4}, 804);
  const Tensor x4 = randn_cpu({m, 128}, 805);
  EXPECT_TRUE(close_to_cpu(quantized_linear(gpu(x4), gpu(codes4), gpu(scales4), Tensor(), QuantScheme::Int4),
                           quantized_linear(x4, codes4, scales4, Tensor(), QuantScheme::Int4), 0, 0));
  EXPECT_TRUE(close_to_cpu(dequantize_weight(gpu(codes4), gpu(scales4), QuantScheme::Int4, 128),
                           dequantize_weight(codes4, scales4, QuantScheme::Int4, 128), 0, 0));
}

}  // namespace
}  // namespace loom
