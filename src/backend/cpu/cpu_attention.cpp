// The attention kernels: Attention and AttentionBackward (calling
// conventions in ops.def).
//
// Note [Attention kernels]
// o = dropout(softmax(q k^T scale + mask)) v per (batch, head), never
// holding the Tq x Tk matrix of weights:
//  - the reference (every float dtype) takes one query row at a time, its
//    Tk scores in a buffer, sums in double; the backward takes one
//    (batch, head) per thread and accumulates dk, dv in double;
//  - float32 is tiled as FlashAttention (Dao et al., 2022): the forward
//    walks a block of Br query rows over blocks of Bc keys, keeping each
//    row's running maximum m and sum l of exp(s - m) (the online softmax),
//    rescaling the output accumulated so far when m grows; the backward
//    recomputes each block of weights from the saved log-sum-exp,
//    P = exp(s - lse), instead of storing them, and walks key blocks
//    outermost so each block's dk, dv are summed once and written, while dq
//    accumulates in place. The products are loom's sgemm on the blocks.
// Memory therefore grows with T (the blocks, the output, lse), not T^2.
// Dropout draws each weight's keep bit from Philox at a fixed counter
// (ops.def), so the backward regenerates the same mask. Work is split by
// (batch, head, query block) in the forward and by (batch, head) in the
// backward, each computed in a fixed order: the bits do not depend on the
// thread count.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "backend/cpu/cpu_dispatch.h"
#include "backend/cpu/cpu_gemm.h"
#include "backend/cpu/cpu_kernels.h"
#include "backend/cpu/cpu_scratch.h"
#include "backend/cpu/cpu_vec.h"
#include "core/philox.h"

namespace loom::cpu {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

struct AttnShape {
  int64_t b, h, tq, tk, d, dv;
};

// Scale, causal flag, mask and dropout of one call.
struct AttnParams {
  double scale = 1, p = 0;
  bool causal = false;
  const TensorImpl* mask = nullptr;
  uint64_t seed = 0, offset = 0;
  int64_t heads = 1, tq = 0, tk = 0;

  // The additive mask at (bh, i, j), or 0 without one.
  template <typename T>
  double mask_at(int64_t bh, int64_t i, int64_t j) const {
    if (mask == nullptr) return 0.0;
    const int64_t* st = mask->strides.data();
    const T* m = data_ptr<T>(mask);
    return static_cast<double>(to_compute(m[(bh / heads) * st[0] + (bh % heads) * st[1] + i * st[2] + j * st[3]]));
  }
  bool dropout() const { return p > 0; }
  // Whether weight (bh, i, j) survives dropout.
  bool keep(int64_t bh, int64_t i, int64_t j) const {
    if (p >= 1) return false;
    const uint64_t idx = static_cast<uint64_t>((bh * tq + i) * tk + j);
    return static_cast<double>(philox::uniform_float(seed, offset + idx)) < 1.0 - p;
  }
  // 1 / (1 - p): the survivors' scale (0 when everything is dropped).
  double inv_keep() const { return p >= 1 ? 0.0 : 1.0 / (1.0 - p); }
};

AttnShape shape_of(const TensorImpl* q, const TensorImpl* k, const TensorImpl* v) {
  LOOM_ASSERT(q->dim() == 4 && k->dim() == 4 && v->dim() == 4, "attention kernel: expected 4-d q, k, v");
  return {q->sizes[0], q->sizes[1], q->sizes[2], k->sizes[2], q->sizes[3], v->sizes[3]};
}

AttnParams params_of(const KernelCall& c, const AttnShape& s, int mask_input) {
  AttnParams a;
  a.scale = c.f[0];
  a.p = c.f[1];
  a.causal = c.i[0] != 0;
  a.mask = c.i[1] != 0 ? c.in[mask_input] : nullptr;
  a.seed = static_cast<uint64_t>(c.i[2]);
  a.offset = static_cast<uint64_t>(c.i[3]);
  a.heads = s.h;
  a.tq = s.tq;
  a.tk = s.tk;
  return a;
}

// Row i's scaled, masked scores over keys [0, tk) into s (double).
template <typename T>
void scores_row(const AttnShape& sh, const AttnParams& a, const T* q, const T* k, int64_t bh, int64_t i, double* s) {
  const T* qi = q + (bh * sh.tq + i) * sh.d;
  for (int64_t j = 0; j < sh.tk; ++j) {
    if (a.causal && j > i) {
      s[j] = -kInf;
      continue;
    }
    const T* kj = k + (bh * sh.tk + j) * sh.d;
    double dot = 0;
    for (int64_t e = 0; e < sh.d; ++e) dot += static_cast<double>(to_compute(qi[e])) * static_cast<double>(to_compute(kj[e]));
    s[j] = dot * a.scale + a.mask_at<T>(bh, i, j);
  }
}

// ---- reference kernels ----

// Each kernel's per-thread buffers (Note [Kernel workspaces]): one layout
// function per kernel, walked by its size function and by the kernel.
int64_t reference_rows(const AttnShape& sh) { return sh.b * sh.h * sh.tq; }
int64_t reference_grain(const AttnShape& sh) {
  return std::max<int64_t>(1, kGrain / std::max<int64_t>(sh.tk * (sh.d + sh.dv), 1));
}
struct ReferenceForwardScratch {
  double *s, *acc;
  static ReferenceForwardScratch take(WorkspaceLayout& ws, const AttnShape& sh) {
    return {ws.take<double>(sh.tk), ws.take<double>(sh.dv)};
  }
};
struct ReferenceBackwardScratch {
  double *s, *dqa, *dka, *dva;
  static ReferenceBackwardScratch take(WorkspaceLayout& ws, const AttnShape& sh) {
    return {ws.take<double>(sh.tk), ws.take<double>(sh.d), ws.take<double>(sh.tk * sh.d),
            ws.take<double>(sh.tk * sh.dv)};
  }
};

template <typename T>
void attention_reference(const KernelCall& c, const AttnShape& sh, const AttnParams& a, const T* q, const T* k,
                         const T* v, T* o, T* lse) {
  const auto layout = [&](WorkspaceLayout& ws) { return ReferenceForwardScratch::take(ws, sh); };
  parallel_slots(reference_rows(sh), reference_grain(sh), [&](int64_t slot, int64_t lo, int64_t hi) {
    WorkspaceLayout ws = slot_workspace(c, slot, layout);
    const ReferenceForwardScratch b = layout(ws);
    double *s = b.s, *acc = b.acc;
    for (int64_t r = lo; r < hi; ++r) {
      const int64_t bh = r / sh.tq, i = r % sh.tq;
      scores_row(sh, a, q, k, bh, i, s);
      double m = -kInf;
      for (int64_t j = 0; j < sh.tk; ++j) m = std::max(m, s[j]);
      T* orow = o + r * sh.dv;
      if (m == -kInf) {  // every key masked: softmax is 0 / 0
        std::fill(orow, orow + sh.dv, convert<T>(std::numeric_limits<double>::quiet_NaN()));
        lse[r] = convert<T>(-kInf);
        continue;
      }
      double l = 0;
      for (int64_t j = 0; j < sh.tk; ++j) l += (s[j] = std::exp(s[j] - m));
      std::fill(acc, acc + sh.dv, 0.0);
      for (int64_t j = 0; j < sh.tk; ++j) {
        double pj = s[static_cast<size_t>(j)] / l;
        if (a.dropout()) pj = a.keep(bh, i, j) ? pj * a.inv_keep() : 0.0;
        if (pj == 0) continue;
        const T* vj = v + (bh * sh.tk + j) * sh.dv;
        for (int64_t e = 0; e < sh.dv; ++e) acc[static_cast<size_t>(e)] += pj * static_cast<double>(to_compute(vj[e]));
      }
      for (int64_t e = 0; e < sh.dv; ++e) orow[e] = convert<T>(acc[static_cast<size_t>(e)]);
      lse[r] = convert<T>(m + std::log(l));
    }
  });
}

template <typename T>
void attention_backward_reference(const KernelCall& c, const AttnShape& sh, const AttnParams& a, const T* g,
                                  const T* q, const T* k, const T* v, const T* o, const T* lse, T* dq, T* dk, T* dv) {
  const auto layout = [&](WorkspaceLayout& ws) { return ReferenceBackwardScratch::take(ws, sh); };
  parallel_slots(sh.b * sh.h, 1, [&](int64_t slot, int64_t lo, int64_t hi) {
    WorkspaceLayout ws = slot_workspace(c, slot, layout);
    const ReferenceBackwardScratch b = layout(ws);
    double *s = b.s, *dqa = b.dqa, *dka = b.dka, *dva = b.dva;
    for (int64_t bh = lo; bh < hi; ++bh) {
      std::fill(dka, dka + sh.tk * sh.d, 0.0);
      std::fill(dva, dva + sh.tk * sh.dv, 0.0);
      for (int64_t i = 0; i < sh.tq; ++i) {
        const int64_t r = bh * sh.tq + i;
        const T* gi = g + r * sh.dv;
        const T* qi = q + r * sh.d;
        scores_row(sh, a, q, k, bh, i, s);
        const double li = static_cast<double>(to_compute(lse[r]));
        double di = 0;  // dO . o = sum_j p_j dp_j
        for (int64_t e = 0; e < sh.dv; ++e)
          di += static_cast<double>(to_compute(gi[e])) * static_cast<double>(to_compute(o[r * sh.dv + e]));
        std::fill(dqa, dqa + sh.d, 0.0);
        for (int64_t j = 0; j < sh.tk; ++j) {
          const double pj = s[static_cast<size_t>(j)] == -kInf ? 0.0 : std::exp(s[static_cast<size_t>(j)] - li);
          const bool kept = !a.dropout() || a.keep(bh, i, j);
          const double drop = a.dropout() ? (kept ? a.inv_keep() : 0.0) : 1.0;
          const T* vj = v + (bh * sh.tk + j) * sh.dv;
          const T* kj = k + (bh * sh.tk + j) * sh.d;
          double dpj = 0;
          for (int64_t e = 0; e < sh.dv; ++e) {
            const double ge = static_cast<double>(to_compute(gi[e]));
            dva[static_cast<size_t>(j * sh.dv + e)] += pj * drop * ge;
            dpj += ge * static_cast<double>(to_compute(vj[e]));
          }
          const double ds = pj * (dpj * drop - di) * a.scale;
          if (ds == 0) continue;
          for (int64_t e = 0; e < sh.d; ++e) {
            dqa[static_cast<size_t>(e)] += ds * static_cast<double>(to_compute(kj[e]));
            dka[static_cast<size_t>(j * sh.d + e)] += ds * static_cast<double>(to_compute(qi[e]));
          }
        }
        for (int64_t e = 0; e < sh.d; ++e) dq[r * sh.d + e] = convert<T>(dqa[static_cast<size_t>(e)]);
      }
      for (int64_t x = 0; x < sh.tk * sh.d; ++x) dk[bh * sh.tk * sh.d + x] = convert<T>(dka[static_cast<size_t>(x)]);
      for (int64_t x = 0; x < sh.tk * sh.dv; ++x) dv[bh * sh.tk * sh.dv + x] = convert<T>(dva[static_cast<size_t>(x)]);
    }
  });
}

// ---- float32, tiled (Note [Attention kernels]) ----

constexpr int64_t kBlockQ = 64;   // Br: query rows per block
constexpr int64_t kBlockK = 128;  // Bc: keys per block in the forward
constexpr int64_t kBlockKB = 64;  // keys per block in the backward

// s[c] (c < cols) = s[c] * scale + mask, -inf where causal hides key j0 + c from query i.
void mask_block_row(const AttnShape& sh, const AttnParams& a, int64_t bh, int64_t i, int64_t j0, int64_t cols,
                    float* s) {
  const float scale = static_cast<float>(a.scale);
  if (a.mask != nullptr) {
    const int64_t* st = a.mask->strides.data();
    const float* m = data_ptr<float>(a.mask) + (bh / sh.h) * st[0] + (bh % sh.h) * st[1] + i * st[2] + j0 * st[3];
    for (int64_t c = 0; c < cols; ++c) s[c] = s[c] * scale + m[c * st[3]];
  } else {
    for (int64_t c = 0; c < cols; ++c) s[c] *= scale;
  }
  if (a.causal)
    for (int64_t c = std::max<int64_t>(0, i - j0 + 1); c < cols; ++c) s[c] = -std::numeric_limits<float>::infinity();
}

int64_t forward_tasks(const AttnShape& sh) { return sh.b * sh.h * ((sh.tq + kBlockQ - 1) / kBlockQ); }
// The block products' packing space (Note [GEMM packing space]); `nested`
// when the slots run on several threads (each product then on one).
GemmWorkspace take_pack(WorkspaceLayout& ws, int64_t m, int64_t n, int64_t k, bool nested) {
  const int64_t floats = sgemm_workspace_bound(gemm_isa(), m, n, k, nested);
  return {ws.take<float>(floats), floats};
}
struct ForwardScratch {
  float *sbuf, *acc, *tmp, *m, *l;
  GemmWorkspace pack;
  static ForwardScratch take(WorkspaceLayout& ws, const AttnShape& sh, bool nested) {
    return {ws.take<float>(kBlockQ * kBlockK), ws.take<float>(kBlockQ * sh.dv), ws.take<float>(kBlockQ * sh.dv),
            ws.take<float>(kBlockQ), ws.take<float>(kBlockQ),
            take_pack(ws, kBlockQ, std::max(kBlockK, sh.dv), std::max(kBlockK, sh.d), nested)};
  }
};
struct BackwardScratch {
  float *pbuf, *pdrop, *dpbuf, *tmp, *dka, *dva, *di;
  GemmWorkspace pack;
  static BackwardScratch take(WorkspaceLayout& ws, const AttnShape& sh, bool nested) {
    const int64_t wide = std::max(sh.d, sh.dv), tall = std::max(kBlockQ, kBlockKB);
    return {ws.take<float>(kBlockQ * kBlockKB), ws.take<float>(kBlockQ * kBlockKB), ws.take<float>(kBlockQ * kBlockKB),
            ws.take<float>(tall * wide),        ws.take<float>(kBlockKB * sh.d),    ws.take<float>(kBlockKB * sh.dv),
            ws.take<float>(sh.tq),              take_pack(ws, tall, std::max(kBlockKB, wide), std::max(tall, wide), nested)};
  }
};

void attention_forward_f32(const KernelCall& c, const AttnShape& sh, const AttnParams& a, const float* q,
                           const float* k, const float* v, float* o, float* lse) {
  const int64_t qblocks = (sh.tq + kBlockQ - 1) / kBlockQ;
  const GemmIsa isa = gemm_isa();
  const VecKernels& vk = vec();
  const float ninf = -std::numeric_limits<float>::infinity();
  const bool nested = slot_count(forward_tasks(sh), 1) > 1;
  const auto layout = [&](WorkspaceLayout& ws) { return ForwardScratch::take(ws, sh, nested); };
  parallel_slots(forward_tasks(sh), 1, [&](int64_t slot, int64_t lo, int64_t hi) {
    WorkspaceLayout ws = slot_workspace(c, slot, layout);
    const ForwardScratch b = layout(ws);
    float *sbuf = b.sbuf, *acc = b.acc, *tmp = b.tmp, *m = b.m, *l = b.l;
    for (int64_t t = lo; t < hi; ++t) {
      const int64_t bh = t / qblocks, i0 = (t % qblocks) * kBlockQ, rows = std::min(kBlockQ, sh.tq - i0);
      std::fill(m, m + kBlockQ, ninf);
      std::fill(l, l + kBlockQ, 0.0f);
      std::fill(acc, acc + rows * sh.dv, 0.0f);
      const int64_t jend = a.causal ? std::min(sh.tk, i0 + rows) : sh.tk;
      const float* qb = q + (bh * sh.tq + i0) * sh.d;
      for (int64_t j0 = 0; j0 < jend; j0 += kBlockK) {
        const int64_t cols = std::min(kBlockK, jend - j0);
        // S (rows, cols) = Q_i K_j^T.
        sgemm(isa, 1, rows, cols, sh.d, {qb, 0, sh.d, 1}, {k + (bh * sh.tk + j0) * sh.d, 0, 1, sh.d},
              {sbuf, 0, kBlockK, 1}, nullptr, b.pack);
        for (int64_t r = 0; r < rows; ++r) {
          float* s = sbuf + r * kBlockK;
          const int64_t i = i0 + r;
          mask_block_row(sh, a, bh, i, j0, cols, s);
          float mx = ninf;
          for (int64_t c = 0; c < cols; ++c) mx = std::max(mx, s[c]);
          const float mnew = std::max(m[r], mx);
          float* ar = acc + r * sh.dv;
          if (mnew == ninf) {  // every key so far masked: weights 0
            std::fill(s, s + cols, 0.0f);
            continue;
          }
          const float alpha = std::exp(m[r] - mnew);
          for (int64_t c = 0; c < cols; ++c) s[c] -= mnew;
          vk.unary_f32(VecUnary::Exp, s, s, cols);
          float sum = 0;
          for (int64_t c = 0; c < cols; ++c) sum += s[c];
          l[r] = l[r] * alpha + sum;
          m[r] = mnew;
          if (a.dropout()) {
            const float inv = static_cast<float>(a.inv_keep());
            for (int64_t c = 0; c < cols; ++c) s[c] = a.keep(bh, i, j0 + c) ? s[c] * inv : 0.0f;
          }
          if (alpha != 1.0f)
            for (int64_t e = 0; e < sh.dv; ++e) ar[e] *= alpha;
        }
        // acc += P V_j.
        sgemm(isa, 1, rows, sh.dv, cols, {sbuf, 0, kBlockK, 1}, {v + (bh * sh.tk + j0) * sh.dv, 0, sh.dv, 1},
              {tmp, 0, sh.dv, 1}, nullptr, b.pack);
        for (int64_t x = 0; x < rows * sh.dv; ++x) acc[x] += tmp[x];
      }
      for (int64_t r = 0; r < rows; ++r) {
        float* orow = o + (bh * sh.tq + i0 + r) * sh.dv;
        const float lr = l[r], mr = m[r];
        if (mr == ninf) {
          std::fill(orow, orow + sh.dv, std::numeric_limits<float>::quiet_NaN());
          lse[bh * sh.tq + i0 + r] = ninf;
          continue;
        }
        const float inv = 1.0f / lr;
        for (int64_t e = 0; e < sh.dv; ++e) orow[e] = acc[r * sh.dv + e] * inv;
        lse[bh * sh.tq + i0 + r] = mr + std::log(lr);
      }
    }
  });
}

void attention_backward_f32(const KernelCall& c, const AttnShape& sh, const AttnParams& a, const float* g,
                            const float* q, const float* k, const float* v, const float* o, const float* lse, float* dq,
                            float* dk, float* dv) {
  const GemmIsa isa = gemm_isa();
  const VecKernels& vk = vec();
  const float scale = static_cast<float>(a.scale);
  const bool nested = slot_count(sh.b * sh.h, 1) > 1;
  const auto layout = [&](WorkspaceLayout& ws) { return BackwardScratch::take(ws, sh, nested); };
  parallel_slots(sh.b * sh.h, 1, [&](int64_t slot, int64_t lo, int64_t hi) {
    WorkspaceLayout ws = slot_workspace(c, slot, layout);
    const BackwardScratch b = layout(ws);
    float *pbuf = b.pbuf, *pdrop = b.pdrop, *dpbuf = b.dpbuf, *tmp = b.tmp, *dka = b.dka, *dva = b.dva, *di = b.di;
    for (int64_t bh = lo; bh < hi; ++bh) {
      const float* gb = g + bh * sh.tq * sh.dv;
      const float* qb = q + bh * sh.tq * sh.d;
      const float* kb = k + bh * sh.tk * sh.d;
      const float* vb = v + bh * sh.tk * sh.dv;
      const float* lb = lse + bh * sh.tq;
      float* dqb = dq + bh * sh.tq * sh.d;
      // D_i = dO_i . o_i (= sum_j p_j dp_j).
      for (int64_t i = 0; i < sh.tq; ++i) {
        double acc = 0;
        for (int64_t e = 0; e < sh.dv; ++e)
          acc += static_cast<double>(gb[i * sh.dv + e]) * static_cast<double>(o[(bh * sh.tq + i) * sh.dv + e]);
        di[i] = static_cast<float>(acc);
      }
      std::fill(dqb, dqb + sh.tq * sh.d, 0.0f);
      for (int64_t j0 = 0; j0 < sh.tk; j0 += kBlockKB) {
        const int64_t cols = std::min(kBlockKB, sh.tk - j0);
        std::fill(dka, dka + cols * sh.d, 0.0f);
        std::fill(dva, dva + cols * sh.dv, 0.0f);
        // Causal: queries before j0 see none of these keys.
        const int64_t istart = a.causal ? std::min(sh.tq, j0) / kBlockQ * kBlockQ : 0;
        for (int64_t i0 = istart; i0 < sh.tq; i0 += kBlockQ) {
          const int64_t rows = std::min(kBlockQ, sh.tq - i0);
          // P = exp(S - lse), S = Q_i K_j^T scale + mask.
          sgemm(isa, 1, rows, cols, sh.d, {qb + i0 * sh.d, 0, sh.d, 1}, {kb + j0 * sh.d, 0, 1, sh.d},
                {pbuf, 0, kBlockKB, 1}, nullptr, b.pack);
          for (int64_t r = 0; r < rows; ++r) {
            float* p = pbuf + r * kBlockKB;
            mask_block_row(sh, a, bh, i0 + r, j0, cols, p);
            const float lr = lb[i0 + r];
            for (int64_t c = 0; c < cols; ++c) p[c] -= lr;
            vk.unary_f32(VecUnary::Exp, p, p, cols);
          }
          const float* pd = pbuf;
          if (a.dropout()) {
            const float inv = static_cast<float>(a.inv_keep());
            for (int64_t r = 0; r < rows; ++r)
              for (int64_t c = 0; c < cols; ++c)
                pdrop[r * kBlockKB + c] = a.keep(bh, i0 + r, j0 + c) ? pbuf[r * kBlockKB + c] * inv : 0.0f;
            pd = pdrop;
          }
          // dV_j += P_drop^T dO_i.
          sgemm(isa, 1, cols, sh.dv, rows, {pd, 0, 1, kBlockKB}, {gb + i0 * sh.dv, 0, sh.dv, 1}, {tmp, 0, sh.dv, 1}, nullptr, b.pack);
          for (int64_t x = 0; x < cols * sh.dv; ++x) dva[x] += tmp[x];
          // dP_drop = dO_i V_j^T, then dS = P (dP - D_i) with dP = dropout(dP_drop).
          sgemm(isa, 1, rows, cols, sh.dv, {gb + i0 * sh.dv, 0, sh.dv, 1}, {vb + j0 * sh.dv, 0, 1, sh.dv},
                {dpbuf, 0, kBlockKB, 1}, nullptr, b.pack);
          for (int64_t r = 0; r < rows; ++r) {
            const float dr = di[i0 + r];
            float* ds = dpbuf + r * kBlockKB;
            const float* p = pbuf + r * kBlockKB;
            if (a.dropout()) {
              const float* pdr = pdrop + r * kBlockKB;
              // p * dropout(dp) = pdrop * dp (the same keep bit and scale).
              for (int64_t c = 0; c < cols; ++c) ds[c] = pdr[c] * ds[c] - p[c] * dr;
            } else {
              for (int64_t c = 0; c < cols; ++c) ds[c] = p[c] * (ds[c] - dr);
            }
          }
          // dQ_i += scale dS K_j; dK_j += scale dS^T Q_i.
          sgemm(isa, 1, rows, sh.d, cols, {dpbuf, 0, kBlockKB, 1}, {kb + j0 * sh.d, 0, sh.d, 1},
                {tmp, 0, sh.d, 1}, nullptr, b.pack);
          float* dqi = dqb + i0 * sh.d;
          for (int64_t x = 0; x < rows * sh.d; ++x) dqi[x] += scale * tmp[x];
          sgemm(isa, 1, cols, sh.d, rows, {dpbuf, 0, 1, kBlockKB}, {qb + i0 * sh.d, 0, sh.d, 1},
                {tmp, 0, sh.d, 1}, nullptr, b.pack);
          for (int64_t x = 0; x < cols * sh.d; ++x) dka[x] += scale * tmp[x];
        }
        std::copy(dka, dka + cols * sh.d, dk + (bh * sh.tk + j0) * sh.d);
        std::copy(dva, dva + cols * sh.dv, dv + (bh * sh.tk + j0) * sh.dv);
      }
    }
  });
}

bool attention_fast(const KernelCall& c) { return c.in[0]->dtype == kFloat32 && vec_enabled(); }

}  // namespace

namespace kernel {

void Attention(const KernelCall& c) {
  const TensorImpl *q = c.in[0], *k = c.in[1], *v = c.in[2];
  const AttnShape sh = shape_of(q, k, v);
  const AttnParams a = params_of(c, sh, 3);
  TensorImpl *o = c.out[0], *lse = c.out[1];
  if (o->numel() == 0) return;
  if (attention_fast(c)) {
    attention_forward_f32(c, sh, a, data_ptr<float>(q), data_ptr<float>(k), data_ptr<float>(v), data_ptr<float>(o),
                          data_ptr<float>(lse));
    return;
  }
  dispatch_float(q->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    attention_reference<T>(c, sh, a, data_ptr<T>(q), data_ptr<T>(k), data_ptr<T>(v), data_ptr<T>(o), data_ptr<T>(lse));
  });
}

void AttentionBackward(const KernelCall& c) {
  const TensorImpl *g = c.in[0], *q = c.in[1], *k = c.in[2], *v = c.in[3], *o = c.in[4], *lse = c.in[5];
  const AttnShape sh = shape_of(q, k, v);
  const AttnParams a = params_of(c, sh, 6);
  TensorImpl *dq = c.out[0], *dk = c.out[1], *dv = c.out[2];
  if (attention_fast(c)) {
    attention_backward_f32(c, sh, a, data_ptr<float>(g), data_ptr<float>(q), data_ptr<float>(k), data_ptr<float>(v),
                           data_ptr<float>(o), data_ptr<float>(lse), data_ptr<float>(dq), data_ptr<float>(dk),
                           data_ptr<float>(dv));
    return;
  }
  dispatch_float(q->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    attention_backward_reference<T>(c, sh, a, data_ptr<T>(g), data_ptr<T>(q), data_ptr<T>(k), data_ptr<T>(v),
                                    data_ptr<T>(o), data_ptr<T>(lse), data_ptr<T>(dq), data_ptr<T>(dk),
                                    data_ptr<T>(dv));
  });
}

}  // namespace kernel

namespace workspace {

size_t Attention(const KernelCall& c) {
  const AttnShape sh = shape_of(c.in[0], c.in[1], c.in[2]);
  if (c.out[0]->numel() == 0) return 0;
  if (attention_fast(c))
  {
    const int64_t slots = slot_count(forward_tasks(sh), 1);
    return slots_workspace_bytes(slots, [&](WorkspaceLayout& ws) { ForwardScratch::take(ws, sh, slots > 1); });
  }
  return slots_workspace_bytes(slot_count(reference_rows(sh), reference_grain(sh)),
                               [&](WorkspaceLayout& ws) { ReferenceForwardScratch::take(ws, sh); });
}

size_t AttentionBackward(const KernelCall& c) {
  const AttnShape sh = shape_of(c.in[1], c.in[2], c.in[3]);
  if (attention_fast(c))
  {
    const int64_t slots = slot_count(sh.b * sh.h, 1);
    return slots_workspace_bytes(slots, [&](WorkspaceLayout& ws) { BackwardScratch::take(ws, sh, slots > 1); });
  }
  return slots_workspace_bytes(slot_count(sh.b * sh.h, 1),
                               [&](WorkspaceLayout& ws) { ReferenceBackwardScratch::take(ws, sh); });
}

}  // namespace workspace

}  // namespace loom::cpu
