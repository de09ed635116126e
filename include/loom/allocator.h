// The CPU caching allocator: statistics and cache control.
//
// Tensor memory on the CPU comes from a caching allocator (like PyTorch's
// CUDA one): a freed block goes onto a free list for its size class and the
// next request of that class takes it back, so a steady training loop stops
// calling malloc/free (and stops page-faulting fresh large blocks) after its
// first iteration. See Note [CPU caching allocator] in src/core/allocator.h.
//
//   loom::cpu_allocator_stats().bytes_cached   // held for reuse
//   loom::cpu_empty_cache();                   // give it back to the system
//   loom::cpu_reset_peak_stats();              // then .peak_bytes_in_use
//
// LOOM_CPU_ALLOCATOR=system (read once, at the first allocation) turns the
// cache off: every tensor gets its own aligned_alloc and free, which is what
// valgrind and AddressSanitizer want to see.
#pragma once

#include <cstddef>
#include <cstdint>

namespace loom {

struct CpuAllocatorStats {
  size_t bytes_in_use = 0;         // blocks held by live storages (rounded block sizes)
  size_t peak_bytes_in_use = 0;    // most bytes_in_use since the start or cpu_reset_peak_stats()
  size_t bytes_cached = 0;         // freed blocks kept for reuse
  size_t cache_limit = 0;          // most bytes_cached may reach
  uint64_t system_allocations = 0;  // aligned_alloc calls so far
  uint64_t system_frees = 0;        // free calls so far
  uint64_t cache_hits = 0;          // requests served from the cache
  bool caching = true;             // false under LOOM_CPU_ALLOCATOR=system
};

CpuAllocatorStats cpu_allocator_stats();
// Frees every cached block (blocks in use are untouched), like
// torch.cuda.empty_cache().
void cpu_empty_cache();
// Restarts peak_bytes_in_use from the bytes in use now, like
// torch.cuda.reset_peak_memory_stats().
void cpu_reset_peak_stats();
// Caps the bytes kept in the cache (default 4 GiB, or LOOM_CPU_CACHE_LIMIT_MB):
// a block freed while the cache is full goes back to the system. Lowering the
// cap releases cached blocks until the cache fits.
void cpu_set_cache_limit(size_t bytes);

}  // namespace loom
