// The Winograd transforms (cpu_winograd_transforms.h).
//
// The transforms are loops over the tiles of one band (contiguous in the
// transformed layout), written once and compiled for AVX-512, AVX2 + FMA and
// the baseline ISA through gnu::target clones (LOOM_ISA_CLONES, cpu_isa.h),
// chosen with the GEMM's ISA (gemm_isa()). Their only products are by powers
// of two, so a contracted multiply-add rounds as the separate multiply and
// add do: the clones agree bitwise. AVX-512 adds a register path for
// 4x4-tile planes (Note [Winograd 4x4-tile planes]).
#include "backend/cpu/cpu_winograd_transforms.h"

#include <algorithm>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
// GCC 12's AVX-512 intrinsics (unpack, shuffle, permute) start from a
// deliberately undefined vector, which -Wmaybe-uninitialized (and, inlined
// into some callers, -Wuninitialized) flags: a false positive, as in
// cpu_gemm_avx512.cpp.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <immintrin.h>
#endif

#include "backend/cpu/cpu_isa.h"
#include "backend/cpu/cpu_scratch.h"
#include "backend/cpu/cpu_winograd_plan.h"

namespace loom::cpu::winograd {

namespace {

// Floats past the end of each per-band scratch array: the vector code
// stores whole groups of 4 tiles.
constexpr int64_t kSlack = 16;

// Calls fn(sample, i0, count, column) for each band of the tile rows
// [row0, row0 + rows): tile rows i0 .. i0 + count - 1 of one sample, whose
// first tile is the chunk's column `column`.
template <class Fn>
[[gnu::always_inline]] inline void for_each_band(int64_t th, int64_t tw, int64_t row0, int64_t rows, const Fn& fn) {
  for (int64_t r = row0; r < row0 + rows;) {
    const int64_t s = r / th, i0 = r % th, count = std::min(th - i0, row0 + rows - r);
    fn(s, i0, count, (r - row0) * tw);
    r += count;
  }
}

// The 1-D transforms, each over n tiles (lanes): in[m][j] -> out[k][j].
// Only products by powers of two, so fused and separate multiply-adds agree.

// out = B^T in (6 -> 6).
[[gnu::always_inline]] inline void bt6(const float* const* in, float* const* out, int64_t n) {
  const float *__restrict d0 = in[0], *__restrict d1 = in[1], *__restrict d2 = in[2], *__restrict d3 = in[3],
              *__restrict d4 = in[4], *__restrict d5 = in[5];
  float *__restrict v0 = out[0], *__restrict v1 = out[1], *__restrict v2 = out[2], *__restrict v3 = out[3],
        *__restrict v4 = out[4], *__restrict v5 = out[5];
  for (int64_t j = 0; j < n; ++j) {
    const float a = d0[j], b = d1[j], c = d2[j], d = d3[j], e = d4[j], f = d5[j];
    const float t1 = e - 4.0f * c, t2 = d - 4.0f * b;  // rows 1, 2: (d4 - 4 d2) +- (d3 - 4 d1)
    const float t3 = e - c, s = d - b, t4 = 2.0f * s;   // rows 3, 4: (d4 - d2) +- 2 (d3 - d1)
    v0[j] = 4.0f * (a - c) + t3;                        // 4 d0 - 5 d2 + d4
    v1[j] = t1 + t2;
    v2[j] = t1 - t2;
    v3[j] = t3 + t4;
    v4[j] = t3 - t4;
    v5[j] = (f - d) - 4.0f * s;  // 4 d1 - 5 d3 + d5
  }
}

// out = A^T in (6 -> 4), plus `bias` on every output.
[[gnu::always_inline]] inline void at6(const float* const* in, float* const* out, int64_t n, float bias) {
  const float *__restrict m0 = in[0], *__restrict m1 = in[1], *__restrict m2 = in[2], *__restrict m3 = in[3],
              *__restrict m4 = in[4], *__restrict m5 = in[5];
  float *__restrict y0 = out[0], *__restrict y1 = out[1], *__restrict y2 = out[2], *__restrict y3 = out[3];
  for (int64_t j = 0; j < n; ++j) {
    const float a = m1[j] + m2[j], b = m1[j] - m2[j], c = m3[j] + m4[j], d = m3[j] - m4[j];
    y0[j] = (m0[j] + a) + c + bias;
    y1[j] = b + 2.0f * d + bias;
    y2[j] = a + 4.0f * c + bias;
    y3[j] = (b + 8.0f * d) + m5[j] + bias;
  }
}

// out = A in (4 -> 6), A = (A^T)^T.
[[gnu::always_inline]] inline void a46(const float* const* in, float* const* out, int64_t n) {
  const float *__restrict e0 = in[0], *__restrict e1 = in[1], *__restrict e2 = in[2], *__restrict e3 = in[3];
  float *__restrict p0 = out[0], *__restrict p1 = out[1], *__restrict p2 = out[2], *__restrict p3 = out[3],
        *__restrict p4 = out[4], *__restrict p5 = out[5];
  for (int64_t j = 0; j < n; ++j) {
    const float s = e0[j] + e2[j], t = e1[j] + e3[j];
    const float s2 = e0[j] + 4.0f * e2[j], t2 = 2.0f * (e1[j] + 4.0f * e3[j]);
    p0[j] = e0[j];
    p1[j] = s + t;
    p2[j] = s - t;
    p3[j] = s2 + t2;  // e0 + 2 e1 + 4 e2 + 8 e3
    p4[j] = s2 - t2;
    p5[j] = e3[j];
  }
}

// Row r of a plane (h, w) read as tiles of a phase split: dst[m][j] =
// plane[r][col0 + 4j + m] for j < tw and m < phases, zeros outside the plane.
// dst[m] may be written up to 3 floats past j = tw - 1.
[[gnu::always_inline]] inline void split_row(const float* plane, int64_t h, int64_t w, int64_t r, int64_t col0,
                                             int64_t tw, int phases, float* const* dst) {
  if (r < 0 || r >= h) {
    for (int m = 0; m < phases; ++m) std::fill(dst[m], dst[m] + tw, 0.0f);
    return;
  }
  const float* row = plane + r * w;
  for (int64_t j = 0; j < tw; ++j)
    for (int m = 0; m < phases; ++m) {
      const int64_t col = col0 + 4 * j + m;
      dst[m][j] = col >= 0 && col < w ? row[col] : 0.0f;
    }
}

// Output row: dst[4j + q] = src[q][j] for 4j + q < width.
[[gnu::always_inline]] inline void join_row(const float* const* src, int64_t width, float* dst) {
  for (int64_t u = 0; u < width; ++u) dst[u] = src[u % 4][u / 4];
}

#if defined(__x86_64__) || defined(__i386__)
#define LOOM_WINOGRAD_X86 1
// AVX-512 versions of the phase split and join: four tiles (16 floats of a
// row) per permute. Masked-off lanes are neither read nor written.

// Lanes [lo, hi) of 16.
[[gnu::target("avx512f")]] inline __mmask16 lanes(int64_t lo, int64_t hi) {
  lo = std::clamp<int64_t>(lo, 0, 16);
  hi = std::clamp<int64_t>(hi, lo, 16);
  return static_cast<__mmask16>(((1u << hi) - 1u) & ~((1u << lo) - 1u));
}

// Lanes u of row r of a plane (h, w) at columns c + u, zeros outside the plane.
[[gnu::target("avx512f")]] inline __m512 load_cols(const float* plane, int64_t h, int64_t w, int64_t r, int64_t c) {
  if (r < 0 || r >= h || c >= w || c + 16 <= 0) return _mm512_setzero_ps();
  return _mm512_maskz_loadu_ps(lanes(-c, w - c), plane + r * w + c);
}

// Stores the four 128-bit quarters of v (quarter q to dst[q]).
[[gnu::target("avx512f")]] inline void store_quarters(__m512 v, float* const* dst) {
  _mm_storeu_ps(dst[0], _mm512_castps512_ps128(v));
  _mm_storeu_ps(dst[1], _mm512_extractf32x4_ps(v, 1));
  _mm_storeu_ps(dst[2], _mm512_extractf32x4_ps(v, 2));
  _mm_storeu_ps(dst[3], _mm512_extractf32x4_ps(v, 3));
}

// split_row, four tiles at a time (writes up to 3 floats past tw).
[[gnu::target("avx512f")]] inline void split_row_avx512(const float* plane, int64_t h, int64_t w, int64_t r,
                                                        int64_t col0, int64_t tw, int phases, float* const* dst) {
  // Lane 4q + j of a quarter-major vector holds column 4j + q.
  const __m512i lo = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  const __m512i hi = _mm512_setr_epi32(4, 8, 12, 16, 5, 9, 13, 17, 0, 0, 0, 0, 0, 0, 0, 0);
  for (int64_t j = 0; j < tw; j += 4) {
    const int64_t c = col0 + 4 * j;
    const __m512 v0 = load_cols(plane, h, w, r, c);
    float* q0[4] = {dst[0] + j, dst[1] + j, dst[2] + j, dst[3] + j};
    store_quarters(_mm512_permutexvar_ps(lo, v0), q0);
    if (phases > 4) {
      const __m512 v1 = load_cols(plane, h, w, r, c + 16);
      const __m512 p = _mm512_permutex2var_ps(v0, hi, v1);
      _mm_storeu_ps(dst[4] + j, _mm512_castps512_ps128(p));
      _mm_storeu_ps(dst[5] + j, _mm512_extractf32x4_ps(p, 1));
    }
  }
}

// join_row with bias-free vectors: four tiles (16 outputs) per store.
[[gnu::target("avx512f")]] inline void join_row_avx512(const float* const* src, int64_t width, float* dst) {
  // Lane 4j + q of the output takes lane 4q + j of the quarter-major vector.
  const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  for (int64_t u = 0, j = 0; u < width; u += 16, j += 4) {
    __m512 v = _mm512_zextps128_ps512(_mm_loadu_ps(src[0] + j));
    v = _mm512_insertf32x4(v, _mm_loadu_ps(src[1] + j), 1);
    v = _mm512_insertf32x4(v, _mm_loadu_ps(src[2] + j), 2);
    v = _mm512_insertf32x4(v, _mm_loadu_ps(src[3] + j), 3);
    _mm512_mask_storeu_ps(dst + u, lanes(0, width - u), _mm512_permutexvar_ps(idx, v));
  }
}

// The 1-D transforms with explicit vectors (the plain loops above do not
// vectorize at -O2): 16 tiles per step, the last step masked.
[[gnu::target("avx512f,fma")]] inline void bt6_avx512(const float* const* in, float* const* out, int64_t n) {
  const __m512 two = _mm512_set1_ps(2.0f), four = _mm512_set1_ps(4.0f);
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 k = lanes(0, n - j);
    const __m512 a = _mm512_maskz_loadu_ps(k, in[0] + j), b = _mm512_maskz_loadu_ps(k, in[1] + j);
    const __m512 c = _mm512_maskz_loadu_ps(k, in[2] + j), d = _mm512_maskz_loadu_ps(k, in[3] + j);
    const __m512 e = _mm512_maskz_loadu_ps(k, in[4] + j), f = _mm512_maskz_loadu_ps(k, in[5] + j);
    const __m512 t1 = _mm512_fnmadd_ps(four, c, e), t2 = _mm512_fnmadd_ps(four, b, d);
    const __m512 t3 = _mm512_sub_ps(e, c), s = _mm512_sub_ps(d, b), t4 = _mm512_mul_ps(two, s);
    _mm512_mask_storeu_ps(out[0] + j, k, _mm512_fmadd_ps(four, _mm512_sub_ps(a, c), t3));
    _mm512_mask_storeu_ps(out[1] + j, k, _mm512_add_ps(t1, t2));
    _mm512_mask_storeu_ps(out[2] + j, k, _mm512_sub_ps(t1, t2));
    _mm512_mask_storeu_ps(out[3] + j, k, _mm512_add_ps(t3, t4));
    _mm512_mask_storeu_ps(out[4] + j, k, _mm512_sub_ps(t3, t4));
    _mm512_mask_storeu_ps(out[5] + j, k, _mm512_fnmadd_ps(four, s, _mm512_sub_ps(f, d)));
  }
}

[[gnu::target("avx512f,fma")]] inline void at6_avx512(const float* const* in, float* const* out, int64_t n,
                                                      float bias) {
  const __m512 two = _mm512_set1_ps(2.0f), four = _mm512_set1_ps(4.0f), eight = _mm512_set1_ps(8.0f);
  const __m512 bv = _mm512_set1_ps(bias);
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 k = lanes(0, n - j);
    const __m512 m0 = _mm512_maskz_loadu_ps(k, in[0] + j), m1 = _mm512_maskz_loadu_ps(k, in[1] + j);
    const __m512 m2 = _mm512_maskz_loadu_ps(k, in[2] + j), m3 = _mm512_maskz_loadu_ps(k, in[3] + j);
    const __m512 m4 = _mm512_maskz_loadu_ps(k, in[4] + j), m5 = _mm512_maskz_loadu_ps(k, in[5] + j);
    const __m512 a = _mm512_add_ps(m1, m2), b = _mm512_sub_ps(m1, m2);
    const __m512 c = _mm512_add_ps(m3, m4), d = _mm512_sub_ps(m3, m4);
    _mm512_mask_storeu_ps(out[0] + j, k, _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(m0, a), c), bv));
    _mm512_mask_storeu_ps(out[1] + j, k, _mm512_add_ps(_mm512_fmadd_ps(two, d, b), bv));
    _mm512_mask_storeu_ps(out[2] + j, k, _mm512_add_ps(_mm512_fmadd_ps(four, c, a), bv));
    _mm512_mask_storeu_ps(out[3] + j, k, _mm512_add_ps(_mm512_add_ps(_mm512_fmadd_ps(eight, d, b), m5), bv));
  }
}

[[gnu::target("avx512f,fma")]] inline void a46_avx512(const float* const* in, float* const* out, int64_t n) {
  const __m512 two = _mm512_set1_ps(2.0f), four = _mm512_set1_ps(4.0f);
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 k = lanes(0, n - j);
    const __m512 e0 = _mm512_maskz_loadu_ps(k, in[0] + j), e1 = _mm512_maskz_loadu_ps(k, in[1] + j);
    const __m512 e2 = _mm512_maskz_loadu_ps(k, in[2] + j), e3 = _mm512_maskz_loadu_ps(k, in[3] + j);
    const __m512 s = _mm512_add_ps(e0, e2), t = _mm512_add_ps(e1, e3);
    const __m512 s2 = _mm512_fmadd_ps(four, e2, e0), t2 = _mm512_mul_ps(two, _mm512_fmadd_ps(four, e3, e1));
    _mm512_mask_storeu_ps(out[0] + j, k, e0);
    _mm512_mask_storeu_ps(out[1] + j, k, _mm512_add_ps(s, t));
    _mm512_mask_storeu_ps(out[2] + j, k, _mm512_sub_ps(s, t));
    _mm512_mask_storeu_ps(out[3] + j, k, _mm512_add_ps(s2, t2));
    _mm512_mask_storeu_ps(out[4] + j, k, _mm512_sub_ps(s2, t2));
    _mm512_mask_storeu_ps(out[5] + j, k, e3);
  }
}

// Note [Winograd 4x4-tile planes]
// A plane whose output is 13 to 16 wide and high has 4x4 tiles: one
// sample's 16 tiles fill one vector, and with the AVX-512 ISA they run as
// one unit in registers, ordered by column first: tile (i, j) is lane
// 4j + i of the sample's 16 columns. Then the phase split of rows i = 0..3
// is a 4x4 transpose inside each 128-bit lane (lane group j holds columns
// 4j .. 4j + 3), and so is the join of an output row: a few in-lane
// shuffles instead of the general path's per-row permutes and scratch. The
// GEMM does not care about the order of its columns, and the three
// transforms of a call take the same path (the chunks then hold whole
// samples).

// m_k lane (j, i) = a_i lane (j, k) for k < 4: a 4x4 transpose in each 128-bit lane.
[[gnu::target("avx512f"), gnu::always_inline]] inline void transpose4(__m512 a0, __m512 a1, __m512 a2, __m512 a3, __m512* m) {
  const __m512 t0 = _mm512_unpacklo_ps(a0, a1), t1 = _mm512_unpackhi_ps(a0, a1);
  const __m512 t2 = _mm512_unpacklo_ps(a2, a3), t3 = _mm512_unpackhi_ps(a2, a3);
  m[0] = _mm512_shuffle_ps(t0, t2, 0x44);
  m[1] = _mm512_shuffle_ps(t0, t2, 0xEE);
  m[2] = _mm512_shuffle_ps(t1, t3, 0x44);
  m[3] = _mm512_shuffle_ps(t1, t3, 0xEE);
}

// In registers: v = B^T d (6 -> 6).
[[gnu::target("avx512f,fma"), gnu::always_inline]] inline void bt6_reg(const __m512* d, __m512* v) {
  const __m512 two = _mm512_set1_ps(2.0f), four = _mm512_set1_ps(4.0f);
  const __m512 t1 = _mm512_fnmadd_ps(four, d[2], d[4]), t2 = _mm512_fnmadd_ps(four, d[1], d[3]);
  const __m512 t3 = _mm512_sub_ps(d[4], d[2]), s = _mm512_sub_ps(d[3], d[1]), t4 = _mm512_mul_ps(two, s);
  v[0] = _mm512_fmadd_ps(four, _mm512_sub_ps(d[0], d[2]), t3);
  v[1] = _mm512_add_ps(t1, t2);
  v[2] = _mm512_sub_ps(t1, t2);
  v[3] = _mm512_add_ps(t3, t4);
  v[4] = _mm512_sub_ps(t3, t4);
  v[5] = _mm512_fnmadd_ps(four, s, _mm512_sub_ps(d[5], d[3]));
}

// y = A^T m (6 -> 4), plus b when kBias.
template <bool kBias>
[[gnu::target("avx512f,fma"), gnu::always_inline]] inline void at6_reg(const __m512* m, __m512* y, __m512 b) {
  const __m512 two = _mm512_set1_ps(2.0f), four = _mm512_set1_ps(4.0f), eight = _mm512_set1_ps(8.0f);
  const __m512 a = _mm512_add_ps(m[1], m[2]), d1 = _mm512_sub_ps(m[1], m[2]);
  const __m512 c = _mm512_add_ps(m[3], m[4]), d = _mm512_sub_ps(m[3], m[4]);
  y[0] = _mm512_add_ps(_mm512_add_ps(m[0], a), c);
  y[1] = _mm512_fmadd_ps(two, d, d1);
  y[2] = _mm512_fmadd_ps(four, c, a);
  y[3] = _mm512_add_ps(_mm512_fmadd_ps(eight, d, d1), m[5]);
  if constexpr (kBias)
    for (int r = 0; r < 4; ++r) y[r] = _mm512_add_ps(y[r], b);
}

// p = A e (4 -> 6).
[[gnu::target("avx512f,fma"), gnu::always_inline]] inline void a46_reg(const __m512* e, __m512* p) {
  const __m512 two = _mm512_set1_ps(2.0f), four = _mm512_set1_ps(4.0f);
  const __m512 s = _mm512_add_ps(e[0], e[2]), t = _mm512_add_ps(e[1], e[3]);
  const __m512 s2 = _mm512_fmadd_ps(four, e[2], e[0]), t2 = _mm512_mul_ps(two, _mm512_fmadd_ps(four, e[3], e[1]));
  p[0] = e[0];
  p[1] = _mm512_add_ps(s, t);
  p[2] = _mm512_sub_ps(s, t);
  p[3] = _mm512_add_ps(s2, t2);
  p[4] = _mm512_sub_ps(s2, t2);
  p[5] = e[3];
}

// Row r of a plane (h, w) at columns c + u for lanes u in `cols` (the
// lanes whose column lies in the plane), zeros elsewhere.
[[gnu::target("avx512f"), gnu::always_inline]] inline __m512 load_row(const float* plane, int64_t h, int64_t w, int64_t r, int64_t c,
                                                  __mmask16 cols) {
  if (r < 0 || r >= h) return _mm512_setzero_ps();
  return _mm512_maskz_loadu_ps(cols, plane + r * w + c);
}

// V of one sample and channel: v[(6k + l) * fs + u] for the 16 tiles u.
// Rows first: vert[i][k] = (B^T over the patch rows 4i .. 4i + 5)_k with
// lanes = the 16 padded columns (the transform is linear, so it commutes
// with the phase split); then per k the in-lane transpose gives column
// phases 0..3 of the four tile rows, phases 4 and 5 are phases 0 and 1 one
// lane group on (padded columns 16 and 17 enter at the last group), and the
// column transform finishes V[k][0..5].
[[gnu::target("avx512f,fma")]] inline void input_tiles4(const float* plane, int64_t h, int64_t w, int64_t pad_h,
                                                        int64_t pad_w, float* v, int64_t fs) {
  const __mmask16 ka = lanes(pad_w, w + pad_w);
  // Padded columns 16 and 17 (input columns 16 - pad_w, 17 - pad_w): input
  // only when the plane reaches them, else zeros.
  const bool edge = w + pad_w > 16;
  const __mmask16 ke = lanes(pad_w - 16, w + pad_w - 16) & 0x3;
  const __m512 zero = _mm512_setzero_ps();
  __m512 vert[4][6], vedge[4][6];
  #pragma GCC unroll 6
  for (int i = 0; i < 4; ++i) {
    __m512 r[6];
    #pragma GCC unroll 6
    for (int q = 0; q < 6; ++q) r[q] = load_row(plane, h, w, 4 * i + q - pad_h, -pad_w, ka);
    bt6_reg(r, vert[i]);
    if (edge) {
      #pragma GCC unroll 6
      for (int q = 0; q < 6; ++q) r[q] = load_row(plane, h, w, 4 * i + q - pad_h, 16 - pad_w, ke);
      bt6_reg(r, vedge[i]);
    }
  }
  #pragma GCC unroll 6
  for (int k = 0; k < 6; ++k) {
    __m512 d[6], e[4] = {zero, zero, zero, zero};
    transpose4(vert[0][k], vert[1][k], vert[2][k], vert[3][k], d);
    if (edge) transpose4(vedge[0][k], vedge[1][k], vedge[2][k], vedge[3][k], e);
    d[4] = _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(e[0]), _mm512_castps_si512(d[0]), 4));
    d[5] = _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(e[1]), _mm512_castps_si512(d[1]), 4));
    __m512 out[6];
    bt6_reg(d, out);
    #pragma GCC unroll 6
    for (int l = 0; l < 6; ++l) _mm512_storeu_ps(v + (6 * k + l) * fs, out[l]);
  }
}

// y (oh, ow) of one sample and output channel from M: m[(6k + l) * fs + u].
[[gnu::target("avx512f,fma")]] inline void output_tiles4(const float* m, int64_t fs, float bias, int64_t oh,
                                                         int64_t ow, float* y) {
  const __m512 bv = _mm512_set1_ps(bias), zero = _mm512_setzero_ps();
  __m512 q[6][4];  // q[l][r] = A^T over k
  #pragma GCC unroll 6
  for (int l = 0; l < 6; ++l) {
    __m512 in[6];
    #pragma GCC unroll 6
    for (int k = 0; k < 6; ++k) in[k] = _mm512_loadu_ps(m + (6 * k + l) * fs);
    at6_reg<false>(in, q[l], zero);
  }
  const __mmask16 kw = lanes(0, ow);
  #pragma GCC unroll 6
  for (int r = 0; r < 4; ++r) {
    const __m512 in[6] = {q[0][r], q[1][r], q[2][r], q[3][r], q[4][r], q[5][r]};
    __m512 yr[4], rows[4];
    at6_reg<true>(in, yr, bv);  // yr[c] lane (j, i) = y(4i + r, 4j + c)
    transpose4(yr[0], yr[1], yr[2], yr[3], rows);  // rows[i] lane (j, c)
    #pragma GCC unroll 6
    for (int i = 0; i < 4; ++i)
      if (4 * i + r < oh) _mm512_mask_storeu_ps(y + (4 * i + r) * ow, kw, rows[i]);
  }
}

// E of one sample and output channel: e[(6k + l) * fs + u] from g (oh, ow).
[[gnu::target("avx512f,fma")]] inline void grad_tiles4(const float* g, int64_t oh, int64_t ow, float* e, int64_t fs) {
  const __mmask16 kw = lanes(0, ow);
  __m512 s[6][4];  // s[l][r] = A over the columns of rows 4i + r
  #pragma GCC unroll 6
  for (int r = 0; r < 4; ++r) {
    __m512 p[4];
    transpose4(load_row(g, oh, ow, r, 0, kw), load_row(g, oh, ow, 4 + r, 0, kw), load_row(g, oh, ow, 8 + r, 0, kw),
               load_row(g, oh, ow, 12 + r, 0, kw), p);
    __m512 out[6];
    a46_reg(p, out);
    #pragma GCC unroll 6
    for (int l = 0; l < 6; ++l) s[l][r] = out[l];
  }
  #pragma GCC unroll 6
  for (int l = 0; l < 6; ++l) {
    __m512 out[6];
    a46_reg(s[l], out);
    #pragma GCC unroll 6
    for (int k = 0; k < 6; ++k) _mm512_storeu_ps(e + (6 * k + l) * fs, out[k]);
  }
}
#endif

template <bool kAvx512>
[[gnu::always_inline]] inline void bt6v(const float* const* in, float* const* out, int64_t n) {
#ifdef LOOM_WINOGRAD_X86
  if constexpr (kAvx512) return bt6_avx512(in, out, n);
#endif
  bt6(in, out, n);
}
template <bool kAvx512>
[[gnu::always_inline]] inline void at6v(const float* const* in, float* const* out, int64_t n, float bias) {
#ifdef LOOM_WINOGRAD_X86
  if constexpr (kAvx512) return at6_avx512(in, out, n, bias);
#endif
  at6(in, out, n, bias);
}
template <bool kAvx512>
[[gnu::always_inline]] inline void a46v(const float* const* in, float* const* out, int64_t n) {
#ifdef LOOM_WINOGRAD_X86
  if constexpr (kAvx512) return a46_avx512(in, out, n);
#endif
  a46(in, out, n);
}

template <bool kAvx512>
[[gnu::always_inline]] inline void split(const float* plane, int64_t h, int64_t w, int64_t r, int64_t col0,
                                         int64_t tw, int phases, float* const* dst) {
#ifdef LOOM_WINOGRAD_X86
  if constexpr (kAvx512) {
    if (r >= 0 && r < h) return split_row_avx512(plane, h, w, r, col0, tw, phases, dst);
  }
#endif
  split_row(plane, h, w, r, col0, tw, phases, dst);
}

// Starts loading rows [r0, r1) of a plane (h, w) (clipped to the plane):
// the band after the next channel's, so the loads have a whole sweep over
// the chunk's bands to arrive.
[[gnu::always_inline]] inline void prefetch_rows(const float* plane, int64_t h, int64_t w, int64_t r0, int64_t r1) {
  r0 = std::max<int64_t>(r0, 0);
  r1 = std::min(r1, h);
  if (r0 >= r1) return;
  const char* p = reinterpret_cast<const char*>(plane + r0 * w);
  const int64_t bytes = (r1 - r0) * w * 4;
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(p + b);
}

// Calls fn(plane, channel, column) for every plane of x (n, c, h, w) that
// the chunk's tile rows [row0, row0 + rows) cover, 4x4-tile planes (whole
// samples): sample by sample, as the planes lie in memory, with the plane
// two ahead prefetched (the masked loads do not train the hardware
// prefetcher). column: the sample's first column in the chunk.
template <class Fn>
[[gnu::always_inline]] inline void for_each_plane4(const float* x, int64_t c, int64_t h, int64_t w, int64_t row0,
                                                   int64_t rows, const Fn& fn) {
  const int64_t plane_floats = h * w;
  const float* end = x + ((row0 + rows) / 4) * c * plane_floats;
  for (int64_t row = row0; row < row0 + rows; row += 4)
    for (int64_t ch = 0; ch < c; ++ch) {
      const float* plane = x + ((row / 4) * c + ch) * plane_floats;
      if (plane + 3 * plane_floats <= end) prefetch_rows(plane + 2 * plane_floats, h, w, 0, h);
      fn(plane, ch, (row - row0) * 4);
    }
}

// Floats of one per-band scratch array for `count` lanes.
int64_t band_stride(int64_t count) { return (count + kSlack + 15) / 16 * 16; }

// V_f[ch][tile] = (B^T d B)_f for every channel and tile of the chunk. Per
// band of tile rows i0 .. i0 + count - 1, padded input row rho (input row
// 4 i0 + rho - pad_h) goes to block b = rho / 4 of row phase q = rho % 4:
//   D[m][q][b][j] = d(rho, 4j + m)      (column phases m < 6)
//   H[l][q][b][j] = (B^T over m of D[.][q][b][j])_l
//   V[k][l][i][j] = (B^T over m of H[l][m % 4][i + m / 4][j])_k
template <bool kAvx512>
[[gnu::always_inline]] inline void input_transform_body(const InputJob& a) {
  const int64_t tw = a.tw, fs = slab(a.c, a.nt);
  const int64_t ps = band_stride((std::min(a.rows, a.th) + 1) * tw);  // one (phase, q) array
  float* dbuf = a.tmp;
  float* hbuf = a.tmp + 24 * ps;
#ifdef LOOM_WINOGRAD_X86
  if constexpr (kAvx512) {
    if (tiles4_chunk(a.th, tw, a.row0, a.rows)) {
      for_each_plane4(a.x, a.c, a.h, a.w, a.row0, a.rows, [&](const float* plane, int64_t ch, int64_t col) {
        input_tiles4(plane, a.h, a.w, a.pad_h, a.pad_w, a.v + ch * a.nt + col, fs);
      });
      return;
    }
  }
#endif
  for (int64_t ch = 0; ch < a.c; ++ch) {
    for_each_band(a.th, tw, a.row0, a.rows, [&](int64_t s, int64_t i0, int64_t count, int64_t col) {
      const float* plane = a.x + (s * a.c + ch) * a.h * a.w;
      if (ch + 1 < a.c) prefetch_rows(plane + a.h * a.w, a.h, a.w, 4 * i0 - a.pad_h, 4 * (i0 + count) + 2 - a.pad_h);
      auto d = [&](int m, int64_t q) { return dbuf + (m * 4 + q) * ps; };
      auto hh = [&](int l, int64_t q) { return hbuf + (l * 4 + q) * ps; };
      for (int64_t rho = 0; rho < 4 * count + 2; ++rho) {
        const int64_t q = rho % 4, b = rho / 4;
        float* dst[6];
        for (int m = 0; m < 6; ++m) dst[m] = d(m, q) + b * tw;
        split<kAvx512>(plane, a.h, a.w, 4 * i0 + rho - a.pad_h, -a.pad_w, tw, 6, dst);
      }
      for (int64_t q = 0; q < 4; ++q) {
        const float* in[6];
        float* out[6];
        for (int m = 0; m < 6; ++m) {
          in[m] = d(m, q);
          out[m] = hh(m, q);
        }
        bt6v<kAvx512>(in, out, (q < 2 ? count + 1 : count) * tw);
      }
      for (int l = 0; l < 6; ++l) {
        const float* in[6];
        float* out[6];
        for (int m = 0; m < 6; ++m) in[m] = hh(l, m % 4) + (m / 4) * tw;
        for (int k = 0; k < 6; ++k) out[k] = a.v + (6 * k + l) * fs + ch * a.nt + col;
        bt6v<kAvx512>(in, out, count * tw);
      }
    });
  }
}

// y's 4x4 block of each tile = A^T M A (+ bias): per band,
//   Q[l][r][t] = (A^T over k of M[k][l][t])_r,  R[r][q][t] = (A^T over l of Q[.][r][t])_q
// and output row 4i + r is the column phases R[r][0..3] of tile row i joined.
template <bool kAvx512>
[[gnu::always_inline]] inline void output_transform_body(const OutputJob& a) {
  const int64_t tw = a.tw, fs = slab(a.o, a.nt);
  const int64_t ps = band_stride(std::min(a.rows, a.th) * tw);
  float* qbuf = a.tmp;
  float* rbuf = a.tmp + 24 * ps;
#ifdef LOOM_WINOGRAD_X86
  if constexpr (kAvx512) {
    if (tiles4_chunk(a.th, tw, a.row0, a.rows)) {
      for (int64_t row = a.row0; row < a.row0 + a.rows; row += 4)
        for (int64_t oc = 0; oc < a.o; ++oc)
          output_tiles4(a.m + oc * a.nt + (row - a.row0) * 4, fs,
                        a.bias != nullptr ? a.bias[oc * a.bias_stride] : 0.0f, a.oh, a.ow,
                        a.y + ((row / 4) * a.o + oc) * a.oh * a.ow);
      return;
    }
  }
#endif
  for (int64_t oc = 0; oc < a.o; ++oc) {
    const float bias = a.bias != nullptr ? a.bias[oc * a.bias_stride] : 0.0f;
    for_each_band(a.th, tw, a.row0, a.rows, [&](int64_t s, int64_t i0, int64_t count, int64_t col) {
      const int64_t n = count * tw;
      for (int l = 0; l < 6; ++l) {
        const float* in[6];
        float* out[4];
        for (int k = 0; k < 6; ++k) in[k] = a.m + (6 * k + l) * fs + oc * a.nt + col;
        for (int r = 0; r < 4; ++r) out[r] = qbuf + (l * 4 + r) * ps;
        at6v<kAvx512>(in, out, n, 0.0f);
      }
      for (int r = 0; r < 4; ++r) {
        const float* in[6];
        float* out[4];
        for (int l = 0; l < 6; ++l) in[l] = qbuf + (l * 4 + r) * ps;
        for (int q = 0; q < 4; ++q) out[q] = rbuf + (r * 4 + q) * ps;
        at6v<kAvx512>(in, out, n, bias);
      }
      for (int64_t i = 0; i < count; ++i)
        for (int r = 0; r < 4; ++r) {
          const int64_t row = 4 * (i0 + i) + r;
          if (row >= a.oh) break;
          const float* src[4];
          for (int q = 0; q < 4; ++q) src[q] = rbuf + (r * 4 + q) * ps + i * tw;
          float* dst = a.y + ((s * a.o + oc) * a.oh + row) * a.ow;
#ifdef LOOM_WINOGRAD_X86
          if constexpr (kAvx512) {
            join_row_avx512(src, a.ow, dst);
            continue;
          }
#endif
          join_row(src, a.ow, dst);
        }
    });
  }
}

// E_f[oc][tile] = (A e A^T)_f, e the tile's 4x4 block of g (zeros past its
// edge). Per band: P[q][r][t] = g(4i + r, 4j + q) (column phases),
// S[l][r][t] = (A over q of P[.][r][t])_l, E[k][l][t] = (A over r of S[l][.][t])_k.
template <bool kAvx512>
[[gnu::always_inline]] inline void grad_transform_body(const GradJob& a) {
  const int64_t tw = a.tw, fs = slab(a.o, a.nt);
  const int64_t ps = band_stride(std::min(a.rows, a.th) * tw);
  float* pbuf = a.tmp;
  float* sbuf = a.tmp + 16 * ps;
#ifdef LOOM_WINOGRAD_X86
  if constexpr (kAvx512) {
    if (tiles4_chunk(a.th, tw, a.row0, a.rows)) {
      for_each_plane4(a.g, a.o, a.oh, a.ow, a.row0, a.rows, [&](const float* plane, int64_t oc, int64_t col) {
        grad_tiles4(plane, a.oh, a.ow, a.e + oc * a.nt + col, fs);
      });
      return;
    }
  }
#endif
  for (int64_t oc = 0; oc < a.o; ++oc) {
    for_each_band(a.th, tw, a.row0, a.rows, [&](int64_t s, int64_t i0, int64_t count, int64_t col) {
      const float* plane = a.g + (s * a.o + oc) * a.oh * a.ow;
      if (oc + 1 < a.o) prefetch_rows(plane + a.oh * a.ow, a.oh, a.ow, 4 * i0, 4 * (i0 + count));
      const int64_t n = count * tw;
      for (int64_t i = 0; i < count; ++i)
        for (int r = 0; r < 4; ++r) {
          float* dst[4];
          for (int q = 0; q < 4; ++q) dst[q] = pbuf + (q * 4 + r) * ps + i * tw;
          split<kAvx512>(plane, a.oh, a.ow, 4 * (i0 + i) + r, 0, tw, 4, dst);
        }
      for (int r = 0; r < 4; ++r) {
        const float* in[4];
        float* out[6];
        for (int q = 0; q < 4; ++q) in[q] = pbuf + (q * 4 + r) * ps;
        for (int l = 0; l < 6; ++l) out[l] = sbuf + (l * 4 + r) * ps;
        a46v<kAvx512>(in, out, n);
      }
      for (int l = 0; l < 6; ++l) {
        const float* in[4];
        float* out[6];
        for (int r = 0; r < 4; ++r) in[r] = sbuf + (l * 4 + r) * ps;
        for (int k = 0; k < 6; ++k) out[k] = a.e + (6 * k + l) * fs + oc * a.nt + col;
        a46v<kAvx512>(in, out, n);
      }
    });
  }
}

// The ISA clones of each transform (cpu_isa.h); the AVX-512 one is
// flattened so the register path's helpers inline into it.
LOOM_ISA_CLONES(, input_transform_isa, (const InputJob& a), [[gnu::flatten]],
                input_transform_body<kIsa == GemmIsa::Avx512>(a))
LOOM_ISA_CLONES(, output_transform_isa, (const OutputJob& a), [[gnu::flatten]],
                output_transform_body<kIsa == GemmIsa::Avx512>(a))
LOOM_ISA_CLONES(, grad_transform_isa, (const GradJob& a), [[gnu::flatten]],
                grad_transform_body<kIsa == GemmIsa::Avx512>(a))

// G (6x3) of Note [Winograd convolution].
constexpr double kG[6][3] = {{0.25, 0, 0},
                             {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                             {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                             {1.0 / 24, 1.0 / 12, 1.0 / 6},
                             {1.0 / 24, -1.0 / 12, 1.0 / 6},
                             {0, 0, 1}};

}  // namespace

int64_t input_tmp_floats(int64_t rows, int64_t th, int64_t tw) {
  return 2 * 24 * band_stride((std::min(rows, th) + 1) * tw);
}

int64_t output_tmp_floats(int64_t rows, int64_t th, int64_t tw) {
  return 40 * band_stride(std::min(rows, th) * tw);
}

int64_t grad_tmp_floats(int64_t rows, int64_t th, int64_t tw) { return 40 * band_stride(std::min(rows, th) * tw); }

void input_transform(const InputJob& a) { input_transform_isa()(a); }
void output_transform(const OutputJob& a) { output_transform_isa()(a); }
void grad_transform(const GradJob& a) { grad_transform_isa()(a); }

// U_f[oc][ic] = (G g G^T)_f for every filter g of the call (see
// winograd_conv3x3_f32), in double, rounded once. Each filter's 36 values
// go to a row of `tmp` first: written straight to U they would be 36 stores
// o * c floats apart, in one L1 set when that is a multiple of 1024.
void filter_transform(const float* w, bool flip, int64_t o, int64_t c, float* u, float* tmp) {
  for (int64_t oc = 0; oc < o; ++oc)
    for (int64_t ic = 0; ic < c; ++ic) {
      double g[3][3];
      for (int kh = 0; kh < 3; ++kh)
        for (int kw = 0; kw < 3; ++kw)
          g[kh][kw] = flip ? w[((ic * o + oc) * 3 + 2 - kh) * 3 + 2 - kw] : w[((oc * c + ic) * 3 + kh) * 3 + kw];
      double t[6][3];  // G g
      for (int k = 0; k < 6; ++k)
        for (int j = 0; j < 3; ++j) t[k][j] = kG[k][0] * g[0][j] + kG[k][1] * g[1][j] + kG[k][2] * g[2][j];
      float* row = tmp + (oc * c + ic) * kPositions;
      for (int k = 0; k < 6; ++k)
        for (int l = 0; l < 6; ++l)
          row[6 * k + l] = static_cast<float>(t[k][0] * kG[l][0] + t[k][1] * kG[l][1] + t[k][2] * kG[l][2]);
    }
  for (int64_t f = 0; f < kPositions; ++f) {
    float* dst = u + f * o * c;
    for (int64_t k = 0; k < o * c; ++k) dst[k] = tmp[k * kPositions + f];
  }
}

void filter_grad_transform(const float* sums, int64_t o, int64_t c, float* dw, float* rows) {
  // dW = G^T S G per (oc, ic), in double, rounded once; S's 36 values of
  // each filter gathered into a row first (they lie o * c floats apart).
  for (int64_t f = 0; f < kPositions; ++f) {
    const float* src = sums + f * o * c;
    for (int64_t k = 0; k < o * c; ++k) rows[k * kPositions + f] = src[k];
  }
  for (int64_t oc = 0; oc < o; ++oc)
    for (int64_t ic = 0; ic < c; ++ic) {
      const float* s = rows + (oc * c + ic) * kPositions;
      double t[3][6];  // G^T S
      for (int a = 0; a < 3; ++a)
        for (int l = 0; l < 6; ++l) {
          double acc = 0;
          for (int k = 0; k < 6; ++k) acc += kG[k][a] * s[6 * k + l];
          t[a][l] = acc;
        }
      float* out = dw + (oc * c + ic) * 9;
      for (int a = 0; a < 3; ++a)
        for (int b = 0; b < 3; ++b) {
          double acc = 0;
          for (int l = 0; l < 6; ++l) acc += t[a][l] * kG[l][b];
          out[a * 3 + b] = static_cast<float>(acc);
        }
    }
}

}  // namespace loom::cpu::winograd
