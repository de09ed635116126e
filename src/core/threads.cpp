// Intra-op parallelism: loom's own small persistent thread pool.
//
// Note [Thread pool]
// loom runs its parallel loops on a pool of get_num_threads() - 1 persistent
// workers plus the calling thread, not on OpenMP parallel regions. The
// reason is how threads wait between and inside parallel calls. libgomp
// spins for a long time (its default GOMP_SPINCOUNT, read from the
// environment when the library loads, so loom cannot change it) before a
// thread sleeps. On a machine whose cores are shared with other processes
// (2 cores, several builds) a spinning thread uses up its share of the core
// and is then descheduled exactly when work arrives: a 2-thread region of
// ~20 us of work measured 2.4 ms per call there with the default policy and
// 0.18 ms with OMP_WAIT_POLICY=passive; the pool, sleeping after a short
// spin, measured 0.03-0.3 ms in the same conditions (the numbers swing with
// the load). A woken sleeper is scheduled promptly, which is what a loaded
// machine needs; on an idle machine the short spin (kSpinMicros, about a
// futex wake-up) still catches back-to-back calls without a system call.
// Waits sleep on a futex (std::atomic::wait); the caller waits for its
// helpers the same way.
//
// One parallel call runs at a time: a call made while the pool is busy (from
// another user thread, or nested inside a parallel call) runs on its calling
// thread alone. Work is always split by the requested team size, never by
// which threads happen to help, so results do not change.
#include "loom/threads.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "loom/error.h"

namespace loom {

namespace {

// 0 means "not set": use OpenMP's default (the hardware count or OMP_NUM_THREADS).
std::atomic<int> g_num_threads{0};

// How long a helper (or the caller) spins before it sleeps: covers the gap
// between kernels of one step without burning a shared core for long.
constexpr auto kSpinMicros = std::chrono::microseconds(10);

// True on a pool worker, and on a caller while it runs its own share: a
// parallel call from there runs inline.
thread_local bool t_in_parallel = false;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Spins up to kSpinMicros while `value` still reads `old`, then sleeps until
// it changes. Returns the new value.
template <typename T>
T wait_for_change(const std::atomic<T>& value, T old) {
  const auto deadline = std::chrono::steady_clock::now() + kSpinMicros;
  for (int spins = 0;; ++spins) {
    const T v = value.load(std::memory_order_acquire);
    if (v != old) return v;
    if ((spins & 63) == 63 && std::chrono::steady_clock::now() > deadline) break;
    cpu_relax();
  }
  for (;;) {
    value.wait(old, std::memory_order_acquire);
    const T v = value.load(std::memory_order_acquire);
    if (v != old) return v;
  }
}

class ThreadPool {
 public:
  // Runs fn(id, team) for id in [0, team), id 0 on the calling thread.
  // Returns false (running nothing) when the pool is busy or the team too large.
  bool run(int team, const std::function<void(int, int)>& fn) {
    if (team > kMaxTeam) return false;  // the team size must fit its field of state_
    std::unique_lock<std::mutex> lock(call_mutex_, std::try_to_lock);
    if (!lock.owns_lock()) return false;
    grow(team - 1);
    job_ = &fn;
    first_error_ = nullptr;
    pending_.store(team - 1, std::memory_order_relaxed);
    // Publish the job with its team size in one word, so a helper that is
    // not needed never reads anything the next job overwrites; release
    // orders the writes above before it.
    const uint64_t generation = (state_.load(std::memory_order_relaxed) >> 16) + 1;
    state_.store(generation << 16 | static_cast<uint64_t>(team), std::memory_order_release);
    state_.notify_all();

    t_in_parallel = true;
    try {
      fn(0, team);
    } catch (...) {
      record_error();
    }
    t_in_parallel = false;
    // Wait for the helpers.
    for (int left = pending_.load(std::memory_order_acquire); left != 0;)
      left = wait_for_change(pending_, left);
    job_ = nullptr;
    if (first_error_) std::rethrow_exception(first_error_);
    return true;
  }

 private:
  // Workers are started on first need and live until the process ends
  // (the pool is never destroyed, so exit never waits on a sleeping worker).
  void grow(int helpers) {
    while (static_cast<int>(workers_) < helpers) {
      const int id = static_cast<int>(++workers_);
      std::thread([this, id, seen = state_.load(std::memory_order_acquire)]() mutable {
        t_in_parallel = true;
        for (;;) {
          seen = wait_for_change(state_, seen);
          const int team = static_cast<int>(seen & 0xffff);
          if (id >= team) continue;  // not needed this time
          try {
            (*job_)(id, team);
          } catch (...) {
            record_error();
          }
          if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) pending_.notify_one();
        }
      }).detach();
    }
  }

  void record_error() {
    std::lock_guard<std::mutex> guard(error_mutex_);
    if (!first_error_) first_error_ = std::current_exception();
  }

  std::mutex call_mutex_;  // one parallel call at a time
  size_t workers_ = 0;     // guarded by call_mutex_
  static constexpr int kMaxTeam = 0xffff;
  // The current job, written by the caller before state_ moves; read only
  // by the helpers it needs, which the caller waits for.
  const std::function<void(int, int)>* job_ = nullptr;
  std::atomic<uint64_t> state_{0};  // generation << 16 | team size
  std::atomic<int> pending_{0};     // needed helpers still running the current job
  std::mutex error_mutex_;
  std::exception_ptr first_error_;
};

ThreadPool& pool() {
  static ThreadPool* p = new ThreadPool();  // never destroyed: see grow()
  return *p;
}

}  // namespace

void set_num_threads(int n) {
  LOOM_CHECK(n >= 1, "set_num_threads: expected a positive number of threads, got ", n);
  g_num_threads.store(n, std::memory_order_relaxed);
}

int get_num_threads() {
  int n = g_num_threads.load(std::memory_order_relaxed);
  return n > 0 ? n : std::max(1, omp_get_max_threads());
}

bool in_parallel_region() { return t_in_parallel || omp_in_parallel(); }

void parallel_team(int team, const std::function<void(int, int)>& fn) {
  team = std::max(1, team);
  if (team == 1 || in_parallel_region() || !pool().run(team, fn)) {
    // Inline: the same ids, one after the other.
    for (int id = 0; id < team; ++id) fn(id, team);
  }
}

void parallel_for(int64_t begin, int64_t end, int64_t grain_size,
                  const std::function<void(int64_t, int64_t)>& fn) {
  if (begin >= end) return;
  const int64_t n = end - begin;
  const int64_t grain = std::max<int64_t>(grain_size, 1);
  // Never more chunks than grains, so each thread gets at least `grain` items.
  const int64_t max_chunks = (n + grain - 1) / grain;
  const int threads = static_cast<int>(std::min<int64_t>(get_num_threads(), max_chunks));
  // A parallel_for inside a parallel call (a kernel called from a parallel
  // loop) runs inline rather than oversubscribing the cores.
  if (n <= grain || threads <= 1 || in_parallel_region()) {
    fn(begin, end);
    return;
  }
  const int64_t chunk = (n + threads - 1) / threads;
  parallel_team(threads, [&](int id, int) {
    const int64_t lo = begin + id * chunk, hi = std::min(end, lo + chunk);
    if (lo < hi) fn(lo, hi);
  });
}

}  // namespace loom
