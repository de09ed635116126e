// The float32 GEMM driver: packing, blocking and threads (Note [GEMM design]
// in cpu_gemm.h), and the portable micro-kernel. The ISA and the cache sizes
// come from cpu_features.h.
#include "backend/cpu/cpu_gemm.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "backend/cpu/testing.h"
#include "loom/error.h"
#include "loom/threads.h"

namespace loom::cpu {

// ---------------------------------------------------------------- ISA choice

void testing::gemm_reload_isa() { cpu_reload_isa(); }

// ---------------------------------------------------------------- portable micro-kernel

namespace {

constexpr int kPortableMr = 4;
constexpr int kPortableNr = 8;

// Plain loops over a (4, 8) tile held in a local array; the compiler keeps it
// in SSE registers. All kPortableMr rows are computed (padded rows of the
// packed A panel are zero) and only the real ones stored.
void portable_tile(const GemmTile& t) {
  float acc[kPortableMr][kPortableNr] = {};
  if (t.accumulate) {
    for (int r = 0; r < t.rows; ++r)
      for (int j = 0; j < t.cols; ++j) acc[r][j] = t.c[r * t.rs + j * t.cs];
  }
  const float* a = t.a;
  const float* b = t.b;
  for (int64_t p = 0; p < t.kc; ++p) {
    for (int r = 0; r < kPortableMr; ++r)
      for (int j = 0; j < kPortableNr; ++j) acc[r][j] += a[r] * b[j];
    a += kPortableMr;
    b += t.b_step;
  }
  // Note [GEMM epilogue]: bias, then relu (x < 0 ? 0 : x keeps NaN and -0).
  if (t.bias != nullptr)
    for (int r = 0; r < t.rows; ++r)
      for (int j = 0; j < t.cols; ++j) acc[r][j] += t.bias[j];
  if (t.relu)
    for (int r = 0; r < t.rows; ++r)
      for (int j = 0; j < t.cols; ++j) acc[r][j] = acc[r][j] < 0.0f ? 0.0f : acc[r][j];
  for (int r = 0; r < t.rows; ++r)
    for (int j = 0; j < t.cols; ++j) t.c[r * t.rs + j * t.cs] = acc[r][j];
}

// See GemmPackFn (cpu_gemm.h). The loop runs along whichever stride is
// shorter, so both a transpose and a copy read memory in order.
void portable_pack(const float* src, int64_t line_stride, int64_t step, int h, int64_t kc, int w, float* dst) {
  if (h < w) std::memset(dst, 0, sizeof(float) * static_cast<size_t>(kc * w));
  if (std::abs(step) <= std::abs(line_stride)) {
    for (int r = 0; r < h; ++r) {
      const float* line = src + r * line_stride;
      for (int64_t p = 0; p < kc; ++p) dst[p * w + r] = line[p * step];
    }
  } else {
    for (int64_t p = 0; p < kc; ++p) {
      const float* depth = src + p * step;
      for (int r = 0; r < h; ++r) dst[p * w + r] = depth[r * line_stride];
    }
  }
}

// See GemmRows (cpu_gemm.h): strips of kPortableNr columns, each element the
// portable tile's chain (acc = acc + a * b over k in order, from 0).
void portable_rows(const GemmRows& t) {
  for (int r = 0; r < t.rows; ++r) {
    const float* a = t.a + r * t.a_rs;
    for (int64_t j0 = 0; j0 < t.cols; j0 += kPortableNr) {
      const int w = static_cast<int>(std::min<int64_t>(kPortableNr, t.cols - j0));
      float acc[kPortableNr] = {};
      const float* b = t.b + j0 * t.b_cs;
      for (int64_t p = 0; p < t.k; ++p) {
        const float ap = a[p * t.a_cs];
        for (int j = 0; j < w; ++j) acc[j] += ap * b[j * t.b_cs];
        b += t.b_rs;
      }
      // Note [GEMM epilogue]: bias, then relu (x < 0 ? 0 : x keeps NaN and -0).
      if (t.bias != nullptr)
        for (int j = 0; j < w; ++j) acc[j] += t.bias[j0 + j];
      if (t.relu)
        for (int j = 0; j < w; ++j) acc[j] = acc[j] < 0.0f ? 0.0f : acc[j];
      float* c = t.c + r * t.c_rs + j0 * t.c_cs;
      for (int j = 0; j < w; ++j) c[j * t.c_cs] = acc[j];
    }
  }
}

}  // namespace

GemmKernel gemm_kernel_portable() {
  // The blocks of the AVX2 kernel, scaled to this tile.
  return GemmKernel{kPortableMr, kPortableNr, /*mc=*/kPortableMr * 48, /*kc=*/256, /*nc=*/kPortableNr * 32,
                    &portable_tile, &portable_pack, &portable_rows};
}

// ---------------------------------------------------------------- driver

namespace {

// Note [GEMM block sizes]
// gemm_serial runs BLIS's loops: for each depth block, a B block (kc x nc)
// is packed once; for each row block an A block (mc x kc) is packed into L2;
// then each B micro-panel (kc x nr) is held in L1 while every A micro-panel
// of the block (mr x kc, read from L2) passes over it. The sizes follow this
// CPU's caches, read at run time (L2 per core, from sysfs, falling back to
// sysconf, then to 1 MiB: cpu_l2_bytes() in cpu_features.h):
//  - kc: deep, so a tile's C is loaded and stored (and its next tile
//    prefetched) once per many multiply-adds: 512 when L2 holds 512 KiB,
//    else 256. The B micro-panel then fills L1 or spills to L2; the kernel
//    measured at 95% of the FMA peak either way, since L2 feeds the few
//    bytes a step needs (2 vectors of B and 14 floats of A per 28 FMAs).
//    Each tile's C load/store and pointer setup cost about as much as 20
//    depth steps: on this project's machine (AMD EPYC, 48 KiB L1d, 1 MiB
//    L2) kc 512 ran 2048^3 at 86-90% of peak per core, kc 256 at 80-83%.
//  - mc: the A block fills half of L2 (the rest passes B panels and C):
//    252 rows for AVX-512 there.
//  - nc: 2048 columns, so A is packed once per 2048 columns of C; the B
//    block lives in L3 and each micro-panel is read from it once per row
//    block.
// A product's depth and rows are then cut into equal blocks of at most kc
// and mc (depth_block, row_block), so no block is a short remainder.
GemmKernel fit_to_caches(GemmKernel g) {
  const int64_t l2 = cpu_l2_bytes();
  const int64_t floats = static_cast<int64_t>(sizeof(float));
  g.kc = l2 >= (int64_t{512} << 10) ? 512 : 256;
  g.mc = std::clamp<int64_t>(l2 / 2 / (g.kc * floats) / g.mr * g.mr, 4 * g.mr, 4096);
  g.nc = 2048 / g.nr * g.nr;
  return g;
}

}  // namespace

const GemmKernel& gemm_kernel(GemmIsa isa) {
  // Each ISA's table is built only once that ISA is known to run here: the
  // constructor functions themselves are compiled for their ISA.
  switch (std::min(isa, gemm_best_isa())) {
#if defined(__x86_64__) || defined(__i386__)
    case GemmIsa::Avx512: {
      static const GemmKernel avx512 = fit_to_caches(gemm_kernel_avx512());
      return avx512;
    }
    case GemmIsa::Avx2: {
      static const GemmKernel avx2 = fit_to_caches(gemm_kernel_avx2());
      return avx2;
    }
#endif
    default: break;
  }
  static const GemmKernel portable = fit_to_caches(gemm_kernel_portable());
  return portable;
}

namespace {

int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }
int64_t ceil_div(int64_t x, int64_t d) { return (x + d - 1) / d; }

// A strided float32 matrix (one batch item, or a rectangle of one).
struct ConstView {
  const float* data;
  int64_t rs, cs;
};
struct View {
  float* data;
  int64_t rs, cs;
};

// The depth block for a product of depth k: k cut into equal blocks of at
// most g.kc (784 with kc 256 gives 4 blocks of 196, not 256, 256, 256, 16).
int64_t depth_block(const GemmKernel& g, int64_t k) {
  const int64_t blocks = ceil_div(k, g.kc);
  return ceil_div(k, blocks);
}

// Width of the column strips of C that gemm_serial finishes before it runs
// the epilogue's `post` on them.
constexpr int64_t kPostCols = 256;

// Packs a B block (kc, nc) whose rows are contiguous (row stride rs) into
// nr-wide panels, as GemmPackFn would panel by panel, but reading B in
// order: depth by depth, each row's nc floats go to their panels, so the
// hardware prefetcher streams B. (Panel by panel, each pack walks kc rows
// for nr floats apiece: packing B took 7.6% of a 1024^3 product that way,
// 6.5% this way.)
void pack_b_rows(const float* b, int64_t rs, int64_t kc, int64_t nc, int nr, float* dst) {
  const size_t panel_bytes = sizeof(float) * static_cast<size_t>(nr);
  for (int64_t p = 0; p < kc; ++p) {
    const float* row = b + p * rs;
    for (int64_t j = 0; j < nc; j += nr) {
      float* d = dst + j * kc + p * nr;
      const int64_t w = std::min<int64_t>(nr, nc - j);
      if (w == nr) {
        std::memcpy(d, row + j, panel_bytes);
      } else {
        std::memcpy(d, row + j, sizeof(float) * static_cast<size_t>(w));
        std::memset(d + w, 0, sizeof(float) * static_cast<size_t>(nr - w));
      }
    }
  }
}

// The row block for a product of m rows: m cut into equal blocks of at most
// g.mc, rounded up to whole tiles (2048 rows with mc 504 gives blocks of 420
// and a last one of 368, not four of 504 and one of 32, whose few A panels
// would each reload the B panels from far away).
int64_t row_block(const GemmKernel& g, int64_t m) {
  const int64_t blocks = ceil_div(m, g.mc);
  return std::min(g.mc, round_up(ceil_div(m, blocks), g.mr));
}

// The epilogue of one call to gemm_serial: `bias` is contiguous and starts at
// column 0 of that call's c.
struct Epilogue {
  const float* bias;
  bool relu;
  void (*post)(void* ctx, float* c, int64_t rs, int64_t cs, int64_t rows, int64_t cols);
  void* post_ctx;
};

// c (m, n) = a (m, k) @ b (k, n), k > 0, on the calling thread alone, packing
// into ap (round_up(min(mc, m), mr) * min(kc, k) floats) and bp
// (min(kc, k) * round_up(min(nc, n), nr) floats); then the epilogue.
// The loops are BLIS's (Note [GEMM block sizes]): a B micro-panel stays in
// L1 while the A panels of the block in L2 stream past it.
void gemm_serial(const GemmKernel& g, int64_t m, int64_t n, int64_t k, ConstView a, ConstView b, View c, float* ap,
                 float* bp, const Epilogue& ep) {
  const int mr = g.mr, nr = g.nr;
  const int64_t kc_max = depth_block(g, k);
  const int64_t mc_max = row_block(g, m);
  // Note [B in place]: with one row block, each B panel serves only m / mr
  // tiles, and packing it costs as much as a good share of them (for the MLP
  // shape 128x512x784, B's packing was 9% of the product). When B's rows are
  // contiguous the tiles can read them where they are: each depth of a panel
  // is nr contiguous floats, b.rs apart. A row stride that is a multiple of
  // 1 KiB would put a panel's depths in a few cache sets, so those pack.
  const bool b_in_place = b.cs == 1 && m <= mc_max && (b.rs * 4) % 1024 != 0;
  for (int64_t jc = 0; jc < n; jc += g.nc) {
    const int64_t nc = std::min(g.nc, n - jc);
    for (int64_t pc = 0; pc < k; pc += kc_max) {
      const int64_t kc = std::min(kc_max, k - pc);
      const bool last = pc + kc == k;
      // B panel j: columns are its lines (line stride = B's column stride).
      // In place, only full panels are read; an edge panel is packed.
      if (b.cs == 1 && !b_in_place)
        pack_b_rows(b.data + pc * b.rs + jc, b.rs, kc, nc, nr, bp);
      else
        for (int64_t j = 0; j < nc; j += nr)
          if (!b_in_place || nc - j < nr)
            g.pack(b.data + pc * b.rs + (jc + j) * b.cs, b.cs, b.rs, static_cast<int>(std::min<int64_t>(nr, nc - j)),
                   kc, nr, bp + j * kc);
      for (int64_t ic = 0; ic < m; ic += mc_max) {
        const int64_t mc = std::min(mc_max, m - ic);
        // A panel i: rows are its lines.
        for (int64_t i = 0; i < mc; i += mr)
          g.pack(a.data + (ic + i) * a.rs + pc * a.cs, a.rs, a.cs, static_cast<int>(std::min<int64_t>(mr, mc - i)), kc,
                 mr, ap + i * kc);
        // Columns go in strips of kPostCols so the `post` part of the
        // epilogue finds each finished strip of C still in cache.
        for (int64_t js = 0; js < nc; js += kPostCols) {
          const int64_t je = std::min(nc, js + kPostCols);
          for (int64_t j = js; j < je; j += nr) {
            for (int64_t i = 0; i < mc; i += mr) {
              GemmTile t;
              t.kc = kc;
              t.a = ap + i * kc;
              if (b_in_place && nc - j >= nr) {
                t.b = b.data + pc * b.rs + jc + j;
                t.b_step = b.rs;
              } else {
                t.b = bp + j * kc;
                t.b_step = nr;
              }
              t.c = c.data + (ic + i) * c.rs + (jc + j) * c.cs;
              t.rs = c.rs;
              t.cs = c.cs;
              t.rows = static_cast<int>(std::min<int64_t>(mr, mc - i));
              t.cols = static_cast<int>(std::min<int64_t>(nr, nc - j));
              t.accumulate = pc > 0;
              t.bias = last && ep.bias != nullptr ? ep.bias + jc + j : nullptr;
              t.relu = last && ep.relu;
              // Next: the tile below, or the top of the next column of tiles.
              t.c_next = i + mr < mc   ? t.c + mr * c.rs
                         : j + nr < je ? c.data + ic * c.rs + (jc + j + nr) * c.cs
                                       : nullptr;
              g.tile(t);
            }
          }
          if (last && ep.post != nullptr)
            ep.post(ep.post_ctx, c.data + ic * c.rs + (jc + js) * c.cs, c.rs, c.cs, mc, je - js);
        }
      }
    }
  }
}

// Note [GEMM without packing] (cpu_gemm.h): which products skip packing.
// Measured on this project's machine (AVX2, AMD EPYC, one thread; packed vs
// unpacked microseconds, noisy: the machine is shared):
//  - few rows: 1..4 rows by 784x128 took 16-35 vs 21-38 us (B row-major) and
//    19-30 vs 31-43 us (B = W^T); still ahead up to 16 rows there, but a row
//    group past the first reads B again, and with B of 2048x2048 (16 MiB)
//    the unpacked path lost 2-2.6x (each depth of a strip is a new page,
//    the packed path's depth blocks stay in the TLB). So: at most
//    kGemmRowsMax rows (B read once) and B at most 1 MiB.
//  - one row against B = W^T of any size (a batch-1 Linear: decoding a
//    language model): the rows kernel reads each row of W once, in order,
//    where packing copied all of W every call (77% of a decoding step's
//    time). Weights read from memory (8 copies cycled), 2 threads:
//    3072x768 1220-1391 vs 833-881 us, 2304x768 952-996 vs 497-609,
//    512x784 323-454 vs 187-218; 768x3072 756-855 vs 673-926 (even).
//  - little depth (outer products, a batch-1 weight gradient 128x1 @ 1x784:
//    26 vs 56 us): B's rows contiguous, depth <= 4 (1024x1024, depth 4: 483
//    vs 1043 us; depth 8 still ahead); B = W^T transposes per row group, so
//    only depth 1 (512x512: 62 vs 124 us; even at depth 4).
// Tests turn the path off (testing::set_gemm_unpacked) to compare it with the
// packed one bit for bit.
constexpr int64_t kUnpackedMaxB = int64_t{1} << 18;  // floats of B
constexpr int64_t kUnpackedDepthRowsB = 4;
std::atomic<bool> g_unpacked_enabled{true};

// Whether sgemm runs this product (one batch item's strides) without
// packing: few rows and a B that fits in L2, one row against B = W^T, or
// little depth; B with contiguous rows or columns (or one row, whose row
// stride is never stepped).
bool use_unpacked(int64_t m, int64_t n, int64_t k, const SgemmInput& b) {
  if (!g_unpacked_enabled.load(std::memory_order_relaxed)) return false;
  const bool rows_b = b.cs == 1, cols_b = b.rs == 1 || k == 1;
  if (!rows_b && !cols_b) return false;
  if (m <= kGemmRowsMax && (k * n <= kUnpackedMaxB || (cols_b && m == 1))) return true;
  return k == 1 || (rows_b && k <= kUnpackedDepthRowsB);
}

// c (m, n) = a (m, k) @ b (k, n), k > 0, with g.rows (use_unpacked said
// yes): groups of kGemmRowsMax rows by strips of kPostCols columns, each
// strip's `post` run while it is in cache.
void gemm_unpacked(const GemmKernel& g, int64_t m, int64_t n, int64_t k, ConstView a, ConstView b, View c,
                   const Epilogue& ep) {
  // One row of B: its row stride is never stepped, so a strided row reads
  // as contiguous columns (b_rs == 1) when its columns are not contiguous.
  const int64_t b_rs = k == 1 && b.cs != 1 ? 1 : b.rs;
  for (int64_t js = 0; js < n; js += kPostCols) {
    const int64_t je = std::min(n, js + kPostCols);
    for (int64_t i = 0; i < m; i += kGemmRowsMax) {
      GemmRows t;
      t.k = k;
      t.a = a.data + i * a.rs;
      t.a_rs = a.rs;
      t.a_cs = a.cs;
      t.b = b.data + js * b.cs;
      t.b_rs = b_rs;
      t.b_cs = b.cs;
      t.c = c.data + i * c.rs + js * c.cs;
      t.c_rs = c.rs;
      t.c_cs = c.cs;
      t.rows = static_cast<int>(std::min<int64_t>(kGemmRowsMax, m - i));
      t.cols = je - js;
      t.bias = ep.bias != nullptr ? ep.bias + js : nullptr;
      t.relu = ep.relu;
      g.rows(t);
    }
    if (ep.post != nullptr) ep.post(ep.post_ctx, c.data + js * c.cs, c.rs, c.cs, m, je - js);
  }
}

// How the threads share one product's output: a grid of tm x tn rectangles
// of whole tiles, one per thread. A thread packs the rows of A and the
// columns of B its rectangle needs by itself, so threads never wait for one
// another; the price is that A is packed tn times and B tm times. The grid
// uses as many threads as there are tiles to go round, and among those
// shapes the one that packs least.
struct Grid {
  int tm, tn;
};
Grid choose_grid(int threads, int64_t m, int64_t n, int64_t k, const GemmKernel& g) {
  const int64_t m_tiles = ceil_div(m, g.mr), n_tiles = ceil_div(n, g.nr);
  Grid best{1, 1};
  double best_cost = 0;
  for (int tm = 1; tm <= threads && tm <= m_tiles; ++tm) {
    const int tn = static_cast<int>(std::min<int64_t>(threads / tm, n_tiles));
    const double cost = static_cast<double>(tn) * m * k + static_cast<double>(tm) * k * n;
    if (tm * tn > best.tm * best.tn || (tm * tn == best.tm * best.tn && cost < best_cost)) {
      best = {tm, tn};
      best_cost = cost;
    }
  }
  return best;
}

// Below this many multiply-adds (about 10 us on one AVX-512 core) a product
// runs on the calling thread: waking a team costs a few microseconds.
constexpr double kParallelMinWork = 1 << 20;


// Note [GEMM packing space]
// sgemm packs its blocks of A and B into memory the caller passes, so a
// kernel's whole scratch is in its workspace (Note [Kernel workspaces]): each
// thread one block of A and one of B for the largest rectangle it computes,
// each starting on a 64-byte line, and the bias as the tiles read it
// (contiguous) when it is strided. One plan gives both the size a caller asks
// for (sgemm_workspace_floats) and the layout sgemm uses. The unpacked path
// (Note [GEMM without packing] in cpu_gemm.h) packs nothing, but whether it
// runs depends on B's strides, which the size query does not see, so the
// size stays the packed plan's: a bound on what either path uses.
struct GemmPlan {
  int threads = 1;
  bool by_item = false;
  Grid grid{1, 1};
  int64_t ap_floats = 0, bp_floats = 0, bias_floats = 0;
  int64_t per_thread() const { return ap_floats + bp_floats; }
  int64_t floats() const { return per_thread() * threads + bias_floats; }
};

GemmPlan plan_gemm(const GemmKernel& g, int64_t batch, int64_t m, int64_t n, int64_t k, bool strided_bias,
                   bool nested) {
  GemmPlan p;
  if (batch <= 0 || m <= 0 || n <= 0) return p;
  p.bias_floats = strided_bias ? round_up(n, 16) : 0;
  if (k <= 0) return p;
  int threads = nested || in_parallel_region() ? 1 : get_num_threads();
  if (static_cast<double>(m) * n * k * batch < kParallelMinWork) threads = 1;
  // Whole batch items per thread when they divide evenly or are many;
  // otherwise every thread takes its rectangle of each item.
  p.by_item = threads > 1 && batch >= threads && (batch % threads == 0 || batch >= 4 * threads);
  if (threads > 1 && !p.by_item) {
    p.grid = choose_grid(threads, m, n, k, g);
    threads = p.grid.tm * p.grid.tn;
  }
  p.threads = threads;
  const int64_t m_tiles = ceil_div(m, g.mr), n_tiles = ceil_div(n, g.nr);
  const int64_t rect_m = p.by_item ? m : std::min(m, ceil_div(m_tiles, p.grid.tm) * g.mr);
  const int64_t rect_n = p.by_item ? n : std::min(n, ceil_div(n_tiles, p.grid.tn) * g.nr);
  const int64_t kc = depth_block(g, k);
  p.ap_floats = round_up(round_up(std::min(g.mc, rect_m), g.mr) * kc, 16);
  p.bp_floats = round_up(round_up(std::min(g.nc, rect_n), g.nr) * kc, 16);
  return p;
}

}  // namespace

int64_t sgemm_workspace_floats(GemmIsa isa, int64_t batch, int64_t m, int64_t n, int64_t k, bool strided_bias,
                               bool nested) {
  return plan_gemm(gemm_kernel(isa), batch, m, n, k, strided_bias, nested).floats();
}

int64_t sgemm_workspace_bound(GemmIsa isa, int64_t m, int64_t n, int64_t k, bool nested) {
  if (m <= 0 || n <= 0 || k <= 0) return 0;
  const GemmKernel& g = gemm_kernel(isa);
  // Any product's depth block is at most min(kc, k), its rectangle at most m x n.
  const int64_t kc = std::min(g.kc, k);
  const int64_t per_thread = round_up(round_up(std::min(g.mc, m), g.mr) * kc, 16) +
                             round_up(round_up(std::min(g.nc, n), g.nr) * kc, 16);
  const int threads = nested || in_parallel_region() ? 1 : get_num_threads();
  return per_thread * threads;
}

void sgemm(GemmIsa isa, int64_t batch, int64_t m, int64_t n, int64_t k, SgemmInput a, SgemmInput b, SgemmOutput c,
           const SgemmEpilogue* epilogue, GemmWorkspace ws) {
  if (batch <= 0 || m <= 0 || n <= 0) return;
  const GemmKernel& g = gemm_kernel(isa);
  const bool strided_bias = epilogue != nullptr && epilogue->bias != nullptr && epilogue->bias_stride != 1;
  const GemmPlan plan = plan_gemm(g, batch, m, n, k, strided_bias, false);
  LOOM_ASSERT(ws.floats >= plan.floats() && (plan.floats() == 0 || ws.data != nullptr),
              "sgemm: packing space of ", ws.floats, " floats for a product that needs ", plan.floats());
  Epilogue ep{nullptr, false, nullptr, nullptr};
  if (epilogue != nullptr) {
    ep = Epilogue{epilogue->bias, epilogue->relu, epilogue->post, epilogue->post_ctx};
    if (strided_bias) {
      float* bias = ws.data + plan.per_thread() * plan.threads;
      for (int64_t j = 0; j < n; ++j) bias[j] = epilogue->bias[j * epilogue->bias_stride];
      ep.bias = bias;
    }
  }
  if (k <= 0) {  // an empty sum is 0; the epilogue still applies
    for (int64_t bi = 0; bi < batch; ++bi) {
      float* cb = c.data + bi * c.bs;
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t j = 0; j < n; ++j) {
          float v = 0.0f;
          if (ep.bias != nullptr) v += ep.bias[j];
          if (ep.relu) v = v < 0.0f ? 0.0f : v;
          cb[i * c.rs + j * c.cs] = v;
        }
      }
      if (ep.post != nullptr) ep.post(ep.post_ctx, cb, c.rs, c.cs, m, n);
    }
    return;
  }
  const int threads = plan.threads;
  const bool by_item = plan.by_item;
  const Grid grid = plan.grid;
  const int64_t m_tiles = ceil_div(m, g.mr), n_tiles = ceil_div(n, g.nr);
  const size_t ap_floats = static_cast<size_t>(plan.ap_floats);
  const size_t per_thread = static_cast<size_t>(plan.per_thread());
  float* const pack = ws.data;

  // Rows [i0, i1) x columns [j0, j1) of batch item bi, with the packing
  // space of thread `slot`.
  // Note [GEMM without packing]: decided per product from B's strides (a
  // batch's items share them); the packing space is then unused.
  const bool unpacked = use_unpacked(m, n, k, b);
  auto run = [&](int64_t bi, int64_t i0, int64_t i1, int64_t j0, int64_t j1, int slot) {
    if (unpacked) {
      gemm_unpacked(g, i1 - i0, j1 - j0, k, ConstView{a.data + bi * a.bs + i0 * a.rs, a.rs, a.cs},
                    ConstView{b.data + bi * b.bs + j0 * b.cs, b.rs, b.cs},
                    View{c.data + bi * c.bs + i0 * c.rs + j0 * c.cs, c.rs, c.cs},
                    Epilogue{ep.bias != nullptr ? ep.bias + j0 : nullptr, ep.relu, ep.post, ep.post_ctx});
      return;
    }
    float* ap = pack + per_thread * static_cast<size_t>(slot);
    gemm_serial(g, i1 - i0, j1 - j0, k, ConstView{a.data + bi * a.bs + i0 * a.rs, a.rs, a.cs},
                ConstView{b.data + bi * b.bs + j0 * b.cs, b.rs, b.cs},
                View{c.data + bi * c.bs + i0 * c.rs + j0 * c.cs, c.rs, c.cs}, ap, ap + ap_floats,
                Epilogue{ep.bias != nullptr ? ep.bias + j0 : nullptr, ep.relu, ep.post, ep.post_ctx});
  };
  if (threads <= 1) {
    for (int64_t bi = 0; bi < batch; ++bi) run(bi, 0, m, 0, n, 0);
    return;
  }
  // The work is dealt out by id over the team size asked for, whichever
  // threads end up running it (parallel_team may run the ids inline).
  parallel_team(threads, [&](int id, int team) {
    if (by_item) {
      for (int64_t bi = id; bi < batch; bi += team) run(bi, 0, m, 0, n, id);
    } else if (unpacked) {
      // Strips of 16 columns (or groups of kGemmRowsMax rows, when the
      // columns are too few to go round), dealt out evenly.
      const int64_t col_units = ceil_div(n, 16), row_units = ceil_div(m, kGemmRowsMax);
      const bool by_cols = col_units >= threads || col_units >= row_units;
      const int64_t units = by_cols ? col_units : row_units;
      for (int part = id; part < threads; part += team) {
        const int64_t u0 = units * part / threads, u1 = units * (part + 1) / threads;
        if (u0 == u1) continue;
        for (int64_t bi = 0; bi < batch; ++bi) {
          if (by_cols)
            run(bi, 0, m, u0 * 16, std::min(n, u1 * 16), id);
          else
            run(bi, u0 * kGemmRowsMax, std::min(m, u1 * kGemmRowsMax), 0, n, id);
        }
      }
    } else {
      for (int rect = id; rect < threads; rect += team) {
        // Rectangle (ti, tj): tile rows [m_tiles ti / tm, m_tiles (ti + 1) / tm), likewise for columns.
        const int ti = rect / grid.tn, tj = rect % grid.tn;
        const int64_t i0 = m_tiles * ti / grid.tm * g.mr, i1 = std::min(m, m_tiles * (ti + 1) / grid.tm * g.mr);
        const int64_t j0 = n_tiles * tj / grid.tn * g.nr, j1 = std::min(n, n_tiles * (tj + 1) / grid.tn * g.nr);
        for (int64_t bi = 0; bi < batch; ++bi) run(bi, i0, i1, j0, j1, id);
      }
    }
  });
}

void testing::set_gemm_unpacked(bool on) { g_unpacked_enabled.store(on, std::memory_order_relaxed); }

}  // namespace loom::cpu
