// The CPU caching allocator (Note [CPU caching allocator]): a steady loop
// stops calling the system, memory comes back, threads may allocate and
// free concurrently, and a block is never reused while a view holds it.
//
// The allocator is process-wide, so every check works on differences of
// its counters rather than on absolute values.
#include <gtest/gtest.h>
#include <loom/loom.h>

#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

namespace {

using namespace loom;
namespace F = loom::nn::functional;

bool system_mode() {
  const char* s = std::getenv("LOOM_CPU_ALLOCATOR");
  return s && std::strcmp(s, "system") == 0;
}

#define SKIP_IN_SYSTEM_MODE()                                                            \
  do {                                                                                   \
    if (system_mode()) GTEST_SKIP() << "LOOM_CPU_ALLOCATOR=system: the cache is off"; \
  } while (0)

TEST(CpuAllocator, TrainingLoopStopsCallingTheSystemAfterWarmUp) {
  SKIP_IN_SYSTEM_MODE();
  manual_seed(0);
  nn::Sequential model(nn::Linear(33, 257), nn::ReLU(), nn::Linear(257, 17));
  optim::Adam opt(model->parameters(), optim::AdamOptions(1e-3));
  auto iteration = [&] {
    Tensor x = randn({64, 33});
    Tensor y = randint(0, 17, {64});
    Tensor loss = F::cross_entropy(model->forward(x), y);
    opt.zero_grad();
    loss.backward();
    opt.step();
  };
  iteration();
  iteration();
  const CpuAllocatorStats before = cpu_allocator_stats();
  for (int k = 0; k < 5; ++k) iteration();
  const CpuAllocatorStats after = cpu_allocator_stats();
  EXPECT_EQ(after.system_allocations, before.system_allocations);
  EXPECT_EQ(after.system_frees, before.system_frees);
  EXPECT_GT(after.cache_hits, before.cache_hits);
}

TEST(CpuAllocator, LargeBlocksAreReused) {
  SKIP_IN_SYSTEM_MODE();
  const CpuAllocatorStats s0 = cpu_allocator_stats();
  void* first = nullptr;
  {
    Tensor big = empty({1000, 1000, 17});  // 68 MB
    first = big.data_ptr<float>();
  }
  const CpuAllocatorStats s1 = cpu_allocator_stats();
  EXPECT_GE(s1.bytes_cached, s0.bytes_cached + 68'000'000);
  Tensor again = empty({1000, 1000, 17});
  EXPECT_EQ(again.data_ptr<float>(), first);
  EXPECT_EQ(cpu_allocator_stats().system_allocations, s1.system_allocations);
}

TEST(CpuAllocator, BlocksAreAlignedAndSizeClassesServeNearbySizes) {
  SKIP_IN_SYSTEM_MODE();
  for (int64_t n : {0, 1, 3, 7, 17, 33, 257, 1000, 100000, 1000003}) {
    Tensor t = empty({n});
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data_ptr<float>()) % 64, 0u) << n;
  }
  // 4100 and 4400 bytes fall in one class (4096 < n <= 4608): the second
  // request takes the first one's block.
  void* p = nullptr;
  {
    Tensor a = empty({1025});
    p = a.data_ptr<float>();
  }
  Tensor b = empty({1100});
  EXPECT_EQ(b.data_ptr<float>(), p);
}

TEST(CpuAllocator, MemoryIsReturned) {
  const CpuAllocatorStats s0 = cpu_allocator_stats();
  {
    std::vector<Tensor> ts;
    for (int64_t n : {1, 17, 1000, 123457, 3000000}) ts.push_back(ones({n}));
    EXPECT_GT(cpu_allocator_stats().bytes_in_use, s0.bytes_in_use);
  }
  const CpuAllocatorStats s1 = cpu_allocator_stats();
  EXPECT_EQ(s1.bytes_in_use, s0.bytes_in_use);
  cpu_empty_cache();
  const CpuAllocatorStats s2 = cpu_allocator_stats();
  EXPECT_EQ(s2.bytes_cached, 0u);
  EXPECT_EQ(s2.bytes_in_use, s0.bytes_in_use);
  if (!system_mode()) {
    EXPECT_GT(s2.system_frees, s1.system_frees);
  }
  // Memory in use is untouched by empty_cache.
  Tensor live = full({1000}, 2.5);
  cpu_empty_cache();
  EXPECT_EQ(live.sum().item<double>(), 2500.0);
}

TEST(CpuAllocator, CacheLimitSendsBlocksBackToTheSystem) {
  SKIP_IN_SYSTEM_MODE();
  const size_t old_limit = cpu_allocator_stats().cache_limit;
  cpu_set_cache_limit(1 << 20);
  EXPECT_LE(cpu_allocator_stats().bytes_cached, size_t{1} << 20);
  const CpuAllocatorStats s0 = cpu_allocator_stats();
  { Tensor big = empty({1 << 20}); }  // 4 MiB: over the cap, freed at once
  const CpuAllocatorStats s1 = cpu_allocator_stats();
  EXPECT_EQ(s1.system_frees, s0.system_frees + 1);
  EXPECT_LE(s1.bytes_cached, size_t{1} << 20);
  cpu_set_cache_limit(old_limit);
}

TEST(CpuAllocator, ABlockIsNotReusedWhileAViewHoldsIt) {
  Tensor view;
  void* base = nullptr;
  {
    Tensor x = arange(0, 1000).to(kFloat32);
    base = x.data_ptr<float>();
    view = x.narrow(0, 500, 10);
  }
  // The base tensor is gone; its storage lives on through the view.
  std::vector<Tensor> others;
  for (int k = 0; k < 8; ++k) {
    others.push_back(full({1000}, -1.0));
    EXPECT_NE(others.back().data_ptr<float>(), base);
  }
  EXPECT_EQ(view.to_vector<float>(), (std::vector<float>{500, 501, 502, 503, 504, 505, 506, 507, 508, 509}));
  void* view_block = view.data_ptr<float>() - 500;
  view = Tensor();
  Tensor reuse = empty({1000});
  if (!system_mode()) {
    EXPECT_EQ(reuse.data_ptr<float>(), view_block);
  }
}

TEST(CpuAllocator, ThreadsAllocateAndFreeConcurrently) {
  const CpuAllocatorStats s0 = cpu_allocator_stats();
  std::vector<std::thread> threads;
  std::vector<int> failures(4, 0);
  // Tensors cross threads too: each thread frees what its neighbour made.
  std::vector<std::vector<Tensor>> handoff(4);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([t, &failures, &handoff] {
      for (int k = 0; k < 300; ++k) {
        const int64_t n = 1 + (k * 37 + t * 101) % 5000;
        Tensor a = full({n}, static_cast<double>(t * 1000 + k));
        const float* p = a.data_ptr<float>();
        for (int64_t i = 0; i < n; ++i)
          if (p[i] != static_cast<float>(t * 1000 + k)) ++failures[t];
        if (k % 3 == 0) handoff[t].push_back(a);
      }
    });
  }
  for (auto& th : threads) th.join();
  threads.clear();
  for (int t = 0; t < 4; ++t) threads.emplace_back([t, &handoff] { handoff[(t + 1) % 4].clear(); });
  for (auto& th : threads) th.join();
  for (int t = 0; t < 4; ++t) EXPECT_EQ(failures[t], 0) << "thread " << t;
  EXPECT_EQ(cpu_allocator_stats().bytes_in_use, s0.bytes_in_use);
}

TEST(CpuAllocator, SystemModeBypassesTheCache) {
  const CpuAllocatorStats s0 = cpu_allocator_stats();
  EXPECT_EQ(s0.caching, !system_mode());
  if (!system_mode()) GTEST_SKIP() << "run by the ctest entry allocator_system_mode";
  { Tensor t = empty({1000}); }
  const CpuAllocatorStats s1 = cpu_allocator_stats();
  EXPECT_EQ(s1.system_allocations, s0.system_allocations + 1);
  EXPECT_EQ(s1.system_frees, s0.system_frees + 1);
  EXPECT_EQ(s1.bytes_cached, 0u);
}

}  // namespace
