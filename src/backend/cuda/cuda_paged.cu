// CUDA kernel: PagedAttention (ops.def), attention over a paged KV cache,
// with the semantics of src/backend/cpu/cpu_paged_attention.cpp (Note
// [Paged attention]).
//
// Note [CUDA paged attention]
// One warp per task (token, head), so a token's output depends on its own
// query and its sequence's keys and values only, computed in one fixed order:
// never on the rest of the batch, where the token sits in it, or the grid.
// Every dtype computes as the CPU's reference does, in double (float32's CPU
// fast path runs in float32, so float32 agrees with the CPU to float
// rounding, not bits):
//  - a dot product q . k_j: lane l sums the elements l mod 32, then a
//    butterfly (xor shuffles) adds the lanes, giving every lane the same
//    value (addition commutes);
//  - pass 1 walks the keys in increasing position with an online softmax:
//    the running max m (NaN-propagating, as the CPU's) and the sum l of
//    exp(s_j - m);
//  - pass 2 walks them again, recomputing each score, and adds
//    (exp(s_j - m) / l) v_j into accumulators, kValuesPerLane elements of Dv
//    per lane; a larger Dv takes further passes of 32 * kValuesPerLane
//    elements. Recomputing the scores costs one more dot product a key but
//    needs no workspace as long as the longest sequence.
// A row with every score -inf is NaN (softmax's 0 / 0), as on the CPU.
//
// The indices are checked on the device before anything is computed, in
// the steps of Note [CUDA index errors] (cuda_index.cu): a flag in the
// workspace is set to "none", check_paged_kernel (a thread per token)
// atomicMin's into it every token with a bad index, the attention kernel
// returns at once when the flag is set, and the host reads the flag back.
// For a bad token it copies that token's seq_index, position and table row
// back and runs the CPU's checks on them, so the error is the CPU's message
// for the same (first) token.
#include <cmath>
#include <limits>
#include <vector>

#include "backend/cuda/cuda_tensor.cuh"
#include "backend/paged_attention.h"
#include "backend/workspace.h"

namespace loom::cuda_detail {

void register_paged(Backend& b);

namespace {

constexpr unsigned long long kNoBadToken = ~0ull;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 4;
constexpr int kValuesPerLane = 4;

// The block ids, int32 or int64 (contiguous).
struct BlockTable {
  const int32_t* i32 = nullptr;
  const int64_t* i64 = nullptr;
  int64_t width = 0;
  __device__ int64_t at(int64_t seq, int64_t block) const {
    const int64_t x = seq * width + block;
    return i64 != nullptr ? i64[x] : static_cast<int64_t>(i32[x]);
  }
};

// ---------------------------------------------------------------- index checks

// Note [CUDA paged attention]: the tokens whose indices the CPU would reject.
__global__ void check_paged_kernel(PagedShape g, BlockTable table, const int64_t* seq, const int64_t* pos,
                                   unsigned long long* bad) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < g.t;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t s = seq[t], p = pos[t];
    bool ok = s >= 0 && s < g.s && p >= 0 && p / g.bs < g.mb;
    for (int64_t b = 0; ok && b <= p / g.bs; ++b) {
      const int64_t id = table.at(s, b);
      ok = id >= 0 && id < g.nb;
    }
    if (!ok) atomicMin(bad, static_cast<unsigned long long>(t));
  }
}

// Reads the flag back (waiting for the device) and throws for a bad token.
void finish_checks(const Launch& l, const PagedShape& g, const KernelCall& c, const unsigned long long* flag) {
  unsigned long long bad = 0;
  LOOM_CUDA_CHECK(cudaMemcpyAsync(&bad, flag, sizeof bad, cudaMemcpyDeviceToHost, l.stream));
  LOOM_CUDA_CHECK(cudaStreamSynchronize(l.stream));
  if (bad == kNoBadToken) return;
  const auto t = static_cast<int64_t>(bad);
  int64_t s = 0, p = 0;
  LOOM_CUDA_CHECK(cudaMemcpyAsync(&s, data_of<int64_t>(c.in[4]) + t, sizeof s, cudaMemcpyDeviceToHost, l.stream));
  LOOM_CUDA_CHECK(cudaMemcpyAsync(&p, data_of<int64_t>(c.in[5]) + t, sizeof p, cudaMemcpyDeviceToHost, l.stream));
  LOOM_CUDA_CHECK(cudaStreamSynchronize(l.stream));
  std::vector<int64_t> row;
  if (s >= 0 && s < g.s && g.mb > 0) {  // the table row of a valid sequence
    row.resize(static_cast<size_t>(g.mb));
    if (c.in[3]->dtype == kInt64) {
      LOOM_CUDA_CHECK(cudaMemcpyAsync(row.data(), data_of<int64_t>(c.in[3]) + s * g.mb,
                                      sizeof(int64_t) * static_cast<size_t>(g.mb), cudaMemcpyDeviceToHost, l.stream));
      LOOM_CUDA_CHECK(cudaStreamSynchronize(l.stream));
    } else {
      std::vector<int32_t> row32(static_cast<size_t>(g.mb));
      LOOM_CUDA_CHECK(cudaMemcpyAsync(row32.data(), data_of<int32_t>(c.in[3]) + s * g.mb,
                                      sizeof(int32_t) * static_cast<size_t>(g.mb), cudaMemcpyDeviceToHost, l.stream));
      LOOM_CUDA_CHECK(cudaStreamSynchronize(l.stream));
      for (size_t b = 0; b < row32.size(); ++b) row[b] = row32[b];
    }
  }
  // The CPU's checks (backend/paged_attention.h) on the token, with its copied-back indices.
  check_paged_token(g, t, s, p, [&](int64_t b) { return row[static_cast<size_t>(b)]; });
  LOOM_ASSERT(false, "PagedAttention: the device flagged token ", t, " but its indices pass the checks");
}

size_t paged_workspace(const KernelCall&) {
  WorkspaceLayout ws;
  ws.take<unsigned long long>(1);
  return ws.bytes();
}

// ---------------------------------------------------------------- attention

template <typename T>
struct PagedArgs {
  PagedShape g;
  BlockTable table;
  const T *q, *k, *v;
  const int64_t *seq, *pos;
  T* out;
  double scale;
  const unsigned long long* bad;
};

// NaN-propagating max: a NaN score makes the row NaN, as in the sums.
__device__ __forceinline__ double max_nan(double m, double x) { return x > m || x != x ? x : m; }

// q . k * scale over d elements, the same value in every lane.
template <typename T>
__device__ __forceinline__ double score_of(const T* qi, const T* kj, int64_t d, double scale, int lane) {
  double dot = 0;
  for (int64_t e = lane; e < d; e += kWarp)
    dot += static_cast<double>(load_as(qi + e)) * static_cast<double>(load_as(kj + e));
  for (int w = kWarp / 2; w >= 1; w /= 2) dot += __shfl_xor_sync(kFullMask, dot, w);
  return dot * scale;
}

// One warp per task (token, head); the loop over tasks is uniform across a
// warp, so every lane takes part in the shuffles.
template <typename T>
__global__ void __launch_bounds__(kWarp* kWarpsPerBlock) paged_attention_kernel(PagedArgs<T> a) {
  if (*a.bad != kNoBadToken) return;
  const PagedShape& g = a.g;
  const int lane = static_cast<int>(threadIdx.x % kWarp);
  const int64_t first = blockIdx.x * static_cast<int64_t>(kWarpsPerBlock) + threadIdx.x / kWarp;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  const double ninf = -std::numeric_limits<double>::infinity();
  for (int64_t task = first; task < g.t * g.h; task += stride) {
    const int64_t t = task / g.h, head = task % g.h, sq = a.seq[t], n = a.pos[t] + 1;
    const T* qi = a.q + task * g.d;
    T* orow = a.out + task * g.dv;
    const auto key_row = [&](int64_t j) {
      return a.k + a.table.at(sq, j / g.bs) * g.ks0 + (j % g.bs) * g.ks1 + head * g.ks2;
    };
    const auto value_row = [&](int64_t j) {
      return a.v + a.table.at(sq, j / g.bs) * g.vs0 + (j % g.bs) * g.vs1 + head * g.vs2;
    };
    // Pass 1: the max and the softmax's denominator.
    double m = ninf, l = 0;
    for (int64_t j = 0; j < n; ++j) {
      const double s = score_of(qi, key_row(j), g.d, a.scale, lane);
      const double mnew = max_nan(m, s);
      if (mnew == ninf) continue;  // every score so far -inf: weights 0
      l = l * exp(m - mnew) + exp(s - mnew);
      m = mnew;
    }
    if (m == ninf) {  // every score -inf: softmax is 0 / 0
      for (int64_t e = lane; e < g.dv; e += kWarp) orow[e] = store_as<T>(std::numeric_limits<double>::quiet_NaN());
      continue;
    }
    // Pass 2: the weighted sum of the values, kWarp * kValuesPerLane at a time.
    for (int64_t e0 = 0; e0 < g.dv; e0 += kWarp * kValuesPerLane) {
      double acc[kValuesPerLane] = {};
      for (int64_t j = 0; j < n; ++j) {
        const double w = exp(score_of(qi, key_row(j), g.d, a.scale, lane) - m) / l;
        const T* vj = value_row(j);
#pragma unroll
        for (int r = 0; r < kValuesPerLane; ++r) {
          const int64_t e = e0 + r * kWarp + lane;
          if (e < g.dv) acc[r] += w * static_cast<double>(load_as(vj + e));
        }
      }
#pragma unroll
      for (int r = 0; r < kValuesPerLane; ++r) {
        const int64_t e = e0 + r * kWarp + lane;
        if (e < g.dv) orow[e] = store_as<T>(acc[r]);
      }
    }
  }
}

// PagedAttention: in[0] q (T, H, D), in[1] key cache, in[2] value cache,
// in[3] block tables, in[4] seq_index, in[5] positions; f[0] scale ->
// out[0] (T, H, Dv) (ops.def).
void paged_attention(const KernelCall& c) {
  const PagedShape g = paged_shape_of(c);
  if (g.t == 0) return;
  const Launch l = launch_of(c);
  DeviceGuard guard(l.device);
  BlockTable table;
  table.width = g.mb;
  if (c.in[3]->dtype == kInt64) table.i64 = data_of<int64_t>(c.in[3]);
  else table.i32 = data_of<int32_t>(c.in[3]);
  const int64_t* seq = data_of<int64_t>(c.in[4]);
  const int64_t* pos = data_of<int64_t>(c.in[5]);

  WorkspaceLayout ws = carve(c);
  auto* bad = ws.take<unsigned long long>(1);
  LOOM_CUDA_CHECK(cudaMemsetAsync(bad, 0xFF, sizeof(unsigned long long), l.stream));
  check_paged_kernel<<<grid_for(g.t), kThreads, 0, l.stream>>>(g, table, seq, pos, bad);
  LOOM_CUDA_CHECK_LAUNCH();

  if (c.out[0]->numel() > 0) {
    dispatch_float(c.in[0]->dtype, [&](auto tag) {
      using T = typename decltype(tag)::type;
      const PagedArgs<T> a{g,   table, data_of<T>(c.in[0]), data_of<T>(c.in[1]), data_of<T>(c.in[2]),
                           seq, pos,   data_of<T>(c.out[0]), c.f[0],             bad};
      paged_attention_kernel<T>
          <<<grid_for(g.t * g.h, kWarpsPerBlock), kWarp * kWarpsPerBlock, 0, l.stream>>>(a);
      LOOM_CUDA_CHECK_LAUNCH();
    });
  }
  finish_checks(l, g, c, bad);
}

}  // namespace

void register_paged(Backend& b) {
  b.kernels[static_cast<int>(OpKind::PagedAttention)] = &paged_attention;
  b.workspace[static_cast<int>(OpKind::PagedAttention)] = &paged_workspace;
  set_supported(OpKind::PagedAttention, {kFloat32, kFloat64, kFloat16, kBFloat16});
}

}  // namespace loom::cuda_detail
