// parallel_for, parallel_team, concurrent callers and the thread-count controls.
#include <gtest/gtest.h>
#include <loom/loom.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <string>
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

// Waits until pred() holds, giving up after a generous time so that a broken
// pool fails the test instead of hanging it. Returns whether pred() held.
template <class Pred>
bool wait_until(const Pred& pred) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  return true;
}

// The sum of i over [begin, end), computed by parallel_for into one slot per chunk.
int64_t parallel_sum(int64_t begin, int64_t end, int64_t grain) {
  std::mutex mu;
  int64_t total = 0;
  parallel_for(begin, end, grain, [&](int64_t lo, int64_t hi) {
    int64_t s = 0;
    for (int64_t i = lo; i < hi; ++i) s += i;
    std::lock_guard<std::mutex> guard(mu);
    total += s;
  });
  return total;
}

TEST(Threads, ConcurrentCallersAllCompleteCorrectly) {
  ThreadCountGuard guard;
  set_num_threads(3);
  constexpr int kCallers = 6, kRounds = 200;
  std::atomic<int> wrong{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < kCallers; ++c) {
    callers.emplace_back([&, c] {
      for (int r = 0; r < kRounds; ++r) {
        const int64_t begin = c * 1000 + r, end = begin + 20000 + 37 * c;
        const int64_t expect = (begin + end - 1) * (end - begin) / 2;
        if (parallel_sum(begin, end, 100) != expect) ++wrong;
        // Every team id exactly once, whoever runs it.
        std::vector<std::atomic<int>> seen(5);
        parallel_team(5, [&](int id, int team) {
          if (team != 5) ++wrong;
          seen[static_cast<size_t>(id)]++;
        });
        for (auto& s : seen) wrong += s.load() != 1;
      }
    });
  }
  for (auto& t : callers) t.join();
  EXPECT_EQ(wrong.load(), 0);
}

TEST(Threads, ConcurrentOpsMatchTheSerialResult) {
  ThreadCountGuard guard;
  set_num_threads(2);
  Tensor x = rand({1 << 18});
  const Tensor expect = exp(x).sin() * x;
  const Tensor expect_sum = sum(expect);
  std::atomic<int> mismatches{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < 4; ++c) {
    callers.emplace_back([&] {
      for (int r = 0; r < 20; ++r) {
        Tensor y = exp(x).sin() * x;
        if (!equal(y, expect) || !equal(sum(y), expect_sum)) ++mismatches;
      }
    });
  }
  for (auto& t : callers) t.join();
  EXPECT_EQ(mismatches.load(), 0);
}

// Caller A's job holds its own thread and one worker until B is done; B's
// id 0 waits (on B's thread) for id 1 to start. B can only finish in time if
// the other free worker helps it while the pool is busy with A: running B
// alone would start id 1 only after id 0 gave up.
TEST(Threads, SecondConcurrentCallerGetsHelp) {
  ThreadCountGuard guard;
  set_num_threads(3);
  parallel_team(3, [](int, int) {});  // the pool now has two workers
  std::atomic<int> a_started{0};
  std::atomic<bool> b_done{false}, b_id1_started{false};
  std::atomic<bool> a_gave_up{false}, b_gave_up{false};
  std::thread::id b_thread, b_id1_thread;
  std::thread a([&] {
    parallel_team(2, [&](int, int) {
      ++a_started;
      if (!wait_until([&] { return b_done.load(); })) a_gave_up = true;
    });
  });
  ASSERT_TRUE(wait_until([&] { return a_started.load() == 2; })) << "caller A never had both ids running";
  std::thread b([&] {
    b_thread = std::this_thread::get_id();
    parallel_team(2, [&](int id, int) {
      if (id == 1) {
        b_id1_thread = std::this_thread::get_id();
        b_id1_started = true;
      } else if (!wait_until([&] { return b_id1_started.load(); })) {
        b_gave_up = true;
      }
    });
    b_done = true;
  });
  b.join();
  a.join();
  EXPECT_FALSE(b_gave_up) << "caller B's id 1 did not run while its id 0 did";
  EXPECT_NE(b_id1_thread, b_thread);
  EXPECT_FALSE(a_gave_up);
}

TEST(Threads, ExceptionsGoToTheirOwnCaller) {
  ThreadCountGuard guard;
  set_num_threads(3);
  constexpr int kCallers = 4;
  std::atomic<int> wrong{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < kCallers; ++c) {
    callers.emplace_back([&, c] {
      const std::string mine = "caller " + std::to_string(c);
      for (int r = 0; r < 100; ++r) {
        try {
          // Caller c's last chunk throws; the others succeed.
          parallel_for(0, 4000, 100, [&](int64_t, int64_t hi) {
            if (hi == 4000) throw std::runtime_error(mine);
          });
          ++wrong;
        } catch (const std::runtime_error& e) {
          if (e.what() != mine) ++wrong;
        }
        // A caller whose fn does not throw sees no exception.
        try {
          parallel_for(0, 4000, 100, [](int64_t, int64_t) {});
        } catch (...) {
          ++wrong;
        }
      }
    });
  }
  for (auto& t : callers) t.join();
  EXPECT_EQ(wrong.load(), 0);
}

TEST(Threads, NestedCallsFromConcurrentCallers) {
  ThreadCountGuard guard;
  set_num_threads(3);
  constexpr int kCallers = 3;
  std::vector<std::vector<std::atomic<int>>> hits(kCallers);
  for (auto& h : hits) h = std::vector<std::atomic<int>>(50 * 400);
  std::atomic<int> outside{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < kCallers; ++c) {
    callers.emplace_back([&, c] {
      parallel_for(0, 50, 1, [&](int64_t lo, int64_t hi) {
        // Every chunk, on a worker or on its caller, is inside a parallel call.
        if (!in_parallel_region()) ++outside;
        for (int64_t r = lo; r < hi; ++r)
          parallel_for(0, 400, 10, [&](int64_t a, int64_t b) {
            for (int64_t k = a; k < b; ++k) hits[c][static_cast<size_t>(r * 400 + k)]++;
          });
      });
    });
  }
  for (auto& t : callers) t.join();
  EXPECT_EQ(outside.load(), 0);
  for (int c = 0; c < kCallers; ++c) {
    int64_t wrong = 0;
    for (auto& h : hits[c]) wrong += h.load() != 1;
    EXPECT_EQ(wrong, 0) << "caller " << c;
  }
}

// The chunks of a call are the same whether the caller runs alone or beside
// other callers: they depend on the range and get_num_threads() only.
TEST(Threads, ChunksDoNotDependOnOtherCallers) {
  ThreadCountGuard guard;
  set_num_threads(3);
  auto chunks_of = [] {
    std::mutex mu;
    std::set<std::pair<int64_t, int64_t>> chunks;
    parallel_for(5, 100005, 1000, [&](int64_t lo, int64_t hi) {
      std::lock_guard<std::mutex> g(mu);
      chunks.emplace(lo, hi);
    });
    return chunks;
  };
  const auto alone = chunks_of();
  EXPECT_EQ(alone.size(), 3u);
  std::atomic<bool> stop{false};
  std::thread busy([&] {
    while (!stop) parallel_for(0, 100000, 100, [](int64_t, int64_t) {});
  });
  bool same = true;
  for (int r = 0; r < 100; ++r) same = same && chunks_of() == alone;
  stop = true;
  busy.join();
  EXPECT_TRUE(same);
}

TEST(Threads, SetNumThreadsBetweenCalls) {
  ThreadCountGuard guard;
  for (int threads : {4, 2, 1, 3}) {
    set_num_threads(threads);
    EXPECT_EQ(get_num_threads(), threads);
    std::mutex mu;
    std::vector<int> ids;
    parallel_team(get_num_threads(), [&](int id, int team) {
      EXPECT_EQ(team, threads);
      std::lock_guard<std::mutex> g(mu);
      ids.push_back(id);
    });
    std::sort(ids.begin(), ids.end());
    std::vector<int> expect(static_cast<size_t>(threads));
    for (int k = 0; k < threads; ++k) expect[static_cast<size_t>(k)] = k;
    EXPECT_EQ(ids, expect);
    // parallel_for uses the new count as its chunk count.
    std::atomic<int> chunks{0};
    parallel_for(0, 100000, 10, [&](int64_t, int64_t) { ++chunks; });
    EXPECT_EQ(chunks.load(), threads);
  }
}

TEST(Threads, TeamIdZeroRunsOnTheCaller) {
  ThreadCountGuard guard;
  set_num_threads(4);
  const std::thread::id me = std::this_thread::get_id();
  for (int r = 0; r < 50; ++r) {
    std::thread::id id0;
    parallel_team(4, [&](int id, int) {
      if (id == 0) id0 = std::this_thread::get_id();
    });
    ASSERT_EQ(id0, me);
  }
}

}  // namespace
