// Scratch for CPU kernels that split work over threads: each thread slot
// takes its buffers from its own piece of the call's workspace (Note [Kernel
// workspaces] in src/backend/workspace.h), never from an allocation of its
// own.
#pragma once

#include <algorithm>
#include <cstdint>

#include "backend/cpu/cpu_gemm.h"
#include "backend/workspace.h"
#include "loom/threads.h"

namespace loom::cpu {

// How many thread slots parallel_slots(n, grain, ...) uses: up to one per
// thread with at least `grain` items each, 1 inside a parallel region. The
// size function and the kernel both ask, on the same thread count.
inline int64_t slot_count(int64_t n, int64_t grain) {
  const int64_t threads = get_num_threads();
  if (threads <= 1 || in_parallel_region() || n < 2 * std::max<int64_t>(grain, 1)) return 1;
  return std::min(threads, n / std::max<int64_t>(grain, 1));
}

// Runs fn(slot, begin, end) over equal parts of [0, n), one per slot of
// slot_count(n, grain), each part's items in order.
template <class Fn>
void parallel_slots(int64_t n, int64_t grain, const Fn& fn) {
  const int64_t slots = slot_count(n, grain);
  if (slots == 1) {
    if (n > 0) fn(int64_t{0}, int64_t{0}, n);
    return;
  }
  parallel_team(static_cast<int>(slots), [&](int id, int team) {
    const int64_t lo = n * id / team, hi = n * (id + 1) / team;
    if (lo < hi) fn(static_cast<int64_t>(id), lo, hi);
  });
}

// Workspace for `slots` thread slots that each lay out their buffers with
// layout(WorkspaceLayout&): the bytes a size function reports, and each
// slot's piece for the kernel. Both walk the same layout.
template <class Layout>
size_t slot_bytes(const Layout& layout) {
  WorkspaceLayout sizing;
  layout(sizing);
  return (sizing.bytes() + 63) & ~size_t{63};
}
template <class Layout>
size_t slots_workspace_bytes(int64_t slots, const Layout& layout) {
  return static_cast<size_t>(slots) * slot_bytes(layout) + 64;
}
template <class Layout>
WorkspaceLayout slot_workspace(const KernelCall& c, int64_t slot, const Layout& layout) {
  const size_t per = slot_bytes(layout);
  WorkspaceLayout all = carve(c);
  char* base = all.take<char>(static_cast<int64_t>(per) * (slot + 1));
  return WorkspaceLayout(Workspace{base + per * static_cast<size_t>(slot), per});
}

// The thread slots for_each_chunk uses for `chunks` chunks: one per thread
// when there are enough chunks to split over the threads, else one (the
// chunks then run in order on this thread, leaving the team to the GEMM).
inline int64_t chunk_slots(int64_t chunks) {
  const int threads = get_num_threads();
  return chunks >= threads && threads > 1 && !in_parallel_region() ? threads : 1;
}

// The largest product (rows, columns, depth) a chunk's GEMMs compute.
struct GemmBound {
  int64_t m = 0, n = 0, k = 0;
};

// Each thread slot's buffers for a chunk loop: floats_a and floats_b floats
// and the packing space of GEMMs up to `gemm` (on one thread when the chunks
// are split over threads), all from the workspace, each piece on a 64-byte
// line.
struct ChunkBuffers {
  int64_t slots, fa, fb, fp;
  float *a, *b, *p;
};
inline ChunkBuffers take_chunk_buffers(WorkspaceLayout& ws, int64_t chunks, int64_t floats_a, int64_t floats_b,
                                       GemmBound gemm) {
  ChunkBuffers c;
  c.slots = chunk_slots(chunks);
  c.fa = (floats_a + 15) / 16 * 16;
  c.fb = (floats_b + 15) / 16 * 16;
  c.fp = (sgemm_workspace_bound(gemm_isa(), gemm.m, gemm.n, gemm.k, c.slots > 1) + 15) / 16 * 16;
  c.a = ws.take<float>(c.slots * c.fa);
  c.b = ws.take<float>(c.slots * c.fb);
  c.p = ws.take<float>(c.slots * c.fp);
  return c;
}

// Runs fn(chunk, a, b, pack) for chunks [0, chunks) with the buffers of its
// thread slot. Either way each chunk's arithmetic is the same.
template <class Fn>
void run_chunks(const ChunkBuffers& c, int64_t chunks, const Fn& fn) {
  if (c.slots == 1) {
    for (int64_t ch = 0; ch < chunks; ++ch) fn(ch, c.a, c.b, GemmWorkspace{c.p, c.fp});
    return;
  }
  parallel_team(static_cast<int>(c.slots), [&](int id, int team) {
    for (int64_t ch = chunks * id / team; ch < chunks * (id + 1) / team; ++ch)
      fn(ch, c.a + id * c.fa, c.b + id * c.fb, GemmWorkspace{c.p + id * c.fp, c.fp});
  });
}

// Takes the buffers, then (unless `ws` is only sizing) runs the chunks.
template <class Fn>
void for_each_chunk(WorkspaceLayout& ws, int64_t chunks, int64_t floats_a, int64_t floats_b, GemmBound gemm,
                    const Fn& fn) {
  const ChunkBuffers c = take_chunk_buffers(ws, chunks, floats_a, floats_b, gemm);
  if (ws.carving()) run_chunks(c, chunks, fn);
}

// A product's packing space taken from `ws` (a single GEMM outside any
// chunk loop; Note [GEMM packing space]).
inline GemmWorkspace take_gemm(WorkspaceLayout& ws, int64_t batch, int64_t m, int64_t n, int64_t k,
                               bool strided_bias = false) {
  const int64_t floats = sgemm_workspace_floats(gemm_isa(), batch, m, n, k, strided_bias);
  return {ws.take<float>(floats), floats};
}

}  // namespace loom::cpu
