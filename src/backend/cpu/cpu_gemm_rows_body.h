// The `rows` kernel of the AVX2 and AVX-512 GEMM paths (Note [GEMM without
// packing] in cpu_gemm.h), written once with 256-bit AVX2 + FMA intrinsics.
//
// Include this file only inside `namespace loom::cpu { namespace { ... } }`
// of an ISA file built with FMA and AVX2 or more (-mavx512f implies AVX2),
// after <immintrin.h> and cpu_gemm.h. Everything here then has internal
// linkage, and it calls no std:: function or template (an AVX-512 copy of an
// inline entity with external linkage could be picked by the linker for other
// files; Note [GEMM design]). Both ISAs run the same 8-lane code: these
// products are bound by reading B and by transposes, not by FMA width, and
// one body keeps the two paths' bits identical by construction.

// Lane masks for maskload/maskstore: the 8 ints from &kLaneMask[8 - n] turn
// on the first n lanes.
alignas(64) constexpr int kLaneMask[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

inline __m256i lanes8(int64_t n) {
  const int64_t on = n < 0 ? 0 : (n > 8 ? 8 : n);
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kLaneMask + 8 - on));
}

// Transposes the 8 x 8 block r[0..7] (r[i] is row i) in registers: pairs of
// rows interleave, then pairs of pairs, then 128-bit halves.
inline void transpose8(__m256 r[8]) {
  __m256 t[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);      // per 128-bit half: a0 b0 a1 b1
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);  //                   a2 b2 a3 b3
  }
  for (int i = 0; i < 8; i += 4) {
    // Per half H, r[i + c] = rows i..i+3 at column c + 4 H.
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
  }
  for (int c = 0; c < 4; ++c) {
    t[c] = _mm256_permute2f128_ps(r[c], r[4 + c], 0x20);      // low halves: column c
    t[c + 4] = _mm256_permute2f128_ps(r[c], r[4 + c], 0x31);  // high halves: column c + 4
  }
  for (int i = 0; i < 8; ++i) r[i] = t[i];
}

// Note [GEMM epilogue]'s register part on R x V accumulators of 8 lanes:
// bias (V vectors from `bias`, the last one masked by `last`; none when
// null), then relu (x < 0 ? 0 : x keeps NaN and -0). The AVX2 tile kernel
// and the rows kernel share it, so their bits agree by construction.
template <int R, int V>
inline void epilogue8(__m256 (&acc)[R][V], const float* bias, __m256i last, bool relu) {
  if (bias != nullptr) {
    __m256 b[V];
    for (int v = 0; v < V - 1; ++v) b[v] = _mm256_loadu_ps(bias + 8 * v);
    b[V - 1] = _mm256_maskload_ps(bias + 8 * (V - 1), last);
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < V; ++v) acc[r][v] = _mm256_add_ps(acc[r][v], b[v]);
  }
  if (relu) {
    const __m256 zero = _mm256_setzero_ps();
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < V; ++v)
        acc[r][v] = _mm256_blendv_ps(acc[r][v], zero, _mm256_cmp_ps(acc[r][v], zero, _CMP_LT_OQ));
  }
}

// The end of a strip: acc[r][v] holds rows r of columns j + 8 v .. of C,
// the last vector with `tail` (1..8) real lanes. Note [GEMM epilogue]'s
// register part as the tile kernels do it (bias, then relu), then the store.
template <int R, int V>
void rows_store(const GemmRows& t, __m256 (&acc)[R][V], int64_t j, int tail) {
  const __m256i last = lanes8(tail);
  epilogue8<R, V>(acc, t.bias != nullptr ? t.bias + j : nullptr, last, t.relu);
  if (t.c_cs == 1) {
    for (int r = 0; r < R; ++r) {
      float* c = t.c + r * t.c_rs + j;
      for (int v = 0; v < V - 1; ++v) _mm256_storeu_ps(c + 8 * v, acc[r][v]);
      // A masked store is slow on some CPUs (AMD's): only a partial vector takes one.
      if (tail == 8)
        _mm256_storeu_ps(c + 8 * (V - 1), acc[r][V - 1]);
      else
        _mm256_maskstore_ps(c + 8 * (V - 1), last, acc[r][V - 1]);
    }
    return;
  }
  alignas(32) float buf[8 * V];
  const int width = 8 * (V - 1) + tail;
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < V; ++v) _mm256_store_ps(buf + 8 * v, acc[r][v]);
    float* c = t.c + r * t.c_rs + j * t.c_cs;
    for (int i = 0; i < width; ++i) c[i * t.c_cs] = buf[i];
  }
}

// B's rows contiguous (b_cs == 1): columns [j, j + 8 (V - 1) + tail) of R
// rows, each depth adding a[r][p] times V vectors of row p of B.
template <int R, int V, bool Full>
void rows_axpy(const GemmRows& t, int64_t j, int tail) {
  const __m256i last = lanes8(tail);
  __m256 acc[R][V];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = _mm256_setzero_ps();
  const float* b = t.b + j;
  const float* a = t.a;
  for (int64_t p = 0; p < t.k; ++p) {
    __m256 bv[V];
    for (int v = 0; v < V - 1; ++v) bv[v] = _mm256_loadu_ps(b + 8 * v);
    bv[V - 1] = Full ? _mm256_loadu_ps(b + 8 * (V - 1)) : _mm256_maskload_ps(b + 8 * (V - 1), last);
    for (int r = 0; r < R; ++r) {
      const __m256 ar = _mm256_broadcast_ss(a + r * t.a_rs);
      for (int v = 0; v < V; ++v) acc[r][v] = _mm256_fmadd_ps(ar, bv[v], acc[r][v]);
    }
    a += t.a_cs;
    b += t.b_rs;
  }
  rows_store<R, V>(t, acc, j, Full ? 8 : tail);
}

// B's columns contiguous (b_rs == 1, as W^T): columns [j, j + 8 (G - 1) +
// tail) of R rows. Per 8 depths, each group of 8 columns loads its 8 lines
// (8 depths each) and transposes them, so each vector holds one depth of 8
// columns; the depths then go into the chains in order. Lines past the
// strip read as 0 (their lanes are never stored), depths past k are masked.
constexpr int64_t kRowsPrefetch = 128;  // floats ahead along a line of B (8 cache lines)

template <int R, int G>
void rows_dot(const GemmRows& t, int64_t j, int tail) {
  __m256 acc[R][G];
  for (int r = 0; r < R; ++r)
    for (int g = 0; g < G; ++g) acc[r][g] = _mm256_setzero_ps();
  const float* b = t.b + j * t.b_cs;
  int lines[G];
  for (int g = 0; g < G; ++g) lines[g] = g < G - 1 ? 8 : tail;
  // One block of `depth` (1..8) depths from p0.
  auto block = [&](int64_t p0, int depth) {
    const __m256i load = lanes8(depth);
    for (int g = 0; g < G; ++g) {
      __m256 x[8];
      for (int i = 0; i < 8; ++i) {
        const float* line = b + (8 * g + i) * t.b_cs + p0;
        // Each line is a stream of its own (a row of W): with 8 or 16 of them
        // the hardware prefetcher falls behind memory, so ask ahead.
        if (i < lines[g]) _mm_prefetch(reinterpret_cast<const char*>(line + kRowsPrefetch), _MM_HINT_T0);
        x[i] = i >= lines[g] ? _mm256_setzero_ps() : depth == 8 ? _mm256_loadu_ps(line) : _mm256_maskload_ps(line, load);
      }
      transpose8(x);
      for (int d = 0; d < depth; ++d) {
        for (int r = 0; r < R; ++r) {
          const __m256 ar = _mm256_broadcast_ss(t.a + r * t.a_rs + (p0 + d) * t.a_cs);
          acc[r][g] = _mm256_fmadd_ps(ar, x[d], acc[r][g]);
        }
      }
    }
  };
  int64_t p0 = 0;
  for (; p0 + 8 <= t.k; p0 += 8) block(p0, 8);
  if (p0 < t.k) block(p0, static_cast<int>(t.k - p0));
  rows_store<R, G>(t, acc, j, tail);
}

// All columns of R rows: strips of 8 V (axpy) or 16 (dot) columns, then the
// rest one vector at a time, the last one masked.
template <int R>
void rows_of(const GemmRows& t) {
  int64_t j = 0;
  if (t.b_cs == 1) {
    constexpr int V = R <= 2 ? 4 : 2;
    for (; j + 8 * V <= t.cols; j += 8 * V) rows_axpy<R, V, true>(t, j, 8);
    for (; j + 8 <= t.cols; j += 8) rows_axpy<R, 1, true>(t, j, 8);
    if (j < t.cols) rows_axpy<R, 1, false>(t, j, static_cast<int>(t.cols - j));
  } else {
    for (; j + 16 <= t.cols; j += 16) rows_dot<R, 2>(t, j, 8);
    if (t.cols - j > 8)
      rows_dot<R, 2>(t, j, static_cast<int>(t.cols - j - 8));
    else if (j < t.cols)
      rows_dot<R, 1>(t, j, static_cast<int>(t.cols - j));
  }
}

// See GemmRows (cpu_gemm.h).
void rows(const GemmRows& t) {
  static_assert(kGemmRowsMax == 4, "rows() dispatches 1..4 rows");
  switch (t.rows) {
    case 1: rows_of<1>(t); break;
    case 2: rows_of<2>(t); break;
    case 3: rows_of<3>(t); break;
    default: rows_of<4>(t); break;
  }
}
