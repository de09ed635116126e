// splitmix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number
// generators", 2014): a 64-bit hash that turns a counter or a seed into a
// well-mixed word. Small seeded streams that must not touch a Philox
// generator use it: GPT/LSTM sampling (src/models/gpt.cpp), the next-token
// batches keyed by (seed, step) (src/data/text.cpp) and the GPT parity
// benchmark's batches (bench/gpt_parity.cpp, mirrored in Python).
#pragma once

#include <cstdint>

namespace loom {

inline constexpr uint64_t kSplitmix64Gamma = 0x9E3779B97F4A7C15ull;

// The mix of x + gamma: a pure function (no state).
inline uint64_t splitmix64(uint64_t x) {
  x += kSplitmix64Gamma;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// The classic stream: the next draw from `state`, which advances by gamma.
inline uint64_t splitmix64_next(uint64_t& state) {
  const uint64_t draw = splitmix64(state);
  state += kSplitmix64Gamma;
  return draw;
}

}  // namespace loom
