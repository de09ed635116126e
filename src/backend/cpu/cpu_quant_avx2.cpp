// The AVX2 kernels of quantized inference (Note [Quantized Linear] in
// cpu_quant.cpp): rounding float32 rows to int8, and the int8 and int4
// products. Built with -mavx2 -mfma -ffp-contract=off (CMakeLists.txt); only
// called after CPUID says the CPU has AVX2. Everything here has internal
// linkage but the one entry point (Note [GEMM design] in cpu_gemm.h), and no
// standard library template or inline function is used, so no AVX2 code can
// leak into another file's symbols.
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>

#include <cstdint>

#include "backend/cpu/cpu_quant.h"

namespace loom::cpu {
namespace {

int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// The first n (0..8) of 8 lanes set.
__m256i lanes8(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// x[i * cs] for i < n (1..8); the lanes past n are 0.
__m256 load8(const float* x, int64_t cs, int64_t n) {
  if (cs == 1) return n >= 8 ? _mm256_loadu_ps(x) : _mm256_maskload_ps(x, lanes8(n));
  alignas(32) float buf[8] = {};
  for (int64_t i = 0; i < n && i < 8; ++i) buf[i] = x[i * cs];
  return _mm256_load_ps(buf);
}

float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

// clamp(r(v * id), -127, 127) for the 32 floats a, b, c, d, as bytes in
// their order. cvtps rounds to nearest even (the default MXCSR) and gives
// 0x80000000 for NaN, which the saturating packs make -128 and the max -127.
__m256i codes32(__m256 a, __m256 b, __m256 c, __m256 d, __m256 id) {
  const __m256i ia = _mm256_cvtps_epi32(_mm256_mul_ps(a, id));
  const __m256i ib = _mm256_cvtps_epi32(_mm256_mul_ps(b, id));
  const __m256i ic = _mm256_cvtps_epi32(_mm256_mul_ps(c, id));
  const __m256i idd = _mm256_cvtps_epi32(_mm256_mul_ps(d, id));
  // Packs work within 128-bit halves: the bytes come out as dwords
  // a0-3 b0-3 c0-3 d0-3 | a4-7 b4-7 c4-7 d4-7, put back in order below.
  const __m256i ab = _mm256_packs_epi32(ia, ib);
  const __m256i cd = _mm256_packs_epi32(ic, idd);
  const __m256i abcd = _mm256_packs_epi16(ab, cd);
  const __m256i ordered = _mm256_permutevar8x32_epi32(abcd, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  return _mm256_max_epi8(ordered, _mm256_set1_epi8(-127));
}

// See QuantizeRows (cpu_quant.h).
void quantize_rows(const QuantizeRows& a) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 zero = _mm256_setzero_ps();
  const int64_t cs = a.x_cs;
  for (int64_t r = 0; r < a.rows; ++r) {
    const float* xr = a.x + r * a.x_rs;
    int8_t* qr = a.q + r * a.q_rs;
    for (int64_t start = 0, b = 0; start < a.k; start += a.block, ++b) {
      const int64_t len = min64(a.block, a.k - start);
      const float* xb = xr + start * cs;
      __m256 vmax = zero;
      for (int64_t i = 0; i < len; i += 8)
        vmax = _mm256_max_ps(vmax, _mm256_andnot_ps(sign, load8(xb + i * cs, cs, len - i)));
      const float amax = hmax(vmax);
      const float d = amax / 127.0f;
      const __m256 id = _mm256_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
      const int64_t width = a.pad ? a.block : len;  // codes to write
      for (int64_t i = 0; i < width; i += 32) {
        __m256 v[4];
        for (int s = 0; s < 4; ++s) {
          const int64_t at = i + 8 * s;
          v[s] = at < len ? load8(xb + at * cs, cs, len - at) : zero;
        }
        const __m256i q = codes32(v[0], v[1], v[2], v[3], id);
        int8_t* dst = qr + start + i;
        if (width - i >= 32) {
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), q);
        } else {
          alignas(32) int8_t buf[32];
          _mm256_store_si256(reinterpret_cast<__m256i*>(buf), q);
          for (int64_t t = 0; t < width - i; ++t) dst[t] = buf[t];
        }
      }
      a.d[r * a.d_rs + b] = d;
    }
  }
}

int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

// ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)): Note [Quantized Linear].
float hsum_int4_order(__m256 a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// ---- prefetching ----

// Tiles of one row of x read each weight byte once, so they wait on memory:
// each prefetches the rows of the tile kAhead tiles on (contiguous after
// its own) as it reads its own, C * 32 codes a step. With the hardware
// prefetcher alone a 3072 x 768 product whose weight comes from memory ran
// at ~4 GB/s of int8 codes on this project's machine (AMD EPYC, ~10 GB/s
// for one plain stream); this made it and the int4 one about 2x faster,
// and changed nothing measurable when the weight is in cache.
constexpr int kAhead = 2;

// p + bytes, for prefetching only: it may lie past the end of the weight
// (a prefetch never faults), so the sum is taken as an integer.
const char* prefetch_address(const void* p, int64_t bytes) {
  return reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(p) + static_cast<uintptr_t>(bytes));
}

// ---- int8 ----

// Outputs (r0 + r, j0 + c) for r < R, c < C: each weight row's 32 bytes are
// loaded once for R rows of x, each row of x's once for C weight rows.
template <int R, int C>
void tile_int8(const QuantProduct& p, int64_t r0, int64_t j0) {
  const int64_t k = p.depth;
  const auto* w = static_cast<const int8_t*>(p.w);
  const char* ahead = prefetch_address(w, (j0 + kAhead * C) * p.w_rs);  // see kAhead
  const int8_t* xr[R];
  const int8_t* wc[C];
  for (int r = 0; r < R; ++r) xr[r] = p.qx + (r0 + r) * p.qx_rs;
  for (int c = 0; c < C; ++c) wc[c] = w + (j0 + c) * p.w_rs;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 32 <= k; i += 32) {
    // The sign trick: |w| (unsigned) times sign(w) * x (signed) is x * w.
    // |w| on the weight's side: a code of -128 (from a file; QuantizeWeight
    // never writes one) reads as the unsigned 128, still exact, and x's
    // codes (|x| <= 127, ours) never overflow the sign.
    __m256i wv[C], aw[C];
    for (int c = 0; c < C; ++c) {
      wv[c] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wc[c] + i));
      aw[c] = _mm256_abs_epi8(wv[c]);
    }
    if (R == 1)
      for (int l = 0; l < C * 32; l += 64) _mm_prefetch(ahead + i * C + l, _MM_HINT_T0);
    for (int r = 0; r < R; ++r) {
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr[r] + i));
      for (int c = 0; c < C; ++c) {
        const __m256i pairs = _mm256_maddubs_epi16(aw[c], _mm256_sign_epi8(xv, wv[c]));
        acc[r][c] = _mm256_add_epi32(acc[r][c], _mm256_madd_epi16(pairs, ones));
      }
    }
  }
  int32_t tail[R][C] = {};
  for (; i < k; ++i)
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) tail[r][c] += static_cast<int32_t>(xr[r][i]) * static_cast<int32_t>(wc[c][i]);
  for (int r = 0; r < R; ++r) {
    const float dx = p.dx[(r0 + r) * p.dx_rs];
    for (int c = 0; c < C; ++c) {
      const int32_t isum = hsum_epi32(acc[r][c]) + tail[r][c];
      float v = static_cast<float>(isum) * (dx * p.dw[(j0 + c) * p.dw_rs]);
      if (p.bias != nullptr) v = v + p.bias[(j0 + c) * p.bias_stride];
      p.out[(r0 + r) * p.out_rs + j0 + c] = v;
    }
  }
}

// ---- int4 ----

// As tile_int8, a group of 32 codes (16 bytes, one scale) a step.
template <int R, int C>
void tile_int4(const QuantProduct& p, int64_t r0, int64_t j0) {
  const auto* w = static_cast<const uint8_t*>(p.w);
  const int8_t* xr[R];
  const float* dxr[R];
  const uint8_t* wc[C];
  const float* dwc[C];
  for (int r = 0; r < R; ++r) {
    xr[r] = p.qx + (r0 + r) * p.qx_rs;
    dxr[r] = p.dx + (r0 + r) * p.dx_rs;
  }
  for (int c = 0; c < C; ++c) {
    wc[c] = w + (j0 + c) * p.w_rs;
    dwc[c] = p.dw + (j0 + c) * p.dw_rs;
  }
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i eights = _mm256_set1_epi8(8);
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i nibble_shift = _mm256_setr_epi64x(0, 0, 4, 4);  // high 128 bits: the high nibbles
  const char* ahead = prefetch_address(w, (j0 + kAhead * C) * p.w_rs);  // see kAhead
  const char* ahead_d = prefetch_address(p.dw, (j0 + kAhead * C) * p.dw_rs * 4);
  __m256 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
  for (int64_t g = 0; g < p.depth; ++g) {
    if (R == 1) {  // see kAhead: C * 16 bytes of codes and C scales a step
      for (int l = 0; l < C * 16; l += 64) _mm_prefetch(ahead + g * C * 16 + l, _MM_HINT_T0);
      _mm_prefetch(ahead_d + g * C * 4, _MM_HINT_T0);
    }
    // The group's 32 codes in 0..15: the 16 bytes in both halves, the upper
    // half shifted down a nibble.
    __m256i wq[C];
    for (int c = 0; c < C; ++c) {
      const __m256i bytes =
          _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wc[c] + 16 * g)));
      wq[c] = _mm256_and_si256(_mm256_srlv_epi64(bytes, nibble_shift), low4);
    }
    for (int r = 0; r < R; ++r) {
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr[r] + 32 * g));
      const __m256i x8 = _mm256_maddubs_epi16(eights, xv);  // 8 * (x0 + x1) per pair
      const __m256 dx = _mm256_broadcast_ss(dxr[r] + g);
      for (int c = 0; c < C; ++c) {
        // pairs of x * (q - 8), then fours: lane l is s of Note [Quantized Linear].
        const __m256i pairs = _mm256_sub_epi16(_mm256_maddubs_epi16(wq[c], xv), x8);
        const __m256 s = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
        const __m256 scale = _mm256_mul_ps(dx, _mm256_broadcast_ss(dwc[c] + g));
        acc[r][c] = _mm256_fmadd_ps(s, scale, acc[r][c]);
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) {
      float v = hsum_int4_order(acc[r][c]);
      if (p.bias != nullptr) v = v + p.bias[(j0 + c) * p.bias_stride];
      p.out[(r0 + r) * p.out_rs + j0 + c] = v;
    }
  }
}

// ---- tiling ----

using TileFn = void (*)(const QuantProduct&, int64_t, int64_t);

// One row of x: tiles of 1 x 4 weight rows. More rows: 4 x 2 (edges smaller).
struct Tiles {
  TileFn one_row[4];  // C = 1..4
  TileFn rows[4][2];  // R = 1..4, C = 1..2
};

template <int R, int C>
struct Int8Tile {
  static void run(const QuantProduct& p, int64_t r0, int64_t j0) { tile_int8<R, C>(p, r0, j0); }
};
template <int R, int C>
struct Int4Tile {
  static void run(const QuantProduct& p, int64_t r0, int64_t j0) { tile_int4<R, C>(p, r0, j0); }
};

template <template <int, int> class Tile>
constexpr Tiles make_tiles() {
  return Tiles{{&Tile<1, 1>::run, &Tile<1, 2>::run, &Tile<1, 3>::run, &Tile<1, 4>::run},
               {{&Tile<1, 1>::run, &Tile<1, 2>::run},
                {&Tile<2, 1>::run, &Tile<2, 2>::run},
                {&Tile<3, 1>::run, &Tile<3, 2>::run},
                {&Tile<4, 1>::run, &Tile<4, 2>::run}}};
}

constexpr Tiles kInt8Tiles = make_tiles<Int8Tile>();
constexpr Tiles kInt4Tiles = make_tiles<Int4Tile>();

// The block of QuantProduct: weight rows in the outer loop, so a tile's C
// weight rows stay in L1 while every row of x passes them.
void run_tiles(const Tiles& tiles, const QuantProduct& p) {
  if (p.rows == 1) {
    for (int64_t j = 0; j < p.cols; j += 4) tiles.one_row[min64(4, p.cols - j) - 1](p, 0, j);
    return;
  }
  for (int64_t j = 0; j < p.cols; j += 2) {
    const int64_t c = min64(2, p.cols - j);
    for (int64_t r = 0; r < p.rows; r += 4) tiles.rows[min64(4, p.rows - r) - 1][c - 1](p, r, j);
  }
}

void product_int8(const QuantProduct& p) { run_tiles(kInt8Tiles, p); }
void product_int4(const QuantProduct& p) { run_tiles(kInt4Tiles, p); }

}  // namespace

QuantKernels quant_kernels_avx2() { return QuantKernels{"avx2", &quantize_rows, &product_int8, &product_int4}; }

}  // namespace loom::cpu

#endif
