// Intra-op parallelism.
#pragma once

#include <cstdint>
#include <functional>

namespace loom {

// Threads used by loom's kernels: a persistent pool of get_num_threads() - 1
// workers plus the calling thread (Note [Thread pool] in src/core/threads.cpp).
// Defaults to OpenMP's count: the hardware count, or OMP_NUM_THREADS.
void set_num_threads(int n);
int get_num_threads();

// Runs fn(id, team) once for each id in [0, team), id 0 on the calling thread,
// and returns when all have finished: for kernels that deal out work by id
// themselves (the GEMM). Any number of user threads may call at once; they
// share the pool's workers, and each caller also runs ids of its own call.
// Which thread runs which id, and whether ids overlap in time, is not fixed
// (inside another parallel call, or beyond the pool's job slots, they all run
// one after the other on the calling thread, inside a parallel region), so results must depend only on `team` and no id may wait
// for another. fn may throw: the first exception is rethrown on the calling
// thread.
void parallel_team(int team, const std::function<void(int id, int team)>& fn);

// Is the calling thread inside a parallel call (a pool worker, or a caller
// running its own share)? Kernels then stay on one thread.
bool in_parallel_region();

// Calls fn(begin, end) over chunks of [begin, end) on the thread pool, safe to
// call from many threads at once. The chunks depend only on the range,
// `grain_size` and get_num_threads(). Ranges shorter than `grain_size` run on
// the calling thread, so tiny tensors never pay for a fork. fn must not throw across threads: parallel_for catches the
// first exception and rethrows it on the calling thread.
void parallel_for(int64_t begin, int64_t end, int64_t grain_size,
                  const std::function<void(int64_t, int64_t)>& fn);

}  // namespace loom
