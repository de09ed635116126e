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
// Many callers share the pool. Each top-level call (from any user thread: a
// server's request threads, concurrent nodes of a graph) takes a job slot,
// publishes its team ids there and runs id 0 itself. Idle workers claim ids
// one at a time from every slot that has some left, each worker scanning the
// slots round-robin from where it last found work, so concurrent jobs get
// helpers in turn rather than first come, first served. The caller goes on
// claiming ids of its own job (never another's, so its return is not held up
// by someone else's chunk) and returns when all of them have finished. A job
// therefore always completes even when no worker is free, and a second caller
// gets helpers while the pool also works for the first. A claim is one
// compare-exchange on the slot's (generation, next id, team) word: no lock
// and no allocation on the way, and a worker that read a finished job's word
// fails its claim on the changed generation. More than kMaxJobs concurrent
// calls, a team too large for the word, or a call nested inside a parallel
// call (on a worker, or in a caller's own share) run inline on the calling
// thread.
//
// Work is always split by the requested team size (parallel_for: by
// get_num_threads() and the range), never by which threads happen to help,
// and ids never wait on each other (the GEMM gives each id its own packing
// space), so running some or all ids on the caller gives the same results.
#include "loom/threads.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <utility>

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

// One top-level parallel call in flight: its team ids are claimed one at a
// time, by its caller and by any idle worker (Note [Thread pool]). Slots
// belong to the pool and are never freed, so a worker that looks at a slot
// after its caller returned reads stale but valid memory, and its claim
// fails on the changed generation.
struct alignas(64) JobSlot {
  // generation << 32 | next unclaimed id << 16 | team size. A claim is one
  // compare-exchange that adds 1 << 16 while next < team, so it can only
  // succeed for the generation its claimer read.
  std::atomic<uint64_t> claim{0};
  std::atomic<int> done{0};         // ids of this job finished
  std::atomic<bool> busy{false};    // owned by a caller
  const std::function<void(int, int)>* fn = nullptr;  // written before claim is published
  std::mutex error_mutex;
  std::exception_ptr first_error;

  static constexpr int team_of(uint64_t w) { return static_cast<int>(w & 0xffff); }
  static constexpr int next_of(uint64_t w) { return static_cast<int>((w >> 16) & 0xffff); }

  // Claims the next unclaimed id of the job in this slot, starting from the
  // word `seen` read before; -1 when every id is taken. On success `seen`
  // holds the word the claim replaced, so team_of(seen) is the job's team.
  int try_claim(uint64_t& seen) {
    for (;;) {
      if (next_of(seen) >= team_of(seen)) return -1;
      if (claim.compare_exchange_weak(seen, seen + (uint64_t{1} << 16), std::memory_order_acq_rel,
                                      std::memory_order_acquire))
        return next_of(seen);
    }
  }

  void run_id(int id, int team) {
    try {
      (*fn)(id, team);
    } catch (...) {
      std::lock_guard<std::mutex> guard(error_mutex);
      if (!first_error) first_error = std::current_exception();
    }
    // The last id wakes the caller; the slot outlives the notify (see above).
    if (done.fetch_add(1, std::memory_order_acq_rel) + 1 == team) done.notify_one();
  }
};

class ThreadPool {
 public:
  // Runs fn(id, team) for id in [0, team), id 0 on the calling thread, with
  // idle workers helping. Returns false (running nothing) when the team is
  // too large or every job slot is taken.
  bool run(int team, const std::function<void(int, int)>& fn) {
    if (team > kMaxTeam) return false;  // the team size must fit its field of JobSlot::claim
    JobSlot* slot = acquire_slot();
    if (slot == nullptr) return false;
    grow(team - 1);
    slot->fn = &fn;
    slot->done.store(0, std::memory_order_relaxed);
    // Publish with id 0 already claimed: the caller runs it, as kernels
    // that keep per-thread state on the caller expect. release orders the
    // writes above before it.
    const uint64_t generation = (slot->claim.load(std::memory_order_relaxed) >> 32) + 1;
    slot->claim.store(generation << 32 | uint64_t{1} << 16 | static_cast<uint64_t>(team), std::memory_order_release);
    epoch_.fetch_add(1, std::memory_order_release);
    epoch_.notify_all();

    // The caller's share: id 0, then whatever ids no worker has taken yet.
    t_in_parallel = true;
    slot->run_id(0, team);
    for (uint64_t seen = slot->claim.load(std::memory_order_acquire);;) {
      const int id = slot->try_claim(seen);
      if (id < 0) break;
      slot->run_id(id, team);
    }
    t_in_parallel = false;
    // Wait for the ids workers took.
    for (int d = slot->done.load(std::memory_order_acquire); d != team;) d = wait_for_change(slot->done, d);
    std::exception_ptr error = std::exchange(slot->first_error, nullptr);
    slot->fn = nullptr;
    slot->busy.store(false, std::memory_order_release);
    if (error) std::rethrow_exception(error);
    return true;
  }

 private:
  static constexpr int kMaxTeam = 0xffff;
  // Concurrent top-level calls beyond this many run inline: correct, only
  // without help.
  static constexpr int kMaxJobs = 64;

  JobSlot* acquire_slot() {
    for (int s = 0; s < kMaxJobs; ++s) {
      bool expected = false;
      // A relaxed look first keeps callers from fighting over a taken slot's line.
      if (slots_[s].busy.load(std::memory_order_relaxed)) continue;
      if (!slots_[s].busy.compare_exchange_strong(expected, true, std::memory_order_acquire)) continue;
      // Workers scan slots [0, slots_used_).
      int used = slots_used_.load(std::memory_order_relaxed);
      while (used < s + 1 && !slots_used_.compare_exchange_weak(used, s + 1, std::memory_order_release)) {
      }
      return &slots_[s];
    }
    return nullptr;
  }

  // Claims one id from some job, scanning the slots round-robin from
  // `cursor` so that concurrent jobs share the workers, and runs it.
  // Returns false when no job has an unclaimed id.
  bool help_once(int& cursor) {
    const int used = slots_used_.load(std::memory_order_acquire);
    for (int k = 0; k < used; ++k) {
      const int s = (cursor + k) % used;
      JobSlot& slot = slots_[s];
      uint64_t seen = slot.claim.load(std::memory_order_acquire);
      const int id = slot.try_claim(seen);
      if (id < 0) continue;
      cursor = s + 1;
      slot.run_id(id, JobSlot::team_of(seen));
      return true;
    }
    return false;
  }

  // Workers are started on first need and live until the process ends
  // (the pool is never destroyed, so exit never waits on a sleeping worker).
  void grow(int helpers) {
    if (workers_.load(std::memory_order_acquire) >= helpers) return;
    std::lock_guard<std::mutex> lock(grow_mutex_);
    while (workers_.load(std::memory_order_relaxed) < helpers) {
      const int index = workers_.fetch_add(1, std::memory_order_release);
      std::thread([this, cursor = index]() mutable {
        t_in_parallel = true;
        for (;;) {
          // Read the epoch before looking for work: a job posted after the
          // look moves the epoch, so the wait below returns at once.
          const uint32_t seen = epoch_.load(std::memory_order_acquire);
          while (help_once(cursor)) {
          }
          wait_for_change(epoch_, seen);
        }
      }).detach();
    }
  }

  JobSlot slots_[kMaxJobs];
  std::atomic<int> slots_used_{0};  // slots ever handed out: [0, slots_used_)
  std::atomic<uint32_t> epoch_{0};  // moves on every posted job; sleeping workers wait on it
  std::atomic<int> workers_{0};
  std::mutex grow_mutex_;
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
    // Inline: the same ids, one after the other, each inside a parallel
    // region as on the pool, so what fn calls stays on this thread (a
    // kernel sizes its per-id scratch for that).
    const bool was = t_in_parallel;
    t_in_parallel = team > 1 || was;
    struct Restore {
      bool was;
      ~Restore() { t_in_parallel = was; }
    } restore{was};
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
