// parallel_for and the thread-count controls.
#include <gtest/gtest.h>
#include <loom/loom.h>

#include <atomic>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

namespace {

using namespace loom;

// Restores the thread count a test changed.
struct ThreadCountGuard {
  int saved = get_num_threads();
  ~ThreadCountGuard() { set_num_threads(saved); }
};

TEST(Threads, SetAndGet) {
  ThreadCountGuard guard;
  EXPECT_GE(get_num_threads(), 1);
  set_num_threads(1);
  EXPECT_EQ(get_num_threads(), 1);
  set_num_threads(2);
  EXPECT_EQ(get_num_threads(), 2);
  EXPECT_THROW(set_num_threads(0), Error);
  EXPECT_THROW(set_num_threads(-3), Error);
  EXPECT_EQ(get_num_threads(), 2);
}

void expect_covered_once(int64_t begin, int64_t end, int64_t grain) {
  std::vector<std::atomic<int>> hits(static_cast<size_t>(end - begin));
  std::atomic<bool> out_of_range{false};
  parallel_for(begin, end, grain, [&](int64_t lo, int64_t hi) {
    if (lo < begin || hi > end || lo >= hi) out_of_range = true;
    for (int64_t i = lo; i < hi && i < end && i >= begin; ++i) hits[static_cast<size_t>(i - begin)]++;
  });
  EXPECT_FALSE(out_of_range) << "a chunk fell outside [" << begin << ", " << end << ")";
  int64_t wrong = 0;
  for (auto& h : hits) wrong += h.load() != 1;
  EXPECT_EQ(wrong, 0) << "elements not visited exactly once, range [" << begin << ", " << end << ") grain " << grain;
}

TEST(Threads, CoversTheRangeExactlyOnce) {
  ThreadCountGuard guard;
  for (int threads : {1, 2, 3, 8}) {
    SCOPED_TRACE(threads);
    set_num_threads(threads);
    expect_covered_once(0, 100000, 1000);
    expect_covered_once(17, 100017, 1000);
    expect_covered_once(0, 1001, 1000);
    expect_covered_once(-50, 50, 1);
    expect_covered_once(0, 7, 0);  // grain 0 behaves like 1
  }
}

TEST(Threads, EmptyRangeCallsNothing) {
  int calls = 0;
  parallel_for(5, 5, 1, [&](int64_t, int64_t) { ++calls; });
  parallel_for(9, 3, 1, [&](int64_t, int64_t) { ++calls; });
  EXPECT_EQ(calls, 0);
}

TEST(Threads, SmallRangesStayOnTheCallingThread) {
  ThreadCountGuard guard;
  set_num_threads(2);
  const std::thread::id me = std::this_thread::get_id();
  std::vector<std::pair<int64_t, int64_t>> chunks;
  std::vector<std::thread::id> ids;
  parallel_for(10, 500, 1000, [&](int64_t lo, int64_t hi) {
    chunks.emplace_back(lo, hi);
    ids.push_back(std::this_thread::get_id());
  });
  ASSERT_EQ(chunks.size(), 1u);
  EXPECT_EQ(chunks[0], (std::pair<int64_t, int64_t>{10, 500}));
  EXPECT_EQ(ids[0], me);
  // Exactly one grain also stays single-threaded.
  chunks.clear();
  ids.clear();
  parallel_for(0, 1000, 1000, [&](int64_t lo, int64_t hi) {
    chunks.emplace_back(lo, hi);
    ids.push_back(std::this_thread::get_id());
  });
  ASSERT_EQ(chunks.size(), 1u);
  EXPECT_EQ(ids[0], me);
}

TEST(Threads, OneThreadRunsInline) {
  ThreadCountGuard guard;
  set_num_threads(1);
  const std::thread::id me = std::this_thread::get_id();
  int calls = 0;
  bool other_thread = false;
  parallel_for(0, 1000000, 10, [&](int64_t, int64_t) {
    ++calls;
    other_thread = other_thread || std::this_thread::get_id() != me;
  });
  EXPECT_EQ(calls, 1);
  EXPECT_FALSE(other_thread);
}

TEST(Threads, ExceptionsPropagateToTheCaller) {
  ThreadCountGuard guard;
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    try {
      parallel_for(0, 100000, 100, [](int64_t lo, int64_t hi) {
        for (int64_t i = lo; i < hi; ++i)
          if (i == 76543) throw std::runtime_error("boom at 76543");
      });
      ADD_FAILURE() << "no exception with " << threads << " threads";
    } catch (const std::runtime_error& e) {
      EXPECT_STREQ(e.what(), "boom at 76543");
    }
    // A loom::Error keeps its type.
    EXPECT_THROW(parallel_for(0, 100000, 100, [](int64_t lo, int64_t) {
                   if (lo == 0) LOOM_ERROR("kernel: bad element");
                 }),
                 Error);
  }
  // Every chunk throwing still gives exactly one exception, and the pool
  // remains usable afterwards.
  set_num_threads(2);
  EXPECT_THROW(parallel_for(0, 100000, 10, [](int64_t, int64_t) { throw std::logic_error("all"); }),
               std::logic_error);
  expect_covered_once(0, 100000, 10);
}

TEST(Threads, NestedParallelForIsCorrect) {
  ThreadCountGuard guard;
  set_num_threads(2);
  std::vector<std::atomic<int>> hits(100 * 1000);
  parallel_for(0, 100, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r)
      parallel_for(0, 1000, 10, [&](int64_t a, int64_t b) {
        for (int64_t c = a; c < b; ++c) hits[static_cast<size_t>(r * 1000 + c)]++;
      });
  });
  int64_t wrong = 0;
  for (auto& h : hits) wrong += h.load() != 1;
  EXPECT_EQ(wrong, 0);
}

TEST(Threads, OpResultsDoNotDependOnThreadCount) {
  ThreadCountGuard guard;
  manual_seed(11);
  Tensor x = randn({1 << 20});
  Tensor i = randint(-1000, 1000, {1 << 20});
  set_num_threads(1);
  Tensor e1 = exp(x) * x + x.sin();
  Tensor s1 = sum(i);
  Tensor c1 = x.t().contiguous();
  set_num_threads(2);
  Tensor e2 = exp(x) * x + x.sin();
  Tensor s2 = sum(i);
  EXPECT_TRUE(equal(e1, e2));
  EXPECT_EQ(s1.item<int64_t>(), s2.item<int64_t>());
  EXPECT_TRUE(equal(c1, x));
}

}  // namespace
