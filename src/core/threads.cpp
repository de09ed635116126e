// Intra-op parallelism on OpenMP.
#include "loom/threads.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>

#include "loom/error.h"

namespace loom {

namespace {
// 0 means "not set": use OpenMP's default (the hardware count or OMP_NUM_THREADS).
std::atomic<int> g_num_threads{0};
}  // namespace

void set_num_threads(int n) {
  LOOM_CHECK(n >= 1, "set_num_threads: expected a positive number of threads, got ", n);
  g_num_threads.store(n, std::memory_order_relaxed);
}

int get_num_threads() {
  int n = g_num_threads.load(std::memory_order_relaxed);
  return n > 0 ? n : std::max(1, omp_get_max_threads());
}

void parallel_for(int64_t begin, int64_t end, int64_t grain_size,
                  const std::function<void(int64_t, int64_t)>& fn) {
  if (begin >= end) return;
  const int64_t n = end - begin;
  const int64_t grain = std::max<int64_t>(grain_size, 1);
  // Never more chunks than grains, so each thread gets at least `grain` items.
  const int64_t max_chunks = (n + grain - 1) / grain;
  const int threads = static_cast<int>(std::min<int64_t>(get_num_threads(), max_chunks));
  // Nested parallel regions would oversubscribe the cores: an inner
  // parallel_for (a kernel called from a parallel loop) runs inline.
  if (n <= grain || threads <= 1 || omp_in_parallel()) {
    fn(begin, end);
    return;
  }

  std::exception_ptr first_error;
  std::mutex error_mutex;
  const int64_t chunk = (n + threads - 1) / threads;
#pragma omp parallel num_threads(threads)
  {
    // OpenMP may grant fewer threads than asked (OMP_DYNAMIC, thread limits):
    // stepping by the team size still covers every chunk.
    for (int64_t c = omp_get_thread_num(); c < threads; c += omp_get_num_threads()) {
      const int64_t lo = begin + c * chunk, hi = std::min(end, lo + chunk);
      if (lo >= hi) continue;
      try {
        fn(lo, hi);
      } catch (...) {
        // An exception may not leave an OpenMP region: keep the first one.
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!first_error) first_error = std::current_exception();
      }
    }
  }
  if (first_error) std::rethrow_exception(first_error);
}

}  // namespace loom
