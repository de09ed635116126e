// The CUDA caching allocator's logic on a fake device (Note [CUDA caching
// allocator] in src/backend/caching_allocator.h): runs on any machine.
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "backend/caching_allocator.h"
#include "loom/error.h"

namespace loom {
namespace {

// A device whose memory is heap blocks, with a byte limit, and whose
// streams finish only when the test says so.
class FakeDevice final : public DeviceMemoryOps {
 public:
  size_t limit = SIZE_MAX, used = 0;
  int mallocs = 0, frees = 0, syncs = 0;
  std::map<void*, size_t> blocks;
  std::map<void*, int> stream_work;  // stream -> work issued so far
  std::map<void*, int> stream_done;  // stream -> work finished
  std::map<void*, std::pair<void*, int>> events;  // event -> (stream, work at record)
  int next_event = 1;

  void* raw_alloc(size_t bytes) override {
    if (used + bytes > limit) return nullptr;
    void* p = ::operator new(bytes);
    blocks[p] = bytes;
    used += bytes;
    ++mallocs;
    return p;
  }
  void raw_free(void* p) override {
    used -= blocks.at(p);
    blocks.erase(p);
    ::operator delete(p);
    ++frees;
  }
  void* record_event(void* stream) override {
    void* e = reinterpret_cast<void*>(static_cast<intptr_t>(next_event++));
    events[e] = {stream, stream_work[stream]};
    return e;
  }
  bool event_done(void* e) override {
    const auto& [s, work] = events.at(e);
    return stream_done[s] >= work;
  }
  void destroy_event(void* e) override { events.erase(e); }
  void synchronize() override {
    ++syncs;
    for (auto& [s, w] : stream_work) stream_done[s] = w;
  }
  std::string name() const override { return "fake:0"; }

  void issue(void* stream) { ++stream_work[stream]; }
  void finish(void* stream) { stream_done[stream] = stream_work[stream]; }
};

void* stream(int k) { return reinterpret_cast<void*>(static_cast<intptr_t>(0x1000 * k)); }

TEST(CachingAllocator, SizeClasses) {
  EXPECT_EQ(CachingAllocator::round_size(0), 512u);
  EXPECT_EQ(CachingAllocator::round_size(1), 512u);
  EXPECT_EQ(CachingAllocator::round_size(513), 1024u);
  EXPECT_EQ(CachingAllocator::round_size(1 << 20), size_t{1} << 20);
  // Above 1 MiB: eight classes per power of two.
  EXPECT_EQ(CachingAllocator::round_size((1 << 20) + 1), (size_t{1} << 20) + (size_t{1} << 17));
  EXPECT_EQ(CachingAllocator::round_size(3u << 20), 3u << 20);
  EXPECT_EQ(CachingAllocator::round_size((3u << 20) + 1), (3u << 20) + (1u << 18));
  for (size_t n : {size_t{100}, size_t{70000}, size_t{5} << 20, size_t{123456789}}) {
    const size_t r = CachingAllocator::round_size(n);
    EXPECT_GE(r, n);
    EXPECT_LE(r, n + n / 8 + 512);
  }
}

TEST(CachingAllocator, ReusesFreedBlocksOfItsStreamAndClass) {
  FakeDevice dev;
  CachingAllocator a(dev);
  void* p = a.allocate(1000, stream(1));
  EXPECT_EQ(a.block_size(p), 1024u);
  a.free(p);
  EXPECT_EQ(a.allocate(1024, stream(1)), p);  // same class, same stream: the cached block
  EXPECT_EQ(dev.mallocs, 1);
  void* q = a.allocate(1000, stream(2));      // another stream never takes it
  EXPECT_NE(q, p);
  a.free(p);
  void* r = a.allocate(5000, stream(1));      // another class neither
  EXPECT_NE(r, p);
  EXPECT_EQ(dev.mallocs, 3);
  const CachingAllocatorStats s = a.stats();
  EXPECT_EQ(s.allocations, 4);
  EXPECT_EQ(s.cache_hits, 1);
  EXPECT_EQ(s.allocated_bytes, 1024u + 5120u);
  EXPECT_EQ(s.reserved_bytes, 1024u + 1024u + 5120u);
  a.free(q);
  a.free(r);
  EXPECT_EQ(a.stats().allocated_bytes, 0u);
  EXPECT_EQ(a.stats().peak_allocated_bytes, 1024u + 5120u);  // q and r (p was freed before r)
  a.empty_cache();
  EXPECT_EQ(dev.frees, 3);
  EXPECT_EQ(a.stats().reserved_bytes, 0u);
  EXPECT_TRUE(dev.blocks.empty());
  a.reset_peak();
  EXPECT_EQ(a.stats().peak_allocated_bytes, 0u);
}

TEST(CachingAllocator, RecordStreamHoldsTheBlockUntilThatStreamsWorkIsDone) {
  FakeDevice dev;
  CachingAllocator a(dev);
  void* p = a.allocate(4096, stream(1));
  a.record_stream(p, stream(2));
  a.record_stream(p, stream(1));  // its own stream: nothing to wait for
  dev.issue(stream(2));           // a kernel on stream 2 reads p
  a.free(p);
  // Pending: stream 2 has not finished, so the block is not handed out.
  void* q = a.allocate(4096, stream(1));
  EXPECT_NE(q, p);
  dev.finish(stream(2));
  a.free(q);
  std::set<void*> got = {a.allocate(4096, stream(1)), a.allocate(4096, stream(1))};
  EXPECT_EQ(got, (std::set<void*>{p, q}));
  EXPECT_TRUE(dev.events.empty());  // the event was destroyed once done
}

TEST(CachingAllocator, OutOfMemoryFlushesTheCacheThenSaysWhat) {
  FakeDevice dev;
  dev.limit = 8192;
  CachingAllocator a(dev);
  void* p = a.allocate(4096, stream(1));
  void* q = a.allocate(4096, stream(1));
  a.free(p);
  // Full; a different class needs the cached block's bytes: flushed, then served.
  void* r = a.allocate(2048, stream(1));
  EXPECT_NE(r, nullptr);
  EXPECT_EQ(dev.syncs, 1);
  EXPECT_EQ(a.stats().ooms, 1);
  EXPECT_EQ(a.stats().reserved_bytes, 4096u + 2048u);
  try {
    a.allocate(8192, stream(1));
    FAIL() << "expected an out-of-memory error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("fake:0 out of memory"), std::string::npos) << m;
    EXPECT_NE(m.find("8192 bytes requested"), std::string::npos) << m;
  }
  a.free(q);
  a.free(r);
}

TEST(CachingAllocator, FreeOfAForeignPointerIsAnError) {
  FakeDevice dev;
  CachingAllocator a(dev);
  int x = 0;
  EXPECT_THROW(a.record_stream(&x, stream(1)), Error);
}

}  // namespace
}  // namespace loom
