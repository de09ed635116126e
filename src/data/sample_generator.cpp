// SampleGenerator: keyed SplitMix64 streams (Note [Data randomness is keyed,
// not sequential] in loom/data/sample_generator.h).
#include "loom/data/sample_generator.h"

#include <numeric>
#include <utility>

#include "loom/error.h"

namespace loom::data {

namespace {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ULL;

// SplitMix64's output function: a bijective mix of 64 bits.
uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Folds the key words into one state, each through the mixer so that nearby
// keys ((s, e, i) and (s, e, i + 1)) give unrelated streams. Different uses
// start from different tags so their streams never coincide.
uint64_t derive(uint64_t tag, uint64_t seed, uint64_t a = 0, uint64_t b = 0) {
  uint64_t h = mix64(tag * kGolden + 1);
  h = mix64(h ^ seed);
  h = mix64(h ^ (a + kGolden));
  h = mix64(h ^ (b + 2 * kGolden));
  return h;
}

enum Tag : uint64_t { kTagExample = 1, kTagShuffle = 2, kTagSplit = 3 };

}  // namespace

SampleGenerator SampleGenerator::for_example(uint64_t seed, int64_t epoch, int64_t index) {
  return SampleGenerator(derive(kTagExample, seed, static_cast<uint64_t>(epoch), static_cast<uint64_t>(index)));
}

SampleGenerator SampleGenerator::for_shuffle(uint64_t seed, int64_t epoch) {
  return SampleGenerator(derive(kTagShuffle, seed, static_cast<uint64_t>(epoch)));
}

SampleGenerator SampleGenerator::for_split(uint64_t seed) { return SampleGenerator(derive(kTagSplit, seed)); }

uint64_t SampleGenerator::next_u64() {
  state_ += kGolden;
  return mix64(state_);
}

double SampleGenerator::uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }

int64_t SampleGenerator::randint(int64_t low, int64_t high) {
  LOOM_CHECK(high > low, "SampleGenerator::randint: empty range [", low, ", ", high, ")");
  const uint64_t range = static_cast<uint64_t>(high) - static_cast<uint64_t>(low);
  // Rejecting the lowest (2^64 mod range) values leaves a whole number of
  // copies of [0, range), so every residue is equally likely.
  const uint64_t limit = -range % range;  // = 2^64 mod range
  uint64_t r = next_u64();
  while (r < limit) r = next_u64();
  return low + static_cast<int64_t>(r % range);
}

std::vector<int64_t> SampleGenerator::permutation(int64_t n) {
  LOOM_CHECK(n >= 0, "SampleGenerator::permutation: n must be non-negative, got ", n);
  std::vector<int64_t> p(static_cast<size_t>(n));
  std::iota(p.begin(), p.end(), int64_t{0});
  for (int64_t k = n - 1; k > 0; --k) std::swap(p[static_cast<size_t>(k)], p[static_cast<size_t>(randint(0, k + 1))]);
  return p;
}

}  // namespace loom::data
