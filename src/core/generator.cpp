#include "core/generator.h"

#include <vector>

#include "core/capture.h"

namespace loom {

namespace {

// The global stream. Never destroyed, so a thread that draws while the
// process exits still finds it.
const std::shared_ptr<detail::GeneratorState>& global_handle() {
  static auto* handle = new std::shared_ptr<detail::GeneratorState>(std::make_shared<detail::GeneratorState>());
  return *handle;
}

RngState reserve(detail::GeneratorState& g, uint64_t n) {
  std::lock_guard<std::mutex> lock(g.mu);
  const uint64_t start = g.offset;
  g.offset += (n + 3) / 4 * 4;
  return {g.seed, start};
}

}  // namespace

Generator::Generator() : state_(std::make_shared<detail::GeneratorState>()) {}

Generator::Generator(uint64_t seed) : Generator() { state_->seed = seed; }

Generator& Generator::manual_seed(uint64_t seed) {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->seed = seed;
  state_->offset = 0;
  return *this;
}

uint64_t Generator::initial_seed() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->seed;
}

RngState Generator::get_state() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return {state_->seed, state_->offset};
}

void Generator::set_state(const RngState& s) {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->seed = s.seed;
  state_->offset = s.offset;
}

RngState Generator::philox_reserve(uint64_t n) const { return reserve(*state_, n); }

Generator default_generator() { return Generator(global_handle()); }

namespace {
thread_local std::vector<RngWatcher*> t_watchers;  // installed on this thread, innermost last
}  // namespace

RngWatchGuard::RngWatchGuard(RngWatcher* watcher) { t_watchers.push_back(watcher); }
RngWatchGuard::~RngWatchGuard() { t_watchers.pop_back(); }

std::pair<uint64_t, uint64_t> philox_reserve(uint64_t n, const std::optional<Generator>& generator) {
  // The global stream is reached without a handle: no reference count to
  // touch on every random op that uses the default.
  const RngState s = generator ? generator->philox_reserve(n) : reserve(*global_handle(), n);
  for (RngWatcher* w : t_watchers) w->on_reserve(generator ? &*generator : nullptr, s);
  // A capture replays the reservation at each replay (Note [Capture hooks]).
  if (capture::Recorder* r = capture::active()) r->on_rng(generator ? *generator : default_generator(), n, s.seed, s.offset);
  return {s.seed, s.offset};
}

}  // namespace loom
