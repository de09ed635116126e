// Memory per device: an Allocator interface, the registry allocate_storage
// asks, and the CPU caching allocator, the CPU's implementation.
//
// Note [Allocators per device]
// allocate_storage and kernel workspaces ask allocator_for(device) and never
// assume the CPU. The CPU's allocator is the caching one below; a backend for
// another device (CUDA) registers its own with set_allocator when it is built
// in. A device with none registered answers with a clear error: in a
// CPU-only build, "loom was built without CUDA support".
//
//
// Note [CPU caching allocator]
// Requests are rounded up to a size class: multiples of 64 bytes up to
// 1 KiB, then eight classes per power of two (so at most 12.5% is wasted).
// Every block is 64-byte aligned. A freed block goes onto its class's free
// list unless that would make the cache exceed its cap (default 4 GiB, env
// LOOM_CPU_CACHE_LIMIT_MB, cpu_set_cache_limit), in which case it is freed at
// once; a request pops its class's list before asking the system. Large
// blocks are cached too: they are the ones that page-fault when fresh. So
// once a training loop has run one iteration with fixed shapes, every later
// iteration finds its blocks in the cache and calls no malloc or free.
//
// A block returns to the cache only when its Storage dies, i.e. when no
// tensor or view uses it any more, so cached memory is never handed out
// while still in use. One mutex guards the lists and counters; allocation
// and free may happen on any thread (the DataLoader's workers allocate,
// the main thread frees). Nothing is cleared when reused: like malloc,
// the contents of a new block are unspecified.
//
// LOOM_CPU_ALLOCATOR=system (read at the first allocation) bypasses the
// cache: each block is its own aligned_alloc / free, for valgrind and ASan.
#pragma once

#include <cstddef>

#include "loom/device.h"

namespace loom {

struct CpuBlock {
  void* ptr = nullptr;
  size_t size = 0;  // the rounded size: pass it back to cpu_free
};
// A block of device memory: its address and the size to hand back on free.
using MemoryBlock = CpuBlock;

class Allocator {
 public:
  virtual ~Allocator() = default;
  // At least `nbytes` (64-byte aligned); throws loom::Error when out of memory.
  virtual MemoryBlock allocate(size_t nbytes) = 0;
  // The same on one device of the allocator's type (a CUDA device by index;
  // the CPU has one).
  virtual MemoryBlock allocate_on(Device device, size_t nbytes) {
    (void)device;
    return allocate(nbytes);
  }
  // Returns a block this allocator gave.
  virtual void free(MemoryBlock block) = 0;
};

// The allocator of `device`'s type (the CPU's caching allocator for the CPU).
// Throws loom::Error for a device type without one.
Allocator& allocator_for(Device device);
// Installs the allocator of a device type (a backend, once, at startup). The
// allocator must outlive every allocation made through it.
void set_allocator(DeviceType type, Allocator* allocator);

// A 64-byte aligned block of at least `nbytes` (at least 64 bytes, even for
// 0). Throws loom::Error when the system is out of memory.
CpuBlock cpu_allocate(size_t nbytes);
// Returns a block from cpu_allocate (ptr and the block size it reported).
void cpu_free(void* ptr, size_t size);

}  // namespace loom
