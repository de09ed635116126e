// The AVX-512 float32 GEMM micro-kernel (Note [GEMM design] in cpu_gemm.h).
// Built with -mavx512f -mfma (CMakeLists.txt); only called after CPUID says
// the CPU has AVX-512F. Everything here has internal linkage but the one
// entry point, so no AVX-512 code can leak into another file's symbols.
#if defined(__x86_64__) || defined(__i386__)

// GCC 12's AVX-512 intrinsics (unpack, shuffle) start from a deliberately
// undefined vector, which -Wmaybe-uninitialized flags once they are inlined
// (a false positive). The warning points into the header, so it is silenced
// before the include.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include "backend/cpu/cpu_gemm.h"

namespace loom::cpu {
namespace {

// The `rows` kernel (Note [GEMM without packing] in cpu_gemm.h), shared with
// the AVX2 path.
#include "backend/cpu/cpu_gemm_rows_body.h"

// The register tile: kMr rows of C by kNv vectors of 16 floats. The
// accumulators take kMr * kNv = 28 of the 32 zmm registers; the B row (2)
// and the broadcast A value (1) take 3 more.
constexpr int kMr = 14;
constexpr int kNv = 2;
constexpr int kNr = 16 * kNv;

// C tile (R rows, V vectors; the last vector masked to `last` lanes) of a
// tile whose columns are contiguous (cs == 1).
template <int R, int V>
void tile_kernel(const GemmTile& t) {
  const int tail = t.cols - 16 * (V - 1);  // 1..16 lanes in the last vector
  const __mmask16 last = static_cast<__mmask16>((1u << tail) - 1u);
  float* c = t.c;
  const int64_t rs = t.rs;

  __m512 acc[R][V];
  if (t.accumulate) {
    for (int r = 0; r < R; ++r) {
      for (int v = 0; v < V - 1; ++v) acc[r][v] = _mm512_loadu_ps(c + r * rs + 16 * v);
      acc[r][V - 1] = _mm512_maskz_loadu_ps(last, c + r * rs + 16 * (V - 1));
    }
  } else {
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < V; ++v) acc[r][v] = _mm512_setzero_ps();
  }

  if (t.c_next != nullptr) {
    // Each row of the next tile spans at most kNr floats: up to three lines.
    for (int r = 0; r < kMr; ++r) {
      const char* row = reinterpret_cast<const char*>(t.c_next + r * rs);
      for (int line = 0; line < static_cast<int>(kNr * sizeof(float)) + 64; line += 64)
        _mm_prefetch(row + line, _MM_HINT_T0);
    }
  }

  const float* a = t.a;
  const float* b = t.b;
  for (int64_t p = 0; p < t.kc; ++p) {
    __m512 bv[V];
    for (int v = 0; v < V; ++v) bv[v] = _mm512_loadu_ps(b + 16 * v);  // a packed panel, or B in place
    for (int r = 0; r < R; ++r) {
      const __m512 ar = _mm512_set1_ps(a[r]);
      for (int v = 0; v < V; ++v) acc[r][v] = _mm512_fmadd_ps(ar, bv[v], acc[r][v]);
    }
    a += kMr;
    b += t.b_step;
  }

  // Note [GEMM epilogue]: bias, then relu (x < 0 ? 0 : x keeps NaN and -0).
  if (t.bias != nullptr) {
    __m512 bias[V];
    for (int v = 0; v < V - 1; ++v) bias[v] = _mm512_loadu_ps(t.bias + 16 * v);
    bias[V - 1] = _mm512_maskz_loadu_ps(last, t.bias + 16 * (V - 1));
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < V; ++v) acc[r][v] = _mm512_add_ps(acc[r][v], bias[v]);
  }
  if (t.relu) {
    const __m512 zero = _mm512_setzero_ps();
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < V; ++v)
        acc[r][v] = _mm512_mask_mov_ps(acc[r][v], _mm512_cmp_ps_mask(acc[r][v], zero, _CMP_LT_OQ), zero);
  }

  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < V - 1; ++v) _mm512_storeu_ps(c + r * rs + 16 * v, acc[r][v]);
    _mm512_mask_storeu_ps(c + r * rs + 16 * (V - 1), last, acc[r][V - 1]);
  }
}

using TileFn = void (*)(const GemmTile&);

// tile_kernel<R, V> for every R in 1..kMr and V in 1..kNv, so an edge tile
// does only the work of its real rows and vectors.
struct TileTable {
  TileFn fn[kMr][kNv];
};
template <int R, int V>
constexpr void fill_table(TileTable& table) {
  table.fn[R - 1][V - 1] = &tile_kernel<R, V>;
  if constexpr (V < kNv) fill_table<R, V + 1>(table);
  else if constexpr (R < kMr) fill_table<R + 1, 1>(table);
}
constexpr TileTable make_table() {
  TileTable table{};
  fill_table<1, 1>(table);
  return table;
}
constexpr TileTable kTiles = make_table();

void tile(const GemmTile& t) {
  if (t.cs == 1) {
    kTiles.fn[t.rows - 1][(t.cols + 15) / 16 - 1](t);
    return;
  }
  // Strided columns: run the tile on a contiguous copy of C.
  alignas(64) float buf[kMr * kNr];
  if (t.accumulate) {
    for (int r = 0; r < t.rows; ++r)
      for (int j = 0; j < t.cols; ++j) buf[r * kNr + j] = t.c[r * t.rs + j * t.cs];
  }
  GemmTile local = t;
  local.c_next = nullptr;
  local.c = buf;
  local.rs = kNr;
  local.cs = 1;
  kTiles.fn[t.rows - 1][(t.cols + 15) / 16 - 1](local);
  for (int r = 0; r < t.rows; ++r)
    for (int j = 0; j < t.cols; ++j) t.c[r * t.rs + j * t.cs] = buf[r * kNr + j];
}

// ---- packing ----

// Transposes the 16 x 16 block r[0..15] (r[i] is row i) in registers:
// pairs of rows interleave, then pairs of pairs, then 128-bit lanes.
inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);      // per 128-bit lane: a0 b0 a1 b1
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);  //                   a2 b2 a3 b3
  }
  for (int i = 0; i < 16; i += 4) {
    // Per 128-bit lane L, r[i + c] = rows i..i+3 at column c + 4 L.
    r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
    r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
    r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
    r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
  }
  for (int c = 0; c < 4; ++c) {
    // Gather lane L of the four row groups into column c + 4 L. 0x88 picks
    // lanes (0, 2) of each source, 0xdd lanes (1, 3).
    const __m512 u0 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88);
    const __m512 u1 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xdd);
    const __m512 u2 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88);
    const __m512 u3 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xdd);
    t[c] = _mm512_shuffle_f32x4(u0, u2, 0x88);
    t[c + 4] = _mm512_shuffle_f32x4(u1, u3, 0x88);
    t[c + 8] = _mm512_shuffle_f32x4(u0, u2, 0xdd);
    t[c + 12] = _mm512_shuffle_f32x4(u1, u3, 0xdd);
  }
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}

inline __mmask16 lanes_mask(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << (n > 0 ? n : 0)) - 1u);
}

// See GemmPackFn (cpu_gemm.h). Lines go 16 at a time (one vector of dst).
void pack(const float* src, int64_t line_stride, int64_t step, int h, int64_t kc, int w, float* dst) {
  for (int g = 0; g < w; g += 16) {
    const int lines = h - g < 0 ? 0 : (h - g > 16 ? 16 : h - g);  // real lines in this group
    const __mmask16 store = lanes_mask(w - g);
    if (step == 1) {
      // Transpose: each line is contiguous along the depth.
      for (int64_t p0 = 0; p0 < kc; p0 += 16) {
        const int64_t depth = kc - p0 < 16 ? kc - p0 : 16;
        const __mmask16 load = lanes_mask(depth);
        __m512 r[16];
        for (int i = 0; i < 16; ++i)
          r[i] = i < lines ? _mm512_maskz_loadu_ps(load, src + (g + i) * line_stride + p0) : _mm512_setzero_ps();
        transpose16(r);
        for (int64_t c = 0; c < depth; ++c) _mm512_mask_storeu_ps(dst + (p0 + c) * w + g, store, r[c]);
      }
    } else if (line_stride == 1) {
      // Copy: the lines of one depth are contiguous.
      const __mmask16 load = lanes_mask(lines);
      for (int64_t p = 0; p < kc; ++p)
        _mm512_mask_storeu_ps(dst + p * w + g, store, _mm512_maskz_loadu_ps(load, src + p * step + g));
    } else {
      const int end = g + 16 < w ? g + 16 : w;
      for (int64_t p = 0; p < kc; ++p)
        for (int r = g; r < end; ++r) dst[p * w + r] = r < h ? src[r * line_stride + p * step] : 0.0f;
    }
  }
}

}  // namespace

GemmKernel gemm_kernel_avx512() {
  // Defaults only: gemm_kernel() sets kc, mc and nc from the caches of the
  // CPU it runs on (Note [GEMM block sizes] in cpu_gemm.cpp).
  return GemmKernel{kMr, kNr, /*mc=*/kMr * 16, /*kc=*/256, /*nc=*/kNr * 16, &tile, &pack, &rows};
}

}  // namespace loom::cpu

#endif
