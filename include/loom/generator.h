// loom::Generator: a random stream that random ops can be handed, as
// torch.Generator, so that requests, ranks or data workers need not share the
// one global stream.
//
//   loom::Generator g(42);                 // or Generator().manual_seed(42)
//   Tensor noise = loom::randn({4, 8}, {}, g);
//   Tensor mask = nn::functional::dropout(x, 0.1, true, g);
//
// Every random op takes `std::optional<Generator> generator` as its last
// parameter; left out, it draws from default_generator(), the global stream
// that manual_seed seeds. A Generator is a handle: copies share one stream
// (one seed and offset), as torch.Generator objects are shared by reference.
// Draws depend on (seed, offset) alone (Note [Counter-based random numbers] in
// src/core/generator.h), never on the device or the thread count, so one
// generator serves every device.
#pragma once

#include <cstdint>
#include <memory>
#include <utility>

namespace loom {

// A generator's whole state, so a checkpoint can resume the same stream:
// draws come from Philox counters [offset, ...) under key `seed`.
struct RngState {
  uint64_t seed = 0;
  uint64_t offset = 0;
};

namespace detail {
struct GeneratorState;
}

class Generator {
 public:
  // A new stream with PyTorch's default seed (67280421310721), offset 0.
  Generator();
  // A new stream with seed `seed`, offset 0.
  explicit Generator(uint64_t seed);

  // Restarts the stream: seed = `seed`, offset = 0. Returns *this, so
  // `Generator().manual_seed(7)` reads as torch.Generator().manual_seed(7).
  Generator& manual_seed(uint64_t seed);
  uint64_t initial_seed() const;
  RngState get_state() const;
  void set_state(const RngState& state);

  // Reserves `n` Philox counters for one op: returns the state before the
  // reservation (the key and the first counter) and advances the offset past
  // them, rounded up to a multiple of 4 (one Philox round gives four 32-bit
  // words). Thread-safe: concurrent reservations get disjoint counters. For
  // code that writes its own random kernels; the ops call it themselves.
  RngState philox_reserve(uint64_t n) const;

  // Do the two handles share one stream?
  bool operator==(const Generator& other) const { return state_ == other.state_; }

 private:
  explicit Generator(std::shared_ptr<detail::GeneratorState> state) : state_(std::move(state)) {}
  friend Generator default_generator();
  std::shared_ptr<detail::GeneratorState> state_;
};

// The global stream: what random ops draw from when given no generator, and
// what manual_seed, initial_seed, get_rng_state and set_rng_state act on.
Generator default_generator();

}  // namespace loom
