// The reference for bench_ops.cpp's dispatch_add and dispatch_add_autograd:
// the same 10-float add through libtorch's C++ API, which bench/run.py sets
// against loom's. Python would add its own interpreter cost; this does not.
//
//   torch_dispatch --threads N [--repetitions R] [--min-time S]
//
// Prints one JSON object: {"torch": version, "threads": n, "results":
// {name: {"median_s": t, "times_s": [...]}}}, each time the mean seconds per
// call of one repetition (as Google Benchmark and torch_ops.py report them).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/version.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

// Mean seconds per call of c = a + b over a run of at least `min_time`
// seconds. The inputs live outside; the result is made and freed each call.
double time_repetition(const at::Tensor& a, const at::Tensor& b, double min_time) {
  for (int64_t iters = 1;; iters *= 2) {
    const auto start = Clock::now();
    for (int64_t i = 0; i < iters; ++i) {
      at::Tensor c = a + b;
      // Keep the call from being dropped; the handle is never null.
      if (!c.defined()) std::abort();
    }
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    if (elapsed >= min_time) return elapsed / static_cast<double>(iters);
  }
}

// {"median_s": m, "times_s": [...]} over `repetitions` timed runs.
std::string timing_json(const at::Tensor& a, const at::Tensor& b, int repetitions, double min_time) {
  time_repetition(a, b, 0.05);  // warm-up: allocator caches, first-call setup
  std::vector<double> times;
  for (int r = 0; r < repetitions; ++r) times.push_back(time_repetition(a, b, min_time));
  std::vector<double> sorted = times;
  std::sort(sorted.begin(), sorted.end());
  const size_t mid = sorted.size() / 2;
  const double median = sorted.size() % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  char buf[64];
  std::snprintf(buf, sizeof buf, "{\"median_s\": %.6e, \"times_s\": [", median);
  std::string json = buf;
  for (size_t k = 0; k < times.size(); ++k) {
    std::snprintf(buf, sizeof buf, "%s%.6e", k ? ", " : "", times[k]);
    json += buf;
  }
  return json + "]}";
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 1, repetitions = 5;
  double min_time = 0.2;
  for (int k = 1; k + 1 < argc; k += 2) {
    if (std::strcmp(argv[k], "--threads") == 0)
      threads = std::atoi(argv[k + 1]);
    else if (std::strcmp(argv[k], "--repetitions") == 0)
      repetitions = std::atoi(argv[k + 1]);
    else if (std::strcmp(argv[k], "--min-time") == 0)
      min_time = std::atof(argv[k + 1]);
    else {
      std::fprintf(stderr, "usage: %s --threads N [--repetitions R] [--min-time S]\n", argv[0]);
      return 2;
    }
  }
  at::set_num_threads(threads);
  at::Tensor a = at::rand({10}), b = at::rand({10});
  const std::string plain = timing_json(a, b, repetitions, min_time);
  // Grad mode is on (libtorch's default): with both inputs requiring grad,
  // every add records an AddBackward node, freed with its result.
  a.set_requires_grad(true);
  b.set_requires_grad(true);
  const std::string autograd = timing_json(a, b, repetitions, min_time);
  std::printf("{\"torch\": \"%s\", \"threads\": %d, \"results\": "
              "{\"dispatch_add\": %s, \"dispatch_add_autograd\": %s}}\n",
              TORCH_VERSION, at::get_num_threads(), plain.c_str(), autograd.c_str());
  return 0;
}
