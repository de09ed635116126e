// The stream-aware caching allocator (Note [CUDA caching allocator]).
#include "backend/caching_allocator.h"

#include <algorithm>

#include "loom/error.h"

namespace loom {

namespace {

constexpr size_t kSmallStep = 512;
constexpr size_t kSmallLimit = size_t{1} << 20;

double mib(size_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0); }

}  // namespace

size_t CachingAllocator::round_size(size_t nbytes) {
  if (nbytes <= kSmallLimit) return std::max(kSmallStep, (nbytes + kSmallStep - 1) / kSmallStep * kSmallStep);
  // Eight classes per power of two: a step of 1/8 of the power below.
  size_t p = kSmallLimit;
  while (p * 2 < nbytes) p *= 2;
  const size_t step = p / 8;
  return (nbytes + step - 1) / step * step;
}

CachingAllocator::~CachingAllocator() {
  // The process is ending (allocators are static); blocks still in use by
  // tensors that outlive it are left to the driver.
  std::lock_guard<std::mutex> lock(mu_);
  for (Pending& p : pending_)
    for (void* e : p.events) ops_.destroy_event(e);
}

void CachingAllocator::collect_pending() {
  for (size_t k = 0; k < pending_.size();) {
    Pending& p = pending_[k];
    const bool done = std::all_of(p.events.begin(), p.events.end(), [&](void* e) { return ops_.event_done(e); });
    if (!done) {
      ++k;
      continue;
    }
    for (void* e : p.events) ops_.destroy_event(e);
    auto it = parked_.find(p.ptr);
    Block b = std::move(it->second);
    parked_.erase(it);
    b.other_streams.clear();
    pools_[{b.stream, b.size}].push_back(p.ptr);
    cached_.emplace(p.ptr, std::move(b));
    pending_[k] = std::move(pending_.back());
    pending_.pop_back();
  }
}

void CachingAllocator::release_cached() {
  for (auto& [key, ptrs] : pools_)
    for (void* p : ptrs) {
      auto it = cached_.find(p);
      stats_.reserved_bytes -= it->second.size;
      cached_.erase(it);
      ops_.raw_free(p);
      ++stats_.device_frees;
    }
  pools_.clear();
}

void* CachingAllocator::allocate(size_t nbytes, void* stream) {
  const size_t size = round_size(nbytes);
  std::lock_guard<std::mutex> lock(mu_);
  ++stats_.allocations;
  if (!pending_.empty()) collect_pending();
  void* ptr = nullptr;
  auto pool = pools_.find({stream, size});
  if (pool != pools_.end() && !pool->second.empty()) {
    ptr = pool->second.back();
    pool->second.pop_back();
    auto it = cached_.find(ptr);
    live_.emplace(ptr, std::move(it->second));
    cached_.erase(it);
    ++stats_.cache_hits;
  } else {
    ptr = ops_.raw_alloc(size);
    if (ptr == nullptr) {
      // Out of memory: let the pending blocks complete, give back the cache, retry.
      ++stats_.ooms;
      ops_.synchronize();
      collect_pending();
      release_cached();
      ptr = ops_.raw_alloc(size);
      LOOM_CHECK(ptr != nullptr, ops_.name(), " out of memory: tried to allocate ", mib(size), " MiB (", nbytes,
                 " bytes requested); loom has ", mib(stats_.allocated_bytes), " MiB allocated in tensors and had ",
                 "released its whole cache before retrying");
    }
    ++stats_.device_allocations;
    stats_.reserved_bytes += size;
    stats_.peak_reserved_bytes = std::max(stats_.peak_reserved_bytes, stats_.reserved_bytes);
    live_.emplace(ptr, Block{size, stream, {}});
  }
  stats_.allocated_bytes += size;
  stats_.peak_allocated_bytes = std::max(stats_.peak_allocated_bytes, stats_.allocated_bytes);
  return ptr;
}

void CachingAllocator::free(void* ptr) {
  if (ptr == nullptr) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(ptr);
  LOOM_ASSERT(it != live_.end(), "CachingAllocator::free: ", ptr, " is not a block in use on ", ops_.name());
  Block b = std::move(it->second);
  live_.erase(it);
  stats_.allocated_bytes -= b.size;
  if (b.other_streams.empty()) {
    pools_[{b.stream, b.size}].push_back(ptr);
    cached_.emplace(ptr, std::move(b));
    return;
  }
  Pending p;
  p.ptr = ptr;
  for (void* s : b.other_streams) p.events.push_back(ops_.record_event(s));
  parked_.emplace(ptr, std::move(b));
  pending_.push_back(std::move(p));
}

void CachingAllocator::record_stream(void* ptr, void* stream) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(ptr);
  LOOM_CHECK(it != live_.end(), "record_stream: the tensor's memory is not a block of the ", ops_.name(),
             " caching allocator in use");
  Block& b = it->second;
  if (stream == b.stream || std::find(b.other_streams.begin(), b.other_streams.end(), stream) != b.other_streams.end())
    return;
  b.other_streams.push_back(stream);
}

size_t CachingAllocator::block_size(void* ptr) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(ptr);
  return it == live_.end() ? 0 : it->second.size;
}

void CachingAllocator::empty_cache() {
  std::lock_guard<std::mutex> lock(mu_);
  collect_pending();
  release_cached();
}

CachingAllocatorStats CachingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void CachingAllocator::reset_peak() {
  std::lock_guard<std::mutex> lock(mu_);
  stats_.peak_allocated_bytes = stats_.allocated_bytes;
  stats_.peak_reserved_bytes = stats_.reserved_bytes;
}

}  // namespace loom
