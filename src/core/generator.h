// Random streams: loom::Generator (include/loom/generator.h) and the global
// one behind default_generator() and manual_seed.
//
// Note [Counter-based random numbers]
// A random op does not advance a sequential generator element by element.
// It reserves a block of `n` counters up front (philox_reserve) and element k
// of its output uses counter `offset + k` under key `seed`. Any thread can
// compute any element on its own, so the values depend only on (seed, how
// many draws came before) and never on the thread count or the backend. A
// generator is therefore just (seed, offset) behind a mutex; each op that is
// handed one reserves from it instead of from the global stream.
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <utility>

#include "loom/generator.h"

namespace loom {

// PyTorch's default seed, so an unseeded program starts from a known state.
inline constexpr uint64_t kDefaultSeed = 67280421310721ULL;

namespace detail {
// The stream a Generator handle shares.
struct GeneratorState {
  std::mutex mu;
  uint64_t seed = kDefaultSeed;
  uint64_t offset = 0;
};
}  // namespace detail

// Returns (seed, offset) for an op that draws `n` values from `generator`
// (the global stream when none is given), and advances that stream's offset
// past them (rounded up to a multiple of 4, the number of 32-bit words one
// Philox round yields). Thread-safe.
std::pair<uint64_t, uint64_t> philox_reserve(uint64_t n, const std::optional<Generator>& generator = std::nullopt);

// Sees every reservation made on this thread while installed: `before` is
// the stream's state the reservation starts from. loom::checkpoint's forward
// pass installs one to learn which explicit generators its region draws from
// (src/autograd/checkpoint.cpp). Watchers nest: every installed one sees
// each reservation.
class RngWatcher {
 public:
  virtual ~RngWatcher() = default;
  // `generator` is null for the global stream.
  virtual void on_reserve(const Generator* generator, const RngState& before) = 0;
};
class RngWatchGuard {
 public:
  explicit RngWatchGuard(RngWatcher* watcher);
  ~RngWatchGuard();
  RngWatchGuard(const RngWatchGuard&) = delete;
  RngWatchGuard& operator=(const RngWatchGuard&) = delete;
};

}  // namespace loom
