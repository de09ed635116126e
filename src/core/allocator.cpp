// The CPU caching allocator (Note [CPU caching allocator] in allocator.h).
#include "core/allocator.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include <sys/mman.h>

#include "loom/allocator.h"
#include "loom/error.h"

namespace loom {

namespace {

constexpr size_t kAlignment = 64;
constexpr size_t kSmallMax = 1024;                     // 64-byte classes up to here
constexpr int kSmallClasses = kSmallMax / kAlignment;  // 16
constexpr int kStepsPerDoubling = 8;
// Blocks of 2^46 bytes and more are never cached (nor likely to exist).
constexpr int kMaxShift = 46;
constexpr int kClasses = kSmallClasses + (kMaxShift - 10) * kStepsPerDoubling;
constexpr size_t kDefaultLimit = size_t{4} << 30;

struct SizeClass {
  size_t rounded;
  int index;  // -1: not cached
};

SizeClass size_class(size_t n) {
  if (n <= kSmallMax) {
    size_t r = n == 0 ? kAlignment : (n + kAlignment - 1) & ~(kAlignment - 1);
    return {r, static_cast<int>(r / kAlignment) - 1};
  }
  // 2^k < n <= 2^(k+1), k >= 10: eight steps of 2^(k-3) per doubling.
  const int k = 63 - std::countl_zero(static_cast<uint64_t>(n - 1));
  if (k >= kMaxShift) return {(n + kAlignment - 1) & ~(kAlignment - 1), -1};
  const size_t step = size_t{1} << (k - 3);
  const size_t r = (n + step - 1) & ~(step - 1);
  const int m = static_cast<int>(r >> (k - 3));  // 9..16
  return {r, kSmallClasses + (k - 10) * kStepsPerDoubling + (m - 9)};
}

// Note [Huge pages for large blocks]
// A GEMM walks the rows of C and A with a stride of kilobytes, and a large
// elementwise op streams megabytes: with 4 KiB pages both spend much of
// their time on TLB misses. Blocks of kHugeMin bytes and more start on a
// 2 MiB boundary and ask the kernel for transparent huge pages
// (madvise(MADV_HUGEPAGE); Linux's default THP mode, "madvise", honours only
// such requests). Smaller blocks would waste too much of a huge page.
constexpr size_t kHugePage = size_t{2} << 20;
constexpr size_t kHugeMin = size_t{4} << 20;

void* system_allocate(size_t rounded) {
  if (rounded < kHugeMin) return std::aligned_alloc(kAlignment, rounded);
  const size_t bytes = (rounded + kHugePage - 1) & ~(kHugePage - 1);
  void* p = std::aligned_alloc(kHugePage, bytes);
#ifdef MADV_HUGEPAGE
  if (p != nullptr) madvise(p, bytes, MADV_HUGEPAGE);  // a hint: failure is harmless
#endif
  return p;
}

size_t limit_from_env() {
  const char* s = std::getenv("LOOM_CPU_CACHE_LIMIT_MB");
  if (!s || !*s) return kDefaultLimit;
  char* end = nullptr;
  unsigned long long mb = std::strtoull(s, &end, 10);
  LOOM_CHECK(end && *end == '\0', "LOOM_CPU_CACHE_LIMIT_MB: expected a number of MiB, got \"", s, "\"");
  return static_cast<size_t>(mb) << 20;
}

bool caching_from_env() {
  const char* s = std::getenv("LOOM_CPU_ALLOCATOR");
  if (!s || !*s || std::strcmp(s, "caching") == 0) return true;
  LOOM_CHECK(std::strcmp(s, "system") == 0, "LOOM_CPU_ALLOCATOR: expected \"caching\" or \"system\", got \"", s,
             "\"");
  return false;
}

class CachingAllocator {
 public:
  CachingAllocator() : caching_(caching_from_env()), limit_(limit_from_env()) {}

  CpuBlock allocate(size_t nbytes) {
    const SizeClass c = size_class(nbytes);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (caching_ && c.index >= 0) {
        auto& list = free_lists_[c.index];
        if (!list.empty()) {
          void* p = list.back();
          list.pop_back();
          cached_ -= c.rounded;
          in_use_ += c.rounded;
          peak_ = std::max(peak_, in_use_);
          ++hits_;
          return {p, c.rounded};
        }
      }
    }
    void* p = system_allocate(c.rounded);
    if (!p) {
      // The cache may hold what the system lacks: give it back and retry.
      empty_cache();
      p = system_allocate(c.rounded);
    }
    LOOM_CHECK(p != nullptr, "out of memory: failed to allocate ", nbytes, " bytes on cpu");
    std::lock_guard<std::mutex> lock(mu_);
    in_use_ += c.rounded;
    peak_ = std::max(peak_, in_use_);
    ++system_allocations_;
    return {p, c.rounded};
  }

  void free(void* p, size_t size) {
    const SizeClass c = size_class(size);
    {
      std::lock_guard<std::mutex> lock(mu_);
      in_use_ -= size;
      if (caching_ && c.index >= 0 && cached_ + size <= limit_) {
        free_lists_[c.index].push_back(p);
        cached_ += size;
        return;
      }
      ++system_frees_;
    }
    std::free(p);
  }

  void empty_cache() { release_until(0); }

  void reset_peak() {
    std::lock_guard<std::mutex> lock(mu_);
    peak_ = in_use_;
  }

  void set_limit(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      limit_ = bytes;
    }
    release_until(bytes);
  }

  CpuAllocatorStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    CpuAllocatorStats s;
    s.bytes_in_use = in_use_;
    s.peak_bytes_in_use = peak_;
    s.bytes_cached = cached_;
    s.cache_limit = limit_;
    s.system_allocations = system_allocations_;
    s.system_frees = system_frees_;
    s.cache_hits = hits_;
    s.caching = caching_;
    return s;
  }

 private:
  // Frees cached blocks, largest classes first, until at most `target`
  // bytes stay cached. The blocks are taken off the lists under the lock and
  // freed after it.
  void release_until(size_t target) {
    std::vector<void*> doomed;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (int i = kClasses - 1; i >= 0 && cached_ > target; --i) {
        auto& list = free_lists_[i];
        const size_t size = class_size(i);
        while (!list.empty() && cached_ > target) {
          doomed.push_back(list.back());
          list.pop_back();
          cached_ -= size;
          ++system_frees_;
        }
      }
    }
    for (void* p : doomed) std::free(p);
  }

  static size_t class_size(int index) {
    if (index < kSmallClasses) return static_cast<size_t>(index + 1) * kAlignment;
    const int j = index - kSmallClasses;
    const int k = 10 + j / kStepsPerDoubling, m = 9 + j % kStepsPerDoubling;
    return static_cast<size_t>(m) << (k - 3);
  }

  std::mutex mu_;
  const bool caching_;
  size_t limit_;
  std::array<std::vector<void*>, kClasses> free_lists_;
  size_t in_use_ = 0, peak_ = 0, cached_ = 0;
  uint64_t system_allocations_ = 0, system_frees_ = 0, hits_ = 0;
};

// Never destroyed: storages that outlive static destruction (globals in
// user code) may still free into it at exit.
CachingAllocator& allocator() {
  static CachingAllocator* a = new CachingAllocator();
  return *a;
}

}  // namespace

CpuBlock cpu_allocate(size_t nbytes) { return allocator().allocate(nbytes); }
void cpu_free(void* ptr, size_t size) { allocator().free(ptr, size); }

namespace {

// The CPU's entry in the registry: the caching allocator above.
class CpuAllocator final : public Allocator {
 public:
  MemoryBlock allocate(size_t nbytes) override { return cpu_allocate(nbytes); }
  void free(MemoryBlock block) override { cpu_free(block.ptr, block.size); }
};

constexpr size_t kDeviceTypes = 2;  // DeviceType::CPU, DeviceType::CUDA

#ifdef LOOM_WITH_CUDA
}  // namespace
namespace cuda_detail {
Allocator& cuda_allocator();  // src/backend/cuda/cuda_api.cpp
}
namespace {
#endif

std::array<std::atomic<Allocator*>, kDeviceTypes>& registry() {
  static CpuAllocator cpu;
#ifdef LOOM_WITH_CUDA
  static std::array<std::atomic<Allocator*>, kDeviceTypes> r{&cpu, &cuda_detail::cuda_allocator()};
#else
  static std::array<std::atomic<Allocator*>, kDeviceTypes> r{&cpu, nullptr};
#endif
  return r;
}

}  // namespace

Allocator& allocator_for(Device device) {
  const auto type = static_cast<size_t>(device.type);
  Allocator* a = type < kDeviceTypes ? registry()[type].load(std::memory_order_acquire) : nullptr;
  if (a != nullptr) return *a;
#ifndef LOOM_WITH_CUDA
  LOOM_CHECK(device.type != DeviceType::CUDA, "loom was built without CUDA support: cannot use device ", device.str(),
             " (rebuild with nvcc available to enable CUDA)");
#endif
  LOOM_ERROR("no allocator is registered for device ", device.str());
}

void set_allocator(DeviceType type, Allocator* allocator) {
  const auto t = static_cast<size_t>(type);
  LOOM_CHECK(t < kDeviceTypes && allocator != nullptr, "set_allocator: expected an allocator for a known device type");
  registry()[t].store(allocator, std::memory_order_release);
}

CpuAllocatorStats cpu_allocator_stats() { return allocator().stats(); }
void cpu_empty_cache() { allocator().empty_cache(); }
void cpu_reset_peak_stats() { allocator().reset_peak(); }
void cpu_set_cache_limit(size_t bytes) { allocator().set_limit(bytes); }

}  // namespace loom
