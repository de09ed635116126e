// Intra-op parallelism.
#pragma once

#include <cstdint>
#include <functional>

namespace loom {

// Threads used by loom's kernels (OpenMP). Defaults to the hardware count.
void set_num_threads(int n);
int get_num_threads();

// Calls fn(begin, end) over chunks of [begin, end) on the thread pool. Ranges
// shorter than `grain_size` run on the calling thread, so tiny tensors never
// pay for a fork. fn must not throw across threads: parallel_for catches the
// first exception and rethrows it on the calling thread.
void parallel_for(int64_t begin, int64_t end, int64_t grain_size,
                  const std::function<void(int64_t, int64_t)>& fn);

}  // namespace loom
