// The Winograd chunk plan (cpu_winograd_plan.h).
#include "backend/cpu/cpu_winograd_plan.h"

#include <algorithm>

namespace loom::cpu::winograd {

Tiling tiling(int64_t n, int64_t oh, int64_t ow, int64_t floats_per_tile, const GemmKernel& g, int64_t least) {
  const int64_t nr = g.nr;
  Tiling t{};
  t.th = (oh + 3) / 4;
  t.tw = (ow + 3) / 4;
  t.rows = n * t.th;
  const int64_t target = std::clamp<int64_t>(kChunkBytes / (4 * floats_per_tile), least, kMaxColumns);
  const int64_t most = std::clamp<int64_t>(target / t.tw, 1, std::max<int64_t>(t.rows, 1));
  // The GEMM computes whole panels of nr columns: take the row count that
  // wastes the smallest share of its last panel (the larger on ties).
  t.rows_per_chunk = 1;
  double best = 0;
  // 4x4-tile planes go in whole samples (Note [Winograd 4x4-tile planes]).
  const int64_t step = tiles4(t.th, t.tw) && most >= t.th ? t.th : 1;
  for (int64_t r = step; r <= most; r += step) {
    const int64_t cols = r * t.tw;
    const double used = static_cast<double>(cols) / static_cast<double>((cols + nr - 1) / nr * nr);
    if (used >= best) {
      best = used;
      t.rows_per_chunk = r;
    }
  }
  t.chunks = (t.rows + t.rows_per_chunk - 1) / t.rows_per_chunk;
  // Rows of whole vectors, not a multiple of 256 floats (1 KiB): the
  // micro-kernel reads a B panel in place, nt floats from one depth to the
  // next, and such a stride would put all its depths in a few cache sets.
  t.nt = (t.rows_per_chunk * t.tw + 15) / 16 * 16;
  if (t.nt % 256 == 0) t.nt += 16;
  return t;
}

}  // namespace loom::cpu::winograd
