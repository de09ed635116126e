// Winograd F(4x4, 3x3) convolution on loom's GEMM (Note [Winograd convolution]
// in cpu_winograd.h): the driver. Per chunk of tiles (cpu_winograd_plan.h) it
// runs the input transform, the 36 GEMMs on the micro-kernel and the output
// transform (cpu_winograd_transforms.h).
#include "backend/cpu/cpu_winograd.h"

#include <algorithm>

#include "backend/cpu/cpu_gemm.h"
#include "backend/cpu/cpu_scratch.h"
#include "backend/cpu/cpu_winograd_plan.h"
#include "backend/cpu/cpu_winograd_transforms.h"

namespace loom::cpu {

using namespace winograd;

bool winograd_suits(int64_t in_channels, int64_t out_channels, int64_t oh, int64_t ow) {
  return in_channels >= 16 && out_channels >= 16 && oh >= 4 && ow >= 4;
}

void winograd_conv3x3_f32(WorkspaceLayout& ws, const float* x, int64_t n, int64_t c, int64_t h, int64_t w, const float* weight, bool flip,
                          int64_t o, int64_t oh, int64_t ow, int64_t pad_h, int64_t pad_w, const float* bias,
                          int64_t bias_stride, float* y) {
  if (n == 0 || o == 0 || oh == 0 || ow == 0) return;
  const GemmIsa isa = gemm_isa();
  const GemmKernel& g = gemm_kernel(isa);
  const Tiling t = tiling(n, oh, ow, kPositions * (c + o), g, kMinColumns);
  // U_f (o, c), packed once into the micro-kernel's A panels: panel p of
  // position f at upk + (f * panels + p) * mr * c, all c depths.
  const int64_t mr = g.mr, nr = g.nr, panels = (o + mr - 1) / mr;
  float* u = ws.take<float>(kPositions * o * c);
  float* upk = ws.take<float>(kPositions * panels * mr * c);
  float* filter_tmp = ws.take<float>(kPositions * o * c);
  const int64_t kcb = (c + (c + g.kc - 1) / g.kc - 1) / ((c + g.kc - 1) / g.kc);  // c in equal blocks of <= kc
  const int64_t vfloats = kPositions * slab(c, t.nt), mfloats = kPositions * slab(o, t.nt);
  // The GEMMs run on the micro-kernel directly: no packing space beyond these.
  const ChunkBuffers buffers = take_chunk_buffers(
      ws, t.chunks, vfloats + input_tmp_floats(t.rows_per_chunk, t.th, t.tw) + nr * c,
      mfloats + output_tmp_floats(t.rows_per_chunk, t.th, t.tw), {});
  if (!ws.carving()) return;
  filter_transform(weight, flip, o, c, u, filter_tmp);
  for (int64_t f = 0; f < kPositions; ++f)
    for (int64_t p = 0; p < panels; ++p)
      g.pack(u + (f * o + p * mr) * c, c, 1, static_cast<int>(std::min(mr, o - p * mr)), c, g.mr,
             upk + (f * panels + p) * mr * c);
  run_chunks(buffers, t.chunks, [&](int64_t ch, float* va, float* mb, GemmWorkspace) {
    const int64_t row0 = ch * t.rows_per_chunk, rows = std::min(t.rows_per_chunk, t.rows - row0);
    const int64_t kt = rows * t.tw;
    float* bbuf = va + vfloats + input_tmp_floats(t.rows_per_chunk, t.th, t.tw);
    input_transform({x, c, h, w, pad_h, pad_w, t.th, t.tw, row0, rows, va, t.nt, va + vfloats});
    // M_f (o, kt) = U_f (o, c) @ V_f (c, kt), f < 36: each B panel (the
    // chunk's columns j .. j + nr - 1, read in place, or packed when it is
    // the last and partial one) passes every A panel while it sits in L1.
    for (int64_t f = 0; f < kPositions; ++f) {
      const float* vf = va + f * slab(c, t.nt);
      float* mf = mb + f * slab(o, t.nt);
      for (int64_t j = 0; j < kt; j += nr) {
        const int cols = static_cast<int>(std::min(nr, kt - j));
        const float* b = vf + j;
        int64_t b_step = t.nt;
        if (cols < nr) {
          g.pack(vf + j, 1, t.nt, cols, c, g.nr, bbuf);
          b = bbuf;
          b_step = nr;
        }
        for (int64_t p = 0; p < panels; ++p)
          for (int64_t pc = 0; pc < c; pc += kcb) {
            GemmTile tile;
            tile.kc = std::min(kcb, c - pc);
            tile.a = upk + (f * panels + p) * mr * c + pc * mr;
            tile.b = b + pc * b_step;
            tile.b_step = b_step;
            tile.c = mf + p * mr * t.nt + j;
            tile.rs = t.nt;
            tile.cs = 1;
            tile.rows = static_cast<int>(std::min(mr, o - p * mr));
            tile.cols = cols;
            tile.accumulate = pc > 0;
            tile.bias = nullptr;
            tile.relu = false;
            tile.c_next = p + 1 < panels && pc + kcb >= c ? tile.c + mr * t.nt : nullptr;
            g.tile(tile);
          }
      }
    }
    output_transform({mb, o, t.nt, oh, ow, t.th, t.tw, row0, rows, bias, bias_stride, y, mb + mfloats});
  });
}

void winograd_weight_grad3x3_f32(WorkspaceLayout& ws, const float* x, const float* g, int64_t n, int64_t c, int64_t h, int64_t w,
                                 int64_t o, int64_t oh, int64_t ow, int64_t pad_h, int64_t pad_w, float* dw) {
  const int64_t fsize = kPositions * o * c;
  float* total = ws.take<float>(fsize);
  float* rows_tmp = ws.take<float>(fsize);  // filter_grad_transform's
  if (n == 0 || oh == 0 || ow == 0) {
    if (!ws.carving()) return;
    std::fill(total, total + fsize, 0.0f);
  } else {
    const GemmIsa isa = gemm_isa();
    const GemmKernel& gk = gemm_kernel(isa);
    const Tiling t = tiling(n, oh, ow, kPositions * (c + o), gk, kMinColumnsDw);
    const int64_t ranges =
        std::min({t.chunks, kMaxRanges, std::max<int64_t>(kPartialFloats / std::max<int64_t>(fsize, 1), 1)});
    float* partial = ws.take<float>((ranges - 1) * fsize);
    const int64_t mr = gk.mr, nr = gk.nr, cpanels = (c + nr - 1) / nr;
    const int64_t vfloats = kPositions * slab(c, t.nt), efloats = kPositions * slab(o, t.nt);
    // Per thread: V, its transform's scratch; E, its transform's scratch,
    // one packed A panel and the packed B panels of one position.
    const int64_t packs = mr * t.nt + cpanels * nr * t.nt;
    for_each_chunk(ws, ranges, vfloats + input_tmp_floats(t.rows_per_chunk, t.th, t.tw),
                   efloats + grad_tmp_floats(t.rows_per_chunk, t.th, t.tw) + packs, {},
                   [&](int64_t r, float* va, float* eb, GemmWorkspace) {
      float* sum = r == 0 ? total : partial + (r - 1) * fsize;
      float* apk = eb + efloats + grad_tmp_floats(t.rows_per_chunk, t.th, t.tw);
      float* bpk = apk + mr * t.nt;
      const int64_t first = r * t.chunks / ranges, last = (r + 1) * t.chunks / ranges;
      for (int64_t ch = first; ch < last; ++ch) {
        const int64_t row0 = ch * t.rows_per_chunk, rows = std::min(t.rows_per_chunk, t.rows - row0);
        const int64_t kt = rows * t.tw;
        input_transform({x, c, h, w, pad_h, pad_w, t.th, t.tw, row0, rows, va, t.nt, va + vfloats});
        grad_transform({g, o, oh, ow, t.th, t.tw, row0, rows, eb, t.nt, eb + efloats});
        // S_f (o, c) += E_f (o, kt) @ V_f^T (kt, c), f < 36: one chain over
        // the range's tiles in order (the first chunk starts it).
        for (int64_t f = 0; f < kPositions; ++f) {
          const float* ef = eb + f * slab(o, t.nt);
          const float* vf = va + f * slab(c, t.nt);
          float* sf = sum + f * o * c;
          for (int64_t q = 0; q < cpanels; ++q)
            gk.pack(vf + q * nr * t.nt, t.nt, 1, static_cast<int>(std::min(nr, c - q * nr)), kt, gk.nr,
                    bpk + q * nr * kt);
          for (int64_t i = 0; i < o; i += mr) {
            const int rows_i = static_cast<int>(std::min(mr, o - i));
            gk.pack(ef + i * t.nt, t.nt, 1, rows_i, kt, gk.mr, apk);
            for (int64_t q = 0; q < cpanels; ++q) {
              GemmTile tile;
              tile.kc = kt;
              tile.a = apk;
              tile.b = bpk + q * nr * kt;
              tile.b_step = nr;
              tile.c = sf + i * c + q * nr;
              tile.rs = c;
              tile.cs = 1;
              tile.rows = rows_i;
              tile.cols = static_cast<int>(std::min(nr, c - q * nr));
              tile.accumulate = ch != first;
              tile.bias = nullptr;
              tile.relu = false;
              tile.c_next = nullptr;
              gk.tile(tile);
            }
          }
        }
      }
    });
    if (!ws.carving()) return;
    for (int64_t r = 1; r < ranges; ++r) {
      const float* p = partial + (r - 1) * fsize;
      for (int64_t k = 0; k < fsize; ++k) total[k] += p[k];
    }
  }
  // dW = G^T S G per (oc, ic), in double, rounded once.
  filter_grad_transform(total, o, c, dw, rows_tmp);
}

}  // namespace loom::cpu
