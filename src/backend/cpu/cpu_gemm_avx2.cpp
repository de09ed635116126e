// The AVX2 + FMA float32 GEMM micro-kernel (Note [GEMM design] in
// cpu_gemm.h). Built with -mavx2 -mfma (CMakeLists.txt); only called after
// CPUID says the CPU has both. Everything here has internal linkage but the
// one entry point, so no AVX2 code can leak into another file's symbols.
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>

#include "backend/cpu/cpu_gemm.h"

namespace loom::cpu {
namespace {

// The register tile: kMr rows of C by kNv vectors of 8 floats. The
// accumulators take kMr * kNv = 12 of the 16 ymm registers; the B row (2)
// and the broadcast A value (1) take 3 more.
constexpr int kMr = 6;
constexpr int kNv = 2;
constexpr int kNr = 8 * kNv;

// kLaneMask, lanes8, transpose8 and the `rows` kernel (Note [GEMM
// without packing] in cpu_gemm.h).
#include "backend/cpu/cpu_gemm_rows_body.h"

// C tile (R rows, V vectors; the last vector masked to its real lanes) of a
// tile whose columns are contiguous (cs == 1).
template <int R, int V>
void tile_kernel(const GemmTile& t) {
  const int tail = t.cols - 8 * (V - 1);  // 1..8 lanes in the last vector
  const __m256i last = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kLaneMask + 8 - tail));
  float* c = t.c;
  const int64_t rs = t.rs;

  __m256 acc[R][V];
  if (t.accumulate) {
    for (int r = 0; r < R; ++r) {
      for (int v = 0; v < V - 1; ++v) acc[r][v] = _mm256_loadu_ps(c + r * rs + 8 * v);
      acc[r][V - 1] = _mm256_maskload_ps(c + r * rs + 8 * (V - 1), last);
    }
  } else {
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < V; ++v) acc[r][v] = _mm256_setzero_ps();
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
    __m256 bv[V];
    for (int v = 0; v < V; ++v) bv[v] = _mm256_loadu_ps(b + 8 * v);  // a packed panel, or B in place
    for (int r = 0; r < R; ++r) {
      const __m256 ar = _mm256_broadcast_ss(a + r);
      for (int v = 0; v < V; ++v) acc[r][v] = _mm256_fmadd_ps(ar, bv[v], acc[r][v]);
    }
    a += kMr;
    b += t.b_step;
  }

  epilogue8<R, V>(acc, t.bias, last, t.relu);  // Note [GEMM epilogue]

  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < V - 1; ++v) _mm256_storeu_ps(c + r * rs + 8 * v, acc[r][v]);
    _mm256_maskstore_ps(c + r * rs + 8 * (V - 1), last, acc[r][V - 1]);
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
    kTiles.fn[t.rows - 1][(t.cols + 7) / 8 - 1](t);
    return;
  }
  // Strided columns: run the tile on a contiguous copy of C.
  alignas(32) float buf[kMr * kNr];
  if (t.accumulate) {
    for (int r = 0; r < t.rows; ++r)
      for (int j = 0; j < t.cols; ++j) buf[r * kNr + j] = t.c[r * t.rs + j * t.cs];
  }
  GemmTile local = t;
  local.c_next = nullptr;
  local.c = buf;
  local.rs = kNr;
  local.cs = 1;
  kTiles.fn[t.rows - 1][(t.cols + 7) / 8 - 1](local);
  for (int r = 0; r < t.rows; ++r)
    for (int j = 0; j < t.cols; ++j) t.c[r * t.rs + j * t.cs] = buf[r * kNr + j];
}

// ---- packing ----

// See GemmPackFn (cpu_gemm.h). Lines go 8 at a time (one vector of dst).
void pack(const float* src, int64_t line_stride, int64_t step, int h, int64_t kc, int w, float* dst) {
  for (int g = 0; g < w; g += 8) {
    const int lines = h - g < 0 ? 0 : (h - g > 8 ? 8 : h - g);  // real lines in this group
    const __m256i store = lanes8(w - g);
    if (step == 1) {
      // Transpose: each line is contiguous along the depth.
      for (int64_t p0 = 0; p0 < kc; p0 += 8) {
        const int64_t depth = kc - p0 < 8 ? kc - p0 : 8;
        const __m256i load = lanes8(depth);
        __m256 r[8];
        for (int i = 0; i < 8; ++i)
          r[i] = i < lines ? _mm256_maskload_ps(src + (g + i) * line_stride + p0, load) : _mm256_setzero_ps();
        transpose8(r);
        // A masked store is slow on AMD's CPUs (it was most of the time of
        // packing a 784x128 W^T): whole vectors store plainly.
        if (w - g >= 8)
          for (int64_t c = 0; c < depth; ++c) _mm256_storeu_ps(dst + (p0 + c) * w + g, r[c]);
        else
          for (int64_t c = 0; c < depth; ++c) _mm256_maskstore_ps(dst + (p0 + c) * w + g, store, r[c]);
      }
    } else if (line_stride == 1) {
      // Copy: the lines of one depth are contiguous.
      const __m256i load = lanes8(lines);
      if (w - g >= 8)
        for (int64_t p = 0; p < kc; ++p) _mm256_storeu_ps(dst + p * w + g, _mm256_maskload_ps(src + p * step + g, load));
      else
        for (int64_t p = 0; p < kc; ++p)
          _mm256_maskstore_ps(dst + p * w + g, store, _mm256_maskload_ps(src + p * step + g, load));
    } else {
      const int end = g + 8 < w ? g + 8 : w;
      for (int64_t p = 0; p < kc; ++p)
        for (int r = g; r < end; ++r) dst[p * w + r] = r < h ? src[r * line_stride + p * step] : 0.0f;
    }
  }
}

}  // namespace

GemmKernel gemm_kernel_avx2() {
  // Defaults only: gemm_kernel() sets kc, mc and nc from the caches of the
  // CPU it runs on (Note [GEMM block sizes] in cpu_gemm.cpp).
  return GemmKernel{kMr, kNr, /*mc=*/kMr * 32, /*kc=*/256, /*nc=*/kNr * 16, &tile, &pack, &rows};
}

}  // namespace loom::cpu

#endif
