// Winograd F(2x2, 3x3) convolution on loom's GEMM (Note [Winograd convolution]
// in cpu_winograd.h).
//
// The transforms are loops over the tiles of one tile row (contiguous in the
// transformed layout), written once and compiled for AVX-512, AVX2 + FMA and
// the baseline ISA through gnu::target clones, chosen with the GEMM's ISA
// (gemm_isa()). They multiply only by 1 and 0.5, so the clones agree bitwise.
#include "backend/cpu/cpu_winograd.h"

#include <algorithm>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "backend/cpu/cpu_gemm.h"
#include "backend/cpu/cpu_scratch.h"

namespace loom::cpu {

bool winograd_suits(int64_t in_channels, int64_t out_channels, int64_t oh, int64_t ow) {
  return in_channels >= 16 && out_channels >= 16 && oh >= 4 && ow >= 4;
}

namespace {

// Bytes of transformed inputs and products one chunk aims at, and the
// fewest tiles (GEMM columns) it has: wide GEMMs matter more than keeping
// the chunk in L2 (measured on Zen 5: 128 channels each way at 16x16 run
// 1.5x faster with 256-column chunks (4 MiB) than with 48 (768 KiB)).
constexpr int64_t kChunkBytes = 1536 * 1024;
constexpr int64_t kMinColumns = 256;
// The weight gradient's ranges of chunks: at most this many, and their
// partial sums at most kPartialFloats floats in all.
constexpr int64_t kMaxRanges = 16;
constexpr int64_t kPartialFloats = int64_t{8} << 20;

// The tile plan of one call: 2x2 output tiles, th x tw per sample, cut
// into chunks of whole tile rows (global tile row r = sample * th + i).
struct Tiling {
  int64_t th, tw, rows, rows_per_chunk, chunks;
  int64_t nt;  // columns of a chunk: rows_per_chunk * (tw + 1) (see the chunk layout below)
};

Tiling tiling(int64_t n, int64_t oh, int64_t ow, int64_t floats_per_tile, int64_t nr) {
  Tiling t{};
  t.th = (oh + 1) / 2;
  t.tw = (ow + 1) / 2;
  t.rows = n * t.th;
  const int64_t span = t.tw + 1;
  const int64_t target = std::max<int64_t>(kChunkBytes / (4 * floats_per_tile), kMinColumns);
  const int64_t most = std::clamp<int64_t>(target / span, 1, std::max<int64_t>(t.rows, 1));
  // The GEMM computes whole panels of nr columns: take the row count that
  // wastes the smallest share of its last panel (the larger on ties).
  t.rows_per_chunk = 1;
  double best = 0;
  for (int64_t r = 1; r <= most; ++r) {
    const int64_t cols = r * span;
    const double used = static_cast<double>(cols) / static_cast<double>((cols + nr - 1) / nr * nr);
    if (used >= best) {
      best = used;
      t.rows_per_chunk = r;
    }
  }
  t.chunks = (t.rows + t.rows_per_chunk - 1) / t.rows_per_chunk;
  t.nt = t.rows_per_chunk * span;
  return t;
}

// Chunk layout: tile j of the chunk's tile row rr is column rr * span + j
// of V, M and E (span = tw + 1). The extra column per row lets every
// transform run as one long loop over the whole chunk (a row of a 14x14
// map has 7 tiles: too few for a vector loop of its own) at a 1/span share
// of GEMM work. The forward ignores the extra columns of M; in E they are
// exact zeros (the output gradient's block there lies past its edge), so
// the weight gradient adds 0 * (a finite V entry) = 0 for a finite input.
// The rows of input a chunk reads lie side by side, 2 * span columns each
// (the columns tile j reads, 2j to 2j + 3, always fit).

// dst[u] = plane[r][col0 + u] for u < width, zeros outside the plane.
[[gnu::always_inline]] inline void copy_row(const float* plane, int64_t h, int64_t w, int64_t r, int64_t col0,
                                            int64_t width, float* dst) {
  if (r < 0 || r >= h) {
    std::fill(dst, dst + width, 0.0f);
    return;
  }
  const int64_t lo = std::clamp<int64_t>(-col0, 0, width), hi = std::clamp<int64_t>(w - col0, lo, width);
  std::fill(dst, dst + lo, 0.0f);
  std::memcpy(dst + lo, plane + r * w + col0 + lo, static_cast<size_t>(hi - lo) * sizeof(float));
  std::fill(dst + hi, dst + width, 0.0f);
}

// Rows of B^T d: t0 = d0 - d2, t1 = d1 + d2, t2 = d2 - d1, t3 = d1 - d3.
[[gnu::always_inline]] inline void bt_rows(const float* __restrict d0, const float* __restrict d1,
                                           const float* __restrict d2, const float* __restrict d3,
                                           float* __restrict t0, float* __restrict t1, float* __restrict t2,
                                           float* __restrict t3, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    t0[j] = d0[j] - d2[j];
    t1[j] = d1[j] + d2[j];
    t2[j] = d2[j] - d1[j];
    t3[j] = d1[j] - d3[j];
  }
}

// The same on the columns of one row t: tile j's row is t[2j .. 2j + 3].
[[gnu::always_inline]] inline void bt_cols(const float* __restrict t, float* __restrict v0, float* __restrict v1,
                                           float* __restrict v2, float* __restrict v3, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const float a = t[2 * j], b = t[2 * j + 1], c = t[2 * j + 2], d = t[2 * j + 3];
    v0[j] = a - c;
    v1[j] = b + c;
    v2[j] = c - b;
    v3[j] = b - d;
  }
}

// Rows of A e for the two rows e0, e1 of a tile (A = [1 0; 1 1; 1 -1; 0 -1]).
[[gnu::always_inline]] inline void a_rows(const float* __restrict e0, const float* __restrict e1,
                                          float* __restrict q0, float* __restrict q1, float* __restrict q2,
                                          float* __restrict q3, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    q0[j] = e0[j];
    q1[j] = e0[j] + e1[j];
    q2[j] = e0[j] - e1[j];
    q3[j] = -e1[j];
  }
}

// The same on the columns of one row q: tile j's row is q[2j], q[2j + 1].
[[gnu::always_inline]] inline void a_cols(const float* __restrict q, float* __restrict v0, float* __restrict v1,
                                          float* __restrict v2, float* __restrict v3, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const float a = q[2 * j], b = q[2 * j + 1];
    v0[j] = a;
    v1[j] = a + b;
    v2[j] = a - b;
    v3[j] = -b;
  }
}

// A^T M A of tile j, M's position f at m[f * fs + j]: the 2x2 block's rows
// (y0[2j], y0[2j + 1]) and (y1[2j], y1[2j + 1]). A^T = [1 1 1 0; 0 1 -1 -1].
[[gnu::always_inline]] inline void at_tiles(const float* __restrict m, int64_t fs, int64_t n, float* __restrict y0,
                                            float* __restrict y1) {
  for (int64_t j = 0; j < n; ++j) {
    float s0[4], s1[4];
    for (int k = 0; k < 4; ++k) {
      const float m0 = m[k * fs + j], m1 = m[(4 + k) * fs + j], m2 = m[(8 + k) * fs + j], m3 = m[(12 + k) * fs + j];
      s0[k] = m0 + m1 + m2;
      s1[k] = m1 - m2 - m3;
    }
    y0[2 * j] = s0[0] + s0[1] + s0[2];
    y0[2 * j + 1] = s0[1] - s0[2] - s0[3];
    y1[2 * j] = s1[0] + s1[1] + s1[2];
    y1[2 * j + 1] = s1[1] - s1[2] - s1[3];
  }
}

// One output row: dst[u] = src[u] (+ *bias) for u < n.
[[gnu::always_inline]] inline void store_row(const float* __restrict src, int64_t n, const float* bias,
                                             float* __restrict dst) {
  if (bias == nullptr) {
    std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
    return;
  }
  const float b = *bias;
  for (int64_t u = 0; u < n; ++u) dst[u] = src[u] + b;
}

#if defined(__x86_64__) || defined(__i386__)
#define LOOM_WINOGRAD_X86 1
// AVX-512 versions of the per-row steps: a row of a small map (14 floats)
// is one masked vector, where a plain loop of that length would run scalar.
// Masked-off lanes are neither read nor written.

// Lanes [lo, hi) of 16.
[[gnu::target("avx512f")]] inline __mmask16 lanes(int64_t lo, int64_t hi) {
  lo = std::clamp<int64_t>(lo, 0, 16);
  hi = std::clamp<int64_t>(hi, lo, 16);
  return static_cast<__mmask16>(((1u << hi) - 1u) & ~((1u << lo) - 1u));
}

// Lanes u .. u + 15 of row r of a plane (h, w) at columns col0 + u + l,
// zeros outside the plane.
[[gnu::target("avx512f")]] inline __m512 load_cols(const float* plane, int64_t h, int64_t w, int64_t r, int64_t c) {
  if (r < 0 || r >= h || c >= w || c + 16 <= 0) return _mm512_setzero_ps();
  return _mm512_maskz_loadu_ps(lanes(-c, w - c), plane + r * w + c);
}

// Rows of B^T d (bt_rows) straight from the plane: t_k[u] for u < width,
// d_k row r0 + k at columns col0 + u.
[[gnu::target("avx512f")]] inline void bt_rows_avx512(const float* plane, int64_t h, int64_t w, int64_t r0,
                                                      int64_t col0, int64_t width, float* t0, float* t1, float* t2,
                                                      float* t3) {
  for (int64_t u = 0; u < width; u += 16) {
    const int64_t c = col0 + u;
    const __m512 d0 = load_cols(plane, h, w, r0, c), d1 = load_cols(plane, h, w, r0 + 1, c);
    const __m512 d2 = load_cols(plane, h, w, r0 + 2, c), d3 = load_cols(plane, h, w, r0 + 3, c);
    const __mmask16 m = lanes(0, width - u);
    _mm512_mask_storeu_ps(t0 + u, m, _mm512_sub_ps(d0, d2));
    _mm512_mask_storeu_ps(t1 + u, m, _mm512_add_ps(d1, d2));
    _mm512_mask_storeu_ps(t2 + u, m, _mm512_sub_ps(d2, d1));
    _mm512_mask_storeu_ps(t3 + u, m, _mm512_sub_ps(d1, d3));
  }
}

// Rows of A e (a_rows) straight from the plane: rows r0, r0 + 1, columns u < width.
[[gnu::target("avx512f")]] inline void a_rows_avx512(const float* plane, int64_t h, int64_t w, int64_t r0,
                                                     int64_t width, float* q0, float* q1, float* q2, float* q3) {
  for (int64_t u = 0; u < width; u += 16) {
    const __m512 e0 = load_cols(plane, h, w, r0, u), e1 = load_cols(plane, h, w, r0 + 1, u);
    const __mmask16 m = lanes(0, width - u);
    _mm512_mask_storeu_ps(q0 + u, m, e0);
    _mm512_mask_storeu_ps(q1 + u, m, _mm512_add_ps(e0, e1));
    _mm512_mask_storeu_ps(q2 + u, m, _mm512_sub_ps(e0, e1));
    _mm512_mask_storeu_ps(q3 + u, m, _mm512_sub_ps(_mm512_setzero_ps(), e1));
  }
}

// store_row with masked vectors.
[[gnu::target("avx512f")]] inline void store_row_avx512(const float* src, int64_t n, const float* bias, float* dst) {
  const __m512 b = bias != nullptr ? _mm512_set1_ps(*bias) : _mm512_setzero_ps();
  for (int64_t u = 0; u < n; u += 16) {
    const __mmask16 m = lanes(0, n - u);
    const __m512 v = _mm512_maskz_loadu_ps(m, src + u);
    _mm512_mask_storeu_ps(dst + u, m, bias != nullptr ? _mm512_add_ps(v, b) : v);
  }
}
#endif

// What the input transform of one chunk reads and writes.
struct InputJob {
  const float* x;  // (n, c, h, w)
  int64_t c, h, w, pad_h, pad_w;
  int64_t th, tw, row0, rows;  // tile rows [row0, row0 + rows)
  float* v;                    // V (16, c, nt)
  int64_t nt;
  float* tmp;  // 16 * rows * (tw + 1) + 8 floats
};

// V_f[ch][tile] = (B^T d B)_f for every channel and tile of the chunk.
// Starts loading the chunk's rows of the planes of channel ch (layout (n, c, h, w)).
[[gnu::always_inline]] inline void prefetch_planes(const float* x, int64_t c, int64_t h, int64_t w, int64_t ch,
                                                   int64_t th, int64_t row0, int64_t rows) {
  if (ch >= c) return;
  const int64_t first = row0 / th, last = (row0 + rows - 1) / th;
  for (int64_t s = first; s <= last; ++s) {
    const char* p = reinterpret_cast<const char*>(x + (s * c + ch) * h * w);
    for (int64_t b = 0; b < h * w * 4; b += 64) __builtin_prefetch(p + b);
  }
}

template <bool kAvx512>
[[gnu::always_inline]] inline void input_transform_body(const InputJob& a) {
  const int64_t span = a.tw + 1, width = 2 * span, len = a.rows * width, cols = a.rows * span;
  // 0-3 input rows, 4-7 rows of B^T d, each followed by 2 zeros that the
  // last tile's extra column reads.
  auto buf = [&](int k) { return a.tmp + k * (len + 2); };
  for (int k = 4; k < 8; ++k) buf(k)[len] = buf(k)[len + 1] = 0.0f;
  const int64_t fs = a.c * a.nt;
  for (int64_t ch = 0; ch < a.c; ++ch) {
    prefetch_planes(a.x, a.c, a.h, a.w, ch + 1, a.th, a.row0, a.rows);
    for (int64_t rr = 0; rr < a.rows; ++rr) {
      const int64_t row = a.row0 + rr, s = row / a.th, i = row % a.th;
      const float* plane = a.x + (s * a.c + ch) * a.h * a.w;
      const int64_t r0 = 2 * i - a.pad_h, at = rr * width;
#ifdef LOOM_WINOGRAD_X86
      if constexpr (kAvx512) {
        bt_rows_avx512(plane, a.h, a.w, r0, -a.pad_w, width, buf(4) + at, buf(5) + at, buf(6) + at, buf(7) + at);
        continue;
      }
#endif
      for (int q = 0; q < 4; ++q) copy_row(plane, a.h, a.w, r0 + q, -a.pad_w, width, buf(q) + at);
    }
    if (!kAvx512) bt_rows(buf(0), buf(1), buf(2), buf(3), buf(4), buf(5), buf(6), buf(7), len);
    float* v = a.v + ch * a.nt;
    // Every column, the extra one of each row included (finite when the input is).
    for (int q = 0; q < 4; ++q)
      bt_cols(buf(4 + q), v + (4 * q) * fs, v + (4 * q + 1) * fs, v + (4 * q + 2) * fs, v + (4 * q + 3) * fs, cols);
  }
}

// What the output transform of one chunk reads and writes.
struct OutputJob {
  const float* m;  // M (16, o, nt)
  int64_t o, nt;
  int64_t oh, ow, th, tw, row0, rows;
  const float* bias;  // null: none
  int64_t bias_stride;
  float* y;    // (n, o, oh, ow)
  float* tmp;  // 4 * rows * (tw + 1) floats
};

// y's 2x2 block of each tile = A^T M A (+ bias).
template <bool kAvx512>
[[gnu::always_inline]] inline void output_transform_body(const OutputJob& a) {
  const int64_t span = a.tw + 1, width = 2 * span, cols = a.rows * span;
  float* out[2] = {a.tmp, a.tmp + a.rows * width};
  for (int64_t oc = 0; oc < a.o; ++oc) {
    at_tiles(a.m + oc * a.nt, a.o * a.nt, cols, out[0], out[1]);
    const float* b = a.bias != nullptr ? a.bias + oc * a.bias_stride : nullptr;
    for (int64_t rr = 0; rr < a.rows; ++rr) {
      const int64_t row = a.row0 + rr, s = row / a.th, i = row % a.th;
      for (int q = 0; q < 2 && 2 * i + q < a.oh; ++q) {
        float* dst = a.y + ((s * a.o + oc) * a.oh + 2 * i + q) * a.ow;
#ifdef LOOM_WINOGRAD_X86
        if constexpr (kAvx512) {
          store_row_avx512(out[q] + rr * width, a.ow, b, dst);
          continue;
        }
#endif
        store_row(out[q] + rr * width, a.ow, b, dst);
      }
    }
  }
}

// What the weight gradient's output-gradient transform of one chunk reads and writes.
struct GradJob {
  const float* g;  // (n, o, oh, ow)
  int64_t o, oh, ow, th, tw, row0, rows;
  float* e;  // E (16, o, nt)
  int64_t nt;
  float* tmp;  // 12 * rows * (tw + 1) floats
};

// E_f[oc][tile] = (A e A^T)_f, e the tile's 2x2 block of g (zeros past its
// edge, so the extra column of each row is zero).
template <bool kAvx512>
[[gnu::always_inline]] inline void grad_transform_body(const GradJob& a) {
  const int64_t span = a.tw + 1, width = 2 * span, len = a.rows * width, cols = a.rows * span;
  auto buf = [&](int k) { return a.tmp + k * len; };  // 0-1 rows of g, 2-5 rows of A e
  const int64_t fs = a.o * a.nt;
  for (int64_t oc = 0; oc < a.o; ++oc) {
    prefetch_planes(a.g, a.o, a.oh, a.ow, oc + 1, a.th, a.row0, a.rows);
    for (int64_t rr = 0; rr < a.rows; ++rr) {
      const int64_t row = a.row0 + rr, s = row / a.th, i = row % a.th;
      const float* plane = a.g + (s * a.o + oc) * a.oh * a.ow;
      const int64_t at = rr * width;
#ifdef LOOM_WINOGRAD_X86
      if constexpr (kAvx512) {
        a_rows_avx512(plane, a.oh, a.ow, 2 * i, width, buf(2) + at, buf(3) + at, buf(4) + at, buf(5) + at);
        continue;
      }
#endif
      for (int q = 0; q < 2; ++q) copy_row(plane, a.oh, a.ow, 2 * i + q, 0, width, buf(q) + at);
    }
    if (!kAvx512) a_rows(buf(0), buf(1), buf(2), buf(3), buf(4), buf(5), len);
    float* e = a.e + oc * a.nt;
    for (int q = 0; q < 4; ++q)
      a_cols(buf(2 + q), e + (4 * q) * fs, e + (4 * q + 1) * fs, e + (4 * q + 2) * fs, e + (4 * q + 3) * fs, cols);
  }
}

#if defined(__x86_64__) || defined(__i386__)
#define LOOM_WINOGRAD_CLONES(name, Job)                                                            \
  [[gnu::target("avx512f,fma")]] void name##_avx512(const Job& a) { name##_body<true>(a); }         \
  [[gnu::target("avx2,fma")]] void name##_avx2(const Job& a) { name##_body<false>(a); }             \
  void name##_portable(const Job& a) { name##_body<false>(a); }                                    \
  void name(const Job& a) {                                                                         \
    switch (gemm_isa()) {                                                                           \
      case GemmIsa::Avx512:                                                                         \
        return name##_avx512(a);                                                                    \
      case GemmIsa::Avx2:                                                                           \
        return name##_avx2(a);                                                                      \
      default:                                                                                      \
        return name##_portable(a);                                                                  \
    }                                                                                               \
  }
#else
#define LOOM_WINOGRAD_CLONES(name, Job) \
  void name(const Job& a) { name##_body<false>(a); }
#endif
LOOM_WINOGRAD_CLONES(input_transform, InputJob)
LOOM_WINOGRAD_CLONES(output_transform, OutputJob)
LOOM_WINOGRAD_CLONES(grad_transform, GradJob)
#undef LOOM_WINOGRAD_CLONES

// U_f[oc][ic] = (G g G^T)_f for every filter g of the call (see winograd_conv3x3_f32).
void filter_transform(const float* w, bool flip, int64_t o, int64_t c, float* u) {
  for (int64_t oc = 0; oc < o; ++oc)
    for (int64_t ic = 0; ic < c; ++ic) {
      float g[3][3];
      for (int kh = 0; kh < 3; ++kh)
        for (int kw = 0; kw < 3; ++kw)
          g[kh][kw] = flip ? w[((ic * o + oc) * 3 + 2 - kh) * 3 + 2 - kw] : w[((oc * c + ic) * 3 + kh) * 3 + kw];
      // G g: rows g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2; then the same on columns.
      float t[4][3];
      for (int k = 0; k < 3; ++k) {
        t[0][k] = g[0][k];
        t[1][k] = (g[0][k] + g[1][k] + g[2][k]) * 0.5f;
        t[2][k] = (g[0][k] - g[1][k] + g[2][k]) * 0.5f;
        t[3][k] = g[2][k];
      }
      for (int r = 0; r < 4; ++r) {
        const float row[4] = {t[r][0], (t[r][0] + t[r][1] + t[r][2]) * 0.5f, (t[r][0] - t[r][1] + t[r][2]) * 0.5f,
                              t[r][2]};
        for (int k = 0; k < 4; ++k) u[((4 * r + k) * o + oc) * c + ic] = row[k];
      }
    }
}

}  // namespace

void winograd_conv3x3_f32(const float* x, int64_t n, int64_t c, int64_t h, int64_t w, const float* weight, bool flip,
                          int64_t o, int64_t oh, int64_t ow, int64_t pad_h, int64_t pad_w, const float* bias,
                          int64_t bias_stride, float* y) {
  if (n == 0 || o == 0 || oh == 0 || ow == 0) return;
  const GemmIsa isa = gemm_isa();
  const Tiling t = tiling(n, oh, ow, 16 * (c + o), gemm_kernel(isa).nr);
  Scratch u = scratch(16 * o * c);
  filter_transform(weight, flip, o, c, u.get());
  const int64_t vfloats = 16 * c * t.nt, mfloats = 16 * o * t.nt;
  for_each_chunk(t.chunks, vfloats + 16 * t.nt + 8, mfloats + 4 * t.nt, [&](int64_t ch, float* va, float* mb) {
    const int64_t row0 = ch * t.rows_per_chunk, rows = std::min(t.rows_per_chunk, t.rows - row0);
    const int64_t kt = rows * (t.tw + 1);
    input_transform({x, c, h, w, pad_h, pad_w, t.th, t.tw, row0, rows, va, t.nt, va + vfloats});
    // M_f (o, kt) = U_f (o, c) @ V_f (c, kt), f < 16.
    sgemm(isa, 16, o, kt, c, {u.get(), o * c, c, 1}, {va, c * t.nt, t.nt, 1}, {mb, o * t.nt, t.nt, 1});
    output_transform({mb, o, t.nt, oh, ow, t.th, t.tw, row0, rows, bias, bias_stride, y, mb + mfloats});
  });
}

void winograd_weight_grad3x3_f32(const float* x, const float* g, int64_t n, int64_t c, int64_t h, int64_t w,
                                 int64_t o, int64_t oh, int64_t ow, int64_t pad_h, int64_t pad_w, float* dw) {
  const int64_t fsize = 16 * o * c;
  Scratch total = scratch(fsize);
  if (n == 0 || oh == 0 || ow == 0) {
    std::fill(total.get(), total.get() + fsize, 0.0f);
  } else {
    const GemmIsa isa = gemm_isa();
    const Tiling t = tiling(n, oh, ow, 16 * (c + o), gemm_kernel(isa).nr);
    const int64_t ranges =
        std::min({t.chunks, kMaxRanges, std::max<int64_t>(kPartialFloats / std::max<int64_t>(fsize, 1), 1)});
    Scratch partial = scratch((ranges - 1) * fsize);
    const int64_t vfloats = 16 * c * t.nt, efloats = 16 * o * t.nt;
    for_each_chunk(ranges, vfloats + 16 * t.nt + 8, efloats + fsize + 12 * t.nt,
                   [&](int64_t r, float* va, float* eb) {
      float* sum = r == 0 ? total.get() : partial.get() + (r - 1) * fsize;
      float* prod = eb + efloats;
      const int64_t first = r * t.chunks / ranges, last = (r + 1) * t.chunks / ranges;
      for (int64_t ch = first; ch < last; ++ch) {
        const int64_t row0 = ch * t.rows_per_chunk, rows = std::min(t.rows_per_chunk, t.rows - row0);
        const int64_t kt = rows * (t.tw + 1);
        input_transform({x, c, h, w, pad_h, pad_w, t.th, t.tw, row0, rows, va, t.nt, va + vfloats});
        grad_transform({g, o, oh, ow, t.th, t.tw, row0, rows, eb, t.nt, prod + fsize});
        // S_f (o, c) = E_f (o, kt) @ V_f^T (kt, c), f < 16, added to the range's sum in chunk order.
        float* dst = ch == first ? sum : prod;
        sgemm(isa, 16, o, c, kt, {eb, o * t.nt, t.nt, 1}, {va, c * t.nt, 1, t.nt}, {dst, o * c, c, 1});
        if (ch != first)
          for (int64_t k = 0; k < fsize; ++k) sum[k] += prod[k];
      }
    });
    for (int64_t r = 1; r < ranges; ++r) {
      const float* p = partial.get() + (r - 1) * fsize;
      for (int64_t k = 0; k < fsize; ++k) total[k] += p[k];
    }
  }
  // dW = G^T S G per (oc, ic): G^T = [1 .5 .5 0; 0 .5 -.5 0; 0 .5 .5 1].
  const float* s = total.get();
  for (int64_t oc = 0; oc < o; ++oc)
    for (int64_t ic = 0; ic < c; ++ic) {
      float m[4][4];
      for (int f = 0; f < 16; ++f) m[f / 4][f % 4] = s[(f * o + oc) * c + ic];
      float t[3][4];
      for (int k = 0; k < 4; ++k) {
        t[0][k] = m[0][k] + (m[1][k] + m[2][k]) * 0.5f;
        t[1][k] = (m[1][k] - m[2][k]) * 0.5f;
        t[2][k] = (m[1][k] + m[2][k]) * 0.5f + m[3][k];
      }
      float* out = dw + (oc * c + ic) * 9;
      for (int r = 0; r < 3; ++r) {
        out[r * 3 + 0] = t[r][0] + (t[r][1] + t[r][2]) * 0.5f;
        out[r * 3 + 1] = (t[r][1] - t[r][2]) * 0.5f;
        out[r * 3 + 2] = (t[r][1] + t[r][2]) * 0.5f + t[r][3];
      }
    }
}

}  // namespace loom::cpu
