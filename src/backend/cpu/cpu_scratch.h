// Scratch buffers and chunked parallel loops shared by the convolution
// kernels (cpu_conv.cpp, cpu_winograd*.cpp).
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>

#include "core/allocator.h"
#include "loom/threads.h"

namespace loom::cpu {

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
