#include "core/generator.h"

#include <mutex>

namespace loom {

namespace {
struct GlobalGenerator {
  std::mutex mu;
  uint64_t seed = kDefaultSeed;
  uint64_t offset = 0;
};
GlobalGenerator& global_generator() {
  static GlobalGenerator g;
  return g;
}
}  // namespace

std::pair<uint64_t, uint64_t> philox_reserve(uint64_t n) {
  GlobalGenerator& g = global_generator();
  std::lock_guard<std::mutex> lock(g.mu);
  const uint64_t start = g.offset;
  g.offset += (n + 3) / 4 * 4;
  return {g.seed, start};
}

void generator_set_seed(uint64_t seed) {
  GlobalGenerator& g = global_generator();
  std::lock_guard<std::mutex> lock(g.mu);
  g.seed = seed;
  g.offset = 0;
}

std::pair<uint64_t, uint64_t> generator_state() {
  GlobalGenerator& g = global_generator();
  std::lock_guard<std::mutex> lock(g.mu);
  return {g.seed, g.offset};
}

void generator_set_state(uint64_t seed, uint64_t offset) {
  GlobalGenerator& g = global_generator();
  std::lock_guard<std::mutex> lock(g.mu);
  g.seed = seed;
  g.offset = offset;
}

uint64_t generator_seed() {
  GlobalGenerator& g = global_generator();
  std::lock_guard<std::mutex> lock(g.mu);
  return g.seed;
}

}  // namespace loom
