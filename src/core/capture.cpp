#include "core/capture.h"

namespace loom::capture {

namespace {
thread_local Recorder* tl_recorder = nullptr;
}

Recorder* active() { return tl_recorder; }

ActiveGuard::ActiveGuard(Recorder* r) : prev_(tl_recorder) { tl_recorder = r; }
ActiveGuard::~ActiveGuard() { tl_recorder = prev_; }

PauseGuard::PauseGuard() : prev_(tl_recorder) { tl_recorder = nullptr; }
PauseGuard::~PauseGuard() { tl_recorder = prev_; }

void host_check(const std::vector<Tensor>& values, std::function<void(const std::vector<Tensor>&)> check) {
  if (Recorder* r = active()) {
    r->on_host_check(values, std::move(check));
    return;
  }
  check(values);
}

}  // namespace loom::capture
