// Scratch for CPU kernels that split work over threads: each thread slot
// takes its buffers from its own piece of the call's workspace (Note [Kernel
// workspaces] in src/backend/workspace.h), never from an allocation of its
// own.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>

#include "core/allocator.h"

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

// TEMPORARY (until conv/winograd/attention take workspaces)

// A scratch buffer of n floats from loom's caching allocator, left
// uninitialized (every user writes before it reads). The cache hands the
// same blocks back call after call; malloc would give a pool thread's
// freed megabytes back to the kernel and fault them in, zeroed, next call.
struct ScratchFree {
  size_t size;
  void operator()(float* p) const { cpu_free(p, size); }
};
using Scratch = std::unique_ptr<float[], ScratchFree>;
inline Scratch scratch(int64_t n) {
  const CpuBlock b = cpu_allocate(static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(float));
  return Scratch(static_cast<float*>(b.ptr), ScratchFree{b.size});
}

// Runs fn(chunk, buffers...) for chunks [0, chunks): split over threads, each
// thread with scratch buffers of its own (sizes in floats), when there are
// enough chunks; otherwise in order on this thread, leaving the team to the
// GEMM. Either way each chunk's arithmetic is the same.
template <class Fn>
void for_each_chunk(int64_t chunks, int64_t floats_a, int64_t floats_b, const Fn& fn) {
  const bool split = chunks >= get_num_threads() && get_num_threads() > 1 && !in_parallel_region();
  if (!split) {
    auto a = scratch(floats_a), b = scratch(floats_b);
    for (int64_t ch = 0; ch < chunks; ++ch) fn(ch, a.get(), b.get());
    return;
  }
  parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    auto a = scratch(floats_a), b = scratch(floats_b);
    for (int64_t ch = begin; ch < end; ++ch) fn(ch, a.get(), b.get());
  });
}

}  // namespace loom::cpu
