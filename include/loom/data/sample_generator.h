// SampleGenerator: the small random stream behind shuffling, random_split and
// random transforms.
//
// Note [Data randomness is keyed, not sequential]
// A DataLoader with worker threads builds batches in whatever order the
// threads happen to run. If random transforms drew from one shared sequential
// generator (such as loom's global one), which example got which draw would
// depend on that interleaving. Instead every random decision comes from a
// fresh stream keyed by what it is about: the shuffle of epoch e by
// (seed, e), the transform of example i in epoch e by (seed, e, i). The same
// seed then gives bitwise the same batches for any worker count, and resuming
// at epoch e replays epoch e exactly. The global loom generator is never
// touched, so loading data does not shift the draws of model initialisation
// or dropout.
//
// The stream itself is SplitMix64 (Steele, Lea, Flood 2014): 64 bits of state,
// statistically good for this use, and trivially keyed by hashing the key
// into the state.
#pragma once

#include <cstdint>
#include <vector>

namespace loom::data {

class SampleGenerator {
 public:
  explicit SampleGenerator(uint64_t seed) : state_(seed) {}

  // The stream for the transform of example `index` (a dataset index) in
  // epoch `epoch` of a loader seeded with `seed`.
  static SampleGenerator for_example(uint64_t seed, int64_t epoch, int64_t index);
  // The stream a loader seeded with `seed` shuffles epoch `epoch` with.
  static SampleGenerator for_shuffle(uint64_t seed, int64_t epoch);
  // The stream random_split permutes with.
  static SampleGenerator for_split(uint64_t seed);

  uint64_t next_u64();
  // Uniform in [0, 1) with 53 random bits.
  double uniform();
  // Uniform integer in [low, high), without modulo bias; high > low.
  int64_t randint(int64_t low, int64_t high);
  // True with probability p.
  bool bernoulli(double p) { return uniform() < p; }
  // A uniformly random permutation of 0..n-1 (Fisher-Yates).
  std::vector<int64_t> permutation(int64_t n);

 private:
  uint64_t state_;
};

}  // namespace loom::data
