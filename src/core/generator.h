// The global random state: one Philox (counter-based) stream per process.
//
// Note [Counter-based random numbers]
// A random op does not advance a sequential generator element by element.
// It reserves a block of `n` counters up front (philox_reserve) and element k
// of its output uses counter `offset + k` under key `seed`. Any thread can
// compute any element on its own, so the values depend only on (seed, how
// many draws came before) and never on the thread count or the backend.
#pragma once

#include <cstdint>
#include <utility>

namespace loom {

// PyTorch's default seed, so an unseeded program starts from a known state.
inline constexpr uint64_t kDefaultSeed = 67280421310721ULL;

// Returns (seed, offset) for an op that draws `n` values, and advances the
// global offset past them (rounded up to a multiple of 4, the number of
// 32-bit words one Philox round yields). Thread-safe.
std::pair<uint64_t, uint64_t> philox_reserve(uint64_t n);

// Resets the stream: seed = `seed`, offset = 0 (loom::manual_seed).
void generator_set_seed(uint64_t seed);
uint64_t generator_seed();
// The whole state (seed, offset), for checkpoints.
std::pair<uint64_t, uint64_t> generator_state();
void generator_set_state(uint64_t seed, uint64_t offset);

}  // namespace loom
