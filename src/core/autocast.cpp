// Autocast's thread state, guard and op regions (Note [Autocast op policy]).
#include "core/autocast.h"

#include "loom/error.h"

namespace loom {
namespace autocast {

State& state() {
  thread_local State s;
  return s;
}

Region::Region(const Tensor& first, Policy policy) {
  State& s = state();
  if (s.suspended || !first.defined()) return;
  const int i = first.device().type == DeviceType::CPU ? 0 : 1;
  if (!s.enabled[i]) return;
  active_ = true;
  target_ = policy == Policy::Low ? s.dtype[i] : kFloat32;
  s.suspended = true;
}

Region::~Region() {
  if (active_) state().suspended = false;
}

Tensor Region::cast(const Tensor& t) const {
  if (!active_ || !t.defined() || !is_floating_point(t.dtype()) || t.dtype() == kFloat64 || t.dtype() == target_)
    return t;
  return t.to(target_);
}

Off::Off() : saved_(state()) { state() = State{{false, false}, {saved_.dtype[0], saved_.dtype[1]}, false}; }
Off::~Off() { state() = saved_; }

Restore::Restore(const State& s) : saved_(state()) { state() = s; }
Restore::~Restore() { state() = saved_; }

}  // namespace autocast

namespace {
int slot_of(DeviceType t) { return t == DeviceType::CPU ? 0 : 1; }
}  // namespace

AutocastGuard::AutocastGuard(Device device, DType dtype, bool enabled)
    : type_(device.type), prev_enabled_(is_autocast_enabled(type_)), prev_dtype_(autocast_dtype(type_)) {
  set_autocast_dtype(type_, dtype);
  set_autocast_enabled(type_, enabled);
}

AutocastGuard::~AutocastGuard() {
  autocast::State& s = autocast::state();
  s.enabled[slot_of(type_)] = prev_enabled_;
  s.dtype[slot_of(type_)] = prev_dtype_;
}

bool is_autocast_enabled(DeviceType type) { return autocast::state().enabled[slot_of(type)]; }
DType autocast_dtype(DeviceType type) { return autocast::state().dtype[slot_of(type)]; }
void set_autocast_enabled(DeviceType type, bool enabled) { autocast::state().enabled[slot_of(type)] = enabled; }
void set_autocast_dtype(DeviceType type, DType dtype) {
  LOOM_CHECK(dtype == kBFloat16 || dtype == kFloat16, "autocast: the dtype must be bfloat16 or float16, got ",
             dtype_name(dtype));
  autocast::state().dtype[slot_of(type)] = dtype;
}

}  // namespace loom
