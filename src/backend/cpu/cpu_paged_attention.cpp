// The PagedAttention kernel (calling convention in ops.def): attention over a
// paged KV cache, for serving.
//
// Note [Paged attention]
// The cache is vLLM's (Kwon et al., 2023): keys and values live in one pool
// of NB blocks of B token rows, (NB, B, H, D); position p of sequence s is
// row p % B of block block_tables[s][p / B]. A call's T query tokens come
// from any mix of sequences, decode steps and prefill chunks side by side
// (continuous batching): token t, of sequence seq_index[t] at position
// positions[t], attends that sequence's positions 0..positions[t].
//
// One task is one (token, head), computed by one thread in one fixed order,
// the keys in increasing position. So a token's output depends on its own
// query and its sequence's keys and values only: never on which tokens share
// the batch, where they sit in it, or the thread count. Serving many
// sequences together gives, bit for bit, what serving each alone gives.
//  - The reference (every float dtype) scores all the token's keys into a
//    buffer in double, then takes the softmax and the weighted sum of the
//    values in double, as Note [Attention kernels]'s reference does.
//  - float32 runs an online softmax (FlashAttention's) over the cache blocks,
//    in float32: per block, the scores s_j = q . k_j scale, the new running
//    max m' = max(m, max_j s_j), the weights w_j = exp(s_j - m'), the running
//    sum l = l exp(m - m') + sum_j w_j and the accumulator
//    acc = acc exp(m - m') + sum_j w_j v_j; at the end o = acc / l. Each dot
//    product keeps kLanes partial sums (lane l takes the elements l mod
//    kLanes, added pairwise at the end), so the compiler vectorizes it in
//    that fixed order; the value sum is an axpy per key. The loop is compiled
//    for each ISA (LOOM_ISA_CLONES) and exp is the vector kernels', so the
//    bits may differ between ISAs (FMA, exp's polynomial), never between
//    batches or thread counts on one.
// The pool is read where it is, through its strides: nothing is gathered
// into contiguous keys and values first, and the block table is read once
// per block.
//
// Every index a task reads is checked before any task runs: seq_index in
// [0, S), positions >= 0 and inside the table (positions / B < MB), and the
// block ids of blocks 0..positions[t] / B of the token's row in [0, NB). A
// bad one is a loom::Error naming the op, the token and the value, never an
// out-of-bounds read. Entries past a sequence's last block are not read, so
// they may hold anything (a padding id).
#include <algorithm>
#include <cmath>
#include <limits>

#include "backend/cpu/cpu_dispatch.h"
#include "backend/cpu/cpu_isa.h"
#include "backend/cpu/cpu_kernels.h"
#include "backend/cpu/cpu_scratch.h"
#include "backend/cpu/cpu_vec.h"
#include "backend/paged_attention.h"

namespace loom::cpu {
namespace {

// The block ids, int32 or int64 (contiguous).
struct BlockTable {
  const int32_t* i32 = nullptr;
  const int64_t* i64 = nullptr;
  int64_t width = 0;
  int64_t at(int64_t seq, int64_t block) const {
    const int64_t x = seq * width + block;
    return i64 != nullptr ? i64[x] : static_cast<int64_t>(i32[x]);
  }
};

BlockTable table_of(const KernelCall& c, const PagedShape& g) {
  BlockTable b;
  b.width = g.mb;
  if (c.in[3]->dtype == kInt64) b.i64 = data_ptr<int64_t>(c.in[3]);
  else b.i32 = data_ptr<int32_t>(c.in[3]);
  return b;
}

// Note [Paged attention]: every index any task will read, before any runs.
void check_indices(const PagedShape& g, const BlockTable& table, const int64_t* seq, const int64_t* pos) {
  for (int64_t t = 0; t < g.t; ++t)
    check_paged_token(g, t, seq[t], pos[t], [&](int64_t b) { return table.at(seq[t], b); });
}

// Tasks (token, head) per thread slot: the most a task can cost is its
// table's whole width of keys.
int64_t task_grain(const PagedShape& g) {
  return std::max<int64_t>(1, kGrain / std::max<int64_t>(1, g.mb * g.bs * (g.d + g.dv)));
}

// NaN-propagating max: a NaN score makes the row NaN, as in the sums.
template <typename A>
A max_nan(A m, A x) {
  return x > m || x != x ? x : m;
}

// ---- reference ----

struct ReferenceScratch {
  double *s, *acc;
  static ReferenceScratch take(WorkspaceLayout& ws, const PagedShape& g) {
    return {ws.take<double>(g.mb * g.bs), ws.take<double>(g.dv)};
  }
};

template <typename T>
void paged_reference(const KernelCall& c, const PagedShape& g, const BlockTable& table, const int64_t* seq,
                     const int64_t* pos) {
  const T *q = data_ptr<T>(c.in[0]), *k = data_ptr<T>(c.in[1]), *v = data_ptr<T>(c.in[2]);
  T* out = data_ptr<T>(c.out[0]);
  const double scale = c.f[0];
  const auto layout = [&](WorkspaceLayout& ws) { return ReferenceScratch::take(ws, g); };
  parallel_slots(g.t * g.h, task_grain(g), [&](int64_t slot, int64_t lo, int64_t hi) {
    WorkspaceLayout ws = slot_workspace(c, slot, layout);
    const ReferenceScratch b = layout(ws);
    double *s = b.s, *acc = b.acc;
    for (int64_t task = lo; task < hi; ++task) {
      const int64_t t = task / g.h, head = task % g.h, sq = seq[t], n = pos[t] + 1;
      const T* qi = q + task * g.d;
      double m = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < n; ++j) {
        const int64_t blk = table.at(sq, j / g.bs);
        const T* kj = k + blk * g.ks0 + (j % g.bs) * g.ks1 + head * g.ks2;
        double dot = 0;
        for (int64_t e = 0; e < g.d; ++e)
          dot += static_cast<double>(to_compute(qi[e])) * static_cast<double>(to_compute(kj[e]));
        s[j] = dot * scale;
        m = max_nan(m, s[j]);
      }
      T* orow = out + task * g.dv;
      if (m == -std::numeric_limits<double>::infinity()) {  // every score -inf: softmax is 0 / 0
        std::fill(orow, orow + g.dv, convert<T>(std::numeric_limits<double>::quiet_NaN()));
        continue;
      }
      double l = 0;
      for (int64_t j = 0; j < n; ++j) l += (s[j] = std::exp(s[j] - m));
      std::fill(acc, acc + g.dv, 0.0);
      for (int64_t j = 0; j < n; ++j) {
        const double w = s[j] / l;
        const int64_t blk = table.at(sq, j / g.bs);
        const T* vj = v + blk * g.vs0 + (j % g.bs) * g.vs1 + head * g.vs2;
        for (int64_t e = 0; e < g.dv; ++e) acc[e] += w * static_cast<double>(to_compute(vj[e]));
      }
      for (int64_t e = 0; e < g.dv; ++e) orow[e] = convert<T>(acc[e]);
    }
  });
}

// ---- float32: online softmax over the blocks (Note [Paged attention]) ----

constexpr int kLanes = 16;

// a . b over n floats: kLanes partial sums, lane l taking elements l mod
// kLanes, added pairwise at the end; the same order on every ISA (an ISA
// with FMA may fuse the multiply-adds).
[[gnu::always_inline]] inline float dot_f32(const float* __restrict a, const float* __restrict b, int64_t n) {
  float lane[kLanes] = {};
  int64_t e = 0;
  for (; e + kLanes <= n; e += kLanes)
    for (int l = 0; l < kLanes; ++l) lane[l] += a[e + l] * b[e + l];
  for (int l = 0; e < n; ++e, ++l) lane[l] += a[e] * b[e];
  for (int w = kLanes / 2; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) lane[l] += lane[l + w];
  return lane[0];
}

struct PagedF32Args {
  PagedShape g;
  BlockTable table;
  const float *q, *k, *v;
  const int64_t *seq, *pos;
  float* out;
  float scale;
  void (*unary)(VecUnary op, const float* x, float* y, int64_t n);  // the vector kernels' exp
};

struct F32Scratch {
  float *s, *acc;  // one block's scores (B), the accumulator (Dv)
  static F32Scratch take(WorkspaceLayout& ws, const PagedShape& g) {
    return {ws.take<float>(g.bs), ws.take<float>(g.dv)};
  }
};

// Tasks [lo, hi), with one slot's scratch.
[[gnu::always_inline]] inline void paged_f32_body(const PagedF32Args& a, float* __restrict s, float* __restrict acc,
                                                  int64_t lo, int64_t hi) {
  const PagedShape& g = a.g;
  const float ninf = -std::numeric_limits<float>::infinity();
  for (int64_t task = lo; task < hi; ++task) {
    const int64_t t = task / g.h, head = task % g.h, sq = a.seq[t], n = a.pos[t] + 1;
    const float* qi = a.q + task * g.d;
    float m = ninf, l = 0;
    std::fill(acc, acc + g.dv, 0.0f);
    for (int64_t j0 = 0; j0 < n; j0 += g.bs) {
      const int64_t cols = std::min(g.bs, n - j0), blk = a.table.at(sq, j0 / g.bs);
      const float* kb = a.k + blk * g.ks0 + head * g.ks2;
      const float* vb = a.v + blk * g.vs0 + head * g.vs2;
      float mx = ninf;
      for (int64_t c = 0; c < cols; ++c) {
        s[c] = dot_f32(qi, kb + c * g.ks1, g.d) * a.scale;
        mx = max_nan(mx, s[c]);
      }
      const float mnew = max_nan(m, mx);  // once NaN, the row stays NaN
      if (mnew == ninf) continue;         // every score so far -inf: weights 0
      const float alpha = std::exp(m - mnew);
      for (int64_t c = 0; c < cols; ++c) s[c] -= mnew;
      a.unary(VecUnary::Exp, s, s, cols);
      float sum = 0;
      for (int64_t c = 0; c < cols; ++c) sum += s[c];
      l = l * alpha + sum;
      m = mnew;
      if (alpha != 1.0f)
        for (int64_t e = 0; e < g.dv; ++e) acc[e] *= alpha;
      for (int64_t c = 0; c < cols; ++c) {
        const float w = s[c];
        const float* __restrict vr = vb + c * g.vs1;
        for (int64_t e = 0; e < g.dv; ++e) acc[e] += w * vr[e];
      }
    }
    float* orow = a.out + task * g.dv;
    if (m == ninf) {  // every score -inf: softmax is 0 / 0
      std::fill(orow, orow + g.dv, std::numeric_limits<float>::quiet_NaN());
      continue;
    }
    const float inv = 1.0f / l;
    for (int64_t e = 0; e < g.dv; ++e) orow[e] = acc[e] * inv;
  }
}

LOOM_ISA_CLONES(, paged_f32, (const PagedF32Args& a, float* s, float* acc, int64_t lo, int64_t hi), ,
                paged_f32_body(a, s, acc, lo, hi))

void paged_forward_f32(const KernelCall& c, const PagedShape& g, const BlockTable& table, const int64_t* seq,
                       const int64_t* pos) {
  const PagedF32Args a{g,   table, data_ptr<float>(c.in[0]),  data_ptr<float>(c.in[1]),   data_ptr<float>(c.in[2]),
                       seq, pos,   data_ptr<float>(c.out[0]), static_cast<float>(c.f[0]), vec().unary_f32};
  const auto run = paged_f32();
  const auto layout = [&](WorkspaceLayout& ws) { return F32Scratch::take(ws, g); };
  parallel_slots(g.t * g.h, task_grain(g), [&](int64_t slot, int64_t lo, int64_t hi) {
    WorkspaceLayout ws = slot_workspace(c, slot, layout);
    const F32Scratch b = layout(ws);
    run(a, b.s, b.acc, lo, hi);
  });
}

bool paged_fast(const KernelCall& c) { return c.in[0]->dtype == kFloat32 && vec_enabled(); }

}  // namespace

namespace kernel {

void PagedAttention(const KernelCall& c) {
  const PagedShape g = paged_shape_of(c);
  const BlockTable table = table_of(c, g);
  const int64_t* seq = data_ptr<int64_t>(c.in[4]);
  const int64_t* pos = data_ptr<int64_t>(c.in[5]);
  check_indices(g, table, seq, pos);
  if (c.out[0]->numel() == 0) return;
  if (paged_fast(c)) {
    paged_forward_f32(c, g, table, seq, pos);
    return;
  }
  dispatch_float(c.in[0]->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    paged_reference<T>(c, g, table, seq, pos);
  });
}

}  // namespace kernel

namespace workspace {

size_t PagedAttention(const KernelCall& c) {
  const PagedShape g = paged_shape_of(c);
  if (c.out[0]->numel() == 0) return 0;
  const int64_t slots = slot_count(g.t * g.h, task_grain(g));
  if (paged_fast(c)) return slots_workspace_bytes(slots, [&](WorkspaceLayout& ws) { F32Scratch::take(ws, g); });
  return slots_workspace_bytes(slots, [&](WorkspaceLayout& ws) { ReferenceScratch::take(ws, g); });
}

}  // namespace workspace

}  // namespace loom::cpu
