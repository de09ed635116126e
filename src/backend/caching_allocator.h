// A caching allocator for device memory that streams use asynchronously
// (the CUDA backend's, Note [CUDA caching allocator]). It knows nothing of
// CUDA: a device hands it raw allocation and events through
// DeviceMemoryOps, so the caching logic is tested on any machine with a
// fake device (tests/test_caching_allocator.cpp).
//
// Note [CUDA caching allocator]
// cudaMalloc and cudaFree are slow and cudaFree synchronizes the device, so
// like PyTorch's allocator this one keeps freed blocks and hands them out
// again. Requests round up to a size class (512-byte steps below 1 MiB, then
// eight classes per power of two, as the CPU's classes), and a block is
// reused only for its own class.
//
// Streams. A block belongs to the stream it was allocated on. Freed, it goes
// back to that stream's pool, and only allocations on the same stream take
// it: work on one stream runs in issue order, so a kernel launched after
// the free cannot run before the kernels that used the block, and no
// synchronization is needed. A tensor used on another stream too is marked
// with record_stream; when such a block is freed, an event is recorded on
// each of those streams, and the block stays pending (in no pool) until all
// of them have completed. Pending blocks are checked at each allocation.
//
// Out of memory. When the device refuses a block, the allocator waits for
// the device (so pending blocks complete), returns every cached block and
// tries once more; a second refusal is a loom::Error that names the request,
// what loom has allocated and what it had cached.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace loom {

// What a device gives the cache. Streams and events are opaque handles.
class DeviceMemoryOps {
 public:
  virtual ~DeviceMemoryOps() = default;
  // A block of `bytes`, or nullptr when the device is out of memory.
  virtual void* raw_alloc(size_t bytes) = 0;
  virtual void raw_free(void* ptr) = 0;
  // An event recorded on `stream` now; done once the stream's work issued
  // so far has completed.
  virtual void* record_event(void* stream) = 0;
  virtual bool event_done(void* event) = 0;
  virtual void destroy_event(void* event) = 0;
  // Waits until the device has finished all its work.
  virtual void synchronize() = 0;
  // For error messages: "cuda:0".
  virtual std::string name() const = 0;
};

struct CachingAllocatorStats {
  size_t allocated_bytes = 0;       // blocks handed out (their rounded sizes)
  size_t reserved_bytes = 0;        // everything taken from the device: handed out, cached and pending
  size_t peak_allocated_bytes = 0;  // since the start or reset_peak()
  size_t peak_reserved_bytes = 0;
  int64_t allocations = 0;          // allocate() calls
  int64_t cache_hits = 0;           // allocations served from the cache
  int64_t device_allocations = 0;   // raw_alloc calls that succeeded
  int64_t device_frees = 0;         // raw_free calls
  int64_t ooms = 0;                 // refusals that flushed the cache
};

class CachingAllocator {
 public:
  explicit CachingAllocator(DeviceMemoryOps& ops) : ops_(ops) {}
  ~CachingAllocator();
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  // A block of at least `nbytes` for use on `stream`; its size (the class)
  // is what `block_size` reports.
  void* allocate(size_t nbytes, void* stream);
  // Back to its stream's pool, or pending (record_stream).
  void free(void* ptr);
  // `ptr` (a block this allocator gave) is also used on `stream`.
  void record_stream(void* ptr, void* stream);
  size_t block_size(void* ptr) const;
  // Returns the cached blocks (not those in use or pending) to the device.
  void empty_cache();
  CachingAllocatorStats stats() const;
  void reset_peak();

  // The size class of a request (at least 512 bytes).
  static size_t round_size(size_t nbytes);

 private:
  struct Block {
    size_t size = 0;
    void* stream = nullptr;
    std::vector<void*> other_streams;  // record_stream
  };
  struct Pending {
    void* ptr = nullptr;
    std::vector<void*> events;
  };
  void collect_pending();  // with mu_ held
  void release_cached();   // with mu_ held

  DeviceMemoryOps& ops_;
  mutable std::mutex mu_;
  std::unordered_map<void*, Block> live_;    // handed out
  std::unordered_map<void*, Block> cached_;  // in a pool
  std::unordered_map<void*, Block> parked_;  // pending, by pointer
  std::map<std::pair<void*, size_t>, std::vector<void*>> pools_;  // (stream, size) -> free blocks
  std::vector<Pending> pending_;
  CachingAllocatorStats stats_;
};

}  // namespace loom
