// CUDA kernels: Attention and AttentionBackward (calling conventions in
// ops.def; the CPU kernels of src/backend/cpu/cpu_attention.cpp, Note
// [Attention kernels], define every value computed here).
//
// Note [CUDA attention kernels]
// Two versions of each kernel, as on the CPU:
//  1. The reference (float32 and float64, any head dims): one warp per row
//     of the output, scores computed a lane per key (or per query) and
//     summed in double, the online softmax over chunks of 32 keys, the
//     output in chunks of 128 columns (4 per lane) so no buffer grows with
//     T or the head dim. It is the oracle the tiled version is checked by,
//     and what float32 runs where the tiled kernels do not fit (a head dim
//     over 128, or a GPU without the shared memory they ask for).
//  2. float32 tiled as FlashAttention-2 (Dao, 2023), on CUDA cores:
//     - forward: one block of 256 threads per 64 queries of one (b, h),
//       Q in shared memory, K and then V tiles of 64 keys streamed through
//       one shared buffer; each thread owns 4 query rows x 4 keys of the
//       score tile and 4 rows x DP/16 columns of the output accumulator
//       (registers); a row's running max m and sum l (float) are reduced
//       over the 16 lanes that share the row with shuffles. o = acc / l,
//       lse = m + log l, written as the CPU writes them.
//     - backward: D_i = dO_i . o_i first (double, into the workspace),
//       then P = exp(s - lse) is recomputed from Q, K and the saved lse in
//       two kernels: one per block of 64 keys, walking the query blocks
//       and holding that block's dK, dV in registers (written once); and
//       one per block of 64 queries, walking the key blocks and holding
//       dQ. The second pass recomputes S and dP once more (7 block products
//       instead of FlashAttention-2's 5) in exchange for no float atomics:
//       every gradient is a sum in a fixed order, so the same call gives
//       the same bits on every run, and no dQ accumulator in float32 needs
//       zeroing or a workspace.
//     The head dims are padded with zeros to DP = 64 or 128 (the two
//     instantiations), so any d, dv <= 128 runs tiled.
// The CPU's float32 path is tiled too and rounds in float; both versions
// here sum a dot product in another order, so float32 results agree with
// the CPU's to float rounding, float64 to double rounding. Dropout draws
// the CPU's Philox counters (ops.def), so the kept weights are the same
// bits; a row whose keys are all masked gives o = NaN and lse = -inf, as
// on the CPU (its gradients are NaN, as the CPU's float32 path gives them).
#include <cmath>
#include <limits>

#include "backend/cuda/cuda_tensor.cuh"
#include "core/philox.h"

namespace loom::cuda_detail {

namespace {

constexpr unsigned kFullMask = 0xffffffffu;

// An operand (B, H, T, E) read or written through its strides.
template <typename T>
struct View4 {
  T* p = nullptr;
  int64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  __device__ __forceinline__ T& at(int64_t b, int64_t h, int64_t t, int64_t e) const {
    return p[b * s0 + h * s1 + t * s2 + e * s3];
  }
};
// lse (B, H, T).
template <typename T>
struct View3 {
  T* p = nullptr;
  int64_t s0 = 0, s1 = 0, s2 = 0;
  __device__ __forceinline__ T& at(int64_t b, int64_t h, int64_t t) const { return p[b * s0 + h * s1 + t * s2]; }
};

template <typename T>
View4<T> view4(const TensorImpl* t) {
  LOOM_ASSERT(t->dim() == 4, "attention kernel: expected a 4-d tensor, got shape ", shape_str(t->sizes));
  return {data_of<T>(t), t->strides[0], t->strides[1], t->strides[2], t->strides[3]};
}
template <typename T>
View3<T> view3(const TensorImpl* t) {
  LOOM_ASSERT(t->dim() == 3, "attention kernel: expected a 3-d lse, got shape ", shape_str(t->sizes));
  return {data_of<T>(t), t->strides[0], t->strides[1], t->strides[2]};
}

// Dropout of one call (ops.def): weight (bh, i, j) is kept when its Philox
// draw, compared in double as the CPU compares it, is below 1 - p.
struct Dropout {
  bool on = false;          // p > 0
  double keep_below = 1;    // 1 - p (<= 0 when p >= 1: nothing kept)
  double inv = 1;           // 1 / (1 - p), 0 when p >= 1
  uint64_t seed = 0, offset = 0;
};

__device__ __forceinline__ bool kept(const Dropout& dr, int64_t tq, int64_t tk, int64_t bh, int64_t i, int64_t j) {
  const uint64_t idx = static_cast<uint64_t>((bh * tq + i) * tk + j);
  return static_cast<double>(philox::uniform_float(dr.seed, dr.offset + idx)) < dr.keep_below;
}

// What the forward and the backward share: q (B, H, Tq, D), k (B, H, Tk, D),
// v (B, H, Tk, Dv), the additive mask (B, H, Tq, Tk) (p null without one).
template <typename T>
struct AttnArgs {
  View4<const T> q, k, v, mask;
  int64_t b = 0, h = 0, tq = 0, tk = 0, d = 0, dv = 0;
  double scale = 1;
  bool causal = false;
  Dropout drop;
};

template <typename T>
struct BackwardArgs {
  AttnArgs<T> a;
  View4<const T> g, o;  // grad of o, o: (B, H, Tq, Dv)
  View3<const T> lse;
  const double* rowdot = nullptr;  // D (B * H * Tq) = rowsum(dO * o), contiguous
  View4<T> dq, dk, dv;
};

template <typename T>
AttnArgs<T> args_of(const KernelCall& c, int first, int mask_input) {
  const TensorImpl *q = c.in[first], *k = c.in[first + 1], *v = c.in[first + 2];
  AttnArgs<T> a;
  a.q = view4<const T>(q);
  a.k = view4<const T>(k);
  a.v = view4<const T>(v);
  if (c.i[1] != 0) {
    const TensorImpl* m = c.in[mask_input];
    LOOM_ASSERT(m != nullptr && m->dtype == q->dtype, "attention kernel: mask flagged but absent or of another dtype");
    a.mask = view4<const T>(m);
  }
  a.b = q->sizes[0];
  a.h = q->sizes[1];
  a.tq = q->sizes[2];
  a.tk = k->sizes[2];
  a.d = q->sizes[3];
  a.dv = v->sizes[3];
  a.scale = c.f[0];
  a.causal = c.i[0] != 0;
  const double p = c.f[1];
  a.drop.on = p > 0;
  a.drop.keep_below = 1.0 - p;
  a.drop.inv = p >= 1 ? 0.0 : 1.0 / (1.0 - p);
  a.drop.seed = static_cast<uint64_t>(c.i[2]);
  a.drop.offset = static_cast<uint64_t>(c.i[3]);
  return a;
}

template <typename T>
__device__ __forceinline__ double mask_at(const AttnArgs<T>& a, int64_t b, int64_t h, int64_t i, int64_t j) {
  return a.mask.p == nullptr ? 0.0 : static_cast<double>(a.mask.at(b, h, i, j));
}

__device__ __forceinline__ double warp_max(double x) {
  for (int o = 16; o > 0; o >>= 1) x = fmax(x, __shfl_xor_sync(kFullMask, x, o));
  return x;
}
__device__ __forceinline__ double warp_sum(double x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(kFullMask, x, o);
  return x;
}

// ---------------------------------------------------------------- reference

constexpr int kRefThreads = 128;  // 4 warps, a row each
constexpr int kRefCols = 4;       // output columns per lane per pass (128 per warp)

// The warp's row among `rows`, or -1 (warp-uniform).
__device__ __forceinline__ int64_t warp_row(int64_t rows) {
  const int64_t r = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  return r < rows ? r : -1;
}

template <typename T>
__device__ __forceinline__ double dot_rows(const View4<const T>& x, const View4<const T>& y, int64_t b, int64_t h,
                                           int64_t tx, int64_t ty, int64_t n) {
  double s = 0;
  for (int64_t e = 0; e < n; ++e) s += static_cast<double>(x.at(b, h, tx, e)) * static_cast<double>(y.at(b, h, ty, e));
  return s;
}

// One warp per query row (b, h, i): o (Dv) and lse, in double.
template <typename T>
__global__ void __launch_bounds__(kRefThreads) attention_forward_reference(AttnArgs<T> a, View4<T> o, View3<T> lse) {
  const double inf = std::numeric_limits<double>::infinity();
  const int64_t r = warp_row(a.b * a.h * a.tq);
  if (r < 0) return;
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int64_t bh = r / a.tq, i = r % a.tq, b = bh / a.h, h = bh % a.h;
  const int64_t jend = a.causal ? (a.tk < i + 1 ? a.tk : i + 1) : a.tk;
  for (int64_t e0 = 0; e0 < a.dv; e0 += 32 * kRefCols) {
    double m = -inf, l = 0, acc[kRefCols] = {};
    for (int64_t j0 = 0; j0 < jend; j0 += 32) {
      const int64_t j = j0 + lane;
      double s = -inf;
      if (j < jend) s = dot_rows(a.q, a.k, b, h, i, j, a.d) * a.scale + mask_at(a, b, h, i, j);
      const double mnew = fmax(m, warp_max(s));
      if (mnew == -inf) continue;  // every key so far masked: weights 0
      const double alpha = exp(m - mnew), p = exp(s - mnew);
      l = l * alpha + warp_sum(p);
      m = mnew;
      double pd = p;
      if (a.drop.on) pd = j < jend && kept(a.drop, a.tq, a.tk, bh, i, j) ? p * a.drop.inv : 0.0;
      for (int c = 0; c < kRefCols; ++c) acc[c] *= alpha;
      const int n = static_cast<int>(jend - j0 < 32 ? jend - j0 : 32);
      for (int t = 0; t < n; ++t) {
        const double pt = __shfl_sync(kFullMask, pd, t);
        if (pt == 0) continue;
        for (int c = 0; c < kRefCols; ++c) {
          const int64_t e = e0 + lane + 32 * c;
          if (e < a.dv) acc[c] += pt * static_cast<double>(a.v.at(b, h, j0 + t, e));
        }
      }
    }
    for (int c = 0; c < kRefCols; ++c) {
      const int64_t e = e0 + lane + 32 * c;
      if (e < a.dv)
        o.at(b, h, i, e) = static_cast<T>(m == -inf ? std::numeric_limits<double>::quiet_NaN() : acc[c] / l);
    }
    if (e0 == 0 && lane == 0) lse.at(b, h, i) = static_cast<T>(m == -inf ? -inf : m + log(l));
  }
}

// D_r = dO_r . o_r per query row r (double), one warp per row.
template <typename T>
__global__ void __launch_bounds__(kRefThreads) attention_rowdot(BackwardArgs<T> w, double* out) {
  const AttnArgs<T>& a = w.a;
  const int64_t r = warp_row(a.b * a.h * a.tq);
  if (r < 0) return;
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int64_t bh = r / a.tq, i = r % a.tq, b = bh / a.h, h = bh % a.h;
  double s = 0;
  for (int64_t e = lane; e < a.dv; e += 32) s += static_cast<double>(w.g.at(b, h, i, e)) * static_cast<double>(w.o.at(b, h, i, e));
  s = warp_sum(s);
  if (lane == 0) out[r] = s;
}

// The weight's pieces at (i, j), as the CPU's reference computes them:
// p = exp(s - lse) (0 where s is -inf), the dropout factor, and
// ds = p (dp drop - D) scale.
struct WeightGrad {
  double pdrop, ds;
};
template <typename T>
__device__ __forceinline__ WeightGrad weight_grad(const BackwardArgs<T>& w, int64_t bh, int64_t b, int64_t h,
                                                  int64_t i, int64_t j) {
  const AttnArgs<T>& a = w.a;
  const double inf = std::numeric_limits<double>::infinity();
  const double s = dot_rows(a.q, a.k, b, h, i, j, a.d) * a.scale + mask_at(a, b, h, i, j);
  const double p = s == -inf ? 0.0 : exp(s - static_cast<double>(w.lse.at(b, h, i)));
  const double dp = dot_rows(w.g, a.v, b, h, i, j, a.dv);
  const double drop = a.drop.on ? (kept(a.drop, a.tq, a.tk, bh, i, j) ? a.drop.inv : 0.0) : 1.0;
  return {p * drop, p * (dp * drop - w.rowdot[bh * a.tq + i]) * a.scale};
}

// dq: one warp per query row.
template <typename T>
__global__ void __launch_bounds__(kRefThreads) attention_backward_dq_reference(BackwardArgs<T> w) {
  const AttnArgs<T>& a = w.a;
  const int64_t r = warp_row(a.b * a.h * a.tq);
  if (r < 0) return;
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int64_t bh = r / a.tq, i = r % a.tq, b = bh / a.h, h = bh % a.h;
  const int64_t jend = a.causal ? (a.tk < i + 1 ? a.tk : i + 1) : a.tk;
  for (int64_t e0 = 0; e0 < a.d; e0 += 32 * kRefCols) {
    double acc[kRefCols] = {};
    for (int64_t j0 = 0; j0 < jend; j0 += 32) {
      const int64_t j = j0 + lane;
      const double ds = j < jend ? weight_grad(w, bh, b, h, i, j).ds : 0.0;
      const int n = static_cast<int>(jend - j0 < 32 ? jend - j0 : 32);
      for (int t = 0; t < n; ++t) {
        const double dst = __shfl_sync(kFullMask, ds, t);
        if (dst == 0) continue;
        for (int c = 0; c < kRefCols; ++c) {
          const int64_t e = e0 + lane + 32 * c;
          if (e < a.d) acc[c] += dst * static_cast<double>(a.k.at(b, h, j0 + t, e));
        }
      }
    }
    for (int c = 0; c < kRefCols; ++c) {
      const int64_t e = e0 + lane + 32 * c;
      if (e < a.d) w.dq.at(b, h, i, e) = static_cast<T>(acc[c]);
    }
  }
}

// dk, dv: one warp per key row (b, h, j), over the queries that see it.
template <typename T>
__global__ void __launch_bounds__(kRefThreads) attention_backward_dkdv_reference(BackwardArgs<T> w) {
  const AttnArgs<T>& a = w.a;
  const int64_t r = warp_row(a.b * a.h * a.tk);
  if (r < 0) return;
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int64_t bh = r / a.tk, j = r % a.tk, b = bh / a.h, h = bh % a.h;
  const int64_t istart = a.causal ? j : 0;  // query i sees key j when j <= i
  const int64_t wide = a.d > a.dv ? a.d : a.dv;
  for (int64_t e0 = 0; e0 < wide; e0 += 32 * kRefCols) {
    double acck[kRefCols] = {}, accv[kRefCols] = {};
    for (int64_t i0 = istart; i0 < a.tq; i0 += 32) {
      const int64_t i = i0 + lane;
      WeightGrad wg{0.0, 0.0};
      if (i < a.tq) wg = weight_grad(w, bh, b, h, i, j);
      const int n = static_cast<int>(a.tq - i0 < 32 ? a.tq - i0 : 32);
      for (int t = 0; t < n; ++t) {
        const double pt = __shfl_sync(kFullMask, wg.pdrop, t), dst = __shfl_sync(kFullMask, wg.ds, t);
        for (int c = 0; c < kRefCols; ++c) {
          const int64_t e = e0 + lane + 32 * c;
          if (pt != 0 && e < a.dv) accv[c] += pt * static_cast<double>(w.g.at(b, h, i0 + t, e));
          if (dst != 0 && e < a.d) acck[c] += dst * static_cast<double>(a.q.at(b, h, i0 + t, e));
        }
      }
    }
    for (int c = 0; c < kRefCols; ++c) {
      const int64_t e = e0 + lane + 32 * c;
      if (e < a.d) w.dk.at(b, h, j, e) = static_cast<T>(acck[c]);
      if (e < a.dv) w.dv.at(b, h, j, e) = static_cast<T>(accv[c]);
    }
  }
}

// ---------------------------------------------------------------- float32, tiled

constexpr int kTile = 64;           // queries per block and keys per tile (both)
constexpr int kTileThreads = 256;   // 16 row groups of 4 rows x 16 lanes
constexpr int kLdP = kTile + 4;     // row stride of a 64 x 64 weight tile in shared memory

// Row stride of a 64 x DP operand tile in shared memory: the padding of 4
// floats keeps the float4 reads of 8 consecutive rows on distinct banks.
template <int DP>
constexpr int tile_ld() {
  return DP + 4;
}
template <int DP>
constexpr size_t forward_smem_bytes() {
  return sizeof(float) * (2 * kTile * tile_ld<DP>() + kTile * kLdP);
}
template <int DP>
constexpr size_t backward_smem_bytes() {
  return sizeof(float) * (4 * kTile * tile_ld<DP>() + kTile * kLdP + 2 * kTile);
}

// Rows [t0, t0 + 64) x columns [0, DP) of x's plane (b, h) into s; zero for
// rows >= t_end and columns >= e_end.
template <int DP>
__device__ __forceinline__ void load_tile(float* s, const View4<const float>& x, int64_t b, int64_t h, int64_t t0,
                                          int64_t t_end, int64_t e_end) {
  for (int idx = static_cast<int>(threadIdx.x); idx < kTile * DP; idx += kTileThreads) {
    const int r = idx / DP, e = idx % DP;
    const int64_t t = t0 + r;
    s[r * tile_ld<DP>() + e] = t < t_end && e < e_end ? x.at(b, h, t, e) : 0.0f;
  }
}

// acc[a][c] += sum over 4-column steps below n of x[row a] . y[col c], where the
// thread's rows are x rows rg * 4 + a and its columns y rows kc + 16 c.
template <int DP>
__device__ __forceinline__ void tile_dots(float (&acc)[4][4], const float* x, const float* y, int rg, int kc, int n) {
  constexpr int LD = tile_ld<DP>();
  for (int e = 0; e < n; e += 4) {
    float4 xv[4], yv[4];
#pragma unroll
    for (int a = 0; a < 4; ++a) xv[a] = *reinterpret_cast<const float4*>(x + (rg * 4 + a) * LD + e);
#pragma unroll
    for (int c = 0; c < 4; ++c) yv[c] = *reinterpret_cast<const float4*>(y + (kc + 16 * c) * LD + e);
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        float s = acc[a][c];
        s = fmaf(xv[a].x, yv[c].x, s);
        s = fmaf(xv[a].y, yv[c].y, s);
        s = fmaf(xv[a].z, yv[c].z, s);
        s = fmaf(xv[a].w, yv[c].w, s);
        acc[a][c] = s;
      }
  }
}

// out[a][c] += sum over k < 64 of w[row rg * 4 + a][k] * y[k][kc + 16 c]:
// a 64 x 64 weight tile (row stride kLdP) times a 64 x DP operand tile.
template <int DP>
__device__ __forceinline__ void tile_weighted_sum(float (&out)[4][DP / 16], const float* w, const float* y, int rg,
                                                  int kc) {
  constexpr int LD = tile_ld<DP>();
#pragma unroll 4
  for (int k = 0; k < kTile; ++k) {
    float wv[4];
#pragma unroll
    for (int a = 0; a < 4; ++a) wv[a] = w[(rg * 4 + a) * kLdP + k];
#pragma unroll
    for (int c = 0; c < DP / 16; ++c) {
      const float yv = y[k * LD + kc + 16 * c];
#pragma unroll
      for (int a = 0; a < 4; ++a) out[a][c] = fmaf(wv[a], yv, out[a][c]);
    }
  }
}

// Max and sum over the 16 lanes that share a row group.
__device__ __forceinline__ float max16(float x) {
  for (int o = 8; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(kFullMask, x, o));
  return x;
}
__device__ __forceinline__ float sum16(float x) {
  for (int o = 8; o > 0; o >>= 1) x += __shfl_xor_sync(kFullMask, x, o);
  return x;
}

__device__ __forceinline__ int round4(int64_t n) { return static_cast<int>((n + 3) / 4 * 4); }

// One block per 64 queries of one (b, h) (Note [CUDA attention kernels]).
template <int DP>
__global__ void __launch_bounds__(kTileThreads) attention_forward_tiled(AttnArgs<float> a, View4<float> o,
                                                                        View3<float> lse) {
  constexpr int LD = tile_ld<DP>(), NC = DP / 16;
  constexpr float ninf = -std::numeric_limits<float>::infinity();
  extern __shared__ float4 smem4[];
  float* sq = reinterpret_cast<float*>(smem4);  // (64, LD)
  float* skv = sq + kTile * LD;                 // K, then V: (64, LD)
  float* sp = skv + kTile * LD;                 // weights (64, kLdP)
  const int64_t qblocks = (a.tq + kTile - 1) / kTile;
  const int64_t bh = blockIdx.x / qblocks, i0 = (blockIdx.x % qblocks) * kTile;
  const int64_t b = bh / a.h, h = bh % a.h;
  const int tid = static_cast<int>(threadIdx.x), rg = tid / 16, kc = tid % 16;
  const float scale = static_cast<float>(a.scale), inv = static_cast<float>(a.drop.inv);
  const int d4 = round4(a.d);
  load_tile<DP>(sq, a.q, b, h, i0, a.tq, a.d);
  float m[4], l[4], acc[4][NC];
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    m[r] = ninf;
    l[r] = 0;
#pragma unroll
    for (int c = 0; c < NC; ++c) acc[r][c] = 0;
  }
  const int64_t jend = a.causal ? (a.tk < i0 + kTile ? a.tk : i0 + kTile) : a.tk;
  for (int64_t j0 = 0; j0 < jend; j0 += kTile) {
    __syncthreads();  // the last tile's V and weights are read (and Q is loaded)
    load_tile<DP>(skv, a.k, b, h, j0, jend, a.d);
    __syncthreads();
    float s[4][4] = {};
    tile_dots<DP>(s, sq, skv, rg, kc, d4);
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int64_t i = i0 + rg * 4 + r;
      float mx = ninf;
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int64_t j = j0 + kc + 16 * c;
        float x = ninf;
        if (j < jend && !(a.causal && j > i)) {
          x = s[r][c] * scale;
          if (a.mask.p != nullptr && i < a.tq) x += a.mask.at(b, h, i, j);
        }
        s[r][c] = x;
        mx = fmaxf(mx, x);
      }
      const float mnew = fmaxf(m[r], max16(mx));
      float alpha = 1, sum = 0;
      if (mnew == ninf) {  // every key so far masked: weights 0
#pragma unroll
        for (int c = 0; c < 4; ++c) s[r][c] = 0;
      } else {
        alpha = expf(m[r] - mnew);
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          s[r][c] = expf(s[r][c] - mnew);
          sum += s[r][c];
        }
      }
      l[r] = l[r] * alpha + sum16(sum);
      m[r] = mnew;
      if (a.drop.on) {
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const int64_t j = j0 + kc + 16 * c;
          if (s[r][c] != 0) s[r][c] = i < a.tq && kept(a.drop, a.tq, a.tk, bh, i, j) ? s[r][c] * inv : 0.0f;
        }
      }
#pragma unroll
      for (int c = 0; c < NC; ++c) acc[r][c] *= alpha;
#pragma unroll
      for (int c = 0; c < 4; ++c) sp[(rg * 4 + r) * kLdP + kc + 16 * c] = s[r][c];
    }
    __syncthreads();  // K is read and the weights written
    load_tile<DP>(skv, a.v, b, h, j0, jend, a.dv);
    __syncthreads();
    tile_weighted_sum<DP>(acc, sp, skv, rg, kc);
  }
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int64_t i = i0 + rg * 4 + r;
    if (i >= a.tq) continue;
    const bool empty = m[r] == ninf;
    const float il = 1.0f / l[r];
#pragma unroll
    for (int c = 0; c < NC; ++c) {
      const int64_t e = kc + 16 * c;
      if (e < a.dv) o.at(b, h, i, e) = empty ? std::numeric_limits<float>::quiet_NaN() : acc[r][c] * il;
    }
    if (kc == 0) lse.at(b, h, i) = empty ? ninf : m[r] + logf(l[r]);
  }
}

// The weight tile's gradient pieces, as the CPU's float32 path computes
// them: s and dp hold the raw products for (query i0 + qrow(r), key j0 +
// kcol(c)); on return s = p * drop and dp = ds (unscaled).
template <typename Row, typename Col>
__device__ __forceinline__ void tile_weight_grads(const BackwardArgs<float>& w, float (&s)[4][4], float (&dp)[4][4],
                                                  int64_t bh, int64_t b, int64_t h, const float (&lse)[4][4],
                                                  const float (&dr)[4][4], Row qrow, Col kcol) {
  const AttnArgs<float>& a = w.a;
  const float scale = static_cast<float>(a.scale), inv = static_cast<float>(a.drop.inv);
#pragma unroll
  for (int r = 0; r < 4; ++r)
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int64_t i = qrow(r, c), j = kcol(r, c);
      float p = 0, pd = 0;
      if (i < a.tq && j < a.tk && !(a.causal && j > i)) {
        float x = s[r][c] * scale;
        if (a.mask.p != nullptr) x += a.mask.at(b, h, i, j);
        p = expf(x - lse[r][c]);
        pd = a.drop.on ? (kept(a.drop, a.tq, a.tk, bh, i, j) ? p * inv : 0.0f) : p;
      }
      const float g = dp[r][c];
      dp[r][c] = a.drop.on ? pd * g - p * dr[r][c] : p * (g - dr[r][c]);
      s[r][c] = pd;
    }
}

// dK, dV of 64 keys of one (b, h): thread rows are keys, columns queries.
template <int DP>
__global__ void __launch_bounds__(kTileThreads) attention_backward_dkdv_tiled(BackwardArgs<float> w) {
  constexpr int LD = tile_ld<DP>(), NC = DP / 16;
  const AttnArgs<float>& a = w.a;
  extern __shared__ float4 smem4[];
  float* sk = reinterpret_cast<float*>(smem4);  // (64, LD) each
  float* sv = sk + kTile * LD;
  float* sq = sv + kTile * LD;
  float* sg = sq + kTile * LD;
  float* sx = sg + kTile * LD;  // (64, kLdP): p drop, then ds, as (key, query)
  float* slse = sx + kTile * kLdP;
  float* sdr = slse + kTile;
  const int64_t kblocks = (a.tk + kTile - 1) / kTile;
  const int64_t bh = blockIdx.x / kblocks, j0 = (blockIdx.x % kblocks) * kTile;
  const int64_t b = bh / a.h, h = bh % a.h;
  const int tid = static_cast<int>(threadIdx.x), rg = tid / 16, kc = tid % 16;
  const int d4 = round4(a.d), dv4 = round4(a.dv);
  load_tile<DP>(sk, a.k, b, h, j0, a.tk, a.d);
  load_tile<DP>(sv, a.v, b, h, j0, a.tk, a.dv);
  float dk[4][NC] = {}, dv[4][NC] = {};
  // Causal: queries before j0 see none of these keys (64-row blocks both ways).
  for (int64_t i0 = a.causal ? j0 : 0; i0 < a.tq; i0 += kTile) {
    __syncthreads();  // the last block's Q, dO and weights are read
    load_tile<DP>(sq, a.q, b, h, i0, a.tq, a.d);
    load_tile<DP>(sg, w.g, b, h, i0, a.tq, a.dv);
    if (tid < kTile) {
      const int64_t i = i0 + tid;
      slse[tid] = i < a.tq ? w.lse.at(b, h, i) : 0.0f;
      sdr[tid] = i < a.tq ? static_cast<float>(w.rowdot[bh * a.tq + i]) : 0.0f;
    }
    __syncthreads();
    float s[4][4] = {}, dp[4][4] = {}, lse[4][4], dr[4][4];
    tile_dots<DP>(s, sk, sq, rg, kc, d4);   // s[key][query] = K Q^T
    tile_dots<DP>(dp, sv, sg, rg, kc, dv4);  // dp[key][query] = V dO^T
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        lse[r][c] = slse[kc + 16 * c];
        dr[r][c] = sdr[kc + 16 * c];
      }
    tile_weight_grads(w, s, dp, bh, b, h, lse, dr, [&](int, int c) { return i0 + kc + 16 * c; },
                      [&](int r, int) { return j0 + rg * 4 + r; });
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
      for (int c = 0; c < 4; ++c) sx[(rg * 4 + r) * kLdP + kc + 16 * c] = s[r][c];
    __syncthreads();
    tile_weighted_sum<DP>(dv, sx, sg, rg, kc);  // dV += P_drop^T dO
    __syncthreads();
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
      for (int c = 0; c < 4; ++c) sx[(rg * 4 + r) * kLdP + kc + 16 * c] = dp[r][c];
    __syncthreads();
    tile_weighted_sum<DP>(dk, sx, sq, rg, kc);  // dK += dS^T Q
  }
  const float scale = static_cast<float>(a.scale);
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int64_t j = j0 + rg * 4 + r;
    if (j >= a.tk) continue;
#pragma unroll
    for (int c = 0; c < NC; ++c) {
      const int64_t e = kc + 16 * c;
      if (e < a.d) w.dk.at(b, h, j, e) = scale * dk[r][c];
      if (e < a.dv) w.dv.at(b, h, j, e) = dv[r][c];
    }
  }
}

// dQ of 64 queries of one (b, h): thread rows are queries, columns keys.
template <int DP>
__global__ void __launch_bounds__(kTileThreads) attention_backward_dq_tiled(BackwardArgs<float> w) {
  constexpr int LD = tile_ld<DP>(), NC = DP / 16;
  const AttnArgs<float>& a = w.a;
  extern __shared__ float4 smem4[];
  float* sq = reinterpret_cast<float*>(smem4);  // (64, LD) each
  float* sg = sq + kTile * LD;
  float* sk = sg + kTile * LD;
  float* sv = sk + kTile * LD;
  float* sx = sv + kTile * LD;  // ds (64, kLdP) as (query, key)
  const int64_t qblocks = (a.tq + kTile - 1) / kTile;
  const int64_t bh = blockIdx.x / qblocks, i0 = (blockIdx.x % qblocks) * kTile;
  const int64_t b = bh / a.h, h = bh % a.h;
  const int tid = static_cast<int>(threadIdx.x), rg = tid / 16, kc = tid % 16;
  const int d4 = round4(a.d), dv4 = round4(a.dv);
  load_tile<DP>(sq, a.q, b, h, i0, a.tq, a.d);
  load_tile<DP>(sg, w.g, b, h, i0, a.tq, a.dv);
  float lse[4][4], dr[4][4], dq[4][NC] = {};
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int64_t i = i0 + rg * 4 + r;
    const float li = i < a.tq ? w.lse.at(b, h, i) : 0.0f;
    const float di = i < a.tq ? static_cast<float>(w.rowdot[bh * a.tq + i]) : 0.0f;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      lse[r][c] = li;
      dr[r][c] = di;
    }
  }
  const int64_t jend = a.causal ? (a.tk < i0 + kTile ? a.tk : i0 + kTile) : a.tk;
  for (int64_t j0 = 0; j0 < jend; j0 += kTile) {
    __syncthreads();  // the last tile's K and ds are read (and Q, dO loaded)
    load_tile<DP>(sk, a.k, b, h, j0, jend, a.d);
    load_tile<DP>(sv, a.v, b, h, j0, jend, a.dv);
    __syncthreads();
    float s[4][4] = {}, dp[4][4] = {};
    tile_dots<DP>(s, sq, sk, rg, kc, d4);   // s[query][key] = Q K^T
    tile_dots<DP>(dp, sg, sv, rg, kc, dv4);  // dp[query][key] = dO V^T
    tile_weight_grads(w, s, dp, bh, b, h, lse, dr, [&](int r, int) { return i0 + rg * 4 + r; },
                      [&](int, int c) { return j0 + kc + 16 * c; });
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
      for (int c = 0; c < 4; ++c) sx[(rg * 4 + r) * kLdP + kc + 16 * c] = dp[r][c];
    __syncthreads();
    tile_weighted_sum<DP>(dq, sx, sk, rg, kc);  // dQ += dS K
  }
  const float scale = static_cast<float>(a.scale);
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int64_t i = i0 + rg * 4 + r;
    if (i >= a.tq) continue;
#pragma unroll
    for (int c = 0; c < NC; ++c) {
      const int64_t e = kc + 16 * c;
      if (e < a.d) w.dq.at(b, h, i, e) = scale * dq[r][c];
    }
  }
}

// ---------------------------------------------------------------- entry points

// The padded head dim of the tiled kernels for (d, dv), or 0 where they do not apply.
int tiled_dp(int64_t d, int64_t dv) {
  const int64_t wide = d > dv ? d : dv;
  return wide <= 64 ? 64 : wide <= 128 ? 128 : 0;
}

// Whether `device` gives a block `bytes` of shared memory (opting in).
bool smem_fits(int device, size_t bytes) {
  int optin = 0;
  LOOM_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return bytes <= static_cast<size_t>(optin);
}

template <typename Kernel>
void allow_smem(Kernel kernel, size_t bytes) {
  LOOM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

unsigned blocks_of(int64_t n, int64_t per_block) {
  const int64_t blocks = (n + per_block - 1) / per_block;
  LOOM_CHECK(blocks <= 0x7fffffff, "attention: ", n, " rows are more than one CUDA launch covers");
  return static_cast<unsigned>(blocks);
}

template <int DP>
void forward_tiled(const AttnArgs<float>& a, View4<float> o, View3<float> lse, const Launch& l) {
  constexpr size_t smem = forward_smem_bytes<DP>();
  allow_smem(attention_forward_tiled<DP>, smem);
  const int64_t qblocks = (a.tq + kTile - 1) / kTile;
  attention_forward_tiled<DP><<<blocks_of(a.b * a.h * qblocks, 1), kTileThreads, smem, l.stream>>>(a, o, lse);
  LOOM_CUDA_CHECK_LAUNCH();
}

template <int DP>
void backward_tiled(const BackwardArgs<float>& w, const Launch& l) {
  constexpr size_t smem = backward_smem_bytes<DP>();
  const AttnArgs<float>& a = w.a;
  if (a.tk > 0 && (a.d > 0 || a.dv > 0)) {
    allow_smem(attention_backward_dkdv_tiled<DP>, smem);
    const int64_t kblocks = (a.tk + kTile - 1) / kTile;
    attention_backward_dkdv_tiled<DP><<<blocks_of(a.b * a.h * kblocks, 1), kTileThreads, smem, l.stream>>>(w);
    LOOM_CUDA_CHECK_LAUNCH();
  }
  if (a.tq > 0 && a.d > 0) {
    allow_smem(attention_backward_dq_tiled<DP>, smem);
    const int64_t qblocks = (a.tq + kTile - 1) / kTile;
    attention_backward_dq_tiled<DP><<<blocks_of(a.b * a.h * qblocks, 1), kTileThreads, smem, l.stream>>>(w);
    LOOM_CUDA_CHECK_LAUNCH();
  }
}

void attention_forward(const KernelCall& c) {
  const TensorImpl* q = c.in[0];
  TensorImpl *o = c.out[0], *lse = c.out[1];
  if (o->numel() == 0) return;
  const Launch l = launch_of(c);
  DeviceGuard guard(l.device);
  const auto run = [&](auto tag) {
    using T = typename decltype(tag)::type;
    const AttnArgs<T> a = args_of<T>(c, 0, 3);
    const View4<T> ov = view4<T>(o);
    const View3<T> lv = view3<T>(lse);
    if constexpr (std::is_same_v<T, float>) {
      const int dp = tiled_dp(a.d, a.dv);
      if (dp == 64 && smem_fits(l.device, forward_smem_bytes<64>())) return forward_tiled<64>(a, ov, lv, l);
      if (dp == 128 && smem_fits(l.device, forward_smem_bytes<128>())) return forward_tiled<128>(a, ov, lv, l);
    }
    attention_forward_reference<T>
        <<<blocks_of(a.b * a.h * a.tq, kRefThreads / 32), kRefThreads, 0, l.stream>>>(a, ov, lv);
    LOOM_CUDA_CHECK_LAUNCH();
  };
  if (q->dtype == kFloat32) run(TypeTag<float>{});
  else if (q->dtype == kFloat64) run(TypeTag<double>{});
  else LOOM_ASSERT(false, "Attention: CUDA kernel called with dtype ", dtype_name(q->dtype));
}

size_t attention_backward_workspace(const KernelCall& c) {
  const TensorImpl* q = c.in[1];
  return sizeof(double) * static_cast<size_t>(q->sizes[0] * q->sizes[1] * q->sizes[2]);
}

void attention_backward(const KernelCall& c) {
  const TensorImpl* q = c.in[1];
  TensorImpl *dq = c.out[0], *dk = c.out[1], *dv = c.out[2];
  if (dq->numel() == 0 && dk->numel() == 0 && dv->numel() == 0) return;
  const Launch l = launch_of(c);
  DeviceGuard guard(l.device);
  const auto run = [&](auto tag) {
    using T = typename decltype(tag)::type;
    BackwardArgs<T> w;
    w.a = args_of<T>(c, 1, 6);
    w.g = view4<const T>(c.in[0]);
    w.o = view4<const T>(c.in[4]);
    w.lse = view3<const T>(c.in[5]);
    w.dq = view4<T>(dq);
    w.dk = view4<T>(dk);
    w.dv = view4<T>(dv);
    const AttnArgs<T>& a = w.a;
    const int64_t rows = a.b * a.h * a.tq;
    if (rows > 0) {
      LOOM_ASSERT(c.workspace.bytes >= attention_backward_workspace(c), "AttentionBackward: workspace too small");
      double* rowdot = static_cast<double*>(c.workspace.data);
      attention_rowdot<T><<<blocks_of(rows, kRefThreads / 32), kRefThreads, 0, l.stream>>>(w, rowdot);
      w.rowdot = rowdot;
      LOOM_CUDA_CHECK_LAUNCH();
    }
    if constexpr (std::is_same_v<T, float>) {
      const int dp = tiled_dp(a.d, a.dv);
      if (dp == 64 && smem_fits(l.device, backward_smem_bytes<64>())) return backward_tiled<64>(w, l);
      if (dp == 128 && smem_fits(l.device, backward_smem_bytes<128>())) return backward_tiled<128>(w, l);
    }
    if (a.tk > 0 && (dk->numel() > 0 || dv->numel() > 0)) {
      attention_backward_dkdv_reference<T>
          <<<blocks_of(a.b * a.h * a.tk, kRefThreads / 32), kRefThreads, 0, l.stream>>>(w);
      LOOM_CUDA_CHECK_LAUNCH();
    }
    if (rows > 0 && dq->numel() > 0) {
      attention_backward_dq_reference<T><<<blocks_of(rows, kRefThreads / 32), kRefThreads, 0, l.stream>>>(w);
      LOOM_CUDA_CHECK_LAUNCH();
    }
  };
  if (q->dtype == kFloat32) run(TypeTag<float>{});
  else if (q->dtype == kFloat64) run(TypeTag<double>{});
  else LOOM_ASSERT(false, "AttentionBackward: CUDA kernel called with dtype ", dtype_name(q->dtype));
}

}  // namespace

void register_attention(Backend& b) {
  // float32 and float64 (ops.def: the ops layer computes half types in float32).
  b.kernels[static_cast<int>(OpKind::Attention)] = &attention_forward;
  set_supported(OpKind::Attention, {kFloat32, kFloat64});
  b.kernels[static_cast<int>(OpKind::AttentionBackward)] = &attention_backward;
  b.workspace[static_cast<int>(OpKind::AttentionBackward)] = &attention_backward_workspace;
  set_supported(OpKind::AttentionBackward, {kFloat32, kFloat64});
}

}  // namespace loom::cuda_detail
